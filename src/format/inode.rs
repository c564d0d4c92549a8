//! On-disk inodes: the 32-byte compact and 64-byte extended forms.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Compact (32-byte) inode, `struct erofs_inode_compact`.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeCompact {
    /// Format bits: version, data layout, NLINK_1/DOT_OMITTED.
    pub i_format: U16,
    /// Inline xattr size in 4-byte units (see [`xattr_ibody_size`](crate::format::xattr_ibody_size)).
    pub i_xattr_icount: U16,
    /// File type and permission bits.
    pub i_mode: U16,
    /// nlink, or the high 16 bits of the start block when NLINK_1 is set.
    pub i_nb: U16,
    /// File size.
    pub i_size: U32,
    /// Seconds added to the superblock epoch.
    pub i_mtime: U32,
    /// Start block, compressed block count, rdev or chunk info.
    pub i_u: U32,
    /// 32-bit inode number hint for stat.
    pub i_ino: U32,
    /// Owner.
    pub i_uid: U16,
    /// Group.
    pub i_gid: U16,
    /// Reserved.
    pub i_reserved: U32,
}

/// Extended (64-byte) inode, `struct erofs_inode_extended`.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeExtended {
    /// Format bits: version, data layout, DOT_OMITTED.
    pub i_format: U16,
    /// Inline xattr size in 4-byte units.
    pub i_xattr_icount: U16,
    /// File type and permission bits.
    pub i_mode: U16,
    /// High 16 bits of the start block (48BIT).
    pub i_nb: U16,
    /// File size.
    pub i_size: U64,
    /// Start block, compressed block count, rdev or chunk info.
    pub i_u: U32,
    /// 32-bit inode number hint for stat.
    pub i_ino: U32,
    /// Owner.
    pub i_uid: U32,
    /// Group.
    pub i_gid: U32,
    /// Modification time, seconds.
    pub i_mtime: U64,
    /// Modification time, nanoseconds.
    pub i_mtime_nsec: U32,
    /// Link count.
    pub i_nlink: U32,
    /// Reserved.
    pub i_reserved2: [u8; 16],
}

/// Size of a [`InodeCompact`] core.
pub const INODE_COMPACT_SIZE: u64 = size_of::<InodeCompact>() as u64;
/// Size of a [`InodeExtended`] core.
pub const INODE_EXTENDED_SIZE: u64 = size_of::<InodeExtended>() as u64;

/// `i_format` bit 0: 0 compact, 1 extended.
pub const I_VERSION_MASK: u16 = 0x1;
/// `i_format` bits 1..3: the data layout.
pub const I_DATALAYOUT_SHIFT: u16 = 1;
/// Mask of the data layout after shifting.
pub const I_DATALAYOUT_MASK: u16 = 0x7;
/// `i_format` bit 4: NLINK_1 (compact non-directories) or DOT_OMITTED (directories).
pub const I_NLINK_1_OR_DOT_OMITTED: u16 = 1 << 4;
/// Every `i_format` bit with a meaning; others make the inode unsupported.
pub const I_FORMAT_ALL: u16 = (1 << 5) - 1;

/// How an inode's data is stored (`EROFS_INODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// Contiguous blocks from the start block.
    FlatPlain,
    /// Compressed, full (8-byte) lcluster indexes.
    CompressedFull,
    /// Contiguous blocks, the tail packed after the inode.
    FlatInline,
    /// Compressed, compacted lcluster indexes.
    CompressedCompact,
    /// Fixed-size chunks with a block map or chunk index table.
    ChunkBased,
}

impl DataLayout {
    /// Decodes the 3-bit layout field, `None` for reserved values.
    pub fn from_bits(bits: u16) -> Option<Self> {
        Some(match bits {
            0 => Self::FlatPlain,
            1 => Self::CompressedFull,
            2 => Self::FlatInline,
            3 => Self::CompressedCompact,
            4 => Self::ChunkBased,
            _ => return None,
        })
    }

    /// The 3-bit layout field.
    pub fn to_bits(self) -> u16 {
        match self {
            Self::FlatPlain => 0,
            Self::CompressedFull => 1,
            Self::FlatInline => 2,
            Self::CompressedCompact => 3,
            Self::ChunkBased => 4,
        }
    }

    /// Whether data in this layout is compressed.
    pub fn is_compressed(self) -> bool {
        matches!(self, Self::CompressedFull | Self::CompressedCompact)
    }

    /// The name `dump.erofs` and the kernel use.
    pub fn name(self) -> &'static str {
        match self {
            Self::FlatPlain => "flat_plain",
            Self::CompressedFull => "compressed_full",
            Self::FlatInline => "flat_inline",
            Self::CompressedCompact => "compressed_compact",
            Self::ChunkBased => "chunk_based",
        }
    }
}

/// Encodes a device number as the kernel's `new_encode_dev` does.
pub fn encode_rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Decodes a device number stored with the kernel's `new_encode_dev`.
pub fn decode_rdev(raw: u32) -> (u32, u32) {
    let major = (raw & 0xfff00) >> 8;
    let minor = (raw & 0xff) | ((raw >> 12) & 0xfff00);
    (major, minor)
}
