//! Superblock, feature bits and the extra-device table.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `magic` of an EROFS superblock.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Byte offset of the superblock in the primary device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the fixed superblock; `sb_extslots` adds 16-byte slots after it.
pub const SUPERBLOCK_BASE_SIZE: usize = size_of::<SuperBlock>();
/// Size of one superblock extension slot.
pub const SUPERBLOCK_EXTSLOT_SIZE: usize = size_of::<SuperBlockExt>();
/// Where the checksum field lies in the superblock (zeroed while it is
/// computed).
pub const SUPERBLOCK_CHECKSUM_FIELD: std::ops::Range<usize> =
    std::mem::offset_of!(SuperBlock, checksum)..std::mem::offset_of!(SuperBlock, checksum) + 4;
/// Size of a device table slot; `devt_slotoff` counts in these.
pub const DEVICE_SLOT_SIZE: u64 = size_of::<DeviceSlot>() as u64;

/// The fixed 128-byte EROFS superblock (`struct erofs_super_block`).
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    /// [`EROFS_MAGIC`].
    pub magic: U32,
    /// CRC32C of the superblock block, when [`COMPAT_SB_CHKSUM`] is set.
    pub checksum: U32,
    /// Compatible feature bits (`COMPAT_*`).
    pub feature_compat: U32,
    /// log2 of the block size.
    pub blkszbits: u8,
    /// Number of 16-byte extension slots after the base superblock.
    pub sb_extslots: u8,
    /// Root nid (16-bit), or `blocks_hi` when 48BIT and `rootnid_8b != 0`.
    pub rootnid_2b: U16,
    /// Number of inodes.
    pub inos: U64,
    /// Base seconds of compact inode mtimes (was `build_time`).
    pub epoch: U64,
    /// Nanoseconds of every compact inode's mtime (was `build_time_nsec`).
    pub fixed_nsec: U32,
    /// Primary device size in blocks (low 32 bits).
    pub blocks_lo: U32,
    /// Block address of the inode (metadata) area.
    pub meta_blkaddr: U32,
    /// Block address of the shared xattr area.
    pub xattr_blkaddr: U32,
    /// Volume UUID.
    pub uuid: [u8; 16],
    /// Volume name, NUL-padded.
    pub volume_name: [u8; 16],
    /// Incompatible feature bits (`INCOMPAT_*`).
    pub feature_incompat: U32,
    /// `available_compr_algs` (with COMPR_CFGS) or `lz4_max_distance`.
    pub compr_algs_or_lz4_distance: U16,
    /// Number of extra devices (with DEVICE_TABLE).
    pub extra_devices: U16,
    /// Device table offset in 128-byte units.
    pub devt_slotoff: U16,
    /// Directory block bits beyond the block size (must be 0).
    pub dirblkbits: u8,
    /// Number of long xattr name prefixes.
    pub xattr_prefix_count: u8,
    /// Offset of the long prefix table, in 4-byte units.
    pub xattr_prefix_start: U32,
    /// Nid of the packed inode (fragments, long prefixes).
    pub packed_nid: U64,
    /// Reserved for the xattr name filter.
    pub xattr_filter_reserved: u8,
    /// Long prefix id of inode-sharing xattrs.
    pub ishare_xattr_prefix_id: u8,
    /// Reserved.
    pub reserved: [u8; 2],
    /// Seconds after `epoch` at which the image was built.
    pub build_time: U32,
    /// 64-bit root nid (48BIT).
    pub rootnid_8b: U64,
    /// Reserved.
    pub reserved2: U64,
}

/// The first superblock extension slot (present when `sb_extslots >= 1`).
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlockExt {
    /// Nid of the metabox inode (METABOX).
    pub metabox_nid: U64,
    /// Reserved.
    pub reserved3: U64,
}

/// The superblock checksum over `area`, the bytes from
/// [`SUPERBLOCK_OFFSET`] to the end of its block (or one block, for blocks of
/// 1 KiB or less) with the checksum field zeroed: CRC32C seeded with ~0 and
/// without the final inversion.
pub fn superblock_checksum(area: &[u8]) -> u32 {
    // crc32c() applies the final inversion; EROFS stores the value before it.
    !crc32c::crc32c(area)
}

/// How many bytes from [`SUPERBLOCK_OFFSET`] the checksum covers.
pub fn superblock_checksum_len(block_size: u64) -> u64 {
    if block_size > SUPERBLOCK_OFFSET {
        block_size - SUPERBLOCK_OFFSET
    } else {
        block_size
    }
}

