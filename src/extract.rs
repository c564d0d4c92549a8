//! Copying an image's whole tree out to a directory (like
//! `fsck.erofs --extract`): contents, modes, owners, nanosecond mtimes, hard
//! links, symlinks, device nodes, fifos and sockets, and xattrs.
//!
//! Safety, against hostile images and against other users who can write
//! in DEST while root extracts (see [`crate::safe_fs`]):
//! - DEST is resolved by its path once and must not be a symlink; from
//!   then on everything is created relative to its parent directory's
//!   open descriptor, with `O_NOFOLLOW|O_EXCL`: an entry in the way is an
//!   error naming it, never reused or written through. Each directory
//!   being filled stays open (one descriptor per level, at most
//!   [`MAX_WALK_DEPTH`] of them; the soft open-file limit is raised to the
//!   hard one if that runs out).
//! - Owners, modes, xattrs and times are set on the open file, or for
//!   symlinks and special files on an `O_PATH` descriptor of exactly the
//!   inode created, checked to be this user's new entry of that type.
//! - Every file and directory is created with no access for group and
//!   others (its owner bits only) and gets its final mode once its
//!   contents (a directory: its children) are in place and its owner set,
//!   so setuid bits survive and nobody opens a private file early.
//! - Names never contain `/` or NUL and are never `.` or `..`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mkdirat, mknodat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, symlinkat, Gid, Uid};
use xattr::FileExt;

use crate::error::{Error, Result};
use crate::format::Nid;
use crate::reader::{FileKind, Image, Inode, WalkEntry, WalkVisitor, MAX_WALK_DEPTH};
use crate::safe_fs;

/// Bytes copied per read while extracting file contents.
const COPY_CHUNK: u64 = 1 << 20;

/// What to copy besides names, types and contents.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Set owners (only possible as root; ignored otherwise).
    pub owners: bool,
    /// Copy extended attributes.
    pub xattrs: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            owners: true,
            xattrs: true,
        }
    }
}

/// What an extraction did.
#[derive(Debug, Default, Clone)]
pub struct ExtractStats {
    /// Entries created (hard links included).
    pub entries: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// Xattrs that could not be set for lack of privilege.
    pub xattrs_skipped: u64,
}

/// Extracts the whole tree of `image` into `dest`, which must not exist or
/// must be an empty directory (not a symlink to one).
pub fn extract(image: &Image, dest: &Path, options: &ExtractOptions) -> Result<ExtractStats> {
    let (dest_fd, created) = safe_fs::open_dest(dest).map_err(|e| Error::io(dest, e))?;
    if !created && safe_fs::has_entries(dest_fd.as_fd()).map_err(|e| Error::io(dest, e))? {
        return Err(Error::Invalid(format!(
            "{}: destination is not empty",
            dest.display()
        )));
    }
    let root = image.root()?;
    let root_nid = root.nid;
    let mut extractor = Extractor {
        image,
        dest: dest.to_path_buf(),
        options: options.clone(),
        euid: Uid::effective(),
        links: HashMap::new(),
        stack: vec![Level {
            dir: File::from(dest_fd),
            name: Vec::new(),
            nid: root_nid,
        }],
        dirs: HashMap::new(),
        stats: ExtractStats::default(),
    };
    image.walk(root, b"/", &mut extractor)?;
    Ok(extractor.stats)
}

/// A directory being filled: open, and its name in its parent.
struct Level {
    dir: File,
    name: Vec<u8>,
    nid: Nid,
}

/// Where the first name of a multiply-linked inode is, to link the others
/// to exactly that inode.
struct FirstLink {
    /// Its directory (see [`Extractor::dirs`]).
    parent: Nid,
    name: Vec<u8>,
    dev: u64,
    ino: u64,
}

/// How the inode whose attributes are set is held.
#[derive(Clone, Copy)]
enum Held<'a> {
    /// A regular file or directory, open.
    Open(&'a File),
    /// A symlink or special file, by an `O_PATH` descriptor.
    Pinned(BorrowedFd<'a>),
}

struct Extractor<'a> {
    image: &'a Image,
    dest: PathBuf,
    options: ExtractOptions,
    euid: Uid,
    links: HashMap<Nid, FirstLink>,
    /// DEST, then each directory being filled: `stack[d]` is at depth `d`.
    stack: Vec<Level>,
    /// Parent and name of the directories holding a first link and of
    /// their ancestors: each stored once, so the memory stays within the
    /// image's own directory entries however many links there are.
    dirs: HashMap<Nid, (Nid, Vec<u8>)>,
    stats: ExtractStats,
}

