//! Every fixture, compressed or not, read by the library, equals the
//! manifest the kernel produced for it; `extract` of each (as root) does too.

use crate::common;

use std::process::Command;

use common::*;

#[test]
fn library_walk_equals_kernel_manifest() {
    for f in FIXTURES {
        let image = open_fixture(f);
        let lines =
            erofs_fuse::manifest::manifest(&image).unwrap_or_else(|e| panic!("{}: {e}", f.image));
        let got = lines.join("\n") + "\n";
        if let Some(diff) = manifest_diff(&expected_manifest(f), &got, 10) {
            panic!(
                "{}: library manifest differs from the kernel's:\n{diff}",
                f.image
            );
        }
    }
}

#[test]
fn cli_manifest_equals_kernel_manifest() {
    // The single-file tar-index layer, through the binary with no --device.
    let f = FIXTURES
        .iter()
        .find(|f| f.image == "tar-index-appended.erofs")
        .unwrap();
    let out = run_ok(Command::new(bin()).arg("manifest").arg(fixture(f.image)));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_manifest(f));
}

#[test]
#[cfg_attr(
    not(feature = "privileged"),
    ignore = "privileged tier: --features privileged"
)]
fn extract_equals_kernel_manifest() {
    if !have(
        "extract_equals_kernel_manifest",
        &[Need::Root, Need::Program("python3")],
    ) {
        return;
    }
    for f in FIXTURES {
        let dest = tempfile::tempdir().unwrap();
        let out_dir = dest.path().join("tree");
        let mut cmd = Command::new(bin());
        cmd.arg("extract").arg(fixture(f.image)).arg(&out_dir);
        for d in f.devices {
            cmd.arg("--device").arg(fixture(d));
        }
        run_ok(&mut cmd);
        let got = tree_manifest(&out_dir);
        if let Some(diff) = manifest_diff(&expected_manifest(f), &got, 10) {
            panic!(
                "{}: extracted tree differs from the kernel's manifest:\n{diff}",
                f.image
            );
        }
    }
}

#[test]
fn extract_refuses_non_empty_destination() {
    let f = &FIXTURES[0];
    let dest = tempfile::tempdir().unwrap();
    std::fs::write(dest.path().join("keep"), b"precious").unwrap();
    let out = run(Command::new(bin())
        .arg("extract")
        .arg(fixture(f.image))
        .arg(dest.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read(dest.path().join("keep")).unwrap(),
        b"precious"
    );
}

#[test]
fn an_image_inside_a_larger_file_reads_with_offset() {
    let f = FIXTURES
        .iter()
        .find(|f| f.image == "tar-index-appended.erofs")
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let embedded = work.path().join("embedded.img");
    let mut bytes = vec![0xa5u8; 3 * 4096];
    bytes.extend(std::fs::read(fixture(f.image)).unwrap());
    std::fs::write(&embedded, bytes).unwrap();
    let out = run_ok(
        Command::new(bin())
            .args(["manifest", "--offset", "12288"])
            .arg(&embedded),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_manifest(f));
    let out = run(Command::new(bin())
        .args(["ls", "--offset", "999999999"])
        .arg(&embedded));
    assert!(String::from_utf8_lossy(&out.stderr).contains("past the end of the file"));
}
