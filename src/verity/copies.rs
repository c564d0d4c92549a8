//! Verified copies of data blocks, kept for the life of the tree: what
//! metadata is parsed from when every read is checked, so bytes changed in
//! the file after their block was verified are never seen (dm-verity's
//! page cache keeps verified copies the same way).
#![allow(unsafe_code)]

use std::sync::Mutex;

/// Stripes of locks serialising the filling of blocks.
const STRIPES: usize = 64;

/// An anonymous region as long as the data the tree covers, filled block
/// by block (pages are only allocated where blocks are copied).
pub(super) struct Copies {
    ptr: *mut u8,
    len: usize,
    locks: [Mutex<()>; STRIPES],
}

// SAFETY: the region is only written under a stripe lock, into blocks no
// reader can see yet (see `Copies::fill`); reads are of filled blocks,
// which are never written again.
unsafe impl Send for Copies {}
// SAFETY: as above.
unsafe impl Sync for Copies {}

impl std::fmt::Debug for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies").field("len", &self.len).finish()
    }
}

impl Copies {
    /// A region of `len` bytes (reserved, not committed).
    pub(super) fn new(len: u64) -> std::io::Result<Self> {
        let len = usize::try_from(len.max(1)).map_err(|_| std::io::Error::other("too large"))?;
        // SAFETY: a fresh private anonymous mapping; nothing else uses it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            locks: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    /// Fills block `block` (`[start, start + bytes.len())`) with a copy of
    /// `bytes` if `filled(block)` is false, and keeps it if `keep(copy)`
    /// says it is good, all under the block's stripe lock; `keep` marks it
    /// filled. The caller must not let any reader see the block before it
    /// is marked.
    pub(super) fn fill<E>(
        &self,
        block: u64,
        start: usize,
        bytes: &[u8],
        filled: impl Fn() -> bool,
        keep: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let _lock = self.locks[block as usize % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if filled() {
            return Ok(());
        }
        assert!(start + bytes.len() <= self.len, "block outside the copies");
        // SAFETY: in the region (checked); no reader sees this block until
        // `keep` marks it, and other fillers of it wait on the lock.
        let copy = unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(start), bytes.len());
            std::slice::from_raw_parts(self.ptr.add(start), bytes.len())
        };
        keep(copy)
    }

    /// `[start, start + len)` of the region.
    ///
    /// # Safety
    /// Every block the range touches must be filled (marked by `keep`).
    pub(super) unsafe fn slice(&self, start: usize, len: usize) -> &[u8] {
        assert!(start + len <= self.len, "range outside the copies");
        // SAFETY: in the region; the caller guarantees the blocks are
        // filled, and filled blocks are never written again.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        // SAFETY: the region this value mapped; no slice of it outlives it
        // (slices borrow `self`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
