//! A small blocking WebSocket client for the gateway tests (contract section 5), over
//! `tungstenite`: a handshake with any `Authorization`, `Sec-WebSocket-Protocol`, `Origin` and
//! `Cookie` headers; a refused handshake turned into the harness's `Resp` (status, headers,
//! whole body) so the contract's error checks apply; frames read with a deadline (a silent
//! server fails the test, it never hangs it), JSON text frames and MessagePack binary frames
//! both decoded to `serde_json::Value` (a minimal MessagePack codec is below: rmp-serde is not a
//! dev-dependency). Also the daemon-side helpers the WebSocket tests share: sessions, the
//! `sessiond_ws_connections` gauge and the daemon's RSS.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::client::Response;
use tungstenite::protocol::WebSocket;
use tungstenite::{Bytes, Error as WsError, Message};

use crate::harness::{Daemon, Resp, poll_until};
use crate::tokens::{enhanced, hs256};

/// How long a test waits for a frame it expects.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of the handshake (a daemon that never answers fails the test).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// The JSON subprotocol.
pub const V1: &str = "sessiond.v1";
/// The MessagePack subprotocol.
pub const V1_MSGPACK: &str = "sessiond.v1.msgpack";

/// A WebSocket handshake being built (`GET ws://127.0.0.1:PORT/ws` by default).
#[derive(Clone, Debug)]
pub struct WsRequest {
    port: u16,
    path: String,
    headers: Vec<(String, String)>,
    protocols: Vec<String>,
    recv_buffer: Option<usize>,
}

/// Why a handshake did not upgrade.
#[derive(Debug)]
pub enum Refused {
    /// The server answered with a non-101 HTTP response.
    Http(Box<Resp>),
    /// Anything else (transport error, a 101 that is not a valid upgrade, …).
    Other(String),
}

impl WsRequest {
    /// A handshake to this daemon's `/ws`.
    pub fn new(d: &Daemon) -> WsRequest {
        WsRequest::to_port(d.port)
    }

    /// A handshake to `127.0.0.1:port`, path `/ws`.
    pub fn to_port(port: u16) -> WsRequest {
        WsRequest {
            port,
            path: "/ws".to_string(),
            headers: Vec::new(),
            protocols: Vec::new(),
            recv_buffer: None,
        }
    }

