//! Laying a [`Tree`] out as an EROFS image and writing it.
//!
//! The image is `[superblock (+ device table)] [file data, full mode]
//! [inodes with their xattrs, inline tails and chunk tables] [directory and
//! symlink blocks]`. File data streams in first (full mode) so that nothing
//! but metadata is held in memory; the metadata is laid out and written
//! once the whole tree is known.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

use super::dir;
use super::tree::{FileData, NodeData, NodeId, Tree};
use super::xattr;
use crate::format::{
    superblock_checksum, superblock_checksum_len, DataLayout, DeviceSlot, SuperBlock,
    CHUNK_INDEX_SIZE, COMPAT_SB_CHKSUM, DEVICE_SLOT_SIZE, EROFS_MAGIC, INCOMPAT_CHUNKED_FILE,
    INCOMPAT_COMPR_CFGS, INCOMPAT_DEVICE_TABLE, INCOMPAT_ZERO_PADDING, INODE_COMPACT_SIZE,
    INODE_EXTENDED_SIZE, INODE_SLOT_SIZE, SUPERBLOCK_BASE_SIZE, SUPERBLOCK_CHECKSUM_FIELD,
    SUPERBLOCK_OFFSET,
};

mod compressed;
mod encode;

use super::compress::Codec;
use compressed::Compressing;
use encode::compact;

/// Where regular files' bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSource {
    /// In a tar of `size` bytes, extra device 1 (tar-index mode). File
    /// offsets are tar offsets.
    Tar {
        /// The tar's length in bytes.
        size: u64,
    },
    /// In the image's own data area, written with [`ImageBuilder::add_data`].
    Image,
}

/// What an image's metadata says beyond the tree.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where file data lives.
    pub source: DataSource,
    /// The volume UUID.
    pub uuid: [u8; 16],
    /// The image's size is made a multiple of this many bytes (0: of the
    /// block size), so that a tar appended to it starts on a filesystem
    /// block (see [`crate::convert`]'s appending).
    pub end_align: u64,
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildSummary {
    /// Size of the image (the primary device) in bytes.
    pub image_size: u64,
    /// Number of inodes.
    pub inodes: u64,
}

/// An error building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The tree holds something the format cannot express.
    #[error("{0}")]
    Unrepresentable(String),
}

/// The device table follows the superblock (offset in 128-byte slots).
const DEVT_SLOTOFF: u16 =
    ((SUPERBLOCK_OFFSET + SUPERBLOCK_BASE_SIZE as u64) / DEVICE_SLOT_SIZE) as u16;

/// Builds one image into a file.
pub struct ImageBuilder {
    out: File,
    block_bits: u8,
    /// End of the data area, in bytes (block aligned).
    data_end: u64,
    /// File data is compressed (full mode with `--compress`).
    compress: Option<Compressing>,
}

/// How an inode's contents are stored.
enum Payload {
    /// Nothing (empty files, devices, fifos).
    None,
    /// Directory or symlink bytes of this size: the tail inline after the
    /// inode when it fits, whole blocks in the block area.
    Bytes { size: u64 },
    /// File data at a block of the image (full mode).
    Flat { blkaddr: u64 },
    /// File data in the tar: chunk size bits and the first block.
    Chunks {
        chunk_bits: u8,
        count: u64,
        first_block: u64,
    },
    /// File data in the image's data area from `blkaddr`, the last
    /// partial block inline after the inode.
    FlatTail { blkaddr: u64, tail: Vec<u8> },
    /// Compressed file data: extents and their pclusters, the last one's
    /// either a `tail` block kept for the block area or an `inline`
    /// pcluster after the index; the map header and full index follow the
    /// xattrs. `blocks` counts the pclusters' blocks but an inline one.
    Compressed {
        extents: Vec<super::compress::Stored>,
        blocks: u64,
        tail: Option<Vec<u8>>,
        inline: Option<Vec<u8>>,
        algorithm: u8,
        big: bool,
    },
}

/// One inode as laid out.
struct Record {
    id: NodeId,
    nlink: u32,
    compact: bool,
    xattrs: Vec<u8>,
    icount: u16,
    payload: Payload,
    /// Bytes of the payload stored inline after the inode.
    inline: u64,
    /// Where the inode starts (byte offset in the image).
    pos: u64,
    /// First block of the payload's block-area part.
    blkaddr: u64,
}

