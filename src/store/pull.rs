//! `pull`: an image from an [`ImageSource`] into the content store.
//!
//! The manifest is resolved (an index to the platform's manifest), every
//! layer's media type is checked before anything is fetched, then the
//! layers are fetched and converted by a few threads: each straight into
//! a staging directory of its own (verified as it streams), converted to a
//! tar-index image with the tar appended (or, for an EROFS layer, checked
//! to be one), and renamed into place whole. A per-digest lock makes two
//! pulls of one layer fetch it once. The manifests, config and the image
//! record are written last, so a failed pull leaves no record and no
//! partial layer or blob. An EROFS layer whose lazy cache (`mount --lazy`)
//! is complete is copied from it instead, if its bytes match the digest;
//! with [`PullOptions::lazy`] the layers a lazy mount reads on demand are not fetched.
//! A Nydus image's layers are kept as they are ([`super::nydus`]): its
//! bootstrap is fetched first and its blob table checked against the
//! manifest before any blob is.

use std::ffi::OsStr;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use oci_spec::image::{Descriptor, ImageManifest};

use crate::error::{Error, Result};
use crate::reader::{Image, OpenOptions};
use crate::registry::manifest::{parse_config, LayerKind, Manifest, Platform};
use crate::registry::oci_layout::sha256_digest;
use crate::registry::{FetchedManifest, ImageSource, MAX_MANIFEST_SIZE};

use super::images::{ImageRecord, ImageRef, LayerRecord, Store};
use super::layer_kind;
use super::layout::{
    convert_layer, finish_file, write_info, LayerInfo, Staging, BLOB_FILE, IMAGE_FILE, INFO_FILE,
};

/// The marker in a layer directory that a pull made it (gc removes such
/// layers once no image needs them; `store add`'s are kept).
pub const PULLED_FILE: &str = "pulled";

/// What pulls name the directories they build layers in (`.pull.<random>`:
/// gc removes those a crash left behind; `store add`'s are its own).
pub const PULL_PREFIX: &str = "pull";

/// Default number of layers fetched at once.
pub const DEFAULT_THREADS: usize = 4;

/// What a pull reports as it goes (the CLI's progress bars).
pub trait Progress: Sync {
    /// Layer `index` (of the manifest's) of `size` bytes is starting.
    fn start(&self, index: usize, digest: &str, size: u64);
    /// `done` bytes of layer `index` are fetched.
    fn bytes(&self, index: usize, done: u64);
    /// Layer `index` is at step `what` (fetched, now "converting").
    fn step(&self, _index: usize, _what: &str) {}
    /// Layer `index` is finished: `how` says what happened.
    fn finish(&self, index: usize, how: &str);
}

/// No progress reports.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: usize, _: &str, _: u64) {}
    fn bytes(&self, _: usize, _: u64) {}
    fn finish(&self, _: usize, _: &str) {}
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The platform to choose from an index (default: the host's).
    pub platform: Option<Platform>,
    /// Layers fetched at once (0: [`DEFAULT_THREADS`]).
    pub threads: usize,
    /// Leave unfetched the layers the store lacks that `mount --lazy` can
    /// read on demand: EROFS-native ones ([`super::lazy`]), and tar and
    /// tar+gzip ones with a layer-index referrer ([`super::indexed`]), whose
    /// record then keeps the index. The record lists them all the same, so
    /// a later plain `mount` or `pull` fetches them whole.
    pub lazy: bool,
    /// From an index with both an ordinary and a Nydus-marked entry for
    /// the platform, take the Nydus one (default: the ordinary one).
    pub prefer_nydus: bool,
}

/// The image `image` resolves to in `source`.
pub(crate) struct Resolved {
    /// What the reference names (index or manifest).
    pub(crate) top: FetchedManifest,
    /// The platform's manifest, when `top` is an index.
    pub(crate) platform_manifest: Option<FetchedManifest>,
    pub(crate) manifest: ImageManifest,
    pub(crate) platform: Option<Platform>,
}

