//! Reading on-disk inodes into [`Inode`] (the kernel's `erofs_read_inode`).

use crate::error::{ensure, Error, Result};
use crate::format::{
    decode_rdev, read_struct, DataLayout, FileType, InodeCompact, InodeExtended, Nid,
    CHUNK_FORMAT_ALL, INODE_COMPACT_SIZE, INODE_EXTENDED_SIZE, INODE_SLOT_SIZE, I_DATALAYOUT_MASK,
    I_DATALAYOUT_SHIFT, I_FORMAT_ALL, I_NLINK_1_OR_DOT_OMITTED, I_VERSION_MASK, NULL_ADDR, S_IFMT,
};

use super::{Image, MetaPos, MetaSpace};

/// The kind of file an inode is, with what only that kind carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device (major, minor).
    CharDevice(u32, u32),
    /// Block device (major, minor).
    BlockDevice(u32, u32),
    /// Named pipe.
    Fifo,
    /// Socket.
    Socket,
}

impl FileKind {
    /// The directory-entry file type of this kind.
    pub fn file_type(self) -> FileType {
        match self {
            Self::Regular => FileType::Regular,
            Self::Directory => FileType::Directory,
            Self::Symlink => FileType::Symlink,
            Self::CharDevice(..) => FileType::CharDevice,
            Self::BlockDevice(..) => FileType::BlockDevice,
            Self::Fifo => FileType::Fifo,
            Self::Socket => FileType::Socket,
        }
    }

    /// `(major, minor)` for devices, `(0, 0)` otherwise.
    pub fn rdev(self) -> (u32, u32) {
        match self {
            Self::CharDevice(major, minor) | Self::BlockDevice(major, minor) => (major, minor),
            _ => (0, 0),
        }
    }
}

/// An inode's attributes and where its data and xattrs are.
#[derive(Debug, Clone)]
pub struct Inode {
    /// Its node id.
    pub nid: Nid,
    /// File kind (and device numbers).
    pub kind: FileKind,
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count as stored.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// The 32-bit inode number hint stored in the image.
    pub ino_hint: u32,
    /// Whether the inode is in the 64-byte extended form.
    pub extended: bool,
    /// `st_blocks` as the kernel reports it (512-byte units): see
    /// `kernel_blocks`.
    pub blocks: u64,
    /// How the data is stored.
    pub layout: DataLayout,
    /// Where the inode starts.
    pub(crate) pos: MetaPos,
    /// `i_xattr_icount`.
    pub(crate) xattr_icount: u16,
    /// Start block for flat layouts ([`NULL_ADDR`] for a hole), chunk
    /// format for chunked ones, compressed block count for compressed ones.
    pub(crate) raw_addr: u64,
    /// Directories only: the `.` entry is not stored.
    pub(crate) dot_omitted: bool,
}

impl Inode {
    /// Size of the on-disk inode core (32 or 64).
    pub fn inode_size(&self) -> u64 {
        if self.extended {
            INODE_EXTENDED_SIZE
        } else {
            INODE_COMPACT_SIZE
        }
    }

    /// Size of the inline xattr area after the core.
    pub fn xattr_size(&self) -> u64 {
        crate::format::xattr_ibody_size(self.xattr_icount)
    }

    /// Byte offset of the on-disk inode in the primary device, or `None`
    /// when it lives in the metabox (for `stat`, tests and tools that
    /// patch images).
    pub fn meta_offset(&self) -> Option<u64> {
        (self.pos.space == MetaSpace::Primary).then_some(self.pos.offset)
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// Permission bits, including setuid, setgid and sticky.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Where the data-layout specific area (tail, chunk table, compression
    /// map) starts: right after the inode core and inline xattrs.
    pub(crate) fn after_xattrs(&self) -> Result<MetaPos> {
        self.pos.add(self.inode_size() + self.xattr_size())
    }
}

/// `st_blocks` (512-byte units) as the kernel's erofs_read_inode() sets
/// `i_blocks`, whatever the file type: for a compressed layout the stored
/// compressed block count (`i_u`, the low 32 bits only, even with 48-bit
/// addresses; 0 for data held only in fragments or an inline tail), for
/// every other layout the size rounded up to whole blocks (tails inline in
/// the metadata, chunks and holes counted as if stored).
pub(crate) fn kernel_blocks(layout: DataLayout, size: u64, i_u: u32, block_bits: u8) -> u64 {
    let sector_shift = u32::from(block_bits).saturating_sub(9);
    match layout {
        DataLayout::CompressedFull | DataLayout::CompressedCompact => {
            u64::from(i_u) << sector_shift
        }
        _ => size.div_ceil(1 << block_bits) << sector_shift,
    }
}

impl Image {
    /// Reads the inode `nid`.
    pub fn inode(&self, nid: Nid) -> Result<Inode> {
        self.read_inode(nid).map_err(|e| match e {
            Error::Corrupt(msg) => Error::Corrupt(format!("inode {nid}: {msg}")),
            Error::Unsupported(msg) => Error::Unsupported(format!("inode {nid}: {msg}")),
            other => other,
        })
    }

