//! Every form of mount is `nosuid,nodev` by default, root's included: a
//! setuid-root binary in the image does not give another user root, and a
//! device node in it cannot be opened. `-o suid` / `-o dev` opt in.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tree with a setuid-root copy of `id` and a `/dev/null` node, as an
/// image, and as the layer blob of a store.
struct Hostile {
    work: tempfile::TempDir,
    image: PathBuf,
    store: PathBuf,
}

fn hostile() -> Hostile {
    let work = tempfile::tempdir().unwrap();
    // Other users walk to the mountpoints inside.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::copy("/usr/bin/id", tree.join("id")).unwrap();
    std::fs::set_permissions(tree.join("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    run_ok(
        Command::new("mknod")
            .arg(tree.join("null"))
            .args(["c", "1", "3"]),
    );
    std::fs::set_permissions(tree.join("null"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let image = work.path().join("hostile.erofs");
    run_ok(Command::new("mkfs.erofs").arg(&image).arg(&tree));
    let tar = work.path().join("layer.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&tree)
            .args(["id", "null"]),
    );
    let store = work.path().join("store");
    run_ok(
        Command::new(bin())
            .args(["store", "add", "-q"])
            .arg(&store)
            .arg(&tar),
    );
    Hostile { work, image, store }
}

/// A mount made by `args` (the mountpoint last), unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(work: &Path, name: &str, args: &[&str], extra: &[&str]) -> Self {
        let mnt = work.join(name);
        std::fs::create_dir(&mnt).unwrap();
        run_ok(Command::new(bin()).args(args).arg(&mnt).args(extra));
        Self(mnt)
    }

    /// The mount's options in /proc/self/mountinfo.
    fn options(&self) -> Vec<String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mountinfo
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == Some(self.0.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} is not mounted", self.0.display()));
        line.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .map(String::from)
            .collect()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The effective uid `dir/id` runs with when `nobody` executes it.
fn euid_of_setuid_binary(dir: &Path) -> String {
    let out = run_ok(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(dir.join("id"))
            .arg("-u"),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Checks a mount made without opt-ins: nosuid and nodev, in the options
/// and in effect.
fn assert_safe(mount: &Mounted, dir: &Path, form: &str) {
    let options = mount.options();
    for want in ["nosuid", "nodev"] {
        assert!(options.iter().any(|o| o == want), "{form}: {options:?}");
    }
    assert_eq!(
        euid_of_setuid_binary(dir),
        "65534",
        "{form}: a setuid-root binary gave nobody root"
    );
    let opened = std::fs::File::open(dir.join("null"));
    assert_eq!(
        opened.err().and_then(|e| e.raw_os_error()),
        Some(libc::EACCES),
        "{form}: a device node of the image could be opened"
    );
}

#[test]
fn every_form_of_mount_is_nosuid_nodev_by_default() {
    if !have(
        "every_form_of_mount_is_nosuid_nodev_by_default",
        FUSE_ROOT_MKFS,
    ) {
        return;
    }
    let h = hostile();
    let image = h.image.to_str().unwrap();
    let work = h.work.path();
    let m = Mounted::new(work, "mount", &["mount", image], &["-o", "allow_other"]);
    assert_safe(&m, &m.0, "mount -o allow_other");
    drop(m);
    // The mount.fuse helper form: no subcommand.
    let m = Mounted::new(work, "helper", &[image], &["-o", "allow_other"]);
    assert_safe(&m, &m.0, "helper form");
    drop(m);
    let m = Mounted::new(
        work,
        "layers",
        &["mount", "--layer", image],
        &["-o", "allow_other"],
    );
    assert_safe(&m, &m.0, "mount --layer");
    drop(m);
    let store = h.store.to_str().unwrap();
    let m = Mounted::new(
        work,
        "served",
        &["store", "serve", store],
        &["-o", "allow_other"],
    );
    let digest = std::fs::read_dir(&h.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("sha256:"))
        .expect("the store holds the layer");
    // base64("localhost:5000/tiny:1")
    let diff =
        m.0.join("bG9jYWxob3N0OjUwMDAvdGlueTox")
            .join(digest)
            .join("diff");
    assert_safe(&m, &diff, "store serve");
}

#[test]
fn root_opts_in_to_suid_and_dev_explicitly() {
    if !have("root_opts_in_to_suid_and_dev_explicitly", FUSE_ROOT_MKFS) {
        return;
    }
    let h = hostile();
    let image = h.image.to_str().unwrap();
    let m = Mounted::new(
        h.work.path(),
        "suid",
        &["mount", image],
        &["-o", "allow_other,suid,dev"],
    );
    let options = m.options();
    assert!(
        !options.iter().any(|o| o == "nosuid" || o == "nodev"),
        "{options:?}"
    );
    assert_eq!(euid_of_setuid_binary(&m.0), "0");
    assert!(std::fs::File::open(m.0.join("null")).is_ok());
}
