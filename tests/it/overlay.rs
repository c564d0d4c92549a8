//! Merged multi-layer mounts (`mount --layer`) against the kernel's
//! overlayfs: random layer stacks (scripts/gen_layers.py, OCI diffs with
//! whiteouts and opaque directories) are converted, each layer is mounted
//! with kernel erofs and the layers are stacked with kernel overlayfs; the
//! merged erofs-fuse mount of the same layers must show the same tree,
//! field by field and byte for byte. It must do so for layers converted
//! with --aufs (overlayfs whiteouts, which the kernel understands) and for
//! layers that keep OCI's `.wh.` files (which only erofs-fuse understands),
//! in full and in tar-index form. Needs root, kernel erofs and overlayfs,
//! loop devices and FUSE.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Layers per stack.
const LAYERS: usize = 4;

/// Stacks per run; EROFS_FUSE_OVERLAY_STACKS overrides.
fn stack_count() -> u64 {
    std::env::var("EROFS_FUSE_OVERLAY_STACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A kernel overlayfs mount of lower directories (top first), unmounted on
/// drop.
struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    fn new(lower_top_first: &[&Path]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lower: Vec<String> = lower_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("ro,lowerdir={}", lower.join(":")))
                .arg(dir.path()),
        );
        Self { dir }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

const NEEDS: &[Need] = &[
    Need::Root,
    Need::KernelErofs,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
    Need::Program("unshare"),
];

fn convert(tar: &Path, out: &Path, args: &[&str]) {
    run_ok(
        Command::new(bin())
            .arg("convert")
            .arg("--quiet")
            .args(args)
            .arg(tar)
            .arg(out),
    );
}

/// One generated stack: its layers converted three ways, and the tree
/// kernel overlayfs shows for it.
struct Generated {
    _work: tempfile::TempDir,
    /// Converted with --aufs (overlayfs whiteouts), bottom first.
    aufs: Vec<PathBuf>,
    /// Full images keeping OCI's .wh. files.
    oci: Vec<PathBuf>,
    /// Tar-index images keeping OCI's .wh. files, as IMAGE:TAR.
    index: Vec<String>,
    /// Kernel erofs layers under kernel overlayfs, walked.
    expected: String,
    /// Its hard-link groups.
    links: LinkGroups,
}

/// The paths of each file that has more than one, as sets.
type LinkGroups = std::collections::BTreeSet<Vec<String>>;

/// Groups the files below `root` by inode: hard links must share one.
fn link_groups(root: &Path) -> LinkGroups {
    use std::os::unix::fs::MetadataExt;
    let mut by_inode: std::collections::HashMap<(u64, u64), Vec<String>> = Default::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.nlink() > 1 {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string();
                by_inode
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel);
            }
        }
    }
    by_inode
        .into_values()
        .map(|mut paths| {
            paths.sort();
            paths
        })
        .collect()
}

fn generate(seed: u64) -> Generated {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    gen_layers(seed, LAYERS, w);
    let (mut aufs, mut oci, mut index) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..LAYERS {
        let tar = w.join(format!("layer{i}.tar"));
        let a = w.join(format!("aufs{i}.erofs"));
        convert(&tar, &a, &["--mode", "full", "--aufs"]);
        let o = w.join(format!("oci{i}.erofs"));
        convert(&tar, &o, &["--mode", "full"]);
        let x = w.join(format!("index{i}.erofs"));
        convert(&tar, &x, &["--mode", "index"]);
        aufs.push(a);
        oci.push(o);
        index.push(format!("{}:{}", x.display(), tar.display()));
    }
    let kernel: Vec<KernelMount> = aufs.iter().map(|a| KernelMount::new(a, &[])).collect();
    let top_first: Vec<&Path> = kernel.iter().rev().map(|k| k.path()).collect();
    let overlay = Overlay::new(&top_first);
    let expected = tree_manifest(overlay.dir.path());
    assert!(expected.lines().count() > 20, "seed {seed}: a tiny tree");
    let links = link_groups(overlay.dir.path());
    Generated {
        _work: work,
        aufs,
        oci,
        index,
        expected,
        links,
    }
}

