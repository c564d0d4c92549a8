//! [`ChunkCache`]: the sparse cache file, its chunk map, and
//! [`ChunkCache::ensure`], which fills the missing chunks of a range.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::map::{self, MapHeader};
use super::{ChunkSource, Prefetch};
use crate::error::{Error, Result};
use crate::safe_fs;

/// Most chunks a cache has: the map then takes at most 2 MiB of memory
/// (twice: present and in flight), and 1 MiB chunks cover 16 TiB.
pub const MAX_CHUNKS: u64 = 1 << 24;
/// Smallest and largest chunk sizes accepted.
const CHUNK_SIZES: std::ops::RangeInclusive<u64> = 4096..=(64 << 20);
/// Largest request accepted: with [`MAX_IN_FLIGHT`], bounds the memory of
/// the fetches in flight.
const MAX_REQUEST: u64 = 64 << 20;
/// Most fetches in flight accepted.
const MAX_IN_FLIGHT: usize = 64;

/// How a [`ChunkCache`] fetches.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Bytes per chunk, a power of two (4 KiB to 64 MiB); chunks are
    /// aligned to it. A cache reopened with another size starts empty.
    pub chunk_size: u64,
    /// Most bytes one request to the source asks for: adjacent missing
    /// chunks of a read are fetched together up to this.
    pub max_request: u64,
    /// Most requests to the source at once; the memory of fetches is at
    /// most this times `max_request`.
    pub max_in_flight: usize,
    /// How long a reader waits for chunks other readers are fetching
    /// before it fails.
    pub wait_timeout: Duration,
    /// What to fetch in the background once serving starts
    /// ([`ChunkCache::start_prefetch`]).
    pub prefetch: Prefetch,
    /// Open only a cache that matches (key, size, chunk size): one that
    /// does not is left as it is and opening fails, instead of being
    /// discarded and started anew (for a reader that must not destroy
    /// another's cache).
    pub existing_only: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            max_request: 8 << 20,
            max_in_flight: 4,
            wait_timeout: Duration::from_secs(120),
            prefetch: Prefetch::None,
            existing_only: false,
        }
    }
}

/// What a cache has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests made to the source.
    pub requests: u64,
    /// Bytes fetched from the source.
    pub bytes: u64,
    /// Chunks present.
    pub present: u64,
    /// Chunks in all.
    pub chunks: u64,
}

/// How long after a failed fetch the next read of its chunks fails at
/// once, unfetched (once): the kernel retries a failed readahead right
/// away, which would otherwise wait out a second deadline.
const FAILED_FOR: Duration = Duration::from_millis(250);

/// The last fetch that failed.
struct Failed {
    first: u64,
    last: u64,
    at: Instant,
    message: String,
    /// A read was failed for it already (the retry it stands for).
    used: bool,
}

/// The chunks present and being fetched, under the cache's lock.
struct State {
    present: Vec<u8>,
    in_flight: Vec<u8>,
    present_count: u64,
    /// Requests in flight.
    fetching: usize,
    /// The last failed fetch, for [`FAILED_FOR`].
    failed: Option<Failed>,
}

/// What [`ChunkCache::ensure`] does next for a range.
enum Plan {
    /// Every chunk is present.
    Done,
    /// Fetch chunks `.0..=.1`: missing, nobody fetching them.
    Fetch(u64, u64),
    /// The missing chunks are being fetched by others.
    Wait,
}

/// A sparse cache file of a whole device, filled from a [`ChunkSource`]
/// chunk by chunk, with its chunk map beside it (`NAME.chunks`).
pub struct ChunkCache {
    source: Arc<dyn ChunkSource>,
    data: File,
    path: PathBuf,
    /// Held shared while open: processes that agree on the map share it;
    /// only one alone with it may discard it.
    map: Flock<File>,
    map_path: PathBuf,
    size: u64,
    shift: u32,
    chunks: u64,
    /// Most chunks per request.
    max_run: u64,
    max_in_flight: usize,
    wait_timeout: Duration,
    prefetch: Prefetch,
    /// The prefetch was started (once per cache).
    prefetching: AtomicBool,
    state: Mutex<State>,
    /// Signalled when chunks arrive or fetches end.
    changed: Condvar,
    /// Every chunk present: reads skip the lock.
    complete: AtomicBool,
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size())
            .finish()
    }
}

