//! gzip random access (`erofs_fuse::gzran`): reads through mkfs.erofs's
//! zinfo files equal the gunzipped tar at every checkpoint, across
//! checkpoints, at random offsets and whole; the zinfo we build (and
//! `convert --gzinfo` writes) is byte-identical to mkfs.erofs 1.9's;
//! damaged gzip data or zinfo files give errors where that is detectable.
use crate::common;

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use erofs_fuse::gzran::{zinfo::DEFAULT_SPAN, GzIndexer, GzReader, Zinfo};

/// The two gzip fixtures and mkfs.erofs's zinfo of each.
const LAYERS: &[(&str, &str)] = &[
    ("layer.tar.gz", "tar-index-gz.zinfo"),
    ("docs-layer.tar.gz", "docs-layer.zinfo"),
];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// The uncompressed stream, by flate2.
fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(gz)
        .read_to_end(&mut tar)
        .unwrap();
    tar
}

fn reader(gz: Vec<u8>, zinfo: &[u8]) -> GzReader<Vec<u8>> {
    let zinfo = Arc::new(Zinfo::parse(zinfo).unwrap());
    let len = gz.len() as u64;
    GzReader::new(gz, len, zinfo, "test.tar.gz").unwrap()
}

/// `len` bytes at `offset` through `r`, checked against `tar`.
fn check_read(r: &mut GzReader<Vec<u8>>, tar: &[u8], offset: u64, len: usize) {
    let mut buf = vec![0xaa; len];
    let n = r.read_at(offset, &mut buf).unwrap();
    let start = (offset as usize).min(tar.len());
    let end = (start + len).min(tar.len());
    assert_eq!(n, end - start, "length of the read at {offset}+{len}");
    assert!(buf[..n] == tar[start..end], "bytes at {offset}+{len}");
}

/// A small deterministic generator (xorshift64).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn reads_through_mkfs_zinfo_equal_the_tar() {
    for (gz, zinfo) in LAYERS {
        let gz = read(gz);
        let tar = gunzip(&gz);
        let zinfo = read(zinfo);
        let parsed = Zinfo::parse(&zinfo).unwrap();
        let mut r = reader(gz, &zinfo);
        assert_eq!(r.stream_len().unwrap(), tar.len() as u64);
        assert_eq!(r.position(), Some(tar.len() as u64));
        check_read(&mut r, &tar, 1000, 5000);
        assert_eq!(r.position(), Some(6000));
        for cp in &parsed.checkpoints {
            check_read(&mut r, &tar, cp.out, 65536);
            // Across the checkpoint: starts before it, ends after it.
            check_read(&mut r, &tar, cp.out.saturating_sub(3000), 7000);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..40 {
            let offset = next(&mut seed) % (tar.len() as u64 + 100);
            let len = (next(&mut seed) % 20000) as usize + 1;
            check_read(&mut r, &tar, offset, len);
        }
        // Backwards, then the end and past it.
        check_read(&mut r, &tar, tar.len() as u64 - 10, 4096);
        check_read(&mut r, &tar, 0, 512);
        check_read(&mut r, &tar, tar.len() as u64 + 5, 10);
        // The whole stream, sequentially in odd sizes.
        let mut whole = Vec::new();
        let mut buf = vec![0; 100_003];
        loop {
            let n = r.read_at(whole.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            whole.extend_from_slice(&buf[..n]);
        }
        assert!(whole == tar, "whole stream");
    }
}

#[test]
fn built_zinfo_is_mkfs_erofs_zinfo() {
    for (gz, zinfo) in LAYERS {
        let file = std::fs::File::open(fixture(gz)).unwrap();
        let (mut indexer, handle) = GzIndexer::new(BufReader::new(file), DEFAULT_SPAN).unwrap();
        let mut tar = Vec::new();
        indexer.read_to_end(&mut tar).unwrap();
        assert!(tar == gunzip(&read(gz)), "{gz}: decompressed stream");
        let built = handle.zinfo();
        let expected = Zinfo::parse(&read(zinfo)).unwrap();
        assert_eq!(built.checkpoints, expected.checkpoints, "{gz}: checkpoints");
        assert!(built.to_bytes() == read(zinfo), "{gz}: zinfo bytes");
    }
}

#[test]
fn concatenated_members_get_a_checkpoint_each_and_read_back() {
    // Three members, the middle one empty, the last one long enough for a
    // span checkpoint at a small span.
    let mut seed = 1;
    let mut text = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| b"abcdefgh \n"[(next(&mut seed) % 10) as usize])
            .collect()
    };
    let parts: [Vec<u8>; 3] = [text(70_000), Vec::new(), text(300_000)];
    let mut gz = Vec::new();
    for part in &parts {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut enc, part).unwrap();
        gz.extend(enc.finish().unwrap());
    }
    let tar = parts.concat();
    let (mut indexer, handle) = GzIndexer::new(&gz[..], 50_000).unwrap();
    let mut out = Vec::new();
    indexer.read_to_end(&mut out).unwrap();
    assert!(out == tar);
    let zinfo = handle.zinfo();
    assert!(zinfo.checkpoints.len() >= 4, "{:?}", zinfo.checkpoints);
    // A checkpoint at each member start: outputs 0, 70000 (twice: the empty member).
    let outs: Vec<u64> = zinfo.checkpoints.iter().map(|cp| cp.out).collect();
    assert_eq!(outs.iter().filter(|&&o| o == 70_000).count(), 2, "{outs:?}");
    let mut r = reader(gz.clone(), &zinfo.to_bytes());
    for cp in &zinfo.checkpoints {
        check_read(&mut r, &tar, cp.out.saturating_sub(100), 5000);
    }
    let mut seed = 7;
    for _ in 0..50 {
        let offset = next(&mut seed) % tar.len() as u64;
        check_read(&mut r, &tar, offset, 9000);
    }
    check_read(&mut r, &tar, 0, tar.len() + 10);
}

