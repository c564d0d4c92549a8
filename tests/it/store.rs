//! The additional layer store: `store add` records a layer's digests as
//! containers/storage expects them, and `store serve` presents
//! `<base64 ref>/<digest>/{diff/,info,blob}` with the layer's tree, answers
//! the `use` and release signals with ENOENT, and refuses every change.
//! Serving needs root and FUSE.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A random layer tar (with OCI whiteout names) and its gzip form.
fn layers(dir: &Path) -> (PathBuf, PathBuf) {
    let tar = dir.join("layer.tar");
    run_ok(
        Command::new("python3")
            .arg(script("gen_tar.py"))
            .arg("7")
            .arg(&tar),
    );
    let gz = dir.join("layer.tar.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &std::fs::read(&tar).unwrap()).unwrap();
    std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    (tar, gz)
}

fn add(store: &Path, blob: &Path) {
    run_ok(
        Command::new(bin())
            .args(["store", "add", "--quiet"])
            .arg(store)
            .arg(blob),
    );
}

#[test]
fn add_records_the_digests_containers_storage_checks() {
    if !have(
        "add_records_the_digests_containers_storage_checks",
        &[Need::Program("python3")],
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (tar, gz) = layers(work.path());
    let store = work.path().join("store");
    add(&store, &gz);
    add(&store, &tar);
    let tar_bytes = std::fs::read(&tar).unwrap();
    let gz_bytes = std::fs::read(&gz).unwrap();
    for (blob, compression) in [(&gz_bytes, 2), (&tar_bytes, 0)] {
        let dir = store.join(sha256(blob));
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("info")).unwrap()).unwrap();
        assert_eq!(info["compressed-diff-digest"], sha256(blob));
        assert_eq!(info["compressed-size"], blob.len() as u64);
        assert_eq!(info["diff-digest"], sha256(&tar_bytes));
        assert_eq!(info["diff-size"], tar_bytes.len() as u64);
        assert_eq!(info["compression"], compression);
        assert_eq!(&std::fs::read(dir.join("blob")).unwrap(), blob);
        // The image is whole and self-contained (the tar appended).
        run_ok(Command::new(bin()).arg("fsck").arg(dir.join("layer.erofs")));
    }
    // Adding again leaves the layer as it is; no temporary is left behind.
    let image = store.join(sha256(&gz_bytes)).join("layer.erofs");
    let before = std::fs::metadata(&image).unwrap().ino();
    add(&store, &gz);
    assert_eq!(std::fs::metadata(&image).unwrap().ino(), before);
    let names: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // A broken blob adds nothing.
    let bad = work.path().join("bad.tar.gz");
    std::fs::write(&bad, &gz_bytes[..gz_bytes.len() / 2]).unwrap();
    let out = run(Command::new(bin())
        .args(["store", "add", "--quiet"])
        .arg(&store)
        .arg(&bad));
    assert!(!out.status.success());
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 2);
}

/// `store serve STORE DIR EXTRA...`, unmounted on drop.
struct Served {
    dir: tempfile::TempDir,
}

impl Served {
    fn new(store: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new(bin())
                .args(["store", "serve"])
                .arg(store)
                .arg(dir.path())
                .args(extra),
        );
        Self { dir }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status();
    }
}

