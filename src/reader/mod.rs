//! The filesystem reader: an opened image and everything a filesystem needs
//! from it (inodes, directories, xattrs, file data). It knows nothing of FUSE.
//!
//! Split as the kernel's fs/erofs is: `superblock` (super.c), `devices`
//! (erofs_map_dev), `inode` (inode.c), `data` (data.c), `dir` (dir.c and
//! namei.c), `xattr` (xattr.c), plus `walk` for whole-tree traversal.

mod data;
mod decompress;
mod devices;
mod dir;
mod inode;
mod superblock;
mod walk;
mod xattr;
mod zcache;
mod zdata;
mod zindex;
mod zmap;
mod zsummary;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub use decompress::Codecs;
pub use devices::{DeviceSet, ExtraDevice};
pub use dir::{DirEntry, DirIter, DirPos};
pub use inode::{FileKind, Inode};
pub use superblock::SuperInfo;
pub use walk::{WalkEntry, WalkVisitor, MAX_WALK_DEPTH};
pub use xattr::{LongPrefix, Xattr};
pub(crate) use zcache::{CacheKey, ExtentCache};
pub use zcache::{CacheStats, DEFAULT_CACHE_SIZE};
pub use zsummary::{CompressedExtent, CompressionInfo, Stored, MAX_LISTED_EXTENTS};

use crate::device::{Access, Device};
use crate::error::{Error, Result};
use crate::verity::{VeritySource, VerityStats};

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Files backing the extra devices, in device-table order. Empty means
    /// the devices are read from the image file itself (flatdev).
    pub devices: Vec<PathBuf>,
    /// Byte offset of the image inside its file.
    pub offset: u64,
    /// Budget in bytes of the cache of decoded compressed extents.
    pub cache_size: u64,
    /// The verity tree the image file is checked against.
    pub verity: Option<VeritySource>,
    /// Verity trees for the files in `devices`, in the same order; `None`
    /// serves that device unverified. When the image is verified, every
    /// device given must have an entry (an explicit `None` included).
    pub device_verity: Vec<Option<VeritySource>>,
    /// Trust file data once its blocks were verified (`--verity-once`):
    /// hashed on the map at first use, not on a copy at every read.
    /// Faster, but a change to a file after its first read is served.
    pub verity_once: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            offset: 0,
            cache_size: DEFAULT_CACHE_SIZE,
            verity: None,
            device_verity: Vec::new(),
            verity_once: false,
        }
    }
}

impl OpenOptions {
    /// Maps the image and device files and attaches their verity trees.
    fn open_devices(&self, path: &Path) -> Result<(Device, Vec<Device>)> {
        if self.device_verity.len() > self.devices.len() {
            return Err(Error::Invalid(format!(
                "{} device verity tree(s) given for {} device(s)",
                self.device_verity.len(),
                self.devices.len()
            )));
        }
        if self.verity.is_some() && self.device_verity.len() < self.devices.len() {
            // A verified image whose file data comes unverified from a
            // device would defeat the point: say so rather than serve it.
            return Err(Error::Invalid(format!(
                "the image is verified but device {} ({}) has no verity tree (give one, or '-' to serve it unverified)",
                self.device_verity.len() + 1,
                self.devices[self.device_verity.len()].display()
            )));
        }
        let mut primary = Device::open(path, 0)?;
        if let Some(source) = &self.verity {
            primary.attach_verity(source, self.verity_once)?;
        }
        if self.offset > primary.len() {
            return Err(Error::Invalid(format!(
                "offset {} is past the end of the file {} ({} bytes)",
                self.offset,
                path.display(),
                primary.len()
            )));
        }
        let primary = primary.subrange(self.offset, primary.len() - self.offset)?;
        let mut extra = Vec::with_capacity(self.devices.len());
        for (i, device) in self.devices.iter().enumerate() {
            let mut dev = Device::open(device, 0)?;
            if let Some(Some(source)) = self.device_verity.get(i) {
                dev.attach_verity(source, self.verity_once)?;
            }
            extra.push(dev);
        }
        Ok((primary, extra))
    }
}

/// Which address space a metadata position refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MetaSpace {
    /// Bytes of the primary device.
    Primary,
    /// Bytes of the metabox inode's data.
    Metabox,
}

/// A byte position in one of the metadata address spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MetaPos {
    pub space: MetaSpace,
    pub offset: u64,
}

impl MetaPos {
    /// The position `delta` bytes further on.
    pub fn add(self, delta: u64) -> Result<Self> {
        let offset = self
            .offset
            .checked_add(delta)
            .ok_or_else(|| Error::corrupt("metadata offset overflows"))?;
        Ok(Self { offset, ..self })
    }
}

/// An opened EROFS image: superblock, devices and special inodes.
///
/// All methods take `&self`; an `Image` can be shared between threads.
#[derive(Debug)]
pub struct Image {
    sb: SuperInfo,
    devices: DeviceSet,
    metabox: Option<Inode>,
    packed: Option<Inode>,
    prefixes: xattr::Prefixes,
    codecs: decompress::Codecs,
    cache: zcache::ExtentCache,
    /// Whether a directory was listed: until then, metadata is read a page
    /// at a time (see [`Image::meta_access`]).
    listed: AtomicBool,
}