impl Record {
    fn inode_size(&self) -> u64 {
        if self.compact {
            INODE_COMPACT_SIZE
        } else {
            INODE_EXTENDED_SIZE
        }
    }

    /// Places the inode at or after `pos` (32-byte aligned; an extended
    /// core or an inline tail never crosses a block) and returns where the
    /// next one may start.
    fn place(&mut self, pos: u64, block: u64) -> u64 {
        let mut pos = pos.next_multiple_of(INODE_SLOT_SIZE);
        let isize = self.inode_size();
        if !self.compact && pos % block + isize > block {
            pos = pos.next_multiple_of(block);
        }
        let base = isize + self.xattrs.len() as u64;
        let len = match self.payload {
            Payload::Bytes { size } => {
                let tail = size % block;
                if tail > 0 && base + tail <= block {
                    if pos % block + base + tail > block {
                        pos = pos.next_multiple_of(block);
                    }
                    self.inline = tail;
                }
                base + self.inline
            }
            Payload::Chunks { count, .. } => {
                base.next_multiple_of(CHUNK_INDEX_SIZE) + CHUNK_INDEX_SIZE * count
            }
            Payload::FlatTail { ref tail, .. } => {
                let tail = tail.len() as u64;
                if pos % block + base + tail > block {
                    pos = pos.next_multiple_of(block);
                }
                self.inline = tail;
                base + tail
            }
            Payload::Compressed { ref inline, .. } => {
                let bits = block.trailing_zeros() as u8;
                let index_end = base.next_multiple_of(8) + self.payload.zindex_len(bits);
                // An inline pcluster may not cross a block: from a block
                // start it fits (checked when it was chosen).
                let tail = inline.as_ref().map_or(0, |t| t.len() as u64);
                if tail > 0 && (pos + index_end) % block + tail > block {
                    pos = pos.next_multiple_of(block);
                }
                self.inline = tail;
                index_end + tail
            }
            _ => base,
        };
        self.pos = pos;
        pos + len
    }

    fn layout(&self) -> DataLayout {
        match self.payload {
            Payload::Bytes { .. } if self.inline > 0 => DataLayout::FlatInline,
            Payload::FlatTail { .. } => DataLayout::FlatInline,
            Payload::Chunks { .. } => DataLayout::ChunkBased,
            Payload::Compressed { .. } => DataLayout::CompressedFull,
            _ => DataLayout::FlatPlain,
        }
    }
}

/// Where the metadata and block areas are.
struct Layout {
    block_bits: u8,
    block: u64,
    /// Start of the inode area (block aligned).
    meta_start: u64,
    /// Start of the directory and symlink blocks.
    blocks_start: u64,
    /// End of the image.
    image_size: u64,
}

impl ImageBuilder {
    /// Starts an image with blocks of `1 << block_bits` bytes (9 for
    /// tar-index images, 12 for full ones) in `out`, truncated.
    pub fn new(out: File, block_bits: u8) -> io::Result<Self> {
        out.set_len(0)?;
        let block = 1u64 << block_bits;
        // The superblock (and device table) own the first bytes.
        let data_end = (SUPERBLOCK_OFFSET + SUPERBLOCK_BASE_SIZE as u64 + DEVICE_SLOT_SIZE)
            .next_multiple_of(block);
        Ok(Self {
            out,
            block_bits,
            data_end,
            compress: None,
        })
    }

    /// Compresses file data added from now on with `codec` on `workers`
    /// threads (full mode only).
    pub fn set_compression(&mut self, codec: Codec, workers: usize) {
        let block = 1usize << self.block_bits;
        self.compress = Some(Compressing::new(codec, workers, block));
    }

