//! `convert`: OCI layer tars to EROFS. The shared fixtures' layer, converted
//! in every mode, must read (library, kernel, erofs-fuse mount) exactly as
//! the images mkfs.erofs 1.9.3 made from it; output is deterministic;
//! malformed tars fail naming the entry.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use erofs_fuse::convert::{convert, ConvertOptions, Mode};

/// One way of converting the fixture layer, and the manifest it must give.
struct Case {
    name: &'static str,
    gzip: bool,
    mode: Mode,
    aufs: bool,
    append: bool,
    manifest: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "index-tar",
        gzip: false,
        mode: Mode::Index,
        aufs: false,
        append: false,
        manifest: "tar.manifest.jsonl",
    },
    Case {
        name: "index-gz",
        gzip: true,
        mode: Mode::Index,
        aufs: false,
        append: false,
        manifest: "tar.manifest.jsonl",
    },
    Case {
        name: "index-aufs",
        gzip: true,
        mode: Mode::Index,
        aufs: true,
        append: false,
        manifest: "tar-aufs.manifest.jsonl",
    },
    Case {
        name: "appended-aufs",
        gzip: true,
        mode: Mode::Index,
        aufs: true,
        append: true,
        manifest: "tar-aufs.manifest.jsonl",
    },
    Case {
        name: "appended-tar",
        gzip: false,
        mode: Mode::Index,
        aufs: true,
        append: true,
        manifest: "tar-aufs.manifest.jsonl",
    },
    Case {
        name: "full",
        gzip: true,
        mode: Mode::Full,
        aufs: false,
        append: false,
        manifest: "tar.manifest.jsonl",
    },
    Case {
        name: "full-aufs",
        gzip: false,
        mode: Mode::Full,
        aufs: true,
        append: false,
        manifest: "tar-aufs.manifest.jsonl",
    },
];

/// The fixture layer: `layer.tar.gz` as in ../shared, or its tar.
fn layer(gzip: bool) -> PathBuf {
    if gzip {
        fixture("layer.tar.gz")
    } else {
        fixture("tar-index.tar")
    }
}

/// Converts as `case` says into `dir`: the image and its extra devices.
fn convert_case(case: &Case, dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let out = dir.join(format!("{}.erofs", case.name));
    let options = ConvertOptions {
        mode: case.mode,
        aufs: case.aufs,
        append_tar: case.append,
        ..Default::default()
    };
    let report =
        convert(&layer(case.gzip), &out, &options).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let devices = report.tar_path.into_iter().collect();
    (out, devices)
}

fn library_manifest(image: &Path, devices: &[PathBuf]) -> String {
    let options = erofs_fuse::OpenOptions {
        devices: devices.to_vec(),
        ..Default::default()
    };
    let image = erofs_fuse::Image::open(image, &options).unwrap();
    erofs_fuse::manifest::manifest(&image).unwrap().join("\n") + "\n"
}

fn check(case: &Case, what: &str, got: &str) {
    let expected = std::fs::read_to_string(fixture(case.manifest)).unwrap();
    if let Some(diff) = manifest_diff(&expected, got, 10) {
        panic!(
            "{} ({what}) differs from mkfs.erofs's image as the kernel shows it:\n{diff}",
            case.name
        );
    }
}

#[test]
fn converted_layers_read_as_mkfs_erofs_images_do() {
    let dir = tempfile::tempdir().unwrap();
    for case in CASES {
        let (image, devices) = convert_case(case, dir.path());
        check(case, "library", &library_manifest(&image, &devices));
        // Without digests (a tar file is then read header by header), the
        // image is the same, byte for byte.
        let unhashed = dir.path().join(format!("{}-unhashed.erofs", case.name));
        let options = ConvertOptions {
            mode: case.mode,
            aufs: case.aufs,
            append_tar: case.append,
            skip_digests: true,
            ..Default::default()
        };
        let report = convert(&layer(case.gzip), &unhashed, &options).unwrap();
        assert_eq!((report.input_digest, report.tar_digest), (None, None));
        assert!(
            std::fs::read(&image).unwrap() == std::fs::read(&unhashed).unwrap(),
            "{}: the image without digests differs",
            case.name
        );
    }
}

