//! A safe wrapper around zlib's inflate (libz-rs-sys: zlib-rs, pure Rust,
//! behind the C API), for the three things gzip random access needs and
//! flate2 does not expose: `inflatePrime` (a checkpoint that starts inside
//! a byte), `Z_BLOCK` stops with `data_type` (where deflate blocks end) and
//! a preset dictionary on a raw stream.
//!
//! Every call hands zlib pointers to live slices with their exact lengths
//! and clears them before returning, so no pointer outlives its borrow.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, CStr};

use libz_rs_sys as z;

/// Raw deflate, 32 KiB window.
pub(super) const RAW: c_int = -15;
/// gzip wrapper (header and CRC-32/ISIZE trailer checked), 32 KiB window.
pub(super) const GZIP: c_int = 31;

/// `data_type` bit: inflate stopped at a block boundary (zlib's mode TYPE).
pub(super) const AT_BOUNDARY: c_int = 128;
/// `data_type` bit: the block just ended was the stream's last.
pub(super) const LAST_BLOCK: c_int = 64;
/// `data_type` bits: bits of input held in inflate's bit buffer.
pub(super) const HELD_BITS: c_int = 63;

/// What one [`Inflater::inflate`] call did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes written.
    pub produced: usize,
    /// The deflate stream (raw) or the gzip member (with its trailer) ended.
    pub end: bool,
    /// zlib's `data_type` after the call.
    pub data_type: c_int,
}

/// An inflate stream.
pub(super) struct Inflater {
    // Boxed: zlib's state keeps no pointer to it, but a fixed address costs
    // nothing and matches how the C API is meant to be used.
    strm: Box<z::z_stream>,
}

// SAFETY: the stream owns its state (allocated by zlib-rs with the Rust
// allocator) exclusively; no pointer in it refers to thread-local data, and
// next_in/next_out are null between calls.
unsafe impl Send for Inflater {}

impl Inflater {
    /// A new stream, raw ([`RAW`]) or gzip ([`GZIP`]).
    pub fn new(window_bits: c_int) -> Result<Self, String> {
        let mut strm = Box::new(z::z_stream::default());
        let size = std::mem::size_of::<z::z_stream>() as c_int;
        // SAFETY: strm is a valid, exclusively borrowed z_stream whose
        // allocator fields are unset (zlib-rs then uses the Rust
        // allocator); the version string is the library's own.
        let ret = unsafe { z::inflateInit2_(&mut *strm, window_bits, z::zlibVersion(), size) };
        if ret != z::Z_OK {
            return Err(format!("inflate could not start (zlib code {ret})"));
        }
        Ok(Self { strm })
    }

    /// Starts a new stream of kind `window_bits`, keeping the allocation.
    pub fn reset(&mut self, window_bits: c_int) -> Result<(), String> {
        // SAFETY: the stream was initialized by inflateInit2_.
        let ret = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        self.check(ret, "reset")
    }

    /// Feeds the low `bits` bits of `value` before the next input byte.
    pub fn prime(&mut self, bits: u8, value: u8) -> Result<(), String> {
        // SAFETY: the stream was initialized by inflateInit2_.
        let ret =
            unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
        self.check(ret, "prime")
    }

    /// Sets the history a raw stream's first matches may refer to.
    pub fn set_dictionary(&mut self, dictionary: &[u8]) -> Result<(), String> {
        let len = c_uint::try_from(dictionary.len()).map_err(|_| "dictionary too long")?;
        // SAFETY: the pointer and length describe a live slice, only read
        // during the call.
        let ret = unsafe { z::inflateSetDictionary(&mut *self.strm, dictionary.as_ptr(), len) };
        self.check(ret, "set the dictionary")
    }

    /// Inflates from `input` into `output`, stopping at the next block
    /// boundary too if `block` (zlib's `Z_BLOCK`).
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        block: bool,
    ) -> Result<Step, String> {
        let in_len = input.len().min(c_uint::MAX as usize);
        let out_len = output.len().min(c_uint::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = in_len as c_uint;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as c_uint;
        let flush = if block { z::Z_BLOCK } else { z::Z_NO_FLUSH };
        // SAFETY: next_in/avail_in and next_out/avail_out describe live
        // slices (read-only input, exclusively borrowed output) for the
        // duration of the call; the stream was initialized.
        let ret = unsafe { z::inflate(&mut *self.strm, flush) };
        let step = Step {
            consumed: in_len - self.strm.avail_in as usize,
            produced: out_len - self.strm.avail_out as usize,
            end: ret == z::Z_STREAM_END,
            data_type: self.strm.data_type,
        };
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        match ret {
            z::Z_OK | z::Z_STREAM_END | z::Z_BUF_ERROR => Ok(step),
            z::Z_NEED_DICT => Err("the deflate stream asks for a dictionary".into()),
            _ => Err(self.message(ret)),
        }
    }

    /// `Ok` for `Z_OK`, else an error saying what failed.
    fn check(&self, ret: c_int, what: &str) -> Result<(), String> {
        match ret {
            z::Z_OK => Ok(()),
            _ => Err(format!("inflate could not {what}: {}", self.message(ret))),
        }
    }

    /// zlib's message for the last error, or the code.
    fn message(&self, ret: c_int) -> String {
        if self.strm.msg.is_null() {
            return format!("zlib error {ret}");
        }
        // SAFETY: zlib-rs sets msg only to its own static NUL-terminated
        // strings.
        let msg = unsafe { CStr::from_ptr(self.strm.msg) };
        msg.to_string_lossy().into_owned()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialized and is ended once.
        unsafe { z::inflateEnd(&mut *self.strm) };
    }
}
