//! Full images with compressed file data: file bytes are queued by
//! segment, compressed on the worker threads in batches and their
//! pclusters written in queue order; a file is later stored flat when no
//! pcluster of it saved a block.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::super::compress::{raw_extents, Batch, Codec, CompressedFile, SEGMENT_SIZE};
use super::super::tree::FileData;
use super::{ImageBuilder, Payload};

/// The compression state of a builder.
pub(super) struct Compressing {
    pub(super) codec: Codec,
    batch: Batch,
    /// Files by the number `add_data` gave them (their `FileData::offset`).
    pub(super) files: Vec<CompressedFile>,
    /// The batch compressing on other threads while the next one is read.
    running: Option<std::thread::JoinHandle<Result<Results, String>>>,
}

use super::super::compress::BatchResults as Results;

impl Compressing {
    pub(super) fn new(codec: Codec, workers: usize, block: usize) -> Self {
        Self {
            codec,
            batch: Batch::new(codec, workers, block),
            files: Vec::new(),
            running: None,
        }
    }
}

impl ImageBuilder {
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
            if z.batch.push(number, data) {
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
        if let Some(running) = z.running.take() {
            let results = running
                .join()
                .map_err(|_| io::Error::other("a compression thread panicked"))?
                .map_err(io::Error::other)?;
            self.write_results(results)?;
        }
        if last {
            let results = next.run().map_err(io::Error::other)?;
            return self.write_results(results);
        }
        if let Some(z) = self.compress.as_mut() {
            z.running = Some(std::thread::spawn(move || next.run()));
        }
        Ok(())
    }

    /// Writes one batch's pclusters and records its extents.
    fn write_results(&mut self, results: Results) -> io::Result<()> {
        let Some(z) = self.compress.as_mut() else {
            return Ok(());
        };
        let block = 1u64 << self.block_bits;
        for (file, mut extents, data) in results {
            let entry = &mut z.files[file];
            // A whole file that compresses to no fewer blocks than it has
            // is stored flat, as mkfs.erofs does.
            let whole = entry.extents.is_empty() && data.len() as u64 == entry.size;
            let blocks: u64 = extents.iter().map(|e| e.data.len() as u64).sum::<u64>() / block;
            if whole && blocks >= entry.size.div_ceil(block) {
                extents = raw_extents(&data, block as usize);
            }
            entry.first_block.get_or_insert(self.data_end / block);
            entry.done += extents.iter().map(|e| e.len).sum::<u64>();
            let all_raw = entry.is_flat() && extents.iter().all(|e| e.raw);
            let count = extents.len();
            for (i, e) in extents.into_iter().enumerate() {
                let blocks = e.data.len() as u64 / block;
                entry.extents.push((e.len, e.raw, blocks));
                // A raw file's partial last block is held for inlining.
                if all_raw && i + 1 == count && entry.done == entry.size && e.len < block {
                    entry.tail = Some(e.data[..e.len as usize].to_vec());
                    continue;
                }
                self.out.write_all_at(&e.data, self.data_end)?;
                self.data_end += e.data.len() as u64;
            }
        }
        Ok(())
    }

    /// How compressed file number `number` is stored, given the bytes the
    /// inode and its xattrs take (`base`): flat when no block compressed,
    /// with the tail inline when it fits, else as compressed (the tail then
    /// a PLAIN pcluster in the block area).
    pub(super) fn compressed_payload(&self, number: u64, base: u64) -> Option<Payload> {
        let z = self.compress.as_ref()?;
        let file = z.files.get(usize::try_from(number).ok()?)?;
        let first = file.first_block?;
        let block = 1u64 << self.block_bits;
        match &file.tail {
            None if file.is_flat() => return Some(Payload::Flat { blkaddr: first }),
            Some(tail) if base + tail.len() as u64 <= block => {
                return Some(Payload::FlatTail {
                    blkaddr: first,
                    tail: tail.clone(),
                })
            }
            _ => {}
        }
        Some(Payload::Compressed {
            extents: file.extents.clone(),
            first_block: first,
            blocks: file.blocks(),
            tail: file.tail.clone(),
            algorithm: z.codec.algorithm.id(),
            big: z.codec.pcluster_size > 1 << self.block_bits,
        })
    }
}

impl Payload {
    /// The map header and full index of a compressed payload whose tail
    /// block (if any) is at `tail_block`.
    pub(super) fn zindex(&self, block_bits: u8, tail_block: u64) -> Vec<u8> {
        match self {
            Payload::Compressed {
                extents,
                first_block,
                tail,
                algorithm,
                big,
                ..
            } => {
                let index = super::super::compress::full_index(
                    extents,
                    *first_block,
                    tail.as_ref().map(|_| tail_block),
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

    /// The length of [`Self::zindex`] without building it: the 16-byte
    /// map header and one 8-byte index per logical block of the file.
    pub(super) fn zindex_len(&self, block_bits: u8) -> u64 {
        match self {
            Payload::Compressed { extents, .. } => {
                let len: u64 = extents.iter().map(|e| e.0).sum();
                16 + 8 * len.div_ceil(1 << block_bits)
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
