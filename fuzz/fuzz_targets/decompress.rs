//! The `decompress` fuzz target: see `fuzz/targets/decompress.rs`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::decompress::run(data));
