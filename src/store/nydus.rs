//! Nydus images by reference: a manifest with a bootstrap layer (the
//! `containerd.io/snapshot/nydus-bootstrap` annotation) and Nydus blob
//! layers, recognised as [`crate::nydus::oci`] recognises them in a
//! layout. Nothing is converted: `pull` keeps the bootstrap layer's
//! `image/image.boot` in the layer's [`BOOTSTRAP_FILE`] and each blob as it is (its
//! digest checked as it streams; the blob id is the digest's hex), and
//! the image is served through the Nydus reader, each chunk checked
//! against its digest when it has one. With `mount --lazy`, a blob the store
//! lacks is read by range from the registry through a chunk cache in the
//! store, as lazy EROFS layers are, only when every chunk of it carries a
//! digest (so a range the registry alters fails its chunk's digest: EIO,
//! never data) and the bootstrap is not tarfs (whose tars have no chunk
//! digests); any other blob is fetched whole first, checked against its
//! layer digest as `pull` checks it ([`BlobRead`] says which).

use std::io::{Read, Write};
use std::sync::Arc;

use oci_spec::image::ImageManifest;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::lazy::{CacheOptions, ChunkCache, RemoteBlob};
use crate::nydus::{self, inline, oci};
use crate::reader::Image;
use crate::registry::manifest::LayerKind;
use crate::registry::ImageSource;

use super::images::{ImageRecord, LayerRecord, Store};
use super::layout::{finish_file, layer_dir, LayerInfo, Staging, BLOB_FILE};

/// The bootstrap's file in its layer directory: not the `layer.erofs`
/// of other layers, which `store serve` would serve as a plain EROFS layer
/// (without its blobs, a bootstrap's chunk addresses point into itself).
pub const BOOTSTRAP_FILE: &str = "nydus.boot";

/// The layer records of Nydus manifest `manifest` (digest
/// `manifest_digest`, of reference `name`), or `None` when it is not a
/// Nydus image's. One bootstrap layer, no larger than
/// [`inline::MAX_BOOTSTRAP`] (checked before anything is fetched), and
/// Nydus blob layers, nothing else.
pub(crate) fn layer_records(
    manifest: &ImageManifest,
    name: &str,
    manifest_digest: &str,
) -> Result<Option<Vec<LayerRecord>>> {
    if !oci::is_nydus(manifest) {
        return Ok(None);
    }
    let boots = manifest.layers().iter().filter(|d| oci::is_bootstrap(d));
    match boots.count() {
        1 => {}
        0 => {
            return Err(Error::Invalid(format!(
            "{name}: Nydus manifest {manifest_digest} has no bootstrap layer (none annotated {})",
            oci::BOOTSTRAP_ANNOTATION
        )))
        }
        n => {
            return Err(Error::Invalid(format!(
                "{name}: Nydus manifest {manifest_digest} has {n} bootstrap layers"
            )))
        }
    }
    let mut records = Vec::with_capacity(manifest.layers().len());
    for d in manifest.layers() {
        let digest = d.digest().to_string();
        let kind = if oci::is_bootstrap(d) {
            if d.size() > inline::MAX_BOOTSTRAP {
                return Err(Error::Invalid(format!(
                    "{name}: bootstrap layer {digest}: {} bytes (at most {})",
                    d.size(),
                    inline::MAX_BOOTSTRAP
                )));
            }
            LayerKind::NydusBootstrap
        } else if oci::is_blob(d) {
            LayerKind::NydusBlob
        } else {
            return Err(Error::Invalid(format!(
                "{name}: layer {digest} of Nydus manifest {manifest_digest} is neither its bootstrap nor a Nydus blob ({})",
                d.media_type()
            )));
        };
        records.push(LayerRecord {
            digest,
            size: d.size(),
            media_type: d.media_type().to_string(),
            kind,
            index: None,
        });
    }
    Ok(Some(records))
}

/// Whether `record` is a Nydus image's.
pub fn is_nydus(record: &ImageRecord) -> bool {
    record
        .layers
        .iter()
        .any(|l| l.kind == LayerKind::NydusBootstrap)
}

/// The bootstrap layer of `layers` (a Nydus image's: there is one).
fn bootstrap_of<'a>(layers: &'a [LayerRecord], name: &str) -> Result<&'a LayerRecord> {
    layers
        .iter()
        .find(|l| l.kind == LayerKind::NydusBootstrap)
        .ok_or_else(|| Error::Invalid(format!("{name}: no Nydus bootstrap layer")))
}

