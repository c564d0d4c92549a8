//! Hostile bootstraps and blobs made from the fixtures: what nydus
//! refuses is refused, what opens serves each file exactly or fails it
//! with EIO, and small inputs cannot make large allocations.

use std::mem::offset_of;
use std::path::Path;

use super::fixtures::{blob_of, case, expected};
use super::layout::{
    BlobEntry, ChunkRecord, SuperBlockExt, CHUNK_INFO_SIZE, EXT_SUPERBLOCK_OFFSET,
};
use super::tests::{dir_blobs, eio_or_exact, gnu_header};
use super::*;

fn boot(name: &str) -> Vec<u8> {
    std::fs::read(case(name).join("bootstrap")).unwrap()
}

fn le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(v)
}

fn put(b: &mut [u8], at: usize, width: usize, v: u64) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Sets the `width`-byte field at `at(b)` to `f` of its value.
fn set(b: &mut [u8], at: impl Fn(&[u8]) -> usize, width: usize, f: impl Fn(u64) -> u64) {
    let at = at(b);
    let v = f(le(b, at, width));
    put(b, at, width, v);
}

/// Byte offset of field `field` of chunk record `k`.
fn record(b: &[u8], k: usize, field: usize) -> usize {
    let ext = EXT_SUPERBLOCK_OFFSET as usize;
    le(b, ext + offset_of!(SuperBlockExt, chunk_table_offset), 8) as usize
        + k * CHUNK_INFO_SIZE as usize
        + field
}

/// Byte offset of field `field` of blob entry 0.
fn blob0(b: &[u8], field: usize) -> usize {
    let ext = EXT_SUPERBLOCK_OFFSET as usize;
    le(b, ext + offset_of!(SuperBlockExt, blob_table_offset), 8) as usize + field
}

/// Opens bootstrap `bytes` with case `name`'s blob.
fn open_mutated(name: &str, bytes: &[u8]) -> Result<Image> {
    let primary = Device::from_bytes(Path::new("boot"), bytes)?;
    let blob = Device::open(&blob_of(name), 0)?;
    open_bytes(primary, vec![blob], 4 << 20)
}

/// The index of a chunk record of case `name` of the full chunk size.
fn full_record(b: &[u8]) -> usize {
    let count = le(b, EXT_SUPERBLOCK_OFFSET as usize + 32, 8) / CHUNK_INFO_SIZE;
    (0..count as usize)
        .find(|&k| {
            le(
                b,
                record(b, k, offset_of!(ChunkRecord, uncompressed_size)),
                4,
            ) == 1 << 20
        })
        .unwrap()
}

#[test]
fn a_chunk_record_past_its_blob_is_refused_not_a_panic() {
    for (uoff, size) in [
        (0xFFFF_FFFF_FFFF_F000u64, 0x100u64),
        (u64::MAX - 0xff, 0x100),
        // Inside u64 but past the blob's uncompressed size.
        (4 << 20, 4096),
    ] {
        let mut b = boot("b-dir-zstd");
        let uo = offset_of!(ChunkRecord, uncompressed_offset);
        let us = offset_of!(ChunkRecord, uncompressed_size);
        set(&mut b, |b| record(b, 3, uo), 8, |_| uoff);
        set(&mut b, |b| record(b, 3, us), 4, |_| size);
        let err = open_mutated("b-dir-zstd", &b)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk 3") && !err.contains('\n'), "{err}");
    }
}

/// A change to a bootstrap.
type Mutate = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn layouts_nydus_refuses_are_refused() {
    let name = "b-dir-zstd";
    let k = full_record(&boot(name));
    let mutations: [(&str, Mutate); 4] = [
        (
            "ALIGNED",
            Box::new(|b| {
                set(
                    b,
                    |b| blob0(b, offset_of!(BlobEntry, features)),
                    4,
                    |_| 0x4000_0000,
                )
            }),
        ),
        (
            "chunk size",
            Box::new(|b| {
                set(
                    b,
                    |b| blob0(b, offset_of!(BlobEntry, chunk_size)),
                    4,
                    |_| 2 << 20,
                )
            }),
        ),
        (
            "uncompressed offset",
            Box::new(move |b| {
                let uo = offset_of!(ChunkRecord, uncompressed_offset);
                set(b, |b| record(b, k, uo), 8, |v| v + 512);
            }),
        ),
        (
            "tarfs with ALIGNED",
            Box::new(|b| {
                let at = EXT_SUPERBLOCK_OFFSET as usize;
                set(b, |_| at, 8, |v| v | layout::FLAG_TARFS);
            }),
        ),
    ];
    for (what, mutate) in mutations {
        let mut b = boot(name);
        mutate(&mut b);
        let err = open_mutated(name, &b).map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{what}: {err}");
    }
}

/// The byte offset of an inode's chunk address pointing at block `blk` of
/// blob 0 (an EROFS chunk index: advise, device id 1, block address).
fn chunk_address(b: &[u8], blk: u32) -> usize {
    let table = record(b, 0, 0);
    (8..table)
        .step_by(8)
        .find(|&p| le(b, p + 2, 2) & 0xff == 1 && le(b, p + 4, 4) == u64::from(blk))
        .unwrap()
}

