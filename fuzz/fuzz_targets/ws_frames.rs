#![no_main]
//! libFuzzer target: see `src/ws_frames.rs` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sessiond_fuzz::ws_frames::run(data);
});
