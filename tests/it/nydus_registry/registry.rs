//! Nydus images in a real registry (docker-registry on 127.0.0.1, pushed
//! with skopeo): `pull` then `mount REF` with the registry gone, `mount
//! REF` pulling first, `mount --lazy REF` reading blobs by range, and a
//! byte flipped in the registry's stored blob after a lazy mount failing
//! the files of its chunk only, with EIO.
//! `mount --lazy` as nobody with the default store too.

use std::path::Path;

use crate::common::lazy::{ranges, Mounted};
use crate::common::pulled::pull_ok;
use crate::common::registry::{available, Registry, Variant};
use crate::common::{have, manifest_diff, tree_manifest, FuseMount, FUSE_ROOT};
use crate::nydus::{blob_of, case, expected, files_of};
use crate::nydus_mount::{chunks, only_its_files_fail};

/// Pushes case `name` to `reg` as `nydus/NAME:1` (laid out in `work`);
/// gives the reference and the blob's digest.
fn push(reg: &Registry, work: &Path, name: &str) -> (String, String) {
    let layout = work.join(format!("layout-{name}"));
    super::nydus_layout(&layout, name);
    reg.push_oci_layout(&layout, &format!("nydus/{name}:1"));
    let id = blob_of(name)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    (
        reg.reference(&format!("nydus/{name}:1")),
        format!("sha256:{id}"),
    )
}

/// The tree under `mnt` must be case `name`'s.
fn assert_tree(mnt: &Path, name: &str, what: &str) {
    let got = tree_manifest(mnt);
    if let Some(diff) = manifest_diff(&expected(name), &got, 10) {
        panic!("{name} ({what}):\n{diff}");
    }
}

#[test]
fn a_pulled_nydus_image_mounts_from_the_store_eagerly_and_lazily() {
    let test = "a_pulled_nydus_image_mounts_from_the_store_eagerly_and_lazily";
    if !have(test, FUSE_ROOT) || !available(test) {
        return;
    }
    let name = "c-dir-lz4-1m";
    let work = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(Variant::Http);
    let (reference, blob) = push(&reg, work.path(), name);
    let flags = reg.cli_args();

    // mount REF pulls first, then serves the store's copy.
    let fresh = work.path().join("fresh");
    let (mount, _) = Mounted::mount(&fresh, &reference, false, &flags);
    assert_tree(mount.0.path(), name, "mount REF");
    drop(mount);
    assert!(fresh.join(&blob).join("blob").is_file());

    // --lazy: the blob read by range through a cache in the store.
    let lazy = work.path().join("lazy");
    let (mount, said) = Mounted::mount(&lazy, &reference, true, &flags);
    assert!(
        said.contains(&format!("{blob}: lazy, verified by its chunk digests, 0/")),
        "{said}"
    );
    assert_eq!(ranges(&reg, &blob).0, 0, "blob read before any file was");
    // One small file: a small part of the blob fetched.
    let files = files_of(&expected(name));
    let (path, _, _) = files
        .iter()
        .filter(|f| f.1 > 0)
        .min_by_key(|f| f.1)
        .unwrap();
    std::fs::read(mount.0.path().join(path.trim_start_matches('/'))).unwrap();
    let (requests, fetched) = ranges(&reg, &blob);
    let size = std::fs::metadata(blob_of(name)).unwrap().len();
    eprintln!("one small file ({path}): {requests} range requests, {fetched} of {size} bytes");
    assert!(fetched * 4 <= size, "{fetched} of {size} bytes fetched");
    assert_tree(mount.0.path(), name, "mount --lazy REF");
    let (requests, fetched) = ranges(&reg, &blob);
    eprintln!("whole tree: {requests} range requests, {fetched} of {size} bytes");
    assert!(requests > 0, "no range requests");
    assert!(!lazy.join(&blob).exists(), "the blob was pulled whole");
    assert!(lazy.join("lazy").join(&blob).is_file());
    drop(mount);
    // Its cache complete, pull takes the blob from it: no whole GET.
    let whole = || {
        let path = format!("/blobs/{blob} ");
        let log = reg.log();
        let gets = log
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&path));
        gets.filter(|l| l.contains("\" 200 ")).count()
    };
    let before = whole();
    pull_ok(&lazy, &reference, &flags);
    assert_eq!(whole(), before, "the blob was fetched again");
    assert!(lazy.join(&blob).join("blob").is_file());

    // pull, then the registry gone: mount REF reads the store alone, and
    // still does after gc.
    let store = work.path().join("store");
    pull_ok(&store, &reference, &flags);
    reg.kill();
    for what in ["pulled", "after gc"] {
        let (mount, _) = Mounted::mount(&store, &reference, false, &flags);
        assert_tree(mount.0.path(), name, what);
        drop(mount);
        let gc = crate::common::run(&mut crate::common::pulled::cli(&store, &["store", "gc"]));
        assert!(gc.status.success());
    }
}

