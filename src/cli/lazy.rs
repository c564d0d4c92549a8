//! `mount --lazy REF`: the image's layers opened for on-demand reads, with
//! one line per layer on stderr saying how each is read and verified.

use erofs_fuse::store::layer_kind::has_layer_as;
use std::collections::BTreeMap;
use std::sync::Arc;

use erofs_fuse::lazy::CacheOptions;
use erofs_fuse::registry::referrers::LayerIndex;
use erofs_fuse::registry::ImageSource;
use erofs_fuse::store::images::{ImageRecord, ImageRef, LayerRecord, Store};
use erofs_fuse::Image;

use super::args::{MountArgs, OpenArgs};
use super::error::{CliError, Context, Result};
use super::open_with;

/// What a lazy mount of `image` reads from: its registry, unless every
/// layer of `record` is in the store already; and the lazy caches' options.
pub fn lazy_source(
    store: &Store,
    image: &ImageRef,
    record: &ImageRecord,
    args: &MountArgs,
) -> Result<(Option<Arc<dyn ImageSource>>, CacheOptions)> {
    let complete = record
        .layers
        .iter()
        .all(|l| has_layer_as(store, &l.digest, l.kind));
    let source: Option<Arc<dyn ImageSource>> = match complete {
        true => None,
        false => {
            let options = super::pull::client_options(&args.source.registry)?;
            Some(Arc::from(image.open(&options)?))
        }
    };
    let options = CacheOptions {
        prefetch: args.prefetch,
        ..erofs_fuse::store::lazy::cache_options()
    };
    Ok((source, options))
}

/// The layers of `record` for `mount --lazy`, bottom first: those in the
/// store opened as usual, the others read on demand through their caches
/// in the store (verified where they have a layer index).
pub fn open_lazily(
    store: &Store,
    image: &ImageRef,
    record: &ImageRecord,
    args: &MountArgs,
    open: &OpenArgs,
) -> Result<Vec<Arc<Image>>> {
    let pins = pins(&args.verity_roots, record)?;
    // Shared with pulls, exclusive for gc: no cache removed while opened.
    let _lock = store.lock(false)?;
    let (source, options) = lazy_source(store, image, record, args)?;
    // Opening a lazy layer costs round trips (its superblock, its root
    // directory, its trees' tops): layers open at once, a few threads.
    let open_one = |i: usize| -> Result<(Arc<Image>, String)> {
        let layer = &record.layers[i];
        let digest = &layer.digest;
        let source = match (&source, has_layer_as(store, digest, layer.kind)) {
            (Some(source), false) => Arc::clone(source),
            _ => {
                let image = open_with(&store.layer_image(digest), open)?;
                return Ok((Arc::new(image), "pulled (in the store)".into()));
            }
        };
        let pin = (record.manifest_digest.as_str(), pins.get(digest));
        let ((mut image, cache), how) = open_layer(store, source, layer, pin, &options)
            .with_context(|| format!("layer {i} {digest}"))?;
        image.set_cache_size(open.cache_size);
        let stats = cache.stats();
        let line = format!(
            "lazy, {how}, {}/{} chunks cached",
            stats.present, stats.chunks
        );
        Ok((Arc::new(image), line))
    };
    let opened = in_parallel(record.layers.len(), OPEN_THREADS, &open_one);
    let mut images = Vec::with_capacity(record.layers.len());
    let mut unverified = 0;
    for (i, result) in opened.into_iter().enumerate() {
        let (image, line) = result?;
        eprintln!("layer {i} {}: {line}", record.layers[i].digest);
        unverified += usize::from(line.starts_with("lazy, UNVERIFIED"));
        images.push(image);
    }
    if unverified > 0 {
        eprintln!(
            "warning: {unverified} lazy layer(s) are served unverified: a registry or proxy can alter what they show (`erofs-fuse attach` adds the index that verifies them)"
        );
    }
    Ok(images)
}

/// Layers opened at once by `mount --lazy`.
const OPEN_THREADS: usize = 8;

/// `job(0..count)` on up to `threads` threads, the results in order.
fn in_parallel<T: Send>(
    count: usize,
    threads: usize,
    job: &(dyn Fn(usize) -> Result<T> + Sync),
) -> Vec<Result<T>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<T>>>> =
        (0..count).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(count) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let result = job(i);
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            let taken = slot.into_inner().unwrap_or_else(|p| p.into_inner());
            taken.unwrap_or_else(|| Err(CliError::msg("a layer's opening thread failed")))
        })
        .collect()
}

