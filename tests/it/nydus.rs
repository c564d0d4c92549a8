//! Nydus RAFS v6 images (tests/fixtures/nydus: bootstraps and blobs made by
//! nydus-image, manifests from nydusd) through the binary: every read
//! command with --blob-dir and --device, inspect's blob table, the
//! one-line errors, OCI layouts, --blob-inline-meta and export --block
//! disks (the mutation sweep is in nydus_mutation.rs).

use crate::common::*;

use std::path::Path;
use std::process::Command;

#[path = "../../src/nydus/fixtures.rs"]
mod fixtures;
pub use fixtures::{blob_of, case, expected, files_of, CASES, MERGED};

fn erofs_fuse(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// `erofs-fuse manifest ARGS...` succeeds and prints case `name`'s
/// expected manifest.
fn assert_manifest(name: &str, args: &[&std::ffi::OsStr]) {
    let mut all = vec!["manifest".as_ref()];
    all.extend_from_slice(args);
    let out = erofs_fuse(&all);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    if let Some(diff) = manifest_diff(&expected(name), &got, 10) {
        panic!("{name}:\n{diff}");
    }
}

#[test]
fn manifest_of_every_case_is_nydusds_with_blob_dir_and_with_device() {
    for name in CASES {
        let boot = case(name).join("bootstrap");
        let dir = case(name).join("blobs");
        let blob = blob_of(name);
        for args in [
            vec![boot.as_os_str(), "--blob-dir".as_ref(), dir.as_os_str()],
            vec![boot.as_os_str(), "--device".as_ref(), blob.as_os_str()],
        ] {
            assert_manifest(name, &args);
        }
    }
}

#[test]
fn a_merged_bootstrap_over_two_blobs_reads_as_nydusd_shows_it() {
    let boot = case(MERGED).join("bootstrap");
    let dir = case(MERGED).join("blobs");
    assert_manifest(
        MERGED,
        &[boot.as_os_str(), "--blob-dir".as_ref(), dir.as_os_str()],
    );
    // Its blob table names both layers' blobs; either missing is an error.
    let out = erofs_fuse(&["inspect".as_ref(), boot.as_os_str()]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut blobs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    blobs.sort();
    assert_eq!(blobs.len(), 2);
    let only = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join(&blobs[0]), only.path().join(&blobs[0])).unwrap();
    let out = erofs_fuse(&[
        "manifest".as_ref(),
        boot.as_os_str(),
        "--blob-dir".as_ref(),
        only.path().as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&blobs[1]),
        "{text}\n{err}"
    );
}

#[test]
fn fsck_cat_ls_stat_and_extract_read_a_zstd_image() {
    let name = "b-dir-zstd";
    let boot = case(name).join("bootstrap");
    let dir = case(name).join("blobs");
    let with = |cmd: &str, rest: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![cmd.as_ref(), boot.as_os_str()];
        args.extend(["--blob-dir".as_ref(), dir.as_os_str()]);
        args.extend(rest.iter().map(|s| std::ffi::OsStr::new(*s)));
        let out = erofs_fuse(&args);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let fsck_out = String::from_utf8(with("fsck", &[])).unwrap();
    assert!(fsck_out.contains("no problems"), "{fsck_out}");
    let listing = String::from_utf8(with("ls", &["/"])).unwrap();
    assert!(listing.lines().any(|l| l == "bigdir"), "{listing}");
    let stat = String::from_utf8(with("stat", &["/xattr/f01"])).unwrap();
    assert!(stat.contains("f01"), "{stat}");
    // The largest file, against the manifest's sha256.
    let manifest = expected(name);
    let (path, sha) = manifest
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "file")
        .max_by_key(|v| v["size"].as_u64())
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["sha256"].as_str().unwrap().to_string(),
            )
        })
        .unwrap();
    let bytes = with("cat", &[&path]);
    assert_eq!(erofs_fuse::format::hex(&sha256(&bytes)), sha);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("tree");
    with("extract", &[target.to_str().unwrap()]);
    assert!(target.join(path.trim_start_matches('/')).is_file());
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[test]
fn inspect_shows_the_blob_table() {
    let boot = case("c-dir-lz4-1m").join("bootstrap");
    let dir = case("c-dir-lz4-1m").join("blobs");
    let out = erofs_fuse(&[
        "inspect".as_ref(),
        boot.as_os_str(),
        "--blob-dir".as_ref(),
        dir.as_os_str(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("28ecbef0d539350b4e17eac8e923427a55f895f5b3406285b6f9457f91998122"),
        "{text}"
    );
    assert!(text.contains("45 chunk(s), lz4_block / blake3"), "{text}");
    let out = erofs_fuse(&[
        "inspect".as_ref(),
        "--json".as_ref(),
        boot.as_os_str(),
        "--blob-dir".as_ref(),
        dir.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nydus"]["blobs"][0]["compressed_size"], 1003788);
}

#[test]
fn a_missing_blob_and_a_v5_bootstrap_are_one_line_errors() {
    let boot = case("b-dir-zstd").join("bootstrap");
    let empty = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "manifest".as_ref(),
            boot.as_os_str(),
            "--blob-dir".as_ref(),
            empty.path().as_os_str(),
        ],
        vec!["manifest".as_ref(), boot.as_os_str()],
    ] {
        let out = erofs_fuse(&args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("b24b7e0390262c2a3815c621cd7349f6796a61a3abe035664a2a76e208782960"),
            "{err}"
        );
        assert!(err.contains(&*boot.to_string_lossy()), "{err}");
    }
    let v5 = empty.path().join("v5.boot");
    let mut bytes = vec![0u8; 8192 + 4096];
    bytes[..8].copy_from_slice(&[0x53, 0x46, 0x41, 0x52, 0, 5, 0, 0]);
    std::fs::write(&v5, &bytes).unwrap();
    let out = erofs_fuse(&["ls".as_ref(), v5.as_os_str(), "/".as_ref()]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("RAFS v5 is not supported") && err.contains("v5.boot"),
        "{err}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    erofs_fuse::format::hex(&sha256(bytes))
}

/// Writes `bytes` as a blob of the layout in `dir`; returns its digest.
fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// Case `name` put in the layout in `dir` as nydusify lays a Nydus image
/// out: the blob layer, then the bootstrap layer (a tar.gz with
/// image/image.boot, annotated), in a manifest; returns the manifest's
/// (digest, size).
pub fn put_nydus_manifest(name: &str, dir: &Path) -> (String, usize) {
    let blob = std::fs::read(blob_of(name)).unwrap();
    let blob_digest = put_blob(dir, &blob);
    let mut tar = tar::Builder::new(Vec::new());
    let boot = std::fs::read(case(name).join("bootstrap")).unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_size(boot.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "image/image.boot", &boot[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = put_blob(dir, &layer);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = put_blob(dir, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.nydus.blob.v1", "digest": blob_digest, "size": blob.len(),
             "annotations": {"containerd.io/snapshot/nydus-blob": "true"}},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len(),
             "annotations": {"containerd.io/snapshot/nydus-bootstrap": "true", "containerd.io/snapshot/nydus-fs-version": "6"}},
        ],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    (put_blob(dir, &manifest), manifest.len())
}

/// An index entry for manifest `(digest, size)` of platform `arch`,
/// with `extra` fields (a Nydus artifact type).
fn entry(m: &(String, usize), arch: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut e = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m.0, "size": m.1,
        "platform": {"architecture": arch, "os": "linux"},
    });
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

/// Writes the layout's index.json: an index of `entries` tagged "nydus".
fn write_index(dir: &Path, entries: Vec<serde_json::Value>) {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = put_blob(dir, &index);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
                       "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "nydus"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The host's architecture as OCI names it.
fn host_arch() -> String {
    erofs_fuse::registry::manifest::Platform::host().architecture
}

/// An OCI layout in `dir` holding case `name` as nydusify lays a Nydus
/// image out, listed for the host in an index with the Nydus artifact
/// type after an ordinary manifest of the same platform (nydusify's
/// --merge-platform).
pub fn nydus_layout(name: &str, dir: &Path) {
    let nydus = put_nydus_manifest(name, dir);
    let decoy = br#"{"schemaVersion":2,"layers":[]}"#;
    let plain = put_blob(dir, decoy);
    let arch = host_arch();
    let artifact =
        serde_json::json!({"artifactType": "application/vnd.nydus.image.manifest.v1+json"});
    write_index(
        dir,
        vec![
            entry(&(plain, decoy.len()), &arch, serde_json::json!({})),
            entry(&nydus, &arch, artifact),
        ],
    );
}

#[test]
fn an_index_is_read_for_the_platform_marked_or_not() {
    // A marked Nydus manifest for another platform first, then an
    // unmarked one for the host (nydusify >= 2.3.5 marks none): the
    // host's tree is read, as nydusd's would be.
    let tmp = tempfile::tempdir().unwrap();
    let other = put_nydus_manifest("b-dir-zstd", tmp.path());
    let host = put_nydus_manifest("e-tar-rafs", tmp.path());
    let artifact =
        serde_json::json!({"artifactType": "application/vnd.nydus.image.manifest.v1+json"});
    write_index(
        tmp.path(),
        vec![
            entry(&other, "s390x", artifact),
            entry(&host, &host_arch(), serde_json::json!({})),
        ],
    );
    let reference = format!("oci:{}:nydus", tmp.path().display());
    assert_manifest("e-tar-rafs", &[reference.as_ref()]);
    // inspect shows the chosen image's blob table.
    let out = erofs_fuse(&["inspect".as_ref(), reference.as_ref()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("586553496d40ad584767f2b4eed23369a4d15dbf7a43dd47acf5661e41a69518"),
        "{text}"
    );
}

#[test]
fn options_that_do_not_apply_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    nydus_layout("b-dir-zstd", tmp.path());
    let reference = format!("oci:{}:nydus", tmp.path().display());
    let boot = case("b-dir-zstd").join("bootstrap");
    let blob = blob_of("b-dir-zstd");
    let verity = format!("{}:{}", "00".repeat(32), blob.display());
    let plain = fixture("plain-4k.erofs");
    let cases: Vec<Vec<&std::ffi::OsStr>> = vec![
        vec![reference.as_ref(), "--verity".as_ref(), verity.as_ref()],
        vec![reference.as_ref(), "--zinfo".as_ref(), blob.as_os_str()],
        vec![reference.as_ref(), "--blob-inline-meta".as_ref()],
        vec![
            reference.as_ref(),
            "--blob-dir".as_ref(),
            tmp.path().as_os_str(),
        ],
        vec![
            boot.as_os_str(),
            "--zinfo".as_ref(),
            blob.as_os_str(),
            "--device".as_ref(),
            blob.as_os_str(),
        ],
        // --verify-tars: tarfs bootstraps only.
        vec![
            boot.as_os_str(),
            "--device".as_ref(),
            blob.as_os_str(),
            "--verify-tars".as_ref(),
        ],
        vec![plain.as_os_str(), "--verify-tars".as_ref()],
    ];
    for args in cases {
        let mut all = vec!["ls".as_ref()];
        all.extend(args.iter().copied());
        all.push("/".as_ref());
        let out = erofs_fuse(&all);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success() && err.lines().count() == 1 && err.contains("apply"),
            "{args:?}: {err}"
        );
    }
    // A store reference: refused before anything is pulled or mounted.
    let mnt = tempfile::tempdir().unwrap();
    for flag in ["--blob-inline-meta", "--verify-tars"] {
        let out = erofs_fuse(&[
            "mount".as_ref(),
            "docker.io/library/busybox:1".as_ref(),
            mnt.path().as_os_str(),
            flag.as_ref(),
        ]);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success() && err.lines().count() == 1 && err.contains("apply"),
            "{flag}: {err}"
        );
    }
}

#[test]
fn a_nydus_image_in_an_oci_layout_reads_in_place() {
    for name in ["b-dir-zstd", "e-tar-rafs"] {
        let tmp = tempfile::tempdir().unwrap();
        nydus_layout(name, tmp.path());
        let reference = format!("oci:{}:nydus", tmp.path().display());
        assert_manifest(name, &[reference.as_ref()]);
        // A bootstrap layer that does not match its digest is refused.
        let rafs = erofs_fuse::nydus::read_rafs(&case(name).join("bootstrap"), 0)
            .unwrap()
            .unwrap();
        let blob_path = tmp.path().join("blobs/sha256").join(&rafs.blobs[0].id);
        let boot_layer = std::fs::read_dir(tmp.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
            .unwrap();
        let mut bytes = std::fs::read(&boot_layer).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&boot_layer, &bytes).unwrap();
        let out = erofs_fuse(&["ls".as_ref(), reference.as_ref(), "/".as_ref()]);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success() && err.contains("bootstrap layer") && err.lines().count() == 1,
            "{err}"
        );
        bytes[last] ^= 1;
        std::fs::write(&boot_layer, &bytes).unwrap();
        // A missing blob is named.
        std::fs::remove_file(&blob_path).unwrap();
        let out = erofs_fuse(&["ls".as_ref(), reference.as_ref(), "/".as_ref()]);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains(&rafs.blobs[0].id) && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn manifest_of_a_blob_with_inline_meta() {
    let name = "b-dir-zstd";
    let mut blob = std::fs::read(blob_of(name)).unwrap();
    let mut boot = std::fs::read(case(name).join("bootstrap")).unwrap();
    // As nydus-image writes the bootstrap of an inline blob (builder
    // src/lib.rs, core/context.rs): the blob id a placeholder, "x" 64
    // times, and INLINED_FS_META | HAS_TAR_HEADER | HAS_TOC set.
    use erofs_fuse::nydus::layout::{BlobEntry, SuperBlockExt, EXT_SUPERBLOCK_OFFSET};
    let at =
        EXT_SUPERBLOCK_OFFSET as usize + std::mem::offset_of!(SuperBlockExt, blob_table_offset);
    let table = u64::from_le_bytes(boot[at..at + 8].try_into().unwrap()) as usize;
    boot[table..table + 64].fill(b'x');
    let f = table + std::mem::offset_of!(BlobEntry, features);
    let features = u32::from_le_bytes(boot[f..f + 4].try_into().unwrap()) | 0x3000_0002;
    boot[f..f + 4].copy_from_slice(&features.to_le_bytes());
    blob.extend_from_slice(&boot);
    let mut h = tar::Header::new_gnu();
    h.set_path("image.boot").unwrap();
    h.set_size(boot.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    blob.extend_from_slice(h.as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("blob");
    std::fs::write(&path, &blob).unwrap();
    assert_manifest(name, &["--blob-inline-meta".as_ref(), path.as_os_str()]);
}

/// What `nydus-image export --block` makes of case `name` (as
/// service/src/block_device.rs lays it out): the bootstrap, then the
/// blob's uncompressed address space at its device slot's block.
pub fn export_block(name: &str) -> Vec<u8> {
    let boot = std::fs::read(case(name).join("bootstrap")).unwrap();
    let blob = std::fs::read(blob_of(name)).unwrap();
    let rafs = erofs_fuse::nydus::read_rafs(&case(name).join("bootstrap"), 0)
        .unwrap()
        .unwrap();
    let slot = &boot[1408..1408 + 128];
    let blocks = u32::from_le_bytes(slot[64..68].try_into().unwrap()) as usize;
    let mapped = u32::from_le_bytes(slot[68..72].try_into().unwrap()) as usize;
    let mut disk = boot.clone();
    disk.resize((mapped + blocks) * 4096, 0);
    for c in &rafs.chunks {
        let stored = &blob[c.compressed_offset as usize..][..c.compressed_size as usize];
        let data = if c.flags & 1 != 0 {
            zstd::bulk::decompress(stored, c.uncompressed_size as usize).unwrap()
        } else {
            stored.to_vec()
        };
        let at = mapped * 4096 + c.uncompressed_offset as usize;
        disk[at..at + data.len()].copy_from_slice(&data);
    }
    disk
}

#[test]
fn an_export_block_disk_still_reads_flat_without_options() {
    for name in ["a-dir-none", "b-dir-zstd"] {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("disk");
        std::fs::write(&disk, export_block(name)).unwrap();
        assert_manifest(name, &[disk.as_os_str()]);
    }
}
