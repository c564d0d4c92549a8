//! Mounting and serving: the background/foreground split, readiness, and
//! clean unmounting on signals.
//!
//! Without `foreground`, the process forks before any thread exists; the
//! child mounts and reports over a pipe, so the parent exits only once the
//! mount is live (or fails with the child's error), and scripts can use the
//! mountpoint at once. SIGINT, SIGTERM and SIGHUP unmount cleanly in both
//! modes; `fusermount3 -u` (or `umount`) ends the server too.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, setsid, ForkResult};

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
    /// Serve in the foreground instead of daemonizing.
    pub foreground: bool,
    /// Serving threads (overridden by `-o threads=`).
    pub threads: usize,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
    /// The kernel's readahead window for the mount, in bytes (0 leaves the
    /// kernel's default), if asked for; `None` means the default window.
    pub readahead: Option<u64>,
}

/// Mounts the image and serves it until unmounted.
pub fn mount(request: MountRequest) -> Result<()> {
    let meta =
        std::fs::metadata(&request.mountpoint).map_err(|e| Error::io(&request.mountpoint, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            &request.mountpoint,
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    let is_root = nix::unistd::Uid::effective().is_root();
    let mut config = request
        .options
        .fuser_config(is_root, request.threads, &request.fsname)?;
    reserve_descriptors(config.n_threads.unwrap_or(1))?;
    if !request.view.read_only_mount() {
        // The view takes some changes as signals, which a read-only mount
        // would refuse before they reach it; it still changes nothing.
        config
            .mount_options
            .retain(|o| *o != fuser::MountOption::RO);
    }
    if request.foreground {
        return serve(&request, &config, None);
    }
    let (reader, writer) = nix::unistd::pipe().map_err(|e| Error::io("pipe", e.into()))?;
    // SAFETY: no other thread exists yet (the images are mapped, nothing
    // spawned), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| Error::io("fork", e.into()))? {
        ForkResult::Parent { .. } => {
            drop(writer);
            wait_ready(reader, &request.mountpoint)
        }
        ForkResult::Child => {
            drop(reader);
            let _ = setsid();
            let result = serve(&request, &config, Some(writer));
            if let Err(e) = &result {
                tracing::error!("{}: {e}", request.mountpoint.display());
            }
            std::process::exit(i32::from(result.is_err()));
        }
    }
}

/// Descriptors kept free beside the serving threads' own: the signal
/// thread, logs, sysfs and the images a store opens while serving.
const SPARE_DESCRIPTORS: u64 = 64;

/// Makes sure each serving thread can open its `/dev/fuse` clone: raises the
/// soft open-file limit as far as needed (up to the hard limit), or fails
/// before mounting. Once serving, a thread that cannot open its descriptor
/// would leave a mount that answers nothing.
fn reserve_descriptors(threads: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let open = std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count() as u64);
    let needed = open + threads as u64 + SPARE_DESCRIPTORS;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::io("getrlimit", e.into()))?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(Error::Invalid(format!(
            "{threads} serving threads need {needed} open files, but the limit is {hard} \
             (ulimit -n): use fewer --threads"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).map_err(|e| Error::io("setrlimit", e.into()))
}

/// Parent side: wait for the child's "ready" byte or its error message.
fn wait_ready(reader: OwnedFd, mountpoint: &Path) -> Result<()> {
    let mut message = Vec::new();
    let _ = std::fs::File::from(reader).read_to_end(&mut message);
    match message.split_first() {
        Some((b'+', _)) => Ok(()),
        Some((_, text)) => Err(Error::Invalid(String::from_utf8_lossy(text).into_owned())),
        None => Err(Error::Invalid(format!(
            "{}: the server exited before the mount was live",
            mountpoint.display()
        ))),
    }
}

fn serve(request: &MountRequest, config: &fuser::Config, ready: Option<OwnedFd>) -> Result<()> {
    // One malloc arena for all serving threads: with one per thread, the
    // decode buffers that cache evictions free pile up in each arena and
    // resident memory drifts far past the cache budget (46 MiB against 29
    // MiB for a 16 MiB cache in the stress test). Requests allocate little
    // else, so the shared arena's lock is not contended. And buffers of 1
    // MiB or more (extents of compressed zeros decode to several MiB) are
    // mapped apart and given back when freed, rather than left as holes
    // in the heap: glibc's default raises that threshold to the largest
    // block freed so far. 8 readers of such a tree with a 16 MiB cache:
    // 19 MiB of heap at most instead of 26.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; no threads exist yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    // Signals are taken by one thread with sigwait; block them before the
    // session spawns its workers so those inherit the mask.
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
    // Resolved now: once mounted, resolving the path would ask this server,
    // which does not answer until it runs.
    let canonical = std::fs::canonicalize(&request.mountpoint);
    let session = fuser::Session::new(fs, &request.mountpoint, config);
    let mut session = match session {
        Ok(session) => session,
        Err(e) => {
            let err = Error::io(&request.mountpoint, e);
            if let Some(fd) = ready {
                let _ = std::fs::File::from(fd).write_all(format!("-{err}").as_bytes());
            }
            return Err(err);
        }
    };
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
    if let Some(fd) = ready {
        let _ = std::fs::File::from(fd).write_all(b"+");
        detach_stdio();
    }
    let result = session.run().map_err(|e| Error::io(&request.mountpoint, e));
    for (path, stats) in request.view.verity_stats() {
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
    result
}

/// A daemon lets go of the caller's standard descriptors: a caller that
/// captures the mount command's output waits for them to close. Logs go to
/// `--log-file` when one is given.
fn detach_stdio() {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let Ok(null) = null else {
        return;
    };
    for fd in [0, 1, 2] {
        // SAFETY: dup2 onto the standard descriptors, which stay open.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}
