//! "Compress as much input as fits": each algorithm's fixed-output-size
//! encoder, the step EROFS needs to fill one pcluster.
//!
//! Paths (as mkfs.erofs): LZ4 and LZ4HC use liblz4's own `destSize`
//! encoders (in the liblz4 that `lz4-sys` builds); MicroLZMA is liblzma's
//! `lzma_microlzma_encoder`, which stops when the output is full; zstd and
//! DEFLATE have no such mode, so the input prefix that fits is searched for
//! (a ratio-guided bisection, as erofs-utils does for zstd), each try a
//! one-shot compression of the prefix.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};

use super::{Algorithm, Codec};

extern "C" {
    // Part of the liblz4 that lz4-sys builds and links, not declared by it.
    fn LZ4_compress_destSize(
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        target_dst_size: c_int,
    ) -> c_int;
    fn LZ4_sizeofStateHC() -> c_int;
    fn LZ4_compress_HC_destSize(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        target_dst_size: c_int,
        level: c_int,
    ) -> c_int;
}

/// One worker's encoder state, reused across pclusters.
pub(super) struct Encoder {
    codec: Codec,
    /// LZ4HC's state (8-byte aligned words).
    hc_state: Vec<u64>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Encoder {
    /// An encoder for `codec`.
    pub(super) fn new(codec: Codec) -> Result<Self, String> {
        let mut hc_state = Vec::new();
        if codec.algorithm == Algorithm::Lz4hc {
            // SAFETY: a pure function returning a size.
            let size = unsafe { LZ4_sizeofStateHC() };
            let size = usize::try_from(size)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("liblz4 reports an HC state of {size} bytes"))?;
            hc_state = vec![0u64; size.div_ceil(8)];
        }
        let zstd = if codec.algorithm == Algorithm::Zstd {
            let mut c = zstd::bulk::Compressor::new(codec.level).map_err(|e| e.to_string())?;
            c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(
                codec.zstd_window_log() as u32,
            ))
            .map_err(|e| e.to_string())?;
            c.include_checksum(false).map_err(|e| e.to_string())?;
            Some(c)
        } else {
            None
        };
        Ok(Self {
            codec,
            hc_state,
            zstd,
        })
    }

    /// Compresses the longest prefix of `input` whose encoding fits `cap`
    /// bytes: returns (input bytes consumed, encoded bytes); `None` when not
    /// even a useful prefix fits.
    pub(super) fn fit(&mut self, input: &[u8], cap: usize) -> Option<(usize, Vec<u8>)> {
        if input.is_empty() {
            return None;
        }
        let input = &input[..input.len().min(i32::MAX as usize / 2)];
        match self.codec.algorithm {
            Algorithm::Lz4 | Algorithm::Lz4hc => self.lz4(input, cap),
            Algorithm::Lzma => lzma(input, cap, self.codec.level, self.codec.lzma_dict_size()),
            Algorithm::Zstd => {
                let zstd = self.zstd.as_mut()?;
                search(input, cap, |src, dst| {
                    zstd.compress_to_buffer(src, dst).ok()
                })
            }
            Algorithm::Deflate => {
                let level = self.codec.level as u32;
                search(input, cap, |src, dst| deflate(src, dst, level))
            }
        }
    }

    fn lz4(&mut self, input: &[u8], cap: usize) -> Option<(usize, Vec<u8>)> {
        let mut out = vec![0u8; cap];
        let mut consumed = c_int::try_from(input.len()).ok()?;
        let target = c_int::try_from(cap).ok()?;
        let src = input.as_ptr().cast::<c_char>();
        let dst = out.as_mut_ptr().cast::<c_char>();
        let written = if self.codec.algorithm == Algorithm::Lz4hc {
            let state = self.hc_state.as_mut_ptr().cast::<c_void>();
            // SAFETY: `state` is LZ4_sizeofStateHC() bytes, 8-aligned; liblz4
            // reads at most `consumed` (the input's length) bytes of `src`
            // and writes at most `target` (the output's length) to `dst`,
            // then stores the bytes it consumed in `consumed`.
            unsafe {
                LZ4_compress_HC_destSize(state, src, dst, &mut consumed, target, self.codec.level)
            }
        } else {
            // SAFETY: as above, without the HC state.
            unsafe { LZ4_compress_destSize(src, dst, &mut consumed, target) }
        };
        let written = usize::try_from(written).ok().filter(|&n| n > 0)?;
        let consumed = usize::try_from(consumed).ok().filter(|&n| n > 0)?;
        out.truncate(written);
        Some((consumed.min(input.len()), out))
    }
}