/// Bytes this thread has read through read(2) and friends so far.
fn thread_read_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn full_images_of_tars_differing_only_in_data_have_other_uuids() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = |data: &[u8], name: &str| {
        let input = dir.path().join(format!("{name}.tar"));
        std::fs::write(&input, TarBytes::new().file("etc/conf", data).end()).unwrap();
        let out = dir.path().join(format!("{name}.erofs"));
        let options = ConvertOptions {
            mode: Mode::Full,
            ..Default::default()
        };
        convert(&input, &out, &options).unwrap();
        let image = erofs_fuse::Image::open(&out, &Default::default()).unwrap();
        image.superblock().uuid
    };
    // Same header (name, size, times), other bytes.
    assert_ne!(uuid(b"mode=a", "a"), uuid(b"mode=b", "b"));
}

#[test]
fn an_index_without_digests_reads_only_the_headers() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 8 << 20];
    let mut tar = TarBytes::new();
    for i in 0..4 {
        tar = tar
            .file(&format!("big-{i}"), &big)
            .file(&format!("small-{i}"), b"x");
    }
    let input = dir.path().join("big.tar");
    std::fs::write(&input, tar.end()).unwrap();
    let convert_reading = |skip_digests| {
        let out = dir.path().join(format!("{skip_digests}.erofs"));
        let options = ConvertOptions {
            skip_digests,
            ..Default::default()
        };
        let before = thread_read_bytes();
        convert(&input, &out, &options).unwrap();
        (thread_read_bytes() - before, std::fs::read(out).unwrap())
    };
    let (hashed, image) = convert_reading(false);
    let (headers, same) = convert_reading(true);
    assert!(hashed >= 32 << 20, "hashing read only {hashed} bytes");
    // 8 headers, each within one 64 KiB read, and the end blocks.
    assert!(headers <= 1 << 20, "header by header read {headers} bytes");
    assert!(image == same, "the images differ");
}

