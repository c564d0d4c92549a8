//! Reading compressed files (the kernel's `zdata.c`): turning a mapped
//! extent into bytes. The decoded extents are cached in `zcache`.
//!
//! Uncompressed pclusters are never copied: they map straight to the image
//! bytes like flat files. Compressed ones are decoded whole, once, and kept
//! in a cache shared by all readers, so that reading a file 4 KiB at a time
//! or from many threads decodes each pcluster once while it stays cached.

use std::borrow::Cow;

use crate::device::Access;
use crate::error::{ensure, Error, Result};

use super::data::{Extent, Mapping};
use super::zcache::{CacheStats, ExtentKey};
use super::zmap::{PclusterAt, ZExtent, ZFormat, ZInfo};
use super::{Image, Inode};

impl Image {
    /// Maps `offset` of compressed `inode`, whose map header is `info`.
    /// Stored-plain extents map to their bytes; compressed ones come back
    /// as [`Extent::Encoded`], decoded only when read.
    pub(crate) fn map_compressed(
        &self,
        inode: &Inode,
        info: &ZInfo,
        offset: u64,
    ) -> Result<Mapping<'_>> {
        let ext = self.zmap(inode, info, offset)?;
        let within = offset - ext.start;
        let rest = ext.len - within;
        fn mapping(start: u64, len: u64, extent: Extent<'_>) -> Mapping<'_> {
            Mapping { start, len, extent }
        }
        let mapping = |len, extent| mapping(offset, len, extent);
        match (ext.at, ext.format) {
            (PclusterAt::Unmapped, _) => Ok(mapping(rest, Extent::Hole)),
            (PclusterAt::Fragment(off), _) => {
                let packed = self
                    .packed
                    .as_ref()
                    .ok_or_else(|| Error::corrupt("fragment in an image without a packed inode"))?;
                let pos = off
                    .checked_add(within)
                    .filter(|&p| p < packed.size)
                    .ok_or_else(|| {
                        Error::corrupt(format!(
                            "fragment at {off} (+{within}) is past the packed inode ({} bytes)",
                            packed.size
                        ))
                    })?;
                let inner = self.map(packed, pos)?;
                Ok(mapping(inner.len.min(rest), inner.extent))
            }
            (at, ZFormat::Shifted) => Ok(mapping(rest, self.plain_at(at, within)?)),
            (at, ZFormat::Interlaced) => {
                // The first part, up to the end of the extent's first block,
                // is stored at the end of the pcluster.
                let rotation = self.block_size() - ext.start % self.block_size();
                ensure!(
                    rotation <= ext.plen,
                    "interlaced pcluster of {} bytes is shorter than its rotation",
                    ext.plen
                );
                let head = rotation.min(ext.len);
                if within < head {
                    let extent = self.plain_at(at, ext.plen - rotation + within)?;
                    Ok(mapping(head - within, extent))
                } else {
                    Ok(mapping(rest, self.plain_at(at, within - head)?))
                }
            }
            (_, ZFormat::Algorithm(alg)) => Ok(mapping(rest, Extent::Encoded(ext, alg, within))),
        }
    }

    /// Where byte `at + delta` of an uncompressed pcluster is.
    fn plain_at(&self, at: PclusterAt, delta: u64) -> Result<Extent<'_>> {
        match at {
            PclusterAt::Device(pa) => {
                let pa = pa
                    .checked_add(delta)
                    .ok_or_else(|| Error::corrupt("pcluster address overflows"))?;
                let (dev, pa) = self.devices.resolve(0, pa)?;
                Ok(Extent::Device(dev, pa))
            }
            PclusterAt::Inline(pos) => Ok(Extent::Meta(pos.add(delta)?)),
            PclusterAt::Fragment(_) | PclusterAt::Unmapped => {
                Err(Error::corrupt("uncompressed extent without a pcluster"))
            }
        }
    }

    /// Copies the decoded bytes of compressed extent `ext` from offset
    /// `within` on into `dst`. A read of the whole extent that is not cached
    /// is decoded straight into `dst` (a sequential reader never reads it again);
    /// partial reads go through the cache, so the rest is there for the next.
    pub(crate) fn read_encoded(
        &self,
        ext: &ZExtent,
        alg: u8,
        within: u64,
        dst: &mut [u8],
        access: Access,
    ) -> Result<()> {
        let within = within as usize;
        let key = ExtentKey::of(ext);
        if within == 0 && dst.len() as u64 == ext.len {
            if let Some(data) = self.cache.get(&key) {
                dst.copy_from_slice(&data);
                return Ok(());
            }
            self.cache.count_decode();
            let input = self.pcluster(ext, access)?;
            return self.decode_from(ext, alg, &input, dst);
        }
        let data = match self.cache.get(&key) {
            Some(data) => data,
            None => {
                // Read before the cache's turn to decode is taken: reading an
                // inline pcluster of a compressed metabox decodes too, and
                // decodes must not nest (the cache would wait on itself).
                let input = self.pcluster(ext, access)?;
                self.cache
                    .get_or_decode(key, |out| self.decode_from(ext, alg, &input, out))?
            }
        };
        let src = data
            .get(within..within + dst.len())
            .ok_or_else(|| Error::corrupt("decoded extent is shorter than its mapping"))?;
        dst.copy_from_slice(src);
        Ok(())
    }

    /// The encoded bytes of compressed extent `ext`, read as `access` says.
    fn pcluster(&self, ext: &ZExtent, access: Access) -> Result<Cow<'_, [u8]>> {
        match ext.at {
            PclusterAt::Device(pa) => {
                let (dev, pa) = self.devices.resolve(0, pa)?;
                self.check_whole_blocks(dev, pa, ext.plen)?;
                dev.data_cow(access, pa, ext.plen)
            }
            PclusterAt::Inline(pos) => self.meta_data(pos, ext.plen),
            PclusterAt::Fragment(_) | PclusterAt::Unmapped => {
                Err(Error::corrupt("compressed extent without a pcluster"))
            }
        }
    }

    /// Decodes compressed extent `ext` from its pcluster `input` into `out`
    /// (exactly its length).
    fn decode_from(&self, ext: &ZExtent, alg: u8, input: &[u8], out: &mut [u8]) -> Result<()> {
        self.codecs
            .decode(alg, input, out, ext.partial)
            .map_err(|e| match e {
                Error::Corrupt(msg) => {
                    Error::Corrupt(format!("extent at file offset {}: {msg}", ext.start))
                }
                other => other,
            })
    }

    /// Counters of the decoded-extent cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }
}
