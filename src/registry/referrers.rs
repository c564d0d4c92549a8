//! The layer-index artifact: one OCI manifest per layer of an image,
//! referring to the image manifest (`subject`), that carries what makes the
//! layer readable lazily and verifiably: the tar index (tar layers), the
//! gzip zinfo (tar+gzip layers) and a dm-verity tree over what a reader
//! reads (the uncompressed tar, or the EROFS-native blob). `attach` builds
//! and pushes them ([`artifact_manifest`]); mounts find them
//! ([`find_layer_indexes`]). docs/images.md, "Layer index referrers",
//! describes the format.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::manifest::OCI_MANIFEST;
use super::reference::is_sha256_digest;
use super::source::{ImageSource, Referrer, MAX_MANIFEST_SIZE};
use crate::error::Result;

/// The artifact's `artifactType`.
pub const LAYER_INDEX_ARTIFACT_TYPE: &str = "application/vnd.erofs-fuse.layer-index.v1";
/// The tar index blob: an EROFS image, metadata only, whose device 1 is
/// the layer's uncompressed tar.
pub const TAR_INDEX_MEDIA_TYPE: &str = "application/vnd.erofs-fuse.tar-index.v1.erofs";
/// The zinfo blob (SOCI's gzip checkpoint format, [`crate`]'s `gzran`).
pub const ZINFO_MEDIA_TYPE: &str = "application/vnd.erofs-fuse.gzip-zinfo.v1";
/// The dm-verity tree blob: superblock at offset 0, then the tree.
pub const VERITY_TREE_MEDIA_TYPE: &str = "application/vnd.erofs-fuse.verity-tree.v1";
/// A dm-verity tree over the tar index (as the data's), so that a mount
/// can read the index on demand too, verified.
pub const TAR_INDEX_TREE_MEDIA_TYPE: &str = "application/vnd.erofs-fuse.tar-index-tree.v1";

/// Annotation: the digest of the layer the artifact describes.
pub const LAYER_ANNOTATION: &str = "org.erofs-fuse.layer.digest";
/// Annotation: the bytes the tree covers before padding, decimal.
pub const DATA_SIZE_ANNOTATION: &str = "org.erofs-fuse.data.size";
/// Annotation: the tree's root hash, lowercase hex.
pub const ROOT_ANNOTATION: &str = "org.erofs-fuse.verity.root";
/// The zinfo's checkpoint table (each checkpoint's le64 in, le64 out, u8
/// bits, as a version 2 zinfo stores them before its window), lowercase
/// hex: with it a reader fetches only the windows of the spans it reads.
pub const ZINFO_TABLE_ANNOTATION: &str = "org.erofs-fuse.zinfo.checkpoints";
/// The root hash of the tar index's tree, lowercase hex.
pub const INDEX_ROOT_ANNOTATION: &str = "org.erofs-fuse.tar-index.root";
/// Largest checkpoint table accepted (60k checkpoints: a 240 GiB layer at
/// a 4 MiB span).
pub const MAX_ZINFO_TABLE: usize = 1 << 20;
/// Layer indexes that may fail to fetch or parse before the rest of a
/// listing is left alone (each is a request, retried).
const MAX_FAILED_FETCHES: usize = 8;

/// The OCI empty descriptor's media type (the artifact's config).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's bytes.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Their digest.
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Largest tar index accepted.
pub const MAX_TAR_INDEX: u64 = 1 << 30;
/// Largest zinfo accepted.
pub const MAX_ZINFO: u64 = 256 << 20;
/// Largest data a tree may cover (256 TiB: far past any layer, and the
/// tree's size stays computable).
pub const MAX_DATA_SIZE: u64 = 1 << 48;
/// The tree's most bytes beyond `data_size / 64` (the superblock and upper
/// levels; the leaves take 1/128 of the data).
const TREE_SLACK: u64 = 1 << 20;

