//! The `stack` fuzz target: see `fuzz/targets/stack.rs`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::stack::run(data));
