//! Compressed file data for full images (`convert --compress`): the codec
//! options, the fixed-output encoders ([`fit`]), cutting a file into
//! pclusters ([`extents`]) and its full lcluster index, and the parallel,
//! deterministic batch runner ([`batch`]).
//!
//! Layout (as mkfs.erofs with its defaults): lclusters of one block,
//! pclusters of `pcluster_size` bytes (big pclusters above one block),
//! encoded data right-aligned in its pcluster (0padding), a block left
//! uncompressed when compressing it does not save a block, and a file that
//! compresses to no fewer blocks than it has stored flat.
//!
//! Extended options (mkfs.erofs's `-E`): `ztailpacking` keeps a file's
//! last pcluster inline after its indexes when it encodes to less than a
//! block; `dedupe` points a pcluster whose input equals an earlier one's
//! at that one's blocks (whole pclusters only: no partial references).

mod batch;
mod extents;
mod fit;

pub use batch::{raw_extents, Batch, BatchResults, CompressedFile};
pub use extents::{flat_file_key, DedupeKey, Extent, Stored, SEGMENT_SIZE};
pub(crate) use extents::{full_index, index_len};

/// Most pclusters `-E dedupe` remembers: its table then stays near 200
/// MiB (24-byte entries in a hash table of 2^23 buckets; ~320 MiB while
/// it grows from 2^22, both tables alive); pclusters past
/// it are not remembered (a later copy of one is written again), but
/// still reuse the ones remembered.
pub const DEDUPE_MAX_ENTRIES: usize = 7_000_000;

use crate::format::{
    COMPRESSION_DEFLATE, COMPRESSION_LZ4, COMPRESSION_LZMA, COMPRESSION_ZSTD, PCLUSTER_MAX_SIZE,
};

/// A compression algorithm `convert --compress` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// LZ4, fast mode.
    Lz4,
    /// LZ4 high compression (same format as LZ4).
    Lz4hc,
    /// LZMA in MicroLZMA framing.
    Lzma,
    /// Raw DEFLATE.
    Deflate,
    /// Zstandard.
    Zstd,
}

impl Algorithm {
    /// The on-disk algorithm id.
    pub fn id(self) -> u8 {
        match self {
            Self::Lz4 | Self::Lz4hc => COMPRESSION_LZ4,
            Self::Lzma => COMPRESSION_LZMA,
            Self::Deflate => COMPRESSION_DEFLATE,
            Self::Zstd => COMPRESSION_ZSTD,
        }
    }

    /// mkfs.erofs 1.9's default level and the accepted range. DEFLATE is
    /// the exception: mkfs.erofs's own encoder (kite) at its default level 1
    /// packs about as tightly as zlib at 6 (zlib-rs's level 1 emits fixed
    /// Huffman blocks, a third larger), so 6 is the default here.
    fn levels(self) -> (i32, std::ops::RangeInclusive<i32>) {
        match self {
            Self::Lz4 => (0, 0..=0),
            Self::Lz4hc => (9, 1..=12),
            Self::Lzma => (6, 0..=9),
            Self::Deflate => (6, 0..=9),
            Self::Zstd => (3, 1..=22),
        }
    }
}

/// How file data is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Its level.
    pub level: i32,
    /// Largest encoded pcluster, in bytes (a multiple of the block size).
    pub pcluster_size: u32,
    /// `-E ztailpacking`: a file's last pcluster, when it encodes to less
    /// than a block, is stored inline after the inode's indexes.
    pub ztailpacking: bool,
    /// `-E dedupe`: a pcluster whose input equals an earlier one's reuses
    /// its blocks.
    pub dedupe: bool,
}

/// The extended (`-E`) options `convert --compress` implements.
pub const EXTENDED_OPTIONS: &str = "ztailpacking, dedupe";

/// `level=N` of algorithm `name`, N in `range`; the error is one line.
fn parse_level(
    name: &str,
    opt: &str,
    range: &std::ops::RangeInclusive<i32>,
) -> Result<i32, String> {
    let value = opt
        .strip_prefix("level=")
        .ok_or_else(|| format!("unknown compression option '{opt}' (level=N)"))?;
    value
        .parse()
        .ok()
        .filter(|l| range.contains(l))
        .ok_or_else(|| {
            format!(
                "{name} level '{value}' is out of range {}..={}",
                range.start(),
                range.end()
            )
        })
}

