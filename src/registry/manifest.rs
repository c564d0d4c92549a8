//! What a manifest says, typed with `oci-spec`: OCI indexes and manifests
//! and their Docker equivalents (manifest list, schema 2), told apart by
//! media type or, when it is absent, by whether the JSON lists `manifests`
//! or `layers`; choosing a platform from an index; what each layer's
//! media type means; the parts of an image config a runtime needs.

use std::fmt;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::error::{Error, Result};

use super::reference::is_sha256_digest;
use super::source::{FetchedManifest, MAX_MANIFEST_SIZE};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (a multi-platform index).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every manifest media type understood, most preferred first (the
/// registry client's `Accept`).
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// containerd's EROFS layer media types start with this.
pub const EROFS_LAYER_PREFIX: &str = "application/vnd.erofs.layer";

/// Most manifests an index may list, and layers a manifest may have.
pub const MAX_ENTRIES: usize = 4096;

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An index (OCI) or manifest list (Docker): one manifest per platform.
    Index(Box<ImageIndex>),
    /// One image: a config and layers.
    Image(Box<ImageManifest>),
}

/// The one field that tells documents without a media type apart.
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
}

impl Manifest {
    /// Parses `fetched`, by the media type the source gave, the document's
    /// own `mediaType`, or else its shape. `name` names it in errors.
    pub fn parse(fetched: &FetchedManifest, name: &str) -> Result<Self> {
        let bad =
            |why: String| Error::Invalid(format!("{name}: manifest {}: {why}", fetched.digest));
        if fetched.bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(bad(format!("larger than {} MiB", MAX_MANIFEST_SIZE >> 20)));
        }
        let shape: Shape =
            serde_json::from_slice(&fetched.bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let given = media_type_base(&fetched.media_type);
        let media_type = match given {
            OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST => given,
            _ => shape.media_type.as_deref().unwrap_or(""),
        };
        let is_index = match media_type {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            "" if shape.manifests.is_some() && shape.layers.is_none() => true,
            "" if shape.layers.is_some() && shape.manifests.is_none() => false,
            "" => return Err(bad("neither an index nor an image manifest".into())),
            other => return Err(bad(format!("unsupported media type {other}"))),
        };
        let parsed = if is_index {
            let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
                .map_err(|e| bad(format!("not an image index: {e}")))?;
            if index.manifests().len() > MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} manifests")));
            }
            index
                .manifests()
                .iter()
                .try_for_each(|d| check_digest(d, &bad))?;
            Self::Index(Box::new(index))
        } else {
            let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
                .map_err(|e| bad(format!("not an image manifest: {e}")))?;
            if manifest.layers().len() > MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} layers")));
            }
            check_digest(manifest.config(), &bad)?;
            manifest
                .layers()
                .iter()
                .try_for_each(|d| check_digest(d, &bad))?;
            Self::Image(Box::new(manifest))
        };
        Ok(parsed)
    }
}

