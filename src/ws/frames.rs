//! The WebSocket protocol's frames (CONTRACT.md section 5): server → client and client →
//! server, as JSON text or as MessagePack binary with the same field names (rmp-serde
//! `to_vec_named`: maps, not arrays).

use serde::{Deserialize, Serialize};
use sessiond_actors::domain::AuthEvent;

/// The subprotocol of JSON text frames (also what a client that names no subprotocol gets).
pub const PROTOCOL_JSON: &str = "sessiond.v1";
/// The subprotocol of MessagePack binary frames.
pub const PROTOCOL_MSGPACK: &str = "sessiond.v1.msgpack";

/// How a connection's server frames are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JSON text frames (`sessiond.v1`, or no subprotocol).
    Json,
    /// MessagePack binary frames (`sessiond.v1.msgpack`).
    MsgPack,
}

impl Encoding {
    /// The encoding a subprotocol name stands for.
    pub fn from_protocol(name: &str) -> Option<Encoding> {
        match name {
            PROTOCOL_JSON => Some(Encoding::Json),
            PROTOCOL_MSGPACK => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// The subprotocol name.
    pub fn protocol(self) -> &'static str {
        match self {
            Encoding::Json => PROTOCOL_JSON,
            Encoding::MsgPack => PROTOCOL_MSGPACK,
        }
    }
}

/// A server → client frame. Borrowed: a frame is encoded once and dropped.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The first frame of every connection.
    Welcome {
        /// Unique across instances.
        connection_id: &'a str,
        /// The token's session id.
        session_id: &'a str,
        /// The token's user id.
        user_id: &'a str,
        /// `normal` or `degraded`: which path validated the handshake.
        mode: &'a str,
        /// When the connection will be closed with 4002 unless refreshed (Unix seconds).
        expires_at: i64,
        /// How often the server pings.
        heartbeat_interval_ms: u64,
    },
    /// An auth event.
    Event {
        /// Unique across instances.
        id: &'a str,
        /// e.g. `session.revoked`.
        event: &'a str,
        /// The session concerned (`null` for `service.*`).
        session_id: Option<&'a str>,
        /// The user concerned (`null` for `service.*`).
        user_id: Option<&'a str>,
        /// When it was raised, Unix milliseconds.
        at_ms: i64,
        /// Event-specific details.
        data: &'a serde_json::Value,
    },
    /// The answer to a `ping` message.
    Pong,
    /// A `refresh` message was accepted.
    Reauthenticated {
        /// The connection's new expiry (Unix seconds).
        expires_at: i64,
    },
    /// A client message was refused.
    Error {
        /// A contract error code (`bad_request`).
        code: &'a str,
        /// What was wrong (never quotes a token).
        message: &'a str,
    },
}

impl<'a> ServerFrame<'a> {
    /// The `event` frame of an auth event.
    pub fn event(e: &'a AuthEvent) -> Self {
        ServerFrame::Event {
            id: &e.id,
            event: e.event.as_str(),
            session_id: e.session_id.as_deref(),
            user_id: e.user_id.as_deref(),
            at_ms: e.at_ms,
            data: &e.data,
        }
    }
}

/// An encoded server frame, ready for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// A text frame (JSON).
    Text(String),
    /// A binary frame (MessagePack).
    Binary(Vec<u8>),
}

/// Encodes a server frame. Fails only on a bug (every field is serializable).
pub fn encode(frame: &ServerFrame<'_>, encoding: Encoding) -> Result<Encoded, String> {
    match encoding {
        Encoding::Json => {
            serde_json::to_string(frame).map(Encoded::Text).map_err(|e| e.to_string())
        }
        Encoding::MsgPack => {
            rmp_serde::to_vec_named(frame).map(Encoded::Binary).map_err(|e| e.to_string())
        }
    }
}

/// A client → server message.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Answered with `pong`.
    Ping,
    /// Re-authenticate with a new token of the same user.
    Refresh {
        /// The compact JWS.
        token: String,
    },
}

/// The longest decode error quoted back to a client.
const MAX_ERROR_CHARS: usize = 200;

