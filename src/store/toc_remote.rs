//! Lazy TOC layers (issue 22): a zstd:chunked or eStargz layer fetched
//! from the registry the looked-up reference names, only its footer and
//! TOC, the TOC checked against its digest before anything is written;
//! its metadata EROFS built from the TOC alone
//! ([`crate::convert::toc`]), its files read on demand through
//! [`TocSource`] (each chunk checked against the TOC's digest before the
//! cache keeps it).
//!
//! ```text
//! STORE/toc-lazy/<key>/layer.erofs  metadata image, device 1 virtual
//!                     /info         containers/storage's Layer
//!                     /toc.json     the TOC (to rebuild the map)
//!                     /lazy         where it came from (LazyRecord)
//! STORE/lazy/<key>.toc{,.chunks}    the uncompressed device's cache
//! STORE/lazy/<key>.tocblob{,.chunks} the blob's (for `blob`)
//! ```
//!
//! `<key>` is [`lazy_key`]: `sha256:` of "REGISTRY/REPOSITORY\0TOC-DIGEST",
//! what was checked (the TOC) and where it came from; a lookup of the
//! same TOC digest under another repository fetches its own TOC and never
//! reads data through this one. Lazy layers live apart from whole ones
//! (`STORE/<digest>/`), so `pull` and `mount` never take one for a layer
//! they hold, and have no `STORE/toc/` pointer (that is `store add`'s,
//! shared by every reference).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::images::Store;
use super::layout::{self, Staging};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::lazy::{CacheOptions, ChunkCache, ChunkSource, RemoteBlob, TocMap, TocSource};
use crate::reader::Image;
use crate::registry::manifest::{parse_config, Platform};
use crate::registry::{ClientOptions, FetchedManifest, ImageSource, Reference};
use crate::safe_fs::{self, OutputDir};
use crate::toc::{self, BlobReader, Format, Toc};

/// The store's directory of lazy TOC layers.
pub const LAZY_TOC_DIR: &str = "toc-lazy";
/// A lazy layer's record of where it came from.
pub const RECORD_FILE: &str = "lazy";
/// A lazy layer's TOC.
pub const TOC_FILE: &str = "toc.json";
/// Suffix of the uncompressed device's cache in `STORE/lazy`.
pub const DEVICE_SUFFIX: &str = ".toc";
/// Suffix of the blob's cache in `STORE/lazy`.
pub const BLOB_SUFFIX: &str = ".tocblob";
/// Bytes of the blob's end read at once: the footer, and the TOC when it
/// is smaller (one request for both, most often).
const TAIL: u64 = 256 << 10;
/// Chunk size of the blob's cache.
const BLOB_CHUNK: u64 = 128 << 10;
/// How long resolving an image (its manifests) may take, and then fetching
/// a layer's config and TOC, retries included: a trickling registry cannot
/// hold a fetch (and the FUSE thread doing it) longer.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(45);
/// Largest lazy layer record read.
const MAX_RECORD: u64 = 1 << 16;
/// Default of `--max-lazy-layers`.
pub const DEFAULT_MAX_LAZY_LAYERS: usize = 256;

/// The flag containers/image sets on a layer pulled by TOC digest: its
/// uncompressed digest as the image config says, untrusted
/// (containers/image storage/storage_src.go, `expectedLayerDiffIDFlag`).
pub const EXPECTED_DIFF_ID: &str = "expected-layer-diffid";

/// A lazy layer's `info`: what stargz-store gives for a layer found by TOC
/// digest (store/manager.go `genLayerInfo`). No `diff-digest` nor
/// `compressed-diff-digest`: neither the tar nor the blob is read whole,
/// so neither digest is checked, and containers/storage would index the
/// layer by them for other pulls; the config's diffID goes in `flags`, as
/// containers/image records it for layers it pulls by TOC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocLayerInfo {
    /// The blob's size (the manifest's).
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    /// -1: unknown.
    #[serde(rename = "diff-size")]
    pub diff_size: i64,
    /// containers/storage's code: 2 gzip (eStargz), 4 zstd.
    pub compression: u8,
    /// The TOC digest podman looked the layer up by.
    #[serde(rename = "toc-digest")]
    pub toc_digest: String,
    /// `expected-layer-diffid`, when the config gives one.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flags: std::collections::BTreeMap<String, String>,
}

