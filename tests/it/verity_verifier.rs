//! Checking a file against a verity tree (`erofs_fuse::verity::Verifier`)
//! and verifying ahead of readers.

use std::fs::File;
use std::sync::Arc;

use erofs_fuse::fault::ImageMap;
use erofs_fuse::verity::{format, TreeSpec, Verifier, VerifyAhead, VerityParams};

/// A data file of `blocks` 512-byte blocks and its tree with 512-byte
/// hash blocks (16 digests each, so 300 blocks make three levels).
fn setup(blocks: u64) -> (tempfile::TempDir, Vec<u8>, TreeSpec, VerityParams) {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..blocks * 512).map(|i| (i * 7 % 251) as u8).collect();
    let data_path = dir.path().join("data");
    std::fs::write(&data_path, &data).unwrap();
    let params = VerityParams {
        data_block_size: 512,
        hash_block_size: 512,
        data_blocks: blocks,
        salt: vec![1, 2, 3],
        uuid: [0; 16],
    };
    let hash_path = dir.path().join("hash");
    let root = format(
        &File::open(&data_path).unwrap(),
        &File::create(&hash_path).unwrap(),
        0,
        &params,
    )
    .unwrap();
    let spec = TreeSpec {
        root,
        hash_file: hash_path,
        offset: 0,
        no_superblock: None,
    };
    (dir, data, spec, params)
}

#[test]
fn checks_every_level_and_marks_blocks_once() {
    let (dir, data, spec, params) = setup(300);
    assert_eq!(params.levels().len(), 3);
    let v = Verifier::open(&dir.path().join("data"), &data, &spec).unwrap();
    v.check(&data, 0, data.len() as u64).unwrap();
    let stats = v.stats();
    assert_eq!(stats.data_verified, 300);
    // 19 leaves + 2 middle blocks; the top was checked at open.
    assert_eq!(stats.hash_verified, 21);
    v.check(&data, 100, 5000).unwrap();
    assert_eq!(v.stats(), stats, "verified blocks are not hashed again");
    // Past the covered bytes: refused.
    assert!(v.check(&data, data.len() as u64 - 1, 2).is_err());
}

#[test]
fn a_bad_data_or_hash_block_fails_only_what_it_covers() {
    let (dir, mut data, spec, _) = setup(300);
    data[77 * 512 + 9] ^= 0x10;
    let v = Verifier::open(&dir.path().join("data"), &data, &spec).unwrap();
    let err = v.check(&data, 77 * 512, 1).unwrap_err().to_string();
    assert!(err.contains("data block 77 does not match"), "{err}");
    v.check(&data, 0, 77 * 512).unwrap();
    v.check(&data, 78 * 512, 222 * 512).unwrap();
    assert_eq!(v.stats().mismatches, 1);

    // A leaf hash block (the 5th of level 0, covering blocks 64..80).
    let (dir, data, spec, params) = setup(300);
    let mut hash = std::fs::read(&spec.hash_file).unwrap();
    let leaf = params.levels()[0].start + 4;
    hash[leaf as usize * 512 + 40] ^= 1;
    std::fs::write(&spec.hash_file, &hash).unwrap();
    let v = Verifier::open(&dir.path().join("data"), &data, &spec).unwrap();
    let err = v.check(&data, 70 * 512, 1).unwrap_err().to_string();
    assert!(err.contains(&format!("hash block {leaf} ")), "{err}");
    v.check(&data, 0, 64 * 512).unwrap();
    v.check(&data, 80 * 512, 220 * 512).unwrap();
}

#[test]
fn a_one_block_file_is_checked_against_the_root_at_open() {
    let (dir, mut data, spec, params) = setup(1);
    assert!(params.levels().is_empty());
    let path = dir.path().join("data");
    let v = Verifier::open(&path, &data, &spec).unwrap();
    v.check(&data, 0, 512).unwrap();
    data[3] ^= 1;
    let err = Verifier::open(&path, &data, &spec).unwrap_err();
    assert!(
        err.to_string().contains("root hash does not match"),
        "{err}"
    );
}

#[test]
fn malformed_trees_fail_at_open() {
    let (dir, data, spec, _) = setup(300);
    let path = dir.path().join("data");
    let hash = std::fs::read(&spec.hash_file).unwrap();
    let short = TreeSpec {
        hash_file: dir.path().join("short"),
        ..spec.clone()
    };
    std::fs::write(&short.hash_file, &hash[..hash.len() - 512]).unwrap();
    assert!(Verifier::open(&path, &data, &short).is_err());
    // A superblock claiming more blocks than the data has.
    let mut big = hash.clone();
    big[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&short.hash_file, &big).unwrap();
    assert!(Verifier::open(&path, &data, &short).is_err());
    let past = TreeSpec {
        offset: u64::MAX,
        ..spec.clone()
    };
    assert!(Verifier::open(&path, &data, &past).is_err());
    // Less data than the tree covers.
    assert!(Verifier::open(&path, &data[..1024], &spec).is_err());
}

#[test]
fn verify_ahead_marks_blocks_and_leaves_bad_ones_to_the_read() {
    let (dir, mut data, spec, _) = setup(300);
    data[200 * 512] ^= 1;
    let path = dir.path().join("data");
    std::fs::write(&path, &data).unwrap();
    let file = File::open(&path).unwrap();
    let map = Arc::new(ImageMap::map(&file, &path, data.len() as u64).unwrap());
    let v = Arc::new(Verifier::open(&path, &map, &spec).unwrap());
    let ahead = VerifyAhead::new(Arc::clone(&v), Arc::clone(&map), true, false);
    ahead.start();
    // Blocks 0..100, and a range running into the bad block 200 and
    // past the end of the tree.
    ahead.request(0, 100 * 512);
    ahead.request(150 * 512, 1 << 20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while v.stats().data_verified < 150 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = v.stats();
    // 100 + 50 (150..200), stopping quietly at 200.
    assert_eq!(stats.data_verified, 150, "{stats:?}");
    assert_eq!(stats.mismatches, 0, "a background check counted a mismatch");
    v.check(&map, 0, 100 * 512).unwrap();
    assert_eq!(
        v.stats().data_verified,
        150,
        "verified blocks were hashed again"
    );
    // The read that needs the bad block reports it.
    assert!(v.check(&map, 200 * 512, 512).is_err());
    assert_eq!(v.stats().mismatches, 1);
}
