//! The cache of decoded extents: an LRU of decoded bytes bounded by a byte
//! budget that also counts the extents being decoded, with one decode per
//! extent at a time.
//!
//! Why the extents in flight count: an extent decodes into a buffer of its
//! whole length (up to 12 MiB), and every serving thread may be decoding
//! one: counted apart, they came on top of the budget (docs/benchmarks.md,
//! "Design measurements"; `tests/it/mount.rs` keeps the bound). Counted
//! in, decoded bytes held and being decoded stay within the budget plus one
//! extent: a decode that would go past the budget waits for the others in
//! flight to finish, and the extent used last is kept whatever the decodes
//! in flight take, so that a reader going through it in pieces finds it.
//!
//! A decode must not need another decode (the cache would wait on itself):
//! callers read the encoded bytes first, and a nested call is an error.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use lru::LruCache;

use crate::error::{Error, Result};

use super::zmap::{PclusterAt, ZExtent};

/// Default budget of the decoded-extent cache, in bytes.
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;

/// How many locks decoding is spread over. Two threads that miss the same
/// extent take the same lock, so the second finds it decoded; two that
/// miss different extents rarely share one (4 threads, 64 locks).
const DECODE_LOCKS: usize = 64;

thread_local! {
    /// Whether this thread is inside a decode of [`ExtentCache::get_or_decode`].
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as decoding until dropped (also when a decode panics).
struct DecodingMark;

impl DecodingMark {
    fn set() -> Self {
        DECODING.with(|d| d.set(true));
        Self
    }
}

impl Drop for DecodingMark {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(false));
    }
}

/// What identifies a decoded extent: the same pcluster decoded to the same
/// length gives the same bytes, whichever file (dedupe) asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ExtentKey {
    at: PclusterAt,
    len: u64,
}

/// A key of the cache: what identifies decoded bytes, and their length
/// (what a decode of them takes from the budget). Nydus blob chunks use
/// the same cache with their own key.
pub(crate) trait CacheKey: Copy + Eq + std::hash::Hash {
    /// Length in bytes of the decoded bytes.
    fn decoded_len(&self) -> u64;
}

impl CacheKey for ExtentKey {
    fn decoded_len(&self) -> u64 {
        self.len
    }
}

impl ExtentKey {
    /// The key of compressed extent `ext`.
    pub fn of(ext: &ZExtent) -> Self {
        Self {
            at: ext.at,
            len: ext.len,
        }
    }
}

/// An LRU cache of decoded extents bounded by their total size in bytes.
#[derive(Debug)]
pub(crate) struct ExtentCache<K: CacheKey = ExtentKey> {
    budget: u64,
    inner: Mutex<CacheInner<K>>,
    /// Signalled when a decode ends, for decodes waiting for room.
    decoded: Condvar,
    /// Held while an extent is decoded, chosen by the key's hash.
    decode_locks: [Mutex<()>; DECODE_LOCKS],
    hasher: RandomState,
    hits: AtomicU64,
    decodes: AtomicU64,
}

/// Counters of the decoded-extent cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Extents decoded (cache misses).
    pub decodes: u64,
    /// Bytes of decoded data held now.
    pub bytes: u64,
    /// The budget in bytes.
    pub budget: u64,
}

#[derive(Debug)]
struct CacheInner<K: CacheKey> {
    map: LruCache<K, Arc<[u8]>>,
    /// Bytes of the extents in `map`.
    bytes: u64,
    /// Bytes of the extents being decoded now.
    decoding: u64,
}

impl<K: CacheKey> CacheInner<K> {
    /// Evicts least recently used extents until what is held and what is
    /// being decoded fit in `budget`, or only the most recently used is
    /// left.
    fn shrink_to(&mut self, budget: u64) {
        while self.bytes + self.decoding > budget && self.map.len() > 1 {
            match self.map.pop_lru() {
                Some((_, old)) => self.bytes -= old.len() as u64,
                None => break,
            }
        }
    }
}

/// Room taken in the budget for an extent being decoded; given back when
/// dropped.
struct Reservation<'a, K: CacheKey> {
    cache: &'a ExtentCache<K>,
    len: u64,
}

impl<K: CacheKey> Drop for Reservation<'_, K> {
    fn drop(&mut self) {
        self.cache.lock().decoding -= self.len;
        self.cache.decoded.notify_all();
    }
}

