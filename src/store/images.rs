//! The content store's images: what `pull` keeps besides the layer
//! directories of [`super::layout`], and the locks that let pulls, adds
//! and `gc` share a store.
//!
//! ```text
//! STORE/sha256:<hex>/                layer directories (see layout)
//! STORE/blobs/sha256/<hex>           manifests, indexes and configs by digest
//! STORE/images/<sha256(ref)>.json    one ImageRecord per normalized reference
//! STORE/locks/sha256:<hex>.lock      per-layer flock: one fetch per digest
//! STORE/lazy/sha256:<hex>[.chunks]    lazy layers' chunk caches (mount --lazy)
//! STORE/lock                         store-wide flock: shared by pull and
//!                                    add, exclusive by gc
//! ```
//!
//! Every file appears by rename once complete (`safe_fs` temporary files),
//! every directory is opened without following symlinks.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::registry::referrers::LayerIndex;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::Mode as FileMode;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::manifest::{LayerKind, Platform};
use crate::registry::oci_layout::{sha256_digest, LayoutReference, OciLayout};
use crate::registry::{ClientOptions, ImageSource, Reference, MAX_MANIFEST_SIZE};
use crate::safe_fs::{self, OutputDir};

/// Where blobs (manifests, configs) are kept, by digest.
const BLOBS_DIR: &str = "blobs";
/// Where image records are kept.
const IMAGES_DIR: &str = "images";
/// Where per-digest lock files are kept.
const LOCKS_DIR: &str = "locks";
/// Where `mount --lazy` keeps the chunk caches of layers it reads on
/// demand (see [`crate::lazy`]).
const LAZY_DIR: &str = "lazy";
/// The store-wide lock file.
const STORE_LOCK: &str = "lock";

