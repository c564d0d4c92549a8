//! `attach` then `mount --lazy REF` over a real registry: an image with a
//! tar+gzip layer, a tar layer, an EROFS-native layer and a tar+zstd layer.
//! `attach` pushes a layer index for each but the zstd one; the lazy mount
//! reads the three from the registry on demand, verified, and pulls the
//! zstd one; the tree equals the image pulled whole, as root and as
//! `nobody`. A registry serving altered bytes of a verified layer gives
//! EIO for exactly the altered chunk; a wrong pinned root is refused.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::common::lazy::{mount_lazy_as_nobody, ranges, Mounted};
use crate::common::pulled::{open_dev_fuse, tar_of, walk_and_unmount_as_nobody};
use crate::common::registry::{available, sha256, write_oci_layout, Layer, Registry, Variant};
use crate::common::{bin, have, run_ok, tree_manifest, xorshift, Need, FUSE_ROOT};

/// The victim file of the tar layer: 3 MiB, the first entry (its data
/// starts at byte 512 of the tar).
const VICTIM: usize = 3 << 20;

/// Bytes from a seed, compressible about 2:1 (so gzip spans are realistic).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut next = xorshift(seed);
    (0..len).map(|_| (next() & 0x0f) as u8 + b'a').collect()
}

/// The layers (bottom first) and their digests: tar.gz, tar, EROFS, zstd.
fn layers(dir: &Path) -> (Vec<Layer>, Vec<String>) {
    let mut gz_files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("gz/small{i}"),
                format!("gz small {i}\n").into_bytes(),
            )
        })
        .collect();
    gz_files.push(("gz/big".into(), noise(1, 12 << 20)));
    let gz_tar = tar_of(&gz_files);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&gz_tar).unwrap();
    let gz = encoder.finish().unwrap();

    let tar = tar_of(&[
        ("tar/victim", noise(2, VICTIM)),
        ("tar/after", b"after the victim\n".to_vec()),
    ]);

    let upper = dir.join("upper.tar");
    std::fs::write(&upper, tar_of(&[("erofs/one", b"hello erofs\n")])).unwrap();
    let image = dir.join("upper.erofs");
    run_ok(
        Command::new(bin())
            .args(["convert", "--quiet", "--mode", "full"])
            .arg(&upper)
            .arg(&image),
    );
    let erofs = std::fs::read(&image).unwrap();

    let zstd_tar = tar_of(&[("zstd/top", b"zstd layer\n")]);
    let zstd = zstd::encode_all(&zstd_tar[..], 3).unwrap();

    let layers = vec![
        Layer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            bytes: gz,
            diff_id: Some(sha256(&gz_tar)),
        },
        Layer {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            bytes: tar,
            diff_id: None,
        },
        Layer {
            media_type: "application/vnd.erofs.layer.v1".into(),
            bytes: erofs,
            diff_id: None,
        },
        Layer {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            bytes: zstd,
            diff_id: Some(sha256(&zstd_tar)),
        },
    ];
    let digests = layers.iter().map(|l| sha256(&l.bytes)).collect();
    (layers, digests)
}

/// A registry holding the image, attached; its reference, the client
/// flags, the layer digests, and `attach`'s output.
fn attached(work: &Path, variant: Variant) -> (Registry, String, Vec<String>, Vec<String>, String) {
    let (layers, digests) = layers(work);
    let layout = work.join("layout");
    write_oci_layout(&layout, &layers);
    let reg = Registry::start(variant);
    reg.push_oci_layout(&layout, "lazy/indexed:1");
    let reference = reg.reference("lazy/indexed:1");
    let flags = reg.cli_args();
    let out = run_ok(
        Command::new(bin())
            .args(["attach", &reference, "--store"])
            .arg(work.join("attach-store"))
            .args(&flags),
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    (reg, reference, flags, digests, said)
}

/// The tree of the image pulled whole into a store of its own, mounted.
fn pulled_tree(work: &Path, reference: &str, flags: &[String]) -> String {
    let whole = work.join("whole");
    run_ok(
        Command::new(bin())
            .args(["pull", "--quiet", reference, "--store"])
            .arg(&whole)
            .args(flags),
    );
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(bin())
            .args(["mount", reference])
            .arg(dir.path())
            .arg("--store")
            .arg(&whole)
            .args(flags),
    );
    let mounted = Mounted(dir);
    tree_manifest(mounted.0.path())
}