/// For `pull`, the bootstrap layer fetched (into `staging`'s `blob`,
/// checked against its digest): its `image/image.boot` decoded (within
/// [`inline::max_decoded`] of its size) into the layer's [`BOOTSTRAP_FILE`], which
/// must hold RAFS v6 tables.
pub(crate) fn bootstrap_layer(staging: &Staging<'_>, layer: &LayerRecord) -> Result<LayerInfo> {
    let digest = &layer.digest;
    let bad = |what: String| Error::Invalid(format!("bootstrap layer {digest}: {what}"));
    let pinned = crate::safe_fs::proc_path(staging.dir.fd());
    let blob_path = pinned.join(BLOB_FILE);
    let file = std::fs::File::open(&blob_path).map_err(|e| Error::io(&blob_path, e))?;
    let mut bytes = Vec::new();
    file.take(inline::MAX_BOOTSTRAP + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&blob_path, e))?;
    if bytes.len() as u64 != layer.size {
        return Err(bad(format!(
            "{} bytes, not the descriptor's {}",
            bytes.len(),
            layer.size
        )));
    }
    let boot = oci::bootstrap_from_layer(&bytes, &layer.media_type, digest)
        .map_err(|e| bad(e.to_string()))?;
    let image_path = staging.dir.path().join(BOOTSTRAP_FILE);
    let mut out = staging.create_file(BOOTSTRAP_FILE)?;
    out.write_all(boot.slice(0, boot.len())?)
        .map_err(|e| Error::io(&image_path, e))?;
    out.sync_all().map_err(|e| Error::io(&image_path, e))?;
    finish_file(&out, &image_path)?;
    match nydus::read_rafs(&pinned.join(BOOTSTRAP_FILE), 0) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(bad("not a RAFS v6 bootstrap with blobs".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    // The diffID: the digest and size of the uncompressed tar (what an
    // ordinary pull of the same layer records), not of the bootstrap in it.
    let (diff_digest, diff_size) = tar_digest(&bytes, &layer.media_type).map_err(bad)?;
    Ok(LayerInfo {
        compressed_digest: digest.clone(),
        compressed_size: layer.size,
        diff_digest,
        diff_size,
        compression: 0,
        toc_digest: None,
    })
}

/// The sha256 digest and length of the tar in bootstrap layer `bytes`
/// (media type `media`), decoded within [`inline::max_decoded`] of its size.
fn tar_digest(bytes: &[u8], media: &str) -> std::result::Result<(String, u64), String> {
    let limit = inline::max_decoded(bytes.len() as u64);
    let stream = oci::decoded(bytes, media).map_err(|e| e.to_string())?;
    let mut hasher = HashWriter(<sha2::Sha256 as sha2::Digest>::new());
    let size = std::io::copy(&mut stream.take(limit + 1), &mut hasher)
        .map_err(|e| format!("decoding: {e}"))?;
    if size > limit {
        return Err(format!("decodes to more than {limit} bytes"));
    }
    let hash = sha2::Digest::finalize(hasher.0);
    Ok((format!("sha256:{}", crate::format::hex(&hash)), size))
}

/// A sink hashing what is written to it.
struct HashWriter(sha2::Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The RAFS tables of the bootstrap of `layers` (in the store), once its
/// blob table is checked to list exactly the blob layers of manifest
/// `manifest_digest`.
pub(crate) fn checked_tables(
    store: &Store,
    layers: &[LayerRecord],
    name: &str,
    manifest_digest: &str,
) -> Result<nydus::Rafs> {
    let boot = bootstrap_of(layers, name)?;
    let path = layer_dir(store.path(), &boot.digest).join(BOOTSTRAP_FILE);
    let rafs = nydus::read_rafs(&path, 0)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{name}: bootstrap layer {}: not a RAFS v6 bootstrap with blobs",
            boot.digest
        ))
    })?;
    let blobs: Vec<&str> = layers
        .iter()
        .filter(|l| l.kind == LayerKind::NydusBlob)
        .map(|l| l.digest.as_str())
        .collect();
    oci::check_blob_layers(&rafs, &blobs, name, manifest_digest)?;
    Ok(rafs)
}

