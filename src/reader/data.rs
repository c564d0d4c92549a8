//! File data: mapping a file offset to where its bytes are (the kernel's
//! `erofs_map_blocks`), and reads built on that mapping.
//!
//! Compressed layouts are mapped by `zmap` and decoded by `zdata`; here they
//! are one more kind of [`Extent`].

use std::borrow::Cow;

use crate::device::{Access, Device};
use crate::error::{ensure, Error, Result};
use crate::format::{
    read_struct, ChunkIndex, DataLayout, BLOCK_MAP_ENTRY_SIZE, CHUNK_FORMAT_48BIT,
    CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE, NULL_ADDR,
};

use super::zmap::{PclusterAt, ZExtent, ZInfo};
use super::{Image, Inode, MetaPos};

/// Where one extent of a file's data is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Extent<'a> {
    /// On a device, starting at this byte.
    Device(&'a Device, u64),
    /// Inline in the metadata (the packed tail of a FLAT_INLINE inode).
    Meta(MetaPos),
    /// A hole: reads as zeros.
    Hole,
    /// A compressed extent: the extent, its algorithm, and how far into its
    /// decoded bytes the mapping starts. Decoded only when read.
    Encoded(ZExtent, u8, u64),
}

/// A run of a file's logical bytes `[start, start + len)` and where it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mapping<'a> {
    /// Logical start of the run.
    pub start: u64,
    /// Length of the run (never past the end of the file).
    pub len: u64,
    /// Where the run's first byte is.
    pub extent: Extent<'a>,
}

