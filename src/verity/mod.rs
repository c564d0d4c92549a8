//! dm-verity hash trees, bit-compatible with `veritysetup` (format version
//! 1, hash type 1, sha256): building one for a file, and checking a file
//! against one.
//!
//! Layout of the hash area, from the hash offset: the superblock padded to
//! one hash block, then the tree's levels from the top (one block) down to
//! the leaves (one digest per data block). Each digest is
//! `sha256(salt || block)`; each hash block holds a power of two of them,
//! zero-padded. The root hash is the digest of the top block (of the only
//! data block when there is just one).

mod ahead;
mod copies;
mod padded;
mod prepared;
mod source;
mod verifier;

pub use ahead::VerifyAhead;
pub use padded::{containerd_params, tree_of_stream, StreamTree, CONTAINERD_BLOCK};
pub use prepared::Prepared;
pub use source::{parse_root, NoSuperblock, Sidecar, TreeSpec, VeritySource};
pub use verifier::{Verifier, VerityStats};

/// Re-exported where it was always named; it lives in [`crate::error`], below
/// every layer that reports it.
pub use crate::error::VerityError;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::{VeritySuperBlock, VERITY_MAX_SALT, VERITY_SIGNATURE, VERITY_SUPERBLOCK_SIZE};

/// Size of a sha256 digest.
pub const DIGEST_SIZE: usize = 32;

/// What a verity tree is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Data block size in bytes (a power of two, 512..=1 MiB).
    pub data_block_size: u32,
    /// Hash block size in bytes (a power of two, 512..=1 MiB).
    pub hash_block_size: u32,
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// The salt (at most 256 bytes).
    pub salt: Vec<u8>,
    /// UUID stored in the superblock.
    pub uuid: [u8; 16],
}

/// One level of the tree: its first block (in hash blocks from the hash
/// offset) and its length in blocks. Level 0 holds the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// First hash block of the level.
    pub start: u64,
    /// Blocks in the level.
    pub blocks: u64,
}

/// Checks a data or hash block size as veritysetup does: a power of two
/// from 512 bytes to 1 MiB.
pub fn check_block_size(what: &str, size: u32) -> Result<(), String> {
    if size.is_power_of_two() && (512..=1 << 20).contains(&size) {
        Ok(())
    } else {
        Err(format!(
            "{what} block size {size} is not a power of two from 512 to 1 MiB"
        ))
    }
}

impl VerityParams {
    /// Checks sizes as veritysetup does.
    pub fn validate(&self) -> Result<(), VerityError> {
        for (what, size) in [
            ("data", self.data_block_size),
            ("hash", self.hash_block_size),
        ] {
            check_block_size(what, size).map_err(VerityError::Invalid)?;
        }
        if self.salt.len() > VERITY_MAX_SALT {
            return Err(VerityError::Invalid(format!(
                "salt of {} bytes (at most 256)",
                self.salt.len()
            )));
        }
        if self.data_blocks == 0 {
            return Err(VerityError::Invalid("no data blocks".into()));
        }
        Ok(())
    }

    /// log2 of the digests one hash block holds.
    fn per_block_bits(&self) -> u32 {
        (self.hash_block_size as usize / DIGEST_SIZE).ilog2()
    }

    /// The tree's levels, leaves first; their blocks count from the hash
    /// offset, the superblock's block being 0.
    pub fn levels(&self) -> Vec<Level> {
        let bits = self.per_block_bits();
        let mut count = 0;
        while bits * count < 64 && (self.data_blocks - 1) >> (bits * count) != 0 {
            count += 1;
        }
        let mut levels = vec![
            Level {
                start: 0,
                blocks: 0
            };
            count as usize
        ];
        // The top level comes first on disk, after the superblock.
        let mut position = 1;
        for i in (0..count as usize).rev() {
            let shift = (i as u32 + 1) * bits;
            let blocks = if shift >= 64 {
                1
            } else {
                (self.data_blocks - 1) >> shift
            } + 1;
            levels[i] = Level {
                start: position,
                blocks,
            };
            position += blocks;
        }
        levels
    }

