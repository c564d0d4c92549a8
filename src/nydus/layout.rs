//! The Nydus RAFS v6 extensions of an EROFS bootstrap, as typed views and
//! their checked host forms: the extended superblock (at byte 1152), the
//! blob table and the chunk info table (nydus
//! `rafs/src/metadata/layout/v6.rs`, `v5.rs`; `storage/src/device.rs` for
//! the flag bits). Everything is bounds-checked against the bootstrap.

use std::path::Path;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::device::{Access, Device};
use crate::error::{Error, Result};
use crate::format::{read_struct, SuperBlock, EROFS_MAGIC, SUPERBLOCK_OFFSET};

/// EROFS compat bit nydus-image sets on every RAFS v6 bootstrap.
pub const COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// Where the extended superblock starts (after the 128-byte EROFS one).
pub const EXT_SUPERBLOCK_OFFSET: u64 = 1152;
/// Size of a blob table entry.
pub const BLOB_ENTRY_SIZE: u64 = 256;
/// Size of a chunk info record.
pub const CHUNK_INFO_SIZE: u64 = 80;
/// Most blobs: the device id's low byte holds blob index + 1.
pub const MAX_BLOBS: u64 = 255;
/// Most chunk records: a chunk address holds a 24-bit index.
pub const MAX_CHUNKS: u64 = 1 << 24;
/// Largest chunk decoded (nydus allows up to 16 MiB; room to spare).
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Largest uncompressed blob (nydus `BLOB_MAX_SIZE_UNCOMPRESSED`).
pub const MAX_BLOB_UNCOMPRESSED: u64 = 1 << 44;

/// Superblock flag: the blobs are tar files read in place (tarfs).
pub const FLAG_TARFS: u64 = 0x200;
/// Blob features this reader cannot serve (ZRan, separate meta, inlined
/// chunk digests, batch chunks, encryption, external blobs).
pub const UNSUPPORTED_FEATURES: u32 = 0x08 | 0x10 | 0x20 | 0x80 | 0x100 | 0x800;
/// Blob feature: tarfs (the tar is the blob).
pub const FEATURE_TARFS: u32 = 0x40;
/// Blob feature: chunks start on 4 KiB boundaries of the uncompressed
/// space (nydus requires it of every blob not in tarfs mode).
pub const FEATURE_ALIGNED: u32 = 0x1;
/// Blob feature: the bootstrap is inside this blob (`--blob-inline-meta`);
/// its id in the bootstrap is a placeholder (`"x"` 64 times) and the real
/// one is the name of the file the bootstrap came from.
pub const FEATURE_INLINED_FS_META: u32 = 0x2;
/// Chunk flag: the chunk's data is compressed.
pub const CHUNK_COMPRESSED: u32 = 0x1;
/// Chunk flag: the chunk's crc32c is recorded (`HAS_CRC32`).
pub const CHUNK_HAS_CRC32: u32 = 0x10;
/// Chunk flags this reader cannot serve (encrypted, batch).
pub const CHUNK_UNSUPPORTED: u32 = 0x4 | 0x8;

/// `RafsV6SuperBlockExt`: 256 bytes at [`EXT_SUPERBLOCK_OFFSET`].
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlockExt {
    /// `RafsSuperFlags` (compressor, digester, tarfs mode, ...).
    pub flags: U64,
    /// Byte offset of the blob table in the bootstrap.
    pub blob_table_offset: U64,
    /// Its size in bytes.
    pub blob_table_size: U32,
    /// Default chunk size.
    pub chunk_size: U32,
    /// Byte offset of the chunk info table.
    pub chunk_table_offset: U64,
    /// Its size in bytes.
    pub chunk_table_size: U64,
    /// Byte offset of the prefetch table.
    pub prefetch_table_offset: U64,
    /// Its size in bytes.
    pub prefetch_table_size: U32,
    /// Padding.
    pub padding: U32,
    /// Reserved.
    pub reserved: [u8; 200],
}

/// `RafsV6Blob`: one 256-byte entry of the blob table.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BlobEntry {
    /// The blob id: 64 ASCII hex characters (the blob's sha256).
    pub blob_id: [u8; 64],
    /// Index in the blob table.
    pub blob_index: U32,
    /// Chunk size.
    pub chunk_size: U32,
    /// Number of chunks.
    pub chunk_count: U32,
    /// Chunk compressor: 0 none, 1 lz4_block, 2 gzip, 3 zstd.
    pub compression_algo: U32,
    /// Chunk digester: 0 blake3, 1 sha256.
    pub digest_algo: U32,
    /// `BlobFeatures` bits.
    pub features: U32,
    /// Compressed size of the blob.
    pub compressed_size: U64,
    /// Uncompressed size of the blob.
    pub uncompressed_size: U64,
    /// Size of the blob's ToC.
    pub blob_toc_size: U32,
    /// Compressor of the compression info (CI) array.
    pub ci_compressor: U32,
    /// Offset of the CI array in the blob.
    pub ci_offset: U64,
    /// Its compressed size.
    pub ci_compressed_size: U64,
    /// Its uncompressed size.
    pub ci_uncompressed_size: U64,
    /// sha256 of the ToC.
    pub blob_toc_digest: [u8; 32],
    /// sha256 of the blob's meta (ZRan).
    pub blob_meta_digest: [u8; 32],
    /// Size of the blob's meta (ZRan).
    pub blob_meta_size: U64,
    /// Cipher IV (encryption).
    pub cipher_iv: [u8; 8],
    /// Cipher algorithm.
    pub cipher_algo: U32,
    /// Reserved.
    pub reserved: [u8; 36],
}