/// How `store serve` reaches registries for lazy TOC layers.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// TLS, credentials, plain http: as `pull` (`--creds` for the
    /// registries of `fetch_from` only).
    pub client: ClientOptions,
    /// The platform to take from an index (default: the host's).
    pub platform: Option<Platform>,
    /// The only registries asked (`--fetch-from`), as references name
    /// them; empty: none (lazy layers serve what their caches hold).
    pub fetch_from: Vec<String>,
    /// Most lazy layers this server creates (`--max-lazy-layers`).
    pub max_lazy_layers: usize,
}

impl Remote {
    /// Whether registry `registry` (as a parsed reference names it) may
    /// be asked.
    pub fn allows(&self, registry: &str) -> bool {
        self.fetch_from.iter().any(|r| r == registry)
    }

    /// The source for `reference`: its registry if allowed, else one that
    /// fails every fetch (no network call); with `deadline`, every request
    /// done by then.
    fn source(
        &self,
        reference: &Reference,
        deadline: Option<std::time::Instant>,
    ) -> Result<Arc<dyn ImageSource>> {
        if !self.allows(&reference.registry) {
            return Ok(Arc::new(Offline(reference.to_string())));
        }
        Ok(Arc::from(match deadline {
            Some(at) => crate::registry::open_until(reference, &self.client, at)?,
            None => crate::registry::open(reference, &self.client)?,
        }))
    }

    /// [`Self::source`] whose requests end within [`FETCH_DEADLINE`].
    fn source_for_fetch(&self, reference: &Reference) -> Result<Arc<dyn ImageSource>> {
        self.source(reference, Some(std::time::Instant::now() + FETCH_DEADLINE))
    }
}

/// The registry `text` names (`--fetch-from`), as a reference parsed with
/// it would name it (`docker.io` for the default one).
pub fn registry_name(text: &str) -> Result<String> {
    let parsed = Reference::parse(&format!("{text}/x:1")).ok();
    match parsed {
        Some(r) if r.registry == text => Ok(r.registry),
        _ => Err(Error::Invalid(format!(
            "--fetch-from {text:?}: not a registry name (HOST[:PORT], e.g. docker.io, \
             localhost:5000)"
        ))),
    }
}

/// The name of the lazy layer of TOC digest `toc_digest` fetched from
/// `reference`'s repository: `sha256:` of "REGISTRY/REPOSITORY\0TOC".
pub fn lazy_key(reference: &Reference, toc_digest: &str) -> String {
    let keyed = format!("{}\0{toc_digest}", reference.name());
    crate::registry::oci_layout::sha256_digest(keyed.as_bytes())
}

/// Where a lazy layer came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyRecord {
    /// The layer's (compressed) digest, as the manifest gives it (not
    /// checked: the blob is never read whole).
    pub digest: String,
    /// The image reference it was found under (normalized).
    pub reference: String,
    /// `zstd:chunked` or `estargz`.
    pub format: String,
    /// The TOC digest.
    pub toc_digest: String,
    /// The blob's size.
    pub blob_size: u64,
    /// Where file data ends in the blob.
    pub data_end: u64,
    /// The uncompressed device's size.
    pub device_size: u64,
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::ZstdChunked => "zstd:chunked",
        Format::Estargz => "estargz",
    }
}

/// The directory of lazy layer `key` ([`lazy_key`]).
pub fn layer_dir(store: &Path, key: &str) -> PathBuf {
    store.join(LAZY_TOC_DIR).join(key)
}

/// The image reference containers/storage passes (`SrcRef.String()`:
/// `registry/repo:tag` or `...@sha256:`; `docker://` or `//` tolerated).
pub fn parse_reference(text: &str) -> Result<Reference> {
    let text = text
        .strip_prefix("docker:")
        .filter(|t| t.starts_with("//"))
        .unwrap_or(text);
    Reference::parse(text.strip_prefix("//").unwrap_or(text))
}

/// A remote blob read through a cached tail (the footer and TOC of a
/// TOC layer sit at its end).
struct Tail<'a> {
    blob: &'a RemoteBlob,
    start: u64,
    bytes: OnceLock<std::result::Result<Vec<u8>, String>>,
}

impl BlobReader for Tail<'_> {
    fn size(&self) -> u64 {
        self.blob.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset >= self.start {
            let tail = self.bytes.get_or_init(|| {
                let mut bytes = vec![0u8; (self.blob.size - self.start) as usize];
                self.blob
                    .read_at(self.start, &mut bytes)
                    .map(|()| bytes)
                    .map_err(|e| e.to_string())
            });
            let tail = tail.as_ref().map_err(|e| Error::Registry(e.clone()))?;
            let at = (offset - self.start) as usize;
            let piece = tail.get(at..at + buf.len()).ok_or_else(|| {
                Error::corrupt(format!("{}: read past its end", self.blob.name()))
            })?;
            buf.copy_from_slice(piece);
            return Ok(());
        }
        self.blob.read_at(offset, buf)
    }
}

