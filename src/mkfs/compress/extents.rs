//! Cutting file data into extents (one pcluster each) and writing the
//! full (legacy, 8-byte) lcluster index that maps them.
//!
//! Files are cut into segments of [`SEGMENT_SIZE`] bytes compressed
//! independently (as mkfs.erofs's segments), so the work spreads over
//! threads and the result does not depend on how it was spread.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes};

use super::fit::Encoder;
use crate::format::{
    ADVISE_BIG_PCLUSTER_1, ADVISE_INLINE_PCLUSTER, LCLUSTER_TYPE_HEAD1, LCLUSTER_TYPE_NONHEAD,
    LCLUSTER_TYPE_PLAIN, LI_D0_CBLKCNT,
};

/// Bytes of a file compressed as one unit (a multiple of every block size).
pub const SEGMENT_SIZE: u64 = 16 << 20;
/// Most input one pcluster may encode (mkfs.erofs's compress window).
const MAX_EXTENT_INPUT: usize = 4000 * 1024;
/// The first window tried, in pclusters.
const SHORT_WINDOW_PCLUSTERS: usize = 32;

/// What identifies a pcluster's input for `-E dedupe`: the first 128
/// bits of sha256 of its length and bytes (a collision is still out of
/// reach, so no byte compare is needed; half the key memory).
pub type DedupeKey = [u8; 16];

/// One extent: `len` logical bytes stored in `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Logical length.
    pub len: u64,
    /// Stored uncompressed (a PLAIN lcluster) rather than compressed.
    pub raw: bool,
    /// The pcluster's bytes: whole blocks, encoded data right-aligned; for
    /// an inline tail, exactly the encoded (or raw) bytes.
    pub data: Vec<u8>,
    /// The file's last extent, less than a block encoded, for storing
    /// inline after the inode's indexes (`-E ztailpacking`).
    pub inline: bool,
    /// Its input's key, with `-E dedupe`.
    pub key: Option<DedupeKey>,
}

/// An extent as stored: its logical length, type, and pcluster; packed
/// (12 bytes), as every file's are kept until the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Logical length (at most `MAX_EXTENT_INPUT`).
    pub len: u32,
    /// Block address of its pcluster (on disk a u32 too).
    pub blkaddr: u32,
    /// Blocks of its pcluster (1 for an inline tail, as mkfs.erofs says;
    /// at most 256).
    pub blocks: u16,
    /// A PLAIN (uncompressed) pcluster.
    pub raw: bool,
}

/// The dedupe key of `input`.
fn dedupe_key(input: &[u8]) -> DedupeKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((input.len() as u64).to_le_bytes());
    h.update(input);
    truncated(h.finalize().into())
}

/// The first bytes of a sha256, as a [`DedupeKey`].
fn truncated(hash: [u8; 32]) -> DedupeKey {
    let mut key = DedupeKey::default();
    let len = key.len();
    key.copy_from_slice(&hash[..len]);
    key
}

/// The dedupe key of a whole file stored flat whose compressed extents
/// were `extents` (the keys of the pieces identify the whole); `None`
/// without keys.
pub fn flat_file_key(extents: &[Extent]) -> Option<DedupeKey> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"flat file");
    for e in extents {
        h.update(e.key?);
    }
    Some(truncated(h.finalize().into()))
}

/// As much of `rest` as `enc` fits in a pcluster: the input length used
/// and its encoding, if it is one readers accept.
fn fit_pcluster(enc: &mut Encoder, rest: &[u8], pcluster: usize) -> Option<(usize, Vec<u8>)> {
    // A short window first: encoders may cost in proportion to the input
    // they are given; only when it is used up is the whole window tried.
    // Both windows are capped at MAX_EXTENT_INPUT: a larger extent is
    // refused by readers (ours and the kernel's).
    let whole = rest.len().min(MAX_EXTENT_INPUT);
    let short = whole.min(SHORT_WINDOW_PCLUSTERS * pcluster);
    let mut got = enc.fit(&rest[..short], pcluster);
    if matches!(&got, Some((n, _)) if *n == short && short < whole) {
        got = enc.fit(&rest[..whole], pcluster);
    }
    // Readers take leading zero bytes of a pcluster as padding, so an
    // encoding starting with 0x00 (a DEFLATE stored block, say) would be
    // misread: that input is stored raw instead.
    got.filter(|(n, c)| *n <= MAX_EXTENT_INPUT && c.first().is_some_and(|&b| b != 0))
}

