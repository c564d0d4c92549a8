//! Writing EROFS images: the `mkfs` side of the crate.
//!
//! A [`Tree`] of nodes (attributes, xattrs, directory entries, where file
//! data is) is filled by a front end such as the tar converter, then an
//! [`ImageBuilder`] lays it out and writes it. Knows nothing of tar or FUSE.

pub mod compress;
mod dir;
mod image;
mod tree;
pub mod xattr;

pub use image::{BuildError, BuildOptions, BuildSummary, DataSource, ImageBuilder};
pub use tree::{FileData, Node, NodeData, NodeId, Tree};