/// The last name of a walk path, checked to be a plain name.
fn last_name(entry: &WalkEntry) -> Result<&[u8]> {
    let name = entry.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    if name.is_empty() || name == b"." || name == b".." || name.contains(&0) {
        return Err(Error::corrupt(format!(
            "bad name at {}",
            String::from_utf8_lossy(&entry.path)
        )));
    }
    Ok(name)
}

/// An I/O error on `path`, saying plainly when an entry was in the way.
fn fail(path: &Path, e: impl Into<std::io::Error>) -> Error {
    let e = e.into();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Error::io(
            path,
            std::io::Error::other("already exists (extract never replaces an entry)"),
        );
    }
    Error::io(path, e)
}

/// Checks that `fd` is what this run just created: a `kind` (S_IF*) owned
/// by this user, so a name swapped in between is never acted on; returns
/// its status.
fn check_created(
    fd: BorrowedFd<'_>,
    kind: u32,
    euid: Uid,
    path: &Path,
) -> Result<nix::sys::stat::FileStat> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| fail(path, e))?;
    if st.st_mode & libc::S_IFMT != kind || st.st_uid != euid.as_raw() {
        return Err(replaced(path));
    }
    Ok(st)
}

/// The error for an entry someone else moved or replaced meanwhile.
fn replaced(path: &Path) -> Error {
    Error::io(
        path,
        std::io::Error::other("was moved or replaced by someone else during extraction"),
    )
}

