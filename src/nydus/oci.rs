//! A Nydus image in a local OCI image layout (`oci:DIR[:TAG]`): the
//! manifest (chosen in an index for the platform, a Nydus-marked entry
//! first: nydusify marks some by artifact type or platform feature, and
//! none since 2.3.5) has one bootstrap layer, marked by the
//! `containerd.io/snapshot/nydus-bootstrap` annotation, a tar (gzip, zstd
//! or plain) whose `image/image.boot` is the bootstrap, and data blob
//! layers of the Nydus blob media type, whose digests are the blob ids.
//! The bootstrap layer is checked against its digest before it is
//! decoded, and decoded no further than [`inline::max_decoded`] of its
//! size; blobs are read in place, each chunk checked against its digest.

use std::io::Read;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::{inline, open_devices, open_file, open_nofollow, tables_of, BlobInfo, Rafs};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::reader::Image;
use crate::registry::manifest::{select_platform, Manifest, Platform};
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
/// Most tar entries looked through for the bootstrap.
const MAX_ENTRIES: usize = 64;

/// A Nydus image manifest found in a layout.
pub struct NydusManifest {
    /// The layout.
    pub layout: OciLayout,
    /// The image manifest, which has a bootstrap layer.
    pub manifest: ImageManifest,
}

/// The Nydus image manifest `reference` names for `platform` (an index's
/// Nydus-marked entry for it, else its entry for it), if it is one:
/// `None` for an ordinary image.
pub fn nydus_manifest(
    reference: &LayoutReference,
    platform: &Platform,
) -> Result<Option<NydusManifest>> {
    let layout = OciLayout::open(&reference.dir)?;
    let name = reference.to_string();
    let fetched = layout.manifest(reference.tag.as_deref().unwrap_or(""))?;
    let manifest = match Manifest::parse(&fetched, &name)? {
        Manifest::Image(m) => *m,
        Manifest::Index(index) => {
            let d = select_entry(&index, platform, &name)?;
            let fetched = layout.manifest(d.digest().as_ref())?;
            match Manifest::parse(&fetched, &name)? {
                Manifest::Image(m) => *m,
                Manifest::Index(_) => return Ok(None),
            }
        }
    };
    let nydus = manifest.layers().iter().any(is_bootstrap);
    Ok(nydus.then_some(NydusManifest { layout, manifest }))
}

/// The entry of `index` (of reference `name`) for `platform`: its
/// Nydus-marked one (nydusify's --merge-platform lists it after the
/// ordinary one), else the one [`select_platform`] picks.
pub fn select_entry<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
    name: &str,
) -> Result<&'a Descriptor> {
    let marked = index
        .manifests()
        .iter()
        .find(|d| is_nydus_entry(d) && platform_of(d).is_some_and(|p| platform.matches(&p)));
    match marked {
        Some(d) => Ok(d),
        None => select_platform(index, platform, name),
    }
}

/// For registry pulls, the entry of `index` (of reference `name`) for
/// `platform` as ordinary pulls always chose it ([`select_platform`]:
/// exact variant first) among its entries that are not Nydus-marked, so a
/// nydusify --merge-platform index still pulls its ordinary image; a
/// Nydus-marked entry only when no ordinary one matches.
pub fn select_ordinary_first<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
    name: &str,
) -> Result<&'a Descriptor> {
    let mut ordinary = index.clone();
    ordinary.set_manifests(
        index
            .manifests()
            .iter()
            .filter(|d| !is_nydus_entry(d))
            .cloned()
            .collect(),
    );
    if let Ok(d) = select_platform(&ordinary, platform, name) {
        let at = index.manifests().iter().position(|e| e == d);
        if let Some(at) = at {
            return Ok(&index.manifests()[at]);
        }
    }
    select_entry(index, platform, name)
}

/// The platform an index entry names, if any.
fn platform_of(d: &Descriptor) -> Option<Platform> {
    d.platform().as_ref().map(|p| Platform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone(),
    })
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

/// Whether layer `d` is a Nydus data blob layer (by its media type).
pub fn is_blob(d: &Descriptor) -> bool {
    d.media_type().to_string() == BLOB_MEDIA_TYPE
}

/// Whether `manifest` is a Nydus image's: it has a bootstrap layer or a
/// Nydus blob layer (one without the other is then an error for whoever
/// reads it, not an ordinary image).
pub fn is_nydus(manifest: &ImageManifest) -> bool {
    manifest
        .layers()
        .iter()
        .any(|d| is_bootstrap(d) || is_blob(d))
}

