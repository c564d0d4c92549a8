//! An [`ImageSource`] over an OCI image layout directory (what `skopeo
//! copy ... oci:DIR:TAG` writes: `oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), named `oci:DIR[:TAG]`. Everything read from it
//! is bounded and checked as a registry's answers are: sizes before
//! reading, digests as blobs stream.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

use super::reference::is_sha256_digest;
use super::source::{FetchedManifest, ImageSource, MAX_MANIFEST_SIZE};

/// The annotation naming a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `oci:DIR[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayoutReference {
    /// The layout directory, absolute.
    pub dir: PathBuf,
    /// The manifest's `org.opencontainers.image.ref.name`; none: the
    /// layout's only manifest.
    pub tag: Option<String>,
}

impl LayoutReference {
    /// Parses `oci:DIR[:TAG]`: `None` if `text` does not start with
    /// `oci:`. When all of `DIR:TAG` names a directory it is the
    /// directory; otherwise the part after the last colon is the tag.
    pub fn parse(text: &str) -> Option<Result<Self>> {
        let rest = text.strip_prefix("oci:")?;
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((dir, tag)) if !Path::new(rest).is_dir() => (dir, Some(tag.to_string())),
            _ => (rest, None),
        };
        if dir.is_empty() || tag.as_deref() == Some("") {
            return Some(Err(Error::Invalid(format!(
                "invalid reference {text:?}: expected oci:DIR[:TAG]"
            ))));
        }
        let dir = std::path::absolute(dir).unwrap_or_else(|_| PathBuf::from(dir));
        Some(Ok(Self { dir, tag }))
    }
}

impl fmt::Display for LayoutReference {
    /// `oci:/abs/dir[:tag]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.dir.display())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// An OCI image layout, read as an [`ImageSource`].
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// The layout in `dir`; it must hold `index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("index.json").is_file() {
            return Err(Error::Invalid(format!(
                "oci:{}: not an OCI image layout (no index.json)",
                dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// `blobs/sha256/<hex>` of `digest`, which must be a sha256 digest.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        if !is_sha256_digest(digest) {
            return Err(Error::Invalid(format!(
                "{}: not a sha256 digest: {digest:?}",
                self.name()
            )));
        }
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]))
    }

    /// Reads a small file whole, refusing one over the manifest limit.
    fn read_small(&self, path: &Path) -> Result<Vec<u8>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::Invalid(format!(
                "{}: larger than {} MiB",
                path.display(),
                MAX_MANIFEST_SIZE >> 20
            )));
        }
        Ok(bytes)
    }

    /// The layout's `index.json`.
    fn index(&self) -> Result<ImageIndex> {
        let path = self.dir.join("index.json");
        let bytes = self.read_small(&path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: not an image index: {e}", path.display())))
    }
}

