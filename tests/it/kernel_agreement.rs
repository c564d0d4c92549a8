//! Agreement with the kernel's erofs (the oracle) on images from other
//! producers and on what a mount can show: inode digest xattrs (a long
//! prefix with base index 0), `st_blocks`, a file whose last block lies
//! partly past the end of its device, and `user.*` xattrs on symlinks and
//! special files. Each comparison is against a real kernel mount.

use crate::common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What the kernel-comparison tests need.
const KERNEL_AND_FUSE: &[Need] = &[
    Need::Root,
    Need::KernelErofs,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
];

/// As [`KERNEL_AND_FUSE`], plus Debian's mkfs.erofs to build test images.
const KERNEL_FUSE_MKFS: &[Need] = &[
    Need::Root,
    Need::KernelErofs,
    Need::Fuse,
    Need::Program("fusermount3"),
    Need::Program("python3"),
    Need::Program("mkfs.erofs"),
];

fn digest_fixture() -> &'static Fixture {
    FIXTURES
        .iter()
        .find(|f| f.image == "xattr-inode-digest.erofs")
        .expect("the digest fixture is in FIXTURES")
}

#[test]
fn inode_digest_image_is_read_not_refused() {
    // mkfs.erofs --xattr-inode-digest: long prefix 0 has base index 0. The
    // kernel mounts it and hides the digests; fsck.erofs passes it.
    let f = digest_fixture();
    let image = fixture(f.image);
    let out = run_ok(Command::new(bin()).arg("manifest").arg(&image));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_manifest(f));
    let out = run_ok(Command::new(bin()).arg("fsck").arg(&image));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no problems"));
    // The digests are there (the prefix is listed, marked hidden), but no
    // file shows them.
    let out = run_ok(Command::new(bin()).arg("inspect").arg(&image));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("erofs.fingerprint.v1(hidden,base=0)"),
        "{text}"
    );
    let img = open_fixture(f);
    let file = img.resolve(b"/etc/os-release").unwrap();
    assert!(img.xattrs(&file).unwrap().is_empty());
    assert_eq!(img.xattr(&file, b"erofs.fingerprint.v1").unwrap(), None);
}

#[test]
fn inode_digest_image_mounts_as_the_kernel_mounts_it() {
    if !have(
        "inode_digest_image_mounts_as_the_kernel_mounts_it",
        KERNEL_AND_FUSE,
    ) {
        return;
    }
    let f = digest_fixture();
    let image = fixture(f.image);
    let kernel = KernelMount::new(&image, &[]);
    let expected = tree_manifest(kernel.path());
    let ours = erofs_fuse::manifest::manifest(&open_fixture(f)).unwrap();
    if let Some(diff) = manifest_diff(&expected, &(ours.join("\n") + "\n"), 10) {
        panic!("library manifest differs from the kernel mount:\n{diff}");
    }
    let fuse = FuseMount::new(&image, &[], &[]);
    if let Some(diff) = manifest_diff(&expected, &tree_manifest(fuse.path()), 10) {
        panic!("erofs-fuse mount differs from the kernel mount:\n{diff}");
    }
    // Reading the digest by any name fails as in the kernel: EOPNOTSUPP
    // for a namespace erofs has no handler for, ENODATA in one it has.
    for name in [
        "erofs.fingerprint.v1",
        "lustre.x",
        "user.nope",
        "trusted.nope",
    ] {
        let file = "etc/os-release";
        let want = get_xattr_errno(&kernel.path().join(file), name);
        let got = get_xattr_errno(&fuse.path().join(file), name);
        assert_eq!(got, want, "getxattr {name} on /{file}");
    }
}

/// `lgetxattr(path, name)`: the value's length, or the errno.
#[allow(unsafe_code)]
fn get_xattr_errno(path: &Path, name: &str) -> Result<usize, i32> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for
    // the length passed.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(len as usize)
    }
}

