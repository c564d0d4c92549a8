//! `mount --lazy`: EROFS-native layers read from their registry on demand,
//! through a chunk cache ([`crate::lazy::ChunkCache`]) kept in the store
//! as `STORE/lazy/sha256:<hex>` (the sparse blob) and its map
//! `sha256:<hex>.chunks`, reused by later mounts; `pull` adopting a
//! complete cache whose bytes match the layer's digest; and what `store
//! gc` removes of them.
//!
//! Nothing read this way is verified: the cache keeps what the registry
//! serves for each range (the blob's digest cannot be checked before the
//! whole blob is there).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::lazy::{CacheOptions, ChunkCache, ChunkSource, RemoteBlob};
use crate::reader::Image;
use crate::registry::manifest::LayerKind;
use crate::registry::ImageSource;
use crate::safe_fs::{self, OutputDir};

use super::images::{list, LayerRecord, Store};
use super::indexed::ARTIFACT_SUFFIXES;
use super::layout::is_layer_name;

/// The suffix of a cache's chunk map (see [`ChunkCache::open`]).
const MAP_SUFFIX: &str = ".chunks";

/// Bytes per chunk of a lazy layer's cache. An EROFS image keeps its
/// superblock at the start and its inodes and directories after the data,
/// so a mount and a first lookup read a few chunks at both ends of every
/// layer: 1 MiB chunks fetched 2.1% of a 547 MB 5-layer image (11.4 MB) and
/// took 1.6 s to the first small file on a 100 Mbit/s, 10 ms link; 128 KiB
/// chunks 0.38% and 0.6 s, sequential reads as fast (adjacent chunks are
/// fetched together, up to `max_request`). docs/benchmarks.md has the
/// figures (scripts/bench-lazy.sh).
const CHUNK_SIZE: u64 = 128 << 10;

/// The chunk cache options of lazy layers (`mount --lazy`, and `pull`
/// adopting a complete cache: a cache opened with another chunk size would
/// start empty).
pub fn cache_options() -> CacheOptions {
    CacheOptions {
        chunk_size: CHUNK_SIZE,
        ..CacheOptions::default()
    }
}

/// Opens EROFS-native `layer` as an image read from `source` on demand,
/// through its chunk cache in the store (made when absent, reused when
/// present); gives the cache too, for its counters.
pub fn open_layer(
    store: &Store,
    source: Arc<dyn ImageSource>,
    layer: &LayerRecord,
    options: &CacheOptions,
) -> Result<(Image, Arc<ChunkCache>)> {
    let digest = &layer.digest;
    if layer.kind != LayerKind::Erofs {
        return Err(Error::Unsupported(format!(
            "layer {digest} ({}): only EROFS-native layers can be read lazily",
            layer.media_type
        )));
    }
    if !is_layer_name(digest.as_bytes()) {
        return Err(Error::Invalid(format!(
            "layer {digest:?}: not a sha256 digest"
        )));
    }
    let blob = Arc::new(RemoteBlob {
        source,
        digest: digest.clone(),
        size: layer.size,
    });
    let dir = store.lazy_dir();
    let cache = ChunkCache::open(dir.fd(), dir.path(), digest, digest, blob, options)?;
    let cache = Arc::new(cache);
    let device = Device::lazy(Arc::clone(&cache))?;
    let image = Image::from_devices(device, Vec::new()).map_err(|e| match e {
        // Fetching failed: say so as it is (EIO-class, retryable).
        e @ (Error::Registry(_) | Error::Io { .. }) => e,
        e => Error::Invalid(format!(
            "layer {digest} ({}): not a usable EROFS image: {e}",
            layer.media_type
        )),
    })?;
    Ok((image, cache))
}

/// A source that fetches nothing: opening a cache over it only reads the
/// map (for [`adopt`]).
struct Offline {
    digest: String,
    len: u64,
}

impl ChunkSource for Offline {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, _: u64, _: &mut [u8]) -> Result<()> {
        Err(Error::Registry(format!("{}: not fetched", self.digest)))
    }

    fn name(&self) -> String {
        self.digest.clone()
    }
}

