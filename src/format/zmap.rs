//! Compressed-file maps: the map header, lcluster indexes, extent records and
//! the per-algorithm compression configs of the superblock (`COMPR_CFGS`).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// Largest encoded size of one physical cluster (pcluster).
pub const PCLUSTER_MAX_SIZE: u64 = 1024 * 1024;
/// Largest decoded size of one extent.
pub const PCLUSTER_MAX_DSIZE: u64 = 12 * 1024 * 1024;
/// Largest LZMA dictionary an image may declare.
pub const LZMA_MAX_DICT_SIZE: u32 = 8 * 1024 * 1024;
/// Largest zstd window an image may declare, as log2.
pub const ZSTD_MAX_WINDOW_LOG: u8 = 20;
/// zstd's smallest window log; the config stores the excess over it.
pub const ZSTD_WINDOWLOG_ABSOLUTEMIN: u8 = 10;

/// Algorithm id: LZ4 block format.
pub const COMPRESSION_LZ4: u8 = 0;
/// Algorithm id: LZMA in MicroLZMA framing.
pub const COMPRESSION_LZMA: u8 = 1;
/// Algorithm id: raw DEFLATE.
pub const COMPRESSION_DEFLATE: u8 = 2;
/// Algorithm id: Zstandard frames.
pub const COMPRESSION_ZSTD: u8 = 3;
/// Number of algorithm ids defined.
pub const COMPRESSION_MAX: u8 = 4;

/// `h_advise`: compact indexes use the 2-byte form (COMPRESSED_COMPACT).
pub const ADVISE_COMPACTED_2B: u16 = 0x0001;
/// `h_advise`: the map is a list of extent records (COMPRESSED_FULL).
pub const ADVISE_EXTENTS: u16 = 0x0001;
/// `h_advise`: HEAD1 pclusters may span several blocks.
pub const ADVISE_BIG_PCLUSTER_1: u16 = 0x0002;
/// `h_advise`: HEAD2 and PLAIN pclusters may span several blocks.
pub const ADVISE_BIG_PCLUSTER_2: u16 = 0x0004;
/// `h_advise`: the tail pcluster is inline after the indexes (ztailpacking).
pub const ADVISE_INLINE_PCLUSTER: u16 = 0x0008;
/// `h_advise`: uncompressed pclusters are rotated by the in-block offset.
pub const ADVISE_INTERLACED_PCLUSTER: u16 = 0x0010;
/// `h_advise`: the file's tail is a fragment in the packed inode.
pub const ADVISE_FRAGMENT_PCLUSTER: u16 = 0x0020;
/// `h_advise`: bit position of the extent record size (`4 << n` bytes).
pub const ADVISE_EXTRECSZ_BIT: u16 = 1;
/// `h_advise`: mask of the extent record size after shifting.
pub const ADVISE_EXTRECSZ_MASK: u16 = 0x3;
/// `h_clusterbits` bit 7: the whole file is a fragment in the packed inode.
pub const FRAGMENT_INODE_BIT: u8 = 7;

/// lcluster type: an uncompressed pcluster starts here.
pub const LCLUSTER_TYPE_PLAIN: u8 = 0;
/// lcluster type: a pcluster of the first algorithm starts here.
pub const LCLUSTER_TYPE_HEAD1: u8 = 1;
/// lcluster type: continues the pcluster of an earlier HEAD.
pub const LCLUSTER_TYPE_NONHEAD: u8 = 2;
/// lcluster type: a pcluster of the second algorithm starts here.
pub const LCLUSTER_TYPE_HEAD2: u8 = 3;
/// Mask of the lcluster type in `di_advise`.
pub const LI_LCLUSTER_TYPE_MASK: u16 = 0x3;
/// `di_advise` (full indexes, HEAD): the pcluster is only partly referenced.
pub const LI_PARTIAL_REF: u16 = 1 << 15;
/// `delta[0]` of the first NONHEAD of a big pcluster: a compressed block count.
pub const LI_D0_CBLKCNT: u16 = 1 << 11;

