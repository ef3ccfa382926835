//! `ws_frames`: the WebSocket client-frame decoders `decode_text` (JSON) and `decode_binary`
//! (MessagePack) of `src/ws/frames.rs`, compiled in unchanged. Every input goes to both.
//!
//! Invariants (a violation panics):
//!
//! - neither decoder panics;
//! - an error is the client-facing message `expected a JSON object …` / `expected a
//!   MessagePack object …`, at most [`MAX_ERROR_BYTES`] bytes (the decoder's own text is cut
//!   at 200 characters), and it never quotes the value of a `token` member;
//! - JSON and MessagePack agree: a text frame that decodes, turned into the same document as
//!   MessagePack (`to_vec_named`, as clients do), decodes to the same frame as a binary frame;
//!   and a binary frame that decodes, turned into JSON, decodes to the same frame as text;
//! - a binary frame that decodes is one MessagePack value with nothing after it (the JSON
//!   decoder refuses trailing characters).
//!
//! Findings F1 (an integer `type` accepted as a variant index) and F2 (trailing bytes accepted)
//! were found here in `decode_binary` and fixed in commit d100ff4; their inputs are in
//! `regressions/ws_frames/` and every invariant above is checked without exception.

use serde_json::Value;

use crate::frames::{ClientFrame, decode_binary, decode_text};

/// The longest error message: the fixed prefix plus 200 characters of up to 4 bytes each.
pub const MAX_ERROR_BYTES: usize = 100 + 200 * 4;

fn check_error(err: &str, kind: &str, token: Option<&str>) {
    let prefix = format!("expected a {kind} object with a known \"type\" (ping, refresh): ");
    assert!(err.starts_with(&prefix), "unexpected error text: {err:?}");
    assert!(err.len() <= MAX_ERROR_BYTES, "error of {} bytes", err.len());
    if let Some(t) = token {
        assert!(!err.contains(t), "the error quotes the token {t:?}: {err:?}");
    }
}

/// The `token` member's value when it is a string of 8+ characters that occurs only once in
/// the input (so that the error can only have it from that member).
fn token_of(doc: &Value, data: &[u8]) -> Option<String> {
    let t = doc.get("token")?.as_str()?;
    if t.len() < 8 {
        return None;
    }
    let n = data.windows(t.len()).filter(|w| *w == t.as_bytes()).count();
    (n == 1).then(|| t.to_owned())
}

/// The bytes left after the first MessagePack value (`None`: not one value).
fn msgpack_rest(data: &[u8]) -> Option<usize> {
    let mut rest = data;
    rmp_serde::from_read::<_, serde::de::IgnoredAny>(&mut rest).ok()?;
    Some(rest.len())
}

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    let text = decode_text(data);
    let binary = decode_binary(data);
    let as_json = serde_json::from_slice::<Value>(data).ok();
    let as_msgpack = rmp_serde::from_slice::<Value>(data).ok();

    match &text {
        Err(e) => {
            let token = as_json.as_ref().and_then(|d| token_of(d, data));
            check_error(e, "JSON", token.as_deref());
        }
        Ok(frame) => {
            if let Some(doc) = &as_json {
                let bytes = match rmp_serde::to_vec_named(doc) {
                    Ok(b) => b,
                    Err(e) => panic!("a JSON document does not encode as MessagePack: {e}"),
                };
                assert_eq!(
                    decode_binary(&bytes).as_ref(),
                    Ok(frame),
                    "JSON and MessagePack disagree on {doc}"
                );
            }
            check_frame(frame);
        }
    }
    match &binary {
        Err(e) => {
            let token = as_msgpack.as_ref().and_then(|d| token_of(d, data));
            check_error(e, "MessagePack", token.as_deref());
        }
        Ok(frame) => {
            let rest = msgpack_rest(data);
            assert!(rest.is_some(), "decode_binary accepted what is not one MessagePack value");
            assert_eq!(rest, Some(0), "F2: decode_binary accepts trailing bytes");
            if let Some(doc) = &as_msgpack {
                let json = match serde_json::to_vec(doc) {
                    Ok(j) => j,
                    Err(e) => panic!("a MessagePack document does not encode as JSON: {e}"),
                };
                assert_eq!(
                    decode_text(&json).as_ref(),
                    Ok(frame),
                    "MessagePack and JSON disagree on {doc}"
                );
            }
            check_frame(frame);
        }
    }
}

fn check_frame(frame: &ClientFrame) {
    match frame {
        ClientFrame::Ping => {}
        // Any string is a syntactically valid refresh; the verifier judges the token.
        ClientFrame::Refresh { token } => assert!(token.len() <= 1 << 24),
    }
}
