//! Images by reference: `pull`, `images`, `config`, `rmi`, `store gc`,
//! and what `mount REF` needs (the image pulled, its layers opened).

use erofs_fuse::store::layer_kind::has_layer_as;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use erofs_fuse::registry::manifest::{parse_config, Platform};
use erofs_fuse::registry::ClientOptions;
use erofs_fuse::store::images::{default_dir, ImageRecord, ImageRef, LayerRecord, Store};
use erofs_fuse::store::pull::{pull, NoProgress, Progress, PullOptions};

use super::args::{
    ConfigArgs, ImageSourceArgs, ImagesArgs, PullArgs, RegistryArgs, RmiArgs, StoreGcArgs,
};
use super::error::{CliError, Context, Result};
use super::write_out;

impl PullArgs {
    /// `pull`.
    pub fn run(self) -> Result {
        let image = ImageRef::parse(&self.reference)?;
        let store = open_store(self.source.store.as_deref())?;
        let bars = (!self.quiet && std::io::stderr().is_terminal()).then(Bars::new);
        let progress: &dyn Progress = match &bars {
            Some(bars) => bars,
            None => &NoProgress,
        };
        let record = pull_with(
            &store,
            &image,
            &self.source,
            usize::from(self.jobs),
            false,
            progress,
        )?;
        write_out(format!("{}\n", record.manifest_digest).as_bytes())
    }
}

impl ImagesArgs {
    /// `images`.
    pub fn run(self) -> Result {
        let store = open_store(self.store.as_deref())?;
        let mut out = format!(
            "{:<50} {:<19} {:>6} {:>10}\n",
            "REFERENCE", "DIGEST", "LAYERS", "SIZE"
        );
        for record in store.records()? {
            let size: u64 = record.layers.iter().map(|l| l.size).sum();
            let digest = record
                .manifest_digest
                .get(..19)
                .unwrap_or(&record.manifest_digest);
            out.push_str(&format!(
                "{:<50} {:<19} {:>6} {:>10}\n",
                record.reference,
                digest,
                record.layers.len(),
                human_size(size)
            ));
        }
        write_out(out.as_bytes())
    }
}

impl ConfigArgs {
    /// `config`.
    pub fn run(self) -> Result {
        let image = ImageRef::parse(&self.reference)?;
        let store = open_store(self.source.store.as_deref())?;
        let record = ensure_pulled(&store, &image, &self.source)?;
        let bytes = store.blob(&record.config_digest)?;
        let config = parse_config(&bytes, &format!("{image}: config {}", record.config_digest))?;
        let mut text = serde_json::to_string_pretty(&config)?;
        text.push('\n');
        write_out(text.as_bytes())
    }
}

impl RmiArgs {
    /// `rmi`.
    pub fn run(self) -> Result {
        let store = open_store(self.store.as_deref())?;
        for reference in &self.references {
            let image = ImageRef::parse(reference)?;
            if !store.remove_record(&image)? {
                return Err(CliError::msg(format!(
                    "{image}: not in the store {}",
                    store.path().display()
                )));
            }
            write_out(format!("removed {image}\n").as_bytes())?;
        }
        Ok(())
    }
}

impl StoreGcArgs {
    /// `store gc`.
    pub fn run(self) -> Result {
        let store = open_store(self.store.as_deref())?;
        let report = erofs_fuse::store::gc::gc(&store, self.all)?;
        let caches = match report.caches {
            0 => String::new(),
            n => format!(", {n} lazy caches"),
        };
        write_out(
            format!(
                "removed {} layers, {} blobs, {} leftovers{caches}\n",
                report.layers, report.blobs, report.stale
            )
            .as_bytes(),
        )
    }
}

/// Opens the store `dir`, or the default one.
pub fn open_store(dir: Option<&Path>) -> Result<Store> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => default_dir()?,
    };
    Store::open(&dir).with_context(|| format!("store {}", dir.display()))
}

/// The record of `image`, pulled first unless the store has it whole.
pub fn ensure_pulled(
    store: &Store,
    image: &ImageRef,
    args: &ImageSourceArgs,
) -> Result<ImageRecord> {
    ensure_resolved(store, image, args, false)
}

/// The record of `image`, pulled first unless the store has the layers it
/// needs: all of them, or with `lazy` all but those `mount --lazy` reads on
/// demand (EROFS-native ones, and tar ones with a layer index), which the
/// pull leaves unfetched.
pub fn ensure_resolved(
    store: &Store,
    image: &ImageRef,
    args: &ImageSourceArgs,
    lazy: bool,
) -> Result<ImageRecord> {
    if let Some(record) = store.record(image)? {
        let needed = |l: &&LayerRecord| !(lazy && l.is_lazy());
        let layers = record.layers.iter().filter(needed);
        if layers
            .into_iter()
            .all(|l| has_layer_as(store, &l.digest, l.kind))
        {
            return Ok(record);
        }
    }
    pull_with(store, image, args, 0, lazy, &NoProgress)
}

/// The layer images of `record`, bottom first.
pub fn layer_images(store: &Store, record: &ImageRecord) -> Vec<PathBuf> {
    record
        .layers
        .iter()
        .map(|l| store.layer_image(&l.digest))
        .collect()
}

/// Pulls `image` as `args` say.
fn pull_with(
    store: &Store,
    image: &ImageRef,
    args: &ImageSourceArgs,
    jobs: usize,
    lazy: bool,
    progress: &dyn Progress,
) -> Result<ImageRecord> {
    let platform = args
        .registry
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()?;
    let source = image.open(&client_options(&args.registry)?)?;
    let options = PullOptions {
        platform,
        threads: jobs,
        lazy,
        prefer_nydus: args.registry.prefer_nydus,
    };
    Ok(pull(store, image, source.as_ref(), &options, progress)?)
}

/// The registry options from the command line (credentials are never
/// echoed, not even in the error about their form).
pub fn client_options(args: &RegistryArgs) -> Result<ClientOptions> {
    let creds = match &args.creds {
        Some(text) => match text.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Some((user.to_string(), pass.to_string())),
            _ => return Err(CliError::msg("--creds: expected USER:PASS")),
        },
        None => None,
    };
    Ok(ClientOptions {
        insecure: args.insecure,
        ca_certs: args.ca_certs.clone(),
        creds,
        auth_file: args
            .authfile
            .clone()
            .or_else(|| std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from)),
    })
}

/// `1.5M`-style sizes.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A progress bar per layer, as podman shows them (pull's and attach's).
pub(super) struct Bars {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<usize, indicatif::ProgressBar>>,
}

impl Bars {
    /// Bars on stderr.
    pub(super) fn new() -> Self {
        let multi = indicatif::MultiProgress::with_draw_target(
            indicatif::ProgressDrawTarget::stderr_with_hz(4),
        );
        Self {
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn with(&self, index: usize, f: impl FnOnce(&indicatif::ProgressBar)) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = bars.get(&index) {
            f(bar);
        }
    }
}

impl Progress for Bars {
    fn start(&self, index: usize, digest: &str, size: u64) {
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        let template = "{prefix} {bar:30} {bytes}/{total_bytes} {msg}";
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        let short = digest.get(7..19).unwrap_or(digest);
        bar.set_prefix(format!("layer {short}"));
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(index, bar);
    }

    fn bytes(&self, index: usize, done: u64) {
        self.with(index, |bar| bar.set_position(done));
    }

    fn step(&self, index: usize, what: &str) {
        self.with(index, |bar| bar.set_message(what.to_string()));
    }

    fn finish(&self, index: usize, how: &str) {
        self.with(index, |bar| bar.finish_with_message(how.to_string()));
    }
}