impl Extractor<'_> {
    fn target(&self, entry: &WalkEntry) -> PathBuf {
        let relative = entry.path.strip_prefix(b"/").unwrap_or(&entry.path);
        self.dest.join(OsStr::from_bytes(relative))
    }

    /// The open directory entries at `depth` go into.
    fn parent(&self, depth: usize) -> Result<&File> {
        depth
            .checked_sub(1)
            .and_then(|d| self.stack.get(d))
            .map(|level| &level.dir)
            .ok_or_else(|| Error::Invalid(format!("extract: no directory open at depth {depth}")))
    }

    fn write_contents(&mut self, inode: &Inode, mut file: &File, path: &Path) -> Result<()> {
        let mut offset = 0;
        while offset < inode.size {
            // Holes are skipped whole, however large the file claims to be.
            let hole = self.image.hole_len(inode, offset)?;
            if hole > 0 {
                file.seek(SeekFrom::Current(hole as i64))
                    .map_err(|e| Error::io(path, e))?;
                offset += hole;
                continue;
            }
            let bytes = self.image.read_range(inode, offset, COPY_CHUNK)?;
            if bytes.is_empty() {
                break;
            }
            // Leave runs of zeros as holes so sparse files stay sparse.
            if bytes.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(bytes.len() as i64))
            } else {
                file.write_all(&bytes).map(|()| 0)
            }
            .map_err(|e| Error::io(path, e))?;
            offset += bytes.len() as u64;
        }
        file.set_len(inode.size).map_err(|e| Error::io(path, e))?;
        self.stats.bytes += inode.size;
        Ok(())
    }

    /// Owner, xattrs, mode, then times, on the held inode: chown clears
    /// setuid bits and file capabilities, so it comes first; the mode is
    /// widened only now, with the contents in place.
    fn set_attributes(&mut self, inode: &Inode, held: Held<'_>, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::io(path, e);
        if self.options.owners && self.euid.is_root() {
            match held {
                Held::Open(file) => fchown(
                    file.as_raw_fd(),
                    Some(Uid::from_raw(inode.uid)),
                    Some(Gid::from_raw(inode.gid)),
                )
                .map_err(|e| io(e.into()))?,
                Held::Pinned(fd) => safe_fs::chown_pinned(fd, inode.uid, inode.gid).map_err(io)?,
            }
        }
        if self.options.xattrs {
            self.set_xattrs(inode, held, path)?;
        }
        let mode = inode.permissions();
        match held {
            Held::Open(file) => file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io)?,
            Held::Pinned(_) if inode.kind == FileKind::Symlink => {}
            Held::Pinned(fd) => safe_fs::chmod_pinned(fd, mode).map_err(io)?,
        }
        let mtime = TimeSpec::new(inode.mtime, i64::from(inode.mtime_nsec));
        match held {
            Held::Open(file) => nix::sys::stat::futimens(file.as_raw_fd(), &mtime, &mtime)
                .map_err(|e| io(e.into()))?,
            Held::Pinned(fd) => safe_fs::set_times_pinned(fd, &mtime).map_err(io)?,
        }
        Ok(())
    }

    fn set_xattrs(&mut self, inode: &Inode, held: Held<'_>, path: &Path) -> Result<()> {
        // user.* can be neither read nor set on symlinks and special files.
        for x in self.image.readable_xattrs(inode)? {
            let name = OsStr::from_bytes(&x.name);
            let set = match held {
                Held::Open(file) => file.set_xattr(name, &x.value),
                Held::Pinned(fd) => safe_fs::set_xattr_pinned(fd, name, &x.value),
            };
            if let Err(e) = set {
                let denied = matches!(e.raw_os_error(), Some(1 | 13 | 95));
                if self.euid.is_root() || !denied {
                    return Err(Error::io(path, e));
                }
                tracing::warn!(
                    "{}: cannot set xattr {} without privilege: {e}",
                    path.display(),
                    String::from_utf8_lossy(&x.name)
                );
                self.stats.xattrs_skipped += 1;
            }
        }
        Ok(())
    }

    /// Creates a directory (0700, this user's) and opens it for its
    /// children; its attributes come at `leave_dir`.
    fn make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        nid: Nid,
        path: &Path,
    ) -> Result<()> {
        let os = OsStr::from_bytes(name);
        mkdirat(Some(parent.as_raw_fd()), os, Mode::S_IRWXU).map_err(|e| fail(path, e))?;
        let fd = safe_fs::open_dir_at(parent, os).map_err(|e| match e.raw_os_error() {
            // Gone or not a directory any more: someone else moved it.
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => replaced(path),
            _ => fail(path, e),
        })?;
        check_created(fd.as_fd(), libc::S_IFDIR, self.euid, path)?;
        self.stack.push(Level {
            dir: File::from(fd),
            name: name.to_vec(),
            nid,
        });
        Ok(())
    }

    /// Creates a regular file with its owner's permissions only, fills it,
    /// then sets its attributes.
    fn make_file(&mut self, parent: BorrowedFd<'_>, entry: &WalkEntry, path: &Path) -> Result<()> {
        let name = OsStr::from_bytes(last_name(entry)?);
        let private = entry.inode.permissions() & 0o700;
        let file = safe_fs::create_file_at(parent, name, private).map_err(|e| fail(path, e))?;
        self.write_contents(&entry.inode, &file, path)?;
        if entry.inode.nlink > 1 {
            let meta = file.metadata().map_err(|e| Error::io(path, e))?;
            self.remember_link(entry, (meta.dev(), meta.ino()));
        }
        self.set_attributes(&entry.inode, Held::Open(&file), path)
    }

    /// Creates a symlink or special file, pins it with `O_PATH`, checks it
    /// is the one created, then sets its attributes.
    fn make_other(&mut self, parent: BorrowedFd<'_>, entry: &WalkEntry, path: &Path) -> Result<()> {
        let inode = &entry.inode;
        let name = OsStr::from_bytes(last_name(entry)?);
        let at = Some(parent.as_raw_fd());
        let private = Mode::from_bits_truncate(inode.permissions() & 0o700);
        let (kind, dev) = match inode.kind {
            FileKind::Symlink => {
                let target = self.image.read_link(inode)?;
                symlinkat(OsStr::from_bytes(&target), at, name).map_err(|e| fail(path, e))?;
                (SFlag::S_IFLNK, 0)
            }
            FileKind::CharDevice(major, minor) => {
                (SFlag::S_IFCHR, makedev(major.into(), minor.into()))
            }
            FileKind::BlockDevice(major, minor) => {
                (SFlag::S_IFBLK, makedev(major.into(), minor.into()))
            }
            FileKind::Fifo => (SFlag::S_IFIFO, 0),
            FileKind::Socket => (SFlag::S_IFSOCK, 0),
            FileKind::Regular | FileKind::Directory => {
                return Err(Error::Invalid(format!(
                    "{}: not a special file",
                    path.display()
                )))
            }
        };
        if kind != SFlag::S_IFLNK {
            mknodat(at, name, kind, private, dev).map_err(|e| fail(path, e))?;
        }
        let pinned: OwnedFd =
            safe_fs::open_pinned(parent, name).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => replaced(path),
                _ => fail(path, e),
            })?;
        let st = check_created(pinned.as_fd(), kind.bits(), self.euid, path)?;
        if st.st_rdev != dev {
            return Err(replaced(path));
        }
        self.remember_link(entry, (st.st_dev, st.st_ino));
        self.set_attributes(inode, Held::Pinned(pinned.as_fd()), path)
    }

    /// Records where a multiply-linked inode's first name is.
    fn remember_link(&mut self, entry: &WalkEntry, (dev, ino): (u64, u64)) {
        if entry.inode.nlink <= 1 {
            return;
        }
        let Ok(name) = last_name(entry) else { return };
        // The open directories, deepest first, until one already known
        // (its ancestors are then known too).
        for depth in (1..self.stack.len()).rev() {
            let level = &self.stack[depth];
            if self.dirs.contains_key(&level.nid) {
                break;
            }
            let parent = self.stack[depth - 1].nid;
            self.dirs.insert(level.nid, (parent, level.name.clone()));
        }
        let first = FirstLink {
            parent: self.stack.last().map_or(entry.inode.nid, |l| l.nid),
            name: name.to_vec(),
            dev,
            ino,
        };
        self.links.insert(entry.inode.nid, first);
    }

    /// The directories from DEST's child down to `dir`, as (nid, name).
    fn dir_chain(&self, mut dir: Nid) -> Result<Vec<(Nid, &[u8])>> {
        let mut chain = Vec::new();
        while dir != self.stack[0].nid {
            let (parent, name) = self
                .dirs
                .get(&dir)
                .filter(|_| chain.len() <= MAX_WALK_DEPTH)
                .ok_or_else(|| Error::corrupt(format!("directory {dir} has no known path")))?;
            chain.push((dir, name.as_slice()));
            dir = *parent;
        }
        chain.reverse();
        Ok(chain)
    }

    /// Links `name` in `parent` to the inode `first` names, after checking
    /// that it still is the inode this run created there.
    fn link_to(
        &self,
        first: &FirstLink,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &Path,
    ) -> Result<()> {
        // Start from the deepest directory still open on the way to it.
        let chain = self.dir_chain(first.parent)?;
        let common = chain
            .iter()
            .zip(&self.stack[1..])
            .take_while(|((nid, _), level)| *nid == level.nid)
            .count();
        let mut held: Option<OwnedFd> = None;
        for (_, dir) in &chain[common..] {
            let from = held
                .as_ref()
                .map_or(self.stack[common].dir.as_fd(), |fd| fd.as_fd());
            let next =
                safe_fs::open_dir_at(from, OsStr::from_bytes(dir)).map_err(|e| fail(path, e))?;
            held = Some(next);
        }
        let dir = held
            .as_ref()
            .map_or(self.stack[common].dir.as_fd(), |fd| fd.as_fd());
        let pinned =
            safe_fs::open_pinned(dir, OsStr::from_bytes(&first.name)).map_err(|e| fail(path, e))?;
        let st = nix::sys::stat::fstat(pinned.as_raw_fd()).map_err(|e| fail(path, e))?;
        if (st.st_dev, st.st_ino) != (first.dev, first.ino) {
            return Err(fail(
                path,
                std::io::Error::other("hard link target was replaced during extraction"),
            ));
        }
        safe_fs::link_pinned(pinned.as_fd(), parent, OsStr::from_bytes(name))
            .map_err(|e| fail(path, e))
    }
}

