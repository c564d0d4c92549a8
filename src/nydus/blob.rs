//! A Nydus data blob seen as the uncompressed device the bootstrap's chunk
//! addresses point into: byte `x` of the device is byte `x -
//! uncompressed_offset` of the chunk whose uncompressed range holds it.
//! A read finds its chunks by binary search, reads their bytes from the
//! blob file, decodes them, checks their digest when the bootstrap records
//! one, and copies out; decoded chunks are kept in the reader's bounded
//! decoded-extent cache. A chunk that does not fit the blob, does not
//! decode to its size or does not match its digest fails the read (EIO),
//! never serves bytes; bytes no chunk covers fail it too, and so does a
//! read that crosses from one chunk into the next (nydus finds a file's
//! chunk by its exact start, so a file chunk never spans two records).

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::decode::Decoders;
use super::layout::{
    BlobInfo, ChunkInfo, Compressor, Digester, CHUNK_COMPRESSED, CHUNK_HAS_CRC32, CHUNK_UNSUPPORTED,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::lazy::ChunkSource;
use crate::reader::{CacheKey, ExtentCache};

/// What identifies a decoded chunk in the shared cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ChunkKey {
    blob: u32,
    chunk: u32,
    len: u32,
}

impl CacheKey for ChunkKey {
    fn decoded_len(&self) -> u64 {
        u64::from(self.len)
    }
}

/// The decoded-chunk cache the blobs of one image share.
pub(crate) type ChunkCache = ExtentCache<ChunkKey>;

/// One blob's uncompressed device (see the module doc).
pub struct BlobSource {
    info: BlobInfo,
    /// The blob file, mapped.
    blob: Device,
    /// This blob's chunks by uncompressed offset, not overlapping.
    chunks: Vec<ChunkInfo>,
    /// For each chunk, the index just past the run of chunks laid end to
    /// end from it, all of the blob's chunk size but the last: a file
    /// chunk's check is then a search, not a walk over the file.
    run_end: Vec<usize>,
    len: u64,
    cache: Arc<ChunkCache>,
    decoders: Decoders,
}

impl BlobSource {
    /// The device of blob `info` read from `blob` (the blob file, mapped),
    /// with the bootstrap's `chunks` of this blob. Overlapping chunks are an
    /// error.
    pub(crate) fn new(
        info: BlobInfo,
        blob: Device,
        chunks: Vec<ChunkInfo>,
        cache: Arc<ChunkCache>,
    ) -> Result<Self> {
        let mut chunks = chunks;
        chunks.sort_unstable_by_key(|c| (c.uncompressed_offset, c.uncompressed_size));
        chunks.dedup();
        let mut end = 0u64;
        for c in &chunks {
            if c.uncompressed_offset < end {
                return Err(Error::corrupt(format!(
                    "{}: blob {}: chunks overlap at uncompressed offset {}",
                    blob.path().display(),
                    info.id,
                    c.uncompressed_offset
                )));
            }
            // No overflow: within the blob's uncompressed size (checked
            // when parsed, at most 2^44).
            end = c.uncompressed_offset + u64::from(c.uncompressed_size);
        }
        // Whole 4 KiB blocks (the reader checks a run's blocks lie in its
        // device); not the slot's or blob table's size, which a hostile
        // bootstrap could make huge while no chunk backs it.
        let len = end.checked_next_multiple_of(4096).ok_or_else(|| {
            Error::corrupt(format!(
                "{}: blob {}: chunks end at uncompressed offset {end}",
                blob.path().display(),
                info.id
            ))
        })?;
        let run_end = runs(&chunks, info.chunk_size);
        Ok(Self {
            len,
            info,
            blob,
            chunks,
            run_end,
            cache,
            decoders: Decoders::new()?,
        })
    }

    /// The decoded, checked bytes of chunk `i`.
    fn chunk_bytes(&self, i: usize) -> Result<Arc<[u8]>> {
        let c = &self.chunks[i];
        let key = ChunkKey {
            blob: self.info.index,
            chunk: i as u32,
            len: c.uncompressed_size,
        };
        if let Some(bytes) = self.cache.get(&key) {
            return Ok(bytes);
        }
        self.cache.get_or_decode(key, |out| self.decode(c, out))
    }

    /// An error about chunk `c`, naming the blob.
    fn corrupt(&self, c: &ChunkInfo, what: impl std::fmt::Display) -> Error {
        Error::corrupt(format!(
            "{}: blob {} chunk at uncompressed offset {} ([{}, +{}) in the file): {what}",
            self.blob.path().display(),
            self.info.id,
            c.uncompressed_offset,
            c.compressed_offset,
            c.compressed_size
        ))
    }

    /// Reads chunk `c`'s stored bytes and decodes them into `out` (its
    /// uncompressed size), then checks its digest.
    fn decode(&self, c: &ChunkInfo, out: &mut [u8]) -> Result<()> {
        if c.flags & CHUNK_UNSUPPORTED != 0 {
            return Err(self.corrupt(
                c,
                format!("flags {:#x} (encrypted or batch) not supported", c.flags),
            ));
        }
        let size = u64::from(c.compressed_size);
        let file_len = self.blob.len();
        if c.compressed_offset
            .checked_add(size)
            .is_none_or(|end| end > file_len)
        {
            return Err(self.corrupt(
                c,
                format!("past the end of the blob file ({file_len} bytes)"),
            ));
        }
        // Bounded when parsed (MAX_CHUNK_SIZE); read as file data, since
        // it is copied out at once.
        let stored = self.blob.slice(c.compressed_offset, size)?;
        let compressor = match c.flags & CHUNK_COMPRESSED {
            0 => Compressor::None,
            _ => self.info.compressor,
        };
        self.decoders
            .decode(compressor, stored, out)
            .map_err(|e| self.corrupt(c, e))?;
        self.check_digest(c, out)
    }

