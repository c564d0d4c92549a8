//! The store view's side of lazy TOC layers ([`super::toc_remote`]): a
//! lookup of a TOC digest the store lacks, under a reference of a
//! registry named by `--fetch-from` (any other is ENOENT before any
//! network call), fetches the layer from that reference's repository,
//! one fetch per (repository, TOC digest) at a time (others wait for it,
//! at most [`GATE_WAIT`]), the view's state lock never held meanwhile; a
//! failed one is not retried for [`RETRY_AFTER`], nor a registry that
//! failed [`HOST_FAILURES`] times, so repeated lookups (podman's, or any
//! local user's junk) do not each wait on the network; past
//! `--max-lazy-layers` layers made, none more. An image's manifest is
//! kept a minute: podman 4's lookups by compressed digest, of layers the
//! store lacks, cost one manifest fetch per image and are ENOENT.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::images::Store;
use super::toc_remote::{self, Remote, Resolved};
use super::{Ino, Layer, StoreView};
use crate::error::{Error, Result};
use crate::registry::Reference;

/// How long a failed fetch of a (repository, TOC digest) is not retried.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Failures to resolve images of one registry after which it is not
/// asked for [`RETRY_AFTER`] (one unknown image does not stop the others;
/// a registry that is down, or a flood of junk references, does).
const HOST_FAILURES: u32 = 4;
/// Most failures (and refused registries) remembered, least recent
/// forgotten first.
const MAX_FAILED: std::num::NonZeroUsize = std::num::NonZeroUsize::new(4096).unwrap();
/// Longest wait for another lookup's fetch of the same layer (then
/// ENOENT: podman pulls the layer itself).
pub(super) const GATE_WAIT: Duration = Duration::from_secs(60);
/// How long a resolved image (its manifest) is used before it is fetched
/// again.
const IMAGE_TTL: Duration = Duration::from_secs(60);
/// Most resolved images kept.
const IMAGES_KEPT: std::num::NonZeroUsize = std::num::NonZeroUsize::new(64).unwrap();
/// How often a registry not in `--fetch-from` is logged.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where a layer's `blob` is read from.
pub(super) enum LayerBlob {
    /// The blob file in the layer's directory.
    File(std::fs::File),
    /// A lazy layer's blob, read from the registry through its cache.
    Cache(Arc<crate::lazy::ChunkCache>),
}

impl LayerBlob {
    /// Reads into `buf` at `offset` (inside the blob): the outer error is
    /// the cache's fetch, the inner one the file's read.
    pub(super) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<std::io::Result<usize>> {
        use std::os::unix::fs::FileExt;
        Ok(match self {
            LayerBlob::File(file) => file.read_at(buf, offset),
            LayerBlob::Cache(cache) => {
                cache.ensure(offset, buf.len() as u64)?;
                cache.file().read_at(buf, offset)
            }
        })
    }
}

/// What the view keeps for lazy TOC layers.
pub(super) struct TocFetches {
    /// How to reach registries; `None`: lazy TOC layers are not fetched.
    pub(super) remote: Option<Remote>,
    /// The content store the caches are in (opened on first use).
    store: std::sync::OnceLock<Store>,
    /// A gate per lazy layer (key) being fetched.
    fetching: Mutex<HashMap<String, Arc<Gate>>>,
    /// Fetches that failed, by lazy layer key, and when.
    failed: Mutex<lru::LruCache<String, Instant>>,
    /// Registries images could not be resolved from: since when, how
    /// many times.
    hosts_down: Mutex<lru::LruCache<String, (Instant, u32)>>,
    /// Registries refused (not in `--fetch-from`), when last logged.
    refused: Mutex<lru::LruCache<String, Instant>>,
    /// Lazy layers this server made.
    created: AtomicUsize,
    /// Images resolved lately, by reference, and when.
    images: Mutex<lru::LruCache<String, (Instant, Arc<Resolved>)>>,
}

impl Default for TocFetches {
    fn default() -> Self {
        Self {
            remote: None,
            store: std::sync::OnceLock::new(),
            fetching: Mutex::default(),
            failed: Mutex::new(lru::LruCache::new(MAX_FAILED)),
            hosts_down: Mutex::new(lru::LruCache::new(MAX_FAILED)),
            refused: Mutex::new(lru::LruCache::new(MAX_FAILED)),
            created: AtomicUsize::new(0),
            images: Mutex::new(lru::LruCache::new(IMAGES_KEPT)),
        }
    }
}

/// One fetch at a time of a lazy layer: `busy` while one runs.
#[derive(Default)]
struct Gate {
    busy: Mutex<bool>,
    done: Condvar,
}

/// A held [`Gate`], opened again when dropped.
struct Held<'a>(&'a Gate);

impl Gate {
    /// Waits (at most `wait`) for the gate to be free and takes it.
    fn enter(&self, wait: Duration) -> Option<Held<'_>> {
        let deadline = Instant::now() + wait;
        let mut busy = lock(&self.busy);
        while *busy {
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self
                .done
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *busy = true;
        Some(Held(self))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *lock(&self.0.busy) = false;
        self.0.done.notify_all();
    }
}

