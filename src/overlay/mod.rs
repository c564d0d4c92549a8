//! A merged view of a stack of layers, as overlayfs would show it.
//!
//! Merging is lazy: a directory is merged the first time it is looked in,
//! and only it, so mounting a stack of many layers costs nothing up front.
//! Merged listings are kept in an LRU bounded by their total entry count
//! and rebuilt when needed again; inode numbers are handed out once per
//! topmost entry (layer, nid) and stay stable for the life of the stack, so
//! hard links within a layer share one.

mod merge;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use lru::LruCache;

pub use merge::MAX_MERGE_ENTRIES;

use crate::device::Access;
use crate::error::{Error, Result};
use crate::format::{FileType, Nid};
use crate::reader::Image;
use crate::view::{Attr, DirItem, FsStats, Ino, View, ROOT};

/// Most layers a stack may have (overlayfs itself takes 500).
pub const MAX_LAYERS: usize = 500;

/// Memory for merged listings kept, in bytes as [`Listing::cost`] counts
/// them; beyond it the least recently used are dropped (and rebuilt on
/// their next use). The listing in use is kept whatever its size, which
/// [`MAX_MERGE_ENTRIES`] bounds.
const LISTING_BUDGET: usize = 64 << 20;

/// What a listing entry costs besides its name: the entry itself and the
/// sorted vector's share.
const ENTRY_COST: usize = std::mem::size_of::<Entry>() + 16;

/// Readdir positions: 0 starts, 1 resumes after `.`, 2 after `..`, and
/// 3 + i after merged entry i.
const FIRST_ENTRY_POS: u64 = 2;

/// Whether `name` is one of overlayfs's own xattrs, which the merge reads
/// and the merged tree does not show (as overlayfs keeps its own to itself;
/// `user.overlay.*` too, since the merge honours those markers).
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(crate::format::TRUSTED_OVERLAY)
        || name.starts_with(crate::format::USER_OVERLAY)
}

/// An entry of one layer: the layer's index (0 at the bottom) and its nid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Index of the layer, 0 for the bottom one.
    pub layer: usize,
    /// Node id in that layer.
    pub nid: Nid,
}

/// One inode of the merged tree.
#[derive(Debug, Clone)]
struct Node {
    /// The topmost entry: its attributes, data and xattrs are the inode's.
    top: Origin,
    /// The directory it was found in (the root is its own parent).
    parent: Ino,
    /// Directories only: the lower directories merged under `top`.
    lower: Arc<[Origin]>,
}

/// Every inode handed out so far.
#[derive(Default)]
struct Table {
    /// Inode `ino` is `nodes[ino - 1]`.
    nodes: Vec<Node>,
    by_origin: HashMap<Origin, Ino>,
}

/// One entry of a merged listing.
struct Entry {
    name: Box<[u8]>,
    kind: FileType,
    ino: Ino,
}

/// One merged directory listing.
struct Listing {
    /// Sorted by name.
    entries: Vec<Entry>,
    /// Its memory, as the budget counts it.
    cost: usize,
}

/// A stack of layers merged with overlayfs semantics.
pub struct Stack {
    /// Bottom first.
    layers: Vec<Arc<Image>>,
    table: RwLock<Table>,
    listings: Mutex<Listings>,
    block_size: u32,
}

struct Listings {
    lru: LruCache<Ino, Arc<Listing>>,
    /// Sum of the kept listings' costs.
    cost: usize,
}

impl Stack {
    /// Merges `layers`, given bottom first (the last one is on top).
    pub fn new(layers: Vec<Arc<Image>>) -> Result<Self> {
        if layers.is_empty() || layers.len() > MAX_LAYERS {
            return Err(Error::Invalid(format!(
                "a stack needs 1 to {MAX_LAYERS} layers, not {}",
                layers.len()
            )));
        }
        let block_size = layers[layers.len() - 1].block_size() as u32;
        let stack = Self {
            layers,
            table: RwLock::new(Table::default()),
            listings: Mutex::new(Listings {
                lru: LruCache::unbounded(),
                cost: 0,
            }),
            block_size,
        };
        // The root merges every layer's root: as in overlayfs, a layer's
        // root is never opaque (containers' engines ignore an opaque
        // marker there too).
        let mut roots = Vec::new();
        for layer in (0..stack.layers.len()).rev() {
            let root = Origin {
                layer,
                nid: stack.layers[layer].superblock().root_nid,
            };
            if !stack.layers[layer].root()?.is_dir() {
                return Err(Error::corrupt(format!(
                    "layer {layer}: the root is not a directory"
                )));
            }
            roots.push(root);
        }
        let top = roots.remove(0);
        stack.intern(top, ROOT, roots.into());
        Ok(stack)
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[Arc<Image>] {
        &self.layers
    }

    pub(crate) fn layer(&self, index: usize) -> &Image {
        &self.layers[index]
    }

    /// The inode number of `top`, creating its node if it is new.
    fn intern(&self, top: Origin, parent: Ino, lower: Arc<[Origin]>) -> Ino {
        let read = self.table.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(&ino) = read.by_origin.get(&top) {
            return ino;
        }
        drop(read);
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&ino) = table.by_origin.get(&top) {
            return ino;
        }
        table.nodes.push(Node { top, parent, lower });
        let ino = table.nodes.len() as Ino;
        table.by_origin.insert(top, ino);
        ino
    }

