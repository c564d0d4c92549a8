//! `erofs-fuse attach` against a real docker-registry (2.8: no referrers
//! API, so the referrers tag schema is kept): an image of a tar.gz, a
//! plain tar, an EROFS-native and a zstd layer gets one layer-index
//! artifact per non-zstd layer, which `find_layer_indexes` finds; each
//! blob is checked against an independent maker (the tar index mounted by
//! the kernel with the uncompressed tar equals the pulled layer; the zinfo
//! and the index are what `convert` writes; the tree is byte for byte
//! `veritysetup format`'s over the zero-padded data); a second run pushes
//! nothing; basic and bearer auth work (the token asked with push scope).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use erofs_fuse::registry::referrers::{find_layer_indexes, LayerIndex};
use erofs_fuse::registry::{ImageSource, Reference, RegistryClient};

mod api;

use crate::common::pulled::{cli, pull_ok, tar_of};
use crate::common::registry::{available, sha256, write_oci_layout, Layer, Registry, Variant};
use crate::common::{have, run, run_ok, tree_manifest, xorshift, KernelMount, Need};

/// The layers pushed: (media type, blob, what a reader reads of it).
struct Layers {
    gz: Vec<u8>,
    tar: Vec<u8>,
    gz_tar: Vec<u8>,
    erofs: Vec<u8>,
    zstd: Vec<u8>,
}

fn layers() -> Layers {
    let mut next = xorshift(11);
    let noise: Vec<u8> = (0..40_000).flat_map(|_| next().to_le_bytes()).collect();
    let gz_tar = tar_of(&[
        ("etc/hostname", b"attach\n".to_vec()),
        ("usr/bin/noise", noise),
        ("usr/share/doc/a", b"a\n".repeat(3000)),
    ]);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&gz_tar).unwrap();
    let gz = encoder.finish().unwrap();
    let tar = tar_of(&[
        ("plain/file", b"plain\n".repeat(1000)),
        ("plain/.wh.gone", Vec::new()),
    ]);
    let erofs =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.erofs"))
            .unwrap();
    let zstd = zstd::encode_all(&tar_of(&[("z", b"zstd\n")])[..], 3).unwrap();
    Layers {
        gz,
        tar,
        gz_tar,
        erofs,
        zstd,
    }
}

/// Pushes the image as `app:latest`: gives the layers and the manifest's
/// digest.
fn push_image(reg: &Registry, dir: &Path) -> (Layers, String) {
    let l = layers();
    let layer = |media: &str, bytes: &[u8], diff: &[u8]| Layer {
        media_type: media.into(),
        bytes: bytes.to_vec(),
        diff_id: Some(sha256(diff)),
    };
    let layout = dir.join("layout");
    let manifest = write_oci_layout(
        &layout,
        &[
            layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &l.gz,
                &l.gz_tar,
            ),
            layer("application/vnd.oci.image.layer.v1.tar", &l.tar, &l.tar),
            layer("application/vnd.erofs.layer.v1.erofs", &l.erofs, &l.erofs),
            layer(
                "application/vnd.oci.image.layer.v1.tar+zstd",
                &l.zstd,
                &l.zstd,
            ),
        ],
    );
    reg.push_oci_layout(&layout, "app:latest");
    (l, manifest)
}

/// `erofs-fuse attach REF` with the registry's options: its stdout lines.
fn attach(reg: &Registry, store: &Path) -> Vec<String> {
    attach_at(reg, &reg.reference("app:latest"), store)
}

/// `erofs-fuse attach REFERENCE` with `reg`'s options: its stdout lines.
fn attach_at(reg: &Registry, reference: &str, store: &Path) -> Vec<String> {
    let out = run_ok(cli(store, &["attach", "--quiet", reference]).args(reg.cli_args()));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The requests that write (PUT, POST, PATCH, DELETE) in the registry's log.
fn writes(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| {
            ["\"PUT ", "\"POST ", "\"PATCH ", "\"DELETE "]
                .iter()
                .any(|m| l.contains(m))
        })
        .count()
}

