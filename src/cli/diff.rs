//! `diff`: an overlayfs upper directory over EROFS layers to an OCI layer.

use std::io::Write;
use std::path::Path;

use erofs_fuse::diff::{Compression, DiffOptions, OverlayXattrs};

use super::args::{DiffArgs, DiffCompression, StoreXattrsArg};
use super::error::{CliError, Result};
use super::serve::open_stack;

impl DiffArgs {
    /// `diff`.
    pub fn run(self) -> Result {
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(epoch) if !epoch.trim().is_empty() => Some(epoch.trim().parse().map_err(|_| {
                CliError::msg(format!(
                    "SOURCE_DATE_EPOCH={epoch}: not a number of seconds"
                ))
            })?),
            _ => None,
        };
        let options = DiffOptions {
            compression: match self.compression {
                DiffCompression::None => Compression::None,
                DiffCompression::Gzip => Compression::Gzip,
                DiffCompression::Zstd => Compression::Zstd,
            },
            source_date_epoch,
            overlay_xattrs: match self.overlay_xattrs {
                StoreXattrsArg::Auto if erofs_fuse::fuse::privileged() => OverlayXattrs::Trusted,
                StoreXattrsArg::Auto | StoreXattrsArg::User => OverlayXattrs::User,
                StoreXattrsArg::Trusted => OverlayXattrs::Trusted,
            },
            read_hook: None,
        };
        let stack = open_stack(&self.layers, &self.open)?;
        let report = erofs_fuse::diff::diff(&stack, &self.upper, &self.output, &options)
            .map_err(|e| CliError::msg(e.to_string()))?;
        let lines = format!("digest {}\ndiffid {}\n", report.digest, report.diff_id);
        if self.output == Path::new("-") {
            let _ = std::io::stderr().write_all(lines.as_bytes());
        } else {
            let _ = std::io::stdout().write_all(lines.as_bytes());
        }
        Ok(())
    }
}
