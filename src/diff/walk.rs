//! The upper directory walked against the merged lower layers, each
//! change written as tar members (the OCI layer changeset rules):
//! - a 0:0 character device is a deletion: `.wh.NAME`;
//! - an opaque directory is the directory and `.wh..wh..opq` in it, its
//!   children all new;
//! - a directory present below too is written if its own metadata
//!   (type, mode, owner, mtime, xattrs) differs, or as the parent of a
//!   change written below it (as containerd's tar writer includes
//!   parents): a layer converted to EROFS, and overlayfs over it, show
//!   the top layer's directory, so one implied by a path would hide the
//!   real one's metadata;
//! - everything else in the upper directory was created or copied up,
//!   and is written in full; a second name of an inode is a hard link.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use nix::sys::stat::{FileStat, SFlag};

use super::tarw::{Kind, Member, TarWriter};
use super::upper::{ReadError, UpperDir};
use super::{DiffError, DiffOptions};
use crate::format::{OPAQUE_MARKER, TRUSTED_OVERLAY, USER_OVERLAY, WHITEOUT_PREFIX};
use crate::overlay::Stack;
use crate::view::{Ino, View, ROOT};

/// Deepest directory nesting walked (PATH_MAX allows 2048 levels).
pub const MAX_DEPTH: usize = 2048;

/// Walks the upper tree and writes its changes.
pub struct Walker<'a, W: Write> {
    /// The merged lower layers.
    pub lower: &'a Stack,
    /// Where members go.
    pub tar: TarWriter<W>,
    /// What to clamp times to, and the test hook.
    pub options: &'a DiffOptions,
    /// The upper directory as given, for messages.
    pub upper: &'a std::path::Path,
    /// First path of each multiply linked inode written, by (dev, ino).
    pub links: HashMap<(u64, u64), Vec<u8>>,
    /// Unchanged directories being walked, not written yet: written as
    /// parents before the first member below them.
    pub pending: Vec<Member>,
}

/// Whether `name` is overlayfs's own (never carried into the layer).
fn is_overlay(name: &[u8]) -> bool {
    name.starts_with(TRUSTED_OVERLAY) || name.starts_with(USER_OVERLAY)
}

/// The overlayfs feature an xattr says an entry uses that a layer cannot
/// express, if any.
fn refused(name: &[u8]) -> Option<&'static str> {
    let key = name
        .strip_prefix(TRUSTED_OVERLAY)
        .or_else(|| name.strip_prefix(USER_OVERLAY))?;
    match key {
        b"redirect" => Some("redirect_dir"),
        b"metacopy" => Some("metacopy"),
        _ => None,
    }
}

/// Whether the xattrs mark an opaque directory (either namespace).
fn is_opaque(xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    xattrs.iter().any(|(name, value)| {
        (name == crate::format::OVERLAY_OPAQUE || name == crate::format::USER_OVERLAY_OPAQUE)
            && value == b"y"
    })
}