/// The layer of `manifest` whose TOC-digest annotation is `toc_digest`:
/// (its index, descriptor digest, size).
fn find_layer(
    manifest: &oci_spec::image::ImageManifest,
    toc_digest: &str,
) -> Option<(usize, String, u64)> {
    manifest.layers().iter().enumerate().find_map(|(i, d)| {
        let notes = d.annotations().as_ref()?;
        let ours = [toc::ZSTD_CHUNKED_ANNOTATION, toc::ESTARGZ_ANNOTATION]
            .iter()
            .any(|k| notes.get(*k).map(String::as_str) == Some(toc_digest));
        ours.then(|| (i, d.digest().to_string(), d.size()))
    })
}

/// The diffID the image config gives layer `i`, if it can be read.
fn diff_id(
    source: &dyn ImageSource,
    manifest: &oci_spec::image::ImageManifest,
    i: usize,
    name: &str,
) -> Option<String> {
    let config = manifest.config();
    if config.size() > crate::registry::MAX_MANIFEST_SIZE {
        return None;
    }
    let mut bytes = Vec::new();
    let digest = config.digest().to_string();
    source
        .blob(&digest, config.size(), &mut bytes, &|_| {})
        .ok()?;
    if crate::registry::oci_layout::sha256_digest(&bytes) != digest {
        return None;
    }
    let parsed = parse_config(&bytes, name).ok()?;
    parsed.rootfs().diff_ids().get(i).cloned()
}

/// An image reference resolved: its manifest (the view keeps it a while,
/// so lookups of an image's layers fetch it once).
pub struct Resolved {
    /// The normalized reference.
    pub name: String,
    /// The platform's image manifest.
    pub manifest: oci_spec::image::ImageManifest,
}

impl Resolved {
    /// Whether `digest` is one of the image's layer digests (a lookup by
    /// compressed digest, as podman 4 makes, not by TOC digest).
    pub fn has_layer(&self, digest: &str) -> bool {
        self.manifest
            .layers()
            .iter()
            .any(|d| d.digest().to_string() == digest)
    }
}

/// Resolves `reference` in its registry as `pull` does (an index to the
/// platform's manifest), within [`FETCH_DEADLINE`]; a registry not
/// allowed is an error, before any network call.
pub fn resolve(remote: &Remote, reference: &str) -> Result<Resolved> {
    let parsed = parse_reference(reference)?;
    let name = parsed.to_string();
    if !remote.allows(&parsed.registry) {
        return Err(Error::Registry(format!(
            "{name}: registry {} is not one of --fetch-from",
            parsed.registry
        )));
    }
    let source = remote.source_for_fetch(&parsed)?;
    let image = super::images::ImageRef::Registry(parsed);
    let options = super::pull::PullOptions {
        platform: remote.platform.clone(),
        threads: 1,
        lazy: true,
        prefer_nydus: false,
    };
    let resolved = super::pull::resolve(&image, source.as_ref(), &options, &name)?;
    Ok(Resolved {
        name,
        manifest: resolved.manifest,
    })
}

