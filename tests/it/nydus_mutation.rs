//! A structured mutation sweep of the Nydus RAFS tables (extended
//! superblock, blob table, chunk records, device slots, random metadata
//! bytes) of every case in tests/fixtures/nydus: errors or clean reads,
//! never a panic, a hang, a multi-line error or unbounded memory.

use crate::common::*;
use crate::nydus::{blob_of, case, expected, files_of, CASES};

use std::mem::offset_of;
use std::path::Path;
use std::time::{Duration, Instant};

use erofs_fuse::device::Device;
use erofs_fuse::format::{DeviceSlot, SuperBlock, SUPERBLOCK_OFFSET};
use erofs_fuse::fsck::{fsck, FsckLimits};
use erofs_fuse::nydus::layout::{
    BlobEntry, ChunkRecord, SuperBlockExt, BLOB_ENTRY_SIZE, CHUNK_INFO_SIZE, EXT_SUPERBLOCK_OFFSET,
};

/// Longest one mutated case may take (debug build).
const CASE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most heap one case may use: the decoded-chunk cache's budget (4 MiB
/// here) plus a chunk or two of 1 MiB being decoded, and the reader's.
const CASE_HEAP: usize = 48 << 20;
const LIMITS: FsckLimits = FsckLimits {
    max_entries: 1 << 20,
    max_file_bytes: 4 << 20,
    max_total_bytes: 64 << 20,
    max_problems: 16,
};

/// One corruption of a bootstrap: `bytes` written at `at`.
struct Mutation {
    what: String,
    at: usize,
    bytes: Vec<u8>,
}

fn read_le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(v)
}

/// Each field of `fields` ((name, offset, width)) at `base`, set to
/// extremes, neighbours of its value and a random value.
fn fields(
    out: &mut Vec<Mutation>,
    boot: &[u8],
    base: usize,
    label: &str,
    fields: &[(&str, usize, usize)],
    rng: &mut impl FnMut() -> u64,
) {
    for &(name, offset, width) in fields {
        let at = base + offset;
        if at + width > boot.len() {
            continue;
        }
        let old = read_le(boot, at, width);
        let max = if width == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        for (how, v) in [
            ("0", 0),
            ("max", max),
            ("+1", old.wrapping_add(1) & max),
            ("-1", old.wrapping_sub(1) & max),
            ("top bit", old ^ (1 << (8 * width - 1))),
            ("x2", old.wrapping_mul(2) & max),
            ("random", rng() & max),
        ] {
            out.push(Mutation {
                what: format!("{label}.{name} = {how} ({v:#x})"),
                at,
                bytes: v.to_le_bytes()[..width].to_vec(),
            });
        }
    }
}

/// The fields of the extended superblock, the EROFS superblock and the
/// first device slot.
fn superblock_fields(out: &mut Vec<Mutation>, boot: &[u8], rng: &mut impl FnMut() -> u64) {
    let ext = EXT_SUPERBLOCK_OFFSET as usize;
    let e = |name, offset, width| (name, offset, width);
    let ext_fields = [
        e("flags", offset_of!(SuperBlockExt, flags), 8),
        e(
            "blob_table_offset",
            offset_of!(SuperBlockExt, blob_table_offset),
            8,
        ),
        e(
            "blob_table_size",
            offset_of!(SuperBlockExt, blob_table_size),
            4,
        ),
        e("chunk_size", offset_of!(SuperBlockExt, chunk_size), 4),
        e(
            "chunk_table_offset",
            offset_of!(SuperBlockExt, chunk_table_offset),
            8,
        ),
        e(
            "chunk_table_size",
            offset_of!(SuperBlockExt, chunk_table_size),
            8,
        ),
    ];
    fields(out, boot, ext, "ext", &ext_fields, rng);
    let sb_fields = [
        e("extra_devices", offset_of!(SuperBlock, extra_devices), 2),
        e("feature_compat", offset_of!(SuperBlock, feature_compat), 4),
        e("devt_slotoff", offset_of!(SuperBlock, devt_slotoff), 2),
    ];
    fields(out, boot, SUPERBLOCK_OFFSET as usize, "sb", &sb_fields, rng);
    let slot_fields = [
        e("tag", 0, 1),
        e("blocks", offset_of!(DeviceSlot, blocks_lo), 4),
        e("mapped_blkaddr", offset_of!(DeviceSlot, uniaddr_lo), 4),
    ];
    fields(out, boot, 1408, "slot0", &slot_fields, rng);
}

