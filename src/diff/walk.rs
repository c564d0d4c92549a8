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
use super::upper::{ReadError, TreeDir};
use super::{DiffError, DiffOptions, OverlayXattrs};
use crate::format::{OPAQUE_MARKER, TRUSTED_OVERLAY, USER_OVERLAY, WHITEOUT_PREFIX};
use crate::overlay::Stack;
use crate::view::{Ino, View, ROOT};

/// Deepest directory nesting walked (as convert's tree bound).
pub const MAX_DEPTH: usize = 512;

/// A multiply linked inode of the upper tree.
pub struct Linked {
    /// Its first path written.
    first: Vec<u8>,
    /// Its names found so far.
    seen: u64,
    /// Its link count and owner, as listed.
    nlink: u64,
    uid: u32,
}

/// A directory found in the upper tree, as [`Walker::directory`] takes it.
struct FoundDir<'a> {
    /// Its path in the layer (no trailing `/`).
    path: Vec<u8>,
    /// Its status as listed.
    st: &'a FileStat,
    /// The xattrs the layer carries.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether overlayfs marks it opaque.
    opaque: bool,
    /// The merged lower entry of the same name, if any.
    below: Option<Ino>,
}

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
    /// Each multiply linked inode met, by (dev, ino).
    pub links: HashMap<(u64, u64), Linked>,
    /// UPPER's own status: its device (no mount point is crossed) and
    /// owner (whose hard links to others' files are refused).
    pub root: FileStat,
    /// Unchanged directories being walked, not written yet: written as
    /// parents before the first member below them.
    pub pending: Vec<Member>,
}

/// Whether `st` is an overlayfs whiteout (a 0:0 character device).
fn is_whiteout(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits() && st.st_rdev == 0
}

/// Whether `name` is overlayfs's own (never carried into the layer).
fn is_overlay(name: &[u8]) -> bool {
    name.starts_with(TRUSTED_OVERLAY) || name.starts_with(USER_OVERLAY)
}

/// The prefix of overlayfs's markers in namespace `ns`.
fn marker_prefix(ns: OverlayXattrs) -> &'static [u8] {
    match ns {
        OverlayXattrs::Trusted => TRUSTED_OVERLAY,
        OverlayXattrs::User => USER_OVERLAY,
    }
}

/// The overlayfs feature an xattr of namespace `ns` says an entry uses
/// that a layer cannot express, if any.
fn refused(ns: OverlayXattrs, name: &[u8]) -> Option<&'static str> {
    match name.strip_prefix(marker_prefix(ns))? {
        b"redirect" => Some("redirect_dir"),
        b"metacopy" => Some("metacopy"),
        _ => None,
    }
}

