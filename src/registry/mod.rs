//! Images where they live: OCI registries (and OCI image layouts on disk),
//! read through one interface, [`ImageSource`], that the store's `pull`
//! and the lazy layers use. Knows nothing of FUSE, images or the store.
//!
//! - [`reference`](mod@reference): image references as docker and podman parse them;
//! - [`source`]: the [`ImageSource`] interface: manifests, whole blobs
//!   (verified as they stream) and ranges of blobs;
//! - [`client`]: [`RegistryClient`], that interface over the distribution
//!   API, on `http` (transport: TLS, timeouts, retries), `credentials`
//!   (`--creds` and auth files) and `auth` (challenges, bearer tokens);
//! - [`oci_layout`]: the interface over an OCI image layout (`oci:DIR`);
//! - [`push`]: what the client writes: blobs, manifests, the referrers
//!   tag schema; [`referrers`]: the layer-index artifacts `attach` pushes
//!   and lazy mounts look for;
//! - [`manifest`]: typed manifests and indexes (OCI and Docker), platform
//!   selection, layer media types, the run config.

mod auth;
pub mod client;
mod credentials;
mod http;
pub mod manifest;
pub mod oci_layout;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod source;

pub use client::RegistryClient;
pub use reference::Reference;
pub use source::{FetchedManifest, ImageSource, Referrer, MAX_MANIFEST_SIZE};

use std::path::PathBuf;

use crate::error::Result;

/// How to reach registries, as the command line sets it.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Plain http is allowed (`--insecure`): only for a registry the
    /// reference names explicitly, or one on loopback.
    pub insecure: bool,
    /// Certificates trusted besides the system's roots (`--ca-cert`).
    pub ca_certs: Vec<PathBuf>,
    /// `--creds USER:PASS`, tried before the auth files.
    pub creds: Option<(String, String)>,
    /// `--authfile`, or `REGISTRY_AUTH_FILE`: read instead of the default
    /// auth files.
    pub auth_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientOptions {
    /// Everything but the credentials' values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("insecure", &self.insecure)
            .field("ca_certs", &self.ca_certs)
            .field("creds", &self.creds.as_ref().map(|_| "<redacted>"))
            .field("auth_file", &self.auth_file)
            .finish()
    }
}

/// A source for the registry `reference` names, reached as `options` say.
/// Reads `--ca-cert` files and finds credentials now; connects only when
/// asked for something.
pub fn open(reference: &Reference, options: &ClientOptions) -> Result<Box<dyn ImageSource>> {
    Ok(Box::new(RegistryClient::new(reference, options)?))
}

/// [`open`], every request (its body read included) done by `deadline`
/// or failed: for servers, whose callers must not wait on a trickling
/// registry.
pub fn open_until(
    reference: &Reference,
    options: &ClientOptions,
    deadline: std::time::Instant,
) -> Result<Box<dyn ImageSource>> {
    let mut client = RegistryClient::new(reference, options)?;
    client.transport.deadline = Some(deadline);
    Ok(Box::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_credentials() {
        let options = ClientOptions {
            creds: Some(("alice".into(), "hunter2".into())),
            ..ClientOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
