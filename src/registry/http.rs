//! The registry transport: one ureq agent per registry, TLS with the
//! system's roots plus `--ca-cert`, plain http only where allowed, timeouts
//! that make a stalled connection fail, and retries with capped exponential
//! backoff for what may pass (connection failures, resets, 5xx, 429).

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use ureq::config::RedirectAuthHeaders;
use ureq::http::Response;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::reference::{Reference, DEFAULT_REGISTRY};
use super::ClientOptions;
use crate::error::{Error, Result};

/// Longest wait for a connection (DNS, TCP and the TLS handshake each).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for any one read or write: a body that stalls fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest `--ca-cert` file read.
const MAX_CA_FILE: u64 = 1 << 20;

/// Most of an error response's body read (for the registry's message).
const MAX_ERROR_BODY: u64 = 4 << 10;

/// Most redirects followed (registries redirect blobs to their storage).
const MAX_REDIRECTS: u32 = 5;

/// How often and how long to retry what may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Attempts in all, the first included.
    pub tries: u32,
    /// The wait after the first failure; doubled after each next one.
    pub first: Duration,
    /// The longest backoff wait.
    pub cap: Duration,
    /// The longest wait a `Retry-After` header is honoured with.
    pub retry_after_cap: Duration,
}

impl RetryPolicy {
    /// Four tries, waiting 0.25, 0.5 and 1 s (or what `Retry-After` asks,
    /// up to 10 s).
    pub const DEFAULT: Self = Self {
        tries: 4,
        first: Duration::from_millis(250),
        cap: Duration::from_secs(4),
        retry_after_cap: Duration::from_secs(10),
    };

    /// The wait after the `failures`-th failure (1 for the first), longer
    /// when the server asked for it with `Retry-After`.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let doubling = 1u32 << failures.saturating_sub(1).min(16);
        let backoff = self.first.saturating_mul(doubling).min(self.cap);
        retry_after
            .map(|wanted| wanted.min(self.retry_after_cap))
            .map_or(backoff, |wanted| wanted.max(backoff))
    }
}

/// The HTTP methods the registry client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// Reads.
    Get,
    /// Whether a blob exists.
    Head,
    /// Starting an upload.
    Post,
    /// Blobs and manifests.
    Put,
}

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// May pass: try again after a wait (at least `retry_after`, if given).
    Transient {
        /// What went wrong, for the error after the last try.
        message: String,
        /// What the server's `Retry-After` asked for.
        retry_after: Option<Duration>,
    },
    /// Will not pass by trying again.
    Fatal(Error),
}

impl Failure {
    /// A transient failure without a requested wait.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Fatal(e)
    }
}

/// The connection to one registry.
pub(crate) struct Transport {
    agent: Agent,
    /// `https://HOST[:PORT]` or `http://HOST[:PORT]`.
    base: String,
    /// Whether plain http is allowed (token realms included).
    insecure: bool,
    /// The retry policy every request follows.
    pub policy: RetryPolicy,
    /// When every request must be done, its body read included (`store
    /// serve`'s fetches: a trickling registry cannot hold one longer);
    /// past it a request fails without a retry.
    pub deadline: Option<std::time::Instant>,
}

