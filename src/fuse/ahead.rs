//! Filling the kernel's page cache ahead of a reader of small files.
//!
//! A cold read of a small file costs a READ round trip through the server;
//! a reader of a whole tree (tar, cp -a, a container's first start) reads
//! a directory's files in the order it listed them. When such a reader's
//! READ of a file from its start arrives, the small regular files listed
//! after it in the same directory are read on a background thread and
//! pushed into the kernel's page cache (`FUSE_NOTIFY_STORE`): the reader
//! then finds them cached and sends no request for them. Only reads
//! trigger it, so a walk that reads no data pushes nothing. The bytes
//! pushed are those a READ would serve (verified ones under `--verity`).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::{INodeNo, Notifier};
use lru::LruCache;

use crate::device::Access;
use crate::format::FileType;
use crate::view::View;

use super::memory::Budget;

/// Files larger than this are left to the kernel's readahead.
const MAX_FILE: u64 = 128 << 10;
/// At most this many files are pushed for one trigger.
const MAX_FILES: usize = 32;
/// At most this many bytes are pushed for one trigger.
const MAX_BYTES: u64 = 2 << 20;
/// Directory listings remembered (the least recently used is forgotten).
const LISTINGS: usize = 256;
/// Regular files remembered per listing (16 bytes each: at most 32 MiB
/// for all listings, whatever the image says).
const MAX_ENTRIES: usize = 8192;
/// Entries in the file → listing and pushed maps before they start over
/// (a few MiB each).
const MAX_TRACKED: usize = 1 << 18;
/// Batches queued for the background thread before triggers are dropped.
const QUEUE: usize = 4;

/// A regular file of a listing: inode number and size.
type Entry = (u64, u64);

/// What readers have listed and what has been pushed.
#[derive(Default)]
struct Listings {
    /// Regular files of recently listed directories, in listing order.
    dirs: Option<LruCache<u64, Vec<Entry>>>,
    /// File → (its directory, its place in the listing).
    place: HashMap<u64, (u64, usize)>,
    /// Files pushed already (or read by the kernel from their start).
    pushed: HashSet<u64>,
}

/// The page-cache filler of a mount (see the module comment). Cloned
/// handles share it; it does nothing until [`StoreAhead::start`].
#[derive(Clone, Default)]
pub struct StoreAhead {
    listings: Arc<Mutex<Listings>>,
    jobs: Arc<OnceLock<SyncSender<Vec<Entry>>>>,
}

impl StoreAhead {
    /// Starts the background thread that reads files from `view` and
    /// pushes them through `notifier`, counting what it maps in `budget`.
    pub fn start(&self, notifier: Notifier, view: Arc<dyn View>, budget: Arc<Budget>) {
        let (send, receive) = mpsc::sync_channel(QUEUE);
        if self.jobs.set(send).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("store-ahead".into())
            .spawn(move || push_files(&receive, &notifier, &*view, &budget));
        if let Err(e) = spawned {
            tracing::warn!("store-ahead thread: {e}");
        }
    }

    /// Whether it was started: listings are worth recording.
    pub fn is_on(&self) -> bool {
        self.jobs.get().is_some()
    }

    /// Records entries of directory `dir` as a READDIRPLUS from `offset`
    /// returned them (`offset` 0 starts the listing afresh).
    pub fn listed(&self, dir: u64, offset: u64, entries: &[(u64, FileType, u64)]) {
        if !self.is_on() {
            return;
        }
        let mut guard = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let l = &mut *guard;
        let dirs = l.dirs.get_or_insert_with(|| {
            LruCache::new(NonZeroUsize::new(LISTINGS).unwrap_or(NonZeroUsize::MIN))
        });
        if offset == 0 {
            dirs.put(dir, Vec::new());
        }
        let Some(list) = dirs.get_mut(&dir) else {
            return;
        };
        if l.place.len() >= MAX_TRACKED {
            l.place.clear();
        }
        for &(ino, kind, size) in entries {
            if kind != FileType::Regular || list.len() >= MAX_ENTRIES {
                continue;
            }
            l.place.insert(ino, (dir, list.len()));
            list.push((ino, size));
        }
    }

    /// A reader asked for file `ino` from its start: queue the small files
    /// listed after it that are not pushed yet.
    pub fn read_from_start(&self, ino: u64) {
        let Some(jobs) = self.jobs.get() else {
            return;
        };
        let batch = {
            let mut guard = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            let l = &mut *guard;
            if l.pushed.len() >= MAX_TRACKED {
                l.pushed.clear();
            }
            l.pushed.insert(ino);
            let Some(&(dir, at)) = l.place.get(&ino) else {
                return;
            };
            let Some(list) = l.dirs.as_mut().and_then(|d| d.get(&dir)) else {
                return;
            };
            let (mut batch, mut bytes) = (Vec::new(), 0);
            for &(file, size) in list.iter().skip(at + 1) {
                if batch.len() >= MAX_FILES || bytes + size > MAX_BYTES || size > MAX_FILE {
                    break;
                }
                if size == 0 || !l.pushed.insert(file) {
                    continue;
                }
                bytes += size;
                batch.push((file, size));
            }
            batch
        };
        if !batch.is_empty() {
            // A busy thread drops the batch: the reader's READs serve it.
            let _ = jobs.try_send(batch);
        }
    }
}

/// The background thread: reads each queued file whole and stores it in
/// the kernel's page cache; a file that fails is left to the reader's READ.
fn push_files(jobs: &Receiver<Vec<Entry>>, notifier: &Notifier, view: &dyn View, budget: &Budget) {
    let mut scratch = Vec::new();
    for batch in jobs {
        for (ino, size) in batch {
            let stored = match view.read(ino, 0, size, Access::Sequential, &mut scratch) {
                Ok(bytes) if bytes.len() as u64 == size => {
                    notifier.store(INodeNo(ino), 0, bytes).is_ok()
                }
                _ => false,
            };
            budget.read(view, Access::Sequential, size);
            if !stored {
                tracing::debug!("store-ahead: inode {ino} not stored");
            }
        }
    }
}
