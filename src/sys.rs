//! The few raw system calls the library makes that neither std nor nix
//! wraps, each behind a safe function.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// The system's page size in bytes, if it can be had.
pub fn page_size() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().filter(|&p| p > 0)
}

/// Hands free heap memory back to the system (glibc's `malloc_trim`; a
/// no-op elsewhere).
pub fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Clears `O_NONBLOCK` on `file`, so reads block again.
pub fn clear_nonblock(file: &File) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor `file` keeps open.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an int.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The size in bytes of the block device open as `file`.
pub fn block_device_size(file: &File) -> std::io::Result<u64> {
    // BLKGETSIZE64: _IOR(0x12, 114, size_t).
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 to the pointer given.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}
