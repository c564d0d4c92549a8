//! The registry client against a real registry (Debian's docker-registry
//! on 127.0.0.1, see common/registry.rs): the fixture images fetched by tag
//! and digest over http, TLS, basic and bearer auth; tokens reused; and the
//! failures (wrong password, 404s, unknown CA, corrupted blob, a registry
//! killed mid-blob, an oversized manifest), each one clear line.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use erofs_fuse::registry::{self, ClientOptions, ImageSource, Reference};
use oci_spec::image::ImageManifest;

use crate::common::registry::raw::{manifest_response, serve_raw};
use crate::common::registry::{
    available, oci_fixture, sha256, write_oci_layout, Layer, Registry, Variant,
};

/// The gzip fixture's manifest (tests/fixtures/oci/README.md).
const GZIP_MANIFEST: &str =
    "sha256:04ebfd0fe50cfc5c22de1d4e7f58671f3cc507f9df4152c504351af9707c8ee2";
const ZSTD_MANIFEST: &str =
    "sha256:9cb5461f48db929e92dd23051e865a5e198e696db7c72379487e9b89472b3354";
const ZSTD_CHUNKED_MANIFEST: &str =
    "sha256:5233d5271591c65bdf372a2e6587ddf0ac52281a48e80fb03c1b77aa0861acd8";
/// Its first layer, 804480 bytes.
const GZIP_LAYER1: &str = "sha256:62938c8bf2da04cb1d7ca49f78c665668b32395893cbcca285f4145c2c070f5b";

/// A client for `repo_tag` in `reg` with `options`.
fn client(reg: &Registry, repo: &str, options: &ClientOptions) -> Box<dyn ImageSource> {
    let reference = Reference::parse(&reg.reference(repo)).unwrap();
    registry::open(&reference, options).unwrap()
}

/// Blob `digest` of `size` bytes fetched whole.
fn fetch_blob(source: &dyn ImageSource, digest: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let last = std::cell::Cell::new(0);
    source
        .blob(digest, size, &mut out, &|n| last.set(n))
        .unwrap_or_else(|e| panic!("{digest}: {e}"));
    assert_eq!(last.get(), size, "progress reaches the size");
    out
}

/// An error's text, checked to be one line.
fn one_line<T>(result: erofs_fuse::Result<T>) -> String {
    let Err(e) = result else {
        panic!("expected an error")
    };
    let text = e.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    text
}

/// Pushes the gzip fixture as `fixture:latest` and checks everything a
/// pull reads: the manifest by tag and by digest, every blob (sha256 as
/// named) and a range of the first layer.
fn check_fixture(reg: &Registry) {
    reg.push_oci_layout(&oci_fixture("gzip"), "fixture:latest");
    let source = client(reg, "fixture", &reg.options());
    let m = source.manifest("latest").unwrap();
    assert_eq!(m.digest, GZIP_MANIFEST);
    assert_eq!(sha256(&m.bytes), GZIP_MANIFEST);
    assert_eq!(m.bytes.len(), 558);
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    let by_digest = source.manifest(GZIP_MANIFEST).unwrap();
    assert_eq!(by_digest.bytes, m.bytes);

    let manifest = ImageManifest::from_reader(&m.bytes[..]).unwrap();
    let blobs_dir = oci_fixture("gzip").join("blobs/sha256");
    for d in manifest.layers().iter().chain([manifest.config()]) {
        let digest = d.digest().to_string();
        let bytes = fetch_blob(&*source, &digest, d.size());
        assert_eq!(sha256(&bytes), digest);
        assert_eq!(bytes, std::fs::read(blobs_dir.join(&digest[7..])).unwrap());
    }
    let layer = std::fs::read(blobs_dir.join(&GZIP_LAYER1[7..])).unwrap();
    let mut buf = vec![0; 5000];
    source.blob_range(GZIP_LAYER1, 100_000, &mut buf).unwrap();
    assert_eq!(buf, layer[100_000..105_000]);
    let mut tail = vec![0; 80];
    source
        .blob_range(GZIP_LAYER1, layer.len() as u64 - 80, &mut tail)
        .unwrap();
    assert_eq!(tail, layer[layer.len() - 80..]);
    let mut past = vec![0; 10];
    let e = one_line(source.blob_range(GZIP_LAYER1, layer.len() as u64, &mut past));
    assert!(e.contains(GZIP_LAYER1) && e.contains("416"), "{e}");
}

