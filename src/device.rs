//! Where image bytes come from: read-only memory maps of whole files or of
//! ranges of files, and the set of devices one image spans.
//!
//! Every access is bounds-checked and returns a slice of the map, so the
//! reader never copies bytes it only needs to look at. Every byte the
//! reader sees passes through [`Device::slice_for`] (metadata) or
//! [`Device::data_for`] (file data), which is where a verity tree, when one
//! is attached, checks the blocks first: metadata and data alike reach the
//! parser only verified. By default, nothing is read from the map after it
//! was hashed: file data is served from a copy hashed after it was taken,
//! at every read, and metadata is read from verified copies of its blocks,
//! kept; so a file changed under the mount is never served or parsed as
//! good. With `--verity-once`, blocks are hashed on the map at first use
//! and trusted from then on (see [`crate::verity::Verifier`]).
//!
//! The maps are [`ImageMap`]s: a file shrinking under them fails the
//! request that reads past its new end instead of killing the process
//! ([`crate::fault`]).
//!
//! A lazy device ([`Device::lazy`]) maps the sparse cache file of a
//! [`ChunkCache`], and has the cache fetch the missing chunks of every
//! range before the range is read.
//!
//! A file is mapped twice, once for each [`Access`] pattern, because the
//! advice given to a mapping decides how much the kernel reads on a page
//! fault, and neither amount suits both patterns.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fault::ImageMap;
use crate::lazy::{ChunkCache, ChunkSource};
use crate::mmap::{self, Advice, PAGE};
use crate::verity::{Verifier, VerifyAhead, VeritySource, VerityStats};

/// Reads larger than this that miss the verified blocks start verifying
/// ahead ([`AHEAD_STRETCH`] bytes after them).
const AHEAD_MIN_READ: u64 = 4096;
/// How far past such a read to verify ahead.
const AHEAD_STRETCH: u64 = 4 << 20;

/// The most image one page fault maps into the process: a 2 MiB huge page
/// of an [`Access::Sequential`] read.
pub const FAULT_SPAN: u64 = 2 << 20;

/// How a read of image bytes is expected to go on. It picks the mapping
/// the bytes are read through, and with it how much of the image a page
/// fault reads from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Metadata, and file data read front to back (readahead-sized reads,
    /// whole small files). Through a `MADV_HUGEPAGE` mapping: a fault
    /// reads the 2 MiB-aligned chunk around it and the next one, into 2 MiB
    /// folios, and maps them whole; without that advice, faults read around
    /// into 4 KiB folios, slower cold (docs/benchmarks.md, "Design
    /// measurements").
    #[default]
    Sequential,
    /// A small read in the middle of a file, whose neighbours are not
    /// likely next. Through a `MADV_RANDOM` mapping: a fault reads only the
    /// page it needs, so random readers read from disk about what the
    /// kernel's erofs reads (docs/benchmarks.md, "Design measurements").
    Random,
}

/// A read-only byte range of a memory-mapped file.
#[derive(Clone)]
pub struct Device {
    /// The file mapped for [`Access::Sequential`] reads.
    map: Arc<ImageMap>,
    /// The file mapped for [`Access::Random`] reads (the same map for an
    /// in-memory device, where faults read nothing).
    random: Arc<ImageMap>,
    /// Anonymous memory ([`Device::from_bytes`]), which unmapping would
    /// zero.
    in_memory: bool,
    start: usize,
    len: usize,
    path: PathBuf,
    /// The tree the whole file is checked against, if any.
    verity: Option<Arc<Verifier>>,
    /// Its background verification of ranges about to be read.
    ahead: Option<Arc<VerifyAhead>>,
    /// Whether file data, once verified, is trusted not to change
    /// (`--verity-once`) instead of being hashed on a copy at every read.
    verity_once: bool,
    /// The cache the map is of, for a lazy device: every range is filled
    /// through it before it is read.
    lazy: Option<Arc<ChunkCache>>,
    /// For a virtual device ([`Device::from_source`]): what makes its
    /// bytes, read into a copy at every data read; nothing is mapped.
    source: Option<Arc<dyn ChunkSource>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("path", &self.path)
            .field("start", &self.start)
            .field("len", &self.len)
            .field("verity", &self.verity.is_some())
            .field("lazy", &self.lazy.is_some())
            .field("virtual", &self.source.is_some())
            .finish()
    }
}

