//! How [`StoreView`] finds and opens the layers it serves: by layer
//! digest in the store's directories, by TOC digest through the store's
//! TOC index, or lazily from a registry (kept apart from the view's
//! inode and directory logic in `mod.rs`).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::reader::Image;
use crate::view::Ino;

use super::toc_view::LayerBlob;
use super::{layout, toc_layers, Layer, StoreView, MAX_LAYERS};

impl StoreView {
    /// The index of layer `name` (a compressed digest, or the TOC digest of
    /// a TOC layer), opening it if it is new. A layer that is absent or
    /// broken is `None` (logged), so the caller pulls it.
    pub(super) fn load(&self, name: &[u8], r: Option<Ino>) -> Option<usize> {
        if !layout::is_layer_name(name) {
            return None;
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(&l) = self.read_state().layer_index.get(&name) {
            return self.found_as(l, &name);
        }
        let dir = layout::layer_dir(&self.dir, &name);
        if dir.is_dir() {
            return self.load_dir(dir, name);
        }
        // A TOC digest of a layer `store add` made (shared by every
        // reference): the layer must say so in its info. Else a lazy
        // layer of the reference's repository (found by TOC digest only:
        // its data is checked against the TOC, not the blob's digest).
        let added = toc_layers::resolve(&self.dir, &name)
            .filter(|digest| layout::layer_dir(&self.dir, digest).is_dir());
        let Some(digest) = added else {
            return r.and_then(|r| self.lazy_layer(r, &name));
        };
        let l = self.load_dir(layout::layer_dir(&self.dir, &digest), digest)?;
        let toc = self.layer(l).ok()?.toc_digest.clone();
        if toc.as_deref() != Some(name.as_str()) {
            tracing::error!(
                "layer {name}: the store's TOC index names a layer of TOC digest {toc:?}"
            );
            return None;
        }
        self.write_state().layer_index.insert(name, l);
        Some(l)
    }

    /// The index of the layer in `dir`, named `digest`, opening it if new.
    fn load_dir(&self, dir: PathBuf, digest: String) -> Option<usize> {
        let open = || self.open_layer(dir, &digest);
        self.load_with(digest.clone(), open)
    }

    /// The index of the layer indexed as `name`, opened by `open` if new.
    pub(super) fn load_with(
        &self,
        name: String,
        open: impl FnOnce() -> Result<Layer>,
    ) -> Option<usize> {
        if let Some(&l) = self.read_state().layer_index.get(&name) {
            return Some(l);
        }
        let layer = match open() {
            Ok(layer) => layer,
            Err(e) => {
                tracing::error!("layer {name}: {e}");
                return None;
            }
        };
        let mut state = self.write_state();
        if let Some(&l) = state.layer_index.get(&name) {
            return Some(l);
        }
        let l = state.layer_count;
        if l >= MAX_LAYERS {
            tracing::warn!("more than {MAX_LAYERS} layers; refusing more");
            return None;
        }
        tracing::info!("serving layer {name}");
        let _ = self.layers[l].set(layer);
        state.layer_count += 1;
        state.layer_index.insert(name, l);
        Some(l)
    }

    /// Opens the layer directory `dir` of layer `digest` (its info must say so).
    fn open_layer(&self, dir: PathBuf, digest: &str) -> Result<Layer> {
        let image = Image::open(&dir.join(layout::IMAGE_FILE), &self.open)?;
        let (info, parsed) = layout::read_info_bytes(&dir)?;
        if parsed.compressed_digest != digest {
            return Err(Error::Invalid(format!(
                "{}: describes {}, not {digest}",
                dir.join(layout::INFO_FILE).display(),
                parsed.compressed_digest
            )));
        }
        let blob_path = dir.join(layout::BLOB_FILE);
        let blob = File::open(&blob_path).map_err(|e| Error::io(&blob_path, e))?;
        let meta = blob.metadata().map_err(|e| Error::io(&blob_path, e))?;
        Ok(Layer {
            digest: digest.to_string(),
            toc_digest: parsed.toc_digest,
            lazy: false,
            image,
            info,
            blob: LayerBlob::File(blob),
            blob_size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        })
    }
}
