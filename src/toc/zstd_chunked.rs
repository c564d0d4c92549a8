//! zstd:chunked (containers/storage pkg/chunked/internal/minimal): the blob
//! is a zstd stream of the tar, each file's data in frames of its own,
//! followed by three zstd skippable frames: the zstd-compressed TOC, the
//! tar-split data and a 64-byte footer locating both. The TOC digest is the
//! sha256 of the compressed TOC bytes (the first frame's content).

use std::path::Path;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{bad, read_exact, sha256_digest, BlobReader, MAX_TOC_SIZE};
use crate::error::Result;

/// A zstd skippable frame's magic (RFC 8878 3.1.2, the one containers/storage
/// writes).
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// The footer's own magic, at its end.
pub const FOOTER_MAGIC: [u8; 8] = *b"GNUlInUx";
/// The TOC type containers/storage writes (a CRFS-compatible JSON TOC).
pub const MANIFEST_TYPE_CRFS: u64 = 1;
/// Size of a skippable frame's header (magic, length).
pub const FRAME_HEADER_SIZE: u64 = 8;

/// The last frame of a zstd:chunked blob: a skippable frame header and the
/// 64-byte footer data.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Footer {
    /// [`SKIPPABLE_MAGIC`].
    pub frame_magic: U32,
    /// 64.
    pub frame_size: U32,
    /// Offset of the compressed TOC (after its frame header).
    pub toc_offset: U64,
    /// Its compressed length.
    pub toc_compressed: U64,
    /// Its uncompressed length.
    pub toc_uncompressed: U64,
    /// [`MANIFEST_TYPE_CRFS`].
    pub toc_type: U64,
    /// Offset of the compressed tar-split data.
    pub tar_split_offset: U64,
    /// Its compressed length.
    pub tar_split_compressed: U64,
    /// Its uncompressed length.
    pub tar_split_uncompressed: U64,
    /// [`FOOTER_MAGIC`].
    pub magic: [u8; 8],
}

/// Bytes the footer frame takes at the end of the blob.
pub const FOOTER_SIZE: u64 = 72;
const _: () = assert!(std::mem::size_of::<Footer>() == FOOTER_SIZE as usize);

/// The footer, if the blob ends with one (by its magics only).
fn footer(src: &dyn BlobReader) -> Option<Footer> {
    let start = src.size().checked_sub(FOOTER_SIZE)?;
    let mut raw = [0u8; FOOTER_SIZE as usize];
    src.read_exact_at(&mut raw, start).ok()?;
    let footer = Footer::read_from_bytes(&raw).ok()?;
    (footer.frame_magic.get() == SKIPPABLE_MAGIC
        && footer.frame_size.get() == 64
        && footer.magic == FOOTER_MAGIC)
        .then_some(footer)
}

/// Whether the blob ends with a zstd:chunked footer.
pub fn has_footer(src: &dyn BlobReader) -> bool {
    footer(src).is_some()
}

/// Checks that a skippable frame of `len` bytes starts at `offset - 8`
/// and ends by `limit`.
fn check_frame(
    blob: &Path,
    src: &dyn BlobReader,
    what: &str,
    offset: u64,
    len: u64,
    limit: u64,
) -> Result<()> {
    let end = offset.checked_add(len).filter(|&end| end <= limit);
    if offset < FRAME_HEADER_SIZE || end.is_none() {
        return Err(bad(
            blob,
            format!(
                "zstd:chunked footer puts the {what} ({len} bytes at {offset}) outside the blob"
            ),
        ));
    }
    let header = read_exact(blob, src, offset - FRAME_HEADER_SIZE, FRAME_HEADER_SIZE)?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if magic != SKIPPABLE_MAGIC || u64::from(size) != len {
        return Err(bad(
            blob,
            format!("zstd:chunked {what} at {offset} is not in a skippable frame of {len} bytes"),
        ));
    }
    Ok(())
}

/// Reads the TOC: checks the footer, the TOC's frame and its digest, then
/// decompresses it (exactly the length the footer gives). Returns the TOC
/// JSON and where file data ends.
pub(crate) fn read_toc(blob: &Path, src: &dyn BlobReader, digest: &str) -> Result<(Vec<u8>, u64)> {
    let size = src.size();
    let footer = footer(src).ok_or_else(|| bad(blob, "no zstd:chunked footer"))?;
    if footer.toc_type.get() != MANIFEST_TYPE_CRFS {
        return Err(bad(
            blob,
            format!("zstd:chunked TOC type {} is not 1", footer.toc_type),
        ));
    }
    let (offset, compressed, uncompressed) = (
        footer.toc_offset.get(),
        footer.toc_compressed.get(),
        footer.toc_uncompressed.get(),
    );
    if compressed > MAX_TOC_SIZE || uncompressed > MAX_TOC_SIZE {
        return Err(bad(
            blob,
            format!("zstd:chunked TOC of {compressed} bytes ({uncompressed} uncompressed) is larger than {MAX_TOC_SIZE}"),
        ));
    }
    let footer_start = size - FOOTER_SIZE;
    check_frame(blob, src, "TOC", offset, compressed, footer_start)?;
    let (ts_offset, ts_len) = (
        footer.tar_split_offset.get(),
        footer.tar_split_compressed.get(),
    );
    if ts_len > 0 {
        check_frame(blob, src, "tar-split", ts_offset, ts_len, footer_start)?;
    }
    let stored = read_exact(blob, src, offset, compressed)?;
    let actual = sha256_digest(&stored);
    if actual != digest {
        return Err(bad(blob, format!("TOC digest is {actual}, not {digest}")));
    }
    let json = zstd::bulk::decompress(&stored, uncompressed as usize).map_err(|e| {
        bad(
            blob,
            format!("zstd:chunked TOC does not decompress to {uncompressed} bytes: {e}"),
        )
    })?;
    if json.len() as u64 != uncompressed {
        return Err(bad(
            blob,
            format!(
                "zstd:chunked TOC decompresses to {} bytes, not {uncompressed}",
                json.len()
            ),
        ));
    }
    Ok((json, offset - FRAME_HEADER_SIZE))
}
