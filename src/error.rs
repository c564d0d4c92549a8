//! The library's error type and its mapping to errno values.

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating system call on a named file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The image contradicts the format or itself.
    #[error("corrupted image: {0}")]
    Corrupt(String),
    /// The image uses something this version cannot read.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A path or name does not exist.
    #[error("no such file or directory")]
    NotFound,
    /// A directory operation on something that is not a directory.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// readlink on something that is not a symlink.
    #[error("not a symbolic link")]
    NotSymlink,
    /// A block failed verity verification, or a verity tree is unusable.
    #[error("verity: {0}")]
    Verity(#[from] VerityError),
    /// A change to a read-only filesystem was asked for.
    #[error("read-only file system")]
    ReadOnly,
    /// The caller asked for something invalid (bad argument, bad option).
    #[error("{0}")]
    Invalid(String),
    /// A registry could not be reached or refused or failed a request; the
    /// message names the registry, reference or digest.
    #[error("{0}")]
    Registry(String),
}

impl Error {
    /// A [`Error::Corrupt`] built from anything printable.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The errno a filesystem call should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc_errno::EIO),
            Self::Corrupt(_) | Self::Verity(_) => libc_errno::EIO,
            Self::Unsupported(_) => libc_errno::EOPNOTSUPP,
            Self::NotFound => libc_errno::ENOENT,
            Self::NotDir => libc_errno::ENOTDIR,
            Self::IsDir => libc_errno::EISDIR,
            Self::NotSymlink => libc_errno::EINVAL,
            Self::Invalid(_) => libc_errno::EINVAL,
            Self::ReadOnly => libc_errno::EROFS,
            Self::Registry(_) => libc_errno::EIO,
        }
    }
}

/// An error building or checking a tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Bad parameters or a malformed superblock.
    #[error("{0}")]
    Invalid(String),
    /// A block does not match its hash.
    #[error("{what} block {block} does not match its hash")]
    Mismatch {
        /// "data" or "hash".
        what: &'static str,
        /// The block number (data blocks from 0; hash blocks from the hash offset).
        block: u64,
    },
    /// A block read through a mount does not match its hash.
    #[error("{}: {what} block {block} does not match its hash", file.display())]
    BadBlock {
        /// The data or hash file holding the block.
        file: std::path::PathBuf,
        /// "data" or "hash".
        what: &'static str,
        /// The block number (hash blocks from the superblock's block).
        block: u64,
    },
    /// The tree's top does not match the root hash given.
    #[error("the root hash does not match (tree gives {0})")]
    RootMismatch(String),
}

/// The few errno values the library reports (Linux numbering).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EROFS: i32 = 30;
    pub const EOPNOTSUPP: i32 = 95;
}

/// Returns `Err(Error::Corrupt(...))` from the enclosing function when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !($cond) {
            return Err($crate::error::Error::Corrupt(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;