/// `type/subtype` without parameters (`; charset=utf-8`).
fn media_type_base(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// Refuses a descriptor whose digest is not `sha256:<64 hex>` (digests
/// become file names in stores).
fn check_digest(d: &Descriptor, bad: &dyn Fn(String) -> Error) -> Result<()> {
    let digest = d.digest().to_string();
    if is_sha256_digest(&digest) {
        Ok(())
    } else {
        Err(bad(format!("unsupported digest {digest:?}")))
    }
}

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// Go's architecture name: `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's: linux and Go's name for the architecture.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(Error::Invalid(format!(
                "invalid platform {text:?}: expected os/arch[/variant], e.g. linux/arm64"
            ))),
        }
    }

    /// Whether an index entry for `other` serves this platform. The
    /// variant counts only when both name one, and arm64's v8 is arm64's
    /// default (as containerd's matcher normalizes it).
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && match (norm(self), norm(other)) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The platform of an index entry, if it names one.
    fn of(d: &Descriptor) -> Option<Self> {
        d.platform().as_ref().map(|p| Self {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
    }
}

impl fmt::Display for Platform {
    /// `os/arch[/variant]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The entry of `index` for `wanted`: the first that matches, preferring
/// an exact variant. Errors list the platforms the index offers.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
    name: &str,
) -> Result<&'a Descriptor> {
    let entries: Vec<(&Descriptor, Platform)> = index
        .manifests()
        .iter()
        .filter_map(|d| Platform::of(d).map(|p| (d, p)))
        .collect();
    let exact = entries.iter().find(|(_, p)| p == wanted);
    if let Some((d, _)) = exact.or_else(|| entries.iter().find(|(_, p)| wanted.matches(p))) {
        return Ok(d);
    }
    let offered: Vec<String> = entries.iter().map(|(_, p)| p.to_string()).collect();
    Err(Error::Invalid(format!(
        "{name}: no manifest for platform {wanted}; the index offers: {}",
        if offered.is_empty() {
            "none with a platform".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

/// What a layer blob is, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayerKind {
    /// A tar, uncompressed.
    #[serde(rename = "tar")]
    Tar,
    /// A gzip-compressed tar.
    #[serde(rename = "tar+gzip")]
    TarGzip,
    /// A zstd-compressed tar (zstd:chunked included).
    #[serde(rename = "tar+zstd")]
    TarZstd,
    /// An EROFS image, used as it is.
    #[serde(rename = "erofs")]
    Erofs,
    /// A Nydus bootstrap layer (a tar whose `image/image.boot` is the
    /// RAFS v6 bootstrap): set by the store for a Nydus manifest's
    /// annotated layer, never by [`LayerKind::of`].
    #[serde(rename = "nydus-bootstrap")]
    NydusBootstrap,
    /// A Nydus data blob, kept as it is and read through the bootstrap:
    /// set by the store for a Nydus manifest, never by [`LayerKind::of`].
    #[serde(rename = "nydus-blob")]
    NydusBlob,
}

impl LayerKind {
    /// Classifies `media_type` (OCI and Docker names, non-distributable
    /// ones included); EROFS layers are any type ending in `.erofs`, or
    /// containerd's newer `application/vnd.erofs.layer.v1`, with no
    /// `+suffix`, as containerd's `IsErofsMediaType` says.
    pub fn of(media_type: &str) -> Result<Self> {
        let base = media_type_base(media_type);
        let kind = match base {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Self::Tar,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Self::TarGzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Self::TarZstd,
            t if !t.contains('+')
                && (t.ends_with(".erofs") || t.starts_with(EROFS_LAYER_PREFIX)) =>
            {
                Self::Erofs
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "layer media type {media_type:?} (neither a tar, tar+gzip, tar+zstd nor an EROFS layer)"
                )))
            }
        };
        Ok(kind)
    }
}

/// The parts of an image config a runtime needs (`crun`, `podman run
/// --rootfs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// The default arguments.
    pub cmd: Vec<String>,
    /// `NAME=VALUE` pairs.
    pub env: Vec<String>,
    /// `user[:group]`, empty for root.
    pub user: String,
    /// The working directory, empty for `/`.
    pub working_dir: String,
}

/// Parses an image config blob (OCI or Docker: the same JSON).
pub fn parse_config(bytes: &[u8], name: &str) -> Result<ImageConfiguration> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::Invalid(format!(
            "{name}: image config larger than 4 MiB"
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Invalid(format!("{name}: not an image config: {e}")))
}

