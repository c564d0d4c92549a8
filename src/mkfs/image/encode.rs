//! Encoding the laid-out inodes: each inode's core, xattrs, inline tail or
//! chunk indexes into the inode area, directory and symlink blocks into the
//! block area.

use std::collections::{BTreeMap, HashMap};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

use super::super::dir;
use super::super::tree::{Node, NodeData, NodeId, Tree};
use super::{dir_names, Layout, Payload, Record};
use crate::format::{
    ChunkIndex, FileType, InodeCompact, InodeExtended, CHUNK_FORMAT_INDEXES, I_DATALAYOUT_SHIFT,
    S_IFMT,
};

impl Layout {
    /// The inode area and the block area's bytes.
    pub(super) fn encode(
        &self,
        tree: &Tree,
        records: &[Record],
        nid_of: &HashMap<NodeId, u64>,
        parent_of: &HashMap<NodeId, NodeId>,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut meta = vec![0u8; (self.blocks_start - self.meta_start) as usize];
        let mut blocks = vec![0u8; (self.image_size - self.blocks_start) as usize];
        for (ino, rec) in records.iter().enumerate() {
            let node = tree.node(rec.id);
            let bytes = match &node.data {
                NodeData::Dir(children) => {
                    let parent = nid_of[parent_of.get(&rec.id).unwrap_or(&Tree::ROOT)];
                    dir_bytes(tree, children, nid_of[&rec.id], parent, nid_of, self.block)
                }
                NodeData::Symlink(target) => target.clone(),
                _ => Vec::new(),
            };
            let size = match node.data {
                NodeData::File(data) => data.size,
                _ => bytes.len() as u64,
            };
            let at = (rec.pos - self.meta_start) as usize;
            // stat's 32-bit inode number hint: 1-based position in the table.
            let core = inode_bytes(rec, node, size, self.block_bits, ino as u32 + 1);
            meta[at..at + core.len()].copy_from_slice(&core);
            let off = at + core.len();
            meta[off..off + rec.xattrs.len()].copy_from_slice(&rec.xattrs);
            let off = off + rec.xattrs.len();
            self.encode_payload(rec, &bytes, off, &mut meta, &mut blocks);
        }
        (meta, blocks)
    }

    /// Writes `rec`'s payload: the inline tail or chunk indexes into
    /// `meta` at `off` (right after its xattrs), the rest of `bytes` into
    /// `blocks`.
    fn encode_payload(
        &self,
        rec: &Record,
        bytes: &[u8],
        mut off: usize,
        meta: &mut [u8],
        blocks: &mut [u8],
    ) {
        match rec.payload {
            Payload::Bytes { .. } => {
                let split = bytes.len() - rec.inline as usize;
                meta[off..off + rec.inline as usize].copy_from_slice(&bytes[split..]);
                let b = (rec.blkaddr * self.block - self.blocks_start) as usize;
                blocks[b..b + split].copy_from_slice(&bytes[..split]);
            }
            Payload::Chunks {
                chunk_bits,
                count,
                first_block,
            } => {
                off = off.next_multiple_of(8);
                let step = 1u64 << (chunk_bits - self.block_bits);
                for i in 0..count {
                    let index = ChunkIndex {
                        startblk_hi: U16::new(0),
                        device_id: U16::new(1),
                        startblk_lo: U32::new((first_block + i * step) as u32),
                    };
                    let bytes = index.as_bytes();
                    meta[off..off + bytes.len()].copy_from_slice(bytes);
                    off += bytes.len();
                }
            }
            Payload::FlatTail { ref tail, .. } => {
                meta[off..off + tail.len()].copy_from_slice(tail);
            }
            Payload::Compressed {
                ref tail,
                ref inline,
                ..
            } => {
                off = off.next_multiple_of(8);
                let index = rec.payload.zindex(self.block_bits, rec.blkaddr);
                meta[off..off + index.len()].copy_from_slice(&index);
                if let Some(inline) = inline {
                    let off = off + index.len();
                    meta[off..off + inline.len()].copy_from_slice(inline);
                }
                if let Some(tail) = tail {
                    let b = (rec.blkaddr * self.block - self.blocks_start) as usize;
                    blocks[b..b + tail.len()].copy_from_slice(tail);
                }
            }
            _ => {}
        }
    }
}

