//! Surviving files that shrink while they are mapped.
//!
//! Touching a page of a file map that lies wholly past the file's end
//! raises SIGBUS, which by default kills the process: anyone who may
//! truncate an image, a device tar or a verity tree could take a mount down
//! for every reader. Every file map the reader makes is an [`ImageMap`],
//! registered in a fixed, lock-free table that a process-wide SIGBUS
//! handler searches. Installing it changes the whole process, so it is the
//! program's choice: the binary calls [`install`] first thing; a program
//! that does not keeps the default (a fault kills it). With it installed:
//! - a fault in a registered map, on a thread inside [`watch`], maps an
//!   anonymous zero page over the faulting page (async-signal-safe `mmap`),
//!   counts the fault and notes the page, and returns, so the access
//!   completes. When the outermost [`watch`] ends, its thread maps the file
//!   back over the pages it patched (a later access faults again, or, if the
//!   file has grown back, reads its bytes: patched zeros are never kept) and
//!   [`watch`] reports the fault: the request fails with EIO instead of
//!   using the zeros. A request that ran while another thread had pages
//!   patched may have read those zeros, so it fails too.
//! - a fault in a registered map outside [`watch`] (a command-line tool, or
//!   opening an image) prints one line naming the file and exits with
//!   status 1: there is no request to fail.
//! - any other fault goes to the handler that was there before (Rust's
//!   stack-overflow check, or the default action).
//!
//! The handler allocates nothing, takes no lock and reads only atomics and
//! thread-local cells initialised at compile time.
//!
//! What this does not cover:
//! - a file cut in the middle of a page: the kernel shows the rest of that
//!   page as zeros, with no fault (kernel erofs over a loop device reads
//!   zeros past a shrunk file's end too). Verity catches them: the block's
//!   hash does not match;
//! - file data the kernel copies from a map into a reply (unverified
//!   mounts): a page past the end fails that copy and the kernel fails the
//!   read with EIO, but in the instant another thread has a zero page
//!   patched over that same page, the kernel copies zeros. Verified mounts
//!   copy and hash in the server, so they never serve them.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::Error;
use crate::mmap::{lasting_advice, Advice, Mmap};
/// How many file maps can be registered at once (three per verified
/// image file: its two maps and its tree's). Maps beyond this are made
/// anyway, unprotected, with a warning.
const SLOTS: usize = 1024;

/// Pages one watched request can patch before its thread re-maps every
/// registered map whole instead of page by page.
const RECORDS: usize = 32;

/// One registered map. `len == 0` marks a free slot; the other fields are
/// written before `len` is published (Release) and read after it (Acquire).
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    fd: AtomicI32,
    /// Bumped at every unregistration, so a patch noted for an earlier map
    /// at the same address is never re-mapped over a newer one.
    generation: AtomicU64,
    /// The file's name, NUL-terminated, owned by the [`ImageMap`].
    name: AtomicPtr<libc::c_char>,
    /// The `madvise` advice given to the whole map, re-applied to pages
    /// mapped back (so they behave as before and merge with their map).
    advice: [AtomicI32; 2],
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    fd: AtomicI32::new(-1),
    generation: AtomicU64::new(0),
    name: AtomicPtr::new(std::ptr::null_mut()),
    advice: [AtomicI32::new(0), AtomicI32::new(0)],
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// Serialises registration, unregistration and repairs (never taken by
/// the handler): a repair re-maps only a map still registered.
static REGISTRY: Mutex<()> = Mutex::new(());

/// Faults handled so far, process-wide.
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// Pages patched with zeros and not yet mapped back, process-wide.
static PATCHED: AtomicU64 = AtomicU64::new(0);
/// The page size, set before the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS disposition found when installing, for faults not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// One page patched by the handler: its slot, that slot's generation, and
/// the page's address.
#[derive(Clone, Copy)]
struct Patch {
    slot: usize,
    generation: u64,
    page: usize,
}

