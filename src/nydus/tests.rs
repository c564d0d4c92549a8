//! The fixtures of tests/fixtures/nydus (made by nydus-image, manifests
//! from nydusd) read through the library, tampered and truncated.

use std::path::{Path, PathBuf};

use super::*;

pub(super) use super::fixtures::{case, expected, files_of, CASES};

pub(super) fn dir_blobs(dir: &Path) -> BlobFiles {
    BlobFiles {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

/// Whether every file of `expected` reads from `image` with its size and
/// sha256 (the whole manifest is compared in tests/it/nydus.rs: the
/// manifest module ranks above this one).
pub(super) fn matches(image: &Image, expected: &str) -> bool {
    use sha2::Digest as _;
    let files = files_of(expected);
    assert!(files.len() > 100);
    files.iter().all(|(path, size, sha)| {
        let Ok(inode) = image.resolve(path.as_bytes()) else {
            return false;
        };
        let Ok(bytes) = image.read_range(&inode, 0, inode.size) else {
            return false;
        };
        inode.size == *size && crate::format::hex(&sha2::Sha256::digest(&bytes)) == *sha
    })
}

/// How many files of `expected` fail with EIO in `image`; every other one
/// must read whole with its manifest's size and sha256 (wrong data, or
/// another error, fails the test).
pub(super) fn eio_or_exact(image: &Image, expected: &str, what: &str) -> usize {
    use sha2::Digest as _;
    let mut eio = 0;
    for (path, size, sha) in files_of(expected) {
        // A mutated inode may claim any size: only the manifest's is read.
        let read = image
            .resolve(path.as_bytes())
            .and_then(|inode| match inode.size == size {
                true => image.read_range(&inode, 0, inode.size),
                false => Ok(std::borrow::Cow::Borrowed(&[][..])),
            });
        match read {
            Ok(bytes) => assert!(
                bytes.len() as u64 == size
                    && crate::format::hex(&sha2::Sha256::digest(&bytes)) == sha,
                "{what}: {path}: wrong data served"
            ),
            Err(e) if e.errno() == libc::EIO => eio += 1,
            Err(e) => panic!("{what}: {path}: {e} (not EIO)"),
        }
    }
    eio
}

#[test]
fn every_case_reads_as_nydusd_shows_it() {
    for name in CASES {
        let dir = case(name);
        let image = open(
            &dir.join("bootstrap"),
            0,
            &dir_blobs(&dir.join("blobs")),
            8 << 20,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .0;
        assert!(matches(&image, &expected(name)), "{name}: a file differs");
    }
}

#[test]
fn blobs_given_one_by_one_read_the_same() {
    let dir = case("b-dir-zstd");
    let blob = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let files = BlobFiles {
        files: vec![blob],
        ..Default::default()
    };
    let image = open(&dir.join("bootstrap"), 0, &files, 1 << 20).unwrap().0;
    assert!(matches(&image, &expected("b-dir-zstd")));
}

#[test]
fn the_tables_parse_as_nydus_image_check_shows_them() {
    let rafs = read_rafs(&case("c-dir-lz4-1m").join("bootstrap"), 0)
        .unwrap()
        .unwrap();
    assert_eq!(rafs.blobs.len(), 1);
    let b = &rafs.blobs[0];
    assert_eq!(
        b.id,
        "28ecbef0d539350b4e17eac8e923427a55f895f5b3406285b6f9457f91998122"
    );
    assert_eq!((b.chunk_size, b.chunk_count), (0x100000, 45));
    assert_eq!(
        (b.compressor, b.digester),
        (Compressor::Lz4Block, Digester::Blake3)
    );
    assert_eq!((b.compressed_size, b.uncompressed_size), (1003788, 2338816));
    assert_eq!(
        (b.ci_offset, b.ci_compressed_size, b.ci_uncompressed_size),
        (999108, 584, 720)
    );
    assert_eq!(rafs.chunks.len(), 45);
    assert!(!rafs.tarfs());
    let tarfs = read_rafs(&case("d-tar-tarfs").join("bootstrap"), 0)
        .unwrap()
        .unwrap();
    assert!(tarfs.tarfs());
    assert_eq!(tarfs.blobs[0].digester, Digester::Sha256);
}

#[test]
fn a_missing_blob_is_named() {
    let dir = case("a-dir-none");
    let empty = tempfile::tempdir().unwrap();
    let err = open(&dir.join("bootstrap"), 0, &dir_blobs(empty.path()), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "blob 2e291aa54ea091403a7d381f877a75703df769afd92dd3041fc14d8305cbcfd0 not found"
        ),
        "{err}"
    );
    assert!(!err.contains('\n'));
    let err = open(&dir.join("bootstrap"), 0, &BlobFiles::default(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("blob 2e291aa5"), "{err}");
}

#[test]
fn a_symlinked_blob_is_not_followed() {
    let dir = case("a-dir-none");
    let links = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.join("blobs")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), links.path().join(entry.file_name())).unwrap();
    }
    let err = open(&dir.join("bootstrap"), 0, &dir_blobs(links.path()), 1 << 20).unwrap_err();
    assert!(
        err.to_string().contains(&*links.path().to_string_lossy()),
        "{err}"
    );
}

