//! Mapping compressed files (the kernel's `zmap.c`): from a logical offset to
//! the extent that holds it and the physical cluster (pcluster) encoding it.
//!
//! A compressed file is cut into logical clusters (lclusters) of
//! `1 << lcluster_bits` bytes. Each has an index entry: a HEAD starts a new
//! extent at `cluster_offset` inside it and names its pcluster, a NONHEAD
//! continues the extent of an earlier HEAD. The newer EXTENTS form lists the
//! extents directly. Everything here only reads indexes; decoding is
//! `zdata`'s job.
//!
//! Every distance read from the image is bounded: an extent never spans
//! more than [`PCLUSTER_MAX_DSIZE`] bytes, so no walk takes more steps than
//! that many lclusters.

use crate::error::{ensure, Error, Result};
use crate::format::{
    read_struct, DataLayout, ExtentRecord, MapHeader, ADVISE_BIG_PCLUSTER_1, ADVISE_BIG_PCLUSTER_2,
    ADVISE_EXTENTS, ADVISE_EXTRECSZ_BIT, ADVISE_EXTRECSZ_MASK, ADVISE_FRAGMENT_PCLUSTER,
    ADVISE_INLINE_PCLUSTER, ADVISE_INTERLACED_PCLUSTER, COMPRESSION_MAX, COMPRESSION_NAMES,
    EXTENT_PLEN_FMT_BIT, EXTENT_PLEN_MASK, EXTENT_PLEN_PARTIAL, FRAGMENT_INODE_BIT,
    INCOMPAT_COMPR_CFGS, LCLUSTER_TYPE_HEAD1, LCLUSTER_TYPE_HEAD2, LCLUSTER_TYPE_PLAIN,
    MAP_HEADER_SIZE, PCLUSTER_MAX_DSIZE, PCLUSTER_MAX_SIZE,
};

use super::zindex::Lcluster;
use super::{Image, Inode, MetaPos};

/// How a pcluster's bytes become the extent's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZFormat {
    /// Stored uncompressed, from the pcluster's first byte.
    Shifted,
    /// Stored uncompressed, rotated by the extent's offset in its block.
    Interlaced,
    /// Compressed with this algorithm (`COMPRESSION_*`).
    Algorithm(u8),
}

/// Where an extent's encoded bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PclusterAt {
    /// At this byte of the primary device's address space (device 0).
    Device(u64),
    /// Inline in the metadata, after the inode's indexes (ztailpacking).
    Inline(MetaPos),
    /// In the packed inode's data, at this offset, stored as-is: the extent
    /// is that many bytes of the packed inode.
    Fragment(u64),
    /// Nowhere: the extent reads as zeros.
    Unmapped,
}

/// One extent of a compressed file: logical bytes `[start, start + len)`
/// are the first `len` bytes decoded from one pcluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ZExtent {
    /// Logical offset of the extent's first byte.
    pub start: u64,
    /// Decoded length of the extent.
    pub len: u64,
    /// Where the pcluster is.
    pub at: PclusterAt,
    /// Encoded length of the pcluster.
    pub plen: u64,
    /// How to decode it.
    pub format: ZFormat,
    /// The extent uses only a prefix of what the pcluster decodes to
    /// (dedupe), so decoding must stop after `len` bytes.
    pub partial: bool,
}

impl ZExtent {
    /// A file of `size` bytes kept whole in the packed inode at `offset`.
    fn whole_file_fragment(size: u64, offset: u64) -> Self {
        Self {
            start: 0,
            len: size,
            at: PclusterAt::Fragment(offset),
            plen: 0,
            format: ZFormat::Shifted,
            partial: false,
        }
    }
}

/// What the map header of one compressed inode says.
#[derive(Debug, Clone)]
pub(crate) struct ZInfo {
    pub(super) advise: u16,
    pub(super) lcluster_bits: u32,
    pub(super) algorithms: [u8; 2],
    /// Where the map header is.
    pub(super) header: MetaPos,
    /// Extent records (EXTENTS form only).
    pub(super) extents: u64,
    /// Encoded size of the inline tail pcluster (0: none).
    pub(super) idata_size: u64,
    /// Where the inline tail pcluster is.
    pub(super) idata_pos: Option<MetaPos>,
    /// Offset of the tail fragment in the packed inode.
    pub(super) fragment_off: u64,
    /// lcluster of the tail extent's HEAD (with an inline or fragment tail).
    pub(super) tail_head_lcn: u64,
    /// The whole file is one fragment.
    pub(super) whole_fragment: bool,
}