#[test]
fn a_byte_flipped_in_the_registrys_blob_is_eio_for_its_chunks_files_only() {
    let test = "a_byte_flipped_in_the_registrys_blob_is_eio_for_its_chunks_files_only";
    if !have(test, FUSE_ROOT) || !available(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Variant::Http);
    let flags = reg.cli_args();
    // An uncompressed chunk (a) and a zstd one (b).
    for name in ["a-dir-none", "b-dir-zstd"] {
        let (reference, blob) = push(&reg, work.path(), name);
        let store = work.path().join(format!("store-{name}"));
        let (bad, _) = Mounted::mount(&store, &reference, true, &flags);
        // Flipped in the registry's storage after the mount.
        let all = chunks(name);
        let (offset, size, digest) = all[all.len() / 2];
        let data = reg.blob_data(&blob);
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[(offset + u64::from(size) / 2) as usize] ^= 0x55;
        std::fs::write(&data, &bytes).unwrap();
        let blobs = case(name).join("blobs");
        let good = FuseMount::new(
            &case(name).join("bootstrap"),
            &[],
            &["--blob-dir", blobs.to_str().unwrap()],
        );
        only_its_files_fail(name, good.path(), bad.0.path(), digest);
    }
}

#[test]
fn a_tarfs_blob_is_fetched_whole_by_mount_lazy_and_a_later_change_not_served() {
    let test = "a_tarfs_blob_is_fetched_whole_by_mount_lazy_and_a_later_change_not_served";
    if !have(test, FUSE_ROOT) || !available(test) {
        return;
    }
    let name = "d-tar-tarfs";
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Variant::Http);
    let (reference, blob) = push(&reg, work.path(), name);
    let store = work.path().join("store");
    let (mount, said) = Mounted::mount(&store, &reference, true, &reg.cli_args());
    // A tarfs tar has no chunk digests: not lazily read, but fetched whole.
    assert!(
        said.contains(&format!(
            "{blob}: fetched whole, checked against its layer digest (a tarfs tar"
        )),
        "{said}"
    );
    assert!(!said.contains("lazy, verified"), "{said}");
    assert!(store.join(&blob).join("blob").is_file(), "not in the store");
    // Bytes of file data changed in the registry after the mount: a lazy
    // read would serve them; the whole, checked copy does not.
    let data = reg.blob_data(&blob);
    let mut bytes = std::fs::read(&data).unwrap();
    let end = bytes.len().min(1024 + 4096);
    for b in &mut bytes[1024..end] {
        *b ^= 0x55;
    }
    std::fs::write(&data, &bytes).unwrap();
    assert_tree(mount.0.path(), name, "mount --lazy REF, tarfs");
}

#[test]
fn a_nydus_image_mounts_lazily_as_nobody_with_the_default_store() {
    use crate::common::lazy::mount_lazy_as_nobody;
    use crate::common::pulled::{
        open_dev_fuse, walk_and_unmount_as_nobody, without_trusted_xattrs,
    };
    use crate::common::Need;
    let test = "a_nydus_image_mounts_lazily_as_nobody_with_the_default_store";
    let needs = [Need::Program("setpriv"), Need::Program("/usr/bin/python3")];
    if !have(test, FUSE_ROOT) || !have(test, &needs) || !available(test) {
        return;
    }
    open_dev_fuse();
    let name = "b-dir-zstd";
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Variant::Http);
    let (reference, blob) = push(&reg, work.path(), name);
    let (home, mnt, said) = mount_lazy_as_nobody(&reference, &reg.cli_args());
    assert!(
        said.contains(&format!("{blob}: lazy, verified by its chunk digests, 0/")),
        "{said}"
    );
    let got = walk_and_unmount_as_nobody(home.path(), &mnt);
    // The kernel hides trusted.* xattrs from nobody.
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| without_trusted_xattrs(serde_json::from_str(l).unwrap()))
            .collect()
    };
    assert!(
        parse(&got) == parse(&expected(name)),
        "{name} as nobody:\n{got}"
    );
    let cache = home.path().join(".local/share/erofs-fuse/lazy").join(&blob);
    assert!(cache.is_file(), "no cache in nobody's store");
}
