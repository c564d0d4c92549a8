//! Library-level benchmarks on the plain-4k fixture: lookup by name in a
//! large directory, full readdir, a whole-tree metadata walk, and sequential
//! reads of the largest file; and on the lz4hc-pcl64k fixture, reading every
//! compressed file sequentially and 4 KiB at a time, and decoding alone
//! (cache off). (FUSE-level figures against the kernel are in
//! scripts/bench.sh.)

use std::io::Read;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use erofs_fuse::reader::{DirPos, WalkEntry, WalkVisitor};
use erofs_fuse::{Image, Inode, OpenOptions};

fn fixture(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !out.exists() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{name}.gz"));
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        std::fs::write(&out, bytes).unwrap();
    }
    out
}

struct Collect(Vec<WalkEntry>);

impl WalkVisitor for Collect {
    fn visit(&mut self, entry: &WalkEntry) -> erofs_fuse::Result<()> {
        self.0.push(entry.clone());
        Ok(())
    }
}

fn benches(c: &mut Criterion) {
    let image = Image::open(&fixture("plain-4k.erofs"), &OpenOptions::default()).unwrap();
    let bigdir = image.resolve(b"/bigdir").unwrap();
    let names: Vec<Vec<u8>> = image
        .read_dir(&bigdir, DirPos::START)
        .unwrap()
        .map(|e| e.unwrap().0.name)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    let mut all = Collect(Vec::new());
    image.walk(image.root().unwrap(), b"/", &mut all).unwrap();
    let largest: Inode = all
        .0
        .iter()
        .map(|e| e.inode.clone())
        .max_by_key(|i| i.size)
        .unwrap();

    let mut g = c.benchmark_group("reader");
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function(
        format!("lookup each of {} names in /bigdir", names.len()),
        |b| {
            b.iter(|| {
                for name in &names {
                    assert!(image.lookup(&bigdir, name).unwrap().is_some());
                }
            })
        },
    );
    g.bench_function(format!("readdir /bigdir ({} entries)", names.len()), |b| {
        b.iter(|| image.read_dir(&bigdir, DirPos::START).unwrap().count())
    });
    g.throughput(Throughput::Elements(all.0.len() as u64));
    g.bench_function(format!("metadata walk ({} entries)", all.0.len()), |b| {
        b.iter(|| {
            let mut v = Collect(Vec::new());
            image.walk(image.root().unwrap(), b"/", &mut v).unwrap();
            v.0.len()
        })
    });
    g.throughput(Throughput::Bytes(largest.size));
    g.bench_function(
        format!("sequential read, 128 KiB reads ({} bytes)", largest.size),
        |b| {
            let mut buf = vec![0u8; 128 << 10];
            b.iter(|| {
                let mut offset = 0;
                while offset < largest.size {
                    offset += image.read_at(&largest, offset, &mut buf).unwrap() as u64;
                }
            })
        },
    );
    // What the server adds to each request: the SIGBUS watch around it.
    let pages = largest.size / 4096;
    g.throughput(Throughput::Elements(pages));
    for watched in [false, true] {
        let name = if watched { ", watched" } else { "" };
        g.bench_function(format!("4 KiB reads of every page{name}"), |b| {
            let mut scratch = Vec::new();
            b.iter(|| {
                for page in 0..pages {
                    let mut read = || {
                        let access = erofs_fuse::device::Access::Random;
                        let bytes = image.read_range_with(
                            &largest,
                            page * 4096,
                            4096,
                            access,
                            &mut scratch,
                        );
                        bytes.unwrap().len()
                    };
                    if watched {
                        erofs_fuse::fault::watch(read).unwrap();
                    } else {
                        read();
                    }
                }
            })
        });
    }
    g.finish();
}

