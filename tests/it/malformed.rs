//! Malformed images: each corruption gives an error, never a panic or hang.
//! Targets are found in a real fixture and patched (with the superblock
//! checksum recomputed where the test is about something else).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;
use erofs_fuse::{Error, Image, OpenOptions};

/// The small tar-index layer (metadata only, 14 KiB, 512-byte blocks) and
/// the plain 4 KiB-block tree.
fn bytes_of(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn write_image(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

fn open(path: &Path) -> erofs_fuse::Result<Image> {
    Image::open(path, &OpenOptions::default())
}

/// Opens and walks everything (manifest reads every file and xattr).
fn open_and_walk(bytes: &[u8]) -> erofs_fuse::Result<Vec<String>> {
    let f = write_image(bytes);
    let image = open(f.path())?;
    erofs_fuse::manifest::manifest(&image)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn root_inode_offset(b: &[u8]) -> usize {
    let bits = b[1024 + 12];
    let meta = le32(b, 1024 + 40) as usize;
    (meta << bits) + usize::from(le16(b, 1024 + 14)) * 32
}

fn expect_corrupt<T>(r: erofs_fuse::Result<T>, needle: &str) {
    match r {
        Err(e @ Error::Corrupt(_))
        | Err(e @ Error::Invalid(_))
        | Err(e @ Error::Unsupported(_)) => {
            assert!(
                e.to_string().contains(needle),
                "error {e:?} does not mention {needle:?}"
            )
        }
        Err(other) => panic!("expected an error mentioning {needle:?}, got {other:?}"),
        Ok(_) => panic!("expected an error mentioning {needle:?}, but the image was accepted"),
    }
}

#[test]
fn the_unmodified_images_walk() {
    open_and_walk(&bytes_of("tar-index-appended.erofs")).unwrap();
}

#[test]
fn truncated_images_give_errors() {
    let good = bytes_of("tar-index-appended.erofs");
    // Cut inside the superblock, the inode area, the dirents and the tar.
    for len in [0, 100, 1024, 1100, 1500, 2048, 4096, 8192, 14336, 20000] {
        let r = open_and_walk(&good[..len]);
        assert!(r.is_err(), "image cut to {len} bytes was accepted");
    }
}

#[test]
fn bad_magic_is_not_an_erofs_image() {
    let mut b = bytes_of("plain-4k.erofs");
    b[1024] ^= 0xff;
    expect_corrupt(open_and_walk(&b), "not an EROFS image");
}

#[test]
fn bad_checksum_is_reported() {
    let mut b = bytes_of("plain-4k.erofs");
    b[1024 + 64] ^= 1; // volume name
    expect_corrupt(open_and_walk(&b), "checksum mismatch");
}

#[test]
fn unknown_incompat_features_are_named() {
    let mut b = bytes_of("plain-4k.erofs");
    b[1024 + 80 + 1] |= 0x40; // bit 14
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "0x4000");
}

#[test]
fn bad_block_size_is_rejected() {
    for bits in [0u8, 8, 13, 255] {
        let mut b = bytes_of("plain-4k.erofs");
        b[1024 + 12] = bits;
        expect_corrupt(open_and_walk(&b), "block size");
    }
}

#[test]
fn out_of_range_root_nid() {
    let mut b = bytes_of("tar-index-appended.erofs");
    b[1024 + 14..1024 + 16].copy_from_slice(&0xfff0u16.to_le_bytes());
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "past the end");
}

#[test]
fn root_that_is_not_a_directory() {
    let mut b = bytes_of("tar-index-appended.erofs");
    let root = root_inode_offset(&b);
    let mode = le16(&b, root + 4) & 0o7777 | 0o100000;
    b[root + 4..root + 6].copy_from_slice(&mode.to_le_bytes());
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "not a directory");
}

/// Byte offset of the inode at `path` (found with the unmodified image).
fn inode_offset(name: &str, path: &str) -> usize {
    let image = open(&fixture(name)).unwrap();
    let nid = image.resolve(path.as_bytes()).unwrap().nid.0 as usize;
    let sb = image.superblock();
    ((sb.meta_blkaddr as usize) << sb.block_bits) + nid * 32
}

#[test]
fn out_of_range_block_address() {
    let mut b = bytes_of("plain-4k.erofs");
    let dir = inode_offset("plain-4k.erofs", "/bigdir");
    // A multi-block directory whose blocks start far past the end of the file.
    b[dir + 16..dir + 20].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "past the end");
}

/// Offset of the dirent table whose names start with `names`.
fn dirent_table(b: &[u8], names: &[u8], count: usize) -> usize {
    let at = b
        .windows(names.len())
        .position(|w| w == names)
        .expect("names not found");
    let table = at - count * 12;
    assert_eq!(
        usize::from(le16(b, table + 8)),
        count * 12,
        "not a dirent table"
    );
    table
}

#[test]
fn directory_entries_out_of_order() {
    let mut b = bytes_of("plain-4k.erofs");
    // /hard holds ".", "..", "one", "three", "two": swap the names "one" and "two".
    let table = dirent_table(&b, b"...onethreetwo", 5);
    let one = table + 60 + 3;
    let two = one + 3 + 5;
    b[one..one + 3].copy_from_slice(b"two");
    b[two..two + 3].copy_from_slice(b"one");
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "out of order");
}

#[test]
fn directory_containing_its_ancestor() {
    let mut b = bytes_of("plain-4k.erofs");
    let table = dirent_table(&b, b"...onethreetwo", 5);
    // Point /hard/one at the root directory.
    let root_nid = u64::from(le16(&b, 1024 + 14));
    let one = table + 2 * 12;
    b[one..one + 8].copy_from_slice(&root_nid.to_le_bytes());
    b[one + 10] = 2;
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "cycle");
}

