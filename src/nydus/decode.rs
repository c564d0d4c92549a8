//! Chunk and bootstrap decoding for the nydus compressors, shared by the
//! blob devices and the inline bootstrap: the output buffer is exactly
//! the uncompressed size, so no input decodes to more than its record
//! says. zstd contexts are kept for reuse (one per concurrent reader).

use std::io::Read;
use std::sync::Mutex;

use super::layout::Compressor;
use crate::error::Result;
use crate::format::COMPRESSION_LZ4;
use crate::reader::Codecs;

/// Reusable decoders of one blob (or one bootstrap).
pub(crate) struct Decoders {
    codecs: Codecs,
    /// Idle zstd contexts: taken for a decode, put back after it.
    zstd: Mutex<Vec<zstd::bulk::Decompressor<'static>>>,
}

impl Decoders {
    /// Decoders with no zstd context made yet.
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            codecs: Codecs::with_configs(true, &[])?,
            zstd: Mutex::new(Vec::new()),
        })
    }

    /// Decodes `stored` (compressed with `compressor`, or stored as-is
    /// when `None`) into all of `out`; the error says what went wrong.
    pub(crate) fn decode(
        &self,
        compressor: Compressor,
        stored: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<(), String> {
        match compressor {
            Compressor::None => {
                if stored.len() != out.len() {
                    return Err(format!(
                        "{} bytes stored for {} uncompressed",
                        stored.len(),
                        out.len()
                    ));
                }
                out.copy_from_slice(stored);
            }
            Compressor::Lz4Block => self
                .codecs
                .decode(COMPRESSION_LZ4, stored, out, false)
                .map_err(|e| format!("lz4_block: {e}"))?,
            Compressor::Zstd => self.zstd(stored, out)?,
            Compressor::Gzip => {
                let mut d = flate2::read::GzDecoder::new(stored);
                d.read_exact(out).map_err(|e| format!("gzip: {e}"))?;
                let mut more = [0u8; 1];
                if !matches!(d.read(&mut more), Ok(0)) {
                    return Err("gzip: decodes to more than its size".into());
                }
            }
        }
        Ok(())
    }

    /// zstd into all of `out`, with an idle context or a new one.
    fn zstd(&self, stored: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
        let idle = self.zstd.lock().map(|mut v| v.pop()).ok().flatten();
        let mut d = match idle {
            Some(d) => d,
            None => zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?,
        };
        let n = d
            .decompress_to_buffer(stored, out)
            .map_err(|e| format!("zstd: {e}"))?;
        if let Ok(mut v) = self.zstd.lock() {
            v.push(d);
        }
        if n != out.len() {
            return Err(format!("zstd: {n} bytes, not {}", out.len()));
        }
        Ok(())
    }
}