/// Runs `script` in a new user and mount namespace whose ids 0..65535 are
/// the host's (so owners read as on the host). Root writes the maps
/// itself: newuidmap would want /etc/subuid entries for root.
fn in_user_namespace(script: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("unshare")
        .args(["-U", "-m", "sh", "-c"])
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // unshare execs sh, so the child is the namespaced process.
    let pid = child.id();
    let mut mapped = false;
    for _ in 0..200 {
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
        if ns.is_some() && ns != std::fs::read_link("/proc/self/ns/user").ok() {
            mapped = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(mapped, "unshare never entered a user namespace");
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), "0 0 65536\n").unwrap();
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait_with_output().unwrap()
}

fn strings(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn merged_layers_show_what_overlayfs_shows() {
    if !have("merged_layers_show_what_overlayfs_shows", NEEDS) {
        return;
    }
    let mut failures = Vec::new();
    let mut linked = 0;
    for seed in 1..=stack_count() {
        let g = generate(seed);
        linked += g.links.len();
        let stacks = [
            ("aufs", strings(&g.aufs)),
            ("oci", strings(&g.oci)),
            ("tar-index oci", g.index.clone()),
        ];
        for (what, layers) in &stacks {
            let mount = FuseMount::layers(layers, &[]);
            let got = tree_manifest(mount.path());
            if let Some(diff) = manifest_diff(&g.expected, &got, 20) {
                failures.push(format!("seed {seed}, {what} layers:\n{diff}"));
            }
            let links = link_groups(mount.path());
            if links != g.links {
                failures.push(format!(
                    "seed {seed}, {what} layers: hard links {links:?}, overlayfs {:?}",
                    g.links
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(linked > 0, "no stack had hard links to check");
}

/// The rootless form: inside a user namespace (where trusted.* xattrs are
/// out of reach), each layer is mounted on its own with
/// `--overlay-xattrs user` and the mounts are stacked by kernel overlayfs
/// with `-o userxattr`, which reads user.overlay.*: opaque directories must
/// survive, so the tree equals the one of the trusted stack.
#[test]
fn single_layers_stack_under_rootless_overlayfs() {
    if !have("single_layers_stack_under_rootless_overlayfs", NEEDS) {
        return;
    }
    for seed in 1..=stack_count().min(3) {
        let g = generate(seed);
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let mut script = String::from("set -e\n");
        let mut lower = Vec::new();
        for (i, layer) in g.aufs.iter().enumerate() {
            let mnt = w.join(format!("m{i}"));
            std::fs::create_dir(&mnt).unwrap();
            script.push_str(&format!(
                "{bin} mount -f --overlay-xattrs user {layer} {mnt} & pids=\"$pids $!\"\n\
                 for i in $(seq 100); do mountpoint -q {mnt} && break; sleep 0.05; done\n",
                bin = bin().display(),
                layer = layer.display(),
                mnt = mnt.display(),
            ));
            lower.insert(0, mnt.display().to_string());
        }
        let merged = w.join("merged");
        std::fs::create_dir(&merged).unwrap();
        script.push_str(&format!(
            "mount -t overlay overlay -o userxattr,lowerdir={lower} {merged}\n\
             status=0; python3 {manifest} {merged} || status=$?\n\
             umount {merged}; kill -TERM $pids; wait; exit $status\n",
            lower = lower.join(":"),
            merged = merged.display(),
            manifest = common::script("manifest.py").display(),
        ));
        let out = in_user_namespace(&script);
        assert!(
            out.status.success(),
            "seed {seed}: rootless overlay walk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        if let Some(diff) = manifest_diff(&g.expected, &got, 20) {
            panic!("seed {seed}: rootless overlayfs over single-layer mounts differs:\n{diff}");
        }
    }
}
