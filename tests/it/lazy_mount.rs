//! `mount --lazy REF` over a real registry: an image whose top layer is
//! EROFS-native (made by `convert --mode full` from a tar of a 32 MiB file
//! and small ones) over a tar layer. The EROFS layer is read by range
//! requests on demand, through a cache in the store; reading one small
//! file fetches a small fraction of it; the whole tree equals the image
//! pulled whole; with the registry killed, cached files read and an unread
//! one fails with EIO in bounded time, the mount alive; restarted, it
//! reads; a second mount reuses the cache (the registry down, the cache
//! complete); `pull` adopts the complete cache instead of fetching the
//! blob; `store gc` then removes it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::lazy::{mount_lazy_as_nobody, ranges, Mounted};
use crate::common::pulled::{as_nobody, open_dev_fuse, tar_of, walk_and_unmount_as_nobody};
use crate::common::registry::{available, sha256, write_oci_layout, Layer, Registry, Variant};
use crate::common::{bin, have, run, run_ok, tree_manifest, xorshift, Need, FUSE_ROOT};

/// The big file's size: the image is a little more.
const BIG: usize = 32 << 20;

/// An OCI layout in `dir`: a tar layer (`lower`) under an EROFS-native
/// one (`big`, `one`, `small/f0..f49`); gives the EROFS blob's digest and
/// size.
fn lazy_layout(dir: &Path) -> (PathBuf, String, u64) {
    let mut next = xorshift(21);
    let big: Vec<u8> = (0..BIG / 8).flat_map(|_| next().to_le_bytes()).collect();
    let mut files = vec![
        ("big".to_string(), big),
        ("one".to_string(), b"hello lazy\n".to_vec()),
    ];
    for i in 0..50 {
        files.push((
            format!("small/f{i}"),
            format!("small file {i}\n").into_bytes(),
        ));
    }
    let tar = dir.join("upper.tar");
    std::fs::write(&tar, tar_of(&files)).unwrap();
    let image = dir.join("upper.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "--quiet", "--mode", "full"])
            .arg(&tar)
            .arg(&image),
    );
    let erofs = std::fs::read(&image).unwrap();
    std::fs::remove_file(&tar).unwrap();
    std::fs::remove_file(&image).unwrap();
    let (digest, size) = (sha256(&erofs), erofs.len() as u64);
    let layout = dir.join("layout");
    write_oci_layout(
        &layout,
        &[
            Layer {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                bytes: tar_of(&[("lower", b"low\n")]),
                diff_id: None,
            },
            Layer {
                media_type: "application/vnd.erofs.layer.v1".into(),
                bytes: erofs,
                diff_id: None,
            },
        ],
    );
    (layout, digest, size)
}

/// `erofs-fuse ARGS... --store STORE FLAGS...`.
fn cli(store: &Path, args: &[&str], flags: &[String]) -> Output {
    run(Command::new(bin())
        .args(args)
        .arg("--store")
        .arg(store)
        .args(flags))
}