#[test]
fn st_blocks_agree_with_the_kernel_on_every_fixture() {
    if !have(
        "st_blocks_agree_with_the_kernel_on_every_fixture",
        KERNEL_AND_FUSE,
    ) {
        return;
    }
    let mut failures = Vec::new();
    for f in FIXTURES {
        let devices: Vec<PathBuf> = f.devices.iter().map(|d| fixture(d)).collect();
        let kernel = KernelMount::new(&fixture(f.image), &devices);
        let fuse = FuseMount::new(&fixture(f.image), &devices, &[]);
        let expected = stat_blocks(kernel.path());
        if let Some(diff) = blocks_diff(&expected, &stat_blocks(fuse.path()), 6) {
            failures.push(format!("{}: {diff}", f.image));
        }
        // The library's inodes (what `stat` prints) say the same.
        let image = open_fixture(f);
        for (path, want) in &expected {
            if path.contains('\u{fffd}') {
                continue; // not UTF-8: stat_blocks spelled it lossily
            }
            let inode = image.resolve(path.as_bytes()).unwrap();
            if inode.blocks != *want {
                failures.push(format!(
                    "{}: {path}: kernel st_blocks {want}, library {}",
                    f.image, inode.blocks
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "st_blocks differ from the kernel's:\n{}",
        failures.join("\n")
    );
}

/// Reads a whole file, giving its bytes or the errno of the failure.
fn read_errno(path: &Path) -> Result<Vec<u8>, i32> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map(|_| bytes)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// A tree whose file `z` ("1121\n", as in the issue) is written last, so
/// that its block is the last of the image (or of the blob device).
fn partial_block_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..5 {
        let text: String = (0..i * 300 + 400).map(|j: usize| j.to_string()).collect();
        std::fs::write(tree.join(format!("f{i}")), text).unwrap();
    }
    std::fs::write(tree.join("z"), "1121\n").unwrap();
    tree
}

/// Cuts `file` right after the only "1121\n" in it, which must start its
/// last 4096-byte block: the file then ends 5 bytes into a block.
fn cut_after_z(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"1121\n")
        .expect("z's data in the file");
    assert_eq!(
        at + 4096,
        bytes.len(),
        "{}: z is not the last block",
        file.display()
    );
    std::fs::write(file, &bytes[..at + 5]).unwrap();
}

#[test]
fn a_partial_last_block_is_eio_as_in_the_kernel() {
    if !have(
        "a_partial_last_block_is_eio_as_in_the_kernel",
        KERNEL_FUSE_MKFS,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tree = partial_block_tree(work.path());
    // Flat data at the end of the image; chunks at the end of a blob device.
    let plain = work.path().join("plain.erofs");
    run_ok(
        Command::new("mkfs.erofs")
            .args(["--quiet", "-Enoinline_data"])
            .arg(&plain)
            .arg(&tree),
    );
    cut_after_z(&plain);
    let blob = work.path().join("blob");
    let chunked = work.path().join("chunked.erofs");
    run_ok(
        Command::new("mkfs.erofs")
            .args(["--quiet", "--chunksize=4096"])
            .arg(format!("--blobdev={}", blob.display()))
            .arg(&chunked)
            .arg(&tree),
    );
    cut_after_z(&blob);

    for (image, devices) in [(plain, vec![]), (chunked, vec![blob])] {
        let name = image.file_name().unwrap().to_string_lossy().into_owned();
        let kernel = KernelMount::new(&image, &devices);
        let fuse = FuseMount::new(&image, &devices, &[]);
        let lib = erofs_fuse::Image::open(
            &image,
            &erofs_fuse::OpenOptions {
                devices: devices.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        for file in ["f0", "f3", "f4", "z"] {
            let want = read_errno(&kernel.path().join(file));
            let served = read_errno(&fuse.path().join(file));
            assert_eq!(served, want, "{name}: /{file} through erofs-fuse");
            let inode = lib.resolve(format!("/{file}").as_bytes()).unwrap();
            let mut buf = vec![0; inode.size as usize];
            let read = lib.read_at(&inode, 0, &mut buf).map(|_| buf);
            match (&want, read) {
                (Ok(bytes), Ok(got)) => assert_eq!(&got, bytes, "{name}: /{file}"),
                (Err(_), Err(e)) => assert_eq!(e.errno(), 5, "{name}: /{file}: {e}"),
                (want, got) => panic!("{name}: /{file}: kernel {want:?}, library {got:?}"),
            }
        }
        // The point of the test: the kernel refuses z (EIO), and so must we.
        assert_eq!(read_errno(&kernel.path().join("z")), Err(5), "{name}");
    }
}

/// Sets xattr `name` on a regular file (the tree is built before its
/// files are turned into other types inside the image).
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The names `llistxattr` gives for `path`.
#[allow(unsafe_code)]
fn list_xattrs(path: &Path) -> Vec<String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: `c` is a NUL-terminated path and `buf` is writable for its
    // whole length, which is what is passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    buf.truncate(n as usize);
    buf.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// An image (made by mkfs.erofs) with user.* and trusted.* xattrs on a
/// symlink, a fifo and a char device: Linux cannot set user.* there, so
/// the three start as regular files and their modes are patched after.
fn special_files_with_user_xattrs(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("dir")).unwrap();
    std::fs::write(tree.join("sym"), "reg").unwrap();
    std::fs::write(tree.join("fifo"), "").unwrap();
    std::fs::write(tree.join("chr"), "").unwrap();
    std::fs::write(tree.join("reg"), "hi\n").unwrap();
    for name in ["sym", "fifo", "chr", "reg", "dir"] {
        set_xattr(&tree.join(name), "user.foo", b"bar");
        set_xattr(&tree.join(name), "trusted.t", name.as_bytes());
    }
    let image = dir.join("special.erofs");
    run_ok(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&image)
            .arg(&tree),
    );
    let img = erofs_fuse::Image::open(&image, &Default::default()).unwrap();
    let mut bytes = std::fs::read(&image).unwrap();
    for (name, mode) in [("sym", 0o120777u16), ("fifo", 0o010644), ("chr", 0o020644)] {
        let inode = img.resolve(format!("/{name}").as_bytes()).unwrap();
        // i_mode is at byte 4 of both inode forms.
        let at = inode.meta_offset().unwrap() as usize + 4;
        bytes[at..at + 2].copy_from_slice(&mode.to_le_bytes());
    }
    drop(img);
    fix_checksum(&mut bytes);
    std::fs::write(&image, bytes).unwrap();
    image
}

#[test]
fn user_xattrs_on_special_files_show_as_a_mount_shows_them() {
    if !have(
        "user_xattrs_on_special_files_show_as_a_mount_shows_them",
        KERNEL_FUSE_MKFS,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let image = special_files_with_user_xattrs(work.path());
    let kernel = KernelMount::new(&image, &[]);
    let expected = tree_manifest(kernel.path());
    // The kernel lists user.foo on the symlink but it cannot be read.
    assert!(list_xattrs(&kernel.path().join("sym")).contains(&"user.foo".to_string()));
    assert!(expected.contains("\"user.foo\""), "{expected}");

    let out = run_ok(Command::new(bin()).arg("manifest").arg(&image));
    if let Some(diff) = manifest_diff(&expected, &String::from_utf8_lossy(&out.stdout), 10) {
        panic!("manifest differs from the kernel mount:\n{diff}");
    }
    // The FUSE view answers as the kernel: same listings, same readable values.
    let fuse = FuseMount::new(&image, &[], &[]);
    if let Some(diff) = manifest_diff(&expected, &tree_manifest(fuse.path()), 10) {
        panic!("erofs-fuse mount differs from the kernel mount:\n{diff}");
    }
    for name in ["sym", "fifo", "chr", "reg", "dir"] {
        let mut want = list_xattrs(&kernel.path().join(name));
        let mut got = list_xattrs(&fuse.path().join(name));
        want.sort();
        got.sort();
        assert_eq!(got, want, "listxattr /{name}");
    }
    drop(fuse);
    // Extracting (as root) gives the tree a mount shows.
    let dest = work.path().join("out");
    run_ok(Command::new(bin()).arg("extract").arg(&image).arg(&dest));
    if let Some(diff) = manifest_diff(&expected, &tree_manifest(&dest), 10) {
        panic!("extracted tree differs from the kernel mount:\n{diff}");
    }
    // fsck passes it, as fsck.erofs does.
    run_ok(Command::new(bin()).arg("fsck").arg(&image));
    let meta = std::fs::symlink_metadata(dest.join("sym")).unwrap();
    assert_eq!(meta.mode() & 0o170000, 0o120000);
}
