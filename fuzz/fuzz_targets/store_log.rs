#![no_main]
//! libFuzzer target: see `src/store_log.rs` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sessiond_fuzz::store_log::run(data);
});
