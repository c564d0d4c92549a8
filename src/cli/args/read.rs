//! Arguments of the commands that read an image: `inspect`, `ls`, `cat`,
//! `stat`, `manifest`, `fsck` and `extract`.

use std::path::PathBuf;

use clap::Args;

use super::ImageArgs;

/// `inspect` arguments.
#[derive(Args)]
pub struct InspectArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `ls` arguments.
#[derive(Args)]
pub struct LsArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Directory (or file) inside the image.
    #[arg(default_value = "/")]
    pub path: String,
    /// Long listing: mode, links, owner, group, size, mtime, name.
    #[arg(short, long)]
    pub long: bool,
    /// Recurse: list every entry below PATH by its full path.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// `cat` arguments.
#[derive(Args)]
pub struct CatArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// File inside the image.
    pub path: String,
}

/// `stat` arguments.
#[derive(Args)]
pub struct StatArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Path inside the image.
    pub path: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `manifest` arguments.
#[derive(Args)]
pub struct ManifestArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
}

/// `fsck` arguments.
#[derive(Args)]
pub struct FsckArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
}

/// `extract` arguments.
#[derive(Args)]
pub struct ExtractArgs {
    /// The image and how to open it.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Destination: must not exist, or be an empty directory (not a
    /// symlink to one). Entries are created private and opened up once
    /// complete; nothing there is ever followed or replaced.
    pub dest: PathBuf,
    /// Do not set owners even when running as root.
    #[arg(long)]
    pub no_owner: bool,
    /// Do not copy extended attributes.
    #[arg(long)]
    pub no_xattrs: bool,
}
