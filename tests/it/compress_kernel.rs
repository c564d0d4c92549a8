//! The kernel reads every `convert --compress` image as its source: each
//! algorithm, 4 KiB and 64 KiB pclusters, without and with `-E
//! ztailpacking,dedupe` (and each alone for lz4hc), on the boundary tar,
//! a tar of duplicated data and the fixture layers (as the uncompressed
//! full image of the same tar), on the fixtures' tree (plain-4k.erofs as
//! the kernel mounts it, converted as a directory), and on 8 random trees from
//! scripts/gen_tree.py converted as directories (`convert DIR`, equal to
//! the source tree's manifest; one algorithm with the options per tree).
use crate::common;
use crate::compress_convert::{
    boundary_tar, dedupe_tar, features, full_image, inline_files, split_spec, DEDUPE, ZTAILPACKING,
};

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ALGORITHMS: &[&str] = &["lz4", "lz4hc", "zstd", "lzma", "deflate"];

/// A random tree from gen_tree.py.
fn random_tree(dir: &Path, seed: u32) -> PathBuf {
    let tree = dir.join(format!("tree-{seed}"));
    run_ok(
        Command::new("python3")
            .arg(script("gen_tree.py"))
            .arg(&tree)
            .args(["--seed", &seed.to_string(), "--files", "150"]),
    );
    tree
}

/// `convert [--compress ALGO -E OPTS -C PCLUSTER] DIR OUT` with the
/// binary, SPEC being `ALGO[,OPT...]`.
fn convert_dir(tree: &Path, out: &Path, spec: Option<(&str, u64)>) {
    let mut cmd = Command::new(bin());
    cmd.args(["convert", "-q"]);
    if let Some((spec, pcluster)) = spec {
        let (alg, extended) = split_spec(spec);
        cmd.args(["--compress", &alg, "-C", &pcluster.to_string()]);
        cmd.args(["--workers", "2"]);
        for opt in extended {
            cmd.args(["-E", &opt]);
        }
    }
    run_ok(cmd.arg(tree).arg(out));
}

/// Checks that `image`, made with `spec`, uses the layouts it names: the
/// ZTAILPACKING bit exactly when some file has an inline pcluster (at
/// least one if `inline`), the DEDUPE bit if `shared`, and only with
/// dedupe. Returns the number of inline files.
fn check_layouts(image: &Path, spec: &str, inline: bool, shared: bool) -> usize {
    let (count, bits) = (inline_files(image), features(image));
    let what = format!("{}: {spec}", image.display());
    assert!(
        spec.contains("ztailpacking") || count == 0,
        "{what}: inline"
    );
    assert!(!inline || count > 0, "{what}: no inline pcluster");
    assert_eq!(bits & ZTAILPACKING != 0, count > 0, "{what}: ZTAILPACKING");
    assert!(!shared || bits & DEDUPE != 0, "{what}: no DEDUPE");
    assert!(
        bits & DEDUPE == 0 || spec.contains("dedupe"),
        "{what}: DEDUPE"
    );
    count
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
    let tars = [
        boundary_tar(dir.path()),
        fixture("tar-index.tar"),
        fixture("docs-layer.tar.gz"),
        // The OCI fixture's second layer: a whiteout, a changed file.
        common::registry::oci_fixture("gzip")
            .join("blobs/sha256/4752d08738716f1e1bce13145a9a3045154db90a6fb4c3ead8a12b383c37c139"),
        dedupe_tar(dir.path()),
    ];
    for (i, tar) in tars.iter().enumerate() {
        let plain = full_image(tar, &dir.path().join("plain.erofs"), None);
        let expected = tree_manifest(KernelMount::new(&plain, &[]).path());
        let mut specs = Vec::new();
        for (j, alg) in ALGORITHMS.iter().enumerate() {
            // The tar of duplicates is there for the options.
            if i + 1 < tars.len() {
                specs.push((alg.to_string(), 4096));
                specs.push((alg.to_string(), 65536));
            }
            // With the options, one pcluster size per tar and algorithm:
            // across the tars, each algorithm gets both.
            let pcluster = [4096, 65536][(i + j) % 2];
            specs.push((format!("{alg},ztailpacking,dedupe"), pcluster));
        }
        specs.push(("lz4hc,ztailpacking".into(), 65536));
        specs.push(("lz4hc,dedupe".into(), 4096));
        // Which tars have tails that compress inline (with ztailpacking),
        // and pclusters equal to others (with dedupe): the copies in the
        // duplicates' tar; the text files' first pclusters in the boundary
        // tar at 4 KiB (at 64 KiB each covers a whole file, of its size).
        let inline = [0, 2, 4].contains(&i);
        let shared = |pcluster| i == 4 || (i == 0 && pcluster == 4096);
        for (spec, pcluster) in specs {
            let name = format!("{spec}-{pcluster}.erofs");
            let image = full_image(tar, &dir.path().join(&name), Some((&spec, pcluster, 2)));
            check_layouts(
                &image,
                &spec,
                inline && spec.contains("ztailpacking"),
                shared(pcluster) && spec.contains("dedupe"),
            );
            let got = tree_manifest(KernelMount::new(&image, &[]).path());
            if let Some(diff) = manifest_diff(&expected, &got, 10) {
                panic!("{}: {name} (kernel) differs:\n{diff}", tar.display());
            }
            std::fs::remove_file(&image).unwrap();
        }
    }
}

