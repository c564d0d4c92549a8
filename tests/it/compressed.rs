//! Compressed data beyond the fixture manifests: corrupted pclusters of each
//! algorithm give errors (EIO through a mount), never a panic, a hang or
//! short data; a file read 4 KiB at a time decodes each pcluster once;
//! `stat` and `inspect` report how files are compressed.

use crate::common;

use std::process::Command;

use common::*;
use erofs_fuse::reader::{CompressedExtent, Stored, WalkEntry, WalkVisitor};
use erofs_fuse::{Error, Image, Inode, OpenOptions};

/// One fixture per algorithm and index form.
const BY_ALGORITHM: &[(&str, &str)] = &[
    ("lz4.erofs", "lz4"),
    ("lz4-legacy-full.erofs", "lz4"),
    ("lzma.erofs", "lzma"),
    ("deflate.erofs", "deflate"),
    ("zstd.erofs", "zstd"),
    // mkfs.erofs uses the second algorithm only where compress hints ask.
    ("multi-algo.erofs", "lz4"),
    ("48bit-zstd.erofs", "zstd"),
];

/// Every compressed regular file: path, inode, extents.
fn compressed_files(image: &Image) -> Vec<(String, Inode, Vec<CompressedExtent>)> {
    struct Collect<'a>(&'a Image, Vec<(String, Inode, Vec<CompressedExtent>)>);
    impl WalkVisitor for Collect<'_> {
        fn visit(&mut self, e: &WalkEntry) -> erofs_fuse::Result<()> {
            if e.inode.layout.is_compressed() && !e.inode.is_dir() {
                let extents = self.0.compressed_extents(&e.inode)?;
                let path = String::from_utf8_lossy(&e.path).into_owned();
                self.1.push((path, e.inode.clone(), extents));
            }
            Ok(())
        }
    }
    let mut c = Collect(image, Vec::new());
    image.walk(image.root().unwrap(), b"/", &mut c).unwrap();
    c.1
}

fn open(path: &std::path::Path) -> Image {
    Image::open(path, &OpenOptions::default()).unwrap()
}

fn read_all(image: &Image, inode: &Inode) -> erofs_fuse::Result<Vec<u8>> {
    let mut buf = vec![0; inode.size as usize];
    let n = image.read_at(inode, 0, &mut buf)?;
    assert_eq!(n as u64, inode.size, "short read without an error");
    Ok(buf)
}

/// The first file with an `algorithm` pcluster on the device, and that pcluster.
fn victim(image: &Image, algorithm: &str) -> (String, Inode, u64, u64) {
    compressed_files(image)
        .into_iter()
        .find_map(|(path, inode, extents)| {
            extents.iter().find_map(|e| match e.stored {
                Stored::Device { addr, len } if e.algorithm == Some(algorithm) => {
                    Some((path.clone(), inode.clone(), addr, len))
                }
                _ => None,
            })
        })
        .unwrap_or_else(|| panic!("no {algorithm} pcluster"))
}

/// Inverts the first 16 encoded bytes of the pcluster (after zero padding).
fn corrupt_pcluster(bytes: &mut [u8], addr: u64, len: u64) {
    let pcluster = &mut bytes[addr as usize..(addr + len) as usize];
    let start = pcluster.iter().position(|&b| b != 0).unwrap();
    for b in pcluster[start..].iter_mut().take(16) {
        *b ^= 0xff;
    }
}

