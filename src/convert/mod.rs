//! OCI layer tar (or tar.gz, tar.zst) to EROFS, as containerd's EROFS differ does
//! with `mkfs.erofs --tar`: a tar-index image (metadata only, file data left
//! in the tar, 512-byte blocks), optionally with the tar appended, or a
//! full image with the data copied in.
//!
//! The input is read once, as a stream: its sha256 (the layer digest) and
//! the uncompressed tar's (the diffID) are computed on the way unless
//! skipped (then index mode reads a plain tar file header by header), gzip
//! and zstd are detected by their magic, and memory grows with the number
//! of entries, not with the data.

mod decode;
mod dir;
mod input;
mod output;
mod pax;
mod pax_records;
mod stream;
mod tar;
pub mod toc;
mod tree;

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::mkfs::compress::Codec;
use crate::mkfs::{BuildError, BuildOptions, DataSource, ImageBuilder};
use crate::safe_fs::{self, same_target, OutputDir};
pub use dir::convert_tree;
use input::{open_input, Digests, TarRead, Tee};
pub use input::{Compression, Digest};
use output::{with_tar_appended, TarCopy, ZinfoDest, APPEND_ALIGN};
pub use stream::MAX_EXTENSION_SIZE;
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
    /// gzip input: where to write its zinfo (the gzip checkpoint index,
    /// [`crate::gzran`]), built while the stream is read.
    pub gzinfo: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Modification time of the root and of implied directories (default:
    /// the newest in the tar).
    pub implied_mtime: Option<i64>,
    /// Do not hash the input: the report has no digests, and a plain tar
    /// file in index mode is read header by header (its data is not read).
    pub skip_digests: bool,
    /// The input's digest, when the caller has already checked the input
    /// against it (a pulled blob, verified as it streamed): reported as the
    /// input digest instead of hashing the input again.
    pub verified_input: Option<Digest>,
}

