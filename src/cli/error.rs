//! A command's failure: the library's error (or the system's) with what the
//! command was doing when it happened, printed as one line.

use std::fmt::Display;

/// A command's failure. It prints as one line, `context: cause`, without
/// repeating the causes' sources (the library's messages include them).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The library failed.
    #[error("{0}")]
    Lib(#[from] erofs_fuse::Error),
    /// Building or checking a verity tree failed.
    #[error("{0}")]
    Verity(#[from] erofs_fuse::verity::VerityError),
    /// Converting a layer failed.
    #[error("{0}")]
    Convert(#[from] erofs_fuse::convert::ConvertError),
    /// A system call made by the command itself failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// JSON output could not be made.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A failure the command found and phrased itself: arguments that do
    /// not fit together, a value it rejects, fsck's count of problems.
    #[error("{0}")]
    Message(String),
    /// `cause`, while doing what `context` says (a path, an action).
    #[error("{context}: {cause}")]
    Context {
        /// What was being done, or on what.
        context: String,
        /// Why it failed.
        cause: Box<CliError>,
    },
}

impl CliError {
    /// An error with its message alone.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Message(message.into())
    }
}

/// A command's result.
pub type Result<T = ()> = std::result::Result<T, CliError>;

/// Adds context to an error, anyhow-style: `result.context(path.display())`.
pub trait Context<T> {
    /// Prefixes the error with `context` and a colon.
    fn context(self, context: impl Display) -> Result<T>;
    /// Like [`Context::context`], computing the context only on error.
    fn with_context<D: Display>(self, context: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<CliError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.with_context(|| context)
    }

    fn with_context<D: Display>(self, context: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| CliError::Context {
            context: context().to_string(),
            cause: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_context_then_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let lib = erofs_fuse::Error::io("/x/img", io);
        let err = Err::<(), _>(lib).context("mount /x/img").unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount /x/img: /x/img: No such file or directory (os error 2)"
        );
    }
}
