//! Checking that a TOC's data ranges hold what it says: each regular file's
//! zstd frames (zstd:chunked) or each chunk's gzip member (eStargz) decode
//! to exactly the file's (chunk's) size and digest. A reader that later
//! fetches a file by its TOC range then gets what the tar holds.
//!
//! The work is bounded by a budget of decoded bytes the caller gives (the
//! tar's size, once known, bounds an honest TOC's data): a TOC whose
//! entries all point at one small frame that decodes to gigabytes is
//! refused once the budget is spent, not decoded a million times.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::entry::{EntryType, TocEntry};
use super::{bad, hex_digest, BlobReader, Format, LocalBlob, Region, Toc};
use crate::error::Result;

/// A writer that hashes what it is given into two hashes, counting.
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

/// Takes `n` decoded bytes from `budget`, or fails naming the blob.
fn spend(blob: &Path, budget: &mut u64, n: u64) -> Result<()> {
    *budget = budget.checked_sub(n).ok_or_else(|| {
        bad(
            blob,
            "the TOC's data ranges decode to more than the tar holds",
        )
    })?;
    Ok(())
}

/// Decodes every regular file's data through its TOC ranges and checks
/// sizes and digests (see the module doc), decoding at most `budget`
/// bytes in all.
pub fn check_frames(blob: &Path, toc: &Toc, mut budget: u64) -> Result<()> {
    let local = LocalBlob::open(blob)?;
    let file: &dyn BlobReader = &local;
    match toc.format {
        Format::ZstdChunked => {
            for e in toc
                .entries
                .iter()
                .filter(|e| e.kind == EntryType::Reg && e.size > 0)
            {
                spend(blob, &mut budget, e.size)?;
                check_zstd_file(blob, file, e)?;
            }
            Ok(())
        }
        Format::Estargz => check_estargz(blob, file, toc, &mut budget),
    }
}

/// The file's frames `[offset, endOffset)` decode to its size and digest.
fn check_zstd_file(blob: &Path, file: &dyn BlobReader, e: &TocEntry) -> Result<()> {
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
    std::io::copy(&mut decoder.take(e.size.saturating_add(1)), &mut sink)
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

/// The gzip member being read, kept while the chunks that follow lie
/// further in it (small files share a member): each member is then
/// decoded once.
struct Member<'a> {
    offset: u64,
    pos: u64,
    decoder: flate2::read::GzDecoder<Region<'a>>,
}

/// Each regular file's chunks, in order, cover it exactly; each decodes
/// from its member to its size and chunk digest; together to the file's
/// digest.
fn check_estargz(blob: &Path, file: &dyn BlobReader, toc: &Toc, budget: &mut u64) -> Result<()> {
    let mut member = None;
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
            // Entry checks keep chunks inside the file.
            let len = if c.chunk_size == 0 {
                e.size - c.chunk_offset
            } else {
                c.chunk_size
            };
            let reuse = matches!(&member, Some(Member { offset, pos, .. })
                if *offset == c.offset && *pos <= c.inner_offset);
            if !reuse {
                member = None;
            }
            let m = member.get_or_insert_with(|| Member {
                offset: c.offset,
                pos: 0,
                decoder: flate2::read::GzDecoder::new(Region::new(file, c.offset, toc.data_end)),
            });
            // Sizes are the TOC's: a sum that overflows is no chunk.
            let cost = (c.inner_offset - m.pos)
                .checked_add(len)
                .ok_or_else(|| bad(blob, format!("TOC entry {:?}: a chunk too large", e.name)))?;
            spend(blob, budget, cost)?;
            check_estargz_chunk(blob, m, c, len, &mut hash)?;
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

/// One chunk: `len` bytes at `innerOffset` of member `m`.
fn check_estargz_chunk(
    blob: &Path,
    m: &mut Member<'_>,
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
    let gap = c.inner_offset - m.pos;
    let skipped = std::io::copy(&mut (&mut m.decoder).take(gap), &mut std::io::sink())
        .map_err(|e| at(format!("does not decode: {e}")))?;
    let mut sink = Hashing {
        file: hash,
        chunk: Sha256::new(),
        count: 0,
    };
    std::io::copy(&mut (&mut m.decoder).take(len), &mut sink)
        .map_err(|e| at(format!("does not decode: {e}")))?;
    m.pos += skipped + sink.count;
    if skipped != gap || sink.count != len {
        return Err(at(format!(
            "decodes to {} bytes, fewer than the {} the TOC says",
            m.pos,
            c.inner_offset.saturating_add(len)
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
