//! A gzip file read as the stream it compresses, through its zinfo: the
//! source of a lazy device that serves a tar from its `.tar.gz` (each chunk
//! inflated from the checkpoint before it, once, then kept in the cache).

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::ChunkSource;
use crate::error::{Error, Result};
use crate::gzran::{GzReader, Zinfo};

/// Readers kept between reads: a read that starts where one of them
/// stopped goes on inflating instead of starting at a checkpoint.
const KEPT_READERS: usize = 4;

/// The uncompressed stream of a gzip file with a zinfo.
pub struct GzSource {
    file: Arc<File>,
    file_len: u64,
    zinfo: Arc<Zinfo>,
    len: u64,
    name: String,
    readers: Mutex<Vec<GzReader<Arc<File>>>>,
}

impl GzSource {
    /// Opens the gzip file `gz` and its zinfo `zinfo` (both checked; the
    /// stream's length is found by inflating its last span).
    pub fn open(gz: &Path, zinfo: &Path) -> Result<Self> {
        let file = File::open(gz).map_err(|e| Error::io(gz, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(gz, e))?.len();
        let zinfo = Arc::new(Zinfo::open(zinfo).map_err(|e| Error::Invalid(e.to_string()))?);
        let name = gz.display().to_string();
        let file = Arc::new(file);
        let mut reader = GzReader::new(file.clone(), file_len, zinfo.clone(), &name)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let len = reader
            .stream_len()
            .map_err(|e| Error::corrupt(e.to_string()))?;
        Ok(Self {
            file,
            file_len,
            zinfo,
            len,
            name,
            readers: Mutex::new(vec![reader]),
        })
    }

    /// A kept reader that stopped exactly at `offset`, else any kept one,
    /// else a new one.
    fn reader_for(&self, offset: u64) -> Result<GzReader<Arc<File>>> {
        let mut kept = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let at = kept
            .iter()
            .position(|r| r.position() == Some(offset))
            .or_else(|| kept.len().checked_sub(1));
        match at {
            Some(i) => Ok(kept.swap_remove(i)),
            None => GzReader::new(
                self.file.clone(),
                self.file_len,
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
}
