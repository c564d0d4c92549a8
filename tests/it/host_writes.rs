//! Writes as root into places another user can write: `extract` into a
//! DEST that user can write or read, `convert` and `store add` into a
//! directory where that user planted symlinks. The other user is a real
//! account made by the test (see host_writes/attack.rs), racing from its
//! own process for a few seconds (EROFS_FUSE_ATTACK_SECS, default 3).
//! Whatever it does, root's 0600 files keep their mode, owner and content,
//! private files of the image are never opened by it, and nothing that
//! was there before is removed or written through.

#[path = "host_writes/attack.rs"]
mod attack;
use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use attack::{OtherUser, Victim};
use common::*;
use erofs_fuse::convert::{convert, ConvertOptions, Mode};
use erofs_fuse::extract::{extract, ExtractOptions};

/// What the attack tests need.
const ATTACK_NEEDS: &[Need] = &[
    Need::Root,
    Need::Program("useradd"),
    Need::Program("userdel"),
    Need::Program("setpriv"),
];

/// How long each race runs.
fn attack_time() -> Duration {
    let secs = std::env::var("EROFS_FUSE_ATTACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// Not a test: the attacker process's entry point (does nothing unless
/// this binary was started as the attacker).
#[test]
fn attacker_main() {
    attack::attacker_main();
}

/// The attacker process, killed if the test ends early.
struct Attack(Child);

impl Attack {
    /// Waits for it to finish: its exit status (success: it ran to its
    /// deadline and found nothing to report).
    fn finish(mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }
}

/// A user for `test`'s attack, or None (skipped loudly) when it cannot run
/// this binary.
fn attacker(test: &str, tag: &str) -> Option<OtherUser> {
    let user = OtherUser::create(tag);
    if user.can_run_tests() {
        return Some(user);
    }
    skip(
        test,
        "a test binary the other user can run (its path is not reachable)",
    );
    None
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One tar entry for [`image_from`].
enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, usize),
    Symlink(&'a str, &'a str),
    Fifo(&'a str),
    HardLink(&'a str, &'a str),
}

/// A full image of `items`, written into `dir`.
fn image_from(dir: &Path, items: &[Item]) -> erofs_fuse::Image {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        let (path, data) = match *item {
            Item::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                (path, vec![])
            }
            Item::File(path, mode, size) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(size as u64);
                (path, vec![b'x'; size])
            }
            Item::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_link_name(target).unwrap();
                (path, vec![])
            }
            Item::Fifo(path) => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(0o666);
                (path, vec![])
            }
            Item::HardLink(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o666);
                header.set_link_name(target).unwrap();
                (path, vec![])
            }
        };
        builder
            .append_data(&mut header, path, data.as_slice())
            .unwrap();
    }
    let tar = dir.join("image.tar");
    std::fs::write(&tar, builder.into_inner().unwrap()).unwrap();
    let image = dir.join("image.erofs");
    let options = ConvertOptions {
        mode: Mode::Full,
        ..Default::default()
    };
    convert(&tar, &image, &options).unwrap();
    erofs_fuse::Image::open(&image, &Default::default()).unwrap()
}