    /// Parses inode `nid` (the kernel's `erofs_read_inode`): the compact
    /// or extended core, then `i_u` by file type and data layout.
    fn read_inode(&self, nid: Nid) -> Result<Inode> {
        let pos = self.inode_pos(nid)?;
        let head = self.meta(pos, INODE_COMPACT_SIZE)?;
        let compact: &InodeCompact =
            read_struct(&head).ok_or_else(|| Error::corrupt("short inode"))?;
        let format = compact.i_format.get();
        if format & !I_FORMAT_ALL != 0 {
            return Err(Error::Unsupported(format!("inode format bits {format:#x}")));
        }
        let layout_bits = (format >> I_DATALAYOUT_SHIFT) & I_DATALAYOUT_MASK;
        let layout = DataLayout::from_bits(layout_bits)
            .ok_or_else(|| Error::Unsupported(format!("data layout {layout_bits}")))?;
        let extended = format & I_VERSION_MASK != 0;
        let flag4 = format & I_NLINK_1_OR_DOT_OMITTED != 0;
        let mode = u32::from(compact.i_mode.get());
        let is_dir = mode & S_IFMT == crate::format::S_IFDIR;
        let core = if extended {
            self.extended_core(pos)?
        } else {
            self.compact_core(compact, !is_dir && flag4)
        };
        core.check()?;
        let kind = file_kind(mode, core.i_u)?;
        let raw_addr = raw_addr(layout, &core)?;
        Ok(Inode {
            nid,
            kind,
            mode,
            uid: core.uid,
            gid: core.gid,
            nlink: core.nlink,
            size: core.size,
            mtime: core.mtime,
            mtime_nsec: core.mtime_nsec,
            ino_hint: core.ino_hint,
            extended,
            blocks: kernel_blocks(layout, core.size, core.i_u, self.sb.block_bits),
            layout,
            pos,
            xattr_icount: compact.i_xattr_icount.get(),
            raw_addr,
            dot_omitted: is_dir && flag4,
        })
    }

    /// Where inode `nid` starts: its slot in the metadata area, or in the
    /// metabox for metabox nids.
    fn inode_pos(&self, nid: Nid) -> Result<MetaPos> {
        let sb = &self.sb;
        let (space, base) = if nid.in_metabox() {
            (MetaSpace::Metabox, 0)
        } else {
            let base = sb.meta_blkaddr.checked_shl(u32::from(sb.block_bits));
            (
                MetaSpace::Primary,
                base.ok_or_else(|| Error::corrupt("metadata area overflows"))?,
            )
        };
        let offset = nid
            .slot()
            .checked_mul(INODE_SLOT_SIZE)
            .and_then(|o| o.checked_add(base))
            .ok_or_else(|| Error::corrupt("nid out of range"))?;
        Ok(MetaPos { space, offset })
    }

    /// The fields of the 64-byte extended core at `pos`.
    fn extended_core(&self, pos: MetaPos) -> Result<InodeCore> {
        let bytes = self.meta(pos, INODE_EXTENDED_SIZE)?;
        let ext: &InodeExtended =
            read_struct(&bytes).ok_or_else(|| Error::corrupt("short inode"))?;
        Ok(InodeCore {
            size: ext.i_size.get(),
            uid: ext.i_uid.get(),
            gid: ext.i_gid.get(),
            nlink: ext.i_nlink.get(),
            mtime: ext.i_mtime.get() as i64,
            mtime_nsec: ext.i_mtime_nsec.get(),
            i_u: ext.i_u.get(),
            i_nb: ext.i_nb.get(),
            ino_hint: ext.i_ino.get(),
            addr_mask: (1u64 << 48) - 1,
        })
    }

