//! Every uncompressed fixture, read by the library, equals the manifest the
//! kernel produced for it; `extract` of each (as root) does too.

mod common;

use std::process::Command;

use common::*;

#[test]
fn library_walk_equals_kernel_manifest() {
    for f in UNCOMPRESSED {
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
    let f = UNCOMPRESSED
        .iter()
        .find(|f| f.image == "tar-index-appended.erofs")
        .unwrap();
    let out = run_ok(Command::new(bin()).arg("manifest").arg(fixture(f.image)));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_manifest(f));
}

#[test]
fn extract_equals_kernel_manifest() {
    if !have(
        "extract_equals_kernel_manifest",
        &[Need::Root, Need::Program("python3")],
    ) {
        return;
    }
    for f in UNCOMPRESSED {
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
    let f = &UNCOMPRESSED[0];
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
fn compressed_data_fails_clearly_until_supported() {
    // Metadata of a compressed image reads fine; file data says what is missing.
    let image = erofs_fuse::Image::open(&fixture("lz4.erofs"), &Default::default()).unwrap();
    let summary = erofs_fuse::inspect::ImageSummary::new(&image);
    assert_eq!(summary.compression, vec!["lz4".to_string()]);
    // The first compressed file (incompressible ones are stored plain).
    let sizes = image.resolve(b"/sizes").unwrap();
    let (name, file) = image
        .read_dir(&sizes, Default::default())
        .unwrap()
        .map(|e| e.unwrap().0)
        .map(|e| {
            (
                String::from_utf8(e.name).unwrap(),
                image.inode(e.nid).unwrap(),
            )
        })
        .find(|(_, inode)| inode.layout.is_compressed())
        .expect("a compressed file in /sizes");
    let err = image.read_at(&file, 0, &mut [0u8; 16]).unwrap_err();
    assert!(err.to_string().contains("not supported yet"), "{err}");
    let path = format!("/sizes/{name}");
    let out = run(Command::new(bin())
        .arg("cat")
        .arg(fixture("lz4.erofs"))
        .arg(&path));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lz4.erofs")
            && stderr.contains(&path)
            && stderr.contains("not supported yet"),
        "{stderr}"
    );
}

#[test]
fn an_image_inside_a_larger_file_reads_with_offset() {
    let f = UNCOMPRESSED
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
