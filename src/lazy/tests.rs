//! The chunk cache against a counting in-memory source.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::map::HEADER_SIZE;
use super::*;
use crate::error::{Error, Result};

const CHUNK: u64 = 4096;

/// Bytes in memory, counting reads; optionally slow or failing.
struct Counting {
    bytes: Vec<u8>,
    reads: AtomicU64,
    ranges: Mutex<Vec<(u64, usize)>>,
    fail: AtomicBool,
    delay: Duration,
    /// Reads under way, and the most there were at once.
    active: AtomicU64,
    most_active: AtomicU64,
}

impl Counting {
    fn new(len: usize) -> Arc<Self> {
        Self::slow(len, Duration::ZERO)
    }

    fn slow(len: usize, delay: Duration) -> Arc<Self> {
        let bytes = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        Arc::new(Self {
            bytes,
            reads: AtomicU64::new(0),
            ranges: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
            delay,
            active: AtomicU64::new(0),
            most_active: AtomicU64::new(0),
        })
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

impl ChunkSource for Counting {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.ranges.lock().unwrap().push((offset, buf.len()));
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Registry("test source: refused".into()));
        }
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    fn name(&self) -> String {
        "test source".into()
    }
}

struct Dir {
    _tmp: tempfile::TempDir,
    fd: OwnedFd,
    path: std::path::PathBuf,
}

fn dir() -> Dir {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().to_path_buf();
    let fd = std::fs::File::open(&path).unwrap().into();
    Dir {
        _tmp: tmp,
        fd,
        path,
    }
}

fn options() -> CacheOptions {
    CacheOptions {
        chunk_size: CHUNK,
        max_request: 4 * CHUNK,
        max_in_flight: 2,
        wait_timeout: Duration::from_secs(10),
        prefetch: Prefetch::None,
        existing_only: false,
    }
}

fn open(
    dir: &Dir,
    source: &Arc<Counting>,
    key: &str,
    options: &CacheOptions,
) -> Result<ChunkCache> {
    let source: Arc<dyn ChunkSource> = source.clone();
    ChunkCache::open(dir.fd.as_fd(), &dir.path, "blob", key, source, options)
}

