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
    read_struct, DataLayout, ExtentRecord, LclusterIndex, MapHeader, ADVISE_BIG_PCLUSTER_1,
    ADVISE_BIG_PCLUSTER_2, ADVISE_COMPACTED_2B, ADVISE_EXTENTS, ADVISE_EXTRECSZ_BIT,
    ADVISE_EXTRECSZ_MASK, ADVISE_FRAGMENT_PCLUSTER, ADVISE_INLINE_PCLUSTER,
    ADVISE_INTERLACED_PCLUSTER, COMPRESSION_MAX, COMPRESSION_NAMES, EXTENT_PLEN_FMT_BIT,
    EXTENT_PLEN_MASK, EXTENT_PLEN_PARTIAL, FRAGMENT_INODE_BIT, FULL_INDEX_OFFSET,
    INCOMPAT_COMPR_CFGS, LCLUSTER_INDEX_SIZE, LCLUSTER_TYPE_HEAD1, LCLUSTER_TYPE_HEAD2,
    LCLUSTER_TYPE_NONHEAD, LCLUSTER_TYPE_PLAIN, LI_D0_CBLKCNT, LI_LCLUSTER_TYPE_MASK,
    LI_PARTIAL_REF, MAP_HEADER_SIZE, PCLUSTER_MAX_DSIZE, PCLUSTER_MAX_SIZE,
};

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

/// How a compressed file is stored, for `stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompressionInfo {
    /// Encoded bytes on disk (the inode's compressed block count).
    pub compressed_size: u64,
    /// Number of extents.
    pub extents: u64,
    /// Extents stored uncompressed.
    pub plain_extents: u64,
    /// Bytes of the file kept as a fragment in the packed inode.
    pub fragment_bytes: u64,
    /// Bytes of the file in the inline tail pcluster (ztailpacking).
    pub inline_bytes: u64,
    /// Extents that use only part of a shared pcluster (dedupe).
    pub partial_extents: u64,
    /// Names of the algorithms its extents use.
    pub algorithms: Vec<&'static str>,
    /// Logical cluster size in bytes (0 for a whole-file fragment).
    pub lcluster_size: u64,
}

/// One extent of a compressed file, as [`Image::compressed_extents`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressedExtent {
    /// Logical offset of its first byte.
    pub start: u64,
    /// Decoded length.
    pub len: u64,
    /// Where its encoded bytes are.
    pub stored: Stored,
    /// Compression algorithm; `None` for data stored uncompressed.
    pub algorithm: Option<&'static str>,
    /// Uses only a prefix of a shared pcluster (dedupe).
    pub partial: bool,
}

/// Where a [`CompressedExtent`]'s encoded bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A pcluster at this byte address (primary device address space).
    Device {
        /// Byte address.
        addr: u64,
        /// Encoded length.
        len: u64,
    },
    /// Inline after the inode's indexes.
    Inline {
        /// Encoded length.
        len: u64,
    },
    /// In the packed inode at this offset.
    Fragment {
        /// Byte offset in the packed inode.
        offset: u64,
    },
    /// Not stored: reads as zeros.
    Hole,
}

/// What the map header of one compressed inode says.
#[derive(Debug, Clone)]
pub(crate) struct ZInfo {
    advise: u16,
    lcluster_bits: u32,
    algorithms: [u8; 2],
    /// Where the map header is.
    header: MetaPos,
    /// Extent records (EXTENTS form only).
    extents: u64,
    /// Encoded size of the inline tail pcluster (0: none).
    idata_size: u64,
    /// Where the inline tail pcluster is.
    idata_pos: Option<MetaPos>,
    /// Offset of the tail fragment in the packed inode.
    fragment_off: u64,
    /// lcluster of the tail extent's HEAD (with an inline or fragment tail).
    tail_head_lcn: u64,
    /// The whole file is one fragment.
    whole_fragment: bool,
}

/// One lcluster index, decoded (the kernel's `z_erofs_maprecorder`).
#[derive(Debug, Clone, Copy, Default)]
struct Lcluster {
    lcn: u64,
    kind: u8,
    cluster_offset: u64,
    /// NONHEAD: distance back to the HEAD and forward to the next HEAD.
    delta: [u64; 2],
    /// HEAD: pcluster block address.
    pblk: u64,
    /// First NONHEAD of a big pcluster: its compressed block count.
    compressed_blocks: Option<u64>,
    partial_ref: bool,
    /// Where the index after this one (or its pack) ends.
    next_pack_off: u64,
}

impl Lcluster {
    fn is_head(&self) -> bool {
        self.kind != LCLUSTER_TYPE_NONHEAD
    }
}