/// Pulls `image` from `source` into `store`: returns its record.
pub fn pull(
    store: &Store,
    image: &ImageRef,
    source: &dyn ImageSource,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<ImageRecord> {
    let name = image.to_string();
    let _lock = store.lock(false)?;
    let resolved = resolve(image, source, options, &name)?;
    let manifest_digest = resolved
        .platform_manifest
        .as_ref()
        .unwrap_or(&resolved.top)
        .digest
        .clone();
    // A Nydus image's layers are kept as they are (see [`super::nydus`]).
    let nydus = super::nydus::layer_records(&resolved.manifest, &name, &manifest_digest)?;
    let is_nydus = nydus.is_some();
    let mut layers = match nydus {
        Some(layers) => layers,
        None => resolved
            .manifest
            .layers()
            .iter()
            .map(|d| layer_record(d, &name))
            .collect::<Result<Vec<_>>>()?,
    };
    if options.lazy && !is_nydus {
        let manifest = resolved.platform_manifest.as_ref().unwrap_or(&resolved.top);
        find_indexes(source, &manifest.digest, &mut layers, &name);
    }
    let config = resolved.manifest.config();
    let config_digest = config.digest().to_string();
    if config.size() > MAX_MANIFEST_SIZE {
        return Err(Error::Invalid(format!(
            "{name}: config {config_digest} is larger than 4 MiB"
        )));
    }
    // Kept by an earlier pull (checked against its digest), or fetched.
    let config_bytes = match store.blob(&config_digest) {
        Ok(bytes) => bytes,
        Err(_) => {
            let mut bytes = Vec::new();
            source.blob(&config_digest, config.size(), &mut bytes, &|_| {})?;
            bytes
        }
    };
    parse_config(&config_bytes, &format!("{name}: config {config_digest}"))?;

    if is_nydus {
        nydus_bootstrap_first(store, source, &layers, (&name, &manifest_digest), progress)?;
    }
    fetch_layers(store, source, &layers, options, progress)?;

    store.put_blob(&resolved.top.digest, &resolved.top.bytes)?;
    if let Some(m) = &resolved.platform_manifest {
        store.put_blob(&m.digest, &m.bytes)?;
    }
    store.put_blob(&config_digest, &config_bytes)?;
    let record = ImageRecord {
        reference: name,
        digest: resolved.top.digest.clone(),
        manifest_digest,
        config_digest,
        layers,
        platform: resolved.platform,
        pulled: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    store.put_record(image, &record)?;
    Ok(record)
}

/// Fetches the bootstrap of Nydus image `layers` (of reference and
/// manifest `name`, `manifest_digest`) and checks its blob table against
/// the manifest's blob layers, before any blob is fetched.
fn nydus_bootstrap_first(
    store: &Store,
    source: &dyn ImageSource,
    layers: &[LayerRecord],
    (name, manifest_digest): (&str, &str),
    progress: &dyn Progress,
) -> Result<()> {
    let boot = layers
        .iter()
        .position(|l| l.kind == LayerKind::NydusBootstrap);
    if let Some(i) = boot {
        // Its problems named with the reference, as the checks below are.
        fetch_layer(store, source, &layers[i], i, progress).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{name}: {m}")),
            e => e,
        })?;
    }
    super::nydus::checked_tables(store, layers, name, manifest_digest)?;
    Ok(())
}

/// Gives the tar layers of `layers` the layer-index referrers `source`
/// lists for manifest `subject` (when it cannot list them, a warning: the
/// layers are then pulled whole).
fn find_indexes(source: &dyn ImageSource, subject: &str, layers: &mut [LayerRecord], name: &str) {
    let found = match crate::registry::referrers::find_layer_indexes(source, subject) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("{name}: looking for layer indexes: {e}");
            return;
        }
    };
    for layer in layers.iter_mut() {
        if matches!(
            layer.kind,
            LayerKind::Tar | LayerKind::TarGzip | LayerKind::Erofs
        ) {
            layer.index = found.iter().find(|i| i.layer == layer.digest).cloned();
        }
    }
}

/// Fetches what `image` names and, for an index, the platform's manifest.
pub(crate) fn resolve(
    image: &ImageRef,
    source: &dyn ImageSource,
    options: &PullOptions,
    name: &str,
) -> Result<Resolved> {
    let top = checked(source.manifest(&image.manifest_reference())?, name)?;
    if let Some(pinned) = image.pinned_digest() {
        if top.digest != pinned {
            return Err(Error::Invalid(format!(
                "{name}: the registry served manifest {} for {pinned}",
                top.digest
            )));
        }
    }
    match Manifest::parse(&top, name)? {
        Manifest::Image(manifest) => Ok(Resolved {
            top,
            platform_manifest: None,
            manifest: *manifest,
            platform: None,
        }),
        Manifest::Index(index) => {
            let wanted = options.platform.clone().unwrap_or_else(Platform::host);
            // The ordinary entry as ever; a Nydus-marked one only when no
            // ordinary one is for the platform, or when asked for.
            let entry = match options.prefer_nydus {
                true => crate::nydus::oci::select_entry(&index, &wanted, name)?,
                false => crate::nydus::oci::select_ordinary_first(&index, &wanted, name)?,
            };
            let digest = entry.digest().to_string();
            if entry.size() > MAX_MANIFEST_SIZE {
                return Err(Error::Invalid(format!(
                    "{name}: manifest {digest} is larger than 4 MiB"
                )));
            }
            let fetched = checked(source.manifest(&digest)?, name)?;
            if fetched.digest != digest {
                return Err(Error::Invalid(format!(
                    "{name}: asked for manifest {digest}, got {}",
                    fetched.digest
                )));
            }
            let Manifest::Image(manifest) = Manifest::parse(&fetched, name)? else {
                return Err(Error::Unsupported(format!(
                    "{name}: manifest {digest} for {wanted} is itself an index"
                )));
            };
            let platform = entry.platform().as_ref().map(|p| Platform {
                os: p.os().to_string(),
                architecture: p.architecture().to_string(),
                variant: p.variant().clone(),
            });
            Ok(Resolved {
                top,
                platform_manifest: Some(fetched),
                manifest: *manifest,
                platform,
            })
        }
    }
}