#[test]
fn http_registry_serves_the_fixtures() {
    if !available("http_registry_serves_the_fixtures") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    check_fixture(&reg);
    for (layout, digest) in [
        ("zstd", ZSTD_MANIFEST),
        ("zstd-chunked", ZSTD_CHUNKED_MANIFEST),
    ] {
        reg.push_oci_layout(&oci_fixture(layout), &format!("{layout}:v1"));
        let source = client(&reg, layout, &reg.options());
        assert_eq!(source.manifest("v1").unwrap().digest, digest, "{layout}");
    }
}

#[test]
fn tls_registry_needs_its_ca() {
    if !available("tls_registry_needs_its_ca") {
        return;
    }
    let reg = Registry::start(Variant::Tls);
    check_fixture(&reg);
    let without_ca = ClientOptions {
        ca_certs: Vec::new(),
        ..reg.options()
    };
    let e = one_line(client(&reg, "fixture", &without_ca).manifest("latest"));
    assert!(
        e.contains("certificate") && e.contains("fixture:latest"),
        "{e}"
    );
    assert!(e.contains("--ca-cert"), "the error says what helps: {e}");
}

#[test]
fn basic_auth_registry() {
    if !available("basic_auth_registry") {
        return;
    }
    let reg = Registry::start(Variant::Basic);
    check_fixture(&reg);
    check_refusals(&reg);
}

#[test]
fn token_auth_registry() {
    if !available("token_auth_registry") {
        return;
    }
    let reg = Registry::start(Variant::Token);
    check_fixture(&reg);
    check_refusals(&reg);
}

/// Wrong credentials (from --creds and from an auth file) and none at all
/// are one-line 401 errors naming where credentials came from, never them.
fn check_refusals(reg: &Registry) {
    let wrong = ClientOptions {
        creds: Some(("erofs-fuse-test".into(), "wrong-password".into())),
        ..reg.options()
    };
    let e = one_line(client(reg, "fixture", &wrong).manifest("latest"));
    assert!(e.contains(&reg.reference("fixture:latest")), "{e}");
    assert!(e.contains("access denied (HTTP 401) with --creds"), "{e}");
    assert!(!e.contains("wrong-password"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.json");
    let auth = base64_of("erofs-fuse-test:wrong-password");
    let json = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr);
    std::fs::write(&file, json).unwrap();
    let from_file = ClientOptions {
        creds: None,
        auth_file: Some(file.clone()),
        ..reg.options()
    };
    let e = one_line(client(reg, "fixture", &from_file).manifest("latest"));
    let source = format!("with credentials from {}", file.display());
    assert!(e.contains(&source), "{e}");
    assert!(!e.contains("wrong-password") && !e.contains(&auth), "{e}");

    let anonymous = ClientOptions {
        creds: None,
        ..reg.options()
    };
    let e = one_line(client(reg, "fixture", &anonymous).manifest("latest"));
    assert!(e.contains("access denied (HTTP 401) anonymously"), "{e}");
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn blobs_redirected_to_storage_get_no_credentials() {
    if !available("blobs_redirected_to_storage_get_no_credentials") {
        return;
    }
    for variant in [Variant::Basic, Variant::Token] {
        let reg = Registry::start_redirecting(variant);
        check_fixture(&reg);
        let requests = reg.storage_requests();
        let layer = format!(
            "/docker/registry/v2/blobs/sha256/62/{}/data",
            &GZIP_LAYER1[7..]
        );
        let to_layer: Vec<_> = requests.iter().filter(|r| r.path == layer).collect();
        assert!(
            to_layer.len() >= 2,
            "whole and ranges, redirected: {requests:?}"
        );
        assert!(
            to_layer
                .iter()
                .any(|r| r.range.as_deref() == Some("bytes=100000-104999")),
            "the Range header follows the redirect: {requests:?}"
        );
        assert!(
            requests.iter().all(|r| !r.authorization),
            "{variant:?}: credentials went to the storage host: {requests:?}"
        );
    }
}

#[test]
fn bearer_tokens_are_fetched_once_per_scope() {
    if !available("bearer_tokens_are_fetched_once_per_scope") {
        return;
    }
    let reg = Registry::start(Variant::Token);
    reg.push_oci_layout(&oci_fixture("gzip"), "fixture:latest");
    reg.push_oci_layout(&oci_fixture("zstd"), "other:latest");
    let pushed = reg.token_requests().len();
    let source: Arc<dyn ImageSource> = client(&reg, "fixture", &reg.options()).into();
    // Eight threads start at once, all unauthorized: one token for all.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let source = source.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    source.manifest("latest").unwrap();
                    fetch_blob(&*source, GZIP_LAYER1, 804480);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let other = client(&reg, "other", &reg.options());
    other.manifest("latest").unwrap();
    other.manifest(ZSTD_MANIFEST).unwrap();
    let requests = reg.token_requests()[pushed..].to_vec();
    assert_eq!(
        requests,
        [
            ("repository:fixture:pull".to_string(), true),
            ("repository:other:pull".to_string(), true)
        ],
        "48 requests for fixture and 2 for other need one token each"
    );
}

#[test]
fn missing_tag_and_blob_are_404_errors() {
    if !available("missing_tag_and_blob_are_404_errors") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("gzip"), "fixture:latest");
    let source = client(&reg, "fixture", &reg.options());
    let e = one_line(source.manifest("nope"));
    assert!(e.starts_with(&reg.reference("fixture:nope")), "{e}");
    assert!(e.contains("manifest unknown") && e.contains("404"), "{e}");
    let missing = format!("sha256:{}", "0".repeat(64));
    let e = one_line(source.blob(&missing, 10, &mut Vec::new(), &|_| {}));
    assert!(
        e.contains(&missing) && e.contains("blob unknown") && e.contains("404"),
        "{e}"
    );
    let e = one_line(source.manifest(&missing));
    assert!(e.contains(&missing) && e.contains("404"), "{e}");
    let e = one_line(client(&reg, "no/such/repo", &reg.options()).manifest("latest"));
    assert!(
        e.contains("no/such/repo:latest") && e.contains("404"),
        "{e}"
    );
}

#[test]
fn a_corrupted_blob_is_a_digest_mismatch() {
    if !available("a_corrupted_blob_is_a_digest_mismatch") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("gzip"), "fixture:latest");
    let data = reg.blob_data(GZIP_LAYER1);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[400_000] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let source = client(&reg, "fixture", &reg.options());
    let e = one_line(source.blob(GZIP_LAYER1, 804480, &mut Vec::new(), &|_| {}));
    let got = sha256(&bytes);
    let expected = format!("digest mismatch: expected {GZIP_LAYER1}, got {got}");
    assert!(e.contains(&expected), "{e}");
    // A size that disagrees with the registry's is caught too.
    let e = one_line(source.blob(GZIP_LAYER1, 1000, &mut Vec::new(), &|_| {}));
    assert!(e.contains("size overrun"), "{e}");
}

