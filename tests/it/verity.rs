//! `verity format` / `verity verify`: trees byte-identical to veritysetup's
//! (the fixtures' and freshly made ones), and verification that names the
//! block at fault.
use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;
use erofs_fuse::verity::{format, hex, verify, VerityError, VerityParams};

/// The salt the fixtures' trees were made with (see tests/fixtures/README.md).
const FIXTURE_SALT: &str = "00112233445566778899aabbccddeeff";

fn build(data: &Path, hash: &Path, params: &VerityParams) -> String {
    let input = std::fs::File::open(data).unwrap();
    let output = std::fs::File::create(hash).unwrap();
    hex(&format(&input, &output, 0, params).unwrap())
}

#[test]
fn trees_equal_the_fixtures_veritysetup_made() {
    let dir = tempfile::tempdir().unwrap();
    for data in ["plain-4k.erofs", "tar-index.erofs", "tar-index.tar"] {
        let expected = std::fs::read(fixture(&format!("{data}.verity"))).unwrap();
        let root = std::fs::read_to_string(fixture(&format!("{data}.roothash"))).unwrap();
        let len = std::fs::metadata(fixture(data)).unwrap().len();
        let params = VerityParams {
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: len / 4096,
            salt: erofs_fuse::verity::from_hex(FIXTURE_SALT).unwrap(),
            // veritysetup picked a random UUID: take it from its superblock.
            uuid: expected[16..32].try_into().unwrap(),
        };
        let ours = dir.path().join(format!("{data}.verity"));
        let computed = build(&fixture(data), &ours, &params);
        assert_eq!(computed, root.trim(), "{data}: root hash");
        assert!(
            std::fs::read(&ours).unwrap() == expected,
            "{data}: tree differs from veritysetup's"
        );
        let checked = verify(
            &std::fs::File::open(fixture(data)).unwrap(),
            &std::fs::File::open(&ours).unwrap(),
            0,
            &erofs_fuse::verity::from_hex(&computed).unwrap(),
        )
        .unwrap();
        assert_eq!(checked, params);
    }
}

#[test]
fn trees_equal_veritysetups_for_odd_sizes_and_block_sizes() {
    if !have(
        "trees_equal_veritysetups_for_odd_sizes_and_block_sizes",
        &[Need::Program("veritysetup")],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut next = xorshift(42);
    let cases: &[(u64, u32, u32)] = &[
        (4096, 4096, 4096),             // one block: no tree levels
        (4096 * 128, 4096, 4096),       // exactly one leaf block
        (4096 * 129 + 100, 4096, 4096), // two leaf blocks and a tail left out
        (1_000_000, 4096, 4096),
        (7 * 512, 512, 512), // 512-byte blocks (tar-index layers)
        (512 * 1000 + 17, 512, 4096),
        (4096 * 300, 4096, 1024),
        (4096 * (128 * 128 + 1), 4096, 4096), // three levels
    ];
    for (i, &(size, data_block, hash_block)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("data{i}"));
        let bytes: Vec<u8> = (0..size).map(|_| next() as u8).collect();
        std::fs::write(&data, bytes).unwrap();
        let theirs = dir.path().join(format!("theirs{i}"));
        let ours = dir.path().join(format!("ours{i}"));
        let uuid = "0badcafe-1234-4567-89ab-0123456789ab";
        let salt = format!("{:02x}", i + 1).repeat(i + 1);
        let args = |cmd: &mut Command| {
            cmd.arg(format!("--salt={salt}"))
                .arg(format!("--uuid={uuid}"))
                .arg(format!("--data-block-size={data_block}"))
                .arg(format!("--hash-block-size={hash_block}"));
        };
        let mut vs = Command::new("veritysetup");
        vs.arg("format");
        args(&mut vs);
        let vs_out = run_ok(vs.arg(&data).arg(&theirs));
        let mut us = Command::new(bin());
        us.args(["verity", "format"]);
        args(&mut us);
        let us_out = run_ok(us.arg(&data).arg(&ours));
        let root = |out: &std::process::Output| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.starts_with("Root hash:"))
                .map(|l| l.split_whitespace().last().unwrap().to_string())
                .unwrap()
        };
        assert_eq!(root(&us_out), root(&vs_out), "case {i}: root hash");
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "case {i} ({size} bytes, {data_block}/{hash_block}): tree differs from veritysetup's"
        );
        // And veritysetup accepts ours.
        run_ok(
            Command::new("veritysetup")
                .arg("verify")
                .arg(&data)
                .arg(&ours)
                .arg(root(&us_out)),
        );
    }
}

