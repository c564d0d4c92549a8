//! Whole-tree traversal with bounded depth and cycle detection, for tools
//! that visit every file (extract, ls -R, manifests).

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::format::Nid;

use super::{DirPos, Image, Inode};

/// Deepest entry a walk reaches (components below the root); deeper trees
/// are corrupt or hostile. The one limit `convert` applies too.
pub const MAX_WALK_DEPTH: usize = crate::format::MAX_PATH_DEPTH;

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

/// A directory being walked: where its path ends in the walk's path
/// buffer, its inode and depth, and its children not visited yet, by name:
/// paths are built in the one buffer, so a frame costs its children's
/// names and inodes, never a full path per pending child (which made a
/// deep and wide hostile tree cost depth x breadth x path length).
struct Frame {
    path_len: usize,
    inode: Inode,
    depth: usize,
    children: std::vec::IntoIter<(Vec<u8>, Inode)>,
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
        let mut path = root.path;
        let mut stack = vec![Frame {
            path_len: path.len(),
            children: self.children(&root.inode, &path, &mut seen)?.into_iter(),
            inode: root.inode,
            depth: 0,
        }];
        while let Some(frame) = stack.last_mut() {
            path.truncate(frame.path_len);
            match frame.children.next() {
                Some((name, inode)) => {
                    if !path.ends_with(b"/") {
                        path.push(b'/');
                    }
                    path.extend_from_slice(&name);
                    let child = WalkEntry {
                        path: path.clone(),
                        inode,
                        depth: frame.depth + 1,
                    };
                    // Checked for every entry (not only directories), as
                    // fsck and convert do; this also bounds the stack.
                    if child.depth > MAX_WALK_DEPTH {
                        return Err(Error::corrupt(format!(
                            "entries nested deeper than {MAX_WALK_DEPTH} levels at {}",
                            String::from_utf8_lossy(&path[..path.len().min(256)])
                        )));
                    }
                    visitor.visit(&child)?;
                    if child.inode.is_dir() {
                        stack.push(Frame {
                            path_len: path.len(),
                            children: self.children(&child.inode, &path, &mut seen)?.into_iter(),
                            inode: child.inode,
                            depth: child.depth,
                        });
                    }
                }
                None => {
                    if let Some(frame) = stack.pop() {
                        let dir = WalkEntry {
                            path: path.clone(),
                            inode: frame.inode,
                            depth: frame.depth,
                        };
                        visitor.leave_dir(&dir)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries of `dir` (at `path`) other than `.` and `..`, with
    /// their inodes.
    fn children(
        &self,
        dir: &Inode,
        path: &[u8],
        seen: &mut HashSet<Nid>,
    ) -> Result<Vec<(Vec<u8>, Inode)>> {
        let mut out = Vec::new();
        for item in self.read_dir(dir, DirPos::START)? {
            let (entry, _) = item?;
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let inode = self.inode(entry.nid)?;
            if inode.is_dir() && !seen.insert(inode.nid) {
                return Err(Error::corrupt(format!(
                    "directory {}/{} (inode {}) is reached twice: the tree has a cycle",
                    String::from_utf8_lossy(path).trim_end_matches('/'),
                    String::from_utf8_lossy(&entry.name),
                    inode.nid
                )));
            }
            out.push((entry.name, inode));
        }
        Ok(out)
    }
}