/// Blob `digest` of `size` bytes from `client`, written to `path`.
fn fetch(client: &RegistryClient, digest: &str, size: u64, path: &Path) -> PathBuf {
    let mut bytes = Vec::new();
    client.blob(digest, size, &mut bytes, &|_| {}).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// `veritysetup format` over `data` zero-padded to 4 KiB, with attach's
/// parameters (4 KiB blocks, 32 zero bytes of salt, the layer's UUID):
/// the hash file's bytes.
fn veritysetup_tree(work: &Path, data: &[u8], layer: &str) -> Vec<u8> {
    let padded = work.join("padded");
    let mut bytes = data.to_vec();
    bytes.resize(data.len().next_multiple_of(4096).max(4096), 0);
    std::fs::write(&padded, &bytes).unwrap();
    let hash = work.join("veritysetup.hash");
    let _ = std::fs::remove_file(&hash);
    let hex = &layer[7..];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    run_ok(
        Command::new("veritysetup")
            .args(["format", "--data-block-size=4096", "--hash-block-size=4096"])
            .arg(format!("--salt={}", "0".repeat(64)))
            .arg(format!("--uuid={uuid}"))
            .arg(&padded)
            .arg(&hash),
    );
    std::fs::read(hash).unwrap()
}

/// The tree of `index` equals veritysetup's over `data`, and its root
/// and data size are the annotations'.
fn check_tree(client: &RegistryClient, work: &Path, index: &LayerIndex, data: &[u8]) {
    let tree = std::fs::read(fetch(
        client,
        &index.tree.digest,
        index.tree.size,
        &work.join("tree"),
    ))
    .unwrap();
    assert_eq!(index.data_size, data.len() as u64, "{}", index.layer);
    // Compared by digest: a failure prints two lines, not the trees.
    let theirs = veritysetup_tree(work, data, &index.layer);
    assert_eq!(sha256(&tree), sha256(&theirs), "tree of {}", index.layer);
    let root = erofs_fuse::verity::verify(
        &std::fs::File::open(work.join("padded")).unwrap(),
        &std::fs::File::open(work.join("tree")).unwrap(),
        0,
        &index.root,
    );
    assert!(root.is_ok(), "{}: {root:?}", index.layer);
}

/// The tree of `image` (with `devices`) as the kernel mounts it.
fn kernel_tree(image: &Path, devices: &[PathBuf]) -> String {
    let mount = KernelMount::new(image, devices);
    tree_manifest(mount.path())
}

/// Checks the tar index of a tar layer: the kernel mounts it with the tar
/// as device to the pulled layer's tree, and it is `convert --aufs`'s
/// index byte for byte (with the zinfo `convert --gzinfo` writes, for a
/// gzip layer).
fn check_tar_index(
    client: &RegistryClient,
    work: &Path,
    store: &Path,
    index: &LayerIndex,
    blob: &[u8],
    tar: &[u8],
) {
    let tar_index = index.tar_index.as_ref().expect("a tar index");
    let got = fetch(
        client,
        &tar_index.digest,
        tar_index.size,
        &work.join("index.erofs"),
    );
    let tar_path = work.join("layer.tar");
    std::fs::write(&tar_path, tar).unwrap();
    let mine = kernel_tree(&got, std::slice::from_ref(&tar_path));
    let pulled = store.join(&index.layer).join("layer.erofs");
    assert_eq!(mine, kernel_tree(&pulled, &[]), "{}", index.layer);
    let input = work.join("blob");
    std::fs::write(&input, blob).unwrap();
    let made = work.join("convert.erofs");
    let mut convert = Command::new(crate::common::bin());
    convert
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["convert", "--aufs"])
        .arg(&input)
        .arg(&made);
    if index.zinfo.is_some() {
        convert.arg("--tar-out").arg(work.join("convert.tar"));
        convert.arg("--gzinfo").arg(work.join("convert.zinfo"));
    }
    run_ok(&mut convert);
    let made = sha256(&std::fs::read(&made).unwrap());
    assert_eq!(
        sha256(&std::fs::read(&got).unwrap()),
        made,
        "index of {}",
        index.layer
    );
    // The index's own tree: veritysetup's over the index, its root the
    // annotation's.
    let (tree, root) = index
        .index_tree
        .as_ref()
        .expect("a tree over the tar index");
    let fetched =
        std::fs::read(fetch(client, &tree.digest, tree.size, &work.join("itree"))).unwrap();
    let index_bytes = std::fs::read(&got).unwrap();
    let theirs = veritysetup_tree(work, &index_bytes, &index.layer);
    assert_eq!(
        sha256(&fetched),
        sha256(&theirs),
        "index tree of {}",
        index.layer
    );
    let verified = erofs_fuse::verity::verify(
        &std::fs::File::open(work.join("padded")).unwrap(),
        &std::fs::File::open(work.join("itree")).unwrap(),
        0,
        root,
    );
    assert!(verified.is_ok(), "{}: {verified:?}", index.layer);
    if let Some(zinfo) = &index.zinfo {
        let fetched = fetch(client, &zinfo.digest, zinfo.size, &work.join("zinfo"));
        assert_eq!(
            sha256(&std::fs::read(fetched).unwrap()),
            sha256(&std::fs::read(work.join("convert.zinfo")).unwrap()),
            "zinfo of {}",
            index.layer
        );
    }
    for name in [
        "convert.tar",
        "convert.zinfo",
        "convert.erofs",
        "blob",
        "itree",
    ] {
        let _ = std::fs::remove_file(work.join(name));
    }
}