/// One entry of the extra-device table (`struct erofs_deviceslot`).
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DeviceSlot {
    /// Identifier (e.g. sha256 hex digest or uuid), NUL-padded.
    pub tag: [u8; 64],
    /// Device size in blocks (low 32 bits).
    pub blocks_lo: U32,
    /// Start of the device in the unified block address space (low 32 bits).
    pub uniaddr_lo: U32,
    /// Device size, high 16 bits (48BIT).
    pub blocks_hi: U16,
    /// Unified start, high 16 bits (48BIT).
    pub uniaddr_hi: U16,
    /// Reserved.
    pub reserved: [u8; 52],
}

/// Compat: the superblock carries a CRC32C.
pub const COMPAT_SB_CHKSUM: u32 = 0x1;
/// Compat: compact inodes carry their own mtime offset.
pub const COMPAT_MTIME: u32 = 0x2;
/// Compat: xattr name bloom filter.
pub const COMPAT_XATTR_FILTER: u32 = 0x4;
/// Compat: shared xattrs live in the metabox.
pub const COMPAT_SHARED_EA_IN_METABOX: u32 = 0x8;
/// Compat: the long xattr prefix table is on the primary device, not in an inode.
pub const COMPAT_PLAIN_XATTR_PFX: u32 = 0x10;
/// Compat: inode-sharing xattrs.
pub const COMPAT_ISHARE_XATTRS: u32 = 0x20;

/// Incompat: LZ4 compressed data is zero-padded at the front.
pub const INCOMPAT_ZERO_PADDING: u32 = 0x1;
/// Incompat: compression configs follow the superblock (also BIG_PCLUSTER).
pub const INCOMPAT_COMPR_CFGS: u32 = 0x2;
/// Incompat: chunk-based files.
pub const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// Incompat: extra device table (also COMPR_HEAD2).
pub const INCOMPAT_DEVICE_TABLE: u32 = 0x8;
/// Incompat: compressed tail packed inline.
pub const INCOMPAT_ZTAILPACKING: u32 = 0x10;
/// Incompat: fragments in the packed inode (also DEDUPE).
pub const INCOMPAT_FRAGMENTS: u32 = 0x20;
/// Incompat: long xattr name prefixes.
pub const INCOMPAT_XATTR_PREFIXES: u32 = 0x40;
/// Incompat: 48-bit block addresses.
pub const INCOMPAT_48BIT: u32 = 0x80;
/// Incompat: metadata stored in the metabox inode.
pub const INCOMPAT_METABOX: u32 = 0x100;
/// Every incompat bit this implementation understands.
pub const INCOMPAT_SUPPORTED: u32 = (INCOMPAT_METABOX << 1) - 1;

/// Names of compat feature bits, as `mkfs.erofs`/`dump.erofs` spell them.
pub const COMPAT_NAMES: &[(u32, &str)] = &[
    (COMPAT_SB_CHKSUM, "sb_csum"),
    (COMPAT_MTIME, "mtime"),
    (COMPAT_XATTR_FILTER, "xattr_filter"),
    (COMPAT_SHARED_EA_IN_METABOX, "shared_ea_in_metabox"),
    (COMPAT_PLAIN_XATTR_PFX, "plain_xattr_pfx"),
    (COMPAT_ISHARE_XATTRS, "ishare_xattrs"),
];

/// Names of incompat feature bits (shared bits name both features).
pub const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (INCOMPAT_ZERO_PADDING, "0padding"),
    (INCOMPAT_COMPR_CFGS, "compr_cfgs/big_pcluster"),
    (INCOMPAT_CHUNKED_FILE, "chunked_file"),
    (INCOMPAT_DEVICE_TABLE, "device_table/compr_head2"),
    (INCOMPAT_ZTAILPACKING, "ztailpacking"),
    (INCOMPAT_FRAGMENTS, "fragments/dedupe"),
    (INCOMPAT_XATTR_PREFIXES, "xattr_prefixes"),
    (INCOMPAT_48BIT, "48bit"),
    (INCOMPAT_METABOX, "metabox"),
];

/// Compression algorithm numbers (`Z_EROFS_COMPRESSION_*`) and names.
pub const COMPRESSION_NAMES: &[(u16, &str)] =
    &[(0, "lz4"), (1, "lzma"), (2, "deflate"), (3, "zstd")];