/// Every compressed file of an lz4hc image with 64 KiB pclusters.
fn compressed(c: &mut Criterion) {
    let path = fixture("lz4hc-pcl64k.erofs");
    let open = |cache_size| {
        let options = OpenOptions {
            cache_size,
            ..Default::default()
        };
        Image::open(&path, &options).unwrap()
    };
    let image = open(erofs_fuse::reader::DEFAULT_CACHE_SIZE);
    let mut all = Collect(Vec::new());
    image.walk(image.root().unwrap(), b"/", &mut all).unwrap();
    let files: Vec<Inode> = all
        .0
        .into_iter()
        .map(|e| e.inode)
        .filter(|i| i.layout.is_compressed() && !i.is_dir())
        .collect();
    let bytes: u64 = files.iter().map(|i| i.size).sum();
    let read_all = |image: &Image, chunk: usize| {
        let mut buf = vec![0u8; chunk];
        for inode in &files {
            let mut offset = 0;
            while offset < inode.size {
                offset += image.read_at(inode, offset, &mut buf).unwrap() as u64;
            }
        }
    };
    let mut g = c.benchmark_group("lz4hc-pcl64k");
    g.throughput(Throughput::Bytes(bytes));
    let name = format!("{} compressed files ({bytes} bytes)", files.len());
    g.bench_function(format!("{name}, 128 KiB reads"), |b| {
        b.iter(|| read_all(&image, 128 << 10))
    });
    g.bench_function(format!("{name}, 4 KiB reads"), |b| {
        b.iter(|| read_all(&image, 4 << 10))
    });
    let uncached = open(0);
    g.bench_function(format!("{name}, 128 KiB reads, no cache"), |b| {
        b.iter(|| read_all(&uncached, 128 << 10))
    });
    g.finish();
}

/// Verifying 64 MiB against a dm-verity tree (4 KiB blocks) from a fresh
/// verifier each time, against hashing the same bytes in one go: what
/// first reads under `--verity` cost, and how close to sha256's own speed
/// (SHA-NI through the sha2 crate) the tree walk stays.
fn verity(c: &mut Criterion) {
    use erofs_fuse::verity::{format, TreeSpec, Verifier, VerityParams};
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..64u64 << 20).map(|i| (i * 31 % 253) as u8).collect();
    let data_path = dir.path().join("data");
    std::fs::write(&data_path, &data).unwrap();
    let params = VerityParams {
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: data.len() as u64 / 4096,
        salt: vec![0; 32],
        uuid: [0; 16],
    };
    let hash_path = dir.path().join("hash");
    let root = format(
        &std::fs::File::open(&data_path).unwrap(),
        &std::fs::File::create(&hash_path).unwrap(),
        0,
        &params,
    )
    .unwrap();
    let spec = TreeSpec {
        root,
        hash_file: hash_path,
        offset: 0,
        no_superblock: None,
    };
    let mut g = c.benchmark_group("verity");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("verify 64 MiB, 4 KiB blocks, 128 KiB reads", |b| {
        b.iter(|| {
            let v = Verifier::open(&data_path, &data, &spec).unwrap();
            for offset in (0..data.len() as u64).step_by(128 << 10) {
                v.check(&data, offset, 128 << 10).unwrap();
            }
        })
    });
    // What --verity does by default: each read copies its blocks and
    // hashes the copy, every time (against --verity-once above).
    g.bench_function(
        "verify copies of 64 MiB at every read, 128 KiB reads",
        |b| {
            let v = Verifier::open(&data_path, &data, &spec).unwrap();
            let mut copy = Vec::new();
            b.iter(|| {
                for offset in (0..data.len()).step_by(128 << 10) {
                    copy.clear();
                    copy.extend_from_slice(&data[offset..offset + (128 << 10)]);
                    v.check_copy(&copy, offset as u64 / 4096).unwrap();
                }
            })
        },
    );
    g.bench_function("sha256 of 64 MiB in one go", |b| {
        b.iter(|| sha2::Sha256::digest(&data))
    });
    g.finish();
}

criterion_group!(reader, benches, compressed, verity);
criterion_main!(reader);
