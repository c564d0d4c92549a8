//! `convert --mode full --compress`: every algorithm, with and without big
//! pclusters, reads back (library; kernel in the privileged tier) exactly
//! as the uncompressed full image of the same tar; output does not depend
//! on the worker count; bad options are one-line errors.
use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use erofs_fuse::convert::{convert, convert_compressed, CompressOptions, ConvertOptions, Mode};

const ALGORITHMS: &[&str] = &["lz4", "lz4hc", "zstd", "lzma", "deflate"];
const PCLUSTERS: &[u64] = &[4096, 65536];

/// A tar of files that stress pcluster and block boundaries: random,
/// text, zeros, a mix, empty and 1-byte files, sizes around 4 KiB and
/// 64 KiB multiples.
pub fn boundary_tar(dir: &Path) -> PathBuf {
    let path = dir.join("boundary.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut rand = xorshift(23);
    let add = |b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i} of some compressible text\n").into_bytes())
        .collect();
    for size in [
        0u64, 1, 4095, 4096, 4097, 8191, 8193, 65535, 65536, 65537, 300_001,
    ] {
        let n = size as usize;
        let random: Vec<u8> = (0..n).map(|_| rand() as u8).collect();
        add(&mut b, &format!("random-{size}"), &random);
        add(&mut b, &format!("text-{size}"), &text[..n]);
        add(&mut b, &format!("zeros-{size}"), &vec![0u8; n]);
        // Compressible and incompressible runs alternating mid-block.
        let mixed: Vec<u8> = (0..n)
            .map(|i| {
                if (i / 3000) % 2 == 0 {
                    text[i]
                } else {
                    random[i]
                }
            })
            .collect();
        add(&mut b, &format!("mixed-{size}"), &mixed);
    }
    add(&mut b, "text-large", &text);
    add(&mut b, "zeros-large", &vec![0u8; 5 << 20]);
    b.finish().unwrap();
    path
}

/// `ALGO[,level=N][,OPT...]` split into the algorithm's spec and the
/// extended options (`-E`).
pub fn split_spec(spec: &str) -> (String, Vec<String>) {
    let (mut algo, mut extended) = (Vec::new(), Vec::new());
    for (i, part) in spec.split(',').enumerate() {
        if i == 0 || part.starts_with("level=") {
            algo.push(part);
        } else {
            extended.push(part.to_string());
        }
    }
    (algo.join(","), extended)
}

/// Converts `tar` to a full image, compressed with `spec` (its extended
/// options after the algorithm, see [`split_spec`]) if given.
pub fn full_image(tar: &Path, out: &Path, spec: Option<(&str, u64, usize)>) -> PathBuf {
    let options = ConvertOptions {
        mode: Mode::Full,
        ..Default::default()
    };
    let result = match spec {
        Some((spec, pcluster, workers)) => convert_compressed(
            tar,
            out,
            &options,
            &CompressOptions {
                spec: split_spec(spec).0,
                extended: split_spec(spec).1,
                pcluster_size: Some(pcluster),
                workers: Some(workers),
            },
        ),
        None => convert(tar, out, &options),
    };
    result.unwrap_or_else(|e| panic!("{} -> {}: {e}", tar.display(), out.display()));
    out.to_path_buf()
}

/// The regular files of `image` whose last pcluster is inline
/// (`-E ztailpacking`), as the library maps them.
pub fn inline_files(image: &Path) -> usize {
    use erofs_fuse::reader::{WalkEntry, WalkVisitor};
    struct Count<'a>(&'a erofs_fuse::Image, usize);
    impl WalkVisitor for Count<'_> {
        fn visit(&mut self, entry: &WalkEntry) -> erofs_fuse::Result<()> {
            if entry.inode.layout.is_compressed() {
                let info = self.0.compression_info(&entry.inode)?;
                self.1 += usize::from(info.inline_bytes > 0);
            }
            Ok(())
        }
    }
    let image = erofs_fuse::Image::open(image, &Default::default()).unwrap();
    let mut count = Count(&image, 0);
    image.walk(image.root().unwrap(), b"/", &mut count).unwrap();
    count.1
}

/// The superblock's incompat features of `image`.
pub fn features(image: &Path) -> u32 {
    let image = std::fs::read(image).unwrap();
    u32::from_le_bytes(image[1024 + 80..1024 + 84].try_into().unwrap())
}

