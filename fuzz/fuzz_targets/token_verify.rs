#![no_main]
//! libFuzzer target: see `src/token_verify.rs` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sessiond_fuzz::token_verify::run(data);
});
