//! TOC layers in the store (issue 22, local part): `store add` of
//! zstd:chunked and eStargz blobs checks the TOC against its digest, the
//! frames against the TOC and the tar against the TOC before anything is
//! stored, records `toc-digest` in `info`, and `store serve` finds the layer
//! by its TOC digest. Blobs are made by `gen` (a test-only writer of both
//! formats); the podman fixture's zstd:chunked layout is added as well.
//! The bad-input tests are fast; serving needs root and FUSE.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{bin, run, run_ok};
use erofs_fuse::store::toc_layers;

pub(crate) mod gen;

use gen::{Built, Item, Kind};

/// A layer with what both formats must carry: directories (one implied),
/// files empty, small and chunked, a symlink, a hard link, a device, a
/// whiteout and an opaque directory.
pub(crate) fn items() -> Vec<Item> {
    let mut rng = crate::common::xorshift(22);
    let big: Vec<u8> = (0..200_000).map(|_| rng() as u8).collect();
    let item = |path, kind, mode| Item {
        path,
        kind,
        mode,
        xattrs: &[],
    };
    vec![
        item("etc/", Kind::Dir, 0o755),
        item(
            "etc/hosts",
            Kind::Reg(b"127.0.0.1 localhost\n".to_vec()),
            0o644,
        ),
        item(
            "etc/other",
            Kind::Reg(b"127.0.0.2 otherhost\n".to_vec()),
            0o600,
        ),
        item("etc/empty", Kind::Reg(Vec::new()), 0o644),
        item("etc/link", Kind::Symlink("hosts"), 0o777),
        item("etc/hard", Kind::Hardlink("etc/hosts"), 0o644),
        item("etc/.wh.gone", Kind::Reg(Vec::new()), 0o600),
        item("usr/bin/big", Kind::Reg(big), 0o755),
        item("dev/", Kind::Dir, 0o755),
        item("dev/null", Kind::Char(1, 3), 0o666),
        item("var/cache/", Kind::Dir, 0o700),
        item("var/cache/.wh..wh..opq", Kind::Reg(Vec::new()), 0o600),
    ]
}

/// Chunk size of the generated blobs: the big file has four chunks.
pub(crate) const CHUNK: usize = 64 << 10;

fn zstd_chunked(mutate: impl FnOnce(&mut Value)) -> Built {
    gen::zstd_chunked(&items(), CHUNK, mutate)
}

fn estargz(mutate: impl FnOnce(&mut Value)) -> Built {
    gen::estargz(&items(), CHUNK, mutate)
}

