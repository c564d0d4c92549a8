//! Nydus RAFS v6 images mounted with erofs-fuse (root, FUSE): every case
//! of tests/fixtures/nydus shows the tree nydusd showed, and a flipped
//! byte in a chunk of a blob fails (EIO) the files of that chunk only.

use crate::common::*;
use crate::nydus::{blob_of, case, expected, CASES, MERGED};

use std::path::Path;

#[test]
fn every_nydus_case_mounts_as_nydusd_shows_it() {
    if !have("every_nydus_case_mounts_as_nydusd_shows_it", FUSE_ROOT) {
        return;
    }
    let mut failures = Vec::new();
    for name in CASES.iter().chain(&[MERGED]) {
        let dir = case(name).join("blobs");
        let mount = FuseMount::new(
            &case(name).join("bootstrap"),
            &[],
            &["--blob-dir", dir.to_str().unwrap()],
        );
        let got = tree_manifest(mount.path());
        if let Some(diff) = manifest_diff(&expected(name), &got, 10) {
            failures.push(format!("{name}:\n{diff}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The chunk records of a case: (compressed offset, size, digest).
pub fn chunks(name: &str) -> Vec<(u64, u32, [u8; 32])> {
    let rafs = erofs_fuse::nydus::read_rafs(&case(name).join("bootstrap"), 0)
        .unwrap()
        .unwrap();
    let mut out: Vec<_> = rafs
        .chunks
        .iter()
        .map(|c| (c.compressed_offset, c.compressed_size, c.digest))
        .collect();
    out.sort();
    out
}

/// Every regular file under `root` with its path.
pub fn files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Every file under `good` reads the same under `bad` but those holding
/// the chunk whose digest is `digest`: those, and at least one, are EIO.
pub fn only_its_files_fail(name: &str, good: &Path, bad: &Path, digest: [u8; 32]) {
    let mut failed = 0;
    for path in files(good) {
        let content = std::fs::read(&path).unwrap();
        let in_chunk = content
            .chunks(1 << 20)
            .any(|piece| *blake3::hash(piece).as_bytes() == digest);
        let rel = path.strip_prefix(good).unwrap();
        match std::fs::read(bad.join(rel)) {
            Ok(read) => {
                assert!(
                    !in_chunk,
                    "{name}: {} read despite its bad chunk",
                    rel.display()
                );
                assert_eq!(read, content, "{name}: {}", rel.display());
            }
            Err(e) => {
                assert!(in_chunk, "{name}: {}: {e}", rel.display());
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EIO),
                    "{name}: {}",
                    rel.display()
                );
                failed += 1;
            }
        }
    }
    assert!(failed >= 1, "{name}: no file failed");
}

#[test]
fn a_flipped_chunk_byte_is_eio_for_its_files_only_through_the_mount() {
    if !have(
        "a_flipped_chunk_byte_is_eio_for_its_files_only_through_the_mount",
        FUSE_ROOT,
    ) {
        return;
    }
    // An uncompressed chunk (a) and a zstd and an lz4 one (b, c).
    for name in ["a-dir-none", "b-dir-zstd", "c-dir-lz4-1m"] {
        let all = chunks(name);
        let (offset, size, digest) = all[all.len() / 2];
        let tmp = tempfile::tempdir().unwrap();
        let blob = blob_of(name);
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[(offset + u64::from(size) / 2) as usize] ^= 0x55;
        std::fs::write(tmp.path().join(blob.file_name().unwrap()), &bytes).unwrap();
        let good = FuseMount::new(
            &case(name).join("bootstrap"),
            &[],
            &["--blob-dir", case(name).join("blobs").to_str().unwrap()],
        );
        let bad = FuseMount::new(
            &case(name).join("bootstrap"),
            &[],
            &["--blob-dir", tmp.path().to_str().unwrap()],
        );
        only_its_files_fail(name, good.path(), bad.path(), digest);
    }
}

#[test]
fn a_nydus_oci_layout_mounts_as_nydusd_shows_it() {
    if !have("a_nydus_oci_layout_mounts_as_nydusd_shows_it", FUSE_ROOT) {
        return;
    }
    // e: its whiteout files stay files, as in nydusd's single-layer view.
    for name in ["c-dir-lz4-1m", "e-tar-rafs"] {
        let tmp = tempfile::tempdir().unwrap();
        crate::nydus::nydus_layout(name, tmp.path());
        let reference = format!("oci:{}:nydus", tmp.path().display());
        let mount = FuseMount::new(Path::new(&reference), &[], &[]);
        let got = tree_manifest(mount.path());
        if let Some(diff) = manifest_diff(&expected(name), &got, 10) {
            panic!("{name}:\n{diff}");
        }
    }
}

#[test]
fn export_block_disks_mount_alike_in_the_kernel_and_erofs_fuse() {
    if !have(
        "export_block_disks_mount_alike_in_the_kernel_and_erofs_fuse",
        FUSE_ROOT_KERNEL,
    ) {
        return;
    }
    for name in ["a-dir-none", "b-dir-zstd"] {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("disk");
        std::fs::write(&disk, crate::nydus::export_block(name)).unwrap();
        let kernel = KernelMount::new(&disk, &[]);
        let ours = FuseMount::new(&disk, &[], &[]);
        let (k, f) = (tree_manifest(kernel.path()), tree_manifest(ours.path()));
        if let Some(diff) = manifest_diff(&k, &f, 10) {
            panic!("{name}: kernel vs erofs-fuse:\n{diff}");
        }
        assert!(
            manifest_diff(&expected(name), &k, 1).is_none(),
            "{name}: kernel vs nydusd"
        );
    }
}

#[test]
fn a_tarfs_bootstrap_mounts_alike_in_the_kernel_and_erofs_fuse() {
    if !have(
        "a_tarfs_bootstrap_mounts_alike_in_the_kernel_and_erofs_fuse",
        FUSE_ROOT_KERNEL,
    ) {
        return;
    }
    let name = "d-tar-tarfs";
    let boot = case(name).join("bootstrap");
    let kernel = KernelMount::new(&boot, &[blob_of(name)]);
    let dir = case(name).join("blobs");
    let ours = FuseMount::new(&boot, &[], &["--blob-dir", dir.to_str().unwrap()]);
    let (k, f) = (tree_manifest(kernel.path()), tree_manifest(ours.path()));
    assert!(
        manifest_diff(&k, &f, 10).is_none(),
        "kernel vs erofs-fuse differ"
    );
    assert!(
        manifest_diff(&expected(name), &k, 1).is_none(),
        "kernel vs nydusd differ"
    );
}
