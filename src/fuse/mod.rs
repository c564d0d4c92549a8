//! The FUSE adapter: answers kernel requests from a [`Image`]. Thin by
//! design: it maps inode numbers to nids, turns inodes into attributes and
//! library errors into errno values, and shapes replies. It knows nothing of
//! byte layouts.
//!
//! The image is immutable, so replies carry long cache lifetimes, files open
//! with `FOPEN_KEEP_CACHE` and directories with `FOPEN_CACHE_DIR`: the
//! kernel's caches serve repeated access without asking again.

mod convert;
pub mod options;
pub mod session;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::format::Nid;
use crate::reader::{DirPos, Image, Inode};

use convert::{encode_dev, fuse_type, in_initial_user_namespace, reply_xattr, to_system_time};

/// How long the kernel may cache entries and attributes: the image never
/// changes while mounted.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Readahead the kernel may do per file, in bytes (it may offer less).
const MAX_READAHEAD: u32 = 1 << 20;

/// A read at least this large comes from the kernel's readahead of a
/// sequential reader; smaller ones are treated as random.
const SEQUENTIAL_READ: u32 = 64 << 10;

/// After this many bytes served (metadata requests count 4 KiB each), every
/// image page is unmapped from the server, so that its resident memory stays
/// bounded however much of the image it has read. The pages stay in the page
/// cache; the next access maps them again.
const TRIM_EVERY: u64 = 8 << 20;

/// What a metadata request counts for [`TRIM_EVERY`].
const METADATA_REQUEST: u64 = 4096;

/// How far past a sequential read to prefetch, in multiples of its size.
const PREFETCH_FACTOR: u64 = 16;

/// What to prefetch after serving `len` bytes at `offset`: the window of
/// [`PREFETCH_FACTOR`] reads past it. The first read of a file asks for the
/// whole window; later ones only for the read-sized slice at its far end,
/// which the previous read's window did not cover, so a sequential stream
/// asks the page cache about each page once rather than once a read.
fn prefetch_window(offset: u64, len: u64) -> (u64, u64) {
    let next = offset + len;
    let window = len * PREFETCH_FACTOR;
    if offset < len {
        (next, window)
    } else {
        (next + window - len, len)
    }
}

/// The FUSE filesystem over one image.
pub struct ErofsFs {
    image: Arc<Image>,
    root: Nid,
    block_size: u32,
    /// The kernel can do without OPEN/OPENDIR (answering ENOSYS makes it
    /// stop sending them, with KEEP_CACHE/CACHE_DIR as the default).
    no_open: bool,
    no_opendir: bool,
    /// The kernel checks permissions (default_permissions): POSIX ACLs are
    /// negotiated and enforced too.
    default_permissions: bool,
    /// Bytes served since the mount (see [`TRIM_EVERY`]).
    served: std::sync::atomic::AtomicU64,
    /// Whether the server runs in the initial user namespace, where uid 0
    /// stands for a caller that may see trusted.* xattrs.
    init_userns: bool,
}

impl ErofsFs {
    /// Serves `image`; `default_permissions` says whether the mount lets
    /// the kernel enforce the image's permissions.
    pub fn new(image: Arc<Image>, default_permissions: bool) -> Self {
        let root = image.superblock().root_nid;
        let block_size = image.block_size() as u32;
        Self {
            image,
            root,
            block_size,
            no_open: false,
            no_opendir: false,
            default_permissions,
            served: std::sync::atomic::AtomicU64::new(0),
            init_userns: in_initial_user_namespace(),
        }
    }

    /// Inode numbers: the root is 1 (FUSE_ROOT_ID), every other nid n is
    /// n + 2, so hard links share an inode number and numbers are stable.
    fn ino(&self, nid: Nid) -> INodeNo {
        if nid == self.root {
            INodeNo(1)
        } else {
            INodeNo(nid.0.wrapping_add(2))
        }
    }