/// The most lclusters one extent may span, plus slack for partial ones.
fn max_extent_lclusters(lcluster_bits: u32) -> u64 {
    (PCLUSTER_MAX_DSIZE >> lcluster_bits) + 2
}

impl Image {
    /// Reads the map header of compressed `inode`.
    pub(crate) fn zinfo(&self, inode: &Inode) -> Result<ZInfo> {
        let header_pos = inode.after_xattrs()?;
        let header_pos = MetaPos {
            offset: header_pos.offset.next_multiple_of(8),
            ..header_pos
        };
        let bytes = self.meta(header_pos, MAP_HEADER_SIZE)?;
        let header: &MapHeader =
            read_struct(&bytes).ok_or_else(|| Error::corrupt("short map header"))?;
        let mut info = ZInfo {
            advise: 0,
            lcluster_bits: 0,
            algorithms: [0; 2],
            header: header_pos,
            extents: 0,
            idata_size: 0,
            idata_pos: None,
            fragment_off: 0,
            tail_head_lcn: 0,
            whole_fragment: false,
        };
        if header.cluster_bits >> FRAGMENT_INODE_BIT != 0 {
            let raw = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            info.advise = ADVISE_FRAGMENT_PCLUSTER;
            info.fragment_off = raw ^ (1 << 63);
            info.whole_fragment = true;
            return Ok(info);
        }
        info.advise = header.advise.get();
        info.lcluster_bits = u32::from(self.sb.block_bits) + u32::from(header.cluster_bits & 15);
        if inode.layout == DataLayout::CompressedFull && info.advise & ADVISE_EXTENTS != 0 {
            info.extents = u64::from(header.word0.get()) | (u64::from(header.extents_hi()) << 32);
            return Ok(info);
        }
        info.algorithms = [header.algorithm_type & 15, header.algorithm_type >> 4];
        if info.advise & ADVISE_FRAGMENT_PCLUSTER != 0 {
            info.fragment_off = u64::from(header.word0.get());
        } else if info.advise & ADVISE_INLINE_PCLUSTER != 0 {
            info.idata_size = u64::from(header.idata_size());
        }
        let big = ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2;
        ensure!(
            info.advise & big == 0 || self.sb.has_incompat(INCOMPAT_COMPR_CFGS),
            "big pclusters in an image without the big_pcluster feature"
        );
        ensure!(
            inode.layout != DataLayout::CompressedCompact
                || (info.advise & ADVISE_BIG_PCLUSTER_1 == 0)
                    == (info.advise & ADVISE_BIG_PCLUSTER_2 == 0),
            "compact indexes with inconsistent big pcluster flags"
        );
        ensure!(
            info.lcluster_bits <= 30,
            "lcluster size 2^{} is too large",
            info.lcluster_bits
        );
        if (info.idata_size != 0 || info.advise & ADVISE_FRAGMENT_PCLUSTER != 0) && inode.size > 0 {
            // Find the tail extent (the kernel's EROFS_GET_BLOCKS_FINDTAIL).
            let (head, first) = self.find_head(inode, &info, inode.size - 1)?;
            info.tail_head_lcn = head.lcn;
            if info.idata_size != 0 {
                info.idata_pos = Some(MetaPos {
                    offset: first.next_pack_off,
                    ..header_pos
                });
            }
            if info.advise & ADVISE_FRAGMENT_PCLUSTER != 0
                && inode.layout == DataLayout::CompressedFull
            {
                // Full indexes keep the fragment offset's high half here.
                info.fragment_off |= head.pblk << 32;
            }
        }
        Ok(info)
    }

