//! Copying an image's whole tree out to a directory (like
//! `fsck.erofs --extract`): contents, modes, owners, nanosecond mtimes, hard
//! links, symlinks, device nodes, fifos, sockets and xattrs.
//!
//! Safety against hostile images: names never contain `/` or NUL and `.`/`..`
//! are never followed (the reader guarantees it), and every file is created
//! with exclusive-create calls, so nothing is ever written through an
//! existing symlink or over an existing file.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};

use crate::error::{Error, Result};
use crate::format::Nid;
use crate::reader::{FileKind, Image, Inode, WalkEntry, WalkVisitor};

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
/// must be an empty directory.
pub fn extract(image: &Image, dest: &Path, options: &ExtractOptions) -> Result<ExtractStats> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Invalid(format!(
                    "{}: destination is not empty",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dest).map_err(|e| Error::io(dest, e))?;
        }
        Err(e) => return Err(Error::io(dest, e)),
    }
    let root = image.root()?;
    let mut extractor = Extractor {
        image,
        dest: dest.to_path_buf(),
        options: options.clone(),
        is_root: Uid::effective().is_root(),
        links: HashMap::new(),
        stats: ExtractStats::default(),
    };
    image.walk(root, b"/", &mut extractor)?;
    Ok(extractor.stats)
}

struct Extractor<'a> {
    image: &'a Image,
    dest: PathBuf,
    options: ExtractOptions,
    is_root: bool,
    /// First path of each multiply-linked inode, to hard-link the others.
    links: HashMap<Nid, PathBuf>,
    stats: ExtractStats,
}

impl Extractor<'_> {
    fn target(&self, entry: &WalkEntry) -> PathBuf {
        let relative = entry.path.strip_prefix(b"/").unwrap_or(&entry.path);
        self.dest.join(OsStr::from_bytes(relative))
    }

    fn write_contents(&mut self, inode: &Inode, path: &Path) -> Result<()> {
        let mut file = File::create_new(path).map_err(|e| Error::io(path, e))?;
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

    /// Owner, mode, xattrs, then times: chown clears setuid bits and file
    /// capabilities, so it must come first.
    fn set_attributes(&mut self, inode: &Inode, path: &Path) -> Result<()> {
        let io = |e: nix::Error| Error::io(path, std::io::Error::from(e));
        if self.options.owners && self.is_root {
            fchownat(
                None,
                path,
                Some(Uid::from_raw(inode.uid)),
                Some(Gid::from_raw(inode.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io)?;
        }
        if inode.kind != FileKind::Symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(inode.permissions()))
                .map_err(|e| Error::io(path, e))?;
        }
        if self.options.xattrs {
            // user.* cannot be set on symlinks and special files.
            for x in self.image.readable_xattrs(inode)? {
                if let Err(e) = xattr::set(path, OsStr::from_bytes(&x.name), &x.value) {
                    let denied = matches!(e.raw_os_error(), Some(1 | 13 | 95));
                    if self.is_root || !denied {
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
        }
        let mtime = TimeSpec::new(inode.mtime, i64::from(inode.mtime_nsec));
        nix::sys::stat::utimensat(
            None,
            path,
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io)?;
        Ok(())
    }
}

impl WalkVisitor for Extractor<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> Result<()> {
        if entry.depth == 0 {
            return Ok(());
        }
        let path = self.target(entry);
        let inode = &entry.inode;
        if !inode.is_dir() && inode.nlink > 1 {
            if let Some(first) = self.links.get(&inode.nid) {
                fs::hard_link(first, &path).map_err(|e| Error::io(&path, e))?;
                self.stats.entries += 1;
                return Ok(());
            }
            self.links.insert(inode.nid, path.clone());
        }
        let io = |e: nix::Error| Error::io(&path, std::io::Error::from(e));
        let perm = Mode::from_bits_truncate(inode.permissions());
        match inode.kind {
            // Writable until its children exist; attributes come at leave_dir.
            FileKind::Directory => fs::create_dir(&path).map_err(|e| Error::io(&path, e))?,
            FileKind::Regular => self.write_contents(inode, &path)?,
            FileKind::Symlink => {
                let target = self.image.read_link(inode)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| Error::io(&path, e))?;
            }
            FileKind::CharDevice(major, minor) => mknod(
                &path,
                SFlag::S_IFCHR,
                perm,
                makedev(major.into(), minor.into()),
            )
            .map_err(io)?,
            FileKind::BlockDevice(major, minor) => mknod(
                &path,
                SFlag::S_IFBLK,
                perm,
                makedev(major.into(), minor.into()),
            )
            .map_err(io)?,
            FileKind::Fifo => mknod(&path, SFlag::S_IFIFO, perm, 0).map_err(io)?,
            FileKind::Socket => mknod(&path, SFlag::S_IFSOCK, perm, 0).map_err(io)?,
        }
        self.stats.entries += 1;
        if !inode.is_dir() {
            self.set_attributes(inode, &path)?;
        }
        Ok(())
    }

    fn leave_dir(&mut self, entry: &WalkEntry) -> Result<()> {
        let path = self.target(entry);
        self.set_attributes(&entry.inode, &path)
    }
}
