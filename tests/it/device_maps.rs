//! Image maps (`erofs_fuse::device`): both access patterns read the same
//! bytes, verity checks them either way, file data is hashed on a copy at
//! every read unless verified once, metadata comes from verified copies.

use std::fs::File;
use std::path::{Path, PathBuf};

use erofs_fuse::device::{Access, Device};
use erofs_fuse::verity::{format, TreeSpec, VerityParams, VeritySource};
use std::os::unix::fs::FileExt;

const BLOCKS: u64 = 64;

/// A file of 64 4 KiB blocks, no two alike, and its bytes.
fn data_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..BLOCKS as u32 * 4096)
        .map(|i| (i / 4096 * 31 + i % 251) as u8)
        .collect();
    let path = dir.join("data");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// A verity tree (4 KiB blocks) of `path` in `dir/tree`: its root hash and
/// path.
fn verity_tree(dir: &Path, path: &Path) -> ([u8; 32], PathBuf) {
    let hash_file = dir.join("tree");
    let params = VerityParams {
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: BLOCKS,
        salt: vec![7; 32],
        uuid: [0; 16],
    };
    let root = format(
        &File::open(path).unwrap(),
        &File::create(&hash_file).unwrap(),
        0,
        &params,
    )
    .unwrap();
    (root, hash_file)
}

#[test]
fn both_access_patterns_read_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = data_file(dir.path());
    let dev = Device::open(&path, 4096).unwrap();
    let want = &bytes[4096..];
    for (offset, len) in [(0u64, 4096u64), (5000, 70000), (want.len() as u64 - 1, 1)] {
        let range = offset as usize..(offset + len) as usize;
        let sequential = dev.slice_for(Access::Sequential, offset, len).unwrap();
        assert_eq!(sequential, &want[range.clone()], "{range:?}");
        let random = dev.slice_for(Access::Random, offset, len).unwrap();
        assert_eq!(random, &want[range.clone()], "{range:?}");
    }
    for access in [Access::Sequential, Access::Random] {
        assert!(dev.slice_for(access, want.len() as u64, 1).is_err());
    }
    // Unmapping changes nothing a later read sees.
    dev.release(0, dev.len());
    assert_eq!(
        dev.slice_for(Access::Random, 8192, 16).unwrap(),
        &want[8192..8208]
    );
}

#[test]
fn random_reads_are_verified_like_sequential_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = data_file(dir.path());
    let (root, hash_file) = verity_tree(dir.path(), &path);
    // Blocks 7 and 9 change after the tree was made.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"tampered", 7 * 4096 + 100).unwrap();
    file.write_all_at(b"tampered", 9 * 4096).unwrap();
    let mut dev = Device::open(&path, 0).unwrap();
    let source = VeritySource::Tree(TreeSpec {
        root,
        hash_file,
        offset: 0,
        no_superblock: None,
    });
    dev.attach_verity(&source, true).unwrap();
    assert!(dev.slice_for(Access::Random, 3 * 4096 + 10, 16).is_ok());
    assert!(dev.slice_for(Access::Random, 7 * 4096, 16).is_err());
    assert!(dev.slice_for(Access::Sequential, 7 * 4096, 4096).is_err());
    assert!(dev
        .slice_for(Access::Sequential, 9 * 4096 - 10, 20)
        .is_err());
    assert!(dev.slice_for(Access::Random, 9 * 4096 + 4000, 16).is_err());
    assert_eq!(dev.verity_stats().unwrap().mismatches, 4);
}

#[test]
fn file_data_is_hashed_at_every_read_unless_verified_once() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = data_file(dir.path());
    let (root, hash_file) = verity_tree(dir.path(), &path);
    let source = VeritySource::Tree(TreeSpec {
        root,
        hash_file,
        offset: 0,
        no_superblock: None,
    });
    let open = |once| {
        let mut dev = Device::open(&path, 0).unwrap();
        dev.attach_verity(&source, once).unwrap();
        dev
    };
    let (every, once) = (open(false), open(true));
    let mut copy = Vec::new();
    for access in [Access::Sequential, Access::Random] {
        let got = every.data_for(access, 5 * 4096 + 10, 5000, &mut copy);
        assert!(got.unwrap() == &bytes[5 * 4096 + 10..5 * 4096 + 5010]);
    }
    assert_eq!(
        &*once.data_cow(Access::Random, 6 * 4096 + 10, 16).unwrap(),
        &bytes[6 * 4096 + 10..6 * 4096 + 26]
    );
    // Block 6 changes after both have read it.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"changed", 6 * 4096 + 9).unwrap();
    // Every read is EIO, or (served from a copy verify-ahead hashed before
    // the change) the original bytes: never the changed ones.
    for access in [Access::Sequential, Access::Random] {
        if let Ok(got) = every.data_for(access, 6 * 4096, 16, &mut copy) {
            assert!(
                got == &bytes[6 * 4096..6 * 4096 + 16],
                "changed bytes served"
            );
        }
        if let Ok(got) = every.data_cow(access, 6 * 4096 + 4000, 200) {
            assert!(
                *got == bytes[6 * 4096 + 4000..6 * 4096 + 4200],
                "changed bytes served"
            );
        }
    }
    // Block 5 is unchanged, and --verity-once trusts what it checked.
    assert!(every.data_cow(Access::Sequential, 5 * 4096, 4096).is_ok());
    assert!(once.data_cow(Access::Sequential, 6 * 4096, 16).is_ok());

    // Metadata: read from the copy verified before the change, and a
    // block changed before its first read fails.
    assert_eq!(
        every.slice(2 * 4096, 100).unwrap(),
        &bytes[2 * 4096..2 * 4096 + 100]
    );
    file.write_all_at(b"changed", 2 * 4096 + 9).unwrap();
    file.write_all_at(b"changed", 3 * 4096 + 9).unwrap();
    assert_eq!(
        every.slice(2 * 4096, 100).unwrap(),
        &bytes[2 * 4096..2 * 4096 + 100]
    );
    assert!(every.slice(3 * 4096, 100).is_err());
}

#[test]
fn released_in_memory_devices_keep_their_bytes() {
    let bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 253) as u8).collect();
    let dev = Device::from_bytes(Path::new("memory"), &bytes).unwrap();
    dev.release(0, dev.len());
    assert_eq!(
        dev.slice_for(Access::Sequential, 0, 12288).unwrap(),
        &bytes[..]
    );
    assert_eq!(
        dev.slice_for(Access::Random, 4096, 10).unwrap(),
        &bytes[4096..4106]
    );
}
