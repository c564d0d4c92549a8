//! `mount` and `store`: what to serve, from the arguments, and serving it.

use std::path::{Path, PathBuf};

use erofs_fuse::fuse::options::MountOptions;
use erofs_fuse::fuse::session::MountRequest;
use erofs_fuse::OpenOptions;

use super::args::{
    MountArgs, OpenArgs, OverlayXattrsArg, ServeArgs, StoreAddArgs, StoreServeArgs, StoreXattrsArg,
};
use super::error::{CliError, Context, Result};
use super::{open_with, write_out};
use erofs_fuse::view::OverlayXattrs;

impl MountArgs {
    /// `mount`.
    pub fn run(self) -> Result {
        mount(&self)
    }
}

fn mount(args: &MountArgs) -> Result {
    use erofs_fuse::view::{ImageView, View};
    use std::sync::Arc;
    let overlay_xattrs = match args.overlay_xattrs {
        OverlayXattrsArg::Trusted => OverlayXattrs::Trusted,
        OverlayXattrsArg::User => OverlayXattrs::User,
    };
    let options = MountOptions::parse(&args.serve.options)?;
    let mut open = args.open.clone();
    open.devices.extend(options.devices.iter().cloned());
    open.device_verity
        .extend(options.device_verity.iter().cloned());
    if let Some(source) = &options.verity {
        if open.verity.is_some() || open.dmverity.is_some() {
            return Err(CliError::msg("verity given both as an option and with -o"));
        }
        open.verity = Some(source.clone());
    }
    if let Some(size) = options.cache_size {
        open.cache_size = size;
    }
    open.verity_once |= options.verity_once;
    if let Some((image, mountpoint)) = image_reference(args)? {
        if overlay_xattrs != OverlayXattrs::Trusted {
            return Err(CliError::msg("--overlay-xattrs applies to single images: a merged stack shows no overlayfs xattrs"));
        }
        let (name, view) =
            open_image(args, &image, &open).with_context(|| format!("mount {image}"))?;
        let ahead = !args.lazy;
        return serve(
            view,
            Path::new(&name),
            mountpoint,
            options,
            &args.serve,
            ahead,
        )
        .with_context(|| format!("mount {name}"));
    }
    if args.lazy {
        return Err(CliError::msg(
            "--lazy applies to image references (REF or --image REF), not to image files",
        ));
    }
    let (source, mountpoint, view): (PathBuf, &PathBuf, Arc<dyn View>) = match (
        args.paths.as_slice(),
        args.layers.is_empty(),
    ) {
        ([image, mountpoint], true) => {
            let view = ImageView::new(Arc::new(open_with(image, &open)?), overlay_xattrs);
            (image.clone(), mountpoint, Arc::new(view))
        }
        ([mountpoint], false) => {
            if overlay_xattrs != OverlayXattrs::Trusted {
                return Err(CliError::msg("--overlay-xattrs applies to single images: a merged stack shows no overlayfs xattrs"));
            }
            let stack = open_stack(&args.layers, &open)?;
            let top = args.layers.last().map(|l| split_layer(l).0);
            (top.unwrap_or_default(), mountpoint, Arc::new(stack))
        }
        (_, true) => return Err(CliError::msg("mount needs IMAGE and MOUNTPOINT")),
        (_, false) => return Err(CliError::msg("with --layer, mount takes only MOUNTPOINT")),
    };
    serve(view, &source, mountpoint, options, &args.serve, true)
        .with_context(|| format!("mount {}", source.display()))
}

/// The image reference `mount` was given and the mountpoint: `--image
/// REF MOUNTPOINT`, or `REF MOUNTPOINT` when no file REF exists and REF
/// reads as a reference (`oci:...`, or one with a registry, tag, digest
/// or path: a bare word is taken for a missing file).
fn image_reference(args: &MountArgs) -> Result<Option<(String, &PathBuf)>> {
    if let Some(image) = &args.image {
        return match args.paths.as_slice() {
            [mountpoint] => Ok(Some((image.clone(), mountpoint))),
            _ => Err(CliError::msg("with --image, mount takes only MOUNTPOINT")),
        };
    }
    let ([first, mountpoint], true) = (args.paths.as_slice(), args.layers.is_empty()) else {
        return Ok(None);
    };
    let Some(text) = first.to_str() else {
        return Ok(None);
    };
    let reference = text.starts_with("oci:")
        || (!first.exists()
            && !text.starts_with(['/', '.'])
            && text.contains([':', '/', '@'])
            && erofs_fuse::store::images::ImageRef::parse(text).is_ok());
    Ok(reference.then(|| (text.to_string(), mountpoint)))
}

