//! OCI layer tar (or tar.gz) to EROFS, as containerd's EROFS differ does
//! with `mkfs.erofs --tar`: a tar-index image (metadata only, file data left
//! in the tar, 512-byte blocks), optionally with the tar appended, or a
//! full image with the data copied in.
//!
//! The input is read once, as a stream: its sha256 (the layer digest) and
//! the uncompressed tar's (the diffID) are computed on the way, gzip is
//! detected by its magic, and memory grows with the number of entries, not
//! with the data.

mod input;
mod pax;
mod stream;
mod tar;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::build::{BuildError, BuildOptions, DataSource, ImageBuilder};
pub use input::Digest;
use input::{open_input, Tee};
pub use tar::TarOptions;
use tar::{read_tar, DataSink};

/// Which kind of image to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Metadata only; file data stays in the tar (device 1).
    #[default]
    Index,
    /// File data copied into the image (4 KiB blocks).
    Full,
}

/// How to convert.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Index or full image.
    pub mode: Mode,
    /// Overlayfs whiteouts and opaque directories from OCI ones.
    pub aufs: bool,
    /// Index mode: append the tar to the image (containerd's `layer.erofs`).
    pub append_tar: bool,
    /// Index mode: where to write the uncompressed tar when the input is
    /// gzip or stdin. Default: the output path with its extension replaced
    /// by `.tar`.
    pub tar_out: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Modification time of the root and of implied directories (default:
    /// the newest in the tar).
    pub implied_mtime: Option<i64>,
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// sha256 of the input as read (the layer digest; for a tar.gz, of the
    /// compressed bytes).
    pub input_digest: Digest,
    /// sha256 of the uncompressed tar (the OCI diffID).
    pub tar_digest: Digest,
    /// Whether the input was gzip.
    pub gzip: bool,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Where the tar the image refers to is (index mode without
    /// `append_tar`): the input itself or the file written beside it.
    pub tar_path: Option<PathBuf>,
    /// Size of the EROFS part of the output.
    pub image_size: u64,
    /// Number of inodes.
    pub inodes: u64,
}

/// A failed conversion.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The tar is malformed or holds something that cannot be converted.
    #[error("tar entry {}at byte {at}: {message}", entry.as_ref().map(|e| format!("'{e}' ")).unwrap_or_default())]
    Tar {
        /// Byte offset of the entry's header.
        at: u64,
        /// The entry's path, when known.
        entry: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The tree cannot be written as EROFS.
    #[error("{0}")]
    Build(#[from] BuildError),
}

impl ConvertError {
    fn tar(at: u64, entry: Option<String>, message: String) -> Self {
        Self::Tar { at, entry, message }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Converts `input` (a path, or `-` for stdin) to an EROFS image at `output`.
///
/// The output appears only when complete: it is written under a temporary
/// name beside it and renamed at the end.
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    if same_file(input, output) {
        return Err(ConvertError::io(
            output,
            io::Error::new(io::ErrorKind::InvalidInput, "the output is the input"),
        ));
    }
    let temp = temp_path(output, "tmp");
    // Files this run creates, removed again if it fails.
    let mut created = vec![temp.clone()];
    let result = convert_into(input, output, &temp, options, &mut created);
    if result.is_err() {
        for path in created {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn convert_into(
    input: &Path,
    output: &Path,
    temp: &Path,
    options: &ConvertOptions,
    created: &mut Vec<PathBuf>,
) -> Result<ConvertReport, ConvertError> {
    let mut source = open_input(input, options.progress).map_err(|e| ConvertError::io(input, e))?;
    let gzip = source.gzip;
    let out = File::create(temp).map_err(|e| ConvertError::io(temp, e))?;
    let block_bits = match options.mode {
        Mode::Index => 9,
        Mode::Full => 12,
    };
    // Index mode needs the raw tar as a file: the input itself when it is
    // one, else a copy written while reading.
    let input_is_tar_file = !gzip && input != Path::new("-");
    let tar_copy: Option<PathBuf> = match options.mode {
        Mode::Index if options.append_tar && !input_is_tar_file => Some(
            options
                .tar_out
                .clone()
                .unwrap_or_else(|| temp_path(output, "tar.tmp")),
        ),
        Mode::Index if !input_is_tar_file => Some(
            options
                .tar_out
                .clone()
                .unwrap_or_else(|| output.with_extension("tar")),
        ),
        _ => None,
    };
    let tee = match &tar_copy {
        Some(path) => {
            if same_file(path, input) || same_file(path, output) {
                return Err(ConvertError::io(
                    path,
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the tar would overwrite the input or the output (use --tar-out)",
                    ),
                ));
            }
            let file = File::create(path).map_err(|e| ConvertError::io(path, e))?;
            created.push(path.clone());
            Some(file)
        }
        None => None,
    };
    let mut stream = Tee::new(&mut source.reader, tee);
    let mut builder = ImageBuilder::new(out, block_bits).map_err(|e| ConvertError::io(temp, e))?;
    let tar_options = TarOptions {
        aufs: options.aufs,
        implied_mtime: options.implied_mtime,
    };
    let tree = match options.mode {
        Mode::Index => read_tar(&mut stream, tar_options, DataSink::Index)?,
        Mode::Full => read_tar(&mut stream, tar_options, DataSink::Full(&mut builder))?,
    };
    // Whatever follows the end-of-archive blocks is part of the layer too.
    io::copy(&mut stream, &mut io::sink()).map_err(|e| ConvertError::io(input, e))?;
    let tar_size = stream.written();
    stream
        .finish()
        .map_err(|e| ConvertError::io(tar_copy.as_deref().unwrap_or(input), e))?;
    let (input_digest, tar_digest) = source.digests();
    source.done();

    let data_source = match options.mode {
        Mode::Index => DataSource::Tar { size: tar_size },
        Mode::Full => DataSource::Image,
    };
    // Deterministic: the same tar gives the same UUID.
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&tar_digest.bytes()[..16]);
    let summary = builder.finish(
        &tree,
        &BuildOptions {
            source: data_source,
            uuid,
        },
    )?;

    let mut tar_path = None;
    if options.mode == Mode::Index {
        let tar_file = tar_copy.clone().unwrap_or_else(|| input.to_path_buf());
        if options.append_tar {
            append(temp, summary.image_size, &tar_file)?;
            if options.tar_out.is_none() && tar_copy.is_some() {
                let _ = std::fs::remove_file(&tar_file);
            }
        } else {
            tar_path = Some(tar_file);
        }
    }
    std::fs::rename(temp, output).map_err(|e| ConvertError::io(output, e))?;
    Ok(ConvertReport {
        input_digest,
        tar_digest,
        gzip,
        tar_size,
        tar_path,
        image_size: summary.image_size,
        inodes: summary.inodes,
    })
}

/// Appends the tar at `tar` to the image at `image` (which ends at
/// `image_size`, a block boundary), as containerd's single-file layer.
fn append(image: &Path, image_size: u64, tar: &Path) -> Result<(), ConvertError> {
    let mut src = File::open(tar).map_err(|e| ConvertError::io(tar, e))?;
    let mut dst = std::fs::OpenOptions::new()
        .append(true)
        .open(image)
        .map_err(|e| ConvertError::io(image, e))?;
    debug_assert_eq!(dst.metadata().map(|m| m.len()).ok(), Some(image_size));
    // io::copy between files uses copy_file_range: no pass through userspace.
    let copied = io::copy(&mut src, &mut dst).map_err(|e| ConvertError::io(image, e))?;
    // Whole 512-byte blocks, so the device's size is exact.
    let pad = copied.next_multiple_of(512) - copied;
    dst.write_all(&vec![0; pad as usize])
        .map_err(|e| ConvertError::io(image, e))?;
    dst.sync_all().map_err(|e| ConvertError::io(image, e))
}

/// `path` with `.suffix` added to its file name.
fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}
