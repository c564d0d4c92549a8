//! Directories: iterating entries in on-disk order (the kernel's dir.c) and
//! looking names up by binary search (namei.c).
//!
//! A directory's data is a sequence of blocks; each block holds a table of
//! 12-byte dirents followed by their names. Names are sorted bytewise across
//! the whole directory, which makes a two-level binary search possible.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::error::{ensure, Error, Result};
use crate::format::{read_struct, Dirent, FileType, Nid, DIRENT_SIZE, NAME_LEN_MAX};

use super::{Image, Inode};

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (never contains `/` or NUL).
    pub name: Vec<u8>,
    /// The inode it names.
    pub nid: Nid,
    /// The type recorded in the entry.
    pub file_type: FileType,
}

/// A resumable position in a directory: block number and index in the block.
///
/// Encoded in a `u64` for readdir cookies; `DirPos::START` is the beginning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirPos(pub u64);

impl DirPos {
    /// The start of the directory.
    pub const START: Self = Self(0);
    // Position 1 is the synthesized "." of a DOT_OMITTED directory; stored
    // entries are numbered from 2 as (block << 16 | index) + 2.
    const FIRST_STORED: u64 = 2;

    fn stored(block: u64, index: usize) -> Self {
        Self(((block << 16) | index as u64) + Self::FIRST_STORED)
    }

    fn block_and_index(self) -> (u64, usize) {
        let raw = self.0.saturating_sub(Self::FIRST_STORED);
        (raw >> 16, (raw & 0xffff) as usize)
    }
}

/// One validated directory block.
struct DirBlock<'a> {
    data: Cow<'a, [u8]>,
    /// Name boundaries: entry `i`'s name is `data[bounds[i]..bounds[i + 1]]`.
    bounds: Vec<u16>,
}

impl DirBlock<'_> {
    fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    fn name(&self, i: usize) -> &[u8] {
        &self.data[usize::from(self.bounds[i])..usize::from(self.bounds[i + 1])]
    }

    fn entry(&self, i: usize) -> Result<DirEntry> {
        let dirent: &Dirent = read_struct(&self.data[i * DIRENT_SIZE..])
            .ok_or_else(|| Error::corrupt("short dirent"))?;
        let file_type = FileType::from_raw(dirent.file_type)
            .ok_or_else(|| Error::corrupt(format!("dirent file type {}", dirent.file_type)))?;
        Ok(DirEntry {
            name: self.name(i).to_vec(),
            nid: Nid(dirent.nid.get()),
            file_type,
        })
    }

    /// Binary search for `name` in this block.
    fn find(&self, name: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(name) {
                Ordering::Equal => return Some(mid),
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
            }
        }
        None
    }
}

impl Image {
    /// Number of directory blocks of `dir`.
    fn dir_blocks(&self, dir: &Inode) -> u64 {
        dir.size.div_ceil(self.block_size())
    }

