//! Devices whose bytes arrive on demand: a sparse cache file the size of
//! the whole device, filled chunk by chunk from a [`ChunkSource`] (a
//! registry blob, a gzip file inflated from its zinfo's checkpoints) just
//! before a reader touches them, with a persistent map of the chunks that
//! are present so a later open reuses them.
//!
//! [`ChunkCache::ensure`] is the one entry point: [`crate::device::Device`]
//! calls it for every range it is about to read through its memory map of
//! the cache file. Missing chunks of the range are fetched in requests of
//! adjacent chunks (up to [`CacheOptions::max_request`] bytes), at most
//! [`CacheOptions::max_in_flight`] at a time; a reader of a chunk another
//! thread is fetching waits for it instead of fetching it again. A chunk is
//! recorded in the map only after its bytes are written and synced, so a
//! killed process leaves a map that lists complete chunks only.

mod cache;
mod gz;
mod map;
mod prefetch;
pub mod toc;
mod verified;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::registry::ImageSource;

pub use cache::{CacheOptions, CacheStats, ChunkCache};
pub use gz::{CachedWindows, GzSource};
pub use prefetch::Prefetch;
pub use toc::{TocMap, TocSource};
#[cfg(test)]
pub(crate) use verified::tree_for_tests;
pub use verified::{TrustedLeaves, VerifiedSource, MAX_TREE};

/// Where the bytes of a lazy device come from. Shared by every thread that
/// reads the device, so it takes `&self`.
pub trait ChunkSource: Send + Sync {
    /// The whole device's length in bytes.
    fn len(&self) -> u64;

    /// Whether the device holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset` (the caller keeps the range
    /// inside [`ChunkSource::len`]); any retrying is the source's, and an
    /// error means the bytes are not there.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// How errors name this source.
    fn name(&self) -> String;

    /// Checks that a file's chunk of `len` bytes may start at `offset`,
    /// its chunk index naming record `record` in the bits EROFS leaves
    /// unused (a source made of records, a Nydus blob, refuses a chunk that
    /// is not that record of its own); any range by default.
    fn check_extent(&self, offset: u64, len: u64, record: u32) -> Result<()> {
        let _ = (offset, len, record);
        Ok(())
    }

    /// Drops what the source holds in memory of earlier reads, so that the
    /// next read fetches anew (after a read that failed verification).
    fn forget(&self) {}
}

/// Checks that `buf.len()` bytes at `offset` lie inside `len` bytes.
fn check_range(name: &str, len: u64, offset: u64, buf: &[u8]) -> Result<()> {
    match offset.checked_add(buf.len() as u64) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::corrupt(format!(
            "{name}: read of {} bytes at offset {offset} is past its end ({len} bytes)",
            buf.len()
        ))),
    }
}

/// A blob of a registry or image layout, read by range requests (not
/// verified: what the source serves is what the cache keeps).
pub struct RemoteBlob {
    /// The registry or layout the blob is in.
    pub source: Arc<dyn ImageSource>,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Its size, from the descriptor.
    pub size: u64,
}

impl ChunkSource for RemoteBlob {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name(), self.size, offset, buf)?;
        self.source.blob_range(&self.digest, offset, buf)
    }

    fn name(&self) -> String {
        format!("{}@{}", self.source.name(), self.digest)
    }
}

/// A local file read as a chunk source (tests, and local layers that will
/// be read through the same cache later).
pub struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileSource {
    /// Opens `path`, whose length at open is the device's length.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len,
        })
    }
}

impl ChunkSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name(), self.len, offset, buf)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}