    /// The request target (path and query).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn origin(self, origin: &str) -> Self {
        self.header("Origin", origin)
    }

    /// A raw `Cookie` header (`a=b; c=d`).
    pub fn cookie(self, cookie: &str) -> Self {
        self.header("Cookie", cookie)
    }

    /// `Sec-WebSocket-Protocol` entries, in this order.
    pub fn protocols(mut self, protocols: &[&str]) -> Self {
        self.protocols.extend(protocols.iter().map(|p| p.to_string()));
        self
    }

    /// `Sec-WebSocket-Protocol: bearer.<token>, <protocol>`.
    pub fn bearer_protocol(self, token: &str, protocol: &str) -> Self {
        let entry = format!("bearer.{token}");
        self.protocols(&[&entry, protocol])
    }

    /// Shrinks the client socket's receive buffer (`SO_RCVBUF`), so that a client that stops
    /// reading backs the server up after a few kilobytes instead of megabytes.
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }

    /// The handshake; `Err` when it did not upgrade.
    pub fn try_connect(self) -> Result<Ws, Refused> {
        let url = format!("ws://127.0.0.1:{}{}", self.port, self.path);
        let mut request =
            url.as_str().into_client_request().map_err(|e| Refused::Other(format!("{e}")))?;
        for (k, v) in &self.headers {
            let name = tungstenite::http::HeaderName::try_from(k.as_str()).unwrap();
            request.headers_mut().append(name, v.parse().unwrap());
        }
        if !self.protocols.is_empty() {
            let value = self.protocols.join(", ");
            request.headers_mut().append("Sec-WebSocket-Protocol", value.parse().unwrap());
        }
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| Refused::Other(format!("connect: {e}")))?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        if let Some(bytes) = self.recv_buffer {
            set_recv_buffer(&stream, bytes);
        }
        // A second handle on the socket, to read the rest of a refusal's body.
        let mut probe = stream.try_clone().unwrap();
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut result = tungstenite::client::client_with_config(request, stream, None);
        loop {
            match result {
                Ok((ws, response)) => return Ok(Ws::new(ws, response)),
                Err(HandshakeError::Interrupted(mid)) if Instant::now() < deadline => {
                    result = mid.handshake();
                }
                Err(HandshakeError::Interrupted(_)) => {
                    return Err(Refused::Other("handshake timed out".into()));
                }
                Err(HandshakeError::Failure(WsError::Http(response))) => {
                    return Err(Refused::Http(Box::new(refusal(
                        &self.path, &response, &mut probe,
                    ))));
                }
                Err(HandshakeError::Failure(e)) => return Err(Refused::Other(format!("{e}"))),
            }
        }
    }

    /// The handshake, which must upgrade.
    #[track_caller]
    pub fn connect(self) -> Ws {
        let what = self.describe();
        match self.try_connect() {
            Ok(ws) => ws,
            Err(Refused::Http(r)) => {
                panic!("{what}: no upgrade, HTTP {} {:?}: {}", r.status, r.headers, r.body)
            }
            Err(Refused::Other(e)) => panic!("{what}: no upgrade: {e}"),
        }
    }

    /// The handshake, which must be refused with an HTTP answer (returned).
    #[track_caller]
    pub fn refused(self) -> Resp {
        let what = self.describe();
        match self.try_connect() {
            Ok(mut ws) => {
                let first = ws.next(Duration::from_secs(2));
                panic!("{what}: expected a refusal, got an upgrade; first frame {first:?}")
            }
            Err(Refused::Http(r)) => *r,
            Err(Refused::Other(e)) => panic!("{what}: expected an HTTP refusal, got {e}"),
        }
    }

    /// The handshake, which must be refused with this contract error (status, code, body
    /// shape, request id, `WWW-Authenticate` for token errors). Returns the answer.
    #[track_caller]
    pub fn expect_refused(self, status: u16, code: &str) -> Resp {
        let what = self.describe();
        let r = self.refused();
        if let Err(e) = r.check_error(status, code) {
            panic!("{what}: {e}");
        }
        r
    }

    /// The request for messages, with tokens shortened.
    fn describe(&self) -> String {
        let short = |s: &str| {
            if s.len() > 40 { format!("{}…{}", &s[..20], &s[s.len() - 8..]) } else { s.into() }
        };
        let mut out = format!("GET {}", short(&self.path));
        for (k, v) in &self.headers {
            out.push_str(&format!(" [{k}: {}]", short(v)));
        }
        if !self.protocols.is_empty() {
            let p: Vec<String> = self.protocols.iter().map(|p| short(p)).collect();
            out.push_str(&format!(" [Sec-WebSocket-Protocol: {}]", p.join(", ")));
        }
        out
    }
}

