//! Verify-ahead: a background thread that checks what sequential readers
//! are about to ask for, so hashing overlaps with the reader instead of
//! delaying the next reply.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};

use crate::device::unmap_pages;
use crate::fault::ImageMap;

use super::Verifier;

/// Ranges handed to the verify-ahead thread and not yet taken; beyond
/// this, hints are dropped (they are only hints).
const AHEAD_QUEUE: usize = 64;

/// Verifies, on a background thread, data a reader is about to need (the
/// ranges the server expects sequential readers to ask for). When data is
/// checked on first use ([`Verifier::check`]), the thread hashes the data
/// blocks, and the read finds them marked. When every read hashes its own
/// copy ([`Verifier::check_copy`]), only the hash blocks covering the range
/// are verified ahead (the read then hashes data alone). The thread starts
/// on first use, so a process may fork after opening an image (the server
/// does); it ends with the last device holding this.
#[derive(Debug)]
pub struct VerifyAhead {
    verifier: Arc<Verifier>,
    map: Arc<ImageMap>,
    /// Whether `map` maps a file, whose pages the thread may unmap once it
    /// has verified them.
    file_backed: bool,
    /// Whether reads check copies, so only the tree is worth checking ahead.
    tree_only: bool,
    queue: OnceLock<Option<SyncSender<(u64, u64)>>>,
}

impl VerifyAhead {
    /// Verify-ahead for `verifier` over the data file mapped at `map`
    /// (`file_backed`: a shared map of the file, not a copy in memory;
    /// `tree_only`: reads hash their data themselves).
    pub fn new(
        verifier: Arc<Verifier>,
        map: Arc<ImageMap>,
        file_backed: bool,
        tree_only: bool,
    ) -> Self {
        Self {
            verifier,
            map,
            file_backed,
            tree_only,
            queue: OnceLock::new(),
        }
    }

    /// Asks for `[offset, offset + len)` of the data file to be verified
    /// soon; returns at once.
    pub fn request(&self, offset: u64, len: u64) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<(u64, u64)>(AHEAD_QUEUE);
            let (verifier, map) = (Arc::clone(&self.verifier), Arc::clone(&self.map));
            let (file_backed, tree_only) = (self.file_backed, self.tree_only);
            let spawned = std::thread::Builder::new()
                .name("verity-ahead".into())
                .spawn(move || {
                    while let Ok((offset, len)) = rx.recv() {
                        if tree_only {
                            let _ = crate::fault::watch(|| verifier.check_tree_ahead(offset, len));
                            continue;
                        }
                        // A page past a new end reads as zeros here
                        // (the fault is noted, nothing is served).
                        let _ = crate::fault::watch(|| verifier.check_ahead(&map, offset, len));
                        if file_backed {
                            // What it mapped to hash counts as the server's
                            // memory, and no request of this thread's
                            // triggers a trim: let go of it now.
                            unmap_pages(&map, offset, len);
                        }
                    }
                });
            spawned.ok().map(|_| tx)
        });
        if let Some(tx) = queue {
            let _ = tx.try_send((offset, len));
        }
    }
}