    /// Size of the hash area (superblock and tree) in bytes.
    pub fn hash_area_size(&self) -> u64 {
        let blocks: u64 = 1 + self.levels().iter().map(|l| l.blocks).sum::<u64>();
        blocks * u64::from(self.hash_block_size)
    }

    /// The superblock bytes.
    pub fn superblock(&self) -> Vec<u8> {
        let mut salt = [0u8; VERITY_MAX_SALT];
        salt[..self.salt.len()].copy_from_slice(&self.salt);
        let mut algorithm = [0u8; 32];
        algorithm[..6].copy_from_slice(b"sha256");
        let sb = VeritySuperBlock {
            signature: VERITY_SIGNATURE,
            version: U32::new(1),
            hash_type: U32::new(1),
            uuid: self.uuid,
            algorithm,
            data_block_size: U32::new(self.data_block_size),
            hash_block_size: U32::new(self.hash_block_size),
            data_blocks: U64::new(self.data_blocks),
            salt_size: U16::new(self.salt.len() as u16),
            pad1: [0; 6],
            salt,
            pad2: [0; 168],
        };
        sb.as_bytes().to_vec()
    }

    /// Parameters read from a superblock.
    pub fn from_superblock(bytes: &[u8]) -> Result<Self, VerityError> {
        let (sb, _) = VeritySuperBlock::ref_from_prefix(bytes).map_err(|_| {
            VerityError::Invalid("hash area shorter than a verity superblock".into())
        })?;
        if sb.signature != VERITY_SIGNATURE {
            return Err(VerityError::Invalid(
                "no verity superblock (bad signature)".into(),
            ));
        }
        if sb.version.get() != 1 || sb.hash_type.get() != 1 {
            return Err(VerityError::Invalid(format!(
                "verity superblock version {} hash type {} (only 1/1 is supported)",
                sb.version.get(),
                sb.hash_type.get()
            )));
        }
        let name_len = sb.algorithm.iter().position(|&b| b == 0).unwrap_or(32);
        if &sb.algorithm[..name_len] != b"sha256" {
            return Err(VerityError::Invalid(format!(
                "hash algorithm '{}' (only sha256 is supported)",
                String::from_utf8_lossy(&sb.algorithm[..name_len])
            )));
        }
        let salt_size = usize::from(sb.salt_size.get());
        if salt_size > VERITY_MAX_SALT {
            return Err(VerityError::Invalid(format!("salt of {salt_size} bytes")));
        }
        let params = Self {
            data_block_size: sb.data_block_size.get(),
            hash_block_size: sb.hash_block_size.get(),
            data_blocks: sb.data_blocks.get(),
            salt: sb.salt[..salt_size].to_vec(),
            uuid: sb.uuid,
        };
        params.validate()?;
        Ok(params)
    }

    /// `sha256(salt || block)`.
    pub fn digest(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        let mut hasher = Sha256::new();
        hasher.update(&self.salt);
        hasher.update(block);
        hasher.finalize().into()
    }
}

/// Computes the tree over the first `params.data_blocks` blocks of `data`
/// and writes superblock and tree to `hash` at `hash_offset`. Returns the
/// root hash.
pub fn format(
    data: &File,
    hash: &File,
    hash_offset: u64,
    params: &VerityParams,
) -> Result<[u8; DIGEST_SIZE], VerityError> {
    format_tree(data, hash, hash_offset, params, true)
}

/// [`format`](fn@format), or with `superblock` false the tree alone from
/// `hash_offset` (`veritysetup format --no-superblock`).
pub fn format_tree(
    data: &File,
    hash: &File,
    hash_offset: u64,
    params: &VerityParams,
    superblock: bool,
) -> Result<[u8; DIGEST_SIZE], VerityError> {
    params.validate()?;
    let (levels, root) = build(params, |i, buf| {
        data.read_exact_at(buf, i * u64::from(params.data_block_size))
    })?;
    let start = tree_start(params, hash_offset, superblock);
    if superblock {
        let mut first = params.superblock();
        first.resize(params.hash_block_size as usize, 0);
        hash.write_all_at(&first, hash_offset)?;
    }
    for (level, bytes) in params.levels().iter().zip(&levels) {
        hash.write_all_at(bytes, start + level_offset(params, level))?;
    }
    Ok(root)
}

