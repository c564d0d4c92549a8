//! Pcluster decoders (the kernel's `decompressor*.c`), one per algorithm,
//! and the per-algorithm configs of the superblock (`COMPR_CFGS`).
//!
//! Every decoder writes into a buffer of exactly the extent's decoded
//! length and fails if the input would need more or yields less, so a
//! hostile pcluster can neither grow memory nor return short data.
//!
//! Crates: LZ4 is liblz4 (`lz4-sys`), the decoder the kernel's own LZ4 is
//! taken from, including `LZ4_decompress_safe_partial` that dedupe needs;
//! MicroLZMA is liblzma (`liblzma-sys`, bundled xz), the only implementation
//! of that framing; DEFLATE is `flate2` (miniz_oxide, pure Rust, already a
//! dependency for tar.gz); Zstandard is libzstd (`zstd`).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int};

use crate::device::{Access, Device};
use crate::error::{ensure, Error, Result};
use crate::format::{
    read_struct, DeflateConfig, LzmaConfig, ZstdConfig, COMPRESSION_DEFLATE, COMPRESSION_LZ4,
    COMPRESSION_LZMA, COMPRESSION_MAX, COMPRESSION_NAMES, COMPRESSION_ZSTD, INCOMPAT_COMPR_CFGS,
    INCOMPAT_ZERO_PADDING, LZMA_MAX_DICT_SIZE, SUPERBLOCK_OFFSET, ZSTD_MAX_WINDOW_LOG,
    ZSTD_WINDOWLOG_ABSOLUTEMIN,
};

use super::SuperInfo;

/// Decoder parameters for an image, from its superblock and `COMPR_CFGS`.
#[derive(Debug, Clone)]
pub struct Codecs {
    /// Encoded data is right-aligned in its pcluster after zero bytes.
    zero_padding: bool,
    lzma_dict_size: u32,
    zstd_window_log: u8,
}

impl Codecs {
    /// Decoders as an image with these `COMPR_CFGS` records (algorithm,
    /// payload) would have them, checked the same way; for decoding
    /// pclusters outside an image (tests, fuzzing).
    pub fn with_configs(zero_padding: bool, configs: &[(u8, &[u8])]) -> Result<Self> {
        let mut codecs = Self::new(zero_padding);
        for &(alg, data) in configs {
            codecs.configure(alg, data)?;
        }
        Ok(codecs)
    }

    fn new(zero_padding: bool) -> Self {
        Self {
            zero_padding,
            lzma_dict_size: LZMA_MAX_DICT_SIZE,
            zstd_window_log: ZSTD_MAX_WINDOW_LOG,
        }
    }

    /// Reads the compression configs that follow the superblock.
    pub(crate) fn load(primary: &Device, sb: &SuperInfo) -> Result<Self> {
        let mut codecs = Self::new(sb.has_incompat(INCOMPAT_ZERO_PADDING));
        if !sb.has_incompat(INCOMPAT_COMPR_CFGS) {
            return Ok(codecs);
        }
        let algs = sb.available_compr_algs;
        ensure!(
            algs >> COMPRESSION_MAX == 0,
            "unknown compression algorithms {:#x}",
            algs & !((1 << COMPRESSION_MAX) - 1)
        );
        let mut offset = SUPERBLOCK_OFFSET + sb.sb_size as u64;
        for alg in 0..COMPRESSION_MAX {
            if algs & (1 << alg) == 0 {
                continue;
            }
            // Each record: le16 length, payload, 4-byte aligned.
            offset = offset.next_multiple_of(4);
            let len = primary.slice_for(Access::Random, offset, 2)?;
            let len = match u16::from_le_bytes([len[0], len[1]]) {
                0 => 0x10000,
                n => u64::from(n),
            };
            let data = primary
                .slice_for(Access::Random, offset + 2, len)
                .map_err(|_| {
                    Error::corrupt(format!(
                        "{} config runs past the image",
                        COMPRESSION_NAMES[usize::from(alg)].1
                    ))
                })?;
            offset += 2 + len;
            codecs.configure(alg, data)?;
        }
        Ok(codecs)
    }