impl ImageSource for OciLayout {
    fn name(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    /// `reference`: a tag (`org.opencontainers.image.ref.name`), a digest,
    /// or empty for the layout's only manifest.
    fn manifest(&self, reference: &str) -> Result<FetchedManifest> {
        let (digest, media_type, size) = if is_sha256_digest(reference) {
            (reference.to_string(), String::new(), None)
        } else {
            let index = self.index()?;
            let found: Vec<_> = index
                .manifests()
                .iter()
                .filter(|d| {
                    reference.is_empty()
                        || d.annotations()
                            .as_ref()
                            .and_then(|a| a.get(REF_NAME))
                            .is_some_and(|t| t == reference)
                })
                .collect();
            let d = match (found.as_slice(), reference) {
                ([d], _) => *d,
                ([], "") => return Err(Error::Invalid(format!("{}: holds no image", self.name()))),
                ([], tag) => {
                    return Err(Error::Invalid(format!(
                        "{}: no image tagged {tag:?}",
                        self.name()
                    )))
                }
                (many, "") => {
                    return Err(Error::Invalid(format!(
                        "{}: holds {} images: name one as oci:DIR:TAG",
                        self.name(),
                        many.len()
                    )))
                }
                (_, tag) => {
                    return Err(Error::Invalid(format!(
                        "{}: several images tagged {tag:?}",
                        self.name()
                    )))
                }
            };
            (
                d.digest().to_string(),
                d.media_type().to_string(),
                Some(d.size()),
            )
        };
        if size.is_some_and(|s| s > MAX_MANIFEST_SIZE) {
            return Err(Error::Invalid(format!(
                "{}: manifest {digest} is larger than {} MiB",
                self.name(),
                MAX_MANIFEST_SIZE >> 20
            )));
        }
        let bytes = self.read_small(&self.blob_path(&digest)?)?;
        let got = sha256_digest(&bytes);
        if got != digest || size.is_some_and(|s| s != bytes.len() as u64) {
            return Err(Error::Invalid(format!(
                "{}: manifest {digest} does not match its digest or size (got {got}, {} bytes)",
                self.name(),
                bytes.len()
            )));
        }
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
        let path = self.blob_path(digest)?;
        tracing::debug!("fetching blob {digest} from {}", self.name());
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        copy_verified(
            file.take(size.saturating_add(1)),
            digest,
            size,
            sink,
            progress,
        )
        .map_err(|e| e.named(&self.name(), digest, &path))
    }

    fn blob_range(&self, digest: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        file.read_exact_at(buf, offset)
            .map_err(|e| Error::io(&path, e))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    hex_digest(Sha256::digest(bytes).as_slice())
}

fn hex_digest(hash: &[u8]) -> String {
    format!("sha256:{}", crate::format::hex(hash))
}

/// Why a streamed blob was refused.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source or writing the sink failed.
    Io(std::io::Error),
    /// The source ended early.
    Truncated {
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        size: u64,
    },
    /// The source gave more than the descriptor's size.
    TooLong(u64),
    /// The bytes' digest is another.
    Mismatch(String),
}

impl CopyError {
    /// One line naming the source, the blob and the problem.
    pub fn named(self, source: &str, digest: &str, path: &Path) -> Error {
        match self {
            Self::Io(e) => Error::io(path, e),
            Self::Truncated { got, size } => Error::Invalid(format!(
                "{source}: blob {digest} is truncated: {got} of {size} bytes"
            )),
            Self::TooLong(size) => Error::Invalid(format!(
                "{source}: blob {digest} is longer than its {size} bytes"
            )),
            Self::Mismatch(got) => Error::Invalid(format!(
                "{source}: blob {digest} does not match its digest (got {got})"
            )),
        }
    }
}

/// Copies `reader` (which should yield `size` bytes) to `sink`, hashing
/// as it goes: exactly `size` bytes whose digest is `digest`, or an error.
pub fn copy_verified(
    mut reader: impl Read,
    digest: &str,
    size: u64,
    sink: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> std::result::Result<(), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Io(e)),
        };
        done += n as u64;
        if done > size {
            return Err(CopyError::TooLong(size));
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n]).map_err(CopyError::Io)?;
        progress(done);
    }
    if done < size {
        return Err(CopyError::Truncated { got: done, size });
    }
    let got = hex_digest(hasher.finalize().as_slice());
    if got != digest {
        return Err(CopyError::Mismatch(got));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let d = sha256_digest(bytes);
            std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
            d
        };
        let layer = put(b"layer bytes");
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":11}},"layers":[]}}"#
        );
        let m = put(manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{},"annotations":{{"{REF_NAME}":"v1"}}}}]}}"#,
            manifest.len()
        );
        std::fs::write(dir.path().join("index.json"), index).unwrap();
        (dir, layer)
    }

    #[test]
    fn manifests_are_found_by_tag_digest_or_alone() {
        let (dir, _) = layout();
        let source = OciLayout::open(dir.path()).unwrap();
        let by_tag = source.manifest("v1").unwrap();
        assert_eq!(
            by_tag.media_type,
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(source.manifest("").unwrap(), by_tag);
        assert_eq!(source.manifest(&by_tag.digest).unwrap().bytes, by_tag.bytes);
        let err = source.manifest("v2").unwrap_err().to_string();
        assert!(err.contains("no image tagged \"v2\""), "{err}");
    }

    #[test]
    fn blobs_are_verified_as_they_stream() {
        let (dir, layer) = layout();
        let source = OciLayout::open(dir.path()).unwrap();
        let mut out = Vec::new();
        source.blob(&layer, 11, &mut out, &|_| {}).unwrap();
        assert_eq!(out, b"layer bytes");
        let err = source
            .blob(&layer, 12, &mut Vec::new(), &|_| {})
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // A size no blob has (from an untrusted manifest) is just wrong.
        let err = source
            .blob(&layer, u64::MAX, &mut Vec::new(), &|_| {})
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = source
            .blob(&layer, 10, &mut Vec::new(), &|_| {})
            .unwrap_err();
        assert!(err.to_string().contains("longer"), "{err}");
        std::fs::write(
            dir.path().join("blobs/sha256").join(&layer[7..]),
            b"layer bytez",
        )
        .unwrap();
        let err = source
            .blob(&layer, 11, &mut Vec::new(), &|_| {})
            .unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
        let err = source
            .blob("sha256:../../x", 1, &mut Vec::new(), &|_| {})
            .unwrap_err();
        assert!(err.to_string().contains("not a sha256 digest"), "{err}");
    }

    #[test]
    fn references_split_dir_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let with_colon = dir.path().join("a:b");
        std::fs::create_dir(&with_colon).unwrap();
        let r = LayoutReference::parse(&format!("oci:{}", with_colon.display()))
            .unwrap()
            .unwrap();
        assert_eq!((r.dir.as_path(), r.tag), (with_colon.as_path(), None));
        let r = LayoutReference::parse(&format!("oci:{}:latest", with_colon.display()))
            .unwrap()
            .unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(
            r.to_string(),
            format!("oci:{}:latest", with_colon.display())
        );
        assert!(LayoutReference::parse("docker.io/x").is_none());
        assert!(LayoutReference::parse("oci:").unwrap().is_err());
    }
}
