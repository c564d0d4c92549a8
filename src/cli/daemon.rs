//! What serving a mount does to the process, kept out of the library: the
//! background/foreground split, readiness, detaching from the terminal,
//! and tuning the allocator and the open-file limit.
//!
//! Without `--foreground`, the process forks before any thread exists; the
//! child mounts and reports over a pipe, so the parent exits only once the
//! mount is live (or fails with the child's error), and scripts can use the
//! mountpoint at once.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use erofs_fuse::fuse::session::Mount;
use erofs_fuse::{Error, Result};
use nix::unistd::{fork, setsid, ForkResult};

/// Descriptors kept free beside the serving threads' own: the signal
/// thread, logs, sysfs and the images a store opens while serving.
const SPARE_DESCRIPTORS: u64 = 64;

/// Serves `mount`: in the foreground, or from a forked child once the
/// parent has seen the mount go live.
pub fn run(mount: Mount) -> Result<()> {
    reserve_descriptors(mount.threads())?;
    if mount.foreground() {
        tune_malloc();
        return mount.serve(|_| {});
    }
    let (reader, writer) = nix::unistd::pipe().map_err(|e| Error::io("pipe", e.into()))?;
    // SAFETY: no other thread exists yet (the images are mapped, nothing
    // spawned), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| Error::io("fork", e.into()))? {
        ForkResult::Parent { .. } => {
            drop(writer);
            wait_ready(reader, mount.mountpoint())
        }
        ForkResult::Child => {
            drop(reader);
            let _ = setsid();
            tune_malloc();
            let mountpoint = mount.mountpoint().to_path_buf();
            let result = mount.serve(|outcome| report_ready(writer, outcome));
            if let Err(e) = &result {
                tracing::error!("{}: {e}", mountpoint.display());
            }
            std::process::exit(i32::from(result.is_err()));
        }
    }
}

/// Child side: tells the parent the mount is live ("+") or why it is not
/// ("-" and the error), then lets go of the caller's terminal.
fn report_ready(writer: OwnedFd, outcome: std::result::Result<(), &Error>) {
    let mut pipe = std::fs::File::from(writer);
    match outcome {
        Ok(()) => {
            let _ = pipe.write_all(b"+");
            drop(pipe);
            detach_stdio();
        }
        Err(err) => {
            let _ = pipe.write_all(format!("-{err}").as_bytes());
        }
    }
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

/// Raises the soft open-file limit to the hard one (best effort).
pub(super) fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// One malloc arena for all serving threads, and buffers of 1 MiB or more
/// mapped apart: freed decode buffers then go back to the system instead
/// of piling up per thread, and resident memory follows the cache budget.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; no serving thread exists
    // yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// A daemon lets go of the caller's standard descriptors: a caller that
/// captures the mount command's output waits for them to close. Logs go to
/// `--log-file` when one is given.
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in [0, 1, 2] {
        // The standard descriptors stay open, now on /dev/null.
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
    }
}
