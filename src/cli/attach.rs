//! `attach`: layer-index artifacts pushed as referrers of an image
//! (the work is the library's, `store::attach`; this prints its report).

use std::io::IsTerminal;

use erofs_fuse::registry::manifest::Platform;
use erofs_fuse::registry::RegistryClient;
use erofs_fuse::store::attach::{attach, AttachOptions, Outcome};
use erofs_fuse::store::images::ImageRef;
use erofs_fuse::store::pull::{NoProgress, Progress};
use erofs_fuse::verity::hex;

use super::args::AttachArgs;
use super::error::{CliError, Result};
use super::pull::{client_options, open_store, Bars};
use super::write_out;

impl AttachArgs {
    /// `attach`.
    pub fn run(self) -> Result {
        let image = ImageRef::parse(&self.reference)?;
        let ImageRef::Registry(reference) = &image else {
            return Err(CliError::msg(format!(
                "{image}: attach pushes to a registry; REF must name one"
            )));
        };
        let store = open_store(self.source.store.as_deref())?;
        let client = RegistryClient::new(reference, &client_options(&self.source.registry)?)?;
        let options = AttachOptions {
            platform: self
                .source
                .registry
                .platform
                .as_deref()
                .map(Platform::parse)
                .transpose()?,
            force: self.force,
        };
        let bars = (!self.quiet && std::io::stderr().is_terminal()).then(Bars::new);
        let progress: &dyn Progress = match &bars {
            Some(bars) => bars,
            None => &NoProgress,
        };
        let report = attach(&store, &image, &client, &options, progress)?;
        drop(bars);
        let mut out = String::new();
        for layer in &report.layers {
            let line = match &layer.outcome {
                Outcome::Attached { referrer, root } => {
                    format!("referrer {referrer} root {}", hex(root))
                }
                Outcome::AlreadyAttached { referrer, root } => {
                    format!("referrer {referrer} root {} (already attached)", hex(root))
                }
                Outcome::Skipped(why) => format!("skipped: {why}"),
            };
            out.push_str(&format!("layer {} {line}\n", layer.digest));
        }
        write_out(out.as_bytes())
    }
}
