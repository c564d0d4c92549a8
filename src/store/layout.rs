//! The store's own directory: one subdirectory per layer, named by the
//! layer's (compressed) digest, holding what containers/storage wants to
//! see of it.
//!
//! ```text
//! STORE/sha256:<hex>/layer.erofs   tar-index image with the tar appended
//!                   /info          containers/storage's Layer, as JSON
//!                   /blob          the layer blob as the registry has it
//! ```
//!
//! `add` builds a layer under a random temporary name and renames it into
//! place (never over an existing one), so a layer is either complete or
//! absent.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, AtFlags, RenameFlags};
use nix::sys::stat::{fstatat, Mode as FileMode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use crate::convert::{convert_at, ConvertError, ConvertOptions, ConvertReport, Digest, Mode};
use crate::error::{Error, Result};
use crate::registry::manifest::Manifest;
use crate::registry::oci_layout::OciLayout;
use crate::registry::ImageSource;
use crate::safe_fs::{self, OutputDir};

/// The image of a layer.
pub const IMAGE_FILE: &str = "layer.erofs";
/// containers/storage's description of a layer.
pub const INFO_FILE: &str = "info";
/// The layer blob.
pub const BLOB_FILE: &str = "blob";

/// Largest `info` file read (they are a few hundred bytes).
pub(crate) const MAX_INFO_SIZE: u64 = 1 << 20;

/// The fields of containers/storage's `Layer` a store provides in `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the blob as pulled (`sha256:...`).
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_digest: String,
    /// Size of the blob.
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    /// Digest of the uncompressed tar (the diffID in the image config).
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    /// Size of the uncompressed tar.
    #[serde(rename = "diff-size")]
    pub diff_size: u64,
    /// How the blob is compressed (containers/storage's codes: 0 none,
    /// 2 gzip, 4 zstd).
    pub compression: u8,
    /// TOC layers (zstd:chunked, eStargz): the TOC digest, which podman 5
    /// looks the layer up by and checks (containers/storage `Layer.TOCDigest`).
    #[serde(
        rename = "toc-digest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub toc_digest: Option<String>,
}

/// Whether `name` is a digest as the store names layers: `sha256:` and 64
/// lowercase hex digits (so it is safe as a path component too).
pub fn is_layer_name(name: &[u8]) -> bool {
    name.strip_prefix(b"sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    })
}

/// Adds the layer blob `blob` (a tar or a tar.gz) to `store`, converted to
/// a tar-index image with OCI whiteouts turned into overlayfs ones (so the
/// layer can be an overlayfs lower directory). Returns its description;
/// a layer already present is left as it is.
///
/// The layer is built in a new directory of its own (random name, mode
/// 0700, every file created in it relative to its descriptor) and renamed
/// into place, never over anything, once complete; a failed add removes
/// what it created and nothing else.
pub fn add(store: &Path, blob: &Path, progress: bool) -> Result<LayerInfo> {
    if let Ok(Some(format)) = crate::toc::detect(blob) {
        tracing::warn!(
            "{}: a {format:?} blob added without its TOC digest: podman 5 will not look it up \
             (give --toc-digest, or add its OCI layout)",
            blob.display()
        );
    }
    std::fs::create_dir_all(store).map_err(|e| Error::io(store, e))?;
    let store_dir = OutputDir::open(store).map_err(|e| Error::io(store, e))?;
    let staging = Staging::create(&store_dir, ADD_PREFIX)?;
    let info = build(&staging, blob, progress)?;
    if !staging.publish(&info.compressed_digest)? {
        tracing::info!(
            "{} is already in {}",
            info.compressed_digest,
            store.display()
        );
    }
    Ok(info)
}

/// What `add` names the directories it builds layers in.
pub(crate) const ADD_PREFIX: &str = "add";

/// A layer directory being built in the store under a random name.
pub(crate) struct Staging<'a> {
    store: &'a OutputDir,
    name: OsString,
    pub(crate) dir: OutputDir,
    /// Files created in it, removed again unless published.
    created: std::cell::RefCell<Vec<&'static str>>,
    published: std::cell::Cell<bool>,
}

impl<'a> Staging<'a> {
    /// Makes a new 0700 directory in `store`, named `.PREFIX.<random>`.
    pub(crate) fn create(store: &'a OutputDir, prefix: &str) -> Result<Self> {
        let at = Some(store.fd().as_raw_fd());
        for _ in 0..16 {
            let name = safe_fs::random_name(OsStr::new(prefix));
            match nix::sys::stat::mkdirat(at, name.as_os_str(), FileMode::S_IRWXU) {
                Ok(()) => {}
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => return Err(Error::io(store.path().join(&name), e.into())),
            }
            let path = store.path().join(&name);
            let fd = safe_fs::open_dir_at(store.fd(), &name).map_err(|e| Error::io(&path, e))?;
            let dir = OutputDir::from_fd(fd, path);
            return Ok(Self {
                store,
                name,
                dir,
                created: Default::default(),
                published: Default::default(),
            });
        }
        Err(Error::Invalid(format!(
            "{}: cannot find a free temporary name",
            store.path().display()
        )))
    }

