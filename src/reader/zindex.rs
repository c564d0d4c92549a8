//! Loading lcluster indexes (full and compact forms) of compressed files;
//! the lookup half of the kernel's `zmap.c`.

use crate::error::{ensure, Error, Result};
use crate::format::{
    read_struct, DataLayout, LclusterIndex, ADVISE_BIG_PCLUSTER_1, ADVISE_BIG_PCLUSTER_2,
    ADVISE_COMPACTED_2B, FULL_INDEX_OFFSET, LCLUSTER_INDEX_SIZE, LCLUSTER_TYPE_NONHEAD,
    LI_D0_CBLKCNT, LI_LCLUSTER_TYPE_MASK, LI_PARTIAL_REF, MAP_HEADER_SIZE,
};

use super::zmap::ZInfo;
use super::{Image, Inode, MetaPos};

/// One lcluster index, decoded (the kernel's `z_erofs_maprecorder`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Lcluster {
    pub(super) lcn: u64,
    pub(super) kind: u8,
    pub(super) cluster_offset: u64,
    /// NONHEAD: distance back to the HEAD and forward to the next HEAD.
    pub(super) delta: [u64; 2],
    /// HEAD: pcluster block address.
    pub(super) pblk: u64,
    /// First NONHEAD of a big pcluster: its compressed block count.
    pub(super) compressed_blocks: Option<u64>,
    pub(super) partial_ref: bool,
    /// Where the index after this one (or its pack) ends.
    pub(super) next_pack_off: u64,
}

impl Lcluster {
    pub(super) fn is_head(&self) -> bool {
        self.kind != LCLUSTER_TYPE_NONHEAD
    }
}

/// Decodes the `lobits`-bit value and 2-bit type at bit `pos` of a pack.
fn compacted_bits(pack: &[u8], lobits: u32, pos: usize) -> Result<(u64, u8)> {
    let at = pos / 8;
    let word = pack
        .get(at..at + 4)
        .ok_or_else(|| Error::corrupt("compacted index runs past its pack"))?;
    let v = u32::from_le_bytes([word[0], word[1], word[2], word[3]]) >> (pos & 7);
    Ok((
        u64::from(v & ((1 << lobits) - 1)),
        ((v >> lobits) & 3) as u8,
    ))
}

impl Image {
    pub(super) fn load_lcluster(
        &self,
        inode: &Inode,
        info: &ZInfo,
        lcn: u64,
        lookahead: bool,
    ) -> Result<Lcluster> {
        let count = inode.size.div_ceil(1 << info.lcluster_bits);
        ensure!(
            lcn < count,
            "lcluster {lcn} is past the end of the file ({count} lclusters)"
        );
        let lc = if inode.layout == DataLayout::CompressedCompact {
            // The compacted forms (the kernel's `z_erofs_load_compact_lcluster`):
            // find where `lcn`'s entry is, then unpack it.
            let (pos, unit_shift) = self.compact_index_pos(inode, info, lcn);
            self.unpack_compacted_index(info, lcn, pos, unit_shift, lookahead)?
        } else {
            self.load_full_lcluster(info, lcn)?
        };
        ensure!(
            !lc.is_head() || lc.cluster_offset < 1 << info.lcluster_bits,
            "cluster offset {} at lcluster {lcn} is outside its lcluster",
            lc.cluster_offset
        );
        Ok(lc)
    }

