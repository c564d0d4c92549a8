//! A TOC layer (zstd:chunked, eStargz) read from its blob on demand, as the
//! *virtual uncompressed device* its metadata image points into: every
//! regular file's contents laid out back to back, each file starting on a
//! slot boundary ([`TocMap::align`], a whole number of cache chunks, so a
//! cache chunk never holds two files' bytes and a bad frame fails only its
//! own file), the gaps zeros.
//!
//! [`TocMap`] is the extent map, built from the TOC alone: for each chunk
//! of each file, its place on the device, the compressed range that holds
//! it in the blob (a zstd frame, or an eStargz gzip member and the chunk's
//! `innerOffset` in its output) and the digest it must have.
//! [`TocSource`] serves device ranges: it fetches a chunk's compressed
//! range, decodes exactly the chunk (never more than the TOC says), checks
//! its sha256 and only then hands the bytes on (to the chunk cache). A
//! mismatch is fetched once more, then fails the read: never wrong bytes.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use super::{cache::MAX_CHUNKS, ChunkSource};
use crate::error::{Error, Result};
use crate::toc::{EntryType, Format, Toc, TocEntry};

/// Smallest slot alignment (a page, and the metadata image's block).
pub const MIN_ALIGN: u64 = 4096;
/// Largest slot alignment (the chunk cache's largest chunk).
const MAX_ALIGN: u64 = 64 << 20;
/// Largest device: within what a 4 KiB-block device slot addresses
/// (fewer than 2^32 blocks).
pub const MAX_DEVICE: u64 = 1 << 43;
/// Largest chunk decoded (with its eStargz `innerOffset`): decoded chunks
/// are held in memory whole while their digest is checked.
pub const MAX_DECODED: u64 = 64 << 20;
/// Decoded chunks kept for the reads that follow (a cache fill reads a
/// chunk's pieces in separate requests).
const MEMO_BYTES: usize = 64 << 20;
/// Most chunks kept.
const MEMO_COUNT: usize = 16;
/// Most compressed bytes of adjacent chunks fetched in one request.
const MAX_RUN: u64 = 8 << 20;

/// One chunk of a file: `len` bytes at device offset `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Device offset of the chunk's first byte.
    pub start: u64,
    /// Its uncompressed length.
    pub len: u64,
    /// Where its compressed data starts in the blob.
    pub blob_offset: u64,
    /// Where it ends (the next chunk or member, or the file's end).
    pub blob_end: u64,
    /// eStargz: bytes of the member's output before the chunk.
    pub inner: u64,
    /// sha256 of the chunk's bytes.
    pub digest: [u8; 32],
    /// zstd:chunked "zeros": the chunk is zeros, nothing to fetch.
    pub zeros: bool,
}

/// The virtual device of a TOC layer (see the module doc).
#[derive(Debug, Clone)]
pub struct TocMap {
    /// The blob's format.
    pub format: Format,
    /// Every file chunk, by device offset.
    pub extents: Vec<Extent>,
    /// Device offset of each regular file with data: (TOC entry index,
    /// offset), by index.
    pub files: Vec<(usize, u64)>,
    /// Slot alignment: files start at multiples of it.
    pub align: u64,
    /// The device's length.
    pub size: u64,
}

/// An error about the TOC, naming the entry.
fn bad(e: &TocEntry, what: String) -> Error {
    Error::Invalid(format!("TOC entry {:?}: {what}", e.name))
}

/// The 32 bytes of `sha256:<hex>` (well formed: the TOC parser checked).
fn digest_bytes(e: &TocEntry, digest: &str) -> Result<[u8; 32]> {
    digest
        .strip_prefix("sha256:")
        .and_then(crate::format::from_hex)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| bad(e, format!("digest {digest:?} is not sha256:<hex>")))
}

/// A file and its chunks, in TOC order (the file entry first).
struct FileChunks<'a> {
    index: usize,
    file: &'a TocEntry,
    chunks: Vec<&'a TocEntry>,
}

