//! The verity tree parser and the block checker, against the whole-tree
//! verifier as an oracle.
//!
//! The superblock parser gets the raw input. Then a real tree is built
//! over a data file taken from the input, and the rest of the input flips
//! bytes of the data, the superblock or the tree (5-byte records: le32
//! offset, xor). Whatever the flips, a block the checker accepts holds the
//! original bytes, and the checker accepts every block exactly when
//! `verify` accepts the whole tree.
use std::fs::File;
use std::path::PathBuf;

use erofs_fuse::verity::{self, TreeSpec, Verifier, VerityParams};

use super::workdir;

fn flip(bytes: &mut [u8], at: u32, xor: u8) {
    if !bytes.is_empty() {
        let len = bytes.len();
        bytes[at as usize % len] ^= xor;
    }
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let _ = VerityParams::from_superblock(data);
    if data.len() < 3 {
        return;
    }
    // Byte 0: block sizes; byte 1: data blocks (1..=64); then the data.
    let sizes = [512u32, 1024, 4096];
    let data_block_size = sizes[usize::from(data[0] & 3) % 3];
    let hash_block_size = sizes[usize::from(data[0] >> 2 & 3) % 3];
    let blocks = u64::from(data[1] % 64) + 1;
    let len = blocks as usize * data_block_size as usize;
    let mut original = data[2..]
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect::<Vec<_>>();
    original.resize(len, 0);
    let flips = &data[2..][(data.len() - 2).min(len)..];

    let dir = workdir();
    let data_path: PathBuf = dir.join("data");
    let hash_path: PathBuf = dir.join("hash");
    std::fs::write(&data_path, &original).expect("scratch write");
    let params = VerityParams {
        data_block_size,
        hash_block_size,
        data_blocks: blocks,
        salt: data[..2].to_vec(),
        uuid: [7; 16],
    };
    let root = {
        let data_file = File::open(&data_path).expect("scratch open");
        let hash_file = File::create(&hash_path).expect("scratch create");
        verity::format(&data_file, &hash_file, 0, &params).expect("format")
    };
    let mut served = original.clone();
    let mut tree = std::fs::read(&hash_path).expect("scratch read");
    for record in flips.chunks_exact(5) {
        let at = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
        // The offset's top bit picks the data, else the hash file.
        if at & 0x8000_0000 != 0 {
            flip(&mut served, at & 0x7fff_ffff, record[4]);
        } else {
            flip(&mut tree, at, record[4]);
        }
    }
    std::fs::write(&data_path, &served).expect("scratch write");
    std::fs::write(&hash_path, &tree).expect("scratch write");

    let whole = verity::verify(
        &File::open(&data_path).expect("scratch open"),
        &File::open(&hash_path).expect("scratch open"),
        0,
        &root,
    );
    let spec = TreeSpec {
        root,
        hash_file: hash_path.clone(),
        offset: 0,
        no_superblock: None,
    };
    let verifier = match Verifier::open(&data_path, &served, &spec) {
        Ok(verifier) => verifier,
        Err(e) => {
            assert!(
                whole.is_err(),
                "verify accepts ({whole:?}) a tree the checker refuses to open: {e}"
            );
            return;
        }
    };
    // Every block of the data as made: a flipped superblock may make the
    // checker cover fewer, and those it then refuses.
    let size = u64::from(data_block_size);
    let mut all_good = true;
    for block in 0..blocks {
        let range = (block * size) as usize..((block + 1) * size) as usize;
        match verifier.check(&served, block * size, size) {
            Ok(()) => assert!(
                served.get(range.clone()) == original.get(range),
                "block {block} was accepted with bytes that differ from the original"
            ),
            Err(_) => all_good = false,
        }
    }
    assert_eq!(
        all_good,
        whole.is_ok(),
        "the block checker and verify disagree: checker {all_good}, verify {whole:?}"
    );
}
