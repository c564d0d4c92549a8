//! An additional layer store for containers/storage (podman's
//! `additionallayerstores = ["DIR:ref"]`), served from a directory of
//! EROFS layers (see [`layout`]).
//!
//! containers/storage looks for a pulled layer at
//! `DIR/<base64 image reference>/<layer digest>/` and takes it when `diff/`
//! (the layer's tree), `info` (its description) and `blob` (the blob) are
//! there; the layer's `diff` then becomes an overlayfs lower directory, so
//! the image is neither downloaded nor unpacked. It signals use by creating
//! `<layer>/use` and release by removing the layer directory; as
//! stargz-store does, both are logged and answered ENOENT, which tells it
//! the store handles them (nothing is ever deleted: the store serves every
//! layer it holds to every reference).

pub mod attach;
pub mod gc;
pub mod images;
pub mod indexed;
pub mod layer_kind;
pub mod layout;
pub mod lazy;
pub mod nydus;
pub mod pull;
mod refs;
pub mod toc_layers;
pub mod toc_remote;
mod toc_view;
mod view_load;

use toc_view::LayerBlob;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::device::Access;
use crate::error::{Error, Result};
use crate::format::{FileType, Nid};
use crate::reader::{DirPos, Image, OpenOptions};
use crate::view::{Attr, DirItem, FsStats, Ino, OverlayXattrs, View, ROOT};

/// Most image references whose names are kept (for the `use` and release
/// logs), least recently used evicted first. A reference takes a slot only
/// once a layer the store holds is looked up under it, so junk names never
/// push real ones out; an evicted reference keeps working.
pub const MAX_REFS: usize = 1 << 10;

/// Bit set in the inode number of a reference's directory: the rest is a
/// keyed hash of its name, so looking up a name costs no inode and no slot.
const REF_INO_BIT: u64 = 1 << 62;

/// Most inodes handed out (about 50 bytes each): past it, lookups of new
/// ones fail, so callers cannot make the server's memory grow without
/// bound.
pub const MAX_INODES: usize = 1 << 21;

/// Most layers the store serves.
pub const MAX_LAYERS: usize = 1 << 14;

/// The entries of a layer directory, sorted.
const LAYER_ENTRIES: [&[u8]; 3] = [b"blob", b"diff", b"info"];

/// One served layer.
struct Layer {
    digest: String,
    /// TOC layers: the TOC digest their info gives.
    toc_digest: Option<String>,
    /// A lazy TOC layer (found by its TOC digest only).
    lazy: bool,
    image: Image,
    info: Vec<u8>,
    blob: LayerBlob,
    blob_size: u64,
    mtime: (i64, u32),
}

/// What an inode of the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Root,
    /// `DIR/<ref>`: its inode number (see [`REF_INO_BIT`]).
    Ref(Ino),
    /// `DIR/<ref>/<digest>`.
    Layer {
        r: Ino,
        l: usize,
    },
    /// `.../info` of a layer.
    Info(usize),
    /// `.../blob` of a layer.
    Blob(usize),
    /// An inode of a layer's tree under `.../diff`.
    Diff {
        r: Ino,
        l: usize,
        nid: Nid,
    },
}

struct State {
    /// Inode `ino` is `keys[ino - 1]` (references' directories aside).
    keys: Vec<Key>,
    inos: HashMap<Key, Ino>,
    /// Names of the references under which a layer was found, by inode.
    refs: lru::LruCache<Ino, Vec<u8>>,
    /// Names looked up at the root and not (yet) used for a layer: only
    /// where [`Self::refs`] takes its names from, so junk churns here.
    candidates: lru::LruCache<Ino, Vec<u8>>,
    /// Layers loaded so far: the first `layer_count` of the view's slots.
    layer_count: usize,
    layer_index: HashMap<String, usize>,
}

