//! A structured mutation sweep of the Nydus RAFS tables (extended
//! superblock, blob table, chunk records, device slots, random metadata
//! bytes) of every case in tests/fixtures/nydus: errors or clean reads,
//! never a panic, a hang, a multi-line error or unbounded memory.

use crate::common::*;
use crate::nydus::{blob_of, case, CASES};

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

/// The structured corruptions of bootstrap `boot`.
fn mutations(boot: &[u8], seed: u64) -> Vec<Mutation> {
    let mut rng = xorshift(seed);
    let mut out = Vec::new();
    let ext = EXT_SUPERBLOCK_OFFSET as usize;
    fields(
        &mut out,
        boot,
        ext,
        "ext",
        &[
            ("flags", offset_of!(SuperBlockExt, flags), 8),
            (
                "blob_table_offset",
                offset_of!(SuperBlockExt, blob_table_offset),
                8,
            ),
            (
                "blob_table_size",
                offset_of!(SuperBlockExt, blob_table_size),
                4,
            ),
            ("chunk_size", offset_of!(SuperBlockExt, chunk_size), 4),
            (
                "chunk_table_offset",
                offset_of!(SuperBlockExt, chunk_table_offset),
                8,
            ),
            (
                "chunk_table_size",
                offset_of!(SuperBlockExt, chunk_table_size),
                8,
            ),
        ],
        &mut rng,
    );
    let sb = SUPERBLOCK_OFFSET as usize;
    fields(
        &mut out,
        boot,
        sb,
        "sb",
        &[
            ("extra_devices", offset_of!(SuperBlock, extra_devices), 2),
            ("feature_compat", offset_of!(SuperBlock, feature_compat), 4),
            ("devt_slotoff", offset_of!(SuperBlock, devt_slotoff), 2),
        ],
        &mut rng,
    );
    fields(
        &mut out,
        boot,
        1408,
        "slot0",
        &[
            ("tag", 0, 1),
            ("blocks", offset_of!(DeviceSlot, blocks_lo), 4),
            ("mapped_blkaddr", offset_of!(DeviceSlot, uniaddr_lo), 4),
        ],
        &mut rng,
    );
    let blob_table = read_le(boot, ext + offset_of!(SuperBlockExt, blob_table_offset), 8) as usize;
    fields(
        &mut out,
        boot,
        blob_table,
        "blob0",
        &[
            ("blob_id", offset_of!(BlobEntry, blob_id), 1),
            ("blob_index", offset_of!(BlobEntry, blob_index), 4),
            ("chunk_size", offset_of!(BlobEntry, chunk_size), 4),
            ("chunk_count", offset_of!(BlobEntry, chunk_count), 4),
            (
                "compression_algo",
                offset_of!(BlobEntry, compression_algo),
                4,
            ),
            ("digest_algo", offset_of!(BlobEntry, digest_algo), 4),
            ("features", offset_of!(BlobEntry, features), 4),
            ("compressed_size", offset_of!(BlobEntry, compressed_size), 8),
            (
                "uncompressed_size",
                offset_of!(BlobEntry, uncompressed_size),
                8,
            ),
            ("ci_offset", offset_of!(BlobEntry, ci_offset), 8),
        ],
        &mut rng,
    );
    assert_eq!(BLOB_ENTRY_SIZE, 256);
    let table = read_le(boot, ext + offset_of!(SuperBlockExt, chunk_table_offset), 8) as usize;
    let count =
        read_le(boot, ext + offset_of!(SuperBlockExt, chunk_table_size), 8) / CHUNK_INFO_SIZE;
    for k in [0, count / 2, count.saturating_sub(1)] {
        fields(
            &mut out,
            boot,
            table + (k * CHUNK_INFO_SIZE) as usize,
            &format!("chunk{k}"),
            &[
                ("digest", offset_of!(ChunkRecord, digest), 1),
                ("blob_index", offset_of!(ChunkRecord, blob_index), 4),
                ("flags", offset_of!(ChunkRecord, flags), 4),
                (
                    "compressed_size",
                    offset_of!(ChunkRecord, compressed_size),
                    4,
                ),
                (
                    "uncompressed_size",
                    offset_of!(ChunkRecord, uncompressed_size),
                    4,
                ),
                (
                    "compressed_offset",
                    offset_of!(ChunkRecord, compressed_offset),
                    8,
                ),
                (
                    "uncompressed_offset",
                    offset_of!(ChunkRecord, uncompressed_offset),
                    8,
                ),
                ("index", offset_of!(ChunkRecord, index), 4),
            ],
            &mut rng,
        );
    }
    // Random bytes of the inodes, directories and chunk indexes.
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

#[test]
fn mutated_rafs_tables_end_in_errors_not_panics() {
    // The fast tier: each field's "max" and one other of its seven values
    // (rotating), and every eighth random byte; the full sweep with the
    // privileged tier.
    let full = cfg!(feature = "privileged");
    let keep = |i: usize, m: &Mutation| {
        full || if m.what.starts_with("metadata") {
            i.is_multiple_of(8)
        } else {
            i % 7 == 1 || i % 7 == (i / 7) % 7
        }
    };
    let (mut total, mut opened, mut clean) = (0, 0, 0);
    let mut failures = Vec::new();
    for name in CASES {
        let boot = std::fs::read(case(name).join("bootstrap")).unwrap();
        let blob = std::fs::read(blob_of(name)).unwrap();
        let all = mutations(&boot, 0x5eed ^ name.len() as u64);
        for (_, m) in all.into_iter().enumerate().filter(|(i, m)| keep(*i, m)) {
            let mut bytes = boot.clone();
            bytes[m.at..m.at + m.bytes.len()].copy_from_slice(&m.bytes);
            let start = Instant::now();
            let run = || {
                crate::mutation::heap_peak(|| {
                    let primary = Device::from_bytes(Path::new("boot"), &bytes).unwrap();
                    let blob = Device::from_bytes(Path::new("blob"), &blob).unwrap();
                    match erofs_fuse::nydus::open_bytes(primary, vec![blob], 4 << 20) {
                        Ok(image) => Ok(fsck(&image, &LIMITS).problem_count),
                        Err(e) => Err(e.to_string()),
                    }
                })
            };
            total += 1;
            match std::panic::catch_unwind(run) {
                Err(_) => failures.push(format!("{name}: {}: PANIC", m.what)),
                Ok((result, heap)) => {
                    if heap > CASE_HEAP {
                        failures.push(format!("{name}: {}: {} MiB of heap", m.what, heap >> 20));
                    }
                    match result {
                        Ok(problems) => {
                            opened += 1;
                            clean += usize::from(problems == 0);
                        }
                        Err(e) if e.contains('\n') => {
                            failures.push(format!("{name}: {}: multi-line error {e:?}", m.what))
                        }
                        Err(_) => {}
                    }
                }
            }
            if start.elapsed() > CASE_TIMEOUT {
                failures.push(format!("{name}: {}: took {:?}", m.what, start.elapsed()));
            }
        }
    }
    eprintln!("nydus mutation: {total} cases, {opened} opened, {clean} read clean");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Some cases must be caught, some must not matter (a digest byte of a
    // chunk no file uses, a flag bit): a sweep that opens nothing or
    // everything tests nothing.
    assert!(opened > 0 && opened < total, "{opened} of {total} opened");
}
