//! Nydus RAFS v6 images read from local files: a bootstrap (an EROFS image
//! with nydus extensions, [`layout`]) and its data blobs, each served to the
//! reader as a virtual uncompressed device ([`BlobSource`]) in place of the
//! extra device the bootstrap's chunk addresses name, so the reader, FUSE
//! and the tools read the image as any chunk-based EROFS image.
//!
//! Blobs are files named by blob id in a directory (`--blob-dir`, opened
//! `O_NOFOLLOW`, read-only) or given one by one in device-table order. A
//! tarfs bootstrap's blobs are the tar files themselves, mapped as they
//! are (what the kernel reads too).

mod blob;
mod decode;
pub mod inline;
pub mod layout;
pub mod oci;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::device::{Access, Device};
use crate::error::{Error, Result};
use crate::format::{read_struct, DeviceSlot, DEVICE_SLOT_SIZE};
use crate::reader::{Image, SuperInfo};

pub use blob::BlobSource;
pub use layout::{is_rafs_v6, BlobInfo, ChunkInfo, Compressor, Digester, Rafs};

/// Where a bootstrap's blobs are.
#[derive(Debug, Clone, Default)]
pub struct BlobFiles {
    /// A directory of blobs named by blob id.
    pub dir: Option<PathBuf>,
    /// Blob files in blob-table order (taking precedence over `dir`).
    pub files: Vec<PathBuf>,
    /// Whether a tarfs bootstrap's tars are checked whole against their
    /// ids (their sha256) when opened: tarfs chunks have no digests, so
    /// otherwise a changed tar is served as it is. Reads every tar once.
    pub verify_tars: bool,
}

/// Whether the file at `path` (from byte `offset`) is a RAFS v6 bootstrap
/// whose blobs are elsewhere. An `nydus-image export --block` disk holds
/// each blob's uncompressed data at its device slot's address (what the
/// kernel reads): it is read as any flat EROFS image, not as a bootstrap.
pub fn probe(path: &Path, offset: u64) -> Result<bool> {
    let dev = bootstrap(path, offset)?;
    if !is_rafs_v6(&dev) {
        return Ok(false);
    }
    let Ok(sb) = SuperInfo::parse(&dev) else {
        return Ok(false);
    };
    let table = u64::from(sb.devt_slotoff) * DEVICE_SLOT_SIZE;
    let inside = (0..u64::from(sb.extra_devices)).all(|i| {
        let slot = dev
            .slice_for(
                Access::Random,
                table + i * DEVICE_SLOT_SIZE,
                DEVICE_SLOT_SIZE,
            )
            .ok()
            .and_then(read_struct::<DeviceSlot>);
        slot.is_some_and(|s| {
            let end = u64::from(s.uniaddr_lo.get()) + u64::from(s.blocks_lo.get());
            s.uniaddr_lo.get() != 0 && end << sb.block_bits <= dev.len()
        })
    });
    Ok(sb.extra_devices > 0 && !inside)
}

/// The bootstrap at `path`, from byte `offset`, mapped.
fn bootstrap(path: &Path, offset: u64) -> Result<Device> {
    let whole = Device::open(path, 0)?;
    if offset > whole.len() {
        return Err(Error::Invalid(format!(
            "{}: offset {offset} is past the end of the file",
            path.display()
        )));
    }
    whole.subrange(offset, whole.len() - offset)
}

/// The RAFS v6 tables of the bootstrap at `path` (for `inspect`), or
/// `None` when it is not one.
pub fn read_rafs(path: &Path, offset: u64) -> Result<Option<Rafs>> {
    let primary = bootstrap(path, offset)?;
    if !is_rafs_v6(&primary) {
        return Ok(None);
    }
    let sb = SuperInfo::parse(&primary)?;
    if sb.extra_devices == 0 {
        return Ok(None);
    }
    tables_of(&primary, path).map(Some)
}

