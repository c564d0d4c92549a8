//! `store` arguments: adding layers to a store and serving it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ServeArgs;

/// `store` subcommands.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Add layer blobs (tar, tar.gz or tar.zst, as a registry serves them) to the
    /// store directory STORE: each becomes STORE/<digest>/ with a
    /// tar-index EROFS image of the layer (OCI whiteouts turned into
    /// overlayfs ones) in layer.erofs, its info for containers/storage, and
    /// the blob. zstd:chunked and eStargz layers (with --toc-digest, or
    /// from an OCI layout's layer annotations) are checked against their
    /// TOC first and can be looked up by TOC digest, as podman 5 does.
    /// Prints a line per layer: its digest, "diffid", its diffID, "toc"
    /// and its TOC digest if it has one, and the blob's path.
    Add(StoreAddArgs),
    /// Mount the layers of STORE at MOUNTPOINT in the layout of
    /// containers/storage's additional layer stores:
    /// MOUNTPOINT/<base64 image reference>/<layer digest>/{diff/,info,blob}.
    /// Configure it in storage.conf as
    /// additionallayerstores = ["MOUNTPOINT:ref"]. Every layer of STORE is
    /// served under every reference; layers added while mounted are found.
    /// A zstd:chunked or eStargz layer looked up by a TOC digest the store
    /// lacks (podman 5) is fetched lazily from the registry the reference
    /// names, if it is one of --fetch-from: only its TOC, checked against
    /// the digest, then each file's frames on first read, checked against
    /// the TOC.
    Serve(Box<StoreServeArgs>),
    /// Remove what no image in the content store needs: layers pulled for
    /// images whose records are gone (`rmi`), blobs, and what interrupted
    /// pulls left. Layers added with `store add` belong to no image and
    /// are kept, unless --all. Waits for running pulls and adds.
    Gc(StoreGcArgs),
}

/// `store gc` arguments.
#[derive(Args)]
pub struct StoreGcArgs {
    /// The content store (default as for `pull`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Remove `store add`'s layers too when no image references them.
    #[arg(long)]
    pub all: bool,
}

/// `store serve --overlay-xattrs`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StoreXattrsArg {
    /// trusted for real root, user otherwise.
    Auto,
    /// As stored.
    Trusted,
    /// trusted.overlay.* shown as user.overlay.*.
    User,
}

/// `store add` arguments.
#[derive(Args)]
pub struct StoreAddArgs {
    /// The store directory (created if missing).
    pub store: PathBuf,
    /// Layer blobs, or OCI image layouts (directories, as `skopeo copy
    /// docker://REF oci:DIR` writes them), whose layers are added bottom
    /// first.
    #[arg(required = true, value_name = "BLOB|OCI_DIR")]
    pub blobs: Vec<PathBuf>,
    /// The TOC digest of a zstd:chunked or eStargz blob (the layer
    /// annotation io.github.containers.zstd-chunked.manifest-checksum or
    /// containerd.io/snapshot/stargz/toc.digest): the TOC must match it.
    #[arg(long, value_name = "sha256:HEX")]
    pub toc_digest: Option<String>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `store serve` arguments.
#[derive(Args)]
pub struct StoreServeArgs {
    /// The store directory.
    pub store: PathBuf,
    /// Existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Memory for decoded compressed data (see mount --cache-size).
    #[arg(long, value_name = "SIZE", default_value = "64M",
          value_parser = erofs_fuse::fuse::options::parse_size)]
    pub cache_size: u64,
    /// Namespace of the layers' overlayfs xattrs: "auto" is "trusted"
    /// for root in the initial user namespace (rootful overlayfs) and
    /// "user" otherwise (rootless overlayfs reads user.overlay.*).
    #[arg(long, value_enum, default_value = "auto", value_name = "NAMESPACE")]
    pub overlay_xattrs: StoreXattrsArg,
    /// Fetch lazy TOC layers from registry REGISTRY, as references name
    /// it (HOST[:PORT]: docker.io, quay.io, localhost:5000); repeatable.
    /// A lookup under any other registry is not found (podman pulls the
    /// layer itself); without any, nothing is fetched and lazy layers
    /// already in the store serve what their caches hold. --creds goes to
    /// the one registry named here (refused with more than one);
    /// --insecure only to these (and never to docker.io).
    #[arg(long, value_name = "REGISTRY")]
    pub fetch_from: Vec<String>,
    /// Most lazy TOC layers this server fetches; past it, lookups of new
    /// ones are not found (logged).
    #[arg(long, value_name = "N", default_value_t = erofs_fuse::store::toc_remote::DEFAULT_MAX_LAZY_LAYERS)]
    pub max_lazy_layers: usize,
    /// Registry options for lazy TOC layers (as `pull`'s; --store unused).
    #[command(flatten)]
    pub registry: super::RegistryArgs,
    /// How to serve the mount.
    #[command(flatten)]
    pub serve: ServeArgs,
}