#[test]
fn corrupted_pclusters_of_every_algorithm_are_errors() {
    for &(name, algorithm) in BY_ALGORITHM {
        let good = open(&fixture(name));
        let (path, inode, addr, len) = victim(&good, algorithm);
        let mut bytes = std::fs::read(fixture(name)).unwrap();
        corrupt_pcluster(&mut bytes, addr, len);
        let bad_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(bad_file.path(), &bytes).unwrap();
        let bad = open(bad_file.path());
        match read_all(&bad, &inode) {
            Err(e @ Error::Corrupt(_)) => {
                assert_eq!(e.errno(), libc::EIO);
                assert!(e.to_string().contains(algorithm), "{name}: {e}");
            }
            other => panic!("{name} {path}: corrupt {algorithm} pcluster read as {other:?}"),
        }
        // Files that do not share the pcluster still read, identically.
        for (other, inode, extents) in compressed_files(&good).into_iter().take(50) {
            let shares = extents
                .iter()
                .any(|e| matches!(e.stored, Stored::Device { addr: a, .. } if a == addr));
            if !shares {
                let want = read_all(&good, &inode).unwrap();
                let got = read_all(&bad, &inode).unwrap_or_else(|e| panic!("{other}: {e}"));
                assert!(
                    want == got,
                    "{name} {other}: changed by another file's corruption"
                );
            }
        }
    }
}

/// Random bit flips anywhere in compressed images: every read ends in data of
/// the right length or an error; a panic fails the test, a hang times it out.
#[test]
fn random_flips_in_compressed_images_never_panic() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let (mut ok, mut failed) = (0, 0);
    for &(name, algorithm) in BY_ALGORITHM {
        let good_bytes = std::fs::read(fixture(name)).unwrap();
        let good = open(&fixture(name));
        let files = compressed_files(&good);
        for round in 0..30 {
            let mut bytes = good_bytes.clone();
            // Half the rounds hit pclusters, half anywhere (indexes too).
            let (path, inode, addr, len) = if round % 2 == 0 {
                victim(&good, algorithm)
            } else {
                let (p, i, _) = &files[next() as usize % files.len()];
                (p.clone(), i.clone(), 0, bytes.len() as u64)
            };
            for _ in 0..1 + next() % 8 {
                let at = addr + next() % len;
                bytes[at as usize] ^= 1 << (next() % 8);
            }
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), &bytes).unwrap();
            let Ok(image) = Image::open(f.path(), &OpenOptions::default()) else {
                failed += 1;
                continue;
            };
            match read_all(&image, &inode) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.to_string().is_empty(), "{path}");
                    failed += 1
                }
            }
            let _ = erofs_fuse::manifest::manifest(&image);
        }
    }
    eprintln!("compressed flips: {ok} reads succeeded, {failed} gave errors");
    assert!(failed > 0, "no corruption was ever detected");
}

#[test]
fn reading_4k_at_a_time_decodes_each_extent_once() {
    let image = open(&fixture("lz4hc-pcl64k.erofs"));
    let (path, inode, extents) = compressed_files(&image)
        .into_iter()
        .filter(|(_, _, e)| e.iter().filter(|e| e.algorithm.is_some()).count() >= 2)
        .max_by_key(|(_, i, _)| i.size)
        .expect("a file with several compressed extents");
    let compressed = extents.iter().filter(|e| e.algorithm.is_some()).count() as u64;
    let before = image.cache_stats();
    let mut whole = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = image.read_at(&inode, whole.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        whole.extend_from_slice(&buf[..n]);
    }
    let after = image.cache_stats();
    assert_eq!(whole.len() as u64, inode.size);
    assert_eq!(whole, read_all(&image, &inode).unwrap());
    assert_eq!(
        after.decodes - before.decodes,
        compressed,
        "{path}: {} bytes in {compressed} compressed extents",
        inode.size
    );
    assert!(after.hits > before.hits);
    assert!(after.bytes <= after.budget);
}

#[test]
fn a_zero_cache_still_reads_correctly() {
    let options = OpenOptions {
        cache_size: 0,
        ..Default::default()
    };
    let image = Image::open(&fixture("zstd.erofs"), &options).unwrap();
    let lines = erofs_fuse::manifest::manifest(&image).unwrap();
    let f = FIXTURES.iter().find(|f| f.image == "zstd.erofs").unwrap();
    assert_eq!(lines.join("\n") + "\n", expected_manifest(f));
    assert_eq!(image.cache_stats().bytes, 0);
}

