//! The `erofs-fuse` command: parses arguments and calls the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Read EROFS images (and tar-indexed OCI layers) in userspace.
///
/// Every command opens the image read-only through mmap and checks every
/// offset it reads, so pointing it at an untrusted image is safe: a broken
/// image gives an error naming the problem, never wrong data.
#[derive(Parser)]
#[command(name = "erofs-fuse", version, max_term_width = 100)]
struct Cli {
    /// Log more (repeat for even more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that opens an image.
#[derive(Args, Clone)]
pub struct ImageArgs {
    /// The EROFS image file.
    image: PathBuf,
    /// File backing the next extra device, in device-table order (repeat
    /// for several). Without it, extra devices are read from the image file
    /// itself at the offsets its device table gives, as containerd's
    /// single-file tar-index layers (index followed by the tar) need.
    #[arg(long = "device", value_name = "PATH")]
    devices: Vec<PathBuf>,
    /// Byte offset of the image inside IMAGE (for an image embedded in a
    /// larger file).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    offset: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Show the superblock: block size, features, inode count, devices, uuid,
    /// build time, size.
    Inspect {
        #[command(flatten)]
        image: ImageArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List a directory of the image (like ls).
    Ls {
        #[command(flatten)]
        image: ImageArgs,
        /// Directory (or file) inside the image.
        #[arg(default_value = "/")]
        path: String,
        /// Long listing: mode, links, owner, group, size, mtime, name.
        #[arg(short, long)]
        long: bool,
        /// Recurse: list every entry below PATH by its full path.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Write a file of the image to standard output.
    Cat {
        #[command(flatten)]
        image: ImageArgs,
        /// File inside the image.
        path: String,
    },
    /// Show an entry's attributes, layout and extended attributes.
    Stat {
        #[command(flatten)]
        image: ImageArgs,
        /// Path inside the image.
        path: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print one JSON line per path of the tree (type, mode, owner, mtime,
    /// links, size and sha256 of files, symlink target, device numbers,
    /// xattrs), sorted by path: the same format as `scripts/manifest.py`
    /// prints for a mounted or extracted tree, to compare the two.
    Manifest {
        #[command(flatten)]
        image: ImageArgs,
    },
    /// Copy the whole tree out to a directory: contents, modes, owners (when
    /// run as root), times with nanoseconds, hard links, symlinks, device
    /// nodes, fifos and xattrs, like `fsck.erofs --extract`.
    Extract {
        #[command(flatten)]
        image: ImageArgs,
        /// Destination: must not exist, or be an empty directory.
        dest: PathBuf,
        /// Do not set owners even when running as root.
        #[arg(long)]
        no_owner: bool,
        /// Do not copy extended attributes.
        #[arg(long)]
        no_xattrs: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.verbose);
    let result = match cli.command {
        Command::Inspect { image, json } => cli::inspect(&image, json),
        Command::Ls {
            image,
            path,
            long,
            recursive,
        } => cli::ls(&image, &path, long, recursive),
        Command::Cat { image, path } => cli::cat(&image, &path),
        Command::Stat { image, path, json } => cli::stat(&image, &path, json),
        Command::Manifest { image } => cli::manifest(&image),
        Command::Extract {
            image,
            dest,
            no_owner,
            no_xattrs,
        } => cli::extract(&image, &dest, !no_owner, !no_xattrs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("erofs-fuse: {err}");
            ExitCode::FAILURE
        }
    }
}
