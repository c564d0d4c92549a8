//! `diff` against the kernel: random lower stacks (scripts/gen_layers.py)
//! are kernel-mounted and stacked under a read-write kernel overlayfs
//! (upper on the tempdir's filesystem, redirect_dir, metacopy and index
//! off), random file operations run on it (create, modify, chmod, chown,
//! delete file and tree, dir replaced by file and back, opaque refill,
//! hard links, xattrs, symlinks), and the tree it shows is the oracle:
//! (a) erofs-fuse's merged mount of the lower layers and the `diff` layer
//! (converted with `convert --aufs`) must show it field by field;
//! (b) GNU tar extracting a copy of the lower view, then the diff layer
//! through a small OCI applier (whiteouts and opaque markers remove what
//! they name, then GNU tar extracts the rest) must give it too, link
//! counts aside (see [`without_nlink`]). Needs root, kernel erofs and
//! overlayfs, loop devices, FUSE and GNU tar.

use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Lower layers per stack.
const LAYERS: usize = 2;

/// File operations per upper directory.
const OPS: usize = 40;

const NEEDS: &[Need] = &[
    Need::Root,
    Need::KernelErofs,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
    Need::Program("tar"),
];

/// Upper directories per run; EROFS_FUSE_DIFF_RUNS overrides.
fn runs() -> u64 {
    std::env::var("EROFS_FUSE_DIFF_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A kernel overlayfs mount, unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(options: &str, at: &Path) -> Self {
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", options])
                .arg(at),
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The entries below `root` (not following symlinks), as relative paths
/// with whether each is a directory, sorted.
fn entries(root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let path = rel.join(name);
            let meta = fs::symlink_metadata(root.join(&path)).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta.is_dir()));
        }
    }
    out.sort();
    out
}

/// Kinds of file operation (see [`operate`]).
const KINDS: usize = 12;

/// Runs `OPS` random file operations on the merged tree at `root`; the
/// log, and which kinds succeeded.
fn operate(root: &Path, seed: u64) -> (Vec<String>, [bool; KINDS]) {
    let mut rng = xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut pick = |n: usize| (rng() % n as u64) as usize;
    let mut log = Vec::new();
    let mut done = [false; KINDS];
    for op in 0..OPS {
        let all = entries(root);
        let dirs: Vec<&PathBuf> = all.iter().filter(|e| e.1).map(|e| &e.0).collect();
        let files: Vec<&PathBuf> = all
            .iter()
            .filter(|e| !e.1 && fs::symlink_metadata(root.join(&e.0)).unwrap().is_file())
            .map(|e| &e.0)
            .collect();
        let (Some(&dir), Some(&file)) = (
            dirs.get(pick(dirs.len().max(1))),
            files.get(pick(files.len().max(1))),
        ) else {
            continue;
        };
        let fresh = dir.join(format!("d{seed}-{op}"));
        let (d, f, n) = (root.join(dir), root.join(file), root.join(&fresh));
        let what = pick(KINDS);
        let r = match what {
            0 => fs::write(&n, vec![b'a' + (op % 26) as u8; pick(5000)]),
            1 => fs::OpenOptions::new()
                .append(true)
                .open(&f)
                .and_then(|mut h| std::io::Write::write_all(&mut h, b"appended")),
            2 => fs::set_permissions(
                if pick(2) == 0 { &d } else { &f },
                fs::Permissions::from_mode([0o600, 0o644, 0o755, 0o700, 0o4755][pick(5)]),
            ),
            3 => std::os::unix::fs::lchown(
                if pick(2) == 0 { &d } else { &f },
                Some([0, 1000, 65534][pick(3)]),
                Some([0, 100, 1000][pick(3)]),
            ),
            4 => fs::remove_file(&f),
            5 => fs::remove_dir_all(&d),
            6 => fs::remove_dir_all(&d).and_then(|()| fs::write(&d, b"was a dir")),
            7 => fs::remove_file(&f)
                .and_then(|()| fs::create_dir(&f))
                .and_then(|()| fs::write(f.join("inside"), b"was a file")),
            8 => fs::remove_dir_all(&d)
                .and_then(|()| fs::create_dir(&d))
                .and_then(|()| fs::write(d.join("refill"), b"opaque refill")),
            9 => fs::hard_link(&f, &n),
            10 => xattr::set(
                if pick(2) == 0 { &d } else { &f },
                format!("user.k{}", pick(3)),
                // Newlines and '=' too: PAX records are split by length.
                if op % 2 == 0 {
                    format!("v{op}")
                } else {
                    format!("v\n{op}=")
                }
                .as_bytes(),
            ),
            _ => symlink(format!("../t{op}"), &n),
        };
        done[what] |= r.is_ok();
        log.push(format!(
            "{what} {} {} -> {r:?}",
            dir.display(),
            file.display()
        ));
    }
    (log, done)
}

