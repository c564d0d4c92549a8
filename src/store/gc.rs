//! `store gc`: removes what no image record references, holding the
//! store-wide lock exclusively (no pull or add runs meanwhile).
//!
//! Removed: pulled layer directories no image needs (those `store add`
//! made carry no image and stay, unless `all`), blobs no image needs,
//! pulls' staging directories and temporary files a crash left behind,
//! lock files, TOC index entries (`toc/`) whose layer is gone, lazy TOC
//! layers (`toc-lazy/`, with `all`; half-written ones always) and their
//! caches, and the lazy caches (`lazy/`) of layers no image needs or
//! the store holds whole, unless a mount has them open. `store add` takes no lock (it keeps the store layout
//! containers/storage reads as it was): `gc --all` during an add may
//! remove the layer it adds. Everything removed is something the store made: entries are
//! opened without following symlinks, a layer directory is first renamed
//! to a staging name (so it vanishes at once), then emptied and removed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::fcntl::{renameat2, AtFlags, RenameFlags};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};
use crate::safe_fs::{self, OutputDir};

use super::images::{list, Store};
use super::layout::is_layer_name;
use super::pull::{PULLED_FILE, PULL_PREFIX};
use super::toc_layers::{resolve, TOC_DIR};

/// What gc removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Layer directories.
    pub layers: usize,
    /// Blobs (manifests, configs).
    pub blobs: usize,
    /// Staging directories and temporary files left by crashes.
    pub stale: usize,
    /// Lazy layers' chunk caches (each a blob and its map).
    pub caches: usize,
}

/// Collects `store`'s garbage; with `all`, layers no image references are
/// removed even when `store add` made them.
pub fn gc(store: &Store, all: bool) -> Result<GcReport> {
    let _lock = store.lock(true)?;
    let mut referenced = BTreeSet::new();
    for record in store.records()? {
        referenced.extend(record.digests().map(str::to_string));
    }
    let mut report = GcReport::default();
    let root = &store.root;
    let staging = format!(".{PULL_PREFIX}.");
    for name in list(root)? {
        if name.starts_with(&staging) {
            remove_flat_dir(root, &name)?;
            report.stale += 1;
        } else if is_layer_name(name.as_bytes())
            && !referenced.contains(&name)
            && (all || is_pulled(root, &name))
        {
            // Out of sight first, then emptied.
            let hidden = safe_fs::random_name(OsStr::new(PULL_PREFIX));
            let at = Some(root.fd().as_raw_fd());
            renameat2(
                at,
                name.as_str(),
                at,
                hidden.as_os_str(),
                RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(|e| Error::io(root.path().join(&name), e.into()))?;
            remove_flat_dir(root, hidden.to_str().unwrap_or_default())?;
            report.layers += 1;
        }
    }
    let (blobs, images, locks) = store.dirs();
    for name in list(blobs)? {
        if name.starts_with('.') {
            remove_file(blobs, &name)?;
            report.stale += 1;
        } else if !referenced.contains(&format!("sha256:{name}")) {
            remove_file(blobs, &name)?;
            report.blobs += 1;
        }
    }
    for name in list(images)? {
        if name.starts_with('.') {
            remove_file(images, &name)?;
            report.stale += 1;
        }
    }
    for name in list(locks)? {
        remove_file(locks, &name)?;
    }
    report.caches = super::lazy::gc_caches(store, &referenced)?;
    let (layers, stale, caches) = gc_lazy_toc(store, all)?;
    report.layers += layers;
    report.stale += stale;
    report.caches += caches;
    report.stale += gc_toc_index(root)?;
    Ok(report)
}

/// Removes the TOC index entries (`toc/`) whose layer is gone.
fn gc_toc_index(root: &OutputDir) -> Result<usize> {
    let path = root.path().join(TOC_DIR);
    let fd = match safe_fs::open_dir_at(root.fd(), OsStr::new(TOC_DIR)) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let dir = OutputDir::from_fd(fd, path);
    let mut removed = 0;
    for name in list(&dir)? {
        let layer = resolve(root.path(), &name);
        let gone = |digest: String| !root.path().join(&digest).is_dir();
        if layer.is_none_or(gone) {
            remove_file(&dir, &name)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether the layer directory `name` was made by a pull.
fn is_pulled(root: &OutputDir, name: &str) -> bool {
    let Ok(dir) = safe_fs::open_dir_at(root.fd(), OsStr::new(name)) else {
        return false;
    };
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        PULLED_FILE,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

/// Removes the file `name` of `dir` (gone already is fine).
pub(super) fn remove_file(dir: &OutputDir, name: &str) -> Result<()> {
    match unlinkat(Some(dir.fd().as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(dir.path().join(name), e.into())),
    }
}

/// Removes the directory `name` of `root` and the files in it (the store
/// makes no deeper trees; a subdirectory is an error, nothing followed).
pub(super) fn remove_flat_dir(root: &OutputDir, name: &str) -> Result<()> {
    let path = root.path().join(name);
    let fd = safe_fs::open_dir_at(root.fd(), OsStr::new(name)).map_err(|e| Error::io(&path, e))?;
    let dir = OutputDir::from_fd(fd, path.clone());
    for entry in list(&dir)? {
        remove_file(&dir, &entry)?;
    }
    match unlinkat(Some(root.fd().as_raw_fd()), name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::io(&path, e.into())),
    }
}

/// `store gc`'s part (under its exclusive lock, which a fetch's shared
/// one excludes): with `all`, removes every lazy TOC layer (they belong
/// to no image); always, what an interrupted fetch left (`.lazytoc.*`;
/// one that cannot be removed is logged and left) and the caches of lazy layers that are gone,
/// unless a server has them open. Gives (layers, stale, caches) removed.
fn gc_lazy_toc(store: &Store, all: bool) -> Result<(usize, usize, usize)> {
    use super::layout;
    use super::toc_remote::{layer_dir, BLOB_SUFFIX, DEVICE_SUFFIX, LAZY_TOC_DIR};
    let (mut layers, mut stale, mut caches) = (0, 0, 0);
    let path = store.path().join(LAZY_TOC_DIR);
    let dir = match safe_fs::open_dir_at(store.root.fd(), OsStr::new(LAZY_TOC_DIR)) {
        Ok(fd) => Some(OutputDir::from_fd(fd, path.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&path, e)),
    };
    if let Some(dir) = &dir {
        for name in super::images::list(dir)? {
            let count = if name.starts_with(".lazytoc.") {
                &mut stale
            } else if all && layout::is_layer_name(name.as_bytes()) {
                &mut layers
            } else {
                continue;
            };
            // One leftover that cannot go (not empty: not ours) does not
            // stop the rest.
            match remove_flat_dir(dir, &name) {
                Ok(()) => *count += 1,
                Err(e) => tracing::warn!("{e}; left in place"),
            }
        }
    }
    let lazy = store.lazy_dir();
    for name in super::images::list(lazy)? {
        let Some(layer) = [DEVICE_SUFFIX, BLOB_SUFFIX]
            .iter()
            .find_map(|s| name.strip_suffix(&format!("{s}.chunks")))
        else {
            continue;
        };
        if !layout::is_layer_name(layer.as_bytes()) || layer_dir(store.path(), layer).is_dir() {
            continue;
        }
        // Held while both go: no server opens the cache meanwhile.
        let Some(_lock) = super::lazy::lock_unused(lazy, &name)? else {
            continue;
        };
        remove_file(lazy, name.trim_end_matches(".chunks"))?;
        remove_file(lazy, &name)?;
        caches += 1;
    }
    Ok((layers, stale, caches))
}
