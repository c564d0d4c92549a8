//! Opening the files the reader maps (images, device files, verity
//! trees): only regular files and block devices, checked before anything
//! could block.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Opens `path` for mapping: a regular file, or a block device (sized
/// with `BLKGETSIZE64`, since its inode has no size). Anything else (a
/// FIFO, a socket, a character device, a directory) is refused before any
/// read could block: the file is opened with `O_NONBLOCK` (so opening a
/// FIFO does not wait for a writer) and checked with `fstat` first.
/// Returns the file (blocking again) and its length.
pub fn open_input(path: &Path) -> Result<(File, u64)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let kind = meta.file_type();
    let len = if kind.is_file() {
        meta.len()
    } else if kind.is_block_device() {
        crate::sys::block_device_size(&file).map_err(|e| Error::io(path, e))?
    } else {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() {
            "a character device"
        } else {
            "not a file"
        };
        return Err(Error::Invalid(format!(
            "{}: {what}, not a regular file or a block device",
            path.display()
        )));
    };
    // Reads block again (they never wait on a regular file or a disk, but
    // the flag would otherwise outlive this check).
    crate::sys::clear_nonblock(&file).map_err(|e| Error::io(path, e))?;
    Ok((file, len))
}
