//! What the server keeps resident, and when it lets go: image pages it has
//! mapped (unmapped after requests that may have mapped [`TRIM_EVERY`]
//! bytes) and heap its decode buffers freed (returned every
//! [`MALLOC_TRIM_EVERY`] bytes served). Resident memory then follows the
//! cache budget, however much of the image is read.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::{Access, FAULT_SPAN};
use crate::view::View;

/// After requests that may have mapped this many bytes of image into the
/// server, every image page is unmapped from it. The pages stay in the page
/// cache; the next access maps them again.
const TRIM_EVERY: u64 = 8 << 20;

/// What a request may map besides the data it returns: one page fault on
/// its metadata (an inode, a directory block).
pub const METADATA_REQUEST: u64 = FAULT_SPAN;

/// After this many bytes served, free heap memory goes back to the system.
const MALLOC_TRIM_EVERY: u64 = 8 << 20;

/// The counters behind the trims.
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes the requests since the mount may have mapped.
    mapped: AtomicU64,
    /// Bytes of file data served since the mount.
    served: AtomicU64,
}

impl Budget {
    /// Counts a request that may have mapped `mapped` bytes of image,
    /// unmapping `view`'s images every [`TRIM_EVERY`] of them.
    pub fn mapped(&self, view: &dyn View, mapped: u64) {
        if crosses(&self.mapped, mapped, TRIM_EVERY) {
            view.release_mapped();
        }
    }

    /// Counts a read that served `served` bytes read as `access`: its
    /// metadata and what its data mapped, and the bytes themselves.
    pub fn read(&self, view: &dyn View, access: Access, served: u64) {
        // A sequential read maps whole 2 MiB pages: its data rounded out
        // to them; a random one maps only the pages it reads.
        let data = match access {
            Access::Sequential if served > 0 => served.next_multiple_of(FAULT_SPAN) + FAULT_SPAN,
            _ => served,
        };
        self.mapped(view, METADATA_REQUEST + data);
        if crosses(&self.served, served, MALLOC_TRIM_EVERY) {
            // Decode buffers freed by cache evictions sit in the serving
            // threads' malloc arenas; hand them back so resident memory
            // follows the cache budget rather than its past peaks.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Adds `amount` to `counter`; true when that crosses a multiple of `every`.
fn crosses(counter: &AtomicU64, amount: u64, every: u64) -> bool {
    let before = counter.fetch_add(amount, Ordering::Relaxed);
    before / every != (before + amount) / every
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings_are_counted_once_each() {
        let counter = AtomicU64::new(0);
        let crossed: Vec<bool> = [3, 4, 1, 8, 2, 0]
            .iter()
            .map(|&n| crosses(&counter, n, 8))
            .collect();
        // 3, 7, 8 (crosses), 16 (crosses), 18, 18.
        assert_eq!(crossed, [false, false, true, true, false, false]);
    }
}
