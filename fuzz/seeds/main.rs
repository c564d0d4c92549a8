//! Writes seed corpora for the fuzz targets in `fuzz/` from the test
//! fixtures: `cargo run --release --manifest-path fuzz/Cargo.toml -p fuzz-seeds
//! -- tests/fixtures OUT` makes OUT/image, OUT/decompress, OUT/convert and
//! OUT/verity (scripts/fuzz.sh adds the stack seeds).
//!
//! - image: every fixture image (gzipped ones unpacked);
//! - decompress: real pclusters of every compressed fixture, framed as the
//!   target reads its input (flags, 24-bit output size, bytes);
//! - convert: small tars built here with every entry kind, plus the
//!   fixtures' layer tar and tar.gz;
//! - verity: a few data/flip layouts.

use std::io::Read;
use std::path::{Path, PathBuf};

use erofs_fuse::reader::{FileKind, Stored, WalkEntry, WalkVisitor};
use erofs_fuse::{Image, OpenOptions};

fn unpacked(path: &Path) -> std::io::Result<Vec<u8>> {
    let raw = std::fs::read(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The pclusters of an image's compressed files, as decompress seeds.
struct Pclusters<'a> {
    image: &'a Image,
    bytes: &'a [u8],
    zero_padding: bool,
    seeds: Vec<Vec<u8>>,
}

impl WalkVisitor for Pclusters<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> erofs_fuse::Result<()> {
        if entry.inode.kind != FileKind::Regular || self.seeds.len() >= 24 {
            return Ok(());
        }
        let Ok(extents) = self.image.compressed_extents(&entry.inode) else {
            return Ok(());
        };
        for extent in extents.iter().take(2) {
            let (Stored::Device { addr, len }, Some(name)) = (extent.stored, extent.algorithm)
            else {
                continue;
            };
            let alg = match name {
                "lz4" => 0u8,
                "lzma" => 1,
                "deflate" => 2,
                _ => 3,
            };
            let Some(pcluster) = self.bytes.get(addr as usize..(addr + len) as usize) else {
                continue;
            };
            let flags = alg | (u8::from(self.zero_padding) << 3) | (u8::from(extent.partial) << 4);
            let out_len = (extent.len as u32).to_le_bytes();
            let mut seed = vec![flags, out_len[0], out_len[1], out_len[2]];
            seed.extend_from_slice(pcluster);
            self.seeds.push(seed);
        }
        Ok(())
    }
}

/// A small tar holding every kind of entry convert handles.
fn sample_tar(gnu: bool) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(1000);
        h.set_gid(1000);
        h
    };
    builder.append_data(
        &mut header(tar::EntryType::Directory, 0, 0o755),
        "etc/",
        &[][..],
    )?;
    let text = b"hello, erofs\n".repeat(40);
    builder.append_data(
        &mut header(tar::EntryType::Regular, text.len() as u64, 0o644),
        "etc/motd",
        &text[..],
    )?;
    let mut link = header(tar::EntryType::Symlink, 0, 0o777);
    builder.append_link(&mut link, "etc/link", "motd")?;
    let mut hard = header(tar::EntryType::Link, 0, 0o644);
    builder.append_link(&mut hard, "etc/hard", "etc/motd")?;
    let mut dev = header(tar::EntryType::Char, 0, 0o600);
    dev.set_device_major(1)?;
    dev.set_device_minor(3)?;
    builder.append_data(&mut dev, "dev/null", &[][..])?;
    builder.append_data(
        &mut header(tar::EntryType::Fifo, 0, 0o644),
        "run/fifo",
        &[][..],
    )?;
    builder.append_data(
        &mut header(tar::EntryType::Regular, 0, 0o644),
        "usr/.wh.gone",
        &[][..],
    )?;
    builder.append_data(
        &mut header(tar::EntryType::Regular, 0, 0o644),
        "opt/.wh..wh..opq",
        &[][..],
    )?;
    let long = format!("{}/file", "d".repeat(120));
    builder.append_data(
        &mut header(tar::EntryType::Regular, 5, 0o600),
        long,
        &b"long\n"[..],
    )?;
    builder.append_pax_extensions([("SCHILY.xattr.user.note", &b"v"[..])])?;
    builder.append_data(
        &mut header(tar::EntryType::Regular, 3, 0o644),
        "x",
        &b"xa\n"[..],
    )?;
    builder.into_inner()
}

