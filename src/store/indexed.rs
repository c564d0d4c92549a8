//! Lazy layers described by a layer-index referrer
//! ([`crate::registry::referrers`]): the tar index, zinfo and verity tree
//! fetched whole (small) into the store's `lazy/` directory beside the
//! layer's chunk cache, and the layer's data read on demand, every chunk
//! checked against the tree before the cache keeps it.
//!
//! - EROFS-native layers: the image is the blob, read through the cache.
//! - tar layers: the tar index is the image, its device the blob.
//! - tar+gzip layers: the same, the device inflated from the blob through
//!   the zinfo (only the spans a read needs are fetched).
//!
//! The cache of a verified layer is keyed by its digest and root hash: a
//! cache filled unverified, or for another tree, is discarded, not trusted.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gzran::Zinfo;
use crate::lazy::{
    CacheOptions, CachedWindows, ChunkCache, ChunkSource, GzSource, RemoteBlob, TrustedLeaves,
    VerifiedSource, MAX_TREE,
};
use crate::reader::Image;
use crate::registry::manifest::LayerKind;
use crate::registry::referrers::{BlobRef, LayerIndex};
use crate::registry::ImageSource;
use crate::safe_fs::{self, OutputDir};

use super::images::{LayerRecord, Store};
use super::layout::is_layer_name;

/// Suffixes of the files kept beside a layer's cache for its index
/// artifact, longest first (gc removes them with the cache): the tar
/// index, the zinfo, and the tree's chunk cache and its map.
pub(crate) const ARTIFACT_SUFFIXES: [&str; 10] = [
    ".meta.tree.chunks",
    ".tree.chunks",
    ".windows.chunks",
    ".meta.chunks",
    ".meta.tree",
    ".index",
    ".zinfo",
    ".tree",
    ".windows",
    ".meta",
];
/// The tar index's cache, when read on demand: `LAYER.meta`.
const META_SUFFIX: &str = ".meta";
/// Its chunk: metadata is read a few blocks at a time.
const META_CHUNK: u64 = 16 << 10;
/// The zinfo's cache, when read on demand: `LAYER.windows`.
const WINDOWS_SUFFIX: &str = ".windows";
/// The tree's cache: `LAYER.tree`.
const TREE_SUFFIX: &str = ".tree";
/// The tree cache's chunk: 4 leaf blocks, for 2 MiB of data.
const TREE_CHUNK: u64 = 16 << 10;
/// Largest tar index fetched.
const MAX_INDEX: u64 = 1 << 30;
/// Largest zinfo fetched (the reader's own limit).
const MAX_ZINFO: u64 = crate::gzran::zinfo::MAX_FILE;

