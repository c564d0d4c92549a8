//! TEMPORARY stand-in for the helper's module (types only).
use super::ImageSource;
use crate::error::Result;
/// A blob of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRef {
    /// Digest.
    pub digest: String,
    /// Size.
    pub size: u64,
}
/// One layer's index artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerIndex {
    /// Artifact digest.
    pub artifact: String,
    /// Layer digest.
    pub layer: String,
    /// Data size.
    pub data_size: u64,
    /// Tar index.
    pub tar_index: Option<BlobRef>,
    /// Zinfo.
    pub zinfo: Option<BlobRef>,
    /// Tree.
    pub tree: BlobRef,
    /// Root.
    pub root: [u8; 32],
}
/// Finds them.
pub fn find_layer_indexes(_source: &dyn ImageSource, _subject: &str) -> Result<Vec<LayerIndex>> {
    Ok(Vec::new())
}
