//! The kernel's readahead window for a FUSE mount.
//!
//! FUSE mounts get the kernel's default window of 128 KiB (the server may
//! only lower it in `FUSE_INIT`), so a sequential reader's cold reads reach
//! the server as 128 KiB requests, each a round trip. Kernel erofs on a
//! loop device reads ahead in windows of the backing device's size. The
//! window is the mount's backing device info,
//! `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`, which only root can write;
//! for anyone else the mount keeps the default, and that is logged.

use std::path::Path;

/// The window the mount asks for unless told otherwise: one full request
/// (`max_pages` of 256 pages), the fastest of the windows measured
/// (docs/benchmarks.md, "Design measurements").
pub const DEFAULT_READAHEAD: u64 = 1 << 20;

/// Sets the readahead window of the FUSE mount at `mountpoint` (a
/// canonical path, resolved before mounting: resolving it now would ask the
/// server, which does not answer yet) to `requested` bytes (in whole KiB,
/// at least one 4 KiB page), or to [`DEFAULT_READAHEAD`] when none was asked
/// for; 0 leaves the kernel's. Best effort: the mount works either way, so a
/// failure is logged, as a warning when the window was asked for.
pub fn set_window(mountpoint: &Path, requested: Option<u64>) {
    let bytes = requested.unwrap_or(DEFAULT_READAHEAD);
    if bytes == 0 {
        return;
    }
    let device = match mount_device(mountpoint) {
        Ok(Some(device)) => device,
        Ok(None) => {
            tracing::warn!(
                "readahead: {} not found in /proc/self/mountinfo",
                mountpoint.display()
            );
            return;
        }
        Err(e) => {
            tracing::warn!("readahead: reading /proc/self/mountinfo: {e}");
            return;
        }
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    let kib = window_kib(bytes);
    match std::fs::write(&knob, format!("{kib}\n")) {
        Ok(()) => tracing::debug!("readahead: {knob} set to {kib} KiB"),
        Err(e) => {
            let current = std::fs::read_to_string(&knob).unwrap_or_default();
            let message = format!(
                "readahead stays at the kernel's {} KiB: writing {knob}: {e} (only root may)",
                current.trim()
            );
            if requested.is_some() {
                tracing::warn!("{message}");
            } else {
                tracing::info!("{message}");
            }
        }
    }
}

/// A non-zero window in whole KiB, rounded down but at least one 4 KiB page:
/// the kernel counts the window in pages, and a window under a page would
/// turn readahead off rather than make it small.
fn window_kib(bytes: u64) -> u64 {
    (bytes / 1024).max(4)
}

/// The `MAJOR:MINOR` device of the most recent mount at `mountpoint`.
fn mount_device(mountpoint: &Path) -> std::io::Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(device_in(&table, mountpoint.as_os_str().as_encoded_bytes()))
}

/// Finds `mountpoint` in a mountinfo table; the last entry wins, as the
/// most recent mount on a path hides those under it.
fn device_in(table: &str, mountpoint: &[u8]) -> Option<String> {
    table.lines().rev().find_map(|line| {
        // mount ID, parent ID, MAJOR:MINOR, root, mount point, ...
        let mut fields = line.split(' ');
        let device = fields.nth(2)?;
        let point = fields.nth(1)?;
        (unescape(point) == mountpoint).then(|| device.to_string())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
42 22 0:39 / /tmp/a\\040b ro,noatime - fuse /img ro,user_id=0,group_id=0
43 22 7:0 / /tmp/k ro,relatime - erofs /dev/loop0 ro
44 42 0:41 / /tmp/a\\040b ro,noatime - fuse /img2 ro,user_id=0,group_id=0
";

    #[test]
    fn finds_the_latest_mount_on_a_path() {
        assert_eq!(device_in(TABLE, b"/tmp/a b").as_deref(), Some("0:41"));
        assert_eq!(device_in(TABLE, b"/tmp/k").as_deref(), Some("7:0"));
        assert_eq!(device_in(TABLE, b"/tmp/a\\040b"), None);
        assert_eq!(device_in(TABLE, b"/nowhere"), None);
        assert_eq!(device_in("short line\n", b"/"), None);
    }

    #[test]
    fn windows_are_whole_kib_and_at_least_a_page() {
        assert_eq!(window_kib(1 << 20), 1024);
        assert_eq!(window_kib(1536 * 1024 + 100), 1536);
        assert_eq!(window_kib(100), 4);
        assert_eq!(window_kib(5000), 4);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"a\040b\134c"), b"a b\\c");
        assert_eq!(unescape(r"trailing\04"), b"trailing\\04");
        assert_eq!(unescape(r"\999"), b"\\999");
    }
}