impl Image {
    /// Opens the image at `path`, mapping it and its extra devices read-only.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<Self> {
        let (primary, extra) = options.open_devices(path)?;
        let mut image = Self::from_devices(primary, extra)?;
        image.set_cache_size(options.cache_size);
        Ok(image)
    }

    /// Sets the budget of the cache of decoded compressed extents (the
    /// default budget for [`Image::from_devices`]).
    pub fn set_cache_size(&mut self, bytes: u64) {
        self.cache = zcache::ExtentCache::new(bytes);
    }

    /// Opens an image from already-mapped devices.
    pub fn from_devices(primary: Device, extra: Vec<Device>) -> Result<Self> {
        let sb = SuperInfo::parse(&primary)?;
        let codecs = decompress::Codecs::load(&primary, &sb)?;
        let devices = DeviceSet::new(primary, extra, &sb)?;
        let mut image = Self {
            sb,
            devices,
            metabox: None,
            packed: None,
            prefixes: xattr::Prefixes::default(),
            codecs,
            cache: zcache::ExtentCache::default(),
            listed: AtomicBool::new(false),
        };
        if let Some(nid) = image.sb.metabox_nid {
            image.metabox = Some(image.inode(nid)?);
        }
        if let Some(nid) = image.sb.packed_nid {
            image.packed = Some(image.inode(nid)?);
        }
        image.prefixes = xattr::Prefixes::load(&image)?;
        // The root must be a directory, or nothing else can work.
        let root = image.root()?;
        if !root.is_dir() {
            return Err(Error::corrupt(format!(
                "root inode {} is not a directory",
                root.nid
            )));
        }
        Ok(image)
    }

    /// The superblock.
    pub fn superblock(&self) -> &SuperInfo {
        &self.sb
    }

    /// The devices the image reads from.
    pub fn devices(&self) -> &DeviceSet {
        &self.devices
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.sb.block_size()
    }

    /// The root directory's inode.
    pub fn root(&self) -> Result<Inode> {
        self.inode(self.sb.root_nid)
    }

    /// Unmaps every page of every device from the process (they stay in
    /// the page cache): bounds the resident memory of a long-running server.
    pub fn release_mapped(&self) {
        self.devices.primary.release(0, self.devices.primary.len());
        for dev in &self.devices.extra {
            dev.backing.release(0, dev.backing.len());
        }
    }

    /// Starts verifying ahead of readers on every verified device
    /// ([`Device::start_verify_ahead`]).
    pub fn start_verify_ahead(&self) {
        self.devices.primary.start_verify_ahead();
        for dev in &self.devices.extra {
            dev.backing.start_verify_ahead();
        }
    }

    /// Verity counters of every verified device, named by file.
    pub fn verity_stats(&self) -> Vec<(PathBuf, VerityStats)> {
        std::iter::once(&self.devices.primary)
            .chain(self.devices.extra.iter().map(|d| &d.backing))
            .filter_map(|dev| Some((dev.path().to_path_buf(), dev.verity_stats()?)))
            // Flat devices share the image's tree: count it once.
            .fold(Vec::new(), |mut all, (path, stats)| {
                if !all.iter().any(|(p, _)| *p == path) {
                    all.push((path, stats));
                }
                all
            })
    }

    /// The long xattr name prefixes.
    pub fn long_prefixes(&self) -> &[LongPrefix] {
        self.prefixes.list()
    }

    /// `len` bytes of file data stored in the metadata at `pos` (an inline
    /// tail or pcluster): as [`Image::meta`], but read as file data (see
    /// [`Device::data_cow`]: a verified copy when every read is checked).
    pub(crate) fn meta_data(&self, pos: MetaPos, len: u64) -> Result<Cow<'_, [u8]>> {
        match pos.space {
            MetaSpace::Primary => {
                self.devices
                    .primary
                    .data_cow(crate::device::Access::Sequential, pos.offset, len)
            }
            MetaSpace::Metabox => self.meta(pos, len),
        }
    }

    /// `len` bytes of metadata at `pos`: a slice of the primary device, or
    /// bytes of the metabox inode's data.
    pub(crate) fn meta(&self, pos: MetaPos, len: u64) -> Result<Cow<'_, [u8]>> {
        match pos.space {
            MetaSpace::Primary => self
                .devices
                .primary
                .slice_for(self.meta_access(), pos.offset, len)
                .map(Cow::Borrowed),
            MetaSpace::Metabox => {
                let metabox = self.metabox.as_ref().ok_or_else(|| {
                    Error::corrupt("metabox address in an image without a metabox")
                })?;
                let avail = metabox.size.saturating_sub(pos.offset);
                if avail < len {
                    return Err(Error::corrupt(format!(
                        "read of {len} bytes at offset {} is past the end of the metabox ({} bytes)",
                        pos.offset, metabox.size
                    )));
                }
                self.read_range(metabox, pos.offset, len)
            }
        }
    }

    /// How metadata is read. Until a directory is listed, the reads are
    /// the few a mount and path lookups make, as the kernel's erofs makes
    /// them: a page each ([`Access::Random`]), where a fault on the
    /// sequential map would read megabytes around it. A listing starts a
    /// walk, whose metadata comes in large reads ([`Access::Sequential`]).
    fn meta_access(&self) -> Access {
        if self.listed.load(Ordering::Relaxed) {
            Access::Sequential
        } else {
            Access::Random
        }
    }

    /// Notes that a directory is being listed (see [`Image::meta_access`]).
    pub(crate) fn note_listing(&self) {
        if !self.listed.load(Ordering::Relaxed) {
            self.listed.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves an absolute or root-relative path (bytes, `/`-separated)
    /// without following symlinks. `.` components are skipped; `..` uses the
    /// directory's own `..` entry.
    pub fn resolve(&self, path: &[u8]) -> Result<Inode> {
        let mut inode = self.root()?;
        for component in path.split(|&b| b == b'/') {
            if component.is_empty() || component == b"." {
                continue;
            }
            if !inode.is_dir() {
                return Err(Error::NotDir);
            }
            let entry = self.lookup(&inode, component)?.ok_or(Error::NotFound)?;
            inode = self.inode(entry.nid)?;
        }
        Ok(inode)
    }
}
