//! The Nydus fixtures of tests/fixtures/nydus (made by nydus-image,
//! manifests from nydusd): shared by the library's tests and, through
//! `#[path]`, the integration tests.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The cases, each a bootstrap and a blob directory.
pub const CASES: &[&str] = &[
    "a-dir-none",
    "b-dir-zstd",
    "c-dir-lz4-1m",
    "d-tar-tarfs",
    "e-tar-rafs",
];

/// A merged bootstrap (`nydus-image merge` of two zstd dir-rafs layers)
/// over both layers' blobs; its nydusd manifest is in the case's
/// directory. Not in [`CASES`], whose cases have one blob each.
pub const MERGED: &str = "f-merged";

/// The directory of a case.
pub fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nydus")
        .join(name)
}

/// The one blob file of a case.
pub fn blob_of(name: &str) -> PathBuf {
    let mut entries: Vec<_> = std::fs::read_dir(case(name).join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    entries.pop().unwrap()
}

/// The manifest nydusd showed for a case (the fixtures' README): a-c are
/// plain-4k's tree with the root's mtime 0, d-e the layer's.
pub fn expected(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if name == MERGED {
        return std::fs::read_to_string(case(name).join("manifest.jsonl")).unwrap();
    }
    if name.starts_with("d-") || name.starts_with("e-") {
        return std::fs::read_to_string(root.join("nydus/layer.manifest.jsonl")).unwrap();
    }
    let mut text = String::new();
    let file = std::fs::File::open(root.join("tree.manifest.jsonl.gz")).unwrap();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let first = first.replace("\"mtime\": 1700000000000000000", "\"mtime\": 0");
    format!("{first}\n{rest}")
}

/// The regular files of a manifest: (path, size, sha256 hex).
pub fn files_of(manifest: &str) -> Vec<(String, u64, String)> {
    manifest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "file")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("path"), v["size"].as_u64().unwrap(), s("sha256"))
        })
        .collect()
}
