//! Faults under `mount --lazy` (issue 21), over a real registry: an image
//! of one EROFS-native layer (a 24 MiB file `big`, a small one `one`),
//! read by range requests on demand. The registry killed mid-read and
//! restarted; its tokens expiring mid-mount; a link that sends a byte per
//! second (a relay of the test's); the mount's server killed mid-read.
//! Each time: cached data reads on, missing data gives EIO within a
//! bound (never a hang, never wrong bytes), the mount stays up, and it
//! recovers when the fault ends.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::lazy::{ranges, Mounted};
use crate::common::pulled::tar_of;
use crate::common::registry::{available, sha256, write_oci_layout, Layer, Registry, Variant};
use crate::common::relay::Relay;
use crate::common::{bin, have, run_ok, server_pid, xorshift, FUSE_ROOT};

/// The big file's size.
const BIG: usize = 24 << 20;

/// The most a read of missing data may take to fail: the client gives a
/// range read 15 s in all, and the kernel tries a page whose readahead
/// failed once more (a second range read).
const BOUND: Duration = Duration::from_secs(40);

/// The small file's bytes.
const ONE: &[u8] = b"hello faults\n";

/// The big file's bytes.
fn big_bytes() -> Vec<u8> {
    let mut next = xorshift(2121);
    (0..BIG / 8).flat_map(|_| next().to_le_bytes()).collect()
}

/// An OCI layout in `dir` with one EROFS-native layer (`big`, `one`,
/// `small/f0..f9`); gives it and the layer's digest and size.
fn layout(dir: &Path) -> (PathBuf, String, u64) {
    let mut files = vec![
        ("big".to_string(), big_bytes()),
        ("one".to_string(), ONE.to_vec()),
    ];
    for i in 0..10 {
        files.push((format!("small/f{i}"), format!("small {i}\n").into_bytes()));
    }
    let tar = dir.join("layer.tar");
    std::fs::write(&tar, tar_of(&files)).unwrap();
    let image = dir.join("layer.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "--quiet", "--mode", "full"])
            .arg(&tar)
            .arg(&image),
    );
    let erofs = std::fs::read(&image).unwrap();
    let (digest, size) = (sha256(&erofs), erofs.len() as u64);
    let layout = dir.join("layout");
    write_oci_layout(
        &layout,
        &[Layer {
            media_type: "application/vnd.erofs.layer.v1".into(),
            bytes: erofs,
            diff_id: None,
        }],
    );
    (layout, digest, size)
}

/// A registry of `variant` holding the image as `faults/app:1`; the
/// layer's digest and size.
fn registry(dir: &Path, variant: Variant) -> (Registry, String, u64) {
    let (layout, digest, size) = layout(dir);
    let reg = Registry::start(variant);
    reg.push_oci_layout(&layout, "faults/app:1");
    (reg, digest, size)
}

/// `mount --lazy REF` of the test's image (EROFS-native layers, no
/// index: unverified, as it says).
fn mounted(store: &Path, reference: &str, flags: &[String]) -> Mounted {
    let (mount, said) = Mounted::mount(store, reference, true, flags);
    assert!(said.contains("lazy, UNVERIFIED"), "{said}");
    mount
}

/// Whether the mount answers: the root stats and lists.
fn alive(mount: &Mounted) -> bool {
    std::fs::metadata(mount.0.path()).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(mount.path("small")).is_ok_and(|d| d.count() == 10)
}

