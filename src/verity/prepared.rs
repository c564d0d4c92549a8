//! Verified copies of file data prepared ahead of sequential readers, when
//! every read is checked: the verify-ahead thread copies the stretch a
//! reader will ask for next out of the file, hashes the copies and keeps
//! them here; the reads then serve those copies instead of hashing on the
//! request path (hashing still happens after copying, as it must).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of data per prepared chunk (at least one data block).
const CHUNK: u64 = 64 << 10;
/// Most bytes kept: four stretches of verify-ahead. Chunks a read has
/// reached the end of are dropped at once, so this is rarely reached.
const CAPACITY: u64 = 16 << 20;

/// The chunks prepared so far, by index (`offset / chunk`).
#[derive(Debug)]
pub struct Prepared {
    chunk: u64,
    inner: Mutex<Chunks>,
    /// The furthest end of a read served so far: preparing what readers
    /// are past already would hash it twice (they hashed it themselves).
    passed: AtomicU64,
}

#[derive(Debug, Default)]
struct Chunks {
    by_index: HashMap<u64, Arc<[u8]>>,
    /// Insertion order, for eviction beyond [`CAPACITY`].
    order: VecDeque<u64>,
}

impl Prepared {
    /// An empty set for data in blocks of `block_size` bytes.
    pub(super) fn new(block_size: u32) -> Self {
        Self {
            chunk: CHUNK.max(u64::from(block_size)),
            inner: Mutex::new(Chunks::default()),
            passed: AtomicU64::new(0),
        }
    }

    /// Bytes per chunk (a whole number of data blocks).
    pub(super) fn chunk_size(&self) -> u64 {
        self.chunk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chunks> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether chunk `index` need not be prepared: it is, or a read
    /// served the bytes past it already.
    pub(super) fn skip(&self, index: u64) -> bool {
        (index + 1) * self.chunk <= self.passed.load(Ordering::Relaxed)
            || self.lock().by_index.contains_key(&index)
    }

    /// Notes that a read served the data file up to `end`.
    pub fn passed(&self, end: u64) {
        self.passed.fetch_max(end, Ordering::Relaxed);
    }

    /// Keeps `bytes`, the verified copy of chunk `index`.
    pub(super) fn insert(&self, index: u64, bytes: Arc<[u8]>) {
        let mut chunks = self.lock();
        if chunks.by_index.insert(index, bytes).is_none() {
            chunks.order.push_back(index);
        }
        while chunks.order.len() as u64 * self.chunk > CAPACITY {
            let Some(old) = chunks.order.pop_front() else {
                break;
            };
            chunks.by_index.remove(&old);
        }
    }

    /// Copies `[start, start + len)` of the data file into `out` (cleared
    /// first) when every chunk it touches is prepared, and drops the chunks
    /// the range reaches the end of (a sequential reader is past them).
    /// False, with `out` untouched, when one is missing.
    pub fn copy_range(&self, start: u64, len: u64, out: &mut Vec<u8>) -> bool {
        let end = start + len;
        self.passed(end);
        let (first, last) = (start / self.chunk, (end - 1) / self.chunk);
        let pieces: Option<Vec<Arc<[u8]>>> = {
            let chunks = self.lock();
            (first..=last)
                .map(|i| chunks.by_index.get(&i).cloned())
                .collect()
        };
        let Some(pieces) = pieces else {
            return false;
        };
        out.clear();
        for (i, piece) in (first..).zip(&pieces) {
            let base = i * self.chunk;
            let from = start.max(base) - base;
            let to = (end.min(base + piece.len() as u64) - base) as usize;
            match piece.get(from as usize..to) {
                Some(bytes) => out.extend_from_slice(bytes),
                // A short last chunk that the range runs past: not served.
                None => return false,
            }
        }
        if out.len() as u64 != len {
            return false;
        }
        let mut chunks = self.lock();
        for i in first..=last {
            if end >= (i + 1) * self.chunk && chunks.by_index.remove(&i).is_some() {
                chunks.order.retain(|&o| o != i);
            }
        }
        true
    }
}