/// The directory's bytes, with every entry's nid.
fn dir_bytes(
    tree: &Tree,
    children: &BTreeMap<Vec<u8>, NodeId>,
    own: u64,
    parent: u64,
    nid_of: &HashMap<NodeId, u64>,
    block: u64,
) -> Vec<u8> {
    let names = dir_names(children);
    let (blocks, _) = dir::pack(&names, block as usize);
    let entries: Vec<dir::Entry> = names
        .iter()
        .map(|&name| {
            let (nid, file_type) = match name {
                b"." => (own, FileType::Directory),
                b".." => (parent, FileType::Directory),
                _ => {
                    let child = children[name];
                    (nid_of[&child], tree.node(child).file_type())
                }
            };
            dir::Entry {
                name: name.to_vec(),
                nid,
                file_type,
            }
        })
        .collect();
    dir::encode(&entries, &blocks, block as usize)
}

/// Whether `node` (with `nlink` links, `size` bytes) fits a compact
/// inode, whose mtime is the superblock's `epoch`.
pub(super) fn compact(node: &Node, nlink: u32, size: u64, epoch: i64) -> bool {
    node.uid <= 0xffff
        && node.gid <= 0xffff
        && nlink <= 0xffff
        && size <= u64::from(u32::MAX)
        && node.mtime == epoch
        && node.mtime_nsec == 0
}

/// The on-disk inode core of `rec`.
fn inode_bytes(rec: &Record, node: &Node, size: u64, block_bits: u8, ino: u32) -> Vec<u8> {
    let format = rec.layout().to_bits() << I_DATALAYOUT_SHIFT;
    let i_u = match (&node.data, &rec.payload) {
        (NodeData::Device(rdev), _) => *rdev,
        (_, Payload::Chunks { chunk_bits, .. }) => {
            u32::from(CHUNK_FORMAT_INDEXES | u16::from(chunk_bits - block_bits))
        }
        (_, Payload::Flat { blkaddr }) => *blkaddr as u32,
        (_, Payload::Compressed { blocks, .. }) => *blocks as u32,
        (_, Payload::FlatTail { blkaddr, .. }) => *blkaddr as u32,
        (_, Payload::Bytes { .. }) => rec.blkaddr as u32,
        _ => 0,
    };
    let mode = (node.mode & (S_IFMT | 0o7777)) as u16;
    if rec.compact {
        InodeCompact {
            i_format: U16::new(format),
            i_xattr_icount: U16::new(rec.icount),
            i_mode: U16::new(mode),
            i_nb: U16::new(rec.nlink as u16),
            i_size: U32::new(size as u32),
            i_mtime: U32::new(0),
            i_u: U32::new(i_u),
            i_ino: U32::new(ino),
            i_uid: U16::new(node.uid as u16),
            i_gid: U16::new(node.gid as u16),
            i_reserved: U32::new(0),
        }
        .as_bytes()
        .to_vec()
    } else {
        InodeExtended {
            i_format: U16::new(format | 1),
            i_xattr_icount: U16::new(rec.icount),
            i_mode: U16::new(mode),
            i_nb: U16::new(0),
            i_size: U64::new(size),
            i_u: U32::new(i_u),
            i_ino: U32::new(ino),
            i_uid: U32::new(node.uid),
            i_gid: U32::new(node.gid),
            i_mtime: U64::new(node.mtime as u64),
            i_mtime_nsec: U32::new(node.mtime_nsec),
            i_nlink: U32::new(rec.nlink),
            i_reserved2: [0; 16],
        }
        .as_bytes()
        .to_vec()
    }
}