#[test]
fn a_chunk_address_into_a_chunk_or_a_gap_is_eio() {
    let name = "b-dir-zstd";
    let good = boot(name);
    let k = full_record(&good);
    let uo = offset_of!(ChunkRecord, uncompressed_offset);
    let big = le(&good, record(&good, k, uo), 8) / 4096;
    // A small file's chunk (record 0: one byte) pointed into the middle of
    // a 1 MiB chunk, and a large file's chunk shifted: the bytes there
    // pass their chunk's digest, but no chunk of that file starts there.
    let small = le(&good, record(&good, 0, uo), 8) / 4096;
    for (at, to) in [
        (chunk_address(&good, small as u32), big + 1),
        (chunk_address(&good, big as u32), big + 1),
        (chunk_address(&good, big as u32), big + 255),
    ] {
        let mut b = good.clone();
        put(&mut b, at + 4, 4, to);
        let image = open_mutated(name, &b).unwrap();
        let eio = eio_or_exact(&image, &expected(name), &format!("address {to}"));
        assert!(eio >= 1, "address {to}: no file failed");
    }
    // The right block but another record's CI index (the advise field):
    // nydusd finds no record by that key.
    let mut b = good.clone();
    let at = chunk_address(&good, big as u32);
    b[at] ^= 1;
    let image = open_mutated(name, &b).unwrap();
    assert!(eio_or_exact(&image, &expected(name), "CI index") >= 1);
}

#[test]
fn crc32c_is_checked_when_a_chunk_has_no_digest() {
    let name = "b-dir-zstd";
    let mut b = boot(name);
    let count = le(&b, EXT_SUPERBLOCK_OFFSET as usize + 32, 8) as usize / CHUNK_INFO_SIZE as usize;
    for k in 0..count {
        let at = record(&b, k, offset_of!(ChunkRecord, digest));
        b[at..at + 32].fill(0);
        assert_ne!(
            le(&b, record(&b, k, offset_of!(ChunkRecord, flags)), 4) & 0x10,
            0
        );
    }
    // nydus-image's crc32 is crc32c: every file reads with it.
    let image = open_mutated(name, &b).unwrap();
    assert_eq!(eio_or_exact(&image, &expected(name), "no digests"), 0);
    // A wrong crc fails its chunk's files.
    let k = full_record(&b);
    let at = record(&b, k, offset_of!(ChunkRecord, crc32));
    b[at] ^= 1;
    let image = open_mutated(name, &b).unwrap();
    assert!(eio_or_exact(&image, &expected(name), "bad crc") >= 1);
}

/// Case `name`'s bootstrap as nydus-image writes it for an inline blob:
/// the blob id the placeholder "x" * 64 and the INLINED_FS_META feature
/// set (builder/src/lib.rs, `blob_ctx.blob_id = "x".repeat(64)`). Built
/// here from the nydus source: no nydus-image binary was at hand.
fn real_inline_boot(name: &str) -> Vec<u8> {
    let mut b = boot(name);
    let at = blob0(&b, offset_of!(BlobEntry, blob_id));
    b[at..at + 64].fill(b'x');
    // INLINED_FS_META with HAS_TAR_HEADER and HAS_TOC, as
    // builder/src/core/context.rs sets them for --blob-inline-meta.
    let features = |v| v | 0x2 | 0x1000_0000 | 0x2000_0000;
    set(
        &mut b,
        |b| blob0(b, offset_of!(BlobEntry, features)),
        4,
        features,
    );
    b
}