#[test]
fn kernel_reads_the_fixture_tree_converted_from_its_mount() {
    if !have(
        "kernel_reads_the_fixture_tree_converted_from_its_mount",
        &[Need::Root, Need::KernelErofs],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The fixtures' tree (make_tree.py), as the kernel shows plain-4k.erofs.
    let source = KernelMount::new(&fixture("plain-4k.erofs"), &[]);
    let expected = tree_manifest(source.path());
    for (i, alg) in ALGORITHMS.iter().enumerate() {
        let with_options = format!("{alg},ztailpacking,dedupe");
        let pcluster = [4096, 65536][i % 2];
        for spec in [alg.to_string(), with_options] {
            let image = dir.path().join("tree.erofs");
            convert_dir(source.path(), &image, Some((spec.as_str(), pcluster)));
            let packs = spec.contains("ztailpacking");
            check_layouts(&image, &spec, packs, false);
            let got = tree_manifest(KernelMount::new(&image, &[]).path());
            if let Some(diff) = manifest_diff(&expected, &got, 10) {
                panic!("fixture tree {spec} -C{pcluster} (kernel) differs:\n{diff}");
            }
        }
    }
}

#[test]
fn kernel_reads_trees_converted_from_directories() {
    if !have(
        "kernel_reads_trees_converted_from_directories",
        &[Need::Root, Need::KernelErofs],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=8 {
        let tree = random_tree(dir.path(), seed);
        let expected = tree_manifest(&tree);
        let mut specs = vec![None];
        specs.extend(ALGORITHMS.iter().map(|a| Some((*a, 4096))));
        specs.push(Some(("lz4hc", 65536)));
        specs.push(Some(("zstd", 65536)));
        let extended = [
            "lz4,ztailpacking,dedupe",
            "lz4hc,ztailpacking,dedupe",
            "zstd,ztailpacking,dedupe",
            "lzma,ztailpacking,dedupe",
            "deflate,ztailpacking,dedupe",
        ];
        let pcluster = if seed % 2 == 0 { 65536 } else { 4096 };
        specs.push(Some((extended[seed as usize % extended.len()], pcluster)));
        for spec in specs {
            let image = dir.path().join("tree.erofs");
            convert_dir(&tree, &image, spec);
            if let Some((spec, _)) = spec {
                check_layouts(&image, spec, false, false);
            }
            let got = tree_manifest(KernelMount::new(&image, &[]).path());
            if let Some(diff) = manifest_diff(&expected, &got, 10) {
                panic!("tree {seed} {spec:?} (kernel) differs from the source:\n{diff}");
            }
        }
        std::fs::remove_dir_all(&tree).unwrap();
    }
}