    /// Copies `size` bytes of file data from `reader` into the data area
    /// (full mode) and returns where they are.
    /// With compression, the returned offset is the file's number instead.
    pub fn add_data(&mut self, reader: &mut impl Read, size: u64) -> io::Result<FileData> {
        if self.compress.is_some() {
            return self.add_compressed(reader, size);
        }
        let offset = self.data_end;
        let mut writer = OffsetWriter {
            file: &self.out,
            pos: offset,
        };
        let copied = io::copy(&mut reader.take(size), &mut writer)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file data ended after {copied} of {size} bytes"),
            ));
        }
        let block = 1u64 << self.block_bits;
        self.data_end = (offset + size).next_multiple_of(block);
        Ok(FileData { size, offset })
    }

    /// Lays out and writes the metadata of `tree`, finishing the image:
    /// decides each inode's form, lays the inodes and blocks out, assigns
    /// nids, then writes the metadata and the superblock.
    pub fn finish(
        mut self,
        tree: &Tree,
        options: &BuildOptions,
    ) -> Result<BuildSummary, BuildError> {
        self.flush_compressed(true)?;
        let nodes = tree.reachable();
        let epoch = common_mtime(tree, &nodes);
        let mut records = Vec::with_capacity(nodes.len());
        for &(id, refs) in &nodes {
            records.push(self.record(tree, id, refs, epoch, options.source)?);
        }
        let layout = self.layout(&mut records, options.end_align)?;
        let nid_of = assign_nids(&records, layout.meta_start);
        let parent_of = parents(tree, &nodes);
        let (meta, blocks) = layout.encode(tree, &records, &nid_of, &parent_of);
        self.out.write_all_at(&meta, layout.meta_start)?;
        self.out.write_all_at(&blocks, layout.blocks_start)?;
        self.out.set_len(layout.image_size)?;
        let geometry = Geometry {
            blocks: layout.image_size / layout.block,
            meta_blkaddr: layout.meta_start / layout.block,
            root_nid: nid_of[&Tree::ROOT],
            inodes: records.len() as u64,
            epoch,
            incompat: self.data_features(&records),
        };
        self.write_superblock(&geometry, options)?;
        Ok(BuildSummary {
            image_size: layout.image_size,
            inodes: records.len() as u64,
        })
    }

    /// Places every inode after the data area, each 32-byte aligned with
    /// tails never crossing a block, then the directory and symlink blocks
    /// after the inodes; the image's end rounded up to `end_align` bytes.
    fn layout(&self, records: &mut [Record], end_align: u64) -> Result<Layout, BuildError> {
        let block = 1u64 << self.block_bits;
        let meta_start = self.data_end;
        let pos = if self.compress.is_some() {
            compressed::pack(records, meta_start, block)
        } else {
            let mut pos = meta_start;
            for rec in records.iter_mut() {
                pos = rec.place(pos, block);
            }
            pos
        };
        let blocks_start = pos.next_multiple_of(block);
        let mut next_block = blocks_start / block;
        for rec in records.iter_mut() {
            match rec.payload {
                Payload::Bytes { size } => {
                    rec.blkaddr = next_block;
                    next_block += (size - rec.inline).div_ceil(block);
                }
                Payload::Compressed { tail: Some(_), .. } => {
                    rec.blkaddr = next_block;
                    next_block += 1;
                }
                _ => {}
            }
        }
        debug_assert!(
            end_align.is_multiple_of(block),
            "end_align {end_align} is not whole blocks"
        );
        let next_block = next_block.next_multiple_of((end_align / block).max(1));
        let image_size = next_block * block;
        check_block_addr(next_block)?;
        Ok(Layout {
            block_bits: self.block_bits,
            block,
            meta_start,
            blocks_start,
            image_size,
        })
    }

    /// Decides how `id` is stored (everything but its position).
    fn record(
        &self,
        tree: &Tree,
        id: NodeId,
        refs: u32,
        epoch: i64,
        source: DataSource,
    ) -> Result<Record, BuildError> {
        let node = tree.node(id);
        let block_bits = self.block_bits;
        let (nlink, payload, size) = match &node.data {
            NodeData::Dir(children) => {
                let subdirs = children
                    .values()
                    .filter(|c| tree.node(**c).is_dir())
                    .count();
                let names = dir_names(children);
                let (_, size) = dir::pack(&names, 1 << block_bits);
                (2 + subdirs as u32, Payload::Bytes { size }, size)
            }
            NodeData::Symlink(target) => {
                let size = target.len() as u64;
                (refs, Payload::Bytes { size }, size)
            }
            NodeData::File(data) if data.size > 0 && self.compress.is_some() => {
                // Room for an inline tail: after the inode core and xattrs.
                let core = if compact(node, refs, data.size, epoch) {
                    INODE_COMPACT_SIZE
                } else {
                    INODE_EXTENDED_SIZE
                };
                let base = core + xattr::encode(&node.xattrs).0.len() as u64;
                let payload = self.compressed_payload(data.offset, base).ok_or_else(|| {
                    BuildError::Unrepresentable(format!(
                        "no data for compressed file {}",
                        data.offset
                    ))
                })?;
                (refs, payload, data.size)
            }
            NodeData::File(data) if data.size > 0 => {
                if data.offset % (1 << block_bits) != 0 {
                    return Err(BuildError::Unrepresentable(format!(
                        "file data at byte {} is not aligned to {} bytes",
                        data.offset,
                        1u64 << block_bits
                    )));
                }
                let first_block = data.offset >> block_bits;
                let payload = match source {
                    DataSource::Image => Payload::Flat {
                        blkaddr: first_block,
                    },
                    DataSource::Tar { .. } => {
                        // One chunk for the whole file when it can be.
                        let needed = 64 - (data.size - 1).leading_zeros() as u8;
                        let chunk_bits = needed.clamp(block_bits, block_bits + 31);
                        let count = data.size.div_ceil(1 << chunk_bits);
                        check_block_addr(first_block + (data.size >> block_bits))?;
                        Payload::Chunks {
                            chunk_bits,
                            count,
                            first_block,
                        }
                    }
                };
                (refs, payload, data.size)
            }
            _ => (refs, Payload::None, 0),
        };
        let (xattrs, icount) = xattr::encode(&node.xattrs);
        Ok(Record {
            id,
            nlink,
            compact: compact(node, nlink, size, epoch),
            xattrs,
            icount,
            payload,
            inline: 0,
            pos: 0,
            blkaddr: 0,
        })
    }

    fn write_superblock(&self, geo: &Geometry, options: &BuildOptions) -> Result<(), BuildError> {
        let block_bits = self.block_bits;
        let block = 1u64 << block_bits;
        let (incompat, extra_devices) = match options.source {
            DataSource::Tar { .. } => (INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE, 1),
            DataSource::Image => (0, 0),
        };
        let (incompat, algs) = match &self.compress {
            Some(z) => (
                incompat | INCOMPAT_ZERO_PADDING | INCOMPAT_COMPR_CFGS | geo.incompat,
                1u16 << z.codec.algorithm.id(),
            ),
            None => (incompat, 0),
        };
        let root_nid = u16::try_from(geo.root_nid)
            .map_err(|_| BuildError::Unrepresentable("root inode past nid 65535".into()))?;
        let sb = SuperBlock {
            magic: U32::new(EROFS_MAGIC),
            checksum: U32::new(0),
            feature_compat: U32::new(COMPAT_SB_CHKSUM),
            blkszbits: block_bits,
            sb_extslots: 0,
            rootnid_2b: U16::new(root_nid),
            inos: U64::new(geo.inodes),
            epoch: U64::new(geo.epoch as u64),
            fixed_nsec: U32::new(0),
            blocks_lo: U32::new(geo.blocks as u32),
            meta_blkaddr: U32::new(geo.meta_blkaddr as u32),
            xattr_blkaddr: U32::new(0),
            uuid: options.uuid,
            volume_name: [0; 16],
            feature_incompat: U32::new(incompat),
            compr_algs_or_lz4_distance: U16::new(algs),
            extra_devices: U16::new(extra_devices),
            devt_slotoff: U16::new(if extra_devices > 0 { DEVT_SLOTOFF } else { 0 }),
            dirblkbits: 0,
            xattr_prefix_count: 0,
            xattr_prefix_start: U32::new(0),
            packed_nid: U64::new(0),
            xattr_filter_reserved: 0,
            ishare_xattr_prefix_id: 0,
            reserved: [0; 2],
            build_time: U32::new(0),
            rootnid_8b: U64::new(0),
            reserved2: U64::new(0),
        };
        let mut area = vec![0u8; superblock_checksum_len(block) as usize];
        area[..SUPERBLOCK_BASE_SIZE].copy_from_slice(sb.as_bytes());
        if let DataSource::Tar { size } = options.source {
            let tar_blocks = size.div_ceil(block);
            check_block_addr(geo.blocks + tar_blocks)?;
            let slot = DeviceSlot {
                tag: [0; 64],
                blocks_lo: U32::new(tar_blocks as u32),
                uniaddr_lo: U32::new(geo.blocks as u32),
                blocks_hi: U16::new(0),
                uniaddr_hi: U16::new(0),
                reserved: [0; 52],
            };
            let at = DEVT_SLOTOFF as usize * DEVICE_SLOT_SIZE as usize - SUPERBLOCK_OFFSET as usize;
            area[at..at + slot.as_bytes().len()].copy_from_slice(slot.as_bytes());
        }
        let mut len = SUPERBLOCK_BASE_SIZE + DEVICE_SLOT_SIZE as usize;
        if let Some(z) = &self.compress {
            // The one COMPR_CFGS record follows the superblock.
            let record = z.codec.config_record(block);
            area[SUPERBLOCK_BASE_SIZE..SUPERBLOCK_BASE_SIZE + record.len()]
                .copy_from_slice(&record);
            len = len.max(SUPERBLOCK_BASE_SIZE + record.len());
        }
        let checksum = superblock_checksum(&area);
        area[SUPERBLOCK_CHECKSUM_FIELD].copy_from_slice(&checksum.to_le_bytes());
        // The checksummed area ends before the first inode or data block
        // (see `new`), and the rest of it is still zeros in the file.
        self.out.write_all_at(&area[..len], SUPERBLOCK_OFFSET)?;
        Ok(())
    }
}