/// Opens `layer` lazily through its index artifact `index` (whose root hash
/// is `root`: the artifact's, or the one the user pinned), its data fetched
/// from `source` on demand and verified. Gives the cache too, for its
/// counters.
pub fn open_indexed_layer(
    store: &Store,
    source: Arc<dyn ImageSource>,
    layer: &LayerRecord,
    index: &LayerIndex,
    root: &[u8; 32],
    options: &CacheOptions,
) -> Result<(Image, Arc<ChunkCache>)> {
    let digest = &layer.digest;
    let named =
        |what: String| Error::Invalid(format!("layer {digest}: index {}: {what}", index.artifact));
    if index.layer != *digest || !is_layer_name(digest.as_bytes()) {
        return Err(named(format!("it describes layer {}", index.layer)));
    }
    let dir = store.lazy_dir();
    let leaves = cached_tree(
        dir,
        &source,
        &format!("{digest}{TREE_SUFFIX}"),
        &index.tree,
        root,
        index.data_size,
    )?;
    let blob: Arc<dyn ChunkSource> = Arc::new(RemoteBlob {
        source: source.clone(),
        digest: digest.clone(),
        size: layer.size,
    });
    let (data, primary): (Arc<dyn ChunkSource>, Option<Device>) = match layer.kind {
        LayerKind::Erofs => (blob, None),
        LayerKind::Tar => (blob, Some(index_device(dir, &source, digest, index)?)),
        LayerKind::TarGzip => {
            let zinfo = index
                .zinfo
                .as_ref()
                .ok_or_else(|| named("a gzip layer's index needs a zinfo".into()))?;
            let zinfo = open_zinfo(dir, &source, digest, zinfo, index.zinfo_table.as_deref())?;
            let gz = GzSource::new(blob, Arc::new(zinfo), Some(index.data_size))?;
            (
                Arc::new(gz),
                Some(index_device(dir, &source, digest, index)?),
            )
        }
        LayerKind::TarZstd | LayerKind::NydusBootstrap | LayerKind::NydusBlob => {
            return Err(Error::Unsupported(format!(
                "layer {digest} ({}): not read through a layer index",
                layer.media_type
            )))
        }
    };
    let verified = Arc::new(VerifiedSource::new(data, leaves)?);
    let key = cache_key(digest, root);
    let cache = ChunkCache::open(dir.fd(), dir.path(), digest, &key, verified, options)?;
    let cache = Arc::new(cache);
    let device = Device::lazy(Arc::clone(&cache))?;
    let opened = match primary {
        None => Image::from_devices(device, Vec::new()),
        Some(index) => Image::from_devices(index, vec![device]),
    };
    let image = opened.map_err(|e| match e {
        e @ (Error::Registry(_) | Error::Io { .. } | Error::Verity(_)) => e,
        e => Error::Invalid(format!(
            "layer {digest} ({}): not a usable EROFS image: {e}",
            layer.media_type
        )),
    })?;
    Ok((image, cache))
}

/// The verity tree `blob` (root hash `root`, over `data_len` bytes), read
/// on demand through its own chunk cache `name` in `dir`, checked against
/// the root down to the level above the leaves.
fn cached_tree(
    dir: &OutputDir,
    source: &Arc<dyn ImageSource>,
    name: &str,
    blob: &BlobRef,
    root: &[u8; 32],
    data_len: u64,
) -> Result<TrustedLeaves> {
    let shown = dir.path().join(name).display().to_string();
    if blob.size > MAX_TREE {
        return Err(Error::Invalid(format!(
            "{shown}: tree {} is {} bytes, more than {MAX_TREE}",
            blob.digest, blob.size
        )));
    }
    let remote = Arc::new(RemoteBlob {
        source: source.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    });
    let options = CacheOptions {
        chunk_size: TREE_CHUNK,
        max_request: 16 * TREE_CHUNK,
        ..CacheOptions::default()
    };
    let cache = ChunkCache::open(dir.fd(), dir.path(), name, &blob.digest, remote, &options)?;
    TrustedLeaves::cached(&shown, Arc::new(cache), root, data_len)
}

/// The tar index of a tar layer's `index` as a device: read on demand and
/// verified when the artifact has a tree for it (`LAYER.meta`, its tree
/// `LAYER.meta.tree`), else fetched whole (`LAYER.index`, its digest
/// checked).
fn index_device(
    dir: &OutputDir,
    source: &Arc<dyn ImageSource>,
    digest: &str,
    index: &LayerIndex,
) -> Result<Device> {
    let blob = index.tar_index.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "layer {digest}: index {}: a tar layer's index needs a tar index",
            index.artifact
        ))
    })?;
    let Some((tree, root)) = &index.index_tree else {
        let file = fetch_artifact(dir, source.as_ref(), digest, ".index", blob, MAX_INDEX)?;
        return Device::open(&safe_fs::proc_path(file.as_fd()), 0);
    };
    let tree_name = format!("{digest}{META_SUFFIX}{TREE_SUFFIX}");
    let leaves = cached_tree(dir, source, &tree_name, tree, root, blob.size)?;
    let remote = Arc::new(RemoteBlob {
        source: source.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    });
    let verified = Arc::new(VerifiedSource::new(remote, leaves)?);
    let options = CacheOptions {
        chunk_size: META_CHUNK,
        max_request: 16 * META_CHUNK,
        ..CacheOptions::default()
    };
    let name = format!("{digest}{META_SUFFIX}");
    let key = cache_key(&blob.digest, root);
    let cache = ChunkCache::open(dir.fd(), dir.path(), &name, &key, verified, &options)?;
    Device::lazy(Arc::new(cache))
}

