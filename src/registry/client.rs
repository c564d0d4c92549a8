//! [`RegistryClient`]: the [`ImageSource`] of one repository in a registry,
//! over the distribution API: manifests by tag or digest (bounded, hashed),
//! blobs streamed through sha256 (resumed with a Range request when the
//! connection breaks), and ranges of blobs for lazy layers.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use oci_spec::image::{MediaType, ToDockerV2S2};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

use super::auth::Authenticator;
use super::credentials::AuthPaths;
use super::http::{header, status_message, Failure, Method, Transport};
use super::reference::{is_sha256_digest, Reference};
use super::source::{FetchedManifest, ImageSource, MAX_MANIFEST_SIZE};
use super::ClientOptions;
use crate::error::{Error, Result};

/// Size of the buffer blobs stream through.
const CHUNK: usize = 64 << 10;

/// Longest tag (distribution's limit).
const MAX_TAG_LEN: usize = 128;

/// A repository in a registry, as an [`ImageSource`].
pub struct RegistryClient {
    /// `registry/repository`, for errors.
    pub(super) name: String,
    pub(super) repository: String,
    pub(super) transport: Transport,
    pub(super) auth: Authenticator,
}

impl RegistryClient {
    /// The client for `reference`'s repository. Reads `--ca-cert` files and
    /// finds credentials now; connects only when asked for something.
    pub fn new(reference: &Reference, options: &ClientOptions) -> Result<Self> {
        let transport = Transport::new(reference, options)?;
        let paths = AuthPaths::from_env(options);
        let auth = Authenticator::new(options, &paths, &reference.registry, &reference.repository)?;
        Ok(Self {
            name: reference.name(),
            repository: reference.repository.clone(),
            transport,
            auth,
        })
    }

    /// The API URL of `kind` (`manifests`, `blobs`) `id` in the repository.
    pub(super) fn url(&self, kind: &str, id: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{id}",
            self.transport.base(),
            self.repository
        )
    }

    /// One GET of `url` with `headers`, answering one 401 challenge; a
    /// 401 or 403 after that is an error naming the credentials' source.
    fn send(
        &self,
        what: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<Response<Body>, Failure> {
        self.send_request(Method::Get, what, url, headers, None, None)
    }

    /// [`Self::send`] with any method, and a body for PUT and POST.
    pub(super) fn send_with(
        &self,
        method: Method,
        what: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::result::Result<Response<Body>, Failure> {
        self.send_request(method, what, url, headers, body, None)
    }

    /// [`Self::send`] whose requests (and the reading of their bodies) end
    /// within `limit`, when given.
    fn send_within(
        &self,
        what: &str,
        url: &str,
        headers: &[(&str, &str)],
        limit: Option<Duration>,
    ) -> std::result::Result<Response<Body>, Failure> {
        self.send_request(Method::Get, what, url, headers, None, limit)
    }

    /// The request behind [`Self::send_with`] and [`Self::send_within`].
    fn send_request(
        &self,
        method: Method,
        what: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        limit: Option<Duration>,
    ) -> std::result::Result<Response<Body>, Failure> {
        let mut challenged = false;
        loop {
            let authorization = self.auth.header();
            let mut all = headers.to_vec();
            if let Some(value) = authorization.as_deref() {
                all.push(("Authorization", value));
            }
            let response = self
                .transport
                .request(method, url, &all, body, limit)
                .map_err(|f| match f {
                    Failure::Fatal(Error::Registry(m)) => {
                        Failure::Fatal(Error::Registry(format!("{what}: {m}")))
                    }
                    other => other,
                })?;
            let status = response.status().as_u16();
            if status == 401 && !challenged {
                challenged = true;
                let challenge = header(&response, "www-authenticate");
                self.auth.on_unauthorized(
                    &self.transport,
                    what,
                    challenge,
                    authorization.as_deref(),
                )?;
                continue;
            }
            if status == 401 || status == 403 {
                return Err(self.auth.denied(what, status).into());
            }
            return Ok(response);
        }
    }

    /// One pass of a blob download, from the bytes `download` has on (a
    /// Range request when it has some), failing transiently when the body
    /// breaks off.
    fn blob_pass(
        &self,
        what: &str,
        url: &str,
        download: &mut Download<'_>,
    ) -> std::result::Result<(), Failure> {
        let written = download.written;
        let range = format!("bytes={written}-");
        let headers: &[(&str, &str)] = if written > 0 {
            &[("Range", &range)]
        } else {
            &[]
        };
        let mut response = self.send(what, url, headers)?;
        // A 200 is the whole blob again: what we have is passed over.
        let skip = match response.status().as_u16() {
            200 => written,
            206 if written > 0 => {
                if content_range_start(&response) != Some(written) {
                    return Err(fatal(format!(
                        "{what}: the registry answered a Range request from {written} \
                         with a different range"
                    )));
                }
                0
            }
            404 => {
                let message = status_message(&mut response);
                return Err(fatal(format!("{what}: blob unknown ({message})")));
            }
            _ => {
                let message = status_message(&mut response);
                return Err(fatal(format!("{what}: {message}")));
            }
        };
        let size = download.size;
        if let Some(length) = response.body().content_length() {
            if length > size - (written - skip) {
                return Err(fatal(format!(
                    "{what}: size overrun: the registry sends {length} bytes, the blob has {size}"
                )));
            }
        }
        let mut reader = response.body_mut().as_reader();
        let skipped = std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
            .map_err(|e| Failure::transient(format!("reading the body: {e}")))?;
        if skipped < skip {
            return Err(Failure::transient(format!(
                "short body: {skipped} of {size} bytes"
            )));
        }
        download.stream(what, &mut reader)
    }

    /// One attempt at filling `buf` from `offset` of blob `url`, given up
    /// (fatally) at `deadline`.
    fn range_pass(
        &self,
        what: &str,
        url: &str,
        offset: u64,
        buf: &mut [u8],
        deadline: Instant,
    ) -> std::result::Result<(), Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(past_deadline(what, 0, buf.len()));
        }
        let last = offset + buf.len() as u64 - 1;
        let range = format!("bytes={offset}-{last}");
        let mut response = self.send_within(what, url, &[("Range", &range)], Some(left))?;
        match response.status().as_u16() {
            206 => {}
            200 => {
                return Err(fatal(format!(
                    "{what}: the registry ignored the Range request (HTTP 200)"
                )))
            }
            404 => {
                let message = status_message(&mut response);
                return Err(fatal(format!("{what}: blob unknown ({message})")));
            }
            416 => {
                return Err(fatal(format!(
                    "{what}: past the end of the blob (HTTP 416)"
                )))
            }
            _ => {
                let message = status_message(&mut response);
                return Err(fatal(format!("{what}: {message}")));
            }
        }
        if content_range_start(&response) != Some(offset) {
            return Err(fatal(format!(
                "{what}: the registry answered with a different range"
            )));
        }
        if let Some(length) = response.body().content_length() {
            if length != buf.len() as u64 {
                return Err(fatal(format!(
                    "{what}: the registry sends {length} bytes for a range of {}",
                    buf.len()
                )));
            }
        }
        read_before_deadline(what, &mut response.body_mut().as_reader(), buf, deadline)
    }
}

