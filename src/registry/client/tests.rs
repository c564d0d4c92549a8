//! Tests of the registry client.

use super::*;

#[test]
fn manifest_references_are_tags_or_digests() {
    for ok in ["latest", "v1.2_3-rc", &format!("sha256:{}", "a".repeat(64))] {
        assert!(is_manifest_reference(ok), "{ok}");
    }
    let long = "a".repeat(129);
    for bad in ["", "../x", "a/b", ".x", "-x", "a b", "sha256:abc?", &long] {
        assert!(!is_manifest_reference(bad), "{bad}");
    }
}

#[test]
fn accept_lists_oci_and_docker_types() {
    assert_eq!(
        accept(),
        "application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json"
    );
}

/// A body that trickles is given up at the deadline, fatally (no
/// retry after it); one that ends early may be retried.
#[test]
fn range_bodies_end_at_the_deadline() {
    struct Trickle;
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(10));
            buf[0] = 7;
            Ok(1)
        }
    }
    let mut buf = vec![0; 1 << 20];
    let start = Instant::now();
    let deadline = start + Duration::from_millis(100);
    match read_before_deadline("r", &mut Trickle, &mut buf, deadline) {
        Err(Failure::Fatal(e)) => assert!(e.to_string().contains("given up"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    let short = read_before_deadline("r", &mut &b"abc"[..], &mut buf, deadline);
    assert!(matches!(short, Err(Failure::Transient { .. })));
    let mut four = [0; 4];
    read_before_deadline("r", &mut &b"abcd"[..], &mut four, deadline).unwrap();
    assert_eq!(&four, b"abcd");
}

#[test]
fn digests_print_as_sha256_hex() {
    assert_eq!(
        sha256_digest(Sha256::digest(b"")),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}
