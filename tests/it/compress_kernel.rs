//! The kernel reads every `convert --compress` image as the uncompressed
//! full image of the same tar: each algorithm, 4 KiB and 64 KiB
//! pclusters, on the boundary tar, the fixture layers and 8 random trees
//! from scripts/gen_tree.py (tarred by GNU tar in gnu format: the tar front end
//! refuses some of GNU tar's pax records for these trees, so no xattrs).
use crate::common;
use crate::compress_convert::{boundary_tar, full_image};

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ALGORITHMS: &[&str] = &["lz4", "lz4hc", "zstd", "lzma", "deflate"];

/// A random tree from gen_tree.py, as a GNU-format tar.
fn random_tree_tar(dir: &Path, seed: u32) -> PathBuf {
    let tree = dir.join(format!("tree-{seed}"));
    run_ok(
        Command::new("python3")
            .arg(script("gen_tree.py"))
            .arg(&tree)
            .args(["--seed", &seed.to_string(), "--files", "150"]),
    );
    let tar = dir.join(format!("tree-{seed}.tar"));
    run_ok(
        Command::new("tar")
            .args(["--format=gnu", "--numeric-owner"])
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    );
    tar
}

#[test]
fn kernel_reads_compressed_images_as_uncompressed_ones() {
    if !have(
        "kernel_reads_compressed_images_as_uncompressed_ones",
        &[Need::Root, Need::KernelErofs],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut tars = vec![
        boundary_tar(dir.path()),
        fixture("tar-index.tar"),
        fixture("docs-layer.tar.gz"),
    ];
    tars.extend((1..=8).map(|seed| random_tree_tar(dir.path(), seed)));
    for tar in &tars {
        let plain = full_image(tar, &dir.path().join("plain.erofs"), None);
        let expected = tree_manifest(KernelMount::new(&plain, &[]).path());
        for alg in ALGORITHMS {
            for pcluster in [4096, 65536] {
                let name = format!("{alg}-{pcluster}.erofs");
                let image = full_image(tar, &dir.path().join(&name), Some((alg, pcluster, 2)));
                let got = tree_manifest(KernelMount::new(&image, &[]).path());
                if let Some(diff) = manifest_diff(&expected, &got, 10) {
                    panic!("{}: {name} (kernel) differs:\n{diff}", tar.display());
                }
            }
        }
    }
}
