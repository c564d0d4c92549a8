//! Shared test helpers: fixtures (stored gzipped, unpacked once into
//! cargo's target tmpdir), the fixture table, privilege checks, commands.
#![allow(dead_code)]

pub mod lazy;
pub mod pulled;
pub mod registry;
#[cfg(feature = "privileged")]
pub mod relay;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One fixture image from `tests/fixtures` (copied from the shared set,
/// made by mkfs.erofs 1.9.3), with its extra devices and expected manifest.
pub struct Fixture {
    /// Image file name.
    pub image: &'static str,
    /// Extra device files, in device-table order.
    pub devices: &'static [&'static str],
    /// Manifest file name (several images share a tree).
    pub manifest: &'static str,
}

const TREE: &str = "tree.manifest.jsonl";
const TAR: &str = "tar.manifest.jsonl";
const TAR_AUFS: &str = "tar-aufs.manifest.jsonl";

/// Every fixture: the uncompressed ones, then the compressed ones.
pub const FIXTURES: &[Fixture] = &[
    Fixture {
        image: "plain-4k.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "plain-512.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "plain-no-xattr.erofs",
        devices: &[],
        manifest: "tree-no-xattr.manifest.jsonl",
    },
    Fixture {
        image: "chunked-16k.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "chunked-blobdev.erofs",
        devices: &["chunked-blobdev.blob"],
        manifest: TREE,
    },
    Fixture {
        image: "48bit.erofs",
        devices: &[],
        manifest: "tree-48bit.manifest.jsonl",
    },
    Fixture {
        image: "metabox.erofs",
        devices: &[],
        manifest: "tree-48bit.manifest.jsonl",
    },
    Fixture {
        image: "xattr-prefixes.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "tar-full.erofs",
        devices: &[],
        manifest: TAR,
    },
    Fixture {
        image: "targz-full.erofs",
        devices: &[],
        manifest: TAR,
    },
    Fixture {
        image: "tar-index.erofs",
        devices: &["tar-index.tar"],
        manifest: TAR,
    },
    // tar-index-aufs.tar is byte-identical to tar-index.tar; one copy is kept.
    Fixture {
        image: "tar-index-aufs.erofs",
        devices: &["tar-index.tar"],
        manifest: TAR_AUFS,
    },
    // containerd's single-file layer: the tar follows the index, no device.
    Fixture {
        image: "tar-index-appended.erofs",
        devices: &[],
        manifest: TAR_AUFS,
    },
    // Compressed (mkfs.erofs 1.9.3 options in tests/fixtures/README.md).
    Fixture {
        image: "lz4.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "lz4hc-pcl64k.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "lz4-legacy-full.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "lz4-ztailpack.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "lzma.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "deflate.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "zstd.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "multi-algo.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "fragments-dedupe.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "all-fragments.erofs",
        devices: &[],
        manifest: TREE,
    },
    Fixture {
        image: "48bit-zstd.erofs",
        devices: &[],
        manifest: "tree-48bit.manifest.jsonl",
    },
    Fixture {
        image: "tar-full-lz4hc.erofs",
        devices: &[],
        manifest: TAR,
    },
    // mkfs.erofs --xattr-inode-digest: a long xattr prefix with base
    // index 0, which the kernel accepts and never shows.
    Fixture {
        image: "xattr-inode-digest.erofs",
        devices: &[],
        manifest: TAR,
    },
];

/// A small deterministic pseudo-random generator (xorshift64) for tests
/// that corrupt images: the same seed, the same corruptions.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

static UNPACK: Mutex<()> = Mutex::new(());

/// Held by the tests that drop the page cache and by those it would upset
/// (in mount.rs and faults.rs, which share one process).
pub static CACHE_DROPS: Mutex<()> = Mutex::new(());