/// A root-owned directory others may enter (tempdirs are 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn extract_never_follows_entries_swapped_for_symlinks() {
    if !have(
        "extract_never_follows_entries_swapped_for_symlinks",
        ATTACK_NEEDS,
    ) {
        return;
    }
    let dir = open_tempdir();
    // Files sort (and so extract) before the directories.
    let names: Vec<String> = (0..150).map(|i| format!("a{i:03}")).collect();
    let dirs: Vec<String> = (0..30).map(|i| format!("d{i:02}")).collect();
    let inner: Vec<String> = dirs.iter().map(|d| format!("{d}/x")).collect();
    let mut items: Vec<Item> = Vec::new();
    for d in &dirs {
        items.push(Item::Dir(d, 0o777));
    }
    for f in &inner {
        items.push(Item::File(f, 0o666, 4096));
    }
    for f in &names {
        items.push(Item::File(f, 0o4777, 16384));
    }
    items.push(Item::Fifo("p0"));
    items.push(Item::Symlink("s0", "a000"));
    items.push(Item::HardLink("z0", "a149"));
    let image = image_from(dir.path(), &items);
    let victim = Victim::new(dir.path(), "victim");
    let base = dir.path().join("rounds");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();

    let done = dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    let Some(user) = attacker("extract_never_follows_entries_swapped_for_symlinks", "s") else {
        return;
    };
    let time = attack_time();
    let attack = Attack(user.start_attack("swap", &base, &victim.path, time));
    let start = Instant::now();
    let (mut rounds, mut failed) = (0, 0);
    while start.elapsed() < time {
        let dest = base.join(format!("r{rounds}"));
        std::fs::create_dir(&dest).unwrap();
        user.give(&dest);
        if let Err(e) = extract(&image, &dest, &ExtractOptions::default()) {
            if failed < 5 {
                eprintln!("round {rounds}: {e}");
            }
            failed += 1;
        }
        victim.assert_intact(&format!("extraction round {rounds}"));
        // Out of the attacker's sight (it may still be adding to it).
        std::fs::rename(&dest, done.join(format!("r{rounds}"))).unwrap();
        rounds += 1;
    }
    let status = attack.finish();
    victim.assert_intact("after the attack");
    assert!(
        status.success(),
        "the attacker did not run to its end: {status}"
    );
    eprintln!("{rounds} extractions raced, {failed} stopped by the swaps");
    assert!(rounds > 0);
}

