//! A Nydus data blob seen as the uncompressed device the bootstrap's chunk
//! addresses point into: byte `x` of the device is byte `x -
//! uncompressed_offset` of the chunk whose uncompressed range holds it.
//! A read finds its chunks by binary search, reads their bytes from the
//! blob file, decodes them, checks their digest when the bootstrap records
//! one, and copies out; decoded chunks are kept in the reader's bounded
//! decoded-extent cache. A chunk that does not fit the blob, does not
//! decode to its size or does not match its digest fails the read (EIO),
//! never serves bytes; bytes no chunk covers fail it too.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::layout::{
    BlobInfo, ChunkInfo, Compressor, Digester, CHUNK_COMPRESSED, CHUNK_UNSUPPORTED,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::COMPRESSION_LZ4;
use crate::lazy::ChunkSource;
use crate::reader::{CacheKey, Codecs, ExtentCache};

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
    len: u64,
    cache: Arc<ChunkCache>,
    codecs: Codecs,
    mismatches: AtomicU64,
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
            // No overflow: checked when parsed.
            end = c.uncompressed_offset + u64::from(c.uncompressed_size);
        }
        Ok(Self {
            // Whole 4 KiB blocks (the reader checks a run's blocks lie in
            // its device); not the slot's or blob table's size, which a
            // hostile bootstrap could make huge while no chunk backs it.
            len: end.next_multiple_of(4096),
            info,
            blob,
            chunks,
            cache,
            codecs: Codecs::with_configs(true, &[])?,
            mismatches: AtomicU64::new(0),
        })
    }

    /// Chunks whose bytes did not match their digest.
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
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
        let compressed = c.flags & CHUNK_COMPRESSED != 0;
        match (compressed, self.info.compressor) {
            (false, _) | (true, Compressor::None) => {
                if stored.len() != out.len() {
                    return Err(self.corrupt(
                        c,
                        format!("{size} bytes stored for {} uncompressed", out.len()),
                    ));
                }
                out.copy_from_slice(stored);
            }
            (true, Compressor::Lz4Block) => {
                self.codecs.decode(COMPRESSION_LZ4, stored, out, false)?
            }
            (true, Compressor::Zstd) => {
                let n = zstd::bulk::Decompressor::new()
                    .and_then(|mut d| d.decompress_to_buffer(stored, out))
                    .map_err(|e| self.corrupt(c, format!("zstd: {e}")))?;
                if n != out.len() {
                    return Err(self.corrupt(c, format!("zstd: {n} bytes, not {}", out.len())));
                }
            }
            (true, Compressor::Gzip) => {
                let mut d = flate2::read::GzDecoder::new(stored);
                d.read_exact(out)
                    .map_err(|e| self.corrupt(c, format!("gzip: {e}")))?;
                let mut more = [0u8; 1];
                if !matches!(d.read(&mut more), Ok(0)) {
                    return Err(self.corrupt(c, "gzip: decodes to more than its size"));
                }
            }
        }
        self.check_digest(c, out)
    }

    /// Checks `out` against chunk `c`'s digest, when one is recorded.
    fn check_digest(&self, c: &ChunkInfo, out: &[u8]) -> Result<()> {
        if c.digest == [0; 32] {
            return Ok(());
        }
        let actual: [u8; 32] = match self.info.digester {
            Digester::Blake3 => *blake3::hash(out).as_bytes(),
            Digester::Sha256 => Sha256::digest(out).into(),
        };
        if actual != c.digest {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
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

impl ChunkSource for BlobSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "{}: read past the end of the blob device",
                    self.name()
                ))
            })?;
        let first = self
            .chunks
            .partition_point(|c| c.uncompressed_offset + u64::from(c.uncompressed_size) <= offset);
        let mut at = offset;
        for (i, c) in self.chunks.iter().enumerate().skip(first) {
            if at >= end {
                break;
            }
            if c.uncompressed_offset > at {
                break;
            }
            let bytes = match self.chunk_bytes(i) {
                Ok(bytes) => bytes,
                Err(e) => {
                    // Never part of a read: all of it, or an error.
                    buf.fill(0);
                    return Err(e);
                }
            };
            let to = end.min(c.uncompressed_offset + bytes.len() as u64);
            let src = &bytes
                [(at - c.uncompressed_offset) as usize..(to - c.uncompressed_offset) as usize];
            buf[(at - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            at = to;
        }
        if at < end {
            buf.fill(0);
            return Err(Error::corrupt(format!(
                "{}: no chunk holds uncompressed offset {at}",
                self.name()
            )));
        }
        Ok(())
    }

    fn name(&self) -> String {
        format!("{} (blob {})", self.blob.path().display(), self.info.id)
    }
}