/// What the handler notes for its thread.
struct ThreadState {
    /// Nesting of [`watch`] calls.
    depth: Cell<u32>,
    /// Faults handled on this thread.
    faults: Cell<u64>,
    /// Patches not yet repaired (the first [`RECORDS`] of them in
    /// `patches`; more set `overflow`).
    count: Cell<usize>,
    overflow: Cell<bool>,
    patches: [Cell<Patch>; RECORDS],
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_PATCH: Cell<Patch> = Cell::new(Patch {
    slot: 0,
    generation: 0,
    page: 0,
});

thread_local! {
    // Constant-initialised and without a destructor: reading it is a plain
    // thread-local access, safe in a signal handler.
    static STATE: ThreadState = const {
        ThreadState {
            depth: Cell::new(0),
            faults: Cell::new(0),
            count: Cell::new(0),
            overflow: Cell::new(false),
            patches: [NO_PATCH; RECORDS],
        }
    };
}

/// A read-only shared map of a whole file (or block device), registered
/// with the SIGBUS handler for as long as it lives. Dereferences to the
/// [`Mmap`].
pub struct ImageMap {
    map: Mmap,
    /// Kept open: repairs map the file again from it.
    _file: Option<File>,
    /// The name the handler prints (its pointer is in the slot).
    _name: CString,
    slot: Option<usize>,
}

impl std::fmt::Debug for ImageMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageMap")
            .field("len", &self.map.len())
            .field("slot", &self.slot)
            .finish()
    }
}

impl ImageMap {
    /// Maps `len` bytes of `file` (named `path` in errors) read-only and
    /// registers the map.
    pub fn map(file: &File, path: &Path, len: u64) -> crate::Result<Self> {
        let len = usize::try_from(len)
            .map_err(|_| Error::Invalid(format!("{}: too large to map", path.display())))?;
        let map = crate::mmap::map_file(file, path, len)?;
        let name = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
        let file = file.try_clone().map_err(|e| Error::io(path, e))?;
        let slot = if map.is_empty() {
            None
        } else {
            register(map.as_ptr() as usize, map.len(), file.as_raw_fd(), &name)
        };
        if slot.is_none() && !map.is_empty() {
            tracing::warn!(
                "{}: more than {SLOTS} files mapped; this one is not protected against shrinking",
                path.display()
            );
        }
        Ok(Self {
            map,
            _file: Some(file),
            _name: name,
            slot,
        })
    }

    /// Gives the whole map `advice` (as [`Mmap::advise`]), remembered for
    /// pages mapped back after a fault. At most two pieces of advice are
    /// remembered.
    pub fn advise(&self, advice: Advice) -> std::io::Result<()> {
        self.map.advise(advice)?;
        if let (Some(slot), Some(raw)) = (self.slot, lasting_advice(advice)) {
            let _lock = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(free) = TABLE[slot]
                .advice
                .iter()
                .find(|a| a.load(Ordering::Relaxed) == 0)
            {
                free.store(raw, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// An anonymous map (it cannot shrink, so it is not registered).
    pub fn anonymous(map: Mmap) -> Self {
        Self {
            map,
            _file: None,
            _name: CString::default(),
            slot: None,
        }
    }
}

impl std::ops::Deref for ImageMap {
    type Target = Mmap;
    fn deref(&self) -> &Mmap {
        &self.map
    }
}

impl Drop for ImageMap {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // Unregistered before the map (a field) is unmapped.
            let _lock = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            let s = &TABLE[slot];
            s.len.store(0, Ordering::Release);
            s.name.store(std::ptr::null_mut(), Ordering::Release);
            s.fd.store(-1, Ordering::Release);
            for advice in &s.advice {
                advice.store(0, Ordering::Relaxed);
            }
            s.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Claims a slot for `[start, start + len)`.
fn register(start: usize, len: usize, fd: i32, name: &CString) -> Option<usize> {
    let _lock = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let slot = TABLE
        .iter()
        .position(|s| s.len.load(Ordering::Acquire) == 0)?;
    let s = &TABLE[slot];
    s.start.store(start, Ordering::Relaxed);
    s.fd.store(fd, Ordering::Relaxed);
    s.name.store(name.as_ptr() as *mut _, Ordering::Relaxed);
    s.len.store(len, Ordering::Release);
    Some(slot)
}

/// Installs the SIGBUS handler (once per process; later calls do
/// nothing). Call it before mapping images, as the binary does at start.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sysconf and sigaction with valid arguments; the handler
        // only does async-signal-safe work (see the module comment).
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &new, &mut old) == 0 {
                let _ = PREVIOUS.set(old);
            }
        }
    });
}

