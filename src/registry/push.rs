//! What [`RegistryClient`] writes, for `attach`: blobs (a `HEAD` first,
//! then `POST /blobs/uploads/` and one monolithic `PUT ?digest=`),
//! manifests (by digest or tag), and the referrers of a manifest: listed
//! through the OCI 1.1 referrers API or, where a registry lacks it (a 404,
//! as docker-registry 2.8 answers), through the referrers tag schema, an
//! index tagged `sha256-<hex>` that the writer keeps up to date.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client::{fatal, sha256_digest, RegistryClient};
use super::http::{header, status_message, Failure, Method};
use super::manifest::{MAX_ENTRIES, OCI_INDEX};
use super::reference::is_sha256_digest;
use super::source::{Referrer, MAX_MANIFEST_SIZE};
use crate::error::{Error, Result};

/// The referrers of a manifest and how the registry lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrers {
    /// Every referrer listed.
    pub descriptors: Vec<Referrer>,
    /// Whether the registry has the referrers API (then it indexes
    /// referrers itself and the tag schema is not kept).
    pub api: bool,
}

/// A referrers listing: an OCI index (API answer or tag-schema index).
#[derive(Deserialize)]
struct Listing {
    /// Each parsed on its own: one malformed entry is skipped, not the
    /// listing.
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

/// The tag-schema index as written back: whatever else it holds is kept.
#[derive(Serialize, Deserialize)]
struct TagIndex {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// The referrers tag of manifest `subject`: `sha256-<hex>`.
pub fn referrers_tag(subject: &str) -> Result<String> {
    if !is_sha256_digest(subject) {
        return Err(Error::Invalid(format!("{subject:?}: not a sha256 digest")));
    }
    Ok(subject.replacen(':', "-", 1))
}

impl RegistryClient {
    /// Asks for tokens with push rights from now on.
    pub fn for_push(&self) {
        self.auth.want_push();
    }

    /// One GET of a small JSON document at `url`: its bytes, or `None` on
    /// a 404. At most [`MAX_MANIFEST_SIZE`] bytes.
    fn get_small(&self, what: &str, url: &str, accept: &str) -> Result<Option<Vec<u8>>> {
        self.transport.retrying(what, || {
            let mut response =
                self.send_with(Method::Get, what, url, &[("Accept", accept)], None)?;
            match response.status().as_u16() {
                200 => {}
                404 => return Ok(None),
                _ => {
                    let message = status_message(&mut response);
                    return Err(fatal(format!("{what}: {message}")));
                }
            }
            let mut bytes = Vec::new();
            response
                .body_mut()
                .as_reader()
                .take(MAX_MANIFEST_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::transient(format!("reading the body: {e}")))?;
            if bytes.len() as u64 > MAX_MANIFEST_SIZE {
                return Err(fatal(format!(
                    "{what}: larger than {MAX_MANIFEST_SIZE} bytes"
                )));
            }
            Ok(Some(bytes))
        })
    }

    /// The referrers of manifest `subject`: the API's answer (filtered
    /// by `artifact_type` if the registry does), else the tag-schema
    /// index, else none.
    pub fn list_referrers(&self, subject: &str, artifact_type: Option<&str>) -> Result<Referrers> {
        let tag = referrers_tag(subject)?;
        let what = format!("{}: referrers of {subject}", self.name);
        let mut api_url = self.url("referrers", subject);
        if let Some(wanted) = artifact_type {
            api_url.push_str("?artifactType=");
            api_url.push_str(&super::auth::percent_encode(wanted));
        }
        if let Some(bytes) = self.get_small(&what, &api_url, OCI_INDEX)? {
            return Ok(Referrers {
                descriptors: parse_listing(&what, &bytes)?,
                api: true,
            });
        }
        let tag_url = self.url("manifests", &tag);
        let what = format!("{}:{tag}", self.name);
        let descriptors = match self.get_small(&what, &tag_url, OCI_INDEX)? {
            Some(bytes) => parse_listing(&what, &bytes)?,
            None => Vec::new(),
        };
        Ok(Referrers {
            descriptors,
            api: false,
        })
    }

    /// Uploads blob `bytes` unless the repository has it: whether it was
    /// uploaded. Its digest is computed here.
    pub fn push_blob(&self, bytes: &[u8]) -> Result<(String, bool)> {
        let digest = sha256_digest(Sha256::digest(bytes));
        let what = format!("{}@{digest}", self.name);
        let url = self.url("blobs", &digest);
        let present = self.transport.retrying(&what, || {
            let mut response = self.send_with(Method::Head, &what, &url, &[], None)?;
            match response.status().as_u16() {
                200 => Ok(true),
                404 => Ok(false),
                _ => Err(fatal(format!("{what}: {}", status_message(&mut response)))),
            }
        })?;
        if present {
            return Ok((digest, false));
        }
        let start = format!(
            "{}/v2/{}/blobs/uploads/",
            self.transport.base(),
            self.repository
        );
        self.transport.retrying(&what, || {
            let mut response = self.send_with(Method::Post, &what, &start, &[], Some(&[]))?;
            if response.status().as_u16() != 202 {
                let message = status_message(&mut response);
                return Err(fatal(format!("{what}: starting the upload: {message}")));
            }
            let location = header(&response, "location")
                .unwrap_or_default()
                .to_string();
            let target = self.upload_url(&what, &location, &digest)?;
            let headers = [("Content-Type", "application/octet-stream")];
            let mut response =
                self.send_with(Method::Put, &what, &target, &headers, Some(bytes))?;
            match response.status().as_u16() {
                201 | 204 => Ok(()),
                _ => {
                    let message = status_message(&mut response);
                    Err(fatal(format!("{what}: uploading: {message}")))
                }
            }
        })?;
        Ok((digest, true))
    }