/// Extent record `plen`: the pcluster is only partly referenced.
pub const EXTENT_PLEN_PARTIAL: u32 = 1 << 27;
/// Extent record `plen`: bit position of the algorithm (+1; 0 = plain).
pub const EXTENT_PLEN_FMT_BIT: u32 = 28;
/// Extent record `plen`: mask of the encoded length.
pub const EXTENT_PLEN_MASK: u32 = ((PCLUSTER_MAX_SIZE as u32) << 1) - 1;

/// The 8-byte map header at the start of a compressed inode's index area
/// (`struct z_erofs_map_header`). Its first four bytes are a union: fragment
/// offset, `{reserved, idata_size}` or the extent count's low half.
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MapHeader {
    /// `h_fragmentoff` / `{h_reserved1, h_idata_size}` / `h_extents_lo`.
    pub word0: U32,
    /// `ADVISE_*` bits.
    pub advise: U16,
    /// Algorithm of HEAD1 (low nibble) and HEAD2 (high nibble); with
    /// [`ADVISE_EXTENTS`], the low byte of `h_extents_hi`.
    pub algorithm_type: u8,
    /// lcluster bits minus block bits (low nibble); bit 7 = whole-file fragment.
    pub cluster_bits: u8,
}

impl MapHeader {
    /// `h_idata_size`: the encoded size of the inline tail pcluster.
    pub fn idata_size(&self) -> u16 {
        (self.word0.get() >> 16) as u16
    }

    /// `h_extents_hi`: the high 16 bits of the extent count.
    pub fn extents_hi(&self) -> u16 {
        u16::from_le_bytes([self.algorithm_type, self.cluster_bits])
    }
}

/// Size of the map header.
pub const MAP_HEADER_SIZE: u64 = size_of::<MapHeader>() as u64;
/// Full indexes start this far after the (8-aligned) map header start.
pub const FULL_INDEX_OFFSET: u64 = MAP_HEADER_SIZE + 8;

/// One full (8-byte) lcluster index (`struct z_erofs_lcluster_index`).
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LclusterIndex {
    /// lcluster type (`LI_LCLUSTER_TYPE_MASK`) and `LI_*` flags.
    pub advise: U16,
    /// HEAD: where in the lcluster the new extent starts.
    pub cluster_offset: U16,
    /// HEAD: pcluster block address; NONHEAD: `delta[0]` (low 16 bits,
    /// distance back to the HEAD) and `delta[1]` (distance to the next HEAD).
    pub addr_or_deltas: U32,
}

/// Size of one [`LclusterIndex`].
pub const LCLUSTER_INDEX_SIZE: u64 = size_of::<LclusterIndex>() as u64;

/// One extent record of the EXTENTS map (`struct z_erofs_extent`); records
/// are truncated to the size the header advises, so only a prefix is stored.
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ExtentRecord {
    /// Encoded length, `EXTENT_PLEN_PARTIAL` and the algorithm (+1).
    pub plen: U32,
    /// Physical byte offset, low 32 bits.
    pub pstart_lo: U32,
    /// Physical byte offset, high 32 bits.
    pub pstart_hi: U32,
    /// Logical byte offset, low 32 bits.
    pub lstart_lo: U32,
    /// Logical byte offset, high 32 bits.
    pub lstart_hi: U32,
    /// Reserved.
    pub reserved: [u8; 12],
}

/// LZ4 config (`struct z_erofs_lz4_cfgs`).
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Lz4Config {
    /// Largest match distance the compressor used.
    pub max_distance: U16,
    /// Largest pcluster, in blocks.
    pub max_pclusterblks: U16,
}

/// LZMA config (`struct z_erofs_lzma_cfgs`).
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LzmaConfig {
    /// Dictionary size in bytes.
    pub dict_size: U32,
    /// Stream format; only 0 (MicroLZMA) exists.
    pub format: U16,
}

/// DEFLATE config (`struct z_erofs_deflate_cfgs`).
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DeflateConfig {
    /// log2 of the window, 8..=15.
    pub window_bits: u8,
}

/// Zstandard config (`struct z_erofs_zstd_cfgs`).
#[derive(Debug, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ZstdConfig {
    /// Frame format; only 0 exists.
    pub format: u8,
    /// Window log minus [`ZSTD_WINDOWLOG_ABSOLUTEMIN`].
    pub window_log: u8,
}
