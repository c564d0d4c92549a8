//! Where image bytes come from: read-only memory maps of whole files or of
//! ranges of files, and the set of devices one image spans.
//!
//! Every access is bounds-checked and returns a slice of the map, so the
//! reader never copies bytes it only needs to look at. A verifying layer
//! (dm-verity) can sit here later: every byte the reader sees passes through
//! [`Device::slice`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// A read-only byte range of a memory-mapped file.
#[derive(Clone)]
pub struct Device {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
    path: PathBuf,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("path", &self.path)
            .field("start", &self.start)
            .field("len", &self.len)
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
        };
        if offset > whole.len() {
            return Err(Error::Invalid(format!(
                "offset {offset} is past the end of the file ({} bytes)",
                whole.len()
            )));
        }
        whole.subrange(offset, whole.len() - offset)
    }

    /// A device over `len` bytes of this one starting at `offset`.
    pub fn subrange(&self, offset: u64, len: u64) -> Result<Self> {
        let bytes = self.slice(offset, len)?;
        Ok(Self {
            map: Arc::clone(&self.map),
            start: bytes.as_ptr() as usize - self.map.as_ptr() as usize,
            len: bytes.len(),
            path: self.path.clone(),
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
    pub fn slice(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= self.len as u64 => {
                // Both fit in usize: they are bounded by self.len.
                let (offset, end) = (offset as usize, end as usize);
                Ok(&self.map[self.start + offset..self.start + end])
            }
            _ => Err(Error::corrupt(format!(
                "read of {len} bytes at offset {offset} is past the end of {} ({} bytes)",
                self.path.display(),
                self.len
            ))),
        }
    }

    /// Asks the kernel to start reading `[offset, offset + len)` into the
    /// page cache in the background (`MADV_WILLNEED`). Only a hint.
    pub fn will_need(&self, offset: u64, len: u64) {
        if let Some((start, len)) = self.page_range(offset, len) {
            let _ = self.map.advise_range(memmap2::Advice::WillNeed, start, len);
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

    /// The bytes from `offset` to the end of the device.
    pub fn tail(&self, offset: u64) -> Result<&[u8]> {
        let len = (self.len as u64).checked_sub(offset).ok_or_else(|| {
            Error::corrupt(format!(
                "offset {offset} is past the end of {}",
                self.path.display()
            ))
        })?;
        self.slice(offset, len)
    }
}