/// Compression of a full image's file data ([`convert_compressed`]).
#[derive(Debug, Clone, Default)]
pub struct CompressOptions {
    /// `ALGO[,level=N]`: lz4, lz4hc, lzma, deflate or zstd.
    pub spec: String,
    /// Extended options, each `OPT[,OPT...]` as mkfs.erofs's `-E`:
    /// `ztailpacking`, `dedupe`.
    pub extended: Vec<String>,
    /// Largest pcluster in bytes (default: the block size).
    pub pcluster_size: Option<u64>,
    /// Compression threads (default: the CPUs).
    pub workers: Option<usize>,
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// sha256 of the input as read (the layer digest; for a tar.gz, of the
    /// compressed bytes); `None` with `skip_digests`.
    pub input_digest: Option<Digest>,
    /// sha256 of the uncompressed tar (the OCI diffID); `None` with
    /// `skip_digests`.
    pub tar_digest: Option<Digest>,
    /// How the input was compressed.
    pub compression: Compression,
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

impl ConvertReport {
    /// The input's and the tar's digests as text (`sha256:...`), which a
    /// conversion without `skip_digests` always has.
    pub fn digests(&self) -> Option<(String, String)> {
        let (input, tar) = self.input_digest.zip(self.tar_digest)?;
        Some((input.to_string(), tar.to_string()))
    }
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
/// The output appears only when complete: it is written with no name in
/// its directory and renamed over `output` at the end, so a symlink
/// planted at `output` (or at the tar written beside it) is replaced,
/// never written through, and a failed run leaves every existing file as
/// it was.
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let (dir, name) = OutputDir::of(output).map_err(|e| ConvertError::io(output, e))?;
    convert_at(input, &dir, &name, options)
}

/// [`convert`] with file data compressed (`--mode full` only).
pub fn convert_compressed(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    compress: &CompressOptions,
) -> Result<ConvertReport, ConvertError> {
    let (dir, name) = OutputDir::of(output).map_err(|e| ConvertError::io(output, e))?;
    convert_inner(input, &dir, &name, options, Some(compress))
}

/// [`convert`] into the file `name` of the directory `dir`, already open.
pub(crate) fn convert_at(
    input: &Path,
    dir: &OutputDir,
    name: &OsStr,
    options: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    convert_inner(input, dir, name, options, None)
}

fn convert_inner(
    input: &Path,
    dir: &OutputDir,
    name: &OsStr,
    options: &ConvertOptions,
    compress: Option<&CompressOptions>,
) -> Result<ConvertReport, ConvertError> {
    let output = dir.path().join(name);
    let from_stdin = input == Path::new("-");
    if !from_stdin && same_target(input, &output) {
        return Err(invalid(&output, "the output is the input"));
    }
    let codec = compression_codec(options, compress, &output)?;
    let mut source = open_input(
        input,
        options.progress,
        options.gzinfo.is_some(),
        match (options.skip_digests, options.verified_input) {
            (true, _) => Digests::None,
            (false, Some(known)) => Digests::TarOnly(known),
            (false, None) => Digests::Both,
        },
    )
    .map_err(|e| ConvertError::io(input, e))?;
    let compression = source.compression;
    let image = dir.temp_file().map_err(|e| ConvertError::io(&output, e))?;
    let block_bits = match options.mode {
        Mode::Index => 9,
        Mode::Full => 12,
    };
    let mut copy = TarCopy::plan(input, compression != Compression::None, dir, name, options)?;
    let gzinfo = plan_gzinfo(options, input, &output, compression, &copy)?;
    let tee = match &copy.temp {
        Some(temp) => Some(
            temp.file()
                .try_clone()
                .map_err(|e| ConvertError::io(&output, e))?,
        ),
        None => None,
    };
    let mut stream = Tee::new(&mut source.reader, tee);
    let out = image
        .file()
        .try_clone()
        .map_err(|e| ConvertError::io(&output, e))?;
    let mut builder =
        ImageBuilder::new(out, block_bits).map_err(|e| ConvertError::io(&output, e))?;
    if let Some(codec) = codec {
        builder.set_compression(codec, workers(compress));
    }
    let tar_options = TarOptions {
        aufs: options.aufs,
        implied_mtime: options.implied_mtime,
    };
    let (tree, headers) = match options.mode {
        Mode::Index => read_tar(&mut stream, tar_options, DataSink::Index)?,
        Mode::Full => read_tar(&mut stream, tar_options, DataSink::Full(&mut builder))?,
    };
    // Whatever follows the end-of-archive blocks is part of the layer too.
    stream
        .skip(u64::MAX)
        .map_err(|e| ConvertError::io(input, e))?;
    let tar_size = stream.written();
    let tar_name = copy
        .keep
        .as_ref()
        .map_or(input, |t| t.path.as_path())
        .to_path_buf();
    // The temporary copy appended to the image is synced there, once.
    let durable = copy.keep.is_some();
    stream
        .finish(durable)
        .map_err(|e| ConvertError::io(&tar_name, e))?;
    let digests = source.digests();
    source.done();

    let appending = options.mode == Mode::Index && options.append_tar;
    let end_align = if appending { APPEND_ALIGN } else { 0 };
    let summary = finish_image(builder, &tree, options.mode, tar_size, &headers, end_align)?;

    let tar_path = (options.mode == Mode::Index && !options.append_tar).then(|| tar_name.clone());
    let image = if appending {
        let sizes = (summary.image_size, tar_size);
        with_tar_appended(&mut copy, image, sizes, (input, &tar_name, &output))?
    } else {
        image
    };
    if let (Some(dest), Some(index)) = (&gzinfo, &source.gzindex) {
        dest.write(&index.zinfo().to_bytes())?;
    }
    // Complete: the tar, the zinfo, then the image that refers to them.
    let mode = 0o666 & !safe_fs::umask();
    copy.persist(mode)?;
    if let Some(dest) = gzinfo {
        dest.persist(mode)?;
    }
    image
        .persist(name, mode)
        .map_err(|e| ConvertError::io(&output, e))?;
    Ok(ConvertReport {
        input_digest: digests.map(|d| d.0),
        tar_digest: digests.map(|d| d.1),
        compression,
        tar_size,
        tar_path,
        image_size: summary.image_size,
        inodes: summary.inodes,
    })
}

/// Where `--gzinfo` goes (gzip input only), checked against the other
/// outputs.
fn plan_gzinfo(
    options: &ConvertOptions,
    input: &Path,
    output: &Path,
    compression: Compression,
    copy: &TarCopy,
) -> Result<Option<ZinfoDest>, ConvertError> {
    let Some(path) = &options.gzinfo else {
        return Ok(None);
    };
    if compression != Compression::Gzip {
        return Err(invalid(input, "--gzinfo needs a gzip input"));
    }
    let zinfo = ZinfoDest::plan(path, input, output)?;
    if let Some(tar) = &copy.keep {
        if same_target(&zinfo.path, &tar.path) {
            return Err(invalid(&zinfo.path, "the zinfo would overwrite the tar"));
        }
    }
    Ok(Some(zinfo))
}

/// Compression threads: as asked, else one per CPU.
fn workers(compress: Option<&CompressOptions>) -> usize {
    compress
        .and_then(|c| c.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The codec `options` ask for, checked before any input is read.
fn compression_codec(
    options: &ConvertOptions,
    compress: Option<&CompressOptions>,
    output: &Path,
) -> Result<Option<Codec>, ConvertError> {
    let Some(compress) = compress else {
        return Ok(None);
    };
    if options.mode != Mode::Full {
        return Err(invalid(output, "--compress needs --mode full"));
    }
    if matches!(compress.workers, Some(n) if !(1..=1024).contains(&n)) {
        return Err(invalid(
            output,
            "--workers must be at least 1 and at most 1024",
        ));
    }
    Codec::parse(
        &compress.spec,
        &compress.extended,
        compress.pcluster_size,
        4096,
    )
    .map(Some)
    .map_err(|e| invalid(output, &e))
}

/// Writes the metadata of `tree` and finishes the image: its data in the
/// tar (index mode) or in itself, its UUID from the tar's digest
/// (deterministic: the same tar gives the same image).
fn finish_image(
    builder: ImageBuilder,
    tree: &crate::mkfs::Tree,
    mode: Mode,
    tar_size: u64,
    headers: &[u8; 32],
    end_align: u64,
) -> Result<crate::mkfs::BuildSummary, ConvertError> {
    let source = match mode {
        Mode::Index => DataSource::Tar { size: tar_size },
        Mode::Full => DataSource::Image,
    };
    // From the headers, so it is the same with and without digests.
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&headers[..16]);
    let options = BuildOptions {
        source,
        uuid,
        end_align,
    };
    Ok(builder.finish(tree, &options)?)
}

/// An [`io::ErrorKind::InvalidInput`] error about `path`.
fn invalid(path: &Path, message: &str) -> ConvertError {
    ConvertError::io(
        path,
        io::Error::new(io::ErrorKind::InvalidInput, message.to_string()),
    )
}