/// The harness answer of a refused handshake, with the whole body (tungstenite keeps only
/// what it read with the head; the rest is read here up to `Content-Length`).
fn refusal(
    path: &str,
    response: &tungstenite::http::Response<Option<Vec<u8>>>,
    probe: &mut TcpStream,
) -> Resp {
    let mut body = response.body().clone().unwrap_or_default();
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(length) = length {
        let mut buf = [0u8; 4096];
        while body.len() < length {
            match probe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        body.truncate(length);
    }
    Resp {
        what: format!("GET {path} (WebSocket handshake)"),
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[allow(unsafe_code)]
fn set_recv_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap();
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap();
    // SAFETY: setsockopt(2) on a socket this process owns, with a pointer to a live c_int and
    // its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const value).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_RCVBUF) failed");
}

/// What a read brought.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame, parsed as JSON.
    Text(Value),
    /// A binary frame, decoded as MessagePack.
    Binary(Value),
    /// A close frame: its code (`None` for an empty close frame) and reason.
    Close(Option<u16>, String),
    /// Nothing within the timeout.
    Timeout,
    /// The connection ended without a close frame (or broke).
    Ended(String),
}

/// An upgraded connection.
pub struct Ws {
    ws: WebSocket<TcpStream>,
    /// The 101 answer.
    pub response: Response,
    /// The selected subprotocol, if any.
    pub protocol: Option<String>,
    /// WebSocket ping frames received so far (answered by tungstenite on the next read).
    pub pings: usize,
}

impl Ws {
    fn new(ws: WebSocket<TcpStream>, response: Response) -> Ws {
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Ws { ws, response, protocol, pings: 0 }
    }

    /// Whether MessagePack was selected.
    pub fn is_msgpack(&self) -> bool {
        self.protocol.as_deref() == Some(V1_MSGPACK)
    }

    /// The next frame within `timeout` (WebSocket pings and pongs are counted and skipped).
    pub fn next(&mut self, timeout: Duration) -> Incoming {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Incoming::Timeout;
            }
            let _ = self.ws.get_mut().set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let v = serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!("a text frame is not JSON ({e}): {:?}", text.as_str())
                    });
                    return Incoming::Text(v);
                }
                Ok(Message::Binary(bytes)) => {
                    let v = msgpack::decode(&bytes).unwrap_or_else(|e| {
                        panic!("a binary frame is not MessagePack ({e}): {:02x?}", &bytes[..])
                    });
                    return Incoming::Binary(v);
                }
                Ok(Message::Ping(_)) => self.pings += 1,
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    // Send tungstenite's close reply now (the server may wait for it).
                    let _ = self.ws.flush();
                    return match frame {
                        Some(f) => Incoming::Close(Some(u16::from(f.code)), f.reason.to_string()),
                        None => Incoming::Close(None, String::new()),
                    };
                }
                Err(WsError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Incoming::Ended(e.to_string()),
            }
        }
    }

    /// The next frame, which must be a message (text or binary, per the subprotocol).
    #[track_caller]
    pub fn expect_msg(&mut self, what: &str) -> Value {
        let incoming = self.next(FRAME_TIMEOUT);
        let msgpack = self.is_msgpack();
        match incoming {
            Incoming::Text(v) if !msgpack => v,
            Incoming::Binary(v) if msgpack => v,
            other => panic!(
                "{what}: expected a {} message, got {other:?}",
                if msgpack { "MessagePack" } else { "JSON" }
            ),
        }
    }

    /// The next frame, which must be the welcome; returns it.
    #[track_caller]
    pub fn expect_welcome(&mut self) -> Value {
        let v = self.expect_msg("welcome");
        assert_eq!(v["type"], json!("welcome"), "the first frame must be the welcome: {v}");
        v
    }

    /// The next frame, which must be the event `name` (with the contract's fields); returns it.
    #[track_caller]
    pub fn expect_event(&mut self, name: &str) -> Value {
        let v = self.expect_msg(&format!("event {name}"));
        assert_eq!(v["type"], json!("event"), "expected the event {name}, got {v}");
        assert_eq!(v["event"], json!(name), "expected the event {name}, got {v}");
        check_event_shape(&v);
        v
    }

    /// The next frame, which must be a close frame; returns its code.
    #[track_caller]
    pub fn expect_close(&mut self, what: &str) -> Option<u16> {
        match self.next(FRAME_TIMEOUT) {
            Incoming::Close(code, _) => code,
            other => panic!("{what}: expected a close frame, got {other:?}"),
        }
    }

    /// Messages until a close frame, the end of the connection or `timeout`; returns them and
    /// how it stopped (`Close`, `Ended` or `Timeout`).
    pub fn until_close(&mut self, timeout: Duration) -> (Vec<Value>, Incoming) {
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Incoming::Text(v) | Incoming::Binary(v) => messages.push(v),
                end => return (messages, end),
            }
        }
    }

    /// Every message within `duration` (the connection must stay open meanwhile).
    #[track_caller]
    pub fn quiet_for(&mut self, duration: Duration, what: &str) -> Vec<Value> {
        let (messages, end) = self.until_close(duration);
        assert_eq!(
            end,
            Incoming::Timeout,
            "{what}: the connection must stay open; got {end:?} after {messages:?}"
        );
        messages
    }

    /// Sends `{"type": "ping"}` and reads up to the `pong`; returns what came before it.
    #[track_caller]
    pub fn ping_barrier(&mut self, what: &str) -> Vec<Value> {
        self.send(&json!({"type": "ping"}));
        let deadline = Instant::now() + FRAME_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Incoming::Text(v) | Incoming::Binary(v) if v == json!({"type": "pong"}) => {
                    return before;
                }
                Incoming::Text(v) | Incoming::Binary(v) => before.push(v),
                other => {
                    panic!("{what}: no pong to a ping message; got {other:?} after {before:?}")
                }
            }
        }
    }

    /// Messages up to the event `name` (with the contract's fields); returns it and what came
    /// before. The connection must stay open and the event come within `FRAME_TIMEOUT`.
    #[track_caller]
    pub fn until_event(&mut self, name: &str) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Incoming::Text(v) | Incoming::Binary(v)
                    if v["type"] == "event" && v["event"] == name =>
                {
                    check_event_shape(&v);
                    return (v, before);
                }
                Incoming::Text(v) | Incoming::Binary(v) => before.push(v),
                other => panic!("no event {name}: got {other:?} after {before:?}"),
            }
        }
    }

    /// Sends a message in the connection's encoding (MessagePack when selected, else JSON).
    pub fn send(&mut self, message: &Value) {
        if self.is_msgpack() {
            self.send_binary(msgpack::encode(message));
        } else {
            self.send_text(&message.to_string());
        }
    }

    /// Sends a text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .unwrap_or_else(|e| panic!("cannot send a text frame: {e}"));
    }

    /// Sends a binary frame.
    pub fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .unwrap_or_else(|e| panic!("cannot send a binary frame: {e}"));
    }

    /// Sends one text message as several frames (the first text, the others continuations).
    pub fn send_fragmented_text(&mut self, parts: &[&str]) {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        for (i, part) in parts.iter().enumerate() {
            let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
            let frame = Frame::message(part.as_bytes().to_vec(), opcode, i + 1 == parts.len());
            self.ws
                .send(Message::Frame(frame))
                .unwrap_or_else(|e| panic!("cannot send fragment {i}: {e}"));
        }
    }

    /// A normal close from the client (1000), waiting (bounded) for the server's close reply.
    #[track_caller]
    pub fn close(&mut self) {
        self.ws.close(None).unwrap_or_else(|e| panic!("cannot send a close frame: {e}"));
        let (messages, end) = self.until_close(FRAME_TIMEOUT);
        assert!(
            matches!(end, Incoming::Close(..) | Incoming::Ended(_)),
            "no close reply: {end:?} after {messages:?}"
        );
    }

    /// The TCP stream, leaving tungstenite behind (for a client that must stay silent: raw
    /// reads never answer a ping).
    pub fn into_tcp(self) -> TcpStream {
        self.ws.into_inner()
    }
}