/// The registered slot whose map holds `addr`.
fn find(addr: usize) -> Option<usize> {
    TABLE.iter().position(|s| {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Relaxed);
        len != 0 && addr >= start && addr - start < len
    })
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(slot) = find(addr) {
        if STATE.with(|s| s.depth.get()) > 0 {
            if patch(slot, addr) {
                return;
            }
        } else {
            exit_shrunk(slot);
        }
    }
    chain(sig, info, ctx);
}

/// Maps a zero page over the page holding `addr` of `slot`'s map and notes
/// it; false when the kernel refused.
fn patch(slot: usize, addr: usize) -> bool {
    let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
    let generation = TABLE[slot].generation.load(Ordering::Acquire);
    // Counted before the zeros are visible: a request that checks the
    // counters after reading them sees the fault.
    FAULTS.fetch_add(1, Ordering::SeqCst);
    PATCHED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the page lies in a live registered map that the faulting
    // access borrows; replacing it with a private zero page changes only
    // what that map reads until the thread maps the file back.
    let mapped = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            PAGE.load(Ordering::Relaxed),
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        PATCHED.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    STATE.with(|s| {
        s.faults.set(s.faults.get() + 1);
        let n = s.count.get();
        match s.patches.get(n) {
            Some(cell) => cell.set(Patch {
                slot,
                generation,
                page,
            }),
            None => s.overflow.set(true),
        }
        s.count.set(n + 1);
    });
    true
}

/// Prints which file shrank and exits: a fault outside any request.
fn exit_shrunk(slot: usize) -> ! {
    let name = TABLE[slot].name.load(Ordering::Acquire);
    let say = |bytes: &[u8]| {
        // SAFETY: write(2) of a valid buffer is async-signal-safe.
        unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
    };
    say(b"erofs-fuse: ");
    if !name.is_null() {
        // SAFETY: the slot's name is a NUL-terminated string owned by the
        // live map being read.
        let len = unsafe { libc::strlen(name) };
        // SAFETY: `len` bytes of that string, just measured.
        say(unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) });
    }
    say(b": the file shrank while being read (a page past its new end was read)\n");
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(1) }
}

/// Hands a fault that is not ours to the disposition found at install.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let previous = PREVIOUS.get();
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Back to the default action; the access faults again and the
        // process dies of SIGBUS, as it would have without us.
        // SAFETY: sigaction is async-signal-safe; a zeroed sigaction with
        // SIG_DFL is valid.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        }
        return;
    }
    let flags = previous.map_or(0, |p| p.sa_flags);
    // SAFETY: calling the previous handler as it was installed.
    unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

/// A watched request read a page past the end of a mapped file, or ran
/// while another thread had: what it read may hold zeros for missing bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk {
    /// The file this thread found shrunk, when it was this thread.
    pub path: Option<PathBuf>,
}

impl From<Shrunk> for Error {
    fn from(shrunk: Shrunk) -> Self {
        let what = "the file shrank while being read (a page past its new end was read)";
        match shrunk.path {
            Some(path) => Error::io(path, std::io::Error::other(what)),
            None => Error::io(
                "image",
                std::io::Error::other(
                    "a file of the image shrank while this request was being read",
                ),
            ),
        }
    }
}