/// Decodes a client text frame (JSON). The error is a message for the client's `error` frame.
pub fn decode_text(bytes: &[u8]) -> Result<ClientFrame, String> {
    // Serde would also take the sequence form `["ping"]`; the protocol has objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(describe("JSON", "not an object"));
    }
    serde_json::from_slice(bytes).map_err(|e| describe("JSON", &e.to_string()))
}

/// Decodes a client binary frame (MessagePack).
pub fn decode_binary(bytes: &[u8]) -> Result<ClientFrame, String> {
    // fixmap, map 16, map 32: the protocol has maps only.
    if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return Err(describe("MessagePack", "not a map"));
    }
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    let frame =
        ClientFrame::deserialize(&mut de).map_err(|e| describe("MessagePack", &e.to_string()))?;
    // One map and nothing after it (the JSON decoder refuses trailing characters too; fuzz
    // finding F2).
    if de.position() != bytes.len() as u64 {
        return Err(describe("MessagePack", "trailing bytes after the map"));
    }
    // serde would also take a variant index (`"type": 0`) for the tag; the protocol has names
    // (fuzz finding F1).
    #[derive(serde::Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        _kind: String,
    }
    rmp_serde::from_slice::<Tag>(bytes).map_err(|e| describe("MessagePack", &e.to_string()))?;
    Ok(frame)
}