#[test]
fn verify_names_the_block_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut next = xorshift(7);
    let bytes: Vec<u8> = (0..4096 * 300).map(|_| next() as u8).collect();
    std::fs::write(&data, &bytes).unwrap();
    let hash = dir.path().join("hash");
    let params = VerityParams {
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: 300,
        salt: vec![1, 2, 3],
        uuid: [9; 16],
    };
    let root = erofs_fuse::verity::from_hex(&build(&data, &hash, &params)).unwrap();
    let check = |data: &Path, hash: &Path, root: &[u8]| {
        verify(
            &std::fs::File::open(data).unwrap(),
            &std::fs::File::open(hash).unwrap(),
            0,
            root,
        )
    };
    check(&data, &hash, &root).unwrap();

    let mut bad = bytes.clone();
    bad[4096 * 257 + 11] ^= 1;
    let bad_data = dir.path().join("bad-data");
    std::fs::write(&bad_data, &bad).unwrap();
    assert!(matches!(
        check(&bad_data, &hash, &root),
        Err(VerityError::Mismatch {
            what: "data",
            block: 257
        })
    ));

    // A flipped bit in the top hash block (block 1, after the superblock).
    let mut tree = std::fs::read(&hash).unwrap();
    tree[4096 + 5] ^= 0x80;
    let bad_hash = dir.path().join("bad-hash");
    std::fs::write(&bad_hash, &tree).unwrap();
    assert!(matches!(
        check(&data, &bad_hash, &root),
        Err(VerityError::Mismatch {
            what: "hash",
            block: 1
        })
    ));

    // A superblock claiming more blocks than the data has is refused
    // before anything is allocated for them.
    let short = dir.path().join("short");
    std::fs::write(&short, &bytes[..4096 * 10]).unwrap();
    assert!(matches!(
        check(&short, &hash, &root),
        Err(VerityError::Invalid(_))
    ));

    let mut wrong_root = root.clone();
    wrong_root[0] ^= 1;
    assert!(matches!(
        check(&data, &hash, &wrong_root),
        Err(VerityError::RootMismatch(_))
    ));

    // The CLI exits non-zero naming the block.
    let out = run(Command::new(bin())
        .args(["verity", "verify"])
        .arg(&bad_data)
        .arg(&hash)
        .arg(hex(&root)));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data block 257"),
        "{out:?}"
    );
}

#[test]
fn append_writes_containerds_layout() {
    let dir = tempfile::tempdir().unwrap();
    for (image, sidecar) in [
        ("plain-4k.erofs", "plain-4k-verity.erofs.dmverity"),
        (
            "tar-index-appended.erofs",
            "tar-index-appended-verity.erofs.dmverity",
        ),
    ] {
        let copy = dir.path().join(image);
        std::fs::copy(fixture(image), &copy).unwrap();
        run_ok(
            Command::new(bin())
                .args(["verity", "format", "--append"])
                .arg(&copy),
        );
        // Same root hash and offset as containerd's layout in the fixtures
        // (512-byte blocks for the tar-index layer, 4096 for the other).
        let ours = std::fs::read_to_string(dir.path().join(format!("{image}.dmverity"))).unwrap();
        let theirs = std::fs::read_to_string(fixture(sidecar)).unwrap();
        assert_eq!(ours.trim(), theirs.trim(), "{image}");
        let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
        let root = parsed["roothash"].as_str().unwrap().to_string();
        let offset = parsed["hashoffset"].as_u64().unwrap();
        let file = std::fs::File::open(&copy).unwrap();
        verify(
            &file,
            &file,
            offset,
            &erofs_fuse::verity::from_hex(&root).unwrap(),
        )
        .unwrap();
        if have(
            "append_writes_containerds_layout",
            &[Need::Program("veritysetup")],
        ) {
            run_ok(
                Command::new("veritysetup")
                    .arg("verify")
                    .arg(format!("--hash-offset={offset}"))
                    .arg(&copy)
                    .arg(&copy)
                    .arg(&root),
            );
        }
    }
}

#[test]
fn no_superblock_trees_equal_veritysetups() {
    if !have(
        "no_superblock_trees_equal_veritysetups",
        &[Need::Program("veritysetup")],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("plain-4k.erofs");
    for (salt, data_block, hash_block) in [("0011", "512", "1024"), ("-", "4096", "4096")] {
        let sizes = [
            "--data-block-size",
            data_block,
            "--hash-block-size",
            hash_block,
        ];
        // veritysetup writes into an existing file without truncating it:
        // fresh names for each case.
        let ours = dir.path().join(format!("ours-{data_block}"));
        let theirs = dir.path().join(format!("theirs-{data_block}"));
        let out = run_ok(
            Command::new(bin())
                .args(["verity", "format", "--no-superblock", "--salt", salt])
                .args(sizes)
                .arg(&data)
                .arg(&ours),
        );
        run_ok(
            Command::new("veritysetup")
                .args(["format", "--no-superblock", "--salt", salt])
                .args(sizes)
                .arg(&data)
                .arg(&theirs),
        );
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "salt {salt}, blocks {data_block}/{hash_block}: trees differ"
        );
        let root = &printed_root_hash(&out.stdout);
        for verifier in [bin(), "veritysetup".into()] {
            let mut cmd = Command::new(verifier);
            if cmd.get_program() != "veritysetup" {
                cmd.arg("verity");
            }
            run_ok(
                cmd.args(["verify", "--no-superblock", "--salt", salt])
                    .args(sizes)
                    .arg(&data)
                    .arg(&ours)
                    .arg(root),
            );
        }
        // The wrong salt is a root mismatch.
        let out = run(Command::new(bin())
            .args(["verity", "verify", "--no-superblock", "--salt", "99"])
            .args(sizes)
            .arg(&data)
            .arg(&ours)
            .arg(root));
        assert!(!out.status.success());
    }
}
