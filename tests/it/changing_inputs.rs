//! The server survives its inputs changing: an image, a device tar or a
//! verity tree truncated under a mount (by another user who may write it)
//! fails the reads that need what is gone with EIO and nothing else; with
//! --verity, bytes changed after they were read or verified ahead are never
//! served; FIFOs given as inputs are refused at once instead of blocking.

use crate::common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EIO: i32 = 5;
const NOBODY: u32 = 65534;

/// What reading one path through the mount gave: its bytes, or an errno.
type Seen = BTreeMap<PathBuf, Result<Vec<u8>, i32>>;

/// The needs of these tests: a root FUSE mount, and setpriv for acting as
/// the other user.
const NEEDS: &[Need] = &[
    Need::Root,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
    Need::Program("setpriv"),
    Need::Program("dd"),
];

/// Runs `args` as `nobody` and asserts it succeeds.
fn as_nobody(args: &[&str]) {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args);
    run_ok(&mut cmd);
}

/// A directory owned by nobody, with copies (owned by nobody) of `names`.
fn nobody_dir(names: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    chown(dir.path());
    let copies = names
        .iter()
        .map(|name| {
            let to = dir.path().join(name);
            std::fs::copy(fixture(name), &to).unwrap();
            chown(&to);
            to
        })
        .collect();
    (dir, copies)
}

/// Drops `path`'s pages from the mount's page cache, so the next read
/// reaches the server.
#[allow(unsafe_code)]
fn evict(path: &Path) {
    if let Ok(file) = std::fs::File::open(path) {
        // SAFETY: advice on an open descriptor; no memory is involved.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Every directory and regular file under `root`: files read after their
/// cached pages were dropped, directories listed (bounded: 5,000 paths).
fn read_all(root: &Path) -> Seen {
    let mut seen = Seen::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir).and_then(|d| d.collect::<Result<Vec<_>, _>>()) {
            Ok(entries) => entries,
            Err(e) => {
                seen.insert(dir, Err(errno(&e)));
                continue;
            }
        };
        for entry in entries {
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Err(e) => {
                    seen.insert(path, Err(errno(&e)));
                }
                Ok(meta) if meta.is_dir() => dirs.push(path),
                Ok(meta) if meta.is_file() => {
                    evict(&path);
                    seen.insert(path.clone(), std::fs::read(&path).map_err(|e| errno(&e)));
                }
                Ok(_) => {}
            }
            assert!(seen.len() < 5000, "too many paths under {}", root.display());
        }
    }
    seen
}

/// Whether process `pid` is alive (and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Outcomes after a change, against what a clean mount gave.
struct Tally {
    good: usize,
    eio: usize,
}

/// Checks that every path of `got` is the clean bytes or EIO: never other
/// bytes (zeros), never another error. Paths missing from a listing that
/// failed are fine.
fn tally(clean: &Seen, got: &Seen, mount: &Path) -> Tally {
    let mut t = Tally { good: 0, eio: 0 };
    for (path, result) in got {
        let rel = path.strip_prefix(mount).unwrap();
        match result {
            Err(EIO) => t.eio += 1,
            Err(e) => panic!("{}: errno {e}, expected the bytes or EIO", rel.display()),
            Ok(bytes) => {
                let want = clean
                    .get(rel)
                    .unwrap_or_else(|| panic!("{}: new path", rel.display()));
                assert!(
                    want.as_ref().is_ok_and(|w| w == bytes),
                    "{}: served bytes that differ from the file's ({} bytes)",
                    rel.display(),
                    bytes.len()
                );
                t.good += 1;
            }
        }
    }
    t
}

/// `seen` with paths relative to `mount`.
fn relative(seen: Seen, mount: &Path) -> Seen {
    seen.into_iter()
        .map(|(p, r)| (p.strip_prefix(mount).unwrap().to_path_buf(), r))
        .collect()
}

