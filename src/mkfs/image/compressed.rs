//! Full images with compressed file data: file bytes are queued by
//! segment, compressed on the worker threads in batches and their
//! pclusters written in queue order; a file is later stored flat when no
//! pcluster of it saved a block.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use std::collections::HashMap;

use super::super::compress::{
    flat_file_key, raw_extents, Batch, Codec, CompressedFile, DedupeKey, Extent, Stored,
    DEDUPE_MAX_ENTRIES, SEGMENT_SIZE,
};
use super::super::tree::FileData;
use super::{ImageBuilder, Payload};
use crate::format::{INCOMPAT_FRAGMENTS, INCOMPAT_ZTAILPACKING};

/// The compression state of a builder.
pub(super) struct Compressing {
    pub(super) codec: Codec,
    batch: Batch,
    /// Files by the number `add_data` gave them (their `FileData::offset`).
    pub(super) files: Vec<CompressedFile>,
    /// The batch compressing on other threads while the next one is read.
    running: Option<std::thread::JoinHandle<Result<Results, String>>>,
    /// `-E dedupe`: pclusters written so far by their input's key; whole
    /// flat files by [`flat_file_key`]. At most [`DEDUPE_MAX_ENTRIES`].
    written: HashMap<DedupeKey, Written>,
    /// Some extent points at a pcluster written for another.
    shared: bool,
}

use super::super::compress::BatchResults as Results;

/// Where a pcluster (or a flat file) `-E dedupe` may reuse is: packed,
/// as there is one per pcluster written (8 bytes, 24 with its key).
#[derive(Debug, Clone, Copy)]
struct Written {
    /// Block address of its first block.
    blkaddr: u32,
    /// Blocks of the pcluster (0 for a flat file).
    blocks: u16,
    /// A PLAIN pcluster.
    raw: bool,
}

/// Remembers `key` at `at` in `written`, unless the table is full (see
/// [`DEDUPE_MAX_ENTRIES`]).
fn remember(written: &mut HashMap<DedupeKey, Written>, key: DedupeKey, at: Written) {
    if written.len() < DEDUPE_MAX_ENTRIES {
        written.insert(key, at);
    }
}

/// Whether a whole file stored flat, whose dedupe key is `key`, copies
/// one written before: `entry` then starts where that one does. If not,
/// the file (to be written at block `here`) is remembered.
fn flat_copy(
    written: &mut HashMap<DedupeKey, Written>,
    key: Option<DedupeKey>,
    entry: &mut CompressedFile,
    here: u32,
) -> bool {
    let Some(key) = key else {
        return false;
    };
    if let Some(w) = written.get(&key) {
        entry.first_block = Some(w.blkaddr.into());
        return true;
    }
    let at = Written {
        blkaddr: here,
        blocks: 0,
        raw: true,
    };
    remember(written, key, at);
    false
}

/// The block address of byte `offset` of the image, as the u32 EROFS
/// stores; an error past 2^32 blocks.
fn block_addr(offset: u64, block: u64) -> io::Result<u32> {
    u32::try_from(offset / block).map_err(|_| io::Error::other("the image exceeds 2^32 blocks"))
}

impl Compressing {
    pub(super) fn new(codec: Codec, workers: usize, block: usize) -> Self {
        Self {
            codec,
            batch: Batch::new(codec, workers, block),
            files: Vec::new(),
            running: None,
            written: HashMap::new(),
            shared: false,
        }
    }
}

impl ImageBuilder {
    /// The incompat features the compressed data uses, as mkfs.erofs sets
    /// them: ZTAILPACKING if an inline pcluster is laid out, DEDUPE (the
    /// FRAGMENTS bit) if a pcluster is shared: kernels before 6.1 may not
    /// read one shared at different offsets in a page, and refuse the bit.
    /// Flat files sharing blocks need neither.
    pub(super) fn data_features(&self, records: &[super::Record]) -> u32 {
        let inline = records.iter().any(|r| {
            matches!(
                r.payload,
                Payload::Compressed {
                    inline: Some(_),
                    ..
                }
            )
        });
        let shared = self.compress.as_ref().is_some_and(|z| z.shared);
        (INCOMPAT_ZTAILPACKING * u32::from(inline)) | (INCOMPAT_FRAGMENTS * u32::from(shared))
    }