impl Transport {
    /// The transport to `reference`'s registry as `options` allow.
    pub fn new(reference: &Reference, options: &ClientOptions) -> Result<Self> {
        let insecure = allow_plain_http(reference, options)?;
        let scheme = if insecure { "http" } else { "https" };
        let mut roots: Vec<Certificate<'static>> = system_roots().to_vec();
        for path in &options.ca_certs {
            roots.extend(read_ca_file(path)?);
        }
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&roots))
            .build();
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .https_only(!insecure)
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .max_redirects(MAX_REDIRECTS)
            // Registries redirect blobs to storage with signed URLs: the
            // credentials never follow (SameHost would keep them for
            // another port of the same host).
            .redirect_auth_headers(RedirectAuthHeaders::Never)
            .user_agent(concat!("erofs-fuse/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        Ok(Self {
            agent,
            base: format!("{scheme}://{}", reference.api_host()),
            insecure,
            policy: RetryPolicy::DEFAULT,
            deadline: None,
        })
    }

    /// `https://HOST[:PORT]` (or `http://` with `--insecure`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `url` may be used: https, or http when `--insecure` allows.
    pub fn allows(&self, url: &str) -> bool {
        url.starts_with("https://") || (self.insecure && url.starts_with("http://"))
    }

    /// One GET of `url` with `headers`. Statuses other than 5xx and 429
    /// come back as responses; those two and connection failures are
    /// [`Failure::Transient`].
    pub fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<Response<Body>, Failure> {
        self.request(Method::Get, url, headers, None, None)
    }

    /// One request `method` of `url` with `headers` and `body` (sent
    /// whole, for PUT and POST), ended after `limit` when given, its answer
    /// sorted as [`Self::get`] does.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        limit: Option<Duration>,
    ) -> std::result::Result<Response<Body>, Failure> {
        let body = body.unwrap_or_default();
        let limit = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(Failure::Fatal(Error::Registry(format!(
                        "{}: past the deadline of this fetch",
                        one_line(url, 200)
                    ))));
                }
                Some(limit.map_or(left, |l| l.min(left)))
            }
            None => limit,
        };
        let result = match method {
            Method::Get => with_limit(with_headers(self.agent.get(url), headers), limit).call(),
            Method::Head => with_limit(with_headers(self.agent.head(url), headers), limit).call(),
            Method::Post => {
                with_limit(with_headers(self.agent.post(url), headers), limit).send(body)
            }
            Method::Put => with_limit(with_headers(self.agent.put(url), headers), limit).send(body),
        };
        let mut response = result.map_err(|e| classify(e, url))?;
        let status = response.status().as_u16();
        if status >= 500 || status == 429 {
            let retry_after = header(&response, "retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(Failure::Transient {
                message: status_message(&mut response),
                retry_after,
            });
        }
        Ok(response)
    }

    /// Runs `attempt` until it succeeds, fails fatally, or has failed
    /// transiently [`RetryPolicy::tries`] times, waiting between tries.
    /// The last error is `what: MESSAGE (after N tries)`.
    pub fn retrying<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        self.retrying_with(what, &mut (), |_| 0, |_| attempt())
    }

    /// [`Self::retrying`] for an attempt that carries on from `state`
    /// (a resumable download): a failed try after which `progress(state)`
    /// grew starts the count of tries afresh, so a transfer that breaks
    /// often but advances each time completes. Bounded all the same:
    /// progress counts up to a known bound (MiB of a blob of known size).
    pub fn retrying_with<S, T>(
        &self,
        what: &str,
        state: &mut S,
        progress: impl Fn(&S) -> u64,
        mut attempt: impl FnMut(&mut S) -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut failures = 0;
        loop {
            let before = progress(state);
            match attempt(state) {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient {
                    message,
                    retry_after,
                }) => {
                    if progress(state) > before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures >= self.policy.tries {
                        return Err(Error::Registry(format!(
                            "{what}: {message} (after {failures} tries)"
                        )));
                    }
                    let wait = self.policy.delay(failures, retry_after);
                    tracing::debug!("{what}: {message}; retrying in {wait:?}");
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// `request` with `headers` added.
fn with_headers<B>(
    mut request: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// `request` ended (the reading of its body included) after `limit`.
fn with_limit<B>(
    request: ureq::RequestBuilder<B>,
    limit: Option<Duration>,
) -> ureq::RequestBuilder<B> {
    match limit {
        Some(_) => request.config().timeout_global(limit).build(),
        None => request,
    }
}

/// Whether plain http is used: only with `--insecure`, and then only for
/// a registry the reference names or one on loopback (never for the
/// default registry a bare name means).
pub(crate) fn allow_plain_http(reference: &Reference, options: &ClientOptions) -> Result<bool> {
    if !options.insecure {
        return Ok(false);
    }
    if reference.registry != DEFAULT_REGISTRY || reference.is_loopback() {
        return Ok(true);
    }
    Err(Error::Registry(format!(
        "{}: plain http (--insecure) is only for a registry named in the reference or on \
         loopback, not the default registry {DEFAULT_REGISTRY}",
        reference.name()
    )))
}

/// The first value of header `name`, if it is text.
pub(crate) fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// An error body as the distribution spec has it.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

/// One of its errors.
#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// `HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)`: the status and the
/// registry's first error, from at most a few KiB of the body.
pub(crate) fn status_message(response: &mut Response<Body>) -> String {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let _ = response
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    let detail = serde_json::from_slice::<ErrorBody>(&body)
        .ok()
        .and_then(|b| b.errors.into_iter().next())
        .map(|e| one_line(&format!("{}: {}", e.code, e.message), 160));
    match detail {
        Some(detail) => format!("HTTP {status} ({detail})"),
        None => format!("HTTP {status}"),
    }
}

/// `text` on one line of printable characters, at most `max` of them.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// Sorts a ureq error for `url` into what may pass and what will not.
fn classify(error: ureq::Error, url: &str) -> Failure {
    use ureq::Error as E;
    let unknown_host = || {
        let host = url.split("://").nth(1).unwrap_or(url);
        let host = host.split(['/', '?']).next().unwrap_or(host);
        Failure::Fatal(Error::Registry(format!(
            "unknown host {}",
            one_line(host, 200)
        )))
    };
    match error {
        E::HostNotFound => unknown_host(),
        // glibc's resolver answers through std as an I/O error: a name that
        // does not exist (EAI_NONAME, EAI_NODATA) will not appear on retry.
        E::Io(e) if is_unknown_name(&e) => unknown_host(),
        // rustls reports a refused certificate as InvalidData: no retry.
        E::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            let hint = if e.to_string().contains("certificate") {
                " (a registry with its own CA needs --ca-cert)"
            } else {
                ""
            };
            Failure::Fatal(Error::Registry(format!("TLS: {e}{hint}")))
        }
        E::Io(e) => Failure::transient(e.to_string()),
        E::Timeout(t) => Failure::transient(format!("timed out ({t})")),
        E::ConnectionFailed => Failure::transient("connection failed"),
        E::Protocol(e) => Failure::transient(format!("bad HTTP response: {e}")),
        E::Rustls(e) => Failure::Fatal(Error::Registry(format!(
            "TLS: {e} (a registry with its own CA needs --ca-cert)"
        ))),
        E::Tls(e) => Failure::Fatal(Error::Registry(format!("TLS: {e}"))),
        other => Failure::Fatal(Error::Registry(other.to_string())),
    }
}

/// Whether a lookup failed because the name does not exist (as opposed
/// to a resolver that did not answer, which is worth a retry).
fn is_unknown_name(e: &std::io::Error) -> bool {
    let text = e.to_string();
    text.contains("Name or service not known")
        || text.contains("No address associated with hostname")
}

/// The system's trusted roots, loaded once (SSL_CERT_FILE, SSL_CERT_DIR,
/// else the distribution's bundle, as OpenSSL finds them).
fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!("system certificates: {e}");
        }
        found
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

/// The certificates of PEM file `path` (`--ca-cert`), at least one.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let bad = |why: String| Error::Registry(format!("{}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| Error::io(path, e))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(bad(format!("larger than {MAX_CA_FILE} bytes")));
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(bad(format!("not a PEM certificate file: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