/// `feature_incompat` bits: ZTAILPACKING, and FRAGMENTS (which DEDUPE
/// shares).
pub const ZTAILPACKING: u32 = 0x10;
/// See [`ZTAILPACKING`].
pub const DEDUPE: u32 = 0x20;

pub fn library_manifest(image: &Path) -> String {
    let image = erofs_fuse::Image::open(image, &Default::default()).unwrap();
    erofs_fuse::manifest::manifest(&image).unwrap().join("\n") + "\n"
}

/// The tars every algorithm is checked on.
pub fn inputs(dir: &Path) -> Vec<PathBuf> {
    vec![boundary_tar(dir), fixture("tar-index.tar")]
}

#[test]
fn compressed_images_read_back_as_their_tar() {
    let dir = tempfile::tempdir().unwrap();
    for tar in inputs(dir.path()) {
        let plain = full_image(&tar, &dir.path().join("plain.erofs"), None);
        let expected = library_manifest(&plain);
        let plain_size = std::fs::metadata(&plain).unwrap().len();
        for alg in ALGORITHMS {
            for &pcluster in PCLUSTERS {
                let name = format!("{alg}-{pcluster}.erofs");
                let image = full_image(&tar, &dir.path().join(&name), Some((alg, pcluster, 2)));
                if let Some(diff) = manifest_diff(&expected, &library_manifest(&image), 10) {
                    panic!("{} {name} reads differently:\n{diff}", tar.display());
                }
                let size = std::fs::metadata(&image).unwrap().len();
                assert!(size < plain_size, "{name}: {size} >= {plain_size}");
            }
        }
    }
}

#[test]
fn output_is_the_same_whatever_the_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let tar = boundary_tar(dir.path());
    for alg in ["lz4hc", "zstd"] {
        let one = full_image(&tar, &dir.path().join("1.erofs"), Some((alg, 4096, 1)));
        let one = std::fs::read(one).unwrap();
        let four = full_image(&tar, &dir.path().join("4.erofs"), Some((alg, 4096, 4)));
        assert!(one == std::fs::read(four).unwrap(), "{alg}: 1 vs 4 workers");
    }
}

#[test]
fn bad_compression_options_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tar = fixture("tar-index.tar");
    let out = dir.path().join("x.erofs");
    let cases: &[(&str, &[&str], &str)] = &[
        ("level", &["--compress", "zstd,level=23"], "out of range"),
        (
            "lz4hc level",
            &["--compress", "lz4hc,level=0"],
            "out of range",
        ),
        (
            "algorithm",
            &["--compress", "brotli"],
            "unknown compression",
        ),
        (
            "option",
            &["--compress", "lz4,speed=1"],
            "unknown compression option",
        ),
        (
            "pcluster",
            &["--compress", "lz4", "-C", "6000"],
            "multiple of the block",
        ),
        (
            "huge pcluster",
            &["--compress", "lz4", "-C", "2097152"],
            "multiple of the block",
        ),
        (
            "workers",
            &["--compress", "lz4", "--workers", "0"],
            "at least 1",
        ),
        (
            "many workers",
            &["--compress", "lz4", "--workers", "5000"],
            "at most 1024",
        ),
        (
            "index mode",
            &["--mode", "index", "--compress", "lz4"],
            "--mode full",
        ),
        (
            "extended",
            &["--compress", "lz4", "-E", "ztailpacking,tailpack"],
            "unknown extended option 'tailpack'",
        ),
        (
            "level as -E",
            &["--compress", "zstd", "-E", "level=3"],
            "'level=3' is not an extended option",
        ),
        (
            "empty -E",
            &["--compress", "zstd", "-E", ""],
            "empty extended option",
        ),
        (
            "empty name in -E",
            &["--compress", "zstd", "-E", "dedupe,"],
            "empty extended option",
        ),
        (
            "extended option in the spec",
            &["--compress", "lz4,dedupe"],
            "unknown compression option 'dedupe'",
        ),
        (
            "fragments",
            &["--compress", "lz4", "-E", "fragments"],
            "'fragments' is not supported",
        ),
        ("extended alone", &["-E", "dedupe"], "need --compress"),
    ];
    for (what, args, needle) in cases {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("convert");
        if !args.contains(&"--mode") {
            cmd.args(["--mode", "full"]);
        }
        let out_put = run(cmd.args(*args).arg(&tar).arg(&out));
        let stderr = String::from_utf8_lossy(&out_put.stderr);
        assert!(!out_put.status.success(), "{what}: accepted");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
        assert!(!out.exists(), "{what}: output written");
    }
}