    fn load_full_lcluster(&self, info: &ZInfo, lcn: u64) -> Result<Lcluster> {
        let pos = info
            .header
            .add(FULL_INDEX_OFFSET)?
            .add(lcn * LCLUSTER_INDEX_SIZE)?;
        let bytes = self.meta(pos, LCLUSTER_INDEX_SIZE)?;
        let index: &LclusterIndex =
            read_struct(&bytes).ok_or_else(|| Error::corrupt("short lcluster index"))?;
        let advise = index.advise.get();
        let mut lc = Lcluster {
            lcn,
            kind: (advise & LI_LCLUSTER_TYPE_MASK) as u8,
            next_pack_off: pos.offset + LCLUSTER_INDEX_SIZE,
            ..Default::default()
        };
        let raw = index.addr_or_deltas.get();
        if lc.is_head() {
            lc.partial_ref = advise & LI_PARTIAL_REF != 0;
            lc.cluster_offset = u64::from(index.cluster_offset.get());
            lc.pblk = u64::from(raw);
        } else {
            lc.cluster_offset = 1 << info.lcluster_bits;
            let d0 = raw as u16;
            lc.delta = [u64::from(d0), u64::from((raw >> 16) as u16)];
            if d0 & LI_D0_CBLKCNT != 0 {
                ensure!(
                    info.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2) != 0,
                    "compressed block count without big pclusters"
                );
                lc.compressed_blocks = Some(u64::from(d0 & !LI_D0_CBLKCNT));
                lc.delta[0] = 1;
            }
        }
        Ok(lc)
    }

    /// Byte offset of `lcn`'s compact entry and log2 of its amortized size
    /// (2: 4-byte form, 1: 2-byte form). Compacted indexes come in packs of 2
    /// (4-byte form) or 16 (2-byte form) lclusters sharing one base block
    /// address. Up to the first 32-byte boundary
    /// and after the last whole 2-byte run, entries take the 4-byte form.
    fn compact_index_pos(&self, inode: &Inode, info: &ZInfo, lcn: u64) -> (u64, u32) {
        let ebase = info.header.offset + MAP_HEADER_SIZE;
        let total = inode.size.div_ceil(self.block_size());
        let initial_4b = ((32 - ebase % 32) / 4) & 7;
        let compacted_2b = if info.advise & ADVISE_COMPACTED_2B != 0 && initial_4b < total {
            (total - initial_4b) / 16 * 16
        } else {
            0
        };
        let mut pos = ebase;
        let mut rel = lcn;
        let mut unit_shift = 2; // 4-byte form
        if rel >= initial_4b {
            pos += initial_4b * 4;
            rel -= initial_4b;
            if rel < compacted_2b {
                unit_shift = 1;
            } else {
                pos += compacted_2b * 2;
                rel -= compacted_2b;
            }
        }
        (pos + (rel << unit_shift), unit_shift)
    }

    /// Reads the pack holding the entry at `pos` and decodes the entry
    /// (the kernel's `unpack_compacted_index`).
    fn unpack_compacted_index(
        &self,
        info: &ZInfo,
        lcn: u64,
        pos: u64,
        unit_shift: u32,
        lookahead: bool,
    ) -> Result<Lcluster> {
        let bits = info.lcluster_bits;
        let vcnt: u64 = match unit_shift {
            2 if bits <= 14 => 2,
            1 if bits <= 12 => 16,
            _ => {
                return Err(Error::Unsupported(format!(
                    "compact indexes with {}-byte lclusters",
                    1u64 << bits
                )))
            }
        };
        let pack_size = vcnt << unit_shift;
        let pack_start = pos / pack_size * pack_size;
        let bytes = self.meta(
            MetaPos {
                offset: pack_start,
                ..info.header
            },
            pack_size,
        )?;
        let pack = CompactPack {
            bytes: &bytes,
            lobits: bits.max(12),
            encodebits: (((pack_size - 4) * 8) / vcnt) as usize,
            vcnt: vcnt as usize,
            big: info.advise & ADVISE_BIG_PCLUSTER_1 != 0,
        };
        let i = ((pos - pack_start) >> unit_shift) as usize;
        let mut lc = Lcluster {
            lcn,
            next_pack_off: pack_start + pack_size,
            ..Default::default()
        };
        let (lo, kind) = pack.entry(i)?;
        lc.kind = kind;
        if kind == LCLUSTER_TYPE_NONHEAD {
            lc.cluster_offset = 1 << bits;
            if lookahead {
                lc.delta[1] = pack.lookahead_distance(i)?;
            }
            (lc.delta[0], lc.compressed_blocks) = pack.nonhead_delta(i, lo)?;
        } else {
            lc.cluster_offset = lo;
            lc.pblk = pack.head_pblk(i)?;
        }
        Ok(lc)
    }
}

