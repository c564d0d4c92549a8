//! `erofs-fuse mount`: every fixture served through FUSE equals
//! the kernel's manifest; the mount-helper form works; writes are refused;
//! concurrent readers get identical bytes; random reads of a cold file
//! read little more than they ask for.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn every_fixture_mounts_as_the_kernel_shows_it() {
    if !have("every_fixture_mounts_as_the_kernel_shows_it", FUSE_ROOT) {
        return;
    }
    let mut failures = Vec::new();
    for f in FIXTURES {
        let devices: Vec<PathBuf> = f.devices.iter().map(|d| fixture(d)).collect();
        let mount = FuseMount::new(&fixture(f.image), &devices, &[]);
        let got = tree_manifest(mount.path());
        if let Some(diff) = manifest_diff(&expected_manifest(f), &got, 10) {
            failures.push(format!("{}:\n{diff}", f.image));
        }
    }
    assert!(
        failures.is_empty(),
        "mounted trees differ from the kernel's manifests:\n{}",
        failures.join("\n")
    );
}

#[test]
fn mount_helper_form_works_through_mount_fuse3() {
    if !have("mount_helper_form_works_through_mount_fuse3", FUSE_ROOT) {
        return;
    }
    let f = FIXTURES
        .iter()
        .find(|f| f.image == "tar-index-appended.erofs")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // mount(8) -> mount.fuse3 -> `erofs-fuse IMAGE DIR -o OPTS`. mount(8)
    // gives helpers a fixed PATH, so name the program in the PROGRAM#SOURCE
    // form instead of installing it for `-t fuse.erofs-fuse`.
    let source = format!("{}#{}", bin().display(), fixture(f.image).display());
    run_ok(
        Command::new("mount")
            .args(["-t", "fuse", "-o", "ro,allow_other"])
            .arg(&source)
            .arg(dir.path()),
    );
    let got = tree_manifest(dir.path());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    run_ok(Command::new("umount").arg(dir.path()));
    if let Some(diff) = manifest_diff(&expected_manifest(f), &got, 10) {
        panic!("helper mount differs:\n{diff}");
    }
    let line = mounts
        .lines()
        .find(|l| l.contains(&*dir.path().to_string_lossy()))
        .unwrap();
    assert!(
        line.contains("default_permissions"),
        "allow_other without default_permissions: {line}"
    );
}

#[test]
fn writes_are_refused_with_erofs() {
    if !have("writes_are_refused_with_erofs", FUSE_ROOT) {
        return;
    }
    let mount = FuseMount::new(&fixture("plain-4k.erofs"), &[], &[]);
    let p = mount.path();
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(p.join("new-file"), b"x"), "create");
    erofs(std::fs::create_dir(p.join("new-dir")), "mkdir");
    erofs(std::fs::remove_file(p.join("hard/one")), "unlink");
    erofs(
        std::fs::rename(p.join("hard/one"), p.join("hard/four")),
        "rename",
    );
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(p.join("hard/one"))
            .map(drop),
        "open for writing",
    );
    erofs(
        std::fs::set_permissions(
            p.join("hard/one"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        ),
        "chmod",
    );
}

/// The kernel's readahead window of the mount at `dir`, in KiB.
fn readahead_kib(dir: &Path) -> u64 {
    let dir = std::fs::canonicalize(dir).unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let device = table
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&&*dir.to_string_lossy())).then(|| f[2].to_string())
        })
        .unwrap_or_else(|| panic!("{} is not a mountpoint", dir.display()));
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    std::fs::read_to_string(&knob)
        .unwrap_or_else(|e| panic!("{knob}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn root_mounts_widen_the_kernel_readahead_window() {
    if !have("root_mounts_widen_the_kernel_readahead_window", FUSE_ROOT) {
        return;
    }
    let image = fixture("plain-4k.erofs");
    let kernel_default = {
        let mount = FuseMount::new(&image, &[], &["--readahead", "0"]);
        readahead_kib(mount.path())
    };
    for (extra, want) in [
        (&[][..], 1024),
        (&["--readahead", "3M"][..], 3072),
        (&["-o", "readahead=256K"][..], 256),
        // -o wins over the flag, as for threads.
        (&["--readahead", "8M", "-o", "readahead=512K"][..], 512),
    ] {
        let mount = FuseMount::new(&image, &[], extra);
        assert_eq!(readahead_kib(mount.path()), want, "mount {extra:?}");
        assert!(mount.path().join("hard/one").exists());
    }
    assert_ne!(kernel_default, 1024, "--readahead 0 must keep the kernel's");
}

/// Reads every regular file below `root`, returning path -> contents hash.
fn read_tree(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                // FNV-1a: cheap, and any difference shows.
                let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                out.insert(entry.path().strip_prefix(root).unwrap().to_path_buf(), hash);
            }
        }
    }
    out
}

