//! The `image` fuzz target: see `fuzz/targets/image.rs`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::image::run(data));