/// `RafsV5ChunkInfo`: one 80-byte record of the chunk info table.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkRecord {
    /// Digest of the uncompressed chunk (the blob's digester).
    pub digest: [u8; 32],
    /// Blob table index.
    pub blob_index: U32,
    /// `BlobChunkFlags`.
    pub flags: U32,
    /// Size of the chunk's data in the blob.
    pub compressed_size: U32,
    /// Size of the chunk uncompressed.
    pub uncompressed_size: U32,
    /// Offset of its data in the blob file.
    pub compressed_offset: U64,
    /// Offset in the blob's uncompressed address space.
    pub uncompressed_offset: U64,
    /// Offset in the (first) file holding it.
    pub file_offset: U64,
    /// Chunk index in its blob (the CI index of chunk addresses).
    pub index: U32,
    /// crc32 of the chunk (when flagged).
    pub crc32: U32,
}

const _: () = assert!(std::mem::size_of::<SuperBlockExt>() == 256);
const _: () = assert!(std::mem::size_of::<BlobEntry>() == BLOB_ENTRY_SIZE as usize);
const _: () = assert!(std::mem::size_of::<ChunkRecord>() == CHUNK_INFO_SIZE as usize);

/// A chunk compressor, by nydus's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    /// Stored as-is.
    None,
    /// LZ4 block format.
    Lz4Block,
    /// gzip.
    Gzip,
    /// zstd frames.
    Zstd,
}

impl Compressor {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Lz4Block,
            2 => Self::Gzip,
            3 => Self::Zstd,
            _ => return None,
        })
    }

    /// nydus's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4Block => "lz4_block",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// A chunk digester, by nydus's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digester {
    /// BLAKE3.
    Blake3,
    /// SHA-256.
    Sha256,
}

impl Digester {
    /// nydus's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }
}

/// One blob as the bootstrap describes it (checked).
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// Blob table index (device id - 1).
    pub index: u32,
    /// The blob id: 64 hex characters, as the bootstrap spells them
    /// (nydusd looks the file up by it unchanged); for a blob with
    /// [`FEATURE_INLINED_FS_META`], any 64 printable ASCII characters (a
    /// placeholder, never used as a file name).
    pub id: String,
    /// Chunk size.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digester.
    pub digester: Digester,
    /// `BlobFeatures` bits.
    pub features: u32,
    /// Compressed size.
    pub compressed_size: u64,
    /// Uncompressed size.
    pub uncompressed_size: u64,
    /// CI array compressor (raw number).
    pub ci_compressor: u32,
    /// CI array offset in the blob.
    pub ci_offset: u64,
    /// CI array compressed size.
    pub ci_compressed_size: u64,
    /// CI array uncompressed size.
    pub ci_uncompressed_size: u64,
}

/// One chunk record (checked: sizes bounded, blob index valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Digest of the uncompressed bytes (all zeros: none recorded).
    pub digest: [u8; 32],
    /// Blob table index.
    pub blob_index: u32,
    /// `BlobChunkFlags`.
    pub flags: u32,
    /// Bytes in the blob file.
    pub compressed_size: u32,
    /// Bytes uncompressed.
    pub uncompressed_size: u32,
    /// Where they start in the blob file.
    pub compressed_offset: u64,
    /// Where the chunk starts in the blob's uncompressed address space.
    pub uncompressed_offset: u64,
    /// Chunk index in its blob.
    pub index: u32,
    /// crc32c of the uncompressed bytes (when flagged).
    pub crc32: u32,
}

/// The RAFS v6 parts of a bootstrap.
#[derive(Debug, Clone)]
pub struct Rafs {
    /// `RafsSuperFlags`.
    pub flags: u64,
    /// Default chunk size.
    pub chunk_size: u32,
    /// Blobs in table order.
    pub blobs: Vec<BlobInfo>,
    /// Every chunk record, in table order.
    pub chunks: Vec<ChunkInfo>,
}