fn write_all(
    dir: &Path,
    seeds: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
        n += 1;
    }
    Ok(n)
}

/// The nydus target's seeds: each case of `dir` (CASE/bootstrap and its
/// one blob in CASE/blobs) framed as the target reads its input.
fn nydus_seeds(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut seeds = Vec::new();
    let Ok(cases) = std::fs::read_dir(dir) else {
        return Ok(seeds);
    };
    for case in cases {
        let case = case?.path();
        let Ok(mut blobs) = std::fs::read_dir(case.join("blobs")) else {
            continue;
        };
        let (Ok(bootstrap), Some(Ok(blob))) = (std::fs::read(case.join("bootstrap")), blobs.next())
        else {
            continue;
        };
        let blob = std::fs::read(blob.path())?;
        let mut seed = (bootstrap.len() as u32).to_le_bytes().to_vec();
        seed.extend_from_slice(&bootstrap);
        seed.extend_from_slice(&blob);
        let name = case.file_name().unwrap_or_default().to_string_lossy().into_owned();
        seeds.push((name, seed));
    }
    Ok(seeds)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fixtures, out] = args.as_slice() else {
        return Err("usage: fuzz-seeds FIXTURE_DIR OUT_DIR".into());
    };
    let mut images = Vec::new();
    let mut pclusters = Vec::new();
    let scratch = tempfile::tempdir()?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for path in names {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .replace(".gz", "");
        if !name.ends_with(".erofs") {
            continue;
        }
        let bytes = unpacked(&path)?;
        let file = scratch.path().join(&name);
        std::fs::write(&file, &bytes)?;
        if let Ok(image) = Image::open(&file, &OpenOptions::default()) {
            let zero_padding = image
                .superblock()
                .has_incompat(erofs_fuse::format::INCOMPAT_ZERO_PADDING);
            let mut visitor = Pclusters {
                image: &image,
                bytes: &bytes,
                zero_padding,
                seeds: Vec::new(),
            };
            let root = image.root()?;
            let _ = image.walk(root, b"/", &mut visitor);
            for (i, seed) in visitor.seeds.into_iter().enumerate() {
                pclusters.push((format!("{name}-{i}"), seed));
            }
        }
        images.push((name, bytes));
    }
    let mut tars = vec![
        ("ustar.tar".to_string(), sample_tar(false)?),
        ("gnu.tar".to_string(), sample_tar(true)?),
    ];
    for (name, file) in [
        ("layer.tar.gz", "layer.tar.gz.gz"),
        ("tar-index.tar", "tar-index.tar.gz"),
    ] {
        if let Ok(bytes) = unpacked(&fixtures.join(file)) {
            tars.push((name.to_string(), bytes));
        }
    }
    // 512-byte blocks (byte 0 = 0), i + 1 of them, then flip records
    // (le32 offset, xor) into the tree (top bit clear) or the data.
    let verity = (0..8u8).map(|i| {
        let blocks = usize::from(i) + 1;
        let mut seed = vec![0, i];
        seed.extend((0..blocks * 512).map(|j| (j * 31 + usize::from(i)) as u8));
        for k in 0..u32::from(i) {
            let at = (k * 997 + u32::from(i) * 13) | if k % 2 == 1 { 0x8000_0000 } else { 0 };
            seed.extend_from_slice(&at.to_le_bytes());
            seed.push(1 << (k % 8));
        }
        (format!("verity-{i}"), seed)
    });
    let nydus = nydus_seeds(&fixtures.join("nydus"))?;
    let counts = [
        ("nydus", write_all(&out.join("nydus"), nydus)?),
        ("image", write_all(&out.join("image"), images)?),
        ("decompress", write_all(&out.join("decompress"), pclusters)?),
        ("convert", write_all(&out.join("convert"), tars)?),
        ("verity", write_all(&out.join("verity"), verity)?),
    ];
    for (target, n) in counts {
        println!("{target}: {n} seeds");
    }
    Ok(())
}
