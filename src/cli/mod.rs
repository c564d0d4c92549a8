//! The command line: arguments (`args`), each subcommand's `run` (`read`,
//! `convert`, `verity`, `serve`), and what they share: logging, opening an
//! image, writing to standard output.

use std::io::Write;
use std::path::Path;

use erofs_fuse::verity::VeritySource;
use erofs_fuse::{Image, Inode, OpenOptions};

pub mod args;
mod attach;
mod convert;
mod daemon;
mod diff;
pub mod error;
mod gz;
mod lazy;
mod nydus;
mod nydus_ref;
mod pull;
mod read;
mod serve;
mod verity;

use args::{Cli, Command, ImageArgs, OpenArgs, StoreCommand, VerityCommand};
use error::{Context, Result};

/// Runs the parsed command line: sets up logging, then the subcommand.
pub fn run(cli: Cli) -> Result {
    let serving = match &cli.command {
        Command::Mount(args::MountArgs { serve, .. }) => Some(serve),
        Command::Store {
            command: StoreCommand::Serve(args),
        } => Some(&args.serve),
        _ => None,
    };
    let debug = serving.is_some_and(|s| {
        s.debug
            || s.options
                .iter()
                .flat_map(|o| o.split(','))
                .any(|o| o == "debug")
    });
    let verbose = if debug {
        cli.verbose.max(2)
    } else {
        cli.verbose
    };
    init_logging(verbose, serving.and_then(|s| s.log_file.as_deref()))?;
    cli.command.run()
}

impl Command {
    /// Runs this subcommand.
    pub fn run(self) -> Result {
        match self {
            Command::Mount(args) => args.run(),
            Command::Store { command } => match command {
                StoreCommand::Add(args) => args.run(),
                StoreCommand::Serve(args) => args.run(),
                StoreCommand::Gc(args) => args.run(),
            },
            Command::Pull(args) => args.run(),
            Command::Attach(args) => args.run(),
            Command::Images(args) => args.run(),
            Command::Config(args) => args.run(),
            Command::Rmi(args) => args.run(),
            Command::Inspect(args) => args.run(),
            Command::Ls(args) => args.run(),
            Command::Cat(args) => args.run(),
            Command::Stat(args) => args.run(),
            Command::Manifest(args) => args.run(),
            Command::Fsck(args) => args.run(),
            Command::Extract(args) => args.run(),
            Command::Convert(args) => args.run(),
            Command::Diff(args) => args.run(),
            Command::Verity { command } => match command {
                VerityCommand::Format(args) => args.run(),
                VerityCommand::Verify(args) => args.run(),
            },
        }
    }
}

/// Sets up `tracing` output on stderr (or appended to `file`): warnings by
/// default, more with -v, or whatever `RUST_LOG` says.
pub fn init_logging(verbose: u8, file: Option<&Path>) -> Result {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // fuser's own warnings (e.g. its unmount attempt after an external
    // fusermount -u) are noise unless asked for.
    let default = if verbose < 2 {
        format!("{default},fuser=error")
    } else {
        default.to_string()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .context(path.display())?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Opens the image `args` name.
fn open(args: &ImageArgs) -> Result<Image> {
    open_with(&args.image, &args.open)
}

/// Opens the image at `path` as `args` say.
fn open_with(path: &Path, args: &OpenArgs) -> Result<Image> {
    let host = erofs_fuse::registry::manifest::Platform::host();
    if let Some((image, _)) = nydus::open_nydus(path, args, &host)? {
        return Ok(image);
    }
    if !args.zinfos.is_empty() {
        return gz::open_with_zinfo(path, args);
    }
    let options = OpenOptions {
        devices: args.devices.clone(),
        offset: args.offset,
        cache_size: args.cache_size,
        verity: args
            .verity
            .clone()
            .or_else(|| args.dmverity.clone().map(VeritySource::Sidecar)),
        device_verity: args.device_verity.clone(),
        verity_once: args.verity_once,
    };
    match Image::open(path, &options) {
        Ok(image) => Ok(image),
        // These already name the file they concern.
        Err(e @ erofs_fuse::Error::Io { .. }) => Err(e.into()),
        Err(e) => Err(e).context(path.display()),
    }
}

/// The inode at `path` in `image` (opened from `args`).
fn resolve(image: &Image, args: &ImageArgs, path: &str) -> Result<Inode> {
    image
        .resolve(path.as_bytes())
        .with_context(|| format!("{}: {path}", args.image.display()))
}

/// Writes `bytes` to standard output; a closed pipe ends the command.
fn write_out(bytes: &[u8]) -> Result {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes) {
        Ok(()) => Ok(()),
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e).context("writing to standard output"),
    }
}
