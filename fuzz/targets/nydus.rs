//! Open arbitrary bytes as a Nydus RAFS v6 bootstrap with a data blob, and
//! exercise the image as the `image` target does (every chunk of every
//! file found, decoded, digest-checked). Input: a 4-byte little-endian
//! bootstrap length N, N bytes of bootstrap, then the blob (given for every
//! blob the bootstrap names). The blob bytes also go through the parsers
//! of the bootstraps that come inside other files: the `--blob-inline-meta`
//! tail (tar header, ToC, decoding) and the OCI bootstrap layer's tar scan
//! (gzip, zstd, plain).
use std::path::Path;

use erofs_fuse::device::Device;

/// Most blobs an input may name: each is a mapped copy of the same bytes.
const MAX_BLOBS: usize = 4;

/// Splits `data` into (bootstrap, blob).
pub fn split(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let head: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let rest = &data[4..];
    let n = (u32::from_le_bytes(head) as usize).min(rest.len());
    Some(rest.split_at(n))
}

/// Frames a bootstrap and a blob as one input (seeds, regressions).
pub fn frame(bootstrap: &[u8], blob: &[u8]) -> Vec<u8> {
    let mut out = (bootstrap.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(bootstrap);
    out.extend_from_slice(blob);
    out
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((bootstrap, blob)) = split(data) else {
        return;
    };
    inline_and_layer(blob);
    let Ok(primary) = Device::from_bytes(Path::new("fuzz.boot"), bootstrap) else {
        return;
    };
    let Ok(Some(rafs)) = peek(&primary) else {
        return;
    };
    if rafs > MAX_BLOBS {
        return;
    }
    let blobs = (0..rafs)
        .map(|_| Device::from_bytes(Path::new("fuzz.blob"), blob))
        .collect::<Result<Vec<_>, _>>();
    let Ok(blobs) = blobs else {
        return;
    };
    if let Ok(image) = erofs_fuse::nydus::open_bytes(primary, blobs, 4 << 20) {
        super::image::exercise(&image);
    }
}

/// How many blobs the bootstrap names, if it parses that far.
fn peek(primary: &Device) -> erofs_fuse::Result<Option<usize>> {
    if !erofs_fuse::nydus::is_rafs_v6(primary) {
        return Ok(None);
    }
    let sb = erofs_fuse::reader::SuperInfo::parse(primary)?;
    Ok(Some(usize::from(sb.extra_devices)))
}

/// The blob bytes as a blob with its bootstrap inside (opened with itself
/// for every blob it names) and as a bootstrap layer of each media type.
fn inline_and_layer(blob: &[u8]) {
    for media in ["tar+gzip", "tar+zstd", "tar"] {
        let _ = erofs_fuse::nydus::oci::bootstrap_from_layer(blob, media, "fuzz.layer");
    }
    let Ok(dev) = Device::from_bytes(Path::new("fuzz.blob"), blob) else {
        return;
    };
    let Ok(primary) = erofs_fuse::nydus::inline::bootstrap(&dev) else {
        return;
    };
    let Ok(Some(n)) = peek(&primary) else {
        return;
    };
    if n <= MAX_BLOBS {
        if let Ok(image) = erofs_fuse::nydus::open_bytes(primary, vec![dev; n], 4 << 20) {
            super::image::exercise(&image);
        }
    }
}