    /// Checks `out` against chunk `c`'s digest, when one is recorded, else
    /// against its crc32c when flagged (as nydus's `check_crc`).
    fn check_digest(&self, c: &ChunkInfo, out: &[u8]) -> Result<()> {
        if c.digest == [0; 32] {
            let actual = crc32c::crc32c(out);
            if c.flags & CHUNK_HAS_CRC32 != 0 && actual != c.crc32 {
                return Err(self.corrupt(
                    c,
                    format!(
                        "crc32c {actual:#010x}, not the bootstrap's {:#010x}",
                        c.crc32
                    ),
                ));
            }
            return Ok(());
        }
        let actual: [u8; 32] = match self.info.digester {
            Digester::Blake3 => *blake3::hash(out).as_bytes(),
            Digester::Sha256 => Sha256::digest(out).into(),
        };
        if actual != c.digest {
            return Err(self.corrupt(
                c,
                format!(
                    "{} {} does not match the bootstrap's {}",
                    self.info.digester.name(),
                    crate::format::hex(&actual),
                    crate::format::hex(&c.digest)
                ),
            ));
        }
        Ok(())
    }
}

impl BlobSource {
    /// The index of the chunk whose uncompressed range holds `offset`.
    fn chunk_at(&self, offset: u64) -> Option<usize> {
        let i = self
            .chunks
            .partition_point(|c| c.uncompressed_offset + u64::from(c.uncompressed_size) <= offset);
        self.chunks
            .get(i)
            .is_some_and(|c| c.uncompressed_offset <= offset)
            .then_some(i)
    }
}

impl ChunkSource for BlobSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        let mut next = self.chunk_at(offset);
        // Chunk after chunk, each starting where the last ended.
        while let Some(i) = next.filter(|_| at < end) {
            let c = &self.chunks[i];
            let bytes = self.chunk_bytes(i).inspect_err(|_| buf.fill(0))?;
            let to = end.min(c.uncompressed_offset + bytes.len() as u64);
            let src = &bytes
                [(at - c.uncompressed_offset) as usize..(to - c.uncompressed_offset) as usize];
            buf[(at - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            at = to;
            next = Some(i + 1).filter(|&j| {
                self.chunks
                    .get(j)
                    .is_some_and(|n| n.uncompressed_offset == at)
            });
        }
        if at < end {
            // Never part of a read: all of it, or an error.
            buf.fill(0);
            return Err(Error::corrupt(format!(
                "{}: no chunk holds uncompressed offset {at}",
                self.name()
            )));
        }
        Ok(())
    }

    fn check_extent(&self, offset: u64, len: u64, record: u32) -> Result<()> {
        // A file chunk starts at the chunk record its address names (nydus
        // looks records up by blob, CI index and block) and runs over whole
        // records laid end to end (nydus-image makes a file's EROFS chunk
        // as large as the file when its chunks are contiguous); its last
        // block may end past the last record, not into another. Records
        // before the last are of the blob's chunk size, as nydusd indexes
        // them.
        let first = self
            .chunks
            .partition_point(|c| c.uncompressed_offset < offset);
        let end = offset.saturating_add(len);
        // The records the file chunk covers: from `first`, end to end, up
        // to the first that starts at or past `end`.
        let starts_here = self
            .chunks
            .get(first)
            .is_some_and(|c| c.uncompressed_offset == offset && offset < end);
        let (i, at) = if starts_here {
            let before_end = self.chunks.partition_point(|c| c.uncompressed_offset < end);
            let i = self.run_end[first].min(before_end);
            let last = &self.chunks[i - 1];
            (
                i,
                last.uncompressed_offset + u64::from(last.uncompressed_size),
            )
        } else {
            (first, offset)
        };
        let limit = self
            .chunks
            .get(i)
            .map_or(self.len, |c| c.uncompressed_offset);
        let named = self.chunks.get(first).is_some_and(|c| c.index == record);
        if at == offset || !named || end > limit || (at < end && end - at >= 4096) {
            return Err(Error::corrupt(format!(
                "{}: a file chunk of {len} bytes at uncompressed offset {offset} (record {record}) is not made of whole chunk records of the blob",
                self.name()
            )));
        }
        Ok(())
    }

    fn name(&self) -> String {
        format!("{} (blob {})", self.blob.path().display(), self.info.id)
    }
}

/// For each of `chunks` (sorted, not overlapping), the index just past the
/// run that starts there: chunks laid end to end, each before the last of
/// `chunk_size` bytes.
fn runs(chunks: &[ChunkInfo], chunk_size: u32) -> Vec<usize> {
    let mut run_end = vec![0; chunks.len()];
    for k in (0..chunks.len()).rev() {
        let c = &chunks[k];
        let joins_next = c.uncompressed_size == chunk_size
            && chunks.get(k + 1).is_some_and(|n| {
                n.uncompressed_offset == c.uncompressed_offset + u64::from(c.uncompressed_size)
            });
        run_end[k] = if joins_next { run_end[k + 1] } else { k + 1 };
    }
    run_end
}
