//! Memory maps, in one place: mapping a file or a copy of bytes read-only,
//! advice, and dropping pages from this process.
//!
//! The maps the reader keeps are [`crate::fault::ImageMap`]s, which map
//! through here and register with the SIGBUS handler.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

pub use memmap2::{Advice, Mmap};

use crate::error::{Error, Result};

/// The page size the page arithmetic here assumes (the smallest Linux
/// page; larger pages only make the ranges widen less than they could).
pub const PAGE: u64 = 4096;

/// Maps `len` bytes of `file` (named `path` in errors) read-only and
/// shared.
pub fn map_file(file: &File, path: &Path, len: usize) -> Result<Mmap> {
    // SAFETY: a read-only shared map. The file may change or shrink under
    // it: changed bytes are input like any other (the parser is safe on
    // any bytes, verity checks copies), and pages past a new end are
    // handled by `crate::fault` instead of killing the process.
    unsafe { memmap2::MmapOptions::new().len(len).map(file) }.map_err(|e| Error::io(path, e))
}

/// A read-only anonymous map holding a copy of `bytes` (named `name` in
/// errors). An anonymous map cannot be empty: it is at least one byte.
pub fn map_copy(name: &Path, bytes: &[u8]) -> Result<Mmap> {
    let mut anon =
        memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::io(name, e))?;
    anon[..bytes.len()].copy_from_slice(bytes);
    anon.make_read_only().map_err(|e| Error::io(name, e))
}

/// A read-only anonymous map of `len` bytes (at least one) that `fill`
/// writes first, returning how many of them it wrote: data decoded
/// straight into the map, with no second copy. Pages `fill` does not touch
/// cost no memory.
pub fn map_filled(
    name: &Path,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<usize>,
) -> Result<(Mmap, usize)> {
    let mut anon = memmap2::MmapMut::map_anon(len.max(1)).map_err(|e| Error::io(name, e))?;
    let n = fill(&mut anon[..len])?.min(len);
    Ok((anon.make_read_only().map_err(|e| Error::io(name, e))?, n))
}

/// The `madvise` value of the advice a map keeps for good (what
/// `crate::fault` re-applies to pages it maps back), or `None` for
/// one-off advice.
pub fn lasting_advice(advice: Advice) -> Option<i32> {
    match advice {
        Advice::HugePage => Some(libc::MADV_HUGEPAGE),
        Advice::NoHugePage => Some(libc::MADV_NOHUGEPAGE),
        Advice::Random => Some(libc::MADV_RANDOM),
        Advice::Sequential => Some(libc::MADV_SEQUENTIAL),
        _ => None,
    }
}

/// Asks the kernel to read `[start, start + len)` of `map` in (clipped to
/// the map); only a hint, so failures are ignored.
pub fn will_need(map: &Mmap, start: usize, len: usize) {
    let len = len.min(map.len().saturating_sub(start));
    if len > 0 {
        let _ = map.advise_range(Advice::WillNeed, start, len);
    }
}

/// Unmaps `[offset, offset + len)` of `map` (clipped to it, widened to
/// pages) from this process (`MADV_DONTNEED`). `map` must be a shared map
/// of a file: its pages stay in the page cache, and the next access maps
/// them again.
pub(crate) fn unmap(map: &Mmap, offset: u64, len: u64) {
    let end = offset.saturating_add(len).min(map.len() as u64);
    let start = offset / PAGE * PAGE;
    if start < end {
        // SAFETY: callers pass only read-only shared maps of files, for
        // which MADV_DONTNEED only unmaps pages: their contents come back
        // from the file on the next access, so no reader can see other
        // bytes.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )
        };
    }
}
