//! The bodies of the fuzz targets, as plain functions: the libFuzzer
//! binaries in `fuzz_targets/` call them, and `tests/it/fuzz_regressions.rs`
//! replays every input kept in `tests/fuzz-regressions/TARGET/` through
//! them in the normal test suite.
#![allow(dead_code)]

pub mod convert;
pub mod decompress;
pub mod image;
pub mod nydus;
pub mod stack;
pub mod verity;

use std::path::Path;
use std::sync::OnceLock;

/// A scratch directory for the files a target needs, on tmpfs when there
/// is one (the targets write a few files per input), made once per process.
pub fn workdir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::tempdir_in(base).expect("a scratch directory")
    })
    .path()
}