/// Asserts the contract's event frame: exactly `type`, `id`, `event`, `session_id`, `user_id`,
/// `at_ms`, `data`; a non-empty string id, an integer `at_ms` within a minute of now, an object
/// `data`.
#[track_caller]
pub fn check_event_shape(v: &Value) {
    let keys: Vec<&str> =
        v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["at_ms", "data", "event", "id", "session_id", "type", "user_id"],
        "event frame fields: {v}"
    );
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "event id: {v}");
    let at_ms = v["at_ms"].as_i64().unwrap_or_else(|| panic!("at_ms is not an integer: {v}"));
    assert!((at_ms - now_ms()).abs() < 60_000, "at_ms {at_ms} is not near now ({}): {v}", now_ms());
    assert!(v["data"].is_object(), "event data is not an object: {v}");
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

/// Reads raw bytes from a silent client's socket (never writing, so never answering a ping)
/// until the server ends the connection: EOF, a reset, or a close frame. Returns the close
/// code if a close frame came, or `Err` when nothing ended within `limit`.
pub fn raw_wait_end(stream: &mut TcpStream, limit: Duration) -> Result<Option<u16>, String> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(code) = raw_close_code(&buf) {
            return Ok(Some(code));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open after {limit:?} ({} bytes read)", buf.len()));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// The code of the first close frame among complete server frames in `buf` (`Some(1005)` for
/// a close frame without a code).
fn raw_close_code(buf: &[u8]) -> Option<u16> {
    let mut at = 0;
    while buf.len() >= at + 2 {
        let opcode = buf[at] & 0x0f;
        let masked = buf[at + 1] & 0x80 != 0;
        let (len, mut pos) = match buf[at + 1] & 0x7f {
            126 if buf.len() >= at + 4 => {
                (usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])), at + 4)
            }
            127 if buf.len() >= at + 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[at + 2..at + 10]);
                (usize::try_from(u64::from_be_bytes(b)).ok()?, at + 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), at + 2),
        };
        if masked {
            pos += 4;
        }
        if buf.len() < pos + len {
            return None;
        }
        if opcode == 8 {
            return Some(if len >= 2 {
                u16::from_be_bytes([buf[pos], buf[pos + 1]])
            } else {
                1005
            });
        }
        at = pos + len;
    }
    None
}

