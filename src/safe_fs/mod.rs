//! Creating and changing files without following anyone else's symlinks.
//!
//! A command run as root writes into directories other users may write
//! too (an extraction's DEST, a `/tmp` output). Anything such a user
//! planted or swapped in there must never be written through, chmodded,
//! chowned or removed. So, after a path given on the command line has been
//! resolved once:
//! - directories are held open and everything is created relative to
//!   them (`openat`/`mkdirat`/`symlinkat`/`mknodat`/`linkat`), with
//!   `O_NOFOLLOW|O_EXCL`, so an entry in the way is an error, never reused;
//! - metadata is changed on the open file (`fchmod`, `fchown`,
//!   `futimens`, `fsetxattr`), or for symlinks and special files on an
//!   `O_PATH` descriptor (`AT_EMPTY_PATH`, or `/proc/self/fd/N`, which
//!   names exactly that inode: chmod, xattrs, times and links of those
//!   need /proc mounted);
//! - output files are written with no name ([`OutputDir::temp_file`],
//!   `O_TMPFILE`) and renamed into place when complete ([`TempFile`]).
#![allow(unsafe_code)]

mod temp;
pub mod tree;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::Mode;

pub use temp::{OutputDir, TempFile};

/// Takes ownership of a descriptor a successful `open` just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the directory `name` in `dir`; a symlink there is an error
/// (ELOOP), never followed.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())
        .map_err(io::Error::from)
        .map(owned)
}

/// Creates the file `name` in `dir` with `mode` (less the umask), open
/// for writing; anything already there, a symlink included, is an error
/// (EEXIST).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(mode);
    openat(Some(dir.as_raw_fd()), name, flags, mode)
        .map_err(io::Error::from)
        .map(|fd| owned(fd).into())
}

/// Opens the file `name` in `dir` for reading; a symlink there is an
/// error (ELOOP), never followed, and a FIFO does not block the open
/// (`O_NONBLOCK`).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())
        .map_err(io::Error::from)
        .map(|fd| owned(fd).into())
}

/// An `O_PATH` descriptor for the entry `name` of `dir` itself (a symlink
/// is not followed): it pins that inode for [`chmod_pinned`],
/// [`set_xattr_pinned`] and [`link_pinned`].
pub fn open_pinned(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())
        .map_err(io::Error::from)
        .map(owned)
}

/// `/proc/self/fd/N`: resolving it lands on exactly the inode `fd` refers
/// to, whatever its names have become (and never follows a symlink that
/// inode is).
pub fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// chmod of the inode behind an `O_PATH` descriptor (a special file;
/// symlinks have no mode of their own).
pub fn chmod_pinned(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(proc_path(fd), std::fs::Permissions::from_mode(mode))
}