/// The TOC entry named `name` (the first one).
fn entry<'a>(toc: &'a mut Value, name: &str) -> &'a mut Value {
    toc["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["name"] == name)
        .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// What the store directory holds, by name.
fn store_names(store: &Path) -> Vec<String> {
    match std::fs::read_dir(store) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Adding `built` (with its own TOC digest unless `digest`) fails with a
/// one-line error containing `expect`, and the store is left empty.
fn refused(built: &Built, digest: Option<&str>, expect: &str) {
    let work = tempfile::tempdir().unwrap();
    let blob = write(work.path(), "blob", &built.blob);
    let store = work.path().join("store");
    let digest = digest.unwrap_or(&built.toc_digest);
    let err = toc_layers::add(&store, &blob, digest, false)
        .expect_err("a bad TOC layer was added")
        .to_string();
    assert!(err.contains(expect), "{err:?} does not say {expect:?}");
    assert!(!err.contains('\n'), "{err:?} is not one line");
    assert!(err.contains("blob"), "{err:?} does not name the blob");
    assert_eq!(
        store_names(&store),
        Vec::<String>::new(),
        "something was stored"
    );
}

/// The manifest of a store layer's image, without `skip`.
pub(crate) fn layer_manifest(store: &Path, digest: &str, skip: &str) -> Vec<String> {
    let image = erofs_fuse::Image::open(
        &store.join(digest).join("layer.erofs"),
        &erofs_fuse::OpenOptions::default(),
    )
    .unwrap();
    erofs_fuse::manifest::manifest(&image)
        .unwrap()
        .into_iter()
        .filter(|l| !l.contains(skip))
        .collect()
}

/// Both formats: the layer is added, `info` carries the TOC digest, the
/// TOC index names the layer, and its tree is the plain tar's.
#[test]
fn toc_layers_are_added_with_their_toc_digest_and_the_tar_tree() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let tar = write(work.path(), "layer.tar", &gen::tar_bytes(&items()));
    let plain = erofs_fuse::store::layout::add(&store, &tar, false).unwrap();
    let expected = layer_manifest(&store, &plain.compressed_digest, "stargz.index.json");
    for (name, built) in [
        ("zstd-chunked", zstd_chunked(|_| {})),
        ("estargz", estargz(|_| {})),
    ] {
        let blob = write(work.path(), name, &built.blob);
        let info = toc_layers::add(&store, &blob, &built.toc_digest, false).unwrap();
        assert_eq!(info.compressed_digest, gen::sha256(&built.blob));
        assert_eq!(info.toc_digest.as_deref(), Some(built.toc_digest.as_str()));
        let dir = store.join(&info.compressed_digest);
        let stored: Value =
            serde_json::from_slice(&std::fs::read(dir.join("info")).unwrap()).unwrap();
        assert_eq!(stored["toc-digest"], built.toc_digest.as_str(), "{name}");
        assert_eq!(
            stored["compressed-diff-digest"],
            info.compressed_digest.as_str()
        );
        let pointer = std::fs::read_to_string(store.join("toc").join(&built.toc_digest)).unwrap();
        assert_eq!(pointer, info.compressed_digest);
        let got = layer_manifest(&store, &info.compressed_digest, "stargz.index.json");
        assert_eq!(
            got, expected,
            "{name}: the tree differs from the plain tar's"
        );
    }
    // zstd:chunked decompresses to exactly the plain tar.
    let zstd = store.join(gen::sha256(&zstd_chunked(|_| {}).blob));
    let info: Value = serde_json::from_slice(&std::fs::read(zstd.join("info")).unwrap()).unwrap();
    assert_eq!(info["diff-digest"], plain.diff_digest.as_str());
}

#[test]
fn a_toc_whose_digest_does_not_match_is_refused() {
    let other = format!("sha256:{}", "0".repeat(64));
    refused(&zstd_chunked(|_| {}), Some(&other), "TOC digest is sha256:");
    refused(&estargz(|_| {}), Some(&other), "TOC digest is sha256:");
    // A blob without a footer has no TOC to check.
    let work = tempfile::tempdir().unwrap();
    let tar = write(work.path(), "blob", &gen::tar_bytes(&items()));
    let err = toc_layers::add(&work.path().join("store"), &tar, &other, false).unwrap_err();
    assert!(
        err.to_string().contains("neither zstd:chunked nor eStargz"),
        "{err}"
    );
}

#[test]
fn a_footer_pointing_outside_the_blob_is_refused() {
    // zstd:chunked: the TOC offset (the footer's first field) past the end.
    let mut built = zstd_chunked(|_| {});
    let at = built.blob.len() - 64;
    built.blob[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes()[..]);
    refused(&built, None, "outside the blob");
    // Its compressed length past the footer.
    let mut built = zstd_chunked(|_| {});
    let at = built.blob.len() - 56;
    built.blob[at..at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes()[..]);
    refused(&built, None, "outside the blob");
    // eStargz: the TOC offset past the footer.
    let mut built = estargz(|_| {});
    let at = built.blob.len() - 51 + 16;
    built.blob[at..at + 16].copy_from_slice(b"00000000ffffffff");
    refused(&built, None, "outside the blob");
}

#[test]
fn a_toc_entry_outside_the_blob_is_refused() {
    refused(
        &zstd_chunked(|toc| entry(toc, "etc/hosts")["endOffset"] = (1u64 << 40).into()),
        None,
        "outside the blob's data",
    );
    refused(
        &zstd_chunked(|toc| entry(toc, "usr/bin/big")["offset"] = (1u64 << 40).into()),
        None,
        "outside the blob's data",
    );
    refused(
        &estargz(|toc| entry(toc, "etc/hosts")["offset"] = (1u64 << 40).into()),
        None,
        "outside the blob's data",
    );
    refused(
        &estargz(|toc| entry(toc, "usr/bin/big")["chunkOffset"] = (1u64 << 40).into()),
        None,
        "outside the file",
    );
}

#[test]
fn frames_that_decode_to_other_lengths_are_refused() {
    let longer = |toc: &mut Value| {
        let e = entry(toc, "etc/hosts");
        e["size"] = (e["size"].as_u64().unwrap() + 1).into();
    };
    refused(&zstd_chunked(longer), None, "decode to 20 bytes, not 21");
    // A shared member's chunk at the wrong place in it.
    let shared = gen::estargz_sharing(&items(), CHUNK, 1 << 10, |toc| {
        let e = entry(toc, "etc/other");
        assert!(e["innerOffset"].as_u64().unwrap() > 0, "not shared");
        e["innerOffset"] = (e["innerOffset"].as_u64().unwrap() - 512).into();
    });
    refused(&shared, None, "decodes to a chunk of digest");
    // eStargz: a member holds the padding and headers after the data, so a
    // longer chunk reads them and its digest tells; past the member's end,
    // its length does.
    refused(&estargz(longer), None, "decodes to a chunk of digest");
    refused(
        &estargz(|toc| entry(toc, "etc/hosts")["innerOffset"] = 100_000.into()),
        None,
        "fewer than the 100020 the TOC says",
    );
    let shorter = |toc: &mut Value| {
        let e = entry(toc, "etc/hosts");
        e["size"] = (e["size"].as_u64().unwrap() - 1).into();
    };
    refused(&zstd_chunked(shorter), None, "decode to more than 19 bytes");
    // eStargz: the member holds more than the chunk; the chunk digest
    // (of the bytes read) is what tells.
    refused(&estargz(shorter), None, "digest");
}

/// Many entries on one frame that decodes to much: refused once the
/// decoding exceeds twice the tar, not decoded for each.
#[test]
fn a_toc_reusing_one_frame_for_many_files_is_refused_within_its_budget() {
    // The big file's entry and its chunks, again under 1000 names.
    let bomb = |toc: &mut Value| {
        let entries = toc["entries"].as_array_mut().unwrap();
        let big: Vec<Value> = entries
            .iter()
            .filter(|e| e["name"] == "usr/bin/big")
            .cloned()
            .collect();
        for i in 0..1000 {
            for e in &big {
                let mut e = e.clone();
                e["name"] = format!("usr/bin/copy{i}").into();
                entries.push(e);
            }
        }
    };
    refused(
        &zstd_chunked(bomb),
        None,
        "decode to more than the tar holds",
    );
    refused(&estargz(bomb), None, "decode to more than the tar holds");
}

#[test]
fn a_toc_that_disagrees_with_the_tar_is_refused() {
    for built in [
        zstd_chunked(|toc| entry(toc, "etc/hosts")["mode"] = 0o4755.into()),
        estargz(|toc| entry(toc, "etc/hosts")["mode"] = 0o4755.into()),
    ] {
        refused(
            &built,
            None,
            "the tar disagrees with its TOC: \"etc/hosts\": mode",
        );
    }
    // An entry the TOC leaves out.
    let drop_link = |toc: &mut Value| {
        toc["entries"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"] != "etc/link")
    };
    refused(
        &zstd_chunked(drop_link),
        None,
        "\"etc/link\" is in the tar but not in the TOC",
    );
    refused(
        &estargz(drop_link),
        None,
        "\"etc/link\" is in the tar but not in the TOC",
    );
    // A TOC entry the tar lacks.
    let rename = |toc: &mut Value| entry(toc, "etc/other")["name"] = "etc/renamed".into();
    refused(
        &zstd_chunked(rename),
        None,
        "\"etc/renamed\": not in the tar",
    );
    // Two files of one size with their frames swapped: each file's frames
    // decode as its TOC entry says, but not to what the tar holds there.
    let swap = |toc: &mut Value| {
        let a = entry(toc, "etc/hosts").clone();
        let b = entry(toc, "etc/other").clone();
        for key in ["offset", "endOffset", "digest", "chunkDigest"] {
            if let (Some(x), Some(y)) = (a.get(key), b.get(key)) {
                entry(toc, "etc/hosts")[key] = y.clone();
                entry(toc, "etc/other")[key] = x.clone();
            }
        }
    };
    refused(&zstd_chunked(swap), None, "data of digest");
    refused(&estargz(swap), None, "data of digest");
    // An xattr the tar lacks, or of another value.
    refused(
        &zstd_chunked(|toc| {
            entry(toc, "etc/other")["xattrs"] = serde_json::json!({"user.x": "eA=="})
        }),
        None,
        "xattrs [\"user.x\"] in the TOC, [] in the tar",
    );
    refused(
        &estargz(|toc| entry(toc, "etc/hosts")["xattrs"]["user.comment"] = "eA==".into()),
        None,
        "or their values differ",
    );
    // A symlink to elsewhere; a device of other numbers.
    refused(
        &zstd_chunked(|toc| entry(toc, "etc/link")["linkName"] = "other".into()),
        None,
        "link target",
    );
    refused(
        &estargz(|toc| entry(toc, "dev/null")["devMinor"] = 5.into()),
        None,
        "device numbers",
    );
}

/// The fixture's zstd:chunked layout (pushed by podman 5.4.2) is added
/// with the TOC digests of its annotations; a bare blob with
/// `--toc-digest` too; a wrong one is refused.
#[test]
fn store_add_reads_toc_digests_from_an_oci_layout() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let layout = crate::common::registry::oci_fixture("zstd-chunked");
    let out = run_ok(
        Command::new(bin())
            .args(["store", "add", "--quiet"])
            .arg(&store)
            .arg(&layout),
    );
    let out = String::from_utf8(out.stdout).unwrap();
    for toc in [
        "sha256:a4ea3cb18a3201ebadc4aa9ae971346a02e39786c596053e97c21bcd33fc35e0",
        "sha256:38eb81ea422a8711bf852e2780d3a2428de081507f31464b512dcae9f7589418",
    ] {
        assert!(out.contains(&format!(" toc {toc} ")), "{out}");
        assert!(store.join("toc").join(toc).is_file());
    }
    let blob = layout
        .join("blobs/sha256/cb047b028c836299eff6bd49de2b86954e5f0321222d48902631a799343878e8");
    let other = work.path().join("other");
    let bad = run(Command::new(bin())
        .args(["store", "add", "--quiet", "--toc-digest"])
        .arg(format!("sha256:{}", "1".repeat(64)))
        .arg(&other)
        .arg(&blob));
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("TOC digest is sha256:38eb81"), "{stderr}");
    assert!(store_names(&other).is_empty());
    run_ok(
        Command::new(bin())
            .args(["store", "add", "--quiet", "--toc-digest"])
            .arg("sha256:38eb81ea422a8711bf852e2780d3a2428de081507f31464b512dcae9f7589418")
            .arg(&other)
            .arg(&blob),
    );
}