/// The zinfo `blob` of a gzip layer: with its checkpoint `table` (from the
/// artifact, consistent with the blob's size), read on demand through a
/// chunk cache (`LAYER.windows`), only the windows of the spans read
/// fetched; else fetched whole (`LAYER.zinfo`).
fn open_zinfo(
    dir: &OutputDir,
    source: &Arc<dyn ImageSource>,
    digest: &str,
    blob: &BlobRef,
    table: Option<&[u8]>,
) -> Result<Zinfo> {
    use crate::gzran::zinfo::FIXED;
    let invalid =
        |name: &str, e: String| Error::Invalid(format!("{}: {e}", dir.path().join(name).display()));
    let table =
        table.filter(|t| t.len() % FIXED == 0 && blob.size == Zinfo::file_len(t.len() / FIXED));
    let Some(table) = table else {
        let name = format!("{digest}.zinfo");
        let file = fetch_artifact(dir, source.as_ref(), digest, ".zinfo", blob, MAX_ZINFO)?;
        let bytes = read_all(&file, &dir.path().join(&name))?;
        return Zinfo::parse(&bytes).map_err(|e| invalid(&name, e));
    };
    let name = format!("{digest}{WINDOWS_SUFFIX}");
    let remote = Arc::new(RemoteBlob {
        source: source.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    });
    let options = CacheOptions {
        chunk_size: 4096,
        max_request: 64 << 10,
        ..CacheOptions::default()
    };
    let cache = ChunkCache::open(dir.fd(), dir.path(), &name, &blob.digest, remote, &options)?;
    let windows = Arc::new(CachedWindows::new(Arc::new(cache), table.to_vec()));
    // The span is informational: the table's checkpoints are what count.
    Zinfo::from_table(crate::gzran::zinfo::DEFAULT_SPAN, table, windows)
        .map_err(|e| invalid(&name, e))
}

/// The file `LAYER.SUFFIX` of `dir` holding `blob` (at most `max` bytes):
/// kept from an earlier mount when its bytes still hash to the digest,
/// else fetched (checked as it streams) and put in place atomically.
fn fetch_artifact(
    dir: &OutputDir,
    source: &dyn ImageSource,
    layer: &str,
    suffix: &str,
    blob: &BlobRef,
    max: u64,
) -> Result<File> {
    let name = format!("{layer}{suffix}");
    let path = dir.path().join(&name);
    if blob.size > max {
        return Err(Error::Invalid(format!(
            "{}: {} is {} bytes, more than {max}",
            path.display(),
            blob.digest,
            blob.size
        )));
    }
    if let Some(file) = super::lazy::open_regular(dir, &name)? {
        if digest_of(&file, &path)? == blob.digest {
            return Ok(file);
        }
    }
    let temp = dir.temp_file().map_err(|e| Error::io(&path, e))?;
    let mut writer = temp.file();
    source.blob(&blob.digest, blob.size, &mut writer, &|_| {})?;
    temp.file().sync_all().map_err(|e| Error::io(&path, e))?;
    temp.persist(OsStr::new(&name), 0o600)
        .map_err(|e| Error::io(&path, e))?;
    super::lazy::open_regular(dir, &name)?
        .ok_or_else(|| Error::io(&path, std::io::ErrorKind::NotFound.into()))
}

/// `sha256:<hex>` of what `file` holds.
fn digest_of(mut file: &File, path: &std::path::Path) -> Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(format!("sha256:{}", crate::format::hex(&hasher.finalize())))
}