    /// Reads and validates directory block `index` of `dir`.
    fn dir_block(&self, dir: &Inode, index: u64) -> Result<DirBlock<'_>> {
        let block = self.block_size();
        let start = index * block;
        let data = self.read_range(dir, start, block)?;
        let max = data.len();
        let corrupt =
            |what: String| Error::corrupt(format!("directory {} block {index}: {what}", dir.nid));
        let first: &Dirent =
            read_struct(&data).ok_or_else(|| corrupt("too short for a dirent".into()))?;
        let table_end = usize::from(first.nameoff.get());
        if table_end < DIRENT_SIZE || table_end >= block as usize || table_end > max {
            return Err(corrupt(format!("first name offset {table_end} is invalid")));
        }
        let count = table_end / DIRENT_SIZE;
        let mut bounds = Vec::with_capacity(count + 1);
        for i in 0..count {
            let dirent: &Dirent = read_struct(&data[i * DIRENT_SIZE..])
                .ok_or_else(|| corrupt("dirent table overruns the block".into()))?;
            bounds.push(dirent.nameoff.get());
        }
        // The last name ends at the first NUL or at the end of the data.
        let last_start = usize::from(bounds[count - 1]).min(max);
        let last_end = data[last_start..]
            .iter()
            .position(|&b| b == 0)
            .map_or(max, |n| last_start + n);
        bounds.push(last_end as u16);
        for i in 0..count {
            let (start, end) = (usize::from(bounds[i]), usize::from(bounds[i + 1]));
            if start < table_end || end > max || start >= end || end - start > NAME_LEN_MAX {
                return Err(corrupt(format!(
                    "entry {i} has an invalid name range {start}..{end}"
                )));
            }
            let name = &data[start..end];
            if name.contains(&b'/') || name.contains(&0) {
                return Err(corrupt(format!("entry {i} has a name with '/' or NUL")));
            }
        }
        Ok(DirBlock { data, bounds })
    }

    /// Iterates `dir` from `pos` in on-disk order, including `.` and `..`.
    /// A `.` is synthesized first when the image omits it.
    pub fn read_dir(&self, dir: &Inode, pos: DirPos) -> Result<DirIter<'_>> {
        if !dir.is_dir() {
            return Err(Error::NotDir);
        }
        let (block, index) = pos.block_and_index();
        Ok(DirIter {
            image: self,
            dir: dir.clone(),
            emit_dot: dir.dot_omitted && pos == DirPos::START,
            block,
            index,
            current: None,
            previous: None,
        })
    }

    /// Looks `name` up in `dir`: binary search over blocks by their first
    /// name, then within the block.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        if !dir.is_dir() {
            return Err(Error::NotDir);
        }
        if name == b"." && dir.dot_omitted {
            return Ok(Some(DirEntry {
                name: name.to_vec(),
                nid: dir.nid,
                file_type: FileType::Directory,
            }));
        }
        let (mut lo, mut hi) = (0u64, self.dir_blocks(dir));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let block = self.dir_block(dir, mid)?;
            match block.name(0).cmp(name) {
                Ordering::Equal => return block.entry(0).map(Some),
                Ordering::Greater => hi = mid,
                Ordering::Less => {
                    if block.name(block.len() - 1) >= name {
                        return block.find(name).map(|i| block.entry(i)).transpose();
                    }
                    lo = mid + 1;
                }
            }
        }
        Ok(None)
    }
}

/// Iterator over a directory's entries; yields each entry with the position
/// just after it. Stops with an error on a corrupt block or on entries that
/// are not strictly sorted.
pub struct DirIter<'a> {
    image: &'a Image,
    dir: Inode,
    emit_dot: bool,
    block: u64,
    index: usize,
    current: Option<DirBlock<'a>>,
    previous: Option<Vec<u8>>,
}

impl DirIter<'_> {
    fn next_entry(&mut self) -> Result<Option<(DirEntry, DirPos)>> {
        if self.emit_dot {
            self.emit_dot = false;
            let dot = DirEntry {
                name: b".".to_vec(),
                nid: self.dir.nid,
                file_type: FileType::Directory,
            };
            return Ok(Some((dot, DirPos(1))));
        }
        loop {
            if self.block >= self.image.dir_blocks(&self.dir) {
                return Ok(None);
            }
            let block = match self.current.take() {
                Some(block) => block,
                None => self.image.dir_block(&self.dir, self.block)?,
            };
            if self.index < block.len() {
                let entry = block.entry(self.index)?;
                if let Some(previous) = &self.previous {
                    ensure!(
                        previous.as_slice() < entry.name.as_slice(),
                        "directory {}: entries out of order or duplicated at {:?}",
                        self.dir.nid,
                        String::from_utf8_lossy(&entry.name)
                    );
                }
                self.previous = Some(entry.name.clone());
                self.index += 1;
                let next = if self.index < block.len() {
                    DirPos::stored(self.block, self.index)
                } else {
                    DirPos::stored(self.block + 1, 0)
                };
                self.current = Some(block);
                return Ok(Some((entry, next)));
            }
            self.block += 1;
            self.index = 0;
        }
    }
}

impl Iterator for DirIter<'_> {
    type Item = Result<(DirEntry, DirPos)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                // A corrupt block ends the iteration after reporting it once.
                self.block = u64::MAX;
                Some(Err(e))
            }
        }
    }
}