/// A manifest without link counts: GNU tar's extraction breaks a lower
/// hard link when one name is replaced, while overlayfs (and the merged
/// mount) go on showing the lower inode's count on the other name.
fn without_nlink(manifest: &str) -> String {
    manifest
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("nlink");
            v.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Applies the OCI layer `layer` (a tar) over the tree at `root`: each
/// whiteout and opaque marker removes what it names, an entry whose type
/// differs from what is there removes that first, a directory entry over
/// a directory drops its xattrs, then GNU tar extracts the rest (times,
/// owners, modes, xattrs).
const APPLY: &str = r#"
import os, shutil, sys, tarfile
root, layer = sys.argv[1], sys.argv[2]
def remove(p):
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)
for m in tarfile.open(layer):
    d, base = os.path.split(m.name.rstrip("/"))
    here = os.path.join(root, d)
    if base == ".wh..wh..opq":
        if not os.path.isdir(here) or os.path.islink(here):
            continue
        for child in os.listdir(here):
            remove(os.path.join(here, child))
    elif base.startswith(".wh."):
        remove(os.path.join(here, base[4:]))
    else:
        p = os.path.normpath(os.path.join(root, m.name.rstrip("/")))
        if os.path.lexists(p) and (m.isdir() != (os.path.isdir(p) and not os.path.islink(p))):
            remove(p)
        elif m.isdir() and os.path.isdir(p):
            # The entry's metadata replaces the directory's, xattrs too
            # (GNU tar only sets those it carries).
            for name in os.listxattr(p, follow_symlinks=False):
                os.removexattr(p, name, follow_symlinks=False)
"#;

fn gnu_tar_view(work: &Path, lower_view: &Path, layer: &Path) -> String {
    let root = work.join("extracted");
    fs::create_dir(&root).unwrap();
    let xattrs = ["--xattrs", "--xattrs-include=*", "--numeric-owner"];
    let lower_tar = work.join("lower-view.tar");
    run_ok(
        Command::new("tar")
            .args(["--format=posix", "-cf"])
            .arg(&lower_tar)
            .args(xattrs)
            .arg("-C")
            .arg(lower_view)
            .arg("."),
    );
    run_ok(
        Command::new("tar")
            .args(["-xpf"])
            .arg(&lower_tar)
            .args(xattrs)
            .arg("-C")
            .arg(&root),
    );
    run_ok(
        Command::new("python3")
            .args(["-c", APPLY])
            .arg(&root)
            .arg(layer),
    );
    run_ok(
        Command::new("tar")
            .args(["-xpf"])
            .arg(layer)
            .args(xattrs)
            .args(["--exclude=.wh.*", "-C"])
            .arg(&root),
    );
    tree_manifest(&root)
}

/// One upper directory: made by the kernel, diffed, checked both ways;
/// which kinds of operation it ran.
fn check(seed: u64, failures: &mut Vec<String>) -> [bool; KINDS] {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    gen_layers(seed, LAYERS, w);
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        let image = w.join(format!("aufs{i}.erofs"));
        run_ok(
            Command::new(bin())
                .args(["convert", "--quiet", "--mode", "full", "--aufs"])
                .arg(w.join(format!("layer{i}.tar")))
                .arg(&image),
        );
        layers.push(image);
    }
    let kernel: Vec<KernelMount> = layers.iter().map(|l| KernelMount::new(l, &[])).collect();
    let lower: Vec<String> = kernel
        .iter()
        .rev()
        .map(|k| k.path().display().to_string())
        .collect();
    let (upper, workdir, merged, lower_view) = (
        w.join("upper"),
        w.join("work"),
        w.join("merged"),
        w.join("lower-view"),
    );
    for d in [&upper, &workdir, &merged, &lower_view] {
        fs::create_dir(d).unwrap();
    }
    let lower = lower.join(":");
    let _lower_only = Overlay::mount(&format!("ro,lowerdir={lower}"), &lower_view);
    let (expected, (log, done)) = {
        let _rw = Overlay::mount(
            &format!(
                "lowerdir={lower},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
                upper.display(),
                workdir.display()
            ),
            &merged,
        );
        let log = operate(&merged, seed);
        (tree_manifest(&merged), log)
    };
    let layer = w.join("diff.tar.gz");
    let mut cmd = Command::new(bin());
    cmd.arg("diff");
    for l in &layers {
        cmd.arg("--layer").arg(l);
    }
    run_ok(cmd.arg(&upper).arg(&layer));
    let image = w.join("diff.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "--quiet", "--mode", "full", "--aufs"])
            .arg(&layer)
            .arg(&image),
    );
    let mut stack: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    stack.push(image.display().to_string());
    let got = {
        let mount = FuseMount::layers(&stack, &[]);
        tree_manifest(mount.path())
    };
    let context = || format!("seed {seed} (ops: {})", log.join("; "));
    if let Some(diff) = manifest_diff(&expected, &got, 20) {
        failures.push(format!("{}\n(a) merged mount differs:\n{diff}", context()));
    }
    let plain = w.join("diff.tar");
    let gz = fs::File::open(&layer).unwrap();
    std::io::copy(
        &mut flate2::read::GzDecoder::new(gz),
        &mut fs::File::create(&plain).unwrap(),
    )
    .unwrap();
    let extracted = gnu_tar_view(w, &lower_view, &plain);
    if let Some(diff) = manifest_diff(&without_nlink(&expected), &without_nlink(&extracted), 20) {
        failures.push(format!(
            "{}\n(b) GNU tar extraction differs:\n{diff}",
            context()
        ));
    }
    done
}

#[test]
fn diff_layers_rebuild_what_overlayfs_shows() {
    if !have("diff_layers_rebuild_what_overlayfs_shows", NEEDS) {
        return;
    }
    let base: u64 = std::env::var("EROFS_FUSE_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    eprintln!(
        "diff_overlay: seeds {base}..{} (EROFS_FUSE_DIFF_SEED)",
        base + runs()
    );
    let mut failures = Vec::new();
    let mut done = [false; KINDS];
    for seed in base..base + runs() {
        for (all, this) in done.iter_mut().zip(check(seed, &mut failures)) {
            *all |= this;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    if runs() >= 10 {
        assert_eq!(done, [true; KINDS], "operation kinds that never succeeded");
    }
}
