//! TOC layers: zstd:chunked and eStargz blobs, whose table of contents (TOC)
//! lists every tar entry and where its compressed data lies in the blob.
//! podman 5 asks an additional layer store only for such layers, by TOC
//! digest. This module finds the TOC through the blob's footer, checks it
//! against the TOC digest before parsing it, and checks every entry's range
//! (and, in [`check_frames`], the frames or members themselves) against
//! the blob.
//!
//! Which bytes the TOC digest covers (containers/storage pkg/chunked,
//! stargz-snapshotter estargz): zstd:chunked, the zstd-compressed TOC as
//! stored in its skippable frame; eStargz, the uncompressed
//! `stargz.index.json`.

pub mod entry;
pub mod estargz;
pub mod frames;
pub mod zstd_chunked;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

pub use entry::{EntryType, TocEntry};
pub use frames::check_frames;

/// Largest TOC read, compressed and uncompressed (containers/storage
/// allows 150 MiB; a TOC of a million files is about 300 MiB only when
/// badly chunked).
pub const MAX_TOC_SIZE: u64 = 64 << 20;

/// The layer annotation holding a zstd:chunked layer's TOC digest.
pub const ZSTD_CHUNKED_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// The layer annotation holding an eStargz layer's TOC digest.
pub const ESTARGZ_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

/// Which TOC format a blob is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// containers/storage's zstd:chunked.
    ZstdChunked,
    /// stargz-snapshotter's eStargz.
    Estargz,
}

/// A checked TOC.
#[derive(Debug, Clone)]
pub struct Toc {
    /// The blob's format.
    pub format: Format,
    /// `sha256:<hex>` of the TOC as the format digests it.
    pub digest: String,
    /// The entries, in TOC order.
    pub entries: Vec<TocEntry>,
    /// Where file data may lie: `[0, data_end)` of the blob (the TOC and
    /// footer follow).
    pub data_end: u64,
}

/// An error about `blob`, one line.
pub(crate) fn bad(blob: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {what}", blob.display()))
}

pub use crate::registry::reference::is_sha256_digest as is_sha256;

pub(crate) use crate::registry::oci_layout::sha256_digest;

/// `sha256:<hex>` of a finished hash.
pub(crate) fn hex_digest(hash: &[u8]) -> String {
    format!("sha256:{}", crate::format::hex(hash))
}

/// The blob's format, by its footer, if it has one of ours.
pub fn detect(blob: &Path) -> Result<Option<Format>> {
    let file = File::open(blob).map_err(|e| Error::io(blob, e))?;
    let size = file.metadata().map_err(|e| Error::io(blob, e))?.len();
    if zstd_chunked::has_footer(&file, size) {
        return Ok(Some(Format::ZstdChunked));
    }
    if estargz::has_footer(&file, size) {
        return Ok(Some(Format::Estargz));
    }
    Ok(None)
}

/// Reads and checks the TOC of `blob` (in `format`) against `digest`: the
/// digest is checked before the TOC is parsed, and every entry's ranges
/// against the blob after.
pub fn read(blob: &Path, format: Format, digest: &str) -> Result<Toc> {
    if !is_sha256(digest) {
        return Err(bad(
            blob,
            format!("TOC digest {digest:?} is not sha256:<hex>"),
        ));
    }
    let file = File::open(blob).map_err(|e| Error::io(blob, e))?;
    let size = file.metadata().map_err(|e| Error::io(blob, e))?.len();
    let (json, data_end) = match format {
        Format::ZstdChunked => zstd_chunked::read_toc(blob, &file, size, digest)?,
        Format::Estargz => estargz::read_toc(blob, &file, size, digest)?,
    };
    let entries = entry::parse(blob, &json, format, data_end)?;
    Ok(Toc {
        format,
        digest: digest.to_string(),
        entries,
        data_end,
    })
}

/// Reads `len` bytes at `offset` of `file` (the caller bounded `len`).
pub(crate) fn read_exact(blob: &Path, file: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| bad(blob, "length too large"))?];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io(blob, e))?;
    Ok(buf)
}

/// A reader of `[offset, end)` of a file.
pub(crate) struct Region<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> Region<'a> {
    /// Reads `[offset, end)` of `file`.
    pub(crate) fn new(file: &'a File, offset: u64, end: u64) -> Self {
        Self {
            file,
            pos: offset,
            end,
        }
    }
}

impl std::io::Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