impl Device {
    /// Maps `path` read-only, from byte `offset` to the end of the file
    /// (a regular file or a block device; see
    /// [`crate::input::open_input`]).
    pub fn open(path: &Path, offset: u64) -> Result<Self> {
        let (file, len) = crate::input::open_input(path)?;
        let whole = Self::map_file(&file, path, len)?;
        if offset > whole.len() {
            return Err(Error::Invalid(format!(
                "offset {offset} is past the end of the file ({} bytes)",
                whole.len()
            )));
        }
        whole.subrange(offset, whole.len() - offset)
    }

    /// Maps the first `len` bytes of `file` (already opened, named `path`
    /// in errors): for files opened with flags of the caller's choosing
    /// (a Nydus blob directory's files, `O_NOFOLLOW`).
    pub fn from_file(file: &std::fs::File, path: &Path, len: u64) -> Result<Self> {
        Self::map_file(file, path, len)
    }

    /// A device over the whole cache file of `cache`, whose ranges are
    /// fetched (through [`ChunkCache::ensure`]) before they are read.
    pub fn lazy(cache: Arc<ChunkCache>) -> Result<Self> {
        let mut device = Self::map_file(cache.file(), cache.path(), cache.len())?;
        device.lazy = Some(cache);
        Ok(device)
    }

    /// Maps `len` bytes of `file` (named `path`) twice, one map for each
    /// [`Access`].
    fn map_file(file: &std::fs::File, path: &Path, len: u64) -> Result<Self> {
        let map = |advice: &[Advice]| {
            let map = ImageMap::map(file, path, len)?;
            // Only advice: a kernel without transparent huge pages refuses
            // MADV_HUGEPAGE, and then faults read around as by default.
            for &advice in advice {
                let _ = map.advise(advice);
            }
            Ok::<_, Error>(Arc::new(map))
        };
        let sequential = map(&[Advice::HugePage])?;
        // Not mapped 2 MiB at a time either, where a sequential reader has
        // left huge pages in the page cache: a random read maps its page.
        let random = map(&[Advice::Random, Advice::NoHugePage])?;
        Ok(Self {
            len: sequential.len(),
            random,
            map: sequential,
            in_memory: false,
            start: 0,
            path: path.to_path_buf(),
            verity: None,
            ahead: None,
            verity_once: false,
            lazy: None,
            source: None,
        })
    }

    /// A device holding a copy of `bytes` in anonymous memory, named `name`
    /// in errors: images built or mutated in memory (tests, fuzzing) read
    /// through the same checked paths as mapped files.
    pub fn from_bytes(name: &Path, bytes: &[u8]) -> Result<Self> {
        // An anonymous map cannot be empty; one spare byte stays outside
        // the device's range.
        let map = Arc::new(ImageMap::anonymous(mmap::map_copy(name, bytes)?));
        Ok(Self {
            random: Arc::clone(&map),
            map,
            in_memory: true,
            start: 0,
            len: bytes.len(),
            path: name.to_path_buf(),
            verity: None,
            ahead: None,
            verity_once: false,
            lazy: None,
            source: None,
        })
    }

