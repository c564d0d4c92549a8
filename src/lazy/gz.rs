//! A gzip blob read as the stream it compresses, through its zinfo: the
//! source of a lazy device that serves a tar from its `.tar.gz`, local or in
//! a registry (each chunk inflated from the checkpoint before it, once,
//! then kept in the cache).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::{ChunkSource, FileSource};
use crate::error::{Error, Result};
use crate::gzran::zinfo::{FIXED, WINDOW};
use crate::gzran::{GzReader, ReadAt, WindowSource, Zinfo};

/// Readers kept between reads: a read that starts where one of them
/// stopped goes on inflating instead of starting at a checkpoint.
const KEPT_READERS: usize = 4;
/// Compressed bytes fetched from the source at a time (one range request
/// for a remote blob; the reader asks for 64 KiB pieces).
const READ_AHEAD: u64 = 256 << 10;

/// The compressed bytes, read from a chunk source in [`READ_AHEAD`] pieces
/// kept until the reader moves past them.
struct Compressed {
    source: Arc<dyn ChunkSource>,
    /// The piece last fetched and where it starts.
    piece: Mutex<(u64, Vec<u8>)>,
}

impl Compressed {
    fn new(source: Arc<dyn ChunkSource>) -> Self {
        Self {
            source,
            piece: Mutex::new((0, Vec::new())),
        }
    }
}

impl ReadAt for Compressed {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let len = self.source.len();
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let mut piece = self.piece.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, bytes) = &mut *piece;
        let held = offset >= *start && offset < *start + bytes.len() as u64;
        if !held {
            let want = (len - offset).min(READ_AHEAD) as usize;
            bytes.resize(want, 0);
            *start = offset;
            if let Err(e) = self.source.read_at(offset, bytes) {
                bytes.clear();
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        let at = (offset - *start) as usize;
        let n = buf.len().min(bytes.len() - at);
        buf[..n].copy_from_slice(&bytes[at..at + n]);
        Ok(n)
    }
}

/// The windows of a version 2 zinfo read through a chunk cache of it
/// (a remote zinfo blob), each entry checked against the checkpoint table
/// the zinfo was opened with.
pub struct CachedWindows {
    cache: Arc<super::ChunkCache>,
    table: Vec<u8>,
}

impl CachedWindows {
    /// Windows of the zinfo in `cache`, whose checkpoints are `table`.
    pub fn new(cache: Arc<super::ChunkCache>, table: Vec<u8>) -> Self {
        Self { cache, table }
    }
}

impl WindowSource for CachedWindows {
    fn read_window(&self, index: usize, window: &mut [u8]) -> std::result::Result<(), String> {
        use std::os::unix::fs::FileExt;
        let named = |e: String| format!("{}: {e}", self.cache.path().display());
        let fixed = self
            .table
            .get(index * FIXED..(index + 1) * FIXED)
            .ok_or_else(|| named(format!("no checkpoint {index}")))?;
        let offset = Zinfo::entry_offset(index);
        let mut entry = vec![0; FIXED + WINDOW];
        self.cache
            .ensure(offset, entry.len() as u64)
            .map_err(|e| e.to_string())?;
        self.cache
            .file()
            .read_exact_at(&mut entry, offset)
            .map_err(|e| named(e.to_string()))?;
        if entry[..FIXED] != *fixed {
            return Err(named(format!(
                "checkpoint {index} is not the one its table gives"
            )));
        }
        window.copy_from_slice(&entry[FIXED..]);
        Ok(())
    }
}

/// The uncompressed stream of a gzip blob with a zinfo.
pub struct GzSource {
    compressed: Arc<dyn ChunkSource>,
    zinfo: Arc<Zinfo>,
    len: u64,
    name: String,
    readers: Mutex<Vec<GzReader<Compressed>>>,
}

impl GzSource {
    /// Opens the gzip file `gz` and its zinfo `zinfo` (both checked; the
    /// stream's length is found by inflating its last span).
    pub fn open(gz: &Path, zinfo: &Path) -> Result<Self> {
        let file: Arc<dyn ChunkSource> = Arc::new(FileSource::open(gz)?);
        let zinfo = Zinfo::open(zinfo).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::new(file, Arc::new(zinfo), None)
    }

    /// The stream `compressed` holds, through `zinfo` (checked against the
    /// blob's length). `len` is the stream's length when known (a remote
    /// blob's, given by its index and checked by its verity tree); else it
    /// is found by inflating the last span.
    pub fn new(
        compressed: Arc<dyn ChunkSource>,
        zinfo: Arc<Zinfo>,
        len: Option<u64>,
    ) -> Result<Self> {
        let name = compressed.name();
        let mut reader = GzReader::new(
            Compressed::new(compressed.clone()),
            compressed.len(),
            zinfo.clone(),
            &name,
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let len = match len {
            Some(len) => len,
            None => reader
                .stream_len()
                .map_err(|e| Error::corrupt(e.to_string()))?,
        };
        Ok(Self {
            compressed,
            zinfo,
            len,
            name,
            readers: Mutex::new(vec![reader]),
        })
    }

    /// A kept reader that stopped exactly at `offset`, else any kept one,
    /// else a new one.
    fn reader_for(&self, offset: u64) -> Result<GzReader<Compressed>> {
        let mut kept = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let at = kept
            .iter()
            .position(|r| r.position() == Some(offset))
            .or_else(|| kept.len().checked_sub(1));
        match at {
            Some(i) => Ok(kept.swap_remove(i)),
            None => GzReader::new(
                Compressed::new(self.compressed.clone()),
                self.compressed.len(),
                self.zinfo.clone(),
                &self.name,
            )
            .map_err(|e| Error::Invalid(e.to_string())),
        }
    }
}

impl ChunkSource for GzSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        super::check_range(&self.name, self.len, offset, buf)?;
        let mut reader = self.reader_for(offset)?;
        let mut done = 0;
        while done < buf.len() {
            let n = reader
                .read_at(offset + done as u64, &mut buf[done..])
                .map_err(|e| Error::corrupt(e.to_string()))?;
            if n == 0 {
                return Err(Error::corrupt(format!(
                    "{}: the stream ends at {} bytes, before {}",
                    self.name,
                    offset + done as u64,
                    offset + buf.len() as u64
                )));
            }
            done += n;
        }
        let mut kept = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_READERS {
            kept.push(reader);
        }
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn forget(&self) {
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.compressed.forget();
    }
}