/// The additional layer store as a [`View`].
pub struct StoreView {
    dir: PathBuf,
    open: OpenOptions,
    overlay_xattrs: OverlayXattrs,
    /// Owner of the store's own directories and files.
    owner: (u32, u32),
    mtime: (i64, u32),
    state: RwLock<State>,
    /// Keyed hash of reference names (random keys: names cannot be chosen
    /// to collide).
    ref_hasher: std::hash::RandomState,
    /// Loaded layers, set once each and never removed, so a read can
    /// borrow a layer's image map for as long as the view lives.
    layers: Box<[OnceLock<Layer>]>,
    /// Lazy TOC layers: the registry side and the fetches in flight.
    toc: toc_view::TocFetches,
}

impl StoreView {
    /// Serves the layers in `dir`, opening each with `open` on first use
    /// and presenting their overlayfs xattrs as `overlay_xattrs` says.
    pub fn new(dir: PathBuf, open: OpenOptions, overlay_xattrs: OverlayXattrs) -> Result<Self> {
        let meta = std::fs::metadata(&dir).map_err(|e| Error::io(&dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(&dir, std::io::Error::from_raw_os_error(20)));
        }
        let slots = NonZeroUsize::new(MAX_REFS).unwrap_or(NonZeroUsize::MIN);
        let mut state = State {
            keys: Vec::new(),
            inos: HashMap::new(),
            refs: lru::LruCache::new(slots),
            candidates: lru::LruCache::new(slots),
            layer_count: 0,
            layer_index: HashMap::new(),
        };
        state.keys.push(Key::Root);
        state.inos.insert(Key::Root, ROOT);
        Ok(Self {
            dir,
            open,
            overlay_xattrs,
            owner: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            state: RwLock::new(state),
            ref_hasher: std::hash::RandomState::new(),
            layers: (0..MAX_LAYERS).map(|_| OnceLock::new()).collect(),
            toc: toc_view::TocFetches::default(),
        })
    }

    /// Fetches TOC layers the store lacks from the registry the looked-up
    /// reference names, as `remote` says (without: never).
    pub fn with_remote(mut self, remote: toc_remote::Remote) -> Self {
        self.toc.remote = Some(remote);
        self
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, ino: Ino) -> Result<Key> {
        if ino & REF_INO_BIT != 0 {
            return Ok(Key::Ref(ino));
        }
        let state = self.read_state();
        ino.checked_sub(1)
            .and_then(|i| state.keys.get(i as usize))
            .copied()
            .ok_or(Error::NotFound)
    }

    fn intern(&self, key: Key) -> Result<Ino> {
        if let Some(&ino) = self.read_state().inos.get(&key) {
            return Ok(ino);
        }
        let mut state = self.write_state();
        if let Some(&ino) = state.inos.get(&key) {
            return Ok(ino);
        }
        if state.keys.len() >= MAX_INODES {
            tracing::warn!("more than {MAX_INODES} inodes in use; refusing more");
            return Err(Error::Unsupported(format!(
                "more than {MAX_INODES} inodes in one store mount"
            )));
        }
        state.keys.push(key);
        let ino = state.keys.len() as Ino;
        state.inos.insert(key, ino);
        Ok(ino)
    }

    fn layer(&self, l: usize) -> Result<&Layer> {
        self.layers
            .get(l)
            .and_then(OnceLock::get)
            .ok_or(Error::NotFound)
    }

