//! Output files that appear only when complete, and never through a
//! symlink: written with no name (`O_TMPFILE`, mode 0600) in the output's
//! directory, given a random name with `linkat` when done, and renamed
//! over the output. Where the filesystem has no `O_TMPFILE`, the file is
//! created under a random name with `O_CREAT|O_EXCL|O_NOFOLLOW`. A file
//! that is never completed vanishes (or its random name is removed, only
//! while it is still this file), so nothing but what this run created is
//! ever removed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::{link_pinned, owned, parent_of, random_name};

/// Tries at random names before giving up (each collision is a 2^-64 event
/// unless someone is planting names, which must not make us loop).
const NAME_TRIES: usize = 16;

/// A directory outputs are written into, opened once.
#[derive(Debug)]
pub struct OutputDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OutputDir {
    /// Opens the directory `path` (resolved by path this once).
    pub fn open(path: &Path) -> io::Result<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = owned(nix::fcntl::open(path, flags, Mode::empty())?);
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens the directory `path` is in, and returns it with the file name.
    pub fn of(path: &Path) -> io::Result<(Self, OsString)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        Ok((Self::open(parent_of(path))?, name.to_os_string()))
    }

    /// A directory already open as `fd` (opened by `path`).
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Self {
        Self { fd, path }
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// The directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path it was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new empty file in this directory, readable and writable, mode
    /// 0600 and with no name until [`TempFile::persist`].
    pub fn temp_file(&self) -> io::Result<TempFile> {
        let dir = self.fd.try_clone()?;
        let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        match openat(Some(dir.as_raw_fd()), ".", flags, mode) {
            Ok(fd) => {
                return Ok(TempFile {
                    file: owned(fd).into(),
                    dir,
                    name: None,
                })
            }
            // No O_TMPFILE on this filesystem (or kernel): a random name.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
        self.named_temp_file(dir)
    }

    /// [`Self::temp_file`] where there is no `O_TMPFILE`: a new file under
    /// a random name (`O_CREAT|O_EXCL|O_NOFOLLOW`), in `dir` (this one).
    fn named_temp_file(&self, dir: OwnedFd) -> io::Result<TempFile> {
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        for _ in 0..NAME_TRIES {
            let name = random_name(OsStr::new("tmp"));
            match openat(Some(dir.as_raw_fd()), name.as_os_str(), flags, mode) {
                Ok(fd) => {
                    return Ok(TempFile {
                        file: owned(fd).into(),
                        dir,
                        name: Some(name),
                    })
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::from(Errno::EEXIST))
    }
}

/// A file being written, not yet at its name (see the module docs).
#[derive(Debug)]
pub struct TempFile {
    file: File,
    dir: OwnedFd,
    /// The random name it has, if any: removed on drop unless persisted.
    name: Option<OsString>,
}

impl TempFile {
    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Sets the final `mode` (its contents are in place now) and renames
    /// the file to `name`, replacing what is there: a symlink there is
    /// replaced, never written through.
    pub fn persist(mut self, name: &OsStr, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        if self.name.is_none() {
            self.name = Some(self.link_random()?);
        }
        let temp = self.name.as_deref().unwrap_or_default();
        let dir = Some(self.dir.as_raw_fd());
        nix::fcntl::renameat(dir, temp, dir, name)?;
        self.name = None;
        Ok(())
    }

    /// Links the unnamed file under a fresh random name.
    fn link_random(&self) -> io::Result<OsString> {
        for _ in 0..NAME_TRIES {
            let name = random_name(OsStr::new("tmp"));
            match link_pinned(self.file.as_fd(), self.dir.as_fd(), &name) {
                Ok(()) => return Ok(name),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from(Errno::EEXIST))
    }
}

impl Drop for TempFile {
    /// Removes the random name if it still names this file (someone who
    /// can write the directory may have put something else there).
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let dir = Some(self.dir.as_raw_fd());
        let ours = self.file.metadata().ok().and_then(|m| {
            let there = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
            Some(there.st_dev == m.dev() && there.st_ino == m.ino())
        });
        if ours == Some(true) {
            let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn temp_files_appear_only_when_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        let temp = out.temp_file().unwrap();
        temp.file().write_all(b"image").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        temp.persist(OsStr::new("out"), 0o644).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"image");
        // Dropped unpersisted: nothing is left.
        drop(out.temp_file().unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn named_temp_files_are_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        let count = || std::fs::read_dir(dir.path()).unwrap().count();
        let temp = out.named_temp_file(out.fd.try_clone().unwrap()).unwrap();
        assert_eq!(count(), 1);
        drop(temp);
        assert_eq!(count(), 0);
        // Someone replaced the random name: what is there now stays.
        let temp = out.named_temp_file(out.fd.try_clone().unwrap()).unwrap();
        let name = temp.name.clone().unwrap();
        std::fs::remove_file(dir.path().join(&name)).unwrap();
        std::fs::write(dir.path().join(&name), b"theirs").unwrap();
        drop(temp);
        assert_eq!(std::fs::read(dir.path().join(&name)).unwrap(), b"theirs");
        let temp = out.named_temp_file(out.fd.try_clone().unwrap()).unwrap();
        temp.file().write_all(b"ok").unwrap();
        temp.persist(OsStr::new("done"), 0o640).unwrap();
        assert_eq!(std::fs::read(dir.path().join("done")).unwrap(), b"ok");
        assert_eq!(count(), 2);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("out")).unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        let temp = out.temp_file().unwrap();
        temp.file().write_all(b"new").unwrap();
        temp.persist(OsStr::new("out"), 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"new");
    }
}
