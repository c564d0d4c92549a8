//! Superblock parsing and validation (the kernel's `erofs_read_superblock`).

use crate::device::{Access, Device};
use crate::error::{ensure, Error, Result};
use crate::format::{
    read_struct, superblock_checksum, superblock_checksum_len, Nid, SuperBlock, SuperBlockExt,
    COMPAT_SB_CHKSUM, EROFS_MAGIC, INCOMPAT_48BIT, INCOMPAT_COMPR_CFGS, INCOMPAT_DEVICE_TABLE,
    INCOMPAT_METABOX, INCOMPAT_NAMES, INCOMPAT_SUPPORTED, SUPERBLOCK_BASE_SIZE,
    SUPERBLOCK_CHECKSUM_FIELD, SUPERBLOCK_EXTSLOT_SIZE, SUPERBLOCK_OFFSET,
};

/// Smallest block size the kernel mounts (512 bytes).
pub const MIN_BLOCK_BITS: u8 = 9;
/// Largest block size the kernel mounts on 4 KiB-page machines.
pub const MAX_BLOCK_BITS: u8 = 12;
/// The superblock and its extension slots must fit in one page after
/// [`SUPERBLOCK_OFFSET`].
const MAX_SUPERBLOCK_SIZE: usize = 4096 - SUPERBLOCK_OFFSET as usize;

/// The validated superblock, in host types.
#[derive(Debug, Clone)]
pub struct SuperInfo {
    /// log2 of the block size.
    pub block_bits: u8,
    /// Compatible feature bits.
    pub feature_compat: u32,
    /// Incompatible feature bits (all understood).
    pub feature_incompat: u32,
    /// The stored checksum, when `sb_csum` is set (already verified).
    pub checksum: Option<u32>,
    /// Size of the superblock including extension slots.
    pub sb_size: usize,
    /// Root directory.
    pub root_nid: Nid,
    /// Number of inodes.
    pub inos: u64,
    /// Base seconds of compact inode mtimes.
    pub epoch: i64,
    /// Nanoseconds of every compact inode's mtime.
    pub fixed_nsec: u32,
    /// Seconds after `epoch` the image was built.
    pub build_time: u32,
    /// Primary device size in blocks.
    pub blocks: u64,
    /// Block address of the inode area.
    pub meta_blkaddr: u64,
    /// Block address of the shared xattr area.
    pub xattr_blkaddr: u64,
    /// Volume UUID.
    pub uuid: [u8; 16],
    /// Volume name, up to the first NUL.
    pub volume_name: Vec<u8>,
    /// Bitmap of compression algorithms in use (bit 0 LZ4 when no COMPR_CFGS).
    pub available_compr_algs: u16,
    /// Number of extra devices (0 without DEVICE_TABLE).
    pub extra_devices: u16,
    /// Device table position in 128-byte units.
    pub devt_slotoff: u16,
    /// Number of long xattr prefixes.
    pub xattr_prefix_count: u8,
    /// Long prefix table position in 4-byte units.
    pub xattr_prefix_start: u32,
    /// The packed inode (fragments, long prefixes), if any.
    pub packed_nid: Option<Nid>,
    /// The metabox inode, if METABOX.
    pub metabox_nid: Option<Nid>,
}