/// Byte offset of the tree's first level block: after the superblock's
/// block when there is one.
fn tree_start(params: &VerityParams, hash_offset: u64, superblock: bool) -> u64 {
    hash_offset
        + if superblock {
            u64::from(params.hash_block_size)
        } else {
            0
        }
}

/// Offset of a level from the tree's first block.
fn level_offset(params: &VerityParams, level: &Level) -> u64 {
    (level.start - 1) * u64::from(params.hash_block_size)
}

/// containerd's layout for a layer: `file` zero-padded to whole blocks of
/// `block_size`, then superblock and tree appended at that offset, with 32
/// zero bytes of salt and equal data and hash blocks. Returns the root hash
/// and the hash offset (what the `.dmverity` sidecar records).
pub fn append(
    file: &File,
    block_size: u32,
    uuid: [u8; 16],
) -> Result<([u8; DIGEST_SIZE], u64), VerityError> {
    let len = file.metadata()?.len();
    let hash_offset = len.next_multiple_of(u64::from(block_size));
    file.set_len(hash_offset)?;
    let params = VerityParams {
        data_block_size: block_size,
        hash_block_size: block_size,
        data_blocks: hash_offset / u64::from(block_size),
        salt: vec![0; 32],
        uuid,
    };
    let root = format(file, file, hash_offset, &params)?;
    file.sync_all()?;
    Ok((root, hash_offset))
}