#[test]
fn a_verified_input_is_not_hashed_again() {
    use flate2::{write::GzEncoder, Compression as Level};
    use sha2::{Digest as _, Sha256};
    use std::io::Write as _;

    let dir = tempfile::tempdir().unwrap();
    let tar = TarBytes::new().file("big", &vec![3u8; 4 << 20]).end();
    let mut gz = GzEncoder::new(Vec::new(), Level::fast());
    gz.write_all(&tar).unwrap();
    let input = dir.path().join("layer.tar.gz");
    std::fs::write(&input, gz.finish().unwrap()).unwrap();
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let tar_digest = format!("sha256:{}", hex(&Sha256::digest(&tar)));
    // Not the input's digest: what is reported shows it was taken as given.
    let given = format!("sha256:{}", "ab".repeat(32));
    let options = ConvertOptions {
        verified_input: erofs_fuse::convert::Digest::parse(&given),
        ..Default::default()
    };
    assert!(options.verified_input.is_some(), "{given} did not parse");
    let out = dir.path().join("given.erofs");
    let report = convert(&input, &out, &options).unwrap();
    assert_eq!(report.digests(), Some((given.clone(), tar_digest.clone())));
    // A plain tar's digest is the input's: given, nothing is hashed, and
    // it is read header by header (its 4 MiB of data are not read).
    let plain = dir.path().join("layer.tar");
    std::fs::write(&plain, &tar).unwrap();
    let before = thread_read_bytes();
    let report = convert(&plain, &dir.path().join("plain.erofs"), &options).unwrap();
    let read = thread_read_bytes() - before;
    assert!(
        read < 1 << 20,
        "a verified plain tar was read whole ({read} bytes)"
    );
    assert_eq!(report.digests(), Some((given.clone(), given)));
    // Without it, both are computed from the bytes.
    let out = dir.path().join("hashed.erofs");
    let report = convert(&input, &out, &ConvertOptions::default()).unwrap();
    let input_digest = format!(
        "sha256:{}",
        hex(&Sha256::digest(std::fs::read(&input).unwrap()))
    );
    assert_eq!(report.digests(), Some((input_digest, tar_digest)));
    let upper = format!("sha256:{}", "AB".repeat(32));
    let signed = format!("sha256:+f{}", "ab".repeat(31));
    for bad in ["sha256:ab", "sha512:00", &"ab".repeat(32), &upper, &signed] {
        assert!(
            erofs_fuse::convert::Digest::parse(bad).is_none(),
            "{bad} parsed"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn converted_layers_mount_with_the_kernel_and_erofs_fuse() {
    if !have(
        "converted_layers_mount_with_the_kernel_and_erofs_fuse",
        FUSE_ROOT_KERNEL,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for case in CASES {
        let (image, devices) = convert_case(case, dir.path());
        {
            let kernel = KernelMount::new(&image, &devices);
            check(case, "kernel mount", &tree_manifest(kernel.path()));
        }
        let fuse = FuseMount::new(&image, &devices, &[]);
        check(case, "erofs-fuse mount", &tree_manifest(fuse.path()));
    }
}

#[test]
fn output_is_deterministic_and_digests_are_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let options = ConvertOptions::default();
    let a = dir.path().join("a.erofs");
    let b = dir.path().join("b.erofs");
    let from_gz = convert(&layer(true), &a, &options).unwrap();
    let from_tar = convert(&layer(false), &b, &options).unwrap();
    // The same tar, compressed or not, gives the same index.
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Again, in full mode, twice.
    let full = ConvertOptions {
        mode: Mode::Full,
        aufs: true,
        ..Default::default()
    };
    convert(&layer(true), &a, &full).unwrap();
    convert(&layer(true), &b, &full).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let sha = |p: &Path| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(p).unwrap());
        format!(
            "sha256:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    };
    use erofs_fuse::convert::Compression;
    assert_eq!(
        (from_gz.compression, from_tar.compression),
        (Compression::Gzip, Compression::None)
    );
    assert_eq!(from_gz.input_digest.unwrap().to_string(), sha(&layer(true)));
    assert_eq!(from_gz.tar_digest.unwrap().to_string(), sha(&layer(false)));
    assert_eq!(from_tar.input_digest, from_tar.tar_digest);
    assert_eq!(from_tar.tar_digest, from_gz.tar_digest);
    // The tar written beside a gzip input is the layer's tar, byte for byte.
    assert_eq!(
        std::fs::read(from_gz.tar_path.unwrap()).unwrap(),
        std::fs::read(layer(false)).unwrap()
    );
    assert_eq!(from_tar.tar_path.as_deref(), Some(layer(false).as_path()));
}

#[test]
fn cli_reads_stdin_and_prints_digests() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layer.erofs");
    let output = run_ok(
        Command::new(bin())
            .arg("convert")
            .arg("-")
            .arg(&out)
            .args(["--append-tar", "--digests"])
            .stdin(std::fs::File::open(layer(true)).unwrap()),
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = convert(
        &layer(false),
        &dir.path().join("x.erofs"),
        &ConvertOptions::default(),
    )
    .unwrap();
    assert!(
        text.contains(&format!("diffid {}", expected.tar_digest.unwrap())),
        "{text}"
    );
    // No tar left beside an appended image.
    assert!(!dir.path().join("layer.tar").exists());
    assert!(!dir.path().join("layer.erofs.tar.tmp").exists());
    let case = &CASES[0];
    check(case, "stdin, appended", &library_manifest(&out, &[]));
}

/// Tar bytes built entry by entry, to break on purpose.
struct TarBytes(Vec<u8>);

impl TarBytes {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn entry(mut self, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Self {
        let mut header = if kind == tar::EntryType::GNUSparse {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        // Raw bytes: set_path refuses the absolute and '..' paths tested here.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        if let Some(gnu) = header.as_gnu_mut() {
            gnu.set_real_size(data.len() as u64);
            gnu.set_is_extended(false);
        }
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(path, tar::EntryType::Regular, data, None)
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// Converts `bytes` in both modes, each read whole (hashed) and header by
/// header, which must fail alike; the error text of the first failure.
fn convert_bytes(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, bytes).unwrap();
    for mode in [Mode::Index, Mode::Full] {
        let options = |skip_digests| ConvertOptions {
            mode,
            skip_digests,
            ..Default::default()
        };
        let out = dir.path().join("out.erofs");
        let hashed = convert(&input, &out, &options(false)).map_err(|e| e.to_string());
        let by_headers = convert(&input, &out, &options(true)).map_err(|e| e.to_string());
        assert_eq!(
            hashed.as_ref().map(|_| ()),
            by_headers.as_ref().map(|_| ()),
            "{mode:?}: read whole and header by header"
        );
        hashed?;
        // A converted image always reads back.
        let devices = if mode == Mode::Index {
            vec![input.clone()]
        } else {
            vec![]
        };
        library_manifest(&out, &devices);
    }
    Ok(())
}

#[test]
fn malformed_tars_fail_naming_the_entry() {
    use tar::EntryType as T;
    let good = TarBytes::new().file("a", b"hello").file("dir/b", b"world");
    assert!(convert_bytes(&good.end()).is_ok());

    // A bad checksum in the second header.
    let mut bytes = TarBytes::new()
        .file("first", b"1")
        .file("second", b"2")
        .end();
    bytes[1024 + 148] ^= 0x07;
    let err = convert_bytes(&bytes).unwrap_err();
    // Named by the header that is bad, at its offset.
    assert!(
        err.contains("checksum") && err.contains("'second' at byte 1024"),
        "{err}"
    );

    // Truncated: in the middle of a header, and in the middle of data.
    let bytes = TarBytes::new()
        .file("first", b"1")
        .file("second", &[7; 3000])
        .end();
    for cut in [512 + 512 + 100, 512 + 512 + 512 + 1000] {
        let err = convert_bytes(&bytes[..cut]).unwrap_err();
        assert!(err.contains("tar entry"), "cut at {cut}: {err}");
    }
    // A size running past the end of the archive.
    let mut bytes = TarBytes::new().file("big", b"x").end();
    let mut header = tar::Header::from_byte_slice(&bytes[..512]).clone();
    header.set_size(1 << 30);
    header.set_cksum();
    bytes[..512].copy_from_slice(header.as_bytes());
    let err = convert_bytes(&bytes).unwrap_err();
    assert!(err.contains("'big'"), "{err}");

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            TarBytes::new()
                .entry("link", T::Link, b"", Some("nowhere"))
                .end(),
            "not an earlier entry",
        ),
        (
            TarBytes::new()
                .entry("loop", T::Link, b"", Some("loop"))
                .end(),
            "not an earlier entry",
        ),
        (
            TarBytes::new()
                .entry("d", T::Directory, b"", None)
                .entry("l", T::Link, b"", Some("d"))
                .end(),
            "a directory",
        ),
        (TarBytes::new().file("../escape", b"x").end(), "'..'"),
        (
            TarBytes::new().file("f", b"x").file("f/g", b"y").end(),
            "not a directory",
        ),
        (
            TarBytes::new().entry("s", T::GNUSparse, b"", None).end(),
            "sparse",
        ),
        (
            TarBytes::new().entry("m", T::new(b'M'), b"", None).end(),
            "not supported",
        ),
    ];
    for (bytes, expected) in cases {
        let err = convert_bytes(&bytes).unwrap_err();
        assert!(
            err.contains(expected) && err.contains("tar entry '"),
            "expected '{expected}': {err}"
        );
    }
}

#[test]
fn later_entries_win_and_parents_are_implied() {
    use tar::EntryType as T;
    let bytes = TarBytes::new()
        .file("a/b/c", b"old")
        .entry("a/b/link", T::Link, b"", Some("a/b/c"))
        .file("a/b/c", b"new")
        .entry("a", T::Directory, b"", None)
        .entry("/abs", T::Symlink, b"", Some("a/b/c"))
        .end();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("out.erofs");
    convert(
        &input,
        &out,
        &ConvertOptions {
            mode: Mode::Full,
            ..Default::default()
        },
    )
    .unwrap();
    let image = erofs_fuse::Image::open(&out, &Default::default()).unwrap();
    let read = |path: &str| {
        let inode = image.resolve(path.as_bytes()).unwrap();
        image
            .read_range(&inode, 0, inode.size)
            .unwrap()
            .into_owned()
    };
    // The replaced file's old inode lives on under its hard link.
    assert_eq!(read("/a/b/c"), b"new");
    assert_eq!(read("/a/b/link"), b"old");
    assert_eq!(
        image.read_link(&image.resolve(b"/abs").unwrap()).unwrap(),
        b"a/b/c"
    );
    let a = image.resolve(b"/a").unwrap();
    assert_eq!(
        a.mode & 0o7777,
        0o644,
        "the later directory entry sets a's mode"
    );
    let b = image.resolve(b"/a/b").unwrap();
    assert_eq!(
        b.mode & 0o7777,
        0o755 | 0o022,
        "implied: 0755 and the root's write bits"
    );
}

/// Random tars (scripts/gen_tar.py: PAX xattrs, long names, hard links,
/// devices, whiteout names, paths listed twice), converted in both modes
/// and mounted by the kernel, read as GNU tar extracts them.
#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn generated_tars_mount_as_gnu_tar_extracts_them() {
    let needs = [
        Need::Root,
        Need::KernelErofs,
        Need::Program("python3"),
        Need::Program("tar"),
    ];
    if !have("generated_tars_mount_as_gnu_tar_extracts_them", &needs) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=8 {
        let tar = dir.path().join(format!("{seed}.tar"));
        run_ok(
            Command::new("python3")
                .arg(script("gen_tar.py"))
                .arg(seed.to_string())
                .arg(&tar),
        );
        let extracted = dir.path().join(format!("x{seed}"));
        std::fs::create_dir(&extracted).unwrap();
        // Extraction reports the user.* xattrs of special files it cannot
        // set: convert leaves those out too.
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&tar)
            .arg("-C")
            .arg(&extracted));
        run_ok(
            Command::new("python3")
                .arg(script("gen_tar.py"))
                .arg("--restore-dirs")
                .arg(&tar)
                .arg(&extracted),
        );
        let expected = tree_manifest(&extracted);
        for mode in [Mode::Index, Mode::Full] {
            let image = dir.path().join(format!("{seed}-{mode:?}.erofs"));
            let options = ConvertOptions {
                mode,
                ..Default::default()
            };
            let report =
                convert(&tar, &image, &options).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let devices: Vec<PathBuf> = report.tar_path.into_iter().collect();
            let kernel = KernelMount::new(&image, &devices);
            if let Some(diff) = manifest_diff(&expected, &tree_manifest(kernel.path()), 10) {
                panic!("seed {seed}, {mode:?}: kernel mount differs from GNU tar's extraction:\n{diff}");
            }
        }
    }
}

#[test]
fn no_input_is_overwritten_and_failures_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = ConvertOptions::default();
    // Output onto the input.
    let tar = dir.path().join("layer.tar");
    std::fs::copy(layer(false), &tar).unwrap();
    assert!(convert(&tar, &tar, &options).is_err());
    // A gzip named .tar: the tar written beside layer.erofs would be it.
    std::fs::copy(layer(true), &tar).unwrap();
    let err = convert(&tar, &dir.path().join("layer.erofs"), &options).unwrap_err();
    assert!(err.to_string().contains("--tar-out"), "{err}");
    assert_eq!(
        std::fs::read(&tar).unwrap(),
        std::fs::read(layer(true)).unwrap()
    );
    // A truncated tar.gz: no image, no partial tar, no temporary file.
    let cut = dir.path().join("cut.tar.gz");
    let gz = std::fs::read(layer(true)).unwrap();
    std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    let out = dir.path().join("cut.erofs");
    assert!(convert(&cut, &out, &options).is_err());
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["cut.tar.gz", "layer.tar"]);
}
