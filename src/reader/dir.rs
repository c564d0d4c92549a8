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

/// Largest directory accepted (1 TiB): far beyond any real one, and small
/// enough that every position fits in a [`DirPos`].
pub const MAX_DIR_SIZE: u64 = 1 << 40;

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

/// One directory block. Entries are validated when they are read, so a
/// lookup touches only the O(log n) names its binary search compares.
struct DirBlock<'a> {
    data: Cow<'a, [u8]>,
    /// Number of dirents (the first name's offset / 12).
    count: usize,
    /// End of the dirent table: no name may start before it.
    table_end: usize,
    /// The directory and block, for error messages.
    nid: Nid,
    index: u64,
}

impl DirBlock<'_> {
    fn len(&self) -> usize {
        self.count
    }

    fn corrupt(&self, what: String) -> Error {
        Error::corrupt(format!(
            "directory {} block {}: {what}",
            self.nid, self.index
        ))
    }

    fn dirent(&self, i: usize) -> Result<&Dirent> {
        read_struct(&self.data[i * DIRENT_SIZE..])
            .ok_or_else(|| self.corrupt("dirent table overruns the block".into()))
    }

    /// Entry `i`'s name: from its offset to the next entry's, or for the
    /// last entry to the first NUL or the end of the data.
    fn name(&self, i: usize) -> Result<&[u8]> {
        let max = self.data.len();
        let start = usize::from(self.dirent(i)?.nameoff.get());
        let end = if i + 1 < self.count {
            usize::from(self.dirent(i + 1)?.nameoff.get())
        } else {
            let tail = self.data.get(start..).unwrap_or_default();
            start + tail.iter().position(|&b| b == 0).unwrap_or(tail.len())
        };
        if start < self.table_end || end > max || start >= end || end - start > NAME_LEN_MAX {
            return Err(self.corrupt(format!(
                "entry {i} has an invalid name range {start}..{end}"
            )));
        }
        let name = &self.data[start..end];
        if name.contains(&b'/') || name.contains(&0) {
            return Err(self.corrupt(format!("entry {i} has a name with '/' or NUL")));
        }
        Ok(name)
    }

    fn entry(&self, i: usize) -> Result<DirEntry> {
        let dirent = self.dirent(i)?;
        let file_type = FileType::from_raw(dirent.file_type)
            .ok_or_else(|| self.corrupt(format!("entry {i} has file type {}", dirent.file_type)))?;
        Ok(DirEntry {
            name: self.name(i)?.to_vec(),
            nid: Nid(dirent.nid.get()),
            file_type,
        })
    }

    /// Binary search for `name` in this block.
    fn find(&self, name: &[u8]) -> Result<Option<usize>> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid)?.cmp(name) {
                Ordering::Equal => return Ok(Some(mid)),
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

impl Image {
    /// Number of directory blocks of `dir`.
    fn dir_blocks(&self, dir: &Inode) -> u64 {
        dir.size.min(MAX_DIR_SIZE).div_ceil(self.block_size())
    }

    fn check_dir(&self, dir: &Inode) -> Result<()> {
        if !dir.is_dir() {
            return Err(Error::NotDir);
        }
        ensure!(
            dir.size <= MAX_DIR_SIZE,
            "directory {} claims {} bytes (at most {MAX_DIR_SIZE})",
            dir.nid,
            dir.size
        );
        Ok(())
    }

    /// Reads directory block `index` of `dir` and checks its dirent table.
    fn dir_block(&self, dir: &Inode, index: u64) -> Result<DirBlock<'_>> {
        let block = self.block_size();
        let data = self.read_range(dir, index * block, block)?;
        let first: Option<&Dirent> = read_struct(&data);
        let table_end = first.map_or(0, |d| usize::from(d.nameoff.get()));
        if table_end < DIRENT_SIZE || table_end >= block as usize || table_end > data.len() {
            return Err(Error::corrupt(format!(
                "directory {} block {index}: first name offset {table_end} is invalid",
                dir.nid
            )));
        }
        Ok(DirBlock {
            data,
            count: table_end / DIRENT_SIZE,
            table_end,
            nid: dir.nid,
            index,
        })
    }

    /// Iterates `dir` from `pos` in on-disk order, including `.` and `..`.
    /// A `.` is synthesized first when the image omits it.
    pub fn read_dir(&self, dir: &Inode, pos: DirPos) -> Result<DirIter<'_>> {
        self.check_dir(dir)?;
        self.note_listing();
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
        self.check_dir(dir)?;
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
            match block.name(0)?.cmp(name) {
                Ordering::Equal => return block.entry(0).map(Some),
                Ordering::Greater => hi = mid,
                Ordering::Less => {
                    if block.name(block.len() - 1)? >= name {
                        return block.find(name)?.map(|i| block.entry(i)).transpose();
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
