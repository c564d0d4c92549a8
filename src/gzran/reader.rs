//! Random-access reads of a gzip file's uncompressed stream through its
//! zinfo: inflate from the nearest checkpoint at or before the offset,
//! skip to it, fill the buffer. The reader keeps its inflate state, so a
//! read that starts where the previous one ended (or a little after, before
//! the next checkpoint) continues instead of starting over: sequential
//! reads cost one pass.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::inflate::{Inflater, GZIP, RAW};
use super::zinfo::{Zinfo, WINDOW};
use super::GzError;

/// Compressed bytes read from the source at a time.
const CHUNK: usize = 64 << 10;
/// Inflate calls in a row that may make no progress (empty blocks held in
/// the bit buffer) before the stream is declared stuck.
const MAX_IDLE: u32 = 64;

/// Positional reads of the compressed file.
pub trait ReadAt {
    /// Reads at `offset` into `buf`, returning the bytes read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

/// Where an inflate in progress is.
struct Cursor {
    inflater: Inflater,
    /// Raw deflate (started at a checkpoint) or gzip (a later member).
    raw: bool,
    /// Between members: the input may end here.
    between: bool,
    /// Trailer bytes still to skip (a raw-started member's CRC and size).
    skip: u8,
    /// Next compressed byte to read from the source.
    input: u64,
    /// Uncompressed offset of the next byte produced.
    out: u64,
    buf: Vec<u8>,
    at: usize,
}

/// Reads the uncompressed stream of a gzip file at any offset.
pub struct GzReader<S> {
    source: S,
    zinfo: Arc<Zinfo>,
    name: String,
    cursor: Option<Cursor>,
    scratch: Vec<u8>,
}

impl<S: ReadAt> GzReader<S> {
    /// A reader of `source` (a gzip file of `len` bytes, named `name` in
    /// errors) through `zinfo`, refusing a zinfo that points past its end.
    pub fn new(source: S, len: u64, zinfo: Arc<Zinfo>, name: &str) -> Result<Self, GzError> {
        zinfo
            .check_fits(len)
            .map_err(|m| GzError::new(name, format!("zinfo: {m}")))?;
        Ok(Self {
            source,
            zinfo,
            name: name.to_string(),
            cursor: None,
            scratch: vec![0; WINDOW],
        })
    }

    /// The zinfo read through.
    pub fn zinfo(&self) -> &Arc<Zinfo> {
        &self.zinfo
    }

    /// Fills `buf` from uncompressed offset `offset`; fewer bytes only at
    /// the end of the stream (0 past it).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, GzError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let index = self.zinfo.checkpoint_for(offset);
        let from = self.zinfo.checkpoints[index].out;
        let reuse = matches!(&self.cursor, Some(c) if c.out <= offset && c.out >= from);
        if !reuse {
            self.cursor = None;
            self.cursor = Some(self.start(index)?);
        }
        let result = self.fill(offset, buf);
        if result.is_err() {
            self.cursor = None;
        }
        result
    }

    /// A cursor at checkpoint `index`: primed, with its window. The first
    /// checkpoint starts at the file's first byte as gzip instead, so that
    /// a read from there checks the member's CRC-32 when it reaches its end.
    fn start(&self, index: usize) -> Result<Cursor, GzError> {
        let cp = &self.zinfo.checkpoints[index];
        if index == 0 {
            return Ok(Cursor {
                inflater: Inflater::new(GZIP).map_err(|m| self.error(m))?,
                raw: false,
                between: false,
                skip: 0,
                input: 0,
                out: 0,
                buf: Vec::new(),
                at: 0,
            });
        }
        let mut inflater = Inflater::new(RAW).map_err(|m| self.error(m))?;
        if cp.bits > 0 {
            let mut byte = [0u8];
            let n = self
                .source
                .read_at(&mut byte, cp.input - 1)
                .map_err(|e| self.error(e.to_string()))?;
            if n != 1 {
                return Err(
                    self.error(format!("checkpoint {index}: byte {} missing", cp.input - 1))
                );
            }
            inflater
                .prime(cp.bits, byte[0] >> (8 - cp.bits))
                .map_err(|m| self.error(m))?;
        }
        inflater
            .set_dictionary(&cp.window)
            .map_err(|m| self.error(m))?;
        Ok(Cursor {
            inflater,
            raw: true,
            between: false,
            skip: 0,
            input: cp.input,
            out: cp.out,
            buf: Vec::new(),
            at: 0,
        })
    }

    /// Skips the cursor to `offset`, then fills `buf`.
    fn fill(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, GzError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let skipped = loop {
            let cursor = self.cursor.as_ref().expect("cursor set");
            let left = offset - cursor.out;
            if left == 0 {
                break true;
            }
            let n = (left as usize).min(scratch.len());
            if self.produce(&mut scratch[..n])? == 0 {
                break false;
            }
        };
        self.scratch = scratch;
        if !skipped {
            return Ok(0);
        }
        let mut done = 0;
        while done < buf.len() {
            let n = self.produce(&mut buf[done..])?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Inflates some bytes into `out` (0: the stream ended cleanly).
    fn produce(&mut self, out: &mut [u8]) -> Result<usize, GzError> {
        let mut idle = 0;
        loop {
            let cursor = self.cursor.as_mut().expect("cursor set");
            if cursor.at == cursor.buf.len() {
                cursor.buf.resize(CHUNK, 0);
                let n = self
                    .source
                    .read_at(&mut cursor.buf, cursor.input)
                    .map_err(|e| GzError::new(&self.name, e.to_string()))?;
                cursor.buf.truncate(n);
                cursor.at = 0;
                if n == 0 {
                    if cursor.between && cursor.skip == 0 {
                        return Ok(0);
                    }
                    let at = cursor.input;
                    return Err(self.error(format!(
                        "truncated: the gzip data ends at byte {at}, inside a member"
                    )));
                }
            }
            if cursor.skip > 0 {
                let n = (cursor.skip as usize).min(cursor.buf.len() - cursor.at);
                cursor.at += n;
                cursor.input += n as u64;
                cursor.skip -= n as u8;
                continue;
            }
            let at = cursor.input;
            let step = cursor
                .inflater
                .inflate(&cursor.buf[cursor.at..], out, false)
                .map_err(|m| GzError::new(&self.name, format!("gzip data near byte {at}: {m}")))?;
            cursor.at += step.consumed;
            cursor.input += step.consumed as u64;
            cursor.out += step.produced as u64;
            if step.consumed > 0 {
                cursor.between = false;
            }
            if step.end {
                // The member's end: its trailer (checked by zlib unless the
                // member was entered raw), then the next member's header.
                if cursor.raw {
                    cursor.skip = 8;
                }
                cursor.raw = false;
                cursor.between = true;
                cursor
                    .inflater
                    .reset(GZIP)
                    .map_err(|m| GzError::new(&self.name, m))?;
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.consumed == 0 && !step.end {
                idle += 1;
                if idle > MAX_IDLE {
                    return Err(self.error(format!("inflate makes no progress at byte {at}")));
                }
            }
        }
    }

    fn error(&self, message: String) -> GzError {
        GzError::new(&self.name, message)
    }
}
