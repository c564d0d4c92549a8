//! A real registry for tests: Debian's `docker-registry` (distribution 2.8)
//! on 127.0.0.1, started per test in one of four variants (plain http, TLS
//! with a CA the test makes, htpasswd basic auth, bearer tokens from a
//! token service run here), killed on drop; images pushed with `skopeo`.
//! See docs/testing.md, "A registry for tests".

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erofs_fuse::registry::ClientOptions;
use sha2::{Digest, Sha256};

use super::{have, run_ok, Need};

mod listener;
pub mod raw;
mod storage;
mod token;
pub use storage::StorageRequest;
use storage::StorageServer;
use token::{TokenServer, ISSUER, SERVICE};

/// The user the basic and token variants accept.
pub const USER: &str = "erofs-fuse-test";

/// Its password.
pub const PASSWORD: &str = "erofs-fuse-test-pass";

/// bcrypt (cost 4, the least: each request checks it) of [`PASSWORD`], as
/// `docker-registry`'s htpasswd wants (it accepts bcrypt only).
const PASSWORD_BCRYPT: &str = "$2b$04$xiTaLbvjnWtiy5tLUIH3y.Fj/fFyU.tND5bj8We6tyAHIAcIus1tm";

/// How a test registry is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Plain http, anonymous.
    Http,
    /// https with a certificate for 127.0.0.1 from a CA the test makes.
    Tls,
    /// Plain http with htpasswd basic auth ([`USER`], [`PASSWORD`]).
    Basic,
    /// Plain http with `auth: token`: a token service on 127.0.0.1 issues
    /// RS256 JWTs to [`USER`] for whatever scope is asked.
    Token,
}

/// Whether the machine has what a registry test needs (skips loudly, or
/// fails under `EROFS_FUSE_REQUIRE_PRIVILEGED=1`, when not).
pub fn available(test: &str) -> bool {
    have(
        test,
        &[
            Need::Program("docker-registry"),
            Need::Program("skopeo"),
            Need::Program("openssl"),
        ],
    )
}

/// A running `docker-registry`, stopped on drop.
pub struct Registry {
    /// How it is reached.
    pub variant: Variant,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The CA certificate (PEM) of the TLS variant.
    pub ca_cert: Option<PathBuf>,
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    token: Option<TokenServer>,
    storage_server: Option<StorageServer>,
}

impl Registry {
    /// Starts a registry of `variant` with empty storage.
    pub fn start(variant: Variant) -> Self {
        Self::start_with(variant, false)
    }

    /// Starts a registry of `variant` that answers blob GETs with a redirect
    /// to a storage server on another port (see [`Self::storage_requests`]).
    pub fn start_redirecting(variant: Variant) -> Self {
        Self::start_with(variant, true)
    }

