//! The sidecar file recording which chunks of a cache file are present: a
//! [`MapHeader`] naming the cache it describes, then one bit per chunk
//! (chunk `i` is bit `i % 8` of byte `i / 8`).
//!
//! Bits only ever go from 0 to 1, each after its chunk's bytes were synced
//! to the cache file, and are written in place; so however a process dies,
//! a bit on disk stands for a complete chunk. A map whose header does not
//! describe the cache being opened is never trusted: it is replaced by an
//! empty one, after the cache file is emptied.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result};

/// First bytes of a chunk map.
pub const MAGIC: [u8; 8] = *b"EFCHUNKS";
/// The layout version this code writes and reads.
pub const VERSION: u32 = 1;

/// The chunk map's header (64 bytes, little-endian).
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MapHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// log2 of the chunk size.
    pub chunk_shift: U32,
    /// The cached device's length in bytes.
    pub device_size: U64,
    /// SHA-256 of the key the cache was opened with (a blob's digest).
    pub key_hash: [u8; 32],
    /// CRC32C of the header with this field zero.
    pub checksum: U32,
    /// Zero.
    pub reserved: U32,
}

/// Size of [`MapHeader`] on disk: the bitmap starts there.
pub const HEADER_SIZE: u64 = std::mem::size_of::<MapHeader>() as u64;

impl MapHeader {
    /// The header of a map for `key`'s device of `device_size` bytes in
    /// chunks of `1 << chunk_shift` bytes.
    pub fn new(key: &str, chunk_shift: u32, device_size: u64) -> Self {
        let mut header = Self {
            magic: MAGIC,
            version: VERSION.into(),
            chunk_shift: chunk_shift.into(),
            device_size: device_size.into(),
            key_hash: Sha256::digest(key.as_bytes()).into(),
            checksum: 0.into(),
            reserved: 0.into(),
        };
        header.checksum = header.crc().into();
        header
    }

    fn crc(&self) -> u32 {
        let mut copy = self.clone();
        copy.checksum = 0.into();
        crc32c::crc32c(copy.as_bytes())
    }
}

/// Bytes of bitmap for `chunks` chunks.
pub fn bitmap_len(chunks: u64) -> u64 {
    chunks.div_ceil(8)
}

/// Whether chunk `i` is set in `bits`.
pub fn is_set(bits: &[u8], i: u64) -> bool {
    bits[(i / 8) as usize] & (1 << (i % 8)) != 0
}

/// Sets or clears chunks `range` in `bits`.
pub fn set_range(bits: &mut [u8], range: std::ops::RangeInclusive<u64>, on: bool) {
    for i in range {
        let byte = &mut bits[(i / 8) as usize];
        if on {
            *byte |= 1 << (i % 8);
        } else {
            *byte &= !(1 << (i % 8));
        }
    }
}

/// Reads the bitmap of the map open as `file` (named `path` in logs) if
/// its header is exactly `expect` and its length and unused bits agree;
/// `None` (with the reason logged) when it must be discarded.
pub fn load(file: &File, path: &Path, expect: &MapHeader, chunks: u64) -> Result<Option<Vec<u8>>> {
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let want = HEADER_SIZE + bitmap_len(chunks);
    let reject = |why: &str| {
        tracing::warn!("{}: {why}; discarding the cached chunks", path.display());
        Ok(None)
    };
    if len == 0 {
        return Ok(None);
    }
    if len != want {
        return reject(&format!("{len} bytes, expected {want}"));
    }
    let mut bytes = vec![0u8; want as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io(path, e))?;
    let (header, bits) = bytes.split_at(HEADER_SIZE as usize);
    let Ok(header) = MapHeader::read_from_bytes(header) else {
        return reject("unreadable header");
    };
    if header.magic != MAGIC || header.version.get() != VERSION {
        return reject("not a chunk map of this version");
    }
    if header.checksum.get() != header.crc() {
        return reject("header checksum mismatch");
    }
    if header.as_bytes() != expect.as_bytes() {
        return reject("made for another blob, size or chunk size");
    }
    // Bits past the last chunk are never set by this code.
    let used = chunks % 8;
    if used != 0 && bits.last().is_some_and(|b| b >> used != 0) {
        return reject("bits set past the last chunk");
    }
    Ok(Some(bits.to_vec()))
}

/// Writes an empty map with `header` for `chunks` chunks, replacing what
/// the file held.
pub fn reset(file: &File, path: &Path, header: &MapHeader, chunks: u64) -> Result<()> {
    let io = |e| Error::io(path, e);
    // Invalid while being rewritten: an empty map is no map.
    file.set_len(0).map_err(io)?;
    let mut bytes = header.as_bytes().to_vec();
    bytes.resize((HEADER_SIZE + bitmap_len(chunks)) as usize, 0);
    file.write_all_at(&bytes, 0).map_err(io)?;
    file.sync_data().map_err(io)
}

/// Writes the bitmap bytes holding chunks `first..=last` in place.
pub fn persist(file: &File, path: &Path, bits: &[u8], first: u64, last: u64) -> Result<()> {
    let (from, to) = ((first / 8) as usize, (last / 8) as usize + 1);
    file.write_all_at(&bits[from..to], HEADER_SIZE + from as u64)
        .map_err(|e| Error::io(path, e))
}

/// Reads from the map on disk the bitmap bytes holding chunks
/// `first..=last` (set there by this or another process, each bit after
/// its chunk was synced), as (index of the first byte, bytes).
pub fn read_bits(file: &File, path: &Path, first: u64, last: u64) -> Result<(u64, Vec<u8>)> {
    let (from, to) = (first / 8, last / 8 + 1);
    let mut bytes = vec![0; (to - from) as usize];
    file.read_exact_at(&mut bytes, HEADER_SIZE + from)
        .map_err(|e| Error::io(path, e))?;
    Ok((from, bytes))
}
