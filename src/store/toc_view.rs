//! The store view's side of lazy TOC layers ([`super::toc_remote`]): a
//! lookup of a TOC digest the store lacks fetches the layer from the
//! registry the reference names, one fetch per TOC digest at a time
//! (others wait for it), the view's state lock never held meanwhile; a
//! failed one is not retried for [`RETRY_AFTER`], so podman's repeated
//! lookups do not each wait on the network.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::images::Store;
use super::toc_remote::{self, Remote};
use super::{toc_layers, Ino, Layer, StoreView};
use crate::error::{Error, Result};

/// How long a failed fetch of a (reference, TOC digest) is not retried.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Most failures remembered (past it, they are all forgotten).
const MAX_FAILED: usize = 4096;

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
#[derive(Default)]
pub(super) struct TocFetches {
    /// How to reach registries; `None`: lazy TOC layers are not fetched.
    pub(super) remote: Option<Remote>,
    /// The content store the caches are in (opened on first use).
    store: std::sync::OnceLock<Store>,
    /// A lock per TOC digest being fetched.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Fetches that failed, by "reference TOC-digest", and when.
    failed: Mutex<HashMap<String, Instant>>,
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
        if lock(&self.toc.failed)
            .get(&key)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return None;
        }
        let gate = lock(&self.toc.fetching)
            .entry(toc.to_string())
            .or_default()
            .clone();
        let held = lock(&gate);
        // Another lookup may have fetched it meanwhile.
        let found = match toc_layers::resolve(&self.dir, toc) {
            Some(_) => Ok(Some(())),
            None => self
                .fetch_now(remote, &reference, toc)
                .map(|d| d.map(|_| ())),
        };
        drop(held);
        lock(&self.toc.fetching).remove(toc);
        match found {
            Ok(Some(())) => {
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
            Ok(None) => {
                tracing::warn!("{reference}: no layer of TOC digest {toc} in its manifest");
                self.failed(key);
                None
            }
            Err(e) => {
                tracing::error!("{reference}: TOC layer {toc}: {e}");
                self.failed(key);
                None
            }
        }
    }

    /// The network part of [`Self::fetch_toc`], timed for the log.
    fn fetch_now(&self, remote: &Remote, reference: &str, toc: &str) -> Result<Option<String>> {
        let started = Instant::now();
        let store = self.content_store()?;
        let got = toc_remote::fetch(store, remote, reference, toc)?;
        if let Some(digest) = &got {
            tracing::info!(
                "{reference}: TOC layer {toc} ({digest}) fetched lazily in {:.2} s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(got)
    }

    fn failed(&self, key: String) {
        let mut failed = lock(&self.toc.failed);
        if failed.len() >= MAX_FAILED {
            failed.clear();
        }
        failed.insert(key, Instant::now());
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
            image: opened.image,
            info: opened.info,
            blob_size: opened.blob.len(),
            blob: LayerBlob::Cache(opened.blob),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        })
    }
}
