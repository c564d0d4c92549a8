//! One layer directory per digest, whatever kind of layer it was made
//! for: a digest pulled as an ordinary tar+gzip layer (`layer.erofs`) may
//! later be named as an annotated Nydus bootstrap (`nydus.boot`), or the
//! reverse. A layer counts as present for a kind only when its directory
//! has the file that kind needs; a missing one is made (from the blob the
//! directory keeps) in a staging directory and renamed into place, so it
//! appears whole or not at all.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{renameat2, AtFlags, RenameFlags};

use crate::error::{Error, Result};
use crate::registry::manifest::LayerKind;

use super::images::Store;
use super::layout::{keep_blob, layer_dir, Staging, BLOB_FILE, IMAGE_FILE};

/// The file a layer of kind `kind` is served from, in its directory.
pub fn needed_file(kind: LayerKind) -> &'static str {
    match kind {
        LayerKind::NydusBootstrap => super::nydus::BOOTSTRAP_FILE,
        LayerKind::NydusBlob => BLOB_FILE,
        _ => IMAGE_FILE,
    }
}

/// Whether regular file `name` is in the directory of layer `digest`
/// (no symlink followed).
fn has_file(store: &Store, digest: &str, name: &str) -> bool {
    let Ok(dir) = crate::safe_fs::open_dir_at(store.root.fd(), OsStr::new(digest)) else {
        return false;
    };
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

/// Whether the store has layer `digest` with the file kind `kind` needs.
pub fn has_layer_as(store: &Store, digest: &str, kind: LayerKind) -> bool {
    store.has_layer(digest) && has_file(store, digest, needed_file(kind))
}

/// Links the blob that layer `digest`'s directory keeps into `staging`
/// (whether it had one: a regular file, not followed through a symlink).
pub(crate) fn reuse_blob(store: &Store, digest: &str, staging: &Staging<'_>) -> Result<bool> {
    if !has_file(store, digest, BLOB_FILE) {
        return Ok(false);
    }
    let dest = layer_dir(store.path(), digest);
    let dir = crate::safe_fs::open_dir_at(store.root.fd(), OsStr::new(digest))
        .map_err(|e| Error::io(&dest, e))?;
    keep_blob(
        staging,
        &crate::safe_fs::proc_path(dir.as_fd()).join(BLOB_FILE),
    )?;
    Ok(true)
}

/// Moves `name`, made in `staging`, into the existing directory of layer
/// `digest`, atomically. Unless `replace`, never over a file there
/// (another process may have made it meanwhile, which is as good).
pub(crate) fn add_file(
    store: &Store,
    staging: &Staging<'_>,
    digest: &str,
    name: &str,
    replace: bool,
) -> Result<()> {
    let dest = layer_dir(store.path(), digest);
    let dir = crate::safe_fs::open_dir_at(store.root.fd(), OsStr::new(digest))
        .map_err(|e| Error::io(&dest, e))?;
    match renameat2(
        Some(staging.dir.fd().as_raw_fd()),
        name,
        Some(dir.as_fd().as_raw_fd()),
        name,
        match replace {
            true => RenameFlags::empty(),
            false => RenameFlags::RENAME_NOREPLACE,
        },
    ) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(Error::io(dest.join(name), e.into())),
    }
}
