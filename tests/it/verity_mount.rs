//! Mounting with dm-verity: verified mounts of the fixtures equal their
//! manifests, bad trees fail before the mount is live, and no tampered
//! byte (image, tar or hash files) is ever served.
use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

const EIO: i32 = 5;
const ENOTCONN: i32 = 107;

/// `ROOT_HASH:TREE` from a fixture's `.roothash` file.
fn spec(roothash: &Path, tree: &Path) -> String {
    let root = std::fs::read_to_string(roothash).unwrap();
    format!("{}:{}", root.trim(), tree.display())
}

/// A copy of `name` in `dir` with containerd's verity layout appended by
/// `verity format --append`; returns it and its sidecar.
fn appended(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let copy = dir.join(name);
    std::fs::copy(fixture(name), &copy).unwrap();
    run_ok(
        Command::new(bin())
            .args(["verity", "format", "--append"])
            .arg(&copy),
    );
    let sidecar = PathBuf::from(format!("{}.dmverity", copy.display()));
    (copy, sidecar)
}

/// A tree over `data` with 512-byte data blocks (so every byte of a
/// tar-index image, 512-byte aligned, is covered); returns its spec.
fn tree_512(data: &Path, tree: &Path) -> String {
    let out = run_ok(
        Command::new(bin())
            .args(["verity", "format", "--data-block-size", "512"])
            .arg(data)
            .arg(tree),
    );
    let root = printed_root_hash(&out.stdout);
    format!("{root}:{}", tree.display())
}