#[test]
fn damaged_gzip_data_is_an_error() {
    let gz = read("docs-layer.tar.gz");
    let zinfo = read("docs-layer.zinfo");
    let tar = gunzip(&gz);
    let whole = |gz: Vec<u8>| -> Result<u64, erofs_fuse::gzran::GzError> {
        let mut r = reader(gz, &zinfo);
        let mut buf = vec![0; 1 << 20];
        let mut at = 0;
        loop {
            match r.read_at(at, &mut buf)? {
                0 => return Ok(at),
                n => at += n as u64,
            }
        }
    };
    assert_eq!(whole(gz.clone()).unwrap(), tar.len() as u64);
    // Truncated: within the last member.
    let err = whole(gz[..gz.len() - 100].to_vec()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    // The trailer's CRC: a whole read from the start checks it.
    let mut bad = gz.clone();
    let at = bad.len() - 6;
    bad[at] ^= 1;
    let err = whole(bad).unwrap_err();
    assert!(err.to_string().starts_with("test.tar.gz: "), "{err}");
    // Deflate data damaged: an error (bad codes, or the CRC at the end),
    // never the tar's bytes silently changed on a whole read.
    for at in [20, 1000, 600_000, 1_100_000] {
        let mut bad = gz.clone();
        bad[at] ^= 0x40;
        assert!(whole(bad).is_err(), "flipped byte {at} not detected");
    }
}

#[test]
fn damaged_zinfo_is_an_error_or_refused() {
    let gz = read("docs-layer.tar.gz");
    let zinfo = read("docs-layer.zinfo");
    // A checkpoint past the end of the gzip file.
    let mut parsed = Zinfo::parse(&zinfo).unwrap();
    parsed.checkpoints[2].input = gz.len() as u64 + 1;
    let err = GzReader::new(gz.clone(), gz.len() as u64, Arc::new(parsed), "x.gz")
        .err()
        .unwrap();
    assert!(err.to_string().contains("checkpoint at byte"), "{err}");
    // A checkpoint moved by a few bytes: the inflate from there fails
    // (or, rarely, decodes garbage: the zinfo is trusted for positions).
    let mut parsed = Zinfo::parse(&zinfo).unwrap();
    parsed.checkpoints[1].input += 3;
    let mut r = GzReader::new(
        gz.clone(),
        gz.len() as u64,
        Arc::new(parsed.clone()),
        "x.gz",
    )
    .unwrap();
    let mut buf = vec![0; 1 << 20];
    let err = r.read_at(parsed.checkpoints[1].out, &mut buf).unwrap_err();
    assert!(
        err.to_string().starts_with("x.gz: gzip data near byte"),
        "{err}"
    );
    // A sequential read checks each checkpoint it passes: the block
    // boundary must be where it says, its window the data before it.
    let mut whole = |zinfo: Zinfo| {
        let mut r = GzReader::new(gz.clone(), gz.len() as u64, Arc::new(zinfo), "x.gz").unwrap();
        let mut at = 0;
        loop {
            match r.read_at(at, &mut buf) {
                Ok(0) => return Ok(at),
                Ok(n) => at += n as u64,
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let good = Zinfo::parse(&zinfo).unwrap();
    let tar_len = gunzip(&gz).len() as u64;
    assert_eq!(whole(good.clone()), Ok(tar_len));
    let mut window = good.clone();
    window.checkpoints[2].window[100] ^= 1;
    let err = whole(window).unwrap_err();
    assert!(
        err.contains(
            "zinfo checkpoint 2 (in 1068875 out 8538133): its window is not the data before it"
        ),
        "{err}"
    );
    let mut bits = good.clone();
    bits.checkpoints[1].bits = 3;
    let err = whole(bits).unwrap_err();
    assert!(
        err.contains(
            "zinfo checkpoint 1 (in 543937 out 4211948): the block starts at byte 543937 bit 2"
        ),
        "{err}"
    );
    let mut out = good.clone();
    out.checkpoints[1].out += 1;
    let err = whole(out).unwrap_err();
    assert!(
        err.contains("zinfo checkpoint 1") && err.contains("no deflate block starts there"),
        "{err}"
    );
}

#[test]
fn convert_gzinfo_writes_mkfs_erofs_zinfo() {
    let dir = tempfile::tempdir().unwrap();
    for (gz, zinfo) in LAYERS {
        let out = dir.path().join(format!("{gz}.erofs"));
        let gzinfo = dir.path().join(format!("{gz}.zinfo"));
        let tar = dir.path().join(format!("{gz}.tar"));
        let status = Command::new(bin())
            .arg("convert")
            .arg("--quiet")
            .arg("--gzinfo")
            .arg(&gzinfo)
            .arg("--tar-out")
            .arg(&tar)
            .arg(fixture(gz))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        assert!(
            std::fs::read(&gzinfo).unwrap() == read(zinfo),
            "{gz}: zinfo differs"
        );
        assert!(
            std::fs::read(&tar).unwrap() == gunzip(&read(gz)),
            "{gz}: tar"
        );
    }
    // The zinfo may not take the tar's place.
    let out = Command::new(bin())
        .args(["convert", "--quiet", "--gzinfo"])
        .arg(dir.path().join("same"))
        .arg("--tar-out")
        .arg(dir.path().join("same"))
        .arg(fixture("layer.tar.gz"))
        .arg(dir.path().join("same.erofs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the zinfo would overwrite the tar"),
        "{stderr}"
    );
    assert!(!dir.path().join("same").exists());
    // A plain tar has no gzip stream to index.
    let tar = dir.path().join("layer.tar.gz.tar");
    let out = Command::new(bin())
        .args(["convert", "--quiet", "--gzinfo"])
        .arg(dir.path().join("plain.zinfo"))
        .arg(&tar)
        .arg(dir.path().join("plain.erofs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--gzinfo needs a gzip input"), "{stderr}");
    assert!(!Path::new(&dir.path().join("plain.zinfo")).exists());
}

#[test]
fn mutated_inputs_never_panic_or_hang() {
    let gz = read("docs-layer.tar.gz");
    let zinfo = read("docs-layer.zinfo");
    let mut seed = 0x1234_5678;
    for round in 0..150 {
        let (mut gz, mut zinfo) = (gz.clone(), zinfo.clone());
        // A checkpoint header field, a window byte, or gzip bytes.
        match round % 3 {
            0 => {
                let entry = 12 + (next(&mut seed) % 3) as usize * 32785;
                let at = entry
                    + match next(&mut seed) % 3 {
                        0 => (next(&mut seed) % 8) as usize,     // in
                        1 => 8 + (next(&mut seed) % 8) as usize, // out
                        _ => 16,                                 // bits
                    };
                zinfo[at] = next(&mut seed) as u8;
            }
            1 => {
                let at = 12 + (next(&mut seed) as usize % (zinfo.len() - 12));
                zinfo[at] ^= 1 << (next(&mut seed) % 8);
            }
            _ => {
                let at = next(&mut seed) as usize % gz.len();
                gz[at] = next(&mut seed) as u8;
            }
        }
        let Ok(parsed) = Zinfo::parse(&zinfo) else {
            continue;
        };
        let len = gz.len() as u64;
        let Ok(mut r) = GzReader::new(gz, len, Arc::new(parsed), "m.gz") else {
            continue;
        };
        let mut buf = vec![0; 70_000];
        for _ in 0..4 {
            let offset = next(&mut seed) % 10_000_000;
            if let Err(e) = r.read_at(offset, &mut buf) {
                assert!(e.to_string().starts_with("m.gz: ") && !e.to_string().contains('\n'));
            }
        }
    }
}