/// What `--verity-root` pins for a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pin {
    /// The root hash: all an EROFS-native layer's reader reads.
    Root([u8; 32]),
    /// The layer-index artifact (`attach`'s `referrer` digest): tar index,
    /// zinfo, tree and root together.
    Artifact(String),
}

/// A layer the store lacks, opened for reads on demand, and how its reads
/// are verified. `subject` is the image manifest's digest.
fn open_layer(
    store: &Store,
    source: Arc<dyn ImageSource>,
    layer: &LayerRecord,
    (subject, pin): (&str, Option<&Pin>),
    options: &CacheOptions,
) -> erofs_fuse::Result<((Image, Arc<erofs_fuse::lazy::ChunkCache>), String)> {
    use erofs_fuse::store::{indexed, lazy};
    let invalid = |m: String| erofs_fuse::Error::Invalid(m);
    let pinned_index;
    let index = match (pin, &layer.index) {
        // Fetched by its digest: whatever the registry lists.
        (Some(Pin::Artifact(artifact)), listed) => {
            pinned_index = match listed {
                Some(index) if index.artifact == *artifact => index.clone(),
                _ => {
                    let fetched = source.manifest(artifact)?;
                    LayerIndex::parse(artifact, subject, &fetched.bytes)
                        .map_err(|e| invalid(format!("layer index {artifact}: {e}")))?
                }
            };
            if pinned_index.layer != layer.digest {
                return Err(invalid(format!(
                    "the layer index {artifact} --verity-root gives is for layer {}",
                    pinned_index.layer
                )));
            }
            &pinned_index
        }
        (Some(Pin::Root(_)), None) => {
            return Err(invalid(
                "--verity-root names it, but the registry has no layer index for it (push one with `erofs-fuse attach`)".into(),
            ))
        }
        (None, None) => {
            let opened = lazy::open_layer(store, source, layer, options)?;
            return Ok((opened, "UNVERIFIED (served as the registry sends it)".into()));
        }
        (_, Some(index)) => index,
    };
    let how = match pin {
        Some(Pin::Root(_)) if index.tar_index.is_some() => {
            return Err(invalid(
                "a root hash pins a tar layer's data but not its tar index: give the referrer digest `attach` printed (LAYER=sha256:...)".into(),
            ))
        }
        Some(Pin::Root(root)) if *root != index.root => {
            return Err(invalid(format!(
                "its layer index {} has root hash {}, not the {} --verity-root gives",
                index.artifact,
                erofs_fuse::format::hex(&index.root),
                erofs_fuse::format::hex(root)
            )))
        }
        Some(Pin::Root(_)) => "verified (root hash pinned by --verity-root)".to_string(),
        Some(Pin::Artifact(a)) => format!("verified (layer index {a} pinned by --verity-root)"),
        None => format!(
            "verified against the registry's layer index {} (not pinned: a registry forging both is not detected)",
            index.artifact
        ),
    };
    let opened = indexed::open_indexed_layer(store, source, layer, index, &index.root, options)?;
    Ok((opened, how))
}

/// `--verity-root LAYER=ROOT|ARTIFACT` values, each naming a layer of
/// `record`.
fn pins(values: &[String], record: &ImageRecord) -> Result<BTreeMap<String, Pin>> {
    let mut pins = BTreeMap::new();
    for value in values {
        let bad = |why: &str| CliError::msg(format!("--verity-root {value}: {why}"));
        let (layer, pinned) = value
            .split_once('=')
            .ok_or_else(|| bad("expected sha256:LAYER=ROOT_HEX or sha256:LAYER=sha256:REFERRER"))?;
        let pin = match pinned.strip_prefix("sha256:") {
            Some(_) if erofs_fuse::registry::reference::is_sha256_digest(pinned) => {
                Pin::Artifact(pinned.to_string())
            }
            Some(_) => return Err(bad("the referrer is not a sha256 digest")),
            None => Pin::Root(erofs_fuse::verity::parse_root(pinned).map_err(|e| bad(&e))?),
        };
        if !record.layers.iter().any(|l| l.digest == layer) {
            return Err(bad("no layer of the image has that digest"));
        }
        if pins.insert(layer.to_string(), pin).is_some() {
            return Err(bad("given twice for that layer"));
        }
    }
    Ok(pins)
}
