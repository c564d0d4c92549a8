//! The `nydus` fuzz target: see `fuzz/targets/nydus.rs`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::nydus::run(data));