/// The regular files with data, each with its chunk entries.
fn files_of(toc: &Toc) -> Vec<FileChunks<'_>> {
    let mut out: Vec<FileChunks<'_>> = Vec::new();
    for (index, e) in toc.entries.iter().enumerate() {
        match e.kind {
            EntryType::Reg if e.size > 0 => out.push(FileChunks {
                index,
                file: e,
                chunks: vec![e],
            }),
            // The parser put every chunk right after its file's entries.
            EntryType::Chunk => {
                if let Some(f) = out.last_mut().filter(|f| f.file.name == e.name) {
                    f.chunks.push(e);
                }
            }
            _ => {}
        }
    }
    out
}

/// The slot alignment: the smallest power of two from [`MIN_ALIGN`] at
/// which the device has at most half the cache's most chunks.
fn alignment(files: &[FileChunks<'_>]) -> Result<u64> {
    let mut align = MIN_ALIGN;
    loop {
        let chunks = files
            .iter()
            .fold(0u64, |n, f| n.saturating_add(f.file.size.div_ceil(align)));
        if chunks <= MAX_CHUNKS / 2 {
            return Ok(align);
        }
        if align >= MAX_ALIGN {
            return Err(Error::Invalid(format!(
                "TOC: files too large or too many for one device ({chunks} slots of {align} bytes)"
            )));
        }
        align *= 2;
    }
}

impl TocMap {
    /// The map of `toc` (whose entries the parser checked against the
    /// blob): every chunk's place and compressed range, checked so that
    /// chunks cover each file exactly, in order, with ranges inside the
    /// blob's data and sizes bounded ([`MAX_DECODED`]).
    pub fn new(toc: &Toc) -> Result<Self> {
        let files = files_of(toc);
        let align = alignment(&files)?;
        // Where members start (eStargz: a chunk's member ends at the next).
        let mut starts: Vec<u64> = files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.offset))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let mut map = Self {
            format: toc.format,
            extents: Vec::new(),
            files: Vec::with_capacity(files.len()),
            align,
            size: 0,
        };
        let mut cursor = 0u64;
        for f in &files {
            map.files.push((f.index, cursor));
            map.add_file(f, cursor, &starts, toc.data_end)?;
            let slot = f
                .file
                .size
                .checked_next_multiple_of(align)
                .and_then(|s| cursor.checked_add(s))
                .filter(|&end| end <= MAX_DEVICE)
                .ok_or_else(|| {
                    bad(
                        f.file,
                        format!("files past the device's {MAX_DEVICE} bytes"),
                    )
                })?;
            cursor = slot;
        }
        map.size = cursor;
        Ok(map)
    }

    /// Adds the extents of file `f`, whose slot starts at `base`.
    fn add_file(
        &mut self,
        f: &FileChunks<'_>,
        base: u64,
        starts: &[u64],
        data_end: u64,
    ) -> Result<()> {
        let e = f.file;
        for (k, c) in f.chunks.iter().enumerate() {
            let next = f.chunks.get(k + 1).map_or(e.size, |n| n.chunk_offset);
            let expected = self.extents.len();
            let prev_end = if k == 0 {
                0
            } else {
                let last = &self.extents[expected - 1];
                last.start + last.len - base
            };
            if c.chunk_offset != prev_end || next <= c.chunk_offset || next > e.size {
                return Err(bad(
                    e,
                    format!(
                        "chunk at {} of the file (the one before ends at {prev_end}, the next starts at {next})",
                        c.chunk_offset
                    ),
                ));
            }
            let len = next - c.chunk_offset;
            if c.chunk_size != 0 && c.chunk_size != len {
                return Err(bad(
                    e,
                    format!("chunk of {} bytes spans {len}", c.chunk_size),
                ));
            }
            let inner = if self.format == Format::Estargz {
                c.inner_offset
            } else {
                0
            };
            if inner.checked_add(len).is_none_or(|n| n > MAX_DECODED) {
                return Err(bad(
                    e,
                    format!("chunk of {len} bytes at inner offset {inner}: more than {MAX_DECODED} to decode"),
                ));
            }
            let blob_end = match self.format {
                Format::ZstdChunked => f.chunks.get(k + 1).map_or(e.end_offset, |n| n.offset),
                Format::Estargz => {
                    let i = starts.partition_point(|&s| s <= c.offset);
                    starts.get(i).copied().unwrap_or(data_end)
                }
            };
            let compressed = blob_end.checked_sub(c.offset).filter(|&n| n > 0);
            if compressed.is_none() || blob_end > data_end {
                return Err(bad(
                    e,
                    format!(
                        "chunk data [{}, {blob_end}) outside the blob's data or out of order",
                        c.offset
                    ),
                ));
            }
            let digest = match (&c.chunk_digest, f.chunks.len()) {
                (d, _) if !d.is_empty() => digest_bytes(e, d)?,
                (_, 1) => digest_bytes(e, &e.digest)?,
                _ => return Err(bad(e, "a chunk without a digest".into())),
            };
            self.extents.push(Extent {
                start: base + c.chunk_offset,
                len,
                blob_offset: c.offset,
                blob_end,
                inner,
                digest,
                zeros: c.chunk_type == "zeros",
            });
        }
        Ok(())
    }

    /// The device offset of TOC entry `index`'s data, if it is a regular
    /// file with data.
    pub fn file_offset(&self, index: usize) -> Option<u64> {
        let i = self.files.binary_search_by_key(&index, |&(i, _)| i).ok()?;
        Some(self.files[i].1)
    }

    /// Indexes of the extents overlapping `[offset, offset + len)`.
    fn overlapping(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.saturating_add(len);
        let first = self.extents.partition_point(|x| x.start + x.len <= offset);
        let last = self.extents.partition_point(|x| x.start < end);
        first..last.max(first)
    }
}