    fn start_with(variant: Variant, redirect: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: erofs-fuse-test\n",
            dir.path().join("storage").display()
        );
        let mut ca_cert = None;
        let mut token = None;
        match variant {
            Variant::Http => {}
            Variant::Tls => {
                let (ca, cert, key) = make_server_cert(dir.path());
                config += &format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                );
                ca_cert = Some(ca);
            }
            Variant::Basic => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
                config += &format!(
                    "auth:\n  htpasswd:\n    realm: erofs-fuse-test\n    path: {}\n",
                    htpasswd.display()
                );
            }
            Variant::Token => {
                let server = TokenServer::start(dir.path());
                config += &format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    \
                     issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.addr,
                    server.cert.display()
                );
                token = Some(server);
            }
        }
        let storage_server = redirect.then(|| StorageServer::start(dir.path().join("storage")));
        if let Some(server) = &storage_server {
            config += &format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        \
                 baseurl: http://{}/\n",
                server.addr
            );
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut registry = Self {
            variant,
            addr,
            ca_cert,
            dir,
            config: config_path,
            child: None,
            token,
            storage_server,
        };
        registry.restart();
        registry
    }

    /// Starts the registry again (after [`Self::kill`]) on the same port
    /// and storage, and waits until it listens.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "docker-registry did not come up on {} ({exited:?}):\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the registry (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the registry logged (warnings, and an access log line per
    /// request: `"GET /v2/... HTTP/1.1" 206 BYTES`), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT/REPO_TAG`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// The credentials of the auth variants.
    pub fn creds(&self) -> Option<(String, String)> {
        matches!(self.variant, Variant::Basic | Variant::Token)
            .then(|| (USER.to_string(), PASSWORD.to_string()))
    }

    /// Client options that reach this registry: `--insecure` for http,
    /// `--ca-cert` for TLS, `--creds` for the auth variants, and an auth
    /// file that does not exist (so the user's own files are never read).
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            insecure: self.variant != Variant::Tls,
            ca_certs: self.ca_cert.iter().cloned().collect(),
            creds: self.creds(),
            auth_file: Some(self.dir.path().join("no-auth.json")),
        }
    }

    /// The command-line flags that [`Self::options`] stand for.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.variant != Variant::Tls {
            args.push("--insecure".to_string());
        }
        if let Some(ca) = &self.ca_cert {
            args.extend(["--ca-cert".to_string(), ca.display().to_string()]);
        }
        if let Some((user, password)) = self.creds() {
            args.extend(["--creds".to_string(), format!("{user}:{password}")]);
        }
        args.extend([
            "--authfile".to_string(),
            self.dir.path().join("no-auth.json").display().to_string(),
        ]);
        args
    }

    /// Pushes the OCI layout `dir` (its `latest`) as `repo_tag` with skopeo.
    pub fn push_oci_layout(&self, dir: &Path, repo_tag: &str) {
        let mut cmd = Command::new("skopeo");
        // --preserve-digests: blobs go as they are (skopeo would otherwise
        // gzip uncompressed and unknown layers, changing their digests).
        cmd.args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .env("REGISTRY_AUTH_FILE", self.dir.path().join("no-auth.json"));
        if let Some((user, password)) = self.creds() {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        cmd.arg(format!("oci:{}:latest", dir.display()))
            .arg(format!("docker://{}", self.reference(repo_tag)));
        run_ok(&mut cmd);
    }

    /// The registry's storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps blob `digest`'s bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stores `bytes` as manifest `tag` of `repo` straight into the
    /// storage, as the registry would (for manifests it refuses to take,
    /// such as one over its 4 MiB limit); gives its digest.
    pub fn put_manifest_in_storage(&self, repo: &str, tag: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let data = self.blob_data(&digest);
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, bytes).unwrap();
        let manifests = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests");
        let hex = &digest[7..];
        for link in [
            format!("revisions/sha256/{hex}/link"),
            format!("tags/{tag}/current/link"),
            format!("tags/{tag}/index/sha256/{hex}/link"),
        ] {
            let path = manifests.join(link);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &digest).unwrap();
        }
        digest
    }

    /// The requests the storage server of [`Self::start_redirecting`] served.
    pub fn storage_requests(&self) -> Vec<StorageRequest> {
        let server = self.storage_server.as_ref().expect("not redirecting");
        server.log.lock().unwrap().clone()
    }

    /// Makes the tokens issued from now on expire `secs` after issue for
    /// the registry (their JWT `exp`), while the client is still told they
    /// last 300 s: the registry's 401 is what tells it to renew (token
    /// variant).
    pub fn set_token_exp(&self, secs: u64) {
        let server = self.token.as_ref().expect("not the token variant");
        server
            .exp_secs
            .store(secs, std::sync::atomic::Ordering::SeqCst);
    }

    /// The token requests served so far (token variant): `(scope,
    /// granted)`, one per request.
    pub fn token_requests(&self) -> Vec<(String, bool)> {
        let server = self.token.as_ref().expect("not the token variant");
        server.log.lock().unwrap().clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port free on 127.0.0.1 (bound and released: the registry binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA and a server certificate for IP 127.0.0.1 signed by it, in `dir`:
/// (CA cert, server cert, server key).
fn make_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=erofs-fuse test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// One layer of a generated OCI layout: its media type and bytes.
pub struct Layer {
    /// `application/vnd.oci.image.layer.v1.tar`, `...tar+gzip`, a `.erofs` type.
    pub media_type: String,
    /// The blob.
    pub bytes: Vec<u8>,
    /// The uncompressed tar's digest for the config's `diff_ids`; the
    /// blob's own digest when `None`.
    pub diff_id: Option<String>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let mut out = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Writes an OCI layout to `dir` with one linux/amd64 image of `layers`,
/// tagged `latest`; gives the manifest's digest.
pub fn write_oci_layout(dir: &Path, layers: &[Layer]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        serde_json::json!({"digest": digest, "size": bytes.len()})
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let mut d = put(&layer.bytes);
        diff_ids.push(
            layer
                .diff_id
                .clone()
                .unwrap_or_else(|| sha256(&layer.bytes)),
        );
        d["mediaType"] = layer.media_type.clone().into();
        descriptors.push(d);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let mut config_desc = put(config.to_string().as_bytes());
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": descriptors,
    });
    let mut manifest_desc = put(manifest.to_string().as_bytes());
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_desc["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
    let digest = manifest_desc["digest"].as_str().unwrap().to_string();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digest
}

/// The OCI layout fixture `name` (`gzip`, `zstd`, `zstd-chunked`; see
/// tests/fixtures/oci/README.md).
pub fn oci_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oci")
        .join(name)
}
