//! erofs-fuse: read EROFS images (and tar-indexed OCI layers) in userspace.
//!
//! Layers, from the bottom; each uses only those below it (the order is
//! checked by a unit test, `layering`, which holds the same table):
//! - [`error`]: the error type;
//! - [`format`](mod@format): on-disk structures, no I/O; [`safe_fs`]: writing files
//!   (extract, convert, store add) without following or replacing what
//!   other users put in the way; [`sys`]: the few raw system calls;
//! - [`mmap`]: memory maps (map, advise, unmap); [`input`]: opening image
//!   files and block devices; [`registry`]: images in OCI registries and
//!   image layouts (references, manifests, blobs), knowing nothing of the
//!   filesystem;
//! - [`fault`]: the maps the reader keeps, surviving their files shrinking
//!   under them; [`gzran`]: gzip random access through a SOCI zinfo;
//! - [`verity`]: dm-verity trees, built and checked; [`lazy`]: devices fetched
//!   chunk by chunk on first read into a sparse cache file;
//! - [`device`]: bounds-checked (and verified) reads of image files and
//!   ranges of them;
//! - [`reader`]: the filesystem (superblock, inodes, directories, xattrs,
//!   data), knowing nothing of FUSE; [`mkfs`]: the mkfs side, writing
//!   images;
//! - [`view`]: read-only trees served through FUSE; [`inspect`], [`fsck`],
//!   [`extract`]: tools built on the reader; [`convert`]: tar layers to
//!   images (through [`mkfs`]); [`nydus`]: Nydus RAFS v6 bootstraps with
//!   their blobs;
//! - [`overlay`]: a merged stack of layers; [`manifest`]: JSON-lines
//!   manifests;
//! - [`store`]: the layer and image store (`store add`, `pull`, gc, and
//!   serving layers to podman); [`diff`]: an overlayfs upper directory
//!   over a stack to an OCI layer;
//! - [`fuse`]: the FUSE adapter and mounting, knowing nothing of byte
//!   layouts. Process-wide effects (daemonizing, allocator tuning) are the
//!   binary's.

#![warn(missing_docs)]

pub mod convert;
pub mod device;
pub mod diff;
pub mod error;
pub mod extract;
pub mod fault;
pub mod format;
pub mod fsck;
pub mod fuse;
pub mod gzran;
pub mod input;
pub mod inspect;
#[cfg(test)]
mod layering;
pub mod lazy;
pub mod manifest;
pub mod mkfs;
pub mod mmap;
pub mod nydus;
pub mod overlay;
pub mod reader;
pub mod registry;
pub mod safe_fs;
pub mod store;
pub mod sys;
pub mod toc;
pub mod verity;
pub mod view;

pub use error::{Error, Result};
pub use format::Nid;
pub use reader::{Image, Inode, OpenOptions};
