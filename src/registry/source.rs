//! The interface every place images come from offers: a registry, an OCI
//! image layout on disk. `pull` copies whole blobs through it; lazy layers
//! read ranges of blobs through it.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Largest manifest or index accepted (the distribution spec's limit for
/// registries; real ones are a few KiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A manifest or index as fetched, with what the source said it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    /// The bytes as served (their digest is the manifest's digest).
    pub bytes: Vec<u8>,
    /// The media type the source gave (`Content-Type`, or the descriptor's).
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`, checked against a digest reference.
    pub digest: String,
}

/// A descriptor of a manifest that refers to another (its `subject`), as
/// the referrers API and the referrers tag schema list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referrer {
    /// The referring manifest's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Its `artifactType` (or its config's media type).
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A place images are read from. Implementations are shared by the threads
/// of a pull and of a mount, so they take `&self`.
pub trait ImageSource: Send + Sync {
    /// How errors name this source: `127.0.0.1:5000/app`, `oci:DIR`.
    fn name(&self) -> String;

    /// The manifest or index that `reference` names: a tag or a
    /// `sha256:<hex>` digest. At most [`MAX_MANIFEST_SIZE`] bytes; with a
    /// digest, the bytes are checked against it.
    fn manifest(&self, reference: &str) -> Result<FetchedManifest>;

    /// Writes blob `digest` (`sha256:<hex>`) of `size` bytes to `sink`,
    /// checking size and digest as it streams; calls `progress` with the
    /// bytes written so far. On any error, what was written must be
    /// discarded by the caller: it is not the blob.
    fn blob(
        &self,
        digest: &str,
        size: u64,
        sink: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<()>;

    /// Fills `buf` with the bytes of blob `digest` from `offset` (a range
    /// read, for lazy layers; not verified here).
    fn blob_range(&self, digest: &str, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The manifests that refer to manifest `subject` (`sha256:<hex>`),
    /// at most [`MAX_MANIFEST_SIZE`] bytes of listing; `artifact_type`
    /// asks a registry to filter (it may not: callers filter again). A
    /// registry: the OCI 1.1 referrers API, else the referrers tag schema
    /// (`sha256-<hex>`), neither there being none. The default (an OCI
    /// layout): none, layouts do not index referrers.
    fn referrers(&self, _subject: &str, _artifact_type: Option<&str>) -> Result<Vec<Referrer>> {
        Ok(Vec::new())
    }
}