/// Mounts `image` with `args`, truncates `victim` (as nobody, who owns
/// it) to `keep` bytes, and checks: reads give the clean bytes or EIO,
/// some of each; the server lives; after `victim` gets its bytes back
/// (as nobody), every read gives the clean bytes again.
fn truncate_under_a_mount(image: &Path, args: &[String], victim: &Path, keep: u64) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let clean = {
        let mount = FuseMount::new(image, &[], &args);
        relative(read_all(mount.path()), mount.path())
    };
    assert!(
        clean.values().all(Result::is_ok),
        "a clean mount failed a read"
    );
    let saved = victim.with_extension("saved");
    std::fs::copy(victim, &saved).unwrap();
    std::os::unix::fs::chown(&saved, Some(NOBODY), Some(NOBODY)).unwrap();

    let mount = FuseMount::new(image, &[], &args);
    let pid = server_pid(mount.path());
    // What the mount needs first (superblock, root) is mapped now.
    std::fs::read_dir(mount.path()).unwrap().for_each(drop);
    as_nobody(&[
        "truncate",
        "-s",
        &keep.to_string(),
        victim.to_str().unwrap(),
    ]);
    let after = read_all(mount.path());
    let t = tally(&clean, &after, mount.path());
    assert!(
        alive(pid),
        "the server died after {} shrank",
        victim.display()
    );
    assert!(
        t.eio > 0,
        "no read failed after {} shrank",
        victim.display()
    );
    assert!(
        t.good > 0,
        "nothing was served after {} shrank",
        victim.display()
    );

    // Restored by the other user: every byte is right again.
    let block = keep / 4096;
    as_nobody(&[
        "dd",
        &format!("if={}", saved.display()),
        &format!("of={}", victim.display()),
        "bs=4096",
        &format!("skip={block}"),
        &format!("seek={block}"),
        "conv=notrunc",
        "status=none",
    ]);
    let restored = read_all(mount.path());
    let t = tally(&clean, &restored, mount.path());
    assert_eq!(
        t.eio,
        0,
        "reads still fail after {} was restored",
        victim.display()
    );
    assert!(alive(pid), "the server died");
}

#[test]
fn a_truncated_image_fails_what_is_gone_and_serves_the_rest() {
    if !have(
        "a_truncated_image_fails_what_is_gone_and_serves_the_rest",
        NEEDS,
    ) {
        return;
    }
    let (_dir, files) = nobody_dir(&["plain-4k.erofs"]);
    let len = std::fs::metadata(&files[0]).unwrap().len();
    truncate_under_a_mount(&files[0], &[], &files[0], len / 2 / 4096 * 4096);
}

#[test]
fn a_truncated_device_tar_fails_what_is_gone_and_serves_the_rest() {
    if !have(
        "a_truncated_device_tar_fails_what_is_gone_and_serves_the_rest",
        NEEDS,
    ) {
        return;
    }
    let spec = |name: &str| {
        let root = std::fs::read_to_string(fixture(&format!("{name}.roothash"))).unwrap();
        format!(
            "{}:{}",
            root.trim(),
            fixture(&format!("{name}.verity")).display()
        )
    };
    // Served unverified, file data goes from the map to the kernel, which
    // fails the read itself; verified, the server copies and hashes it.
    for verified in [false, true] {
        let (_dir, files) = nobody_dir(&["tar-index.erofs", "tar-index.tar"]);
        let len = std::fs::metadata(&files[1]).unwrap().len();
        let mut args = vec!["--device".to_string(), files[1].display().to_string()];
        if verified {
            // (The fixture's tree for the index leaves its tail uncovered.)
            args.extend(["--device-verity".to_string(), spec("tar-index.tar")]);
        }
        truncate_under_a_mount(&files[0], &args, &files[1], len / 2 / 4096 * 4096);
    }
}

#[test]
fn a_truncated_verity_tree_fails_what_is_gone_and_serves_the_rest() {
    if !have(
        "a_truncated_verity_tree_fails_what_is_gone_and_serves_the_rest",
        NEEDS,
    ) {
        return;
    }
    let (_dir, files) = nobody_dir(&["plain-4k.erofs", "plain-4k.erofs.verity"]);
    let root = std::fs::read_to_string(fixture("plain-4k.erofs.roothash")).unwrap();
    let args = vec![
        "--verity".to_string(),
        format!("{}:{}", root.trim(), files[1].display()),
    ];
    // The superblock's block, the top block and the first leaf (the first
    // 512 KiB of the image) stay.
    truncate_under_a_mount(&files[0], &args, &files[1], 3 * 4096);
}

/// Where `needle` starts in `haystack` (once, or the test is wrong).
fn find_once(haystack: &[u8], needle: &[u8]) -> usize {
    let mut hits = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = hits.next().expect("bytes not found in the image");
    assert!(hits.next().is_none(), "bytes found twice in the image");
    first
}