/// One pack of compact lcluster indexes: `vcnt` entries of `encodebits`
/// bits each, then the pack's 32-bit base block address.
struct CompactPack<'a> {
    bytes: &'a [u8],
    /// Bits of an entry's value (the rest of `encodebits` is its type).
    lobits: u32,
    encodebits: usize,
    vcnt: usize,
    /// Big pclusters (HEAD1): NONHEADs may carry compressed block counts.
    big: bool,
}

impl CompactPack<'_> {
    /// Value and type of entry `i`.
    fn entry(&self, i: usize) -> Result<(u64, u8)> {
        compacted_bits(self.bytes, self.lobits, self.encodebits * i)
    }

    /// `delta[0]` and the compressed block count of NONHEAD entry `i`
    /// whose value is `lo`.
    fn nonhead_delta(&self, i: usize, lo: u64) -> Result<(u64, Option<u64>)> {
        let cblkcnt = u64::from(LI_D0_CBLKCNT);
        if lo & cblkcnt != 0 {
            ensure!(self.big, "compressed block count without big pclusters");
            return Ok((1, Some(lo & !cblkcnt)));
        }
        if i + 1 != self.vcnt {
            return Ok((lo, None));
        }
        // The pack's last entry stores delta[1]; derive delta[0] from the
        // entry before it.
        let (prev, prev_kind) = self.entry(i - 1)?;
        let prev = if prev_kind != LCLUSTER_TYPE_NONHEAD {
            0
        } else if prev & cblkcnt != 0 {
            1
        } else {
            prev
        };
        Ok((prev + 1, None))
    }

    /// Block address of HEAD entry `i`: the pack's base plus the blocks of
    /// the pclusters of the HEADs before it in the pack.
    fn head_pblk(&self, i: usize) -> Result<u64> {
        let cblkcnt = u64::from(LI_D0_CBLKCNT);
        let mut nblk: u64 = if self.big { 0 } else { 1 };
        let mut j = i as i64;
        while j > 0 {
            j -= 1;
            let (lo, kind) = self.entry(j as usize)?;
            if !self.big {
                if kind == LCLUSTER_TYPE_NONHEAD {
                    j -= lo as i64;
                }
                if j >= 0 {
                    nblk += 1;
                }
            } else if kind == LCLUSTER_TYPE_NONHEAD {
                if lo & cblkcnt != 0 {
                    j -= 1;
                    nblk += lo & !cblkcnt;
                } else {
                    ensure!(lo > 1, "plain delta {lo} inside a big pcluster");
                    j -= lo as i64 - 2;
                }
            } else {
                nblk += 1;
            }
        }
        let b = &self.bytes[self.bytes.len() - 4..];
        let base = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        Ok(u64::from(base) + nblk)
    }

    /// Distance from entry `i` to the next HEAD (`delta[1]`), looking
    /// through the rest of the pack (the kernel's
    /// `get_compacted_la_distance`).
    fn lookahead_distance(&self, mut i: usize) -> Result<u64> {
        let mut d1 = 0;
        let mut lo = 0;
        while i < self.vcnt {
            let kind;
            (lo, kind) = self.entry(i)?;
            if kind != LCLUSTER_TYPE_NONHEAD {
                return Ok(d1);
            }
            d1 += 1;
            i += 1;
        }
        // The last entry of a pack stores its own delta[1].
        if lo & u64::from(LI_D0_CBLKCNT) == 0 {
            d1 += lo.saturating_sub(1);
        }
        Ok(d1)
    }
}