    /// The fields of a 32-byte compact core: mtime is the superblock's,
    /// and with `nlink_1` (flag 4 on a non-directory) `i_nb` holds the
    /// start block's high bits instead of the link count.
    fn compact_core(&self, compact: &InodeCompact, nlink_1: bool) -> InodeCore {
        let (nlink, i_nb, addr_mask) = if nlink_1 {
            (1, compact.i_nb.get(), (1u64 << 48) - 1)
        } else {
            (u32::from(compact.i_nb.get()), 0, (1u64 << 32) - 1)
        };
        InodeCore {
            size: u64::from(compact.i_size.get()),
            uid: u32::from(compact.i_uid.get()),
            gid: u32::from(compact.i_gid.get()),
            nlink,
            mtime: self.sb.epoch.wrapping_add(i64::from(compact.i_mtime.get())),
            mtime_nsec: self.sb.fixed_nsec,
            i_u: compact.i_u.get(),
            i_nb,
            ino_hint: compact.i_ino.get(),
            addr_mask,
        }
    }
}

/// The fields the compact and extended cores both carry, in host types.
struct InodeCore {
    size: u64,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: i64,
    mtime_nsec: u32,
    /// The layout- and type-specific word (block, chunk format, rdev).
    i_u: u32,
    /// High bits of a 48-bit start block (0 when not stored).
    i_nb: u16,
    /// Valid bits of the start block: 32 or 48.
    addr_mask: u64,
    ino_hint: u32,
}

impl InodeCore {
    /// Rejects sizes and timestamps no file can have.
    fn check(&self) -> Result<()> {
        let (size, mtime_nsec) = (self.size, self.mtime_nsec);
        ensure!(
            size <= i64::MAX as u64,
            "size {size} is negative as a file offset"
        );
        ensure!(
            mtime_nsec < 1_000_000_000,
            "mtime nanoseconds {mtime_nsec} out of range"
        );
        Ok(())
    }
}

/// The file kind of `mode`, with the device numbers `i_u` holds for devices.
fn file_kind(mode: u32, i_u: u32) -> Result<FileKind> {
    let rdev = decode_rdev(i_u);
    Ok(match FileType::from_mode(mode) {
        Some(FileType::Regular) => FileKind::Regular,
        Some(FileType::Directory) => FileKind::Directory,
        Some(FileType::Symlink) => FileKind::Symlink,
        Some(FileType::CharDevice) => FileKind::CharDevice(rdev.0, rdev.1),
        Some(FileType::BlockDevice) => FileKind::BlockDevice(rdev.0, rdev.1),
        Some(FileType::Fifo) => FileKind::Fifo,
        Some(FileType::Socket) => FileKind::Socket,
        Some(FileType::Unknown) | None => {
            return Err(Error::corrupt(format!("bogus mode {mode:#o}")));
        }
    })
}

/// What `i_u` (and `i_nb`) say about the data for `layout`: the start
/// block of flat layouts ([`NULL_ADDR`] for a hole), the chunk format of
/// chunked ones, the compressed block count of compressed ones.
fn raw_addr(layout: DataLayout, core: &InodeCore) -> Result<u64> {
    let (i_u, i_nb) = (core.i_u, core.i_nb);
    Ok(match layout {
        DataLayout::ChunkBased => {
            let chunk_format = (i_u & 0xffff) as u16;
            if chunk_format & !CHUNK_FORMAT_ALL != 0 {
                return Err(Error::Unsupported(format!(
                    "chunk format {chunk_format:#x}"
                )));
            }
            u64::from(chunk_format)
        }
        DataLayout::FlatPlain | DataLayout::FlatInline => {
            let addr = u64::from(i_u) | (u64::from(i_nb) << 32);
            if layout == DataLayout::FlatPlain && (addr ^ NULL_ADDR) & core.addr_mask == 0 {
                NULL_ADDR
            } else {
                addr & core.addr_mask
            }
        }
        DataLayout::CompressedFull | DataLayout::CompressedCompact => {
            u64::from(i_u) | (u64::from(i_nb) << 32)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_count_as_the_kernel_counts_them() {
        // Uncompressed: whole blocks, inline tails and chunks alike.
        assert_eq!(kernel_blocks(DataLayout::FlatInline, 5290, 0, 12), 16);
        assert_eq!(kernel_blocks(DataLayout::ChunkBased, 1, 0x7, 12), 8);
        assert_eq!(kernel_blocks(DataLayout::FlatPlain, 0, 0, 12), 0);
        assert_eq!(kernel_blocks(DataLayout::FlatPlain, 513, 0, 9), 2);
        // Compressed: the stored block count, whatever the size.
        assert_eq!(
            kernel_blocks(DataLayout::CompressedCompact, 1 << 20, 3, 12),
            24
        );
        assert_eq!(kernel_blocks(DataLayout::CompressedFull, 1 << 20, 3, 9), 3);
        assert_eq!(kernel_blocks(DataLayout::CompressedFull, 100, 0, 12), 0);
        assert_eq!(
            kernel_blocks(DataLayout::FlatPlain, i64::MAX as u64, 0, 12),
            (i64::MAX as u64).div_ceil(4096) << 3
        );
    }
}
