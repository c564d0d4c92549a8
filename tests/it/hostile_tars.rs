//! `convert` on hostile tars does bounded work: extension headers (PAX,
//! GNU long names) are refused above 1 MiB before they are read, error
//! lines stay short, global PAX records cost linear time, whiteouts never
//! make `.`/`..` entries, and paths deeper than the readers follow are
//! refused.
use crate::common;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use erofs_fuse::convert::{convert, ConvertOptions, Mode};

/// A raw header block for `path` of `kind` declaring `size` bytes.
fn header(path: &[u8], kind: tar::EntryType, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    *header.as_bytes()
}

/// A PAX extended header block and its records padded to 512 bytes.
fn pax(kind: tar::EntryType, records: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in records {
        let rest = format!(" {key}={value}\n");
        // The length counts its own digits.
        let mut len = rest.len() + 1;
        while format!("{len}{rest}").len() != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    let mut out = header(b"pax", kind, body.len() as u64).to_vec();
    out.extend_from_slice(&body);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A regular file entry with `data`.
fn file(path: &str, data: &[u8]) -> Vec<u8> {
    let mut out = header(path.as_bytes(), tar::EntryType::Regular, data.len() as u64).to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// Runs `erofs-fuse convert IN OUT` under `/usr/bin/time`: whether it
/// succeeded, its stderr and its peak RSS in KiB. (Not wait4's rusage in
/// this process: a child spawned with vfork reports the test process's
/// peak.)
fn convert_cli(input: &Path, output: &Path) -> (bool, String, u64) {
    let rss = output.with_extension("rss");
    let out = run(Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(bin())
        .args(["convert", "--mode", "full"])
        .arg(input)
        .arg(output));
    let peak = std::fs::read_to_string(&rss).unwrap();
    let peak = peak.lines().last().unwrap().trim().parse().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr, peak)
}

/// A tar whose first header declares `size` bytes of `kind` (their content
/// a hole of zeros, so the test costs no disk), then a file.
fn sparse_hostile(path: &Path, kind: tar::EntryType, size: u64) {
    let mut out = File::create(path).unwrap();
    out.write_all(&header(b"././@LongLink", kind, size))
        .unwrap();
    let end = 512 + size.next_multiple_of(512);
    out.set_len(end).unwrap();
    let mut rest = file("f", b"data");
    rest.extend_from_slice(&[0; 1024]);
    std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(end)).unwrap();
    out.write_all(&rest).unwrap();
}

#[test]
fn huge_extension_headers_are_refused_before_they_are_read() {
    let test = "huge_extension_headers_are_refused_before_they_are_read";
    if !have(test, &[Need::Program("time")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 256 << 20;
    for (kind, what) in [
        (tar::EntryType::XHeader, "PAX extended header"),
        (tar::EntryType::GNULongName, "GNU long name"),
        (tar::EntryType::GNULongLink, "GNU long link"),
    ] {
        let input = dir.path().join("hostile.tar");
        sparse_hostile(&input, kind, size);
        let (ok, stderr, max_rss_kib) = convert_cli(&input, &dir.path().join("out.erofs"));
        // Reading 256 MiB into memory would show here (the old code
        // peaked at twice the declared size).
        assert!(max_rss_kib < 64 << 10, "{what}: peak RSS {max_rss_kib} KiB");
        assert!(!ok, "{what}: converted");
        assert!(
            stderr.contains(&format!("{what} of {size} bytes (at most 1048576)"))
                && stderr.contains("at byte 0"),
            "{what}: {stderr}"
        );
    }
}

#[test]
fn error_lines_show_long_names_cut() {
    if !have("error_lines_show_long_names_cut", &[Need::Program("time")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A GNU long name within the bound, whose component is too long for
    // EROFS: the error names it, cut.
    let name = vec![b'a'; (1 << 20) - 1];
    let mut tar = header(
        b"././@LongLink",
        tar::EntryType::GNULongName,
        name.len() as u64,
    )
    .to_vec();
    tar.extend_from_slice(&name);
    tar.resize(tar.len().next_multiple_of(512), 0);
    tar.extend_from_slice(&file("short", b"x"));
    tar.extend_from_slice(&[0; 1024]);
    let input = dir.path().join("long.tar");
    std::fs::write(&input, &tar).unwrap();
    let (ok, stderr, _) = convert_cli(&input, &dir.path().join("out.erofs"));
    assert!(!ok);
    assert!(
        stderr.contains("path component of 1048575 bytes"),
        "{}",
        &stderr[..stderr.len().min(1000)]
    );
    assert!(
        stderr.contains("(1048575 bytes)"),
        "{}",
        &stderr[..stderr.len().min(1000)]
    );
    assert!(stderr.len() < 1000, "error of {} bytes", stderr.len());

    // Other untrusted values in messages are cut too.
    let mut tar = pax(tar::EntryType::XHeader, &[("uid", &"9".repeat(100_000))]);
    tar.extend_from_slice(&file("f", b"x"));
    tar.extend_from_slice(&[0; 1024]);
    std::fs::write(&input, &tar).unwrap();
    let (ok, stderr, _) = convert_cli(&input, &dir.path().join("out.erofs"));
    assert!(!ok);
    assert!(
        stderr.contains("bad PAX uid"),
        "{}",
        &stderr[..stderr.len().min(1000)]
    );
    assert!(stderr.len() < 1000, "error of {} bytes", stderr.len());
}

/// `globals` global PAX headers, then `entries` files.
fn globals_tar(globals: usize, entries: usize) -> Vec<u8> {
    let mut tar = Vec::new();
    for i in 0..globals {
        let mtime = format!("{}.5", 1_600_000_000 + i);
        tar.extend_from_slice(&pax(tar::EntryType::XGlobalHeader, &[("mtime", &mtime)]));
    }
    for i in 0..entries {
        tar.extend_from_slice(&file(&format!("d{}/f{i}", i % 100), b""));
    }
    tar.extend_from_slice(&[0; 1024]);
    tar
}

/// Seconds `convert` (index mode, in this process) takes on `tar`.
fn time_convert(dir: &Path, tar: &[u8]) -> Duration {
    let input = dir.join("in.tar");
    std::fs::write(&input, tar).unwrap();
    let start = Instant::now();
    convert(&input, &dir.join("out.erofs"), &ConvertOptions::default()).unwrap();
    start.elapsed()
}

#[test]
fn global_pax_records_cost_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let (globals, entries) = (20_000, 5_000);
    // Each part alone, then both: re-applying every global record to every
    // entry (the old cost, 10^8 record applications here) makes the
    // combination far slower than the sum of its parts.
    let alone = time_convert(dir.path(), &globals_tar(globals, 0))
        + time_convert(dir.path(), &globals_tar(0, entries));
    let both = time_convert(dir.path(), &globals_tar(globals, entries));
    assert!(
        both < alone * 3 + Duration::from_secs(1),
        "{globals} globals and {entries} entries: {both:?}, parts alone {alone:?}"
    );
    // And the last global value is the one in force.
    let input = dir.path().join("in.tar");
    let image = erofs_fuse::Image::open(&dir.path().join("out.erofs"), &{
        erofs_fuse::OpenOptions {
            devices: vec![input],
            ..Default::default()
        }
    })
    .unwrap();
    let manifest = erofs_fuse::manifest::manifest(&image).unwrap().join("\n");
    let last = format!("\"mtime\": {}500000000", 1_600_000_000 + globals - 1);
    assert!(
        manifest.contains("\"path\": \"/d0/f0\"") && manifest.contains(&last),
        "{}",
        &manifest[..manifest.len().min(2000)]
    );
}

fn convert_bytes(dir: &Path, tar: &[u8], aufs: bool) -> Result<std::path::PathBuf, String> {
    let input = dir.join("in.tar");
    std::fs::write(&input, tar).unwrap();
    let output = dir.join("out.erofs");
    let options = ConvertOptions {
        mode: Mode::Full,
        aufs,
        ..Default::default()
    };
    convert(&input, &output, &options).map_err(|e| e.to_string())?;
    Ok(output)
}

fn fsck_clean(image: &Path) {
    let image = erofs_fuse::Image::open(image, &Default::default()).unwrap();
    let report = erofs_fuse::fsck::fsck(&image, &Default::default());
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn whiteouts_of_dot_and_dot_dot_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["d/.wh..", "d/.wh...", ".wh..", ".wh...", "d/.wh."] {
        let mut tar = file("d/keep", b"x");
        tar.extend_from_slice(&file(name, b""));
        tar.extend_from_slice(&[0; 1024]);
        let err = convert_bytes(dir.path(), &tar, true).unwrap_err();
        assert!(
            err.contains(&format!("'{name}'")) && err.contains("whiteout"),
            "{name}: {err}"
        );
        // Without --aufs the name is an ordinary file's, and the image
        // checks clean.
        let image = convert_bytes(dir.path(), &tar, false).unwrap();
        fsck_clean(&image);
    }
}

/// A tar with one file `depth` levels deep (`depth - 1` directories).
fn deep_tar(depth: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let path = format!("{}f", "d/".repeat(depth - 1));
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, &path, &b"x"[..]).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn convert_refuses_paths_deeper_than_the_readers_follow() {
    let dir = tempfile::tempdir().unwrap();
    let limit = erofs_fuse::reader::MAX_WALK_DEPTH;
    // At the limit: converted, and fsck and the walk (manifest; extract
    // walks the same way) accept it.
    let image = convert_bytes(dir.path(), &deep_tar(limit), false).unwrap();
    fsck_clean(&image);
    let opened = erofs_fuse::Image::open(&image, &Default::default()).unwrap();
    let manifest = erofs_fuse::manifest::manifest(&opened).unwrap();
    assert_eq!(manifest.len(), limit + 1);
    // One deeper: refused, naming the entry.
    let err = convert_bytes(dir.path(), &deep_tar(limit + 1), false).unwrap_err();
    assert!(
        err.contains("tar entry 'd/d/") && err.contains(&format!("more than {limit} levels")),
        "{}",
        &err[..err.len().min(1000)]
    );
    assert!(err.len() < 1000, "error of {} bytes", err.len());
}

/// An image (built with the library, which applies no depth policy) with
/// one empty directory `depth` levels deep.
fn deep_image(dir: &Path, depth: usize) -> std::path::PathBuf {
    use erofs_fuse::mkfs::{BuildOptions, DataSource, ImageBuilder, Node, NodeData, Tree};
    let mut tree = Tree::new(0o755, 0, 0, 0);
    let mut parent = Tree::ROOT;
    for _ in 0..depth {
        let node = tree.add(Node {
            mode: 0o040755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Default::default(),
            data: NodeData::Dir(Default::default()),
        });
        tree.link(parent, b"d".to_vec(), node);
        parent = node;
    }
    let path = dir.join(format!("deep-{depth}.erofs"));
    let builder = ImageBuilder::new(File::create(&path).unwrap(), 12).unwrap();
    let options = BuildOptions {
        source: DataSource::Image,
        uuid: [0; 16],
        end_align: 0,
    };
    builder.finish(&tree, &options).unwrap();
    path
}

#[test]
fn readers_refuse_exactly_what_convert_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let limit = erofs_fuse::format::MAX_PATH_DEPTH;
    assert_eq!(erofs_fuse::reader::MAX_WALK_DEPTH, limit);
    // At the limit any entry is fine, a directory too (before, fsck and
    // the walk refused directories 2048 deep, which convert made).
    let ok = deep_image(dir.path(), limit);
    fsck_clean(&ok);
    let image = erofs_fuse::Image::open(&ok, &Default::default()).unwrap();
    assert_eq!(
        erofs_fuse::manifest::manifest(&image).unwrap().len(),
        limit + 1
    );
    // One deeper: refused by both.
    let deep = deep_image(dir.path(), limit + 1);
    let image = erofs_fuse::Image::open(&deep, &Default::default()).unwrap();
    let report = erofs_fuse::fsck::fsck(&image, &Default::default());
    assert_eq!(report.problem_count, 1, "{report:?}");
    let err = erofs_fuse::manifest::manifest(&image)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("deeper than {limit}")), "{err}");
    assert!(err.len() < 1000, "error of {} bytes", err.len());
}