/// For `pull`: writes the bytes of `layer` (EROFS-native or a Nydus blob,
/// both kept as fetched) from its lazy cache to `out` (named `out_path`)
/// when the cache is complete, and says whether
/// they hash to the layer's digest (then the blob need not be fetched).
/// `false` when there is no complete cache, or its bytes do not match; `out`
/// may then hold some of them, to be discarded.
pub(crate) fn adopt(
    store: &Store,
    layer: &LayerRecord,
    out: &File,
    out_path: &Path,
) -> Result<bool> {
    use sha2::{Digest, Sha256};
    let digest = &layer.digest;
    let dir = store.lazy_dir();
    let map = format!("{digest}{MAP_SUFFIX}");
    let exists = nix::sys::stat::fstatat(
        Some(dir.fd().as_raw_fd()),
        map.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok();
    let kept_whole = matches!(layer.kind, LayerKind::Erofs | LayerKind::NydusBlob);
    if !kept_whole || !is_layer_name(digest.as_bytes()) || !exists {
        return Ok(false);
    }
    let source = Arc::new(Offline {
        digest: digest.clone(),
        len: layer.size,
    });
    // A verified layer's cache has its own key; one made for another key
    // (say, verified, while this record has no index) is left alone.
    let key = match &layer.index {
        Some(index) => super::indexed::cache_key(digest, &index.root),
        None => digest.clone(),
    };
    let options = CacheOptions {
        existing_only: true,
        ..cache_options()
    };
    let Ok(cache) = ChunkCache::open(dir.fd(), dir.path(), digest, &key, source, &options) else {
        return Ok(false);
    };
    let stats = cache.stats();
    if stats.present != stats.chunks {
        return Ok(false);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < layer.size {
        let n = (layer.size - at).min(buf.len() as u64) as usize;
        let piece = &mut buf[..n];
        let read = cache.file().read_exact_at(piece, at);
        read.map_err(|e| Error::io(cache.path(), e))?;
        hasher.update(&piece[..]);
        out.write_all_at(piece, at)
            .map_err(|e| Error::io(out_path, e))?;
        at += n as u64;
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(digest.strip_prefix("sha256:") == Some(got.as_str()))
}

/// Removes the lazy caches of layers no record in `referenced` names, or
/// that the store holds whole, unless a mount has them open (it holds a
/// shared `flock` on the map); gives how many layers' caches went. Names
/// that are not a cache's (`sha256:<hex>` or `sha256:<hex>.chunks`) are
/// not the store's: left alone. Runs under gc's exclusive store lock,
/// which `mount --lazy` shares while it opens its caches.
pub(crate) fn gc_caches(store: &Store, referenced: &BTreeSet<String>) -> Result<usize> {
    let dir = store.lazy_dir();
    let mut layers = BTreeSet::new();
    let suffixes = || ARTIFACT_SUFFIXES.into_iter().chain([MAP_SUFFIX]);
    for name in list(dir)? {
        let base = suffixes()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        if is_layer_name(base.as_bytes()) {
            layers.insert(base.to_string());
        }
    }
    let mut removed = 0;
    for layer in layers {
        if referenced.contains(&layer) && !store.has_layer(&layer) {
            continue;
        }
        let map = format!("{layer}{MAP_SUFFIX}");
        // Held until both are gone: no mount opens the cache meanwhile.
        let Some(_lock) = lock_unused(dir, &map)? else {
            continue;
        };
        remove(dir, &layer)?;
        for suffix in ARTIFACT_SUFFIXES {
            remove(dir, &format!("{layer}{suffix}"))?;
        }
        remove(dir, &map)?;
        removed += 1;
    }
    Ok(removed)
}

/// The map `name` of `dir` locked exclusively, when no process has it
/// open (`None` when one has); a missing map locks nothing but is unused.
/// A symlink or anything but a regular file there is an error.
pub(crate) fn lock_unused(dir: &OutputDir, name: &str) -> Result<Option<Option<Flock<File>>>> {
    let path = dir.path().join(name);
    let Some(file) = open_regular(dir, name)? else {
        return Ok(Some(None));
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Some(lock))),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io(&path, e.into())),
    }
}

/// The regular file `name` of `dir` opened to read, if it is there (a
/// symlink or anything but a regular file there is an error, never
/// followed).
pub(crate) fn open_regular(dir: &OutputDir, name: &str) -> Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.path().join(name);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(safe_fs::proc_path(dir.fd()).join(name));
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    match file.metadata().map_err(|e| Error::io(&path, e))?.is_file() {
        true => Ok(Some(file)),
        false => Err(Error::Invalid(format!(
            "{}: not a regular file",
            path.display()
        ))),
    }
}

