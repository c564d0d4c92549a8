//! What the server keeps resident, and when it lets go: image pages it has
//! mapped to read them, and heap its decode buffers have freed. Resident
//! memory then follows the cache budget, however much of the image is
//! read.
//!
//! Mapped image pages are measured, not guessed: a request can map
//! anything from one 4 KiB page to several 2 MiB ones (a lookup through a
//! stack of layers), and the verity tree is mapped as it is read. So every
//! [`CHECK_EVERY`] bytes that requests may have mapped, by a generous
//! estimate (at least every other request), the server reads how much of
//! it is file-backed from `/proc/self/statm` (a cheap read), and unmaps
//! every image when that has grown by [`TRIM_AT`] over the least it
//! measured after an unmapping. The least, not the last: other threads map
//! pages while one unmaps, and a floor measured among them lets peaks drift
//! higher (docs/benchmarks.md, "Design measurements"). Every [`REBASE_EVERY`] unmappings the floor
//! starts again from the last measure, so that file-backed memory that is
//! not the image (more of the binary paged in) cannot make every check
//! unmap for good.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::device::{Access, FAULT_SPAN};
use crate::view::View;

/// How many bytes requests may have mapped, by [`Budget`]'s estimate,
/// between two measurements.
const CHECK_EVERY: u64 = 4 << 20;

/// How much the server's file-backed resident memory may grow past what
/// it was after the last unmapping before every image is unmapped again.
/// The pages stay in the page cache; the next access maps them again.
const TRIM_AT: u64 = 4 << 20;

/// What a request may map besides the data it returns, in the estimate:
/// one page fault on its metadata (an inode, a directory block).
pub const METADATA_REQUEST: u64 = FAULT_SPAN;

/// After this many unmappings the floor is measured afresh.
const REBASE_EVERY: u64 = 64;

/// After this many bytes served, free heap memory goes back to the system.
const MALLOC_TRIM_EVERY: u64 = 8 << 20;

/// No measurement after an unmapping yet.
const UNMEASURED: u64 = u64::MAX;

/// The counters behind the trims.
#[derive(Debug)]
pub struct Budget {
    /// Bytes the requests since the mount may have mapped (the estimate).
    mapped: AtomicU64,
    /// The least file-backed resident bytes measured right after an
    /// unmapping since the last rebase: the binary and its libraries.
    floor: AtomicU64,
    /// Unmappings since the mount.
    trims: AtomicU64,
    /// Bytes of file data served since the mount.
    served: AtomicU64,
    /// `/proc/self/statm`, opened on first use (`None`: not readable, so
    /// every check unmaps).
    statm: OnceLock<Option<File>>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            mapped: AtomicU64::new(0),
            floor: AtomicU64::new(UNMEASURED),
            trims: AtomicU64::new(0),
            served: AtomicU64::new(0),
            statm: OnceLock::new(),
        }
    }
}

impl Budget {
    /// Counts a request that may have mapped `mapped` bytes of image; at
    /// each [`CHECK_EVERY`], measures the process's file-backed memory and
    /// unmaps `view`'s images if it is [`TRIM_AT`] or more over the floor.
    pub fn mapped(&self, view: &dyn View, mapped: u64) {
        if !crosses(&self.mapped, mapped, CHECK_EVERY) {
            return;
        }
        let floor = self.floor.load(Ordering::Relaxed);
        match self.file_resident() {
            Some(now) if floor != UNMEASURED && now < floor.saturating_add(TRIM_AT) => {}
            _ => {
                view.release_mapped();
                let after = self.file_resident().unwrap_or(UNMEASURED);
                if self.trims.fetch_add(1, Ordering::Relaxed) % REBASE_EVERY == REBASE_EVERY - 1 {
                    self.floor.store(after, Ordering::Relaxed);
                } else {
                    self.floor.fetch_min(after, Ordering::Relaxed);
                }
            }
        }
    }

    /// Counts a read that served `served` bytes read as `access`: its
    /// metadata and what its data may have mapped, and the bytes themselves.
    pub fn read(&self, view: &dyn View, access: Access, served: u64) {
        // A sequential read may map whole 2 MiB pages: its data rounded
        // out to them.
        let data = match access {
            Access::Sequential if served > 0 => served.next_multiple_of(FAULT_SPAN) + FAULT_SPAN,
            _ => served,
        };
        self.mapped(view, METADATA_REQUEST + data);
        if crosses(&self.served, served, MALLOC_TRIM_EVERY) {
            // Decode buffers freed by cache evictions sit in the serving
            // threads' malloc arenas; hand them back so resident memory
            // follows the cache budget rather than its past peaks.
            crate::sys::malloc_trim();
        }
    }

    /// This process's file-backed (and shared) resident memory, in bytes.
    fn file_resident(&self) -> Option<u64> {
        let statm = self
            .statm
            .get_or_init(|| File::open("/proc/self/statm").ok())
            .as_ref()?;
        let mut buf = [0u8; 128];
        let n = statm.read_at(&mut buf, 0).ok()?;
        let pages = parse_statm_shared(buf.get(..n)?)?;
        pages.checked_mul(crate::sys::page_size()?)
    }
}

/// The third field of `/proc/PID/statm`: resident pages backed by files
/// (or shared memory).
fn parse_statm_shared(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    text.split_ascii_whitespace().nth(2)?.parse().ok()
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

    #[test]
    fn statm_gives_file_backed_pages() {
        assert_eq!(parse_statm_shared(b"2210 419 342 106 0 229 0\n"), Some(342));
        assert_eq!(parse_statm_shared(b"2210 419"), None);
        assert_eq!(parse_statm_shared(b"a b c"), None);
        // This process has its own binary mapped.
        let resident = Budget::default().file_resident().unwrap();
        assert!(resident > 0);
    }

    #[test]
    fn mapping_a_file_shows_in_the_measure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 16 << 20]).unwrap();
        let budget = Budget::default();
        let before = budget.file_resident().unwrap();
        let map = crate::mmap::map_file(&File::open(&path).unwrap(), &path, 16 << 20).unwrap();
        let sum: u64 = map.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        assert_eq!(sum, 7 * 4096);
        let after = budget.file_resident().unwrap();
        assert!(after >= before + (12 << 20), "{before} -> {after}");
    }
}
