//! Bad inputs and faults over a real registry, through the CLI: each pull
//! fails with one line on stderr naming the problem and exit status 1, and
//! leaves the store as it was; a registry killed mid-download leaves no
//! partial blob and a pull after its restart succeeds; two concurrent
//! pulls fetch each layer blob once.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{cli, pull, pull_ok, tar_of};
use crate::common::pulled::{store_state, NO_ARGS};
use crate::common::registry::raw::{manifest_response, serve_raw};
use crate::common::registry::{
    available, sha256, write_oci_layout, Layer, Registry, Variant, USER,
};
use crate::common::{skip, xorshift};

/// A layout of one tar layer holding `data` pushed to `reg` as
/// `repo:latest`; gives its manifest (the JSON) and the layer's digest.
fn push_one_layer(reg: &Registry, work: &Path, repo: &str, data: &[u8]) -> (Value, String) {
    let dir = work.join(format!("layout-{repo}"));
    let layer = Layer {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        bytes: tar_of("f", data),
        diff_id: None,
    };
    let manifest = write_oci_layout(&dir, std::slice::from_ref(&layer));
    reg.push_oci_layout(&dir, &format!("{repo}:latest"));
    let bytes = std::fs::read(dir.join("blobs/sha256").join(&manifest[7..])).unwrap();
    (
        serde_json::from_slice(&bytes).unwrap(),
        sha256(&layer.bytes),
    )
}

/// Pulls `reference` into `store`, which must fail: exit status 1, one
/// line on stderr containing `says`, the store unchanged. Gives stderr.
fn fails(store: &Path, what: &str, reference: &str, extra: &[String], says: &str) -> String {
    let before = store_state(store);
    let out = pull(store, reference, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprint!("{what}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: one line: {stderr}"
    );
    assert!(
        stderr.contains(says),
        "{what}: wanted {says:?} in: {stderr}"
    );
    assert_eq!(store_state(store), before, "{what}: the store changed");
    stderr
}

#[test]
fn bad_inputs_fail_in_one_line_and_leave_the_store_as_it_was() {
    if !available("bad_inputs_fail_in_one_line_and_leave_the_store_as_it_was") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Variant::Http);
    let args = reg.cli_args();
    let store = work.path().join("store");
    let (manifest, _) = push_one_layer(&reg, work.path(), "good", b"good");
    pull_ok(&store, &reg.reference("good:latest"), &args);

    wrong_credentials(&store, work.path());

    fails(
        &store,
        "404 tag",
        &reg.reference("good:nosuch"),
        &args,
        "manifest unknown",
    );

    let (_, digest) = push_one_layer(&reg, work.path(), "noblob", b"no blob");
    std::fs::remove_file(reg.blob_data(&digest)).unwrap();
    let e = fails(
        &store,
        "404 blob",
        &reg.reference("noblob:latest"),
        &args,
        "blob unknown",
    );
    assert!(e.contains(&digest), "{e}");

    let (_, digest) = push_one_layer(&reg, work.path(), "corrupt", &[7u8; 5000]);
    let mut bytes = std::fs::read(reg.blob_data(&digest)).unwrap();
    bytes[600] ^= 1;
    std::fs::write(reg.blob_data(&digest), bytes).unwrap();
    let e = fails(
        &store,
        "corrupt",
        &reg.reference("corrupt:latest"),
        &args,
        "digest mismatch",
    );
    assert!(e.contains(&digest), "{e}");

    bad_manifests(&reg, &store, &manifest);
}

