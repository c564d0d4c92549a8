//! The kernel's requests, answered: [`Filesystem`] for [`ErofsFs`]. Reads
//! go to the view; everything that would change the filesystem answers
//! EROFS.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::device::Access;
use crate::format::FileType;
use crate::view::DirItem;

use super::attr::{fuse_type, reply_xattr};
use super::{prefetch_window, ErofsFs, MAX_READAHEAD, SEQUENTIAL_READ, TTL};

impl Filesystem for ErofsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
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
        self.account();
        match self.view.lookup(parent.0, name.as_bytes()) {
            Ok(Some(attr)) => reply.entry(&TTL, &self.file_attr(&attr), Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(self.fail("lookup", parent, e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr("getattr", ino) {
            Ok(attr) => reply.attr(&TTL, &self.file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.account();
        match self.view.read_link(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.fail("readlink", ino, e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.no_open && self.read_only_mount {
            // Read-only opens need nothing from us; the mount is read-only,
            // so the kernel refuses write opens itself from now on. (On a
            // mount that is not, every open must come here to be refused.)
            return reply.error(Errno::ENOSYS);
        }
        match self.attr("open", ino) {
            Ok(attr) if attr.kind == FileType::Directory => reply.error(Errno::EISDIR),
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
        thread_local! {
            // Reused for replies that cannot borrow from the map.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // A small read in the middle of a file is a random reader's (the
        // kernel's readahead sends a sequential one larger requests, and
        // whole small files from offset 0): read only what it asks for.
        let access = if offset > 0 && size < SEQUENTIAL_READ {
            Access::Random
        } else {
            Access::Sequential
        };
        // Uncompressed data is borrowed from the image map: the reply is
        // written to /dev/fuse straight from it, with no buffer between.
        let served = SCRATCH.with_borrow_mut(|scratch| {
            match self
                .view
                .read(ino.0, offset, u64::from(size), access, scratch)
            {
                Ok(bytes) => {
                    let served = bytes.len() as u64;
                    reply.data(bytes);
                    served
                }
                Err(e) => {
                    reply.error(self.fail("read", ino, e));
                    0
                }
            }
        });
        self.budget.read(&*self.view, access, served);
        // A file read from its start: its listed neighbours are likely next.
        if offset == 0 && served > 0 {
            self.ahead.read_from_start(ino.0);
        }
        // A readahead-sized read means a sequential reader: once it has its
        // reply, say what it will ask for next (verity checks it ahead).
        if size >= SEQUENTIAL_READ && served > 0 {
            let (ahead, len) = prefetch_window(offset, served);
            self.view.prefetch(ino.0, ahead, len);
        }
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
        match self.attr("opendir", ino) {
            Ok(attr) if attr.kind == FileType::Directory => reply.opened(
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
        let mut add = |item: DirItem<'_>| {
            reply.add(
                INodeNo(item.ino),
                item.next,
                fuse_type(item.kind),
                OsStr::from_bytes(item.name),
            )
        };
        match self.list("readdir", ino, offset, &mut add) {
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
        // Each entry's attributes come from the view as for getattr; the
        // first that fails ends the listing with its error.
        let mut failed = None;
        // What the listing returned, for storing files ahead (when on).
        let (record, mut files) = (self.ahead.is_on(), Vec::new());
        let mut add = |item: DirItem<'_>| match self.view.attr(item.ino) {
            Ok(attr) => {
                let full = reply.add(
                    INodeNo(item.ino),
                    item.next,
                    OsStr::from_bytes(item.name),
                    &TTL,
                    &self.file_attr(&attr),
                    Generation(0),
                );
                // An entry that did not fit comes again in the next call.
                if record && !full {
                    files.push((item.ino, attr.kind, attr.size));
                }
                full
            }
            Err(e) => {
                failed = Some(self.fail("readdirplus", ino, e));
                true
            }
        };
        let listed = self.list("readdirplus", ino, offset, &mut add);
        match listed.map(|()| failed) {
            Ok(None) => {
                reply.ok();
                if record {
                    self.ahead.listed(ino.0, offset, &files);
                }
            }
            Ok(Some(e)) | Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.view.stats();
        reply.statfs(
            stats.blocks,
            0,
            0,
            stats.inodes,
            0,
            stats.block_size,
            255,
            stats.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.account();
        if !crate::format::xattr_name_handled(name.as_bytes()) {
            // As for the kernel's erofs: a namespace it has no handler for.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        match self.view.xattr(ino.0, name.as_bytes()) {
            Ok(Some(value)) => reply_xattr(reply, size, &value),
            Ok(None) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(self.fail("getxattr", ino, e)),
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
        self.account();
        match self.view.xattr_names(ino.0) {
            Ok(list) => {
                let mut names = Vec::new();
                let visible = list.into_iter().filter(|name| {
                    (show_trusted || !name.starts_with(b"trusted."))
                        && (show_acls || !name.starts_with(b"system.posix_acl_"))
                });
                for name in visible {
                    names.extend_from_slice(&name);
                    names.push(0);
                }
                reply_xattr(reply, size, &names)
            }
            Err(e) => reply.error(self.fail("listxattr", ino, e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions (a private mount, whose
        // user can read the image anyway): refuse only writes.
        match self.attr("access", ino) {
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

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.view.remove_dir(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("rmdir", parent, e)),
        }
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
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // A view that takes creates as signals (the layer store's `use`)
        // answers with an error all the same: nothing is ever created.
        match self.view.create(parent.0, name.as_bytes()) {
            Ok(()) | Err(crate::Error::ReadOnly) => reply.error(Errno::EROFS),
            Err(e) => reply.error(self.fail("create", parent, e)),
        }
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
