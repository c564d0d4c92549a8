//! Nydus RAFS v6 bootstraps on the command line: opened with their blobs
//! (`--blob-dir`, or `--device` per blob), and the blob table `inspect`
//! shows.

use std::path::Path;

use erofs_fuse::nydus::{self as rafs, BlobFiles, Rafs};
use erofs_fuse::registry::oci_layout::LayoutReference;
use erofs_fuse::Image;

use super::args::OpenArgs;
use super::error::{CliError, Context, Result};

/// Whether the file at `path` is a RAFS v6 bootstrap with blobs (a file
/// that cannot be read is left to the ordinary open to report).
pub(super) fn probe(path: &Path, offset: u64) -> Result<bool> {
    Ok(rafs::probe(path, offset)?)
}

/// Opens the bootstrap at `path` with the blobs `args` give.
pub(super) fn open(path: &Path, args: &OpenArgs) -> Result<Image> {
    if args.verity.is_some() || args.dmverity.is_some() || !args.device_verity.is_empty() {
        return Err(CliError::msg(format!(
            "{}: verity options do not apply to a Nydus bootstrap (its chunks are checked against their digests)",
            path.display()
        )));
    }
    if !args.zinfos.is_empty() {
        return Err(CliError::msg(format!(
            "{}: --zinfo does not apply to a Nydus bootstrap",
            path.display()
        )));
    }
    let blobs = BlobFiles {
        dir: args.blob_dir.clone(),
        files: args.devices.clone(),
    };
    let opened = if args.blob_inline_meta {
        if !args.devices.is_empty() || args.offset != 0 {
            return Err(CliError::msg(format!(
                "{}: --device and --offset do not apply with --blob-inline-meta",
                path.display()
            )));
        }
        rafs::open_inline(path, &blobs, args.cache_size)
    } else {
        rafs::open(path, args.offset, &blobs, args.cache_size)
    };
    match opened {
        Ok(image) => Ok(image),
        // These already name the file they concern.
        Err(e @ erofs_fuse::Error::Io { .. }) => Err(e.into()),
        Err(e) if e.to_string().starts_with(&path.display().to_string()) => Err(e.into()),
        Err(e) => Err(e).context(path.display()),
    }
}

/// `IMAGE` given as `oci:DIR[:TAG]` naming a Nydus image: opened in
/// place (no store), blobs read from the layout. `None` for anything else.
pub(super) fn open_layout(path: &Path, args: &OpenArgs) -> Result<Option<Image>> {
    let Some(reference) = path.to_str().and_then(LayoutReference::parse) else {
        return Ok(None);
    };
    let reference = reference?;
    if rafs::oci::nydus_manifest(&reference)?.is_none() {
        return Ok(None);
    }
    if !args.devices.is_empty() || args.blob_dir.is_some() || args.offset != 0 {
        return Err(CliError::msg(format!(
            "{reference}: --device, --blob-dir and --offset do not apply to an image layout"
        )));
    }
    let image = rafs::oci::open_layout(&reference, args.cache_size)?;
    Ok(Some(image))
}

/// For `mount REF`: a Nydus image in an OCI layout, served in place as
/// nydusd shows it (one layer: its whiteouts stay files). `None` when REF
/// is not one (the store then pulls it).
pub(super) fn layout_view(
    reference: &str,
    open: &OpenArgs,
) -> Result<Option<std::sync::Arc<dyn erofs_fuse::view::View>>> {
    let Some(image) = open_layout(Path::new(reference), open)? else {
        return Ok(None);
    };
    let view = erofs_fuse::view::ImageView::new(
        std::sync::Arc::new(image),
        erofs_fuse::view::OverlayXattrs::Trusted,
    );
    Ok(Some(std::sync::Arc::new(view)))
}

/// The RAFS v6 tables of the bootstrap at `path`, if it is one.
pub(super) fn tables(path: &Path, args: &OpenArgs) -> Result<Option<Rafs>> {
    if args.blob_inline_meta {
        return Ok(Some(rafs::read_rafs_inline(path)?));
    }
    if path.to_str().is_some_and(|p| p.starts_with("oci:")) {
        return Ok(None);
    }
    Ok(rafs::read_rafs(path, args.offset)?)
}

/// `inspect`'s lines for the blob table.
pub(super) fn blob_lines(rafs: &Rafs) -> Vec<(String, String)> {
    let mut out = vec![(
        "nydus:".to_string(),
        format!(
            "RAFS v6, flags {:#x}{}, chunk size {}, {} chunk record(s)",
            rafs.flags,
            if rafs.tarfs() { " (tarfs)" } else { "" },
            rafs.chunk_size,
            rafs.chunks.len()
        ),
    )];
    for b in &rafs.blobs {
        out.push((format!("  blob {}:", b.index), b.id.clone()));
        out.push((
            String::new(),
            format!(
                "chunk size {}, {} chunk(s), {} / {}, features {:#x}",
                b.chunk_size,
                b.chunk_count,
                b.compressor.name(),
                b.digester.name(),
                b.features
            ),
        ));
        out.push((
            String::new(),
            format!(
                "compressed {} bytes, uncompressed {}; CI array at {} ({} bytes, {} uncompressed, compressor {})",
                b.compressed_size,
                b.uncompressed_size,
                b.ci_offset,
                b.ci_compressed_size,
                b.ci_uncompressed_size,
                b.ci_compressor
            ),
        ));
    }
    out
}

/// The blob table as JSON (for `inspect --json`).
pub(super) fn blob_json(rafs: &Rafs) -> serde_json::Value {
    let blobs: Vec<_> = rafs
        .blobs
        .iter()
        .map(|b| {
            serde_json::json!({
                "index": b.index,
                "id": b.id,
                "chunk_size": b.chunk_size,
                "chunk_count": b.chunk_count,
                "compressor": b.compressor.name(),
                "digester": b.digester.name(),
                "features": b.features,
                "compressed_size": b.compressed_size,
                "uncompressed_size": b.uncompressed_size,
                "ci_compressor": b.ci_compressor,
                "ci_offset": b.ci_offset,
                "ci_compressed_size": b.ci_compressed_size,
                "ci_uncompressed_size": b.ci_uncompressed_size,
            })
        })
        .collect();
    serde_json::json!({
        "flags": rafs.flags,
        "tarfs": rafs.tarfs(),
        "chunk_size": rafs.chunk_size,
        "chunk_records": rafs.chunks.len(),
        "blobs": blobs,
    })
}
