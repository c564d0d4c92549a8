//! erofs-fuse: read EROFS images (and tar-indexed OCI layers) in userspace.
//!
//! Layers, each using only those above it:
//! - [`format`]: on-disk structures, no I/O;
//! - [`device`]: read-only memory maps of image files and ranges of them
//!   ([`fault`]: surviving those files shrinking under their maps);
//! - [`reader`]: the filesystem (superblock, inodes, directories, xattrs,
//!   data), knowing nothing of FUSE;
//! - [`view`]: read-only trees served through FUSE: one image, a merged
//!   [`overlay`] stack of layers, or the layer [`store`];
//! - [`fuse`]: the FUSE adapter and mounting, knowing nothing of byte layouts;
//! - [`inspect`], [`manifest`], [`extract`], [`fsck`]: tools built on the reader
//!   (summaries, JSON-lines manifests, copying a tree out).
//! - [`safe_fs`]: writing files (extract, convert, store add) without
//!   following or replacing what other users put in the way.

#![warn(missing_docs)]

pub mod build;
pub mod convert;
pub mod device;
pub mod error;
pub mod extract;
pub mod fault;
pub mod format;
pub mod fsck;
pub mod fuse;
pub mod input;
pub mod inspect;
pub mod manifest;
pub mod overlay;
pub mod reader;
pub mod safe_fs;
pub mod store;
pub mod verity;
pub mod view;

pub use error::{Error, Result};
pub use format::Nid;
pub use reader::{Image, Inode, OpenOptions};