#[test]
fn stat_and_inspect_report_compression() {
    let image_path = fixture("multi-algo.erofs");
    let out = run_ok(Command::new(bin()).arg("inspect").arg(&image_path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("compression:") && l.ends_with("lz4 lzma")),
        "{text}"
    );
    let image = open(&image_path);
    let (path, _, extents) = compressed_files(&image)
        .into_iter()
        .find(|(_, _, e)| e.iter().any(|e| e.algorithm.is_some()))
        .unwrap();
    let out = run_ok(
        Command::new(bin())
            .args(["stat", "--json"])
            .arg(&image_path)
            .arg(&path),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["layout"], "compressed_compact");
    let c = &json["compression"];
    assert_eq!(c["extents"], extents.len() as u64);
    assert!(c["compressed_size"].as_u64().unwrap() > 0);
    assert!(!c["algorithms"].as_array().unwrap().is_empty());
    let out = run_ok(Command::new(bin()).arg("stat").arg(&image_path).arg(&path));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Compressed: "));
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn corrupted_pcluster_is_eio_through_a_mount() {
    if !have("corrupted_pcluster_is_eio_through_a_mount", FUSE_ROOT) {
        return;
    }
    let name = "lz4.erofs";
    let good = open(&fixture(name));
    let (path, _, addr, len) = victim(&good, "lz4");
    let mut bytes = std::fs::read(fixture(name)).unwrap();
    corrupt_pcluster(&mut bytes, addr, len);
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad.erofs");
    std::fs::write(&bad, &bytes).unwrap();
    let mount = FuseMount::new(&bad, &[], &[]);
    let err = std::fs::read(mount.path().join(path.trim_start_matches('/'))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{path}: {err}");
    // The rest of the tree still reads.
    let other = compressed_files(&good)
        .into_iter()
        .find(|(_, _, e)| {
            !e.iter()
                .any(|e| matches!(e.stored, Stored::Device { addr: a, .. } if a == addr))
        })
        .unwrap();
    let got = std::fs::read(mount.path().join(other.0.trim_start_matches('/'))).unwrap();
    assert_eq!(got, read_all(&good, &other.1).unwrap());
}

/// HEAD2 extents take the second algorithm nibble. No mkfs.erofs available
/// here emits them by default, so one file of lz4-legacy-full (full
/// indexes) has its HEAD1 lclusters turned into HEAD2 with the nibbles set
/// to {HEAD1: lzma, HEAD2: lz4}: it must read as before, and with the
/// nibbles swapped it must fail (the image declares no lzma).
#[test]
fn head2_extents_use_the_second_algorithm() {
    let name = "lz4-legacy-full.erofs";
    let good = open(&fixture(name));
    let (path, inode, _) = compressed_files(&good)
        .into_iter()
        .find(|(_, _, e)| e.iter().filter(|e| e.algorithm == Some("lz4")).count() >= 2)
        .expect("a file with two lz4 extents");
    let want = read_all(&good, &inode).unwrap();
    let sb = good.superblock();
    let mut b = std::fs::read(fixture(name)).unwrap();
    let at = ((sb.meta_blkaddr as usize) << sb.block_bits) + inode.nid.0 as usize * 32;
    let header = (at + (inode.inode_size() + inode.xattr_size()) as usize).next_multiple_of(8);
    let lcluster_bits = u32::from(sb.block_bits) + u32::from(b[header + 7] & 15);
    let mut heads = 0;
    for lcn in 0..inode.size.div_ceil(1 << lcluster_bits) as usize {
        let index = header + 16 + lcn * 8;
        let advise = u16::from_le_bytes([b[index], b[index + 1]]);
        if advise & 3 == 1 {
            b[index..index + 2].copy_from_slice(&(advise | 3).to_le_bytes());
            heads += 1;
        }
    }
    assert!(heads >= 2, "{path}: {heads} HEAD1 lclusters");
    let read_with = |nibbles: u8| {
        let mut b = b.clone();
        b[header + 6] = nibbles;
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &b).unwrap();
        read_all(&open(f.path()), &inode)
    };
    assert!(
        read_with(0x01).unwrap() == want,
        "{path}: HEAD2 data differs"
    );
    let err = read_with(0x10).unwrap_err();
    assert!(err.to_string().contains("lzma"), "{err}");
}