impl WalkVisitor for Extractor<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> Result<()> {
        if entry.depth == 0 {
            return Ok(());
        }
        debug_assert!(entry.depth <= MAX_WALK_DEPTH);
        let path = self.target(entry);
        let name = last_name(entry)?;
        // The parent stays open while its children are made; a second
        // descriptor lets `self` be borrowed mutably meanwhile.
        let parent = self
            .parent(entry.depth)?
            .try_clone()
            .map_err(|e| Error::io(&path, e))?;
        let inode = &entry.inode;
        if !inode.is_dir() && inode.nlink > 1 {
            if let Some(first) = self.links.get(&inode.nid) {
                self.link_to(first, parent.as_fd(), name, &path)?;
                self.stats.entries += 1;
                return Ok(());
            }
        }
        match inode.kind {
            FileKind::Directory => self.make_dir(parent.as_fd(), name, inode.nid, &path)?,
            FileKind::Regular => self.make_file(parent.as_fd(), entry, &path)?,
            _ => self.make_other(parent.as_fd(), entry, &path)?,
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn leave_dir(&mut self, entry: &WalkEntry) -> Result<()> {
        let path = self.target(entry);
        // Its children are done: now its owner, mode and times.
        let level = if entry.depth == 0 {
            self.stack.first().map(|l| l.dir.try_clone())
        } else {
            self.stack.pop().map(|l| Ok(l.dir))
        };
        let dir = level
            .ok_or_else(|| Error::Invalid(format!("{}: not open", path.display())))?
            .map_err(|e| Error::io(&path, e))?;
        self.set_attributes(&entry.inode, Held::Open(&dir), &path)
    }
}