impl<W: Write> Walker<'_, W> {
    /// `upper`/`path` shown in a message.
    fn shown(&self, path: &[u8]) -> String {
        self.upper
            .join(OsStr::from_bytes(path))
            .display()
            .to_string()
    }

    fn io(&self, path: &[u8], e: std::io::Error) -> DiffError {
        DiffError::Upper {
            path: self.shown(path),
            message: e.to_string(),
        }
    }

    /// The time written for `st`'s mtime, clamped to SOURCE_DATE_EPOCH.
    fn time(&self, secs: i64, nsec: i64) -> (i64, u32) {
        let nsec = u32::try_from(nsec).unwrap_or(0);
        match self.options.source_date_epoch {
            Some(epoch) if secs >= epoch && (secs, nsec) != (epoch, 0) => (epoch, 0),
            _ => (secs, nsec),
        }
    }

    /// A member for `path` with `st`'s metadata.
    fn member(&self, path: Vec<u8>, kind: Kind, st: &FileStat) -> Member {
        let (mtime, mtime_nsec) = self.time(st.st_mtime, st.st_mtime_nsec);
        let rdev = st.st_rdev;
        Member {
            path,
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: 0,
            mtime,
            mtime_nsec,
            link: Vec::new(),
            rdev: (libc::major(rdev), libc::minor(rdev)),
            xattrs: Vec::new(),
        }
    }

    /// Writes `m`, after the pending parents.
    fn write(&mut self, m: &Member) -> Result<(), DiffError> {
        for parent in self.pending.drain(..) {
            self.tar.header(&parent).map_err(DiffError::Output)?;
        }
        self.tar.header(m).map_err(DiffError::Output)
    }

    /// Writes directory member `m` now if `changed`, else only before
    /// the first member below it; then `walk` writes what is below.
    fn with_dir(
        &mut self,
        m: Member,
        changed: bool,
        walk: impl FnOnce(&mut Self) -> Result<(), DiffError>,
    ) -> Result<(), DiffError> {
        let depth = self.pending.len();
        if changed {
            self.write(&m)?;
        } else {
            self.pending.push(m);
        }
        walk(self)?;
        self.pending.truncate(depth);
        Ok(())
    }

    /// Writes the root's member if its metadata differs from the lower
    /// root's or anything changed below, then the changes below it.
    pub fn root(&mut self, dir: &UpperDir, st: &FileStat) -> Result<(), DiffError> {
        let xattrs = dir.xattrs(OsStr::new(".")).map_err(|e| self.io(b"", e))?;
        self.check_refused(b"", &xattrs)?;
        let kept = visible(xattrs);
        let changed = !self.same_dir(ROOT, st, &kept)?;
        let mut m = self.member(b"./".to_vec(), Kind::Dir, st);
        m.xattrs = kept;
        self.with_dir(m, changed, |w| w.dir(dir, b"", Some(ROOT), 0))
    }

    /// Whether lower directory `ino` has `st`'s type, mode, owner, mtime
    /// and the xattrs `xattrs`.
    fn same_dir(
        &self,
        ino: Ino,
        st: &FileStat,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<bool, DiffError> {
        let attr = self.lower.attr(ino)?;
        let same = attr.kind == crate::format::FileType::Directory
            && u32::from(attr.perm) == st.st_mode & 0o7777
            && (attr.uid, attr.gid) == (st.st_uid, st.st_gid)
            && (attr.mtime, i64::from(attr.mtime_nsec)) == (st.st_mtime, st.st_mtime_nsec);
        if !same {
            return Ok(false);
        }
        let mut lower = Vec::new();
        for name in self.lower.xattr_names(ino)? {
            if let Some(value) = self.lower.xattr(ino, &name)? {
                lower.push((name, value));
            }
        }
        lower.sort();
        Ok(lower == xattrs)
    }

    fn check_refused(&self, path: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DiffError> {
        match xattrs.iter().find_map(|(name, _)| refused(name)) {
            Some(feature) => Err(DiffError::Refused {
                path: self.shown(path),
                feature,
            }),
            None => Ok(()),
        }
    }

    /// Writes the changes in upper directory `dir` (at `path`, ending in
    /// `/` unless the root), `lower` the merged directory under it.
    fn dir(
        &mut self,
        dir: &UpperDir,
        path: &[u8],
        lower: Option<Ino>,
        depth: usize,
    ) -> Result<(), DiffError> {
        if depth >= MAX_DEPTH {
            return Err(DiffError::Upper {
                path: self.shown(path),
                message: format!("deeper than {MAX_DEPTH} levels"),
            });
        }
        for name in dir.names().map_err(|e| self.io(path, e))? {
            let child = [path, name.as_bytes()].concat();
            let st = dir.stat(&name).map_err(|e| self.io(&child, e))?;
            let below = match lower {
                Some(ino) => self.lower.lookup(ino, name.as_bytes())?.map(|a| a.ino),
                None => None,
            };
            self.entry(dir, &name, child, &st, below, depth)?;
        }
        Ok(())
    }

    /// Writes one upper entry `name` of `dir`, at `path`.
    fn entry(
        &mut self,
        dir: &UpperDir,
        name: &OsStr,
        path: Vec<u8>,
        st: &FileStat,
        below: Option<Ino>,
        depth: usize,
    ) -> Result<(), DiffError> {
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
            let at = path.len() - name.len();
            let whiteout = [&path[..at], WHITEOUT_PREFIX, name.as_bytes()].concat();
            let mut m = self.member(whiteout, Kind::File, st);
            (m.mode, m.uid, m.gid) = (0, 0, 0);
            return self.write(&m);
        }
        let xattrs = dir.xattrs(name).map_err(|e| self.io(&path, e))?;
        self.check_refused(&path, &xattrs)?;
        let opaque = kind == SFlag::S_IFDIR && is_opaque(&xattrs);
        let kept = visible(xattrs);
        match kind {
            SFlag::S_IFDIR => self.directory(dir, name, path, st, kept, opaque, below, depth),
            SFlag::S_IFREG => self.file(dir, name, path, st, kept),
            SFlag::S_IFSOCK => {
                tracing::warn!("{}: a socket, left out (tar has none)", self.shown(&path));
                Ok(())
            }
            _ => {
                let kind = match kind {
                    SFlag::S_IFLNK => Kind::Symlink,
                    SFlag::S_IFCHR => Kind::Char,
                    SFlag::S_IFBLK => Kind::Block,
                    _ => Kind::Fifo,
                };
                let mut m = self.member(path, kind, st);
                if kind == Kind::Symlink {
                    m.link = dir.read_link(name).map_err(|e| self.io(&m.path, e))?;
                }
                m.xattrs = kept;
                self.write(&m)
            }
        }
    }

    /// Writes directory `name` (if new, opaque or changed) and its changes.
    #[allow(clippy::too_many_arguments)]
    fn directory(
        &mut self,
        dir: &UpperDir,
        name: &OsStr,
        mut path: Vec<u8>,
        st: &FileStat,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        opaque: bool,
        below: Option<Ino>,
        depth: usize,
    ) -> Result<(), DiffError> {
        let sub = dir.open_dir(name).map_err(|e| self.io(&path, e))?;
        path.push(b'/');
        let below = match below {
            Some(ino) if self.lower.attr(ino)?.kind == crate::format::FileType::Directory => {
                Some(ino)
            }
            _ => None,
        };
        let unchanged = match below {
            Some(ino) if !opaque => self.same_dir(ino, st, &xattrs)?,
            _ => false,
        };
        let mut m = self.member(path.clone(), Kind::Dir, st);
        m.xattrs = xattrs;
        self.with_dir(m, !unchanged, |w| {
            if opaque {
                let marker = [&path[..], OPAQUE_MARKER].concat();
                let mut m = w.member(marker, Kind::File, st);
                (m.mode, m.uid, m.gid) = (0, 0, 0);
                w.write(&m)?;
            }
            let lower = if opaque { None } else { below };
            w.dir(&sub, &path, lower, depth + 1)
        })
    }

    /// Writes regular file `name` in full, or as a hard link to the first
    /// name of its inode written.
    fn file(
        &mut self,
        dir: &UpperDir,
        name: &OsStr,
        path: Vec<u8>,
        st: &FileStat,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), DiffError> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                let mut m = self.member(path, Kind::Link, st);
                m.link = first.clone();
                return self.write(&m);
            }
            self.links.insert(key, path.clone());
        }
        let mut m = self.member(path, Kind::File, st);
        m.size = u64::try_from(st.st_size).unwrap_or(0);
        m.xattrs = xattrs;
        self.write(&m)?;
        let tar = &mut self.tar;
        let hook = self.options.read_hook.as_deref();
        match dir.read_file(name, st, hook, &mut |bytes| tar.data(bytes)) {
            Ok(()) => {}
            Err(ReadError::Changed) => {
                return Err(DiffError::Upper {
                    path: self.shown(&m.path),
                    message: "changed while being read".into(),
                })
            }
            Err(ReadError::Io(e)) => return Err(self.io(&m.path, e)),
            Err(ReadError::Write(e)) => return Err(DiffError::Output(e)),
        }
        self.tar.pad(m.size).map_err(DiffError::Output)
    }
}

/// The xattrs a layer carries: all but overlayfs's own.
fn visible(xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    xattrs
        .into_iter()
        .filter(|(name, _)| !is_overlay(name))
        .collect()
}
