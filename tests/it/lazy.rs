//! Lazy devices: an image read through a chunk cache filled on demand
//! equals the image read directly, and reading one small file fetches a
//! few chunks. The privileged tier does it over a real registry.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use erofs_fuse::device::Device;
use erofs_fuse::lazy::{CacheOptions, ChunkCache, ChunkSource, FileSource};
use erofs_fuse::Image;

use crate::common::{fixture, FIXTURES};

/// A source counting the requests it serves.
struct Counted<S> {
    inner: S,
    requests: AtomicU64,
}

impl<S: ChunkSource> ChunkSource for Counted<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> erofs_fuse::Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(offset, buf)
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

/// A directory to keep caches in, open.
fn cache_dir() -> (tempfile::TempDir, OwnedFd) {
    let dir = tempfile::tempdir().unwrap();
    let fd = std::fs::File::open(dir.path()).unwrap().into();
    (dir, fd)
}

/// Small chunks, so that reads of small files stand out from the image.
pub fn small_chunks(chunk_size: u64) -> CacheOptions {
    CacheOptions {
        chunk_size,
        max_request: 16 * chunk_size,
        max_in_flight: 4,
        wait_timeout: Duration::from_secs(60),
        ..CacheOptions::default()
    }
}

/// An image read through a cache of `source` in `dir`, and the cache.
pub fn lazy_image(
    dir: &Path,
    fd: &OwnedFd,
    source: Arc<dyn ChunkSource>,
    options: &CacheOptions,
) -> (Image, Arc<ChunkCache>) {
    let cache = ChunkCache::open(fd.as_fd(), dir, "blob", "key", source, options).unwrap();
    let cache = Arc::new(cache);
    let device = Device::lazy(Arc::clone(&cache)).unwrap();
    (Image::from_devices(device, Vec::new()).unwrap(), cache)
}