/// Chunks `first..=last` claimed by one fetch; dropping it records them
/// as present (when `done`) or missing again, and wakes the waiters,
/// whatever way the fetch ended.
struct Claim<'a> {
    cache: &'a ChunkCache,
    first: u64,
    last: u64,
    done: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let cache = self.cache;
        let mut state = cache.lock();
        map::set_range(&mut state.in_flight, self.first..=self.last, false);
        state.fetching -= 1;
        if self.done {
            map::set_range(&mut state.present, self.first..=self.last, true);
            state.present_count += self.last - self.first + 1;
            if state.present_count == cache.chunks {
                cache.complete.store(true, Ordering::Release);
            }
            // Lost on failure, the bits only cost a refetch next time.
            let written = map::persist(
                &cache.map,
                &cache.map_path,
                &state.present,
                self.first,
                self.last,
            );
            if let Err(e) = written {
                tracing::warn!("{e}");
            }
        }
        drop(state);
        cache.changed.notify_all();
    }
}

/// Whether chunks `first..=last` meet a fetch that failed less than
/// [`FAILED_FOR`] ago.
fn failed_recently(state: &State, first: u64, last: u64) -> bool {
    state.failed.as_ref().is_some_and(|f| {
        !f.used && f.at.elapsed() < FAILED_FOR && first <= f.last && f.first <= last
    })
}

