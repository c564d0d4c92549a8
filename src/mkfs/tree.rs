//! The in-memory tree an image is built from: metadata only, file data
//! stays where it was found (the tar, or the image's data area).

use std::collections::BTreeMap;

use crate::format::{FileType, S_IFDIR, S_IFMT};

/// Index of a node in a [`Tree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// Where a regular file's bytes are: `size` bytes at byte `offset` of the
/// data source (the tar in index mode, the image itself in full mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileData {
    /// File size in bytes.
    pub size: u64,
    /// Byte offset of the first byte in the data source.
    pub offset: u64,
}

/// What a node holds besides its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeData {
    /// A directory: names (without `.` and `..`) to nodes, in byte order.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file.
    File(FileData),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character or block device (see the mode), `rdev` as the kernel's
    /// `new_encode_dev` packs it.
    Device(u32),
    /// A named pipe or socket (see the mode).
    Special,
}

/// One inode: attributes and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes, full names to values, in name order.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Contents.
    pub data: NodeData,
}

impl Node {
    /// Whether this node is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.data, NodeData::Dir(_))
    }

    /// The directory-entry type of this node.
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode).unwrap_or(FileType::Unknown)
    }
}

/// A filesystem tree; node 0 is the root directory.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// A tree holding only a root directory with these attributes.
    pub fn new(root_mode: u32, uid: u32, gid: u32, mtime: i64) -> Self {
        Self {
            nodes: vec![Node {
                mode: S_IFDIR | (root_mode & !S_IFMT),
                uid,
                gid,
                mtime,
                mtime_nsec: 0,
                xattrs: BTreeMap::new(),
                data: NodeData::Dir(BTreeMap::new()),
            }],
        }
    }

    /// The root directory.
    pub const ROOT: NodeId = NodeId(0);

    /// Adds a node not yet linked into any directory.
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        NodeId(self.nodes.len() - 1)
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// A node, to change.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0]
    }

    /// The entry `name` of directory `dir`, if any.
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.node(dir).data {
            NodeData::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    /// Links `child` into directory `dir` as `name`, replacing what was
    /// there. Does nothing when `dir` is not a directory.
    pub fn link(&mut self, dir: NodeId, name: Vec<u8>, child: NodeId) {
        if let NodeData::Dir(children) = &mut self.node_mut(dir).data {
            children.insert(name, child);
        }
    }

    /// Removes the entry `name` from directory `dir`.
    pub fn unlink(&mut self, dir: NodeId, name: &[u8]) {
        if let NodeData::Dir(children) = &mut self.node_mut(dir).data {
            children.remove(name);
        }
    }

    /// Every node reachable from the root, each once, in a stable order
    /// (depth first, names in byte order), with the number of directory
    /// entries naming it (its link count, for non-directories).
    pub fn reachable(&self) -> Vec<(NodeId, u32)> {
        let mut order = Vec::new();
        let mut refs = vec![0u32; self.nodes.len()];
        let mut stack = vec![Self::ROOT];
        refs[0] = 1;
        while let Some(id) = stack.pop() {
            order.push(id);
            if let NodeData::Dir(children) = &self.node(id).data {
                // Reversed so that the stack pops them in name order.
                for &child in children.values().rev() {
                    refs[child.0] += 1;
                    // A directory is reachable under one name only (hard
                    // links to directories are refused), other nodes are
                    // visited at their first name.
                    if refs[child.0] == 1 {
                        stack.push(child);
                    }
                }
            }
        }
        order.into_iter().map(|id| (id, refs[id.0])).collect()
    }
}
