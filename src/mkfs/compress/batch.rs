//! Compressing queued segments on several threads. Jobs are numbered in
//! the order they were queued and their results are used in that order, so
//! the image does not depend on the worker count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::extents::{compress_segment, Cut, Extent, Stored};
use super::fit::Encoder;
use super::Codec;

/// One compressed file as stored.
#[derive(Debug, Clone, Default)]
pub struct CompressedFile {
    /// Block of its first pcluster written for it (`None` while nothing
    /// is written).
    pub first_block: Option<u64>,
    /// Each extent and where its pcluster is.
    pub extents: Vec<Stored>,
    /// File size.
    pub size: u64,
    /// Logical bytes whose extents are known.
    pub done: u64,
    /// The last extent's pcluster, not written yet: a raw file's last
    /// partial block (inline after the inode when it fits there), or with
    /// `inline` the exact encoding of an inline tail pcluster.
    pub tail: Option<Vec<u8>>,
    /// `tail` is an inline pcluster (`-E ztailpacking`).
    pub inline: bool,
    /// Blocks of the pclusters written for this file (not those it
    /// shares with earlier files, nor the held `tail`): its `i_blocks`.
    pub own_blocks: u64,
}

impl CompressedFile {
    /// Whether every extent is a raw block from offset 0, back to back
    /// from `first_block` (the held tail aside): the data is then exactly
    /// the file stored flat from `first_block`.
    pub fn is_flat(&self) -> bool {
        let held = usize::from(self.tail.is_some());
        let written = &self.extents[..self.extents.len().saturating_sub(held)];
        let first = self.first_block.unwrap_or(0);
        self.extents.iter().all(|e| e.raw)
            && written
                .iter()
                .zip(first..)
                .all(|(e, b)| u64::from(e.blkaddr) == b && e.blocks == 1)
    }
}

/// What a batch gives: (file number, extents, input) in queue order.
pub type BatchResults = Vec<(usize, Vec<Extent>, Vec<u8>)>;

/// A queued segment: file number, its bytes, whether it ends the file.
type Job = (usize, Vec<u8>, bool);

/// `data` cut into raw one-block extents (a file stored flat).
pub fn raw_extents(data: &[u8], block: usize) -> Vec<Extent> {
    data.chunks(block)
        .map(|c| {
            let mut d = c.to_vec();
            d.resize(block, 0);
            Extent {
                len: c.len() as u64,
                raw: true,
                data: d,
                inline: false,
                key: None,
            }
        })
        .collect()
}

/// Most segments queued in one batch (each holds its own buffers).
const MAX_JOBS: usize = 65536;

/// Segments waiting to be compressed.
pub struct Batch {
    codec: Codec,
    workers: usize,
    block: usize,
    jobs: Vec<Job>,
    bytes: usize,
}

impl Batch {
    /// An empty batch for `codec` run on `workers` threads, `block`-byte blocks.
    pub fn new(codec: Codec, workers: usize, block: usize) -> Self {
        Self {
            codec,
            workers: workers.max(1),
            block,
            jobs: Vec::new(),
            bytes: 0,
        }
    }

    /// Queues a segment of file number `file` (`last`: the one ending
    /// it); true when the batch is full enough to run.
    pub fn push(&mut self, file: usize, data: Vec<u8>, last: bool) -> bool {
        // Counted as the whole blocks each job's output takes, so tiny
        // files are not undercounted; a job count caps the rest.
        self.bytes += data.len().next_multiple_of(self.block).max(self.block);
        self.jobs.push((file, data, last));
        // At most 16 segments (256 MiB) are held, whatever the thread count.
        self.bytes >= self.workers.min(16) * super::SEGMENT_SIZE as usize
            || self.jobs.len() >= MAX_JOBS
    }

    /// The queued segments as a batch of their own (to run on another
    /// thread); this one is left empty.
    pub fn take(&mut self) -> Batch {
        let jobs = std::mem::take(&mut self.jobs);
        self.bytes = 0;
        Batch { jobs, ..*self }
    }

    /// Compresses every queued segment; returns (file, extents, input) in
    /// the order queued.
    pub fn run(&mut self) -> Result<BatchResults, String> {
        let jobs = std::mem::take(&mut self.jobs);
        self.bytes = 0;
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Vec<Extent>>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        let threads = self.workers.min(jobs.len());
        let (codec, block) = (self.codec, self.block);
        let cut = Cut {
            block,
            pcluster: codec.pcluster_size as usize,
            tailpack: false,
            dedupe: codec.dedupe,
        };
        std::thread::scope(|scope| -> Result<(), String> {
            let work = || -> Result<(), String> {
                let mut enc = Encoder::new(codec)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, data, last)) = jobs.get(i) else {
                        return Ok(());
                    };
                    let tailpack = *last && codec.ztailpacking;
                    let extents = compress_segment(&mut enc, data, Cut { tailpack, ..cut });
                    *results[i].lock().map_err(|_| "worker panicked")? = Some(extents);
                }
            };
            let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            work()?;
            for h in handles {
                h.join().map_err(|_| "compression worker panicked")??;
            }
            Ok(())
        })?;
        jobs.into_iter()
            .zip(results)
            .map(|((file, data, _), r)| {
                let extents = r
                    .into_inner()
                    .ok()
                    .flatten()
                    .ok_or("a segment was not compressed")?;
                Ok((file, extents, data))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny files count as the block each takes, and a batch is cut at
    /// MAX_JOBS jobs however small they are.
    #[test]
    fn tiny_jobs_fill_a_batch() {
        let codec = Codec::parse("lz4", &[], None, 4096).unwrap();
        let mut batch = Batch::new(codec, 16, 512);
        for i in 0..MAX_JOBS - 1 {
            assert!(!batch.push(i, vec![1], true), "full after {} jobs", i + 1);
        }
        assert!(batch.push(MAX_JOBS, vec![1], true), "not full at MAX_JOBS");
        assert_eq!(batch.bytes, MAX_JOBS * 512);
    }
}