#[test]
fn lazy_mounts_fetch_what_is_read_and_survive_the_registry() {
    let name = "lazy_mounts_fetch_what_is_read_and_survive_the_registry";
    if !have(name, FUSE_ROOT) || !available(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (layout, digest, size) = lazy_layout(work.path());
    let mut reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&layout, "lazy/app:1");
    let reference = reg.reference("lazy/app:1");
    let flags = reg.cli_args();
    let store = work.path().join("store");

    // Mounted: the tar layer pulled, the EROFS layer lazy and unverified.
    let start = Instant::now();
    let (mount, said) = Mounted::mount(&store, &reference, true, &flags);
    let mounted_in = start.elapsed();
    eprint!("{said}");
    assert!(
        said.contains(&format!("{digest}: lazy, UNVERIFIED")),
        "{said}"
    );
    assert_eq!(said.matches("pulled (in the store)").count(), 1, "{said}");
    assert!(store.join("lazy").join(&digest).is_file());

    // One small file: a small fraction of the blob fetched.
    assert_eq!(std::fs::read(mount.path("one")).unwrap(), b"hello lazy\n");
    assert_eq!(std::fs::read(mount.path("lower")).unwrap(), b"low\n");
    let (requests, fetched) = ranges(&reg, &digest);
    eprintln!(
        "mount --lazy in {mounted_in:?}; one small file: {requests} range requests, \
         {fetched} of {size} bytes"
    );
    assert!((1..=4).contains(&requests), "{requests} requests");
    assert!(fetched * 10 <= size, "{fetched} of {size} bytes fetched");

    // The registry gone: what is cached reads, an unread range fails with
    // EIO in bounded time, and the mount answers.
    reg.kill();
    assert_eq!(std::fs::read(mount.path("one")).unwrap(), b"hello lazy\n");
    let big = std::fs::File::open(mount.path("big")).unwrap();
    let mut buf = vec![0; 4096];
    let at = (BIG - (1 << 20)) as u64;
    let start = Instant::now();
    let err = big.read_exact_at(&mut buf, at).unwrap_err();
    let failed_in = start.elapsed();
    eprintln!("an unread range with the registry down: {err} after {failed_in:?}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(failed_in < Duration::from_secs(30), "{failed_in:?}");
    assert!(std::fs::read_dir(mount.path("small")).unwrap().count() == 50);
    assert_eq!(std::fs::read(mount.path("one")).unwrap(), b"hello lazy\n");

    // Back: the same range reads.
    reg.restart();
    big.read_exact_at(&mut buf, at).unwrap();
    let mut next = xorshift(21);
    let want: Vec<u8> = (0..BIG / 8).flat_map(|_| next().to_le_bytes()).collect();
    assert_eq!(buf, want[at as usize..at as usize + 4096]);
    drop(big);

    // The whole tree equals the image pulled whole.
    let lazy_tree = tree_manifest(mount.0.path());
    let (_, fetched) = ranges(&reg, &digest);
    eprintln!("whole tree: {fetched} of {size} bytes fetched");
    assert!(fetched >= size, "{fetched} of {size}");
    drop(mount);
    let whole = work.path().join("whole");
    let out = cli(&whole, &["pull", "--quiet", &reference], &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (pulled, said) = Mounted::mount(&whole, &reference, false, &flags);
    assert!(!said.contains("lazy"), "{said}");
    assert_eq!(lazy_tree, tree_manifest(pulled.0.path()));
    drop(pulled);

    // A second lazy mount reuses the cache: no new range requests; it
    // needs no registry at all once the cache is complete.
    let before = ranges(&reg, &digest);
    reg.kill();
    let (again, said) = Mounted::mount(&store, &reference, true, &flags);
    assert!(said.contains("UNVERIFIED"), "{said}");
    assert_eq!(tree_manifest(again.0.path()), lazy_tree);
    assert_eq!(ranges(&reg, &digest), before);
    drop(again);

    // pull adopts the complete cache: the blob is not fetched whole.
    reg.restart();
    let out = cli(&store, &["pull", "--quiet", &reference], &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob = format!("/blobs/{digest} ");
    let whole_gets = reg
        .log()
        .lines()
        .filter(|l| l.contains(&blob) && l.contains("\" 200 "))
        .count();
    assert_eq!(whole_gets, 1, "only the pull into `whole` fetched it whole");
    assert!(store.join(&digest).join("layer.erofs").is_file());
    let (pulled, said) = Mounted::mount(&store, &reference, false, &flags);
    assert!(!said.contains("lazy"), "{said}");
    assert_eq!(tree_manifest(pulled.0.path()), lazy_tree);
    drop(pulled);

    // Held whole now, the cache goes with gc.
    let out = cli(&store, &["store", "gc"], &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 lazy caches"), "{said}");
    assert_eq!(std::fs::read_dir(store.join("lazy")).unwrap().count(), 0);
}

/// As `nobody`, with the default store under a HOME of the test's: `mount
/// --lazy` needs no root, fetches a fraction for one small file, and shows
/// the tree root sees through the image pulled whole.
#[test]
fn rootless_lazy_mount_with_the_default_store() {
    let name = "rootless_lazy_mount_with_the_default_store";
    let needs = [Need::Program("setpriv"), Need::Program("/usr/bin/python3")];
    if !have(name, FUSE_ROOT) || !have(name, &needs) || !available(name) {
        return;
    }
    open_dev_fuse();
    let work = tempfile::tempdir().unwrap();
    let (layout, digest, size) = lazy_layout(work.path());
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&layout, "lazy/app:1");
    let reference = reg.reference("lazy/app:1");
    let flags = reg.cli_args();

    let (home, mnt, said) = mount_lazy_as_nobody(&reference, &flags);
    let as_nobody = || as_nobody(home.path());
    assert!(said.contains("UNVERIFIED"), "{said}");
    let one = run(as_nobody().arg("cat").arg(mnt.join("one")));
    let (_, fetched) = ranges(&reg, &digest);
    let walk = walk_and_unmount_as_nobody(home.path(), &mnt);
    assert_eq!(one.stdout, b"hello lazy\n", "{one:?}");
    eprintln!("rootless, one small file: {fetched} of {size} bytes");
    assert!(fetched * 10 <= size, "{fetched} of {size}");
    let cache = home
        .path()
        .join(".local/share/erofs-fuse/lazy")
        .join(&digest);
    assert!(cache.is_file(), "the cache in the default store");

    let whole = work.path().join("whole");
    let out = cli(&whole, &["pull", "--quiet", &reference], &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (pulled, _) = Mounted::mount(&whole, &reference, false, &flags);
    assert_eq!(walk, tree_manifest(pulled.0.path()));
}

/// `--lazy` applies to image references only.
#[test]
fn lazy_is_refused_for_image_files() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image.erofs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.erofs"),
        &image,
    )
    .unwrap();
    let out = run(Command::new(bin())
        .args(["mount", "--lazy"])
        .arg(&image)
        .arg(work.path()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--lazy applies to image references"),
        "{said}"
    );
}
