//! Unit tests of lazy TOC layers' names and references.

use super::{lazy_key, parse_reference, registry_name, Remote};

#[test]
fn references_as_containers_storage_passes_them() {
    for (text, name) in [
        ("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"),
        ("docker://127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"),
        ("//quay.io/org/app:2", "quay.io/org/app:2"),
        (
            "docker.io/library/busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        ("docker:5000/app:1", "docker:5000/app:1"),
    ] {
        assert_eq!(parse_reference(text).unwrap().to_string(), name, "{text}");
    }
    assert!(parse_reference("///x").is_err());
}

#[test]
fn lazy_layers_are_keyed_by_repository_and_toc_digest() {
    let toc = format!("sha256:{}", "a".repeat(64));
    let key = |r: &str| lazy_key(&parse_reference(r).unwrap(), &toc);
    assert_eq!(key("localhost:5000/app:1"), key("localhost:5000/app:2"));
    assert_ne!(key("localhost:5000/app:1"), key("localhost:5000/other:1"));
    assert_ne!(key("localhost:5000/app:1"), key("localhost:5001/app:1"));
    let other = format!("sha256:{}", "b".repeat(64));
    let r = parse_reference("localhost:5000/app:1").unwrap();
    assert_ne!(lazy_key(&r, &toc), lazy_key(&r, &other));
    assert!(crate::store::layout::is_layer_name(
        key("busybox").as_bytes()
    ));
}

#[test]
fn fetch_from_names_registries_as_references_do() {
    for name in ["docker.io", "quay.io", "localhost:5056", "127.0.0.1:5000"] {
        assert_eq!(registry_name(name).unwrap(), name);
    }
    for bad in [
        "busybox",
        "docker.io/library",
        "",
        "http://quay.io",
        "Quay.io:x",
    ] {
        assert!(registry_name(bad).is_err(), "{bad}");
    }
    let remote = Remote {
        fetch_from: vec!["docker.io".into()],
        ..Remote::default()
    };
    // A name without a host is docker.io's.
    assert!(remote.allows(&parse_reference("busybox:1").unwrap().registry));
    assert!(!remote.allows(&parse_reference("quay.io/a/b:1").unwrap().registry));
    assert!(!Remote::default().allows("docker.io"));
}
