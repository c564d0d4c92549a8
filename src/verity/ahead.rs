//! Verify-ahead: a background thread that checks what sequential readers
//! are about to ask for, so hashing overlaps with the reader instead of
//! delaying the next reply.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};

use crate::fault::ImageMap;

use super::{Prepared, Verifier};

/// Ranges handed to the verify-ahead thread and not yet taken; beyond
/// this, hints are dropped (they are only hints).
const AHEAD_QUEUE: usize = 64;

/// Verifies, on a background thread, data a reader is about to need (the
/// ranges the server expects sequential readers to ask for). When data is
/// checked on first use ([`Verifier::check`]), the thread hashes the data
/// blocks, and the read finds them marked. When every read is checked on a
/// copy ([`Verifier::check_copy`]), the thread copies the range out of the
/// file, hashes the copies and keeps them ([`Prepared`]) for the reads to
/// serve. The thread runs from [`VerifyAhead::start`] (the server calls it
/// as it starts serving) until the last device holding this is dropped.
#[derive(Debug)]
pub struct VerifyAhead {
    verifier: Arc<Verifier>,
    map: Arc<ImageMap>,
    /// Whether `map` maps a file, whose pages the thread may unmap once it
    /// has verified them.
    file_backed: bool,
    /// Verified copies made ahead, when reads check copies.
    prepared: Option<Arc<Prepared>>,
    queue: OnceLock<Option<SyncSender<(u64, u64)>>>,
}

impl VerifyAhead {
    /// Verify-ahead for `verifier` over the data file mapped at `map`
    /// (`file_backed`: a shared map of the file, not a copy in memory;
    /// `copies`: reads check copies, so prepare verified copies for them).
    pub fn new(
        verifier: Arc<Verifier>,
        map: Arc<ImageMap>,
        file_backed: bool,
        copies: bool,
    ) -> Self {
        let block_size = verifier.params().data_block_size;
        Self {
            verifier,
            map,
            file_backed,
            prepared: copies.then(|| Arc::new(Prepared::new(block_size))),
            queue: OnceLock::new(),
        }
    }

    /// The verified copies prepared for reads, when reads check copies.
    pub fn prepared(&self) -> Option<&Prepared> {
        self.prepared.as_deref()
    }

    /// Starts the background thread (once; later calls do nothing). A
    /// thread that cannot be spawned leaves the reads to check everything.
    pub fn start(&self) {
        self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<(u64, u64)>(AHEAD_QUEUE);
            let (verifier, map) = (Arc::clone(&self.verifier), Arc::clone(&self.map));
            let (file_backed, prepared) = (self.file_backed, self.prepared.clone());
            let spawned = std::thread::Builder::new()
                .name("verity-ahead".into())
                .spawn(move || {
                    while let Ok((offset, len)) = rx.recv() {
                        // A page past a new end reads as zeros here: the
                        // fault is noted and nothing it read is kept.
                        let _ = crate::fault::watch(|| match &prepared {
                            Some(prepared) => prepare(&verifier, &map, prepared, offset, len),
                            None => verifier.check_ahead(&map, offset, len),
                        });
                        if file_backed {
                            // What it mapped to hash counts as the server's
                            // memory, and no request of this thread's
                            // triggers a trim: let go of it now.
                            crate::mmap::unmap(&map, offset, len);
                        }
                    }
                });
            spawned.ok().map(|_| tx)
        });
    }

    /// Asks for `[offset, offset + len)` of the data file to be verified
    /// soon; returns at once. Before [`VerifyAhead::start`], or with the
    /// queue full, the hint is dropped (the read checks what it needs).
    pub fn request(&self, offset: u64, len: u64) {
        if let Some(Some(tx)) = self.queue.get() {
            let _ = tx.try_send((offset, len));
        }
    }
}

/// Copies the chunks of `[offset, offset + len)` not prepared yet out of
/// `map` (clipped to what the tree covers), hashes the copies and keeps
/// them; stops quietly at a bad block (the read that needs it reports it).
fn prepare(verifier: &Verifier, map: &[u8], prepared: &Prepared, offset: u64, len: u64) {
    let covered = verifier.covered();
    let end = offset.saturating_add(len).min(covered);
    let size = prepared.chunk_size();
    let bits = verifier.params().data_block_size.trailing_zeros();
    let mut index = offset / size;
    while index * size < end {
        if !prepared.skip(index) {
            let from = index * size;
            let to = (from + size).min(covered);
            let Some(bytes) = map.get(from as usize..to as usize) else {
                return;
            };
            let copy: Arc<[u8]> = Arc::from(bytes);
            if verifier
                .check_copy_with(&copy, from >> bits, false)
                .is_err()
            {
                return;
            }
            prepared.insert(index, copy);
        }
        index += 1;
    }
}