/// chown of the inode behind an `O_PATH` descriptor, a symlink included.
pub fn chown_pinned(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchownat(
        Some(fd.as_raw_fd()),
        Path::new(""),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Sets the access and modification times of the inode behind an `O_PATH`
/// descriptor, a symlink included.
pub fn set_times_pinned(fd: BorrowedFd<'_>, time: &nix::sys::time::TimeSpec) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    utimensat(
        None,
        proc_path(fd).as_path(),
        time,
        time,
        UtimensatFlags::FollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Sets an xattr on the inode behind an `O_PATH` descriptor, a symlink
/// included (the `/proc` link resolves to it, not through it).
pub fn set_xattr_pinned(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    xattr::set_deref(proc_path(fd), name, value)
}

/// Links the inode behind `fd` (any descriptor, `O_PATH` included) as
/// `name` in `dir`: exactly that inode, whatever its first name has
/// become since.
pub fn link_pinned(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let new = Path::new(name);
    let by_proc = nix::unistd::linkat(
        None,
        proc_path(fd).as_path(),
        Some(dir.as_raw_fd()),
        new,
        AtFlags::AT_SYMLINK_FOLLOW,
    );
    match by_proc {
        // No /proc: AT_EMPTY_PATH does the same, given CAP_DAC_READ_SEARCH.
        Err(Errno::ENOENT) => nix::unistd::linkat(
            Some(fd.as_raw_fd()),
            Path::new(""),
            Some(dir.as_raw_fd()),
            new,
            AtFlags::AT_EMPTY_PATH,
        ),
        other => other,
    }
    .map_err(io::Error::from)
}

/// Whether the directory open as `dir` has entries besides `.` and `..`.
pub fn has_entries(dir: BorrowedFd<'_>) -> io::Result<bool> {
    match std::fs::read_dir(proc_path(dir)) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::other(
            "cannot list it by its descriptor: /proc is not mounted",
        )),
        Err(e) => Err(e),
    }
}

/// The process's umask, read without changing it (`umask(2)` would set it
/// for every thread for a moment).
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// A name no one can guess: `.PREFIX.` and 16 random hex digits.
pub fn random_name(prefix: &OsStr) -> std::ffi::OsString {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let value = if got == bytes.len() as isize {
        u64::from_ne_bytes(bytes)
    } else {
        // No getrandom: the clock and pid, still unlikely to be planted.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (u64::from(std::process::id()) << 32)
    };
    let mut name = std::ffi::OsString::from(".");
    name.push(prefix);
    name.push(format!(".{value:016x}"));
    name
}

/// Opens DEST for an extraction: resolved by its path this once, it must
/// be a directory itself, not a symlink to one; created (mode 0700, as
/// this user) when absent. Returns the directory and whether it was
/// created.
pub fn open_dest(dest: &Path) -> io::Result<(OwnedFd, bool)> {
    let Some(name) = dest.file_name() else {
        // `/`, `.`, `..`: no final name that could be a symlink.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        return Ok((owned(nix::fcntl::open(dest, flags, Mode::empty())?), false));
    };
    let parent = OutputDir::open(parent_of(dest))?;
    match open_dir_at(parent.fd(), name) {
        Ok(fd) => return Ok((fd, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            let st = nix::sys::stat::fstatat(
                Some(parent.fd().as_raw_fd()),
                name,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            if st.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
                return Err(io::Error::other(
                    "is a symbolic link; extract refuses it (give the directory itself)",
                ));
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    nix::sys::stat::mkdirat(
        Some(parent.fd().as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o700),
    )?;
    let dir = open_dir_at(parent.fd(), name)?;
    // Still the directory just made, not one swapped in meanwhile.
    let st = nix::sys::stat::fstat(dir.as_raw_fd())?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        return Err(io::Error::other("was replaced while being created"));
    }
    Ok((dir, true))
}

/// Whether `a` and `b` name the same file: the same inode when both
/// exist (symlinks followed), else the same name in the same directory.
pub fn same_target(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let same =
        |x: &std::fs::Metadata, y: &std::fs::Metadata| x.dev() == y.dev() && x.ino() == y.ino();
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return same(&x, &y);
    }
    if a.file_name().is_none() || a.file_name() != b.file_name() {
        return false;
    }
    let (pa, pb) = (parent_of(a), parent_of(b));
    match (std::fs::metadata(pa), std::fs::metadata(pb)) {
        (Ok(x), Ok(y)) => same(&x, &y),
        _ => pa == pb,
    }
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn symlinks_are_never_followed_when_creating() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();
        let fd = File::open(dir.path()).unwrap();
        let err = create_file_at(fd.as_fd(), OsStr::new("link"), 0o600).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        std::os::unix::fs::symlink(dir.path(), dir.path().join("dirlink")).unwrap();
        // The kernel says ENOTDIR (O_DIRECTORY) or ELOOP: never follows.
        let err = open_dir_at(fd.as_fd(), OsStr::new("dirlink")).unwrap_err();
        assert!(matches!(
            err.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR)
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn dest_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("real"), &link).unwrap();
        assert!(open_dest(&link).is_err());
        // A trailing slash would make the kernel follow it: still refused.
        assert!(open_dest(&dir.path().join("link/")).is_err());
        let (_, created) = open_dest(&dir.path().join("new")).unwrap();
        assert!(created);
        let (_, created) = open_dest(&dir.path().join("real")).unwrap();
        assert!(!created);
    }

    #[test]
    fn pinned_links_link_the_inode_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fd = File::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        let pinned = open_pinned(fd.as_fd(), OsStr::new("a")).unwrap();
        // The name now holds another file; the link is still to "a"'s inode.
        std::fs::rename(dir.path().join("a"), dir.path().join("moved")).unwrap();
        std::fs::write(dir.path().join("a"), b"other").unwrap();
        link_pinned(pinned.as_fd(), fd.as_fd(), OsStr::new("b")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"a");
    }

    #[test]
    fn same_target_compares_inodes_then_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"").unwrap();
        let dotted = dir.path().join(".").join("a");
        assert!(same_target(&a, &dotted));
        assert!(!same_target(&a, &dir.path().join("b")));
        // Neither exists: the same name in the same directory.
        let x = dir.path().join("x.tar");
        assert!(same_target(&x, &dir.path().join("./x.tar")));
        assert!(!same_target(&x, &dir.path().join("x.erofs")));
    }

    #[test]
    fn pinned_changes_reach_the_symlink_not_its_target() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fd = File::open(dir.path()).unwrap();
        let pinned = open_pinned(fd.as_fd(), OsStr::new("link")).unwrap();
        let time = nix::sys::time::TimeSpec::new(1_000_000, 5);
        set_times_pinned(pinned.as_fd(), &time).unwrap();
        assert_eq!(std::fs::symlink_metadata(&link).unwrap().mtime(), 1_000_000);
        assert_ne!(std::fs::metadata(&target).unwrap().mtime(), 1_000_000);
        if nix::unistd::Uid::effective().is_root() {
            chown_pinned(pinned.as_fd(), 1234, 1234).unwrap();
            assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), 1234);
            assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
        }
    }

    #[test]
    fn random_names_differ() {
        let a = random_name(OsStr::new("x"));
        assert_ne!(a, random_name(OsStr::new("x")));
        assert!(a.to_string_lossy().starts_with(".x."));
    }
}