/// The device of a TOC layer, read from its blob (see the module doc).
pub struct TocSource {
    blob: Arc<dyn ChunkSource>,
    map: Arc<TocMap>,
    /// Recently decoded chunks, by extent index, most recent last.
    memo: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    mismatches: AtomicU64,
    fetched: AtomicU64,
}

impl TocSource {
    /// Serves `map`'s device from `blob` (the layer blob, read by range).
    pub fn new(blob: Arc<dyn ChunkSource>, map: Arc<TocMap>) -> Self {
        Self {
            blob,
            map,
            memo: Mutex::new(VecDeque::new()),
            mismatches: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        }
    }

    /// Chunks whose bytes did not decode to their digest (each counted per
    /// attempt).
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// Compressed bytes fetched from the blob.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The verified bytes of extent `i`: from the memo, or fetched and
    /// decoded (a second time after a mismatch).
    fn extent_bytes(&self, i: usize, fetched: Option<&[u8]>) -> Result<Arc<Vec<u8>>> {
        if let Some(bytes) = self.memoized(i) {
            return Ok(bytes);
        }
        let bytes = match self.decode(i, fetched) {
            Ok(bytes) => bytes,
            Err(Error::Corrupt(first)) => {
                tracing::warn!("{first}; fetching it again");
                self.blob.forget();
                self.decode(i, None)?
            }
            Err(e) => return Err(e),
        };
        let bytes = Arc::new(bytes);
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.push_back((i, bytes.clone()));
        while memo.len() > MEMO_COUNT
            || memo.iter().map(|(_, b)| b.len()).sum::<usize>() > MEMO_BYTES
        {
            memo.pop_front();
        }
        Ok(bytes)
    }

    /// Extent `i`'s bytes, if decoded lately.
    fn memoized(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        let memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.iter().find(|(j, _)| *j == i).map(|(_, b)| b.clone())
    }

    /// The end of the run of extents from `i` (before `end`) whose
    /// compressed ranges follow each other in the blob, none decoded
    /// lately, at most [`MAX_RUN`] bytes: fetched in one request.
    fn run_end(&self, i: usize, end: usize) -> usize {
        let x = &self.map.extents;
        let mut j = i + 1;
        while j < end
            && !x[j].zeros
            && x[j].blob_offset == x[j - 1].blob_end
            && x[j].blob_end - x[i].blob_offset <= MAX_RUN
            && self.memoized(j).is_none()
        {
            j += 1;
        }
        j
    }