impl Rafs {
    /// Whether the blobs are tar files read in place.
    pub fn tarfs(&self) -> bool {
        self.flags & FLAG_TARFS != 0
    }
}

impl BlobInfo {
    /// Whether the bootstrap is inside this blob and its id a placeholder.
    pub fn inlined_meta(&self) -> bool {
        self.features & FEATURE_INLINED_FS_META != 0
    }
}

/// Whether `dev` holds an EROFS superblock marked RAFS v6.
pub fn is_rafs_v6(dev: &Device) -> bool {
    // One page: a fault on the sequential map would read megabytes.
    let size = std::mem::size_of::<SuperBlock>() as u64;
    let Ok(bytes) = dev.slice_for(Access::Random, SUPERBLOCK_OFFSET, size) else {
        return false;
    };
    read_struct::<SuperBlock>(bytes).is_some_and(|sb| {
        sb.magic.get() == EROFS_MAGIC && sb.feature_compat.get() & COMPAT_RAFS_V6 != 0
    })
}

/// A corruption error naming the bootstrap.
fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("{}: RAFS v6 {what}", path.display()))
}

/// `size` bytes at `offset` of the bootstrap, or an error naming `what`.
fn table<'a>(dev: &'a Device, path: &Path, what: &str, offset: u64, size: u64) -> Result<&'a [u8]> {
    let fits = offset.checked_add(size).is_some_and(|end| end <= dev.len());
    if !fits {
        return Err(bad(
            path,
            format!(
                "{what} [{offset}, +{size}) is outside the bootstrap ({} bytes)",
                dev.len()
            ),
        ));
    }
    dev.slice(offset, size)
}

/// Parses the RAFS v6 extensions of the bootstrap `dev` (named `path`),
/// which [`is_rafs_v6`]; `extra_devices` is its EROFS device count and
/// `block_size` its block size.
pub fn parse(dev: &Device, path: &Path, extra_devices: u64, block_size: u64) -> Result<Rafs> {
    let ext_bytes = table(dev, path, "extended superblock", EXT_SUPERBLOCK_OFFSET, 256)?;
    let ext: &SuperBlockExt =
        read_struct(ext_bytes).ok_or_else(|| bad(path, "short extended superblock"))?;
    let size = u64::from(ext.blob_table_size.get());
    if !size.is_multiple_of(BLOB_ENTRY_SIZE) || size / BLOB_ENTRY_SIZE > MAX_BLOBS {
        return Err(bad(
            path,
            format!("blob table of {size} bytes (256 per blob, at most {MAX_BLOBS})"),
        ));
    }
    if size / BLOB_ENTRY_SIZE != extra_devices {
        return Err(bad(
            path,
            format!(
                "blob table has {} blob(s) but the device table {extra_devices}",
                size / BLOB_ENTRY_SIZE
            ),
        ));
    }
    let bytes = table(dev, path, "blob table", ext.blob_table_offset.get(), size)?;
    let sb = Layout {
        path,
        flags: ext.flags.get(),
        chunk_size: ext.chunk_size.get(),
        block_size,
    };
    let blobs = bytes
        .chunks_exact(BLOB_ENTRY_SIZE as usize)
        .enumerate()
        .map(|(i, b)| blob_info(&sb, i as u32, b))
        .collect::<Result<Vec<_>>>()?;
    let size = ext.chunk_table_size.get();
    if !size.is_multiple_of(CHUNK_INFO_SIZE) || size / CHUNK_INFO_SIZE > MAX_CHUNKS {
        return Err(bad(
            path,
            format!("chunk table of {size} bytes (80 per chunk, at most {MAX_CHUNKS})"),
        ));
    }
    let bytes = table(dev, path, "chunk table", ext.chunk_table_offset.get(), size)?;
    let chunks = bytes
        .chunks_exact(CHUNK_INFO_SIZE as usize)
        .enumerate()
        .map(|(i, c)| chunk_info(&sb, i, c, &blobs))
        .collect::<Result<Vec<_>>>()?;
    Ok(Rafs {
        flags: sb.flags,
        chunk_size: sb.chunk_size,
        blobs,
        chunks,
    })
}

/// What the blob and chunk checks need of the superblocks.
struct Layout<'a> {
    path: &'a Path,
    flags: u64,
    chunk_size: u32,
    block_size: u64,
}

impl Layout<'_> {
    fn tarfs(&self) -> bool {
        self.flags & FLAG_TARFS != 0
    }
}

/// The id of a blob entry: 64 hex characters, or for a blob with inlined
/// metadata 64 printable ASCII ones (nydus-image writes `"x"` 64 times).
fn blob_id(path: &Path, i: u32, e: &BlobEntry) -> Result<String> {
    let inline = e.features.get() & FEATURE_INLINED_FS_META != 0;
    let ok = |b: u8| b.is_ascii_hexdigit() || (inline && b.is_ascii_graphic());
    if !e.blob_id.iter().all(|&b| ok(b)) {
        return Err(bad(path, format!("blob {i}: id is not 64 hex characters")));
    }
    // All ASCII: checked above.
    Ok(String::from_utf8_lossy(&e.blob_id).into_owned())
}

