//! On-disk EROFS structures and constants (and the dm-verity superblock
//! that protects images), and nothing else.
//!
//! Every structure is a `#[repr(C)]` view of little-endian bytes (via
//! `zerocopy`), so parsing is a bounds-checked cast of a byte slice. This
//! module does no I/O and applies no policy: validation of the values lives in
//! the reader, where the context (image size, block size) is known.
//!
//! Layouts follow the kernel's `fs/erofs/erofs_fs.h` (erofs-utils 1.9).

mod chunk;
mod dirent;
mod inode;
mod overlay;
mod superblock;
mod text;
mod verity;
mod xattr;
mod zmap;

pub use chunk::*;
pub use dirent::*;
pub use inode::*;
pub use overlay::*;
pub use superblock::*;
pub use text::*;
pub use verity::*;
pub use xattr::*;
pub use zmap::*;

use zerocopy::{FromBytes, Immutable, KnownLayout};

/// Reads a `T` from the start of `bytes`, or `None` when `bytes` is too short.
///
/// All format structures are `Unaligned`, so only the length can fail.
pub fn read_struct<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Option<&T> {
    T::ref_from_prefix(bytes).ok().map(|(value, _)| value)
}

/// A node id: an inode's position in the metadata area, in 32-byte slots.
///
/// Bit 63 set means the inode lives inside the metabox inode's data
/// (`METABOX` feature) rather than in the primary device's metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nid(pub u64);

impl Nid {
    /// The bit of a nid that selects the metabox address space.
    pub const METABOX_BIT: u64 = 1 << 63;

    /// Whether this inode is stored inside the metabox inode.
    pub fn in_metabox(self) -> bool {
        self.0 & Self::METABOX_BIT != 0
    }

    /// The slot number without the metabox bit.
    pub fn slot(self) -> u64 {
        self.0 & !Self::METABOX_BIT
    }
}

impl std::fmt::Display for Nid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block number on one device, in filesystem blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockAddr(pub u64);

/// Size of one inode slot, that of a compact inode: nids count in these.
pub const INODE_SLOT_SIZE: u64 = size_of::<InodeCompact>() as u64;

// The on-disk sizes, checked at compile time as the kernel's
// erofs_check_ondisk_layout_definitions() checks them at module load.
const _: () = {
    assert!(size_of::<SuperBlock>() == 128);
    assert!(size_of::<SuperBlockExt>() == 16);
    assert!(size_of::<DeviceSlot>() == 128);
    assert!(size_of::<InodeCompact>() == 32);
    assert!(size_of::<InodeExtended>() == 64);
    assert!(size_of::<XattrIbodyHeader>() == 12);
    assert!(size_of::<XattrEntry>() == 4);
    assert!(size_of::<ChunkIndex>() == 8);
    assert!(size_of::<Dirent>() == 12);
    assert!(size_of::<MapHeader>() == 8);
    assert!(size_of::<LclusterIndex>() == 8);
    assert!(size_of::<ExtentRecord>() == 32);
    // The algorithm configs are read as prefixes of their records (the
    // kernel's structs end in reserved bytes), so they are not checked.
    assert!(size_of::<VeritySuperBlock>() == VERITY_SUPERBLOCK_SIZE);
};

/// Longest file or xattr name suffix EROFS stores.
pub const NAME_LEN_MAX: usize = 255;

/// Deepest path this project writes or reads: a path has at most this many
/// components below the root (Linux's PATH_MAX allows at most 2048 levels).
/// `convert` refuses deeper entries; walks and fsck refuse deeper trees as
/// hostile.
pub const MAX_PATH_DEPTH: usize = 2048;

/// The "null" block address marking a hole (all ones, masked to the address width).
pub const NULL_ADDR: u64 = u64::MAX;
