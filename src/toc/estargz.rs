//! eStargz (stargz-snapshotter's `estargz` package): a gzip stream of the
//! tar, each file's data starting a gzip member of its own, whose last tar
//! entry, `stargz.index.json`, is the TOC in a member of its own, followed
//! by a 51-byte footer: an empty gzip member whose extra field holds the
//! TOC member's offset as 16 hex digits and `STARGZ`. The TOC digest is the
//! sha256 of the uncompressed JSON.

use std::io::Read;
use std::path::Path;

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{bad, sha256_digest, BlobReader, Region, MAX_TOC_SIZE};
use crate::error::Result;

/// Size of the footer.
pub const FOOTER_SIZE: u64 = 51;
/// The tar entry holding the TOC.
pub const TOC_NAME: &str = "stargz.index.json";

/// The footer: a gzip header with one extra subfield `SG`, then an empty
/// stored deflate block and a zero gzip trailer.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Footer {
    /// 1f 8b 08 (gzip, deflate).
    pub id: [u8; 3],
    /// FEXTRA only.
    pub flags: u8,
    /// mtime, extra flags, OS: not checked.
    pub rest: [u8; 6],
    /// 26: the subfield header and its 22 bytes.
    pub xlen: U16,
    /// `SG`.
    pub subfield_id: [u8; 2],
    /// 22.
    pub subfield_len: U16,
    /// The TOC offset, 16 lowercase hex digits.
    pub offset_hex: [u8; 16],
    /// `STARGZ`.
    pub magic: [u8; 6],
    /// The empty final stored block and the gzip trailer.
    pub tail: [u8; 13],
}

const _: () = assert!(std::mem::size_of::<Footer>() == FOOTER_SIZE as usize);

/// The TOC offset the footer gives, if the blob ends with one.
fn toc_offset(src: &dyn BlobReader) -> Option<u64> {
    let start = src.size().checked_sub(FOOTER_SIZE)?;
    let mut raw = [0u8; FOOTER_SIZE as usize];
    src.read_exact_at(&mut raw, start).ok()?;
    let footer = Footer::read_from_bytes(&raw).ok()?;
    if footer.id != [0x1f, 0x8b, 8]
        || footer.flags != 4
        || footer.xlen.get() != 26
        || footer.subfield_id != *b"SG"
        || footer.subfield_len.get() != 22
        || footer.magic != *b"STARGZ"
    {
        return None;
    }
    let hex = std::str::from_utf8(&footer.offset_hex).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// Whether the blob ends with an eStargz footer.
pub fn has_footer(src: &dyn BlobReader) -> bool {
    toc_offset(src).is_some()
}

/// Reads the TOC: the footer, then the gzip member at the offset it gives,
/// holding one tar entry `stargz.index.json` (bounded before it is read),
/// whose digest is checked. Returns the JSON and where file data ends.
pub(crate) fn read_toc(blob: &Path, src: &dyn BlobReader, digest: &str) -> Result<(Vec<u8>, u64)> {
    let size = src.size();
    let offset = toc_offset(src).ok_or_else(|| bad(blob, "no eStargz footer"))?;
    let footer_start = size - FOOTER_SIZE;
    if offset >= footer_start {
        return Err(bad(
            blob,
            format!("eStargz footer puts the TOC at {offset}, outside the blob ({footer_start} bytes before the footer)"),
        ));
    }
    if footer_start - offset > MAX_TOC_SIZE {
        return Err(bad(
            blob,
            format!(
                "eStargz TOC of {} bytes is larger than {MAX_TOC_SIZE}",
                footer_start - offset
            ),
        ));
    }
    // The member, bounded: its tar holds the header, the JSON and padding.
    let member = flate2::read::GzDecoder::new(Region::new(src, offset, footer_start));
    let mut limited = member.take(MAX_TOC_SIZE + 1024);
    let mut header = [0u8; 512];
    limited
        .read_exact(&mut header)
        .map_err(|e| bad(blob, format!("eStargz TOC at {offset}: no tar header: {e}")))?;
    let header = tar::Header::from_byte_slice(&header);
    let name = header.path_bytes();
    if name.as_ref() != TOC_NAME.as_bytes() {
        return Err(bad(
            blob,
            format!(
                "eStargz TOC at {offset} is {:?}, not {TOC_NAME}",
                String::from_utf8_lossy(&name)
            ),
        ));
    }
    let len = header
        .entry_size()
        .map_err(|e| bad(blob, format!("eStargz TOC header: {e}")))?;
    if len > MAX_TOC_SIZE {
        return Err(bad(
            blob,
            format!("eStargz TOC of {len} bytes is larger than {MAX_TOC_SIZE}"),
        ));
    }
    let mut json = vec![0u8; len as usize];
    limited.read_exact(&mut json).map_err(|e| {
        bad(
            blob,
            format!("eStargz TOC shorter than its {len} bytes: {e}"),
        )
    })?;
    let actual = sha256_digest(&json);
    if actual != digest {
        return Err(bad(blob, format!("TOC digest is {actual}, not {digest}")));
    }
    Ok((json, offset))
}
