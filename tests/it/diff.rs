//! `diff` (fast tier): an upper directory built by hand over a small lower
//! layer gives exactly the expected members, the same bytes twice and from
//! a second identical tree, times clamped by SOURCE_DATE_EPOCH, refusals
//! of redirect/metacopy uppers and of files that change while read; and
//! tar+zstd input (convert, store add, a damaged stream).
use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use erofs_fuse::convert::{convert, ConvertOptions, Mode};
use erofs_fuse::diff::{diff_to, Compression, DiffError, DiffOptions, OverlayXattrs};
use erofs_fuse::overlay::Stack;

/// A lower layer: `etc/` (0755, mtime 1000), `etc/passwd`, `etc/group`,
/// `usr/bin/sh`, converted to a full image and merged alone.
pub(crate) fn lower(dir: &Path) -> Stack {
    let mut builder = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, kind: tar::EntryType, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_mtime(1000);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, data).unwrap();
    };
    entry("etc/", tar::EntryType::Directory, b"");
    entry("etc/passwd", tar::EntryType::Regular, b"root:x:0:0\n");
    entry("etc/group", tar::EntryType::Regular, b"root:x:0:\n");
    entry("usr/", tar::EntryType::Directory, b"");
    entry("usr/bin/", tar::EntryType::Directory, b"");
    entry("usr/bin/sh", tar::EntryType::Regular, b"#!\n");
    let tar = dir.join("lower.tar");
    fs::write(&tar, builder.into_inner().unwrap()).unwrap();
    let image = dir.join("lower.erofs");
    let options = ConvertOptions {
        mode: Mode::Full,
        ..Default::default()
    };
    convert(&tar, &image, &options).unwrap();
    let image = erofs_fuse::Image::open(&image, &Default::default()).unwrap();
    Stack::new(vec![Arc::new(image)]).unwrap()
}

/// Sets `path`'s mtime (not following a symlink).
fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(secs, nsec);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