#[test]
fn extract_never_lets_another_user_open_a_private_file() {
    if !have(
        "extract_never_lets_another_user_open_a_private_file",
        ATTACK_NEEDS,
    ) {
        return;
    }
    let dir = open_tempdir();
    let files: Vec<String> = (0..150).map(|i| format!("secret{i:03}")).collect();
    let dirs: Vec<String> = (0..10).map(|i| format!("dir{i}")).collect();
    let inner: Vec<String> = dirs
        .iter()
        .flat_map(|d| (0..10).map(move |i| format!("{d}/secret{i}")))
        .collect();
    let mut items: Vec<Item> = dirs.iter().map(|d| Item::Dir(d, 0o755)).collect();
    items.extend(inner.iter().map(|f| Item::File(f, 0o600, 32768)));
    items.extend(files.iter().map(|f| Item::File(f, 0o600, 32768)));
    let image = image_from(dir.path(), &items);
    let base = dir.path().join("rounds");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();

    let Some(user) = attacker("extract_never_lets_another_user_open_a_private_file", "r") else {
        return;
    };
    let time = attack_time();
    let unused = dir.path().join("unused");
    let attack = Attack(user.start_attack("read", &base, &unused, time));
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < time {
        // An existing empty DEST others may enter (root's, 0755).
        let dest = base.join(format!("r{rounds}"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        extract(&image, &dest, &ExtractOptions::default()).unwrap();
        std::fs::remove_dir_all(&dest).unwrap();
        rounds += 1;
    }
    let status = attack.finish();
    assert!(
        status.success(),
        "the other user opened a 0600 file during extraction ({status}; its stderr says which)"
    );
    eprintln!("{rounds} extractions raced");
    assert!(rounds > 0);
}

#[test]
fn extract_refuses_a_destination_that_is_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_from(dir.path(), &[Item::File("f", 0o644, 10)]);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let dest = dir.path().join("dest");
    std::os::unix::fs::symlink(&elsewhere, &dest).unwrap();
    for given in [dest.clone(), dir.path().join("dest/")] {
        let err = extract(&image, &given, &ExtractOptions::default()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
    let out = run(Command::new(bin())
        .arg("extract")
        .arg(dir.path().join("image.erofs"))
        .arg(&dest));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// A copy of the fixture layer.tar.gz in `dir`.
fn layer_gz(dir: &Path) -> PathBuf {
    let gz = dir.join("layer.tar.gz");
    std::fs::copy(fixture("layer.tar.gz"), &gz).unwrap();
    gz
}

#[test]
fn convert_never_writes_through_planted_symlinks() {
    if !have(
        "convert_never_writes_through_planted_symlinks",
        ATTACK_NEEDS,
    ) {
        return;
    }
    let dir = open_tempdir();
    let gz = layer_gz(dir.path());
    let victims: Vec<Victim> = (0..6)
        .map(|i| Victim::new(dir.path(), &format!("victim{i}")))
        .collect();
    // An output directory the other user owns, with its symlinks at every
    // name convert used to open: OUTPUT, OUTPUT.tmp, OUTPUT.tar, the
    // append temporary and a --tar-out.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let user = OtherUser::create("c");
    user.give(&out);
    let plants = [
        "layer.erofs",
        "layer.erofs.tmp",
        "layer.tar",
        "app.erofs.tar.tmp",
        "app.erofs.tmp",
        "named.tar",
    ];
    for (name, victim) in plants.iter().zip(&victims) {
        user.plant_symlink(&victim.path, &out.join(name));
    }
    let runs = [
        ("layer.erofs", ConvertOptions::default()),
        (
            "app.erofs",
            ConvertOptions {
                append_tar: true,
                ..Default::default()
            },
        ),
        (
            "tarout.erofs",
            ConvertOptions {
                tar_out: Some(out.join("named.tar")),
                ..Default::default()
            },
        ),
    ];
    for (name, options) in &runs {
        let result = convert(&gz, &out.join(name), options);
        for v in &victims {
            v.assert_intact(&format!("convert to {name}"));
        }
        if *name == "layer.erofs" {
            // The implied layer.tar is not a name the user gave: what is
            // there stays, and convert says so.
            let err = result.expect_err("convert replaced a layer.tar it did not create");
            assert!(err.to_string().contains("already exists"), "{err}");
            assert!(out.join("layer.tar").is_symlink());
            continue;
        }
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!out.join(name).is_symlink());
    }
    // Named by the user: replaced by a new file, never written through.
    assert!(!out.join("named.tar").is_symlink());
}

#[test]
fn store_add_never_removes_what_it_did_not_create() {
    if !have(
        "store_add_never_removes_what_it_did_not_create",
        ATTACK_NEEDS,
    ) {
        return;
    }
    let dir = open_tempdir();
    let gz = layer_gz(dir.path());
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let user = OtherUser::create("a");
    user.give(&store);
    // The temporary name `store add` used (.add-PID), planted beforehand.
    let planted = store.join(format!(".add-{}", std::process::id()));
    let status = user
        .command("sh")
        .arg("-c")
        .arg("mkdir \"$0\" && echo mine > \"$0/keep\"")
        .arg(&planted)
        .status()
        .unwrap();
    assert!(status.success());
    let info = erofs_fuse::store::layout::add(&store, &gz, false).unwrap();
    assert_eq!(std::fs::read(planted.join("keep")).unwrap(), b"mine\n");
    let layer = store.join(&info.compressed_digest);
    assert!(layer.join("layer.erofs").is_file() && layer.join("info").is_file());
    // Nothing of the run is left besides the layer.
    let mut names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_failed_convert_leaves_an_existing_tar_intact() {
    let dir = tempfile::tempdir().unwrap();
    let gz = std::fs::read(fixture("layer.tar.gz")).unwrap();
    let cut = dir.path().join("cut.tar.gz");
    std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    // layer.erofs's tar would be layer.tar: someone's file, already there.
    let tar = dir.path().join("layer.tar");
    std::fs::write(&tar, b"precious").unwrap();
    let out = dir.path().join("layer.erofs");
    assert!(convert(&cut, &out, &ConvertOptions::default()).is_err());
    assert_eq!(std::fs::read(&tar).unwrap(), b"precious");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["cut.tar.gz", "layer.tar"]);
}

#[test]
fn convert_refuses_outputs_that_are_the_input_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let gz = layer_gz(dir.path());
    let tar = dir.path().join("in.tar");
    std::fs::copy(fixture("tar-index.tar"), &tar).unwrap();
    let x_tar = dir.path().join("x.tar");
    let same_out = dir.path().join("o.erofs");
    let with_tar_out = |path: &Path| ConvertOptions {
        tar_out: Some(path.to_path_buf()),
        ..Default::default()
    };
    let cases = [
        // OUTPUT is the input.
        (tar.clone(), tar.clone(), ConvertOptions::default()),
        (gz.clone(), gz.clone(), ConvertOptions::default()),
        // OUTPUT named x.tar: its implied tar is x.tar too.
        (gz.clone(), x_tar.clone(), ConvertOptions::default()),
        // --tar-out is OUTPUT, or the input.
        (gz.clone(), same_out.clone(), with_tar_out(&same_out)),
        (gz.clone(), dir.path().join("p.erofs"), with_tar_out(&gz)),
    ];
    let original_gz = std::fs::read(&gz).unwrap();
    let original_tar = std::fs::read(&tar).unwrap();
    for (input, output, options) in &cases {
        let result = convert(input, output, options);
        assert!(
            result.is_err(),
            "{} -> {} (tar-out {:?}) was accepted",
            input.display(),
            output.display(),
            options.tar_out
        );
    }
    assert_eq!(std::fs::read(&gz).unwrap(), original_gz);
    assert_eq!(std::fs::read(&tar).unwrap(), original_tar);
    assert!(!x_tar.exists() && !same_out.exists());
}

#[test]
fn a_deep_extraction_fits_a_small_descriptor_limit() {
    if !have(
        "a_deep_extraction_fits_a_small_descriptor_limit",
        &[Need::Program("prlimit")],
    ) {
        return;
    }
    const DEPTH: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let mut path = String::new();
    let mut dirs = Vec::new();
    for _ in 0..DEPTH {
        path.push_str("a/");
        dirs.push(path.trim_end_matches('/').to_string());
    }
    let file = format!("{path}deep");
    let mut items: Vec<Item> = dirs.iter().map(|d| Item::Dir(d, 0o755)).collect();
    items.push(Item::File(&file, 0o644, 5));
    image_from(dir.path(), &items);
    let dest = dir.path().join("dest");
    // One descriptor per level: far more than a soft limit of 128.
    let out = run(Command::new("prlimit")
        .arg("--nofile=128:")
        .arg(bin())
        .arg("extract")
        .arg(dir.path().join("image.erofs"))
        .arg(&dest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dest.join(&file)).unwrap(), b"xxxxx");
}

#[test]
fn hard_links_across_directories_extract_as_one_inode() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let items = [
        Item::Dir("a", 0o755),
        Item::Dir("a/deep", 0o755),
        Item::File("a/deep/first", 0o640, 3),
        Item::Dir("b", 0o555),
        Item::Dir("b/c", 0o755),
        Item::HardLink("b/c/second", "a/deep/first"),
        Item::HardLink("third", "a/deep/first"),
        Item::Symlink("a/link", "deep/first"),
        Item::HardLink("b/link2", "a/link"),
    ];
    let image = image_from(dir.path(), &items);
    let dest = dir.path().join("dest");
    extract(&image, &dest, &ExtractOptions::default()).unwrap();
    let ino = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("a/deep/first"), ino("b/c/second"));
    assert_eq!(ino("a/deep/first"), ino("third"));
    assert_eq!(ino("a/link"), ino("b/link2"));
    let meta = std::fs::metadata(dest.join("third")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.nlink()), (0o640, 3));
    let b = std::fs::metadata(dest.join("b")).unwrap();
    assert_eq!(b.mode() & 0o7777, 0o555);
}
