//! `attach` against a registry with the OCI 1.1 referrers API: docker-registry
//! behind a proxy of the test's that forwards everything but `GET
//! /v2/NAME/referrers/DIGEST`, which it answers from the manifests with a
//! `subject` that were put through it (as a registry with the API indexes
//! them). Such a registry needs no tag-schema index: attach must not write
//! one, and must find its artifacts through the API.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use erofs_fuse::registry::referrers::find_layer_indexes;
use erofs_fuse::registry::{ImageSource, Reference, RegistryClient};
use serde_json::{json, Value};

use super::{attach_at, needs, push_image};
use crate::common::registry::{sha256, Registry, Variant};

/// What the proxy knows: referrers by subject, and the requests served.
#[derive(Default)]
struct State {
    referrers: HashMap<String, Vec<Value>>,
    requests: Vec<String>,
}

/// The proxy: `addr` in front of a registry.
struct ApiProxy {
    addr: String,
    state: Arc<Mutex<State>>,
}

impl ApiProxy {
    fn start(registry: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (registry, shared, me) = (registry.to_string(), state.clone(), addr.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (registry, state, me) = (registry.clone(), shared.clone(), me.clone());
                std::thread::spawn(move || serve(stream, &registry, &me, &state));
            }
        });
        Self { addr, state }
    }

    /// The request lines that write (PUT, POST, PATCH, DELETE).
    fn writes(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let writes = ["PUT ", "POST ", "PATCH ", "DELETE "];
        state
            .requests
            .iter()
            .filter(|r| writes.iter().any(|w| r.starts_with(w)))
            .cloned()
            .collect()
    }
}

/// One request of `client`: answered here (the referrers API) or
/// forwarded to `registry` with `Connection: close`, its `Location`
/// rewritten to the proxy.
fn serve(client: TcpStream, registry: &str, me: &str, state: &Mutex<State>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if !lower.starts_with("connection:") {
            head.push(line);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let request_line = head[0].trim().to_string();
    state.lock().unwrap().requests.push(request_line.clone());
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
    let mut client = client;
    if method == "GET" && path.contains("/referrers/") {
        let subject = path.split("/referrers/").nth(1).unwrap();
        let subject = subject.split('?').next().unwrap();
        let manifests = state
            .lock()
            .unwrap()
            .referrers
            .get(subject)
            .cloned()
            .unwrap_or_default();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        })
        .to_string();
        let _ = write!(
            client,
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\
             Content-Type: application/vnd.oci.image.index.v1+json\r\n\
             Content-Length: {}\r\n\r\n{index}",
            index.len()
        );
        return;
    }
    let mut upstream = TcpStream::connect(registry).unwrap();
    for line in &head {
        upstream.write_all(line.as_bytes()).unwrap();
    }
    upstream.write_all(b"Connection: close\r\n\r\n").unwrap();
    upstream.write_all(&body).unwrap();
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head_text = String::from_utf8_lossy(&response[..split])
        .replace(&format!("http://{registry}"), &format!("http://{me}"));
    if method == "PUT" && path.contains("/manifests/") && head_text.starts_with("HTTP/1.1 201") {
        record(state, &body);
    }
    let _ = client.write_all(head_text.as_bytes());
    let _ = client.write_all(&response[split..]);
}

/// Indexes a manifest put through the proxy by its subject.
fn record(state: &Mutex<State>, body: &[u8]) {
    let manifest: Value = serde_json::from_slice(body).unwrap();
    let Some(subject) = manifest["subject"]["digest"].as_str() else {
        return;
    };
    let mut descriptor = json!({
        "mediaType": manifest["mediaType"],
        "digest": sha256(body),
        "size": body.len(),
        "artifactType": manifest["artifactType"],
    });
    if let Some(annotations) = manifest.get("annotations") {
        descriptor["annotations"] = annotations.clone();
    }
    let mut state = state.lock().unwrap();
    state
        .referrers
        .entry(subject.to_string())
        .or_default()
        .push(descriptor);
}

#[test]
fn attach_through_the_referrers_api() {
    if !needs("attach_through_the_referrers_api") {
        return;
    }
    let reg = Registry::start(Variant::Http);
    let proxy = ApiProxy::start(&reg.addr);
    let work = tempfile::tempdir().unwrap();
    let (_, manifest) = push_image(&reg, work.path());
    let store = work.path().join("store");
    let reference = format!("{}/app:latest", proxy.addr);
    let lines = attach_at(&reg, &reference, &store);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let writes = proxy.writes();
    assert!(
        !writes.iter().any(|w| w.contains("/manifests/sha256-")),
        "a tag-schema index was written to a registry with the API: {writes:?}"
    );
    let options = reg.options();
    let through_api =
        RegistryClient::new(&Reference::parse(&reference).unwrap(), &options).unwrap();
    let found = find_layer_indexes(&through_api, &manifest).unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    for (index, line) in found.iter().zip(&lines) {
        let root = erofs_fuse::verity::hex(&index.root);
        assert_eq!(
            line,
            &format!(
                "layer {} referrer {} root {root}",
                index.layer, index.artifact
            )
        );
    }
    // The registry behind has no API, and no tag schema was kept.
    let direct = RegistryClient::new(
        &Reference::parse(&reg.reference("app:latest")).unwrap(),
        &options,
    )
    .unwrap();
    assert!(direct.referrers(&manifest, None).unwrap().is_empty());
    // Again: found through the API, nothing written.
    let before = proxy.writes().len();
    let again = attach_at(&reg, &reference, &store);
    assert_eq!(proxy.writes().len(), before, "{:?}", proxy.writes());
    assert!(
        again[..3].iter().all(|l| l.ends_with("(already attached)")),
        "{again:?}"
    );
}