    /// Attributes of the store's own directories and files.
    fn own_attr(&self, ino: Ino, kind: FileType, size: u64, mtime: (i64, u32)) -> Attr {
        let dir = kind == FileType::Directory;
        Attr {
            ino,
            kind,
            perm: if dir { 0o555 } else { 0o444 },
            size,
            blocks: size.div_ceil(512),
            nlink: if dir { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            mtime: mtime.0,
            mtime_nsec: mtime.1,
            rdev: (0, 0),
        }
    }

    /// The entries of a store directory (not a layer tree), sorted.
    fn own_entries(&self, key: Key) -> Result<Vec<(Vec<u8>, Ino, FileType)>> {
        match key {
            // References cannot be listed: any looked-up one exists.
            Key::Root => Ok(Vec::new()),
            Key::Ref(r) => {
                let mut names = Vec::new();
                let dir = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                for entry in dir.flatten().take(MAX_LAYERS) {
                    let name = entry.file_name().into_encoded_bytes();
                    if layout::is_layer_name(&name) {
                        names.push(name);
                    }
                }
                names.sort();
                Ok(names
                    .into_iter()
                    .filter_map(|name| {
                        let l = self.load(&name, None)?;
                        let ino = self.intern(Key::Layer { r, l }).ok()?;
                        Some((name, ino, FileType::Directory))
                    })
                    .collect())
            }
            Key::Layer { r, l } => Ok(LAYER_ENTRIES
                .iter()
                .filter_map(|name| {
                    let child = self.child_of_layer(r, l, name)?;
                    let kind = if *name == b"diff" {
                        FileType::Directory
                    } else {
                        FileType::Regular
                    };
                    Some((name.to_vec(), child, kind))
                })
                .collect()),
            _ => Err(Error::NotDir),
        }
    }

    fn child_of_layer(&self, r: Ino, l: usize, name: &[u8]) -> Option<Ino> {
        let key = match name {
            b"info" => Key::Info(l),
            b"blob" => Key::Blob(l),
            b"diff" => {
                let nid = self.layer(l).ok()?.image.superblock().root_nid;
                Key::Diff { r, l, nid }
            }
            _ => return None,
        };
        self.intern(key).ok()
    }

    /// The parent of a store directory, for `..`.
    fn parent(&self, key: Key) -> Result<Ino> {
        match key {
            Key::Layer { r, .. } => Ok(r),
            _ => Ok(ROOT),
        }
    }
}

impl View for StoreView {
    fn attr(&self, ino: Ino) -> Result<Attr> {
        match self.key(ino)? {
            Key::Root | Key::Ref(_) => Ok(self.own_attr(ino, FileType::Directory, 0, self.mtime)),
            Key::Layer { l, .. } => {
                let layer = self.layer(l)?;
                Ok(self.own_attr(ino, FileType::Directory, 0, layer.mtime))
            }
            Key::Info(l) => {
                let layer = self.layer(l)?;
                let size = layer.info.len() as u64;
                Ok(self.own_attr(ino, FileType::Regular, size, layer.mtime))
            }
            Key::Blob(l) => {
                let layer = self.layer(l)?;
                Ok(self.own_attr(ino, FileType::Regular, layer.blob_size, layer.mtime))
            }
            Key::Diff { l, nid, .. } => {
                let inode = self.layer(l)?.image.inode(nid)?;
                Ok(Attr::of_inode(&inode, ino))
            }
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>> {
        let child = match self.key(parent)? {
            Key::Root => self.reference(name),
            Key::Ref(r) => match self.load(name, Some(r)) {
                Some(l) => {
                    self.used(r);
                    Some(self.intern(Key::Layer { r, l })?)
                }
                None => None,
            },
            Key::Layer { r, l } => self.child_of_layer(r, l, name),
            Key::Info(_) | Key::Blob(_) => return Err(Error::NotDir),
            Key::Diff { r, l, nid } => {
                let image = &self.layer(l)?.image;
                let dir = image.inode(nid)?;
                match image.lookup(&dir, name)? {
                    Some(e) => Some(self.intern(Key::Diff { r, l, nid: e.nid })?),
                    None => None,
                }
            }
        };
        child.map(|ino| self.attr(ino)).transpose()
    }

    fn read_dir(
        &self,
        ino: Ino,
        pos: u64,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        let key = self.key(ino)?;
        if let Key::Diff { r, l, nid } = key {
            let layer = self.layer(l)?;
            let dir = layer.image.inode(nid)?;
            for item in layer.image.read_dir(&dir, DirPos(pos))? {
                let (entry, next) = item?;
                let child = self.intern(Key::Diff {
                    r,
                    l,
                    nid: entry.nid,
                })?;
                let item = DirItem {
                    ino: child,
                    name: &entry.name,
                    kind: entry.file_type,
                    next: next.0,
                };
                if sink(item) {
                    break;
                }
            }
            return Ok(());
        }
        let mut entries = vec![
            (b".".to_vec(), ino, FileType::Directory),
            (b"..".to_vec(), self.parent(key)?, FileType::Directory),
        ];
        entries.extend(self.own_entries(key)?);
        let skip = usize::try_from(pos).unwrap_or(usize::MAX);
        for (i, (name, child, kind)) in entries.iter().enumerate().skip(skip) {
            let item = DirItem {
                ino: *child,
                name,
                kind: *kind,
                next: i as u64 + 1,
            };
            if sink(item) {
                break;
            }
        }
        Ok(())
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.key(ino)? {
            Key::Diff { l, nid, .. } => {
                let image = &self.layer(l)?.image;
                image.read_link(&image.inode(nid)?)
            }
            _ => Err(Error::NotSymlink),
        }
    }

    fn read<'a>(
        &'a self,
        ino: Ino,
        offset: u64,
        len: u64,
        access: Access,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let key = self.key(ino)?;
        let layer = match key {
            Key::Info(l) | Key::Blob(l) | Key::Diff { l, .. } => self.layer(l)?,
            _ => return Err(Error::IsDir),
        };
        match key {
            Key::Info(_) => {
                let start = offset.min(layer.info.len() as u64) as usize;
                let end = offset.saturating_add(len).min(layer.info.len() as u64) as usize;
                scratch.clear();
                scratch.extend_from_slice(&layer.info[start..end]);
                Ok(scratch)
            }
            Key::Blob(_) => {
                let len = len.min(layer.blob_size.saturating_sub(offset)) as usize;
                scratch.resize(len, 0);
                let path = || layout::layer_dir(&self.dir, &layer.digest).join(layout::BLOB_FILE);
                let n = layer.blob.read_at(scratch, offset)?;
                scratch.truncate(n.map_err(|e| Error::io(path(), e))?);
                Ok(scratch)
            }
            Key::Diff { nid, .. } => {
                crate::view::read_file(&layer.image, nid, offset, len, access, scratch)
            }
            _ => Err(Error::IsDir),
        }
    }

    fn prefetch(&self, ino: Ino, offset: u64, len: u64) {
        if let Ok(Key::Diff { l, nid, .. }) = self.key(ino) {
            if let Ok(layer) = self.layer(l) {
                crate::view::prefetch_file(&layer.image, nid, offset, len);
            }
        }
    }

    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let Key::Diff { l, nid, .. } = self.key(ino)? else {
            return Ok(None);
        };
        let image = &self.layer(l)?.image;
        self.overlay_xattrs.get(image, &image.inode(nid)?, name)
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let Key::Diff { l, nid, .. } = self.key(ino)? else {
            return Ok(Vec::new());
        };
        let image = &self.layer(l)?.image;
        self.overlay_xattrs.names(image, &image.inode(nid)?)
    }

    fn stats(&self) -> FsStats {
        let images = self.layers.iter().map_while(OnceLock::get);
        crate::view::total_stats(images.map(|l| &l.image), 4096)
    }

    fn read_only_mount(&self) -> bool {
        false
    }

    fn create(&self, parent: Ino, name: &[u8]) -> Result<()> {
        match self.key(parent)? {
            Key::Layer { r, l } if name == b"use" => {
                tracing::info!(
                    "layer {} in use by {}",
                    self.layer(l)?.digest,
                    self.ref_name(r)
                );
                Err(Error::NotFound)
            }
            _ => Err(Error::ReadOnly),
        }
    }

    fn remove_dir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        match self.key(parent)? {
            Key::Ref(r) if layout::is_layer_name(name) => {
                tracing::info!(
                    "layer {} released by {}",
                    String::from_utf8_lossy(name),
                    self.ref_name(r)
                );
                Err(Error::NotFound)
            }
            _ => Err(Error::ReadOnly),
        }
    }

    fn release_mapped(&self) {
        for layer in self.layers.iter().map_while(OnceLock::get) {
            layer.image.release_mapped();
        }
    }
}