    fn configure(&mut self, alg: u8, data: &[u8]) -> Result<()> {
        let short = || {
            Error::corrupt(format!(
                "{} config of {} bytes is too short",
                COMPRESSION_NAMES[usize::from(alg)].1,
                data.len()
            ))
        };
        match alg {
            COMPRESSION_LZMA => {
                let cfg: &LzmaConfig = read_struct(data).ok_or_else(short)?;
                ensure!(
                    cfg.format.get() == 0,
                    "unknown LZMA format {}",
                    cfg.format.get()
                );
                ensure!(
                    cfg.dict_size.get() <= LZMA_MAX_DICT_SIZE,
                    "LZMA dictionary of {} bytes (at most {LZMA_MAX_DICT_SIZE})",
                    cfg.dict_size.get()
                );
                self.lzma_dict_size = cfg.dict_size.get().max(4096);
            }
            COMPRESSION_DEFLATE => {
                let cfg: &DeflateConfig = read_struct(data).ok_or_else(short)?;
                ensure!(
                    (8..=15).contains(&cfg.window_bits),
                    "DEFLATE window of 2^{} bytes",
                    cfg.window_bits
                );
            }
            COMPRESSION_ZSTD => {
                let cfg: &ZstdConfig = read_struct(data).ok_or_else(short)?;
                ensure!(cfg.format == 0, "unknown zstd format {}", cfg.format);
                let log = cfg.window_log.saturating_add(ZSTD_WINDOWLOG_ABSOLUTEMIN);
                ensure!(
                    log <= ZSTD_MAX_WINDOW_LOG,
                    "zstd window of 2^{log} bytes (at most 2^{ZSTD_MAX_WINDOW_LOG})"
                );
                self.zstd_window_log = log;
            }
            _ => {}
        }
        Ok(())
    }

    /// Decodes `input` (a whole pcluster) with algorithm `alg` into exactly
    /// `out.len()` bytes. With `partial`, the pcluster may decode to more and
    /// decoding stops once `out` is full.
    pub fn decode(&self, alg: u8, input: &[u8], out: &mut [u8], partial: bool) -> Result<()> {
        let out_len = out.len();
        let name = COMPRESSION_NAMES
            .get(usize::from(alg))
            .map_or("unknown", |(_, n)| *n);
        // Zero padding puts the encoded bytes at the end of the pcluster;
        // only LZ4 predates it, the other algorithms always have it.
        let input = if self.zero_padding || alg != COMPRESSION_LZ4 {
            let margin = input.iter().position(|&b| b != 0).unwrap_or(input.len());
            &input[margin..]
        } else {
            input
        };
        ensure!(!input.is_empty(), "{name} pcluster holds only zeros");
        let out = match alg {
            // Without zero padding the encoded stream may be followed by
            // garbage, so LZ4 must stop once the output is full.
            COMPRESSION_LZ4 => lz4(input, out, partial || !self.zero_padding),
            COMPRESSION_LZMA => lzma(input, out, partial, self.lzma_dict_size),
            COMPRESSION_DEFLATE => deflate(input, out, partial),
            COMPRESSION_ZSTD => zstd(input, out, partial, self.zstd_window_log),
            _ => Err(format!("unknown algorithm {alg}")),
        };
        out.map_err(|why| {
            Error::corrupt(format!(
                "{name} pcluster of {} bytes does not decode to {out_len} bytes: {why}",
                input.len()
            ))
        })
    }
}

extern "C" {
    // Part of the liblz4 that lz4-sys builds and links, but not declared by it.
    fn LZ4_decompress_safe_partial(
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        target_output_size: c_int,
        dst_capacity: c_int,
    ) -> c_int;
}

/// What a decoder says on failure.
type Outcome = std::result::Result<(), String>;