/// The whole check over `variant`.
fn attach_over(variant: Variant) {
    let reg = Registry::start(variant);
    let work = tempfile::tempdir().unwrap();
    let (l, manifest) = push_image(&reg, work.path());
    let store = work.path().join("store");
    let before = writes(&reg);
    let tokens = match variant {
        Variant::Token => reg.token_requests().len(),
        _ => 0,
    };
    let lines = attach(&reg, &store);
    assert!(writes(&reg) > before, "attach pushed nothing");
    if variant == Variant::Token {
        // One token serves the reads and the uploads: asked with push
        // scope from the first request on.
        let scopes = reg.token_requests().split_off(tokens);
        assert!(!scopes.is_empty());
        assert!(
            scopes
                .iter()
                .all(|(s, granted)| *granted && s == "repository:app:pull,push"),
            "{scopes:?}"
        );
    }
    let digests = [
        sha256(&l.gz),
        sha256(&l.tar),
        sha256(&l.erofs),
        sha256(&l.zstd),
    ];
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (line, digest) in lines.iter().zip(&digests) {
        assert!(line.starts_with(&format!("layer {digest} ")), "{line}");
    }
    assert!(lines[3].contains("skipped"), "{}", lines[3]);
    // The layers fetched into staging are gone with it.
    let left: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let reference = Reference::parse(&reg.reference("app:latest")).unwrap();
    let client = RegistryClient::new(&reference, &reg.options()).unwrap();
    let found = find_layer_indexes(&client, &manifest).unwrap();
    let layers: Vec<&str> = found.iter().map(|i| i.layer.as_str()).collect();
    assert_eq!(layers, [&digests[0], &digests[1], &digests[2]]);
    for (index, line) in found.iter().zip(&lines) {
        let hex = erofs_fuse::verity::hex(&index.root);
        assert_eq!(
            line,
            &format!(
                "layer {} referrer {} root {hex}",
                index.layer, index.artifact
            )
        );
    }
    assert!(found[2].tar_index.is_none() && found[2].zinfo.is_none());
    assert!(found[1].tar_index.is_some() && found[1].zinfo.is_none());

    check_tree(&client, work.path(), &found[0], &l.gz_tar);
    check_tree(&client, work.path(), &found[1], &l.tar);
    check_tree(&client, work.path(), &found[2], &l.erofs);
    let pulled = work.path().join("pulled");
    pull_ok(&pulled, &reg.reference("app:latest"), &reg.cli_args());
    check_tar_index(&client, work.path(), &pulled, &found[0], &l.gz, &l.gz_tar);
    check_tar_index(&client, work.path(), &pulled, &found[1], &l.tar, &l.tar);

    // Again: everything is found attached, nothing is written.
    let before = writes(&reg);
    let again = attach(&reg, &store);
    assert_eq!(
        writes(&reg),
        before,
        "the second attach wrote:\n{}",
        reg.log()
    );
    for (line, first) in again.iter().zip(&lines).take(3) {
        assert_eq!(line, &format!("{first} (already attached)"));
    }
    if variant == Variant::Token {
        let scopes = reg.token_requests();
        assert!(
            scopes
                .iter()
                .any(|(s, granted)| *granted && s.ends_with(":pull,push")),
            "{scopes:?}"
        );
    }
}

fn needs(test: &str) -> bool {
    available(test)
        && have(
            test,
            &[Need::Root, Need::Program("veritysetup"), Need::KernelErofs],
        )
}

#[test]
fn attach_over_http_tag_schema() {
    if needs("attach_over_http_tag_schema") {
        attach_over(Variant::Http);
    }
}

#[test]
fn attach_with_basic_auth() {
    if needs("attach_with_basic_auth") {
        attach_over(Variant::Basic);
    }
}

#[test]
fn attach_with_bearer_tokens_asks_push_scope() {
    if needs("attach_with_bearer_tokens_asks_push_scope") {
        attach_over(Variant::Token);
    }
}

/// With the layers pulled first, attach reads the store's blobs: no layer
/// blob is fetched again; `--force` pushes a new artifact per layer that
/// replaces the old one in the tag schema.
#[test]
fn attach_reuses_pulled_blobs_and_force_replaces() {
    if !needs("attach_reuses_pulled_blobs_and_force_replaces") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    let work = tempfile::tempdir().unwrap();
    let (l, manifest) = push_image(&reg, work.path());
    let store = work.path().join("store");
    pull_ok(&store, &reg.reference("app:latest"), &reg.cli_args());
    let blob_gets = |reg: &Registry| {
        let log = reg.log();
        [&l.gz, &l.tar, &l.erofs]
            .iter()
            .map(|b| {
                log.lines()
                    .filter(|x| x.contains(&format!("\"GET /v2/app/blobs/{}", sha256(b))))
                    .count()
            })
            .sum::<usize>()
    };
    let before = blob_gets(&reg);
    let first = attach(&reg, &store);
    assert_eq!(
        blob_gets(&reg),
        before,
        "attach fetched a layer the store has"
    );
    let out = run(cli(
        &store,
        &["attach", "--quiet", "--force", &reg.reference("app:latest")],
    )
    .args(reg.cli_args()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forced = String::from_utf8(out.stdout).unwrap();
    // The same inputs give the same artifacts: the same lines.
    assert_eq!(forced.lines().collect::<Vec<_>>(), first);
    let reference = Reference::parse(&reg.reference("app:latest")).unwrap();
    let client = RegistryClient::new(&reference, &reg.options()).unwrap();
    let listed = client.referrers(&manifest, None).unwrap();
    assert_eq!(listed.len(), 3, "one entry per layer: {listed:?}");
}
