//! The token service of the registry's token variant: a thread on
//! 127.0.0.1 issuing RS256 JWTs as distribution's `auth: token` wants them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::listener::Listener;
use super::{openssl, PASSWORD, USER};

/// The registry's service name (the JWT audience) and the tokens' issuer.
pub(super) const SERVICE: &str = "erofs-fuse-test-registry";
pub(super) const ISSUER: &str = "erofs-fuse-test-issuer";

/// The token service of the token variant: a thread on 127.0.0.1 that
/// answers `GET /token?service=&scope=` with Basic [`USER`]/[`PASSWORD`]
/// by an RS256 JWT granting the scopes asked (the registry checks it with
/// the certificate in its `rootcertbundle`, also sent in the `x5c` header),
/// and anything else with 401. Each request is logged.
pub(super) struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The certificate (PEM) whose key signs the tokens.
    pub cert: PathBuf,
    /// `(scope, granted)` of each request served.
    pub log: Arc<Mutex<Vec<(String, bool)>>>,
    /// Seconds from issue until the registry refuses a token (its JWT
    /// `exp`, less the registry's leeway); the `expires_in` the client is
    /// told stays 300.
    pub exp_secs: Arc<AtomicU64>,
    _listener: Listener,
}

impl TokenServer {
    /// Starts the service, its key and certificate made in `dir`.
    pub fn start(dir: &Path) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.pem",
                "-days",
                "2",
                "-subj",
                "/CN=erofs-fuse test tokens",
            ],
        );
        let pem = std::fs::read_to_string(dir.join("token.pem")).unwrap();
        let x5c: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let key = dir.join("token.key");
        let exp_secs = Arc::new(AtomicU64::new(300));
        let listener = {
            let log = log.clone();
            let exp_secs = exp_secs.clone();
            Listener::spawn(move |stream| {
                let exp = exp_secs.load(Ordering::SeqCst);
                let _ = serve_token(stream, &key, &x5c, exp, &log);
            })
        };
        Self {
            addr: listener.addr.clone(),
            cert: dir.join("token.pem"),
            log,
            exp_secs,
            _listener: listener,
        }
    }
}

/// Answers one token request on `stream` with a token that expires
/// `exp` seconds from now.
fn serve_token(
    stream: TcpStream,
    key: &Path,
    x5c: &str,
    exp: u64,
    log: &Mutex<Vec<(String, bool)>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .map(|(_, v)| percent_decode(v))
        .collect();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let granted = authorization.as_deref() == Some(expected.as_str());
    log.lock().unwrap().push((scopes.join(" "), granted));
    let (status, body) = if granted {
        let jwt = sign_jwt(key, x5c, &scopes, exp);
        (
            "200 OK",
            format!(r#"{{"access_token":"{jwt}","expires_in":300}}"#),
        )
    } else {
        (
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#.to_string(),
        )
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// docker-registry accepts a token until [`LEEWAY`] after its `exp` (for
/// clock skew): a token meant to be refused `exp` seconds from now says
/// `exp` that much earlier.
const LEEWAY: u64 = 60;

/// A JWT (RS256, signed by `openssl dgst`) granting `scopes`
/// (`repository:NAME:ACTIONS`) to [`USER`], refused by the registry `exp`
/// seconds from now.
fn sign_jwt(key: &Path, x5c: &str, scopes: &[String], exp: u64) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
            }))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + exp - LEEWAY, "nbf": now - 10,
        "iat": now, "jti": format!("{now}-{:x}", Sha256::digest(scopes.join(" ").as_bytes())[0]),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let mut signature = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut signature)
        .unwrap();
    assert!(child.wait().unwrap().success(), "openssl dgst -sign failed");
    format!("{input}.{}", b64(&signature))
}

/// `%XX` and `+` decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