/// Path of an unpacked fixture file (`tests/fixtures/NAME.gz` gunzipped once).
pub fn fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let out = dir.join(name);
    let _guard = UNPACK.lock().unwrap_or_else(|e| e.into_inner());
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.gz"));
    let file = std::fs::File::open(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap();
    // Another test process may unpack the same file: write then rename.
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Expected manifest text of a fixture.
pub fn expected_manifest(f: &Fixture) -> String {
    std::fs::read_to_string(fixture(f.manifest)).unwrap()
}

/// Opens a fixture with the library.
pub fn open_fixture(f: &Fixture) -> erofs_fuse::Image {
    let options = erofs_fuse::OpenOptions {
        devices: f.devices.iter().map(|d| fixture(d)).collect(),
        ..Default::default()
    };
    erofs_fuse::Image::open(&fixture(f.image), &options)
        .unwrap_or_else(|e| panic!("{}: {e}", f.image))
}

/// The `erofs-fuse` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_erofs-fuse"))
}

/// A script under `scripts/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Writes `count` random layers of seed `seed` into `dir` with
/// scripts/gen_layers.py (its header says what each file is).
pub fn gen_layers(seed: u64, count: usize, dir: &Path) {
    run_ok(
        Command::new("python3")
            .arg(script("gen_layers.py"))
            .arg(seed.to_string())
            .arg(count.to_string())
            .arg(dir),
    );
}

/// Runs a command, returning its output; panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What a privileged test needs from the machine.
pub enum Need {
    /// Running as root.
    Root,
    /// The kernel's erofs (and loop devices).
    KernelErofs,
    /// A program on PATH.
    Program(&'static str),
    /// FUSE: /dev/fuse and the fuse filesystem.
    Fuse,
}

/// Whether the machine has everything in `needs`. When it does not, the test
/// should return early: this prints a loud SKIPPED line, or panics when
/// `EROFS_FUSE_REQUIRE_PRIVILEGED=1` (as CI sets) so nothing skips in CI.
pub fn have(test: &str, needs: &[Need]) -> bool {
    let mut missing = Vec::new();
    for need in needs {
        match need {
            Need::Root => {
                if !nix::unistd::Uid::effective().is_root() {
                    missing.push("root".to_string());
                }
            }
            Need::KernelErofs => {
                let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
                let loaded = fs.lines().any(|l| l.trim_end().ends_with("erofs"));
                let probe = loaded
                    || Command::new("modprobe")
                        .arg("erofs")
                        .status()
                        .is_ok_and(|s| s.success());
                if !probe || !Path::new("/dev/loop-control").exists() {
                    missing.push("kernel erofs with loop devices".to_string());
                }
            }
            Need::Fuse => {
                let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
                if !Path::new("/dev/fuse").exists()
                    || !fs.lines().any(|l| l.trim_end().ends_with("\tfuse"))
                {
                    missing.push("FUSE (/dev/fuse)".to_string());
                }
            }
            Need::Program(name) => {
                if which(name).is_none() {
                    missing.push(format!("program {name}"));
                }
            }
        }
    }
    if missing.is_empty() {
        return true;
    }
    skip(test, &missing.join(", "));
    false
}

/// Skips `test`, which needs `what` this machine lacks, with a loud line;
/// fails it instead under `EROFS_FUSE_REQUIRE_PRIVILEGED=1`.
pub fn skip(test: &str, what: &str) {
    let msg = format!("{test}: needs {what}");
    if std::env::var("EROFS_FUSE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{msg} (EROFS_FUSE_REQUIRE_PRIVILEGED=1 forbids skipping)");
    }
    eprintln!("\n*** SKIPPED {msg} ***\n");
}

