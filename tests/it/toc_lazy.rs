//! Lazy TOC layers (issue 22, from the registry), fast tier: the metadata
//! image built from the TOC alone, over the virtual device `TocSource`
//! decodes from the blob, is the tree `store add` converts from the whole
//! tar; a frame that does not decode to its chunk digest fails its file
//! only (EIO), is fetched twice, and is never cached.

use std::path::Path;
use std::sync::Arc;

use erofs_fuse::device::Device;
use erofs_fuse::lazy::{CacheOptions, ChunkCache, ChunkSource, FileSource, TocMap, TocSource};
use erofs_fuse::safe_fs::OutputDir;
use erofs_fuse::store::toc_layers;
use erofs_fuse::{toc, Image};

use crate::toc_store::{gen, items, layer_manifest, CHUNK, FIXTURE_LAYERS};

/// The lazy image of `blob` (its TOC digest `digest`) in `dir`: the image,
/// its source and its cache.
fn lazy_image(dir: &Path, blob: &Path, digest: &str) -> (Image, Arc<TocSource>, Arc<ChunkCache>) {
    let format = toc::detect(blob).unwrap().unwrap();
    let toc = toc::read(blob, format, digest).unwrap();
    let map = Arc::new(TocMap::new(&toc).unwrap());
    let image_path = dir.join("meta.erofs");
    let out = std::fs::File::create(&image_path).unwrap();
    erofs_fuse::convert::toc::write_image(&toc, &map, out, [7; 16]).unwrap();
    let file: Arc<dyn ChunkSource> = Arc::new(FileSource::open(blob).unwrap());
    let source = Arc::new(TocSource::new(file, map.clone()));
    let cache_dir = OutputDir::open(dir).unwrap();
    let options = CacheOptions {
        chunk_size: map.align,
        ..CacheOptions::default()
    };
    let cache = ChunkCache::open(
        cache_dir.fd(),
        cache_dir.path(),
        "device",
        digest,
        source.clone(),
        &options,
    )
    .unwrap();
    let cache = Arc::new(cache);
    let primary = Device::open(&image_path, 0).unwrap();
    let image = Image::from_devices(primary, vec![Device::lazy(cache.clone()).unwrap()]).unwrap();
    (image, source, cache)
}

/// The manifest of `image` (every field of every entry, data digests).
fn manifest(image: &Image) -> Vec<String> {
    erofs_fuse::manifest::manifest(image).unwrap()
}

/// `blob` added to a store and read lazily give the same tree (eStargz's
/// own `stargz.index.json`, which the TOC does not list, aside).
fn same_tree_as_added(blob: &[u8], digest: &str) {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("blob");
    std::fs::write(&path, blob).unwrap();
    let store = work.path().join("store");
    let info = toc_layers::add(&store, &path, digest, false).unwrap();
    let expected = layer_manifest(&store, &info.compressed_digest, toc::estargz::TOC_NAME);
    let (image, source, cache) = lazy_image(work.path(), &path, digest);
    assert_eq!(manifest(&image), expected, "{digest}");
    assert_eq!(source.mismatches(), 0);
    assert_eq!(cache.stats().present, cache.stats().chunks);
}

#[test]
fn generated_layers_read_lazily_equal_store_add() {
    let built = gen::zstd_chunked(&items(), CHUNK, |_| {});
    same_tree_as_added(&built.blob, &built.toc_digest);
    let built = gen::estargz(&items(), CHUNK, |_| {});
    same_tree_as_added(&built.blob, &built.toc_digest);
    // Small files sharing members: chunks at inner offsets.
    let built = gen::estargz_sharing(&items(), CHUNK, 4096, |_| {});
    same_tree_as_added(&built.blob, &built.toc_digest);
}

#[test]
fn podman_layers_read_lazily_equal_store_add() {
    let layout = crate::common::registry::oci_fixture("zstd-chunked");
    for (_, zstd, toc_digest) in FIXTURE_LAYERS {
        let blob = layout
            .join("blobs/sha256")
            .join(zstd.strip_prefix("sha256:").unwrap());
        same_tree_as_added(&std::fs::read(blob).unwrap(), toc_digest);
    }
}

