//! `erofs-fuse pull`, `mount REF`, `config` and `images` over real
//! registries (docker-registry on 127.0.0.1, common/registry.rs): the
//! fixture layouts pushed with skopeo, pulled and mounted over http, TLS,
//! basic and bearer auth (credentials by `--creds`, `--authfile`,
//! `REGISTRY_AUTH_FILE` and `~/.docker/config.json`), as root and as
//! `nobody`; a multi-arch index; the bad inputs and faults in `faults`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common::pulled::{
    as_nobody, cli, kernel_manifest, loosely, open_dev_fuse, pull, pull_ok, records,
    walk_and_unmount_as_nobody, without_trusted_xattrs,
};
use crate::common::registry::{available, oci_fixture, sha256, Registry, Variant, PASSWORD, USER};
use crate::common::{bin, have, run_ok, tree_manifest, Need, FUSE_ROOT};

mod faults;

/// The fixture layouts (see tests/fixtures/oci/README.md).
const LAYOUTS: [&str; 3] = ["gzip", "zstd", "zstd-chunked"];

/// The manifest digest of fixture layout `name` (skopeo pushes it as it
/// is, with `--preserve-digests`).
fn fixture_digest(name: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(oci_fixture(name).join("index.json")).unwrap())
            .unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An auth file (podman's and docker's format) with the test user's
/// credentials for `addr`.
fn auth_file_json(addr: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    json!({"auths": {addr: {"auth": auth}}}).to_string()
}

/// What the fixture image must look like mounted, as `root` or not.
fn expected_tree(root: bool) -> Vec<Value> {
    let expected = loosely(&kernel_manifest());
    if root {
        expected
    } else {
        expected.into_iter().map(without_trusted_xattrs).collect()
    }
}

/// A mount point that is unmounted on drop.
struct Mountpoint(PathBuf);

