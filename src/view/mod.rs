//! Read-only filesystem views: what the FUSE adapter serves.
//!
//! A view answers in its own inode numbers (1 is the root) with
//! attributes, names and bytes; it knows nothing of FUSE, and the adapter
//! knows nothing of what is behind a view. Three exist:
//! - [`ImageView`]: one image, inode numbers derived from nids;
//! - [`crate::overlay::Stack`]: a merged stack of layers;
//! - [`crate::store::StoreView`]: containers/storage's additional layer
//!   store layout over a directory of layers.

mod guard;
mod image;

pub use guard::Guarded;
pub(crate) use image::{prefetch_file, read_file, total_stats};
pub use image::{ImageView, OverlayXattrs};

use crate::device::Access;
use crate::error::{Error, Result};
use crate::format::FileType;
use crate::reader::Inode;

/// An inode number of a view; [`ROOT`] is its root directory.
pub type Ino = u64;

/// The root's inode number (FUSE_ROOT_ID).
pub const ROOT: Ino = 1;

/// Attributes of one inode, as stat shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File type.
    pub kind: FileType,
    /// Permission bits, including setuid, setgid and sticky.
    pub perm: u16,
    /// Size in bytes.
    pub size: u64,
    /// `st_blocks`: 512-byte units, as the kernel counts them.
    pub blocks: u64,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (also used for atime and ctime), seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// `(major, minor)` of a device, `(0, 0)` otherwise.
    pub rdev: (u32, u32),
}

impl Attr {
    /// The attributes of an image inode, under inode number `ino`.
    pub fn of_inode(inode: &Inode, ino: Ino) -> Self {
        Self {
            ino,
            kind: inode.kind.file_type(),
            perm: inode.permissions() as u16,
            size: inode.size,
            blocks: inode.blocks,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            mtime_nsec: inode.mtime_nsec,
            rdev: inode.kind.rdev(),
        }
    }
}

/// One directory entry handed to a [`View::read_dir`] sink.
#[derive(Debug, Clone, Copy)]
pub struct DirItem<'a> {
    /// Inode number of the entry.
    pub ino: Ino,
    /// Its name.
    pub name: &'a [u8],
    /// Its type.
    pub kind: FileType,
    /// The position that resumes after this entry.
    pub next: u64,
}

/// Filesystem totals for statfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Blocks in all, in [`FsStats::block_size`] units.
    pub blocks: u64,
    /// Inodes in all.
    pub inodes: u64,
    /// Block size in bytes.
    pub block_size: u32,
}

/// A read-only tree of inodes served through FUSE.
///
/// Every method takes the view's own inode numbers; an unknown one is
/// [`Error::NotFound`]. Errors carry their errno ([`Error::errno`]).
pub trait View: Send + Sync + 'static {
    /// Attributes of `ino`.
    fn attr(&self, ino: Ino) -> Result<Attr>;

    /// The entry `name` of directory `parent`, if there is one.
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>>;

    /// Lists directory `ino` from position `pos` (0 is the start), passing
    /// each entry to `sink` until it returns true (its buffer is full).
    fn read_dir(&self, ino: Ino, pos: u64, sink: &mut dyn FnMut(DirItem<'_>) -> bool)
        -> Result<()>;

    /// The target of symlink `ino`.
    fn read_link(&self, ino: Ino) -> Result<Vec<u8>>;

    /// Up to `len` bytes of file `ino` from `offset`, borrowed from the
    /// image where possible and assembled in `scratch` otherwise; `access`
    /// says whether the reader is likely to go on from there.
    fn read<'a>(
        &'a self,
        ino: Ino,
        offset: u64,
        len: u64,
        access: Access,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]>;

    /// A hint that a sequential reader of file `ino` will want `len` bytes
    /// from `offset` next (see [`crate::device::Device::will_need`]: a
    /// verified image checks them in the background). Called after the
    /// reply, so the work does not delay it.
    fn prefetch(&self, _ino: Ino, _offset: u64, _len: u64) {}

    /// The value of xattr `name` of `ino`, if it has one.
    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The names of the xattrs of `ino`.
    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>>;

    /// Totals for statfs.
    fn stats(&self) -> FsStats;

    /// Block size reported in attributes.
    fn block_size(&self) -> u32 {
        self.stats().block_size
    }

    /// Whether the kernel should refuse every change itself (a read-only
    /// mount). A view that takes a create or a removal as a signal (the
    /// layer store) needs them to reach it; it still changes nothing.
    fn read_only_mount(&self) -> bool {
        true
    }

    /// A request to create `name` in `parent`. Read-only views refuse.
    fn create(&self, _parent: Ino, _name: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }

    /// A request to remove directory `name` from `parent`. Read-only views
    /// refuse.
    fn remove_dir(&self, _parent: Ino, _name: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }

    /// Lets go of image pages mapped into the process (they stay in the
    /// page cache), to keep resident memory bounded.
    fn release_mapped(&self) {}

    /// Starts the background work that serving wants and that must not run
    /// before (verity's verify-ahead threads): called once, as serving starts.
    fn start_serving(&self) {}

    /// Verity counters to log at unmount, per device.
    fn verity_stats(&self) -> Vec<(std::path::PathBuf, crate::verity::VerityStats)> {
        Vec::new()
    }
}