    /// Fetches, decodes and checks extent `i`; a decoding error or a
    /// digest mismatch is [`Error::Corrupt`].
    fn decode(&self, i: usize, fetched: Option<&[u8]>) -> Result<Vec<u8>> {
        let x = &self.map.extents[i];
        let name = || format!("{} [{}, {})", self.blob.name(), x.blob_offset, x.blob_end);
        let corrupt = |what: String| Error::corrupt(format!("{}: {what}", name()));
        // The map bounded both: at most MAX_DECODED each.
        let (inner, len) = (x.inner as usize, x.len as usize);
        let mut out = Vec::with_capacity(len);
        if x.zeros {
            out.resize(len, 0);
        } else {
            let size = x.blob_end - x.blob_offset;
            if size > 2 * MAX_DECODED + (1 << 20) {
                return Err(corrupt(format!(
                    "{size} compressed bytes for a chunk of {len}"
                )));
            }
            let mut own = Vec::new();
            let compressed = match fetched {
                Some(bytes) => bytes,
                None => {
                    own.resize(size as usize, 0);
                    self.blob.read_at(x.blob_offset, &mut own)?;
                    self.fetched.fetch_add(size, Ordering::Relaxed);
                    &own[..]
                }
            };
            // zstd:chunked frames hold the chunk alone (one byte more
            // shows a frame longer than the TOC says); an eStargz member
            // goes on with the tar's padding and the next header.
            let want = (inner + len) as u64;
            let decoded = match self.map.format {
                Format::ZstdChunked => zstd::stream::read::Decoder::new(compressed)
                    .and_then(|d| read_bounded(d, want + 1, &mut out)),
                Format::Estargz => {
                    read_bounded(flate2::read::GzDecoder::new(compressed), want, &mut out)
                }
            };
            decoded.map_err(|e| corrupt(format!("does not decode: {e}")))?;
            if out.len() != inner + len {
                return Err(corrupt(format!(
                    "decodes to {} bytes, not the {} the TOC says",
                    out.len(),
                    inner + len
                )));
            }
            out.drain(..inner);
        }
        let actual: [u8; 32] = Sha256::digest(&out).into();
        if actual != x.digest {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            return Err(corrupt(format!(
                "chunk decodes to sha256:{}, not the TOC's sha256:{}",
                crate::format::hex(&actual),
                crate::format::hex(&x.digest)
            )));
        }
        Ok(out)
    }
}

/// Reads at most `max` bytes of `reader` into `out`.
fn read_bounded(reader: impl Read, max: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    reader.take(max).read_to_end(out).map(|_| ())
}

impl ChunkSource for TocSource {
    fn len(&self) -> u64 {
        self.map.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        super::check_range(&self.name(), self.map.size, offset, buf)?;
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let extents = self.map.overlapping(offset, buf.len() as u64);
        let mut i = extents.start;
        while i < extents.end {
            // Extents adjacent in the blob (a file's chunks) in one request.
            let run = i..self.run_end(i, extents.end);
            let joined = if run.len() > 1 {
                let (from, to) = (
                    self.map.extents[i].blob_offset,
                    self.map.extents[run.end - 1].blob_end,
                );
                let mut bytes = vec![0u8; (to - from) as usize];
                if let Err(e) = self.blob.read_at(from, &mut bytes) {
                    buf.fill(0);
                    return Err(e);
                }
                self.fetched.fetch_add(to - from, Ordering::Relaxed);
                Some((from, bytes))
            } else {
                None
            };
            for j in run.clone() {
                let x = &self.map.extents[j];
                let part = joined.as_ref().map(|(from, bytes)| {
                    &bytes[(x.blob_offset - from) as usize..(x.blob_end - from) as usize]
                });
                let bytes = match self.extent_bytes(j, part) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        buf.fill(0);
                        return Err(e);
                    }
                };
                let (from, to) = (offset.max(x.start), end.min(x.start + x.len));
                let src = &bytes[(from - x.start) as usize..(to - x.start) as usize];
                buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            }
            i = run.end;
        }
        Ok(())
    }

    fn name(&self) -> String {
        format!("{} (uncompressed)", self.blob.name())
    }

    fn forget(&self) {
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.blob.forget();
    }
}

#[cfg(test)]
#[path = "toc_tests.rs"]
mod tests;