/// A byte of one chunk's frame altered (the TOC intact, so its digest
/// still matches): that file fails with EIO, after a second fetch; the
/// other files read right; none of its bytes reach the cache.
#[test]
fn a_frame_that_does_not_match_its_chunk_digest_fails_its_file_only() {
    for estargz in [false, true] {
        let built = match estargz {
            false => gen::zstd_chunked(&items(), CHUNK, |_| {}),
            true => gen::estargz(&items(), CHUNK, |_| {}),
        };
        let work = tempfile::tempdir().unwrap();
        let path = work.path().join("blob");
        std::fs::write(&path, &built.blob).unwrap();
        let format = toc::detect(&path).unwrap().unwrap();
        let parsed = toc::read(&path, format, &built.toc_digest).unwrap();
        // The big file's second chunk: a byte in the middle of its data.
        let chunk = parsed
            .entries
            .iter()
            .filter(|e| e.name == "usr/bin/big")
            .nth(1)
            .unwrap();
        let next = parsed
            .entries
            .iter()
            .filter(|e| e.name == "usr/bin/big")
            .nth(2)
            .unwrap();
        let at = ((chunk.offset + next.offset) / 2) as usize;
        let mut blob = built.blob.clone();
        blob[at] ^= 0x40;
        std::fs::write(&path, &blob).unwrap();
        let (image, source, cache) = lazy_image(work.path(), &path, &built.toc_digest);
        let big = image.resolve(b"usr/bin/big").unwrap();
        // The first chunk of the file reads.
        assert!(image.read_range(&big, 0, 4096).is_ok(), "{estargz}");
        let fetched = source.fetched();
        let Err(err) = image.read_range(&big, 0, big.size) else {
            panic!("{estargz}: the altered file read")
        };
        assert_eq!(err.errno(), 5, "{estargz}: {err}");
        assert!(err.to_string().contains("blob"), "{err}");
        // Fetched twice (the retry), and once more on a later read.
        let bad_size = {
            let x = parsed
                .entries
                .iter()
                .filter(|e| e.name == "usr/bin/big")
                .nth(2)
                .unwrap();
            x.offset - chunk.offset
        };
        assert!(
            source.fetched() - fetched >= 2 * bad_size,
            "{estargz}: not fetched again"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let fetched = source.fetched();
        assert!(image.read_range(&big, CHUNK as u64, 16).is_err());
        assert!(
            source.fetched() > fetched,
            "{estargz}: the bad chunk was not fetched again"
        );
        let hosts = image.resolve(b"etc/hosts").unwrap();
        assert_eq!(
            &image.read_range(&hosts, 0, 100).unwrap()[..],
            &b"127.0.0.1 localhost\n"[..]
        );
        // Nothing of the altered chunk's place on the device is cached.
        let map = TocMap::new(&parsed).unwrap();
        let bad = map
            .extents
            .iter()
            .find(|x| x.blob_offset == chunk.offset && x.inner == chunk.inner_offset)
            .unwrap();
        let align = cache.chunk_size();
        for i in bad.start / align..(bad.start + bad.len).div_ceil(align) {
            assert!(
                !cache.is_present(i),
                "{estargz}: chunk {i} of the bad range is cached"
            );
        }
        assert!(cache.is_present(map.extents[0].start / align), "{estargz}");
        if !estargz {
            assert!(
                source.mismatches() >= 2 || err.to_string().contains("decode"),
                "{err}"
            );
        }
    }
}

/// `store gc` and lazy TOC layers: a half-written one (an interrupted
/// fetch's staging directory) and the caches of one that is gone are
/// removed; a lazy layer stays, unless --all; a leftover that cannot be
/// removed (a directory in it: not ours) is logged and left, the rest go.
#[test]
fn gc_removes_half_written_lazy_layers_and_orphan_caches() {
    use crate::common::{bin, run_ok};
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let layer = format!("sha256:{}", "1".repeat(64));
    let gone = format!("sha256:{}", "2".repeat(64));
    let lazy = store.join("toc-lazy");
    for dir in [
        lazy.join(".lazytoc.a0/sub"),
        lazy.join(".lazytoc.x1"),
        lazy.join(&layer),
        store.join("lazy"),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
    }
    std::fs::write(lazy.join(".lazytoc.x1/layer.erofs"), b"half").unwrap();
    std::fs::write(lazy.join(&layer).join("info"), b"{}").unwrap();
    for name in [".toc", ".toc.chunks", ".tocblob", ".tocblob.chunks"] {
        std::fs::write(store.join("lazy").join(format!("{layer}{name}")), b"").unwrap();
        std::fs::write(store.join("lazy").join(format!("{gone}{name}")), b"").unwrap();
    }
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let gc = |all: bool| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["store", "gc", "--store"]).arg(&store);
        if all {
            cmd.arg("--all");
        }
        run_ok(&mut cmd);
    };
    gc(false);
    assert_eq!(names(&lazy), vec![".lazytoc.a0".to_string(), layer.clone()]);
    let kept: Vec<String> = [".toc", ".toc.chunks", ".tocblob", ".tocblob.chunks"]
        .iter()
        .map(|s| format!("{layer}{s}"))
        .collect();
    assert_eq!(names(&store.join("lazy")), kept);
    gc(true);
    assert_eq!(names(&lazy), vec![".lazytoc.a0".to_string()]);
    assert!(names(&store.join("lazy")).is_empty());
}

/// `store serve`'s registry flags are checked before anything is mounted:
/// `--fetch-from` takes registry names only, `--creds` goes to one
/// registry, `--insecure` never to docker.io.
#[test]
fn store_serve_refuses_unsafe_fetch_from_flags() {
    use crate::common::bin;
    let work = tempfile::tempdir().unwrap();
    for (args, error) in [
        (&["--fetch-from", "busybox"][..], "not a registry name"),
        (
            &[
                "--fetch-from",
                "a.example",
                "--fetch-from",
                "b.example",
                "--creds",
                "u:p",
            ],
            "--creds goes to one registry",
        ),
        (
            &["--fetch-from", "docker.io", "--insecure"],
            "not for the default registry",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .args(["store", "serve"])
            .arg(work.path())
            .arg(work.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(error), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