#[test]
fn concurrent_readers_see_identical_bytes_in_bounded_memory() {
    if !have(
        "concurrent_readers_see_identical_bytes_in_bounded_memory",
        FUSE_ROOT_MKFS,
    ) {
        return;
    }
    let _drops_caches = CACHE_DROPS.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let image = large_image(work.path());
    // A cache much smaller than the decoded data, so it must evict.
    let cache_mib = 16;
    let cache = format!("{cache_mib}M");
    let mount = FuseMount::new(&image, &[], &["--threads", "4", "--cache-size", &cache]);
    // What was packed, read from the source tree.
    let reference = read_tree(&work.path().join("tree"));
    assert_eq!(reference.len(), 402);
    assert_eq!(read_tree(mount.path()), reference);
    // 8 readers, each walking and reading the whole tree again and again.
    let seconds: u64 = std::env::var("EROFS_FUSE_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut rounds = 0;
                while rounds < 2 || std::time::Instant::now() < deadline {
                    // Drop the page cache's copy now and then so reads reach the server.
                    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
                    assert_eq!(read_tree(mount.path()), reference);
                    rounds += 1;
                }
            });
        }
    });
    // Having served the whole image many times, the server's peak resident
    // memory stays under its cache budget + 32 MiB.
    let peak = status_kib(server_pid(mount.path()), "VmHWM:");
    assert!(
        peak < (cache_mib + 32) * 1024,
        "server peak RSS {peak} KiB with a {cache_mib} MiB cache"
    );
    eprintln!("server peak RSS: {peak} KiB");
}