impl ChunkCache {
    /// Opens the cache `name` in the directory `dir` (named `dir_path` in
    /// errors) for the device `source` reads, `key` naming its content (a
    /// blob's digest): the cache file `name` and its map `name.chunks`,
    /// created (mode 0600) when absent. A map made for another key, size or
    /// chunk size, or damaged, is discarded along with the cached bytes,
    /// unless another process has the cache open (then opening fails).
    /// Neither name is followed when it is a symlink.
    pub fn open(
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        name: &str,
        key: &str,
        source: Arc<dyn ChunkSource>,
        options: &CacheOptions,
    ) -> Result<Self> {
        let path = dir_path.join(name);
        let (shift, chunks, max_run) = check_options(&path, source.len(), options)?;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Invalid(format!("{name:?}: not a cache file name")));
        }
        let map_name = format!("{name}.chunks");
        let map_path = dir_path.join(&map_name);
        let data = open_or_create(dir, OsStr::new(name), &path)?;
        let map_file = open_or_create(dir, OsStr::new(&map_name), &map_path)?;
        let (map_file, alone) = lock_map(map_file, &map_path)?;
        let size = source.len();
        let header = MapHeader::new(key, shift, size);
        let data_len = data.metadata().map_err(|e| Error::io(&path, e))?.len();
        let bits = match data_len == size {
            true => map::load(&map_file, &map_path, &header, chunks)?,
            false => None,
        };
        let present = match bits {
            Some(bits) => bits,
            None if !alone || options.existing_only => {
                let why = match alone {
                    false => "in use by another process for another blob, size or chunk size",
                    true => "made for another blob, size or chunk size (left as it is)",
                };
                return Err(Error::Invalid(format!("{}: {why}", map_path.display())));
            }
            None => {
                // The map first: no moment where it lists chunks the data
                // file no longer has.
                map_file.set_len(0).map_err(|e| Error::io(&map_path, e))?;
                let io = |e| Error::io(&path, e);
                data.set_len(0).map_err(io)?;
                data.set_len(size).map_err(io)?;
                map::reset(&map_file, &map_path, &header, chunks)?;
                vec![0; map::bitmap_len(chunks) as usize]
            }
        };
        if alone {
            map_file
                .relock(FlockArg::LockShared)
                .map_err(|e| Error::io(&map_path, e.into()))?;
        }
        let present_count = present.iter().map(|b| u64::from(b.count_ones())).sum();
        Ok(Self {
            source,
            data,
            path,
            map: map_file,
            map_path,
            size,
            shift,
            chunks,
            max_run,
            max_in_flight: options.max_in_flight,
            wait_timeout: options.wait_timeout,
            prefetch: options.prefetch,
            prefetching: AtomicBool::new(false),
            state: Mutex::new(State {
                in_flight: vec![0; present.len()],
                present,
                present_count,
                fetching: 0,
                failed: None,
            }),
            changed: Condvar::new(),
            complete: AtomicBool::new(present_count == chunks),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// The cache file (read it only where [`ChunkCache::ensure`] said).
    pub fn file(&self) -> &File {
        &self.data
    }

    /// The cache file's path, for errors and logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's length in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the device holds no bytes (never: empty devices are refused).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        1 << self.shift
    }

    /// Whether chunk `index` is present (false past the last chunk).
    pub fn is_present(&self, index: u64) -> bool {
        index < self.chunks && map::is_set(&self.lock().present, index)
    }

    /// Starts fetching in the background what the options' prefetch says
    /// (once; later calls do nothing). Call it once the device is served.
    pub fn start_prefetch(self: &Arc<Self>) {
        if !self.prefetching.swap(true, Ordering::AcqRel) {
            super::prefetch::start(self, self.prefetch);
        }
    }

    /// Marks the chunks of `[offset, offset + len)` missing again (those
    /// not being fetched), so the next read fetches them anew: for bytes
    /// found wrong after they were cached (a tree block that does not
    /// match its parent).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (first, last) = (offset >> self.shift, (offset + len - 1) >> self.shift);
        let mut state = self.lock();
        let mut dropped = 0;
        for i in first..=last {
            if map::is_set(&state.present, i) && !map::is_set(&state.in_flight, i) {
                map::set_range(&mut state.present, i..=i, false);
                dropped += 1;
            }
        }
        if dropped > 0 {
            state.present_count -= dropped;
            self.complete.store(false, Ordering::Release);
        }
        map::persist(&self.map, &self.map_path, &state.present, first, last)
    }

    /// The first missing chunk from `from` on, not being fetched.
    pub(super) fn next_missing(&self, from: u64) -> Option<u64> {
        let state = self.lock();
        (from..self.chunks)
            .find(|&i| !map::is_set(&state.present, i) && !map::is_set(&state.in_flight, i))
    }

    /// Whether requests are under way (the prefetch stands aside).
    pub(super) fn readers_fetching(&self) -> bool {
        self.lock().fetching > 0
    }

    /// The most bytes one request asks for.
    pub(super) fn max_request(&self) -> u64 {
        self.max_run << self.shift
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let present = self.lock().present_count;
        CacheStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            present,
            chunks: self.chunks,
        }
    }

    /// Makes `[offset, offset + len)` of the cache file hold the device's
    /// bytes: fetches its missing chunks (adjacent ones together), or waits
    /// for those other readers are fetching. On error the chunks not
    /// fetched stay missing, and a later call tries again.
    pub fn ensure(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 || self.complete.load(Ordering::Acquire) {
            return self.check(offset, len);
        }
        self.check(offset, len)?;
        let (mut from, last) = (offset >> self.shift, (offset + len - 1) >> self.shift);
        let mut waiting_since: Option<Instant> = None;
        loop {
            let mut state = self.lock();
            let run = match self.plan(&state, &mut from, last) {
                Plan::Done => return Ok(()),
                // Fetched meanwhile by another process sharing the cache.
                Plan::Fetch(first, last) if self.refresh(&mut state, first, last)? => continue,
                Plan::Fetch(first, last) if failed_recently(&state, first, last) => {
                    return Err(self.still_failing(&mut state))
                }
                Plan::Fetch(first, last) if state.fetching < self.max_in_flight => {
                    map::set_range(&mut state.in_flight, first..=last, true);
                    state.fetching += 1;
                    Some((first, last))
                }
                Plan::Fetch(..) | Plan::Wait => None,
            };
            let Some((first, last)) = run else {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let left = self.wait_timeout.saturating_sub(since.elapsed());
                if left.is_zero() {
                    return Err(self.timed_out(from, last));
                }
                drop(self.changed.wait_timeout(state, left));
                continue;
            };
            drop(state);
            let mut claim = Claim {
                cache: self,
                first,
                last,
                done: false,
            };
            if let Err(e) = self.fetch(first, last) {
                let at = Instant::now();
                let message = e.to_string();
                self.lock().failed = Some(Failed {
                    first,
                    last,
                    at,
                    message,
                    used: false,
                });
                return Err(e);
            }
            claim.done = true;
            drop(claim);
            waiting_since = None;
        }
    }

    /// The error for chunks whose fetch failed less than [`FAILED_FOR`] ago.
    fn still_failing(&self, state: &mut State) -> Error {
        if let Some(f) = state.failed.as_mut() {
            f.used = true;
        }
        let why = state.failed.as_ref().map_or("", |f| f.message.as_str());
        Error::Registry(format!(
            "{}: not fetched again within {FAILED_FOR:?} of failing: {why}",
            self.path.display()
        ))
    }

    /// Marks present the chunks of `first..=last` the map on disk lists
    /// (another process sharing the cache fetched them); whether there
    /// were any.
    fn refresh(&self, state: &mut State, first: u64, last: u64) -> Result<bool> {
        let (at, disk) = map::read_bits(&self.map, &self.map_path, first, last)?;
        let mut found = 0;
        for i in first..=last {
            if map::is_set(&disk, i - at * 8) && !map::is_set(&state.present, i) {
                map::set_range(&mut state.present, i..=i, true);
                found += 1;
            }
        }
        state.present_count += found;
        if state.present_count == self.chunks {
            self.complete.store(true, Ordering::Release);
        }
        Ok(found > 0)
    }

    /// Checks `[offset, offset + len)` lies inside the device.
    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::corrupt(format!(
                "{}: read of {len} bytes at offset {offset} is past its end ({} bytes)",
                self.path.display(),
                self.size
            ))),
        }
    }

    /// The next step for chunks `*from..=last`, moving `from` past the
    /// chunks found present at its start.
    fn plan(&self, state: &State, from: &mut u64, last: u64) -> Plan {
        while *from <= last && map::is_set(&state.present, *from) {
            *from += 1;
        }
        let mut i = *from;
        while i <= last {
            if map::is_set(&state.present, i) || map::is_set(&state.in_flight, i) {
                i += 1;
                continue;
            }
            let free =
                |j: u64| !map::is_set(&state.present, j) && !map::is_set(&state.in_flight, j);
            let mut end = i;
            while end < last && end - i + 1 < self.max_run && free(end + 1) {
                end += 1;
            }
            return Plan::Fetch(i, end);
        }
        if *from > last {
            Plan::Done
        } else {
            Plan::Wait
        }
    }

    /// Reads chunks `first..=last` from the source and writes them to the
    /// cache file, synced.
    fn fetch(&self, first: u64, last: u64) -> Result<()> {
        let offset = first << self.shift;
        let end = ((last + 1) << self.shift).min(self.size);
        // At most max_request bytes (checked at open).
        let mut buf = vec![0u8; (end - offset) as usize];
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.source.read_at(offset, &mut buf)?;
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let io = |e| Error::io(&self.path, e);
        self.data.write_all_at(&buf, offset).map_err(io)?;
        // Before the map says so: a bit on disk stands for synced bytes.
        self.data.sync_data().map_err(io)
    }

    fn timed_out(&self, from: u64, last: u64) -> Error {
        Error::io(
            &self.path,
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "chunks {from}..={last} of {} still being fetched after {:?}",
                    self.source.name(),
                    self.wait_timeout
                ),
            ),
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks `options` for a device of `size` bytes; gives the chunk size's
/// log2, the number of chunks and the most chunks per request.
fn check_options(path: &Path, size: u64, options: &CacheOptions) -> Result<(u32, u64, u64)> {
    let bad = |what: String| Err(Error::Invalid(format!("{}: {what}", path.display())));
    let chunk = options.chunk_size;
    if !chunk.is_power_of_two() || !CHUNK_SIZES.contains(&chunk) {
        return bad(format!(
            "chunk size {chunk} is not a power of two from 4 KiB to 64 MiB"
        ));
    }
    if options.max_request < chunk || options.max_request > MAX_REQUEST {
        return bad(format!(
            "request size {} is not from the chunk size to 64 MiB",
            options.max_request
        ));
    }
    if !(1..=MAX_IN_FLIGHT).contains(&options.max_in_flight) {
        return bad(format!(
            "{} requests in flight is not from 1 to {MAX_IN_FLIGHT}",
            options.max_in_flight
        ));
    }
    if size == 0 {
        return bad("an empty device cannot be cached".to_string());
    }
    let chunks = size.div_ceil(chunk);
    if chunks > MAX_CHUNKS {
        return bad(format!(
            "{size} bytes is more than {MAX_CHUNKS} chunks of {chunk} bytes"
        ));
    }
    Ok((chunk.trailing_zeros(), chunks, options.max_request / chunk))
}