fn errno_of(result: std::io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn serve_presents_the_additional_layer_store_layout() {
    if !have(
        "serve_presents_the_additional_layer_store_layout",
        FUSE_ROOT,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (tar, gz) = layers(work.path());
    let store = work.path().join("store");
    add(&store, &gz);
    let digest = sha256(&std::fs::read(&gz).unwrap());
    let served = Served::new(&store, &[]);
    let reference = "bG9jYWxob3N0OjUwMDAvdGlueTox"; // localhost:5000/tiny:1
    let layer = served.dir.path().join(reference).join(&digest);
    for name in ["diff", "info", "blob"] {
        assert!(layer.join(name).exists(), "{name} missing");
    }
    let own = store.join(&digest);
    assert_eq!(
        std::fs::read(layer.join("info")).unwrap(),
        std::fs::read(own.join("info")).unwrap()
    );
    assert_eq!(
        std::fs::read(layer.join("blob")).unwrap(),
        std::fs::read(&gz).unwrap()
    );
    // diff/ is the layer's tree, as the image reads.
    let expected = run_ok(
        Command::new(bin())
            .arg("manifest")
            .arg(own.join("layer.erofs")),
    );
    let got = tree_manifest(&layer.join("diff"));
    if let Some(diff) = manifest_diff(&String::from_utf8(expected.stdout).unwrap(), &got, 20) {
        panic!("diff/ differs from the layer image:\n{diff}");
    }
    // containers/storage's signals: ENOENT means "handled".
    assert_eq!(
        errno_of(std::fs::File::create(layer.join("use"))),
        Some(libc::ENOENT)
    );
    assert_eq!(errno_of(std::fs::remove_dir(&layer)), Some(libc::ENOENT));
    assert!(layer.join("diff").exists(), "release removed nothing");
    // Everything else is refused, and unknown layers or names are absent.
    assert_eq!(
        errno_of(std::fs::write(layer.join("info"), b"x")),
        Some(libc::EROFS)
    );
    // The mount is not read-only (the signals must reach the store), so
    // every open comes to the server: one for writing is refused, however
    // many read-only opens came first.
    for _ in 0..3 {
        std::fs::read(layer.join("diff").join("e1")).ok();
        std::fs::read(layer.join("info")).unwrap();
    }
    for path in [layer.join("info"), layer.join("blob")] {
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        assert_eq!(errno_of(rw), Some(libc::EROFS), "{}", path.display());
    }
    assert_eq!(
        errno_of(std::fs::create_dir(layer.join("diff").join("new"))),
        Some(libc::EROFS)
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert!(!served.dir.path().join(reference).join(unknown).exists());
    assert!(!served.dir.path().join("not base64!").exists());
    // Base64, but of a newline: not a reference.
    assert!(!served.dir.path().join("Cg==").exists());
    assert!(!served.dir.path().join(reference).join("..%2f").exists());
    // A layer added while mounted is found.
    add(&store, &tar);
    let late = sha256(&std::fs::read(&tar).unwrap());
    assert!(served
        .dir
        .path()
        .join(reference)
        .join(&late)
        .join("diff")
        .is_dir());
    let listed: Vec<String> = std::fs::read_dir(served.dir.path().join(reference))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut want = vec![digest.clone(), late];
    want.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, want);
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn serve_presents_overlay_xattrs_for_rootless_overlayfs() {
    if !have(
        "serve_presents_overlay_xattrs_for_rootless_overlayfs",
        FUSE_ROOT,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("opq")).unwrap();
    std::fs::write(src.join("opq/.wh..wh..opq"), b"").unwrap();
    std::fs::write(src.join(".wh.gone"), b"").unwrap();
    let tar = work.path().join("l.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    let store = work.path().join("store");
    add(&store, &tar);
    let digest = sha256(&std::fs::read(&tar).unwrap());
    for (mode, name) in [
        ("user", "user.overlay.opaque"),
        ("trusted", "trusted.overlay.opaque"),
    ] {
        let served = Served::new(&store, &["--overlay-xattrs", mode]);
        let diff = served.dir.path().join("cmVm").join(&digest).join("diff");
        let names = xattr::list(diff.join("opq")).unwrap();
        let names: Vec<_> = names.map(|n| n.into_string().unwrap()).collect();
        assert_eq!(names, [name], "--overlay-xattrs {mode}");
        assert_eq!(
            xattr::get(diff.join("opq"), name).unwrap().as_deref(),
            Some(&b"y"[..])
        );
        let gone = std::fs::symlink_metadata(diff.join("gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    }
}

#[test]
fn store_add_takes_each_layer_of_an_oci_layout_and_refuses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let layout = common::registry::oci_fixture("gzip");
    let out = run_ok(
        Command::new(bin())
            .args(["store", "add"])
            .arg(&store)
            .arg(&layout),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The fixture README's two layer digests, bottom first.
    let l1 = "sha256:62938c8bf2da04cb1d7ca49f78c665668b32395893cbcca285f4145c2c070f5b";
    let l2 = "sha256:4752d08738716f1e1bce13145a9a3045154db90a6fb4c3ead8a12b383c37c139";
    let (at1, at2) = (stdout.find(l1), stdout.find(l2));
    assert!(at1.is_some() && at2.is_some() && at1 < at2, "{stdout}");
    for l in [l1, l2] {
        assert!(store.join(l).join("layer.erofs").is_file(), "{l}");
    }
    // A layout whose only entry is a multi-platform index.
    let multi = dir.path().join("multi");
    std::fs::create_dir_all(multi.join("blobs/sha256")).unwrap();
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let digest = sha256(index);
    std::fs::write(multi.join("blobs/sha256").join(&digest[7..]), index).unwrap();
    std::fs::write(
        multi.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{digest}","size":{}}}]}}"#,
            index.len()
        ),
    )
    .unwrap();
    let out = run(Command::new(bin())
        .args(["store", "add"])
        .arg(&store)
        .arg(&multi));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a multi-platform index"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
