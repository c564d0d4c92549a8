//! Images where they live: OCI registries (and OCI image layouts on disk),
//! read through one interface, [`ImageSource`], that the store's `pull`
//! and the lazy layers use. Knows nothing of FUSE, images or the store.
//!
//! - [`reference`]: image references as docker and podman parse them;
//! - [`source`]: the [`ImageSource`] interface: manifests, whole blobs
//!   (verified as they stream) and ranges of blobs.

pub mod reference;
pub mod source;

pub use reference::Reference;
pub use source::{FetchedManifest, ImageSource, MAX_MANIFEST_SIZE};