fn describe(kind: &str, err: &str) -> String {
    let err: String = err.chars().take(MAX_ERROR_CHARS).collect();
    format!("expected a {kind} object with a known \"type\" (ping, refresh): {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz findings F1 and F2 (fuzz/README.md): MessagePack frames must be refused where the
    /// JSON decoder refuses the same document.
    #[test]
    fn msgpack_frames_are_as_strict_as_json() {
        // {"type": 0}: a variant index instead of a name.
        assert!(decode_binary(&[0x81, 0xa4, b't', b'y', b'p', b'e', 0x00]).is_err());
        assert!(decode_text(br#"{"type": 0}"#).is_err());
        // {"type": "ping"} followed by garbage.
        let mut ping = vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g'];
        assert!(decode_binary(&ping).is_ok());
        ping.extend_from_slice(&[0xc1, 0xc1, b'x']);
        assert!(decode_binary(&ping).is_err());
        for f in [
            "F1-msgpack-integer-type-minimized",
            "F1-msgpack-integer-type-crash-7a26bb04",
            "F2-msgpack-trailing-bytes",
        ] {
            let path = format!("{}/fuzz/regressions/ws_frames/{f}", env!("CARGO_MANIFEST_DIR"));
            let bytes = std::fs::read(&path).unwrap();
            assert!(decode_binary(&bytes).is_err(), "{f} must be refused");
        }
    }
    use serde_json::{Value, json};
    use sessiond_actors::domain::EventKind;

    /// Both encodings of a frame, decoded back to generic values.
    fn both(frame: &ServerFrame<'_>) -> (Value, Value) {
        let Encoded::Text(text) = encode(frame, Encoding::Json).unwrap() else {
            panic!("JSON must be a text frame")
        };
        let Encoded::Binary(bin) = encode(frame, Encoding::MsgPack).unwrap() else {
            panic!("MessagePack must be a binary frame")
        };
        let from_json: Value = serde_json::from_str(&text).unwrap();
        let from_msgpack: Value = rmp_serde::from_slice(&bin).unwrap();
        (from_json, from_msgpack)
    }

    #[test]
    fn server_frames_have_the_contract_shapes_in_both_encodings() {
        let data = json!({"expires_at": 1764307200, "nested": {"list": [1, "two", null]}});
        let event = AuthEvent {
            id: "abc-7".into(),
            event: EventKind::SessionRefreshed,
            session_id: Some("s-1".into()),
            user_id: Some("42".into()),
            at_ms: 1_764_300_000_123,
            data,
        };
        let service = AuthEvent {
            id: "abc-8".into(),
            event: EventKind::ServiceDegraded,
            session_id: None,
            user_id: None,
            at_ms: 5,
            data: json!({"reason": "x"}),
        };
        let cases = [
            (
                ServerFrame::Welcome {
                    connection_id: "abc-w1",
                    session_id: "s-1",
                    user_id: "42",
                    mode: "normal",
                    expires_at: 1_764_303_600,
                    heartbeat_interval_ms: 15_000,
                },
                json!({"type": "welcome", "connection_id": "abc-w1", "session_id": "s-1",
                       "user_id": "42", "mode": "normal", "expires_at": 1_764_303_600_i64,
                       "heartbeat_interval_ms": 15000}),
            ),
            (
                ServerFrame::event(&event),
                json!({"type": "event", "id": "abc-7", "event": "session.refreshed",
                       "session_id": "s-1", "user_id": "42", "at_ms": 1_764_300_000_123_i64,
                       "data": {"expires_at": 1764307200, "nested": {"list": [1, "two", null]}}}),
            ),
            (
                ServerFrame::event(&service),
                json!({"type": "event", "id": "abc-8", "event": "service.degraded",
                       "session_id": null, "user_id": null, "at_ms": 5,
                       "data": {"reason": "x"}}),
            ),
            (ServerFrame::Pong, json!({"type": "pong"})),
            (
                ServerFrame::Reauthenticated { expires_at: 1_764_307_200 },
                json!({"type": "reauthenticated", "expires_at": 1_764_307_200_i64}),
            ),
            (
                ServerFrame::Error { code: "bad_request", message: "no" },
                json!({"type": "error", "code": "bad_request", "message": "no"}),
            ),
        ];
        for (frame, want) in cases {
            let (from_json, from_msgpack) = both(&frame);
            assert_eq!(from_json, want, "JSON of {frame:?}");
            assert_eq!(from_msgpack, want, "MessagePack of {frame:?}");
        }
    }

    #[test]
    fn msgpack_frames_are_maps_with_field_names() {
        let Encoded::Binary(bin) = encode(&ServerFrame::Pong, Encoding::MsgPack).unwrap() else {
            panic!()
        };
        // fixmap of one entry: "type" → "pong".
        assert_eq!(bin, b"\x81\xa4type\xa4pong");
    }

    #[test]
    fn client_frames_decode_from_json_and_msgpack() {
        assert_eq!(decode_text(br#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(decode_text(br#"{"type":"ping","extra":1}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            decode_text(br#"{"token":"t.t.t","type":"refresh"}"#),
            Ok(ClientFrame::Refresh { token: "t.t.t".into() })
        );
        let ping = rmp_serde::to_vec_named(&json!({"type": "ping"})).unwrap();
        assert_eq!(decode_binary(&ping), Ok(ClientFrame::Ping));
        let refresh =
            rmp_serde::to_vec_named(&json!({"type": "refresh", "token": "a.b.c"})).unwrap();
        assert_eq!(decode_binary(&refresh), Ok(ClientFrame::Refresh { token: "a.b.c".into() }));
    }

    #[test]
    fn garbage_and_unknown_types_are_refused_with_a_message() {
        for bad in [
            &b"not json"[..],
            br#"{"type":"pong"}"#,
            br#"{"type":"refresh"}"#,
            br#"{"no_type":1}"#,
            br#"["ping"]"#,
            b"",
        ] {
            let e = decode_text(bad).unwrap_err();
            assert!(e.starts_with("expected a JSON object"), "{e}");
            assert!(e.len() < 400);
        }
        assert!(decode_binary(b"\xc1").is_err());
        let seq = rmp_serde::to_vec(&("ping",)).unwrap();
        assert!(decode_binary(&seq).is_err(), "the sequence form is not a message");
        assert!(decode_binary(br#"{"type":"ping"}"#).is_err(), "JSON is not MessagePack");
        let unknown = rmp_serde::to_vec_named(&json!({"type": "subscribe"})).unwrap();
        assert!(decode_binary(&unknown).unwrap_err().starts_with("expected a MessagePack object"));
    }

    #[test]
    fn protocols_name_encodings() {
        assert_eq!(Encoding::from_protocol("sessiond.v1"), Some(Encoding::Json));
        assert_eq!(Encoding::from_protocol("sessiond.v1.msgpack"), Some(Encoding::MsgPack));
        assert_eq!(Encoding::from_protocol("bearer.x"), None);
        assert_eq!(Encoding::MsgPack.protocol(), PROTOCOL_MSGPACK);
    }
}
