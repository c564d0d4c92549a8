//! Nydus images by reference (tests/fixtures/nydus laid out as nydusify
//! pushes them: a Nydus blob layer and an annotated bootstrap layer).
//! Fast tier: `pull oci:DIR` keeps the bootstrap and blob as they are
//! (read back from the store equal to nydusd's manifest), `store gc` keeps
//! them while an image needs them, and manifests whose bootstrap and blob
//! layers disagree are one-line errors naming the reference and digest.
//! Privileged tier (registry, FUSE): `pull` then `mount REF` with the
//! registry gone, `mount --lazy REF` reading blobs by range, and a byte
//! flipped in the registry's stored blob failing only the files of its
//! chunk, with EIO.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::pulled::{cli, pull, pull_ok, records, NO_ARGS};
use crate::common::{bin, manifest_diff, run};
use crate::nydus::{blob_of, case, expected};

/// The bootstrap annotation and the blob media type.
const BOOT_KEY: &str = "containerd.io/snapshot/nydus-bootstrap";
const BLOB_TYPE: &str = "application/vnd.oci.image.layer.nydus.blob.v1";

/// `sha256:<hex>` of `bytes`.
fn digest_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        erofs_fuse::format::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes))
    )
}

/// Writes `bytes` as a blob of the layout `dir`; gives its descriptor
/// fields (digest, size).
fn put(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = digest_of(bytes);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    (digest, bytes.len())
}

/// Case `name`'s blob layer descriptor, its blob put in `dir`.
fn blob_layer(dir: &Path, name: &str) -> Value {
    let (digest, size) = put(dir, &std::fs::read(blob_of(name)).unwrap());
    json!({"mediaType": BLOB_TYPE, "digest": digest, "size": size,
           "annotations": {"containerd.io/snapshot/nydus-blob": "true"}})
}

/// Case `name`'s bootstrap layer descriptor (a tar.gz holding
/// image/image.boot), put in `dir`.
fn boot_layer(dir: &Path, name: &str) -> Value {
    boot_layer_of(dir, &std::fs::read(case(name).join("bootstrap")).unwrap())
}

/// A bootstrap layer descriptor (a tar.gz holding image/image.boot =
/// `boot`), put in `dir`.
fn boot_layer_of(dir: &Path, boot: &[u8]) -> Value {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(boot.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1);
    header.set_cksum();
    tar.append_data(&mut header, "image/image.boot", boot)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    let (digest, size) = put(dir, &gz.finish().unwrap());
    json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size,
           "annotations": {BOOT_KEY: "true", "containerd.io/snapshot/nydus-fs-version": "6"}})
}

/// An OCI layout in `dir` whose `latest` is a manifest of `layers`; gives
/// the manifest's digest.
fn write_layout(dir: &Path, layers: Vec<Value>) -> String {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    write_layout_with(dir, config, layers)
}