    /// The URL to finish an upload at: the registry's `Location` (relative
    /// to the registry, or absolute on the same scheme, host and port, so
    /// credentials never go elsewhere) with `digest=` added.
    fn upload_url(
        &self,
        what: &str,
        location: &str,
        digest: &str,
    ) -> std::result::Result<String, Failure> {
        let base = self.transport.base();
        let url = if location.starts_with('/') && !location.starts_with("//") {
            format!("{base}{location}")
        } else if location
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            location.to_string()
        } else {
            return Err(fatal(format!(
                "{what}: the upload location {:?} is not on {base}",
                super::http::one_line(location, 200)
            )));
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}digest={}", digest.replace(':', "%3A")))
    }

    /// Puts manifest `bytes` of `media_type` as `reference` (its digest,
    /// or a tag): gives its digest.
    pub fn push_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<String> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::Invalid(format!(
                "{}:{reference}: a manifest larger than {MAX_MANIFEST_SIZE} bytes",
                self.name
            )));
        }
        let digest = sha256_digest(Sha256::digest(bytes));
        let what = format!("{}:{reference}", self.name);
        let url = self.url("manifests", reference);
        self.transport.retrying(&what, || {
            let headers = [("Content-Type", media_type)];
            let mut response = self.send_with(Method::Put, &what, &url, &headers, Some(bytes))?;
            if !matches!(response.status().as_u16(), 200 | 201 | 204) {
                let message = status_message(&mut response);
                return Err(fatal(format!("{what}: putting the manifest: {message}")));
            }
            match header(&response, "docker-content-digest") {
                Some(got) if got.trim() != digest => Err(fatal(format!(
                    "{what}: the registry stored digest {} for manifest {digest}",
                    super::http::one_line(got, 80)
                ))),
                _ => Ok(()),
            }
        })?;
        Ok(digest)
    }

    /// Adds `referrer` to the tag-schema index of `subject` (made if
    /// missing) and puts it back; entries of the same digest, and those
    /// `replaces` says the new one supersedes, are dropped. Two writers at
    /// once may lose one's entry: the last put wins, as the schema allows
    /// no better.
    pub fn add_to_referrers_tag(
        &self,
        subject: &str,
        referrer: &Referrer,
        replaces: &dyn Fn(&Referrer) -> bool,
    ) -> Result<()> {
        let tag = referrers_tag(subject)?;
        let what = format!("{}:{tag}", self.name);
        let url = self.url("manifests", &tag);
        let mut index = match self.get_small(&what, &url, OCI_INDEX)? {
            Some(bytes) => serde_json::from_slice::<TagIndex>(&bytes)
                .map_err(|e| Error::Registry(format!("{what}: not an image index: {e}")))?,
            None => TagIndex {
                schema_version: 2,
                media_type: Some(OCI_INDEX.into()),
                manifests: Vec::new(),
                other: serde_json::Map::new(),
            },
        };
        index
            .manifests
            .retain(|m| match serde_json::from_value::<Referrer>(m.clone()) {
                Ok(old) => old.digest != referrer.digest && !replaces(&old),
                Err(_) => true,
            });
        if index.manifests.len() >= MAX_ENTRIES {
            return Err(Error::Registry(format!(
                "{what}: already lists {MAX_ENTRIES} referrers"
            )));
        }
        let entry = serde_json::to_value(referrer).map_err(|e| Error::Invalid(e.to_string()))?;
        index.manifests.push(entry);
        index.media_type = Some(OCI_INDEX.into());
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::Invalid(e.to_string()))?;
        self.push_manifest(&tag, OCI_INDEX, &bytes)?;
        Ok(())
    }
}

/// The descriptors of a referrers listing, bounded in number.
fn parse_listing(what: &str, bytes: &[u8]) -> Result<Vec<Referrer>> {
    let listing: Listing = serde_json::from_slice(bytes).map_err(|e| {
        Error::Registry(format!(
            "{what}: not a referrers index: {}",
            super::http::one_line(&e.to_string(), 160)
        ))
    })?;
    if listing.manifests.len() > MAX_ENTRIES {
        return Err(Error::Registry(format!(
            "{what}: more than {MAX_ENTRIES} referrers"
        )));
    }
    let mut referrers = Vec::with_capacity(listing.manifests.len());
    for entry in listing.manifests {
        match serde_json::from_value::<Referrer>(entry) {
            Ok(referrer) => referrers.push(referrer),
            Err(e) => tracing::warn!("{what}: a listed referrer skipped: {e}"),
        }
    }
    Ok(referrers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrers_tags_replace_the_colon() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            referrers_tag(&digest).unwrap(),
            format!("sha256-{}", "ab".repeat(32))
        );
        assert!(referrers_tag("sha256:../x").is_err());
    }

    #[test]
    fn tag_index_keeps_what_it_does_not_know() {
        let text = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"m","digest":"sha256:aa","size":1,"x":1}],"annotations":{"a":"b"}}"#;
        let index: TagIndex = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&index).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }

    #[test]
    fn listings_are_bounded_and_typed() {
        // A malformed entry is skipped; the others are kept.
        let one = r#"{"mediaType":"m","digest":"d","size":1}"#;
        let mixed = format!("{{\"manifests\":[{{}},{one}]}}");
        let got = parse_listing("x", mixed.as_bytes()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].digest, "d");
        assert!(parse_listing("x", b"{\"manifests\":{}}").is_err());
        assert_eq!(parse_listing("x", b"{}").unwrap(), Vec::new());
        let many = format!(
            "{{\"manifests\":[{}]}}",
            vec![r#"{"mediaType":"m","digest":"d","size":1}"#; MAX_ENTRIES + 1].join(",")
        );
        assert!(parse_listing("x", many.as_bytes()).is_err());
    }
}
