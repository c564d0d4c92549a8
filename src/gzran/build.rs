//! Building a zinfo while a gzip stream is decompressed (one pass): a
//! reader that inflates as mkfs.erofs 1.9 does (lib/gzran.c) and records
//! the same checkpoints, so the zinfo is byte-identical to its `--gzinfo`.
//!
//! mkfs inflates 32 KiB at a time into one buffer with `Z_BLOCK` stops and
//! takes a checkpoint at a block boundary (not the end of a member's last
//! block) when a member starts (right after its header) or when more than
//! `span` bytes were produced since the previous checkpoint. The window it
//! stores is that buffer rotated at the current fill point: the last 32 KiB
//! of output once the buffer has wrapped, and the buffer's earlier contents
//! (zeros at the start) before. A member ending mid-buffer ends mkfs's
//! read, and the next one starts filling at the buffer's start again; this
//! reader keeps the same buffer discipline so the windows match.

use std::cell::RefCell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use super::inflate::{Inflater, AT_BOUNDARY, GZIP, HELD_BITS, LAST_BLOCK};
use super::zinfo::{Checkpoint, Zinfo, WINDOW};

/// Inflate calls in a row that may make no progress before giving up.
const MAX_IDLE: u32 = 64;

/// The checkpoints found so far, shared with the [`GzIndexer`].
#[derive(Clone)]
pub struct ZinfoHandle {
    span: u64,
    checkpoints: Rc<RefCell<Vec<Checkpoint>>>,
}

impl ZinfoHandle {
    /// The zinfo of what was read (complete once the reader hit its end).
    pub fn zinfo(&self) -> Zinfo {
        Zinfo {
            span: self.span,
            checkpoints: self.checkpoints.borrow().clone(),
            lazy: None,
        }
    }
}

/// Decompresses a gzip stream (members concatenated) and indexes it.
pub struct GzIndexer<R> {
    inner: R,
    inflater: Inflater,
    /// mkfs's output buffer: filled from 0 to `fill` in the current read.
    buf: Box<[u8]>,
    /// Where inflate writes: zlib-rs may use the space past what it
    /// returns as scratch, which C zlib leaves alone and mkfs's windows
    /// show, so only the bytes produced are copied to `buf`.
    scratch: Box<[u8]>,
    fill: usize,
    served: usize,
    /// The current read ended early (a member ended mid-buffer).
    ended: bool,
    /// Bytes consumed from `inner` and produced.
    total_in: u64,
    total_out: u64,
    /// A member just started: its first boundary is a checkpoint.
    initial: bool,
    /// Between members: the input may end here.
    between: bool,
    eof: bool,
    handle: ZinfoHandle,
}

impl<R: BufRead> GzIndexer<R> {
    /// A reader of the uncompressed stream of `inner` (gzip from its first
    /// byte), with checkpoints every `span` bytes or so.
    pub fn new(inner: R, span: u64) -> io::Result<(Self, ZinfoHandle)> {
        let inflater = Inflater::new(GZIP).map_err(io::Error::other)?;
        let handle = ZinfoHandle {
            span,
            checkpoints: Rc::default(),
        };
        let reader = Self {
            inner,
            inflater,
            buf: vec![0; WINDOW].into_boxed_slice(),
            scratch: vec![0; WINDOW].into_boxed_slice(),
            fill: 0,
            served: 0,
            ended: false,
            total_in: 0,
            total_out: 0,
            initial: true,
            between: false,
            eof: false,
            handle: handle.clone(),
        };
        Ok((reader, handle))
    }

    /// Inflates until some output is ready, the buffer's read ends or the
    /// input ends between members.
    fn step(&mut self) -> io::Result<()> {
        if self.fill == WINDOW || self.ended {
            self.fill = 0;
            self.served = 0;
            self.ended = false;
        }
        let mut idle = 0;
        loop {
            let input = self.inner.fill_buf()?;
            if input.is_empty() {
                if self.between {
                    self.eof = true;
                    return Ok(());
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("gzip stream truncated at byte {}", self.total_in),
                ));
            }
            let step = self
                .inflater
                .inflate(input, &mut self.scratch[..WINDOW - self.fill], true)
                .map_err(|m| {
                    let at = self.total_in;
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("gzip data near byte {at}: {m}"),
                    )
                })?;
            self.inner.consume(step.consumed);
            self.buf[self.fill..self.fill + step.produced]
                .copy_from_slice(&self.scratch[..step.produced]);
            self.total_in += step.consumed as u64;
            self.total_out += step.produced as u64;
            self.fill += step.produced;
            if step.consumed > 0 {
                self.between = false;
            }
            if step.end {
                self.inflater.reset(GZIP).map_err(io::Error::other)?;
                self.initial = true;
                self.between = true;
                if self.fill > 0 {
                    self.ended = true;
                    return Ok(());
                }
                continue;
            }
            let boundary = step.data_type & AT_BOUNDARY != 0 && step.data_type & LAST_BLOCK == 0;
            if boundary && (self.initial || self.total_out - self.last_out() > self.handle.span) {
                self.checkpoint(step.data_type & HELD_BITS);
            }
            if self.fill == WINDOW || step.produced > 0 {
                return Ok(());
            }
            if step.consumed == 0 {
                idle += 1;
                if idle > MAX_IDLE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "gzip data near byte {}: inflate makes no progress",
                            self.total_in
                        ),
                    ));
                }
            }
        }
    }

    /// Output offset of the last checkpoint (0 before the first).
    fn last_out(&self) -> u64 {
        self.handle
            .checkpoints
            .borrow()
            .last()
            .map_or(0, |cp| cp.out)
    }

    /// Records a checkpoint here, `held` bits of input being in inflate's
    /// bit buffer.
    fn checkpoint(&mut self, held: i32) {
        let bit = self.total_in * 8 - held as u64;
        let input = bit.div_ceil(8);
        let mut window = Vec::with_capacity(WINDOW);
        window.extend_from_slice(&self.buf[self.fill..]);
        window.extend_from_slice(&self.buf[..self.fill]);
        self.handle.checkpoints.borrow_mut().push(Checkpoint {
            input,
            out: self.total_out,
            bits: (input * 8 - bit) as u8,
            window: window.into_boxed_slice(),
        });
        self.initial = false;
    }
}

impl<R: BufRead> Read for GzIndexer<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.served == self.fill {
            if self.eof {
                return Ok(0);
            }
            self.step()?;
        }
        let n = out.len().min(self.fill - self.served);
        out[..n].copy_from_slice(&self.buf[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}