/// The merged layers of image `reference` (pulled first if the store
/// lacks them), and the image's name for the mount.
fn open_image(
    args: &MountArgs,
    reference: &str,
    open: &OpenArgs,
) -> Result<(String, std::sync::Arc<dyn erofs_fuse::view::View>)> {
    if open.verity.is_some() || open.dmverity.is_some() || !open.device_verity.is_empty() {
        return Err(CliError::msg(
            "the store keeps no verity trees yet: --verity applies to image files",
        ));
    }
    let platform = args.source.registry.platform.as_deref();
    if let Some(view) = super::nydus::layout_view(reference, open, platform)? {
        return Ok((reference.to_string(), view));
    }
    if !open.devices.is_empty() || open.offset != 0 {
        return Err(CliError::msg("--device and --offset apply to image files"));
    }
    if open.blob_dir.is_some() || open.blob_inline_meta || open.verify_tars {
        return Err(CliError::msg(
            "--blob-dir, --blob-inline-meta and --verify-tars apply to Nydus image files",
        ));
    }
    let image = erofs_fuse::store::images::ImageRef::parse(reference)?;
    let store = super::pull::open_store(args.source.store.as_deref())?;
    let record = super::pull::ensure_resolved(&store, &image, &args.source, args.lazy)?;
    if let Some(view) = super::nydus_ref::view(&store, &image, &record, args, open)? {
        return Ok((image.to_string(), view));
    }
    let images = if args.lazy {
        super::lazy::open_lazily(&store, &image, &record, args, open)?
    } else {
        let mut images = Vec::with_capacity(record.layers.len());
        for path in super::pull::layer_images(&store, &record) {
            images.push(std::sync::Arc::new(open_with(&path, open)?));
        }
        images
    };
    let stack = erofs_fuse::overlay::Stack::new(images)?;
    Ok((image.to_string(), std::sync::Arc::new(stack)))
}

/// Mounts `view` (from `source`) at `mountpoint` and serves it; `ahead`:
/// whether the view's data is local, so filling the kernel's page cache
/// ahead of readers costs no fetches (unless `--no-store-ahead`).
fn serve(
    view: std::sync::Arc<dyn erofs_fuse::view::View>,
    source: &Path,
    mountpoint: &Path,
    options: MountOptions,
    args: &ServeArgs,
    ahead: bool,
) -> erofs_fuse::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let fsname = std::fs::canonicalize(source)
        .unwrap_or_else(|_| source.to_path_buf())
        .display()
        .to_string();
    let readahead = options.readahead.or(args.readahead);
    let mount = MountRequest {
        view,
        mountpoint: mountpoint.to_path_buf(),
        options,
        foreground: args.foreground,
        threads,
        fsname,
        readahead,
        store_ahead: ahead && !args.no_store_ahead,
    }
    .prepare()?;
    super::daemon::run(mount)
}

/// `store add`: each argument a layer blob or an OCI image layout; a TOC
/// digest applies to a single blob argument.
fn store_add(store: &Path, blobs: &[PathBuf], toc_digest: Option<&str>, progress: bool) -> Result {
    use erofs_fuse::store::layout::{self, OciLayer};
    if toc_digest.is_some() && (blobs.len() != 1 || blobs[0].is_dir()) {
        return Err(CliError::msg(
            "store add: --toc-digest applies to one blob; an OCI layout's layers carry their own",
        ));
    }
    for arg in blobs {
        let layers = if arg.is_dir() {
            layout::oci_layers(arg)?
        } else {
            vec![OciLayer {
                blob: arg.clone(),
                toc_digest: toc_digest.map(str::to_string),
            }]
        };
        for layer in layers {
            let info = match &layer.toc_digest {
                Some(digest) => {
                    erofs_fuse::store::toc_layers::add(store, &layer.blob, digest, progress)?
                }
                None => layout::add(store, &layer.blob, progress)?,
            };
            let toc = info
                .toc_digest
                .as_ref()
                .map(|d| format!(" toc {d}"))
                .unwrap_or_default();
            write_out(
                format!(
                    "{} diffid {}{toc} {}\n",
                    info.compressed_digest,
                    info.diff_digest,
                    layer.blob.display()
                )
                .as_bytes(),
            )?;
        }
    }
    Ok(())
}

impl StoreAddArgs {
    /// `store add`.
    pub fn run(self) -> Result {
        store_add(
            &self.store,
            &self.blobs,
            self.toc_digest.as_deref(),
            !self.quiet,
        )
    }
}

impl StoreServeArgs {
    /// `store serve`.
    pub fn run(self) -> Result {
        let overlay_xattrs = match self.overlay_xattrs {
            StoreXattrsArg::Auto if erofs_fuse::fuse::privileged() => OverlayXattrs::Trusted,
            StoreXattrsArg::Auto | StoreXattrsArg::User => OverlayXattrs::User,
            StoreXattrsArg::Trusted => OverlayXattrs::Trusted,
        };
        let remote = erofs_fuse::store::toc_remote::Remote {
            client: super::pull::client_options(&self.registry)?,
            fetch_from: fetch_from(&self.fetch_from, &self.registry)?,
            max_lazy_layers: self.max_lazy_layers,
            platform: self
                .registry
                .platform
                .as_deref()
                .map(erofs_fuse::registry::manifest::Platform::parse)
                .transpose()?,
        };
        store_serve(
            &self.store,
            &self.mountpoint,
            (self.cache_size, remote),
            overlay_xattrs,
            &self.serve,
        )
    }
}

