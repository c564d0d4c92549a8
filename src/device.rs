//! Where image bytes come from: read-only memory maps of whole files or of
//! ranges of files, and the set of devices one image spans.
//!
//! Every access is bounds-checked and returns a slice of the map, so the
//! reader never copies bytes it only needs to look at. Every byte the
//! reader sees passes through [`Device::slice`], which is where a verity
//! tree, when one is attached, checks the blocks first: metadata and data
//! alike reach the parser only verified.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::verity::{Verifier, VerifyAhead, VeritySource, VerityStats};

/// Reads larger than this that miss the verified blocks start verifying
/// ahead ([`AHEAD_STRETCH`] bytes after them).
const AHEAD_MIN_READ: u64 = 4096;
/// How far past such a read to verify ahead.
const AHEAD_STRETCH: u64 = 4 << 20;

/// A read-only byte range of a memory-mapped file.
#[derive(Clone)]
pub struct Device {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
    path: PathBuf,
    /// The tree the whole file is checked against, if any.
    verity: Option<Arc<Verifier>>,
    /// Its background verification of ranges about to be read.
    ahead: Option<Arc<VerifyAhead>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("path", &self.path)
            .field("start", &self.start)
            .field("len", &self.len)
            .field("verity", &self.verity.is_some())
            .finish()
    }
}

impl Device {
    /// Maps `path` read-only, from byte `offset` to the end of the file.
    pub fn open(path: &Path, offset: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::io(path, std::io::Error::from_raw_os_error(21)));
        }
        // SAFETY: the map is read-only. Another process truncating the file
        // while it is mapped would raise SIGBUS; images are treated as
        // immutable while in use, as the kernel's loop device does.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // Default advice: page faults read around the faulting page, which
        // suits both metadata walks and data. (MADV_RANDOM would turn every
        // cold 4 KiB fault into its own disk read.)
        let whole = Self {
            len: map.len(),
            map: Arc::new(map),
            start: 0,
            path: path.to_path_buf(),
            verity: None,
            ahead: None,
        };
        if offset > whole.len() {
            return Err(Error::Invalid(format!(
                "offset {offset} is past the end of the file ({} bytes)",
                whole.len()
            )));
        }
        whole.subrange(offset, whole.len() - offset)
    }

    /// A device holding a copy of `bytes` in anonymous memory, named `name`
    /// in errors: images built or mutated in memory (tests, fuzzing) read
    /// through the same checked paths as mapped files.
    pub fn from_bytes(name: &Path, bytes: &[u8]) -> Result<Self> {
        // An anonymous map cannot be empty; one spare byte stays outside
        // the device's range.
        let mut anon =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::io(name, e))?;
        anon[..bytes.len()].copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(|e| Error::io(name, e))?;
        Ok(Self {
            map: Arc::new(map),
            start: 0,
            len: bytes.len(),
            path: name.to_path_buf(),
            verity: None,
            ahead: None,
        })
    }

    /// Checks every block of the whole file against the tree `source`
    /// describes from now on; fails now if the tree or its root hash is
    /// wrong. Devices made from this one with [`Device::subrange`] later
    /// share the check.
    pub fn attach_verity(&mut self, source: &VeritySource) -> Result<()> {
        let spec = source.resolve(&self.path)?;
        let verifier = Verifier::open(&self.path, &self.map, &spec)?;
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
        )));
        self.verity = Some(verifier);
        Ok(())
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
            start,
            len: len as usize,
            path: self.path.clone(),
            verity: self.verity.clone(),
            ahead: self.ahead.clone(),
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

    /// `len` bytes at `offset`, or a corruption error naming the device when
    /// the range is not inside it.
    /// When a verity tree is attached, the blocks holding them are checked
    /// first, and a block that does not match is an error.
    pub fn slice(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let start = self.bounds(offset, len)?;
        if let Some(verity) = &self.verity {
            let missed = verity.check_missed(&self.map, start as u64, len)?;
            // A file's data had to be hashed on the request path: the
            // files laid out after it are likely read next (mkfs writes
            // them in the order tar and walks read them), so verify the
            // stretch that follows in the background. Metadata reads are
            // smaller and do not start this.
            if missed && len > AHEAD_MIN_READ {
                if let Some(ahead) = &self.ahead {
                    ahead.request(start as u64 + len, AHEAD_STRETCH);
                }
            }
        }
        // In bounds: checked above.
        Ok(&self.map[start..start + len as usize])
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

    /// Asks the kernel to start reading `[offset, offset + len)` into the
    /// page cache in the background (`MADV_WILLNEED`), and with a verity
    /// tree, to verify it in the background too. Only a hint.
    pub fn will_need(&self, offset: u64, len: u64) {
        if let Some((start, len)) = self.page_range(offset, len) {
            let _ = self.map.advise_range(memmap2::Advice::WillNeed, start, len);
            if let Some(ahead) = &self.ahead {
                ahead.request(start as u64, len as u64);
            }
        }
    }

    /// Drops `[offset, offset + len)` from this process's page tables
    /// (`MADV_DONTNEED`). The bytes stay in the page cache, and a later
    /// access maps them again; this only keeps pages the server has served
    /// from counting as its resident memory.
    pub fn release(&self, offset: u64, len: u64) {
        if let Some((start, len)) = self.page_range(offset, len) {
            // SAFETY: the map is a read-only shared file mapping, for which
            // MADV_DONTNEED only unmaps pages: their contents come back from
            // the file on the next access, so no reader can see other bytes.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }

    /// `[offset, offset + len)` clipped to the device, widened to whole
    /// pages, as (start, length) in the underlying map.
    fn page_range(&self, offset: u64, len: u64) -> Option<(usize, usize)> {
        const PAGE: u64 = 4096;
        let end = offset.saturating_add(len).min(self.len as u64);
        if offset >= end {
            return None;
        }
        let start = (self.start as u64 + offset) / PAGE * PAGE;
        let end = self.start as u64 + end;
        Some((start as usize, (end - start) as usize))
    }
}