/// `store serve STORE DIR`, unmounted on drop.
struct Served(tempfile::TempDir);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.0.path())
            .status();
    }
}

/// The fixture's layers: (gzip digest, zstd:chunked digest, TOC digest),
/// bottom first (tests/fixtures/oci/README.md).
pub(crate) const FIXTURE_LAYERS: [(&str, &str, &str); 2] = [
    (
        "sha256:62938c8bf2da04cb1d7ca49f78c665668b32395893cbcca285f4145c2c070f5b",
        "sha256:9400accb27f79193e71747cb987ed2214a738f3622b6ef4c58a43502e98781cf",
        "sha256:a4ea3cb18a3201ebadc4aa9ae971346a02e39786c596053e97c21bcd33fc35e0",
    ),
    (
        "sha256:4752d08738716f1e1bce13145a9a3045154db90a6fb4c3ead8a12b383c37c139",
        "sha256:cb047b028c836299eff6bd49de2b86954e5f0321222d48902631a799343878e8",
        "sha256:38eb81ea422a8711bf852e2780d3a2428de081507f31464b512dcae9f7589418",
    ),
];

/// podman 5's lookup: `<base64 ref>/<TOC digest>/` shows the layer added
/// from the zstd:chunked layout, its `info` carrying the TOC digest, its
/// `diff` the same tree as the layer added from the gzip layout; both
/// layers merged are the fixture's tree. A TOC index entry naming a layer
/// without that TOC digest, and unknown TOC digests, are not found.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn serve_finds_toc_layers_by_toc_digest() {
    use crate::common::pulled::{kernel_manifest, loosely};
    use crate::common::{have, tree_manifest, FuseMount, FUSE_ROOT};
    if !have("serve_finds_toc_layers_by_toc_digest", FUSE_ROOT) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for layout in ["zstd-chunked", "gzip"] {
        run_ok(
            Command::new(bin())
                .args(["store", "add", "--quiet"])
                .arg(&store)
                .arg(crate::common::registry::oci_fixture(layout)),
        );
    }
    // A forged index entry: a TOC digest naming the gzip layer, whose info
    // has no TOC digest.
    let forged = format!("sha256:{}", "f".repeat(64));
    std::fs::write(store.join("toc").join(&forged), FIXTURE_LAYERS[0].0).unwrap();
    let served = Served(tempfile::tempdir().unwrap());
    run_ok(
        Command::new(bin())
            .args(["store", "serve"])
            .arg(&store)
            .arg(served.0.path()),
    );
    let reference = served.0.path().join("bG9jYWxob3N0OjUwMDAvdGlueTox");
    for (gzip, zstd, toc) in FIXTURE_LAYERS {
        let layer = reference.join(toc);
        let info: Value =
            serde_json::from_slice(&std::fs::read(layer.join("info")).unwrap()).unwrap();
        assert_eq!(info["toc-digest"], toc);
        assert_eq!(info["compressed-diff-digest"], zstd);
        let blob = crate::common::registry::oci_fixture("zstd-chunked")
            .join("blobs/sha256")
            .join(zstd.strip_prefix("sha256:").unwrap());
        assert_eq!(
            std::fs::read(layer.join("blob")).unwrap(),
            std::fs::read(blob).unwrap()
        );
        assert_eq!(
            tree_manifest(&layer.join("diff")),
            tree_manifest(&reference.join(gzip).join("diff")),
            "layer {toc}: the TOC layer's tree differs from the gzip layer's"
        );
        // The same layer by its compressed digest too.
        assert!(reference.join(zstd).join("diff").is_dir());
    }
    assert!(
        !reference.join(&forged).exists(),
        "a forged TOC index entry was served"
    );
    assert!(!reference
        .join(format!("sha256:{}", "e".repeat(64)))
        .exists());
    drop(served);
    let layers: Vec<String> = FIXTURE_LAYERS
        .iter()
        .map(|(_, zstd, _)| store.join(zstd).join("layer.erofs").display().to_string())
        .collect();
    let merged = FuseMount::layers(&layers, &[]);
    assert_eq!(
        loosely(&tree_manifest(merged.path())),
        loosely(&kernel_manifest()),
        "the zstd:chunked layers merged differ from the fixture's tree"
    );
}

