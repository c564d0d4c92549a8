//! Faults and load under a mount: a server killed mid-read, and 16 readers
//! mixing lookups, readdirs and reads over a compressed image whose cache
//! is far smaller than its data (eviction under pressure).

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_killed_server_leaves_enotconn_and_a_new_mount_works() {
    // It drops the page cache: not while mount.rs measures a cold read.
    let _drops_caches = CACHE_DROPS.lock().unwrap_or_else(|e| e.into_inner());
    if !have(
        "a_killed_server_leaves_enotconn_and_a_new_mount_works",
        FUSE_ROOT,
    ) {
        return;
    }
    // Nothing below may hang on the dead mount: fail the run instead.
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watched = std::sync::Arc::clone(&done);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        if !watched.load(Ordering::Relaxed) {
            eprintln!("killed-server test: still running after 120 s: a hang on the dead mount");
            std::process::exit(101);
        }
    });
    let image = fixture("plain-4k.erofs");
    let expected = std::fs::read(fixture("plain-4k.erofs")).unwrap();
    let mount = FuseMount::new(&image, &[], &[]);
    let dir = mount.path().to_path_buf();
    let pid = server_pid(&dir);
    // A reader in the middle of reading files when the server dies.
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let outcome = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let files = tree_files(&dir);
            loop {
                for file in &files {
                    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
                    if let Err(e) = std::fs::read(file) {
                        return e.raw_os_error();
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                }
            }
        });
        while reads.load(Ordering::Relaxed) < 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        run_ok(Command::new("kill").args(["-9", &pid.to_string()]));
        // Waits for the reader's error (or for it to stop, if the kill
        // landed between reads and it got no error: then it is told to).
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    if let Some(errno) = outcome {
        // In flight when the connection died: ECONNABORTED; sent after it: ENOTCONN.
        assert!(
            errno == libc::ENOTCONN || errno == libc::ECONNABORTED,
            "the reader got errno {errno} after the kill"
        );
    }
    // Until unmounted, whatever needs the server answers ENOTCONN at once
    // (never hangs): a lookup of a name not in the kernel's cache, and a
    // read once the page cache is dropped. (Attributes the kernel already
    // holds, such as the mountpoint's, it may still answer from its cache:
    // their timeouts are long because the image never changes.)
    let err =
        std::fs::metadata(dir.join("never-looked-up")).expect_err("a dead mount answered a lookup");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let err = std::fs::read(dir.join("hard/one")).expect_err("a dead mount served a read");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    // Unmount, mount again on the same directory: it works.
    run_ok(Command::new("fusermount3").arg("-u").arg(&dir));
    run_ok(Command::new(bin()).arg("mount").arg(&image).arg(&dir));
    let again = std::fs::read(dir.join("hard/one"));
    assert_eq!(again.map(|b| b.len()).ok(), Some(10));
    // The image file was never written.
    assert_eq!(std::fs::read(&image).unwrap(), expected);
    drop(mount);
    done.store(true, Ordering::Relaxed);
}

/// Every regular file below `root`.
fn tree_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// What the readers check against: the source tree that was packed.
struct Reference {
    /// Relative path -> contents.
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Relative directory path -> sorted names.
    dirs: BTreeMap<PathBuf, Vec<String>>,
}

fn reference(tree: &Path) -> Reference {
    let mut files = BTreeMap::new();
    let mut dirs = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            names.push(entry.file_name().to_string_lossy().into_owned());
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(tree).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
        names.sort();
        dirs.insert(dir.strip_prefix(tree).unwrap().to_path_buf(), names);
    }
    Reference { files, dirs }
}

