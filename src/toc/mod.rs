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
use std::path::{Path, PathBuf};

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

/// A blob the TOC readers read by range: a local file ([`LocalBlob`]) or
/// a registry's blob read by range requests.
pub trait BlobReader: Sync {
    /// The blob's size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset` (the caller keeps the range
    /// inside the blob).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// A blob in a local file.
pub struct LocalBlob {
    file: File,
    path: PathBuf,
    size: u64,
}

impl LocalBlob {
    /// Opens `path`; its size at open is the blob's.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
        })
    }
}

impl BlobReader for LocalBlob {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The blob's format, by its footer, if it has one of ours.
pub fn detect(blob: &Path) -> Result<Option<Format>> {
    detect_in(&LocalBlob::open(blob)?)
}

/// [`detect`] of a blob read by range.
pub fn detect_in(src: &dyn BlobReader) -> Result<Option<Format>> {
    if zstd_chunked::has_footer(src) {
        return Ok(Some(Format::ZstdChunked));
    }
    if estargz::has_footer(src) {
        return Ok(Some(Format::Estargz));
    }
    Ok(None)
}

/// Reads and checks the TOC of `blob` (in `format`) against `digest`: the
/// digest is checked before the TOC is parsed, and every entry's ranges
/// against the blob after.
pub fn read(blob: &Path, format: Format, digest: &str) -> Result<Toc> {
    read_in(blob, &LocalBlob::open(blob)?, format, digest)
}

/// [`read`] of a blob read by range (`blob` names it in errors).
pub fn read_in(blob: &Path, src: &dyn BlobReader, format: Format, digest: &str) -> Result<Toc> {
    read_json_in(blob, src, format, digest).map(|(toc, _)| toc)
}

/// A TOC kept from an earlier read of a blob: `json` as the blob holds it
/// uncompressed, `data_end` where its file data ends; parsed and checked
/// as [`read_in`] does (the digest is the caller's to vouch for).
pub fn from_json(
    name: &Path,
    json: &[u8],
    format: Format,
    digest: &str,
    data_end: u64,
) -> Result<Toc> {
    let entries = entry::parse(name, json, format, data_end)?;
    Ok(Toc {
        format,
        digest: digest.to_string(),
        entries,
        data_end,
    })
}

/// [`read_in`], also giving the TOC's JSON (to keep beside a lazy layer).
pub fn read_json_in(
    blob: &Path,
    src: &dyn BlobReader,
    format: Format,
    digest: &str,
) -> Result<(Toc, Vec<u8>)> {
    if !is_sha256(digest) {
        return Err(bad(
            blob,
            format!("TOC digest {digest:?} is not sha256:<hex>"),
        ));
    }
    let (json, data_end) = match format {
        Format::ZstdChunked => zstd_chunked::read_toc(blob, src, digest)?,
        Format::Estargz => estargz::read_toc(blob, src, digest)?,
    };
    Ok((from_json(blob, &json, format, digest, data_end)?, json))
}

/// Reads `len` bytes at `offset` of `src` (the caller bounded `len`).
pub(crate) fn read_exact(
    blob: &Path,
    src: &dyn BlobReader,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| bad(blob, "length too large"))?];
    src.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Bytes a [`Region`] reads at once.
const REGION_READ: u64 = 64 << 10;

/// A reader of `[offset, end)` of a blob.
pub(crate) struct Region<'a> {
    src: &'a dyn BlobReader,
    pos: u64,
    end: u64,
}

impl<'a> Region<'a> {
    /// Reads `[offset, end)` of `src` (`end` is kept inside it).
    pub(crate) fn new(src: &'a dyn BlobReader, offset: u64, end: u64) -> Self {
        Self {
            src,
            pos: offset,
            end: end.min(src.size()),
        }
    }
}

impl std::io::Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end.saturating_sub(self.pos))
            .min(buf.len() as u64)
            .min(REGION_READ) as usize;
        if want == 0 {
            return Ok(0);
        }
        self.src
            .read_exact_at(&mut buf[..want], self.pos)
            .map_err(std::io::Error::other)?;
        self.pos += want as u64;
        Ok(want)
    }
}