/// Where one blob of an opened image is read from.
pub enum BlobRead {
    /// The store had it whole (pulled before).
    Stored,
    /// Fetched whole into the store by this open, checked against its
    /// layer digest: its chunks cannot all be checked (the reason).
    FetchedWhole(&'static str),
    /// Read on demand through this cache, every chunk checked against
    /// its digest.
    Lazy(Arc<ChunkCache>),
}

/// How one blob of an opened image is read.
pub struct BlobStatus {
    /// The blob's digest.
    pub digest: String,
    /// Where its bytes come from.
    pub read: BlobRead,
}

/// Why blob `info` of `rafs` may not be read lazily (`None`: it may):
/// every byte served lazily must be checked by a chunk digest, and a
/// tarfs tar, or a chunk with no digest (a crc32c at most, which anyone
/// can forge), is not.
pub fn not_lazy_because(rafs: &nydus::Rafs, info: &nydus::BlobInfo) -> Option<&'static str> {
    if rafs.tarfs() {
        return Some("a tarfs tar has no chunk digests");
    }
    let mut chunks = rafs.chunks.iter().filter(|c| c.blob_index == info.index);
    if chunks.any(|c| c.digest == [0; 32]) {
        return Some("some of its chunks have no digest");
    }
    None
}

/// Opens the pulled Nydus image `record` (named `name`): the bootstrap
/// from the store, each blob from the store when it has it, else (with a
/// `source`) read on demand through its cache (`options`); decoded
/// chunks cached within `cache_size` bytes.
pub fn open(
    store: &Store,
    record: &ImageRecord,
    name: &str,
    source: Option<Arc<dyn ImageSource>>,
    options: &CacheOptions,
    cache_size: u64,
) -> Result<(Image, Vec<BlobStatus>)> {
    let rafs = checked_tables(store, &record.layers, name, &record.manifest_digest)?;
    let boot = bootstrap_of(&record.layers, name)?;
    let mut devices = Vec::with_capacity(rafs.blobs.len());
    let mut status = Vec::with_capacity(rafs.blobs.len());
    for info in &rafs.blobs {
        let digest = oci::layer_digest(info);
        let layer = record
            .layers
            .iter()
            .find(|l| l.digest == digest)
            .ok_or_else(|| Error::Invalid(format!("{name}: blob {digest} is not a layer")))?;
        let not_lazy = not_lazy_because(&rafs, info);
        let (device, read) = blob_device(store, layer, source.as_ref(), options, name, not_lazy)?;
        devices.push(device);
        status.push(BlobStatus { digest, read });
    }
    let primary = Device::open(
        &layer_dir(store.path(), &boot.digest).join(BOOTSTRAP_FILE),
        0,
    )?;
    let image = nydus::open_bytes(primary, devices, cache_size)?;
    Ok((image, status))
}

/// Blob `layer`: its file in the store, or (not in the store, with a
/// `source`) fetched whole into the store when `not_lazy` gives a reason,
/// else a device over its lazy cache.
fn blob_device(
    store: &Store,
    layer: &LayerRecord,
    source: Option<&Arc<dyn ImageSource>>,
    options: &CacheOptions,
    name: &str,
    not_lazy: Option<&'static str>,
) -> Result<(Device, BlobRead)> {
    let digest = &layer.digest;
    let stored = || Device::open(&layer_dir(store.path(), digest).join(BLOB_FILE), 0);
    if super::layer_kind::has_layer_as(store, digest, layer.kind) {
        return Ok((stored()?, BlobRead::Stored));
    }
    let Some(source) = source else {
        return Err(Error::Invalid(format!(
            "{name}: blob {digest} is not in the store"
        )));
    };
    if let Some(why) = not_lazy {
        // Checked against its digest as it streams, as pull does.
        super::pull::fetch_one(store, source.as_ref(), layer)
            .map_err(|e| Error::Invalid(format!("{name}: blob {digest}: {e}")))?;
        return Ok((stored()?, BlobRead::FetchedWhole(why)));
    }
    let blob = Arc::new(RemoteBlob {
        source: Arc::clone(source),
        digest: digest.clone(),
        size: layer.size,
    });
    let dir = store.lazy_dir();
    let cache = ChunkCache::open(dir.fd(), dir.path(), digest, digest, blob, options)?;
    let cache = Arc::new(cache);
    Ok((Device::lazy(Arc::clone(&cache))?, BlobRead::Lazy(cache)))
}
