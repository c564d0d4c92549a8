//! The dm-verity hash device superblock (`struct verity_sb` of cryptsetup,
//! version 1), which `veritysetup format` writes at the hash offset.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `signature` of a verity superblock.
pub const VERITY_SIGNATURE: [u8; 8] = *b"verity\0\0";

/// Size of [`VeritySuperBlock`]; the tree starts one hash block after it.
pub const VERITY_SUPERBLOCK_SIZE: usize = 512;

/// Longest salt the superblock holds.
pub const VERITY_MAX_SALT: usize = 256;

/// The 512-byte verity superblock.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct VeritySuperBlock {
    /// [`VERITY_SIGNATURE`].
    pub signature: [u8; 8],
    /// Superblock version (1).
    pub version: U32,
    /// 0: Chrome OS (salt after the data), 1: normal (salt first).
    pub hash_type: U32,
    /// UUID of the hash device.
    pub uuid: [u8; 16],
    /// Hash algorithm name, NUL-padded (e.g. "sha256").
    pub algorithm: [u8; 32],
    /// Data block size in bytes.
    pub data_block_size: U32,
    /// Hash block size in bytes.
    pub hash_block_size: U32,
    /// Number of data blocks covered.
    pub data_blocks: U64,
    /// Bytes of salt used.
    pub salt_size: U16,
    /// Padding.
    pub pad1: [u8; 6],
    /// The salt.
    pub salt: [u8; 256],
    /// Padding.
    pub pad2: [u8; 168],
}