/// Bytes of `path` in the page cache (fincore's RES, which maps the file
/// without reading it), or `None` without fincore.
pub fn cached_bytes(path: &Path) -> Option<u64> {
    which("fincore")?;
    let out = run_ok(
        Command::new("fincore")
            .args(["-n", "-b", "-o", "RES"])
            .arg(path),
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Finds a program on PATH (and in the sbin directories root has).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Line-by-line difference of two manifests, at most `max` lines, or None.
pub fn manifest_diff(expected: &str, got: &str, max: usize) -> Option<String> {
    if expected == got {
        return None;
    }
    let e: std::collections::BTreeSet<&str> = expected.lines().collect();
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let mut out = String::new();
    for line in e.difference(&g).take(max) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in g.difference(&e).take(max) {
        out.push_str(&format!("+ {line}\n"));
    }
    if out.is_empty() {
        out.push_str("same lines in a different order\n");
    }
    Some(out)
}

/// A kernel mount of an image, unmounted (and its loop devices detached)
/// on drop.
pub struct KernelMount {
    pub dir: tempfile::TempDir,
    loops: Vec<String>,
}

impl KernelMount {
    /// `mount -t erofs -o ro,loop IMAGE` with `device=` loop devices for
    /// `devices` (read-only).
    pub fn new(image: &Path, devices: &[PathBuf]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut loops = Vec::new();
        let mut opts = String::from("ro");
        for dev in devices {
            let out = run_ok(
                Command::new("losetup")
                    .args(["-f", "--show", "-r"])
                    .arg(dev),
            );
            let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
            opts.push_str(&format!(",device={name}"));
            loops.push(name);
        }
        let image_loop = run_ok(
            Command::new("losetup")
                .args(["-f", "--show", "-r"])
                .arg(image),
        );
        let image_loop = String::from_utf8_lossy(&image_loop.stdout)
            .trim()
            .to_string();
        loops.push(image_loop.clone());
        let mounted = run(Command::new("mount")
            .args(["-t", "erofs", "-o", &opts, &image_loop])
            .arg(dir.path()));
        let mount = Self { dir, loops };
        assert!(
            mounted.status.success(),
            "kernel mount of {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&mounted.stderr)
        );
        mount
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        for l in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(l).status();
        }
    }
}

/// `scripts/manifest.py DIR`: the manifest of a real directory tree.
pub fn tree_manifest(dir: &Path) -> String {
    let out = run_ok(Command::new("python3").arg(script("manifest.py")).arg(dir));
    String::from_utf8(out.stdout).expect("manifest.py prints UTF-8")
}

/// An erofs-fuse mount made by the binary (in background mode), unmounted
/// on drop.
pub struct FuseMount {
    pub dir: tempfile::TempDir,
}

impl FuseMount {
    /// `erofs-fuse mount IMAGE DIR --device ... EXTRA...`.
    pub fn new(image: &Path, devices: &[PathBuf], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount").arg(image).arg(dir.path()).args(extra);
        for d in devices {
            cmd.arg("--device").arg(d);
        }
        let mount = Self { dir };
        run_ok(&mut cmd);
        mount
    }

    /// `erofs-fuse mount --layer L ... DIR EXTRA...`: a merged stack,
    /// `layers` bottom first (each IMAGE[:DEVICE...]).
    pub fn layers(layers: &[String], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount");
        for l in layers {
            cmd.arg("--layer").arg(l);
        }
        cmd.arg(dir.path()).args(extra);
        let mount = Self { dir };
        run_ok(&mut cmd);
        mount
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The needs of a test that mounts with erofs-fuse as root.
pub const FUSE_ROOT: &[Need] = &[
    Need::Root,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
];

/// The needs of a test that compares an erofs-fuse mount with the
/// kernel's mount of the same image, as root.
pub const FUSE_ROOT_KERNEL: &[Need] = &[
    Need::Root,
    Need::KernelErofs,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
];

/// The needs of a test that makes an image with Debian's mkfs.erofs and
/// mounts it with erofs-fuse as root.
pub const FUSE_ROOT_MKFS: &[Need] = &[
    Need::Root,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("mkfs.erofs"),
];

/// Recomputes an image's superblock checksum as mkfs.erofs does, after a
/// test has patched bytes it covers.
pub fn fix_checksum(b: &mut [u8]) {
    let block = 1usize << b[1024 + 12];
    let len = if block > 1024 { block - 1024 } else { block };
    b[1028..1032].fill(0);
    let crc = !crc32c::crc32c(&b[1024..1024 + len]);
    b[1028..1032].copy_from_slice(&crc.to_le_bytes());
}

/// The root hash `verity format` (or veritysetup) printed.
pub fn printed_root_hash(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("Root hash:"));
    line.expect("a Root hash: line").trim().to_string()
}

/// The pid of the erofs-fuse server serving `mountpoint`.
pub fn server_pid(mountpoint: &Path) -> u32 {
    let needle = mountpoint.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.ends_with("erofs-fuse")) && args.contains(&needle) {
            return pid;
        }
    }
    panic!("no erofs-fuse server for {needle}");
}

