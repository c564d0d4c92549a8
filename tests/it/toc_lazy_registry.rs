//! Lazy TOC layers from a real registry (issue 22), privileged tier:
//! `store serve` with an empty store answers podman 5's
//! `<base64 ref>/<TOC digest>/` lookups by fetching the footer and TOC by
//! range, and then each file's frames on first read; trees equal `store
//! add`'s of the same blobs; a restart serves what was read with the
//! registry gone; bad TOCs and layers the manifest lacks are ENOENT with a
//! log line and leave nothing in the store; a tampered frame fails its
//! file only.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use crate::common::registry::{
    self, oci_fixture, sha256, write_oci_layout, Layer, Registry, Variant,
};
use crate::common::{bin, have, run_ok, tree_manifest, FUSE_ROOT};
use crate::toc_store::{gen, items, CHUNK, FIXTURE_LAYERS};

/// `store serve STORE` on a new directory, unmounted on drop.
pub(crate) struct Served {
    mnt: tempfile::TempDir,
    log: PathBuf,
}

impl Served {
    pub(crate) fn start(store: &Path, extra: &[String]) -> Self {
        let mnt = tempfile::tempdir().unwrap();
        let log = mnt.path().with_extension("log");
        run_ok(
            Command::new(bin())
                .args(["-v", "store", "serve"])
                .arg(store)
                .arg(mnt.path())
                .arg("--log-file")
                .arg(&log)
                .args(extra),
        );
        Self { mnt, log }
    }

    /// The directory of reference `reference`.
    pub(crate) fn reference(&self, reference: &str) -> PathBuf {
        let name = base64::engine::general_purpose::STANDARD.encode(reference);
        self.mnt.path().join(name)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.mnt.path())
            .status();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A read-only kernel overlayfs of lower directories (top first),
/// unmounted on drop.
struct KernelOverlay(tempfile::TempDir);

impl KernelOverlay {
    fn mount(lower_top_first: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("ro,lowerdir={}", lower_top_first.join(":")))
                .arg(dir.path()),
        );
        Self(dir)
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// `store serve` flags that reach `reg` and fetch from it (and from the
/// registries `more`, e.g. a relay to it).
pub(crate) fn fetching(reg: &Registry, more: &[&str]) -> Vec<String> {
    let mut args = reg.cli_args();
    for addr in std::iter::once(reg.addr.as_str()).chain(more.iter().copied()) {
        args.extend(["--fetch-from".to_string(), addr.to_string()]);
    }
    args
}

/// Whether the registry served blob `digest` whole (a GET answered 200).
fn fetched_whole(reg: &Registry, digest: &str) -> bool {
    reg.log()
        .lines()
        .any(|l| l.contains(&format!("/blobs/{digest} HTTP/1.1\" 200 ")) && l.contains("\"GET"))
}

/// Everything under `dir` read (file data hashed), as `manifest.py` lists it.
pub(crate) fn tree(dir: &Path) -> String {
    tree_manifest(dir)
}

/// An OCI layout at `dir` of one TOC layer `blob` whose layer annotation
/// `key` says `toc_digest`.
pub(crate) fn toc_layout(dir: &Path, blob: &[u8], media_type: &str, key: &str, toc_digest: &str) {
    write_oci_layout(
        dir,
        &[Layer {
            media_type: media_type.into(),
            bytes: blob.to_vec(),
            diff_id: None,
        }],
    );
    // The annotation, added to the manifest (the index re-pointed at it).
    let index_path = dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let old = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blobs = dir.join("blobs/sha256");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&old[7..])).unwrap()).unwrap();
    manifest["layers"][0]["annotations"] = serde_json::json!({ key: toc_digest });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256(&bytes);
    std::fs::write(blobs.join(&digest[7..]), &bytes).unwrap();
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// What `store serve` of a store holding `blob` added with `store add`
/// shows of it (the tree to compare with).
fn added_tree(blob: &[u8], toc_digest: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("blob");
    std::fs::write(&path, blob).unwrap();
    let store = work.path().join("store");
    erofs_fuse::store::toc_layers::add(&store, &path, toc_digest, false).unwrap();
    let served = Served::start(&store, &[]);
    tree(&served.reference("x/y:1").join(toc_digest).join("diff"))
}

