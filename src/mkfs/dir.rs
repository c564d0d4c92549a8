//! Directory blocks: 12-byte entries, then their names, per block.

use std::ops::Range;

use zerocopy::little_endian::{U16, U64};
use zerocopy::IntoBytes;

use crate::format::{Dirent, FileType, DIRENT_SIZE};

/// One entry of a directory being written.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name (`.` and `..` included).
    pub name: Vec<u8>,
    /// The entry's inode.
    pub nid: u64,
    /// Its type.
    pub file_type: FileType,
}

/// How a directory's entries, sorted by name, fall into blocks: the range
/// of entries in each block, and the directory's size in bytes (whole
/// blocks, then what the last one uses).
pub fn pack(names: &[&[u8]], block_size: usize) -> (Vec<Range<usize>>, u64) {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, name) in names.iter().enumerate() {
        let need = DIRENT_SIZE + name.len();
        if used + need > block_size {
            blocks.push(start..i);
            start = i;
            used = 0;
        }
        used += need;
    }
    blocks.push(start..names.len());
    let size = (blocks.len() as u64 - 1) * block_size as u64 + used as u64;
    (blocks, size)
}

/// The directory's bytes: `size` of them as [`pack`] computed, every block
/// but the last padded with zeros.
pub fn encode(entries: &[Entry], blocks: &[Range<usize>], block_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() * block_size);
    for (i, range) in blocks.iter().enumerate() {
        let block_start = out.len();
        let entries = &entries[range.clone()];
        let mut nameoff = DIRENT_SIZE * entries.len();
        for entry in entries {
            let dirent = Dirent {
                nid: U64::new(entry.nid),
                nameoff: U16::new(nameoff as u16),
                file_type: entry.file_type.to_raw(),
                reserved: 0,
            };
            out.extend_from_slice(dirent.as_bytes());
            nameoff += entry.name.len();
        }
        for entry in entries {
            out.extend_from_slice(&entry.name);
        }
        if i + 1 < blocks.len() {
            out.resize(block_start + block_size, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_spill_into_the_next_block() {
        let names: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("name-{i:03}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        // 20 bytes an entry: 25 fit in 512 bytes.
        let (blocks, size) = pack(&refs, 512);
        assert_eq!(blocks, vec![0..25, 25..40]);
        assert_eq!(size, 512 + 15 * 20);
        let entries: Vec<Entry> = names
            .iter()
            .map(|n| Entry {
                name: n.clone(),
                nid: 7,
                file_type: FileType::Regular,
            })
            .collect();
        let bytes = encode(&entries, &blocks, 512);
        assert_eq!(bytes.len() as u64, size);
        // The second block's first entry points past its 15 dirents.
        let second: &Dirent = crate::format::read_struct(&bytes[512..]).unwrap();
        assert_eq!(usize::from(second.nameoff.get()), 15 * DIRENT_SIZE);
    }
}