/// Manifests stored as tags of `good` (whose manifest is `manifest`) that
/// a pull refuses: over 4 MiB, an index without our platform, a layer of
/// an unknown media type.
fn bad_manifests(reg: &Registry, store: &Path, manifest: &Value) {
    let args = reg.cli_args();
    // docker-registry answers 500 for a manifest over 4 MiB in its storage
    // (it neither takes nor serves one)...
    let mut big = manifest.clone();
    big["annotations"] = json!({"padding": "x".repeat(4 << 20)});
    let big = big.to_string().into_bytes();
    reg.put_manifest_in_storage("good", "huge", &big);
    fails(
        store,
        "huge in storage",
        &reg.reference("good:huge"),
        &args,
        "HTTP 500",
    );
    // ...so a server of the test's own sends one.
    let addr = serve_raw(vec![manifest_response(&big, false); 2]);
    let huge = format!("{addr}/good:huge");
    fails(store, "huge", &huge, &args, "larger than 4194304 bytes");

    let mut entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256(manifest.to_string().as_bytes()),
        "size": manifest.to_string().len(),
        "platform": {"os": "linux", "architecture": "mips64le"},
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry.take()],
    });
    reg.put_manifest_in_storage("good", "mips", index.to_string().as_bytes());
    let mips = reg.reference("good:mips");
    fails(
        store,
        "no platform",
        &mips,
        &args,
        "the index offers: linux/mips64le",
    );

    let mut bzip2 = manifest.clone();
    bzip2["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+bzip2");
    reg.put_manifest_in_storage("good", "bzip2", bzip2.to_string().as_bytes());
    let says = "layer media type \"application/vnd.oci.image.layer.v1.tar+bzip2\"";
    fails(
        store,
        "media type",
        &reg.reference("good:bzip2"),
        &args,
        says,
    );
}

/// Wrong credentials, from `--creds` (basic and bearer auth) and from an
/// auth file: the error says where they came from, never the password.
fn wrong_credentials(store: &Path, work: &Path) {
    use base64::Engine as _;
    let wrong = "wrong-password-0451";
    let auth_file = work.join("wrong-auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{wrong}"));
    for variant in [Variant::Basic, Variant::Token] {
        let reg = Registry::start(variant);
        reg.push_oci_layout(&work.join("layout-good"), "good:latest");
        let reference = reg.reference("good:latest");
        let mut args = vec!["--insecure".to_string(), "--creds".into()];
        args.push(format!("{USER}:{wrong}"));
        let what = format!("{variant:?} --creds");
        let e = fails(store, &what, &reference, &args, "HTTP 401");
        assert!(e.contains("with --creds") && !e.contains(wrong), "{e}");
        let text = json!({"auths": {&reg.addr: {"auth": auth}}}).to_string();
        std::fs::write(&auth_file, text).unwrap();
        let file = auth_file.display().to_string();
        let args = ["--insecure".to_string(), "--authfile".into(), file];
        let what = format!("{variant:?} auth file");
        let e = fails(store, &what, &reference, &args, "HTTP 401");
        let named = format!("credentials from {}", auth_file.display());
        assert!(
            e.contains(&named) && !e.contains(wrong) && !e.contains(&auth),
            "{e}"
        );
    }
}

