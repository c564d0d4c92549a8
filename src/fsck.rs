//! A whole-image check, as erofs-utils' `fsck.erofs` does: every directory
//! listed and each of its names looked up again, every inode parsed, every
//! xattr listed and read back by name, every symlink and every byte of file
//! data read (holes skipped, not read).
//!
//! Problems are collected rather than fatal, so one broken file does not hide
//! the next, and the work is bounded whatever the image claims: each
//! directory is entered once and each inode checked once (hard links share
//! the check), nesting stops at [`MAX_WALK_DEPTH`], and [`FsckLimits`] caps
//! how many entries are visited and how many bytes are read.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::format::Nid;
use crate::reader::{DirPos, FileKind, Image, Inode, MAX_WALK_DEPTH};

/// How much work a check may do.
#[derive(Debug, Clone, Copy)]
pub struct FsckLimits {
    /// Directory entries visited at most.
    pub max_entries: u64,
    /// File bytes read at most, per file.
    pub max_file_bytes: u64,
    /// File bytes read at most, in all.
    pub max_total_bytes: u64,
    /// Problems recorded at most (the rest are only counted).
    pub max_problems: usize,
}

impl Default for FsckLimits {
    /// No limit on entries and bytes.
    fn default() -> Self {
        Self {
            max_entries: u64::MAX,
            max_file_bytes: u64::MAX,
            max_total_bytes: u64::MAX,
            max_problems: 1000,
        }
    }
}

impl FsckLimits {
    /// Limits no real image reaches but that keep a hostile one linear in
    /// its size: every directory entry takes at least
    /// [`DIRENT_SIZE`](crate::format::DIRENT_SIZE) bytes of the image, so listing more entries than that means directories share
    /// their blocks (each would be listed again and again). File bytes are
    /// not limited: deduplicated or compressed data may legitimately be
    /// many times the image's size, and each inode is read only once.
    pub fn for_image(image: &Image) -> Self {
        let devices = image.devices();
        let bytes = devices.extra.iter().fold(devices.primary.len(), |sum, d| {
            sum.saturating_add(d.backing.len())
        });
        Self {
            max_entries: bytes / crate::format::DIRENT_SIZE as u64 + 1024,
            ..Self::default()
        }
    }
}

/// One problem found.
#[derive(Debug)]
pub struct FsckProblem {
    /// Path of the entry from the root (lossy UTF-8).
    pub path: String,
    /// What was being done: `readdir`, `lookup`, `inode`, `read`,
    /// `readlink`, `xattr` or `tree`.
    pub operation: &'static str,
    /// What went wrong.
    pub error: Error,
}

impl std::fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.path, self.operation, self.error)
    }
}

/// What a check found.
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Directory entries visited (the root included, `.` and `..` not).
    pub entries: u64,
    /// Distinct inodes checked.
    pub inodes: u64,
    /// File and symlink bytes read.
    pub bytes_read: u64,
    /// Problems, the first [`FsckLimits::max_problems`] of them.
    pub problems: Vec<FsckProblem>,
    /// Problems found in all, recorded or not.
    pub problem_count: u64,
    /// A limit stopped the check before it had seen everything.
    pub limited: bool,
}

impl FsckReport {
    /// Whether the image checked clean (and completely).
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0 && !self.limited
    }
}

/// Reads a file this many bytes at a time.
const READ_CHUNK: usize = 1 << 20;

struct Checker<'a> {
    image: &'a Image,
    limits: FsckLimits,
    report: FsckReport,
    checked: HashSet<Nid>,
    /// Every directory entered, as (parent's index, name): paths are
    /// rebuilt only for problems, so a deep tree costs no quadratic memory.
    names: Vec<(usize, Vec<u8>)>,
    buf: Vec<u8>,
}

/// A directory still to list: its inode, its index in `names`, its depth.
type Pending = (Inode, usize, usize);

/// Checks everything in `image`, within `limits`.
pub fn fsck(image: &Image, limits: &FsckLimits) -> FsckReport {
    let mut checker = Checker {
        image,
        limits: *limits,
        report: FsckReport::default(),
        checked: HashSet::new(),
        names: Vec::new(),
        buf: Vec::new(),
    };
    checker.run();
    checker.report
}