/// Fetches the TOC layer of `image` whose TOC digest is `toc_digest` into
/// the store as `STORE/toc-lazy/<key>` (see the module doc), under the
/// store's shared lock as `pull` (so `gc` never removes it half-written).
/// `Ok(None)`: the image has no such layer. Nothing is written unless the
/// TOC matches its digest and builds. Gives the blob's digest.
pub fn fetch(
    store: &Store,
    remote: &Remote,
    image: &Resolved,
    toc_digest: &str,
) -> Result<Option<String>> {
    let name = &image.name;
    let parsed = parse_reference(name)?;
    let key = lazy_key(&parsed, toc_digest);
    // A source of its own: the image's may be a minute old, its deadline
    // past.
    let source = &remote.source_for_fetch(&parsed)?;
    let Some((index, digest, size)) = find_layer(&image.manifest, toc_digest) else {
        return Ok(None);
    };
    if !layout::is_layer_name(digest.as_bytes()) {
        return Err(Error::Invalid(format!(
            "{name}: layer digest {digest:?} is not sha256"
        )));
    }
    let blob = RemoteBlob {
        source: source.clone(),
        digest: digest.clone(),
        size,
    };
    let tail = Tail {
        blob: &blob,
        start: size.saturating_sub(TAIL),
        bytes: OnceLock::new(),
    };
    let shown = PathBuf::from(format!("{name}@{digest}"));
    let format = toc::detect_in(&tail)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{}: neither zstd:chunked nor eStargz (no footer)",
            shown.display()
        ))
    })?;
    // The digest is checked before the TOC is parsed.
    let (toc, json) = toc::read_json_in(&shown, &tail, format, toc_digest)?;
    let map = TocMap::new(&toc).map_err(|e| Error::Invalid(format!("{}: {e}", shown.display())))?;
    let record = LazyRecord {
        digest: digest.clone(),
        reference: name.clone(),
        format: format_name(format).into(),
        toc_digest: toc_digest.into(),
        blob_size: size,
        data_end: toc.data_end,
        device_size: map.size,
    };
    let mut flags = std::collections::BTreeMap::new();
    if let Some(diff_id) = diff_id(source.as_ref(), &image.manifest, index, name) {
        flags.insert(EXPECTED_DIFF_ID.to_string(), diff_id);
    }
    let info = TocLayerInfo {
        compressed_size: size,
        diff_size: -1,
        compression: match format {
            Format::ZstdChunked => crate::convert::Compression::Zstd,
            Format::Estargz => crate::convert::Compression::Gzip,
        }
        .storage_code(),
        toc_digest: toc_digest.into(),
        flags,
    };
    let _lock = store.lock(false)?;
    write_layer(store, &key, (&toc, &map, &json), &record, &info)?;
    Ok(Some(digest))
}

/// Writes lazy layer `key`'s directory (staged, published whole).
fn write_layer(
    store: &Store,
    key: &str,
    (toc, map, json): (&Toc, &TocMap, &[u8]),
    record: &LazyRecord,
    info: &TocLayerInfo,
) -> Result<()> {
    let dir = super::images::subdir(&store.root, LAZY_TOC_DIR)?;
    let staging = Staging::create(&dir, "lazytoc")?;
    let image_path = staging.dir.path().join(layout::IMAGE_FILE);
    let image = staging.create_file(layout::IMAGE_FILE)?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(toc.digest.as_bytes())[..16]);
    crate::convert::toc::write_image(
        toc,
        map,
        image.try_clone().map_err(|e| Error::io(&image_path, e))?,
        uuid,
    )?;
    image.sync_all().map_err(|e| Error::io(&image_path, e))?;
    layout::finish_file(&image, &image_path)?;
    layout::write_small(&staging, TOC_FILE, json)?;
    let record_json = serde_json::to_vec(record).map_err(|e| Error::Invalid(e.to_string()))?;
    layout::write_small(&staging, RECORD_FILE, &record_json)?;
    let info_json = serde_json::to_vec(info).map_err(|e| Error::Invalid(e.to_string()))?;
    layout::write_small(&staging, layout::INFO_FILE, &info_json)?;
    if !staging.publish(key)? {
        tracing::info!("{}: already there", dir.path().join(key).display());
    }
    Ok(())
}

/// A registry that is not asked (not in `--fetch-from`): every fetch
/// fails.
struct Offline(String);

impl ImageSource for Offline {
    fn name(&self) -> String {
        self.0.clone()
    }
    fn manifest(&self, _: &str) -> Result<FetchedManifest> {
        Err(Error::Registry(format!("{}: offline", self.0)))
    }
    fn blob(&self, _: &str, _: u64, _: &mut dyn Write, _: &dyn Fn(u64)) -> Result<()> {
        Err(Error::Registry(format!("{}: offline", self.0)))
    }
    fn blob_range(&self, _: &str, _: u64, _: &mut [u8]) -> Result<()> {
        Err(Error::Registry(format!("{}: offline", self.0)))
    }
}

/// A lazy layer, opened.
pub struct Opened {
    /// Its tree (the metadata image over the lazy device).
    pub image: Image,
    /// The blob, read through its cache.
    pub blob: Arc<ChunkCache>,
    /// Its info as stored.
    pub info: Vec<u8>,
    /// Its TOC digest.
    pub toc_digest: String,
}

/// A lazy layer's files, read and checked against each other and its
/// name.
struct Stored {
    record: LazyRecord,
    toc: Toc,
    info: Vec<u8>,
}