/// Longest a range read may take in all, its retries and backoff waits
/// included, however the bytes trickle in: a lazy read waits for it, so a
/// registry that stalls, or sends a byte just within each read timeout,
/// gives EIO after this rather than holding the reader for minutes. A
/// range is at most a few MiB (8 in 15 s is 0.56 MB/s). The kernel reads
/// a page again once when its readahead failed: a reader of missing data
/// waits up to twice this before its EIO.
const RANGE_DEADLINE: Duration = Duration::from_secs(15);

/// The error of a range read given up at its deadline, `done` of `len`
/// bytes read: fatal, as the time for retries is spent.
fn past_deadline(what: &str, done: usize, len: usize) -> Failure {
    fatal(format!(
        "{what}: {done} of {len} bytes after {} s: given up",
        RANGE_DEADLINE.as_secs()
    ))
}

/// Fills `buf` from `body`, failing (for a retry) when it breaks off and
/// (fatally) past `deadline`.
fn read_before_deadline(
    what: &str,
    body: &mut impl Read,
    buf: &mut [u8],
    deadline: Instant,
) -> std::result::Result<(), Failure> {
    let mut done = 0;
    while done < buf.len() {
        if Instant::now() >= deadline {
            return Err(past_deadline(what, done, buf.len()));
        }
        match body.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(Failure::transient(format!(
                    "reading the body: it ends after {done} of {} bytes",
                    buf.len()
                )))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if Instant::now() >= deadline => {
                return Err(past_deadline(what, done, buf.len()))
            }
            Err(e) => return Err(Failure::transient(format!("reading the body: {e}"))),
        }
    }
    Ok(())
}

/// A blob download under way: what was written so far is hashed and kept
/// across passes, so a retry resumes where the last pass broke off.
struct Download<'a> {
    size: u64,
    written: u64,
    hasher: Sha256,
    sink: &'a mut dyn Write,
    progress: &'a dyn Fn(u64),
    buf: Vec<u8>,
}

impl Download<'_> {
    /// Streams `reader` through the hasher into the sink, up to `size`
    /// bytes in all; a body that ends early is a transient failure.
    fn stream(&mut self, what: &str, reader: &mut dyn Read) -> std::result::Result<(), Failure> {
        let size = self.size;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::transient(format!("reading the body: {e}"))),
            };
            if self.written + n as u64 > size {
                return Err(fatal(format!(
                    "{what}: size overrun: the registry sends more than the blob's {size} bytes"
                )));
            }
            self.hasher.update(&self.buf[..n]);
            self.sink
                .write_all(&self.buf[..n])
                .map_err(|e| fatal(format!("{what}: writing it: {e}")))?;
            self.written += n as u64;
            (self.progress)(self.written);
        }
        if self.written < size {
            return Err(Failure::transient(format!(
                "short body: {} of {size} bytes",
                self.written
            )));
        }
        Ok(())
    }
}

/// A fatal [`Failure`] with `message`.
pub(super) fn fatal(message: String) -> Failure {
    Failure::Fatal(Error::Registry(message))
}