#[test]
fn dirent_name_offsets_out_of_range() {
    for (entry, value) in [(0usize, 0u16), (0, 11), (0, 0xffff), (3, 0xfff0), (3, 2)] {
        let mut b = bytes_of("plain-4k.erofs");
        let table = dirent_table(&b, b"...onethreetwo", 5);
        let at = table + entry * 12 + 8;
        b[at..at + 2].copy_from_slice(&value.to_le_bytes());
        fix_checksum(&mut b);
        let r = open_and_walk(&b);
        assert!(r.is_err(), "nameoff {value} of entry {entry} was accepted");
    }
}

#[test]
fn dirent_nid_out_of_range() {
    let mut b = bytes_of("plain-4k.erofs");
    let table = dirent_table(&b, b"...onethreetwo", 5);
    let one = table + 2 * 12;
    b[one..one + 8].copy_from_slice(&(u64::MAX >> 1).to_le_bytes());
    fix_checksum(&mut b);
    expect_corrupt(open_and_walk(&b), "inode");
}

/// Flips bytes all over the tar-index metadata and walks the result: every
/// outcome must be Ok or an error; a panic fails the test, a hang times it out.
#[test]
fn random_byte_flips_never_panic() {
    let good = bytes_of("tar-index-appended.erofs");
    let index_len = 14336; // the EROFS part; the tar follows.
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..1500 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % index_len) as usize;
            b[at] ^= 1 << (next() % 8);
        }
        if b[1024 + 4..1024 + 8] != good[1024 + 4..1024 + 8] || next().is_multiple_of(2) {
            fix_checksum(&mut b);
        }
        match open_and_walk(&b) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    eprintln!("byte flips: {ok} walks succeeded, {failed} gave errors");
    assert!(failed > 0, "no corruption was ever detected");
}

/// plain-4k with /hard/one turned into a hole (FLAT_PLAIN, compact, with
/// the null block address), of `size` bytes when given.
fn image_with_hole(size: Option<u32>) -> (tempfile::NamedTempFile, Image) {
    let mut b = bytes_of("plain-4k.erofs");
    let at = inode_offset("plain-4k.erofs", "/hard/one");
    let format = le16(&b, at) & !0b1110;
    b[at..at + 2].copy_from_slice(&format.to_le_bytes());
    if let Some(size) = size {
        b[at + 8..at + 12].copy_from_slice(&size.to_le_bytes());
    }
    b[at + 16..at + 20].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_checksum(&mut b);
    let f = write_image(&b);
    let image = open(f.path()).unwrap();
    (f, image)
}

#[test]
fn a_file_that_is_one_hole_reads_as_zeros_up_to_its_size() {
    let (_f, image) = image_with_hole(None);
    let inode = image.resolve(b"/hard/one").unwrap();
    assert_eq!(inode.size, 10);
    let mut buf = [0xffu8; 64];
    assert_eq!(image.read_at(&inode, 0, &mut buf).unwrap(), 10);
    assert!(buf[..10].iter().all(|&x| x == 0));
    assert_eq!(image.read_at(&inode, 7, &mut buf).unwrap(), 3);
    assert_eq!(
        image.read_range(&inode, 4, 100).unwrap().as_ref(),
        &[0u8; 6]
    );
    assert_eq!(image.read_at(&inode, 10, &mut buf).unwrap(), 0);
    assert_eq!(image.hole_len(&inode, 3).unwrap(), 7);
}

#[test]
fn a_huge_sparse_file_extracts_at_once() {
    // A hole of 4 GiB - 1 bytes, the largest size a compact inode holds.
    let (_f, image) = image_with_hole(Some(u32::MAX));
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("tree");
    let options = erofs_fuse::extract::ExtractOptions {
        owners: false,
        xattrs: false,
    };
    let started = std::time::Instant::now();
    erofs_fuse::extract::extract(&image, &out, &options).unwrap();
    // A 4 GiB hole costs a seek, not 4096 reads of zeros (a loose bound:
    // this guards against hangs, it is not a speed figure).
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let meta = std::fs::metadata(out.join("hard/one")).unwrap();
    assert_eq!(meta.len(), u64::from(u32::MAX));
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() < 16, "the hole was written out");
}

#[test]
fn fsck_reports_each_broken_file_by_path_and_a_clean_image_passes() {
    let clean = run(Command::new(bin())
        .arg("fsck")
        .arg(fixture("plain-4k.erofs")));
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("no problems"));

    // Two files broken in different ways: a bogus mode, and data blocks
    // past the end of the image. Both must be reported, each by its path.
    let mut bytes = bytes_of("plain-4k.erofs");
    let image = Image::open(&fixture("plain-4k.erofs"), &OpenOptions::default()).unwrap();
    let at = |path: &[u8]| image.resolve(path).unwrap().meta_offset().unwrap() as usize;
    let (mode_at, data_at) = (at(b"/dup/a"), at(b"/sizes/rand_131172"));
    bytes[mode_at + 4..mode_at + 6].copy_from_slice(&0o170644u16.to_le_bytes());
    bytes[data_at + 16..data_at + 20].copy_from_slice(&0x00ff_ff00u32.to_le_bytes());
    fix_checksum(&mut bytes);
    let broken = write_image(&bytes);
    let out = run(Command::new(bin()).arg("fsck").arg(broken.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for path in ["/dup/a", "/sizes/rand_131172"] {
        assert!(stderr.contains(path), "{path} not reported:\n{stderr}");
    }
    assert!(stderr.contains("2 problems"), "{stderr}");
}