/// Reads `len` bytes at `at` of `path` in a thread, past the kernel's page
/// cache (dropped for the file first: the read reaches the server); gives
/// the outcome and how long it took, or fails the test if it is still
/// blocked after `limit` (a read that hangs).
fn read_within(
    path: &Path,
    at: u64,
    len: usize,
    limit: Duration,
) -> (std::io::Result<Vec<u8>>, Duration) {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let start = Instant::now();
        let got = std::fs::File::open(&path).and_then(|f| {
            let dropped = nix::fcntl::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            dropped.map_err(std::io::Error::from)?;
            let mut buf = vec![0; len];
            f.read_exact_at(&mut buf, at).map(|()| buf)
        });
        let _ = tx.send((got, start.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok(outcome) => outcome,
        Err(_) => panic!("a read of {len} bytes at {at} still blocked after {limit:?}"),
    }
}

/// The small file `one`, read past the page cache.
fn read_one(mount: &Mounted) -> std::io::Result<Vec<u8>> {
    read_within(&mount.path("one"), 0, ONE.len(), BOUND).0
}

/// Asserts that `got` failed with EIO.
fn assert_eio(got: &std::io::Result<Vec<u8>>) {
    match got {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        Ok(_) => panic!("the read succeeded"),
    }
}

/// Whether a fault test can run here (says SKIPPED if not).
fn can_run(name: &str) -> bool {
    have(name, FUSE_ROOT) && available(name)
}

/// The registry killed while a file is being read (through a relay at
/// 1 MiB/s a request so the read is under way): the read fails with EIO; what was
/// cached reads on, without the registry; a range never fetched fails
/// with EIO in bounded time; the mount answers throughout; restarted, the
/// registry serves the same reads, equal to the file.
#[test]
fn registry_killed_mid_read_then_restarted() {
    let name = "registry_killed_mid_read_then_restarted";
    if !can_run(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mut reg, _, _) = registry(work.path(), Variant::Http);
    let relay = Relay::start(&reg.addr);
    let reference = format!("{}/faults/app:1", relay.addr);
    let mount = mounted(&work.path().join("store"), &reference, &reg.cli_args());
    let want = big_bytes();
    assert_eq!(read_one(&mount).unwrap(), ONE);
    let (head, _) = read_within(&mount.path("big"), 0, 2 << 20, BOUND);
    assert!(head.unwrap() == want[..2 << 20], "the first 2 MiB of big");

    // Mid-read: the rest of big streaming at 1 MiB/s a request, the
    // registry dies.
    relay.set_rate(Some(1 << 20));
    let (tx, rx) = mpsc::channel();
    let big = mount.path("big");
    std::thread::spawn(move || {
        let got = std::fs::File::open(&big).and_then(|f| {
            let mut buf = vec![0; BIG - (4 << 20)];
            f.read_exact_at(&mut buf, 4 << 20).map(|()| buf)
        });
        let _ = tx.send(got);
    });
    std::thread::sleep(Duration::from_millis(1500));
    let streamed = relay.bytes_from_server();
    reg.kill();
    let killed = Instant::now();
    let got = rx
        .recv_timeout(BOUND)
        .expect("the interrupted read still blocked");
    eprintln!(
        "registry killed after {streamed} bytes streamed; the read failed {:?} later",
        killed.elapsed()
    );
    assert!(streamed > 0 && streamed < BIG as u64, "{streamed} bytes");
    assert_eio(&got);
    relay.set_rate(None);

    // Down: cached data reads, and fast; missing data is EIO in bounds.
    let start = Instant::now();
    assert_eq!(read_one(&mount).unwrap(), ONE);
    let (head, _) = read_within(&mount.path("big"), 0, 2 << 20, BOUND);
    assert!(
        head.unwrap() == want[..2 << 20],
        "cached bytes, registry down"
    );
    let cached_in = start.elapsed();
    let at = (BIG - (1 << 20)) as u64;
    let (tail, failed_in) = read_within(&mount.path("big"), at, 4096, BOUND * 2);
    eprintln!(
        "registry down: cached reads in {cached_in:?}; an unfetched range: EIO after {failed_in:?}"
    );
    assert!(cached_in < Duration::from_secs(2), "{cached_in:?}");
    assert_eio(&tail);
    assert!(failed_in < BOUND, "{failed_in:?}");
    assert!(alive(&mount), "the mount answers with the registry down");

    // Back: the same reads succeed, equal to the file.
    reg.restart();
    let (tail, _) = read_within(&mount.path("big"), at, 4096, BOUND);
    assert!(tail.unwrap() == want[at as usize..at as usize + 4096]);
    let (whole, _) = read_within(&mount.path("big"), 0, BIG, BOUND * 2);
    assert!(
        whole.unwrap() == want,
        "big equals its bytes after the restart"
    );
}

/// Tokens the registry stops accepting 3 s after issue (while the client
/// is told they last 300 s): a read after that gets a 401, the client
/// fetches a new token and the read succeeds.
#[test]
fn expired_tokens_are_renewed_mid_mount() {
    let name = "expired_tokens_are_renewed_mid_mount";
    if !can_run(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (reg, digest, _) = registry(work.path(), Variant::Token);
    reg.set_token_exp(3);
    let reference = reg.reference("faults/app:1");
    let mount = mounted(&work.path().join("store"), &reference, &reg.cli_args());
    assert_eq!(read_one(&mount).unwrap(), ONE);
    let tokens = reg.token_requests().len();
    let blob = format!("/blobs/{digest} ");
    let refused = |reg: &Registry| {
        let log = reg.log();
        log.lines()
            .filter(|l| l.contains(&blob) && l.contains("\" 401 "))
            .count()
    };
    let refused_before = refused(&reg);

    std::thread::sleep(Duration::from_secs(5));
    let want = big_bytes();
    let at = (BIG / 2) as u64;
    let (got, took) = read_within(&mount.path("big"), at, 1 << 20, BOUND);
    let granted: Vec<_> = reg.token_requests()[tokens..].to_vec();
    eprintln!(
        "after expiry: read in {took:?}; {} blob 401s, new token requests {granted:?}, \
         range requests so far {:?}",
        refused(&reg) - refused_before,
        ranges(&reg, &digest)
    );
    let got = got.expect("a read after the token expired");
    assert!(got == want[at as usize..at as usize + (1 << 20)]);
    assert!(
        refused(&reg) > refused_before,
        "the registry refused the expired token"
    );
    assert!(
        !granted.is_empty() && granted.iter().all(|(_, ok)| *ok),
        "a new token: {granted:?}"
    );
    // And again, past the second token's expiry.
    std::thread::sleep(Duration::from_secs(5));
    let (got, _) = read_within(&mount.path("big"), 0, 1 << 20, BOUND);
    assert!(got.unwrap() == want[..1 << 20]);
    assert!(reg.token_requests().len() > tokens + granted.len());
}

/// A link that sends a byte per second (a relay in front of the
/// registry): a read of missing data fails with EIO within the bound,
/// cached data reads on, the mount answers; the link back to normal, the
/// same read succeeds.
#[test]
fn a_byte_per_second_gives_eio_and_the_mount_lives() {
    let name = "a_byte_per_second_gives_eio_and_the_mount_lives";
    if !can_run(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (reg, _, _) = registry(work.path(), Variant::Http);
    let relay = Relay::start(&reg.addr);
    let reference = format!("{}/faults/app:1", relay.addr);
    let mount = mounted(&work.path().join("store"), &reference, &reg.cli_args());
    assert_eq!(read_one(&mount).unwrap(), ONE);

    relay.trickle(true);
    let at = (BIG / 2) as u64;
    let (got, failed_in) = read_within(&mount.path("big"), at, 4096, BOUND * 2);
    eprintln!("one byte per second: {got:?} after {failed_in:?}");
    assert_eio(&got);
    assert!(failed_in < BOUND, "{failed_in:?}");
    assert!(alive(&mount), "the mount answers");
    assert_eq!(read_one(&mount).unwrap(), ONE);

    relay.trickle(false);
    let want = big_bytes();
    let (got, took) = read_within(&mount.path("big"), at, 4096, BOUND);
    eprintln!("the link back: read in {took:?}");
    assert!(got.unwrap() == want[at as usize..at as usize + 4096]);
}

/// Which chunks a cache's map (`STORE/lazy/DIGEST.chunks`) records as
/// present, and the chunk size (the layout of src/lazy/map.rs: a 64-byte
/// header with the chunk shift at byte 12, then a bit per chunk).
fn recorded(map: &Path, size: u64) -> (Vec<bool>, u64) {
    let bytes = std::fs::read(map).unwrap();
    assert_eq!(&bytes[..8], b"EFCHUNKS", "{}", map.display());
    let shift = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let chunk = 1u64 << shift;
    let bits = (0..size.div_ceil(chunk))
        .map(|i| bytes[64 + (i / 8) as usize] & (1 << (i % 8)) != 0)
        .collect();
    (bits, chunk)
}

/// The mount's server SIGKILLed while it fetches (a relay at 1 MiB/s a
/// request keeps the read under way), the dead mountpoint detached: a new mount
/// over the same store reads the whole file equal, and fetches again
/// exactly what the map did not record as complete.
#[test]
fn a_killed_mount_leaves_a_cache_trusted_for_complete_chunks_only() {
    let name = "a_killed_mount_leaves_a_cache_trusted_for_complete_chunks_only";
    if !can_run(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (reg, digest, size) = registry(work.path(), Variant::Http);
    let relay = Relay::start(&reg.addr);
    let reference = format!("{}/faults/app:1", relay.addr);
    let store = work.path().join("store");
    let flags = reg.cli_args();
    let mount = mounted(&store, &reference, &flags);
    relay.set_rate(Some(1 << 20));
    let big = mount.path("big");
    let reader = std::thread::spawn(move || std::fs::read(big).map(|b| b.len()));
    std::thread::sleep(Duration::from_millis(2000));
    // Slowed to a crawl: a fetch is surely under way at the kill.
    relay.set_rate(Some(64 << 10));
    std::thread::sleep(Duration::from_millis(1000));
    let pid = server_pid(mount.0.path());
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let start = Instant::now();
    let got = reader.join().unwrap();
    eprintln!(
        "the reader ended {:?} after the kill: {got:?}",
        start.elapsed()
    );
    assert!(
        got.is_err(),
        "the read of big ended with the server: {got:?}"
    );
    drop(mount); // fusermount -u -z
    relay.set_rate(None);

    std::thread::sleep(Duration::from_secs(1)); // the registry logs the cut request
    let map = store.join("lazy").join(format!("{digest}.chunks"));
    let (first, chunk) = recorded(&map, size);
    let present = first.iter().filter(|&&p| p).count();
    let (_, before) = ranges(&reg, &digest);
    eprintln!(
        "killed mid-read: {present} of {} chunks recorded, {before} bytes sent",
        first.len()
    );
    assert!(present > 0 && present < first.len(), "{present} recorded");

    let again = mounted(&store, &reference, &flags);
    let (whole, took) = read_within(&again.path("big"), 0, BIG, BOUND * 2);
    eprintln!("second mount: big read in {took:?}");
    assert!(whole.unwrap() == big_bytes(), "big equals its bytes");
    for name in ["one", "small/f3"] {
        assert!(std::fs::read(again.path(name)).is_ok(), "{name}");
    }
    // Fetched again: exactly the chunks recorded now and not before.
    let (now, _) = recorded(&map, size);
    let (_, after) = ranges(&reg, &digest);
    let mut refetched = 0;
    for (i, (&was, &is)) in first.iter().zip(&now).enumerate() {
        if is && !was {
            let at = i as u64 * chunk;
            refetched += chunk.min(size - at);
        }
    }
    eprintln!(
        "second mount: {} bytes fetched, {refetched} in chunks not recorded before",
        after - before
    );
    assert!(refetched > 0);
    assert_eq!(
        after - before,
        refetched,
        "bytes fetched by the second mount"
    );
}
