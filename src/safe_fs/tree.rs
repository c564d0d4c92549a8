//! Reading a directory tree another user may change (an overlayfs upper
//! directory for `diff`, a `convert DIR` input) without following its
//! symlinks:
//! every entry is reached relative to its directory's descriptor with
//! `O_NOFOLLOW` (or `AT_SYMLINK_NOFOLLOW`), xattrs through an `O_PATH`
//! descriptor of the entry itself, and a file's content is read only if it
//! is the inode listed, unchanged from before the read to after it.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat};
use nix::sys::stat::{Mode, SFlag};
use std::os::unix::fs::OpenOptionsExt;

use super::{open_dir_at, open_pinned, proc_path};

/// Most entries read from one directory (a bound on memory).
pub const MAX_DIR_ENTRIES: usize = 1 << 22;

/// Most xattr bytes (names and values) of one entry.
const MAX_XATTR_BYTES: usize = 1 << 20;

/// Bytes read at a time from a file.
const CHUNK: usize = 1 << 20;

/// An open directory of the tree being read.
pub struct TreeDir {
    fd: OwnedFd,
}

impl TreeDir {
    /// Wraps an open directory descriptor.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Opens the directory `path` (resolved by path this once; its last
    /// component is never followed if a symlink, and a FIFO or device
    /// there is refused without blocking or being opened for reading).
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let flags = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path);
        match opened {
            Ok(file) => Ok(Self::new(OwnedFd::from(file))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                Err(io::Error::other(
                    "not a directory (a symlink or other file; UPPER must be a directory itself)",
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// The directory's own status.
    pub fn stat_self(&self) -> io::Result<FileStat> {
        Ok(fstat(self.fd.as_raw_fd())?)
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Entry names but `.` and `..`, sorted by their bytes (read from a
    /// second descriptor of this directory, opened as its `.`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut listing = Dir::openat(Some(self.fd.as_raw_fd()), ".", flags, Mode::empty())?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if names.len() == MAX_DIR_ENTRIES {
                return Err(io::Error::other(format!(
                    "more than {MAX_DIR_ENTRIES} entries in one directory"
                )));
            }
            names.push(OsStr::from_bytes(name).to_os_string());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    /// The entry's own status (a symlink's, not its target's).
    pub fn stat(&self, name: &OsStr) -> io::Result<FileStat> {
        Ok(fstatat(
            Some(self.fd().as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// The subdirectory `name` (a symlink there is an error).
    pub fn open_dir(&self, name: &OsStr) -> io::Result<TreeDir> {
        Ok(TreeDir::new(open_dir_at(self.fd(), name)?))
    }

    /// The target of symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<Vec<u8>> {
        Ok(nix::fcntl::readlinkat(Some(self.fd().as_raw_fd()), name)?.into_vec())
    }

    /// Every xattr of entry `name` (a symlink's own), sorted by name.
    pub fn xattrs(&self, name: &OsStr) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let pinned = open_pinned(self.fd(), name)?;
        let path = proc_path(pinned.as_fd());
        let mut out = Vec::new();
        let mut total = 0;
        for key in xattr::list_deref(&path)? {
            let Some(value) = xattr::get_deref(&path, &key)? else {
                continue;
            };
            total += key.len() + value.len();
            if total > MAX_XATTR_BYTES {
                return Err(io::Error::other(format!(
                    "xattrs over {MAX_XATTR_BYTES} bytes"
                )));
            }
            out.push((key.into_vec(), value));
        }
        out.sort();
        Ok(out)
    }

    /// Reads regular file `name`, listed with status `before`, passing its
    /// bytes to `sink`; `hook` runs after the first chunk (tests change
    /// the file there). The file must be the inode listed and keep its
    /// size, mtime and ctime until the end: anything else is
    /// [`ReadError::Changed`].
    pub fn read_file(
        &self,
        name: &OsStr,
        before: &FileStat,
        hook: Option<&(dyn Fn() + Send + Sync)>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), ReadError> {
        let mut file = self.open_file(name, before)?;
        let mut left = u64::try_from(before.st_size).unwrap_or(0);
        let mut buf = vec![0u8; CHUNK];
        let mut first = true;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = file.read(&mut buf[..want]).map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Changed);
            }
            sink(&buf[..n]).map_err(ReadError::Write)?;
            left -= n as u64;
            if first {
                first = false;
                if let Some(hook) = hook {
                    hook();
                }
            }
        }
        if file.read(&mut buf[..1]).map_err(ReadError::Io)? != 0 {
            return Err(ReadError::Changed);
        }
        let after = fstat(file.as_raw_fd()).map_err(|e| ReadError::Io(e.into()))?;
        if !same_file(before, &after) {
            return Err(ReadError::Changed);
        }
        Ok(())
    }
}

impl TreeDir {
    /// Opens regular file `name`, listed with status `before`, for
    /// reading: pinned first (O_PATH opens nothing: no device, no FIFO),
    /// checked to be the regular file listed, then reopened; anything else
    /// is [`ReadError::Changed`].
    pub fn open_file(&self, name: &OsStr, before: &FileStat) -> Result<std::fs::File, ReadError> {
        let pinned = open_pinned(self.fd(), name).map_err(ReadError::Io)?;
        let opened = fstat(pinned.as_raw_fd()).map_err(|e| ReadError::Io(e.into()))?;
        let regular = opened.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
        if !regular || !same_file(before, &opened) {
            return Err(ReadError::Changed);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(proc_path(pinned.as_fd()))
            .map_err(ReadError::Io)?;
        let reopened = fstat(file.as_raw_fd()).map_err(|e| ReadError::Io(e.into()))?;
        if !same_file(before, &reopened) {
            return Err(ReadError::Changed);
        }
        Ok(file)
    }
}

/// Why reading a file failed.
#[derive(Debug)]
pub enum ReadError {
    /// Reading it.
    Io(io::Error),
    /// Writing what was read.
    Write(io::Error),
    /// It is not the inode listed, or its size, mtime or ctime changed.
    Changed,
}

/// Whether `a` and `b` are the same inode with the same size and times.
pub fn same_file(a: &FileStat, b: &FileStat) -> bool {
    (a.st_dev, a.st_ino, a.st_mode, a.st_size) == (b.st_dev, b.st_ino, b.st_mode, b.st_size)
        && (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec)
        && (a.st_ctime, a.st_ctime_nsec) == (b.st_ctime, b.st_ctime_nsec)
}
