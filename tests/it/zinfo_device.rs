//! `--zinfo`: a tar-index image whose device is the layer's `.tar.gz`,
//! read through its zinfo, shows the same tree as with the tar itself:
//! mkfs.erofs's zinfo and the one `convert --gzinfo` writes, a layer with one
//! checkpoint and one with three; mounted, the tree equals the kernel's view
//! of the index over the uncompressed tar.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `erofs-fuse manifest IMAGE --device ... [--zinfo ...]`, its cache in a
/// TMPDIR of its own that must be left empty.
fn manifest(image: &Path, devices: &[&Path], zinfos: &[&Path]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.env("TMPDIR", tmp.path()).arg("manifest").arg(image);
    for d in devices {
        cmd.arg("--device").arg(d);
    }
    for z in zinfos {
        cmd.arg("--zinfo").arg(z);
    }
    let out = String::from_utf8(run_ok(&mut cmd).stdout).unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the cache left {left:?}");
    out
}

/// `convert --gzinfo` of the fixture `gz` into `dir`: (index, tar, zinfo).
fn convert_with_zinfo(dir: &Path, gz: &str) -> (PathBuf, PathBuf, PathBuf) {
    let image = dir.join("layer.erofs");
    let zinfo = dir.join("layer.zinfo");
    run_ok(
        Command::new(bin())
            .arg("convert")
            .arg("--gzinfo")
            .arg(&zinfo)
            .arg(fixture(gz))
            .arg(&image),
    );
    (image.clone(), image.with_extension("tar"), zinfo)
}

#[test]
fn mkfs_index_over_its_gzip_equals_the_kernel_manifest() {
    let expected = std::fs::read_to_string(fixture("tar.manifest.jsonl")).unwrap();
    let got = manifest(
        &fixture("tar-index.erofs"),
        &[&fixture("layer.tar.gz")],
        &[&fixture("tar-index-gz.zinfo")],
    );
    if let Some(diff) = manifest_diff(&expected, &got, 10) {
        panic!("the tree read through the zinfo differs from the kernel's:\n{diff}");
    }
}

#[test]
fn our_zinfo_and_mkfs_zinfo_give_the_tree_the_tar_gives() {
    for (gz, mkfs_zinfo) in [
        ("layer.tar.gz", "tar-index-gz.zinfo"),
        ("docs-layer.tar.gz", "docs-layer.zinfo"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (image, tar, zinfo) = convert_with_zinfo(dir.path(), gz);
        let from_tar = manifest(&image, &[&tar], &[]);
        assert!(
            from_tar.lines().count() > 10,
            "{gz}: a tree of a few entries"
        );
        for z in [zinfo.as_path(), fixture(mkfs_zinfo).as_path()] {
            let from_gz = manifest(&image, &[&fixture(gz)], &[z]);
            if let Some(diff) = manifest_diff(&from_tar, &from_gz, 10) {
                panic!("{gz} through {}:\n{diff}", z.display());
            }
        }
    }
}

#[test]
fn a_zinfo_of_another_layer_or_too_many_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _, _) = convert_with_zinfo(dir.path(), "docs-layer.tar.gz");
    // The big layer's zinfo over the small gzip: its checkpoints lie past
    // that file's end, which opening it refuses in one line.
    let out = run(Command::new(bin())
        .arg("cat")
        .arg(&image)
        .arg("--device")
        .arg(fixture("layer.tar.gz"))
        .arg("--zinfo")
        .arg(fixture("docs-layer.zinfo"))
        .arg("/usr/share/doc/qemu-utils/copyright"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("zinfo: checkpoint at byte"), "{stderr}");
    let out = run(Command::new(bin())
        .arg("ls")
        .arg(&image)
        .arg("--zinfo")
        .arg(fixture("docs-layer.zinfo")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 --zinfo given for 0 --device"),
        "{stderr}"
    );
}

#[cfg(feature = "privileged")]
#[test]
fn a_mount_through_the_zinfo_equals_the_kernels_over_the_tar() {
    if !have(
        "a_mount_through_the_zinfo_equals_the_kernels_over_the_tar",
        FUSE_ROOT_KERNEL,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (image, tar, zinfo) = convert_with_zinfo(dir.path(), "docs-layer.tar.gz");
    let kernel = KernelMount::new(&image, &[tar]);
    let fuse = FuseMount::new(
        &image,
        &[fixture("docs-layer.tar.gz")],
        &["--zinfo", zinfo.to_str().unwrap()],
    );
    let expected = tree_manifest(kernel.path());
    let got = tree_manifest(fuse.path());
    if let Some(diff) = manifest_diff(&expected, &got, 10) {
        panic!("mount through the zinfo differs from the kernel's:\n{diff}");
    }
}
