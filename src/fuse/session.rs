//! Mounting and serving: checking a mount request, serving it until it is
//! unmounted, and clean unmounting on signals.
//!
//! Nothing here changes the process: the binary daemonizes (fork, setsid,
//! readiness over a pipe, detached stdio) and tunes the allocator and the
//! open-file limit around [`Mount::serve`], whose `ready` callback says when
//! the mount is live. SIGINT, SIGTERM and SIGHUP unmount cleanly;
//! `fusermount3 -u` (or `umount`) ends the server too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};

use super::options::MountOptions;
use super::ErofsFs;
use crate::error::{Error, Result};
use crate::view::View;

/// Everything a mount needs.
pub struct MountRequest {
    /// What to serve: an image, a stack of layers, a layer store.
    pub view: Arc<dyn View>,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// Parsed `-o` options.
    pub options: MountOptions,
    /// Serve in the foreground instead of daemonizing (for the caller:
    /// [`Mount::serve`] always serves in the calling process).
    pub foreground: bool,
    /// Serving threads (overridden by `-o threads=`).
    pub threads: usize,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
    /// The kernel's readahead window for the mount, in bytes (0 leaves the
    /// kernel's default), if asked for; `None` means the default window.
    pub readahead: Option<u64>,
    /// Fill the kernel's page cache ahead of readers of small files (see
    /// the `ahead` module): for images on local disk, not for lazy ones,
    /// where it would fetch what may never be read.
    pub store_ahead: bool,
}

impl MountRequest {
    /// Checks the mountpoint and the options, before anything is mounted.
    pub fn prepare(self) -> Result<Mount> {
        let meta =
            std::fs::metadata(&self.mountpoint).map_err(|e| Error::io(&self.mountpoint, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                &self.mountpoint,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let is_root = nix::unistd::Uid::effective().is_root();
        let mut config = self
            .options
            .fuser_config(is_root, self.threads, &self.fsname)?;
        if !self.view.read_only_mount() {
            // The view takes some changes as signals, which a read-only mount
            // would refuse before they reach it; it still changes nothing.
            config
                .mount_options
                .retain(|o| *o != fuser::MountOption::RO);
        }
        Ok(Mount {
            request: self,
            config,
        })
    }
}

/// A checked mount request, ready to serve.
pub struct Mount {
    request: MountRequest,
    config: fuser::Config,
}

impl Mount {
    /// The serving threads it will run (each opens a `/dev/fuse` clone).
    pub fn threads(&self) -> usize {
        self.config.n_threads.unwrap_or(1)
    }

    /// Whether the caller asked to serve in the foreground.
    pub fn foreground(&self) -> bool {
        self.request.foreground
    }

    /// Where it mounts.
    pub fn mountpoint(&self) -> &Path {
        &self.request.mountpoint
    }

    /// Mounts and serves until unmounted. `ready` is called once: with
    /// `Ok` when the mount is live, or with the error when mounting failed
    /// (which is then also returned).
    pub fn serve(self, ready: impl FnOnce(std::result::Result<(), &Error>)) -> Result<()> {
        let Self { request, config } = self;
        // Signals are taken by one thread with sigwait; block them before
        // the session spawns its workers so those inherit the mask.
        let mut signals = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            signals.add(s);
        }
        signals
            .thread_block()
            .map_err(|e| Error::io("sigprocmask", e.into()))?;

        let fs = ErofsFs::new(
            Arc::clone(&request.view),
            request.options.enforces_permissions(),
        );
        // Resolved now: once mounted, resolving the path would ask this
        // server, which does not answer until it runs.
        let canonical = std::fs::canonicalize(&request.mountpoint);
        let storing = fs.ahead_starter();
        let mut session = match fuser::Session::new(fs, &request.mountpoint, &config) {
            Ok(session) => session,
            Err(e) => {
                let err = Error::io(&request.mountpoint, e);
                ready(Err(&err));
                return Err(err);
            }
        };
        // Serving starts here, in the process that serves: the view's
        // background threads (verify-ahead) start now.
        request.view.start_serving();
        if request.store_ahead {
            storing(session.notifier());
        }
        match canonical {
            Ok(path) => super::readahead::set_window(&path, request.readahead),
            Err(e) => tracing::warn!("readahead: {}: {e}", request.mountpoint.display()),
        }
        let mut unmounter = session.unmount_callable();
        let mountpoint = request.mountpoint.clone();
        std::thread::spawn(move || {
            if let Ok(signal) = signals.wait() {
                tracing::info!("{signal:?}: unmounting {}", mountpoint.display());
                if let Err(e) = unmounter.unmount() {
                    tracing::error!("unmounting {}: {e}", mountpoint.display());
                }
            }
        });
        tracing::info!(
            "serving {} on {}",
            request.fsname,
            request.mountpoint.display()
        );
        ready(Ok(()));
        let result = session.run().map_err(|e| Error::io(&request.mountpoint, e));
        log_verity_stats(&*request.view);
        result
    }
}

/// Logs what each verified file's tree checked while serving.
fn log_verity_stats(view: &dyn View) {
    for (path, stats) in view.verity_stats() {
        let line = format!(
            "verity: {}: {} data and {} hash blocks verified, {} mismatches",
            path.display(),
            stats.data_verified,
            stats.hash_verified,
            stats.mismatches
        );
        if stats.mismatches > 0 {
            tracing::error!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}
