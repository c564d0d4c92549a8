//! Pulled images mounted: the fixture layouts against the kernel's
//! overlay of their layers, an EROFS layer over a tar layer, and a rootless
//! pull and mount with the default store.

use super::*;

use crate::common::pulled::{
    as_nobody, kernel_manifest, loosely, open_dev_fuse, walk_and_unmount_as_nobody,
    without_trusted_xattrs,
};

/// `erofs-fuse mount REF DIR --store STORE`, unmounted on drop.
struct Mounted(tempfile::TempDir);

impl Mounted {
    fn new(store: &Path, reference: &str, image_flag: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount");
        if image_flag {
            cmd.arg("--image");
        }
        cmd.arg(reference).arg(dir.path()).arg("--store").arg(store);
        run_ok(&mut cmd);
        Self(dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn pulled_fixture_layouts_mount_as_the_kernel_stacks_them() {
    if !have(
        "pulled_fixture_layouts_mount_as_the_kernel_stacks_them",
        FUSE_ROOT,
    ) {
        return;
    }
    let expected = loosely(&kernel_manifest());
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for (i, name) in LAYOUTS.iter().enumerate() {
        let reference = format!("oci:{}:latest", oci_fixture(name).display());
        // The first is pulled by mount itself; --image for one.
        if i > 0 {
            pull_ok(&store, &reference, NO_ARGS);
        }
        let mount = Mounted::new(&store, &reference, i == 2);
        let got = loosely(&tree_manifest(mount.0.path()));
        drop(mount);
        assert_eq!(got.len(), expected.len(), "{name}: entries");
        for (e, g) in expected.iter().zip(&got) {
            assert_eq!(e, g, "{name}");
        }
    }
}

#[test]
fn an_erofs_layer_mounts_over_a_tar_layer() {
    if !have("an_erofs_layer_mounts_over_a_tar_layer", FUSE_ROOT) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (layout, _) = erofs_layout(work.path());
    let store = work.path().join("store");
    let mount = Mounted::new(&store, &layout.reference(), false);
    let read = |p: &str| std::fs::read(mount.0.path().join(p)).unwrap();
    assert_eq!(read("shared"), b"erofs");
    assert_eq!(read("upper"), b"up");
    assert_eq!(read("lower"), b"low");
}

#[test]
fn rootless_pull_and_mount_with_the_default_store() {
    let needs = [
        Need::Root,
        Need::Fuse,
        Need::Program("fusermount3"),
        Need::Program("setpriv"),
        Need::Program("/usr/bin/python3"),
    ];
    if !have("rootless_pull_and_mount_with_the_default_store", &needs) {
        return;
    }
    open_dev_fuse();
    let home = tempfile::tempdir().unwrap();
    let nobody = |p: &Path| std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    nobody(home.path());
    let layout = home.path().join("zstd");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(oci_fixture("zstd"))
            .arg(&layout),
    );
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("65534:65534")
            .arg(&layout),
    );
    let mnt = home.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    nobody(&mnt);
    let as_nobody = || as_nobody(home.path());
    let reference = format!("oci:{}", layout.display());
    run_ok(as_nobody().arg(bin()).args(["pull", "--quiet", &reference]));
    let store = home.path().join(".local/share/erofs-fuse");
    assert_eq!(records(&store).len(), 1, "the default store under HOME");
    run_ok(
        as_nobody()
            .arg(bin())
            .arg("mount")
            .arg(&reference)
            .arg(&mnt),
    );
    let walk = walk_and_unmount_as_nobody(home.path(), &mnt);
    // nobody sees no trusted.* xattrs.
    let strip = without_trusted_xattrs;
    let expected: Vec<Value> = loosely(&kernel_manifest()).into_iter().map(strip).collect();
    let got: Vec<Value> = loosely(&walk).into_iter().map(strip).collect();
    assert_eq!(got, expected);
}