/// Every level's hash blocks (leaves first) and the root hash, reading data
/// block `i` with `read(i, buf)`.
fn build(
    params: &VerityParams,
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<(Vec<Vec<u8>>, [u8; DIGEST_SIZE]), VerityError> {
    let layout = params.levels();
    let mut block = vec![0u8; params.data_block_size as usize];
    if layout.is_empty() {
        read(0, &mut block)?;
        return Ok((Vec::new(), params.digest(&block)));
    }
    let per_block = 1usize << params.per_block_bits();
    let hash_block = params.hash_block_size as usize;
    // Leaves: digests of the data blocks, packed into hash blocks.
    let mut below = vec![0u8; layout[0].blocks as usize * hash_block];
    for i in 0..params.data_blocks {
        read(i, &mut block)?;
        let at = pack_offset(i as usize, per_block, hash_block);
        below[at..at + DIGEST_SIZE].copy_from_slice(&params.digest(&block));
    }
    let mut levels = vec![below];
    for level in &layout[1..] {
        let children = levels.last().expect("the leaves are there");
        let mut bytes = vec![0u8; level.blocks as usize * hash_block];
        for (i, child) in children.chunks(hash_block).enumerate() {
            let at = pack_offset(i, per_block, hash_block);
            bytes[at..at + DIGEST_SIZE].copy_from_slice(&params.digest(child));
        }
        levels.push(bytes);
    }
    let top = levels.last().expect("at least one level");
    let root = params.digest(&top[..hash_block]);
    Ok((levels, root))
}

/// Byte offset of digest `i` in a level whose blocks hold `per_block`.
fn pack_offset(i: usize, per_block: usize, hash_block: usize) -> usize {
    (i / per_block) * hash_block + (i % per_block) * DIGEST_SIZE
}

/// Checks `data` against the tree at `hash_offset` of `hash` and the root
/// hash: every data block, every hash block. Returns the parameters read
/// from the superblock.
pub fn verify(
    data: &File,
    hash: &File,
    hash_offset: u64,
    root: &[u8],
) -> Result<VerityParams, VerityError> {
    verify_tree(data, hash, hash_offset, root, None)
}

/// [`verify`], or for a tree without a superblock at `hash_offset`, with
/// the parameters it was made with.
pub fn verify_tree(
    data: &File,
    hash: &File,
    hash_offset: u64,
    root: &[u8],
    no_superblock: Option<&VerityParams>,
) -> Result<VerityParams, VerityError> {
    let params = match no_superblock {
        Some(params) => {
            params.validate()?;
            params.clone()
        }
        None => {
            let mut sb = vec![0u8; VERITY_SUPERBLOCK_SIZE];
            hash.read_exact_at(&mut sb, hash_offset)?;
            VerityParams::from_superblock(&sb)?
        }
    };
    let start = tree_start(&params, hash_offset, no_superblock.is_none());
    // The superblock is input too: the data must hold the blocks it
    // claims before a tree for them is allocated.
    let needed = params
        .data_blocks
        .checked_mul(u64::from(params.data_block_size))
        .ok_or_else(|| VerityError::Invalid("data block count overflows".into()))?;
    let have = data.metadata()?.len();
    if have < needed {
        return Err(VerityError::Invalid(format!(
            "the tree covers {} blocks ({needed} bytes) but the data has {have} bytes",
            params.data_blocks
        )));
    }
    let (levels, computed) = build(&params, |i, buf| {
        data.read_exact_at(buf, i * u64::from(params.data_block_size))
    })?;
    let hash_block = u64::from(params.hash_block_size);
    // The stored tree, leaves first: the first block that differs from
    // the recomputed one names the data (leaf level) or hash block at fault.
    for (index, (level, bytes)) in params.levels().iter().zip(&levels).enumerate() {
        let mut stored = vec![0u8; bytes.len()];
        hash.read_exact_at(&mut stored, start + level_offset(&params, level))?;
        if let Some(bad) = stored
            .chunks(hash_block as usize)
            .zip(bytes.chunks(hash_block as usize))
            .position(|(a, b)| a != b)
        {
            return Err(if index == 0 {
                // Find the data block whose digest differs.
                let per_block = 1usize << params.per_block_bits();
                let start = bad * per_block;
                let offset = bad * hash_block as usize;
                let digest = (0..per_block)
                    .find(|j| {
                        let at = offset + j * DIGEST_SIZE;
                        stored[at..at + DIGEST_SIZE] != bytes[at..at + DIGEST_SIZE]
                    })
                    .unwrap_or(0);
                VerityError::Mismatch {
                    what: "data",
                    block: (start + digest) as u64,
                }
            } else {
                VerityError::Mismatch {
                    what: "hash",
                    block: level.start + bad as u64,
                }
            });
        }
    }
    if computed.as_slice() != root {
        return Err(VerityError::RootMismatch(hex(&computed)));
    }
    Ok(params)
}

pub use crate::format::{format_uuid, from_hex, hex, parse_uuid};

#[cfg(test)]
mod tests {
    use super::*;

    fn params(blocks: u64) -> VerityParams {
        VerityParams {
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: blocks,
            salt: vec![0],
            uuid: [0; 16],
        }
    }

    #[test]
    fn levels_are_laid_out_top_first() {
        assert!(params(1).levels().is_empty());
        assert_eq!(
            params(244).levels(),
            vec![
                Level {
                    start: 2,
                    blocks: 2
                },
                Level {
                    start: 1,
                    blocks: 1
                }
            ]
        );
        assert_eq!(params(244).hash_area_size(), 4 * 4096);
        assert_eq!(
            params(128).levels(),
            vec![Level {
                start: 1,
                blocks: 1
            }]
        );
        let three = params(128 * 128 + 1).levels();
        assert_eq!(three.len(), 3);
        assert_eq!(three[0].blocks, 129);
    }

    #[test]
    fn hex_and_uuids_round_trip() {
        let uuid = parse_uuid("11111111-2222-3333-4444-555555555555").unwrap();
        assert_eq!(format_uuid(&uuid), "11111111-2222-3333-4444-555555555555");
        assert_eq!(from_hex("0a0B"), Some(vec![10, 11]));
        assert_eq!(from_hex("0g"), None);
    }
}
