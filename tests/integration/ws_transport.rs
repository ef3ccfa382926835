//! The WebSocket transport beneath the protocol: the daemon takes the socket out of
//! actix-http's dispatcher at the upgrade and frames it itself. What a client must not be able
//! to tell: an upgrade request to any other path gets the App's usual answer; fragmented
//! messages are aggregated; a frame split across TCP reads, or sent in the same write as the
//! handshake, is read whole; a WebSocket ping gets a pong with its payload; a client's close
//! gets the close reply and then the end of the connection.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Config, Daemon};
use crate::ws_client::*;

/// A request with `Upgrade: websocket` to `path`, raw; returns the whole answer (the server
/// must close the connection after it).
fn raw_upgrade_request(d: &Daemon, method: &str, path: &str, id: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         X-Request-Id: {id}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{method} {path}: no EOF after the answer: {e}"));
    String::from_utf8(out).unwrap()
}

/// The status, lower-cased head and body of a raw answer.
fn split_answer(raw: &str) -> (u16, String, Value) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {raw:?}"));
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn ws_upgrade_requests_to_other_paths_get_the_apps_answer() {
    let d = Daemon::start(Config::default());
    let (status, head, body) = split_answer(&raw_upgrade_request(&d, "GET", "/nope", "up-1"));
    assert_eq!(status, 404, "{head}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert_eq!(body["error"]["request_id"], "up-1", "{body}");
    assert!(head.contains("\r\nx-request-id: up-1"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");

    let (status, head, body) = split_answer(&raw_upgrade_request(&d, "POST", "/ws", "up-2"));
    assert_eq!(status, 404, "{head}");
    assert_eq!(body["error"]["message"], "no such route: POST /ws", "{body}");

    let (status, head, body) = split_answer(&raw_upgrade_request(&d, "GET", "/livez", "up-3"));
    assert_eq!(status, 200, "{head}");
    assert!(body.is_object(), "{body}");
    assert!(head.contains("\r\nx-request-id: up-3"), "{head}");

    // Without a token, the WebSocket path itself answers 401 and does not upgrade.
    let (status, head, body) = split_answer(&raw_upgrade_request(&d, "GET", "/ws", "up-4"));
    assert_eq!(status, 401, "{head}");
    assert_eq!(body["error"]["code"], "token_missing", "{body}");
    assert!(!head.contains("upgrade: websocket"), "{head}");

    // And the daemon still serves ordinary requests on new connections.
    d.get("/livez").send().expect_status(200);
}

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | u8::try_from(n).unwrap()),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one (unmasked) server frame: opcode and payload.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            usize::try_from(u64::from_be_bytes(b)).unwrap()
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x0f, payload)
}

/// The next text frame's JSON, skipping pings.
fn read_text(s: &mut TcpStream) -> Value {
    loop {
        match read_frame(s) {
            (1, p) => return serde_json::from_slice(&p).unwrap(),
            (9, _) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// A raw upgraded connection that has read its welcome.
fn raw_open(d: &Daemon, token: &str) -> TcpStream {
    let mut ws = WsRequest::new(d).bearer(token).connect();
    ws.expect_welcome();
    let s = ws.into_tcp();
    s.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn ws_a_fragmented_message_is_aggregated() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "tr-1");
    let mut ws = WsRequest::new(&d).bearer(&token).connect();
    ws.expect_welcome();
    ws.send_fragmented_text(&[r#"{"ty"#, r#"pe":"#, r#""ping"}"#]);
    assert_eq!(ws.expect_msg("pong"), json!({"type": "pong"}));

    // Raw: a binary message in two frames with a WebSocket ping between them (control frames
    // may come inside a fragmented message).
    let mut s = raw_open(&d, &token);
    let mut bytes = client_frame(1, false, br#"{"type""#);
    bytes.extend(client_frame(9, true, b"mid"));
    bytes.extend(client_frame(0, true, br#":"ping"}"#));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut s), (10, b"mid".to_vec()));
    assert_eq!(read_text(&mut s), json!({"type": "pong"}));
}

#[test]
fn ws_a_frame_split_across_tcp_reads_is_read_whole() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "tr-2");
    let mut s = raw_open(&d, &token);
    // A frame longer than one read of the server (2 KiB) and within ws.max_message_bytes
    // (4096), written byte by byte at first.
    let pad = "x".repeat(3000);
    let text = format!(r#"{{"type":"ping","pad":"{pad}"}}"#);
    let frame = client_frame(1, true, text.as_bytes());
    for b in &frame[..8] {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for chunk in frame[8..].chunks(700) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    // An unknown field is refused as a bad message, or ignored: either way one frame came in
    // whole and the connection is alive; a plain ping proves it.
    let first = read_text(&mut s);
    assert!(first["type"] == "pong" || first["type"] == "error", "{first}");
    s.write_all(&client_frame(1, true, br#"{"type":"ping"}"#)).unwrap();
    let mut seen = read_text(&mut s);
    if seen["type"] == "error" {
        seen = read_text(&mut s);
    }
    assert_eq!(seen, json!({"type": "pong"}));
}

#[test]
fn ws_a_client_ping_gets_a_pong_with_its_payload() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "tr-3");
    let mut s = raw_open(&d, &token);
    for payload in [&b""[..], b"abc", &[7u8; 125][..]] {
        s.write_all(&client_frame(9, true, payload)).unwrap();
        assert_eq!(read_frame(&mut s), (10, payload.to_vec()));
    }
}

#[test]
fn ws_frames_sent_with_the_handshake_are_not_lost() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "tr-4");
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(client_frame(9, true, b"early"));
    bytes.extend(client_frame(1, true, br#"{"type":"ping"}"#));
    s.write_all(&bytes).unwrap();
    // The head, byte by byte so no frame byte is consumed with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut texts = Vec::new();
    let mut pong = None;
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while (texts.len() < 2 || pong.is_none()) && Instant::now() < deadline {
        match read_frame(&mut s) {
            (1, p) => texts.push(serde_json::from_slice::<Value>(&p).unwrap()),
            (10, p) => pong = Some(p),
            _ => {}
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"early"[..]));
    assert_eq!(texts[0]["type"], "welcome", "{texts:?}");
    assert_eq!(texts[1], json!({"type": "pong"}), "{texts:?}");
}

#[test]
fn ws_a_client_close_gets_the_reply_then_the_end_of_the_connection() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "tr-5");
    let mut s = raw_open(&d, &token);
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    s.write_all(&client_frame(8, true, &close)).unwrap();
    let (opcode, payload) = read_frame(&mut s);
    assert_eq!(opcode, 8);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    let mut rest = [0u8; 16];
    match s.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the end of the connection after the close, got {other:?}"),
    }
    wait_ws_connections(&d, 0.0, FRAME_TIMEOUT);
}