/// An image reference: a registry's, or an OCI layout on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `registry/repository[:tag][@digest]`.
    Registry(Reference),
    /// `oci:DIR[:TAG]`.
    Layout(LayoutReference),
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]` or a registry reference.
    pub fn parse(text: &str) -> Result<Self> {
        match LayoutReference::parse(text) {
            Some(layout) => Ok(Self::Layout(layout?)),
            None => Ok(Self::Registry(Reference::parse(text)?)),
        }
    }

    /// Where the image is read from.
    pub fn open(&self, options: &ClientOptions) -> Result<Box<dyn ImageSource>> {
        match self {
            Self::Registry(r) => crate::registry::open(r, options),
            Self::Layout(l) => Ok(Box::new(OciLayout::open(&l.dir)?)),
        }
    }

    /// What to ask the source's `manifest` for.
    pub fn manifest_reference(&self) -> String {
        match self {
            Self::Registry(r) => r.manifest_reference().to_string(),
            Self::Layout(l) => l.tag.clone().unwrap_or_default(),
        }
    }

    /// The digest the reference pins, if any.
    pub fn pinned_digest(&self) -> Option<&str> {
        match self {
            Self::Registry(r) => r.digest.as_deref(),
            Self::Layout(_) => None,
        }
    }
}

impl std::fmt::Display for ImageRef {
    /// The normalized form, as records are keyed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry(r) => r.fmt(f),
            Self::Layout(l) => l.fmt(f),
        }
    }
}

/// One layer of a pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The blob's digest: the layer directory's name.
    pub digest: String,
    /// The blob's size.
    pub size: u64,
    /// The media type the manifest gave.
    pub media_type: String,
    /// What the media type means.
    pub kind: LayerKind,
    /// The layer-index referrer a lazy pull found for it (`mount --lazy`
    /// reads it on demand through that, verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<LayerIndex>,
}

impl LayerRecord {
    /// Whether `mount --lazy` can read it on demand: an EROFS-native layer,
    /// a Nydus blob, or a tar or tar+gzip one with a layer index.
    pub fn is_lazy(&self) -> bool {
        match self.kind {
            LayerKind::Erofs | LayerKind::NydusBlob => true,
            LayerKind::NydusBootstrap => false,
            LayerKind::Tar | LayerKind::TarGzip => self.index.is_some(),
            LayerKind::TarZstd => false,
        }
    }
}

/// What the store knows of an image pulled by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalized reference it was pulled as.
    pub reference: String,
    /// What the reference resolved to: an index or a manifest.
    pub digest: String,
    /// The image manifest (the platform's, for an index).
    pub manifest_digest: String,
    /// The image config.
    pub config_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// The platform chosen from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// When it was pulled (seconds since 1970).
    pub pulled: u64,
}

impl ImageRecord {
    /// Every blob and layer digest the record keeps alive.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        [&self.digest, &self.manifest_digest, &self.config_digest]
            .into_iter()
            .map(String::as_str)
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
}

/// The default store: `/var/lib/erofs-fuse` for root, else
/// `$XDG_DATA_HOME/erofs-fuse` or `~/.local/share/erofs-fuse`.
pub fn default_dir() -> Result<PathBuf> {
    if nix::unistd::Uid::effective().is_root() {
        return Ok(PathBuf::from("/var/lib/erofs-fuse"));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| Path::new(h).is_absolute())
                .map(|h| Path::new(&h).join(".local/share"))
        })
        .ok_or_else(|| {
            Error::Invalid("no store: set HOME or XDG_DATA_HOME, or give --store".into())
        })?;
    Ok(data.join("erofs-fuse"))
}

/// An open content store.
pub struct Store {
    pub(crate) root: OutputDir,
    blobs: OutputDir,
    images: OutputDir,
    locks: OutputDir,
    lazy: OutputDir,
}

impl Store {
    /// Opens the store at `path`, creating it and its directories
    /// (private to this user) when missing.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
        let root = OutputDir::open(path).map_err(|e| Error::io(path, e))?;
        let blobs = subdir(&root, BLOBS_DIR)?;
        let blobs = subdir(&blobs, "sha256")?;
        let images = subdir(&root, IMAGES_DIR)?;
        let locks = subdir(&root, LOCKS_DIR)?;
        let lazy = subdir(&root, LAZY_DIR)?;
        Ok(Self {
            root,
            blobs,
            images,
            locks,
            lazy,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Takes the store-wide lock: shared (pull, add) or exclusive (gc).
    pub fn lock(&self, exclusive: bool) -> Result<Flock<File>> {
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        lock_file(&self.root, OsStr::new(STORE_LOCK), arg)
    }

    /// Takes the lock of layer `digest` (exclusive: one fetch at a time).
    pub(crate) fn lock_layer(&self, digest: &str) -> Result<Flock<File>> {
        let name = format!("{digest}.lock");
        lock_file(&self.locks, OsStr::new(&name), FlockArg::LockExclusive)
    }

    /// Keeps `bytes` as blob `digest` (checked to be theirs).
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let got = sha256_digest(bytes);
        if got != digest {
            return Err(Error::Invalid(format!(
                "blob {digest} does not match its digest (got {got})"
            )));
        }
        write_file(&self.blobs, OsStr::new(hex_of(digest)?), bytes)
    }

    /// Blob `digest`, as kept (at most 4 MiB: manifests and configs).
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let bytes = read_small(&self.blobs, hex_of(digest)?, MAX_MANIFEST_SIZE)?;
        let got = sha256_digest(&bytes);
        if got != digest {
            return Err(Error::Invalid(format!(
                "{}: blob {digest} is damaged (its digest is {got})",
                self.path().display()
            )));
        }
        Ok(bytes)
    }

    /// The record of `reference`, if it was pulled.
    pub fn record(&self, reference: &ImageRef) -> Result<Option<ImageRecord>> {
        let name = record_name(reference);
        let path = self.images.path().join(&name);
        let bytes = match read_small(&self.images, &name, MAX_MANIFEST_SIZE) {
            Ok(bytes) => bytes,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let record = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(Some(record))
    }

    /// Writes the record of `reference` (replacing an older one).
    pub fn put_record(&self, reference: &ImageRef, record: &ImageRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Invalid(e.to_string()))?;
        write_file(&self.images, OsStr::new(&record_name(reference)), &json)
    }

    /// Removes the record of `reference`: whether there was one.
    pub fn remove_record(&self, reference: &ImageRef) -> Result<bool> {
        let name = record_name(reference);
        match nix::unistd::unlinkat(
            Some(self.images.fd().as_raw_fd()),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(Error::io(self.images.path().join(name), e.into())),
        }
    }

    /// Every image record, sorted by reference (unreadable ones skipped
    /// with a warning).
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        let mut records = Vec::new();
        for name in list(&self.images)? {
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let path = self.images.path().join(&name);
            match read_small(&self.images, &name, MAX_MANIFEST_SIZE).and_then(|b| {
                serde_json::from_slice::<ImageRecord>(&b)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
            }) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("skipping {e}"),
            }
        }
        records.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(records)
    }

    /// Whether layer `digest` is in the store (complete: directories
    /// appear whole).
    pub fn has_layer(&self, digest: &str) -> bool {
        super::layout::is_layer_name(digest.as_bytes())
            && nix::sys::stat::fstatat(
                Some(self.root.fd().as_raw_fd()),
                digest,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// The EROFS image of layer `digest`.
    pub fn layer_image(&self, digest: &str) -> PathBuf {
        super::layout::layer_dir(self.path(), digest).join(super::layout::IMAGE_FILE)
    }

    /// The directory of lazy layers' chunk caches: `sha256:<hex>` (the
    /// sparse blob) and `sha256:<hex>.chunks` (its map) per layer.
    pub fn lazy_dir(&self) -> &OutputDir {
        &self.lazy
    }

    /// The directories gc walks: blobs, images, locks.
    pub(crate) fn dirs(&self) -> (&OutputDir, &OutputDir, &OutputDir) {
        (&self.blobs, &self.images, &self.locks)
    }
}

/// The record file of `reference`: the sha256 of its normalized form.
fn record_name(reference: &ImageRef) -> String {
    let digest = sha256_digest(reference.to_string().as_bytes());
    format!("{}.json", &digest["sha256:".len()..])
}

/// The hex part of a sha256 digest, checked.
fn hex_of(digest: &str) -> Result<&str> {
    if !crate::registry::reference::is_sha256_digest(digest) {
        return Err(Error::Invalid(format!("not a sha256 digest: {digest:?}")));
    }
    Ok(&digest["sha256:".len()..])
}

/// Opens (making it if missing) the directory `name` in `dir`, never
/// through a symlink.
pub(crate) fn subdir(dir: &OutputDir, name: &str) -> Result<OutputDir> {
    let path = dir.path().join(name);
    match nix::sys::stat::mkdirat(Some(dir.fd().as_raw_fd()), name, FileMode::S_IRWXU) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(Error::io(&path, e.into())),
    }
    let fd = safe_fs::open_dir_at(dir.fd(), OsStr::new(name)).map_err(|e| Error::io(&path, e))?;
    Ok(OutputDir::from_fd(fd, path))
}

/// Opens (creating) the lock file `name` in `dir` without following a
/// symlink (through `/proc/self/fd`, so exactly that directory), and
/// flocks it.
fn lock_file(dir: &OutputDir, name: &OsStr, arg: FlockArg) -> Result<Flock<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.path().join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(safe_fs::proc_path(dir.fd()).join(name))
        .map_err(|e| Error::io(&path, e))?;
    Flock::lock(file, arg).map_err(|(_, e)| Error::io(&path, e.into()))
}

/// Writes `name` in `dir` whole, atomically (temporary file, rename).
fn write_file(dir: &OutputDir, name: &OsStr, bytes: &[u8]) -> Result<()> {
    let path = dir.path().join(name);
    let temp = dir.temp_file().map_err(|e| Error::io(&path, e))?;
    let mut file = temp.file();
    file.write_all(bytes).map_err(|e| Error::io(&path, e))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    let mode = 0o644 & !safe_fs::umask();
    temp.persist(name, mode).map_err(|e| Error::io(&path, e))
}

/// Reads the file `name` of `dir` (at most `max` bytes; a symlink there
/// is an error, never followed).
pub(crate) fn read_small(dir: &OutputDir, name: &str, max: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = &dir.path().join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(safe_fs::proc_path(dir.fd()).join(name))
        .map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::Invalid(format!(
            "{}: larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The names in `dir` (read through its descriptor).
pub(crate) fn list(dir: &OutputDir) -> Result<Vec<String>> {
    let entries =
        std::fs::read_dir(safe_fs::proc_path(dir.fd())).map_err(|e| Error::io(dir.path(), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.path(), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_blobs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let r = ImageRef::parse("127.0.0.1:5000/app:v1").unwrap();
        assert_eq!(store.record(&r).unwrap(), None);
        let record = ImageRecord {
            reference: r.to_string(),
            digest: sha256_digest(b"m"),
            manifest_digest: sha256_digest(b"m"),
            config_digest: sha256_digest(b"c"),
            layers: vec![],
            platform: Some(Platform::host()),
            pulled: 1,
        };
        store.put_record(&r, &record).unwrap();
        assert_eq!(store.record(&r).unwrap(), Some(record.clone()));
        assert_eq!(store.records().unwrap(), [record]);
        assert!(store.remove_record(&r).unwrap());
        assert!(!store.remove_record(&r).unwrap());
        store.put_blob(&sha256_digest(b"c"), b"c").unwrap();
        assert_eq!(store.blob(&sha256_digest(b"c")).unwrap(), b"c");
        assert!(store.put_blob(&sha256_digest(b"c"), b"d").is_err());
        assert!(store.blob("sha256:../../etc/passwd").is_err());
        let _shared = store.lock(false).unwrap();
        let _again = store.lock(false).unwrap();
    }
}