/// `store gc --all` removes the TOC layers and their TOC index entries.
#[test]
fn gc_removes_the_toc_index_entries_of_removed_layers() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let built = zstd_chunked(|_| {});
    let blob = write(work.path(), "blob", &built.blob);
    toc_layers::add(&store, &blob, &built.toc_digest, false).unwrap();
    assert!(store.join("toc").join(&built.toc_digest).is_file());
    run_ok(
        Command::new(bin())
            .args(["store", "gc", "--all", "--store"])
            .arg(&store),
    );
    assert!(!store.join(gen::sha256(&built.blob)).exists());
    assert_eq!(store_names(&store.join("toc")), Vec::<String>::new());
}

/// For measurements: writes a ~100 MB zstd:chunked blob of 1000 files
/// (100 KB each, about 2:1 compressible, 64 KiB chunks) to
/// `$TOC_BLOB_OUT/blob` and its TOC digest to `$TOC_BLOB_OUT/toc-digest`.
#[test]
#[ignore = "measurement helper: TOC_BLOB_OUT=DIR"]
fn generate_a_large_zstd_chunked_blob() {
    let out = PathBuf::from(std::env::var("TOC_BLOB_OUT").expect("TOC_BLOB_OUT"));
    let (items, built) = gen::thousand_files_zstd_chunked(CHUNK);
    std::fs::write(out.join("blob"), &built.blob).unwrap();
    std::fs::write(out.join("toc-digest"), &built.toc_digest).unwrap();
    std::fs::write(out.join("layer.tar"), gen::tar_bytes(&items)).unwrap();
}

/// A TOC layer added first without its TOC digest gets it when added with
/// it (its info rewritten), and is then found by it.
#[test]
fn adding_with_the_toc_digest_completes_a_layer_added_without() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let built = estargz(|_| {});
    let blob = write(work.path(), "blob", &built.blob);
    let plain = erofs_fuse::store::layout::add(&store, &blob, false).unwrap();
    assert_eq!(plain.toc_digest, None);
    toc_layers::add(&store, &blob, &built.toc_digest, false).unwrap();
    let info: Value = serde_json::from_slice(
        &std::fs::read(store.join(&plain.compressed_digest).join("info")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["toc-digest"], built.toc_digest.as_str());
    assert_eq!(info["diff-digest"], plain.diff_digest.as_str());
    // A wrong digest still changes nothing.
    let other = format!("sha256:{}", "2".repeat(64));
    assert!(toc_layers::add(&store, &blob, &other, false).is_err());
    assert!(!store.join("toc").join(&other).exists());
}
