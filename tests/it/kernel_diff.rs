//! Differential test against the kernel: random trees (scripts/gen_tree.py)
//! are packed with Debian's mkfs.erofs in several layouts, mounted with
//! `mount -t erofs -o loop,ro`, and the kernel's view (scripts/manifest.py
//! of the mount) must equal the library's manifest field by field, byte for
//! byte, and so must the same image mounted with erofs-fuse (st_blocks
//! too, compared by stat of every path of both mounts). Needs root,
//! kernel erofs, loop devices, FUSE and mkfs.erofs.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// mkfs.erofs layouts to cycle through; `BLOB` stands for a blob device path.
const LAYOUTS: &[&[&str]] = &[
    &[],
    &["-Eforce-inode-extended"],
    &["-Enoinline_data"],
    &["--chunksize=4096"],
    &["-x-1"],
    &["-Eforce-inode-compact", "--all-root", "--ignore-mtime"],
    &["--chunksize=65536", "--blobdev=BLOB"],
    &["--chunksize=8192", "-Eforce-chunk-indexes"],
    // Compressed: compact indexes, big pclusters, inline tails, full indexes.
    &["-zlz4"],
    &["-zlz4hc,9", "-C65536"],
    &["-zlz4", "-Eztailpacking"],
    &["-zlz4hc", "-Elegacy-compress", "-C16384"],
    &[
        "-zlz4hc,12",
        "-C32768",
        "-Eztailpacking,force-inode-extended",
    ],
];

/// Trees per run (two per layout); EROFS_FUSE_DIFF_TREES overrides.
fn tree_count() -> u64 {
    std::env::var("EROFS_FUSE_DIFF_TREES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(26)
}

#[test]
fn generated_trees_read_as_the_kernel_reads_them() {
    let needs = [
        Need::Root,
        Need::KernelErofs,
        Need::Fuse,
        Need::Program("fusermount3"),
        Need::Program("mkfs.erofs"),
        Need::Program("python3"),
    ];
    if !have("generated_trees_read_as_the_kernel_reads_them", &needs) {
        return;
    }
    let mut failures = Vec::new();
    for seed in 1..=tree_count() {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        run_ok(
            Command::new("python3")
                .arg(script("gen_tree.py"))
                .arg(&src)
                .args(["--seed", &seed.to_string()]),
        );
        let layout = LAYOUTS[(seed as usize - 1) % LAYOUTS.len()];
        let blob = work.path().join("blob");
        let image = work.path().join("image.erofs");
        let mut devices: Vec<PathBuf> = Vec::new();
        let mut mkfs = Command::new("mkfs.erofs");
        mkfs.arg("--quiet");
        for arg in layout {
            if arg.contains("BLOB") {
                mkfs.arg(arg.replace("BLOB", &blob.to_string_lossy()));
                devices.push(blob.clone());
            } else {
                mkfs.arg(arg);
            }
        }
        run_ok(mkfs.arg(&image).arg(&src));

        let mount = KernelMount::new(&image, &devices);
        let kernel = tree_manifest(mount.path());
        let options = erofs_fuse::OpenOptions {
            devices: devices.clone(),
            ..Default::default()
        };
        let ours = erofs_fuse::Image::open(&image, &options)
            .and_then(|img| erofs_fuse::manifest::manifest(&img))
            .map(|lines| lines.join("\n") + "\n");
        match ours {
            Ok(ours) => {
                if let Some(diff) = manifest_diff(&kernel, &ours, 8) {
                    failures.push(format!("seed {seed}, mkfs.erofs {layout:?}:\n{diff}"));
                }
            }
            Err(e) => failures.push(format!("seed {seed}, mkfs.erofs {layout:?}: {e}")),
        }
        // The same image served by erofs-fuse, walked like the kernel's.
        let fuse = FuseMount::new(&image, &devices, &[]);
        let served = tree_manifest(fuse.path());
        if let Some(diff) = manifest_diff(&kernel, &served, 8) {
            failures.push(format!(
                "seed {seed}, mkfs.erofs {layout:?}, erofs-fuse mount:\n{diff}"
            ));
        }
        // st_blocks (du) is not in the manifest: stat every path of both.
        if let Some(diff) = blocks_diff(&stat_blocks(mount.path()), &stat_blocks(fuse.path()), 8) {
            failures.push(format!(
                "seed {seed}, mkfs.erofs {layout:?}, erofs-fuse st_blocks: {diff}"
            ));
        }
        drop(fuse);
        eprintln!(
            "seed {seed}: mkfs.erofs {layout:?}: {} entries compared",
            kernel.lines().count()
        );
    }
    assert!(
        failures.is_empty(),
        "erofs-fuse differs from the kernel:\n{}",
        failures.join("\n")
    );
}