/// Whether `key` is in `map` since less than [`RETRY_AFTER`].
fn recently(map: &Mutex<lru::LruCache<String, Instant>>, key: &str) -> bool {
    lock(map)
        .peek(key)
        .is_some_and(|at| at.elapsed() < RETRY_AFTER)
}

/// Records `key` in `map` now.
fn remember(map: &Mutex<lru::LruCache<String, Instant>>, key: String) {
    lock(map).put(key, Instant::now());
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StoreView {
    /// The content store of the served directory.
    fn content_store(&self) -> Result<&Store> {
        if let Some(store) = self.toc.store.get() {
            return Ok(store);
        }
        let store = Store::open(&self.dir)?;
        Ok(self.toc.store.get_or_init(|| store))
    }

    /// The name of reference `r` as containers/storage gave it (decoded).
    fn ref_text(&self, r: Ino) -> Option<String> {
        use base64::Engine as _;
        let state = self.read_state();
        let encoded = state.refs.peek(&r).or_else(|| state.candidates.peek(&r))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(decoded).ok()
    }

    /// The lazy layer of TOC digest `toc` from the repository reference
    /// `r` names: already in the store, or fetched now if its registry is
    /// one of `--fetch-from` (see the module doc).
    pub(super) fn lazy_layer(&self, r: Ino, toc: &str) -> Option<usize> {
        let reference = self.ref_text(r)?;
        let parsed = toc_remote::parse_reference(&reference).ok()?;
        let key = toc_remote::lazy_key(&parsed, toc);
        if let Some(l) = self.load_lazy(&key, toc) {
            return Some(l);
        }
        let remote = self.toc.remote.as_ref()?;
        if !remote.allows(&parsed.registry) {
            self.refused(&parsed.registry);
            return None;
        }
        if self.backing_off(&key, &parsed.registry) {
            return None;
        }
        let gate = lock(&self.toc.fetching)
            .entry(key.clone())
            .or_default()
            .clone();
        let found = match gate.enter(GATE_WAIT) {
            Some(_held) => self.fetch_gated(remote, &reference, &parsed, toc, &key),
            None => {
                tracing::warn!("{reference}: TOC layer {toc}: still fetched by another lookup");
                None
            }
        };
        let mut fetching = lock(&self.toc.fetching);
        if fetching.get(&key).is_some_and(|g| Arc::ptr_eq(g, &gate)) {
            fetching.remove(&key);
        }
        found
    }

    /// [`Self::lazy_layer`] with the gate held: the layer, if another
    /// lookup did not fetch it meanwhile and nothing says to wait, fetched.
    fn fetch_gated(
        &self,
        remote: &Remote,
        reference: &str,
        parsed: &Reference,
        toc: &str,
        key: &str,
    ) -> Option<usize> {
        if let Some(l) = self.load_lazy(key, toc) {
            return Some(l);
        }
        if self.backing_off(key, &parsed.registry) {
            return None;
        }
        let made = self.toc.created.load(Ordering::Relaxed);
        if made >= remote.max_lazy_layers {
            tracing::warn!(
                "{reference}: TOC layer {toc}: this server made {made} lazy layers \
                 (--max-lazy-layers); not more"
            );
            return None;
        }
        match self.fetch_now(remote, reference, &parsed.registry, toc) {
            Ok(true) => {
                self.toc.created.fetch_add(1, Ordering::Relaxed);
                let l = self.load_lazy(key, toc);
                if l.is_none() {
                    remember(&self.toc.failed, key.to_string());
                }
                l
            }
            Ok(false) => {
                remember(&self.toc.failed, key.to_string());
                None
            }
            Err(e) => {
                tracing::error!("{reference}: TOC layer {toc}: {e}");
                remember(&self.toc.failed, key.to_string());
                None
            }
        }
    }

    /// Whether lazy layer `key` failed lately, or `registry` is down.
    fn backing_off(&self, key: &str, registry: &str) -> bool {
        recently(&self.toc.failed, key) || self.host_down(registry)
    }

    /// Logs (at most every [`REFUSED_LOG_EVERY`] per registry) a lookup
    /// under a registry not in `--fetch-from`.
    fn refused(&self, registry: &str) {
        let mut refused = lock(&self.toc.refused);
        if refused
            .peek(registry)
            .is_some_and(|at| at.elapsed() < REFUSED_LOG_EVERY)
        {
            return;
        }
        refused.put(registry.to_string(), Instant::now());
        tracing::warn!("registry {registry}: not in --fetch-from; its TOC layers are not fetched");
    }

    /// Lazy layer `key` if the store holds it, loaded (indexed under
    /// "lazy KEY", so no lookup by digest finds it). One that does not
    /// open is recorded as failed (not opened again for [`RETRY_AFTER`]).
    fn load_lazy(&self, key: &str, toc: &str) -> Option<usize> {
        let name = format!("lazy {key}");
        if let Some(&l) = self.read_state().layer_index.get(&name) {
            return Some(l);
        }
        if !toc_remote::layer_dir(&self.dir, key).is_dir() || recently(&self.toc.failed, key) {
            return None;
        }
        let l = self.load_with(name, || self.open_lazy(key));
        let Some(l) = l else {
            remember(&self.toc.failed, key.to_string());
            return None;
        };
        let layer_toc = self.layer(l).ok()?.toc_digest.clone();
        if layer_toc.as_deref() != Some(toc) {
            tracing::error!("lazy layer {key}: of TOC digest {layer_toc:?}, not {toc}");
            return None;
        }
        Some(l)
    }

    /// The network part of [`Self::lazy_layer`]: whether the layer is now
    /// in the store. A registry that cannot be reached is not asked again
    /// for [`RETRY_AFTER`].
    fn fetch_now(&self, remote: &Remote, reference: &str, host: &str, toc: &str) -> Result<bool> {
        let started = Instant::now();
        let image = match self.image(remote, reference) {
            Ok(image) => image,
            Err(e) => {
                self.host_failed(host);
                return Err(e);
            }
        };
        if image.has_layer(toc) {
            // A lookup by compressed digest (podman 4) of a layer the
            // store lacks: podman pulls it.
            tracing::debug!("{reference}: {toc} is a layer digest, not a TOC digest");
            return Ok(false);
        }
        let Some(digest) = toc_remote::fetch(self.content_store()?, remote, &image, toc)? else {
            tracing::warn!("{reference}: no layer of TOC digest {toc} in its manifest");
            return Ok(false);
        };
        tracing::info!(
            "{reference}: TOC layer {toc} ({digest}) fetched lazily in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(true)
    }

    /// Whether registry `host` failed [`HOST_FAILURES`] times within
    /// [`RETRY_AFTER`].
    fn host_down(&self, host: &str) -> bool {
        lock(&self.toc.hosts_down)
            .peek(host)
            .is_some_and(|(at, n)| *n >= HOST_FAILURES && at.elapsed() < RETRY_AFTER)
    }

    /// Counts a failure to resolve an image of registry `host`.
    fn host_failed(&self, host: &str) {
        let mut hosts = lock(&self.toc.hosts_down);
        let entry = hosts.get_or_insert_mut(host.to_string(), || (Instant::now(), 0));
        if entry.0.elapsed() >= RETRY_AFTER {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// `reference` resolved: kept for [`IMAGE_TTL`], so the lookups of an
    /// image's layers fetch its manifest once.
    fn image(&self, remote: &Remote, reference: &str) -> Result<Arc<Resolved>> {
        if let Some((at, image)) = lock(&self.toc.images).get(reference) {
            if at.elapsed() < IMAGE_TTL {
                return Ok(image.clone());
            }
        }
        let image = Arc::new(toc_remote::resolve(remote, reference)?);
        lock(&self.toc.images).put(reference.to_string(), (Instant::now(), image.clone()));
        Ok(image)
    }

    /// Layer `l`, found in the index under `name`, unless it is a lazy
    /// layer and `name` is not its TOC digest (its data is checked against
    /// the TOC, not against the blob's digest).
    pub(super) fn found_as(&self, l: usize, name: &str) -> Option<usize> {
        let layer = self.layer(l).ok()?;
        (!layer.lazy || layer.toc_digest.as_deref() == Some(name)).then_some(l)
    }

    /// Opens lazy layer `key` (its directory in `STORE/toc-lazy`).
    fn open_lazy(&self, key: &str) -> Result<Layer> {
        let dir = toc_remote::layer_dir(&self.dir, key);
        let none = Remote::default();
        let remote = self.toc.remote.as_ref().unwrap_or(&none);
        let opened = toc_remote::open(self.content_store()?, remote, key)?;
        let meta = std::fs::metadata(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Layer {
            digest: key.to_string(),
            toc_digest: Some(opened.toc_digest),
            lazy: true,
            image: opened.image,
            info: opened.info,
            blob_size: opened.blob.len(),
            blob: LayerBlob::Cache(opened.blob),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_gate_is_waited_for_a_bounded_time() {
        let gate = Arc::new(Gate::default());
        let held = gate.enter(Duration::ZERO).unwrap();
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = gate.clone();
        std::thread::spawn(move || {
            let _ = tx.send(other.enter(Duration::from_millis(100)).is_none());
        });
        // A wait without its bound would never answer: fail, not hang.
        assert!(rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no timeout"));
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Freed meanwhile: the waiter gets it.
        let other = gate.clone();
        let waiter = std::thread::spawn(move || other.enter(Duration::from_secs(10)).is_some());
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn failures_are_forgotten_least_recent_first() {
        let fetches = TocFetches::default();
        for i in 0..=MAX_FAILED.get() {
            remember(&fetches.failed, format!("k{i}"));
        }
        assert!(!recently(&fetches.failed, "k0"));
        assert!(recently(&fetches.failed, "k1"));
        assert!(recently(&fetches.failed, &format!("k{}", MAX_FAILED.get())));
    }
}
