//! The harnesses of the fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/*.rs`)
//! and by the stable replay test (`tests/replay.rs`), which runs every seed and every saved
//! regression input through the same code without libFuzzer.
//!
//! Two daemon sources are compiled in here unchanged, through `#[path]`, because the functions
//! to fuzz are not reachable from outside their crates:
//!
//! - `src/ws/frames.rs` (the WebSocket frame decoders live in the `sessiond` binary crate,
//!   which cannot be imported): its only crate-external import is
//!   `sessiond_actors::domain::AuthEvent`, which resolves as is.
//! - `actors/src/store/record.rs` (`decode_payload`, `parse_frame_header` and the frame
//!   helpers are in the private `store::record` module): it imports
//!   `crate::domain::{TokenFormat, UnixSeconds}`, provided by the [`domain`] shim below.
//!
//! Both are compiled without `cfg(test)` by the fuzz targets and the replay test, so their own
//! unit tests are not built here.

pub mod store_log;
pub mod token_verify;
pub mod ws_frames;

/// Shim so that `crate::domain::…` in the included `record.rs` resolves.
pub mod domain {
    pub use sessiond_actors::domain::{TokenFormat, UnixSeconds};
}

/// `actors/src/store/record.rs`, unchanged.
#[path = "../../actors/src/store/record.rs"]
#[allow(dead_code, clippy::all)]
pub mod record;

/// `src/ws/frames.rs`, unchanged.
#[path = "../../src/ws/frames.rs"]
#[allow(dead_code, clippy::all)]
pub mod frames;

/// Splits `data` on every occurrence of `sep` (like `str::split`, keeping empty pieces).
pub fn split_on<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= data.len() {
        if &data[i..i + sep.len()] == sep {
            out.push(&data[start..i]);
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}