#[test]
fn a_5xx_is_an_error_after_retries() {
    if !available("a_5xx_is_an_error_after_retries") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    reg.push_oci_layout(&oci_fixture("gzip"), "fixture:latest");
    // docker-registry answers 500 for a manifest over its 4 MiB read limit.
    reg.put_manifest_in_storage("fixture", "broken", &oversized_manifest());
    let source = client(&reg, "fixture", &reg.options());
    let started = Instant::now();
    let e = one_line(source.manifest("broken"));
    assert!(e.starts_with(&reg.reference("fixture:broken")), "{e}");
    assert!(e.contains("HTTP 500") && e.contains("after 4 tries"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(1700),
        "backed off"
    );
}

/// The gzip fixture's manifest padded past 4 MiB with an annotation.
fn oversized_manifest() -> Vec<u8> {
    let path = oci_fixture("gzip")
        .join("blobs/sha256")
        .join(&GZIP_MANIFEST[7..]);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    manifest["annotations"] = serde_json::json!({"padding": "x".repeat(4 << 20)});
    manifest.to_string().into_bytes()
}

/// Options for a server of the test's own on 127.0.0.1.
fn local_options() -> ClientOptions {
    ClientOptions {
        insecure: true,
        auth_file: Some("/nonexistent/auth.json".into()),
        ..ClientOptions::default()
    }
}

#[test]
fn busy_registries_are_retried_as_they_ask() {
    // docker-registry never answers 429: a server of the test's own does.
    let path = oci_fixture("gzip")
        .join("blobs/sha256")
        .join(&GZIP_MANIFEST[7..]);
    let manifest = std::fs::read(path).unwrap();
    let addr = serve_raw(vec![
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\n\
          Connection: close\r\n\r\n"
            .to_vec(),
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec(),
        manifest_response(&manifest, false),
    ]);
    let reference = Reference::parse(&format!("{addr}/fixture:latest")).unwrap();
    let source = registry::open(&reference, &local_options()).unwrap();
    let started = Instant::now();
    assert_eq!(source.manifest("latest").unwrap().digest, GZIP_MANIFEST);
    let waited = started.elapsed();
    // Retry-After's 2 s, then the backoff's 0.5 s.
    assert!(waited >= Duration::from_millis(2500), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
}

#[test]
fn a_manifest_over_4_mib_is_refused() {
    // docker-registry itself neither takes (HTTP 400) nor serves (HTTP 500)
    // a manifest over 4 MiB: a server of the test's own sends one.
    let body = oversized_manifest();
    for chunked in [false, true] {
        let response = manifest_response(&body, chunked);
        let addr = serve_raw(vec![response.clone(), response]);
        let reference = Reference::parse(&format!("{addr}/fixture:huge")).unwrap();
        let source = registry::open(&reference, &local_options()).unwrap();
        let e = one_line(source.manifest("huge"));
        assert!(e.starts_with(&format!("{addr}/fixture:huge: ")), "{e}");
        assert!(e.contains("larger than 4194304 bytes"), "{e}");
        let e = one_line(source.manifest(&sha256(&body)));
        assert!(e.contains("larger than 4194304 bytes"), "{e}");
    }
}

/// A sink that runs `action` once, when `at` bytes have been written.
struct Tripwire<'a> {
    bytes: Vec<u8>,
    at: usize,
    action: Option<Box<dyn FnOnce() + 'a>>,
}

impl Write for Tripwire<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        if self.bytes.len() >= self.at {
            if let Some(action) = self.action.take() {
                action();
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pushes a 48 MiB incompressible layer as `big:latest`; gives its
/// digest and bytes.
fn push_big_layer(reg: &Registry, dir: &Path) -> (String, Vec<u8>) {
    let mut next = crate::common::xorshift(20);
    let bytes: Vec<u8> = (0..(48 << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    let layer = Layer {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        bytes,
        diff_id: None,
    };
    write_oci_layout(dir, std::slice::from_ref(&layer));
    reg.push_oci_layout(dir, "big:latest");
    (sha256(&layer.bytes), layer.bytes)
}

#[test]
fn a_registry_killed_mid_blob_fails_cleanly() {
    if !available("a_registry_killed_mid_blob_fails_cleanly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(Variant::Http);
    let (digest, bytes) = push_big_layer(&reg, dir.path());
    let source = client(&reg, "big", &reg.options());
    let reg_cell = std::cell::RefCell::new(&mut reg);
    let mut sink = Tripwire {
        bytes: Vec::new(),
        at: 1 << 20,
        action: Some(Box::new(|| reg_cell.borrow_mut().kill())),
    };
    let started = Instant::now();
    let result = source.blob(&digest, bytes.len() as u64, &mut sink, &|_| {});
    let e = one_line(result);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.contains(&digest) && e.contains("after 4 tries"), "{e}");
    assert!(sink.bytes.len() < bytes.len(), "not all of it arrived");
    assert_eq!(
        sink.bytes[..],
        bytes[..sink.bytes.len()],
        "what came is the blob's start"
    );
}

#[test]
fn a_registry_restarted_mid_blob_resumes() {
    if !available("a_registry_restarted_mid_blob_resumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(Variant::Http);
    let (digest, bytes) = push_big_layer(&reg, dir.path());
    let source = client(&reg, "big", &reg.options());
    let reg_cell = std::cell::RefCell::new(&mut reg);
    let mut sink = Tripwire {
        bytes: Vec::new(),
        at: 4 << 20,
        action: Some(Box::new(|| reg_cell.borrow_mut().restart())),
    };
    source
        .blob(&digest, bytes.len() as u64, &mut sink, &|_| {})
        .unwrap();
    assert!(
        sink.bytes == bytes,
        "the resumed blob is the blob, no byte twice"
    );
    drop(sink);
    let log = reg.log();
    let resumed = format!("\"GET /v2/big/blobs/{digest} HTTP/1.1\" 206 ");
    assert!(
        log.contains(&resumed),
        "resumed with a Range request:\n{log}"
    );
}

#[test]
fn connection_refused_is_one_line_after_retries() {
    if !available("connection_refused_is_one_line_after_retries") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let reference = Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap();
    let options = ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    };
    let source = registry::open(&reference, &options).unwrap();
    let started = Instant::now();
    let e = one_line(source.manifest("1"));
    assert!(e.starts_with(&format!("127.0.0.1:{port}/app:1: ")), "{e}");
    assert!(e.contains("refused") && e.contains("after 4 tries"), "{e}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1700),
        "backed off: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}