/// A tar holding one regular file `name` with `data`.
fn one_file_tar(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
    b.finish().unwrap();
    path
}

/// Asserts `tar` compressed with `spec` reads back as its plain image.
fn reads_back(dir: &Path, tar: &Path, spec: &str, pcluster: u64) {
    let plain = full_image(tar, &dir.join("plain.erofs"), None);
    let image = full_image(tar, &dir.join("c.erofs"), Some((spec, pcluster, 2)));
    let expected = library_manifest(&plain);
    if let Some(diff) = manifest_diff(&expected, &library_manifest(&image), 10) {
        panic!("{spec} -C {pcluster} reads differently:\n{diff}");
    }
}

/// Issue 23: at -C 1 MiB the first window (32 pclusters) exceeded the
/// largest extent readers accept; 16+ MiB of zeros must still read back.
#[test]
fn long_zero_runs_at_big_pclusters_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let tar = one_file_tar(dir.path(), "zeros", &vec![0u8; 17 << 20]);
    reads_back(dir.path(), &tar, "lz4", 1 << 20);
}

/// Issue 23: a DEFLATE stored block starts with 0x00, which readers take
/// as padding; such a pcluster must not be written compressed.
#[test]
fn deflate_stored_blocks_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut rand = xorshift(7);
    let mut data: Vec<u8> = (0..16 << 10).map(|_| rand() as u8).collect();
    data.resize(256 << 10, 0);
    let tar = one_file_tar(dir.path(), "random-then-zeros", &data);
    reads_back(dir.path(), &tar, "deflate,level=6", 65536);
}

/// Appends a regular file `name` holding `data` to `b`.
fn append(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
}

/// A tar with duplicated data for `-E dedupe`: identical files
/// (compressible, incompressible with and without a partial block, tiny),
/// a shared prefix, and runs of zeros whose pclusters' inputs recur at
/// other offsets in the file or in other files.
pub fn dedupe_tar(dir: &Path) -> PathBuf {
    dedupe_tar_copies(dir, true)
}

/// The files of [`dedupe_tar`] that copy an earlier one (in order).
const COPIES: &[&str] = &["b/text", "r2", "r4", "s2", "z2"];

