//! `pull`, `images`, `config`, `rmi`, `store gc` and `mount REF` over OCI
//! image layouts: the three fixture layouts (gzip, zstd, zstd:chunked), and
//! layouts the tests write (an EROFS-native layer, a multi-arch index, and
//! one per bad input, after each of which the store must be as before).
//! Mounts are in the privileged tier.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pulled::{cli, pull, pull_ok, records, store_state, tar_of, NO_ARGS};
use common::*;
use serde_json::{json, Value};
use sha2::Digest as _;

/// The fixture layouts (copied from the shared set; see their README).
const LAYOUTS: [&str; 3] = ["gzip", "zstd", "zstd-chunked"];

/// The diffIDs of the fixture image's two layers.
const DIFF_IDS: [&str; 2] = [
    "sha256:21ed171b1c4209962438a644ea85c5c8e0d89375d4fdf709f139e295089fe8cb",
    "sha256:1e923d772f4f7df8b07472bbd414a1498be44705942fd657f1de9735237fa79c",
];

use common::registry::oci_fixture;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Writes an OCI image layout by hand.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self { dir }
    }

    /// Adds a blob: its descriptor with `media_type`.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        std::fs::write(self.blob_path(&digest), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(&digest[7..])
    }

    /// An image manifest of `layers` (descriptors) with a config naming
    /// their diffIDs as `diff_ids`.
    fn manifest(&self, layers: &[Value], arch: &str) -> Value {
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Env": ["A=1"], "User": "1:2", "WorkingDir": "/w"},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        });
        self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        )
    }

    /// `index.json` listing `manifests`.
    fn index(&self, manifests: &[Value]) {
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }

    fn reference(&self) -> String {
        format!("oci:{}", self.dir.display())
    }
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[test]
fn pull_each_fixture_layout() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for name in LAYOUTS {
        let layout = oci_fixture(name);
        let reference = format!("oci:{}:latest", layout.display());
        let digest = pull_ok(&store, &reference, NO_ARGS);
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(digest, index["manifests"][0]["digest"], "{name}");
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap(),
        )
        .unwrap();
        for (layer, diff_id) in manifest["layers"].as_array().unwrap().iter().zip(DIFF_IDS) {
            let dir = store.join(layer["digest"].as_str().unwrap());
            let info: Value =
                serde_json::from_slice(&std::fs::read(dir.join("info")).unwrap()).unwrap();
            assert_eq!(info["diff-digest"], diff_id, "{name}");
            let code = if name == "gzip" { 2 } else { 4 };
            assert_eq!(info["compression"], code, "{name}");
            run_ok(Command::new(bin()).arg("fsck").arg(dir.join("layer.erofs")));
        }
        // The manifest and config are kept by digest.
        assert!(store.join("blobs/sha256").join(&digest[7..]).is_file());
    }
    let listed = run_ok(&mut cli(&store, &["images"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    for name in LAYOUTS {
        assert!(listed.contains(&format!("/{name}:latest ")), "{listed}");
    }
    // config prints the image config; the tag can be left out (one image).
    let config = run_ok(&mut cli(
        &store,
        &["config", &format!("oci:{}", oci_fixture("gzip").display())],
    ));
    let config: Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(config["config"]["Cmd"], json!(["/nonexistent"]));
    assert_eq!(config["rootfs"]["diff_ids"], json!(DIFF_IDS));
}

#[test]
fn a_multi_arch_index_selects_the_host_or_the_platform_asked() {
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path().join("multi"));
    let host = erofs_fuse::registry::manifest::Platform::host().architecture;
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let mut entries = Vec::new();
    for arch in [other, host.as_str(), "s390x"] {
        let layer = layout.blob(TAR, &tar_of(&[("arch", arch.as_bytes())]));
        let mut m = layout.manifest(&[layer], arch);
        m["platform"] = json!({"os": "linux", "architecture": arch});
        if arch == "arm64" {
            m["platform"]["variant"] = json!("v8");
        }
        entries.push(m);
    }
    layout.index(&[json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": layout.blob("application/vnd.oci.image.index.v1+json",
            json!({"schemaVersion": 2, "manifests": entries}).to_string().as_bytes())["digest"],
        "size": json!({"schemaVersion": 2, "manifests": entries}).to_string().len(),
    })]);
    let store = work.path().join("store");
    let got = pull_ok(&store, &layout.reference(), NO_ARGS);
    assert_eq!(got, entries[1]["digest"], "the host's ({host}) manifest");
    let record = &records(&store)[0];
    assert_eq!(record["platform"]["architecture"], host.as_str());
    let got = pull_ok(
        &store,
        &layout.reference(),
        &["--platform", &format!("linux/{other}")],
    );
    assert_eq!(got, entries[0]["digest"], "--platform linux/{other}");
    let got = pull_ok(&store, &layout.reference(), &["--platform", "linux/s390x"]);
    assert_eq!(got, entries[2]["digest"]);
}