/// As [`write_layout`], with the image config `config`.
fn write_layout_with(dir: &Path, config: &[u8], layers: Vec<Value>) -> String {
    let (config_digest, config_size) = put(dir, config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let (digest, size) = put(dir, &serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digest
}

/// Case `name` laid out in `dir` as nydusify pushes it (blob, then
/// bootstrap); gives the manifest digest.
fn nydus_layout(dir: &Path, name: &str) -> String {
    let layers = vec![blob_layer(dir, name), boot_layer(dir, name)];
    write_layout(dir, layers)
}

/// The layer digests of `record` of the kind `kind`.
fn layers_of(record: &Value, kind: &str) -> Vec<String> {
    record["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == kind)
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// `erofs-fuse manifest` of the pulled bootstrap with its pulled blob
/// (the store's files as they are), which must be case `name`'s.
fn assert_store_reads(store: &Path, record: &Value, name: &str) {
    let boot = &layers_of(record, "nydus-bootstrap")[0];
    let blob = &layers_of(record, "nydus-blob")[0];
    let out = run(Command::new(bin())
        .arg("manifest")
        .arg(store.join(boot).join("nydus.boot"))
        .arg("--device")
        .arg(store.join(blob).join("blob")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {err}");
    let got = String::from_utf8(out.stdout).unwrap();
    if let Some(diff) = manifest_diff(&expected(name), &got, 10) {
        panic!("{name}:\n{diff}");
    }
}

/// `erofs-fuse store gc --store STORE`'s output.
fn gc(store: &Path) -> String {
    let out = run(&mut cli(store, &["store", "gc"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pull_keeps_a_nydus_images_bootstrap_and_blob_as_they_are_and_gc_keeps_them() {
    let name = "b-dir-zstd";
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let manifest = nydus_layout(&layout, name);
    let store = work.path().join("store");
    let reference = format!("oci:{}:latest", layout.display());
    assert_eq!(pull_ok(&store, &reference, NO_ARGS), manifest);
    let record = &records(&store)[0];
    // Nothing converted: the blob kept byte for byte, no tar index made.
    let blob = &layers_of(record, "nydus-blob")[0];
    assert_eq!(
        std::fs::read(store.join(blob).join("blob")).unwrap(),
        std::fs::read(blob_of(name)).unwrap()
    );
    assert_eq!(
        std::fs::read(
            store
                .join(&layers_of(record, "nydus-bootstrap")[0])
                .join("nydus.boot")
        )
        .unwrap(),
        std::fs::read(case(name).join("bootstrap")).unwrap()
    );
    // No layer.erofs: `store serve` must not take the bootstrap for a
    // plain EROFS layer.
    let boot = &layers_of(record, "nydus-bootstrap")[0];
    assert!(!store.join(boot).join("layer.erofs").exists());
    assert_store_reads(&store, record, name);
    // gc keeps what the image needs; once it is removed, gc removes both.
    assert!(gc(&store).starts_with("removed 0 layers, 0 blobs"));
    assert_store_reads(&store, record, name);
    let rmi = run(&mut cli(&store, &["rmi", &reference]));
    assert!(rmi.status.success());
    assert!(gc(&store).starts_with("removed 2 layers"), "gc after rmi");
    assert!(!store.join(blob).exists());
}

#[test]
fn pull_prefer_nydus_takes_an_indexs_nydus_marked_entry_as_layouts_are_read() {
    // An ordinary manifest for the host first (without a config: pulling
    // it fails), then the Nydus-marked one (nydusify --merge-platform).
    let name = "e-tar-rafs";
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    crate::nydus::nydus_layout(name, &layout);
    let store = work.path().join("store");
    let reference = format!("oci:{}:nydus", layout.display());
    // Without --prefer-nydus, the ordinary entry (which fails here).
    assert!(!pull(&store, &reference, NO_ARGS).status.success());
    pull_ok(&store, &reference, &["--prefer-nydus"]);
    assert_store_reads(&store, &records(&store)[0], name);
}

/// `pull REF` of the layout in `dir` fails with one line naming the
/// reference and `digest` (and saying `what`).
fn assert_pull_fails(dir: &Path, digest: &str, what: &str) {
    let store = dir.join("store");
    let reference = format!("oci:{}:latest", dir.display());
    let out = pull(&store, &reference, NO_ARGS);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{what}: pulled");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(
        err.contains(&reference) && err.contains(digest) && err.contains(what),
        "{what}: {err}"
    );
    assert!(records(&store).is_empty(), "{what}: a record was kept");
}

#[test]
fn nydus_manifests_whose_layers_disagree_are_one_line_errors() {
    // Blob layers and no bootstrap: not an ordinary image either.
    let tmp = tempfile::tempdir().unwrap();
    let digest = write_layout(tmp.path(), vec![blob_layer(tmp.path(), "b-dir-zstd")]);
    assert_pull_fails(tmp.path(), &digest, "no bootstrap layer");

    // A bootstrap whose blob is not a layer.
    let tmp = tempfile::tempdir().unwrap();
    let digest = write_layout(tmp.path(), vec![boot_layer(tmp.path(), "b-dir-zstd")]);
    let id = blob_of("b-dir-zstd");
    let id = id.file_name().unwrap().to_str().unwrap();
    assert_pull_fails(tmp.path(), &digest, "which is not a Nydus blob layer");
    assert_pull_fails(tmp.path(), id, "which is not a Nydus blob layer");

    // A blob layer the bootstrap does not list.
    let tmp = tempfile::tempdir().unwrap();
    let extra = blob_layer(tmp.path(), "c-dir-lz4-1m");
    let extra_digest = extra["digest"].as_str().unwrap().to_string();
    let layers = vec![
        blob_layer(tmp.path(), "b-dir-zstd"),
        extra,
        boot_layer(tmp.path(), "b-dir-zstd"),
    ];
    let digest = write_layout(tmp.path(), layers);
    assert_pull_fails(tmp.path(), &digest, "is not in its bootstrap's blob table");
    assert_pull_fails(tmp.path(), &extra_digest, "is not in its bootstrap");
}

#[test]
fn bad_bootstrap_layers_are_one_line_errors_naming_the_reference_and_digest() {
    let name = "b-dir-zstd";
    // Larger than the cap by its descriptor: refused before any fetch.
    let tmp = tempfile::tempdir().unwrap();
    let mut boot = boot_layer(tmp.path(), name);
    let digest = boot["digest"].as_str().unwrap().to_string();
    boot["size"] = json!(erofs_fuse::nydus::inline::MAX_BOOTSTRAP + 1);
    write_layout(tmp.path(), vec![blob_layer(tmp.path(), name), boot]);
    assert_pull_fails(tmp.path(), &digest, "bytes (at most");

    // A size other than its descriptor's.
    let tmp = tempfile::tempdir().unwrap();
    let mut boot = boot_layer(tmp.path(), name);
    let digest = boot["digest"].as_str().unwrap().to_string();
    boot["size"] = json!(boot["size"].as_u64().unwrap() - 1);
    write_layout(tmp.path(), vec![blob_layer(tmp.path(), name), boot]);
    // (The layout source refuses it as it streams, naming the layout.)
    let out = pull(
        &tmp.path().join("store"),
        &format!("oci:{}:latest", tmp.path().display()),
        NO_ARGS,
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(
        err.contains(&digest) && err.contains("is longer than"),
        "{err}"
    );

    // A plain EROFS image, not a RAFS v6 bootstrap.
    let tmp = tempfile::tempdir().unwrap();
    let plain =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.erofs"))
            .unwrap();
    let boot = boot_layer_of(tmp.path(), &plain);
    let digest = boot["digest"].as_str().unwrap().to_string();
    write_layout(tmp.path(), vec![blob_layer(tmp.path(), name), boot]);
    assert_pull_fails(tmp.path(), &digest, "RAFS");
}

#[cfg(feature = "privileged")]
mod registry;

#[test]
fn a_merged_index_pulls_its_ordinary_image_not_the_nydus_one() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    let nydus = nydus_layout(&dir, "a-dir-none");
    // The ordinary image: one tar+gzip layer.
    let tar = crate::common::pulled::tar_of(&[("hello", b"ordinary\n")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let (layer, layer_size) = put(&dir, &gz.finish().unwrap());
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&tar)]}});
    let (config, config_size) = put(&dir, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer, "size": layer_size}],
    });
    let (ordinary, ordinary_size) = put(&dir, &serde_json::to_vec(&manifest).unwrap());
    let nydus_size = std::fs::metadata(dir.join("blobs/sha256").join(&nydus[7..]))
        .unwrap()
        .len();
    // As nydusify --merge-platform pushes it: ordinary first, then Nydus
    // (marked by its artifact type: oci-spec 0.10 reads no "os.features").
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let merged = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": manifest_type, "digest": ordinary, "size": ordinary_size,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": manifest_type, "digest": nydus, "size": nydus_size,
             "artifactType": "application/vnd.nydus.image.manifest.v1+json",
             "platform": {"architecture": "amd64", "os": "linux",
                          "os.features": ["nydus.remoteimage.v1"]}},
        ],
    });
    let (merged, merged_size) = put(&dir, &serde_json::to_vec(&merged).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": merged, "size": merged_size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let store = work.path().join("store");
    let reference = format!("oci:{}:latest", dir.display());
    pull_ok(&store, &reference, &["--platform", "linux/amd64"]);
    let record = &records(&store)[0];
    assert_eq!(record["manifest_digest"], ordinary.as_str(), "{record}");
    assert!(layers_of(record, "nydus-bootstrap").is_empty(), "{record}");
    assert!(store.join(&layer).join("layer.erofs").is_file());
}

