//! The `--blob-inline-meta` form: the bootstrap stored at the end of the
//! data blob (nydus `storage/src/meta/toc.rs`). The blob's last 4 KiB end
//! with a GNU tar header: either `rafs.blob.toc`, preceded by its ToC (128-
//! byte entries: flags, name, sha256 of the uncompressed data, compressed
//! offset and size, uncompressed size), whose `image.boot` entry locates
//! the bootstrap; or `image.boot` itself, preceded by the bootstrap.
//! A compressed bootstrap is decoded once, straight into its device, and
//! no larger than [`max_decoded`] of its stored size.

use std::path::Path;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use sha2::{Digest as _, Sha256};

use super::decode::Decoders;
use super::layout::Compressor;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::read_struct;

/// The ToC's name in its tar header.
const TOC_NAME: &str = "rafs.blob.toc";
/// The bootstrap's name, in the ToC or its tar header.
const BOOT_NAME: &str = "image.boot";
/// How much of the blob's end holds the ToC and its header.
const TOC_AREA: u64 = 4096;
/// A tar header.
const TAR_HEADER: u64 = 512;
/// Largest bootstrap taken out (it is held in memory).
pub const MAX_BOOTSTRAP: u64 = 256 << 20;
/// Most a compressed bootstrap may grow by (real ones: 3 to 20 times;
/// gzip and zstd reach 1000 on zeros).
const MAX_RATIO: u64 = 128;
/// What any bootstrap may decode to whatever its stored size (a small
/// one is mostly zero padding).
const MIN_BOUND: u64 = 4 << 20;

/// The largest bootstrap decoded from `stored` compressed bytes: a small
/// file cannot make a large allocation or long work.
pub fn max_decoded(stored: u64) -> u64 {
    stored
        .saturating_mul(MAX_RATIO)
        .clamp(MIN_BOUND, MAX_BOOTSTRAP)
}

/// One 128-byte ToC entry (`TocEntry`).
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TocEntry {
    /// Compression: 1 none, 2 zstd, 4 lz4_block.
    pub flags: U32,
    /// Reserved.
    pub reserved1: U32,
    /// The entry's name, NUL-padded.
    pub name: [u8; 16],
    /// sha256 of the uncompressed data.
    pub uncompressed_digest: [u8; 32],
    /// Offset of the data in the blob.
    pub compressed_offset: U64,
    /// Its size in the blob.
    pub compressed_size: U64,
    /// Its size uncompressed.
    pub uncompressed_size: U64,
    /// Reserved.
    pub reserved2: [u8; 48],
}

const _: () = assert!(std::mem::size_of::<TocEntry>() == 128);

/// An error naming the blob.
fn bad(blob: &Device, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!(
        "{}: inline bootstrap: {what}",
        blob.path().display()
    ))
}

/// The (name, size) of the GNU tar header ending at `end` of `blob`.
fn tar_header(blob: &Device, end: u64) -> Result<(String, u64)> {
    let at = end
        .checked_sub(TAR_HEADER)
        .ok_or_else(|| bad(blob, "too small for a tar header"))?;
    let bytes = blob.slice(at, TAR_HEADER)?;
    let header = tar::Header::from_byte_slice(bytes);
    if header.as_gnu().is_none() || !header.entry_type().is_file() {
        return Err(bad(
            blob,
            "no GNU tar header of a regular file at the end (not a blob with inlined metadata)",
        ));
    }
    let name = header
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|_| bad(blob, "tar header without a name"))?;
    let size = header
        .entry_size()
        .map_err(|_| bad(blob, "tar header without a size"))?;
    if size > at {
        return Err(bad(
            blob,
            format!("tar entry of {size} bytes before byte {at}"),
        ));
    }
    Ok((name, size))
}

/// The bootstrap inside `blob` (see the module doc), checked against the
/// ToC's digest when it comes through a ToC.
pub fn bootstrap(blob: &Device) -> Result<Device> {
    let len = blob.len();
    let (name, size) = tar_header(blob, len)?;
    let data_end = len - TAR_HEADER;
    if name == BOOT_NAME {
        if size > MAX_BOOTSTRAP {
            return Err(bad(blob, format!("bootstrap of {size} bytes")));
        }
        return blob.subrange(data_end - size, size);
    }
    if name != TOC_NAME {
        return Err(bad(
            blob,
            format!("last tar entry is {name:?}, not {TOC_NAME} or {BOOT_NAME}"),
        ));
    }
    if size > TOC_AREA - TAR_HEADER || size % 128 != 0 {
        return Err(bad(blob, format!("ToC of {size} bytes")));
    }
    let toc = blob.slice(data_end - size, size)?;
    let entry = toc
        .chunks_exact(128)
        .filter_map(read_struct::<TocEntry>)
        .find(|e| e.name.split(|&b| b == 0).next() == Some(BOOT_NAME.as_bytes()))
        .ok_or_else(|| bad(blob, format!("no {BOOT_NAME} in the ToC")))?;
    from_toc(blob, entry)
}

/// The bootstrap ToC `entry` locates in `blob`, decoded and checked.
fn from_toc(blob: &Device, entry: &TocEntry) -> Result<Device> {
    let len = blob.len();
    let (offset, stored, plain) = (
        entry.compressed_offset.get(),
        entry.compressed_size.get(),
        entry.uncompressed_size.get(),
    );
    if stored > MAX_BOOTSTRAP
        || plain > max_decoded(stored)
        || offset.checked_add(stored).is_none_or(|e| e > len)
    {
        return Err(bad(
            blob,
            format!("{BOOT_NAME} at [{offset}, +{stored}) of {len} bytes, {plain} uncompressed"),
        ));
    }
    let data = blob.slice(offset, stored)?;
    let compressor = match entry.flags.get() & 0xf {
        1 => Compressor::None,
        2 => Compressor::Zstd,
        4 => Compressor::Lz4Block,
        f => return Err(bad(blob, format!("{BOOT_NAME} with flags {f:#x}"))),
    };
    let label = format!("{} (inline bootstrap)", blob.path().display());
    let decoders = Decoders::new()?;
    let out = Device::from_filled(Path::new(&label), plain as usize, |out| {
        decoders
            .decode(compressor, data, out)
            .map_err(|e| bad(blob, format!("{BOOT_NAME}: {e}")))?;
        let digest: [u8; 32] = Sha256::digest(&*out).into();
        if digest != entry.uncompressed_digest {
            return Err(bad(
                blob,
                format!("{BOOT_NAME} does not match the ToC's sha256"),
            ));
        }
        Ok(out.len())
    })?;
    Ok(out)
}