/// Runs `f`, which reads mapped files, and fails with [`Shrunk`] when
/// any page it may have read was past the end of its file: touched by this
/// thread (the handler patched zeros in), or patched by another thread
/// while `f` ran. Pages this thread patched are mapped back from their
/// files when the outermost `watch` returns.
pub fn watch<R>(f: impl FnOnce() -> R) -> Result<R, Shrunk> {
    let before = FAULTS.load(Ordering::SeqCst);
    let patched_before = PATCHED.load(Ordering::SeqCst);
    let (mine_before, depth) = STATE.with(|s| (s.faults.get(), s.depth.get()));
    STATE.with(|s| s.depth.set(depth + 1));
    let result = f();
    STATE.with(|s| s.depth.set(depth));
    let after = FAULTS.load(Ordering::SeqCst);
    let patched_after = PATCHED.load(Ordering::SeqCst);
    let mine = STATE.with(|s| s.faults.get()) - mine_before;
    let path = if mine > 0 { last_path() } else { None };
    if depth == 0 {
        repair();
    }
    if mine > 0 {
        return Err(Shrunk { path });
    }
    if after != before || patched_before > 0 || patched_after > 0 {
        return Err(Shrunk { path: None });
    }
    Ok(result)
}

/// How many SIGBUS faults on registered maps were handled so far.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::SeqCst)
}

/// The file of the last page this thread patched, if its map is still
/// registered.
fn last_path() -> Option<PathBuf> {
    let n = STATE.with(|s| s.count.get());
    let patch = STATE.with(|s| {
        s.patches
            .get(n.checked_sub(1)?.min(RECORDS - 1))
            .map(Cell::get)
    })?;
    let _lock = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let s = &TABLE[patch.slot];
    let name = s.name.load(Ordering::Acquire);
    if s.generation.load(Ordering::Acquire) != patch.generation || name.is_null() {
        return None;
    }
    // SAFETY: the slot's name is a NUL-terminated string owned by its
    // map, alive while the slot is registered (the lock is held).
    let name = unsafe { std::ffi::CStr::from_ptr(name) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
}

/// Maps the files back over the pages this thread patched (every
/// registered map whole, when it patched more than it could note).
fn repair() {
    let (count, overflow) = STATE.with(|s| (s.count.get(), s.overflow.get()));
    if count == 0 {
        return;
    }
    let page_size = PAGE.load(Ordering::Relaxed);
    let _lock = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let mut repaired = true;
    if overflow {
        for s in &TABLE {
            let len = s.len.load(Ordering::Acquire);
            if len != 0 {
                repaired &= remap(s, s.start.load(Ordering::Relaxed), len);
            }
        }
    } else {
        for i in 0..count {
            let patch = STATE.with(|s| s.patches[i].get());
            let s = &TABLE[patch.slot];
            if s.len.load(Ordering::Acquire) != 0
                && s.generation.load(Ordering::Acquire) == patch.generation
            {
                repaired &= remap(s, patch.page, page_size);
            }
        }
    }
    STATE.with(|s| {
        s.count.set(0);
        s.overflow.set(false);
    });
    if repaired {
        PATCHED.fetch_sub(count as u64, Ordering::SeqCst);
    } else {
        // A page of zeros stays: every watched request fails from now on
        // rather than risk reading it as the file's bytes.
        tracing::error!(
            "a page of an image map could not be mapped back: every read fails from now on"
        );
    }
}

/// Maps `[at, at + len)` of slot `s`'s map from its file again, with the
/// map's advice; false when the kernel refused. Called with [`REGISTRY`]
/// held, so the map cannot be unmapped meanwhile.
fn remap(s: &Slot, at: usize, len: usize) -> bool {
    let start = s.start.load(Ordering::Relaxed);
    let fd = s.fd.load(Ordering::Acquire);
    // SAFETY: `[at, at + len)` lies in a registered map, alive while the
    // lock is held; mapping the same file at the same offset read-only
    // gives back exactly what the map showed before the patch.
    let mapped = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd,
            (at - start) as libc::off_t,
        )
    };
    if mapped == libc::MAP_FAILED {
        tracing::error!(
            "could not map a file back over a page patched after a bus error: {}",
            std::io::Error::last_os_error()
        );
        return false;
    }
    for advice in &s.advice {
        let advice = advice.load(Ordering::Relaxed);
        if advice != 0 {
            // SAFETY: advice on the range just mapped; only a hint.
            unsafe { libc::madvise(at as *mut libc::c_void, len, advice) };
        }
    }
    true
}