/// Entry `i` of the blob table, checked as nydus checks it
/// (`RafsV6Blob::validate`).
fn blob_info(sb: &Layout, i: u32, bytes: &[u8]) -> Result<BlobInfo> {
    let path = sb.path;
    let e: &BlobEntry = read_struct(bytes).ok_or_else(|| bad(path, "short blob entry"))?;
    let id = blob_id(path, i, e)?;
    let bad_blob = |what: String| bad(path, format!("blob {i} ({id}): {what}"));
    if e.blob_index.get() != i {
        return Err(bad_blob(format!(
            "blob_index {} in entry {i}",
            e.blob_index.get()
        )));
    }
    let compressor = Compressor::from_u32(e.compression_algo.get())
        .ok_or_else(|| bad_blob(format!("unknown compressor {}", e.compression_algo.get())))?;
    let digester = match e.digest_algo.get() {
        0 => Digester::Blake3,
        1 => Digester::Sha256,
        n => return Err(bad_blob(format!("unknown digester {n}"))),
    };
    let chunk_size = e.chunk_size.get();
    if !chunk_size.is_power_of_two()
        || u64::from(chunk_size) > MAX_CHUNK_SIZE
        || chunk_size < 4096
        || chunk_size != sb.chunk_size
    {
        return Err(bad_blob(format!(
            "chunk size {chunk_size} (the superblock's is {})",
            sb.chunk_size
        )));
    }
    let uncompressed_size = e.uncompressed_size.get();
    if uncompressed_size > MAX_BLOB_UNCOMPRESSED {
        return Err(bad_blob(format!("uncompressed size {uncompressed_size}")));
    }
    let features = e.features.get();
    if features & UNSUPPORTED_FEATURES != 0 {
        return Err(Error::Unsupported(format!(
            "{}: blob {id}: features {features:#x} (ZRan, batch, encrypted, separate or external blobs are not supported)",
            path.display()
        )));
    }
    if (features & FEATURE_ALIGNED != 0) == sb.tarfs() {
        return Err(bad_blob(format!(
            "features {features:#x}: the ALIGNED bit must be set unless in tarfs mode, and only then"
        )));
    }
    Ok(BlobInfo {
        index: i,
        id,
        chunk_size,
        chunk_count: e.chunk_count.get(),
        compressor,
        digester,
        features,
        compressed_size: e.compressed_size.get(),
        uncompressed_size,
        ci_compressor: e.ci_compressor.get(),
        ci_offset: e.ci_offset.get(),
        ci_compressed_size: e.ci_compressed_size.get(),
        ci_uncompressed_size: e.ci_uncompressed_size.get(),
    })
}

/// Record `i` of the chunk table, checked against the blobs: its
/// uncompressed range lies in its blob's uncompressed size and (but in
/// tarfs mode, where records are not read) starts on a block.
fn chunk_info(sb: &Layout, i: usize, bytes: &[u8], blobs: &[BlobInfo]) -> Result<ChunkInfo> {
    let path = sb.path;
    let c: &ChunkRecord = read_struct(bytes).ok_or_else(|| bad(path, "short chunk record"))?;
    let blob_index = c.blob_index.get();
    let blob = blobs.get(blob_index as usize).ok_or_else(|| {
        bad(
            path,
            format!("chunk {i}: blob index {blob_index} of {}", blobs.len()),
        )
    })?;
    let (usize_, csize) = (c.uncompressed_size.get(), c.compressed_size.get());
    let uoff = c.uncompressed_offset.get();
    let fits = uoff
        .checked_add(u64::from(usize_))
        .is_some_and(|end| end <= blob.uncompressed_size)
        && (sb.tarfs() || uoff.is_multiple_of(sb.block_size));
    if usize_ == 0
        || usize_ > blob.chunk_size
        || u64::from(csize) > MAX_CHUNK_SIZE
        || csize == 0
        || !fits
    {
        return Err(bad(
            path,
            format!(
                "chunk {i}: sizes {csize} compressed, {usize_} uncompressed at uncompressed offset {uoff} (chunk size {}, blob of {} bytes uncompressed)",
                blob.chunk_size, blob.uncompressed_size
            ),
        ));
    }
    Ok(ChunkInfo {
        digest: c.digest,
        blob_index,
        flags: c.flags.get(),
        compressed_size: csize,
        uncompressed_size: usize_,
        compressed_offset: c.compressed_offset.get(),
        uncompressed_offset: uoff,
        index: c.index.get(),
        crc32: c.crc32.get(),
    })
}
