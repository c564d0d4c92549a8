//! The store's own directory: one subdirectory per layer, named by the
//! layer's (compressed) digest, holding what containers/storage wants to
//! see of it.
//!
//! ```text
//! STORE/sha256:<hex>/layer.erofs   tar-index image with the tar appended
//!                   /info          containers/storage's Layer, as JSON
//!                   /blob          the layer blob as the registry has it
//! ```
//!
//! `add` builds a layer under a temporary name and renames it into place,
//! so a layer is either complete or absent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::convert::{convert, ConvertOptions, Mode};
use crate::error::{Error, Result};

/// The image of a layer.
pub const IMAGE_FILE: &str = "layer.erofs";
/// containers/storage's description of a layer.
pub const INFO_FILE: &str = "info";
/// The layer blob.
pub const BLOB_FILE: &str = "blob";

/// Largest `info` file read (they are a few hundred bytes).
pub(crate) const MAX_INFO_SIZE: u64 = 1 << 20;

/// containers/storage's compression codes (pkg/archive).
const UNCOMPRESSED: u8 = 0;
const GZIP: u8 = 2;

/// The fields of containers/storage's `Layer` a store provides in `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the blob as pulled (`sha256:...`).
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_digest: String,
    /// Size of the blob.
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    /// Digest of the uncompressed tar (the diffID in the image config).
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    /// Size of the uncompressed tar.
    #[serde(rename = "diff-size")]
    pub diff_size: u64,
    /// How the blob is compressed (0 none, 2 gzip).
    pub compression: u8,
}

/// Whether `name` is a digest as the store names layers: `sha256:` and 64
/// lowercase hex digits (so it is safe as a path component too).
pub fn is_layer_name(name: &[u8]) -> bool {
    name.strip_prefix(b"sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    })
}

/// Adds the layer blob `blob` (a tar or a tar.gz) to `store`, converted to
/// a tar-index image with OCI whiteouts turned into overlayfs ones (so the
/// layer can be an overlayfs lower directory). Returns its description;
/// a layer already present is left as it is.
pub fn add(store: &Path, blob: &Path, progress: bool) -> Result<LayerInfo> {
    std::fs::create_dir_all(store).map_err(|e| Error::io(store, e))?;
    let temp = store.join(format!(".add-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
    let result = build(&temp, blob, progress).and_then(|info| {
        let dest = store.join(&info.compressed_digest);
        if dest.exists() {
            tracing::info!(
                "{} is already in {}",
                info.compressed_digest,
                store.display()
            );
            let _ = std::fs::remove_dir_all(&temp);
            return Ok(info);
        }
        std::fs::rename(&temp, &dest).map_err(|e| Error::io(&dest, e))?;
        Ok(info)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Converts `blob` into the layer directory `dir`.
fn build(dir: &Path, blob: &Path, progress: bool) -> Result<LayerInfo> {
    let options = ConvertOptions {
        mode: Mode::Index,
        aufs: true,
        append_tar: true,
        tar_out: None,
        progress,
        implied_mtime: None,
    };
    let image = dir.join(IMAGE_FILE);
    let report = convert(blob, &image, &options)
        .map_err(|e| Error::Invalid(format!("converting {}: {e}", blob.display())))?;
    let copy = dir.join(BLOB_FILE);
    // The blob is kept as pulled; a hard link costs nothing.
    if std::fs::hard_link(blob, &copy).is_err() {
        std::fs::copy(blob, &copy).map_err(|e| Error::io(&copy, e))?;
    }
    let compressed_size = std::fs::metadata(&copy)
        .map_err(|e| Error::io(&copy, e))?
        .len();
    let info = LayerInfo {
        compressed_digest: report.input_digest.to_string(),
        compressed_size,
        diff_digest: report.tar_digest.to_string(),
        diff_size: report.tar_size,
        compression: if report.gzip { GZIP } else { UNCOMPRESSED },
    };
    let path = dir.join(INFO_FILE);
    let json = serde_json::to_vec(&info).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    Ok(info)
}

/// Largest OCI index or manifest read (they are a few KiB).
const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The layer blobs of the image in OCI image layout `dir` (as `skopeo copy
/// ... oci:DIR` writes it), bottom first. The layout must hold exactly one
/// image manifest.
pub fn oci_layers(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("index.json");
    if !index_path.is_file() {
        return Err(Error::Invalid(format!(
            "{}: not an OCI image layout (no index.json)",
            dir.display()
        )));
    }
    let index = read_json(&index_path)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let [manifest] = manifests.as_slice() else {
        return Err(Error::Invalid(format!(
            "{}: holds {} images; copy one (skopeo copy docker://REF oci:DIR:TAG into an empty DIR)",
            dir.display(),
            manifests.len()
        )));
    };
    let manifest = read_json(&blob_path(dir, &manifest["digest"])?)?;
    if manifest.get("manifests").is_some() {
        return Err(Error::Invalid(format!(
            "{}: a multi-platform index; copy one platform (skopeo copy --override-arch ...)",
            dir.display()
        )));
    }
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| Error::Invalid(format!("{}: a manifest without layers", dir.display())))?;
    layers
        .iter()
        .map(|l| blob_path(dir, &l["digest"]))
        .collect()
}

/// `dir/blobs/sha256/<hex>` for a digest value, checked to be one.
fn blob_path(dir: &Path, digest: &serde_json::Value) -> Result<PathBuf> {
    let digest = digest.as_str().unwrap_or_default();
    if !is_layer_name(digest.as_bytes()) {
        return Err(Error::Invalid(format!(
            "{}: not a sha256 digest: {digest:?}",
            dir.display()
        )));
    }
    Ok(dir.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = Vec::new();
    file.take(MAX_MANIFEST_SIZE + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::Invalid(format!("{}: too large", path.display())));
    }
    serde_json::from_slice(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// The directory of layer `digest` in `store`.
pub(crate) fn layer_dir(store: &Path, digest: &str) -> PathBuf {
    store.join(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_are_sha256_digests_only() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert!(is_layer_name(good.as_bytes()));
        assert!(!is_layer_name(
            format!("sha256:{}", "A1".repeat(32)).as_bytes()
        ));
        assert!(!is_layer_name(b"sha256:abc"));
        assert!(!is_layer_name(b"sha256:../../../../etc/passwd"));
        assert!(!is_layer_name(
            format!("sha512:{}", "a1".repeat(32)).as_bytes()
        ));
    }

    #[test]
    fn info_has_containers_storage_field_names() {
        let info = LayerInfo {
            compressed_digest: "sha256:aa".into(),
            compressed_size: 3,
            diff_digest: "sha256:bb".into(),
            diff_size: 10240,
            compression: GZIP,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"compressed-diff-digest":"sha256:aa","compressed-size":3,"diff-digest":"sha256:bb","diff-size":10240,"compression":2}"#
        );
    }
}