impl Image {
    /// Maps the logical offset `offset` (< size) of `inode`.
    pub(crate) fn map(&self, inode: &Inode, offset: u64) -> Result<Mapping<'_>> {
        self.map_with(inode, offset, &mut None)
    }

    /// [`Image::map`] for loops over one inode: a compressed inode's map
    /// header is parsed into `zinfo` on the first call and reused after.
    fn map_with(
        &self,
        inode: &Inode,
        offset: u64,
        zinfo: &mut Option<ZInfo>,
    ) -> Result<Mapping<'_>> {
        debug_assert!(offset < inode.size);
        let mut mapping = match inode.layout {
            DataLayout::FlatPlain | DataLayout::FlatInline => self.map_flat(inode, offset)?,
            DataLayout::ChunkBased => self.map_chunked(inode, offset)?,
            DataLayout::CompressedFull | DataLayout::CompressedCompact => {
                let info = match zinfo {
                    Some(info) => info,
                    None => zinfo.insert(self.zinfo(inode)?),
                };
                self.map_compressed(inode, info, offset)
            }
            .map_err(|e| match e {
                Error::Corrupt(msg) => Error::Corrupt(format!("inode {}: {msg}", inode.nid)),
                other => other,
            })?,
        };
        // Every mapping starts at the offset asked for; chunk lengths are
        // rounded up to blocks, so clip at EOF.
        debug_assert_eq!(mapping.start, offset);
        mapping.len = mapping.len.min(inode.size - mapping.start);
        Ok(mapping)
    }

    fn map_flat(&self, inode: &Inode, offset: u64) -> Result<Mapping<'_>> {
        let bits = u32::from(self.sb.block_bits);
        let block = self.block_size();
        if inode.layout == DataLayout::FlatPlain && inode.raw_addr == NULL_ADDR {
            return Ok(Mapping {
                start: offset,
                len: inode.size - offset,
                extent: Extent::Hole,
            });
        }
        let tail_packed = u64::from(inode.layout == DataLayout::FlatInline);
        let nblocks = inode.size.div_ceil(block);
        // With a packed tail, the last block is stored after the inode.
        let flat_end = (nblocks - tail_packed.min(nblocks)) << bits;
        if offset < flat_end {
            let base = inode.raw_addr << bits;
            let pa = base.checked_add(offset).ok_or_else(|| {
                Error::corrupt(format!("inode {}: block address overflows", inode.nid))
            })?;
            let (dev, pa) = self.devices.resolve(0, pa)?;
            return Ok(Mapping {
                start: offset,
                len: flat_end - offset,
                extent: Extent::Device(dev, pa),
            });
        }
        let tail_pos = inode.after_xattrs()?;
        let in_block = offset - flat_end;
        let len = inode.size - offset;
        ensure!(
            (tail_pos.offset % block) + in_block + len <= block,
            "inode {}: inline data crosses a block boundary",
            inode.nid
        );
        Ok(Mapping {
            start: offset,
            len,
            extent: Extent::Meta(tail_pos.add(in_block)?),
        })
    }

    fn map_chunked(&self, inode: &Inode, offset: u64) -> Result<Mapping<'_>> {
        let format = inode.raw_addr as u16;
        let bits = u32::from(self.sb.block_bits);
        let chunk_bits = bits + u32::from(format & CHUNK_FORMAT_BLKBITS_MASK);
        let unit = if format & CHUNK_FORMAT_INDEXES != 0 {
            CHUNK_INDEX_SIZE
        } else {
            BLOCK_MAP_ENTRY_SIZE
        };
        let chunk = offset >> chunk_bits;
        let table = inode.after_xattrs()?;
        let table = MetaPos {
            offset: table.offset.next_multiple_of(unit),
            ..table
        };
        let entry_pos = table.add(chunk * unit)?;
        let entry = self.meta(entry_pos, unit)?;
        let start = chunk << chunk_bits;
        let block = self.block_size();
        let len = (1u64 << chunk_bits).min((inode.size - start).next_multiple_of(block));
        let located = if unit == CHUNK_INDEX_SIZE {
            let index: &ChunkIndex =
                read_struct(&entry).ok_or_else(|| Error::corrupt("short chunk index"))?;
            let mask = if format & CHUNK_FORMAT_48BIT != 0 {
                (1u64 << 48) - 1
            } else {
                (1u64 << 32) - 1
            };
            let startblk = ((u64::from(index.startblk_hi.get()) << 32)
                | u64::from(index.startblk_lo.get()))
                & mask;
            // What a Nydus bootstrap keeps in the bits EROFS leaves unused
            // here: the chunk's record (CI) index, checked by its blob.
            let record =
                (u32::from(index.device_id.get() >> 8) << 16) | u32::from(index.startblk_hi.get());
            (startblk != mask).then(|| {
                let device_id = index.device_id.get() & self.devices.id_mask;
                (device_id, startblk, record)
            })
        } else {
            let raw = read_struct::<zerocopy::little_endian::U32>(&entry)
                .ok_or_else(|| Error::corrupt("short block map entry"))?
                .get();
            (raw != u32::MAX).then_some((0, u64::from(raw), 0))
        };
        let extent = match located {
            None => Extent::Hole,
            Some((device_id, startblk, record)) => {
                let (dev, pa) = self.devices.resolve(device_id, startblk << bits)?;
                dev.check_extent(pa, len, record)?;
                Extent::Device(dev, pa + (offset - start))
            }
        };
        Ok(Mapping {
            start: offset,
            len: start + len - offset,
            extent,
        })
    }

    /// Checks that `len` bytes of file data (or a pcluster) at `pa` on
    /// `dev` lie in whole blocks of it. The kernel reads data from a device
    /// in whole blocks: a block that runs past the end of the device (its
    /// file is not a whole number of blocks) is EIO there, loop device or
    /// file-backed mount alike, even when the bytes wanted lie inside the
    /// file. So it is an error here: serving them would show what the
    /// kernel never does.
    pub(crate) fn check_whole_blocks(&self, dev: &Device, pa: u64, len: u64) -> Result<()> {
        let block = self.block_size();
        let end = pa
            .checked_add(len)
            .and_then(|end| end.checked_next_multiple_of(block));
        if end.is_none_or(|end| end > dev.len()) {
            return Err(Error::corrupt(format!(
                "{len} bytes of data at byte {pa} need {block}-byte blocks past the end of {} ({} bytes; a partial last block cannot be read)",
                dev.path().display(),
                dev.len()
            )));
        }
        Ok(())
    }

    /// The bytes of `mapping` from its start, `len` at most (`len <= mapping.len`).
    fn extent_bytes<'a>(
        &'a self,
        mapping: &Mapping<'a>,
        len: u64,
        access: Access,
    ) -> Result<Cow<'a, [u8]>> {
        match mapping.extent {
            Extent::Device(dev, pa) => {
                self.check_whole_blocks(dev, pa, len)?;
                dev.data_cow(access, pa, len)
            }
            Extent::Meta(pos) => self.meta_data(pos, len),
            Extent::Hole => Ok(Cow::Owned(vec![0; len as usize])),
            Extent::Encoded(ext, alg, within) => {
                let mut out = vec![0; len as usize];
                self.read_encoded(&ext, alg, within, &mut out, access)?;
                Ok(Cow::Owned(out))
            }
        }
    }

    /// Reads file bytes at `offset` into `buf`; returns how many were read,
    /// fewer than `buf.len()` only at the end of the file.
    pub fn read_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at_for(Access::Sequential, inode, offset, buf)
    }

    /// [`Image::read_at`], reading the image as `access` says.
    fn read_at_for(
        &self,
        access: Access,
        inode: &Inode,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let mut done = 0usize;
        let mut zinfo = None;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos >= inode.size {
                break;
            }
            let mapping = self.map_with(inode, pos, &mut zinfo)?;
            let want = mapping.len.min((buf.len() - done) as u64);
            let dst = &mut buf[done..done + want as usize];
            match mapping.extent {
                Extent::Hole => dst.fill(0),
                Extent::Encoded(ext, alg, within) => {
                    self.read_encoded(&ext, alg, within, dst, access)?
                }
                _ => dst.copy_from_slice(&self.extent_bytes(&mapping, want, access)?),
            }
            done += want as usize;
        }
        Ok(done)
    }

    /// The file bytes `[offset, offset + len)`, clipped at the end of the
    /// file. Borrowed straight from the image map when they are contiguous
    /// on one device, copied otherwise.
    pub fn read_range(&self, inode: &Inode, offset: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        let len = len.min(inode.size.saturating_sub(offset));
        if len == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        let mapping = self.map(inode, offset)?;
        if mapping.len >= len && !matches!(mapping.extent, Extent::Hole) {
            return self.extent_bytes(&mapping, len, Access::Sequential);
        }
        let mut buf = vec![0; len as usize];
        let n = self.read_at(inode, offset, &mut buf)?;
        buf.truncate(n);
        Ok(Cow::Owned(buf))
    }

    /// [`Image::read_range`] for a server: bytes that are contiguous on a
    /// device are borrowed from the map; anything else is assembled in
    /// `scratch`, whose allocation a caller keeps from read to read.
    /// `access` says how the reader goes on, which decides how much of the
    /// image around the bytes is read from disk with them.
    pub fn read_range_with<'a>(
        &'a self,
        inode: &Inode,
        offset: u64,
        len: u64,
        access: Access,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let len = len.min(inode.size.saturating_sub(offset));
        if len == 0 {
            return Ok(&[]);
        }
        if !inode.layout.is_compressed() {
            let mapping = self.map(inode, offset)?;
            if let (true, Extent::Device(dev, pa)) = (mapping.len >= len, &mapping.extent) {
                self.check_whole_blocks(dev, *pa, len)?;
                return dev.data_for(access, *pa, len, scratch);
            }
        }
        scratch.resize(len as usize, 0);
        let n = self.read_at_for(access, inode, offset, scratch)?;
        Ok(&scratch[..n])
    }

    /// Calls `f(device, offset, len)` for each run of file bytes
    /// `[offset, offset + len)` stored on a device (holes and inline data
    /// are skipped; compressed extents give their pclusters), merging runs
    /// that are adjacent on the device so a sequential file costs one call.
    /// Stops at the first mapping error or after 256 mappings.
    fn for_each_device_run(
        &self,
        inode: &Inode,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&Device, u64, u64),
    ) {
        let end = offset.saturating_add(len).min(inode.size);
        let mut pos = offset;
        let mut pending: Option<(&Device, u64, u64)> = None;
        let mut zinfo = None;
        for _ in 0..256 {
            if pos >= end {
                break;
            }
            let Ok(mapping) = self.map_with(inode, pos, &mut zinfo) else {
                break;
            };
            let run = mapping.len.min(end - pos);
            let stored = match mapping.extent {
                Extent::Device(dev, pa) => Some((dev, pa, run)),
                Extent::Encoded(ext, ..) => match ext.at {
                    PclusterAt::Device(pa) => self
                        .devices
                        .resolve(0, pa)
                        .ok()
                        .map(|(dev, pa)| (dev, pa, ext.plen)),
                    _ => None,
                },
                _ => None,
            };
            if let Some((dev, pa, n)) = stored {
                match pending.as_mut() {
                    Some((d, start, len)) if std::ptr::eq(*d, dev) && *start + *len == pa => {
                        *len += n
                    }
                    _ => {
                        if let Some((d, start, len)) = pending.take() {
                            f(d, start, len);
                        }
                        pending = Some((dev, pa, n));
                    }
                }
            }
            pos += run;
        }
        if let Some((d, start, len)) = pending {
            f(d, start, len);
        }
    }

    /// Hints that a sequential reader will want file bytes `[offset,
    /// offset + len)` next ([`crate::device::Device::will_need`] says what
    /// is done with that).
    pub fn prefetch(&self, inode: &Inode, offset: u64, len: u64) {
        let devices = &self.devices;
        if !devices.primary.verifies_ahead()
            && !devices.extra.iter().any(|d| d.backing.verifies_ahead())
        {
            // Nothing would be done with the hint: skip mapping the runs.
            return;
        }
        if inode.layout.is_compressed() {
            // Mapping every pcluster ahead would cost more than it saves:
            // mkfs lays a file's pclusters out in order, and they are no
            // larger than the data, so `len` bytes from the next one cover it.
            self.for_each_device_run(inode, offset, 1, |dev, pa, _| dev.will_need(pa, len));
        } else {
            self.for_each_device_run(inode, offset, len, |dev, pa, n| dev.will_need(pa, n));
        }
    }

    /// How many bytes from `offset` on are a hole (read as zeros without
    /// being stored); 0 when `offset` holds data or is at the end.
    pub fn hole_len(&self, inode: &Inode, offset: u64) -> Result<u64> {
        if offset >= inode.size {
            return Ok(0);
        }
        let mapping = self.map(inode, offset)?;
        Ok(match mapping.extent {
            Extent::Hole => mapping.len,
            _ => 0,
        })
    }

    /// A symlink's target.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        if inode.kind != super::FileKind::Symlink {
            return Err(Error::NotSymlink);
        }
        // PATH_MAX including the terminating NUL, as the kernel enforces.
        ensure!(
            inode.size > 0 && inode.size < 4096,
            "inode {}: symlink target of {} bytes",
            inode.nid,
            inode.size
        );
        Ok(self.read_range(inode, 0, inode.size)?.into_owned())
    }
}