/// How segments are cut: block and pcluster sizes, and the options.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    /// Block size.
    pub block: usize,
    /// Largest pcluster.
    pub pcluster: usize,
    /// The segment ends its file and its tail may go inline.
    pub tailpack: bool,
    /// Compute dedupe keys.
    pub dedupe: bool,
}

/// Compresses one segment (`input`, starting block-aligned in its file)
/// into extents. A pcluster is kept compressed only if it saves a block,
/// or, for an inline tail, if it is shorter than its input.
pub(super) fn compress_segment(enc: &mut Encoder, input: &[u8], cut: Cut) -> Vec<Extent> {
    let block = cut.block;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        let got = if rest.len() > block || cut.tailpack {
            fit_pcluster(enc, rest, cut.pcluster)
        } else {
            None
        };
        let mut extent = match got {
            // The whole rest in less than a block: the inline tail.
            Some((n, c)) if cut.tailpack && n == rest.len() && c.len() < block.min(n) => Extent {
                len: n as u64,
                raw: false,
                data: c,
                inline: true,
                key: None,
            },
            Some((n, c)) if c.len().next_multiple_of(block) < n => {
                let plen = c.len().next_multiple_of(block);
                let mut data = vec![0u8; plen - c.len()];
                data.extend_from_slice(&c);
                Extent {
                    len: n as u64,
                    raw: false,
                    data,
                    inline: false,
                    key: None,
                }
            }
            _ => {
                let n = rest.len().min(block);
                let inline = cut.tailpack && n == rest.len() && n < block;
                let mut data = rest[..n].to_vec();
                if !inline {
                    data.resize(block, 0);
                }
                Extent {
                    len: n as u64,
                    raw: true,
                    data,
                    inline,
                    key: None,
                }
            }
        };
        if cut.dedupe {
            extent.key = Some(dedupe_key(&rest[..extent.len as usize]));
        }
        pos += extent.len as usize;
        out.push(extent);
    }
    out
}

/// Bytes of the map header and full index of a file of `size` bytes: 16
/// and one 8-byte index per logical block.
pub(crate) fn index_len(size: u64, block_bits: u8) -> u64 {
    16 + 8 * size.div_ceil(1 << block_bits)
}

/// `struct z_erofs_lcluster_index`, as written.
#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct Index {
    advise: U16,
    cluster_offset: U16,
    addr_or_deltas: U32,
}