/// The `diff_ids` of the image config of the OCI layout at `dir`.
fn config_diff_ids(dir: &Path) -> Vec<String> {
    let read = |digest: &str| -> Value {
        let path = dir.join("blobs/sha256").join(&digest[7..]);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let config = read(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

pub(crate) fn ready(test: &str) -> bool {
    have(test, FUSE_ROOT) && registry::available(test)
}

/// podman 5.4.2's zstd:chunked image, pushed to a registry: an empty store
/// serves both layers by TOC digest, with the trees `store add` makes of
/// the same blobs and `info` carrying the TOC digest, without a whole-blob
/// GET; restarted with the registry gone, it serves them again.
#[test]
fn podman_layers_are_served_lazily_from_the_registry() {
    if !ready("podman_layers_are_served_lazily_from_the_registry") {
        return;
    }
    let mut reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("zstd-chunked"), "p5/tiny:1");
    let reference = reg.reference("p5/tiny:1");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let layout = oci_fixture("zstd-chunked");
    let mut trees = Vec::new();
    {
        let served = Served::start(&store, &fetching(&reg, &[]));
        let diff_ids = config_diff_ids(&layout);
        for ((_, zstd, toc), diff_id) in FIXTURE_LAYERS.iter().zip(&diff_ids) {
            let layer = served.reference(&reference).join(toc);
            let info: Value =
                serde_json::from_slice(&std::fs::read(layer.join("info")).unwrap()).unwrap();
            // As stargz-store: the TOC digest, the config's diffID as a
            // flag, neither digest the store did not check.
            assert_eq!(info["toc-digest"], *toc);
            assert_eq!(info["flags"]["expected-layer-diffid"], *diff_id, "{info}");
            assert_eq!(info["diff-size"], -1);
            assert!(info.get("compressed-diff-digest").is_none(), "{info}");
            assert!(info.get("diff-digest").is_none(), "{info}");
            let blob = std::fs::read(layout.join("blobs/sha256").join(&zstd[7..])).unwrap();
            let got = tree(&layer.join("diff"));
            assert_eq!(got, added_tree(&blob, toc), "layer {toc}");
            assert!(!fetched_whole(&reg, zstd), "{zstd} was fetched whole");
            // `blob` reads the registry's blob by range.
            assert_eq!(std::fs::read(layer.join("blob")).unwrap(), blob);
            assert!(!fetched_whole(&reg, zstd), "{zstd} was fetched whole");
            trees.push(got);
            // Not by its compressed digest: its data is checked against
            // the TOC, not against the blob's digest.
            assert!(!served.reference(&reference).join(zstd).exists());
        }
        assert!(served.log().contains("fetched lazily"), "{}", served.log());
        // Both layers merged by the kernel's overlayfs are the fixture's tree.
        let lower: Vec<String> = FIXTURE_LAYERS
            .iter()
            .rev()
            .map(|(_, _, toc)| {
                let diff = served.reference(&reference).join(toc).join("diff");
                // overlayfs separates lower directories with ':'.
                diff.display().to_string().replace(':', "\\:")
            })
            .collect();
        let merged = KernelOverlay::mount(&lower);
        let got = crate::common::pulled::loosely(&tree(merged.0.path()));
        drop(merged);
        let expected = crate::common::pulled::loosely(&crate::common::pulled::kernel_manifest());
        assert_eq!(
            got, expected,
            "the lazy layers merged differ from the fixture's tree"
        );
    }
    // Keyed by repository and TOC digest; no TOC pointer (`store add`'s).
    let key = |toc: &str| sha256(format!("{}/p5/tiny\0{toc}", reg.addr).as_bytes());
    for (_, _, toc) in FIXTURE_LAYERS {
        let dir = store.join("toc-lazy").join(key(toc));
        assert!(dir.join("layer.erofs").is_file(), "{}", dir.display());
    }
    assert!(!store.join("toc").exists());
    reg.kill();
    // Restarted, the registry gone: what was read is served from the cache.
    let served = Served::start(&store, &[]);
    for ((_, _, toc), expected) in FIXTURE_LAYERS.iter().zip(&trees) {
        let diff = served.reference(&reference).join(toc).join("diff");
        assert_eq!(&tree(&diff), expected, "layer {toc} after a restart");
    }
    drop(served);
    // gc --all removes the lazy layers, their caches and TOC entries.
    run_ok(
        Command::new(bin())
            .args(["store", "gc", "--all", "--store"])
            .arg(&store),
    );
    let left = |dir: &str| std::fs::read_dir(store.join(dir)).map_or(0, |d| d.count());
    assert_eq!((left("toc-lazy"), left("toc")), (0, 0));
    let caches = std::fs::read_dir(store.join("lazy")).unwrap().count();
    assert_eq!(caches, 0, "caches left in {}", store.join("lazy").display());
}

/// A generated eStargz layer (annotation containerd.io/snapshot/stargz/
/// toc.digest), pushed: served lazily with `store add`'s tree.
#[test]
fn estargz_layers_are_served_lazily_from_the_registry() {
    if !ready("estargz_layers_are_served_lazily_from_the_registry") {
        return;
    }
    let built = gen::estargz(&items(), CHUNK, |_| {});
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    toc_layout(
        &layout,
        &built.blob,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        erofs_fuse::toc::ESTARGZ_ANNOTATION,
        &built.toc_digest,
    );
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&layout, "sgz/app:1");
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[]));
    let diff = served
        .reference(&reg.reference("sgz/app:1"))
        .join(&built.toc_digest)
        .join("diff");
    let expected: String = added_tree(&built.blob, &built.toc_digest)
        .lines()
        .filter(|l| !l.contains(erofs_fuse::toc::estargz::TOC_NAME))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(tree(&diff), expected);
    assert!(!fetched_whole(&reg, &sha256(&built.blob)));
}