/// The fields of the first blob table entry.
fn blob_fields(out: &mut Vec<Mutation>, boot: &[u8], rng: &mut impl FnMut() -> u64) {
    let ext = EXT_SUPERBLOCK_OFFSET as usize;
    let table = read_le(boot, ext + offset_of!(SuperBlockExt, blob_table_offset), 8) as usize;
    let e = |name, offset, width| (name, offset, width);
    let blob = [
        e("blob_id", offset_of!(BlobEntry, blob_id), 1),
        e("blob_index", offset_of!(BlobEntry, blob_index), 4),
        e("chunk_size", offset_of!(BlobEntry, chunk_size), 4),
        e("chunk_count", offset_of!(BlobEntry, chunk_count), 4),
        e(
            "compression_algo",
            offset_of!(BlobEntry, compression_algo),
            4,
        ),
        e("digest_algo", offset_of!(BlobEntry, digest_algo), 4),
        e("features", offset_of!(BlobEntry, features), 4),
        e("compressed_size", offset_of!(BlobEntry, compressed_size), 8),
        e(
            "uncompressed_size",
            offset_of!(BlobEntry, uncompressed_size),
            8,
        ),
        e("ci_offset", offset_of!(BlobEntry, ci_offset), 8),
    ];
    assert_eq!(BLOB_ENTRY_SIZE, 256);
    fields(out, boot, table, "blob0", &blob, rng);
}

/// Byte offset and count of the chunk records.
fn chunk_table(boot: &[u8]) -> (usize, u64) {
    let ext = EXT_SUPERBLOCK_OFFSET as usize;
    let table = read_le(boot, ext + offset_of!(SuperBlockExt, chunk_table_offset), 8) as usize;
    let size = read_le(boot, ext + offset_of!(SuperBlockExt, chunk_table_size), 8);
    (table, size / CHUNK_INFO_SIZE)
}

/// The fields of three chunk records (first, middle, last), and the
/// targeted values: an offset near 2^64 with a small size (overflow), an
/// unaligned offset, the compressed flag toggled with no digest.
fn chunk_fields(out: &mut Vec<Mutation>, boot: &[u8], rng: &mut impl FnMut() -> u64) {
    let (table, count) = chunk_table(boot);
    let e = |name, offset, width| (name, offset, width);
    let record = [
        e("digest", offset_of!(ChunkRecord, digest), 1),
        e("blob_index", offset_of!(ChunkRecord, blob_index), 4),
        e("flags", offset_of!(ChunkRecord, flags), 4),
        e(
            "compressed_size",
            offset_of!(ChunkRecord, compressed_size),
            4,
        ),
        e(
            "uncompressed_size",
            offset_of!(ChunkRecord, uncompressed_size),
            4,
        ),
        e(
            "compressed_offset",
            offset_of!(ChunkRecord, compressed_offset),
            8,
        ),
        e(
            "uncompressed_offset",
            offset_of!(ChunkRecord, uncompressed_offset),
            8,
        ),
        e("index", offset_of!(ChunkRecord, index), 4),
    ];
    for k in [0, count / 2, count.saturating_sub(1)] {
        let at = table + (k * CHUNK_INFO_SIZE) as usize;
        fields(out, boot, at, &format!("chunk{k}"), &record, rng);
        out.extend(targeted(boot, at, k));
    }
}

