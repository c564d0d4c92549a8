//! `mount [--lazy] REF` of a Nydus image pulled into the store: served
//! as nydusd shows it (one layer: its whiteouts stay files), with one
//! line per blob on stderr saying where it is read from: the store,
//! fetched whole (checked against its layer digest), or lazily (each chunk
//! checked against its digest).

use std::sync::Arc;

use erofs_fuse::store::images::{ImageRecord, ImageRef, Store};
use erofs_fuse::store::nydus::{self, BlobRead};
use erofs_fuse::view::{ImageView, OverlayXattrs, View};

use super::args::{MountArgs, OpenArgs};
use super::error::{CliError, Result};

/// The view of `record` when it is a Nydus image's (`None` otherwise):
/// blobs in the store read from it, the others (`mount --lazy`) read on
/// demand from the registry through their caches in the store.
pub(super) fn view(
    store: &Store,
    image: &ImageRef,
    record: &ImageRecord,
    args: &MountArgs,
    open: &OpenArgs,
) -> Result<Option<Arc<dyn View>>> {
    if !nydus::is_nydus(record) {
        return Ok(None);
    }
    let name = image.to_string();
    if !args.verity_roots.is_empty() {
        return Err(CliError::msg(format!(
            "{name}: --verity-root does not apply to a Nydus image (its chunks are checked against their digests)"
        )));
    }
    // Shared with pulls, exclusive for gc: no cache removed while opened.
    let _lock = store.lock(false)?;
    let (source, options) = super::lazy::lazy_source(store, image, record, args)?;
    let (image, blobs) = nydus::open(store, record, &name, source, &options, open.cache_size)?;
    if args.lazy {
        for (i, blob) in blobs.iter().enumerate() {
            let how = match &blob.read {
                BlobRead::Stored => "pulled (in the store)".to_string(),
                BlobRead::FetchedWhole(why) => {
                    format!("fetched whole, checked against its layer digest ({why})")
                }
                BlobRead::Lazy(cache) => {
                    let stats = cache.stats();
                    format!(
                        "lazy, verified by its chunk digests, {}/{} chunks cached",
                        stats.present, stats.chunks
                    )
                }
            };
            eprintln!("nydus blob {i} {}: {how}", blob.digest);
        }
    }
    let view = ImageView::new(Arc::new(image), OverlayXattrs::Trusted);
    Ok(Some(Arc::new(view)))
}