/// `--fetch-from`'s registries, checked: names as references give them,
/// `--creds` with one at most, `--insecure` not with the default registry
/// (as `pull`: plain http only for a registry named or on loopback).
fn fetch_from(names: &[String], registry: &super::args::RegistryArgs) -> Result<Vec<String>> {
    use erofs_fuse::registry::reference::DEFAULT_REGISTRY;
    let names = names
        .iter()
        .map(|n| erofs_fuse::store::toc_remote::registry_name(n))
        .collect::<erofs_fuse::error::Result<Vec<_>>>()?;
    if registry.creds.is_some() && names.len() > 1 {
        return Err(CliError::msg(
            "--creds goes to one registry: give at most one --fetch-from with it",
        ));
    }
    if registry.insecure && names.iter().any(|n| n == DEFAULT_REGISTRY) {
        return Err(CliError::msg(format!(
            "--insecure (plain http) is not for the default registry {DEFAULT_REGISTRY}"
        )));
    }
    Ok(names)
}

/// `store serve`.
fn store_serve(
    store: &Path,
    mountpoint: &Path,
    (cache_size, remote): (u64, erofs_fuse::store::toc_remote::Remote),
    overlay_xattrs: OverlayXattrs,
    args: &ServeArgs,
) -> Result {
    let options = MountOptions::parse(&args.options)?;
    if options.verity.is_some() || !options.devices.is_empty() || !options.device_verity.is_empty()
    {
        return Err(CliError::msg(
            "store serve: device and verity options apply to single images",
        ));
    }
    let open = OpenOptions {
        cache_size: options.cache_size.unwrap_or(cache_size),
        ..OpenOptions::default()
    };
    let view = erofs_fuse::store::StoreView::new(store.to_path_buf(), open, overlay_xattrs)?
        .with_remote(remote);
    // Its layers may be fetched lazily: filling ahead would fetch them.
    serve(
        std::sync::Arc::new(view),
        store,
        mountpoint,
        options,
        args,
        false,
    )
    .with_context(|| format!("store {}", store.display()))
}

/// Splits a `--layer IMAGE[:DEVICE...]` value. Paths may hold colons (a
/// layer store names layers `sha256:...`): the image is the shortest prefix
/// ending at a colon (or the whole value) that names an existing file.
fn split_layer(value: &str) -> (PathBuf, Vec<PathBuf>) {
    let ends = value
        .match_indices(':')
        .map(|(i, _)| i)
        .chain([value.len()]);
    for end in ends {
        let image = &value[..end];
        if Path::new(image).is_file() {
            let rest = value[end..].strip_prefix(':').unwrap_or_default();
            let devices = rest
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect();
            return (PathBuf::from(image), devices);
        }
    }
    // Nothing exists: let opening report the missing file.
    let mut parts = value.split(':');
    let image = PathBuf::from(parts.next().unwrap_or_default());
    (image, parts.map(PathBuf::from).collect())
}

/// Opens the layers of `mount --layer` (IMAGE[:DEVICE...] each, bottom
/// first) as one stack, with `open`'s cache size.
pub(super) fn open_stack(layers: &[String], open: &OpenArgs) -> Result<erofs_fuse::overlay::Stack> {
    if open.verity.is_some()
        || open.dmverity.is_some()
        || !open.devices.is_empty()
        || !open.device_verity.is_empty()
        || open.offset != 0
    {
        return Err(CliError::msg(
            "with --layer, give each layer's devices after colons; --device, --offset and verity apply to single images",
        ));
    }
    let mut images = Vec::with_capacity(layers.len());
    for layer in layers {
        let (image, devices) = split_layer(layer);
        let mut this = open.clone();
        this.devices = devices;
        images.push(std::sync::Arc::new(open_with(&image, &this)?));
    }
    Ok(erofs_fuse::overlay::Stack::new(images)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_values_split_where_an_image_file_ends() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("sha256:ab").join("layer.erofs");
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        std::fs::write(&image, b"").unwrap();
        let whole = image.display().to_string();
        assert_eq!(split_layer(&whole), (image.clone(), vec![]));
        assert_eq!(
            split_layer(&format!("{whole}:/x/l.tar:/y/b.img")),
            (
                image,
                vec![PathBuf::from("/x/l.tar"), PathBuf::from("/y/b.img")]
            )
        );
        // Nothing exists: plain colon splitting, for the error to name.
        assert_eq!(
            split_layer("/nope/a.erofs:/nope/a.tar"),
            (
                PathBuf::from("/nope/a.erofs"),
                vec![PathBuf::from("/nope/a.tar")]
            )
        );
    }
}