/// Everything in `file` (sizes bounded by the fetch).
fn read_all(file: &File, path: &std::path::Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut reader = file;
    std::io::Seek::rewind(&mut reader).map_err(|e| Error::io(path, e))?;
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The key of a verified layer's cache: a cache filled unverified (keyed
/// by the digest alone) or for another tree is discarded, not trusted.
pub(crate) fn cache_key(digest: &str, root: &[u8; 32]) -> String {
    format!("{digest} verity {}", crate::format::hex(root))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::path::Path;

    use super::*;
    use crate::lazy::tree_for_tests;
    use crate::registry::oci_layout::sha256_digest;
    use crate::registry::FetchedManifest;

    /// Blobs in memory, as a registry would serve them; range reads of the
    /// layer get the byte at `flip` inverted.
    struct Served {
        blobs: HashMap<String, Vec<u8>>,
        flip: Option<(String, usize)>,
    }

    impl ImageSource for Served {
        fn name(&self) -> String {
            "served".into()
        }
        fn manifest(&self, _: &str) -> Result<FetchedManifest> {
            Err(Error::Unsupported("no manifests".into()))
        }
        fn blob(
            &self,
            digest: &str,
            size: u64,
            sink: &mut dyn Write,
            _: &dyn Fn(u64),
        ) -> Result<()> {
            let bytes = &self.blobs[digest];
            assert_eq!(bytes.len() as u64, size);
            sink.write_all(bytes).unwrap();
            Ok(())
        }
        fn blob_range(&self, digest: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.blobs[digest][at..at + buf.len()]);
            if let Some((_, flip)) = self.flip.as_ref().filter(|(d, _)| d == digest) {
                if (at..at + buf.len()).contains(flip) {
                    buf[flip - at] ^= 0x55;
                }
            }
            Ok(())
        }
    }

    fn gunzip(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn blob_ref(served: &mut Served, bytes: Vec<u8>) -> BlobRef {
        let digest = sha256_digest(&bytes);
        let size = bytes.len() as u64;
        served.blobs.insert(digest.clone(), bytes);
        BlobRef { digest, size }
    }

    /// The fixture layer (`layer.tar.gz`) with its tar index and zinfo
    /// (mkfs.erofs's) and a tree over its tar, served; `kind` says whether
    /// the layer blob is the gzip or the tar. The gzip one's index has a
    /// tree too (read on demand), the tar one's not (fetched whole).
    fn layer(kind: LayerKind) -> (Served, LayerRecord, LayerIndex, Vec<u8>) {
        let gz = gunzip("layer.tar.gz.gz");
        let tar = gunzip("tar-index.tar.gz");
        let (tree, root) = tree_for_tests(&tar);
        let mut served = Served {
            blobs: HashMap::new(),
            flip: None,
        };
        let data = if kind == LayerKind::TarGzip {
            gz
        } else {
            tar.clone()
        };
        let layer = blob_ref(&mut served, data);
        let index_tree = match kind {
            LayerKind::TarGzip => {
                let (tree, root) = tree_for_tests(&gunzip("tar-index.erofs.gz"));
                Some((blob_ref(&mut served, tree), root))
            }
            _ => None,
        };
        let index = LayerIndex {
            artifact: format!("sha256:{}", "cd".repeat(32)),
            layer: layer.digest.clone(),
            data_size: tar.len() as u64,
            tar_index: Some(blob_ref(&mut served, gunzip("tar-index.erofs.gz"))),
            zinfo: Some(blob_ref(&mut served, gunzip("tar-index-gz.zinfo.gz"))),
            tree: blob_ref(&mut served, tree),
            root,
            zinfo_table: None,
            index_tree,
        };
        let record = LayerRecord {
            digest: layer.digest,
            size: layer.size,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            kind,
            index: Some(index.clone()),
        };
        (served, record, index, tar)
    }

    /// The tree of the tar index over the tar, opened from local files.
    fn expected(tar: &[u8]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let (index, tar_path) = (dir.path().join("index"), dir.path().join("tar"));
        std::fs::write(&index, gunzip("tar-index.erofs.gz")).unwrap();
        std::fs::write(&tar_path, tar).unwrap();
        let options = crate::OpenOptions {
            devices: vec![tar_path],
            ..Default::default()
        };
        crate::manifest::manifest(&Image::open(&index, &options).unwrap()).unwrap()
    }

    #[test]
    fn tar_and_gzip_layers_read_lazily_equal_the_local_tree() {
        for kind in [LayerKind::TarGzip, LayerKind::Tar] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let (served, record, index, tar) = layer(kind);
            let source = Arc::new(served);
            let options = CacheOptions::default();
            let open = |source: Arc<Served>| {
                open_indexed_layer(&store, source, &record, &index, &index.root, &options)
            };
            let (image, cache) = open(source.clone()).unwrap();
            assert_eq!(
                crate::manifest::manifest(&image).unwrap(),
                expected(&tar),
                "{kind:?}"
            );
            assert_eq!(cache.stats().present, cache.stats().chunks);
            drop((image, cache));
            // Reopened: the artifacts and the chunks are reused.
            let (_image, cache) = open(source).unwrap();
            assert_eq!(cache.stats().present, cache.stats().chunks);
            // Another root hash: refused before anything is read.
            let mut wrong = index.root;
            wrong[5] ^= 1;
            let source = Arc::new(layer(kind).0);
            let got = open_indexed_layer(&store, source, &record, &index, &wrong, &options);
            assert!(matches!(got, Err(Error::Verity(_))), "{kind:?}");
        }
    }

    /// A registry serving one altered byte of a verified layer: reading the
    /// file there fails (EIO), every other file reads right, and the
    /// altered bytes are not cached.
    #[test]
    fn altered_bytes_are_refused_not_served() {
        for kind in [LayerKind::Tar, LayerKind::TarGzip] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let (mut served, record, index, tar) = layer(kind);
            // A byte in the middle of the layer.
            let at = (record.size / 2) as usize;
            served.flip = Some((record.digest.clone(), at));
            let options = CacheOptions {
                chunk_size: 4096,
                ..CacheOptions::default()
            };
            let source = Arc::new(served);
            let opened = open_indexed_layer(&store, source, &record, &index, &index.root, &options);
            let (image, cache) = opened.unwrap();
            let got = crate::manifest::manifest(&image);
            assert!(matches!(got, Err(Error::Verity(_))), "{kind:?}: {got:?}");
            assert!(cache.stats().present < cache.stats().chunks, "{kind:?}");
            // The tar's own bytes of the good chunks are what the cache has.
            for chunk in 0..cache.stats().chunks {
                if cache.is_present(chunk) {
                    let start = (chunk * 4096) as usize;
                    let end = (start + 4096).min(tar.len());
                    let mut kept = vec![0; end - start];
                    std::os::unix::fs::FileExt::read_exact_at(
                        cache.file(),
                        &mut kept,
                        start as u64,
                    )
                    .unwrap();
                    assert_eq!(kept, tar[start..end], "{kind:?} chunk {chunk}");
                }
            }
        }
    }

    /// A tar index read on demand is verified like the data: a byte of it
    /// served altered fails the open, nothing is shown.
    #[test]
    fn an_altered_tar_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut served, record, index, _) = layer(LayerKind::TarGzip);
        let blob = index.tar_index.clone().unwrap();
        // In the superblock (at 1024): the image cannot open.
        served.flip = Some((blob.digest, 1100));
        let opened = open_indexed_layer(
            &store,
            Arc::new(served),
            &record,
            &index,
            &index.root,
            &CacheOptions::default(),
        );
        let err = opened.err().unwrap();
        assert!(matches!(err, Error::Verity(_)), "{err}");
    }
}
