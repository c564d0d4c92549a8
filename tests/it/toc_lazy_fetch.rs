//! Which registries `store serve` fetches lazy TOC layers from, and how
//! they are keyed (issue 22 review), privileged tier: only registries of
//! `--fetch-from` are asked (others ENOENT with no request, logged once),
//! `--max-lazy-layers` caps what one server makes, a TOC digest is
//! fetched per repository (never served through another repository's
//! record), a TOC layer without file data serves, and a fetch waits for
//! `store gc`'s lock.

use crate::common::registry::{oci_fixture, Registry, Variant};
use crate::toc_lazy_registry::{fetching, ready, toc_layout, tree, Served};
use crate::toc_store::gen::{self, Item, Kind};
use crate::toc_store::{CHUNK, FIXTURE_LAYERS};

/// Requests the registry answered so far.
fn requests(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/"))
        .count()
}

/// A registry not named by `--fetch-from` is never asked, whatever the
/// reference; each refused registry is logged once; `--max-lazy-layers`
/// stops a server making more.
#[test]
fn only_registries_named_by_fetch_from_are_asked() {
    if !ready("only_registries_named_by_fetch_from_are_asked") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("zstd-chunked"), "p5/tiny:1");
    let reference = reg.reference("p5/tiny:1");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    {
        let mut args = reg.cli_args();
        args.extend(["--fetch-from".into(), "quay.io".into()]);
        let served = Served::start(&store, &args);
        let before = requests(&reg);
        for _ in 0..2 {
            for (_, _, toc) in FIXTURE_LAYERS {
                assert!(!served.reference(&reference).join(toc).exists());
                assert!(!served.reference("evil.example/x:1").join(toc).exists());
            }
        }
        assert_eq!(requests(&reg), before, "{}", reg.log());
        let log = served.log();
        for host in [reg.addr.as_str(), "evil.example"] {
            let line = format!("registry {host}: not in --fetch-from");
            assert_eq!(log.matches(&line).count(), 1, "{log}");
        }
    }
    let mut args = fetching(&reg, &[]);
    args.extend(["--max-lazy-layers".into(), "1".into()]);
    let served = Served::start(&store, &args);
    let [first, second] = FIXTURE_LAYERS.map(|(_, _, toc)| served.reference(&reference).join(toc));
    assert!(first.join("diff").is_dir(), "{}", served.log());
    assert!(!second.exists());
    assert!(
        served.log().contains("(--max-lazy-layers)"),
        "{}",
        served.log()
    );
    assert_eq!(
        std::fs::read_dir(store.join("toc-lazy")).unwrap().count(),
        1
    );
}

/// One TOC digest under two repositories: each repository's TOC is
/// fetched and checked, and each layer reads from its own repository.
#[test]
fn a_toc_digest_is_fetched_per_repository() {
    if !ready("a_toc_digest_is_fetched_per_repository") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    for repo in ["p5/a:1", "p5/b:1"] {
        reg.push_oci_layout(&oci_fixture("zstd-chunked"), repo);
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[]));
    let (_, blob_digest, toc) = FIXTURE_LAYERS[0];
    let layer = |repo: &str| served.reference(&reg.reference(repo)).join(toc);
    let a = tree(&layer("p5/a:1").join("diff"));
    assert_eq!(served.log().matches("fetched lazily").count(), 1);
    let blob_gets = |repo: &str| {
        let path = format!("GET /v2/{repo}/blobs/{blob_digest}");
        reg.log().matches(&path).count()
    };
    assert_eq!(blob_gets("p5/b"), 0);
    let b = tree(&layer("p5/b:1").join("diff"));
    assert_eq!(a, b);
    let log = served.log();
    assert_eq!(log.matches("fetched lazily").count(), 2, "{log}");
    // b's TOC came from b's blob, and b's `blob` reads b's.
    let after_toc = blob_gets("p5/b");
    assert!(after_toc > 0, "{}", reg.log());
    let before = blob_gets("p5/a");
    let bytes = std::fs::read(layer("p5/b:1").join("blob")).unwrap();
    assert!(!bytes.is_empty());
    assert!(blob_gets("p5/b") > after_toc);
    assert_eq!(blob_gets("p5/a"), before, "b's blob was read from a");
    assert_eq!(
        std::fs::read_dir(store.join("toc-lazy")).unwrap().count(),
        2
    );
}

/// A zstd:chunked layer of directories and empty files only (a virtual
/// device of size 0): it opens and serves. A stored layer that does not
/// open is not opened again at every lookup.
#[test]
fn a_toc_layer_without_file_data_is_served() {
    if !ready("a_toc_layer_without_file_data_is_served") {
        return;
    }
    let item = |path, kind| Item {
        path,
        kind,
        mode: 0o755,
        xattrs: &[],
    };
    let items = [
        item("etc", Kind::Dir),
        item("etc/empty", Kind::Reg(Vec::new())),
        item("var", Kind::Dir),
        item("var/lib", Kind::Dir),
    ];
    let built = gen::zstd_chunked(&items, CHUNK, |_| {});
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let media = "application/vnd.oci.image.layer.v1.tar+zstd";
    let key = erofs_fuse::toc::ZSTD_CHUNKED_ANNOTATION;
    toc_layout(&layout, &built.blob, media, key, &built.toc_digest);
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&layout, "empty:1");
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[]));
    let diff = served
        .reference(&reg.reference("empty:1"))
        .join(&built.toc_digest)
        .join("diff");
    assert!(diff.join("var/lib").is_dir(), "{}", served.log());
    assert_eq!(std::fs::read(diff.join("etc/empty")).unwrap(), b"");
    drop(served);
    // Its record damaged: the next server logs it once, not at every lookup.
    let lazy = store.join("toc-lazy");
    let key = std::fs::read_dir(&lazy).unwrap().next().unwrap().unwrap();
    std::fs::write(key.path().join("lazy"), b"{}").unwrap();
    let served = Served::start(&store, &fetching(&reg, &[]));
    let layer = served
        .reference(&reg.reference("empty:1"))
        .join(&built.toc_digest);
    for _ in 0..3 {
        assert!(!layer.exists());
    }
    let log = served.log();
    assert_eq!(log.matches("lazy: missing field").count(), 1, "{log}");
}

/// A fetch writes under the store-wide lock held shared, as a pull: while
/// `store gc` (exclusive) holds it, the lookup waits, then finds the layer.
#[test]
fn a_fetch_waits_for_gc() {
    if !ready("a_fetch_waits_for_gc") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("zstd-chunked"), "p5/tiny:1");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    erofs_fuse::store::images::Store::open(&store).unwrap();
    let served = Served::start(&store, &fetching(&reg, &[]));
    let held = erofs_fuse::store::images::Store::open(&store).unwrap();
    let lock = held.lock(true).unwrap();
    let (_, _, toc) = FIXTURE_LAYERS[0];
    let layer = served.reference(&reg.reference("p5/tiny:1")).join(toc);
    std::thread::scope(|s| {
        let looked = s.spawn(|| layer.join("diff").is_dir());
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert!(!looked.is_finished(), "the fetch did not wait for the lock");
        let staged = std::fs::read_dir(store.join("toc-lazy")).map_or(0, |d| d.count());
        assert_eq!(staged, 0, "written while gc held the lock");
        drop(lock);
        assert!(looked.join().unwrap(), "{}", served.log());
    });
}