/// Locks the map open as `file`: exclusively when no other process has it
/// open (the `bool`), else shared, waiting for one that is setting it up.
fn lock_map(file: File, path: &Path) -> Result<(Flock<File>, bool)> {
    let io = |e: Errno| Error::io(path, e.into());
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok((lock, true)),
        Err((file, Errno::EWOULDBLOCK)) => Flock::lock(file, FlockArg::LockShared)
            .map(|lock| (lock, false))
            .map_err(|(_, e)| io(e)),
        Err((_, e)) => Err(io(e)),
    }
}

/// Opens the regular file `name` in `dir` for reading and writing, or
/// creates it (mode 0600) when absent; a symlink or anything but a regular
/// file there is an error.
fn open_or_create(dir: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<File> {
    let io = |e| Error::io(path, e);
    // Twice at most: another process may create it between our tries.
    for _ in 0..2 {
        let pinned = match safe_fs::open_pinned(dir, name) {
            Ok(fd) => File::from(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match safe_fs::create_file_at(dir, name, 0o600) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        };
        if !pinned.metadata().map_err(io)?.is_file() {
            return Err(Error::Invalid(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        // Reopened through /proc: exactly the inode pinned, read-write.
        return std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(safe_fs::proc_path(pinned.as_fd()))
            .map_err(io);
    }
    Err(io(io::Error::from(io::ErrorKind::AlreadyExists)))
}