/// [`dedupe_tar`], without [`COPIES`] unless `copies`.
fn dedupe_tar_copies(dir: &Path, copies: bool) -> PathBuf {
    let path = dir.join(format!("dedupe-{copies}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut rand = xorshift(31);
    let text: Vec<u8> = (0..12_000u32)
        .flat_map(|i| format!("{i} dedupe me {}\n", i % 97).into_bytes())
        .collect();
    let random: Vec<u8> = (0..50_001).map(|_| rand() as u8).collect();
    let add = |b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]| {
        if copies || !COPIES.contains(&name) {
            append(b, name, data);
        }
    };
    add(&mut b, "a/text", &text);
    add(&mut b, "b/text", &text);
    add(&mut b, "c/prefix", &text[..text.len() / 2]);
    add(&mut b, "d/shifted", &[b"xyz".as_slice(), &text].concat());
    add(&mut b, "r1", &random);
    add(&mut b, "r2", &random);
    add(&mut b, "r3", &random[..8192]);
    add(&mut b, "r4", &random[..8192]);
    add(&mut b, "s1", &text[..100]);
    add(&mut b, "s2", &text[..100]);
    for (name, lead, zeros) in [
        ("z1", 0, 3 << 20),
        ("z2", 0, 3 << 20),
        ("z3", 1, 3 << 20),
        ("z4", 4097, (3 << 20) + 5),
    ] {
        let mut data: Vec<u8> = (0..lead).map(|_| rand() as u8 | 1).collect();
        data.resize(lead + zeros, 0);
        add(&mut b, name, &data);
    }
    b.finish().unwrap();
    path
}

/// A tar of many small compressible files (where ztailpacking pays).
fn small_files_tar(dir: &Path) -> PathBuf {
    let path = dir.join("small.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for i in 0..300usize {
        let line = format!("file {i}: a line of small-file text, ");
        let data = line.repeat(1 + i * 7 % 300).into_bytes();
        append(&mut b, &format!("f{i}"), &data);
    }
    b.finish().unwrap();
    path
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// `-E ztailpacking`, `-E dedupe` and both: every algorithm and pcluster
/// size reads back as the plain image; ztailpacking makes a small-file
/// image smaller and dedupe one with duplicated files.
#[test]
fn extended_options_read_back_and_pay() {
    let dir = tempfile::tempdir().unwrap();
    let (small, dups) = (small_files_tar(dir.path()), dedupe_tar(dir.path()));
    let mut tars = inputs(dir.path());
    tars.extend([small.clone(), dups.clone()]);
    for tar in &tars {
        let plain = full_image(tar, &dir.path().join("plain.erofs"), None);
        let expected = library_manifest(&plain);
        for alg in ALGORITHMS {
            for &pcluster in PCLUSTERS {
                let spec = format!("{alg},ztailpacking,dedupe");
                let image =
                    full_image(tar, &dir.path().join("x.erofs"), Some((&spec, pcluster, 2)));
                if let Some(diff) = manifest_diff(&expected, &library_manifest(&image), 10) {
                    panic!(
                        "{} {spec} -C {pcluster} reads differently:\n{diff}",
                        tar.display()
                    );
                }
            }
        }
    }
    let sized = |tar: &Path, spec: &str| {
        let image = full_image(tar, &dir.path().join("s.erofs"), Some((spec, 4096, 2)));
        let expected = library_manifest(&full_image(tar, &dir.path().join("p.erofs"), None));
        assert!(
            manifest_diff(&expected, &library_manifest(&image), 10).is_none(),
            "{spec}"
        );
        size(&image)
    };
    // The superblock names a feature when the data uses it, as mkfs.erofs.
    let features = || features(&dir.path().join("s.erofs"));
    let (none, packed) = (sized(&small, "lz4hc"), sized(&small, "lz4hc,ztailpacking"));
    assert!(packed < none * 9 / 10, "ztailpacking: {packed} vs {none}");
    assert_eq!(features() & (ZTAILPACKING | DEDUPE), ZTAILPACKING);
    // Nearly every small file's tail is inline (some go flat).
    let inline = inline_files(&dir.path().join("s.erofs"));
    assert!(inline > 250, "{inline} of 300 files inline");
    let mut rand = xorshift(3);
    let random: Vec<u8> = (0..8192).map(|_| rand() as u8).collect();
    sized(
        &one_file_tar(dir.path(), "r", &random),
        "lz4hc,ztailpacking,dedupe",
    );
    assert_eq!(features() & (ZTAILPACKING | DEDUPE), 0, "options unused");
    // With dedupe the copies cost their inodes and indexes, not data.
    let originals = dedupe_tar_copies(dir.path(), false);
    let base = sized(&originals, "lz4hc,dedupe");
    let (none, deduped) = (sized(&dups, "lz4hc"), sized(&dups, "lz4hc,dedupe"));
    assert_eq!(
        features() & (ZTAILPACKING | DEDUPE),
        DEDUPE,
        "shared pclusters"
    );
    let image = erofs_fuse::Image::open(&dir.path().join("s.erofs"), &Default::default()).unwrap();
    // A copy's inode counts no blocks (it wrote none), as mkfs.erofs.
    let blocks = |name: &str| image.resolve(name.as_bytes()).unwrap().blocks;
    assert!(blocks("a/text") > 0 && blocks("z1") > 0);
    assert_eq!((blocks("b/text"), blocks("z2")), (0, 0), "copies' i_blocks");
    let metadata: u64 = COPIES
        .iter()
        .map(|name| 64 + 24 + 8 * image.resolve(name.as_bytes()).unwrap().size.div_ceil(4096))
        .sum();
    let slack = metadata.next_multiple_of(4096) + 4096;
    assert!(
        deduped <= base + slack,
        "dedupe: {deduped} vs {base} + {slack}"
    );
    assert!(
        none > base + slack + 8 * 4096,
        "copies cost little: {none} vs {base}"
    );
}

/// The extended options keep the output independent of the worker count,
/// and `-E` on the command line is the same as in the library's spec.
#[test]
fn extended_output_is_the_same_whatever_the_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    for tar in [boundary_tar(dir.path()), dedupe_tar(dir.path())] {
        for alg in ["lz4hc", "zstd"] {
            let spec = format!("{alg},ztailpacking,dedupe");
            let one = full_image(&tar, &dir.path().join("1.erofs"), Some((&spec, 4096, 1)));
            let one = std::fs::read(one).unwrap();
            let two = full_image(&tar, &dir.path().join("2.erofs"), Some((&spec, 4096, 2)));
            assert!(one == std::fs::read(two).unwrap(), "{spec}: 1 vs 2 workers");
            let cli = dir.path().join("cli.erofs");
            run_ok(
                std::process::Command::new(bin())
                    .args(["convert", "-q", "--mode", "full", "--compress", alg])
                    .args([
                        "-E",
                        "ztailpacking",
                        "--extended",
                        "dedupe",
                        "--workers",
                        "2",
                    ])
                    .arg(&tar)
                    .arg(&cli),
            );
            assert!(one == std::fs::read(&cli).unwrap(), "{spec}: -E differs");
        }
    }
}

/// A tar of about 42 MiB, more than a batch holds with 1 or 2 workers
/// (16 MiB per worker): a 16 MiB + 5 byte file (two segments) and 40
/// files of pieces drawn from a pool of eight 256 KiB chunks (text,
/// zeros, random), so that duplicates recur all across it, with partial
/// tails.
fn batches_tar(dir: &Path) -> PathBuf {
    let path = dir.join("batches.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut rand = xorshift(41);
    const CHUNK: usize = 256 << 10;
    let pool: Vec<Vec<u8>> = (0..8u64)
        .map(|k| match k {
            0 => vec![0u8; CHUNK],
            1 => (0..CHUNK).map(|_| rand() as u8).collect(),
            _ => format!("chunk {k} line of text with some words; ")
                .repeat(CHUNK / 30)
                .into_bytes()[..CHUNK]
                .to_vec(),
        })
        .collect();
    let mut pick = |n: usize, tail: usize| -> Vec<u8> {
        let mut data: Vec<u8> = (0..n)
            .flat_map(|_| pool[rand() as usize % pool.len()].clone())
            .collect();
        data.extend_from_slice(&pool[2][..tail]);
        data
    };
    append(&mut b, "big", &pick(64, 5));
    for i in 0..40 {
        let (n, tail) = (1 + i % 4, (i * 997) % 5000);
        append(&mut b, &format!("f{i}"), &pick(n, tail));
    }
    b.finish().unwrap();
    path
}

/// Issue 23 (review): with more input than a batch holds, batches end
/// at different places for 1, 2 and 3 workers, and duplicates are found
/// across them; the output is still the same.
#[test]
fn output_across_batches_is_the_same_whatever_the_worker_count() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let tar = batches_tar(dir.path());
    assert!(size(&tar) > 40 << 20);
    for (spec, workers) in [
        ("lz4,ztailpacking,dedupe", &[1, 2, 3][..]),
        ("zstd,ztailpacking,dedupe", &[1, 2]),
    ] {
        let mut hashes = Vec::new();
        for &n in workers {
            let out = dir.path().join("x.erofs");
            full_image(&tar, &out, Some((spec, 4096, n)));
            assert_ne!(features(&out) & DEDUPE, 0, "{spec}: nothing shared");
            hashes.push(Sha256::digest(std::fs::read(&out).unwrap()));
            std::fs::remove_file(&out).unwrap();
        }
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "{spec}: output differs with workers {workers:?}"
        );
    }
}

/// Issue 23 (review): whether a file is worth compressing is decided
/// after dedupe, as mkfs.erofs: a file holding a block another file has
/// (raw) and a short random tail is stored compressed, its block shared
/// and its tail inline, costing no block, where flat it would cost one.
#[test]
fn dedupe_counts_in_the_flat_decision() {
    let dir = tempfile::tempdir().unwrap();
    let mut rand = xorshift(5);
    let block: Vec<u8> = (0..4096).map(|_| rand() as u8).collect();
    let text = b"some text, some text, some text. ".repeat(3000);
    let path = dir.path().join("shared-block.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    append(&mut b, "a", &[&block[..], &text].concat());
    let tail: Vec<u8> = (0..100).map(|_| rand() as u8).collect();
    append(&mut b, "b", &[&block[..], &tail].concat());
    b.finish().unwrap();
    reads_back(dir.path(), &path, "lz4,ztailpacking,dedupe", 4096);
    let image = erofs_fuse::Image::open(&dir.path().join("c.erofs"), &Default::default()).unwrap();
    let b = image.resolve(b"b").unwrap();
    assert!(b.layout.is_compressed(), "b stored {}", b.layout.name());
    assert_eq!(b.blocks, 0, "b's blocks");
}
