//! `diff`: the changes an overlayfs upper directory makes over a stack of
//! lower layers, written as an OCI layer (tar, tar+gzip or tar+zstd), as
//! containerd's differs do with `Compare`. The lower layers are read
//! through [`Stack`] (no mount, no root); the upper directory through
//! `upper.rs`, which never follows its symlinks.
//!
//! The output is deterministic: members in byte order of their paths
//! (depth first), no user names, no atime/ctime, compressors with fixed
//! headers and levels; so the same upper directory and layers give the
//! same bytes.

mod tarw;
use crate::safe_fs::tree as upper;
mod walk;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::convert::Digest;
use crate::overlay::Stack;
use crate::safe_fs::OutputDir;
pub use crate::view::OverlayXattrs;
use tarw::TarWriter;
use upper::TreeDir;
use walk::Walker;

/// How the layer is compressed (convert's type: what it reads, diff
/// writes): gzip at level 6, zstd at level 3 (containerd's defaults).
pub use crate::convert::Compression;

/// Options of [`diff`].
#[derive(Clone, Default)]
pub struct DiffOptions {
    /// The output's compression.
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH: later mtimes are written as it.
    pub source_date_epoch: Option<i64>,
    /// The namespace overlayfs wrote its markers (opaque, redirect,
    /// metacopy) in: trusted for rootful overlayfs, user for rootless
    /// (`userxattr`). Only that namespace is read; trusted needs a
    /// process that can read trusted.* (else [`DiffError::Namespace`]).
    pub overlay_xattrs: OverlayXattrs,
    /// Runs after the first chunk of each file is read (tests change the
    /// file there to check that the change is caught).
    #[doc(hidden)]
    pub read_hook: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// What [`diff`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct DiffReport {
    /// sha256 of the layer as written (compressed).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (the diffID).
    pub diff_id: Digest,
    /// Size of the layer as written.
    pub size: u64,
}

/// A failed diff.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// trusted.overlay.* markers asked for, but this process cannot see
    /// trusted.* xattrs (the kernel hides them without CAP_SYS_ADMIN).
    #[error("{upper}: reading trusted.overlay.* markers needs root in the initial user namespace; an upper made by rootless overlayfs (userxattr) takes --overlay-xattrs user")]
    Namespace {
        /// The upper directory.
        upper: String,
    },
    /// An entry of the upper directory could not be read, changed while
    /// being read, or is beyond a bound.
    #[error("{path}: {message}")]
    Upper {
        /// The entry.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// An upper entry uses an overlayfs feature a layer cannot express.
    #[error("{path}: uses overlayfs {feature} (an xattr a layer cannot express); make the upper directory with {feature}=off")]
    Refused {
        /// The entry.
        path: String,
        /// `redirect_dir` or `metacopy`.
        feature: &'static str,
    },
    /// Reading the lower layers.
    #[error("lower layers: {0}")]
    Lower(#[from] crate::Error),
    /// Writing the output.
    #[error("writing the layer: {0}")]
    Output(io::Error),
    /// Creating, syncing or renaming the output file.
    #[error("{path}: {message}")]
    OutputFile {
        /// The output file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Hashes and counts what is written through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressor between the tar and the output.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::Plain(out),
            // No name, mtime 0, OS 255: as Go's gzip writer (containerd).
            Compression::Gzip => Self::Gzip(
                flate2::GzBuilder::new()
                    .operating_system(255)
                    .write(out, flate2::Compression::new(6)),
            ),
            Compression::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Self::Plain(w) => Ok(w),
            Self::Gzip(w) => w.finish(),
            Self::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            Self::Gzip(w) => w.write(buf),
            Self::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Gzip(w) => w.flush(),
            Self::Zstd(w) => w.flush(),
        }
    }
}

/// Whether this process sees trusted.* xattrs: root in the initial user
/// namespace (as `fuse::privileged`, which this layer cannot use; the
/// kernel's test is CAP_SYS_ADMIN there).
pub fn trusted_readable() -> bool {
    let init_ns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    nix::unistd::Uid::effective().is_root() && init_ns
}

/// Writes the changes of `upper` over `lower` as a layer to `out`.
pub fn diff_to(
    lower: &Stack,
    upper: &Path,
    out: impl Write,
    options: &DiffOptions,
) -> Result<DiffReport, DiffError> {
    let fail = |e: io::Error| DiffError::Upper {
        path: upper.display().to_string(),
        message: e.to_string(),
    };
    if options.overlay_xattrs == OverlayXattrs::Trusted && !trusted_readable() {
        return Err(DiffError::Namespace {
            upper: upper.display().to_string(),
        });
    }
    let root = TreeDir::open(upper).map_err(fail)?;
    let st = root.stat_self().map_err(fail)?;
    let blob = Hashing {
        inner: io::BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        count: 0,
    };
    let encoder = Encoder::new(blob, options.compression).map_err(DiffError::Output)?;
    let tar = Hashing {
        inner: encoder,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut walker = Walker {
        lower,
        tar: TarWriter::new(tar),
        options,
        upper,
        links: HashMap::new(),
        root: st,
        pending: Vec::new(),
    };
    walker.root(&root, &st)?;
    walker.check_links(nix::unistd::Uid::effective().is_root())?;
    let tar = walker.tar.finish().map_err(DiffError::Output)?;
    let diff_id = Digest::from_bytes(tar.hasher.finalize().into());
    let mut blob = tar.inner.finish().map_err(DiffError::Output)?;
    blob.flush().map_err(DiffError::Output)?;
    Ok(DiffReport {
        digest: Digest::from_bytes(blob.hasher.finalize().into()),
        diff_id,
        size: blob.count,
    })
}

/// [`diff_to`] into the file `output` (`-`: standard output). A file
/// appears only when complete (written unnamed, renamed into place), so a
/// failed run leaves what was there.
pub fn diff(
    lower: &Stack,
    upper: &Path,
    output: &Path,
    options: &DiffOptions,
) -> Result<DiffReport, DiffError> {
    if output == Path::new("-") {
        return diff_to(lower, upper, io::stdout().lock(), options);
    }
    let fail = |e: io::Error| DiffError::OutputFile {
        path: output.display().to_string(),
        message: e.to_string(),
    };
    let (dir, name) = OutputDir::of(output).map_err(fail)?;
    let temp = dir.temp_file().map_err(fail)?;
    let report = diff_to(lower, upper, temp.file(), options)?;
    temp.file().sync_all().map_err(fail)?;
    temp.persist(&name, 0o644 & !crate::safe_fs::umask())
        .map_err(fail)?;
    Ok(report)
}