/// The cache file's bytes at `offset..offset + len`.
fn cached(cache: &ChunkCache, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    cache.file().read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn fetches_each_chunk_once_and_coalesces() {
    let d = dir();
    let src = Counting::new(40 * CHUNK as usize + 100);
    let cache = open(&d, &src, "k", &options()).unwrap();
    // Chunks 1..=2, one request.
    cache.ensure(CHUNK + 10, CHUNK).unwrap();
    assert_eq!(src.reads(), 1);
    assert_eq!(*src.ranges.lock().unwrap(), [(CHUNK, 2 * CHUNK as usize)]);
    cache.ensure(CHUNK, 2 * CHUNK).unwrap();
    assert_eq!(src.reads(), 1, "present chunks are not fetched again");
    // Chunks 0..=9: 0 alone, then 3..=6 and 7..=9 (4 chunks per request).
    cache.ensure(0, 10 * CHUNK).unwrap();
    assert_eq!(
        src.ranges.lock().unwrap()[1..],
        [
            (0, CHUNK as usize),
            (3 * CHUNK, 4 * CHUNK as usize),
            (7 * CHUNK, 3 * CHUNK as usize)
        ]
    );
    // The short last chunk.
    cache.ensure(40 * CHUNK + 99, 1).unwrap();
    assert_eq!(src.ranges.lock().unwrap()[4], (40 * CHUNK, 100));
    assert_eq!(
        cached(&cache, 0, 10 * CHUNK as usize),
        src.bytes[..10 * CHUNK as usize]
    );
    assert_eq!(
        cached(&cache, 40 * CHUNK, 100),
        src.bytes[40 * CHUNK as usize..]
    );
    let stats = cache.stats();
    assert_eq!((stats.present, stats.chunks, stats.requests), (11, 41, 5));
    assert!(cache.ensure(40 * CHUNK + 100, 1).is_err(), "past the end");
    assert!(cache.ensure(u64::MAX, 2).is_err(), "overflow");
}

#[test]
fn concurrent_readers_of_a_chunk_fetch_it_once() {
    let d = dir();
    let src = Counting::slow(8 * CHUNK as usize, Duration::from_millis(200));
    let cache = Arc::new(open(&d, &src, "k", &options()).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || cache.ensure(CHUNK + i * 10, 100))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(src.reads(), 1);
    assert_eq!(
        cached(&cache, CHUNK, CHUNK as usize),
        src.bytes[CHUNK as usize..2 * CHUNK as usize]
    );
}

#[test]
fn at_most_max_in_flight_fetches() {
    let d = dir();
    let src = Counting::slow(16 * CHUNK as usize, Duration::from_millis(100));
    let cache = Arc::new(open(&d, &src, "k", &options()).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || cache.ensure(i * 2 * CHUNK, 1))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    // Six requests, two at a time (options().max_in_flight).
    assert_eq!(src.reads(), 6);
    assert_eq!(src.most_active.load(Ordering::SeqCst), 2);
}

#[test]
fn a_failed_fetch_leaves_chunks_missing_and_is_retried() {
    let d = dir();
    let src = Counting::new(8 * CHUNK as usize);
    let cache = open(&d, &src, "k", &options()).unwrap();
    src.fail.store(true, Ordering::SeqCst);
    let err = cache.ensure(0, 2 * CHUNK).unwrap_err().to_string();
    assert!(err.contains("test source: refused"), "{err}");
    assert!(!cache.is_present(0) && !cache.is_present(1));
    assert_eq!(cache.stats().present, 0);
    src.fail.store(false, Ordering::SeqCst);
    // Right after the failure, the next read of those chunks fails at
    // once, unfetched (the kernel's retry of a failed readahead); others
    // are fetched, and so are those chunks the time after.
    let err = cache.ensure(CHUNK, CHUNK).unwrap_err().to_string();
    assert!(
        err.contains("not fetched again") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(src.reads(), 1);
    cache.ensure(4 * CHUNK, CHUNK).unwrap();
    assert_eq!(src.reads(), 2);
    cache.ensure(0, 2 * CHUNK).unwrap();
    assert_eq!(src.reads(), 3);
    assert!(cache.is_present(0) && cache.is_present(1));
    drop(cache);
    // Nothing of the failure was recorded.
    let again = open(&d, &src, "k", &options()).unwrap();
    assert_eq!(again.stats().present, 3);
}

#[test]
fn waiters_time_out_instead_of_blocking() {
    let d = dir();
    let src = Counting::slow(2 * CHUNK as usize, Duration::from_millis(600));
    let opts = CacheOptions {
        wait_timeout: Duration::from_millis(100),
        ..options()
    };
    let cache = Arc::new(open(&d, &src, "k", &opts).unwrap());
    let fetcher = {
        let cache = Arc::clone(&cache);
        std::thread::spawn(move || cache.ensure(0, 1))
    };
    std::thread::sleep(Duration::from_millis(100));
    let err = cache.ensure(0, 1).unwrap_err().to_string();
    assert!(err.contains("still being fetched"), "{err}");
    fetcher.join().unwrap().unwrap();
    cache.ensure(0, 1).unwrap();
    assert_eq!(src.reads(), 1);
}

#[test]
fn the_map_survives_reopening() {
    let d = dir();
    let src = Counting::new(20 * CHUNK as usize);
    let cache = open(&d, &src, "sha256:aa", &options()).unwrap();
    cache.ensure(3 * CHUNK, 5 * CHUNK).unwrap();
    cache.ensure(17 * CHUNK, 1).unwrap();
    drop(cache);
    let reads = src.reads();
    let cache = open(&d, &src, "sha256:aa", &options()).unwrap();
    assert_eq!(cache.stats().present, 6);
    cache.ensure(3 * CHUNK, 5 * CHUNK).unwrap();
    cache.ensure(17 * CHUNK, CHUNK).unwrap();
    assert_eq!(
        src.reads(),
        reads,
        "a reopened cache fetches nothing it has"
    );
    assert_eq!(
        cached(&cache, 3 * CHUNK, 5 * CHUNK as usize),
        src.bytes[3 * CHUNK as usize..8 * CHUNK as usize]
    );
    cache.ensure(0, 1).unwrap();
    assert_eq!(src.reads(), reads + 1);
}

/// Fills chunks 0..=3 of a cache, changes its files with `damage`, and
/// gives the chunks present when reopened with `options` and `key`.
fn reopened_after(damage: impl FnOnce(&Dir), key: &str, options: &CacheOptions) -> u64 {
    let d = dir();
    let src = Counting::new(10 * CHUNK as usize);
    open(
        &d,
        &src,
        "k",
        &super::CacheOptions {
            chunk_size: CHUNK,
            ..options.clone()
        },
    )
    .unwrap()
    .ensure(0, 4 * CHUNK)
    .unwrap();
    damage(&d);
    let cache = open(&d, &src, key, options).unwrap();
    let present = cache.stats().present;
    // Whatever was discarded, what is read is right.
    cache.ensure(0, 10 * CHUNK).unwrap();
    assert_eq!(cached(&cache, 0, 10 * CHUNK as usize), src.bytes);
    present
}

#[test]
fn a_map_that_does_not_match_is_discarded() {
    use std::os::unix::fs::FileExt;
    let map = |d: &Dir| d.path.join("blob.chunks");
    let flip = |at: u64, d: &Dir| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(map(d))
            .unwrap();
        let mut b = [0];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x80], at).unwrap();
    };
    let opts = options();
    assert_eq!(
        reopened_after(|_| {}, "k", &opts),
        4,
        "control: an intact map is kept"
    );
    assert_eq!(reopened_after(|_| {}, "other", &opts), 0, "another key");
    let big = CacheOptions {
        chunk_size: 2 * CHUNK,
        max_request: 8 * CHUNK,
        ..opts.clone()
    };
    // The first open of the helper uses CHUNK; reopening with another size.
    assert_eq!(reopened_after(|_| {}, "k", &big), 0, "another chunk size");
    assert_eq!(reopened_after(|d| flip(8, d), "k", &opts), 0, "version");
    assert_eq!(
        reopened_after(|d| flip(20, d), "k", &opts),
        0,
        "header checksum"
    );
    // A bit past the 10th chunk (bit 7 of byte 1).
    assert_eq!(
        reopened_after(|d| flip(HEADER_SIZE + 1, d), "k", &opts),
        0,
        "stray bit"
    );
    let truncate = |d: &Dir| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(map(d))
            .unwrap();
        f.set_len(HEADER_SIZE + 1).unwrap();
    };
    assert_eq!(reopened_after(truncate, "k", &opts), 0, "short map");
    let shrink = |d: &Dir| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.path.join("blob"))
            .unwrap();
        f.set_len(CHUNK).unwrap();
    };
    assert_eq!(
        reopened_after(shrink, "k", &opts),
        0,
        "cache file of another size"
    );
}

