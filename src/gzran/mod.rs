//! gzip random access: the uncompressed stream of a `.tar.gz` read at any
//! offset without inflating from the start, through a SOCI-compatible
//! zinfo (the checkpoint index `mkfs.erofs --tar=i --gzinfo` writes; see
//! [`zinfo`] for the format).
//!
//! - [`Zinfo`]: reading (v1 and v2), validating and writing the file;
//! - [`GzReader`]: reads at an offset, inflating from the nearest
//!   checkpoint and continuing when reads are sequential;
//! - [`GzIndexer`]: decompresses a gzip stream while building its zinfo,
//!   byte-identical to mkfs.erofs 1.9's (`convert --gzinfo`).
//!
//! Integrity: a zinfo and a gzip file are untrusted. Structural damage
//! (bad deflate codes, distances before the window, truncation, a zinfo
//! contradicting itself or the file's size) is an error. A read that
//! continues past a checkpoint checks it: the deflate block boundary must
//! be at its `in`/`bits` and its window must be the output before it.
//! gzip's CRC-32 covers whole members only: it is checked for members a
//! read enters through their header (the first checkpoint is entered that
//! way, from byte 0), not for one entered at a later checkpoint; a read
//! starting at a checkpoint with a wrong window gives wrong bytes
//! undetected. Verified reads need a hash tree over the uncompressed
//! stream (dm-verity, issue 21).

mod build;
mod inflate;
mod reader;
mod windows;
pub mod zinfo;

pub use build::{GzIndexer, ZinfoHandle};
pub use reader::{GzReader, ReadAt};
pub use zinfo::{Checkpoint, LazyWindows, WindowSource, Zinfo};

/// A gzip or zinfo problem: the file and what is wrong, on one line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct GzError {
    /// The file (gzip or zinfo) involved.
    pub file: String,
    /// What went wrong.
    pub message: String,
}

impl GzError {
    /// An error about `file`.
    pub fn new(file: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            message: message.into(),
        }
    }
}

impl From<GzError> for std::io::Error {
    fn from(e: GzError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    }
}