impl Checker<'_> {
    /// Records a problem of the entry `name` in the directory `dir` (an
    /// index in `names`; `None` and an empty name for the root).
    fn problem(&mut self, dir: Option<usize>, name: &[u8], operation: &'static str, error: Error) {
        self.report.problem_count += 1;
        if self.report.problems.len() < self.limits.max_problems {
            let path = self.path(dir, name);
            self.report.problems.push(FsckProblem {
                path,
                operation,
                error,
            });
        }
    }

    /// The path of `name` in the directory `dir`, from the root.
    fn path(&self, mut dir: Option<usize>, name: &[u8]) -> String {
        let mut parts = vec![name];
        while let Some(i) = dir {
            let (parent, name) = &self.names[i];
            parts.push(name);
            // The root (index 0) is its own parent.
            dir = (*parent != i).then_some(*parent);
        }
        let mut path = Vec::new();
        for part in parts.iter().rev().filter(|p| !p.is_empty()) {
            path.push(b'/');
            path.extend_from_slice(part);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        String::from_utf8_lossy(&path).into_owned()
    }

    fn run(&mut self) {
        let root = match self.image.root() {
            Ok(root) => root,
            Err(e) => return self.problem(None, b"", "inode", e),
        };
        // Directories still to list: an explicit stack, so nesting costs
        // no recursion.
        let mut pending: Vec<Pending> = Vec::new();
        self.report.entries = 1;
        if self.check_inode(&root, None, b"") {
            self.names.push((0, Vec::new()));
            pending.push((root, 0, 0));
        }
        while let Some((dir, index, depth)) = pending.pop() {
            self.list_dir(&dir, index, depth, &mut pending);
        }
    }

    /// Checks an inode's xattrs and contents once; true when it is a
    /// directory to enter.
    fn check_inode(&mut self, inode: &Inode, dir: Option<usize>, name: &[u8]) -> bool {
        // Each inode once: hard links share the check, and a directory
        // reached again is a cycle or a hard-linked directory.
        if !self.checked.insert(inode.nid) {
            if inode.is_dir() {
                let e = Error::corrupt(format!(
                    "directory (inode {}) is reached twice: the tree has a cycle or a hard-linked directory",
                    inode.nid
                ));
                self.problem(dir, name, "tree", e);
            }
            return false;
        }
        self.report.inodes += 1;
        if let Err(e) = self.check_xattrs(inode) {
            self.problem(dir, name, "xattr", e);
        }
        match inode.kind {
            FileKind::Regular => {
                if let Err(e) = self.read_file(inode) {
                    self.problem(dir, name, "read", e);
                }
            }
            FileKind::Symlink => match self.image.read_link(inode) {
                Ok(target) => self.report.bytes_read += target.len() as u64,
                Err(e) => self.problem(dir, name, "readlink", e),
            },
            FileKind::Directory => return true,
            _ => {}
        }
        false
    }

    /// Lists every xattr and reads each back by name.
    fn check_xattrs(&self, inode: &Inode) -> Result<()> {
        for xattr in self.image.xattrs(inode)? {
            let value = self.image.xattr(inode, &xattr.name)?;
            if value.as_deref() != Some(xattr.value.as_slice()) {
                return Err(Error::corrupt(format!(
                    "xattr {:?} reads back differently by name than in its listing",
                    String::from_utf8_lossy(&xattr.name)
                )));
            }
        }
        Ok(())
    }

    /// Reads every stored byte of a regular file, skipping holes.
    fn read_file(&mut self, inode: &Inode) -> Result<()> {
        let mut offset = 0u64;
        let mut budget = self.limits.max_file_bytes;
        while offset < inode.size {
            let hole = self.image.hole_len(inode, offset)?;
            if hole > 0 {
                offset = offset.saturating_add(hole);
                continue;
            }
            let total_left = self
                .limits
                .max_total_bytes
                .saturating_sub(self.report.bytes_read);
            let want = (inode.size - offset).min(budget).min(total_left);
            if want == 0 {
                self.report.limited = true;
                return Ok(());
            }
            self.buf.resize(want.min(READ_CHUNK as u64) as usize, 0);
            let n = self.image.read_at(inode, offset, &mut self.buf)?;
            if n == 0 {
                return Err(Error::corrupt(format!(
                    "inode {}: no data at offset {offset} of {}",
                    inode.nid, inode.size
                )));
            }
            offset += n as u64;
            budget -= n as u64;
            self.report.bytes_read += n as u64;
        }
        Ok(())
    }

    /// Lists `dir`, looks every name up again, and checks each child.
    fn list_dir(&mut self, dir: &Inode, index: usize, depth: usize, pending: &mut Vec<Pending>) {
        let here = Some(index);
        let entries = match self.image.read_dir(dir, DirPos::START) {
            Ok(entries) => entries,
            Err(e) => return self.problem(here, b"", "readdir", e),
        };
        for item in entries {
            let entry = match item {
                Ok((entry, _)) => entry,
                Err(e) => {
                    self.problem(here, b"", "readdir", e);
                    break;
                }
            };
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            if self.report.entries >= self.limits.max_entries {
                self.report.limited = true;
                return;
            }
            self.report.entries += 1;
            let name = entry.name.as_slice();
            if depth + 1 > MAX_WALK_DEPTH {
                // One problem for the directory, as the walks refuse it.
                let e = Error::corrupt(format!(
                    "entries nested deeper than {MAX_WALK_DEPTH} levels"
                ));
                return self.problem(here, name, "tree", e);
            }
            match self.image.lookup(dir, &entry.name) {
                Ok(Some(found)) if found.nid == entry.nid => {}
                Ok(found) => {
                    let e = Error::corrupt(format!(
                        "readdir lists inode {} but lookup finds {:?}",
                        entry.nid,
                        found.map(|f| f.nid.0)
                    ));
                    self.problem(here, name, "lookup", e);
                }
                Err(e) => self.problem(here, name, "lookup", e),
            }
            let inode = match self.image.inode(entry.nid) {
                Ok(inode) => inode,
                Err(e) => {
                    self.problem(here, name, "inode", e);
                    continue;
                }
            };
            if self.check_inode(&inode, here, name) {
                self.names.push((index, entry.name.clone()));
                pending.push((inode, self.names.len() - 1, depth + 1));
            }
        }
    }
}