/// A whiteout (0:0 character device) at `path`.
fn whiteout(path: &Path) {
    use nix::sys::stat::{mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
}

/// The upper directory every test starts from, with fixed times:
/// - `etc/` as below (same mode, owner, mtime): written only as the
///   parent of a whiteout of `passwd` and a new `hosts` (0600, user xattr);
/// - `gone`: a whiteout no lower layer has a name for (kept);
/// - `usr/`: opaque (user.overlay.opaque=y) holding `new`, hard linked
///   as `new2`, and a symlink `ln` to /etc/passwd.
fn upper(dir: &Path) -> PathBuf {
    let up = dir.join("upper");
    fs::create_dir_all(up.join("etc")).unwrap();
    fs::set_permissions(&up, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(up.join("usr")).unwrap();
    fs::set_permissions(up.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(up.join("usr"), fs::Permissions::from_mode(0o755)).unwrap();
    whiteout(&up.join("etc/passwd"));
    fs::write(up.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    fs::set_permissions(up.join("etc/hosts"), fs::Permissions::from_mode(0o600)).unwrap();
    xattr::set(up.join("etc/hosts"), "user.note", b"a=b \0").unwrap();
    whiteout(&up.join("gone"));
    xattr::set(up.join("usr"), "user.overlay.opaque", b"y").unwrap();
    fs::write(up.join("usr/new"), b"new file").unwrap();
    fs::hard_link(up.join("usr/new"), up.join("usr/new2")).unwrap();
    symlink("/etc/passwd", up.join("usr/ln")).unwrap();
    for (path, secs) in [
        ("etc/passwd", 2000),
        ("etc/hosts", 2001),
        ("gone", 2002),
        ("usr/new", 2003),
        ("usr/ln", 2004),
        ("usr", 2005),
        ("", 2006),
    ] {
        set_mtime(&up.join(path), secs, 250_000_000);
    }
    set_mtime(&up.join("etc"), 1000, 0);
    up
}

pub(crate) fn run_diff(
    stack: &Stack,
    up: &Path,
    options: &DiffOptions,
) -> Result<Vec<u8>, DiffError> {
    let mut out = Vec::new();
    diff_to(stack, up, &mut out, options)?;
    Ok(out)
}

/// Each member as `TYPE PATH MODE MTIME [-> LINK] [xattrs]`.
pub(crate) fn members(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let mut line = format!(
            "{} {} {:o} {}",
            header.entry_type().as_byte() as char,
            String::from_utf8_lossy(&entry.path_bytes()),
            header.mode().unwrap(),
            header.mtime().unwrap()
        );
        if let Some(link) = entry.link_name_bytes() {
            line += &format!(" -> {}", String::from_utf8_lossy(&link));
        }
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for record in pax {
                let record = record.unwrap();
                let key = record.key().unwrap();
                if key != "mtime" {
                    line += &format!(" {key}={:?}", record.value_bytes());
                }
            }
        }
        out.push(line);
    }
    out
}

/// Whether the test can make files owned by 0:0 (as the lower layer's).
fn root(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        skip(
            test,
            "needs root (upper files owned by 0:0, as the lower layer's)",
        );
    }
    root
}

#[test]
fn diff_writes_the_changes_deterministically() {
    if !root("diff_writes_the_changes_deterministically") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    let up = upper(dir.path());
    let options = DiffOptions {
        overlay_xattrs: OverlayXattrs::User,
        compression: Compression::None,
        ..Default::default()
    };
    let tar = run_diff(&stack, &up, &options).unwrap();
    let expected = [
        "5 ./ 755 2006",
        "0 .wh.gone 0 2002",
        "5 etc/ 755 1000",
        "0 etc/.wh.passwd 0 2000",
        "0 etc/hosts 600 2001 SCHILY.xattr.user.note=[97, 61, 98, 32, 0]",
        "5 usr/ 755 2005",
        "0 usr/.wh..wh..opq 0 2005",
        "2 usr/ln 777 2004 -> /etc/passwd",
        "0 usr/new 644 2003",
        "1 usr/new2 644 2003 -> usr/new",
    ];
    assert_eq!(members(&tar), expected, "members");
    // The same bytes again, and from a second tree made the same way
    // (other inode numbers, ctimes, creation order of nothing).
    assert_eq!(run_diff(&stack, &up, &options).unwrap(), tar);
    let other = tempfile::tempdir().unwrap();
    let up2 = upper(other.path());
    assert_eq!(run_diff(&stack, &up2, &options).unwrap(), tar);
    // Compressed: decompresses to the same tar; the diffID is its digest.
    for compression in [Compression::Gzip, Compression::Zstd] {
        let options = DiffOptions {
            overlay_xattrs: OverlayXattrs::User,
            compression,
            ..Default::default()
        };
        let mut blob = Vec::new();
        let report = diff_to(&stack, &up, &mut blob, &options).unwrap();
        let again = run_diff(&stack, &up, &options).unwrap();
        assert_eq!(blob, again, "{compression:?} twice");
        let plain = match compression {
            Compression::Gzip => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut out)
                    .unwrap();
                out
            }
            _ => zstd::stream::decode_all(&blob[..]).unwrap(),
        };
        assert_eq!(plain, tar, "{compression:?}");
        assert_eq!(report.diff_id.to_string(), sha256_hex(&tar));
        assert_eq!(report.digest.to_string(), sha256_hex(&blob));
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[test]
fn a_changed_dir_is_written_and_epoch_clamps_times() {
    if !root("a_changed_dir_is_written_and_epoch_clamps_times") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    let up = upper(dir.path());
    // etc/ now differs from below by its mode only.
    fs::set_permissions(up.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(&up.join("etc"), 1000, 0);
    let options = DiffOptions {
        overlay_xattrs: OverlayXattrs::User,
        compression: Compression::None,
        source_date_epoch: Some(2003),
        ..Default::default()
    };
    let got = members(&run_diff(&stack, &up, &options).unwrap());
    assert_eq!(got[2], "5 etc/ 750 1000", "{got:#?}");
    // Times up to 2002.25 kept (with their nanoseconds), later ones 2003.
    let tar = run_diff(&stack, &up, &options).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut times = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let mut mtime = entry.header().mtime().unwrap().to_string();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for record in pax.map(|r| r.unwrap()) {
                if record.key().unwrap() == "mtime" {
                    mtime = record.value().unwrap().to_string();
                }
            }
        }
        times.push(format!("{path} {mtime}"));
    }
    assert_eq!(
        times,
        [
            "./ 2003",
            ".wh.gone 2002.25",
            "etc/ 1000",
            "etc/.wh.passwd 2000.25",
            "etc/hosts 2001.25",
            "usr/ 2003",
            "usr/.wh..wh..opq 2003",
            "usr/ln 2003",
            "usr/new 2003",
            "usr/new2 2003",
        ]
    );
}

#[test]
fn redirect_and_metacopy_uppers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    for (path, name, feature, ns) in [
        (
            "usr",
            "user.overlay.redirect",
            "redirect_dir",
            OverlayXattrs::User,
        ),
        (
            "etc/hosts",
            "trusted.overlay.metacopy",
            "metacopy",
            OverlayXattrs::Trusted,
        ),
    ] {
        let options = DiffOptions {
            overlay_xattrs: ns,
            ..Default::default()
        };
        let up = dir.path().join(format!("up-{feature}"));
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::create_dir_all(up.join("usr")).unwrap();
        fs::write(up.join("etc/hosts"), b"x").unwrap();
        if xattr::set(up.join(path), name, b"/x").is_err() {
            skip("diff refusals", &format!("cannot set {name} here"));
            continue;
        }
        let err = run_diff(&stack, &up, &options).unwrap_err().to_string();
        let shown = up.join(path).display().to_string();
        assert!(
            err.starts_with(&format!("{shown}: uses overlayfs {feature}")) && !err.contains('\n'),
            "{err}"
        );
    }
}