/// Opens the bootstrap at `path` (from byte `offset`) with its blobs from
/// `blobs`, decoded chunks cached within `cache_size` bytes (and as much
/// again for compressed EROFS extents); also returns its RAFS tables.
pub fn open(path: &Path, offset: u64, blobs: &BlobFiles, cache_size: u64) -> Result<(Image, Rafs)> {
    let primary = bootstrap(path, offset)?;
    let rafs = tables_of(&primary, path)?;
    if !blobs.files.is_empty() && blobs.files.len() != rafs.blobs.len() {
        return Err(Error::Invalid(format!(
            "{}: {} blob file(s) given but the bootstrap has {} blob(s)",
            path.display(),
            blobs.files.len(),
            rafs.blobs.len()
        )));
    }
    let files = rafs
        .blobs
        .iter()
        .map(|info| open_blob(path, info, blobs))
        .collect::<Result<Vec<_>>>()?;
    if blobs.verify_tars {
        if !rafs.tarfs() {
            return Err(Error::Invalid(format!(
                "{}: --verify-tars does not apply: not a tarfs bootstrap (other blobs' chunks are checked against their digests)",
                path.display()
            )));
        }
        verify_tars(&rafs, &files)?;
    }
    let image = open_devices(primary, &rafs, files, cache_size)?;
    Ok((image, rafs))
}

/// Checks each tar of a tarfs bootstrap against its id, its sha256.
fn verify_tars(rafs: &Rafs, files: &[Device]) -> Result<()> {
    use sha2::Digest as _;
    for (info, tar) in rafs.blobs.iter().zip(files) {
        let mut hasher = sha2::Sha256::new();
        let step = 8 << 20;
        for at in (0..tar.len()).step_by(step) {
            let len = (tar.len() - at).min(step as u64);
            hasher.update(tar.slice(at, len)?);
            tar.release(at, len);
        }
        let actual = crate::format::hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(&info.id) {
            return Err(Error::corrupt(format!(
                "{}: sha256 {actual}, not its blob id {}",
                tar.path().display(),
                info.id
            )));
        }
    }
    Ok(())
}

/// Opens the data blob at `path` built with `--blob-inline-meta`: its
/// bootstrap is taken from its end ([`inline`]) and it serves the chunks
/// of the blob marked as holding it (whose id in the bootstrap is a
/// placeholder: nydusd binds it to the file opened too); other blobs the
/// bootstrap names come from `others`. Also returns the RAFS tables.
pub fn open_inline(path: &Path, others: &BlobFiles, cache_size: u64) -> Result<(Image, Rafs)> {
    let blob = Device::open(path, 0)?;
    let primary = inline::bootstrap(&blob)?;
    let label = PathBuf::from(format!("{} (inline bootstrap)", path.display()));
    let rafs = tables_of(&primary, &label)?;
    let marked = rafs.blobs.iter().filter(|b| b.inlined_meta()).count();
    if marked > 1 || (marked == 0 && rafs.blobs.len() != 1) {
        return Err(Error::Invalid(format!(
            "{}: {marked} of {} blobs are marked as holding the bootstrap (INLINED_FS_META), not one",
            label.display(),
            rafs.blobs.len()
        )));
    }
    let blobs = rafs
        .blobs
        .iter()
        .map(|info| match info.inlined_meta() || marked == 0 {
            true => Ok(blob.clone()),
            false => open_blob(&label, info, others),
        })
        .collect::<Result<Vec<_>>>()?;
    let image = open_devices(primary, &rafs, blobs, cache_size)?;
    Ok((image, rafs))
}

/// The RAFS v6 tables of `primary` (named `path`), which must be a RAFS v6
/// bootstrap.
fn tables_of(primary: &Device, path: &Path) -> Result<Rafs> {
    if !is_rafs_v6(primary) {
        return Err(Error::Invalid(format!(
            "{}: not a Nydus RAFS v6 bootstrap (no RAFS v6 flag in its EROFS superblock)",
            path.display()
        )));
    }
    let sb = SuperInfo::parse(primary)?;
    layout::parse(
        primary,
        path,
        u64::from(sb.extra_devices),
        1u64 << sb.block_bits,
    )
}