/// Mounts a copy of plain-4k with `extra` options after `--verity`; reads
/// one big file (verifying what follows it ahead), changes (as nobody) a
/// byte of a file read and of one never read, and reads both again after
/// dropping the mount's cache. Returns what the two reads gave.
fn change_after_reading(extra: &[&str]) -> [Result<Vec<u8>, i32>; 2] {
    let (_dir, files) = nobody_dir(&["plain-4k.erofs"]);
    let root = std::fs::read_to_string(fixture("plain-4k.erofs.roothash")).unwrap();
    let spec = format!(
        "{}:{}",
        root.trim(),
        fixture("plain-4k.erofs.verity").display()
    );
    let mut args = vec!["--verity", &spec];
    args.extend_from_slice(extra);
    let mount = FuseMount::new(&files[0], &[], &args);
    let (read, unread) = ("sizes/rand_131172", "sizes/rand_65537");
    let image = std::fs::read(&files[0]).unwrap();
    let mut offsets = Vec::new();
    for name in [read, unread] {
        let bytes = std::fs::read(fixture_tree_file(name)).unwrap();
        offsets.push(find_once(&image, &bytes[..4096]) + 100);
    }
    // Read: verified (and, before, everything after it verified ahead).
    std::fs::read(mount.path().join("sizes/text_1048593")).unwrap();
    std::fs::read(mount.path().join(read)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for at in &offsets {
        as_nobody(&[
            "sh",
            "-c",
            &format!(
                "printf X | dd of={} bs=1 seek={at} conv=notrunc status=none",
                files[0].display()
            ),
        ]);
    }
    [read, unread].map(|name| {
        let path = mount.path().join(name);
        evict(&path);
        std::fs::read(&path).map_err(|e| errno(&e))
    })
}

/// A file of the tree the plain fixtures were made from, as a clean mount
/// of plain-4k gives it (read once per test process).
fn fixture_tree_file(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plain-4k-files");
    let out = dir.join(name);
    if !out.exists() {
        let mount = FuseMount::new(&fixture("plain-4k.erofs"), &[], &[]);
        let bytes = std::fs::read(mount.path().join(name)).unwrap();
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&out, bytes).unwrap();
    }
    out
}

#[test]
fn verity_never_serves_bytes_changed_after_they_were_verified() {
    if !have(
        "verity_never_serves_bytes_changed_after_they_were_verified",
        NEEDS,
    ) {
        return;
    }
    // EIO, or the bytes as verified (a copy verified ahead, before the
    // change): never the change.
    let [read, unread] = change_after_reading(&[]);
    for (name, got, what) in [
        ("sizes/rand_131172", read, "after its read"),
        ("sizes/rand_65537", unread, "after it was verified ahead"),
    ] {
        let want = std::fs::read(fixture_tree_file(name)).unwrap();
        assert!(
            got.as_ref().map_or_else(|e| *e == EIO, |b| *b == want),
            "{name}: a block changed {what} was served ({:?})",
            got.map(|b| b.len())
        );
    }
    // --verity-once trusts the file: the same change is served (which is
    // what makes the test above able to fail).
    let [read, _] = change_after_reading(&["--verity-once"]);
    let read = read.expect("--verity-once failed a verified block");
    assert!(read.contains(&b'X'), "the change was not made");
}

/// Runs `erofs-fuse ARGS` and asserts it fails within 10 s with a message
/// containing `what`.
fn fails_at_once(args: &[&str], what: &str) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("erofs-fuse {args:?} still running after 10 s: it blocked on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "erofs-fuse {args:?} succeeded");
    assert!(stderr.contains(what), "erofs-fuse {args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
}

#[test]
fn fifos_as_inputs_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.to_str().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt = mnt.to_str().unwrap();
    let plain = fixture("plain-4k.erofs");
    let plain = plain.to_str().unwrap();
    let index = fixture("tar-index.erofs");
    let index = index.to_str().unwrap();
    let root = std::fs::read_to_string(fixture("plain-4k.erofs.roothash")).unwrap();
    let tree = format!("{}:{fifo}", root.trim());
    let what = "a FIFO, not a regular file or a block device";
    fails_at_once(&["inspect", fifo], what);
    fails_at_once(&["fsck", fifo], what);
    fails_at_once(&["manifest", fifo], what);
    fails_at_once(&["mount", fifo, mnt], what);
    fails_at_once(&["inspect", index, "--device", fifo], what);
    fails_at_once(&["mount", index, mnt, "--device", fifo], what);
    fails_at_once(&["fsck", plain, "--verity", &tree], what);
    fails_at_once(&["mount", plain, mnt, "--verity", &tree], what);
    fails_at_once(&["inspect", plain, "--dmverity", fifo], what);
    // A directory too, with the same kind of message.
    fails_at_once(
        &["inspect", dir.path().to_str().unwrap()],
        "a directory, not",
    );
}