/// The superblock's numbers.
struct Geometry {
    blocks: u64,
    meta_blkaddr: u64,
    root_nid: u64,
    inodes: u64,
    epoch: i64,
    /// Features the data uses: ztailpacking, dedupe.
    incompat: u32,
}

/// Each inode's nid: its 32-byte slot from the start of the inode area.
fn assign_nids(records: &[Record], meta_start: u64) -> HashMap<NodeId, u64> {
    records
        .iter()
        .map(|r| (r.id, (r.pos - meta_start) / INODE_SLOT_SIZE))
        .collect()
}

/// Each directory's parent, for its `..` (the root is its own).
fn parents(tree: &Tree, nodes: &[(NodeId, u32)]) -> HashMap<NodeId, NodeId> {
    let mut parent_of = HashMap::new();
    for &(id, _) in nodes {
        if let NodeData::Dir(children) = &tree.node(id).data {
            for &child in children.values() {
                if tree.node(child).is_dir() {
                    parent_of.insert(child, id);
                }
            }
        }
    }
    parent_of
}

/// The 32-bit block addresses of this format (no 48-bit layout) must hold
/// every block.
fn check_block_addr(block: u64) -> Result<(), BuildError> {
    if block > u64::from(u32::MAX) {
        return Err(BuildError::Unrepresentable(format!(
            "block address {block} needs more than 32 bits"
        )));
    }
    Ok(())
}

/// The most common whole-second mtime: compact inodes can only hold the
/// superblock's epoch, so the more nodes share it the smaller the image.
fn common_mtime(tree: &Tree, nodes: &[(NodeId, u32)]) -> i64 {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for &(id, _) in nodes {
        let node = tree.node(id);
        if node.mtime >= 0 && node.mtime_nsec == 0 {
            *counts.entry(node.mtime).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(mtime, count)| (count, std::cmp::Reverse(mtime)))
        .map_or(0, |(mtime, _)| mtime)
}

/// A directory's names, `.` and `..` included, in byte order.
fn dir_names(children: &std::collections::BTreeMap<Vec<u8>, NodeId>) -> Vec<&[u8]> {
    let mut names: Vec<&[u8]> = children.keys().map(|k| k.as_slice()).collect();
    names.push(b".");
    names.push(b"..");
    names.sort_unstable();
    names
}

/// Writes at increasing offsets of a file.
struct OffsetWriter<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for OffsetWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