#[test]
fn a_broken_directory_gives_eio_and_the_rest_keeps_working() {
    if !have(
        "a_broken_directory_gives_eio_and_the_rest_keeps_working",
        FUSE_ROOT,
    ) {
        return;
    }
    // plain-4k with /bigdir's blocks moved past the end of the image.
    let mut bytes = std::fs::read(fixture("plain-4k.erofs")).unwrap();
    let image = erofs_fuse::Image::open(&fixture("plain-4k.erofs"), &Default::default()).unwrap();
    let nid = image.resolve(b"/bigdir").unwrap().nid.0 as usize;
    let sb = image.superblock();
    let at = ((sb.meta_blkaddr as usize) << sb.block_bits) + nid * 32;
    bytes[at + 16..at + 20].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    fix_checksum(&mut bytes);
    let work = tempfile::tempdir().unwrap();
    let broken = work.path().join("broken.erofs");
    std::fs::write(&broken, &bytes).unwrap();

    let mount = FuseMount::new(&broken, &[], &[]);
    let err = std::fs::read_dir(mount.path().join("bigdir"))
        .and_then(|mut d| d.next().transpose())
        .expect_err("a directory with blocks past the end was listed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The server is still there and the rest of the tree reads fine.
    assert_eq!(
        std::fs::read(mount.path().join("hard/one")).unwrap().len(),
        10
    );
    assert!(
        std::fs::read_dir(mount.path().join("hard"))
            .unwrap()
            .count()
            >= 3
    );
}

/// Bytes `pid` has caused to be read from storage (`/proc/PID/io`), if
/// the kernel counts them.
fn storage_read_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("read_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Drops the page cache's copy of `path` (its pages are clean).
#[allow(unsafe_code)]
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: advice on an open descriptor; no memory is involved.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise {}", path.display());
}

#[test]
fn random_reads_of_a_cold_file_read_little_more_than_they_ask_for() {
    let test = "random_reads_of_a_cold_file_read_little_more_than_they_ask_for";
    if !have(test, FUSE_ROOT_MKFS) {
        return;
    }
    // The stress test above drops every cache again and again.
    let _alone = CACHE_DROPS.lock().unwrap_or_else(|e| e.into_inner());
    // On the disk the build lives on (a tmpfs /tmp would read nothing
    // from storage, and prove nothing).
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let mut next = xorshift(0x0dd5_eed5);
    let mut random_bytes = |mib: usize| -> Vec<u8> {
        (0..(mib << 20) / 8)
            .flat_map(|_| next().to_le_bytes())
            .collect()
    };
    let data = random_bytes(64);
    std::fs::write(tree.join("random.bin"), &data).unwrap();
    std::fs::write(tree.join("sequential.bin"), random_bytes(48)).unwrap();
    let image = work.path().join("big.erofs");
    run_ok(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&image)
            .arg(&tree),
    );
    evict(&image);
    let mount = FuseMount::new(&image, &[], &[]);
    let pid = server_pid(mount.path());
    let random = std::fs::File::open(mount.path().join("random.bin")).unwrap();
    let sequential = std::fs::File::open(mount.path().join("sequential.bin")).unwrap();

    // Reads from storage must show: a cold 48 MiB sequential read.
    let Some(before) = storage_read_bytes(pid) else {
        return skip(test, "/proc/PID/io (CONFIG_TASK_IO_ACCOUNTING)");
    };
    std::io::copy(&mut &sequential, &mut std::io::sink()).unwrap();
    let counted = storage_read_bytes(pid).unwrap() - before;
    if counted < 32 << 20 {
        return skip(
            test,
            &format!("storage reads counted ({counted} bytes for a cold 48 MiB read)"),
        );
    }

    // 128 reads of 4 KiB, 512 KiB apart: 0.5 MiB asked for. Read around
    // (the kernel's default for a mapping), each would bring in the
    // device's readahead window, 128 KiB on most disks and 8 MiB here.
    let before = storage_read_bytes(pid).unwrap();
    let mut buf = [0u8; 4096];
    for i in 0..128usize {
        let offset = i * (512 << 10) + (i * 7 % 100) * 4096 + 4096;
        std::os::unix::fs::FileExt::read_exact_at(&random, &mut buf, offset as u64).unwrap();
        assert!(buf[..] == data[offset..offset + 4096], "4 KiB at {offset}");
    }
    let cost = storage_read_bytes(pid).unwrap() - before;
    eprintln!(
        "server read {} KiB from storage for 128 random 4 KiB reads ({} KiB for a sequential 48 MiB)",
        cost >> 10,
        counted >> 10
    );
    assert!(
        cost < 8 << 20,
        "128 random 4 KiB reads cost {cost} bytes read from storage"
    );
}

#[test]
fn a_mount_and_a_lookup_read_a_few_pages_of_a_cold_image() {
    let test = "a_mount_and_a_lookup_read_a_few_pages_of_a_cold_image";
    if !have(test, FUSE_ROOT) {
        return;
    }
    let _alone = CACHE_DROPS.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("dir")).unwrap();
    let mut next = xorshift(0x5eed_0f0e);
    let data: Vec<u8> = (0..(16usize << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    std::fs::write(tree.join("big.bin"), &data).unwrap();
    for i in 0..50 {
        std::fs::write(tree.join(format!("dir/f{i}")), format!("{i}")).unwrap();
    }
    // Built by `convert`, which writes the metadata after the data, as
    // mkfs.erofs 1.9 does: far from the superblock.
    let image = work.path().join("cold.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "-q"])
            .arg(&tree)
            .arg(&image),
    );
    evict(&image);
    let Some(0) = cached_bytes(&image) else {
        return skip(test, "fincore, or an image the page cache keeps");
    };
    // What a mount helper's caller does: mount, then look a path up. The
    // kernel's erofs reads a page or two for it; a fault on a map advised
    // for sequential reads would read megabytes around the superblock.
    let mount = FuseMount::new(&image, &[], &[]);
    assert_eq!(
        std::fs::metadata(mount.path().join("dir/f7"))
            .unwrap()
            .len(),
        1
    );
    let cached = cached_bytes(&image).unwrap();
    eprintln!("mount and lookup: {cached} bytes of the image cached");
    assert!(
        cached <= 64 << 10,
        "mount and lookup brought {cached} bytes of the image into the page cache"
    );
    // A listing starts a walk: metadata then comes in large reads, and
    // everything still reads right.
    assert_eq!(
        std::fs::read_dir(mount.path().join("dir")).unwrap().count(),
        50
    );
    assert!(std::fs::read(mount.path().join("big.bin")).unwrap() == data);
}
