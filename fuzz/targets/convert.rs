//! `convert` on arbitrary bytes (tar, or gzip when they start with its
//! magic), in index and full mode. Whatever convert accepts, the reader
//! must read back clean: an image we write that fsck faults is a bug.
use std::path::Path;

use erofs_fuse::convert::{convert, ConvertOptions, Mode};
use erofs_fuse::fsck::{fsck, FsckLimits};
use erofs_fuse::{Image, OpenOptions};

use super::workdir;

fn check(image: &Path, devices: Vec<std::path::PathBuf>, what: &str) {
    let options = OpenOptions {
        devices,
        ..OpenOptions::default()
    };
    let image = Image::open(image, &options)
        .unwrap_or_else(|e| panic!("{what}: convert wrote an image that does not open: {e}"));
    let report = fsck(&image, &FsckLimits::default());
    if let Some(problem) = report.problems.first() {
        panic!("{what}: convert wrote an image with problems: {problem}");
    }
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let dir = workdir();
    let input = dir.join("layer.tar");
    std::fs::write(&input, data).expect("scratch write");
    let cases = [
        (Mode::Index, false, "index"),
        (Mode::Index, true, "appended"),
        (Mode::Full, false, "full"),
    ];
    for (mode, append_tar, name) in cases {
        let output = dir.join(format!("{name}.erofs"));
        let tar_out = dir.join(format!("{name}.tar"));
        let options = ConvertOptions {
            mode,
            aufs: data.len() % 2 == 1,
            append_tar,
            tar_out: Some(tar_out.clone()),
            gzinfo: None,
            progress: false,
            implied_mtime: Some(0),
            // Both ways of reading a tar file: whole, and header by header.
            skip_digests: data.len().is_multiple_of(3),
            verified_input: None,
        };
        let Ok(report) = convert(&input, &output, &options) else {
            continue;
        };
        // A separate tar is the image's device; an appended one is inside.
        let devices = match (mode, append_tar) {
            (Mode::Index, false) => vec![report.tar_path.clone().unwrap_or_else(|| input.clone())],
            _ => Vec::new(),
        };
        check(&output, devices, name);
        let _ = std::fs::remove_file(&output);
        let _ = std::fs::remove_file(&tar_out);
    }
}