/// One reader's loop: random lookups (of names that exist and names that
/// do not), readdirs and reads at random offsets, each checked.
fn mixed_reader(root: &Path, want: &Reference, seed: u64, deadline: Instant, ops: &AtomicU64) {
    let mut rng = xorshift(seed);
    let files: Vec<(&PathBuf, &Vec<u8>)> = want.files.iter().collect();
    let dirs: Vec<(&PathBuf, &Vec<String>)> = want.dirs.iter().collect();
    while Instant::now() < deadline {
        match rng() % 8 {
            0 => {
                let (rel, names) = dirs[rng() as usize % dirs.len()];
                let mut got: Vec<String> = std::fs::read_dir(root.join(rel))
                    .unwrap_or_else(|e| panic!("readdir {}: {e}", rel.display()))
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                got.sort();
                assert_eq!(&got, names, "listing of {}", rel.display());
            }
            1 => {
                let (rel, bytes) = files[rng() as usize % files.len()];
                let meta = std::fs::metadata(root.join(rel))
                    .unwrap_or_else(|e| panic!("stat {}: {e}", rel.display()));
                assert_eq!(meta.len(), bytes.len() as u64, "size of {}", rel.display());
                let missing = root
                    .join(rel)
                    .with_file_name(format!("missing-{}", rng() % 1000));
                let err = std::fs::metadata(&missing).expect_err("a missing name was found");
                assert_eq!(
                    err.raw_os_error(),
                    Some(libc::ENOENT),
                    "{}",
                    missing.display()
                );
            }
            _ => {
                let (rel, bytes) = files[rng() as usize % files.len()];
                if bytes.is_empty() {
                    continue;
                }
                let offset = rng() as usize % bytes.len();
                let len = (1 + rng() as usize % (256 << 10)).min(bytes.len() - offset);
                let mut buf = vec![0u8; len];
                let file = std::fs::File::open(root.join(rel))
                    .unwrap_or_else(|e| panic!("open {}: {e}", rel.display()));
                file.read_exact_at(&mut buf, offset as u64)
                    .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", rel.display()));
                assert!(
                    buf == bytes[offset..offset + len],
                    "{} bytes of {} at {offset} differ",
                    len,
                    rel.display()
                );
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn sixteen_mixed_readers_under_cache_pressure() {
    // It drops the page cache: not while mount.rs measures a cold read.
    let _drops_caches = CACHE_DROPS.lock().unwrap_or_else(|e| e.into_inner());
    if !have("sixteen_mixed_readers_under_cache_pressure", FUSE_ROOT_MKFS) {
        return;
    }
    let seconds: u64 = std::env::var("EROFS_FUSE_STRESS_MIXED_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(4);
    let work = tempfile::tempdir().unwrap();
    let image = large_image(work.path());
    let want = reference(&work.path().join("tree"));
    let cache_mib = 4;
    let mount = FuseMount::new(
        &image,
        &[],
        &["--threads", "4", "--cache-size", &format!("{cache_mib}M")],
    );
    let root = mount.path().to_path_buf();
    let pid = server_pid(&root);
    let ops = AtomicU64::new(0);
    let finished = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    // Resident memory sampled every second: (seconds in, KiB).
    let mut samples: Vec<(u64, u64)> = Vec::new();
    std::thread::scope(|s| {
        for seed in 0..16u64 {
            let (root, want, ops, finished) = (&root, &want, &ops, &finished);
            s.spawn(move || {
                mixed_reader(root, want, 0x5eed + seed, deadline, ops);
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }
        // Watchdog, until every reader is done: requests must keep
        // completing (no deadlock). Now and then the page cache is dropped
        // so reads reach the server.
        let mut last = (0, Instant::now());
        while finished.load(Ordering::Relaxed) < 16 {
            std::thread::sleep(Duration::from_secs(1));
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
            samples.push((start.elapsed().as_secs(), status_kib(pid, "VmRSS:")));
            let done = ops.load(Ordering::Relaxed);
            if done > last.0 {
                last = (done, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(20) {
                // The scope would wait for stuck readers forever.
                eprintln!("stress: no request completed for 20 s: a deadlock");
                std::process::exit(101);
            }
        }
    });
    // The executable's own pages count in VmHWM and grow with the binary
    // (a debug build is ~150 MB): the bound is on the rest.
    let peak = status_kib(pid, "VmHWM:").saturating_sub(executable_rss_kib(pid));
    let done = ops.load(Ordering::Relaxed);
    let third = samples.len() / 3;
    let early = samples[..third.max(1)]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let late = samples[samples.len() - third.max(1)..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    eprintln!(
        "stress: {done} operations by 16 readers in {seconds} s; server RSS peak {peak} KiB (without the executable), early max {early} KiB, late max {late} KiB; cache {cache_mib} MiB"
    );
    assert!(done > 16 * seconds, "only {done} operations in {seconds} s");
    assert!(
        peak < (cache_mib + 32) * 1024,
        "server peak RSS {peak} KiB with a {cache_mib} MiB cache"
    );
    // Stable: no growth from the middle of the run to its end beyond the
    // band RSS moves in by design (the map is trimmed every 8 MiB served;
    // the cache fills to its budget).
    assert!(
        late <= early + (8 + cache_mib) * 1024,
        "server RSS grew from {early} KiB to {late} KiB"
    );
}
