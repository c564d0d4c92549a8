//! Whole-tree traversal with bounded depth and cycle detection, for tools
//! that visit every file (extract, ls -R, manifests).

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::format::Nid;

use super::{DirPos, Image, Inode};

/// Deepest directory nesting a walk follows; deeper trees are corrupt or
/// hostile (Linux's PATH_MAX allows at most 2048 levels).
pub const MAX_WALK_DEPTH: usize = 2048;

/// An entry reached by a walk.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Path from the root, `/`-separated, starting with `/` (the root is `/`).
    pub path: Vec<u8>,
    /// The entry's inode.
    pub inode: Inode,
    /// Nesting depth (the root is 0).
    pub depth: usize,
}

/// What a walk calls back.
pub trait WalkVisitor {
    /// Called for every entry, a directory before its children.
    fn visit(&mut self, entry: &WalkEntry) -> Result<()>;

    /// Called for a directory after all its children.
    fn leave_dir(&mut self, _entry: &WalkEntry) -> Result<()> {
        Ok(())
    }
}

impl Image {
    /// Walks the tree below `start` (`path` is its path) depth-first, in
    /// on-disk directory order, without recursion. A directory reached twice
    /// (a cycle or a hard-linked directory) is a corruption error.
    pub fn walk(&self, start: Inode, path: &[u8], visitor: &mut impl WalkVisitor) -> Result<()> {
        let mut seen: HashSet<Nid> = HashSet::new();
        let root = WalkEntry {
            path: path.to_vec(),
            inode: start,
            depth: 0,
        };
        visitor.visit(&root)?;
        if !root.inode.is_dir() {
            return Ok(());
        }
        seen.insert(root.inode.nid);
        // Each frame: the directory and its remaining children.
        let mut stack: Vec<(WalkEntry, std::vec::IntoIter<WalkEntry>)> = Vec::new();
        let children = self.children(&root, &mut seen)?;
        stack.push((root, children.into_iter()));
        while let Some((_, children)) = stack.last_mut() {
            match children.next() {
                Some(child) => {
                    visitor.visit(&child)?;
                    if child.inode.is_dir() {
                        if stack.len() >= MAX_WALK_DEPTH {
                            return Err(Error::corrupt(format!(
                                "directories nested deeper than {MAX_WALK_DEPTH} levels at {}",
                                String::from_utf8_lossy(&child.path)
                            )));
                        }
                        let grandchildren = self.children(&child, &mut seen)?;
                        stack.push((child, grandchildren.into_iter()));
                    }
                }
                None => {
                    if let Some((dir, _)) = stack.pop() {
                        visitor.leave_dir(&dir)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries of `dir` other than `.` and `..`, with their inodes.
    fn children(&self, dir: &WalkEntry, seen: &mut HashSet<Nid>) -> Result<Vec<WalkEntry>> {
        let mut out = Vec::new();
        for item in self.read_dir(&dir.inode, DirPos::START)? {
            let (entry, _) = item?;
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let mut path = dir.path.clone();
            if !path.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            let inode = self.inode(entry.nid)?;
            if inode.is_dir() && !seen.insert(inode.nid) {
                return Err(Error::corrupt(format!(
                    "directory {} (inode {}) is reached twice: the tree has a cycle",
                    String::from_utf8_lossy(&path),
                    inode.nid
                )));
            }
            out.push(WalkEntry {
                path,
                inode,
                depth: dir.depth + 1,
            });
        }
        Ok(out)
    }
}