/// `fetched`, once its bytes are checked against its size limit and
/// digest (whatever the source says, the store names blobs by content).
fn checked(fetched: FetchedManifest, name: &str) -> Result<FetchedManifest> {
    if fetched.bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::Invalid(format!(
            "{name}: manifest {} is larger than 4 MiB",
            fetched.digest
        )));
    }
    let got = sha256_digest(&fetched.bytes);
    if got != fetched.digest {
        return Err(Error::Invalid(format!(
            "{name}: manifest {} does not match its digest (got {got})",
            fetched.digest
        )));
    }
    Ok(fetched)
}

/// A layer descriptor as the record keeps it, its media type understood.
pub(crate) fn layer_record(d: &Descriptor, name: &str) -> Result<LayerRecord> {
    let digest = d.digest().to_string();
    let media_type = d.media_type().to_string();
    let kind = LayerKind::of(&media_type).map_err(|e| match e {
        Error::Unsupported(why) => Error::Unsupported(format!("{name}: layer {digest}: {why}")),
        e => e,
    })?;
    Ok(LayerRecord {
        digest,
        size: d.size(),
        media_type,
        kind,
        index: None,
    })
}

/// Fetches the layers not in the store yet, `threads` at a time; the
/// first error ends the pull (layers already complete stay).
fn fetch_layers(
    store: &Store,
    source: &dyn ImageSource,
    layers: &[LayerRecord],
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let threads = match options.threads {
        0 => DEFAULT_THREADS,
        n => n,
    }
    .min(layers.len())
    .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= layers.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let layer = &layers[index];
                if options.lazy
                    && layer.is_lazy()
                    && !layer_kind::has_layer_as(store, &layer.digest, layer.kind)
                {
                    continue;
                }
                if let Err(e) = fetch_layer(store, source, layer, index, progress) {
                    progress.finish(index, "failed");
                    failed.store(true, Ordering::Relaxed);
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Fetches `layer` whole into the store (checked against its digest as
/// it streams) unless the store has it: `mount --lazy` of a Nydus blob
/// whose chunks cannot all be checked.
pub(crate) fn fetch_one(
    store: &Store,
    source: &dyn ImageSource,
    layer: &LayerRecord,
) -> Result<()> {
    fetch_layer(store, source, layer, 0, &NoProgress)
}

/// Fetches and converts one layer, unless the store has it with the file
/// its kind needs (or another process makes it while this one waits for
/// its lock). A directory made for another kind of layer of the same
/// digest gets the missing file ([`super::layer_kind`]), from the blob it
/// keeps.
fn fetch_layer(
    store: &Store,
    source: &dyn ImageSource,
    layer: &LayerRecord,
    index: usize,
    progress: &dyn Progress,
) -> Result<()> {
    let digest = layer.digest.as_str();
    progress.start(index, digest, layer.size);
    let present = || layer_kind::has_layer_as(store, digest, layer.kind);
    if present() {
        progress.finish(index, "already present");
        return Ok(());
    }
    let _lock = store.lock_layer(digest)?;
    if present() {
        progress.finish(index, "already present");
        return Ok(());
    }
    let staging = Staging::create(&store.root, PULL_PREFIX)?;
    let other_kind = store.has_layer(digest);
    // A blob fetched now was checked against its digest as it streamed; one
    // kept by the store is hashed again as it is converted.
    let fetched = !(other_kind && layer_kind::reuse_blob(store, digest, &staging)?);
    if fetched {
        fill_blob(store, source, layer, index, progress, &staging)?;
    }
    progress.step(index, "converting");
    let info = match layer.kind {
        LayerKind::Erofs => erofs_layer(&staging, layer)?,
        LayerKind::NydusBootstrap => super::nydus::bootstrap_layer(&staging, layer)?,
        LayerKind::NydusBlob => as_fetched(layer),
        _ => tar_layer(&staging, layer, fetched)?,
    };
    if other_kind {
        let name = layer_kind::needed_file(layer.kind);
        layer_kind::add_file(store, &staging, digest, name, false)?;
        if name == IMAGE_FILE {
            // An ordinary layer's info (its compression) replaces a
            // Nydus one's; both have the same digests and sizes.
            write_info(&staging, &info)?;
            layer_kind::add_file(store, &staging, digest, INFO_FILE, true)?;
        }
        progress.finish(index, "done");
        return Ok(());
    }
    write_info(&staging, &info)?;
    let marker = staging.create_file(PULLED_FILE)?;
    finish_file(&marker, &staging.dir.path().join(PULLED_FILE))?;
    staging.publish(digest)?;
    progress.finish(index, "done");
    Ok(())
}

/// Puts layer `layer`'s blob in `staging` (checked against its digest):
/// a complete lazy cache whose bytes match, else fetched from `source`.
fn fill_blob(
    store: &Store,
    source: &dyn ImageSource,
    layer: &LayerRecord,
    index: usize,
    progress: &dyn Progress,
    staging: &Staging<'_>,
) -> Result<()> {
    let blob_path = staging.dir.path().join(BLOB_FILE);
    let blob = staging.create_file(BLOB_FILE)?;
    // A complete lazy cache (mount --lazy) whose bytes match the digest
    // spares the fetch; anything else about it only costs the fetch.
    let adopted = super::lazy::adopt(store, layer, &blob, &blob_path).unwrap_or_else(|e| {
        tracing::debug!("not adopting the lazy cache: {e}");
        false
    });
    if adopted {
        progress.step(index, "from the lazy cache");
    } else {
        blob.set_len(0).map_err(|e| Error::io(&blob_path, e))?;
        let mut sink = BufWriter::with_capacity(1 << 20, &blob);
        source.blob(&layer.digest, layer.size, &mut sink, &|n| {
            progress.bytes(index, n)
        })?;
        sink.flush().map_err(|e| Error::io(&blob_path, e))?;
        drop(sink);
    }
    blob.sync_all().map_err(|e| Error::io(&blob_path, e))?;
    finish_file(&blob, &blob_path)
}

/// The blob in the staging directory, by a path through the directory's
/// descriptor: whoever can rename entries of the store cannot put another
/// file in its place (the directory is ours, mode 0700).
fn pinned_blob(staging: &Staging<'_>) -> std::path::PathBuf {
    crate::safe_fs::proc_path(staging.dir.fd()).join(BLOB_FILE)
}

/// An EROFS layer: the blob is the image, once it opens as one.
fn erofs_layer(staging: &Staging<'_>, layer: &LayerRecord) -> Result<LayerInfo> {
    Image::open(&pinned_blob(staging), &OpenOptions::default()).map_err(|e| {
        Error::Invalid(format!(
            "layer {} ({}): not a usable EROFS image: {e}",
            layer.digest, layer.media_type
        ))
    })?;
    let at = Some(staging.dir.fd().as_raw_fd());
    nix::unistd::linkat(
        at,
        OsStr::new(BLOB_FILE),
        at,
        OsStr::new(IMAGE_FILE),
        nix::fcntl::AtFlags::empty(),
    )
    .map_err(|e| Error::io(staging.dir.path().join(IMAGE_FILE), e.into()))?;
    staging.made(IMAGE_FILE);
    Ok(as_fetched(layer))
}

/// What the store records of a layer kept as fetched (an EROFS-native
/// layer, a Nydus blob): its digest and size stand for both forms.
fn as_fetched(layer: &LayerRecord) -> LayerInfo {
    LayerInfo {
        compressed_digest: layer.digest.clone(),
        compressed_size: layer.size,
        diff_digest: layer.digest.clone(),
        diff_size: layer.size,
        compression: 0,
        toc_digest: None,
    }
}

/// A tar layer (plain, gzip or zstd): converted to a tar-index image with
/// the tar appended, OCI whiteouts made overlayfs ones. A blob `fetched`
/// now was checked as it streamed; one the store kept is checked here.
fn tar_layer(staging: &Staging<'_>, layer: &LayerRecord, fetched: bool) -> Result<LayerInfo> {
    let verified = fetched.then_some(layer.digest.as_str());
    let report = convert_layer(staging, &pinned_blob(staging), verified, false).map_err(|e| {
        Error::Invalid(format!(
            "layer {} ({}): converting: {e}",
            layer.digest, layer.media_type
        ))
    })?;
    let (digest, diff_digest) = super::layout::digests_of(&report, &pinned_blob(staging))?;
    if digest != layer.digest {
        return Err(Error::Invalid(format!(
            "layer {}: the store's blob has digest {digest}",
            layer.digest
        )));
    }
    Ok(LayerInfo {
        compressed_digest: layer.digest.clone(),
        compressed_size: layer.size,
        diff_digest,
        diff_size: report.tar_size,
        compression: report.compression.storage_code(),
        toc_digest: None,
    })
}
