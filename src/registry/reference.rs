//! Image references (`debian:13`, `127.0.0.1:5000/app@sha256:...`), parsed
//! and normalized as docker and podman do (distribution's `reference`
//! package): the default registry is docker.io, whose one-component names
//! are under `library/`; the default tag is `latest`.

use std::fmt;

use crate::error::{Error, Result};

/// The registry of names without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The host that serves [`DEFAULT_REGISTRY`]'s API.
pub const DEFAULT_REGISTRY_HOST: &str = "registry-1.docker.io";

/// Longest repository name (distribution's `NameTotalLengthMax`).
const MAX_NAME_LEN: usize = 255;

/// Longest tag.
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io`, `quay.io`, `127.0.0.1:5000`, `localhost:5000`.
    pub registry: String,
    /// `library/debian`, `app`, `org/team/app`.
    pub repository: String,
    /// The tag; `latest` when the reference gave neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:<64 lowercase hex>`, when pinned by digest.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text` (an optional `docker://` prefix is allowed).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("invalid image reference {text:?}: {why}"));
        let rest = text.strip_prefix("docker://").unwrap_or(text);
        if rest.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((name, digest)) => {
                if !is_sha256_digest(digest) {
                    return Err(bad("the digest is not sha256: and 64 lowercase hex digits"));
                }
                (name, Some(digest.to_string()))
            }
            None => (rest, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(at) => {
                let at = last_slash + at;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(bad(
                    "the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, repository) = split_registry(name);
        if !is_domain(registry) {
            return Err(bad("the registry is not a host name with an optional port"));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        if !repository.split('/').all(is_path_component) {
            return Err(bad("the repository name has an invalid component"));
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Self {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) that serves the registry's API.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DEFAULT_REGISTRY_HOST
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the registry is this machine (`localhost`, `127.0.0.0/8`,
    /// `[::1]`), where plain http may be used without naming it.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    /// The full form: `docker.io/library/debian:13`, `r/app@sha256:...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether `text` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The registry and repository parts of a name, as distribution's
/// `splitDockerDomain` splits them: the first component is a registry if
/// it has a `.` or `:`, is `localhost`, or has an uppercase letter.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            let first = if first == "index.docker.io" {
                DEFAULT_REGISTRY
            } else {
                first
            };
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

/// The host part of `host[:port]`.
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split_inclusive(']').next().unwrap_or(registry);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// `host[:port]`, the host being dot-separated labels of letters, digits
/// and inner hyphens, or a bracketed IPv6 address.
fn is_domain(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label_ok)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A repository path component: lowercase alphanumerics separated by one
/// `.`, one or two `_`, or any number of `-`.
fn is_path_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &text[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(text: &str) -> String {
        Reference::parse(text).unwrap().to_string()
    }

    #[test]
    fn names_normalize_as_docker_does() {
        assert_eq!(full("debian"), "docker.io/library/debian:latest");
        assert_eq!(full("debian:13"), "docker.io/library/debian:13");
        assert_eq!(full("docker://debian:13"), "docker.io/library/debian:13");
        assert_eq!(
            full("index.docker.io/debian"),
            "docker.io/library/debian:latest"
        );
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("quay.io/org/app:v1.2"), "quay.io/org/app:v1.2");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b/c:t"), "localhost:5000/a/b/c:t");
        assert_eq!(full("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            full(&format!("127.0.0.1:5000/app@{d}")),
            format!("127.0.0.1:5000/app@{d}")
        );
        assert_eq!(
            full(&format!("app:v1@{d}")),
            format!("docker.io/library/app:v1@{d}")
        );
        let r = Reference::parse(&format!("app:v1@{d}")).unwrap();
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.api_host(), DEFAULT_REGISTRY_HOST);
    }

    #[test]
    fn loopback_registries_are_recognized() {
        assert!(Reference::parse("localhost:5000/a").unwrap().is_loopback());
        assert!(Reference::parse("127.0.0.9:5000/a").unwrap().is_loopback());
        assert!(Reference::parse("[::1]:5000/a").unwrap().is_loopback());
        assert!(!Reference::parse("10.0.0.1:5000/a").unwrap().is_loopback());
        assert!(!Reference::parse("a").unwrap().is_loopback());
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "Debian",
            "debian:",
            "debian:-x",
            "debian@sha256:abc",
            "a//b",
            "a/../b",
            "a/b_-c",
            "host:port/app",
            "-host.io/app",
            "app:t@sha512:00",
            &format!("a:{}", "t".repeat(129)),
            &format!("r.io/{}", "a".repeat(260)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