#[test]
fn a_loop_device_is_read_as_an_image() {
    if !have(
        "a_loop_device_is_read_as_an_image",
        &[Need::Root, Need::Program("losetup")],
    ) {
        return;
    }
    let out = run_ok(
        Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(fixture("plain-4k.erofs")),
    );
    let loop_dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let listed = run(Command::new(bin()).args(["manifest", &loop_dev]));
    let direct = run_ok(
        Command::new(bin())
            .arg("manifest")
            .arg(fixture("plain-4k.erofs")),
    );
    let _ = Command::new("losetup").args(["-d", &loop_dev]).status();
    assert!(
        listed.status.success(),
        "manifest {loop_dev}: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(listed.stdout, direct.stdout);
}

/// What the other user does to the image in [`race_with_the_image`],
/// as fast as it can for 5 s: cut it at a random page boundary and put the
/// bytes back, or change a random byte and put it back.
const RACE: &str = r#"
import os, random, sys, time
image, saved, mode = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]
rounds, end = 0, time.time() + 5
fd = os.open(image, os.O_WRONLY)
while time.time() < end:
    if mode == "cut":
        keep = random.randrange(len(saved) // 4096) * 4096
        os.truncate(fd, keep)
        time.sleep(random.random() / 500)
        os.pwrite(fd, saved[keep:], keep)
    else:
        at = random.randrange(len(saved))
        os.pwrite(fd, bytes([saved[at] ^ 0x5a]), at)
        time.sleep(random.random() / 500)
        os.pwrite(fd, saved[at:at + 1], at)
    rounds += 1
print(rounds)
"#;

/// Mounts a copy of plain-4k (owned by nobody) with `args` while nobody
/// changes it (`mode`: see [`RACE`]) and three readers read random files
/// with their cache dropped: every read gives the clean bytes or EIO, the
/// server lives, and once the image is whole every read succeeds.
fn race_with_the_image(args: &[String], mode: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (dir, files) = nobody_dir(&["plain-4k.erofs"]);
    let image = &files[0];
    let clean = {
        let mount = FuseMount::new(image, &[], &args);
        relative(read_all(mount.path()), mount.path())
    };
    let mut paths: Vec<PathBuf> = clean.keys().cloned().collect();
    paths.retain(|p| clean[p].as_ref().is_ok_and(|b| !b.is_empty()));
    let saved = dir.path().join("saved");
    std::fs::copy(image, &saved).unwrap();
    std::os::unix::fs::chown(&saved, Some(NOBODY), Some(NOBODY)).unwrap();

    let mount = FuseMount::new(image, &[], &args);
    let pid = server_pid(mount.path());
    let cutter = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        // The system's python, which the other user can run.
        .args([system_python(), "-c", RACE])
        .arg(image)
        .arg(&saved)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (good, eio) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..3u64)
            .map(|seed| {
                let (paths, clean, root) = (&paths, &clean, mount.path());
                s.spawn(move || {
                    let mut next = xorshift(seed + 1);
                    let (mut good, mut eio) = (0, 0);
                    while Instant::now() < deadline {
                        let rel = &paths[next() as usize % paths.len()];
                        let path = root.join(rel);
                        evict(&path);
                        match std::fs::read(&path) {
                            Ok(bytes) => {
                                assert!(
                                    clean[rel].as_ref().is_ok_and(|c| *c == bytes),
                                    "{}: wrong bytes served while the image changed ({mode})",
                                    rel.display()
                                );
                                good += 1;
                            }
                            Err(e) if errno(&e) == EIO => eio += 1,
                            Err(e) => panic!("{}: {e}", rel.display()),
                        }
                    }
                    (good, eio)
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .fold((0, 0), |(g, e), (g2, e2)| (g + g2, e + e2))
    });
    let out = cutter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the changing loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rounds: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    eprintln!("{mode} {args:?}: {rounds} changes; {good} reads served, {eio} failed with EIO");
    assert!(rounds > 20, "only {rounds} changes in 5 s");
    assert!(good > 0, "nothing was served");
    assert!(alive(pid), "the server died");
    // Whole again: everything reads as it should.
    let t = tally(&clean, &read_all(mount.path()), mount.path());
    assert_eq!(t.eio, 0, "reads still fail with the image whole again");
}

/// python3 from the system (a user's own, e.g. under root's home, may not
/// be reachable by nobody).
fn system_python() -> &'static str {
    ["/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
}

#[test]
fn truncating_and_restoring_in_a_loop_never_serves_wrong_bytes() {
    let test = "truncating_and_restoring_in_a_loop_never_serves_wrong_bytes";
    if !have(test, NEEDS) {
        return;
    }
    race_with_the_image(&[], "cut");
}

#[test]
fn verity_never_serves_bytes_changed_in_a_loop() {
    if !have("verity_never_serves_bytes_changed_in_a_loop", NEEDS) {
        return;
    }
    let root = std::fs::read_to_string(fixture("plain-4k.erofs.roothash")).unwrap();
    let spec = format!(
        "{}:{}",
        root.trim(),
        fixture("plain-4k.erofs.verity").display()
    );
    for mode in ["flip", "cut"] {
        race_with_the_image(&["--verity".to_string(), spec.clone()], mode);
    }
}