fn tar_pair_args(image_spec: &str) -> Vec<String> {
    vec![
        "--verity".into(),
        image_spec.into(),
        "--device-verity".into(),
        spec(
            &fixture("tar-index.tar.roothash"),
            &fixture("tar-index.tar.verity"),
        ),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn verified_mounts_equal_the_fixture_manifests() {
    if !have("verified_mounts_equal_the_fixture_manifests", FUSE_ROOT) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = std::fs::read_to_string(fixture("tree.manifest.jsonl")).unwrap();
    let tar = std::fs::read_to_string(fixture("tar.manifest.jsonl")).unwrap();
    let tar_aufs = std::fs::read_to_string(fixture("tar-aufs.manifest.jsonl")).unwrap();
    let check = |what: &str, expected: &str, mount: &FuseMount| {
        if let Some(diff) = manifest_diff(expected, &tree_manifest(mount.path()), 10) {
            panic!("{what}: verified mount differs from the manifest:\n{diff}");
        }
    };

    // plain-4k.erofs with the fixture's tree and root hash.
    let plain = spec(
        &fixture("plain-4k.erofs.roothash"),
        &fixture("plain-4k.erofs.verity"),
    );
    let mount = FuseMount::new(&fixture("plain-4k.erofs"), &[], &["--verity", &plain]);
    check("plain-4k --verity", &tree, &mount);
    drop(mount);

    // A tree without a superblock, its parameters in the spec.
    let bare = dir.path().join("plain.bare");
    let out = run_ok(
        Command::new(bin())
            .args(["verity", "format", "--no-superblock", "--salt", "0011"])
            .args(["--data-block-size", "512", "--hash-block-size", "1024"])
            .arg(fixture("plain-4k.erofs"))
            .arg(&bare),
    );
    let root = printed_root_hash(&out.stdout);
    let bare_spec = format!(
        "{root}:{}:salt=0011:data-block-size=512:hash-block-size=1024",
        bare.display()
    );
    let mount = FuseMount::new(&fixture("plain-4k.erofs"), &[], &["--verity", &bare_spec]);
    check("plain-4k --verity without superblock", &tree, &mount);
    drop(mount);

    // The tar-index pair: the tar with the fixture's tree, the index with
    // a tree of 512-byte blocks (the fixture's covers whole 4 KiB blocks
    // only, see the next test).
    let tar_dev = vec![fixture("tar-index.tar")];
    let index_spec = tree_512(
        &fixture("tar-index.erofs"),
        &dir.path().join("index.verity"),
    );
    let args = tar_pair_args(&index_spec);
    let mount = FuseMount::new(&fixture("tar-index.erofs"), &tar_dev, &strs(&args));
    check("tar-index pair --verity/--device-verity", &tar, &mount);
    drop(mount);

    // The same as -o options, through the mount-helper form.
    let target = tempfile::tempdir().unwrap();
    let options = format!(
        "ro,verity={index_spec},device={},device_verity={}",
        fixture("tar-index.tar").display(),
        args[3]
    );
    run_ok(
        Command::new(bin())
            .arg(fixture("tar-index.erofs"))
            .arg(target.path())
            .args(["-o", &options]),
    );
    let mount = FuseMount {
        dir: target, // unmounted on drop
    };
    check("tar-index pair -o verity=,device_verity=", &tar, &mount);
    drop(mount);

    // containerd's single-file layers, with their sidecars.
    for (name, expected) in [
        ("plain-4k.erofs", &tree),
        ("tar-index-appended.erofs", &tar_aufs),
    ] {
        let (image, sidecar) = appended(dir.path(), name);
        let sidecar_arg = sidecar.display().to_string();
        let mount = FuseMount::new(&image, &[], &["--dmverity", &sidecar_arg]);
        check(&format!("{name} + --dmverity"), expected, &mount);
        drop(mount);
        let target = tempfile::tempdir().unwrap();
        run_ok(
            Command::new(bin())
                .arg(&image)
                .arg(target.path())
                .args(["-o", &format!("dmverity={sidecar_arg}")]),
        );
        let mount = FuseMount { dir: target };
        check(&format!("{name} -o dmverity="), expected, &mount);
    }
}

#[test]
fn bytes_a_tree_does_not_cover_are_never_served() {
    if !have("bytes_a_tree_does_not_cover_are_never_served", FUSE_ROOT) {
        return;
    }
    // tar-index.erofs is 14336 bytes; the fixture's tree, made by
    // veritysetup with 4 KiB data blocks, covers the first 3 blocks (12288
    // bytes), as a dm-verity device of it would be 12288 bytes long. The
    // last 2048 bytes hold metadata that no hash covers: those entries
    // must fail with EIO, and everything else must equal the clean mount.
    let clean_mount = FuseMount::new(
        &fixture("tar-index.erofs"),
        &[fixture("tar-index.tar")],
        &[],
    );
    let clean = walk(clean_mount.path());
    drop(clean_mount);
    let image_spec = spec(
        &fixture("tar-index.erofs.roothash"),
        &fixture("tar-index.erofs.verity"),
    );
    let args = tar_pair_args(&image_spec);
    let mount = FuseMount::new(
        &fixture("tar-index.erofs"),
        &[fixture("tar-index.tar")],
        &strs(&args),
    );
    let outcome = compare(&clean, &walk(mount.path()));
    assert!(outcome.wrong.is_empty(), "{:#?}", outcome.wrong);
    assert!(
        outcome.failed > 0,
        "the uncovered tail of tar-index.erofs was served"
    );
}

#[test]
fn bad_trees_fail_before_the_mount_is_live() {
    if !have("bad_trees_fail_before_the_mount_is_live", FUSE_ROOT) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("plain-4k.erofs");
    let tree = fixture("plain-4k.erofs.verity");
    let root = std::fs::read_to_string(fixture("plain-4k.erofs.roothash")).unwrap();
    let root = root.trim();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let good_tree = std::fs::read(&tree).unwrap();
    let mut wrong_root = root.to_string();
    wrong_root.replace_range(0..1, if root.starts_with('0') { "1" } else { "0" });
    let mut bad_signature = good_tree.clone();
    bad_signature[0] ^= 1;
    let mut bad_top = good_tree.clone();
    bad_top[4096 + 7] ^= 1;
    let short = write("short.verity", &good_tree[..good_tree.len() - 4096]);
    let bad_sig = write("sig.verity", &bad_signature);
    let bad_top = write("top.verity", &bad_top);
    let big = write("big", &vec![7u8; 8 << 20]);
    let big_spec = tree_512(Path::new(&big), &dir.path().join("big.verity"));
    let junk_sidecar = write("junk.dmverity", b"{\"roothash\": 12}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--verity".into(),
                format!("{wrong_root}:{}", tree.display()),
            ],
            "root hash does not match",
        ),
        (
            vec!["--verity".into(), format!("{root}:{bad_top}")],
            "root hash does not match",
        ),
        (
            vec!["--verity".into(), format!("{root}:{short}")],
            "past the end",
        ),
        (
            vec!["--verity".into(), format!("{root}:{bad_sig}")],
            "bad signature",
        ),
        (
            vec!["--verity".into(), format!("{root}:{}:8192", tree.display())],
            "bad signature",
        ),
        (
            vec![
                "--verity".into(),
                format!("{root}:{}:99999999", tree.display()),
            ],
            "past the end",
        ),
        // A tree for a bigger file than the image.
        (vec!["--verity".into(), big_spec], "the file has"),
        (vec!["--verity".into(), "abc:x".into()], "hex digits"),
        (
            vec!["--dmverity".into(), junk_sidecar.clone()],
            "not a .dmverity sidecar",
        ),
        (
            vec!["--dmverity".into(), format!("{junk_sidecar}.missing")],
            "No such file",
        ),
    ];
    for (args, message) in cases {
        let target = tempfile::tempdir().unwrap();
        let out = run(Command::new(bin())
            .arg("mount")
            .arg(&image)
            .arg(target.path())
            .args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(&target.path().display().to_string());
        if mounted {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(target.path())
                .status();
        }
        assert!(
            !out.status.success() && !mounted,
            "{args:?}: mounted anyway ({stderr})"
        );
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // A verified image whose device would be served unverified.
    let target = tempfile::tempdir().unwrap();
    let index_spec = tree_512(&fixture("tar-index.erofs"), &dir.path().join("i.verity"));
    let out = run(Command::new(bin())
        .arg("mount")
        .arg(fixture("tar-index.erofs"))
        .arg(target.path())
        .args(["--verity", &index_spec, "--device"])
        .arg(fixture("tar-index.tar")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("has no verity tree"), "{stderr}");
}

/// Names and values of a path's xattrs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a reader sees of one path.
#[derive(Debug, PartialEq)]
struct Seen {
    /// type, mode, owner, size, mtime, links, rdev (or the errno of lstat).
    meta: Result<String, i32>,
    /// sha256 of the contents, the symlink target, or the sorted names of
    /// a directory.
    content: Result<Vec<u8>, i32>,
    /// Every xattr, name and value.
    xattrs: Result<Xattrs, i32>,
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Everything a reader can see of the tree at `root`, by path.
fn walk(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut seen = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path);
        let content = match &meta {
            Err(_) => Err(0),
            Ok(m) if m.is_dir() => std::fs::read_dir(&path).map_err(errno).and_then(|list| {
                let mut names = Vec::new();
                for entry in list {
                    let entry = entry.map_err(errno)?;
                    names.push(entry.file_name());
                    todo.push(entry.path());
                }
                names.sort();
                Ok(format!("{names:?}").into_bytes())
            }),
            Ok(m) if m.is_symlink() => std::fs::read_link(&path)
                .map(|t| t.into_os_string().into_encoded_bytes())
                .map_err(errno),
            Ok(m) if m.is_file() => std::fs::read(&path)
                .map(|b| Sha256::digest(&b).to_vec())
                .map_err(errno),
            Ok(_) => Ok(Vec::new()),
        };
        let xattrs = xattr::list(&path).map_err(errno).and_then(|names| {
            names
                .map(|n| {
                    let value = xattr::get(&path, &n).map_err(errno)?.unwrap_or_default();
                    Ok((n.into_encoded_bytes(), value))
                })
                .collect()
        });
        let meta = meta
            .map(|m| {
                format!(
                    "{:o} {}:{} {} {}.{} {} {}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.nlink(),
                    m.rdev()
                )
            })
            .map_err(errno);
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        seen.insert(
            relative,
            Seen {
                meta,
                content,
                xattrs,
            },
        );
    }
    seen
}

/// How a walk of a tampered mount compares with the clean one.
#[derive(Debug, Default)]
struct Outcome {
    /// Reads that failed with EIO.
    failed: usize,
    /// Anything that differs from the clean tree without failing, or
    /// fails with another errno: must stay empty.
    wrong: Vec<String>,
}

fn compare(clean: &BTreeMap<PathBuf, Seen>, got: &BTreeMap<PathBuf, Seen>) -> Outcome {
    let mut outcome = Outcome::default();
    for (path, seen) in got {
        let Some(expected) = clean.get(path) else {
            outcome
                .wrong
                .push(format!("{}: not in the image", path.display()));
            continue;
        };
        let mut check = |what: &str, same: bool, err: Option<i32>| match err {
            Some(EIO) | Some(0) => outcome.failed += 1,
            Some(e) => outcome
                .wrong
                .push(format!("{}: {what}: errno {e}", path.display())),
            None if !same => outcome
                .wrong
                .push(format!("{}: {what} differs", path.display())),
            None => {}
        };
        check(
            "attributes",
            seen.meta == expected.meta,
            seen.meta.as_ref().err().copied(),
        );
        check(
            "contents",
            seen.content == expected.content,
            seen.content.as_ref().err().copied(),
        );
        check(
            "xattrs",
            seen.xattrs == expected.xattrs,
            seen.xattrs.as_ref().err().copied(),
        );
    }
    outcome
}

/// One set of files to tamper with: the mount's arguments and the files
/// whose bytes get flipped.
struct Case {
    name: &'static str,
    image: PathBuf,
    devices: Vec<PathBuf>,
    args: Vec<String>,
    targets: Vec<PathBuf>,
}

#[test]
fn tampered_bytes_are_never_served() {
    if !have("tampered_bytes_are_never_served", FUSE_ROOT) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let path = dir.path().join(name);
        std::fs::copy(fixture(name), &path).unwrap();
        path
    };
    let flips: usize = std::env::var("VERITY_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240);

    // The tar-index pair: index (512-byte tree), tar, both hash files.
    let index = copy("tar-index.erofs");
    let tar = copy("tar-index.tar");
    let tar_tree = copy("tar-index.tar.verity");
    let index_tree = dir.path().join("tar-index.erofs.verity512");
    let index_spec = tree_512(&index, &index_tree);
    let tar_spec = spec(&fixture("tar-index.tar.roothash"), &tar_tree);
    // plain-4k with its tree in a separate file.
    let plain = copy("plain-4k.erofs");
    let plain_tree = copy("plain-4k.erofs.verity");
    let plain_spec = spec(&fixture("plain-4k.erofs.roothash"), &plain_tree);
    // containerd's single-file tar-index layer: index, tar and tree.
    let (layer, sidecar) = appended(dir.path(), "tar-index-appended.erofs");
    let cases = [
        Case {
            name: "tar-index pair",
            image: index.clone(),
            devices: vec![tar.clone()],
            args: vec![
                "--verity".into(),
                index_spec,
                "--device-verity".into(),
                tar_spec,
            ],
            targets: vec![index, tar, index_tree, tar_tree],
        },
        Case {
            name: "plain-4k",
            image: plain.clone(),
            devices: vec![],
            args: vec!["--verity".into(), plain_spec],
            targets: vec![plain, plain_tree],
        },
        Case {
            name: "appended layer",
            image: layer.clone(),
            devices: vec![],
            args: vec!["--dmverity".into(), sidecar.display().to_string()],
            targets: vec![layer],
        },
    ];

    let mut random = xorshift(0x5eed_f11b);
    let (mut refused, mut detected, mut harmless) = (0, 0, 0);
    let mut wrong = Vec::new();
    let log = dir.path().join("server.log");
    let log_arg = log.display().to_string();
    for case in &cases {
        let clean_mount = FuseMount::new(&case.image, &case.devices, &strs(&case.args));
        let clean = walk(clean_mount.path());
        drop(clean_mount);
        for i in 0..flips / cases.len() {
            let target = &case.targets[i % case.targets.len()];
            let mut bytes = std::fs::read(target).unwrap();
            let at = (random() % bytes.len() as u64) as usize;
            let original = bytes[at];
            bytes[at] ^= 1 << (random() % 8);
            std::fs::write(target, &bytes).unwrap();

            let mountpoint = tempfile::tempdir().unwrap();
            let _ = std::fs::remove_file(&log);
            let mut cmd = Command::new(bin());
            cmd.arg("mount")
                .arg(&case.image)
                .arg(mountpoint.path())
                .args(&case.args)
                .args(["--log-file", &log_arg]);
            for d in &case.devices {
                cmd.arg("--device").arg(d);
            }
            let what = format!("{}: {} byte {at}", case.name, target.display());
            if !run(&mut cmd).status.success() {
                // The tree's superblock or top, or the root hash check.
                refused += 1;
            } else {
                let mount = FuseMount { dir: mountpoint };
                let outcome = compare(&clean, &walk(mount.path()));
                let alive =
                    std::fs::metadata(mount.path()).map_or_else(|e| errno(e) != ENOTCONN, |_| true);
                assert!(alive, "{what}: the server died");
                drop(mount);
                if !outcome.wrong.is_empty() {
                    wrong.push(format!("{what}: {:?}", outcome.wrong));
                }
                if outcome.failed > 0 && outcome.wrong.is_empty() {
                    detected += 1;
                    // The counter reaches the log when the server exits.
                    let counted = (0..100).any(|_| {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("mismatches"))
                    });
                    assert!(counted, "{what}: no mismatch count in the log at unmount");
                } else {
                    harmless += 1;
                }
            }
            bytes[at] = original;
            std::fs::write(target, &bytes).unwrap();
        }
    }
    eprintln!(
        "{} flips: {refused} refused at mount, {detected} gave EIO, {harmless} changed nothing read",
        refused + detected + harmless
    );
    assert!(wrong.is_empty(), "tampered bytes were served:\n{wrong:#?}");
    assert!(refused + detected + harmless >= 200);
    // Most bytes of these files are read by a full walk: if few flips are
    // caught, verification is not happening.
    assert!(
        detected * 2 > flips,
        "only {detected} of {flips} flips caught"
    );
}

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn the_serving_process_verifies_ahead() {
    if !have("the_serving_process_verifies_ahead", FUSE_ROOT) {
        return;
    }
    // The server forks after opening the image: the verify-ahead thread
    // must run in the forked child that serves, started when it serves.
    let image_spec = spec(
        &fixture("plain-4k.erofs.roothash"),
        &fixture("plain-4k.erofs.verity"),
    );
    let mount = FuseMount::new(&fixture("plain-4k.erofs"), &[], &["--verity", &image_spec]);
    std::fs::read(mount.path().join("sizes/text_1048593")).unwrap();
    let names = thread_names(server_pid(mount.path()));
    assert!(
        names.iter().any(|n| n == "verity-ahead"),
        "no verity-ahead thread in the server: {names:?}"
    );
    // Without verity there is nothing to verify ahead.
    let plain = FuseMount::new(&fixture("plain-4k.erofs"), &[], &[]);
    let names = thread_names(server_pid(plain.path()));
    assert!(!names.iter().any(|n| n == "verity-ahead"), "{names:?}");
}
