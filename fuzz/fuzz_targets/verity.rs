//! The `verity` fuzz target: see `fuzz/targets/verity.rs`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::verity::run(data));