/// A copy of `name`'s blob directory with the byte at `at` of its blob
/// flipped.
fn tampered(name: &str, at: u64) -> (tempfile::TempDir, PathBuf) {
    let src = std::fs::read_dir(case(name).join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(src.path()).unwrap();
    bytes[at as usize] ^= 0x55;
    std::fs::write(dir.path().join(src.file_name()), bytes).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// For each file of case `name`: whether reading it whole from `image`
/// works.
fn readable(image: &Image, name: &str) -> Vec<(String, bool)> {
    files_of(&expected(name))
        .into_iter()
        .map(|(path, _, _)| {
            let inode = image.resolve(path.as_bytes()).unwrap();
            let ok = image.read_range(&inode, 0, inode.size).is_ok();
            (path, ok)
        })
        .collect()
}

/// Flips a byte inside a chunk of `name`'s blob: the files of that chunk
/// fail (EIO), all others read.
fn tamper_case(name: &str) {
    let dir = case(name);
    let rafs = read_rafs(&dir.join("bootstrap"), 0).unwrap().unwrap();
    // A chunk in the middle of the blob.
    let mut chunks = rafs.chunks.clone();
    chunks.sort_by_key(|c| c.uncompressed_offset);
    let c = &chunks[chunks.len() / 2];
    let (_keep, blobs) = tampered(name, c.compressed_offset + u64::from(c.compressed_size) / 2);
    let image = open(&dir.join("bootstrap"), 0, &dir_blobs(&blobs), 8 << 20)
        .unwrap()
        .0;
    let good = open(
        &dir.join("bootstrap"),
        0,
        &dir_blobs(&dir.join("blobs")),
        8 << 20,
    )
    .unwrap()
    .0;
    let before = readable(&good, name);
    assert!(before.iter().all(|(_, ok)| *ok));
    // Files listed from the good image, read from the tampered one.
    let mut failed = 0;
    for (path, _) in &before {
        let inode = image.resolve(path.as_bytes()).unwrap();
        // In the chunk: one of its 1 MiB pieces has the chunk's digest.
        let content = good.read_range(&inode, 0, inode.size).unwrap();
        let in_chunk = content
            .chunks(rafs.chunk_size as usize)
            .any(|piece| *blake3::hash(piece).as_bytes() == c.digest);
        let read = image.read_range(&inode, 0, inode.size);
        if let Err(e) = &read {
            assert_eq!(e.errno(), libc::EIO, "{name}: {path}: {e}");
        }
        let ok = read.is_ok();
        assert_eq!(ok, !in_chunk, "{name}: {path}");
        failed += usize::from(!ok);
    }
    assert!(failed >= 1, "{name}: no file failed");
}

#[test]
fn a_flipped_byte_fails_only_the_files_of_its_chunk() {
    for name in ["a-dir-none", "b-dir-zstd", "c-dir-lz4-1m"] {
        tamper_case(name);
    }
}

#[test]
fn truncated_and_mangled_bootstraps_are_one_line_errors() {
    let dir = case("b-dir-zstd");
    let bytes = std::fs::read(dir.join("bootstrap")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bootstrap");
    let blobs = dir_blobs(&dir.join("blobs"));
    let manifest = expected("b-dir-zstd");
    // What opens serves each file exactly or fails it with EIO: checked
    // for every opened case with the privileged tier, every 16th here.
    let every = if cfg!(feature = "privileged") { 1 } else { 16 };
    let opened = std::cell::Cell::new(0usize);
    let try_bytes = |b: &[u8]| {
        std::fs::write(&path, b).unwrap();
        match open(&path, 0, &blobs, 1 << 20) {
            Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
            Ok((image, _)) => {
                opened.set(opened.get() + 1);
                if opened.get() % every == 1 % every {
                    eio_or_exact(&image, &manifest, "mangled");
                }
            }
        }
    };
    for len in [0, 1024, 1152, 1400, 4096, 4200, 100_000, bytes.len() - 1] {
        try_bytes(&bytes[..len]);
    }
    // Every field of the extended superblock and the blob table, and
    // the first chunk records, set to extremes.
    for at in (1152..1152 + 64)
        .chain(4096..4096 + 256)
        .chain(188416..188416 + 160)
    {
        for v in [0u8, 0xff, 0x7f] {
            let mut b = bytes.clone();
            b[at] = v;
            try_bytes(&b);
        }
    }
}

#[test]
fn a_rafs_v5_bootstrap_is_named_as_such() {
    let mut bytes = vec![0u8; 16384];
    bytes[..4].copy_from_slice(&0x5241_4653u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&0x500u32.to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("v5");
    std::fs::write(&path, &bytes).unwrap();
    let err = Image::open(&path, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("RAFS v5 is not supported"), "{err}");
}

/// A GNU tar header of a regular file `name` of `size` bytes.
pub(super) fn gnu_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Case `name`'s blob with its bootstrap appended as nydus-image's
/// --blob-inline-meta does: the bootstrap (zstd with `toc`, else plain)
/// framed by a tar header, then with `toc` the ToC and its header.
fn inline_blob(name: &str, toc: bool) -> Vec<u8> {
    use sha2::Digest as _;
    let src = std::fs::read_dir(case(name).join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut blob = std::fs::read(src.path()).unwrap();
    let boot = std::fs::read(case(name).join("bootstrap")).unwrap();
    let stored = if toc {
        zstd::bulk::compress(&boot, 3).unwrap()
    } else {
        boot.clone()
    };
    let offset = blob.len() as u64;
    blob.extend_from_slice(&stored);
    blob.extend_from_slice(&gnu_header("image.boot", stored.len() as u64));
    if toc {
        let mut entry = vec![0u8; 128];
        entry[..4].copy_from_slice(&2u32.to_le_bytes());
        entry[8..18].copy_from_slice(b"image.boot");
        entry[24..56].copy_from_slice(&sha2::Sha256::digest(&boot));
        entry[56..64].copy_from_slice(&offset.to_le_bytes());
        entry[64..72].copy_from_slice(&(stored.len() as u64).to_le_bytes());
        entry[72..80].copy_from_slice(&(boot.len() as u64).to_le_bytes());
        blob.extend_from_slice(&entry);
        blob.extend_from_slice(&gnu_header("rafs.blob.toc", 128));
    }
    blob
}

#[test]
fn a_blob_with_inline_meta_reads_alone() {
    for (name, toc) in [
        ("b-dir-zstd", true),
        ("c-dir-lz4-1m", false),
        ("e-tar-rafs", true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        std::fs::write(&path, inline_blob(name, toc)).unwrap();
        let image = open_inline(&path, &BlobFiles::default(), 8 << 20)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .0;
        assert!(matches(&image, &expected(name)), "{name}");
    }
    // A ToC whose digest does not match its bootstrap is refused; a plain
    // blob has no inline bootstrap.
    let mut bytes = inline_blob("b-dir-zstd", true);
    let at = bytes.len() - 512 - 128 + 30;
    bytes[at] ^= 1;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("blob");
    std::fs::write(&path, &bytes).unwrap();
    let err = open_inline(&path, &BlobFiles::default(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the ToC"), "{err}");
    let plain = std::fs::read_dir(case("a-dir-none").join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let err = open_inline(&plain.path(), &BlobFiles::default(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("inline bootstrap") && !err.contains('\n'),
        "{err}"
    );
}
