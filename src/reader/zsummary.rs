//! Summaries of how compressed files are stored, for `stat` and tests.

use crate::error::{ensure, Result};
use crate::format::COMPRESSION_NAMES;

use super::zmap::{PclusterAt, ZFormat};
use super::{Image, Inode};

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

/// Most extents [`Image::compressed_extents`] lists (about 48 MiB of
/// them): a hostile size cannot make the list grow without bound.
pub const MAX_LISTED_EXTENTS: usize = 1 << 20;

impl Image {
    /// The extents of compressed `inode`, in file order; at most
    /// [`MAX_LISTED_EXTENTS`] (an error beyond that).
    pub fn compressed_extents(&self, inode: &Inode) -> Result<Vec<CompressedExtent>> {
        let mut extents = Vec::new();
        self.for_each_extent(inode, |ext| {
            ensure!(
                extents.len() < MAX_LISTED_EXTENTS,
                "inode {}: more than {MAX_LISTED_EXTENTS} extents to list",
                inode.nid
            );
            extents.push(ext);
            Ok(())
        })?;
        Ok(extents)
    }

    /// Calls `f` with each extent of compressed `inode`, in file order.
    /// Each mapping must end past the offset it was asked for, so the walk
    /// always advances and ends at the file size.
    fn for_each_extent(
        &self,
        inode: &Inode,
        mut f: impl FnMut(CompressedExtent) -> Result<()>,
    ) -> Result<()> {
        ensure!(
            inode.layout.is_compressed(),
            "inode {} is not compressed",
            inode.nid
        );
        let info = self.zinfo(inode)?;
        let mut offset = 0;
        while offset < inode.size {
            let ext = self.zmap(inode, &info, offset)?;
            let end = ext.start.saturating_add(ext.len);
            ensure!(
                end > offset,
                "inode {}: the extent mapped at {offset} ends at {end}",
                inode.nid
            );
            f(CompressedExtent {
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
            })?;
            offset = end;
        }
        Ok(())
    }

    /// Summarizes how compressed `inode` is stored.
    pub fn compression_info(&self, inode: &Inode) -> Result<CompressionInfo> {
        let info = self.zinfo(inode)?;
        let mut summary = CompressionInfo {
            compressed_size: inode.raw_addr << self.sb.block_bits,
            lcluster_size: if info.whole_fragment {
                0
            } else {
                1 << info.lcluster_bits
            },
            ..Default::default()
        };
        // Counted as they come: a huge file costs time, not memory.
        self.for_each_extent(inode, |ext| {
            summary.extents += 1;
            summary.partial_extents += u64::from(ext.partial);
            match ext.stored {
                Stored::Fragment { .. } => {
                    summary.fragment_bytes = summary.fragment_bytes.saturating_add(ext.len)
                }
                Stored::Inline { .. } => {
                    summary.inline_bytes = summary.inline_bytes.saturating_add(ext.len)
                }
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
            Ok(())
        })?;
        Ok(summary)
    }
}