    /// Maps logical `offset` (< size) of compressed `inode` to its extent.
    pub(crate) fn zmap(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<ZExtent> {
        debug_assert!(offset < inode.size);
        let extent = if info.whole_fragment {
            ZExtent::whole_file_fragment(inode.size, info.fragment_off)
        } else if inode.layout == DataLayout::CompressedFull && info.advise & ADVISE_EXTENTS != 0 {
            self.zmap_extents(inode, info, offset)?
        } else {
            self.zmap_lclusters(inode, info, offset)?
        };
        ensure!(
            extent.start <= offset && offset - extent.start < extent.len,
            "extent [{}, +{}) does not hold offset {offset}",
            extent.start,
            extent.len
        );
        if matches!(extent.at, PclusterAt::Fragment(_)) {
            // Fragments live in the packed inode, whose metadata may live in
            // the metabox: either referring to a fragment would be a loop.
            ensure!(
                Some(inode.nid) != self.sb.packed_nid && Some(inode.nid) != self.sb.metabox_nid,
                "the {} inode refers to a fragment",
                if Some(inode.nid) == self.sb.packed_nid {
                    "packed"
                } else {
                    "metabox"
                }
            );
            return Ok(extent);
        }
        if extent.at == PclusterAt::Unmapped {
            return Ok(extent);
        }
        if let ZFormat::Algorithm(alg) = extent.format {
            ensure!(
                alg < COMPRESSION_MAX,
                "unknown compression algorithm {alg} at offset {}",
                extent.start
            );
            ensure!(
                self.sb.available_compr_algs & (1 << alg) != 0,
                "{} data in an image that does not declare {}",
                COMPRESSION_NAMES[usize::from(alg)].1,
                COMPRESSION_NAMES[usize::from(alg)].1
            );
        } else {
            ensure!(
                extent.len <= extent.plen,
                "uncompressed extent of {} bytes in a pcluster of {}",
                extent.len,
                extent.plen
            );
        }
        ensure!(
            extent.plen <= PCLUSTER_MAX_SIZE && extent.len <= PCLUSTER_MAX_DSIZE,
            "extent at offset {} too large ({} bytes encoded, {} decoded)",
            extent.start,
            extent.plen,
            extent.len
        );
        Ok(extent)
    }

    /// The EXTENTS form (the kernel's `z_erofs_map_blocks_ext`): finds the
    /// record holding `offset`, then decodes it.
    fn zmap_extents(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<ZExtent> {
        let recsz = 4u64 << ((info.advise >> ADVISE_EXTRECSZ_BIT) & ADVISE_EXTRECSZ_MASK);
        let records = ExtentRecords {
            image: self,
            header: info.header,
            recsz,
            first: (info.header.offset + MAP_HEADER_SIZE).next_multiple_of(recsz),
        };
        let found = if recsz <= 8 {
            records.per_lcluster(inode, info, offset)?
        } else {
            records.search(inode, info, offset)?
        };
        Ok(self.extent_from_record(info, recsz, offset, &found))
    }

    /// The extent `found` describes (an unmapped one at `offset` when no
    /// record covers it).
    fn extent_from_record(
        &self,
        info: &ZInfo,
        recsz: u64,
        offset: u64,
        found: &FoundRecord,
    ) -> ZExtent {
        let (plen, pa) = (found.plen, found.pa);
        let mut extent = ZExtent {
            start: offset,
            len: 0,
            at: PclusterAt::Unmapped,
            plen: 0,
            format: ZFormat::Shifted,
            partial: false,
        };
        if found.start < found.end {
            extent.start = found.start;
            if found.last && info.advise & ADVISE_FRAGMENT_PCLUSTER != 0 {
                let mut off = u64::from(plen);
                if recsz > 4 {
                    off |= pa << 32;
                }
                extent.at = PclusterAt::Fragment(off);
            } else if plen & EXTENT_PLEN_MASK != 0 {
                let fmt = plen >> EXTENT_PLEN_FMT_BIT;
                extent.partial = plen & EXTENT_PLEN_PARTIAL != 0;
                extent.plen = u64::from(plen & EXTENT_PLEN_MASK);
                extent.at = PclusterAt::Device(pa);
                let block_mask = self.block_size() - 1;
                extent.format = if fmt != 0 {
                    ZFormat::Algorithm((fmt - 1) as u8)
                } else if info.advise & ADVISE_INTERLACED_PCLUSTER != 0
                    && (pa | extent.plen) & block_mask == 0
                {
                    ZFormat::Interlaced
                } else {
                    ZFormat::Shifted
                };
            }
        }
        extent.len = found.end.saturating_sub(extent.start);
        extent
    }

    /// The lcluster-index forms (the kernel's `z_erofs_map_blocks_fo`),
    /// returning the whole extent rather than the part up to `offset`'s
    /// lcluster, so that it can be decoded once and cached.
    fn zmap_lclusters(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<ZExtent> {
        let fragment = info.advise & ADVISE_FRAGMENT_PCLUSTER != 0;
        if fragment && info.tail_head_lcn == 0 {
            return Ok(ZExtent::whole_file_fragment(inode.size, info.fragment_off));
        }
        let bits = info.lcluster_bits;
        let (head, _) = self.find_head(inode, info, offset)?;
        let start = (head.lcn << bits) | head.cluster_offset;
        let len = self.extent_len(inode, info, &head)?;
        let mut extent = ZExtent {
            start,
            len,
            at: PclusterAt::Unmapped,
            plen: 0,
            format: match head.kind {
                LCLUSTER_TYPE_PLAIN if info.advise & ADVISE_INTERLACED_PCLUSTER != 0 => {
                    ZFormat::Interlaced
                }
                LCLUSTER_TYPE_PLAIN => ZFormat::Shifted,
                LCLUSTER_TYPE_HEAD2 => ZFormat::Algorithm(info.algorithms[1]),
                _ => ZFormat::Algorithm(info.algorithms[0]),
            },
            partial: head.partial_ref,
        };
        if info.idata_size != 0 && head.lcn == info.tail_head_lcn {
            let pos = info
                .idata_pos
                .ok_or_else(|| Error::corrupt("inline tail pcluster without a position"))?;
            let block = self.block_size();
            ensure!(
                pos.offset % block + info.idata_size <= block,
                "inline tail pcluster of {} bytes crosses a block boundary",
                info.idata_size
            );
            extent.at = PclusterAt::Inline(pos);
            extent.plen = info.idata_size;
        } else if fragment && head.lcn == info.tail_head_lcn {
            extent.at = PclusterAt::Fragment(info.fragment_off);
            extent.format = ZFormat::Shifted;
            extent.partial = false;
        } else {
            let blocks = self.pcluster_blocks(inode, info, &head)?;
            let bits = u32::from(self.sb.block_bits);
            extent.at = PclusterAt::Device(head.pblk << bits);
            extent.plen = blocks << bits;
        }
        Ok(extent)
    }

    /// The HEAD lcluster of the extent holding `offset`, and the lcluster
    /// `offset` is in (the kernel's map start plus `z_erofs_extent_lookback`).
    fn find_head(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<(Lcluster, Lcluster)> {
        let bits = info.lcluster_bits;
        let first = self.load_lcluster(inode, info, offset >> bits, false)?;
        let in_cluster = offset & ((1 << bits) - 1);
        let mut distance = if first.is_head() {
            if in_cluster >= first.cluster_offset {
                return Ok((first, first));
            }
            // offset precedes this HEAD's extent: it ends the previous one.
            ensure!(first.lcn > 0, "logical cluster 0 does not start an extent");
            1
        } else {
            first.delta[0]
        };
        let mut current = first;
        for _ in 0..max_extent_lclusters(bits) {
            ensure!(
                distance > 0 && distance <= current.lcn,
                "bogus lookback distance {distance} at lcluster {}",
                current.lcn
            );
            current = self.load_lcluster(inode, info, current.lcn - distance, false)?;
            if current.is_head() {
                return Ok((current, first));
            }
            distance = current.delta[0];
        }
        Err(Error::corrupt(format!(
            "no HEAD lcluster within {} lclusters before lcluster {}",
            max_extent_lclusters(bits),
            first.lcn
        )))
    }

    /// Decoded length of the extent starting at `head` (the kernel's
    /// `z_erofs_get_extent_decompressedlen`): up to the next HEAD or EOF.
    fn extent_len(&self, inode: &Inode, info: &ZInfo, head: &Lcluster) -> Result<u64> {
        let bits = info.lcluster_bits;
        let start = (head.lcn << bits) | head.cluster_offset;
        let mut lcn = head.lcn;
        for _ in 0..max_extent_lclusters(bits) {
            if lcn << bits >= inode.size {
                return Ok(inode.size - start);
            }
            let lc = self.load_lcluster(inode, info, lcn, true)?;
            let step = if lc.is_head() {
                if lcn != head.lcn {
                    let end = (lcn << bits) + lc.cluster_offset;
                    ensure!(end > start, "empty extent at offset {start}");
                    return Ok(end - start);
                }
                1
            } else {
                // Pre-1.0 mkfs wrote 0 here; the kernel reads it as 1.
                lc.delta[1].max(1)
            };
            lcn = lcn
                .checked_add(step)
                .ok_or_else(|| Error::corrupt("lcluster distance overflows"))?;
        }
        Err(Error::corrupt(format!(
            "extent at offset {start} is longer than {PCLUSTER_MAX_DSIZE} bytes"
        )))
    }

    /// Size in blocks of the pcluster of `head` (the kernel's
    /// `z_erofs_get_extent_compressedlen`).
    fn pcluster_blocks(&self, inode: &Inode, info: &ZInfo, head: &Lcluster) -> Result<u64> {
        let big = match head.kind {
            LCLUSTER_TYPE_HEAD1 => info.advise & ADVISE_BIG_PCLUSTER_1 != 0,
            _ => info.advise & ADVISE_BIG_PCLUSTER_2 != 0,
        };
        let next = head.lcn + 1;
        if !big || next << info.lcluster_bits >= inode.size {
            return Ok(1);
        }
        let lc = self.load_lcluster(inode, info, next, false)?;
        if lc.is_head() {
            return Ok(1);
        }
        match lc.compressed_blocks {
            Some(n) if lc.delta[0] == 1 => Ok(n),
            _ => Err(Error::corrupt(format!(
                "no compressed block count after the HEAD at lcluster {}",
                head.lcn
            ))),
        }
    }
}

/// The extent records of one inode (EXTENTS form), `recsz` bytes each
/// from byte `first` of the metadata space of `header`.
struct ExtentRecords<'a> {
    image: &'a Image,
    header: MetaPos,
    recsz: u64,
    first: u64,
}

/// The record found for an offset: logical range `[start, end)`, its
/// `plen` word and physical address, and whether it is the last one.
struct FoundRecord {
    start: u64,
    end: u64,
    plen: u32,
    pa: u64,
    last: bool,
}

impl ExtentRecords<'_> {
    /// `len` bytes at byte `pos` of the metadata space.
    fn bytes(&self, pos: u64, len: u64) -> Result<std::borrow::Cow<'_, [u8]>> {
        self.image.meta(
            MetaPos {
                offset: pos,
                ..self.header
            },
            len,
        )
    }

    /// The record at `pos`, zero-extended to the full form: plen,
    /// pstart_lo, pstart_hi, lstart_lo, lstart_hi.
    fn record(&self, pos: u64) -> Result<[u32; 5]> {
        let bytes = self.bytes(pos, self.recsz)?;
        let mut full = [0u8; size_of::<ExtentRecord>()];
        full[..bytes.len()].copy_from_slice(&bytes);
        let r: &ExtentRecord = read_struct(&full).expect("a whole record");
        Ok([
            r.plen.get(),
            r.pstart_lo.get(),
            r.pstart_hi.get(),
            r.lstart_lo.get(),
            r.lstart_hi.get(),
        ])
    }

    /// One record per lcluster (4- or 8-byte records); with 4-byte records
    /// only the lengths are stored and addresses accumulate from a base.
    fn per_lcluster(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<FoundRecord> {
        let lcluster = 1u64 << info.lcluster_bits;
        let mut pos = self.first;
        let mut base = None;
        let mut start;
        if self.recsz == 4 {
            let bytes = self.bytes(pos, 8)?;
            base = Some(u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")));
            pos += 8;
            start = 0;
        } else {
            start = offset & !(lcluster - 1);
            pos += (start >> info.lcluster_bits) * self.recsz;
        }
        ensure!(
            (offset - start) >> info.lcluster_bits < (1 << 26),
            "extent map of {} lclusters is too long to walk",
            (offset - start) >> info.lcluster_bits
        );
        let (mut plen, mut pa) = (0, 0);
        while start <= offset {
            let r = self.record(pos)?;
            plen = r[0];
            match base.as_mut() {
                Some(next) => {
                    pa = *next;
                    *next = next
                        .checked_add(u64::from(plen & EXTENT_PLEN_MASK))
                        .ok_or_else(|| Error::corrupt("extent address overflows"))?;
                }
                None => pa = u64::from(r[1]),
            }
            pos += self.recsz;
            start += lcluster;
        }
        // `start` is a multiple of the lcluster size, so this is "past the
        // last lcluster" without rounding `size` up (which could overflow).
        Ok(FoundRecord {
            last: start >= inode.size,
            end: start.min(inode.size),
            start: start - lcluster,
            plen,
            pa,
        })
    }

    /// Sorted records (12 bytes and up): binary search for the last one at
    /// or before `offset`.
    fn search(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<FoundRecord> {
        let mut found = FoundRecord {
            start: inode.size,
            end: inode.size,
            plen: 0,
            pa: 0,
            last: false,
        };
        let (mut lo, mut hi) = (0u64, info.extents);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.record(self.first + mid * self.recsz)?;
            let mut la = u64::from(r[3]);
            if self.recsz > 16 {
                la |= u64::from(r[4]) << 32;
            }
            if la > offset {
                hi = mid;
                ensure!(la <= found.end, "extent records out of order");
                found.end = la;
            } else {
                lo = mid + 1;
                if la == offset {
                    hi = hi.min(lo + 1);
                }
                found.start = la;
                found.plen = r[0];
                found.pa = u64::from(r[1]) | (u64::from(r[2]) << 32);
            }
        }
        found.last = lo >= info.extents;
        Ok(found)
    }
}
