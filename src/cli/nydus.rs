//! Nydus RAFS v6 bootstraps on the command line: opened with their blobs
//! (`--blob-dir`, or `--device` per blob), and the blob table `inspect`
//! shows.

use std::path::Path;

use erofs_fuse::nydus::{self as rafs, BlobFiles, Rafs};
use erofs_fuse::registry::manifest::Platform;
use erofs_fuse::registry::oci_layout::LayoutReference;
use erofs_fuse::Image;

use super::args::OpenArgs;
use super::error::{CliError, Context, Result};

/// The image at `path` with its RAFS tables, opened once, when it is a
/// Nydus image: an `oci:` layout holding one (for `platform`), a
/// bootstrap with blobs, or a blob with `--blob-inline-meta`. `None` for
/// anything else (opened as an ordinary image).
pub(super) fn open_nydus(
    path: &Path,
    args: &OpenArgs,
    platform: &Platform,
) -> Result<Option<(Image, Rafs)>> {
    if let Some(opened) = open_layout(path, args, platform)? {
        return Ok(Some(opened));
    }
    // A file that cannot be read is left to the ordinary open to report.
    let bootstrap = args.blob_dir.is_some()
        || args.blob_inline_meta
        || rafs::probe(path, args.offset).unwrap_or(false);
    if !bootstrap {
        if args.verify_tars {
            return Err(CliError::msg(format!(
                "{}: --verify-tars does not apply: not a Nydus tarfs bootstrap",
                path.display()
            )));
        }
        return Ok(None);
    }
    if args.verify_tars && args.blob_inline_meta {
        return Err(CliError::msg(format!(
            "{}: --verify-tars does not apply with --blob-inline-meta",
            path.display()
        )));
    }
    no_verity_or_zinfo(&path.display().to_string(), args)?;
    let blobs = BlobFiles {
        dir: args.blob_dir.clone(),
        files: args.devices.clone(),
        verify_tars: args.verify_tars,
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
        Ok(opened) => Ok(Some(opened)),
        // These already name the file they concern.
        Err(e @ erofs_fuse::Error::Io { .. }) => Err(e.into()),
        Err(e) if e.to_string().starts_with(&path.display().to_string()) => Err(e.into()),
        Err(e) => Err(e).context(path.display()),
    }
}

/// Refuses the options that do not apply to a Nydus image `name`.
fn no_verity_or_zinfo(name: &str, args: &OpenArgs) -> Result<()> {
    if args.verity.is_some() || args.dmverity.is_some() || !args.device_verity.is_empty() {
        return Err(CliError::msg(format!(
            "{name}: verity options do not apply to a Nydus image (its chunks are checked against their digests)"
        )));
    }
    if !args.zinfos.is_empty() {
        return Err(CliError::msg(format!(
            "{name}: --zinfo does not apply to a Nydus image"
        )));
    }
    Ok(())
}

/// `IMAGE` given as `oci:DIR[:TAG]` naming a Nydus image: opened in
/// place (no store), blobs read from the layout. `None` for anything else.
fn open_layout(path: &Path, args: &OpenArgs, platform: &Platform) -> Result<Option<(Image, Rafs)>> {
    let Some(reference) = path.to_str().and_then(LayoutReference::parse) else {
        return Ok(None);
    };
    let reference = reference?;
    let Some(found) = rafs::oci::nydus_manifest(&reference, platform)? else {
        return Ok(None);
    };
    let name = reference.to_string();
    if !args.devices.is_empty()
        || args.blob_dir.is_some()
        || args.offset != 0
        || args.blob_inline_meta
        || args.verify_tars
    {
        return Err(CliError::msg(format!(
            "{name}: --device, --blob-dir, --blob-inline-meta, --verify-tars and --offset do not apply to an image layout"
        )));
    }
    no_verity_or_zinfo(&name, args)?;
    Ok(Some(rafs::oci::open_layout(
        &found,
        &name,
        args.cache_size,
    )?))
}

/// For `mount REF`: a Nydus image in an OCI layout (for `platform`, the
/// host's by default), served in place as nydusd shows it (one layer: its
/// whiteouts stay files). `None` when REF is not one (the store then
/// pulls it).
pub(super) fn layout_view(
    reference: &str,
    open: &OpenArgs,
    platform: Option<&str>,
) -> Result<Option<std::sync::Arc<dyn erofs_fuse::view::View>>> {
    let platform = match platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let Some((image, _)) = open_layout(Path::new(reference), open, &platform)? else {
        return Ok(None);
    };
    let view = erofs_fuse::view::ImageView::new(
        std::sync::Arc::new(image),
        erofs_fuse::view::OverlayXattrs::Trusted,
    );
    Ok(Some(std::sync::Arc::new(view)))
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
