//! The `convert` fuzz target: see `fuzz/targets/convert.rs`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::convert::run(data));