    fn nid(&self, ino: INodeNo) -> Nid {
        if ino.0 == 1 {
            self.root
        } else {
            Nid(ino.0.wrapping_sub(2))
        }
    }

    /// Answers a read from `inode`, assembling in `scratch` what cannot be
    /// borrowed from the image map.
    fn serve_read(
        &self,
        inode: &Inode,
        ino: INodeNo,
        offset: u64,
        size: u32,
        scratch: &mut Vec<u8>,
        reply: ReplyData,
    ) {
        match self
            .image
            .read_range_with(inode, offset, u64::from(size), scratch)
        {
            Ok(bytes) => {
                reply.data(bytes);
                self.account(bytes.len() as u64);
                // A readahead-sized read means a sequential reader: start
                // the disk on what it will ask for next.
                if size >= SEQUENTIAL_READ && !bytes.is_empty() {
                    let (ahead, len) = prefetch_window(offset, bytes.len() as u64);
                    self.image.prefetch(inode, ahead, len);
                }
            }
            Err(e) => reply.error(self.fail("read", ino, e)),
        }
    }

    /// Counts `bytes` served, unmapping the image every [`TRIM_EVERY`].
    fn account(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        let before = self.served.fetch_add(bytes, Ordering::Relaxed);
        if before / TRIM_EVERY != (before + bytes) / TRIM_EVERY {
            self.image.release_mapped();
            // Decode buffers freed by cache evictions sit in the serving
            // threads' malloc arenas; hand them back so resident memory
            // follows the cache budget rather than its past peaks.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    fn inode(&self, ino: INodeNo) -> Result<Inode, Errno> {
        self.account(METADATA_REQUEST);
        self.image
            .inode(self.nid(ino))
            .map_err(|e| self.fail("inode", ino, e))
    }

    /// Logs a failure once, at a level fitting its cause, and gives its errno.
    fn fail(&self, op: &str, ino: INodeNo, err: crate::Error) -> Errno {
        match err {
            crate::Error::NotFound | crate::Error::NotDir | crate::Error::IsDir => {
                tracing::debug!("{op} inode {}: {err}", ino.0)
            }
            _ => tracing::error!("{op} inode {}: {err}", ino.0),
        }
        Errno::from_i32(err.errno())
    }

    fn attr(&self, inode: &Inode) -> FileAttr {
        let mtime = to_system_time(inode.mtime, inode.mtime_nsec);
        let (major, minor) = inode.kind.rdev();
        FileAttr {
            ino: self.ino(inode.nid),
            size: inode.size,
            blocks: inode.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: fuse_type(inode.kind.file_type()),
            perm: inode.permissions() as u16,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: encode_dev(major, minor),
            blksize: self.block_size,
            flags: 0,
        }
    }
}

impl Filesystem for ErofsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS;
        // With POSIX_ACL the kernel enforces the image's ACLs too, as the
        // kernel's erofs does. It also forces default_permissions, so only
        // mounts that enforce permissions anyway ask for it.
        if self.default_permissions {
            wanted |= InitFlags::FUSE_POSIX_ACL;
        }
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::info!("kernel lacks FUSE capabilities {missing:?}");
        }
        let offered = config
            .set_max_readahead(MAX_READAHEAD)
            .err()
            .unwrap_or(MAX_READAHEAD);
        if offered < MAX_READAHEAD {
            let _ = config.set_max_readahead(offered);
        }
        // Every open would be a round trip that tells us nothing new.
        let caps = config.capabilities();
        self.no_open = caps.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.inode(parent).and_then(|dir| {
            let entry = self
                .image
                .lookup(&dir, name.as_bytes())
                .map_err(|e| self.fail("lookup", parent, e))?
                .ok_or(Errno::ENOENT)?;
            self.image
                .inode(entry.nid)
                .map_err(|e| self.fail("lookup", parent, e))
        });
        match result {
            Ok(inode) => reply.entry(&TTL, &self.attr(&inode), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &self.attr(&inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self.inode(ino).and_then(|inode| {
            self.image
                .read_link(&inode)
                .map_err(|e| self.fail("readlink", ino, e))
        });
        match target {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.no_open {
            // Read-only opens need nothing from us; the mount is read-only,
            // so the kernel refuses write opens itself from now on.
            return reply.error(Errno::ENOSYS);
        }
        match self.inode(ino) {
            Ok(inode) if inode.is_dir() => reply.error(Errno::EISDIR),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        // Uncompressed data is borrowed from the image map: the reply is
        // written to /dev/fuse straight from it, with no buffer between.
        let inode = match self.inode(ino) {
            Ok(inode) => inode,
            Err(e) => return reply.error(e),
        };
        thread_local! {
            // Reused for replies that cannot borrow from the map.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH
            .with_borrow_mut(|scratch| self.serve_read(&inode, ino, offset, size, scratch, reply));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush, ever: ENOSYS makes the kernel stop asking.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        match self.inode(ino) {
            Ok(inode) if inode.is_dir() => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let dir = self.inode(ino)?;
            let entries = self
                .image
                .read_dir(&dir, DirPos(offset))
                .map_err(|e| self.fail("readdir", ino, e))?;
            for item in entries {
                let (entry, next) = item.map_err(|e| self.fail("readdir", ino, e))?;
                let name = OsStr::from_bytes(&entry.name);
                if reply.add(
                    self.ino(entry.nid),
                    next.0,
                    fuse_type(entry.file_type),
                    name,
                ) {
                    break;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = (|| {
            let dir = self.inode(ino)?;
            let entries = self
                .image
                .read_dir(&dir, DirPos(offset))
                .map_err(|e| self.fail("readdirplus", ino, e))?;
            for item in entries {
                let (entry, next) = item.map_err(|e| self.fail("readdirplus", ino, e))?;
                let inode = self
                    .image
                    .inode(entry.nid)
                    .map_err(|e| self.fail("readdirplus", ino, e))?;
                let name = OsStr::from_bytes(&entry.name);
                if reply.add(
                    self.ino(entry.nid),
                    next.0,
                    name,
                    &TTL,
                    &self.attr(&inode),
                    Generation(0),
                ) {
                    break;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let sb = self.image.superblock();
        let blocks = sb.blocks
            + self
                .image
                .devices()
                .extra
                .iter()
                .map(|d| d.blocks)
                .sum::<u64>();
        reply.statfs(
            blocks,
            0,
            0,
            sb.inos,
            0,
            self.block_size,
            255,
            self.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self.inode(ino).and_then(|inode| {
            self.image
                .xattr(&inode, name.as_bytes())
                .map_err(|e| self.fail("getxattr", ino, e))?
                .ok_or(Errno::NO_XATTR)
        });
        match value {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        // As the kernel's erofs does, list trusted.* only to a caller who
        // may read them (CAP_SYS_ADMIN; here: root in the initial user
        // namespace). Others would see names that read as ENODATA.
        let show_trusted = self.init_userns && req.uid() == 0;
        // On a mount in a user namespace without POSIX_ACL the kernel
        // refuses ACL xattrs; do not list what cannot be read.
        let show_acls = self.init_userns || self.default_permissions;
        let names = self.inode(ino).and_then(|inode| {
            let list = self
                .image
                .xattrs(&inode)
                .map_err(|e| self.fail("listxattr", ino, e))?;
            let mut names = Vec::new();
            let visible = list.into_iter().filter(|x| {
                (show_trusted || !x.name.starts_with(b"trusted."))
                    && (show_acls || !x.name.starts_with(b"system.posix_acl_"))
            });
            for x in visible {
                names.extend_from_slice(&x.name);
                names.push(0);
            }
            Ok(names)
        });
        match names {
            Ok(names) => reply_xattr(reply, size, &names),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions (a private mount, whose
        // user can read the image anyway): refuse only writes.
        match self.inode(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Everything that would change the filesystem answers EROFS. The mount
    // is read-only, so the kernel normally refuses these itself.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}