/// Removes the file `name` of `dir` (gone already is fine).
fn remove(dir: &OutputDir, name: &str) -> Result<()> {
    match unlinkat(Some(dir.fd().as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(dir.path().join(name), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy::FileSource;

    /// A source serving a local file as if it were the registry's blob.
    struct Local(FileSource);

    impl ImageSource for Local {
        fn name(&self) -> String {
            "local".into()
        }
        fn manifest(&self, _: &str) -> Result<crate::registry::FetchedManifest> {
            Err(Error::Unsupported("no manifests".into()))
        }
        fn blob(&self, _: &str, _: u64, _: &mut dyn std::io::Write, _: &dyn Fn(u64)) -> Result<()> {
            Err(Error::Unsupported("no whole blobs".into()))
        }
        fn blob_range(&self, _: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            use crate::lazy::ChunkSource;
            self.0.read_at(offset, buf)
        }
    }

    fn layer(path: &std::path::Path, kind: LayerKind) -> LayerRecord {
        LayerRecord {
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: std::fs::metadata(path).unwrap().len(),
            media_type: "application/vnd.erofs.layer.v1".into(),
            kind,
            index: None,
        }
    }

    fn fixture() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.erofs")
    }

    /// A lazy layer opens from the store's cache; gc keeps the cache while
    /// it is open or referenced, and removes it once neither.
    #[test]
    fn lazy_layers_are_cached_in_the_store_and_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = fixture();
        let source = Arc::new(Local(FileSource::open(&path).unwrap()));
        let record = layer(&path, LayerKind::Erofs);
        let options = CacheOptions::default();
        let (image, cache) = open_layer(&store, source.clone(), &record, &options).unwrap();
        assert!(image.resolve(b"/").is_ok());
        assert!(cache.stats().present >= 1);
        let cached = dir.path().join("lazy").join(&record.digest);
        assert!(cached.is_file());
        let none = BTreeSet::new();
        // Open: kept though unreferenced.
        assert_eq!(gc_caches(&store, &none).unwrap(), 0);
        drop((image, cache));
        let referenced = BTreeSet::from([record.digest.clone()]);
        assert_eq!(gc_caches(&store, &referenced).unwrap(), 0);
        assert!(cached.is_file());
        // Not ours: left alone.
        std::fs::write(dir.path().join("lazy/other"), b"x").unwrap();
        assert_eq!(gc_caches(&store, &none).unwrap(), 1);
        assert!(!cached.exists());
        assert!(!dir
            .path()
            .join("lazy")
            .join(format!("{}.chunks", record.digest))
            .exists());
        assert!(dir.path().join("lazy/other").exists());
    }

    /// A blob that is no EROFS image fails to open, naming the layer, and
    /// leaves its cache for gc (no record names it).
    #[test]
    fn a_blob_that_is_no_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0x5a; 3 << 20]).unwrap();
        let source = Arc::new(Local(FileSource::open(&junk).unwrap()));
        let record = layer(&junk, LayerKind::Erofs);
        let err = open_layer(&store, source, &record, &CacheOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Invalid(_)), "{text}");
        assert!(text.contains(&record.digest) && text.contains("not a usable EROFS image"));
        assert_eq!(gc_caches(&store, &BTreeSet::new()).unwrap(), 1);
    }

    /// `pull` adopts a complete cache whose bytes match the digest, and
    /// nothing else.
    #[test]
    fn complete_caches_are_adopted_when_they_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = fixture();
        let bytes = std::fs::read(&path).unwrap();
        let mut record = layer(&path, LayerKind::Erofs);
        record.digest = crate::registry::oci_layout::sha256_digest(&bytes);
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        // No cache: none made.
        assert!(!adopt(&store, &record, &out, &out_path).unwrap());
        assert_eq!(list(store.lazy_dir()).unwrap().len(), 0);
        let source = Arc::new(Local(FileSource::open(&path).unwrap()));
        // The options mount --lazy uses, as adopt() does.
        let options = cache_options();
        let (image, cache) = open_layer(&store, source, &record, &options).unwrap();
        drop(image);
        // (Incomplete caches are tests/it/lazy_mount.rs's.)
        cache.ensure(0, cache.len()).unwrap();
        drop(cache);
        assert!(adopt(&store, &record, &out, &out_path).unwrap());
        assert_eq!(std::fs::read(&out_path).unwrap(), bytes);
        // A cached byte changed: not adopted.
        let cached = dir.path().join("lazy").join(&record.digest);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&cached)
            .unwrap();
        file.write_all_at(&[bytes[100] ^ 1], 100).unwrap();
        assert!(!adopt(&store, &record, &out, &out_path).unwrap());
    }

    #[test]
    fn only_erofs_layers_open_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = fixture();
        let source = Arc::new(Local(FileSource::open(&path).unwrap()));
        let record = layer(&path, LayerKind::TarGzip);
        let got = open_layer(&store, source, &record, &CacheOptions::default());
        assert!(matches!(got, Err(Error::Unsupported(_))));
    }
}