impl SuperInfo {
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        1 << self.block_bits
    }

    /// Whether an incompat feature bit is set.
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.feature_incompat & bit != 0
    }

    /// Whether a compat feature bit is set.
    pub fn has_compat(&self, bit: u32) -> bool {
        self.feature_compat & bit != 0
    }

    /// Mask of valid bits in a 32- or 48-bit block address.
    pub fn blkaddr_mask(&self) -> u64 {
        if self.has_incompat(INCOMPAT_48BIT) {
            (1 << 48) - 1
        } else {
            (1 << 32) - 1
        }
    }

    /// Reads and validates the superblock of `dev` (the kernel's
    /// `erofs_read_superblock`): format and feature checks, extension
    /// slots and checksum, then the fields in host types.
    pub fn parse(dev: &Device) -> Result<Self> {
        let base = read_base(dev)?;
        // After the superblock's read: its failure (a verity mismatch, say)
        // is the error to report, not this check's.
        refuse_rafs_v5(dev)?;
        let sb: &SuperBlock = read_struct(base).ok_or_else(|| {
            Error::corrupt(format!(
                "{} is too small to hold an EROFS superblock ({} bytes)",
                dev.path().display(),
                dev.len()
            ))
        })?;
        check_format(sb)?;
        let sb_size = SUPERBLOCK_BASE_SIZE + SUPERBLOCK_EXTSLOT_SIZE * usize::from(sb.sb_extslots);
        ensure!(
            sb_size <= MAX_SUPERBLOCK_SIZE && SUPERBLOCK_OFFSET + sb_size as u64 <= dev.len(),
            "superblock extension slots ({}) overrun the superblock area",
            sb.sb_extslots
        );
        // The superblock with its extension slots.
        let bytes = dev.slice_for(
            Access::Random,
            SUPERBLOCK_OFFSET,
            sb_size.max(base.len()) as u64,
        )?;
        let compat = sb.feature_compat.get();
        let checksum = if compat & COMPAT_SB_CHKSUM != 0 {
            verify_checksum(dev, sb.blkszbits, sb.checksum.get())?;
            Some(sb.checksum.get())
        } else {
            None
        };
        let incompat = sb.feature_incompat.get();
        let (root_nid, blocks) = root_nid_and_blocks(sb, incompat);
        let packed_nid = sb.packed_nid.get();
        ensure!(
            packed_nid & Nid::METABOX_BIT == 0,
            "packed nid {packed_nid:#x} has the metabox bit"
        );
        let metabox_nid = metabox_nid(bytes, sb_size, incompat)?;
        Ok(Self {
            block_bits: sb.blkszbits,
            feature_compat: compat,
            feature_incompat: incompat,
            checksum,
            sb_size,
            root_nid: Nid(root_nid),
            inos: sb.inos.get(),
            epoch: sb.epoch.get() as i64,
            fixed_nsec: sb.fixed_nsec.get(),
            build_time: sb.build_time.get(),
            blocks,
            meta_blkaddr: u64::from(sb.meta_blkaddr.get()),
            xattr_blkaddr: u64::from(sb.xattr_blkaddr.get()),
            uuid: sb.uuid,
            volume_name: volume_name(sb),
            available_compr_algs: available_compr_algs(sb, incompat),
            extra_devices: extra_devices(sb, incompat),
            devt_slotoff: sb.devt_slotoff.get(),
            xattr_prefix_count: sb.xattr_prefix_count,
            xattr_prefix_start: sb.xattr_prefix_start.get(),
            packed_nid: (packed_nid != 0).then_some(Nid(packed_nid)),
            metabox_nid,
        })
    }
}

/// The base superblock's bytes, or none when `dev` is too small to hold
/// it. Only the superblock: with verity, every byte read is hashed.
fn read_base(dev: &Device) -> Result<&[u8]> {
    let size = SUPERBLOCK_BASE_SIZE as u64;
    if dev.len() >= SUPERBLOCK_OFFSET + size {
        dev.slice_for(Access::Random, SUPERBLOCK_OFFSET, size)
    } else {
        Ok(&[])
    }
}

/// Nydus RAFS v5 superblock magic ("RAFS" read little-endian) and version,
/// the first 8 bytes of a v5 bootstrap (nydus rafs/src/metadata/layout/v5.rs).
const RAFS_V5_MAGIC: u32 = 0x5241_4653;
const RAFS_V5_VERSION: u32 = 0x500;

/// A Nydus RAFS v5 bootstrap is not EROFS: say so rather than "bad magic".
fn refuse_rafs_v5(dev: &Device) -> Result<()> {
    let Ok(head) = dev.slice_for(Access::Random, 0, 8) else {
        return Ok(());
    };
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) == RAFS_V5_MAGIC && word(4) == RAFS_V5_VERSION {
        return Err(Error::Unsupported(
            "RAFS v5 is not supported (a Nydus RAFS v5 bootstrap; only RAFS v6 is read)".into(),
        ));
    }
    Ok(())
}