/// The targeted corruptions of the chunk record `k` at byte `at`.
fn targeted(boot: &[u8], at: usize, k: u64) -> Vec<Mutation> {
    let usize_at = at + offset_of!(ChunkRecord, uncompressed_size);
    let uoff_at = at + offset_of!(ChunkRecord, uncompressed_offset);
    let flags_at = at + offset_of!(ChunkRecord, flags);
    // Size 0x100 and offset 2^64 - 4096, the compressed offset kept
    // between them: end.next_multiple_of(4096) would overflow.
    let mut overflow = boot[usize_at..uoff_at + 8].to_vec();
    overflow[..4].copy_from_slice(&0x100u32.to_le_bytes());
    overflow[12..].copy_from_slice(&0xFFFF_FFFF_FFFF_F000u64.to_le_bytes());
    let unaligned = (read_le(boot, uoff_at, 8) + 512).to_le_bytes().to_vec();
    // Digest zeroed and the compressed flag toggled: a stored chunk read
    // as compressed or the other way round, nothing to catch it but the
    // decoder, the size or the crc.
    let mut no_digest = boot[at..flags_at + 4].to_vec();
    no_digest[..32].fill(0);
    no_digest[36..].copy_from_slice(&((read_le(boot, flags_at, 4) as u32) ^ 1).to_le_bytes());
    [
        (
            "uncompressed size 0x100 at offset 2^64 - 4096",
            usize_at,
            overflow,
        ),
        ("uncompressed offset + 512", uoff_at, unaligned),
        ("no digest, compressed flag toggled", at, no_digest),
    ]
    .into_iter()
    .map(|(what, at, bytes)| Mutation {
        what: format!("chunk{k}: {what}"),
        at,
        bytes,
    })
    .collect()
}

/// Inode chunk addresses (EROFS chunk indexes: advise, device id 1,
/// block) of three chunk records moved one block into their chunk, but in
/// tarfs mode (no digests: a tar is served as it is): each file must fail
/// with EIO, never show bytes from the middle of a chunk.
fn chunk_addresses(boot: &[u8]) -> Vec<Mutation> {
    let flags = read_le(boot, EXT_SUPERBLOCK_OFFSET as usize, 8);
    let (table, count) = chunk_table(boot);
    if flags & erofs_fuse::nydus::layout::FLAG_TARFS != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for k in [0, count / 2, count.saturating_sub(1)] {
        let record = table + (k * CHUNK_INFO_SIZE) as usize;
        let blk = read_le(
            boot,
            record + offset_of!(ChunkRecord, uncompressed_offset),
            8,
        ) / 4096;
        let index = read_le(boot, record + offset_of!(ChunkRecord, index), 4);
        // advise = CI index low 16 bits, device id = 1 | its high 8 << 8.
        let head = (index & 0xffff) | ((1 | ((index >> 16) << 8)) << 16);
        let found = (8..table)
            .step_by(8)
            .find(|&p| read_le(boot, p, 4) == head && read_le(boot, p + 4, 4) == blk);
        if let Some(p) = found {
            out.push(Mutation {
                what: format!("chunk{k}: its file's chunk address one block on"),
                at: p + 4,
                bytes: ((blk + 1) as u32).to_le_bytes().to_vec(),
            });
        }
    }
    out
}

/// The structured corruptions of bootstrap `boot`, then random bytes of
/// its inodes, directories and chunk indexes.
fn mutations(boot: &[u8], seed: u64) -> Vec<Mutation> {
    let mut rng = xorshift(seed);
    let mut out = Vec::new();
    superblock_fields(&mut out, boot, &mut rng);
    blob_fields(&mut out, boot, &mut rng);
    chunk_fields(&mut out, boot, &mut rng);
    out.extend(chunk_addresses(boot));
    let (table, _) = chunk_table(boot);
    for _ in 0..64 {
        let at = 8192 + (rng() as usize) % (table.min(boot.len()) - 8192);
        out.push(Mutation {
            what: format!("metadata byte {at}"),
            at,
            bytes: vec![rng() as u8],
        });
    }
    out
}