/// A blob of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One layer's index artifact, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// The digest of the referrer manifest.
    pub artifact: String,
    /// The layer it describes.
    pub layer: String,
    /// Bytes the tree covers before padding (the uncompressed tar, or the
    /// EROFS blob).
    pub data_size: u64,
    /// The tar index (tar and tar+gzip layers).
    pub tar_index: Option<BlobRef>,
    /// The zinfo (tar+gzip layers).
    pub zinfo: Option<BlobRef>,
    /// The dm-verity tree, superblock first.
    pub tree: BlobRef,
    /// Its root hash.
    pub root: [u8; 32],
    /// The zinfo's checkpoint table, when the artifact gives it
    /// ([`ZINFO_TABLE_ANNOTATION`]).
    #[serde(default)]
    pub zinfo_table: Option<Vec<u8>>,
    /// The tar index's tree and root hash, when the artifact gives them.
    #[serde(default)]
    pub index_tree: Option<(BlobRef, [u8; 32])>,
}

/// A descriptor as the artifact writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// The size in bytes.
    pub size: u64,
}

/// The artifact manifest, as written and read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    /// 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`OCI_MANIFEST`].
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// [`LAYER_INDEX_ARTIFACT_TYPE`].
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// The empty config.
    pub config: Descriptor,
    /// Tar index, zinfo, tree: each where it applies, in that order.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The image manifest.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Layer digest, data size and root hash.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What an artifact is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactParts {
    /// The image manifest the artifact refers to.
    pub subject: Descriptor,
    /// The layer.
    pub layer: String,
    /// Bytes the tree covers before padding.
    pub data_size: u64,
    /// The tar index blob, if any.
    pub tar_index: Option<BlobRef>,
    /// The zinfo blob, if any.
    pub zinfo: Option<BlobRef>,
    /// The tree blob.
    pub tree: BlobRef,
    /// The root hash.
    pub root: [u8; 32],
    /// The zinfo's checkpoint table, if any.
    pub zinfo_table: Option<Vec<u8>>,
    /// The tar index's tree blob and root hash, if any.
    pub index_tree: Option<(BlobRef, [u8; 32])>,
}

/// The artifact manifest of `parts`: its bytes, ready to push.
pub fn artifact_manifest(parts: &ArtifactParts) -> Vec<u8> {
    let blob = |media_type: &str, b: &BlobRef| Descriptor {
        media_type: media_type.into(),
        digest: b.digest.clone(),
        size: b.size,
    };
    let mut layers = Vec::new();
    if let Some(b) = &parts.tar_index {
        layers.push(blob(TAR_INDEX_MEDIA_TYPE, b));
    }
    if let Some(b) = &parts.zinfo {
        layers.push(blob(ZINFO_MEDIA_TYPE, b));
    }
    layers.push(blob(VERITY_TREE_MEDIA_TYPE, &parts.tree));
    if let Some((b, _)) = &parts.index_tree {
        layers.push(blob(TAR_INDEX_TREE_MEDIA_TYPE, b));
    }
    let manifest = ArtifactManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(LAYER_INDEX_ARTIFACT_TYPE.into()),
        config: Descriptor {
            media_type: EMPTY_MEDIA_TYPE.into(),
            digest: EMPTY_DIGEST.into(),
            size: EMPTY_CONFIG.len() as u64,
        },
        layers,
        subject: Some(parts.subject.clone()),
        annotations: annotations(parts),
    };
    serde_json::to_vec(&manifest).expect("plain strings and numbers serialize")
}

/// The annotations of an artifact (and of its descriptor in listings).
pub fn annotations(parts: &ArtifactParts) -> BTreeMap<String, String> {
    let mut notes = BTreeMap::from([
        (LAYER_ANNOTATION.to_string(), parts.layer.clone()),
        (
            DATA_SIZE_ANNOTATION.to_string(),
            parts.data_size.to_string(),
        ),
        (ROOT_ANNOTATION.to_string(), crate::format::hex(&parts.root)),
    ]);
    if let Some(table) = &parts.zinfo_table {
        notes.insert(
            ZINFO_TABLE_ANNOTATION.to_string(),
            crate::format::hex(table),
        );
    }
    if let Some((_, root)) = &parts.index_tree {
        notes.insert(INDEX_ROOT_ANNOTATION.to_string(), crate::format::hex(root));
    }
    notes
}