/// The most lclusters one extent may span, plus slack for partial ones.
fn max_extent_lclusters(lcluster_bits: u32) -> u64 {
    (PCLUSTER_MAX_DSIZE >> lcluster_bits) + 2
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
    /// The extents of compressed `inode`, in file order.
    pub fn compressed_extents(&self, inode: &Inode) -> Result<Vec<CompressedExtent>> {
        ensure!(
            inode.layout.is_compressed(),
            "inode {} is not compressed",
            inode.nid
        );
        let info = self.zinfo(inode)?;
        let mut extents = Vec::new();
        let mut offset = 0;
        while offset < inode.size {
            let ext = self.zmap(inode, &info, offset)?;
            extents.push(CompressedExtent {
                start: ext.start,
                len: ext.len,
                stored: match ext.at {
                    PclusterAt::Device(pa) => Stored::Device {
                        addr: pa,
                        len: ext.plen,
                    },
                    PclusterAt::Inline(_) => Stored::Inline { len: ext.plen },
                    PclusterAt::Fragment(off) => Stored::Fragment { offset: off },
                    PclusterAt::Unmapped => Stored::Hole,
                },
                algorithm: match (ext.at, ext.format) {
                    (PclusterAt::Fragment(_), _) => None,
                    (_, ZFormat::Algorithm(alg)) => Some(COMPRESSION_NAMES[usize::from(alg)].1),
                    _ => None,
                },
                partial: ext.partial,
            });
            offset = ext.start + ext.len;
        }
        Ok(extents)
    }

    /// Summarizes how compressed `inode` is stored.
    pub fn compression_info(&self, inode: &Inode) -> Result<CompressionInfo> {
        let extents = self.compressed_extents(inode)?;
        let info = self.zinfo(inode)?;
        let mut summary = CompressionInfo {
            compressed_size: inode.raw_addr << self.sb.block_bits,
            lcluster_size: if info.whole_fragment {
                0
            } else {
                1 << info.lcluster_bits
            },
            extents: extents.len() as u64,
            ..Default::default()
        };
        for ext in &extents {
            summary.partial_extents += u64::from(ext.partial);
            match ext.stored {
                Stored::Fragment { .. } => summary.fragment_bytes += ext.len,
                Stored::Inline { .. } => summary.inline_bytes += ext.len,
                _ => {}
            }
            match ext.algorithm {
                Some(name) if !summary.algorithms.contains(&name) => summary.algorithms.push(name),
                Some(_) => {}
                None if !matches!(ext.stored, Stored::Fragment { .. }) => {
                    summary.plain_extents += 1
                }
                None => {}
            }
        }
        Ok(summary)
    }

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
            ZExtent {
                start: 0,
                len: inode.size,
                at: PclusterAt::Fragment(info.fragment_off),
                plen: 0,
                format: ZFormat::Shifted,
                partial: false,
            }
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
            ensure!(
                Some(inode.nid) != self.sb.packed_nid,
                "the packed inode refers to a fragment of itself"
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

    /// The EXTENTS form (the kernel's `z_erofs_map_blocks_ext`).
    fn zmap_extents(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<ZExtent> {
        let recsz = 4u64 << ((info.advise >> ADVISE_EXTRECSZ_BIT) & ADVISE_EXTRECSZ_MASK);
        let mut pos = (info.header.offset + MAP_HEADER_SIZE).next_multiple_of(recsz);
        let lcluster = 1u64 << info.lcluster_bits;
        let record = |pos: u64| -> Result<[u32; 5]> {
            let bytes = self.meta(
                MetaPos {
                    offset: pos,
                    ..info.header
                },
                recsz,
            )?;
            let mut full = [0u8; 32];
            full[..bytes.len()].copy_from_slice(&bytes);
            let r: &ExtentRecord = read_struct(&full).expect("32 bytes");
            Ok([
                r.plen.get(),
                r.pstart_lo.get(),
                r.pstart_hi.get(),
                r.lstart_lo.get(),
                r.lstart_hi.get(),
            ])
        };
        let (mut start, mut end, mut plen, mut pa, last);
        if recsz <= 8 {
            // One record per lcluster; with 4-byte records only the lengths
            // are stored and addresses accumulate from a base.
            let mut base = None;
            if recsz == 4 {
                let bytes = self.meta(
                    MetaPos {
                        offset: pos,
                        ..info.header
                    },
                    8,
                )?;
                base = Some(u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")));
                pos += 8;
                start = 0;
            } else {
                start = offset & !(lcluster - 1);
                pos += (start >> info.lcluster_bits) * recsz;
            }
            ensure!(
                (offset - start) >> info.lcluster_bits < (1 << 26),
                "extent map of {} lclusters is too long to walk",
                (offset - start) >> info.lcluster_bits
            );
            (plen, pa) = (0, 0);
            while start <= offset {
                let r = record(pos)?;
                plen = r[0];
                match base.as_mut() {
                    Some(next) => {
                        pa = *next;
                        *next += u64::from(plen & EXTENT_PLEN_MASK);
                    }
                    None => pa = u64::from(r[1]),
                }
                pos += recsz;
                start += lcluster;
            }
            last = start >= inode.size.next_multiple_of(lcluster);
            end = start.min(inode.size);
            start -= lcluster;
        } else {
            // Sorted records: binary search for the last one at or before offset.
            (start, end, plen, pa) = (inode.size, inode.size, 0, 0);
            let (mut lo, mut hi) = (0u64, info.extents);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let r = record(pos + mid * recsz)?;
                let mut la = u64::from(r[3]);
                if recsz > 16 {
                    la |= u64::from(r[4]) << 32;
                }
                if la > offset {
                    hi = mid;
                    ensure!(la <= end, "extent records out of order");
                    end = la;
                } else {
                    lo = mid + 1;
                    if la == offset {
                        hi = hi.min(lo + 1);
                    }
                    start = la;
                    plen = r[0];
                    pa = u64::from(r[1]) | (u64::from(r[2]) << 32);
                }
            }
            last = lo >= info.extents;
        }
        let mut extent = ZExtent {
            start: offset,
            len: 0,
            at: PclusterAt::Unmapped,
            plen: 0,
            format: ZFormat::Shifted,
            partial: false,
        };
        if start < end {
            extent.start = start;
            if last && info.advise & ADVISE_FRAGMENT_PCLUSTER != 0 {
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
        extent.len = end.saturating_sub(extent.start);
        Ok(extent)
    }

    /// The lcluster-index forms (the kernel's `z_erofs_map_blocks_fo`),
    /// returning the whole extent rather than the part up to `offset`'s
    /// lcluster, so that it can be decoded once and cached.
    fn zmap_lclusters(&self, inode: &Inode, info: &ZInfo, offset: u64) -> Result<ZExtent> {
        let fragment = info.advise & ADVISE_FRAGMENT_PCLUSTER != 0;
        if fragment && info.tail_head_lcn == 0 {
            return Ok(ZExtent {
                start: 0,
                len: inode.size,
                at: PclusterAt::Fragment(info.fragment_off),
                plen: 0,
                format: ZFormat::Shifted,
                partial: false,
            });
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

    fn load_lcluster(
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
            self.load_compact_lcluster(inode, info, lcn, lookahead)?
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

    /// The compacted forms: packs of 2 (4-byte form) or 16 (2-byte form)
    /// lclusters sharing one base block address.
    fn load_compact_lcluster(
        &self,
        inode: &Inode,
        info: &ZInfo,
        lcn: u64,
        lookahead: bool,
    ) -> Result<Lcluster> {
        let bits = info.lcluster_bits;
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
        pos += rel << unit_shift;
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
        let pack = self.meta(
            MetaPos {
                offset: pack_start,
                ..info.header
            },
            pack_size,
        )?;
        let lobits = bits.max(12);
        let encodebits = (((pack_size - 4) * 8) / vcnt) as usize;
        let mut i = ((pos - pack_start) >> unit_shift) as usize;
        let entry = |i: usize| compacted_bits(&pack, lobits, encodebits * i);
        let mut lc = Lcluster {
            lcn,
            next_pack_off: pack_start + pack_size,
            ..Default::default()
        };
        let (lo, kind) = entry(i)?;
        lc.kind = kind;
        let big = info.advise & ADVISE_BIG_PCLUSTER_1 != 0;
        let cblkcnt = u64::from(LI_D0_CBLKCNT);
        if kind == LCLUSTER_TYPE_NONHEAD {
            lc.cluster_offset = 1 << bits;
            if lookahead {
                lc.delta[1] = compacted_lookahead(&pack, lobits, encodebits, vcnt as usize, i)?;
            }
            if lo & cblkcnt != 0 {
                ensure!(big, "compressed block count without big pclusters");
                lc.compressed_blocks = Some(lo & !cblkcnt);
                lc.delta[0] = 1;
            } else if i + 1 != vcnt as usize {
                lc.delta[0] = lo;
            } else {
                // The pack's last entry stores delta[1]; derive delta[0]
                // from the entry before it.
                let (prev, prev_kind) = entry(i - 1)?;
                let prev = if prev_kind != LCLUSTER_TYPE_NONHEAD {
                    0
                } else if prev & cblkcnt != 0 {
                    1
                } else {
                    prev
                };
                lc.delta[0] = prev + 1;
            }
            return Ok(lc);
        }
        lc.cluster_offset = lo;
        // A HEAD's block is the pack's base plus the blocks of the
        // pclusters of the HEADs before it in the pack.
        let mut nblk: u64 = if big { 0 } else { 1 };
        let mut j = i as i64;
        while j > 0 {
            j -= 1;
            let (lo, kind) = entry(j as usize)?;
            if !big {
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
        i = pack.len() - 4;
        let base = u32::from_le_bytes([pack[i], pack[i + 1], pack[i + 2], pack[i + 3]]);
        lc.pblk = u64::from(base) + nblk;
        Ok(lc)
    }
}

/// Distance from entry `i` of a compact pack to the next HEAD
/// (`delta[1]`), looking through the rest of the pack.
fn compacted_lookahead(
    pack: &[u8],
    lobits: u32,
    encodebits: usize,
    vcnt: usize,
    mut i: usize,
) -> Result<u64> {
    let mut d1 = 0;
    let mut lo = 0;
    while i < vcnt {
        let kind;
        (lo, kind) = compacted_bits(pack, lobits, encodebits * i)?;
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