#[test]
fn symlinks_and_bad_options_are_refused() {
    let d = dir();
    let src = Counting::new(4 * CHUNK as usize);
    std::os::unix::fs::symlink("/etc/passwd", d.path.join("blob")).unwrap();
    let err = open(&d, &src, "k", &options()).unwrap_err().to_string();
    assert!(err.contains("blob"), "{err}");
    std::fs::remove_file(d.path.join("blob")).unwrap();
    for bad in [
        CacheOptions {
            chunk_size: 3000,
            ..options()
        },
        CacheOptions {
            chunk_size: 1 << 30,
            ..options()
        },
        CacheOptions {
            max_request: CHUNK / 2,
            ..options()
        },
        CacheOptions {
            max_in_flight: 0,
            ..options()
        },
    ] {
        assert!(open(&d, &src, "k", &bad).is_err(), "{bad:?}");
    }
    let empty = Counting::new(0);
    assert!(open(&d, &empty, "k", &options()).is_err());
    let source: Arc<dyn ChunkSource> = src.clone();
    for name in ["", "a/b", ".hidden"] {
        assert!(
            ChunkCache::open(d.fd.as_fd(), &d.path, name, "k", source.clone(), &options()).is_err()
        );
    }
    // The cache file is sparse: only what was fetched takes space.
    let cache = open(&d, &src, "k", &options()).unwrap();
    cache.ensure(0, 1).unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(d.path.join("blob")).unwrap();
    assert_eq!(meta.len(), 4 * CHUNK);
    assert!(meta.blocks() * 512 <= 2 * CHUNK, "{} blocks", meta.blocks());
    assert_eq!(meta.mode() & 0o777, 0o600);
}

#[test]
fn processes_that_agree_share_a_cache_and_others_are_refused() {
    let d = dir();
    let src = Counting::new(8 * CHUNK as usize);
    let first = open(&d, &src, "k", &options()).unwrap();
    first.ensure(0, CHUNK).unwrap();
    // Another open (as another process would): same map, shared.
    let second = open(&d, &src, "k", &options()).unwrap();
    assert!(second.is_present(0));
    second.ensure(CHUNK, CHUNK).unwrap();
    // One that would discard the map while it is in use is refused.
    let err = open(&d, &src, "other", &options()).unwrap_err().to_string();
    assert!(err.contains("in use by another process"), "{err}");
    // The first finds chunk 1 in the map the second wrote.
    first.ensure(0, 2 * CHUNK).unwrap();
    assert_eq!(src.reads(), 2);
    assert_eq!(
        cached(&first, 0, 2 * CHUNK as usize),
        src.bytes[..2 * CHUNK as usize]
    );
    drop((first, second));
    // Alone, it is discarded.
    assert_eq!(
        open(&d, &src, "other", &options()).unwrap().stats().present,
        0
    );
}

/// The prefetch fills the whole device, or as many bytes as asked, once
/// started, and only then.
#[test]
fn prefetch_fills_what_it_is_asked_to() {
    for (prefetch, expect) in [(Prefetch::All, 10), (Prefetch::Bytes(2 * CHUNK), 2)] {
        let d = dir();
        let src = Counting::new(10 * CHUNK as usize);
        let opts = CacheOptions {
            prefetch,
            ..options()
        };
        let cache = Arc::new(open(&d, &src, "k", &opts).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(cache.stats().present, 0, "{prefetch:?}: not started yet");
        cache.start_prefetch();
        cache.start_prefetch();
        let start = std::time::Instant::now();
        while cache.stats().present < expect && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(cache.stats().present, expect, "{prefetch:?}");
        assert_eq!(
            cached(&cache, 0, CHUNK as usize),
            src.bytes[..CHUNK as usize]
        );
    }
    assert_eq!("all".parse(), Ok(Prefetch::All));
    assert_eq!("none".parse(), Ok(Prefetch::None));
    assert_eq!("3".parse(), Ok(Prefetch::Bytes(3 << 20)));
    assert!("-1".parse::<Prefetch>().is_err());
    assert!("99999999999999999".parse::<Prefetch>().is_err());
}