/// A bad input: what it is, how to write its layout with a layer blob
/// (returning the reference to pull), and what the error must say.
type Case = (
    &'static str,
    Box<dyn Fn(&Layout, &[u8]) -> String>,
    &'static str,
);

/// One layout per bad input a pull must refuse.
fn bad_layouts() -> Vec<Case> {
    vec![
        (
            "unknown tag",
            Box::new(|l: &Layout, layer_bytes: &[u8]| {
                let layer = l.blob(TAR, layer_bytes);
                let mut m = l.manifest(&[layer], "amd64");
                m["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
                l.index(&[m]);
                format!("{}:v2", l.reference())
            }),
            "no image tagged \"v2\"",
        ),
        (
            "digest mismatch",
            Box::new(|l: &Layout, layer_bytes: &[u8]| {
                let layer = l.blob(TAR, layer_bytes);
                let mut bad = layer_bytes.to_vec();
                bad[600] ^= 1;
                std::fs::write(l.blob_path(layer["digest"].as_str().unwrap()), bad).unwrap();
                l.index(&[l.manifest(&[layer], "amd64")]);
                l.reference()
            }),
            "does not match its digest",
        ),
        (
            "truncated blob",
            Box::new(|l: &Layout, layer_bytes: &[u8]| {
                let layer = l.blob(TAR, layer_bytes);
                let path = l.blob_path(layer["digest"].as_str().unwrap());
                std::fs::write(path, &layer_bytes[..3000]).unwrap();
                l.index(&[l.manifest(&[layer], "amd64")]);
                l.reference()
            }),
            "truncated: 3000 of",
        ),
        (
            "manifest over 4 MiB",
            Box::new(|l: &Layout, _: &[u8]| {
                let mut big = json!({"schemaVersion": 2, "config": {}, "layers": []}).to_string();
                big.push_str(&" ".repeat(4 << 20));
                l.index(&[l.blob("application/vnd.oci.image.manifest.v1+json", big.as_bytes())]);
                l.reference()
            }),
            "larger than 4 MiB",
        ),
        (
            "no matching platform",
            Box::new(|l: &Layout, _: &[u8]| {
                let mut m = l.manifest(&[], "mips64le");
                m["platform"] = json!({"os": "linux", "architecture": "mips64le"});
                let index = json!({"schemaVersion": 2, "manifests": [m]}).to_string();
                l.index(&[l.blob("application/vnd.oci.image.index.v1+json", index.as_bytes())]);
                l.reference()
            }),
            "the index offers: linux/mips64le",
        ),
        (
            "unknown layer media type",
            Box::new(|l: &Layout, layer_bytes: &[u8]| {
                let layer = l.blob("application/vnd.oci.image.layer.v1.tar+bzip2", layer_bytes);
                l.index(&[l.manifest(&[layer], "amd64")]);
                l.reference()
            }),
            "layer media type \"application/vnd.oci.image.layer.v1.tar+bzip2\"",
        ),
    ]
}

#[test]
fn bad_inputs_fail_in_one_line_and_leave_the_store_as_it_was() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    pull_ok(
        &store,
        &format!("oci:{}", oci_fixture("gzip").display()),
        NO_ARGS,
    );
    let before = store_state(&store);
    let layer_bytes = tar_of(&[("f", &[7u8; 5000][..])]);
    for (i, (what, make, says)) in bad_layouts().iter().enumerate() {
        let layout = Layout::new(work.path().join(format!("bad{i}")));
        let reference = make(&layout, &layer_bytes);
        let out = pull(&store, &reference, &["--platform", "linux/amd64"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert_eq!(store_state(&store), before, "{what}: the store changed");
    }
}

#[test]
fn an_erofs_layer_is_used_as_it_is() {
    let work = tempfile::tempdir().unwrap();
    let (layout, erofs) = erofs_layout(work.path());
    let store = work.path().join("store");
    pull_ok(&store, &layout.reference(), NO_ARGS);
    let record = &records(&store)[0];
    assert_eq!(record["layers"][1]["kind"], "erofs");
    let dir = store.join(record["layers"][1]["digest"].as_str().unwrap());
    assert_eq!(std::fs::read(dir.join("layer.erofs")).unwrap(), erofs);
    // A blob that is not EROFS under an EROFS media type is refused.
    let bad = Layout::new(work.path().join("bad"));
    let layer = bad.blob("application/vnd.erofs.layer.v1", &[0u8; 8192]);
    bad.index(&[bad.manifest(&[layer], "amd64")]);
    let out = pull(&store, &bad.reference(), NO_ARGS);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a usable EROFS image"));
}

/// A layout of two layers: a tar (`lower`, `shared` = "tar") under an
/// EROFS image made by `convert --mode full` (`upper`, `shared` =
/// "erofs"); returns it and the EROFS bytes.
fn erofs_layout(dir: &Path) -> (Layout, Vec<u8>) {
    let layout = Layout::new(dir.join("erofs-layout"));
    let upper_tar = dir.join("upper.tar");
    std::fs::write(
        &upper_tar,
        tar_of(&[("upper", &b"up"[..]), ("shared", &b"erofs"[..])]),
    )
    .unwrap();
    let image = dir.join("upper.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "--quiet", "--mode", "full"])
            .arg(&upper_tar)
            .arg(&image),
    );
    let erofs = std::fs::read(&image).unwrap();
    let lower = layout.blob(TAR, &tar_of(&[("lower", b"low"), ("shared", b"tar")]));
    let upper = layout.blob("application/vnd.erofs.layer.v1", &erofs);
    layout.index(&[layout.manifest(&[lower, upper], "amd64")]);
    (layout, erofs)
}

/// Two `pull` processes of one layout at once: each layer blob is fetched
/// once (the per-digest lock), counted in the sources' debug lines.
#[test]
fn concurrent_pulls_fetch_each_layer_once() {
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path().join("big"));
    // Large enough that the second pull starts before the first is done.
    let mut next = xorshift(7);
    let data: Vec<u8> = (0..24 << 20).map(|_| next() as u8).collect();
    let layers: Vec<Value> = [&data[..12 << 20], &data[12 << 20..]]
        .iter()
        .enumerate()
        .map(|(i, d)| layout.blob(TAR, &tar_of(&[(&format!("f{i}"), d)])))
        .collect();
    layout.index(&[layout.manifest(&layers, "amd64")]);
    let store = work.path().join("store");
    let spawn = || {
        cli(&store, &["pull", "--quiet", &layout.reference()])
            .env("RUST_LOG", "erofs_fuse=debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    for layer in &layers {
        let digest = layer["digest"].as_str().unwrap();
        let fetches = logs
            .lines()
            .filter(|l| l.contains(&format!("fetching blob {digest}")))
            .count();
        assert_eq!(
            fetches, 1,
            "layer {digest} fetched {fetches} times:\n{logs}"
        );
    }
}

#[test]
fn gc_removes_what_no_image_needs_and_keeps_added_layers() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    pull_ok(
        &store,
        &format!("oci:{}", oci_fixture("zstd").display()),
        NO_ARGS,
    );
    let added = work.path().join("added.tar");
    std::fs::write(&added, tar_of(&[("added", b"by store add")])).unwrap();
    run_ok(
        Command::new(bin())
            .args(["store", "add", "--quiet"])
            .arg(&store)
            .arg(&added),
    );
    let added_dir = store.join(sha256(&std::fs::read(&added).unwrap()));
    assert!(added_dir.is_dir());
    // A crash's leftovers.
    std::fs::create_dir(store.join(".pull.0123456789abcdef")).unwrap();
    std::fs::write(store.join(".pull.0123456789abcdef/blob"), b"partial").unwrap();
    let layer_dirs = |store: &Path| {
        std::fs::read_dir(store)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("sha256:")
            })
            .count()
    };
    // Referenced layers stay.
    let out = run_ok(&mut cli(&store, &["store", "gc"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "removed 0 layers, 0 blobs, 1 leftovers\n"
    );
    assert_eq!(layer_dirs(&store), 3);
    let reference = format!("oci:{}", oci_fixture("zstd").display());
    run_ok(&mut cli(&store, &["rmi", &reference]));
    let out = run_ok(&mut cli(&store, &["store", "gc"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "removed 2 layers, 2 blobs, 0 leftovers\n"
    );
    assert_eq!(layer_dirs(&store), 1);
    assert!(added_dir.is_dir(), "store add's layer was removed");
    assert_eq!(
        std::fs::read_dir(store.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    run_ok(&mut cli(&store, &["store", "gc", "--all"]));
    assert_eq!(layer_dirs(&store), 0);
    // An unknown image: one line, exit 1.
    let out = run(&mut cli(&store, &["rmi", &reference]));
    assert_eq!(out.status.code(), Some(1));
}

/// Mounts of pulled images (the privileged tier).
#[cfg(feature = "privileged")]
mod mounted;

#[test]
fn mount_by_reference_refuses_verity_and_takes_bare_words_for_files() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let reference = format!("oci:{}", oci_fixture("gzip").display());
    let verity = format!("{}:/nonexistent", "a".repeat(64));
    let mnt = work.path().to_str().unwrap();
    let out = run(&mut cli(
        &store,
        &["mount", "--image", &reference, mnt, "--verity", &verity],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("the store keeps no verity trees yet"),
        "{stderr}"
    );
    // Nothing was pulled for a mount that cannot be made.
    assert!(records(&store).is_empty());
    let out = run(&mut cli(&store, &["mount", "nosuchfile", mnt]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nosuchfile: No such file"), "{stderr}");
}

/// A Docker manifest list over a schema 2 manifest with Docker's gzip
/// layer media type, the list's descriptor naming no manifest type.
#[test]
fn docker_manifest_lists_and_media_types_are_understood() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::new(work.path().join("docker"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_of(&[("docker", b"v2")])).unwrap();
    let layer = layout.blob(
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        &gz.finish().unwrap(),
    );
    let config = layout.blob(
        "application/vnd.docker.container.image.v1+json",
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config, "layers": [layer],
    });
    let mut m = layout.blob("", manifest.to_string().as_bytes());
    m["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
    m["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let list = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [m],
    });
    // The descriptor says nothing useful: the document's own mediaType does.
    let top = layout.blob("application/octet-stream", list.to_string().as_bytes());
    layout.index(&[top]);
    let store = work.path().join("store");
    let digest = pull_ok(&store, &layout.reference(), &["--platform", "linux/amd64"]);
    assert_eq!(digest, m["digest"]);
    let record = &records(&store)[0];
    assert_eq!(record["layers"][0]["kind"], "tar+gzip");
    assert_eq!(record["platform"]["architecture"], "amd64");
}