impl Drop for Mountpoint {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

/// Pushes every fixture layout to `reg` as `fixture/NAME:latest`.
fn push_fixtures(reg: &Registry) {
    for name in LAYOUTS {
        reg.push_oci_layout(&oci_fixture(name), &format!("fixture/{name}:latest"));
    }
}

/// As root, with a store of the test's: pulls each fixture from `reg`
/// (the auth variants' credentials from `--creds`, `--authfile` and
/// `REGISTRY_AUTH_FILE` in turn), mounts it by reference and compares it
/// with the kernel's; then checks `images` and `config`, and that `mount`
/// pulls an image removed by `rmi` and `store gc`.
fn pull_and_mount_as_root(reg: &Registry, work: &Path) {
    let store = work.join("store");
    let auth_file = work.join("auth.json");
    std::fs::write(&auth_file, auth_file_json(&reg.addr)).unwrap();
    let mut transport = Vec::new();
    if let Some(ca) = &reg.ca_cert {
        transport.extend(["--ca-cert".to_string(), ca.display().to_string()]);
    } else {
        transport.push("--insecure".to_string());
    }
    let expected = expected_tree(true);
    for (i, name) in LAYOUTS.iter().enumerate() {
        let reference = reg.reference(&format!("fixture/{name}:latest"));
        let mut cmd = cli(&store, &["pull", "--quiet", &reference]);
        cmd.env_remove("REGISTRY_AUTH_FILE");
        match (reg.creds().is_some(), i) {
            (false, _) | (true, 0) => cmd.args(reg.cli_args()),
            (true, 1) => cmd.args(&transport).arg("--authfile").arg(&auth_file),
            (true, _) => cmd.args(&transport).env("REGISTRY_AUTH_FILE", &auth_file),
        };
        let out = run_ok(&mut cmd);
        let digest = String::from_utf8(out.stdout).unwrap();
        assert_eq!(digest.trim(), fixture_digest(name), "{name}");
        // Mounted from the store: no registry options needed.
        let mnt = Mountpoint(work.join(format!("mnt-{name}")));
        std::fs::create_dir(&mnt.0).unwrap();
        run_ok(cli(&store, &["mount", &reference]).arg(&mnt.0));
        let got = loosely(&tree_manifest(&mnt.0));
        drop(mnt);
        assert_eq!(got, expected, "{name} over {:?}", reg.variant);
    }
    let listed = run_ok(&mut cli(&store, &["images"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in LAYOUTS {
        let line = format!("{}/fixture/{name}:latest ", reg.addr);
        assert!(listed.contains(&line), "images lists {name}:\n{listed}");
    }
    let reference = reg.reference("fixture/gzip:latest");
    let config = run_ok(&mut cli(&store, &["config", &reference]));
    let config: Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(config["config"]["Cmd"], json!(["/nonexistent"]));
    assert!(config["config"]["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH="));
    // Removed and collected, the image is pulled again by mount itself.
    run_ok(&mut cli(&store, &["rmi", &reference]));
    let gc = run_ok(&mut cli(&store, &["store", "gc"]));
    assert!(String::from_utf8_lossy(&gc.stdout).starts_with("removed 2 layers"));
    let mnt = Mountpoint(work.join("mnt-again"));
    std::fs::create_dir(&mnt.0).unwrap();
    run_ok(
        cli(&store, &["mount", &reference])
            .args(reg.cli_args())
            .arg(&mnt.0),
    );
    assert_eq!(loosely(&tree_manifest(&mnt.0)), expected, "mount pulled");
}

/// As `nobody`, with HOME a directory of the test's and the default store
/// under it: pulls and mounts each fixture from `reg` (the auth variants'
/// credentials from `~/.docker/config.json`), nothing needing root.
fn pull_and_mount_rootless(reg: &Registry) {
    open_dev_fuse();
    let home = tempfile::tempdir().unwrap();
    let mut transport = vec!["--insecure".to_string()];
    if let Some(ca) = &reg.ca_cert {
        let copy = home.path().join("ca.pem");
        std::fs::copy(ca, &copy).unwrap();
        transport = vec!["--ca-cert".to_string(), copy.display().to_string()];
    }
    if reg.creds().is_some() {
        std::fs::create_dir(home.path().join(".docker")).unwrap();
        std::fs::write(
            home.path().join(".docker/config.json"),
            auth_file_json(&reg.addr),
        )
        .unwrap();
    }
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("65534:65534")
            .arg(home.path()),
    );
    let as_nobody = || as_nobody(home.path());
    let expected = expected_tree(false);
    for name in LAYOUTS {
        let reference = reg.reference(&format!("fixture/{name}:latest"));
        let out = run_ok(
            as_nobody()
                .arg(bin())
                .args(["pull", "--quiet", &reference])
                .args(&transport),
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            fixture_digest(name)
        );
        let mnt = home.path().join(format!("mnt-{name}"));
        run_ok(as_nobody().arg("mkdir").arg(&mnt));
        run_ok(
            as_nobody()
                .arg(bin())
                .arg("mount")
                .arg(&reference)
                .arg(&mnt),
        );
        let walk = walk_and_unmount_as_nobody(home.path(), &mnt);
        let got: Vec<Value> = loosely(&walk)
            .into_iter()
            .map(without_trusted_xattrs)
            .collect();
        assert_eq!(got, expected, "{name} over {:?} as nobody", reg.variant);
    }
    let store = home.path().join(".local/share/erofs-fuse");
    assert_eq!(records(&store).len(), 3, "the default store under HOME");
}

/// Whether this machine can run the pull-and-mount tests.
fn can_mount(test: &str) -> bool {
    let needs = [
        Need::Program("setpriv"),
        Need::Program("fusermount3"),
        Need::Program("/usr/bin/python3"),
    ];
    available(test) && have(test, FUSE_ROOT) && have(test, &needs)
}

/// The fixtures over a registry of `variant`, as root and as nobody.
fn fixtures_over(test: &str, variant: Variant) {
    if !can_mount(test) {
        return;
    }
    let reg = Registry::start(variant);
    push_fixtures(&reg);
    let work = tempfile::tempdir().unwrap();
    pull_and_mount_as_root(&reg, work.path());
    pull_and_mount_rootless(&reg);
}

#[test]
fn fixtures_over_http() {
    fixtures_over("fixtures_over_http", Variant::Http);
}

#[test]
fn fixtures_over_tls() {
    fixtures_over("fixtures_over_tls", Variant::Tls);
}

#[test]
fn fixtures_over_basic_auth() {
    fixtures_over("fixtures_over_basic_auth", Variant::Basic);
}

#[test]
fn fixtures_over_bearer_tokens() {
    fixtures_over("fixtures_over_bearer_tokens", Variant::Token);
}

/// A tar of one file `path` holding `data` (mode 0644, mtime 1).
pub(crate) fn tar_of(path: &str, data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data).unwrap();
    builder.into_inner().unwrap()
}

/// Writes blob `bytes` into layout `dir`; gives its descriptor.
fn put_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// Writes an OCI layout tagged `latest` whose image is an index of one
/// linux image per arch of `arches`, each a tar layer with file `arch`
/// holding its name; gives the manifests' descriptors.
fn write_multi_arch_layout(dir: &Path, arches: &[&str]) -> Vec<Value> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut manifests = Vec::new();
    for arch in arches {
        let tar = tar_of("arch", arch.as_bytes());
        let layer = put_blob(dir, "application/vnd.oci.image.layer.v1.tar", &tar);
        let config = json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
            "config": {"Cmd": [format!("/bin/{arch}")]},
        });
        let config = put_blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [layer],
        });
        let mut d = put_blob(
            dir,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        d["platform"] = json!({"os": "linux", "architecture": arch});
        manifests.push(d);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut top = put_blob(
        dir,
        "application/vnd.oci.image.index.v1+json",
        index.to_string().as_bytes(),
    );
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    let layout = json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), layout.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifests
}

#[test]
fn a_multi_arch_index_selects_the_host_or_the_platform_asked() {
    if !available("a_multi_arch_index_selects_the_host_or_the_platform_asked") {
        return;
    }
    let host = erofs_fuse::registry::manifest::Platform::host().architecture;
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("multi");
    let manifests = write_multi_arch_layout(&layout, &[other, &host]);
    let reg = Registry::start(Variant::Http);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--all", "--preserve-digests"])
            .arg("--dest-tls-verify=false")
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}", reg.reference("multi:latest"))),
    );
    let store = work.path().join("store");
    let reference = reg.reference("multi:latest");
    let args = reg.cli_args();
    // Each selection's record names its arch and its arch's layer.
    let check = |digest: String, arch: &str, entry: &Value| {
        assert_eq!(digest, entry["digest"].as_str().unwrap(), "{arch}");
        let record = records(&store)
            .into_iter()
            .find(|r| r["manifest_digest"] == entry["digest"])
            .unwrap_or_else(|| panic!("no record of {arch}"));
        assert_eq!(record["platform"]["architecture"], arch);
        let layer = store.join(record["layers"][0]["digest"].as_str().unwrap());
        assert!(layer.join("layer.erofs").is_file(), "{arch}'s layer pulled");
        assert_eq!(
            record["layers"][0]["digest"],
            sha256(&tar_of("arch", arch.as_bytes())),
            "{arch}'s layer"
        );
    };
    check(pull_ok(&store, &reference, &args), &host, &manifests[1]);
    let mut with_platform = args.clone();
    with_platform.extend(["--platform".to_string(), format!("linux/{other}")]);
    check(
        pull_ok(&store, &reference, &with_platform),
        other,
        &manifests[0],
    );
}