fn lz4(input: &[u8], out: &mut [u8], partial: bool) -> Outcome {
    let out_len = out.len();
    let (Ok(in_len), Ok(cap)) = (c_int::try_from(input.len()), c_int::try_from(out_len)) else {
        return Err("too large".into());
    };
    let src = input.as_ptr().cast::<c_char>();
    let dst = out.as_mut_ptr().cast::<c_char>();
    // SAFETY: liblz4's safe decoders never read past `in_len` input bytes
    // nor write past `cap` output bytes, whatever the input.
    let n = unsafe {
        if partial {
            LZ4_decompress_safe_partial(src, dst, in_len, cap, cap)
        } else {
            lz4_sys::LZ4_decompress_safe(src, dst, in_len, cap)
        }
    };
    if n != cap {
        return Err(if n < 0 {
            "malformed LZ4 data".into()
        } else {
            format!("got {n} bytes")
        });
    }
    Ok(())
}

fn lzma(input: &[u8], out: &mut [u8], partial: bool, dict_size: u32) -> Outcome {
    let out_len = out.len();
    use liblzma_sys as xz;

    /// Frees the decoder on every path.
    struct Stream(xz::lzma_stream);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: the stream was initialized (or is all zeros, which
            // lzma_end accepts).
            unsafe { xz::lzma_end(&mut self.0) };
        }
    }

    // No match reaches further back than the output so far, so a
    // dictionary larger than the output is never needed.
    let dict = dict_size.min(u32::try_from(out_len).unwrap_or(u32::MAX).max(4096));
    // SAFETY: LZMA_STREAM_INIT is all zeros.
    let mut strm = Stream(unsafe { std::mem::zeroed() });
    // SAFETY: a zeroed stream is what lzma_microlzma_decoder expects.
    let ret = unsafe {
        xz::lzma_microlzma_decoder(
            &mut strm.0,
            input.len() as u64,
            out_len as u64,
            xz::lzma_bool::from(!partial),
            dict,
        )
    };
    if ret != xz::LZMA_OK {
        return Err(format!("decoder setup failed ({ret})"));
    }
    strm.0.next_in = input.as_ptr();
    strm.0.avail_in = input.len();
    strm.0.next_out = out.as_mut_ptr();
    strm.0.avail_out = out_len;
    // SAFETY: the buffers above outlive the call and their lengths are given.
    let ret = unsafe { xz::lzma_code(&mut strm.0, xz::LZMA_FINISH) };
    let written = out_len - strm.0.avail_out;
    if ret != xz::LZMA_STREAM_END || written != out_len {
        return Err(format!("liblzma returned {ret} after {written} bytes"));
    }
    Ok(())
}

fn deflate(input: &[u8], out: &mut [u8], partial: bool) -> Outcome {
    use flate2::{Decompress, FlushDecompress, Status};

    let out_len = out.len();
    let mut inflater = Decompress::new(false);
    let status = inflater
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(|e| e.to_string())?;
    let written = inflater.total_out() as usize;
    let ended = status == Status::StreamEnd;
    if written != out_len || !(ended || partial) {
        return Err(format!("got {written} bytes, stream ended: {ended}"));
    }
    Ok(())
}

fn zstd(input: &[u8], out: &mut [u8], partial: bool, window_log: u8) -> Outcome {
    use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

    let mut decoder = Decoder::new().map_err(|e| e.to_string())?;
    // Bounds the window the decoder allocates, whatever a frame header says.
    decoder
        .set_parameter(DParameter::WindowLogMax(u32::from(window_log)))
        .map_err(|e| e.to_string())?;
    let out_len = out.len();
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(out);
    let mut frame_done = false;
    // Every round consumes input or produces output, or the loop ends; the
    // bound only guards against a decoder that would do neither.
    for _ in 0..=input.len() + out_len {
        let before = (src.pos(), dst.pos());
        let hint = decoder.run(&mut src, &mut dst).map_err(|e| e.to_string())?;
        frame_done = hint == 0;
        if frame_done || (partial && dst.pos() == out_len) || (src.pos(), dst.pos()) == before {
            break;
        }
    }
    let written = dst.pos();
    if written != out_len || !(frame_done || partial) {
        return Err(format!("got {written} bytes, frame ended: {frame_done}"));
    }
    Ok(())
}
