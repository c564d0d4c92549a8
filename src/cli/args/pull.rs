//! Arguments of the commands on images by reference: `pull`, `attach`,
//! `images`, `config`, `rmi`, and what `mount REF` shares with them.

use std::path::PathBuf;

use clap::Args;

/// Where images come from and where they are kept.
#[derive(Args, Clone, Default)]
pub struct ImageSourceArgs {
    /// The content store, shared with `store add` (default: /var/lib/erofs-fuse
    /// for root, $XDG_DATA_HOME/erofs-fuse or ~/.local/share/erofs-fuse for
    /// other users).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// How to reach registries.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How to reach registries (and which platform to take from an index).
#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// The platform to take from a multi-platform image (default: the
    /// host's, linux/ARCH).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// From an index that has both for the platform (nydusify
    /// --merge-platform), take the Nydus image rather than the ordinary one.
    #[arg(long)]
    pub prefer_nydus: bool,
    /// Allow plain http to the registry (only for one the reference names
    /// explicitly, or on loopback).
    #[arg(long)]
    pub insecure: bool,
    /// A CA certificate (PEM) to trust besides the system's (repeatable).
    #[arg(long = "ca-cert", value_name = "PATH")]
    pub ca_certs: Vec<PathBuf>,
    /// Registry credentials, tried before the auth files (never printed).
    #[arg(long, value_name = "USER:PASS", hide_default_value = true)]
    pub creds: Option<String>,
    /// The auth file to read instead of the default ones
    /// (REGISTRY_AUTH_FILE, containers' auth.json, ~/.docker/config.json).
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
}

/// `pull` arguments.
#[derive(Args)]
pub struct PullArgs {
    /// The image: a registry reference (`debian:13`,
    /// `127.0.0.1:5000/app@sha256:...`) or an OCI layout `oci:DIR[:TAG]`.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where from, and the store.
    #[command(flatten)]
    pub source: ImageSourceArgs,
    /// Layers fetched and converted at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// No progress bars (they are shown only on a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `images` arguments.
#[derive(Args)]
pub struct ImagesArgs {
    /// The content store (default as for `pull`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// `config` arguments.
#[derive(Args)]
pub struct ConfigArgs {
    /// The image (pulled first if the store lacks it).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where from, and the store.
    #[command(flatten)]
    pub source: ImageSourceArgs,
}

/// `rmi` arguments.
#[derive(Args)]
pub struct RmiArgs {
    /// The images whose records to remove.
    #[arg(value_name = "REF", required = true)]
    pub references: Vec<String>,
    /// The content store (default as for `pull`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// `attach` arguments.
#[derive(Args)]
pub struct AttachArgs {
    /// The image in a registry (`127.0.0.1:5000/app:1`, `quay.io/org/app@sha256:...`).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where from, and the store whose blobs are reused.
    #[command(flatten)]
    pub source: ImageSourceArgs,
    /// Compute and push even for layers that already have an artifact.
    #[arg(long)]
    pub force: bool,
    /// No progress bars (they are shown only on a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}