    /// A device of the first bytes of `len` that `fill` writes (returning
    /// how many), in anonymous memory, named `name`: data decoded in
    /// memory (a Nydus bootstrap) held once, with no copy.
    pub fn from_filled(
        name: &Path,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result<Self> {
        let (map, n) = mmap::map_filled(name, len, fill)?;
        let mut device = Self::from_bytes(name, &[])?;
        let map = Arc::new(ImageMap::anonymous(map));
        device.random = Arc::clone(&map);
        device.map = map;
        device.len = n;
        Ok(device)
    }

    /// A virtual device of `source.len()` bytes named `name`, whose bytes
    /// `source` makes at each read (a Nydus blob seen uncompressed): file
    /// data only, copied out ([`Device::data_for`]); metadata reads of it
    /// are errors. Nothing of it is mapped.
    pub fn from_source(name: &Path, source: Arc<dyn ChunkSource>) -> Result<Self> {
        let len = usize::try_from(source.len())
            .map_err(|_| Error::Invalid(format!("{}: device too large", name.display())))?;
        let mut device = Self::from_bytes(name, &[0])?;
        device.len = len;
        device.source = Some(source);
        Ok(device)
    }

    /// Checks that a file's chunk of `len` bytes, its chunk index naming
    /// record `record`, may start at `offset` of a virtual device
    /// ([`ChunkSource::check_extent`]); any range of another device.
    pub fn check_extent(&self, offset: u64, len: u64, record: u32) -> Result<()> {
        match &self.source {
            Some(source) => {
                let start = self.bounds(offset, len)?;
                source.check_extent(start as u64, len, record)
            }
            None => Ok(()),
        }
    }

    /// Checks every block of the whole file against the tree `source`
    /// describes from now on; fails now if the tree or its root hash is
    /// wrong. Devices made from this one with [`Device::subrange`] later
    /// share the check. File data is hashed on a copy at every read, or,
    /// with `once`, on the map at its first read and trusted after that
    /// (faster, but a change to the file after that is served).
    pub fn attach_verity(&mut self, source: &VeritySource, once: bool) -> Result<()> {
        if self.lazy.is_some() || self.source.is_some() {
            // The tree is checked on the map, ahead of readers too, where
            // nothing fetches the chunks first.
            return Err(Error::Unsupported(format!(
                "{}: verity on a lazily fetched device",
                self.path.display()
            )));
        }
        let spec = source.resolve(&self.path)?;
        let mut verifier = Verifier::open(&self.path, &self.map, &spec)?;
        if !once {
            // Metadata too is read from verified copies.
            verifier.keep_copies()?;
        }
        tracing::info!(
            "verity: {} checked against {} at offset {} ({} blocks of {} bytes)",
            self.path.display(),
            spec.hash_file.display(),
            spec.offset,
            verifier.params().data_blocks,
            verifier.params().data_block_size
        );
        let verifier = Arc::new(verifier);
        self.ahead = Some(Arc::new(VerifyAhead::new(
            Arc::clone(&verifier),
            Arc::clone(&self.map),
            !self.in_memory,
            !once,
        )));
        self.verity = Some(verifier);
        self.verity_once = once;
        Ok(())
    }

    /// Whether a verity tree is attached and checks ranges ahead of readers
    /// ([`Device::will_need`] does something).
    pub fn verifies_ahead(&self) -> bool {
        self.ahead.is_some()
    }

    /// Starts the background work of serving (the server calls it once
    /// serving): checking ranges ahead of readers, when a verity tree is
    /// attached; the prefetch of a lazy device, when its options ask.
    pub fn start_verify_ahead(&self) {
        if let Some(ahead) = &self.ahead {
            ahead.start();
        }
        if let Some(cache) = &self.lazy {
            cache.start_prefetch();
        }
    }

    /// The verity counters, when a tree is attached.
    pub fn verity_stats(&self) -> Option<VerityStats> {
        self.verity.as_ref().map(|v| v.stats())
    }

    /// A device over `len` bytes of this one starting at `offset`.
    pub fn subrange(&self, offset: u64, len: u64) -> Result<Self> {
        let start = self.bounds(offset, len)?;
        Ok(Self {
            map: Arc::clone(&self.map),
            random: Arc::clone(&self.random),
            in_memory: self.in_memory,
            start,
            len: len as usize,
            path: self.path.clone(),
            verity: self.verity.clone(),
            ahead: self.ahead.clone(),
            verity_once: self.verity_once,
            lazy: self.lazy.clone(),
            source: self.source.clone(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the device holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file behind this device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `len` bytes at `offset`, read as [`Access::Sequential`] (see
    /// [`Device::slice_for`]).
    pub fn slice(&self, offset: u64, len: u64) -> Result<&[u8]> {
        self.slice_for(Access::Sequential, offset, len)
    }

    /// `len` bytes at `offset`, read through the mapping for `access`, or a
    /// corruption error naming the device when the range is not inside it.
    /// When a verity tree is attached, the blocks holding them are checked
    /// first, and a block that does not match is an error; unless verified
    /// once, the bytes then come from verified copies of those blocks.
    pub fn slice_for(&self, access: Access, offset: u64, len: u64) -> Result<&[u8]> {
        let start = self.bounds(offset, len)?;
        if self.source.is_some() {
            return Err(Error::corrupt(format!(
                "{}: metadata read of {len} bytes at offset {offset} from a blob device",
                self.path.display()
            )));
        }
        self.fill(start as u64, len)?;
        // Hashing reads the whole blocks around the range: through the
        // same mapping, so a random read stays a small one.
        let map = match access {
            Access::Sequential => &self.map,
            Access::Random => &self.random,
        };
        self.advise_random(access, offset, len);
        if let Some(verity) = &self.verity {
            if let Some(copy) = verity.check_meta(map, start as u64, len)? {
                return Ok(copy);
            }
            let missed = verity.check_missed(map, start as u64, len)?;
            // A file's data had to be hashed on the request path: the
            // files laid out after it are likely read next (mkfs writes
            // them in the order tar and walks read them), so verify the
            // stretch that follows in the background. Metadata reads are
            // smaller and do not start this, nor do random reads.
            if missed && len > AHEAD_MIN_READ && access == Access::Sequential {
                if let Some(ahead) = &self.ahead {
                    ahead.request(start as u64 + len, AHEAD_STRETCH);
                }
            }
        }
        // In bounds: checked above.
        Ok(&map[start..start + len as usize])
    }

    /// `len` bytes of file data at `offset`, read as `access` says: as
    /// [`Device::slice_for`] gives them, or, when a verity tree checks every
    /// read, from `copy`, which is filled with the whole verity blocks
    /// around them, copied out of the map and hashed after that.
    pub fn data_for<'a>(
        &'a self,
        access: Access,
        offset: u64,
        len: u64,
        copy: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        match self.copy_verified(access, offset, len, copy)? {
            Some(range) => Ok(&copy[range]),
            None => self.slice_for(access, offset, len),
        }
    }

    /// [`Device::data_for`], copying into a new buffer when it copies.
    pub fn data_cow(&self, access: Access, offset: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        let mut copy = Vec::new();
        match self.copy_verified(access, offset, len, &mut copy)? {
            Some(range) => {
                copy.copy_within(range.clone(), 0);
                copy.truncate(range.len());
                Ok(Cow::Owned(copy))
            }
            None => self.slice_for(access, offset, len).map(Cow::Borrowed),
        }
    }

    /// With a tree checking every read: copies the whole verity blocks
    /// around `[offset, offset + len)` into `copy`, hashes them, and gives
    /// where the range lies in `copy`. `None` without such a tree.
    fn copy_verified(
        &self,
        access: Access,
        offset: u64,
        len: u64,
        copy: &mut Vec<u8>,
    ) -> Result<Option<Range<usize>>> {
        if let Some(source) = &self.source {
            let start = self.bounds(offset, len)? as u64;
            copy.clear();
            // `len` is inside the device: at most what its source holds.
            copy.resize(len as usize, 0);
            source.read_at(start, copy)?;
            return Ok(Some(0..len as usize));
        }
        let verifier = match &self.verity {
            Some(verifier) if !self.verity_once => verifier,
            _ => return Ok(None),
        };
        let start = self.bounds(offset, len)? as u64;
        copy.clear();
        if len == 0 {
            return Ok(Some(0..0));
        }
        let bits = verifier.params().data_block_size.trailing_zeros();
        let first = start >> bits;
        let (from, to) = (first << bits, (((start + len - 1) >> bits) + 1) << bits);
        if to > verifier.covered() {
            return Err(crate::verity::VerityError::Invalid(format!(
                "{}: bytes {start}..{} reach past the {} bytes its verity tree covers",
                self.path.display(),
                start + len,
                verifier.covered()
            ))
            .into());
        }
        // Copied and verified ahead of the reader, if it keeps pace.
        let prepared = self.ahead.as_ref().and_then(|a| a.prepared());
        if prepared.is_some_and(|p| p.copy_range(start, len, copy)) {
            return Ok(Some(0..len as usize));
        }
        self.advise_random(access, offset, len);
        let map = match access {
            Access::Sequential => &self.map,
            Access::Random => &self.random,
        };
        // In the map: the tree covers no more than the file had at open.
        copy.extend_from_slice(&map[from as usize..to as usize]);
        verifier.check_copy(copy, first)?;
        if let Some(prepared) = prepared {
            prepared.passed(start + len);
        }
        // A file's data had to be hashed on the request path: have the
        // stretch after it copied and verified in the background (as
        // [`Device::slice_for`] does for data verified once).
        if len > AHEAD_MIN_READ && access == Access::Sequential {
            if let Some(ahead) = &self.ahead {
                ahead.request(start + len, AHEAD_STRETCH);
            }
        }
        let at = (start - from) as usize;
        Ok(Some(at..at + len as usize))
    }

    /// For a random read of more than a page: each fault on its map reads
    /// one page, so have the kernel read the range in one request instead
    /// (docs/benchmarks.md, "Design measurements").
    fn advise_random(&self, access: Access, offset: u64, len: u64) {
        if access == Access::Random && len > PAGE {
            if let Some((start, len)) = self.page_range(offset, len) {
                mmap::will_need(&self.random, start, len);
            }
        }
    }

    /// For a lazy device: fetches the chunks of `[start, start + len)` of
    /// the map that are not in the cache file yet.
    fn fill(&self, start: u64, len: u64) -> Result<()> {
        match &self.lazy {
            Some(cache) => cache.ensure(start, len),
            None => Ok(()),
        }
    }

    /// Where `[offset, offset + len)` starts in the map, after checking it
    /// lies inside the device.
    fn bounds(&self, offset: u64, len: u64) -> Result<usize> {
        let end = offset.checked_add(len);
        match end {
            // Both fit in usize: they are bounded by self.len.
            Some(end) if end <= self.len as u64 => Ok(self.start + offset as usize),
            _ => Err(Error::corrupt(format!(
                "read of {len} bytes at offset {offset} is past the end of {} ({} bytes)",
                self.path.display(),
                self.len
            ))),
        }
    }

    /// A hint that a sequential reader will want `[offset, offset + len)`
    /// next. With a verity tree, the background thread verifies it, so the
    /// read finds its blocks checked.
    ///
    /// Reading it into the page cache is left to the kernel, on purpose:
    /// faults on the [`Access::Sequential`] mapping read ahead of the
    /// reader by themselves; `MADV_WILLNEED` here filled the same pages
    /// in 4 KiB folios and smaller requests, slowing cold reads, and
    /// faulting them in from a background thread sped up `dd` but slowed
    /// a full-tree `tar` (docs/benchmarks.md, "Design measurements").
    pub fn will_need(&self, offset: u64, len: u64) {
        let Some(ahead) = &self.ahead else {
            return;
        };
        if let Some((start, len)) = self.page_range(offset, len) {
            ahead.request(start as u64, len as u64);
        }
    }

    /// Drops `[offset, offset + len)` from this process's page tables
    /// (`MADV_DONTNEED`), and the whole verity tree when one is attached.
    /// The bytes stay in the page cache, and a later access maps them
    /// again; this only keeps pages the server has served from counting as
    /// its resident memory. An in-memory device keeps its pages: they are
    /// its only copy.
    pub fn release(&self, offset: u64, len: u64) {
        if let Some(verity) = &self.verity {
            verity.release_tree();
        }
        if self.in_memory {
            return;
        }
        if let Some((start, len)) = self.page_range(offset, len) {
            for map in [&self.map, &self.random] {
                mmap::unmap(map, start as u64, len as u64);
            }
        }
    }

    /// `[offset, offset + len)` clipped to the device, widened to whole
    /// pages, as (start, length) in the underlying map.
    fn page_range(&self, offset: u64, len: u64) -> Option<(usize, usize)> {
        let end = offset.saturating_add(len).min(self.len as u64);
        if offset >= end {
            return None;
        }
        let start = (self.start as u64 + offset) / PAGE * PAGE;
        let end = self.start as u64 + end;
        Some((start as usize, (end - start) as usize))
    }
}