/// Opens bootstrap `primary` with its blob files `blobs` (mapped, in
/// blob-table order): the fuzz target and tests give them as bytes.
pub fn open_bytes(primary: Device, blobs: Vec<Device>, cache_size: u64) -> Result<Image> {
    let rafs = tables_of(&primary, primary.path())?;
    if blobs.len() != rafs.blobs.len() {
        return Err(Error::Invalid(format!(
            "{} blob(s) given for {}",
            blobs.len(),
            rafs.blobs.len()
        )));
    }
    open_devices(primary, &rafs, blobs, cache_size)
}

/// The image over `primary` with each blob of `rafs` served from `blobs`.
fn open_devices(
    primary: Device,
    rafs: &Rafs,
    blobs: Vec<Device>,
    cache_size: u64,
) -> Result<Image> {
    let cache = Arc::new(blob::ChunkCache::new(cache_size));
    let mut extra = Vec::with_capacity(rafs.blobs.len());
    for (info, blob) in rafs.blobs.iter().zip(blobs) {
        if rafs.tarfs() {
            extra.push(blob);
            continue;
        }
        let chunks = rafs
            .chunks
            .iter()
            .filter(|c| c.blob_index == info.index)
            .cloned()
            .collect();
        let name = blob.path().to_path_buf();
        let source = BlobSource::new(info.clone(), blob, chunks, Arc::clone(&cache))?;
        extra.push(Device::from_source(&name, Arc::new(source))?);
    }
    let mut image = Image::from_devices(primary, extra)?;
    image.set_cache_size(cache_size);
    Ok(image)
}

/// Maps blob `info`'s file: the one given in its place, or the file named
/// by its id in the blob directory (no symlink followed), read-only. A
/// blob holding the bootstrap (`--blob-inline-meta`, its id a
/// placeholder) is named as nydusd names it: by the bootstrap's file name
/// without extensions.
fn open_blob(bootstrap: &Path, info: &BlobInfo, blobs: &BlobFiles) -> Result<Device> {
    if let Some(path) = blobs.files.get(info.index as usize) {
        return Device::open(path, 0);
    }
    let id = match info.inlined_meta() {
        true => inline_blob_id(bootstrap)?,
        false => info.id.clone(),
    };
    let Some(dir) = &blobs.dir else {
        return Err(Error::Invalid(format!(
            "{}: blob {id} is needed: give --blob-dir DIR or each blob with --device",
            bootstrap.display(),
        )));
    };
    // The id is 64 hex characters (checked when parsed): a plain name.
    let path = dir.join(&id);
    open_file(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Invalid(format!(
            "{}: blob {id} not found in {}",
            bootstrap.display(),
            dir.display()
        )),
        _ => Error::io(&path, e),
    })
}

/// The blob id nydusd gives a blob whose bootstrap id is a placeholder:
/// the bootstrap file's name up to its first dot, which must be a blob id.
fn inline_blob_id(bootstrap: &Path) -> Result<String> {
    let name = bootstrap.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name.split('.').next().unwrap_or("");
    if stem.len() != 64 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{}: a blob holds the bootstrap (--blob-inline-meta): its id is the bootstrap's file name, which is not a blob id (64 hex characters); give it with --device",
            bootstrap.display()
        )));
    }
    Ok(stem.to_string())
}

/// Maps the regular file at `path` read-only, opened without following a
/// symlink or blocking.
fn open_file(path: &Path) -> std::io::Result<Device> {
    let file = open_nofollow(path)?;
    let len = file.metadata()?.len();
    Device::from_file(&file, path, len).map_err(std::io::Error::other)
}

/// Opens `path` read-only without following a symlink or blocking, and
/// only if it is a regular file.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}
