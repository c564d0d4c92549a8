//! The store view's side of lazy TOC layers ([`super::toc_remote`]): a
//! lookup of a TOC digest the store lacks fetches the layer from the
//! registry the reference names, one fetch per TOC digest at a time
//! (others wait for it), the view's state lock never held meanwhile; a
//! failed one is not retried for [`RETRY_AFTER`], nor a registry that
//! failed [`HOST_FAILURES`] times, so repeated lookups (podman's, or any
//! local user's junk) do not each wait on the network. An image's
//! manifest is kept a minute: podman 4's lookups by compressed digest, of
//! layers the store lacks, cost one manifest fetch per image and are
//! ENOENT.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::images::Store;
use super::toc_remote::{self, Remote, Resolved};
use super::{toc_layers, Ino, Layer, StoreView};
use crate::error::{Error, Result};

/// How long a failed fetch of a (reference, TOC digest) is not retried.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Failures to resolve images of one registry after which it is not
/// asked for [`RETRY_AFTER`] (one unknown image does not stop the others;
/// a registry that is down, or a flood of junk references, does).
const HOST_FAILURES: u32 = 4;
/// Most failures remembered (past it, they are all forgotten).
const MAX_FAILED: usize = 4096;
/// How long a resolved image (its manifest) is used before it is fetched
/// again.
const IMAGE_TTL: Duration = Duration::from_secs(60);
/// Most resolved images kept.
const IMAGES_KEPT: std::num::NonZeroUsize = std::num::NonZeroUsize::new(64).unwrap();

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
    /// A lock per TOC digest being fetched.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Fetches that failed, by "reference TOC-digest", and when.
    failed: Mutex<HashMap<String, Instant>>,
    /// Registries images could not be resolved from: since when, how
    /// many times.
    hosts_down: Mutex<HashMap<String, (Instant, u32)>>,
    /// Images resolved lately, by reference, and when.
    images: Mutex<lru::LruCache<String, (Instant, Arc<Resolved>)>>,
}

impl Default for TocFetches {
    fn default() -> Self {
        Self {
            remote: None,
            store: std::sync::OnceLock::new(),
            fetching: Mutex::default(),
            failed: Mutex::default(),
            hosts_down: Mutex::default(),
            images: Mutex::new(lru::LruCache::new(IMAGES_KEPT)),
        }
    }
}

/// Whether `key` is in `map` since less than [`RETRY_AFTER`].
fn recently(map: &Mutex<HashMap<String, Instant>>, key: &str) -> bool {
    lock(map)
        .get(key)
        .is_some_and(|at| at.elapsed() < RETRY_AFTER)
}

/// Records `key` in `map` now (forgetting all past [`MAX_FAILED`]).
fn remember(map: &Mutex<HashMap<String, Instant>>, key: String) {
    let mut map = lock(map);
    if map.len() >= MAX_FAILED {
        map.clear();
    }
    map.insert(key, Instant::now());
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

    /// Looks TOC digest `toc` up in the registry reference `r` names,
    /// fetching the layer into the store (see the module doc).
    pub(super) fn fetch_toc(&self, r: Ino, toc: &str) -> Option<usize> {
        let remote = self.toc.remote.as_ref().filter(|remote| !remote.offline)?;
        let reference = self.ref_text(r)?;
        let key = format!("{reference} {toc}");
        let host = toc_remote::parse_reference(&reference).ok()?.registry;
        if recently(&self.toc.failed, &key) || self.host_down(&host) {
            return None;
        }
        let gate = lock(&self.toc.fetching)
            .entry(toc.to_string())
            .or_default()
            .clone();
        let held = lock(&gate);
        // Another lookup may have fetched it meanwhile.
        let found = match toc_layers::resolve(&self.dir, toc) {
            Some(_) => Ok(true),
            None => self.fetch_now(remote, &reference, &host, toc),
        };
        drop(held);
        lock(&self.toc.fetching).remove(toc);
        match found {
            Ok(true) => {
                let digest = toc_layers::resolve(&self.dir, toc)?;
                let l = self.load_dir(super::layout::layer_dir(&self.dir, &digest), digest)?;
                let layer_toc = self.layer(l).ok()?.toc_digest.clone();
                if layer_toc.as_deref() != Some(toc) {
                    tracing::error!("layer {toc}: the store's TOC index names a layer of TOC digest {layer_toc:?}");
                    return None;
                }
                self.write_state().layer_index.insert(toc.to_string(), l);
                Some(l)
            }
            Ok(false) => {
                remember(&self.toc.failed, key);
                None
            }
            Err(e) => {
                tracing::error!("{reference}: TOC layer {toc}: {e}");
                remember(&self.toc.failed, key);
                None
            }
        }
    }

    /// The network part of [`Self::fetch_toc`]: whether the layer is now
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
        let Some(digest) = toc_remote::fetch(self.content_store()?, &image, toc)? else {
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
            .get(host)
            .is_some_and(|(at, n)| *n >= HOST_FAILURES && at.elapsed() < RETRY_AFTER)
    }

    /// Counts a failure to resolve an image of registry `host`.
    fn host_failed(&self, host: &str) {
        let mut hosts = lock(&self.toc.hosts_down);
        if hosts.len() >= MAX_FAILED {
            hosts.clear();
        }
        let entry = hosts.entry(host.to_string()).or_insert((Instant::now(), 0));
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

    /// Opens lazy layer `digest` (its directory in `STORE/toc-lazy`).
    pub(super) fn open_lazy(&self, digest: &str) -> Result<Layer> {
        let dir = toc_remote::layer_dir(&self.dir, digest);
        let offline = Remote {
            offline: true,
            ..Remote::default()
        };
        let remote = self.toc.remote.as_ref().unwrap_or(&offline);
        let opened = toc_remote::open(self.content_store()?, remote, digest)?;
        let meta = std::fs::metadata(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Layer {
            digest: digest.to_string(),
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