/// Checks that the blobs `rafs` lists are exactly the blob layers
/// `blob_digests` of manifest `manifest_digest` (named `name`): a blob's
/// id is its layer digest's hex. Errors name the reference and digest.
pub fn check_blob_layers(
    rafs: &Rafs,
    blob_digests: &[&str],
    name: &str,
    manifest_digest: &str,
) -> Result<()> {
    let listed: Vec<String> = rafs.blobs.iter().map(layer_digest).collect();
    if let Some(missing) = listed.iter().find(|d| !blob_digests.contains(&d.as_str())) {
        return Err(Error::Invalid(format!(
            "{name}: the bootstrap of manifest {manifest_digest} lists blob {missing}, which is not a Nydus blob layer of the manifest"
        )));
    }
    if let Some(extra) = blob_digests
        .iter()
        .find(|d| !listed.iter().any(|l| l == *d))
    {
        return Err(Error::Invalid(format!(
            "{name}: blob layer {extra} of manifest {manifest_digest} is not in its bootstrap's blob table"
        )));
    }
    Ok(())
}

/// The layer digest of blob `info`: `sha256:` and its id (hex, as the
/// blob table spells it, lowercased as digests are written).
pub fn layer_digest(info: &BlobInfo) -> String {
    format!("sha256:{}", info.id.to_ascii_lowercase())
}

/// Whether a layer is the bootstrap layer.
pub fn is_bootstrap(d: &Descriptor) -> bool {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(BOOTSTRAP_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Opens the Nydus image `found` (named `name`; see the module doc), with
/// its RAFS tables.
pub fn open_layout(found: &NydusManifest, name: &str, cache_size: u64) -> Result<(Image, Rafs)> {
    let NydusManifest { layout, manifest } = found;
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
    let primary = bootstrap_device(layout, boot, name)?;
    let rafs = tables_of(&primary, primary.path())?;
    let mut blobs = Vec::with_capacity(rafs.blobs.len());
    for info in &rafs.blobs {
        let digest = layer_digest(info);
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
        blobs.push(open_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Invalid(format!(
                "{name}: blob {} is missing from the layout",
                info.id
            )),
            _ => Error::io(&path, e),
        })?);
    }
    let image = open_devices(primary, &rafs, blobs, cache_size)?;
    Ok((image, rafs))
}

/// The bootstrap in layer `d`: the layer is read into memory (no larger
/// than [`inline::MAX_BOOTSTRAP`]) and checked against its digest, then
/// `image/image.boot` decoded out of it into its device.
fn bootstrap_device(layout: &OciLayout, d: &Descriptor, name: &str) -> Result<Device> {
    let digest = d.digest().to_string();
    let bad = |what: String| Error::Invalid(format!("{name}: bootstrap layer {digest}: {what}"));
    let cap = inline::MAX_BOOTSTRAP;
    if d.size() > cap {
        return Err(bad(format!("{} bytes (at most {cap})", d.size())));
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
    bootstrap_from_layer(&layer, d.media_type().as_ref(), name).map_err(|e| bad(e.to_string()))
}

/// The bootstrap in the bytes of a bootstrap layer of media type `media`
/// (gzip, zstd or a plain tar), decoded no further than
/// [`inline::max_decoded`] of their size, named `name` in errors.
pub fn bootstrap_from_layer(layer: &[u8], media: &str, name: &str) -> Result<Device> {
    let stream = decoded(layer, media)?;
    // Every byte the scan decodes counts: skipping entries costs no more.
    let limit = inline::max_decoded(layer.len() as u64);
    let label = format!("{name} bootstrap");
    find_entry(stream.take(limit), Path::new(&label))?
        .ok_or_else(|| Error::Invalid(format!("no {BOOT_ENTRY} entry in its first {limit} bytes")))
}

/// The tar of bootstrap layer `layer` (media type `media`: gzip, zstd or
/// plain), decoded as it is read (unbounded: the caller bounds it).
pub fn decoded<'a>(layer: &'a [u8], media: &str) -> Result<Box<dyn Read + 'a>> {
    Ok(if media.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else if media.ends_with("zstd") {
        Box::new(
            zstd::stream::read::Decoder::new(layer)
                .map_err(|e| Error::Invalid(format!("zstd: {e}")))?,
        )
    } else {
        Box::new(layer)
    })
}

/// The bootstrap entry of the tar `stream` (already bounded), decoded
/// into a device named `label`.
pub(super) fn find_entry(stream: impl Read, label: &Path) -> Result<Option<Device>> {
    let io = |e: std::io::Error| Error::Invalid(e.to_string());
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(io)?.take(MAX_ENTRIES) {
        let mut entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") != BOOT_ENTRY {
            continue;
        }
        let size = entry.size();
        if size > inline::MAX_BOOTSTRAP {
            return Err(Error::Invalid(format!("bootstrap of {size} bytes")));
        }
        let device = Device::from_filled(label, size as usize, |out| {
            entry.read_exact(out).map_err(io)?;
            Ok(out.len())
        })?;
        return Ok(Some(device));
    }
    Ok(None)
}