/// The longest prefix of `input` that `compress` encodes in at most `cap`
/// bytes: guesses from the ratio so far, bisects when a guess overflows;
/// `None` when not even `cap + 1` bytes fit (nothing to gain).
/// `compress(src, dst)` returns the encoded length or `None` if `dst` is
/// too small.
fn search(
    input: &[u8],
    cap: usize,
    mut compress: impl FnMut(&[u8], &mut [u8]) -> Option<usize>,
) -> Option<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; cap + 32];
    let mut best: Option<(usize, Vec<u8>)> = None;
    let (mut fits, mut overflows) = (0usize, input.len() + 1);
    // Just over the output first: if even that does not fit (incompressible
    // data, most often), one try settles it.
    let mut guess = cap + 1;
    // Each round narrows [fits, overflows); the bound only guards that.
    for _ in 0..64 {
        guess = guess.max(fits + 1).min(overflows - 1);
        match compress(&input[..guess], &mut buf) {
            Some(n) if n > 0 && n <= cap => {
                fits = guess;
                best = Some((guess, buf[..n].to_vec()));
                if overflows <= fits + 1 || n + 1 >= cap {
                    break;
                }
                // From the ratio so far; at least 4x the output after the
                // first probe, as erofs-utils starts.
                let ratio = (cap as u128 * guess as u128 / n as u128).min(usize::MAX as u128);
                guess = (ratio as usize).max(cap.saturating_mul(4));
            }
            _ => {
                overflows = guess;
                if overflows <= fits + 1 || overflows <= cap + 1 && fits == 0 {
                    break;
                }
                // Nothing fitted yet: try just over `cap` next, since a
                // prefix no longer than the output saves nothing; if even
                // that overflows, the data does not compress.
                guess = if fits == 0 {
                    cap + 1
                } else {
                    fits + (overflows - fits) / 2
                };
            }
        }
    }
    best
}

/// Raw DEFLATE of `src` into `dst`; `None` if it does not fit.
fn deflate(src: &[u8], dst: &mut [u8], level: u32) -> Option<usize> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    let mut c = Compress::new(Compression::new(level), false);
    match c.compress(src, dst, FlushCompress::Finish).ok()? {
        Status::StreamEnd => usize::try_from(c.total_out()).ok(),
        _ => None,
    }
}

/// MicroLZMA: liblzma encodes until `cap` output bytes are used.
fn lzma(input: &[u8], cap: usize, level: i32, dict_size: u32) -> Option<(usize, Vec<u8>)> {
    use liblzma_sys as xz;

    /// Frees the encoder on every path.
    struct Stream(xz::lzma_stream);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: the stream was initialized (or is all zeros, which
            // lzma_end accepts).
            unsafe { xz::lzma_end(&mut self.0) };
        }
    }

    // SAFETY: an all-zero options struct is valid for lzma_lzma_preset to fill.
    let mut opt: xz::lzma_options_lzma = unsafe { std::mem::zeroed() };
    // SAFETY: `opt` is a valid, writable options struct.
    if unsafe { xz::lzma_lzma_preset(&mut opt, level as u32) } != 0 {
        return None;
    }
    opt.dict_size = dict_size;
    // SAFETY: LZMA_STREAM_INIT is all zeros.
    let mut strm = Stream(unsafe { std::mem::zeroed() });
    // SAFETY: a zeroed stream and filled options are what the encoder expects.
    if unsafe { xz::lzma_microlzma_encoder(&mut strm.0, &opt) } != xz::LZMA_OK {
        return None;
    }
    let mut out = vec![0u8; cap];
    strm.0.next_in = input.as_ptr();
    strm.0.avail_in = input.len();
    strm.0.next_out = out.as_mut_ptr();
    strm.0.avail_out = cap;
    // SAFETY: the buffers above outlive the call and their lengths are given.
    let ret = unsafe { xz::lzma_code(&mut strm.0, xz::LZMA_FINISH) };
    if ret != xz::LZMA_STREAM_END {
        return None;
    }
    let consumed = usize::try_from(strm.0.total_in).ok()?;
    let written = usize::try_from(strm.0.total_out).ok()?;
    if consumed == 0 || written == 0 || written > cap {
        return None;
    }
    out.truncate(written);
    Some((consumed, out))
}