/// Reads lazy layer `key`'s record, TOC and info (never through a
/// symlink), checking they describe the layer [`lazy_key`] names `key`.
fn read_stored(store: &Store, key: &str) -> Result<Stored> {
    let path = layer_dir(store.path(), key);
    let shown = |e: String| Error::Invalid(format!("{}: {e}", path.display()));
    let open = |dir: &OutputDir, name: &str| {
        let at = dir.path().join(name);
        safe_fs::open_dir_at(dir.fd(), OsStr::new(name))
            .map(|fd| OutputDir::from_fd(fd, at.clone()))
            .map_err(|e| Error::io(&at, e))
    };
    let dir = open(&open(&store.root, LAZY_TOC_DIR)?, key)?;
    let read = |name: &str, max: u64| super::images::read_small(&dir, name, max);
    let record: LazyRecord = serde_json::from_slice(&read(RECORD_FILE, MAX_RECORD)?)
        .map_err(|e| shown(format!("{RECORD_FILE}: {e}")))?;
    let reference = parse_reference(&record.reference)?;
    if lazy_key(&reference, &record.toc_digest) != key
        || !layout::is_layer_name(record.digest.as_bytes())
    {
        return Err(shown("its record describes another layer".into()));
    }
    let format = match record.format.as_str() {
        "zstd:chunked" => Format::ZstdChunked,
        "estargz" => Format::Estargz,
        other => return Err(shown(format!("format {other:?}"))),
    };
    let json = read(TOC_FILE, toc::MAX_TOC_SIZE)?;
    let toc = toc::from_json(
        &path.join(TOC_FILE),
        &json,
        format,
        &record.toc_digest,
        record.data_end,
    )?;
    let info = read(layout::INFO_FILE, layout::MAX_INFO_SIZE)?;
    let parsed: TocLayerInfo =
        serde_json::from_slice(&info).map_err(|e| shown(format!("{}: {e}", layout::INFO_FILE)))?;
    if parsed.toc_digest != record.toc_digest {
        return Err(shown("its info describes another layer".into()));
    }
    Ok(Stored { record, toc, info })
}

/// Opens lazy layer `key` of `store` (made by [`fetch`], now or by an
/// earlier server), its data read from the registry its record names if
/// `remote` allows it, else from its caches only. A layer without file
/// data (only directories, whiteouts, empty files) has no device 1.
pub fn open(store: &Store, remote: &Remote, key: &str) -> Result<Opened> {
    let dir = layer_dir(store.path(), key);
    let Stored { record, toc, info } = read_stored(store, key)?;
    let map = TocMap::new(&toc).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    if map.size != record.device_size {
        return Err(Error::Invalid(format!(
            "{}: the TOC maps {} bytes, the record says {}",
            dir.display(),
            map.size,
            record.device_size
        )));
    }
    let blob = Arc::new(RemoteBlob {
        source: remote.source(&parse_reference(&record.reference)?, None)?,
        digest: record.digest.clone(),
        size: record.blob_size,
    });
    let lazy = store.lazy_dir();
    let devices = if map.size == 0 {
        Vec::new()
    } else {
        let align = map.align;
        let device_options = CacheOptions {
            chunk_size: align,
            max_request: (8u64 << 20).max(align),
            ..CacheOptions::default()
        };
        let device = ChunkCache::open(
            lazy.fd(),
            lazy.path(),
            &format!("{key}{DEVICE_SUFFIX}"),
            &format!("{key} toc {}", record.toc_digest),
            Arc::new(TocSource::new(blob.clone(), Arc::new(map))),
            &device_options,
        )?;
        vec![Device::lazy(Arc::new(device))?]
    };
    let blob_options = CacheOptions {
        chunk_size: BLOB_CHUNK,
        ..CacheOptions::default()
    };
    let blob_source: Arc<dyn ChunkSource> = blob;
    let blob_cache = ChunkCache::open(
        lazy.fd(),
        lazy.path(),
        &format!("{key}{BLOB_SUFFIX}"),
        &format!("{key} blob {}", record.digest),
        blob_source,
        &blob_options,
    )?;
    let primary = Device::open(&dir.join(layout::IMAGE_FILE), 0)?;
    let image = Image::from_devices(primary, devices)?;
    Ok(Opened {
        image,
        blob: Arc::new(blob_cache),
        info,
        toc_digest: record.toc_digest,
    })
}

#[cfg(test)]
mod tests;
