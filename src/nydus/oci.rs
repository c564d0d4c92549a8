//! A Nydus image in a local OCI image layout (`oci:DIR[:TAG]`): the
//! manifest (chosen in an index by its Nydus artifact type or platform
//! feature) has one bootstrap layer, marked by the
//! `containerd.io/snapshot/nydus-bootstrap` annotation, a tar (gzip, zstd
//! or plain) whose `image/image.boot` is the bootstrap, and data blob
//! layers of the Nydus blob media type, whose digests are the blob ids.
//! The bootstrap layer is checked against its digest while it is read;
//! blobs are read in place, each chunk checked against its digest.

use std::io::Read;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::{open_devices, open_nofollow, tables_of};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::reader::Image;
use crate::registry::manifest::Manifest;
use crate::registry::oci_layout::{LayoutReference, OciLayout};
use crate::registry::ImageSource;

/// The annotation marking the bootstrap layer.
pub const BOOTSTRAP_ANNOTATION: &str = "containerd.io/snapshot/nydus-bootstrap";
/// The media type of data blob layers.
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// The artifact type of a Nydus manifest in an index.
pub const MANIFEST_ARTIFACT_TYPE: &str = "application/vnd.nydus.image.manifest.v1+json";
/// The platform feature older converters mark Nydus manifests with.
pub const OS_FEATURE: &str = "nydus.remoteimage.v1";
/// The bootstrap's name in its layer.
const BOOT_ENTRY: &str = "image/image.boot";
/// Largest bootstrap read (it is held in memory).
const MAX_BOOTSTRAP: u64 = 1 << 30;
/// Most tar entries looked through for the bootstrap.
const MAX_ENTRIES: usize = 64;

/// The Nydus image manifest `reference` names, if it names one: `None`
/// for an ordinary image.
pub fn nydus_manifest(reference: &LayoutReference) -> Result<Option<(OciLayout, ImageManifest)>> {
    let layout = OciLayout::open(&reference.dir)?;
    let name = reference.to_string();
    let fetched = layout.manifest(reference.tag.as_deref().unwrap_or(""))?;
    let manifest = match Manifest::parse(&fetched, &name)? {
        Manifest::Image(m) => *m,
        Manifest::Index(index) => {
            let found = index.manifests().iter().find(|d| is_nydus_entry(d));
            let Some(d) = found else {
                return Ok(None);
            };
            let fetched = layout.manifest(d.digest().as_ref())?;
            match Manifest::parse(&fetched, &name)? {
                Manifest::Image(m) => *m,
                Manifest::Index(_) => return Ok(None),
            }
        }
    };
    let nydus = manifest.layers().iter().any(is_bootstrap);
    Ok(nydus.then_some((layout, manifest)))
}

/// Whether an index entry is a Nydus manifest.
fn is_nydus_entry(d: &Descriptor) -> bool {
    let artifact = d
        .artifact_type()
        .as_ref()
        .is_some_and(|t| t.to_string() == MANIFEST_ARTIFACT_TYPE);
    let feature = d
        .platform()
        .as_ref()
        .and_then(|p| p.os_features().as_ref())
        .is_some_and(|f| f.iter().any(|x| x == OS_FEATURE));
    artifact || feature
}

/// Whether a layer is the bootstrap layer.
fn is_bootstrap(d: &Descriptor) -> bool {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(BOOTSTRAP_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Opens the Nydus image `reference` names (see the module doc).
pub fn open_layout(reference: &LayoutReference, cache_size: u64) -> Result<Image> {
    let name = reference.to_string();
    let (layout, manifest) = nydus_manifest(reference)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{name}: not a Nydus image (no layer annotated {BOOTSTRAP_ANNOTATION})"
        ))
    })?;
    let boots: Vec<_> = manifest
        .layers()
        .iter()
        .filter(|d| is_bootstrap(d))
        .collect();
    let [boot] = boots.as_slice() else {
        return Err(Error::Invalid(format!(
            "{name}: {} bootstrap layers",
            boots.len()
        )));
    };
    let bytes = bootstrap_bytes(&layout, boot, &name)?;
    let label = format!("{name} bootstrap {}", boot.digest());
    let primary = Device::from_bytes(Path::new(&label), &bytes)?;
    let rafs = tables_of(&primary, Path::new(&label))?;
    let mut blobs = Vec::with_capacity(rafs.blobs.len());
    for info in &rafs.blobs {
        let digest = format!("sha256:{}", info.id);
        let listed = manifest.layers().iter().any(|d| {
            d.digest().to_string() == digest && d.media_type().to_string() == BLOB_MEDIA_TYPE
        });
        if !listed {
            return Err(Error::Invalid(format!(
                "{name}: blob {} is not a layer of the manifest",
                info.id
            )));
        }
        let path = layout.blob_path(&digest)?;
        let file = open_nofollow(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Invalid(format!(
                "{name}: blob {} is missing from the layout",
                info.id
            )),
            _ => Error::io(&path, e),
        })?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        blobs.push(Device::from_file(&file, &path, len)?);
    }
    open_devices(primary, &rafs, blobs, cache_size)
}

/// Reads `image/image.boot` out of the bootstrap layer `d`, whose bytes
/// are read into memory (bounded by [`MAX_BOOTSTRAP`]) and checked against
/// its digest before anything is decoded.
fn bootstrap_bytes(layout: &OciLayout, d: &Descriptor, name: &str) -> Result<Vec<u8>> {
    let digest = d.digest().to_string();
    let bad = |what: String| Error::Invalid(format!("{name}: bootstrap layer {digest}: {what}"));
    if d.size() > MAX_BOOTSTRAP {
        return Err(bad(format!("{} bytes (at most {MAX_BOOTSTRAP})", d.size())));
    }
    let path = layout.blob_path(&digest)?;
    let file = open_nofollow(&path).map_err(|e| Error::io(&path, e))?;
    let mut layer = Vec::new();
    file.take(d.size() + 1)
        .read_to_end(&mut layer)
        .map_err(|e| Error::io(&path, e))?;
    let actual = format!("sha256:{}", crate::format::hex(&Sha256::digest(&layer)));
    if layer.len() as u64 != d.size() || actual != digest {
        return Err(bad(format!(
            "{} bytes with digest {actual}, not the descriptor's {} bytes",
            layer.len(),
            d.size()
        )));
    }
    let media = d.media_type().to_string();
    let mut stream: Box<dyn Read> = if media.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(&layer[..]))
    } else if media.ends_with("zstd") {
        Box::new(
            zstd::stream::read::Decoder::new(&layer[..]).map_err(|e| bad(format!("zstd: {e}")))?,
        )
    } else {
        Box::new(&layer[..])
    };
    find_entry(&mut stream)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad(format!("no {BOOT_ENTRY} entry")))
}

/// The bytes of the bootstrap entry of the tar `stream`, bounded.
fn find_entry(stream: &mut dyn Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut archive = tar::Archive::new(stream);
    for (i, entry) in archive.entries()?.enumerate() {
        if i >= MAX_ENTRIES {
            break;
        }
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") != BOOT_ENTRY {
            continue;
        }
        if entry.size() > MAX_BOOTSTRAP {
            return Err(std::io::Error::other(format!(
                "bootstrap of {} bytes",
                entry.size()
            )));
        }
        let mut bytes = Vec::new();
        (&mut entry).take(MAX_BOOTSTRAP).read_to_end(&mut bytes)?;
        return Ok(Some(bytes));
    }
    Ok(None)
}