/// The first byte a 206 response says it carries (`Content-Range: bytes
/// START-END/TOTAL`).
fn content_range_start(response: &Response<Body>) -> Option<u64> {
    let value = header(response, "content-range")?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// The manifest media types asked for, in order of preference.
fn accept() -> String {
    let mut types = Vec::new();
    for media in [MediaType::ImageIndex, MediaType::ImageManifest] {
        types.push(media.as_ref().to_string());
        if let Ok(docker) = media.to_docker_v2s2() {
            types.push(docker.to_string());
        }
    }
    types.join(", ")
}

/// Just a manifest's `mediaType`, for registries that omit Content-Type.
#[derive(Deserialize)]
struct MediaTypeField {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
}

/// Whether `id` may be a manifest reference: a tag or a sha256 digest.
fn is_manifest_reference(id: &str) -> bool {
    is_sha256_digest(id)
        || (!id.is_empty()
            && id.len() <= MAX_TAG_LEN
            && !id.starts_with(['.', '-'])
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn sha256_digest(hash: impl AsRef<[u8]>) -> String {
    let mut out = String::from("sha256:");
    for b in hash.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl ImageSource for RegistryClient {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn manifest(&self, reference: &str) -> Result<FetchedManifest> {
        let sep = if is_sha256_digest(reference) {
            '@'
        } else {
            ':'
        };
        let what = format!("{}{sep}{reference}", self.name);
        if !is_manifest_reference(reference) {
            return Err(Error::Invalid(format!(
                "{what}: not a tag or a sha256 digest"
            )));
        }
        let url = self.url("manifests", reference);
        let accept = accept();
        let (bytes, media_type) = self.transport.retrying(&what, || {
            let mut response = self.send(&what, &url, &[("Accept", &accept)])?;
            match response.status().as_u16() {
                200 => {}
                404 => {
                    let message = status_message(&mut response);
                    return Err(fatal(format!("{what}: manifest unknown ({message})")));
                }
                _ => {
                    let message = status_message(&mut response);
                    return Err(fatal(format!("{what}: {message}")));
                }
            }
            let too_big = || {
                fatal(format!(
                    "{what}: the manifest is larger than {MAX_MANIFEST_SIZE} bytes"
                ))
            };
            let length = response.body().content_length();
            if length.is_some_and(|l| l > MAX_MANIFEST_SIZE) {
                return Err(too_big());
            }
            let media_type = header(&response, "content-type")
                .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
                .unwrap_or_default();
            let mut bytes = Vec::with_capacity(length.unwrap_or(0) as usize);
            response
                .body_mut()
                .as_reader()
                .take(MAX_MANIFEST_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::transient(format!("reading the manifest: {e}")))?;
            if bytes.len() as u64 > MAX_MANIFEST_SIZE {
                return Err(too_big());
            }
            Ok((bytes, media_type))
        })?;
        let digest = sha256_digest(Sha256::digest(&bytes));
        if is_sha256_digest(reference) && digest != reference {
            return Err(Error::Registry(format!(
                "{what}: digest mismatch: expected {reference}, got {digest}"
            )));
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            serde_json::from_slice::<MediaTypeField>(&bytes)
                .ok()
                .and_then(|m| m.media_type)
                .unwrap_or(media_type)
        } else {
            media_type
        };
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    fn blob(
        &self,
        digest: &str,
        size: u64,
        sink: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let what = format!("{}@{digest}", self.name);
        if !is_sha256_digest(digest) {
            return Err(Error::Invalid(format!("{what}: not a sha256 digest")));
        }
        let url = self.url("blobs", digest);
        let mut download = Download {
            size,
            written: 0,
            hasher: Sha256::new(),
            sink,
            progress,
            buf: vec![0; CHUNK],
        };
        // A try that reaches a new MiB of the blob starts the count of tries
        // afresh: at most 4 tries per MiB, however the registry breaks off.
        self.transport.retrying_with(
            &what,
            &mut download,
            |d| d.written >> 20,
            |d| self.blob_pass(&what, &url, d),
        )?;
        let got = sha256_digest(download.hasher.finalize());
        if got != digest {
            return Err(Error::Registry(format!(
                "{what}: digest mismatch: expected {digest}, got {got}"
            )));
        }
        Ok(())
    }

    fn blob_range(&self, digest: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let what = format!("{}@{digest} bytes {offset}+{}", self.name, buf.len());
        if !is_sha256_digest(digest) {
            return Err(Error::Invalid(format!("{what}: not a sha256 digest")));
        }
        if buf.is_empty() {
            return Ok(());
        }
        if offset.checked_add(buf.len() as u64).is_none() {
            return Err(Error::Invalid(format!("{what}: the range overflows")));
        }
        let url = self.url("blobs", digest);
        let deadline = Instant::now() + RANGE_DEADLINE;
        self.transport.retrying(&what, || {
            self.range_pass(&what, &url, offset, buf, deadline)
        })
    }

    fn referrers(
        &self,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<super::source::Referrer>> {
        Ok(self.list_referrers(subject, artifact_type)?.descriptors)
    }
}

#[cfg(test)]
mod tests;
