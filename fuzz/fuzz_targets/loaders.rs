#![no_main]
//! `cargo +nightly fuzz run loaders`: see fuzz/harness.rs for what it exercises.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::loaders(data);
});