#[test]
fn an_unknown_host_is_one_line() {
    if !available("an_unknown_host_is_one_line") {
        return;
    }
    // Without network, resolving a .invalid name must fail at once; when
    // the resolver hangs instead, this machine cannot run the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::net::ToSocketAddrs;
        let _ = tx.send(("nonexistent.invalid", 443).to_socket_addrs().is_err());
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(true) => {}
        Ok(false) => {
            return skip(
                "an_unknown_host_is_one_line",
                "nonexistent.invalid not to resolve",
            )
        }
        Err(_) => return skip("an_unknown_host_is_one_line", "a resolver that answers"),
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let fixture = format!(
        "oci:{}",
        crate::common::registry::oci_fixture("gzip").display()
    );
    pull_ok(&store, &fixture, NO_ARGS);
    let before = store_state(&store);
    let mut child = cli(&store, &["pull", "--quiet", "nonexistent.invalid/app:1"])
        .args(["--authfile", "/nonexistent/auth.json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pull of an unknown host still runs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // A name that does not exist is not retried: "unknown host" at once.
    assert!(
        stderr.contains("unknown host nonexistent.invalid"),
        "{stderr}"
    );
    assert!(!stderr.contains("tries"), "{stderr}");
    assert_eq!(store_state(&store), before);
}

/// The size of the partial blob a pull is downloading into `store`.
fn staged_bytes(store: &Path) -> u64 {
    std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".pull"))
        .filter_map(|e| std::fs::metadata(e.path().join("blob")).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_registry_killed_mid_pull_leaves_nothing_and_a_pull_after_restart_succeeds() {
    let test = "a_registry_killed_mid_pull_leaves_nothing_and_a_pull_after_restart_succeeds";
    if !available(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(Variant::Http);
    let args = reg.cli_args();
    let store = work.path().join("store");
    push_one_layer(&reg, work.path(), "small", b"small");
    pull_ok(&store, &reg.reference("small:latest"), &args);
    let before = store_state(&store);
    let mut next = xorshift(50);
    let data: Vec<u8> = (0..(50 << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    let (_, digest) = push_one_layer(&reg, work.path(), "big", &data);
    let reference = reg.reference("big:latest");
    let spawn = || {
        cli(&store, &["pull", "--quiet", &reference])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Killed once some of the blob is in, well before all of it.
    let mut child = spawn();
    let at_kill = wait_for_bytes(&store, &mut child, 1 << 20);
    reg.kill();
    eprintln!("killed the registry with {at_kill} bytes of the blob in");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&digest) && stderr.contains("after 4 tries"),
        "{stderr}"
    );
    assert_eq!(
        store_state(&store),
        before,
        "no partial blob or staging directory"
    );
    // Restarted, and restarted again four times while the next pull runs:
    // more breaks than tries, but each resumed try brings bytes.
    reg.restart();
    let mut child = spawn();
    let port: u16 = reg.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut at = 0;
    for _ in 0..4 {
        // The client is connected to this run of the registry (not still
        // reading what the last one had sent), and has some bytes from it.
        while !connected(port) {
            assert!(child.try_wait().unwrap().is_none(), "the pull ended");
            std::thread::sleep(Duration::from_millis(1));
        }
        at = wait_for_bytes(&store, &mut child, at + (1 << 20));
        reg.restart();
        eprintln!("restarted the registry with {at} bytes of the blob in");
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store.join(&digest).join("layer.erofs").is_file());
    // (a request cut off by a kill is not logged: the last one is)
    let resumed = format!("\"GET /v2/big/blobs/{digest} HTTP/1.1\" 206 ");
    assert!(reg.log().contains(&resumed), "resumed with a Range request");
}

/// Whether a TCP connection to 127.0.0.1:`port` is established (from
/// /proc/net/tcp: local address, state 01).
fn connected(port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 3 && fields[1] == local && fields[3] == "01"
        })
}

/// Waits until the pull `child` has at least `bytes` of a blob in `store`
/// (it must not end before); gives how many it has.
fn wait_for_bytes(store: &Path, child: &mut std::process::Child, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staged = staged_bytes(store);
        if staged >= bytes {
            return staged;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended with {staged} bytes staged, before {bytes}"
        );
        assert!(Instant::now() < deadline, "no {bytes} bytes staged in 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    if !available("concurrent_pulls_fetch_each_blob_once") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Variant::Http);
    let mut next = xorshift(4);
    let layers: Vec<Layer> = (0..2)
        .map(|i| {
            let data: Vec<u8> = (0..(12 << 20) / 8)
                .flat_map(|_| next().to_le_bytes())
                .collect();
            Layer {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                bytes: tar_of(&format!("f{i}"), &data),
                diff_id: None,
            }
        })
        .collect();
    let dir = work.path().join("layout");
    let manifest = write_oci_layout(&dir, &layers);
    reg.push_oci_layout(&dir, "two:latest");
    let store = work.path().join("store");
    let reference = reg.reference("two:latest");
    let spawn = || {
        cli(&store, &["pull", "--quiet", &reference])
            .args(reg.cli_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), manifest);
    }
    let log = reg.log();
    for layer in &layers {
        let get = format!("\"GET /v2/two/blobs/{} ", sha256(&layer.bytes));
        let fetches = log.lines().filter(|l| l.contains(&get)).count();
        assert_eq!(fetches, 1, "{get} {fetches} times:\n{log}");
    }
}