    fn node(&self, ino: Ino) -> Result<Node> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        ino.checked_sub(1)
            .and_then(|i| table.nodes.get(i as usize))
            .cloned()
            .ok_or(Error::NotFound)
    }

    fn attr_of(&self, ino: Ino, node: &Node) -> Result<Attr> {
        let inode = self.layer(node.top.layer).inode(node.top.nid)?;
        let mut attr = Attr::of_inode(&inode, ino);
        if !node.lower.is_empty() {
            // As overlayfs: counting subdirectories over every layer is not
            // worth it, and 1 tells find and friends not to rely on it.
            attr.nlink = 1;
        }
        Ok(attr)
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Listings> {
        self.listings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The merged listing of directory `ino` (built if not kept).
    fn listing(&self, ino: Ino) -> Result<Arc<Listing>> {
        if let Some(listing) = self.kept().lru.get(&ino) {
            return Ok(Arc::clone(listing));
        }
        let node = self.node(ino)?;
        let mut contributors = vec![node.top];
        contributors.extend_from_slice(&node.lower);
        let merged = self.merge_dir(&contributors)?;
        let mut cost = 0;
        let entries: Vec<Entry> = merged
            .into_iter()
            .map(|m| {
                let lower: Arc<[Origin]> = if m.kind == FileType::Directory {
                    m.lower.into()
                } else {
                    Arc::new([])
                };
                cost += ENTRY_COST + m.name.len();
                Entry {
                    ino: self.intern(m.top, ino, lower),
                    kind: m.kind,
                    name: m.name.into_boxed_slice(),
                }
            })
            .collect();
        let listing = Arc::new(Listing { entries, cost });
        let mut kept = self.kept();
        if let Some(old) = kept.lru.put(ino, Arc::clone(&listing)) {
            kept.cost -= old.cost;
        }
        kept.cost += listing.cost;
        while kept.cost > LISTING_BUDGET && kept.lru.len() > 1 {
            if let Some((_, old)) = kept.lru.pop_lru() {
                kept.cost -= old.cost;
            }
        }
        Ok(listing)
    }

    fn require_dir(&self, node: &Node) -> Result<()> {
        let inode = self.layer(node.top.layer).inode(node.top.nid)?;
        if inode.is_dir() {
            Ok(())
        } else {
            Err(Error::NotDir)
        }
    }
}

impl View for Stack {
    fn attr(&self, ino: Ino) -> Result<Attr> {
        self.attr_of(ino, &self.node(ino)?)
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>> {
        self.require_dir(&self.node(parent)?)?;
        let listing = self.listing(parent)?;
        let Ok(i) = listing
            .entries
            .binary_search_by(|e| e.name.as_ref().cmp(name))
        else {
            return Ok(None);
        };
        Ok(Some(self.attr(listing.entries[i].ino)?))
    }

    fn read_dir(
        &self,
        ino: Ino,
        pos: u64,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        let node = self.node(ino)?;
        self.require_dir(&node)?;
        let listing = self.listing(ino)?;
        for (i, (name, this)) in [(&b"."[..], ino), (&b".."[..], node.parent)]
            .into_iter()
            .enumerate()
        {
            if pos <= i as u64 {
                let item = DirItem {
                    ino: this,
                    name,
                    kind: FileType::Directory,
                    next: i as u64 + 1,
                };
                if sink(item) {
                    return Ok(());
                }
            }
        }
        let skip = pos.saturating_sub(FIRST_ENTRY_POS);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        for (i, e) in listing.entries.iter().enumerate().skip(skip) {
            let item = DirItem {
                ino: e.ino,
                name: &e.name,
                kind: e.kind,
                next: FIRST_ENTRY_POS + i as u64 + 1,
            };
            if sink(item) {
                break;
            }
        }
        Ok(())
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let image = self.layer(node.top.layer);
        image.read_link(&image.inode(node.top.nid)?)
    }

    fn read<'a>(
        &'a self,
        ino: Ino,
        offset: u64,
        len: u64,
        access: Access,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let node = self.node(ino)?;
        let image = self.layer(node.top.layer);
        crate::view::read_file(image, node.top.nid, offset, len, access, scratch)
    }

    fn prefetch(&self, ino: Ino, offset: u64, len: u64) {
        if let Ok(node) = self.node(ino) {
            let image = self.layer(node.top.layer);
            crate::view::prefetch_file(image, node.top.nid, offset, len);
        }
    }

    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        if is_overlay_xattr(name) {
            return Ok(None);
        }
        let node = self.node(ino)?;
        let image = self.layer(node.top.layer);
        image.xattr(&image.inode(node.top.nid)?, name)
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let node = self.node(ino)?;
        let image = self.layer(node.top.layer);
        let list = image.xattrs(&image.inode(node.top.nid)?)?;
        Ok(list
            .into_iter()
            .map(|x| x.name)
            .filter(|name| !is_overlay_xattr(name))
            .collect())
    }

    fn stats(&self) -> FsStats {
        crate::view::total_stats(self.layers.iter().map(|i| &**i), self.block_size)
    }

    fn release_mapped(&self) {
        for image in &self.layers {
            image.release_mapped();
        }
    }

    fn start_serving(&self) {
        for image in &self.layers {
            image.start_verify_ahead();
        }
    }

    fn verity_stats(&self) -> Vec<(std::path::PathBuf, crate::verity::VerityStats)> {
        self.layers.iter().flat_map(|i| i.verity_stats()).collect()
    }
}