/// Whether the xattrs mark an opaque directory (in namespace `ns` only).
fn is_opaque(ns: OverlayXattrs, xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    xattrs.iter().any(|(name, value)| {
        name.strip_prefix(marker_prefix(ns)) == Some(b"opaque".as_slice()) && value == b"y"
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

    /// Writes `m`, after the pending parents. Refuses what the reader
    /// would not take back: an xattr name with `=`, or a PAX header over
    /// convert's `MAX_EXTENSION_SIZE`.
    fn write(&mut self, m: &Member) -> Result<(), DiffError> {
        if let Some((name, _)) = m.xattrs.iter().find(|(name, _)| name.contains(&b'=')) {
            return Err(DiffError::Upper {
                path: self.shown(m.path.strip_prefix(b"./").unwrap_or(&m.path)),
                message: format!(
                    "xattr name {:?} contains '=' (a PAX record cannot carry it)",
                    String::from_utf8_lossy(name)
                ),
            });
        }
        let size = super::tarw::pax_size(m) as u64;
        if size > crate::convert::MAX_EXTENSION_SIZE {
            return Err(DiffError::Upper {
                path: self.shown(m.path.strip_prefix(b"./").unwrap_or(&m.path)),
                message: format!(
                    "path and xattrs need a PAX header of {size} bytes (at most {})",
                    crate::convert::MAX_EXTENSION_SIZE
                ),
            });
        }
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
    pub fn root(&mut self, dir: &TreeDir, st: &FileStat) -> Result<(), DiffError> {
        let xattrs = dir.xattrs(OsStr::new(".")).map_err(|e| self.io(b"", e))?;
        self.check_refused(b"", &xattrs)?;
        let kept = visible(xattrs);
        let changed = !self.same_dir(ROOT, st, &kept)?;
        let mut m = self.member(b"./".to_vec(), Kind::Dir, st);
        m.xattrs = kept;
        self.with_dir(m, changed, |w| w.dir(dir, b"", Some(ROOT), 0))
    }

    /// After the walk: refuses, when run as root, a file owned by someone
    /// other than UPPER's owner with more links than names in UPPER (+1
    /// for overlayfs's index): a link to a file outside UPPER (e.g. a
    /// host's /etc/shadow hard linked in by a container) would be copied
    /// into the layer with root's rights.
    pub fn check_links(&self, as_root: bool) -> Result<(), DiffError> {
        if !as_root {
            return Ok(());
        }
        let mut outside: Vec<&Linked> = self
            .links
            .values()
            .filter(|l| l.uid != self.root.st_uid && l.nlink > l.seen + 1)
            .collect();
        outside.sort_by(|a, b| a.first.cmp(&b.first));
        match outside.first() {
            Some(l) => Err(DiffError::Upper {
                path: self.shown(&l.first),
                message: format!(
                    "{} links but {} names in UPPER, owned by uid {} (not UPPER's owner): \
                     refused as a possible link to a file outside UPPER",
                    l.nlink, l.seen, l.uid
                ),
            }),
            None => Ok(()),
        }
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
            if !carried(&name) {
                continue;
            }
            if let Some(value) = self.lower.xattr(ino, &name)? {
                lower.push((name, value));
            }
        }
        lower.sort();
        Ok(lower == xattrs)
    }

    fn check_refused(&self, path: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DiffError> {
        match xattrs
            .iter()
            .find_map(|(name, _)| refused(self.options.overlay_xattrs, name))
        {
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
        dir: &TreeDir,
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
        let mut listed = Vec::new();
        for name in dir.names().map_err(|e| self.io(path, e))? {
            let child = [path, name.as_bytes()].concat();
            if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                return Err(DiffError::Upper {
                    path: self.shown(&child),
                    message: "a name starting with .wh. (a layer would read it as a whiteout)"
                        .into(),
                });
            }
            let st = dir.stat(&name).map_err(|e| self.io(&child, e))?;
            if st.st_dev != self.root.st_dev {
                return Err(DiffError::Upper {
                    path: self.shown(&child),
                    message: "on another filesystem (a mount point in UPPER; not crossed)".into(),
                });
            }
            listed.push((name, child, st));
        }
        // Whiteouts first (the image spec orders a directory's whiteouts
        // before its other entries), each group in name order.
        listed.sort_by_key(|(_, _, st)| !is_whiteout(st));
        for (name, child, st) in listed {
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
        dir: &TreeDir,
        name: &OsStr,
        path: Vec<u8>,
        st: &FileStat,
        below: Option<Ino>,
        depth: usize,
    ) -> Result<(), DiffError> {
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if is_whiteout(st) {
            let at = path.len() - name.len();
            let whiteout = [&path[..at], WHITEOUT_PREFIX, name.as_bytes()].concat();
            let mut m = self.member(whiteout, Kind::File, st);
            (m.mode, m.uid, m.gid) = (0, 0, 0);
            return self.write(&m);
        }
        let xattrs = dir.xattrs(name).map_err(|e| self.io(&path, e))?;
        self.check_refused(&path, &xattrs)?;
        let opaque = kind == SFlag::S_IFDIR && is_opaque(self.options.overlay_xattrs, &xattrs);
        let kept = visible(xattrs);
        match kind {
            SFlag::S_IFDIR => {
                let found = FoundDir {
                    path,
                    st,
                    xattrs: kept,
                    opaque,
                    below,
                };
                self.directory(dir, name, found, depth)
            }
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
    fn directory(
        &mut self,
        dir: &TreeDir,
        name: &OsStr,
        found: FoundDir<'_>,
        depth: usize,
    ) -> Result<(), DiffError> {
        let FoundDir {
            mut path,
            st,
            xattrs,
            opaque,
            below,
        } = found;
        let sub = dir.open_dir(name).map_err(|e| self.io(&path, e))?;
        let opened = sub.stat_self().map_err(|e| self.io(&path, e))?;
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) {
            return Err(DiffError::Upper {
                path: self.shown(&path),
                message: "changed while being read (not the directory listed)".into(),
            });
        }
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
        dir: &TreeDir,
        name: &OsStr,
        path: Vec<u8>,
        st: &FileStat,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), DiffError> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(linked) = self.links.get_mut(&key) {
                linked.seen += 1;
                let first = linked.first.clone();
                let mut m = self.member(path, Kind::Link, st);
                m.link = first;
                return self.write(&m);
            }
            let linked = Linked {
                first: path.clone(),
                seen: 1,
                nlink: st.st_nlink,
                uid: st.st_uid,
            };
            self.links.insert(key, linked);
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

/// The xattrs a layer carries, as containerd (security.capability only)
/// and containers/storage (plus user.*) do: `security.capability` and
/// `user.*` but overlayfs's `user.overlay.*`. Others are the host's
/// (security.selinux labels, trusted.*, posix ACLs naming host ids).
fn visible(xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    xattrs
        .into_iter()
        .filter(|(name, _)| carried(name))
        .collect()
}

/// Whether xattr `name` is one a layer carries (see [`visible`]).
fn carried(name: &[u8]) -> bool {
    name == b"security.capability" || (name.starts_with(b"user.") && !is_overlay(name))
}