/// A TOC that does not hash to the digest asked for, and a digest no
/// layer of the manifest carries: ENOENT, a log line, nothing stored. A
/// frame altered in the blob: that file fails (EIO), the others read.
#[test]
fn bad_toc_layers_are_not_served() {
    if !ready("bad_toc_layers_are_not_served") {
        return;
    }
    let built = gen::zstd_chunked(&items(), CHUNK, |_| {});
    // The big file's second chunk altered: the TOC (and its digest) intact.
    let mut blob = built.blob.clone();
    let format = erofs_fuse::toc::Format::ZstdChunked;
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("blob");
    std::fs::write(&path, &blob).unwrap();
    let parsed = erofs_fuse::toc::read(&path, format, &built.toc_digest).unwrap();
    let chunks: Vec<_> = parsed
        .entries
        .iter()
        .filter(|e| e.name == "usr/bin/big")
        .collect();
    blob[((chunks[1].offset + chunks[2].offset) / 2) as usize] ^= 0x40;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let reg = Registry::start(Variant::Http);
    for (repo, annotation) in [("tampered:1", &built.toc_digest), ("wrongtoc:1", &wrong)] {
        let layout = work.path().join(repo.replace(':', "-"));
        let key = erofs_fuse::toc::ZSTD_CHUNKED_ANNOTATION;
        let media = "application/vnd.oci.image.layer.v1.tar+zstd";
        toc_layout(&layout, &blob, media, key, annotation);
        reg.push_oci_layout(&layout, repo);
    }
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[]));
    // The TOC does not hash to the annotation's digest.
    let layer = served.reference(&reg.reference("wrongtoc:1")).join(&wrong);
    assert!(
        !layer.exists(),
        "a layer whose TOC does not match was served"
    );
    assert!(
        served
            .log()
            .contains(&format!("TOC digest is {}", built.toc_digest)),
        "{}",
        served.log()
    );
    // No layer of the manifest has this TOC digest.
    let none = format!("sha256:{}", "cd".repeat(32));
    assert!(!served
        .reference(&reg.reference("tampered:1"))
        .join(&none)
        .exists());
    assert!(
        served
            .log()
            .contains(&format!("no layer of TOC digest {none}")),
        "{}",
        served.log()
    );
    // podman 4 looks layers up by compressed digest: ENOENT, quietly.
    let blob_digest = sha256(&blob);
    let by_blob = served
        .reference(&reg.reference("tampered:1"))
        .join(&blob_digest);
    assert!(!by_blob.exists());
    let log = served.log();
    assert!(!log.contains(&format!("TOC digest {blob_digest}")), "{log}");
    // A flood of junk references: the unknown registry is not asked again
    // and again.
    let started = std::time::Instant::now();
    for i in 0..64 {
        let junk = served.reference(&format!("junk.invalid/{i}:1")).join(&none);
        assert!(!junk.exists());
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "64 junk lookups took {took:?}"
    );
    let left = |dir: &str| std::fs::read_dir(store.join(dir)).map_or(0, |d| d.count());
    assert_eq!(
        (left("toc-lazy"), left("toc")),
        (0, 0),
        "something was stored"
    );
    // The tampered frame: its file fails with EIO, the others read.
    let diff = served
        .reference(&reg.reference("tampered:1"))
        .join(&built.toc_digest)
        .join("diff");
    let err = std::fs::read(diff.join("usr/bin/big")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert_eq!(
        std::fs::read(diff.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert!(
        served.log().contains("fetching it again"),
        "{}",
        served.log()
    );
}

/// Lookups of one TOC digest under two references at once (two FUSE
/// lookups: the kernel serializes only same-name lookups in one
/// directory), through a slow link: one fetch, the other lookup waits for
/// it and finds the layer.
#[test]
fn concurrent_lookups_of_one_toc_digest_fetch_once() {
    if !ready("concurrent_lookups_of_one_toc_digest_fetch_once") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("zstd-chunked"), "p5/tiny:1");
    reg.push_oci_layout(&oci_fixture("zstd-chunked"), "p5/tiny:2");
    let relay = crate::common::relay::Relay::start(&reg.addr);
    // About 1.5 s for one layer's manifest, config and 256 KiB tail.
    relay.set_rate(Some(200_000));
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[&relay.addr]));
    let (_, _, toc) = FIXTURE_LAYERS[0];
    let dirs: Vec<PathBuf> = ["p5/tiny:1", "p5/tiny:2"]
        .iter()
        .map(|tag| served.reference(&format!("{}/{tag}", relay.addr)).join(toc))
        .collect();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for dir in &dirs {
            s.spawn(move || assert!(dir.join("diff").is_dir(), "{}", dir.display()));
        }
    });
    let took = started.elapsed();
    let fetched = served.log().matches("fetched lazily").count();
    assert_eq!(fetched, 1, "{}", served.log());
    let bytes = relay.bytes_from_server();
    assert!(
        bytes < 400 << 10,
        "{bytes} bytes fetched for one TOC in {took:?}"
    );
}