/// The extended options of `values` (each `OPT[,OPT...]`, as `-E` takes
/// them): (ztailpacking, dedupe). Only those two are accepted; an empty
/// name, `level=N` (part of the algorithm's spec) and anything else are
/// one-line errors.
pub fn parse_extended(values: &[String]) -> Result<(bool, bool), String> {
    let (mut ztailpacking, mut dedupe) = (false, false);
    for opt in values.iter().flat_map(|v| v.split(',')) {
        match opt {
            "ztailpacking" => ztailpacking = true,
            "dedupe" => dedupe = true,
            "" => return Err(format!("empty extended option ({EXTENDED_OPTIONS})")),
            "fragments" | "all-fragments" => {
                return Err(format!(
                    "extended option '{opt}' is not supported ({EXTENDED_OPTIONS})"
                ))
            }
            _ if opt.starts_with("level=") => {
                return Err(format!(
                    "'{opt}' is not an extended option: give it as --compress ALGO,{opt}"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown extended option '{opt}' ({EXTENDED_OPTIONS})"
                ))
            }
        }
    }
    Ok((ztailpacking, dedupe))
}

impl Codec {
    /// Parses `ALGO[,level=N]` and the extended options `extended` (see
    /// [`parse_extended`]) with pcluster size `pcluster` (default: the
    /// block size) for blocks of `block` bytes; the error is one line.
    pub fn parse(
        spec: &str,
        extended: &[String],
        pcluster: Option<u64>,
        block: u64,
    ) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let name = parts.next().unwrap_or_default();
        let algorithm = match name {
            "lz4" => Algorithm::Lz4,
            "lz4hc" => Algorithm::Lz4hc,
            "lzma" => Algorithm::Lzma,
            "deflate" => Algorithm::Deflate,
            "zstd" => Algorithm::Zstd,
            _ => {
                return Err(format!(
                    "unknown compression '{name}' (lz4, lz4hc, lzma, deflate, zstd)"
                ))
            }
        };
        let (default, range) = algorithm.levels();
        let mut level = default;
        for opt in parts {
            level = parse_level(name, opt, &range)?;
        }
        let (ztailpacking, dedupe) = parse_extended(extended)?;
        let pcluster_size = pcluster.unwrap_or(block);
        if pcluster_size == 0
            || !pcluster_size.is_multiple_of(block)
            || pcluster_size > PCLUSTER_MAX_SIZE
        {
            return Err(format!(
                "pcluster size {pcluster_size} is not a multiple of the block size {block} up to {PCLUSTER_MAX_SIZE}"
            ));
        }
        Ok(Self {
            algorithm,
            level,
            pcluster_size: pcluster_size as u32,
            ztailpacking,
            dedupe,
        })
    }

    /// zstd's window, as log2: mkfs.erofs's default (8 pclusters, at most 1 MiB).
    fn zstd_window_log(&self) -> i32 {
        let size = (u64::from(self.pcluster_size) << 3).min(PCLUSTER_MAX_SIZE);
        63 - size.leading_zeros() as i32
    }

    /// LZMA's dictionary: mkfs.erofs's default (4 pclusters, 32 KiB to 8 MiB).
    fn lzma_dict_size(&self) -> u32 {
        (self.pcluster_size << 2).clamp(32768, crate::format::LZMA_MAX_DICT_SIZE)
    }

    /// The `COMPR_CFGS` record of this codec (payload after its le16 size).
    pub fn config_record(&self, block: u64) -> Vec<u8> {
        let mut rec = match self.algorithm {
            Algorithm::Lz4 | Algorithm::Lz4hc => {
                let blocks = (u64::from(self.pcluster_size) / block) as u16;
                let mut r = vec![0u8; 14];
                r[2..4].copy_from_slice(&blocks.to_le_bytes());
                r
            }
            Algorithm::Lzma => {
                let mut r = vec![0u8; 14];
                r[..4].copy_from_slice(&self.lzma_dict_size().to_le_bytes());
                r
            }
            Algorithm::Deflate => vec![15, 0, 0, 0, 0, 0],
            Algorithm::Zstd => vec![0, (self.zstd_window_log() - 10) as u8, 0, 0, 0, 0],
        };
        let len = rec.len() as u16;
        rec.splice(0..0, len.to_le_bytes());
        rec
    }
}