/// Bytes from lowercase hex of at most `max` bytes.
fn from_hex(text: &str, max: usize) -> std::result::Result<Vec<u8>, String> {
    if text.len() / 2 > max {
        return Err(format!("{} hex digits (at most {})", text.len(), 2 * max));
    }
    let lowercase = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    crate::format::from_hex(text)
        .filter(|_| lowercase)
        .ok_or_else(|| "not an even number of lowercase hex digits".to_string())
}

/// The size of the tree `attach` makes over `data_size` bytes: 4 KiB
/// blocks of 128 digests, one block of superblock, each level a
/// 128th of the one below up to one block (none for a single data block).
pub fn tree_size(data_size: u64) -> u64 {
    let mut blocks = data_size.div_ceil(4096).max(1);
    let mut total = 1;
    while blocks > 1 {
        blocks = blocks.div_ceil(128);
        total += blocks;
    }
    total * 4096
}

impl LayerIndex {
    /// Parses and checks artifact manifest `bytes` (digest `artifact`)
    /// referring to `subject`: one line saying what is wrong otherwise.
    pub fn parse(artifact: &str, subject: &str, bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(format!("larger than {MAX_MANIFEST_SIZE} bytes"));
        }
        let m: ArtifactManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not an artifact manifest: {e}"))?;
        if m.schema_version != 2 || m.media_type.as_deref().is_some_and(|t| t != OCI_MANIFEST) {
            return Err("not an OCI image manifest (schema 2)".into());
        }
        if m.artifact_type.as_deref() != Some(LAYER_INDEX_ARTIFACT_TYPE) {
            return Err(format!("artifactType {:?} is not ours", m.artifact_type));
        }
        match &m.subject {
            Some(s) if s.digest == subject => {}
            Some(s) => return Err(format!("its subject is {}, not {subject}", s.digest)),
            None => return Err("no subject".into()),
        }
        let note = |key: &str| {
            m.annotations
                .get(key)
                .ok_or_else(|| format!("no {key} annotation"))
        };
        let layer = note(LAYER_ANNOTATION)?.clone();
        if !is_sha256_digest(&layer) {
            return Err(format!("layer {layer:?} is not a sha256 digest"));
        }
        let size_text = note(DATA_SIZE_ANNOTATION)?;
        let data_size: u64 = size_text
            .parse()
            .ok()
            .filter(|s| *s <= MAX_DATA_SIZE && size_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("data size {size_text:?} is not a number up to 2^48"))?;
        let root = parse_root(note(ROOT_ANNOTATION)?)?;
        let (mut tar_index, mut zinfo, mut tree, mut index_tree) = (None, None, None, None);
        for d in &m.layers {
            if !is_sha256_digest(&d.digest) {
                return Err(format!("blob {:?} is not a sha256 digest", d.digest));
            }
            let (slot, max) = match d.media_type.as_str() {
                TAR_INDEX_MEDIA_TYPE => (&mut tar_index, MAX_TAR_INDEX),
                ZINFO_MEDIA_TYPE => (&mut zinfo, MAX_ZINFO),
                VERITY_TREE_MEDIA_TYPE => (&mut tree, data_size / 64 + TREE_SLACK),
                TAR_INDEX_TREE_MEDIA_TYPE => (&mut index_tree, tree_size(MAX_TAR_INDEX)),
                other => return Err(format!("unknown blob media type {other:?}")),
            };
            if d.size > max {
                return Err(format!(
                    "{} blob of {} bytes (at most {max})",
                    d.media_type, d.size
                ));
            }
            if slot.is_some() {
                return Err(format!("two {} blobs", d.media_type));
            }
            *slot = Some(BlobRef {
                digest: d.digest.clone(),
                size: d.size,
            });
        }
        let tree: BlobRef = tree.ok_or("no verity tree blob")?;
        if tree.size != tree_size(data_size) {
            return Err(format!(
                "a tree of {} bytes, not the {} that {data_size} bytes of data take",
                tree.size,
                tree_size(data_size)
            ));
        }
        if zinfo.is_some() && tar_index.is_none() {
            return Err("a zinfo without a tar index".into());
        }
        let index_tree = match (index_tree, m.annotations.get(INDEX_ROOT_ANNOTATION)) {
            (None, None) => None,
            (Some(t), Some(root)) => match &tar_index {
                Some(i) if t.size == tree_size(i.size) => Some((t, parse_root(root)?)),
                Some(_) => {
                    return Err("a tar index tree of another size than the index takes".into())
                }
                None => return Err("a tar index tree without a tar index".into()),
            },
            _ => return Err("a tar index tree and its root go together".into()),
        };
        let zinfo_table = match m.annotations.get(ZINFO_TABLE_ANNOTATION) {
            Some(_) if zinfo.is_none() => return Err("a checkpoint table without a zinfo".into()),
            Some(text) => Some(
                from_hex(text, MAX_ZINFO_TABLE)
                    .map_err(|e| format!("{ZINFO_TABLE_ANNOTATION}: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            artifact: artifact.to_string(),
            layer,
            data_size,
            tar_index,
            zinfo,
            tree,
            root,
            zinfo_table,
            index_tree,
        })
    }
}

/// 64 lowercase hex digits.
fn parse_root(text: &str) -> std::result::Result<[u8; 32], String> {
    from_hex(text, 32)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| format!("root hash {text:?} is not 64 lowercase hex digits"))
}