// --- daemon side ---

/// Creates the session of a one-hour enhanced token of this user and session id; returns the
/// token.
#[track_caller]
pub fn session_token(d: &Daemon, user: &str, sid: &str) -> String {
    let token = hs256(&enhanced(user, &format!("{user}@example.com"), "user", sid));
    d.create_ok(&token);
    token
}

/// `sessiond_ws_connections` from `/metrics` (summed over label sets), if present.
pub fn ws_connections(d: &Daemon) -> Option<f64> {
    let r = d.get("/metrics").send();
    let mut total = None;
    for line in r.body.lines() {
        let Some(rest) = line.strip_prefix("sessiond_ws_connections") else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

/// Polls the gauge until it equals `n` (bounded); panics with the last value otherwise.
#[track_caller]
pub fn wait_ws_connections(d: &Daemon, n: f64, limit: Duration) {
    let mut last = None;
    let ok = poll_until(limit, || {
        last = ws_connections(d);
        (last == Some(n)).then_some(())
    });
    assert!(
        ok.is_some(),
        "sessiond_ws_connections never became {n} within {limit:?}; last {last:?}"
    );
}

/// The resident set size of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The minimal MessagePack codec the tests need: nil, booleans, integers, floats, strings,
/// binaries (decoded as arrays of byte values), arrays and maps (keys must be strings).
pub mod msgpack {
    use serde_json::{Map, Number, Value};

    /// Decodes exactly one value spanning all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Value, String> {
        let mut r = Reader { bytes, at: 0 };
        let v = r.value(0)?;
        if r.at != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - r.at));
        }
        Ok(v)
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
            let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
            let s = &self.bytes[self.at..end];
            self.at = end;
            Ok(s)
        }

        fn uint(&mut self, n: usize) -> Result<u64, String> {
            Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }

        fn int(&mut self, n: usize) -> Result<i64, String> {
            let u = self.uint(n)?;
            let shift = 64 - 8 * n as u32;
            Ok(((u << shift) as i64) >> shift)
        }

        fn str(&mut self, n: usize) -> Result<Value, String> {
            let b = self.take(n)?;
            String::from_utf8(b.to_vec()).map(Value::String).map_err(|e| format!("string: {e}"))
        }

        fn array(&mut self, n: u64, depth: usize) -> Result<Value, String> {
            (0..n).map(|_| self.value(depth + 1)).collect::<Result<Vec<_>, _>>().map(Value::Array)
        }

        fn map(&mut self, n: u64, depth: usize) -> Result<Value, String> {
            let mut m = Map::new();
            for _ in 0..n {
                let Value::String(k) = self.value(depth + 1)? else {
                    return Err(format!("a map key that is not a string at byte {}", self.at));
                };
                let v = self.value(depth + 1)?;
                if m.insert(k.clone(), v).is_some() {
                    return Err(format!("duplicate map key {k:?}"));
                }
            }
            Ok(Value::Object(m))
        }

        fn value(&mut self, depth: usize) -> Result<Value, String> {
            if depth > 64 {
                return Err("nested too deep".into());
            }
            let b = self.take(1)?[0];
            let signed = |i: i64| if i >= 0 { Value::from(i as u64) } else { Value::from(i) };
            Ok(match b {
                0x00..=0x7f => Value::from(u64::from(b)),
                0x80..=0x8f => return self.map(u64::from(b & 0x0f), depth),
                0x90..=0x9f => return self.array(u64::from(b & 0x0f), depth),
                0xa0..=0xbf => return self.str(usize::from(b & 0x1f)),
                0xc0 => Value::Null,
                0xc2 => Value::Bool(false),
                0xc3 => Value::Bool(true),
                0xc4..=0xc6 => {
                    let n = self.uint(1 << (b - 0xc4))? as usize;
                    Value::Array(self.take(n)?.iter().map(|x| Value::from(*x)).collect())
                }
                0xca => {
                    let f = f32::from_bits(self.uint(4)? as u32);
                    Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number)
                }
                0xcb => Number::from_f64(f64::from_bits(self.uint(8)?))
                    .map_or(Value::Null, Value::Number),
                0xcc..=0xcf => Value::from(self.uint(1 << (b - 0xcc))?),
                0xd0..=0xd3 => signed(self.int(1 << (b - 0xd0))?),
                0xd9..=0xdb => {
                    let n = self.uint(1 << (b - 0xd9))? as usize;
                    return self.str(n);
                }
                0xdc | 0xdd => {
                    let n = self.uint(if b == 0xdc { 2 } else { 4 })?;
                    return self.array(n, depth);
                }
                0xde | 0xdf => {
                    let n = self.uint(if b == 0xde { 2 } else { 4 })?;
                    return self.map(n, depth);
                }
                0xe0..=0xff => Value::from(i64::from(b as i8)),
                _ => return Err(format!("unsupported type byte {b:#04x} at {}", self.at - 1)),
            })
        }
    }

    /// Encodes a JSON value (maps with string keys, the smallest integer forms).
    pub fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, v);
        out
    }

    fn put_len(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, tags: [u8; 3]) {
        match fix {
            Some((base, max)) if n <= max => out.push(base | n as u8),
            _ if n <= 0xff && tags[0] != 0 => out.extend([tags[0], n as u8]),
            _ if n <= 0xffff => {
                out.push(tags[1]);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(tags[2]);
                out.extend((n as u32).to_be_bytes());
            }
        }
    }

    fn put(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::Null => out.push(0xc0),
            Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    if u < 0x80 {
                        out.push(u as u8);
                    } else {
                        out.push(0xcf);
                        out.extend(u.to_be_bytes());
                    }
                } else if let Some(i) = n.as_i64() {
                    if i >= -32 {
                        out.push(i as u8);
                    } else {
                        out.push(0xd3);
                        out.extend(i.to_be_bytes());
                    }
                } else {
                    out.push(0xcb);
                    out.extend(n.as_f64().unwrap_or(0.0).to_be_bytes());
                }
            }
            Value::String(s) => {
                put_len(out, s.len(), Some((0xa0, 31)), [0xd9, 0xda, 0xdb]);
                out.extend(s.as_bytes());
            }
            Value::Array(items) => {
                put_len(out, items.len(), Some((0x90, 15)), [0, 0xdc, 0xdd]);
                items.iter().for_each(|x| put(out, x));
            }
            Value::Object(m) => {
                put_len(out, m.len(), Some((0x80, 15)), [0, 0xde, 0xdf]);
                for (k, x) in m {
                    put(out, &Value::String(k.clone()));
                    put(out, x);
                }
            }
        }
    }
}

