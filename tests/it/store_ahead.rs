//! Filling the kernel's page cache ahead of a reader of small files: a
//! file read from its start has the small files listed after it stored in
//! the page cache (seen with fincore, which maps without reading), with
//! the image's bytes; `--no-store-ahead` and the files' contents.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Whether any page of `path` is in the page cache.
fn resident(path: &Path) -> bool {
    let bytes = cached_bytes(path);
    bytes.unwrap_or_else(|| panic!("fincore gave no RES for {}", path.display())) > 0
}

/// A directory of 40 small files with distinct contents, as an image.
fn small_files_image(dir: &Path) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let tree = dir.join("tree/d");
    std::fs::create_dir_all(&tree).unwrap();
    let mut next = xorshift(25);
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            let len = 1000 + (next() % 9000) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            (format!("f{i:02}"), data)
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(tree.join(name), data).unwrap();
    }
    let image = dir.join("small.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "-q"])
            .arg(dir.join("tree"))
            .arg(&image),
    );
    (image, files)
}

#[test]
fn small_files_after_a_read_one_are_stored_ahead_with_their_bytes() {
    if !have(
        "small_files_after_a_read_one_are_stored_ahead_with_their_bytes",
        FUSE_ROOT,
    ) {
        return;
    }
    if which("fincore").is_none() {
        return skip("small_files_after_a_read_one_are_stored_ahead", "fincore");
    }
    let work = tempfile::tempdir().unwrap();
    let (image, files) = small_files_image(work.path());
    for ahead in [true, false] {
        let extra: &[&str] = if ahead { &[] } else { &["--no-store-ahead"] };
        let mount = FuseMount::new(&image, &[], extra);
        let d = mount.path().join("d");
        // The listing the kernel asks for (READDIRPLUS) orders the files.
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), files.len());
        assert!(!resident(&d.join(&names[1])), "cached before any read");
        std::fs::read(d.join(&names[0])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stored = false;
        while Instant::now() < deadline && !stored {
            stored = names[1..11].iter().all(|n| resident(&d.join(n)));
            std::thread::sleep(Duration::from_millis(20));
        }
        if ahead {
            assert!(stored, "the 10 files after the one read are not cached");
        } else {
            assert!(
                names[1..].iter().all(|n| !resident(&d.join(n))),
                "--no-store-ahead: files cached without a read"
            );
        }
        // What the cache holds is what the image holds.
        for (name, data) in &files {
            let got = std::fs::read(d.join(name)).unwrap();
            assert!(&got == data, "{name}: cached bytes differ");
        }
    }
}