#[test]
fn a_file_changing_while_read_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    let up = upper(dir.path());
    let target = up.join("etc/hosts");
    let grown = target.clone();
    let options = DiffOptions {
        overlay_xattrs: OverlayXattrs::User,
        compression: Compression::None,
        read_hook: Some(Arc::new(move || {
            use std::io::Write;
            let mut file = fs::OpenOptions::new().append(true).open(&grown).unwrap();
            file.write_all(b"more").unwrap();
        })),
        ..Default::default()
    };
    let err = run_diff(&stack, &up, &options).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}: changed while being read", target.display())
    );
    // Rewritten in place, same size: only its mtime (set to 2001 by
    // upper()) and ctime tell.
    let rewritten = target.clone();
    let options = DiffOptions {
        overlay_xattrs: OverlayXattrs::User,
        read_hook: Some(Arc::new(move || {
            use std::os::unix::fs::FileExt;
            let file = fs::OpenOptions::new().write(true).open(&rewritten).unwrap();
            file.write_all_at(b"X", 0).unwrap();
        })),
        ..Default::default()
    };
    let err = run_diff(&stack, &up, &options).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}: changed while being read", target.display())
    );
    // A hook that changes nothing: no error.
    let options = DiffOptions {
        overlay_xattrs: OverlayXattrs::User,
        read_hook: Some(Arc::new(|| {})),
        ..Default::default()
    };
    run_diff(&stack, &up, &options).unwrap();
}

/// The CLI: `diff` to stdout prints the digests on stderr; the layer,
/// converted back, holds the whiteout for the name no lower has.
#[test]
fn cli_diff_to_stdout_and_back_through_convert() {
    let dir = tempfile::tempdir().unwrap();
    let _stack = lower(dir.path());
    let up = upper(dir.path());
    // A binary xattr with newlines: convert must read it back whole.
    fs::write(up.join("etc/bin"), b"").unwrap();
    xattr::set(up.join("etc/bin"), "user.bin", b"\n=\n").unwrap();
    let lower_image = dir.path().join("lower.erofs");
    let out = run_ok(
        Command::new(bin())
            .args(["diff", "--compression", "zstd", "--layer"])
            .arg(&lower_image)
            .arg(&up)
            .arg("-"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("digest sha256:") && stderr.contains("diffid sha256:"),
        "{stderr}"
    );
    let blob = dir.path().join("diff.tar.zst");
    fs::write(&blob, &out.stdout).unwrap();
    let image = dir.path().join("diff.erofs");
    let options = ConvertOptions {
        mode: Mode::Full,
        aufs: true,
        ..Default::default()
    };
    let report = convert(&blob, &image, &options).unwrap();
    assert_eq!(report.compression, erofs_fuse::convert::Compression::Zstd);
    let image = erofs_fuse::Image::open(&image, &Default::default()).unwrap();
    let gone = image.resolve(b"/gone").unwrap();
    assert_eq!(gone.kind.rdev(), (0, 0));
    assert_eq!(
        gone.kind.file_type(),
        erofs_fuse::format::FileType::CharDevice
    );
    let manifest = erofs_fuse::manifest::manifest(&image).unwrap().join("\n");
    assert!(manifest.contains("\"/usr/new2\""), "{manifest}");
    let bin_line = manifest
        .lines()
        .find(|l| l.contains("\"/etc/bin\""))
        .unwrap();
    assert!(bin_line.contains("\"user.bin\": \"0a3d0a\""), "{bin_line}");
}

/// tar+zstd input: `convert` gives the same image as from the plain tar;
/// `store add` takes it; a damaged stream is one line naming the file.
#[test]
fn zstd_layers_convert_and_damaged_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let _stack = lower(dir.path());
    let tar = fs::read(dir.path().join("lower.tar")).unwrap();
    let zst = dir.path().join("lower.tar.zst");
    fs::write(&zst, zstd::bulk::compress(&tar, 3).unwrap()).unwrap();
    let options = ConvertOptions {
        mode: Mode::Full,
        ..Default::default()
    };
    let from_zst = dir.path().join("zst.erofs");
    let report = convert(&zst, &from_zst, &options).unwrap();
    assert_eq!(report.tar_digest.unwrap().to_string(), sha256_hex(&tar));
    assert_eq!(
        fs::read(&from_zst).unwrap(),
        fs::read(dir.path().join("lower.erofs")).unwrap()
    );
    let store = dir.path().join("store");
    let out = run_ok(
        Command::new(bin())
            .args(["store", "add", "-q"])
            .arg(&store)
            .arg(&zst),
    );
    assert!(!out.stdout.is_empty());

    let mut bad = fs::read(&zst).unwrap();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    let damaged = dir.path().join("damaged.tar.zst");
    fs::write(&damaged, &bad).unwrap();
    let out = run(Command::new(bin())
        .arg("convert")
        .arg(&damaged)
        .arg(dir.path().join("damaged.erofs")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&damaged.display().to_string()) && stderr.contains("damaged zstd stream"),
        "{stderr}"
    );
}
