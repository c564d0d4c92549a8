//! `convert`: an OCI layer tar to EROFS.

use std::io::Write;
use std::path::Path;

use erofs_fuse::convert::{CompressOptions, ConvertOptions, Mode};

use super::args::{ConvertArgs, ConvertMode};
use super::error::{CliError, Context, Result};

impl ConvertArgs {
    /// `convert`.
    pub fn run(self) -> Result {
        if self.input.is_dir() {
            // A tree is always copied in full, as mkfs.erofs DIR does: the
            // index-mode options are refused rather than ignored.
            if matches!(self.mode, Some(ConvertMode::Index))
                || self.append_tar
                || self.tar_out.is_some()
                || self.digests
            {
                return Err(CliError::msg(format!(
                    "{}: a directory converts with --mode full only \
                     (no --mode index, --append-tar, --tar-out or --digests)",
                    self.input.display()
                )));
            }
        }
        let options = ConvertOptions {
            mode: match self.mode {
                Some(ConvertMode::Full) => Mode::Full,
                Some(ConvertMode::Index) | None if !self.input.is_dir() => Mode::Index,
                _ => Mode::Full,
            },
            aufs: self.aufs,
            append_tar: self.append_tar,
            tar_out: self.tar_out,
            gzinfo: self.gzinfo,
            progress: !self.quiet,
            implied_mtime: self.implied_mtime,
            skip_digests: !self.digests,
            verified_input: None,
        };
        let compress = match self.compress {
            // The extended options are a list of their own, checked with
            // the spec (before any input is read).
            Some(spec) => Some(CompressOptions {
                spec,
                extended: self.extended,
                pcluster_size: self.pcluster_size,
                workers: self.workers,
            }),
            None if self.pcluster_size.is_some()
                || self.workers.is_some()
                || !self.extended.is_empty() =>
            {
                return Err(CliError::msg(
                    "--pcluster-size, --workers and --extended need --compress",
                ))
            }
            None => None,
        };
        convert(&self.input, &self.output, options, compress)
    }
}

/// A layer tar to EROFS, then its digests.
fn convert(
    input: &Path,
    output: &Path,
    mut options: ConvertOptions,
    compress: Option<CompressOptions>,
) -> Result {
    if options.mode == Mode::Full && (options.append_tar || options.tar_out.is_some()) {
        return Err(CliError::msg(
            "--append-tar and --tar-out apply to --mode index only",
        ));
    }
    if options.implied_mtime.is_none() {
        if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
            let seconds = epoch.trim().parse().map_err(|_| {
                CliError::msg(format!(
                    "SOURCE_DATE_EPOCH={epoch}: not a number of seconds"
                ))
            })?;
            options.implied_mtime = Some(seconds);
        }
    }
    if input.is_dir() {
        let summary = erofs_fuse::convert::convert_tree(input, output, &options, compress.as_ref())
            .with_context(|| format!("converting {}", input.display()))?;
        let _ = writeln!(
            std::io::stdout().lock(),
            "image {} ({} bytes, {} inodes)",
            output.display(),
            summary.image_size,
            summary.inodes
        );
        return Ok(());
    }
    let report = match &compress {
        Some(c) => erofs_fuse::convert::convert_compressed(input, output, &options, c),
        None => erofs_fuse::convert::convert(input, output, &options),
    };
    let report = report.with_context(|| {
        if input == Path::new("-") {
            "converting stdin".to_string()
        } else {
            format!("converting {}", input.display())
        }
    })?;
    let mut out = std::io::stdout().lock();
    if let Some((input, tar)) = report.digests() {
        let _ = writeln!(out, "digest {input}");
        let _ = writeln!(out, "diffid {tar}");
    }
    let _ = writeln!(
        out,
        "image {} ({} bytes, {} inodes)",
        output.display(),
        report.image_size,
        report.inodes
    );
    if let Some(tar) = &report.tar_path {
        let _ = writeln!(
            out,
            "tar {} ({} bytes): mount with --device {}",
            tar.display(),
            report.tar_size,
            tar.display()
        );
    }
    Ok(())
}
