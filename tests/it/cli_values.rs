//! Every subcommand, given zero, huge and malformed values for each of its
//! numeric options, exits with a status (0, 1 or 2) and never panics.
//! Mounts that do come up are unmounted at once.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Values every numeric option is tried with.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "511",
    "513",
    "4095",
    "4097",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "1e3",
    "0x10",
    "abc",
    "",
];

/// More values for options that take sizes (`64M`).
const SIZES: &[&str] = &["1T", "16383P", "17179869183G", "99999999999T", "1Q", "M"];

/// A command's longest run: none of these should get near it.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `args`, failing the test on a panic, a signal, a hang or an exit
/// status other than 0, 1 or 2. Unmounts `mountpoint` if the run mounted it.
fn try_args(args: &[String], mountpoint: Option<&Path>) {
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("erofs-fuse {args:?} ran for more than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    if let Some(mnt) = mountpoint {
        unmount(mnt);
    }
    assert!(
        !stderr.contains("panicked"),
        "erofs-fuse {args:?} panicked:\n{stderr}"
    );
    assert!(
        matches!(status.code(), Some(0..=2)),
        "erofs-fuse {args:?} ended with {status}:\n{stderr}"
    );
}

/// Unmounts `mnt` if something is mounted there.
fn unmount(mnt: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let canonical = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let needle = format!(" {} ", canonical.display());
    if mounts.contains(&needle) {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// `base` with `option` set to each of `values` (as `--opt=V` so an empty or
/// negative value reaches the parser).
fn each(base: &[String], option: &str, values: &[&str], mnt: Option<&Path>) {
    for value in values {
        let mut args = base.to_vec();
        args.push(format!("{option}={value}"));
        try_args(&args, mnt);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The fixture with a verity tree, its tree and root hash.
fn verity_fixture() -> (PathBuf, PathBuf, String) {
    let image = fixture("plain-4k.erofs");
    let tree = fixture("plain-4k.erofs.verity");
    let root = std::fs::read_to_string(fixture("plain-4k.erofs.roothash")).unwrap();
    (image, tree, root.trim().to_string())
}

/// Verity specs with each numeric part set to `value`.
fn verity_specs(root: &str, tree: &Path, value: &str) -> Vec<String> {
    let tree = path(tree);
    vec![
        format!("{root}:{tree}:{value}"),
        format!("{root}:{tree}:data-block-size={value}"),
        format!("{root}:{tree}:hash-block-size={value}"),
        format!("{root}:{tree}:data-blocks={value}"),
        format!("{root}:{tree}:salt=-:data-block-size={value}:hash-block-size={value}"),
    ]
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn reading_commands_survive_any_numeric_value() {
    let (image, tree, root) = verity_fixture();
    let commands: &[&[&str]] = &[
        &["inspect"],
        &["ls", "-R"],
        &["stat"],
        &["manifest"],
        &["fsck"],
    ];
    let mut all: Vec<&str> = NUMBERS.to_vec();
    all.extend(SIZES);
    for command in commands {
        let mut base = strings(command);
        base.push(path(&image));
        if command[0] == "stat" {
            base.push("/".into());
        }
        each(&base, "--offset", NUMBERS, None);
        each(&base, "--cache-size", &all, None);
        for value in NUMBERS {
            for spec in verity_specs(&root, &tree, value) {
                let mut args = base.clone();
                args.push(format!("--verity={spec}"));
                try_args(&args, None);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, value) in NUMBERS.iter().enumerate() {
        let dest = dir.path().join(format!("x{i}"));
        let args = strings(&["extract", &path(&image), &path(&dest)]);
        let mut with = args.clone();
        with.push(format!("--offset={value}"));
        try_args(&with, None);
        let _ = std::fs::remove_dir_all(&dest);
        let mut with = args;
        with.push(format!("--cache-size={value}"));
        try_args(&with, None);
        let _ = std::fs::remove_dir_all(&dest);
    }
}

#[test]
fn verity_commands_survive_any_numeric_value() {
    let (image, tree, root) = verity_fixture();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, vec![7u8; 64 * 1024]).unwrap();
    let out = dir.path().join("tree");
    for option in ["--data-block-size", "--hash-block-size"] {
        let base = strings(&["verity", "format", &path(&data), &path(&out)]);
        each(&base, option, NUMBERS, None);
        let mut base = base;
        base.push("--no-superblock".into());
        each(&base, option, NUMBERS, None);
    }
    let verify = strings(&["verity", "verify", &path(&image), &path(&tree), &root]);
    each(&verify, "--hash-offset", NUMBERS, None);
    let mut raw = verify.clone();
    raw.push("--no-superblock".into());
    for option in ["--data-blocks", "--data-block-size", "--hash-block-size"] {
        each(&raw, option, NUMBERS, None);
    }
}

#[test]
fn convert_survives_any_numeric_value() {
    let dir = tempfile::tempdir().unwrap();
    let layer = fixture("tar-index.tar");
    for (i, value) in NUMBERS.iter().enumerate() {
        let output = dir.path().join(format!("out{i}.erofs"));
        let base = strings(&[
            "convert",
            "-q",
            "--mode",
            "full",
            &path(&layer),
            &path(&output),
        ]);
        each(&base, "--implied-mtime", &[value], None);
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn mounts_survive_any_numeric_value() {
    if !have("mounts_survive_any_numeric_value", FUSE_ROOT) {
        return;
    }
    let (image, tree, root) = verity_fixture();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let mount = strings(&["mount", &path(&image), &path(&mnt)]);
    let serve = strings(&["store", "serve", &path(&store), &path(&mnt)]);
    let mut all: Vec<&str> = NUMBERS.to_vec();
    all.extend(SIZES);
    for base in [&mount, &serve] {
        each(base, "--threads", NUMBERS, Some(&mnt));
        each(base, "--readahead", &all, Some(&mnt));
        each(base, "--cache-size", &all, Some(&mnt));
        for option in ["threads", "cache_size", "readahead"] {
            for value in &all {
                let mut args = base.clone();
                args.push(format!("-o{option}={value}"));
                try_args(&args, Some(&mnt));
            }
        }
    }
    each(&mount, "--offset", NUMBERS, Some(&mnt));
    for value in NUMBERS {
        for spec in verity_specs(&root, &tree, value) {
            let mut args = mount.clone();
            args.push(format!("--verity={spec}"));
            try_args(&args, Some(&mnt));
            let mut args = mount.clone();
            args.push(format!("-overity={spec}"));
            try_args(&args, Some(&mnt));
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn threads_beyond_the_open_file_limit_fail_before_mounting() {
    if !have(
        "threads_beyond_the_open_file_limit_fail_before_mounting",
        FUSE_ROOT,
    ) {
        return;
    }
    let image = fixture("plain-4k.erofs");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // No threads, or more than the most a mount takes: a usage error, and
    // nothing mounted.
    for threads in ["0", "1025"] {
        let out = Command::new(bin())
            .args(["mount", "--threads", threads])
            .arg(&image)
            .arg(&mnt)
            .output()
            .unwrap();
        let listed = std::fs::read_dir(&mnt).map(|d| d.count()).unwrap_or(0);
        unmount(&mnt);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--threads {threads} was accepted"
        );
        assert_eq!(listed, 0, "--threads {threads} mounted");
    }
    // A hard limit of 100 open files: 500 threads cannot each hold a
    // /dev/fuse descriptor, and the mount must say so instead of exiting 0.
    let out = Command::new("prlimit")
        .args(["--nofile=100:100", "--"])
        .arg(bin())
        .args(["mount", "--threads", "500"])
        .arg(&image)
        .arg(&mnt)
        .output()
        .unwrap();
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(&format!(
            " {} ",
            std::fs::canonicalize(&mnt).unwrap().display()
        ));
    unmount(&mnt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!mounted, "a mount was left at {}", mnt.display());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("open files"), "{stderr}");
    // Within the hard limit, the soft one is raised as needed.
    let out = Command::new("prlimit")
        .args(["--nofile=50:4096", "--"])
        .arg(bin())
        .args(["mount", "--threads", "200"])
        .arg(&image)
        .arg(&mnt)
        .output()
        .unwrap();
    let listed = std::fs::read_dir(&mnt).map(|d| d.count()).unwrap_or(0);
    unmount(&mnt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed > 0, "the mount with 200 threads serves nothing");
}