impl<K: CacheKey> ExtentCache<K> {
    /// A cache holding at most `budget` bytes of decoded data.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(CacheInner {
                map: LruCache::unbounded(),
                bytes: 0,
                decoding: 0,
            }),
            decoded: Condvar::new(),
            decode_locks: std::array::from_fn(|_| Mutex::new(())),
            hasher: RandomState::new(),
            hits: AtomicU64::new(0),
            decodes: AtomicU64::new(0),
        }
    }

    /// The cached bytes of `key`, counted as a hit when there.
    pub fn get(&self, key: &K) -> Option<Arc<[u8]>> {
        let found = self.lock().map.get(key).cloned();
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The bytes of `key` after a [`get`](Self::get) missed them: made now
    /// by `decode` (which fills a zeroed buffer of the extent's length) and
    /// cached, or found cached once this thread's turn to decode comes (a
    /// thread that misses an extent another is decoding waits for it
    /// instead of decoding it too).
    pub fn get_or_decode(
        &self,
        key: K,
        decode: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Arc<[u8]>> {
        if DECODING.with(Cell::get) {
            return Err(Error::corrupt(
                "a compressed extent's encoded bytes lie in another compressed extent",
            ));
        }
        let slot = (self.hasher.hash_one(key) % DECODE_LOCKS as u64) as usize;
        // Nothing panics while this is held but `decode`, which leaves no
        // state behind.
        let _turn = self.decode_locks[slot]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(data) = self.get(&key) {
            return Ok(data);
        }
        self.count_decode();
        let reservation = self.reserve(key.decoded_len());
        // `key.decoded_len()` was bounded by the extent mapping (at most
        // 12 MiB) or the Nydus chunk map (at most its largest chunk).
        // SAFETY: all-zero bytes are valid `u8`s.
        let mut data: Arc<[u8]> =
            unsafe { Arc::new_zeroed_slice(key.decoded_len() as usize).assume_init() };
        let out = Arc::get_mut(&mut data).expect("a new Arc is unique");
        {
            let _mark = DecodingMark::set();
            decode(out)?;
        }
        self.insert(reservation, key, Arc::clone(&data));
        Ok(data)
    }

    /// Counts an extent decoded without the cache (a read of all of it).
    pub fn count_decode(&self) {
        self.decodes.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes room for `len` bytes being decoded, evicting to make it. When
    /// the decodes in flight leave too little, waits for them: they cannot
    /// nest, so they wait for nothing and this ends.
    fn reserve(&self, len: u64) -> Reservation<'_, K> {
        let mut inner = self.lock();
        while inner.decoding > 0 && inner.decoding.saturating_add(len) > self.budget {
            inner = self.decoded.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.decoding += len;
        inner.shrink_to(self.budget);
        Reservation { cache: self, len }
    }

    /// Keeps decoded `data` in place of its `reservation`, in one step so
    /// that no decode takes the room in between.
    fn insert(&self, reservation: Reservation<'_, K>, key: K, data: Arc<[u8]>) {
        let size = data.len() as u64;
        let mut inner = self.lock();
        inner.decoding -= reservation.len;
        std::mem::forget(reservation);
        if size <= self.budget {
            if let Some(old) = inner.map.put(key, data) {
                inner.bytes -= old.len() as u64;
            }
            inner.bytes += size;
            inner.shrink_to(self.budget);
        }
        drop(inner);
        self.decoded.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, CacheInner<K>> {
        // A panic elsewhere cannot leave the cache inconsistent: every
        // update above completes before the guard drops.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cache's counters now.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            decodes: self.decodes.load(Ordering::Relaxed),
            bytes: self.lock().bytes,
            budget: self.budget,
        }
    }
}

impl<K: CacheKey> Default for ExtentCache<K> {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::Barrier;

    fn key(n: u64, len: u64) -> ExtentKey {
        ExtentKey {
            at: PclusterAt::Fragment(n),
            len,
        }
    }

    fn fill(byte: u8) -> impl FnOnce(&mut [u8]) -> Result<()> {
        move |out| {
            out.fill(byte);
            Ok(())
        }
    }

    #[test]
    fn decodes_once_then_hits() {
        let cache = ExtentCache::new(1 << 20);
        let a = cache.get_or_decode(key(1, 100), fill(7)).unwrap();
        assert_eq!(&a[..], &[7; 100][..]);
        let b = cache
            .get_or_decode(key(1, 100), |_| panic!("decoded twice"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let stats = cache.stats();
        assert_eq!((stats.decodes, stats.hits, stats.bytes), (1, 1, 100));
    }

    #[test]
    fn a_decode_makes_room_for_itself_first() {
        let cache = ExtentCache::new(300);
        for n in 0..3 {
            cache.get_or_decode(key(n, 100), fill(1)).unwrap();
        }
        assert_eq!(cache.stats().bytes, 300);
        // While extent 3 decodes, what is held plus it stays in budget.
        cache
            .get_or_decode(key(3, 200), |out| {
                let inner = cache.lock();
                assert_eq!((inner.bytes, inner.decoding), (100, 200));
                drop(inner);
                out.fill(2);
                Ok(())
            })
            .unwrap();
        assert_eq!(cache.stats().bytes, 300);
        // The oldest two went; the newest of them stayed.
        assert!(cache.get(&key(0, 100)).is_none());
        assert!(cache.get(&key(1, 100)).is_none());
        assert!(cache.get(&key(2, 100)).is_some());
    }

    #[test]
    fn the_extent_used_last_stays_while_others_decode() {
        let cache = ExtentCache::new(100);
        cache.get_or_decode(key(1, 60), fill(1)).unwrap();
        cache
            .get_or_decode(key(2, 60), |out| {
                // 60 held and 60 decoding are over the budget, but extent
                // 1 is the one a reader is going through.
                assert!(cache.get(&key(1, 60)).is_some());
                out.fill(2);
                Ok(())
            })
            .unwrap();
        // Decoded, extent 2 is the newest and 1 goes.
        assert!(cache.get(&key(1, 60)).is_none());
        assert!(cache.get(&key(2, 60)).is_some());
        assert_eq!(cache.stats().bytes, 60);
    }

    #[test]
    fn a_decode_that_needs_another_is_an_error_not_a_hang() {
        // A budget of 0 would make the nested call wait for the outer one,
        // and the same key the same decode lock.
        let cache = ExtentCache::new(0);
        let err = cache
            .get_or_decode(key(1, 10), |_| {
                cache.get_or_decode(key(1, 10), fill(1)).map(|_| ())
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("another compressed extent"),
            "{err}"
        );
        // The thread can decode again afterwards.
        assert_eq!(cache.get_or_decode(key(2, 10), fill(4)).unwrap()[0], 4);
        assert_eq!(cache.lock().decoding, 0);
    }

    #[test]
    fn a_failed_decode_gives_its_room_back_and_caches_nothing() {
        let cache = ExtentCache::new(1000);
        let err = cache
            .get_or_decode(key(1, 100), |_| Err(Error::corrupt("bad")))
            .unwrap_err();
        assert!(err.to_string().contains("bad"));
        let inner = cache.lock();
        assert_eq!((inner.bytes, inner.decoding, inner.map.len()), (0, 0, 0));
    }

    #[test]
    fn an_extent_over_the_budget_is_served_but_not_kept() {
        let cache = ExtentCache::new(50);
        let data = cache.get_or_decode(key(1, 100), fill(3)).unwrap();
        assert_eq!(data.len(), 100);
        let inner = cache.lock();
        assert_eq!((inner.bytes, inner.decoding, inner.map.len()), (0, 0, 0));
    }

    /// How many of `threads` decodes of distinct `len`-byte extents, started
    /// together and each taking 50 ms, ran at once at most.
    fn most_in_flight(budget: u64, threads: u64, len: u64) -> u64 {
        let cache = ExtentCache::new(budget);
        let start = Barrier::new(threads as usize);
        let (in_flight, most) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for n in 0..threads {
                let (cache, start, in_flight, most) = (&cache, &start, &in_flight, &most);
                s.spawn(move || {
                    start.wait();
                    cache
                        .get_or_decode(key(n, len), |out| {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            out.fill(1);
                            Ok(())
                        })
                        .unwrap();
                });
            }
        });
        let inner = cache.lock();
        assert_eq!(inner.decoding, 0);
        assert!(inner.bytes <= budget);
        most.load(Ordering::SeqCst)
    }

    #[test]
    fn decodes_past_the_budget_wait_for_each_other() {
        // Extents of 60 bytes, a budget of 100: one decodes at a time.
        assert_eq!(most_in_flight(100, 6, 60), 1);
        // Within the budget they decode side by side.
        assert!(most_in_flight(1000, 4, 60) > 1);
    }

    #[test]
    fn threads_missing_the_same_extent_decode_it_once() {
        let cache = ExtentCache::new(1 << 20);
        let decodes = AtomicU64::new(0);
        let start = Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    let data = cache
                        .get_or_decode(key(9, 4096), |out| {
                            decodes.fetch_add(1, Ordering::Relaxed);
                            // Long enough for the others to arrive.
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            out.fill(9);
                            Ok(())
                        })
                        .unwrap();
                    assert!(data.iter().all(|&b| b == 9));
                });
            }
        });
        assert_eq!(decodes.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats().hits, 7);
    }
}