#[test]
fn a_placeholder_id_binds_to_the_file_as_nydusd_binds_it() {
    let name = "b-dir-zstd";
    let tmp = tempfile::tempdir().unwrap();
    let boot_bytes = real_inline_boot(name);
    // Inside the blob (the ToC form, the bootstrap zstd-compressed).
    let mut plain = std::fs::read(blob_of(name)).unwrap();
    let stored = zstd::bulk::compress(&boot_bytes, 3).unwrap();
    let offset = plain.len() as u64;
    plain.extend_from_slice(&stored);
    plain.extend_from_slice(&gnu_header("image.boot", stored.len() as u64));
    let mut entry = vec![0u8; 128];
    entry[..4].copy_from_slice(&2u32.to_le_bytes());
    entry[8..18].copy_from_slice(b"image.boot");
    entry[24..56].copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&boot_bytes));
    entry[56..64].copy_from_slice(&offset.to_le_bytes());
    entry[64..72].copy_from_slice(&(stored.len() as u64).to_le_bytes());
    entry[72..80].copy_from_slice(&(boot_bytes.len() as u64).to_le_bytes());
    plain.extend_from_slice(&entry);
    plain.extend_from_slice(&gnu_header("rafs.blob.toc", 128));
    let path = tmp.path().join("some-name");
    std::fs::write(&path, &plain).unwrap();
    let (image, rafs) = open_inline(&path, &BlobFiles::default(), 8 << 20).unwrap();
    assert_eq!(rafs.blobs[0].id, "x".repeat(64));
    assert_eq!(eio_or_exact(&image, &expected(name), "inline"), 0);
    // The bootstrap alone: the blob is the one named as the bootstrap is.
    let id = blob_of(name).file_name().unwrap().to_owned();
    let boot_path = tmp.path().join(format!("{}.boot", id.to_string_lossy()));
    std::fs::write(&boot_path, &boot_bytes).unwrap();
    let blobs = dir_blobs(&case(name).join("blobs"));
    let (image, _) = open(&boot_path, 0, &blobs, 8 << 20).unwrap();
    assert_eq!(eio_or_exact(&image, &expected(name), "by name"), 0);
    let other = tmp.path().join("bootstrap");
    std::fs::write(&other, &boot_bytes).unwrap();
    let err = open(&other, 0, &blobs, 1 << 20)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a blob id") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn a_small_blob_cannot_claim_a_huge_bootstrap() {
    // A ToC naming 1 GiB of zeros stored as a ~40 KB zstd frame.
    let zeros = vec![0u8; 64 << 20];
    let stored = zstd::bulk::compress(&zeros, 19).unwrap();
    let mut blob = stored.clone();
    blob.extend_from_slice(&gnu_header("image.boot", stored.len() as u64));
    let mut entry = vec![0u8; 128];
    entry[..4].copy_from_slice(&2u32.to_le_bytes());
    entry[8..18].copy_from_slice(b"image.boot");
    entry[64..72].copy_from_slice(&(stored.len() as u64).to_le_bytes());
    entry[72..80].copy_from_slice(&(1u64 << 30).to_le_bytes());
    blob.extend_from_slice(&entry);
    blob.extend_from_slice(&gnu_header("rafs.blob.toc", 128));
    let dev = Device::from_bytes(Path::new("bomb"), &blob).unwrap();
    let err = inline::bootstrap(&dev).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("1073741824 uncompressed"), "{err}");
    // A bootstrap layer whose bootstrap comes after 16 MiB of zeros
    // (16 KiB gzipped): the tar scan decodes no more than its bound.
    let mut tar = tar::Builder::new(Vec::new());
    for (path, len) in [("junk", 16usize << 20), ("image/image.boot", 4096)] {
        let mut h = tar::Header::new_ustar();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, &zeros[..len]).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    let layer = gz.finish().unwrap();
    let scan = |limit: u64| {
        let stream = std::io::Read::take(flate2::read::GzDecoder::new(&layer[..]), limit);
        oci::find_entry(stream, Path::new("layer")).map(|d| d.is_some())
    };
    let limit = inline::max_decoded(layer.len() as u64);
    assert!(limit < 16 << 20, "{limit}");
    assert!(!scan(limit).unwrap_or(false));
    assert!(scan(u64::MAX).unwrap());
}

#[test]
fn a_changed_tar_is_served_unless_tars_are_verified() {
    let name = "d-tar-tarfs";
    let tmp = tempfile::tempdir().unwrap();
    let blob = blob_of(name);
    let mut bytes = std::fs::read(&blob).unwrap();
    // A byte of file data (past the first tar header): tarfs has no
    // chunk digests to catch it.
    bytes[1024 + 7] ^= 1;
    std::fs::write(tmp.path().join(blob.file_name().unwrap()), &bytes).unwrap();
    let boot = case(name).join("bootstrap");
    let mut blobs = dir_blobs(tmp.path());
    assert!(open(&boot, 0, &blobs, 1 << 20).is_ok());
    blobs.verify_tars = true;
    let err = open(&boot, 0, &blobs, 1 << 20)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not its blob id") && !err.contains('\n'),
        "{err}"
    );
    let (image, _) = open(&boot, 0, &dir_blobs(&case(name).join("blobs")), 1 << 20).unwrap();
    assert_eq!(eio_or_exact(&image, &expected(name), "verified"), 0);
    let mut good = dir_blobs(&case(name).join("blobs"));
    good.verify_tars = true;
    assert!(open(&boot, 0, &good, 1 << 20).is_ok());
}

#[test]
fn an_uppercase_blob_id_names_its_file_as_it_is() {
    // nydusd joins the id to the blob directory unchanged.
    let name = "a-dir-none";
    let mut b = boot(name);
    let at = blob0(&b, offset_of!(BlobEntry, blob_id));
    b[at..at + 64].make_ascii_uppercase();
    let id = String::from_utf8(b[at..at + 64].to_vec()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let boot_path = tmp.path().join("bootstrap");
    std::fs::write(&boot_path, &b).unwrap();
    let blobs = tmp.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let lower = blobs.join(id.to_ascii_lowercase());
    std::fs::copy(blob_of(name), &lower).unwrap();
    let err = open(&boot_path, 0, &dir_blobs(&blobs), 1 << 20)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("blob {id} not found")), "{err}");
    std::fs::rename(&lower, blobs.join(&id)).unwrap();
    let (image, rafs) = open(&boot_path, 0, &dir_blobs(&blobs), 1 << 20).unwrap();
    assert_eq!(rafs.blobs[0].id, id);
    assert_eq!(eio_or_exact(&image, &expected(name), "uppercase"), 0);
}
