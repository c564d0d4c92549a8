//! Archive entries to a [`Tree`], with the semantics of extracting the
//! archive (and of `mkfs.erofs --tar`): later entries replace earlier
//! ones, parents that are not listed are created, hard links name earlier
//! entries, and (with `aufs`) OCI whiteouts become overlayfs ones. Shared
//! by the tar front end and the TOC one ([`super::toc`]), so a layer read
//! from its TOC is the tree its tar converts to.

use std::collections::{BTreeMap, HashSet};

use super::pax::{drop_user_xattrs, max_inline_xattrs, Attrs};
use super::stream::shown;
use crate::format::{
    MAX_PATH_DEPTH, NAME_LEN_MAX, OPAQUE_MARKER, OVERLAY_OPAQUE, OVERLAY_ORIGIN, S_IFBLK, S_IFCHR,
    S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, WHITEOUT_PREFIX,
};
use crate::mkfs::{FileData, Node, NodeData, NodeId, Tree};

/// What an entry holds, whatever archive described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file and where its data is.
    File(FileData),
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character device (`rdev` as [`crate::format::encode_rdev`] packs it).
    Char(u32),
    /// A block device.
    Block(u32),
    /// A named pipe.
    Fifo,
    /// A hard link to the earlier entry at this path.
    HardLink(Vec<u8>),
}

impl Content {
    /// The file type bits of the node this makes.
    fn file_type(&self) -> u32 {
        match self {
            Content::Symlink(_) => S_IFLNK,
            Content::Char(_) => S_IFCHR,
            Content::Block(_) => S_IFBLK,
            Content::Dir => S_IFDIR,
            Content::Fifo => S_IFIFO,
            Content::File(_) | Content::HardLink(_) => S_IFREG,
        }
    }
}

/// The tree being built from an archive's entries.
pub struct TreeBuilder {
    tree: Tree,
    /// Directories no entry has described (yet): they get the implied mtime.
    implied: HashSet<NodeId>,
    newest: i64,
    aufs: bool,
    implied_mtime: Option<i64>,
}

impl TreeBuilder {
    /// An empty tree; `aufs` turns OCI whiteouts into overlayfs ones;
    /// `implied_mtime` is the mtime of directories no entry lists (`None`:
    /// the newest mtime of the entries).
    pub fn new(aufs: bool, implied_mtime: Option<i64>) -> Self {
        Self {
            tree: Tree::new(0o777, 0, 0, 0),
            implied: HashSet::from([Tree::ROOT]),
            newest: i64::MIN,
            aufs,
            implied_mtime,
        }
    }

    /// Whether an entry at `path` is an OCI whiteout or opaque marker that
    /// [`Self::add`] turns into an overlayfs one (its data is not needed).
    pub fn is_whiteout(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&b| b == b'/').find(|p| !p.is_empty());
        self.aufs && name.is_some_and(|n| n == OPAQUE_MARKER || n.starts_with(WHITEOUT_PREFIX))
    }

    /// Adds the entry at `path` (as the archive spells it); the error says
    /// what is wrong with it.
    pub fn add(&mut self, path: &[u8], content: Content, attrs: Attrs) -> Result<(), String> {
        self.newest = self.newest.max(attrs.mtime);
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            // The root itself ("./").
            if content != Content::Dir {
                return Err("the root of the archive is not a directory".into());
            }
            set_attrs(self.tree.node_mut(Tree::ROOT), attrs);
            self.implied.remove(&Tree::ROOT);
            return Ok(());
        };
        let parent = make_parents(&mut self.tree, parents, &mut self.implied)?;
        if self.aufs && self.whiteout(parent, name, &attrs)? {
            return Ok(());
        }
        let data = match content {
            Content::File(data) => NodeData::File(data),
            Content::Dir => NodeData::Dir(BTreeMap::new()),
            Content::Symlink(ref target) => {
                if target.is_empty() {
                    return Err("link without a target".into());
                }
                if target.len() >= 4096 {
                    return Err(format!("symbolic link target of {} bytes", target.len()));
                }
                NodeData::Symlink(target.clone())
            }
            Content::Char(rdev) | Content::Block(rdev) => NodeData::Device(rdev),
            Content::Fifo => NodeData::Special,
            Content::HardLink(ref target) => {
                if target.is_empty() {
                    return Err("link without a target".into());
                }
                return hard_link(&mut self.tree, parent, name.to_vec(), target);
            }
        };
        self.place(
            path,
            parent,
            name.to_vec(),
            content.file_type(),
            data,
            attrs,
        )
    }

    /// The tree, implied directories given their mtime.
    pub fn finish(mut self) -> Tree {
        let implied_mtime = self.implied_mtime.unwrap_or(if self.newest == i64::MIN {
            0
        } else {
            self.newest
        });
        for id in self.implied {
            self.tree.node_mut(id).mtime = implied_mtime;
        }
        self.tree
    }

    /// Handles `name` as an OCI whiteout or opaque marker; whether it was one.
    fn whiteout(&mut self, parent: NodeId, name: &[u8], attrs: &Attrs) -> Result<bool, String> {
        if name == OPAQUE_MARKER {
            self.tree
                .node_mut(parent)
                .xattrs
                .insert(OVERLAY_OPAQUE.to_vec(), b"y".to_vec());
            return Ok(true);
        }
        let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        // As containerd: `.wh.`, `.wh..` and `.wh...` would hide nothing, the
        // directory itself or its parent; refused ("invalid whiteout name").
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(format!(
                "invalid whiteout name '{}' (it names no entry of its directory)",
                shown(name)
            ));
        }
        // As mkfs.erofs: a 0:0 character device with no permissions,
        // and the directory marked so overlayfs does not show it as is.
        let whiteout = self.tree.add(Node {
            mode: S_IFCHR,
            uid: attrs.uid,
            gid: attrs.gid,
            mtime: attrs.mtime,
            mtime_nsec: attrs.mtime_nsec,
            xattrs: BTreeMap::new(),
            data: NodeData::Device(0),
        });
        self.tree.link(parent, hidden.to_vec(), whiteout);
        self.tree
            .node_mut(parent)
            .xattrs
            .entry(OVERLAY_ORIGIN.to_vec())
            .or_default();
        Ok(true)
    }

    /// Puts a node of type `file_type` at `name` in `parent`.
    fn place(
        &mut self,
        path: &[u8],
        parent: NodeId,
        name: Vec<u8>,
        file_type: u32,
        data: NodeData,
        attrs: Attrs,
    ) -> Result<(), String> {
        let mut attrs = Attrs {
            mode: file_type | (attrs.mode & !S_IFMT),
            ..attrs
        };
        if !matches!(data, NodeData::File(_) | NodeData::Dir(_)) {
            drop_user_xattrs(&mut attrs.xattrs, &shown(path));
        }
        if attrs.xattr_size() > max_inline_xattrs() {
            return Err(format!(
                "{} bytes of xattrs (an inode holds at most {})",
                attrs.xattr_size(),
                max_inline_xattrs()
            ));
        }
        match self.tree.child(parent, &name) {
            // A directory listed again (or after its content): new
            // attributes, same entries.
            Some(existing)
                if self.tree.node(existing).is_dir() && matches!(data, NodeData::Dir(_)) =>
            {
                set_attrs(self.tree.node_mut(existing), attrs);
                self.implied.remove(&existing);
            }
            _ => {
                let node = self.tree.add(Node {
                    mode: attrs.mode,
                    uid: attrs.uid,
                    gid: attrs.gid,
                    mtime: attrs.mtime,
                    mtime_nsec: attrs.mtime_nsec,
                    xattrs: attrs.xattrs,
                    data,
                });
                self.tree.link(parent, name, node);
            }
        }
        Ok(())
    }
}