/// Reads `path` of `image` whole.
pub fn read_file(image: &Image, path: &str) -> Vec<u8> {
    let inode = image.resolve(path.as_bytes()).unwrap();
    let mut buf = vec![0; inode.size as usize];
    let n = image.read_at(&inode, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn lazy_images_read_as_the_images() {
    for name in ["plain-4k.erofs", "lz4.erofs", "chunked-16k.erofs"] {
        let f = FIXTURES.iter().find(|f| f.image == name).unwrap();
        let path = fixture(f.image);
        let (dir, fd) = cache_dir();
        let source = Arc::new(Counted {
            inner: FileSource::open(&path).unwrap(),
            requests: AtomicU64::new(0),
        });
        let (image, cache) = lazy_image(dir.path(), &fd, source.clone(), &small_chunks(4096));
        let direct = crate::common::open_fixture(f);
        let got = erofs_fuse::manifest::manifest(&image).unwrap();
        assert_eq!(
            got,
            erofs_fuse::manifest::manifest(&direct).unwrap(),
            "{name}"
        );
        let stats = cache.stats();
        assert_eq!(stats.requests, source.requests.load(Ordering::SeqCst));
        assert!(stats.bytes <= cache.len(), "{name}: {stats:?}");
        drop(image);
        // Reopened: everything read before comes from the cache file.
        let before = source.requests.load(Ordering::SeqCst);
        let (image, _) = lazy_image(dir.path(), &fd, source.clone(), &small_chunks(4096));
        assert_eq!(erofs_fuse::manifest::manifest(&image).unwrap(), got);
        assert_eq!(
            source.requests.load(Ordering::SeqCst),
            before,
            "{name}: refetched"
        );
    }
}

#[test]
fn one_small_file_fetches_a_few_chunks() {
    let path = fixture("plain-4k.erofs");
    let (dir, fd) = cache_dir();
    let source = Arc::new(FileSource::open(&path).unwrap());
    let (image, cache) = lazy_image(dir.path(), &fd, source, &small_chunks(4096));
    assert_eq!(read_file(&image, "/hard/one").len(), 10);
    let stats = cache.stats();
    eprintln!("one small file: {stats:?}");
    assert!(stats.present <= 8, "{stats:?}");
    assert!(stats.bytes <= 8 * 4096, "{stats:?}");
}

/// A lazy device refuses a verity tree (checked on the map, where nothing
/// fetches first), and reads past its end fail.
#[test]
fn lazy_devices_check_their_bounds() {
    let path = fixture("plain-4k.erofs");
    let (dir, fd) = cache_dir();
    let source = Arc::new(FileSource::open(&path).unwrap());
    let cache = ChunkCache::open(
        fd.as_fd(),
        dir.path(),
        "blob",
        "k",
        source,
        &small_chunks(4096),
    );
    let device = Device::lazy(Arc::new(cache.unwrap())).unwrap();
    assert!(device.slice(device.len(), 1).is_err());
    assert_eq!(
        device.slice(0, 4).unwrap(),
        &std::fs::read(&path).unwrap()[..4]
    );
    let sub = device.subrange(4096, 8192).unwrap();
    assert_eq!(
        sub.slice(0, 8192).unwrap(),
        &std::fs::read(&path).unwrap()[4096..12288]
    );
}

#[cfg(feature = "privileged")]
mod registry {
    use super::*;
    use crate::common::registry::{self, sha256, write_oci_layout, Layer, Registry, Variant};
    use erofs_fuse::lazy::RemoteBlob;
    use erofs_fuse::registry::Reference;

    /// An EROFS image pushed as a layer blob, read through a lazy device
    /// over range requests, equals the local image; one small file costs a
    /// few chunks.
    #[test]
    fn a_registry_blob_read_lazily_equals_the_image() {
        if !registry::available("a_registry_blob_read_lazily_equals_the_image") {
            return;
        }
        let f = FIXTURES
            .iter()
            .find(|f| f.image == "plain-4k.erofs")
            .unwrap();
        let bytes = std::fs::read(fixture(f.image)).unwrap();
        let digest = sha256(&bytes);
        let layout = tempfile::tempdir().unwrap();
        write_oci_layout(
            layout.path(),
            &[Layer {
                media_type: "application/vnd.erofs.layer.v1".into(),
                bytes: bytes.clone(),
                diff_id: None,
            }],
        );
        let reg = Registry::start(Variant::Http);
        reg.push_oci_layout(layout.path(), "lazy/app:1");
        let reference = Reference::parse(&reg.reference("lazy/app:1")).unwrap();
        let blob = || -> Arc<dyn ChunkSource> {
            Arc::new(RemoteBlob {
                source: Arc::from(erofs_fuse::registry::open(&reference, &reg.options()).unwrap()),
                digest: digest.clone(),
                size: bytes.len() as u64,
            })
        };
        let chunk = 64 << 10;
        let ranges = || reg.log().lines().filter(|l| l.contains("\" 206 ")).count();

        // One small file, from a fresh cache.
        let (dir, fd) = cache_dir();
        let (image, cache) = lazy_image(dir.path(), &fd, blob(), &small_chunks(chunk));
        let direct = crate::common::open_fixture(f);
        assert_eq!(
            read_file(&image, "/hard/one"),
            read_file(&direct, "/hard/one")
        );
        let stats = cache.stats();
        eprintln!(
            "one small file over the registry: {stats:?}, {} range requests",
            ranges()
        );
        assert!(stats.bytes <= 4 * chunk, "{stats:?}");
        assert!(
            ranges() as u64 <= stats.requests && stats.requests >= 1,
            "{stats:?}"
        );

        // The whole tree, equal to the local image's.
        let want = erofs_fuse::manifest::manifest(&direct).unwrap();
        assert_eq!(erofs_fuse::manifest::manifest(&image).unwrap(), want);
        let fetched = ranges();
        eprintln!(
            "whole tree over the registry: {:?}, {fetched} range requests",
            cache.stats()
        );
        drop((image, cache));

        // A second cache over the same files fetches nothing.
        let (image, cache) = lazy_image(dir.path(), &fd, blob(), &small_chunks(chunk));
        assert_eq!(erofs_fuse::manifest::manifest(&image).unwrap(), want);
        assert_eq!(cache.stats().requests, 0);
        assert_eq!(ranges(), fetched);
    }
}
