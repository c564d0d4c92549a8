//! Chunk-based file indexes.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// 8-byte chunk index (`struct erofs_inode_chunk_index`).
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkIndex {
    /// Start block, high 16 bits (with [`CHUNK_FORMAT_48BIT`]).
    pub startblk_hi: U16,
    /// Device id (masked by the device id mask).
    pub device_id: U16,
    /// Start block, low 32 bits.
    pub startblk_lo: U32,
}

/// Size of one block map entry (a bare `le32` block address).
pub const BLOCK_MAP_ENTRY_SIZE: u64 = size_of::<U32>() as u64;
/// Size of one [`ChunkIndex`].
pub const CHUNK_INDEX_SIZE: u64 = size_of::<ChunkIndex>() as u64;
/// Chunk format: chunk size is `block size << (format & mask)`.
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1f;
/// Chunk format: 8-byte indexes instead of a 4-byte block map.
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// Chunk format: 48-bit start blocks in the indexes.
pub const CHUNK_FORMAT_48BIT: u16 = 0x40;
/// Every chunk format bit with a meaning.
pub const CHUNK_FORMAT_ALL: u16 = (CHUNK_FORMAT_48BIT << 1) - 1;