    /// Creates `name` in the layer directory, open for writing (mode 0600
    /// until [`Self::finish_file`]).
    pub(crate) fn create_file(&self, name: &'static str) -> Result<File> {
        let path = self.dir.path().join(name);
        let file = safe_fs::create_file_at(self.dir.fd(), OsStr::new(name), 0o600)
            .map_err(|e| Error::io(&path, e))?;
        self.created.borrow_mut().push(name);
        Ok(file)
    }

    /// Records a file made in the directory by other means.
    pub(crate) fn made(&self, name: &'static str) {
        self.created.borrow_mut().push(name);
    }

    /// Opens the directory to everyone the umask allows and renames it to
    /// `digest`, unless that exists: whether it was renamed.
    pub(crate) fn publish(&self, digest: &str) -> Result<bool> {
        let mode = FileMode::from_bits_truncate(0o777 & !safe_fs::umask());
        nix::sys::stat::fchmod(self.dir.fd().as_raw_fd(), mode)
            .map_err(|e| Error::io(self.dir.path(), e.into()))?;
        let at = Some(self.store.fd().as_raw_fd());
        let dest = self.store.path().join(digest);
        match renameat2(
            at,
            self.name.as_os_str(),
            at,
            digest,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                self.published.set(true);
                Ok(true)
            }
            Err(nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY) => Ok(false),
            Err(e) => Err(Error::io(&dest, e.into())),
        }
    }
}

impl Drop for Staging<'_> {
    /// Removes what this add created, unless it was published: the files
    /// by name in the directory it holds open, then the directory if its
    /// name still is that directory.
    fn drop(&mut self) {
        if self.published.get() {
            return;
        }
        let dir = Some(self.dir.fd().as_raw_fd());
        for name in self.created.borrow().iter() {
            let _ = unlinkat(dir, *name, UnlinkatFlags::NoRemoveDir);
        }
        let at = Some(self.store.fd().as_raw_fd());
        let ours = nix::sys::stat::fstat(self.dir.fd().as_raw_fd()).ok();
        let there = fstatat(at, self.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        if let (Some(a), Some(b)) = (ours, there) {
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                let _ = unlinkat(at, self.name.as_os_str(), UnlinkatFlags::RemoveDir);
            }
        }
    }
}

/// Converts `blob` into the layer directory being built.
fn build(staging: &Staging<'_>, blob: &Path, progress: bool) -> Result<LayerInfo> {
    let report = convert_layer(staging, blob, None, progress)
        .map_err(|e| Error::Invalid(format!("converting {}: {e}", blob.display())))?;
    let (compressed_digest, diff_digest) = digests_of(&report, blob)?;
    let compressed_size = keep_blob(staging, blob)?;
    let info = LayerInfo {
        compressed_digest,
        compressed_size,
        diff_digest,
        diff_size: report.tar_size,
        compression: report.compression.storage_code(),
        toc_digest: None,
    };
    write_info(staging, &info)?;
    Ok(info)
}

/// Converts the layer blob `blob` (a tar, tar.gz or tar.zst) into the
/// layer directory being built: a tar-index image with the tar appended,
/// OCI whiteouts made overlayfs ones, as overlayfs lower layers need.
pub(crate) fn convert_layer(
    staging: &Staging<'_>,
    blob: &Path,
    verified: Option<&str>,
    progress: bool,
) -> Result<ConvertReport, ConvertError> {
    let options = ConvertOptions {
        mode: Mode::Index,
        aufs: true,
        append_tar: true,
        tar_out: None,
        gzinfo: None,
        progress,
        implied_mtime: None,
        skip_digests: false,
        verified_input: verified.and_then(Digest::parse),
    };
    let report = convert_at(blob, &staging.dir, OsStr::new(IMAGE_FILE), &options)?;
    staging.made(IMAGE_FILE);
    Ok(report)
}

/// The layer digest and diffID that converting `blob` computed.
pub(crate) fn digests_of(report: &ConvertReport, blob: &Path) -> Result<(String, String)> {
    report.digests().ok_or_else(|| {
        Error::Invalid(format!(
            "converting {}: no digests were computed",
            blob.display()
        ))
    })
}

/// Writes `info` into the layer directory being built.
pub(crate) fn write_info(staging: &Staging<'_>, info: &LayerInfo) -> Result<()> {
    let json = serde_json::to_vec(info).map_err(|e| Error::Invalid(e.to_string()))?;
    write_small(staging, INFO_FILE, &json)
}

/// Writes the small file `name` of the layer directory being built.
pub(crate) fn write_small(staging: &Staging<'_>, name: &'static str, bytes: &[u8]) -> Result<()> {
    let path = staging.dir.path().join(name);
    let mut file = staging.create_file(name)?;
    file.write_all(bytes).map_err(|e| Error::io(&path, e))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    finish_file(&file, &path)
}