/// For measurements (prints them): a ~100 MB zstd:chunked layer of 1000
/// files (100 KB each, about 2:1 compressible, 64 KiB chunks) pushed to
/// the registry: the time and bytes of the first lookup (TOC fetched, image
/// built), of one file's first read, of reading every file, against
/// `store add` of the whole blob.
#[test]
#[ignore = "measurement: --features privileged -- --ignored --nocapture"]
fn measure_a_lazy_toc_layer() {
    if !ready("measure_a_lazy_toc_layer") {
        return;
    }
    let (items, built) = gen::thousand_files_zstd_chunked(CHUNK);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let media = "application/vnd.oci.image.layer.v1.tar+zstd";
    let key = erofs_fuse::toc::ZSTD_CHUNKED_ANNOTATION;
    toc_layout(&layout, &built.blob, media, key, &built.toc_digest);
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&layout, "big:1");
    let relay = crate::common::relay::Relay::start(&reg.addr);
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[&relay.addr]));
    let diff = served
        .reference(&format!("{}/big:1", relay.addr))
        .join(&built.toc_digest)
        .join("diff");
    let t = std::time::Instant::now();
    assert!(diff.is_dir());
    let lookup = (t.elapsed(), relay.bytes_from_server());
    let t = std::time::Instant::now();
    assert_eq!(
        std::fs::read(diff.join("data/d3/f170")).unwrap().len(),
        100_000
    );
    let one = (t.elapsed(), relay.bytes_from_server() - lookup.1);
    let t = std::time::Instant::now();
    let mut total = 0;
    for item in &items {
        total += std::fs::read(diff.join(item.path)).unwrap().len();
    }
    let all = (t.elapsed(), relay.bytes_from_server() - lookup.1 - one.1);
    let path = work.path().join("blob");
    std::fs::write(&path, &built.blob).unwrap();
    let t = std::time::Instant::now();
    erofs_fuse::store::toc_layers::add(&work.path().join("added"), &path, &built.toc_digest, false)
        .unwrap();
    let added = t.elapsed();
    println!(
        "blob {} bytes, {} files ({total} bytes)\nlookup: {:?}, {} bytes fetched\n\
         first file: {:?}, {} bytes\nall files: {:?}, {} bytes\nstore add (local blob): {added:?}",
        built.blob.len(),
        items.len(),
        lookup.0,
        lookup.1,
        one.0,
        one.1,
        all.0,
        all.1
    );
}