/// The checks that decide whether this is an EROFS image this code can
/// read: magic, block size, incompatible features, directory block bits.
fn check_format(sb: &SuperBlock) -> Result<()> {
    let magic = sb.magic.get();
    if magic != EROFS_MAGIC {
        return Err(Error::Invalid(format!(
            "not an EROFS image (magic {magic:#010x} at offset {SUPERBLOCK_OFFSET}, expected {EROFS_MAGIC:#010x})"
        )));
    }
    let block_bits = sb.blkszbits;
    if !(MIN_BLOCK_BITS..=MAX_BLOCK_BITS).contains(&block_bits) {
        return Err(Error::Unsupported(format!(
            "block size 2^{block_bits} (supported: 512 to 4096 bytes)"
        )));
    }
    let unknown = sb.feature_incompat.get() & !INCOMPAT_SUPPORTED;
    if unknown != 0 {
        return Err(Error::Unsupported(format!(
            "unknown incompatible feature bits {unknown:#x} (this version knows: {})",
            INCOMPAT_NAMES
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    ensure!(
        sb.dirblkbits == 0,
        "directory block bits {} (must be 0)",
        sb.dirblkbits
    );
    Ok(())
}

/// The root nid and the primary device's block count: with 48-bit
/// addresses and an 8-byte root nid, the 2-byte root nid field holds the
/// block count's high bits.
fn root_nid_and_blocks(sb: &SuperBlock, incompat: u32) -> (u64, u64) {
    let mut blocks = u64::from(sb.blocks_lo.get());
    let root_nid = if incompat & INCOMPAT_48BIT != 0 && sb.rootnid_8b.get() != 0 {
        blocks |= u64::from(sb.rootnid_2b.get()) << 32;
        sb.rootnid_8b.get()
    } else {
        u64::from(sb.rootnid_2b.get())
    };
    (root_nid, blocks)
}

/// The metabox inode from the first extension slot of the `sb_size`-byte
/// superblock `bytes`, when METABOX is set.
fn metabox_nid(bytes: &[u8], sb_size: usize, incompat: u32) -> Result<Option<Nid>> {
    if incompat & INCOMPAT_METABOX == 0 {
        return Ok(None);
    }
    let ext: &SuperBlockExt = read_struct(&bytes[SUPERBLOCK_BASE_SIZE..])
        .filter(|_| sb_size > SUPERBLOCK_BASE_SIZE)
        .ok_or_else(|| Error::corrupt("METABOX is set but the superblock has no extension slot"))?;
    let nid = ext.metabox_nid.get();
    // A metabox inode inside the metabox would be a self-reference.
    ensure!(
        nid & Nid::METABOX_BIT == 0,
        "metabox nid {nid:#x} points into the metabox"
    );
    Ok(Some(Nid(nid)))
}

/// Number of extra devices: the device table's length with DEVICE_TABLE.
fn extra_devices(sb: &SuperBlock, incompat: u32) -> u16 {
    if incompat & INCOMPAT_DEVICE_TABLE != 0 {
        sb.extra_devices.get()
    } else {
        0
    }
}

/// The algorithms in use: as declared with COMPR_CFGS, else LZ4 only.
fn available_compr_algs(sb: &SuperBlock, incompat: u32) -> u16 {
    if incompat & INCOMPAT_COMPR_CFGS != 0 {
        sb.compr_algs_or_lz4_distance.get()
    } else {
        1
    }
}

/// The volume name, up to its first NUL.
fn volume_name(sb: &SuperBlock) -> Vec<u8> {
    sb.volume_name
        .split(|&b| b == 0)
        .next()
        .unwrap_or_default()
        .to_vec()
}

/// Checks the superblock CRC32C as `mkfs.erofs` computes it: over the rest of
/// the superblock's block (or one block when blocks are smaller than 1024
/// bytes) with the checksum field zeroed, seed ~0 and no final inversion.
fn verify_checksum(dev: &Device, block_bits: u8, stored: u32) -> Result<()> {
    let len = superblock_checksum_len(1u64 << block_bits);
    let bytes = dev.slice_for(Access::Random, SUPERBLOCK_OFFSET, len)?;
    let mut copy = bytes.to_vec();
    copy[SUPERBLOCK_CHECKSUM_FIELD].fill(0);
    let computed = superblock_checksum(&copy);
    ensure!(
        computed == stored,
        "superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    );
    Ok(())
}
