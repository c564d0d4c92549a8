//! Random-access reads of a gzip file's uncompressed stream through its
//! zinfo: inflate from the nearest checkpoint at or before the offset,
//! skip to it, fill the buffer. The reader keeps its inflate state, so a
//! read that starts where the previous one ended (or a little after, before
//! the next checkpoint) continues instead of starting over: sequential
//! reads cost one pass.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::inflate::{Inflater, Step, AT_BOUNDARY, GZIP, HELD_BITS, LAST_BLOCK, RAW};
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
    /// The next checkpoint to check when the output reaches it.
    next: usize,
    /// The last [`WINDOW`] bytes of output, at `out % WINDOW`.
    ring: Box<[u8]>,
    /// Output offset where the current gzip member's data starts (its
    /// checkpoint's window is mkfs's buffer, not history: not checked).
    member_out: u64,
    /// zlib's `data_type` after the last call.
    data_type: i32,
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

    /// Where the next read continues without starting over: the
    /// uncompressed offset the last read ended at, if it succeeded.
    pub fn position(&self) -> Option<u64> {
        self.cursor.as_ref().map(|c| c.out)
    }

    /// The uncompressed stream's length, found by inflating from the last
    /// checkpoint to the end (at most about a span; the zinfo does not
    /// record it, and gzip's ISIZE is modulo 4 GiB and per member).
    pub fn stream_len(&mut self) -> Result<u64, GzError> {
        let mut at = self.zinfo.checkpoints.last().map_or(0, |cp| cp.out);
        let mut buf = vec![0; 1 << 20];
        loop {
            match self.read_at(at, &mut buf)? {
                0 => return Ok(at),
                n => at += n as u64,
            }
        }
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
                next: 1,
                ring: vec![0; WINDOW].into_boxed_slice(),
                member_out: 0,
                data_type: 0,
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
        let window = self
            .zinfo
            .window(index)
            .map_err(|m| self.error(format!("zinfo: {m}")))?;
        inflater.set_dictionary(window).map_err(|m| self.error(m))?;
        Ok(Cursor {
            next: index + 1,
            ring: ring_of(cp.out, window),
            member_out: u64::MAX,
            data_type: 0,
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

    /// Inflates some bytes into `out` (0: the stream ended cleanly),
    /// first checking the checkpoints the cursor has reached.
    fn produce(&mut self, out: &mut [u8]) -> Result<usize, GzError> {
        let cursor = self.cursor.as_mut().expect("cursor set");
        check_reached(cursor, &self.source, &self.zinfo, &self.name)?;
        // Stop at the next checkpoint, to check it there, at the block
        // boundary (a call without Z_BLOCK may read past it while the
        // output is full).
        let (out, block) = match self.zinfo.checkpoints.get(cursor.next) {
            Some(cp) if cp.out - cursor.out <= out.len() as u64 => {
                (&mut out[..(cp.out - cursor.out) as usize], true)
            }
            _ => (out, false),
        };
        let mut idle = 0;
        loop {
            let Some(step) = cursor.advance(&self.source, &self.name, out, block)? else {
                return Ok(0);
            };
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.consumed == 0 && !step.end {
                idle += 1;
                if idle > MAX_IDLE {
                    let at = cursor.input;
                    return Err(GzError::new(
                        &self.name,
                        format!("inflate makes no progress at byte {at}"),
                    ));
                }
            }
        }
    }

    fn error(&self, message: String) -> GzError {
        GzError::new(&self.name, message)
    }
}

impl Cursor {
    /// Refills the input or skips trailer bytes as needed, then makes one
    /// inflate call into `out` (`block`: stopping at block boundaries too).
    /// `None`: the input ended cleanly, between members.
    fn advance<S: ReadAt>(
        &mut self,
        source: &S,
        name: &str,
        out: &mut [u8],
        block: bool,
    ) -> Result<Option<Step>, GzError> {
        loop {
            if self.at == self.buf.len() {
                self.buf.resize(CHUNK, 0);
                let n = source
                    .read_at(&mut self.buf, self.input)
                    .map_err(|e| GzError::new(name, e.to_string()))?;
                self.buf.truncate(n);
                self.at = 0;
                if n == 0 {
                    if self.between && self.skip == 0 {
                        return Ok(None);
                    }
                    let at = self.input;
                    return Err(GzError::new(
                        name,
                        format!("truncated: the gzip data ends at byte {at}, inside a member"),
                    ));
                }
            }
            if self.skip == 0 {
                break;
            }
            let n = (self.skip as usize).min(self.buf.len() - self.at);
            self.at += n;
            self.input += n as u64;
            self.skip -= n as u8;
        }
        let at = self.input;
        let step = self
            .inflater
            .inflate(&self.buf[self.at..], out, block)
            .map_err(|m| GzError::new(name, format!("gzip data near byte {at}: {m}")))?;
        self.at += step.consumed;
        self.input += step.consumed as u64;
        self.remember(&out[..step.produced]);
        self.data_type = step.data_type;
        if step.consumed > 0 {
            self.between = false;
        }
        if step.end {
            // The member's end: its trailer (checked by zlib unless the
            // member was entered raw), then the next member's header.
            if self.raw {
                self.skip = 8;
            }
            self.raw = false;
            self.between = true;
            self.member_out = self.out;
            self.inflater
                .reset(GZIP)
                .map_err(|m| GzError::new(name, m))?;
        }
        Ok(Some(step))
    }

    /// Adds `bytes`, just produced, to the output and its ring.
    fn remember(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(WINDOW)..];
        let mut pos = ((self.out + (bytes.len() - tail.len()) as u64) % WINDOW as u64) as usize;
        for part in [
            &tail[..tail.len().min(WINDOW - pos)],
            &tail[tail.len().min(WINDOW - pos)..],
        ] {
            self.ring[pos..pos + part.len()].copy_from_slice(part);
            pos = (pos + part.len()) % WINDOW;
        }
        self.out += bytes.len() as u64;
    }

    /// Whether `window` is the last [`WINDOW`] bytes of output.
    fn window_is(&self, window: &[u8]) -> bool {
        let p = (self.out % WINDOW as u64) as usize;
        self.ring[p..] == window[..WINDOW - p] && self.ring[..p] == window[WINDOW - p..]
    }
}

/// A ring holding the window of a checkpoint at output `out`, as
/// [`Cursor::remember`] keeps it.
fn ring_of(out: u64, window: &[u8]) -> Box<[u8]> {
    let mut ring = vec![0; WINDOW];
    let p = (out % WINDOW as u64) as usize;
    ring[p..].copy_from_slice(&window[..WINDOW - p]);
    ring[..p].copy_from_slice(&window[WINDOW - p..]);
    ring.into_boxed_slice()
}

/// Checks the checkpoints at the cursor's output offset against the stream:
/// the block boundary there must be where each says, and its window (for
/// one inside a member) the output before it. A zinfo that lies about a
/// checkpoint a sequential read passes is an error, not wrong bytes later.
fn check_reached<S: ReadAt>(
    cursor: &mut Cursor,
    source: &S,
    zinfo: &Zinfo,
    name: &str,
) -> Result<(), GzError> {
    while let Some(cp) = zinfo
        .checkpoints
        .get(cursor.next)
        .filter(|cp| cp.out == cursor.out)
    {
        let index = cursor.next;
        let wrong = |why: &str| {
            let at = format!("zinfo checkpoint {index} (in {} out {})", cp.input, cp.out);
            GzError::new(name, format!("{at}: {why}"))
        };
        // Reach the boundary, stopping at block ends; a member's last
        // block and trailer may come first. Output is room for one byte
        // (zlib-rs decodes nothing into none): any byte is a mismatch.
        let mut tries = 0;
        let data_type = loop {
            // The last call may have stopped right there (a call entering
            // at a boundary does not stop at it again).
            let last = cursor.data_type;
            if last & AT_BOUNDARY != 0 && last & LAST_BLOCK == 0 && !cursor.between {
                break last;
            }
            let mut byte = [0u8];
            let Some(step) = cursor.advance(source, name, &mut byte, true)? else {
                return Err(wrong("the gzip data ends before it"));
            };
            if step.produced > 0 {
                return Err(wrong("no deflate block starts there"));
            }
            let boundary = step.data_type & AT_BOUNDARY != 0 && step.data_type & LAST_BLOCK == 0;
            if boundary && !step.end {
                break step.data_type;
            }
            tries += 1;
            if tries > MAX_IDLE {
                return Err(wrong("no deflate block starts there"));
            }
        };
        let bit = cursor.input * 8 - (data_type & HELD_BITS) as u64;
        let input = bit.div_ceil(8);
        if (input, (input * 8 - bit) as u8) != (cp.input, cp.bits) {
            return Err(wrong(&format!(
                "the block starts at byte {input} bit {}",
                input * 8 - bit
            )));
        }
        let member_start = !cursor.raw && cursor.out == cursor.member_out;
        // A window not fetched yet (a lazy zinfo) is not fetched for this.
        let window = zinfo.window_if_loaded(index);
        if !member_start && window.is_some_and(|w| !cursor.window_is(w)) {
            return Err(wrong("its window is not the data before it"));
        }
        cursor.next += 1;
        cursor.data_type = 0;
    }
    Ok(())
}