/// Reads the `info` of the layer directory `dir`.
pub(crate) fn read_info(dir: &Path) -> Result<LayerInfo> {
    read_info_bytes(dir).map(|(_, info)| info)
}

/// The `info` of the layer directory `dir`, as stored and parsed.
pub(crate) fn read_info_bytes(dir: &Path) -> Result<(Vec<u8>, LayerInfo)> {
    use std::io::Read;
    let path = dir.join(INFO_FILE);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_INFO_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&path, e))?;
    if bytes.len() as u64 > MAX_INFO_SIZE {
        return Err(Error::Invalid(format!("{}: too large", path.display())));
    }
    let info = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok((bytes, info))
}

/// Keeps the blob as pulled in the layer directory (a hard link costs
/// nothing; a copy across filesystems); returns its size.
pub(crate) fn keep_blob(staging: &Staging<'_>, blob: &Path) -> Result<u64> {
    let path = staging.dir.path().join(BLOB_FILE);
    let at = Some(staging.dir.fd().as_raw_fd());
    let linked = nix::unistd::linkat(
        None,
        blob,
        at,
        Path::new(BLOB_FILE),
        AtFlags::AT_SYMLINK_FOLLOW,
    );
    if linked.is_ok() {
        staging.made(BLOB_FILE);
        let st = fstatat(at, BLOB_FILE, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(&path, e.into()))?;
        return Ok(st.st_size as u64);
    }
    let mut src = File::open(blob).map_err(|e| Error::io(blob, e))?;
    let mut dst = staging.create_file(BLOB_FILE)?;
    let size = std::io::copy(&mut src, &mut dst).map_err(|e| Error::io(&path, e))?;
    finish_file(&dst, &path)?;
    Ok(size)
}

/// Gives a file written in the layer directory its final mode.
pub(crate) fn finish_file(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o666 & !safe_fs::umask();
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

/// A layer of an OCI image layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciLayer {
    /// The blob's path.
    pub blob: PathBuf,
    /// Its TOC digest, from the descriptor's zstd:chunked or eStargz
    /// annotation (a descriptor with both is refused, as containers/storage
    /// does).
    pub toc_digest: Option<String>,
}

/// The layer blobs of the image in OCI image layout `dir` (as `skopeo copy
/// ... oci:DIR` writes it), bottom first. The layout must hold exactly one
/// image manifest.
pub fn oci_layers(dir: &Path) -> Result<Vec<OciLayer>> {
    let layout = OciLayout::open(dir)?;
    let fetched = layout.manifest("")?;
    match Manifest::parse(&fetched, &layout.name())? {
        Manifest::Index(_) => Err(Error::Invalid(format!(
            "{}: a multi-platform index; copy one platform (skopeo copy --override-arch ...)",
            dir.display()
        ))),
        Manifest::Image(manifest) => manifest
            .layers()
            .iter()
            .map(|layer| {
                let blob = layout.blob_path(layer.digest().as_ref())?;
                let notes = layer.annotations().as_ref();
                let get = |key: &str| notes.and_then(|n| n.get(key)).cloned();
                let toc_digest = match (
                    get(crate::toc::ZSTD_CHUNKED_ANNOTATION),
                    get(crate::toc::ESTARGZ_ANNOTATION),
                ) {
                    (Some(_), Some(_)) => {
                        return Err(Error::Invalid(format!(
                            "{}: layer {} has both a zstd:chunked and an eStargz TOC digest",
                            dir.display(),
                            layer.digest()
                        )))
                    }
                    (a, b) => a.or(b),
                };
                Ok(OciLayer { blob, toc_digest })
            })
            .collect(),
    }
}

/// The directory of layer `digest` in `store`.
pub(crate) fn layer_dir(store: &Path, digest: &str) -> PathBuf {
    store.join(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_are_sha256_digests_only() {
        let good = format!("sha256:{}", "a1".repeat(32));
        assert!(is_layer_name(good.as_bytes()));
        assert!(!is_layer_name(
            format!("sha256:{}", "A1".repeat(32)).as_bytes()
        ));
        assert!(!is_layer_name(b"sha256:abc"));
        assert!(!is_layer_name(b"sha256:../../../../etc/passwd"));
        assert!(!is_layer_name(
            format!("sha512:{}", "a1".repeat(32)).as_bytes()
        ));
    }

    #[test]
    fn info_has_containers_storage_field_names() {
        let info = LayerInfo {
            compressed_digest: "sha256:aa".into(),
            compressed_size: 3,
            diff_digest: "sha256:bb".into(),
            diff_size: 10240,
            compression: 2,
            toc_digest: None,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"compressed-diff-digest":"sha256:aa","compressed-size":3,"diff-digest":"sha256:bb","diff-size":10240,"compression":2}"#
        );
    }
}