    /// Queues `size` bytes of `reader` for compression; the returned
    /// offset is the file's number, not a byte offset.
    pub(super) fn add_compressed(
        &mut self,
        reader: &mut impl Read,
        size: u64,
    ) -> io::Result<FileData> {
        let Some(z) = self.compress.as_mut() else {
            return Err(io::Error::other("compression is not set up"));
        };
        let number = z.files.len();
        z.files.push(CompressedFile {
            size,
            ..Default::default()
        });
        let mut done = 0;
        while done < size {
            let len = (size - done).min(SEGMENT_SIZE);
            let mut data = Vec::with_capacity(len as usize);
            let read = reader.take(len).read_to_end(&mut data)? as u64;
            if read != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file data ended after {} of {size} bytes", done + read),
                ));
            }
            done += len;
            let Some(z) = self.compress.as_mut() else {
                unreachable!("checked above")
            };
            if z.batch.push(number, data, done == size) {
                self.flush_compressed(false)?;
            }
        }
        Ok(FileData {
            size,
            offset: number as u64,
        })
    }

    /// Starts compressing what is queued on other threads (reading goes
    /// on meanwhile) and writes the batch started before it; with `last`,
    /// compresses and writes everything. Batches are written in the order
    /// they were queued.
    pub(super) fn flush_compressed(&mut self, last: bool) -> io::Result<()> {
        let Some(z) = self.compress.as_mut() else {
            return Ok(());
        };
        let mut next = z.batch.take();
        let done = match z.running.take() {
            Some(running) => Some(
                running
                    .join()
                    .map_err(|_| io::Error::other("a compression thread panicked"))?
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        if last {
            if let Some(results) = done {
                self.write_results(results)?;
            }
            let results = next.run().map_err(io::Error::other)?;
            return self.write_results(results);
        }
        // The next batch compresses while this one is written: the
        // workers are not left idle during the writes.
        if let Some(z) = self.compress.as_mut() {
            z.running = Some(std::thread::spawn(move || next.run()));
        }
        match done {
            Some(results) => self.write_results(results),
            None => Ok(()),
        }
    }

    /// Writes one batch's pclusters and records its extents; with
    /// dedupe, a pcluster (or whole flat file) already written is pointed
    /// at instead. Runs in queue order, so the result is deterministic.
    fn write_results(&mut self, results: Results) -> io::Result<()> {
        let block = 1u64 << self.block_bits;
        for (file, mut extents, data) in results {
            let here = block_addr(self.data_end, block)?;
            let Some(z) = self.compress.as_mut() else {
                return Ok(());
            };
            let entry = &mut z.files[file];
            let whole = entry.extents.is_empty() && data.len() as u64 == entry.size;
            let mut shared = false;
            // A whole file that compression does not pay for is stored
            // flat, as mkfs.erofs does (maybe as a copy of another).
            if whole && !pays(&extents, entry.size, block, &z.written) {
                let key = flat_file_key(&extents);
                extents = raw_extents(&data, block as usize);
                shared = flat_copy(&mut z.written, key, entry, here);
            }
            let first = *entry.first_block.get_or_insert(here.into()) as u32;
            entry.done += extents.iter().map(|e| e.len).sum::<u64>();
            let all_raw = entry.is_flat() && extents.iter().all(|e| e.raw);
            let count = extents.len();
            for (i, e) in extents.into_iter().enumerate() {
                let last = i + 1 == count && entry.done == entry.size;
                let blocks = if e.inline {
                    1
                } else {
                    (e.data.len() as u64 / block) as u16
                };
                let mut stored = Stored {
                    len: e.len as u32,
                    raw: e.raw,
                    blocks,
                    blkaddr: if shared {
                        first + i as u32
                    } else {
                        block_addr(self.data_end, block)?
                    },
                };
                // A raw file's partial last block, or an inline tail, is held.
                if e.inline || (all_raw && last && e.len < block) {
                    entry.inline = e.inline;
                    let mut data = e.data;
                    if !e.inline {
                        data.truncate(e.len as usize);
                    }
                    entry.tail = Some(data);
                    entry.extents.push(stored);
                    continue;
                }
                let known = e.key.as_ref().and_then(|k| z.written.get(k));
                if let Some(w) = known.filter(|_| !shared) {
                    (stored.raw, stored.blocks, stored.blkaddr) = (w.raw, w.blocks, w.blkaddr);
                    z.shared = true;
                }
                entry.extents.push(stored);
                if shared || known.is_some() {
                    continue;
                }
                entry.own_blocks += u64::from(blocks);
                if let Some(key) = e.key {
                    let at = Written {
                        blkaddr: stored.blkaddr,
                        blocks,
                        raw: e.raw,
                    };
                    remember(&mut z.written, key, at);
                }
                self.out.write_all_at(&e.data, self.data_end)?;
                self.data_end += e.data.len() as u64;
            }
        }
        Ok(())
    }

    /// How compressed file number `number` is stored, given the bytes the
    /// inode and its xattrs take (`base`): flat when no block compressed,
    /// with the tail inline when it fits; else compressed, an inline tail
    /// pcluster after the indexes when it fits in their last block,
    /// otherwise the tail pcluster in the block area.
    pub(super) fn compressed_payload(&self, number: u64, base: u64) -> Option<Payload> {
        let z = self.compress.as_ref()?;
        let file = z.files.get(usize::try_from(number).ok()?)?;
        let first = file.first_block?;
        let block = 1u64 << self.block_bits;
        match &file.tail {
            None if file.is_flat() => return Some(Payload::Flat { blkaddr: first }),
            Some(tail) if file.is_flat() && base + tail.len() as u64 <= block => {
                return Some(Payload::FlatTail {
                    blkaddr: first,
                    tail: tail.clone(),
                })
            }
            _ => {}
        }
        let index_end = base.next_multiple_of(8) + zindex_len(file.size, self.block_bits);
        let (mut tail, mut inline) = (file.tail.clone(), None);
        match tail.take() {
            // Placed so that the inline pcluster starts at or after a
            // block start (see `Record::place`).
            Some(t) if file.inline && index_end % block + t.len() as u64 <= block => {
                inline = Some(t)
            }
            // A compressed tail in its own block, right-aligned.
            Some(t) if !file.extents.last().is_some_and(|e| e.raw) => {
                let mut b = vec![0u8; block as usize - t.len()];
                b.extend_from_slice(&t);
                tail = Some(b);
            }
            t => tail = t,
        }
        Some(Payload::Compressed {
            extents: file.extents.clone(),
            // Only the blocks this file wrote, and its tail's own block,
            // as mkfs.erofs counts them (shared pclusters are not).
            blocks: file.own_blocks + u64::from(tail.is_some()),
            tail,
            inline,
            algorithm: z.codec.algorithm.id(),
            big: z.codec.pcluster_size > 1 << self.block_bits,
        })
    }
}

/// Whether `extents` of a whole file of `size` bytes are worth storing
/// compressed: in fewer bytes (blocks, inline tail and index) than the
/// file has, as mkfs.erofs decides after dedupe: a pcluster `written` has, or that the file repeats, costs
/// nothing.
fn pays(extents: &[Extent], size: u64, block: u64, written: &HashMap<DedupeKey, Written>) -> bool {
    let mut seen = std::collections::HashSet::new();
    // A full table remembers no more: a repeat is then written again.
    let full = written.len() >= DEDUPE_MAX_ENTRIES;
    let blocks: u64 = extents
        .iter()
        .filter(|e| !e.inline)
        .filter(|e| {
            e.key
                .is_none_or(|k| !written.contains_key(&k) && (full || seen.insert(k)))
        })
        .map(|e| e.data.len() as u64 / block)
        .sum();
    // The index counts too (mkfs.erofs: ptotal + idata + legacy index
    // against i_size).
    let index = zindex_len(size, block.trailing_zeros() as u8);
    let tail = extents
        .iter()
        .find(|e| e.inline)
        .map_or(0, |t| t.data.len() as u64);
    blocks * block + tail + index < size
}

use super::super::compress::index_len as zindex_len;

impl Payload {
    /// The map header and full index of a compressed payload whose tail
    /// block (if any) is at `tail_block`.
    pub(super) fn zindex(&self, block_bits: u8, tail_block: u64) -> Vec<u8> {
        match self {
            Payload::Compressed {
                extents,
                tail,
                inline,
                algorithm,
                big,
                ..
            } => {
                let index = super::super::compress::full_index(
                    extents,
                    tail.as_ref().map(|_| tail_block),
                    inline.as_ref().map(|t| t.len() as u16),
                    block_bits,
                    *algorithm,
                    *big,
                );
                debug_assert_eq!(index.len() as u64, self.zindex_len(block_bits));
                index
            }
            _ => Vec::new(),
        }
    }

    /// The length of [`Self::zindex`] without building it.
    pub(super) fn zindex_len(&self, block_bits: u8) -> u64 {
        match self {
            Payload::Compressed { extents, .. } => {
                zindex_len(extents.iter().map(|e| u64::from(e.len)).sum(), block_bits)
            }
            _ => 0,
        }
    }
}

/// Open blocks the packer tries before starting a new one.
const PACK_WINDOW: usize = 64;

/// Places `records` from `start` (block aligned), each into the first of
/// the last few open blocks it fits in, so that inline tails (which may not
/// cross a block) leave little unused: a sequential placement would skip to
/// the next block at every tail that does not fit. The root stays first
/// (nid 0). Returns the end of the metadata.
pub(super) fn pack(records: &mut [super::Record], start: u64, block: u64) -> u64 {
    let mut end = start;
    // Blocks with room left: (block start, first free byte).
    let mut open: Vec<(u64, u64)> = Vec::new();
    for rec in records.iter_mut() {
        let mut placed = false;
        for slot in open.iter_mut().rev().take(PACK_WINDOW) {
            let next = rec.place(slot.1, block);
            if rec.pos >= slot.0 && next <= slot.0 + block {
                slot.1 = next;
                end = end.max(next);
                placed = true;
                break;
            }
        }
        if !placed {
            // The block `end` is in is continued here, not through its slot.
            let end_block = end - end % block;
            open.retain(|&(b, _)| b != end_block);
            let next = rec.place(end, block);
            let first = rec.pos - rec.pos % block;
            if first != end_block && !end.is_multiple_of(block) {
                // Skipped the rest of `end`'s block: keep it for later ones.
                open.push((end_block, end));
            }
            // Any block the record fills up to is open for the next ones.
            let last = (next - 1) - (next - 1) % block;
            if first == last || next % block != 0 {
                open.push((last, next));
            }
            end = next;
        }
        open.retain(|&(b, used)| used + 64 <= b + block);
    }
    end
}
