//! Checking that a TOC's data ranges hold what it says: each regular file's
//! zstd frames (zstd:chunked) or each chunk's gzip member (eStargz) decode
//! to exactly the file's (chunk's) size and digest. A reader that later
//! fetches a file by its TOC range then gets what the tar holds.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::entry::{EntryType, TocEntry};
use super::{bad, hex_digest, Format, Region, Toc};
use crate::error::{Error, Result};

/// A writer that hashes what it is given into one or two hashes.
struct Hashing<'a> {
    file: &'a mut Sha256,
    chunk: Sha256,
    count: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.update(buf);
        self.chunk.update(buf);
        self.count += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes every regular file's data through its TOC ranges and checks
/// sizes and digests (see the module doc).
pub fn check_frames(blob: &Path, toc: &Toc) -> Result<()> {
    let file = File::open(blob).map_err(|e| Error::io(blob, e))?;
    match toc.format {
        Format::ZstdChunked => {
            for e in toc
                .entries
                .iter()
                .filter(|e| e.kind == EntryType::Reg && e.size > 0)
            {
                check_zstd_file(blob, &file, e)?;
            }
            Ok(())
        }
        Format::Estargz => check_estargz(blob, &file, toc),
    }
}

/// The file's frames `[offset, endOffset)` decode to its size and digest.
fn check_zstd_file(blob: &Path, file: &File, e: &TocEntry) -> Result<()> {
    let at = |what: String| {
        bad(
            blob,
            format!(
                "TOC entry {:?}: frames [{}, {}) {what}",
                e.name, e.offset, e.end_offset
            ),
        )
    };
    let region = Region::new(file, e.offset, e.end_offset);
    let decoder = zstd::stream::read::Decoder::new(region).map_err(|e| at(e.to_string()))?;
    let mut hash = Sha256::new();
    let mut sink = Hashing {
        file: &mut hash,
        chunk: Sha256::new(),
        count: 0,
    };
    std::io::copy(&mut decoder.take(e.size + 1), &mut sink)
        .map_err(|err| at(format!("do not decode: {err}")))?;
    if sink.count != e.size {
        let n = if sink.count > e.size {
            format!("more than {}", e.size)
        } else {
            sink.count.to_string()
        };
        return Err(at(format!("decode to {n} bytes, not {}", e.size)));
    }
    let actual = hex_digest(&hash.finalize());
    if actual != e.digest {
        return Err(at(format!(
            "decode to data of digest {actual}, not {}",
            e.digest
        )));
    }
    Ok(())
}

/// Each regular file's chunks, in order, cover it exactly; each decodes
/// from its member to its size and chunk digest; together to the file's
/// digest.
fn check_estargz(blob: &Path, file: &File, toc: &Toc) -> Result<()> {
    let mut i = 0;
    while i < toc.entries.len() {
        let e = &toc.entries[i];
        i += 1;
        if e.kind != EntryType::Reg || e.size == 0 {
            continue;
        }
        let mut hash = Sha256::new();
        let mut next = 0u64;
        let chunks = std::iter::once(e).chain(
            toc.entries[i..]
                .iter()
                .take_while(|c| c.kind == EntryType::Chunk),
        );
        for c in chunks {
            if c.kind == EntryType::Chunk {
                i += 1;
            }
            if c.chunk_offset != next {
                return Err(bad(
                    blob,
                    format!(
                        "TOC entry {:?}: chunk at {} where {next} was expected",
                        e.name, c.chunk_offset
                    ),
                ));
            }
            let len = if c.chunk_size == 0 {
                e.size - c.chunk_offset
            } else {
                c.chunk_size
            };
            check_estargz_chunk(blob, file, toc.data_end, c, len, &mut hash)?;
            next = c.chunk_offset + len;
        }
        if next != e.size {
            return Err(bad(
                blob,
                format!(
                    "TOC entry {:?}: chunks cover {next} of {} bytes",
                    e.name, e.size
                ),
            ));
        }
        let actual = hex_digest(&hash.finalize());
        if actual != e.digest {
            return Err(bad(
                blob,
                format!(
                    "TOC entry {:?}: data of digest {actual}, not {}",
                    e.name, e.digest
                ),
            ));
        }
    }
    Ok(())
}

/// One chunk: `len` bytes at `innerOffset` of the member at `offset`.
fn check_estargz_chunk(
    blob: &Path,
    file: &File,
    data_end: u64,
    c: &TocEntry,
    len: u64,
    hash: &mut Sha256,
) -> Result<()> {
    let at = |what: String| {
        bad(
            blob,
            format!("TOC entry {:?}: member at {} {what}", c.name, c.offset),
        )
    };
    let mut member = flate2::read::GzDecoder::new(Region::new(file, c.offset, data_end));
    let skipped = std::io::copy(
        &mut (&mut member).take(c.inner_offset),
        &mut std::io::sink(),
    )
    .map_err(|e| at(format!("does not decode: {e}")))?;
    let mut sink = Hashing {
        file: hash,
        chunk: Sha256::new(),
        count: 0,
    };
    std::io::copy(&mut member.take(len), &mut sink)
        .map_err(|e| at(format!("does not decode: {e}")))?;
    if skipped != c.inner_offset || sink.count != len {
        return Err(at(format!(
            "decodes to {} bytes, fewer than the {} the TOC says",
            skipped + sink.count,
            c.inner_offset + len
        )));
    }
    let actual = hex_digest(&sink.chunk.finalize());
    if !c.chunk_digest.is_empty() && actual != c.chunk_digest {
        return Err(at(format!(
            "decodes to a chunk of digest {actual}, not {}",
            c.chunk_digest
        )));
    }
    Ok(())
}