/// An ordinary image in `dir` whose one layer is `layer` (a tar+gzip
/// descriptor already put there, of tar `tar`): its manifest digest.
fn ordinary_layout(dir: &Path, layer: &Value, tar: &[u8]) -> String {
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest_of(tar)]}});
    let layer = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": layer["digest"], "size": layer["size"]});
    write_layout_with(dir, &serde_json::to_vec(&config).unwrap(), vec![layer])
}

#[test]
fn a_digest_pulled_as_an_ordinary_layer_and_as_a_nydus_bootstrap_serves_both_in_either_order() {
    let name = "a-dir-none";
    for nydus_first in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let nydus_dir = work.path().join("nydus");
        nydus_layout(&nydus_dir, name);
        // The same tar.gz bytes, as an ordinary image's only layer.
        let plain = work.path().join("plain");
        let boot = boot_layer(&plain, name);
        let digest = boot["digest"].as_str().unwrap().to_string();
        let gz = std::fs::read(plain.join("blobs/sha256").join(&digest[7..])).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
        ordinary_layout(&plain, &boot, &tar);
        let store = work.path().join("store");
        let refs = [
            format!("oci:{}:latest", nydus_dir.display()),
            format!("oci:{}:latest", plain.display()),
        ];
        let order = match nydus_first {
            true => [&refs[0], &refs[1]],
            false => [&refs[1], &refs[0]],
        };
        for r in order {
            pull_ok(&store, r, NO_ARGS);
        }
        let what = format!("nydus first: {nydus_first}");
        // Both files in the one directory, each usable.
        let record = records(&store)
            .into_iter()
            .find(|r| r["reference"] == refs[0].as_str())
            .unwrap();
        assert_eq!(
            layers_of(&record, "nydus-bootstrap"),
            std::slice::from_ref(&digest),
            "{what}"
        );
        assert_store_reads(&store, &record, name);
        let ls = run(Command::new(bin())
            .arg("manifest")
            .arg(store.join(&digest).join("layer.erofs")));
        assert!(
            ls.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&ls.stderr)
        );
        assert!(
            String::from_utf8_lossy(&ls.stdout).contains("image.boot"),
            "{what}"
        );
        // The diffID is the uncompressed tar's, whichever kind came first.
        let info: Value =
            serde_json::from_slice(&std::fs::read(store.join(&digest).join("info")).unwrap())
                .unwrap();
        assert_eq!(info["diff-digest"], digest_of(&tar).as_str(), "{what}");
        assert_eq!(info["diff-size"], tar.len() as u64, "{what}");
    }
}
