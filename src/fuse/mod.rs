//! The FUSE adapter: answers kernel requests from a [`View`]. Thin by
//! design: it turns attributes into FUSE's, library errors into errno
//! values, enforces the caller-dependent xattr visibility and shapes
//! replies. It knows nothing of byte layouts.
//!
//! Views are immutable, so replies carry long cache lifetimes, files open
//! with `FOPEN_KEEP_CACHE` and directories with `FOPEN_CACHE_DIR`: the
//! kernel's caches serve repeated access without asking again.

mod ahead;
mod attr;
mod handlers;
mod memory;
pub mod options;
pub mod readahead;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, INodeNo};

use crate::view::{Attr, DirItem, View};

use attr::{encode_dev, fuse_type, in_initial_user_namespace, to_system_time};
use memory::METADATA_REQUEST;

/// How long the kernel may cache entries and attributes: the image never
/// changes while mounted.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Readahead the kernel may do per file, in bytes (it may offer less).
const MAX_READAHEAD: u32 = 1 << 20;

/// A read at least this large comes from the kernel's readahead of a
/// sequential reader; smaller ones are treated as random.
const SEQUENTIAL_READ: u32 = 64 << 10;

/// How far past a sequential read to hint, in multiples of its size.
const PREFETCH_FACTOR: u64 = 16;

/// What to hint ([`View::prefetch`]) after serving `len` bytes at `offset`:
/// the window of [`PREFETCH_FACTOR`] reads past it. The first read of a
/// file hints the whole window; later ones only the read-sized slice at its
/// far end, which the previous read's window did not cover, so a sequential
/// stream hints each page once rather than once a read.
fn prefetch_window(offset: u64, len: u64) -> (u64, u64) {
    let next = offset + len;
    let window = len * PREFETCH_FACTOR;
    if offset < len {
        (next, window)
    } else {
        (next + window - len, len)
    }
}

/// Whether this process is root in the initial user namespace: the one
/// that may read trusted.* xattrs, and whose overlayfs reads them.
pub fn privileged() -> bool {
    nix::unistd::Uid::effective().is_root() && in_initial_user_namespace()
}

/// The FUSE filesystem over a [`View`].
pub struct ErofsFs {
    view: Arc<dyn View>,
    block_size: u32,
    /// The kernel can do without OPEN/OPENDIR (answering ENOSYS makes it
    /// stop sending them, with KEEP_CACHE/CACHE_DIR as the default).
    no_open: bool,
    no_opendir: bool,
    /// The kernel checks permissions (default_permissions): POSIX ACLs are
    /// negotiated and enforced too.
    default_permissions: bool,
    /// The mount is read-only to the kernel ([`View::read_only_mount`]).
    read_only_mount: bool,
    /// What the server has mapped and served, for trimming it.
    budget: Arc<memory::Budget>,
    /// Fills the page cache ahead of a reader of small files.
    ahead: ahead::StoreAhead,
    /// Whether the server runs in the initial user namespace, where uid 0
    /// stands for a caller that may see trusted.* xattrs.
    init_userns: bool,
}

impl ErofsFs {
    /// Serves `view`; `default_permissions` says whether the mount lets
    /// the kernel enforce its permissions.
    pub fn new(view: Arc<dyn View>, default_permissions: bool) -> Self {
        // Every call fails with EIO rather than kill the server when an
        // image file shrinks under it (see crate::fault).
        let view: Arc<dyn View> = Arc::new(crate::view::Guarded(view));
        let block_size = view.block_size();
        Self {
            read_only_mount: view.read_only_mount(),
            view,
            block_size,
            no_open: false,
            no_opendir: false,
            default_permissions,
            budget: Arc::default(),
            ahead: ahead::StoreAhead::default(),
            init_userns: in_initial_user_namespace(),
        }
    }

    /// Starts filling the kernel's page cache ahead of readers of small
    /// files through the session's notifier (see [`ahead`]): the returned call
    /// starts it once the session exists.
    pub fn ahead_starter(&self) -> impl FnOnce(fuser::Notifier) {
        let (ahead, view, budget) = (
            self.ahead.clone(),
            Arc::clone(&self.view),
            Arc::clone(&self.budget),
        );
        move |notifier| ahead.start(notifier, view, budget)
    }

    /// Counts a metadata request (see [`memory::Budget`]).
    fn account(&self) {
        self.budget.mapped(&*self.view, METADATA_REQUEST);
    }

    /// Attributes of `ino`, counted as a metadata request.
    fn attr(&self, op: &str, ino: INodeNo) -> Result<Attr, Errno> {
        self.account();
        self.view.attr(ino.0).map_err(|e| self.fail(op, ino, e))
    }

    /// Logs a failure once, at a level fitting its cause, and gives its errno.
    fn fail(&self, op: &str, ino: INodeNo, err: crate::Error) -> Errno {
        match err {
            crate::Error::NotFound
            | crate::Error::NotDir
            | crate::Error::IsDir
            | crate::Error::ReadOnly => {
                tracing::debug!("{op} inode {}: {err}", ino.0)
            }
            _ => tracing::error!("{op} inode {}: {err}", ino.0),
        }
        Errno::from_i32(err.errno())
    }

    fn file_attr(&self, attr: &Attr) -> FileAttr {
        let mtime = to_system_time(attr.mtime, attr.mtime_nsec);
        FileAttr {
            ino: INodeNo(attr.ino),
            size: attr.size,
            blocks: attr.blocks,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: fuse_type(attr.kind),
            perm: attr.perm,
            nlink: attr.nlink,
            uid: attr.uid,
            gid: attr.gid,
            rdev: encode_dev(attr.rdev.0, attr.rdev.1),
            blksize: self.block_size,
            flags: 0,
        }
    }

    /// Lists a directory into `add`, which returns true once full.
    fn list(
        &self,
        op: &str,
        ino: INodeNo,
        offset: u64,
        add: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), Errno> {
        self.account();
        self.view
            .read_dir(ino.0, offset, add)
            .map_err(|e| self.fail(op, ino, e))
    }
}