#[test]
fn ws_helpers_msgpack_codec_and_raw_close_parser() {
    // What rmp-serde's `to_vec_named` writes for {"type": "pong"}.
    let pong = [0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'o', b'n', b'g'];
    assert_eq!(msgpack::decode(&pong).unwrap(), json!({"type": "pong"}));
    assert_eq!(msgpack::encode(&json!({"type": "pong"})), pong);
    // Every integer form, negative ones, nil, bools, floats, str8, bin8, array16, map16.
    let mut bytes = vec![0xde, 0x00, 0x0b];
    let key = |b: &mut Vec<u8>, k: &str| {
        b.push(0xa0 | k.len() as u8);
        b.extend(k.as_bytes());
    };
    key(&mut bytes, "u8");
    bytes.extend([0xcc, 0xc8]);
    key(&mut bytes, "u16");
    bytes.extend([0xcd, 0x01, 0x2c]);
    key(&mut bytes, "u32");
    bytes.extend([0xce, 0x69, 0x29, 0x14, 0xe0]);
    key(&mut bytes, "u64");
    bytes.extend([0xcf, 0x00, 0x00, 0x01, 0x9a, 0xc8, 0x79, 0x8b, 0x63]);
    key(&mut bytes, "neg");
    bytes.push(0xff);
    key(&mut bytes, "i16");
    bytes.extend([0xd1, 0xfe, 0x0c]);
    key(&mut bytes, "nil");
    bytes.push(0xc0);
    key(&mut bytes, "t");
    bytes.push(0xc3);
    key(&mut bytes, "f64");
    bytes.extend(1.5f64.to_be_bytes().iter().copied().fold(vec![0xcb], |mut a, b| {
        a.push(b);
        a
    }));
    key(&mut bytes, "s8");
    bytes.extend([0xd9, 0x02, b'h', b'i']);
    key(&mut bytes, "arr");
    bytes.extend([0xdc, 0x00, 0x02, 0x01, 0xc2]);
    assert_eq!(
        msgpack::decode(&bytes).unwrap(),
        json!({"u8": 200, "u16": 300, "u32": 1_764_300_000u64, "u64": 1_764_300_000_099u64,
               "neg": -1, "i16": -500, "nil": null, "t": true, "f64": 1.5, "s8": "hi",
               "arr": [1, false]})
    );
    assert_eq!(msgpack::decode(&[0xc4, 0x02, 7, 8]).unwrap(), json!([7, 8]));
    assert!(msgpack::decode(&[0xc1]).is_err());
    assert!(msgpack::decode(&[0x92, 0x01]).is_err(), "truncated");
    assert!(msgpack::decode(&[0x01, 0x02]).is_err(), "trailing");
    let v = json!({"type": "event", "at_ms": 1_764_300_000_123u64, "data": {}, "n": -40,
                   "long": "x".repeat(300), "list": (0..20).collect::<Vec<_>>(), "f": 0.25});
    assert_eq!(msgpack::decode(&msgpack::encode(&v)).unwrap(), v);
    // Raw server frames: a ping, then a close 1013.
    let frames = [0x89, 0x00, 0x88, 0x02, 0x03, 0xf5];
    assert_eq!(raw_close_code(&frames), Some(1013));
    assert_eq!(raw_close_code(&frames[..4]), None);
    assert_eq!(raw_close_code(&[0x88, 0x00]), Some(1005));
}