/// The map header, its 8 reserved bytes and the full lcluster index of a
/// file whose extents (in order) are `extents`, the last one's pcluster at
/// `tail_block` if given, or inline after the index if `idata` (its
/// encoded size) is; lclusters are one block.
pub(crate) fn full_index(
    extents: &[Stored],
    tail_block: Option<u64>,
    idata: Option<u16>,
    block_bits: u8,
    algorithm: u8,
    big: bool,
) -> Vec<u8> {
    let block = 1u64 << block_bits;
    let mut out = Vec::new();
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&idata.unwrap_or(0).to_le_bytes());
    let mut advise = if big { ADVISE_BIG_PCLUSTER_1 } else { 0 };
    if idata.is_some() {
        advise |= ADVISE_INLINE_PCLUSTER;
    }
    out.extend_from_slice(&advise.to_le_bytes());
    out.extend_from_slice(&[algorithm, 0]);
    out.extend_from_slice(&[0u8; 8]);
    let push = |out: &mut Vec<u8>, kind: u8, offset: u64, word: u32| {
        let index = Index {
            advise: U16::new(u16::from(kind)),
            cluster_offset: U16::new(offset as u16),
            addr_or_deltas: U32::new(word),
        };
        out.extend_from_slice(index.as_bytes());
    };
    let mut start = 0u64;
    let mut pending_tail = false;
    for (i, e) in extents.iter().enumerate() {
        let blkaddr = match tail_block {
            Some(b) if i + 1 == extents.len() => b,
            _ => u64::from(e.blkaddr),
        };
        let end = start + u64::from(e.len);
        let (head_lcn, end_lcn) = (start >> block_bits, end >> block_bits);
        let kind = if e.raw {
            LCLUSTER_TYPE_PLAIN
        } else {
            LCLUSTER_TYPE_HEAD1
        };
        push(&mut out, kind, start % block, blkaddr as u32);
        for lcn in head_lcn + 1..end_lcn {
            let d0 = lcn - head_lcn;
            let d1 = (end_lcn - lcn).min(0xffff) as u32;
            let d0 = if d0 == 1 && big {
                u32::from(LI_D0_CBLKCNT) | u32::from(e.blocks)
            } else {
                d0.min(u64::from(LI_D0_CBLKCNT) - 1) as u32
            };
            push(&mut out, LCLUSTER_TYPE_NONHEAD, 0, d0 | d1 << 16);
        }
        // An extent ending inside the lcluster it starts in (a short
        // raw tail) leaves no lcluster for a final index.
        pending_tail = end_lcn > head_lcn && !end.is_multiple_of(block);
        start = end;
    }
    if pending_tail {
        // The lcluster holding the end of the file: a PLAIN index whose
        // offset is the end, as mkfs.erofs writes it.
        push(&mut out, LCLUSTER_TYPE_PLAIN, start % block, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkfs::compress::Codec;

    fn cut(tailpack: bool) -> Cut {
        Cut {
            block: 4096,
            pcluster: 4096,
            tailpack,
            dedupe: true,
        }
    }

    /// With ztailpacking a short compressible tail is one inline
    /// compressed extent and an incompressible one an inline raw one;
    /// without, the tail is a raw block. Equal inputs get equal keys.
    #[test]
    fn tails_go_inline_only_with_tailpacking() {
        let mut enc = Encoder::new(Codec::parse("lz4hc", &[], None, 4096).unwrap()).unwrap();
        let text = b"some text, some text. ".repeat(300);
        let got = compress_segment(&mut enc, &text, cut(true));
        assert_eq!(got.len(), 1);
        assert!(got[0].inline && !got[0].raw && got[0].data.len() < 4096);
        let random: Vec<u8> = (0..100u64)
            .map(|i| ((i * 2_654_435_761) >> 13) as u8)
            .collect();
        let got = compress_segment(&mut enc, &random, cut(true));
        assert!(got[0].inline && got[0].raw && got[0].data == random);
        let got = compress_segment(&mut enc, &random, cut(false));
        assert!(!got[0].inline && got[0].raw && got[0].data.len() == 4096);
    }

    /// Dedupe keys name an extent's input bytes and length, wherever the
    /// extent is: a block alone or after another block shares its key, a
    /// block differing in one byte or one byte shorter does not.
    #[test]
    fn dedupe_keys_follow_the_input() {
        let mut enc = Encoder::new(Codec::parse("lz4", &[], None, 4096).unwrap()).unwrap();
        let random = |mut x: u64| -> Vec<u8> {
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let (block, other) = (random(1), random(2));
        let mut keys = |input: &[u8]| -> Vec<DedupeKey> {
            let got = compress_segment(&mut enc, input, cut(false));
            got.iter().map(|e| e.key.unwrap()).collect()
        };
        let alone = keys(&block);
        let after = keys(&[&other[..], &block].concat());
        assert_eq!(after.len(), 2, "one raw extent per block");
        assert_eq!(alone[0], after[1]);
        assert_ne!(after[0], after[1]);
        let mut changed = block.clone();
        changed[4000] ^= 1;
        assert_ne!(alone, keys(&changed));
        assert_ne!(alone, keys(&block[..4095]));
    }

    fn stored(len: u32) -> Stored {
        Stored {
            len,
            raw: false,
            blocks: 1,
            blkaddr: 7,
        }
    }

    /// The index of a file whose inline tail starts mid-block, starts on
    /// a block, or ends on one, or which is the whole file, is as long as
    /// [`index_len`] says (the layout reserves that).
    #[test]
    fn index_length_with_inline_tails() {
        for lens in [
            &[5000, 1000][..],
            &[5000, 3192],
            &[4096, 100],
            &[4096, 4096],
            &[3000],
            &[4096],
            &[8192, 5000, 2000],
        ] {
            let extents: Vec<Stored> = lens.iter().map(|&l| stored(l)).collect();
            let size = lens.iter().map(|&l| u64::from(l)).sum();
            let index = full_index(&extents, None, Some(100), 12, 0, false);
            assert_eq!(index.len() as u64, index_len(size, 12), "{lens:?}");
        }
    }

    /// An inline tail sets the advise bit and `h_idata_size`.
    #[test]
    fn index_header_names_the_inline_tail() {
        let extents = [Stored {
            len: 5000,
            raw: false,
            blocks: 1,
            blkaddr: 7,
        }];
        let index = full_index(&extents, None, Some(1234), 12, 0, false);
        assert_eq!(u16::from_le_bytes([index[2], index[3]]), 1234);
        let advise = u16::from_le_bytes([index[4], index[5]]);
        assert_ne!(advise & ADVISE_INLINE_PCLUSTER, 0);
        // Header, 8 reserved bytes, the HEAD and the EOF lcluster's index.
        assert_eq!(index.len(), 16 + 2 * 8);
        let plain = full_index(&extents, None, None, 12, 0, false);
        assert_eq!(&plain[2..6], &[0, 0, 0, 0]);
    }
}