/// The layer-index artifacts that refer to manifest `subject`: the
/// source's referrers of our `artifactType`, each manifest fetched by
/// digest and parsed; malformed ones are skipped with a warning naming
/// them. At most one per layer: the first listed wins (the tag schema
/// lists in the order pushed, and `attach --force` replaces a layer's
/// entry there; the API's order is the registry's).
pub fn find_layer_indexes(source: &dyn ImageSource, subject: &str) -> Result<Vec<LayerIndex>> {
    let mut found = Vec::new();
    let mut layers = HashSet::new();
    let mut failed = 0;
    for d in source.referrers(subject, Some(LAYER_INDEX_ARTIFACT_TYPE))? {
        if d.artifact_type.as_deref() != Some(LAYER_INDEX_ARTIFACT_TYPE) {
            continue;
        }
        // A layer already found (the listing names it) needs no fetch.
        if d.annotations
            .get(LAYER_ANNOTATION)
            .is_some_and(|l| layers.contains(l))
        {
            continue;
        }
        if failed >= MAX_FAILED_FETCHES {
            tracing::warn!(
                "{}: {failed} referrers failed: the rest not fetched",
                source.name()
            );
            break;
        }
        let name = format!("{}: referrer {}", source.name(), d.digest);
        if !is_sha256_digest(&d.digest) || d.size > MAX_MANIFEST_SIZE {
            tracing::warn!(
                "{name}: skipped: not a sha256 digest, or over {MAX_MANIFEST_SIZE} bytes"
            );
            continue;
        }
        let parsed = source
            .manifest(&d.digest)
            .map_err(|e| e.to_string())
            .and_then(|m| LayerIndex::parse(&m.digest, subject, &m.bytes));
        match parsed {
            Ok(index) if layers.insert(index.layer.clone()) => found.push(index),
            Ok(index) => tracing::debug!("{name}: layer {} has an earlier one", index.layer),
            Err(why) => {
                failed += 1;
                tracing::warn!("{name}: skipped: {why}");
            }
        }
    }
    Ok(found)
}

/// The descriptor of an artifact manifest `bytes` of `parts`, as listings
/// carry it.
pub fn referrer_descriptor(parts: &ArtifactParts, digest: &str, size: u64) -> Referrer {
    Referrer {
        media_type: OCI_MANIFEST.into(),
        digest: digest.to_string(),
        size,
        artifact_type: Some(LAYER_INDEX_ARTIFACT_TYPE.into()),
        annotations: annotations(parts),
    }
}

#[cfg(test)]
mod tests;