/// What reading every file of `expected` from `image` shows: `Err` names
/// the first file served with wrong data or failing with another error
/// than EIO; with `strict` unset (the tree itself was mutated), any
/// outcome but a panic passes.
fn read_all(
    image: &erofs_fuse::Image,
    expected: &[(String, u64, String)],
    strict: bool,
) -> Result<(), String> {
    for (path, size, sha) in expected {
        // A mutated inode may claim any size: only the manifest's is read.
        let read = image
            .resolve(path.as_bytes())
            .and_then(|inode| match inode.size == *size {
                true => image.read_range(&inode, 0, inode.size),
                false => Ok(std::borrow::Cow::Borrowed(&[][..])),
            });
        let verdict = match read {
            Ok(bytes) if bytes.len() as u64 == *size && hex(&sha256(&bytes)) == *sha => continue,
            Ok(_) => format!("{path}: wrong data served"),
            Err(e) if e.errno() == libc::EIO => continue,
            Err(e) => format!("{path}: {e} (not EIO)"),
        };
        if strict {
            return Err(verdict);
        }
    }
    Ok(())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(b: &[u8]) -> String {
    erofs_fuse::format::hex(b)
}

/// The regular files of case `name`'s manifest: (path, size, sha256).
fn files(name: &str) -> Vec<(String, u64, String)> {
    files_of(&expected(name))
}

/// Opens case `name`'s bootstrap mutated by `m` with its blob and reads
/// every file (see [`read_all`]): `Ok(true)` when it opened, `Ok(false)`
/// for a one-line error.
fn run_case(name: &str, boot: &[u8], blob: &[u8], m: &Mutation) -> Result<bool, String> {
    let mut bytes = boot.to_vec();
    bytes[m.at..m.at + m.bytes.len()].copy_from_slice(&m.bytes);
    let primary = Device::from_bytes(Path::new("boot"), &bytes).unwrap();
    let blob = Device::from_bytes(Path::new("blob"), blob).unwrap();
    match erofs_fuse::nydus::open_bytes(primary, vec![blob], 4 << 20) {
        Ok(image) => {
            let _ = fsck(&image, &LIMITS);
            read_all(&image, &files(name), !m.what.starts_with("metadata"))?;
            Ok(true)
        }
        Err(e) if e.to_string().contains('\n') => Err(format!("multi-line error {e:?}")),
        Err(_) => Ok(false),
    }
}

#[test]
fn mutated_rafs_tables_end_in_errors_not_panics() {
    // The fast tier: each field's "max" and one other of its seven values
    // (rotating), the targeted values, and every eighth random byte; the
    // full sweep with the privileged tier. Every file of what opens reads
    // exactly or fails with EIO (table mutations leave the tree as it is).
    let full = cfg!(feature = "privileged");
    let keep = |i: usize, m: &Mutation| {
        full || if m.what.starts_with("metadata") {
            i.is_multiple_of(8)
        } else {
            m.what.contains(": ") || i % 7 == 1 || i % 7 == (i / 7) % 7
        }
    };
    let (mut total, mut opened) = (0, 0);
    let mut failures = Vec::new();
    for name in CASES {
        let boot = std::fs::read(case(name).join("bootstrap")).unwrap();
        let blob = std::fs::read(blob_of(name)).unwrap();
        let all = mutations(&boot, 0x5eed ^ name.len() as u64);
        for (_, m) in all.into_iter().enumerate().filter(|(i, m)| keep(*i, m)) {
            let start = Instant::now();
            let run = || crate::mutation::heap_peak(|| run_case(name, &boot, &blob, &m));
            total += 1;
            match std::panic::catch_unwind(run) {
                Err(_) => failures.push(format!("{name}: {}: PANIC", m.what)),
                Ok((result, heap)) => {
                    if heap > CASE_HEAP {
                        failures.push(format!("{name}: {}: {} MiB of heap", m.what, heap >> 20));
                    }
                    match result {
                        Ok(open) => opened += usize::from(open),
                        Err(e) => failures.push(format!("{name}: {}: {e}", m.what)),
                    }
                }
            }
            if start.elapsed() > CASE_TIMEOUT {
                failures.push(format!("{name}: {}: took {:?}", m.what, start.elapsed()));
            }
        }
    }
    eprintln!("nydus mutation: {total} cases, {opened} opened");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Some cases must be caught, some must not matter (a digest byte of a
    // chunk no file uses, a flag bit): a sweep that opens nothing or
    // everything tests nothing.
    assert!(opened > 0 && opened < total, "{opened} of {total} opened");
}