#[test]
fn indexed_layers_read_lazily_verified_and_equal_the_pulled_image() {
    let name = "indexed_layers_read_lazily_verified_and_equal_the_pulled_image";
    if !have(name, FUSE_ROOT) || !available(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (reg, reference, flags, digests, attach) = attached(work.path(), Variant::Http);
    eprint!("attach:\n{attach}");
    for digest in &digests[..3] {
        assert!(
            attach.contains(&format!("layer {digest} referrer sha256:")),
            "{attach}"
        );
    }
    assert!(
        !attach.contains(&format!("layer {} referrer", digests[3])),
        "{attach}"
    );

    let store = work.path().join("store");
    let (mount, said) = Mounted::try_mount(&store, &reference, true, &flags).unwrap();
    eprint!("{said}");
    for digest in &digests[..3] {
        let line = said.lines().find(|l| l.contains(digest.as_str())).unwrap();
        assert!(
            line.contains("lazy, verified against the registry's layer index"),
            "{line}"
        );
    }
    assert!(said.contains(&format!("{}: pulled", digests[3])), "{said}");
    assert!(!said.contains("UNVERIFIED"), "{said}");
    // The tar indexes are read on demand too (through their own trees),
    // not fetched whole.
    let lazy = store.join("lazy");
    for digest in &digests[..2] {
        assert!(lazy.join(format!("{digest}.meta")).is_file(), "{digest}");
        assert!(
            lazy.join(format!("{digest}.meta.tree")).is_file(),
            "{digest}"
        );
        assert!(!lazy.join(format!("{digest}.index")).exists(), "{digest}");
    }

    // One small file of the gzip layer: a fraction of its blob fetched.
    let gz_size = std::fs::metadata(reg.blob_data(&digests[0])).unwrap().len();
    assert_eq!(
        std::fs::read(mount.path("gz/small7")).unwrap(),
        b"gz small 7\n"
    );
    let fetched = ranges(&reg, &digests[0]).1;
    eprintln!("one small file of the gzip layer: {fetched} of {gz_size} bytes");
    assert!(fetched * 3 <= gz_size, "{fetched} of {gz_size}");
    assert_eq!(
        std::fs::read(mount.path("zstd/top")).unwrap(),
        b"zstd layer\n"
    );

    let lazy_tree = tree_manifest(mount.0.path());
    drop(mount);
    assert_eq!(lazy_tree, pulled_tree(work.path(), &reference, &flags));

    // Pinned as attach printed them: the tar layers by their referrer
    // (a root would not cover their tar index: refused), the EROFS layer
    // by its root; a wrong pin is refused before anything mounts.
    let printed: Vec<(String, String, String)> = attach
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["layer", layer, "referrer", referrer, "root", root, ..] => {
                Some((layer.into(), referrer.into(), root.into()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(printed.len(), 3, "{attach}");
    let pin = |flags: &mut Vec<String>, layer: &str, value: &str| {
        flags.extend(["--verity-root".to_string(), format!("{layer}={value}")]);
    };
    let mut pinned = flags.clone();
    for (layer, referrer, root) in &printed {
        match *layer == digests[2] {
            true => pin(&mut pinned, layer, root),
            false => pin(&mut pinned, layer, referrer),
        }
    }
    let (mount, said) = Mounted::try_mount(&store, &reference, true, &pinned).unwrap();
    assert_eq!(
        said.matches("root hash pinned by --verity-root").count(),
        1,
        "{said}"
    );
    assert_eq!(said.matches("pinned by --verity-root").count(), 3, "{said}");
    assert_eq!(tree_manifest(mount.0.path()), lazy_tree);
    drop(mount);
    let refused = |layer: &str, value: &str, why: &str| {
        let mut wrong = flags.clone();
        pin(&mut wrong, layer, value);
        let err = Mounted::try_mount(&store, &reference, true, &wrong)
            .err()
            .unwrap();
        assert!(err.contains(why), "{err}");
    };
    let (layer, referrer, root) = &printed[2];
    let flipped = if root.starts_with('0') { "1" } else { "0" };
    refused(
        layer,
        &format!("{flipped}{}", &root[1..]),
        "--verity-root gives",
    );
    refused(layer, &printed[1].1, "is for layer");
    refused(&printed[1].0, &printed[1].2, "not its tar index");
    assert_ne!(referrer, &printed[1].1);
}

#[test]
fn altered_chunks_of_a_verified_layer_are_eio_and_only_they() {
    let name = "altered_chunks_of_a_verified_layer_are_eio_and_only_they";
    if !have(name, FUSE_ROOT) || !available(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (reg, reference, flags, digests, _) = attached(work.path(), Variant::Http);
    // One byte of the tar layer's victim, 1.5 MiB into it, changed in the
    // registry's storage after attach.
    let at = 512 + (3 << 19);
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(reg.blob_data(&digests[1]))
        .unwrap();
    let mut byte = [0u8];
    data.read_exact_at(&mut byte, at).unwrap();
    data.write_all_at(&[byte[0] ^ 0x20], at).unwrap();
    drop(data);

    let store = work.path().join("store");
    let (mount, said) = Mounted::try_mount(&store, &reference, true, &flags).unwrap();
    assert!(!said.contains("UNVERIFIED"), "{said}");
    let victim = std::fs::File::open(mount.path("tar/victim")).unwrap();
    let want = noise(2, VICTIM);
    let mut buf = vec![0; 4096];
    // The lazy cache's chunks are 128 KiB: the altered byte is in chunk
    // 12 of the tar (1.5 MiB + 512). Reads there fail, also 64 KiB past
    // the byte (same chunk); the chunk before, and others, read right.
    let chunk = 128 << 10;
    let eio = [3 << 19, (3 << 19) + (64 << 10)];
    let right = [0u64, (3 << 19) - chunk, 2 << 20];
    let cases = right
        .map(|o| (o, true))
        .into_iter()
        .chain(eio.map(|o| (o, false)));
    for (offset, ok) in cases {
        let got = victim.read_exact_at(&mut buf, offset);
        match ok {
            true => {
                got.unwrap();
                assert_eq!(buf, want[offset as usize..offset as usize + 4096]);
            }
            false => assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::EIO)),
        }
    }
    assert_eq!(
        std::fs::read(mount.path("tar/after")).unwrap(),
        b"after the victim\n"
    );
    assert_eq!(
        std::fs::read(mount.path("gz/small1")).unwrap(),
        b"gz small 1\n"
    );
    drop(victim);
    drop(mount);
    // The cache never kept the altered chunk.
    let cache = std::fs::File::open(store.join("lazy").join(&digests[1])).unwrap();
    let mut kept = vec![0; 4096];
    cache.read_exact_at(&mut kept, at & !4095).unwrap();
    assert!(
        kept.iter().all(|&b| b == 0),
        "the altered chunk is not cached"
    );
}

/// As `nobody`, the default store: the same mount needs no root and shows
/// the tree of the image pulled whole.
#[test]
fn rootless_indexed_lazy_mount() {
    let name = "rootless_indexed_lazy_mount";
    let needs = [Need::Program("setpriv"), Need::Program("/usr/bin/python3")];
    if !have(name, FUSE_ROOT) || !have(name, &needs) || !available(name) {
        return;
    }
    open_dev_fuse();
    let work = tempfile::tempdir().unwrap();
    let (_reg, reference, flags, _, _) = attached(work.path(), Variant::Token);
    let (home, mnt, said) = mount_lazy_as_nobody(&reference, &flags);
    assert_eq!(said.matches("lazy, verified").count(), 3, "{said}");
    let walk = walk_and_unmount_as_nobody(home.path(), &mnt);
    assert_eq!(walk, pulled_tree(work.path(), &reference, &flags));
}