/// A path's components: empty and `.` ones dropped, a leading `/` ignored;
/// `..` is refused (it could point outside the tree), and so are paths
/// deeper than [`MAX_PATH_DEPTH`], which no reader of the image would follow.
pub(super) fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        if parts.len() == MAX_PATH_DEPTH && !matches!(part, b"" | b".") {
            return Err(format!(
                "a path more than {MAX_PATH_DEPTH} levels deep (readers refuse deeper trees)"
            ));
        }
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(
                    "a '..' component in the path (entries must stay inside the layer)".into(),
                )
            }
            _ if part.len() > NAME_LEN_MAX => {
                return Err(format!(
                    "a path component of {} bytes (at most {NAME_LEN_MAX})",
                    part.len()
                ))
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// The directory `parents` names, created (as `mkfs.erofs` does: mode 0755
/// plus the parent's group/other write bits, the parent's owner) where the
/// tar does not list it.
fn make_parents(
    tree: &mut Tree,
    parents: &[&[u8]],
    implied: &mut HashSet<NodeId>,
) -> Result<NodeId, String> {
    let mut dir = Tree::ROOT;
    for &part in parents {
        dir = match tree.child(dir, part) {
            Some(child) if tree.node(child).is_dir() => child,
            Some(_) => return Err(format!("'{}' in its path is not a directory", shown(part))),
            None => {
                let parent = tree.node(dir);
                let node = Node {
                    mode: S_IFDIR | 0o755 | (parent.mode & 0o022),
                    uid: parent.uid,
                    gid: parent.gid,
                    mtime: parent.mtime,
                    mtime_nsec: parent.mtime_nsec,
                    xattrs: BTreeMap::new(),
                    data: NodeData::Dir(BTreeMap::new()),
                };
                let id = tree.add(node);
                tree.link(dir, part.to_vec(), id);
                implied.insert(id);
                id
            }
        };
    }
    Ok(dir)
}

/// Links `name` in `parent` to the node an earlier entry made at `target`.
fn hard_link(tree: &mut Tree, parent: NodeId, name: Vec<u8>, target: &[u8]) -> Result<(), String> {
    let shown = shown(target);
    let mut node = Tree::ROOT;
    for part in components(target)? {
        node = tree
            .child(node, part)
            .ok_or_else(|| format!("hard link to '{shown}', which is not an earlier entry"))?;
    }
    if tree.node(node).is_dir() {
        return Err(format!("hard link to '{shown}', a directory"));
    }
    tree.link(parent, name, node);
    Ok(())
}

fn set_attrs(node: &mut Node, attrs: Attrs) {
    node.mode = (node.mode & S_IFMT) | (attrs.mode & !S_IFMT);
    node.uid = attrs.uid;
    node.gid = attrs.gid;
    node.mtime = attrs.mtime;
    node.mtime_nsec = attrs.mtime_nsec;
    // Attributes set by whiteouts and opaque markers stay.
    for (name, value) in attrs.xattrs {
        node.xattrs.insert(name, value);
    }
}