/// A `/proc/PID/status` field in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resident KiB of the mappings of process `pid`'s own executable (its
/// code and data pages), from /proc/PID/smaps: part of VmHWM that grows
/// with the binary, not with what the server holds.
pub fn executable_rss_kib(pid: u32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut total = 0;
    let mut in_exe = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: "start-end perms offset dev inode [path]".
            in_exe = line.split_whitespace().nth(5) == Some(exe.as_str());
        } else if in_exe && first == "Rss:" {
            total += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}

/// An lz4hc image of ~150 MB of data (a 64 MiB file and 400 small ones,
/// half random, half compressible, and 48 MiB of zeros, which decode from
/// 64 KiB pclusters into extents of several MiB) made at test time.
pub fn large_image(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("small")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    // 8 KiB runs, alternately random and one repeated byte: some
    // pclusters compress, some are stored plain.
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i & 0x2000 == 0 {
                    state as u8
                } else {
                    (i >> 13) as u8
                }
            })
            .collect()
    };
    std::fs::write(tree.join("large.bin"), random(64 << 20)).unwrap();
    std::fs::write(tree.join("zeros.bin"), vec![0u8; 48 << 20]).unwrap();
    for i in 0..400 {
        std::fs::write(
            tree.join("small").join(format!("f{i}")),
            random(1 + i * 997 % 90_000),
        )
        .unwrap();
    }
    let image = dir.join("large.erofs");
    run_ok(
        Command::new("mkfs.erofs")
            .args(["--quiet", "-zlz4hc", "-C65536"])
            .arg(&image)
            .arg(&tree),
    );
    image
}

/// `st_blocks` of every path below `root` (lstat, not following symlinks
/// nor crossing mounts), keyed by path relative to it ("/" for the root).
pub fn stat_blocks(root: &Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), "/".to_string())];
    while let Some((path, rel)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        out.insert(rel.clone(), meta.blocks());
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = format!("{}/{name}", rel.trim_end_matches('/'));
                stack.push((entry.path(), child));
            }
        }
    }
    out
}

/// Paths whose `st_blocks` differ between two [`stat_blocks`] maps (at most
/// `max`), one line each, or None when they agree.
pub fn blocks_diff(
    kernel: &std::collections::BTreeMap<String, u64>,
    ours: &std::collections::BTreeMap<String, u64>,
    max: usize,
) -> Option<String> {
    let mut lines = Vec::new();
    for (path, k) in kernel {
        match ours.get(path) {
            Some(o) if o == k => {}
            Some(o) => lines.push(format!("{path}: kernel st_blocks {k}, ours {o}")),
            None => lines.push(format!("{path}: missing")),
        }
    }
    for path in ours.keys().filter(|p| !kernel.contains_key(*p)) {
        lines.push(format!("{path}: extra"));
    }
    let total = lines.len();
    lines.truncate(max);
    (total > 0).then(|| format!("{total} paths differ:\n{}", lines.join("\n")))
}
