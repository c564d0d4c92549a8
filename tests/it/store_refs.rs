//! `store serve`'s reference table: any local user can look names up under
//! the mount, so junk names must take no slot, and real references beyond
//! the table's size evict the least recently used instead of being refused.
//! Serving needs root and FUSE.
use crate::common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::*;
use sha2::{Digest, Sha256};

/// A small layer tar, added to `store`; its digest.
fn add_layer(work: &Path, store: &Path) -> String {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(&mut header, "hello", &b"hello"[..])
        .unwrap();
    let bytes = builder.into_inner().unwrap();
    let tar = work.join("layer.tar");
    std::fs::write(&tar, &bytes).unwrap();
    run_ok(
        Command::new(bin())
            .args(["store", "add", "--quiet"])
            .arg(store)
            .arg(&tar),
    );
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `store serve STORE DIR`, unmounted on drop.
struct Served(tempfile::TempDir);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.0.path())
            .status();
    }
}

fn reference(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(name)
}

#[test]
fn junk_references_take_no_slot_and_old_ones_are_evicted() {
    if !have(
        "junk_references_take_no_slot_and_old_ones_are_evicted",
        FUSE_ROOT,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let digest = add_layer(work.path(), &store);
    let served = Served(tempfile::tempdir().unwrap());
    run_ok(
        Command::new(bin())
            .args(["store", "serve"])
            .arg(&store)
            .arg(served.0.path()),
    );
    let dir = served.0.path();
    let tracked = erofs_fuse::store::MAX_REFS;
    // Junk: names that are no reference, and references under which only
    // layers the store does not hold are looked up.
    let absent = format!("sha256:{}", "0".repeat(64));
    for i in 0..2 * tracked {
        assert!(!dir.join(format!("junk {i}!")).exists());
        let junk = dir.join(reference(&format!("junk.example/{i}:1")));
        assert!(!junk.join(&absent).exists());
    }
    // A reference looked up after them finds its layer.
    let fresh = dir.join(reference("registry.example/app:1"));
    assert!(
        fresh.join(&digest).join("diff").join("hello").is_file(),
        "a real reference is refused after junk lookups"
    );
    // More real references than the table holds: each works, and so do
    // the first ones again (they were evicted, not refused).
    for i in 0..tracked + 100 {
        let layer = dir
            .join(reference(&format!("real.example/{i}:1")))
            .join(&digest);
        assert!(layer.join("diff").is_dir(), "reference {i} refused");
    }
    let first = dir.join(reference("real.example/0:1")).join(&digest);
    assert_eq!(
        std::fs::read(first.join("diff").join("hello")).unwrap(),
        b"hello"
    );
    let last = dir.join(reference("last.example/x:1")).join(&digest);
    assert_eq!(
        std::fs::read(last.join("diff").join("hello")).unwrap(),
        b"hello"
    );
}