/// The runtime parts of `config`.
pub fn run_config(config: &ImageConfiguration) -> RunConfig {
    let Some(c) = config.config() else {
        return RunConfig::default();
    };
    RunConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(json: &str, media_type: &str) -> FetchedManifest {
        FetchedManifest {
            bytes: json.as_bytes().to_vec(),
            media_type: media_type.into(),
            digest: "sha256:00".into(),
        }
    }

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn manifest_json(media_type: Option<&str>) -> String {
        let mt = media_type.map_or(String::new(), |t| format!(r#""mediaType":"{t}","#));
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":3}}]}}"#,
            d('a'),
            d('b')
        )
    }

    fn index_json(media_type: Option<&str>, platforms: &[(&str, &str, Option<&str>)]) -> String {
        let mt = media_type.map_or(String::new(), |t| format!(r#""mediaType":"{t}","#));
        let entries: Vec<String> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let v = variant.map_or(String::new(), |v| format!(r#","variant":"{v}""#));
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"{os}","architecture":"{arch}"{v}}}}}"#,
                    d(char::from_digit(i as u32 + 1, 10).unwrap())
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,{mt}"manifests":[{}]}}"#,
            entries.join(",")
        )
    }

    #[test]
    fn documents_are_told_apart_with_or_without_media_types() {
        for (json, given) in [
            (manifest_json(Some(DOCKER_MANIFEST)), ""),
            (manifest_json(None), OCI_MANIFEST),
            (manifest_json(None), "application/octet-stream"),
            (manifest_json(None), ""),
        ] {
            let m = Manifest::parse(&fetched(&json, given), "r").unwrap();
            assert!(
                matches!(m, Manifest::Image(ref i) if i.layers().len() == 1),
                "{json}"
            );
        }
        let platforms = [("linux", "amd64", None)];
        for (json, given) in [
            (index_json(Some(DOCKER_LIST), &platforms), ""),
            (index_json(None, &platforms), OCI_INDEX),
            (index_json(None, &platforms), ""),
        ] {
            let m = Manifest::parse(&fetched(&json, given), "r").unwrap();
            assert!(matches!(m, Manifest::Index(_)), "{json}");
        }
        let err = Manifest::parse(&fetched(r#"{"schemaVersion":2}"#, ""), "r/x").unwrap_err();
        assert!(err.to_string().contains("r/x"), "{err}");
        let err = Manifest::parse(&fetched(&manifest_json(None), "text/html"), "r");
        assert!(
            err.is_ok(),
            "an unknown Content-Type falls back to the shape"
        );
        let schema1 = r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        let err = Manifest::parse(&fetched(schema1, ""), "r").unwrap_err();
        assert!(err.to_string().contains("unsupported media type"), "{err}");
        let huge = " ".repeat(MAX_MANIFEST_SIZE as usize + 1);
        assert!(Manifest::parse(&fetched(&huge, ""), "r").is_err());
        let bad_digest = manifest_json(None).replace(&d('b'), "sha512:00");
        assert!(Manifest::parse(&fetched(&bad_digest, ""), "r").is_err());
    }

    #[test]
    fn platforms_are_selected_with_arm64_variants_loosely() {
        let json = index_json(
            Some(OCI_INDEX),
            &[
                ("linux", "amd64", None),
                ("linux", "arm64", Some("v8")),
                ("linux", "arm", Some("v7")),
            ],
        );
        let Manifest::Index(index) = Manifest::parse(&fetched(&json, ""), "r").unwrap() else {
            panic!("not an index")
        };
        let pick = |p: &str| {
            select_platform(&index, &Platform::parse(p).unwrap(), "r")
                .map(|d| d.digest().to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), d('1'));
        assert_eq!(pick("linux/arm64").unwrap(), d('2'));
        assert_eq!(pick("linux/arm64/v8").unwrap(), d('2'));
        assert_eq!(pick("linux/arm/v7").unwrap(), d('3'));
        let err = pick("linux/arm/v6").unwrap_err().to_string();
        assert!(
            err.contains("linux/arm/v6")
                && err.contains("linux/amd64, linux/arm64/v8, linux/arm/v7"),
            "{err}"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        assert_eq!(Platform::host().os, "linux");
        assert!(!Platform::host().architecture.contains('_'));
    }

    #[test]
    fn layer_media_types_are_classified() {
        for (t, kind) in [
            ("application/vnd.oci.image.layer.v1.tar", LayerKind::Tar),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                LayerKind::TarGzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                LayerKind::TarZstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                LayerKind::TarGzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                LayerKind::Tar,
            ),
        ] {
            assert_eq!(LayerKind::of(t).unwrap(), kind, "{t}");
        }
        assert_eq!(
            LayerKind::of("application/vnd.erofs.image.layer.v1.erofs").unwrap(),
            LayerKind::Erofs
        );
        assert_eq!(
            LayerKind::of("application/x.erofs").unwrap(),
            LayerKind::Erofs
        );
        assert_eq!(
            LayerKind::of("application/vnd.erofs.layer.v1").unwrap(),
            LayerKind::Erofs
        );
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.erofs+gzip.erofs",
            "application/vnd.erofs.layer.v1+zstd",
            "application/octet-stream",
        ] {
            let err = LayerKind::of(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn configs_give_what_a_runtime_needs() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"Env":["PATH=/bin"],"User":"1000:1000","WorkingDir":"/srv"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = parse_config(json, "r").unwrap();
        let run = run_config(&config);
        assert_eq!(run.entrypoint, ["/bin/sh"]);
        assert_eq!(run.cmd, ["-c", "true"]);
        assert_eq!(run.env, ["PATH=/bin"]);
        assert_eq!(run.user, "1000:1000");
        assert_eq!(run.working_dir, "/srv");
        assert!(parse_config(b"[]", "r").is_err());
    }
}
