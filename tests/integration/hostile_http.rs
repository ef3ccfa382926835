//! Hostile HTTP: huge headers, huge and deep JSON, invalid UTF-8, slow clients (slowloris),
//! many connections from one client, malformed HTTP. Nothing crashes, nothing answers 5xx,
//! the daemon's memory stays bounded, and every rejection that happens once a request exists
//! is the contract's error (CONTRACT.md section 3: `{"error": {"code", "message",
//! "request_id"}}` with `X-Request-Id`).
//!
//! Everything malformed is written on a raw `TcpStream` and read back with timeouts, so a hung
//! daemon fails a test instead of hanging it.
//!
//! LIMITATION (documented, not a contract answer): a request head that actix-http's codec
//! refuses before any request exists (longer than 128 KiB, more than 96 headers, a URI over
//! 65534 bytes or with raw non-ASCII bytes, a NUL or other invalid byte in a header, bad
//! framing such as both `Content-Length` and `Transfer-Encoding`, a negative or unparsable
//! `Content-Length`, garbage, HTTP/0.9) gets `400`/`431` with `content-length: 0`, no JSON body,
//! no `X-Request-Id` and `connection: close`, straight from actix-http's dispatcher: the
//! daemon's request-id middleware never sees it. The tests marked `Expect::Codec` assert
//! exactly that (4xx or a close, never 5xx, the connection closed).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{API_KEY, Config, Daemon};
use crate::tokens::*;

/// How long a raw exchange waits for the server before calling it a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How long we wait after an answer to see whether the server closes the connection.
const LINGER: Duration = Duration::from_secs(2);
const MIB: u64 = 1024 * 1024;
/// How much the daemon's RSS may grow over one hostile burst (each burst would need hundreds of
/// MiB if the daemon buffered what it is sent).
const RSS_GROWTH_LIMIT: u64 = 64 * MIB;
/// A generous bound for "a normal client is still served" while the daemon is under attack.
const SERVED_WITHIN: Duration = Duration::from_secs(5);
/// A generous bound for cutting off a slow client with `client_request_timeout_ms = 1000`.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP response read off a raw connection.
#[derive(Debug, Clone)]
struct Response {
    status: u16,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn summary(&self) -> String {
        let mut s = format!("{}", self.status);
        for (k, v) in &self.headers {
            if k != "date" {
                s.push_str(&format!("; {k}: {v}"));
            }
        }
        if !self.body.is_empty() {
            let body = self.body_text();
            let cut: String = body.chars().take(160).collect();
            s.push_str(&format!("; body {cut}"));
        }
        s
    }

    /// The contract's error answer: this status, one of these codes, a string message,
    /// `request_id` equal to `X-Request-Id` (which must be a valid generated or echoed id), JSON.
    fn check_error(&self, status: u16, codes: &[&str]) -> Result<(), String> {
        let body: Value = serde_json::from_slice(&self.body)
            .map_err(|e| format!("not a JSON body ({e}): {}", self.summary()))?;
        let code = body["error"]["code"].as_str().unwrap_or_default();
        if self.status != status || !codes.contains(&code) {
            return Err(format!("expected {status} {codes:?}, got {}", self.summary()));
        }
        if !body["error"]["message"].is_string() {
            return Err(format!("error.message is not a string: {}", self.summary()));
        }
        let id = self.header("x-request-id").unwrap_or_default();
        if !valid_request_id(id) || body["error"]["request_id"].as_str() != Some(id) {
            return Err(format!("request_id vs X-Request-Id: {}", self.summary()));
        }
        if !self.header("content-type").unwrap_or_default().starts_with("application/json") {
            return Err(format!("content type: {}", self.summary()));
        }
        if status == 401 && code.starts_with("token_") && code != "token_missing" {
            let www = self.header("www-authenticate").unwrap_or_default();
            if !(www.starts_with("Bearer") && www.contains("error=\"invalid_token\"")) {
                return Err(format!("WWW-Authenticate: {}", self.summary()));
            }
        }
        Ok(())
    }
}

fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What came back on one raw connection.
#[derive(Debug, Default)]
struct Answer {
    /// Every final response read, in order (1xx interim responses skipped).
    responses: Vec<Response>,
    /// The server closed the connection (EOF or reset).
    closed: bool,
    /// We gave up waiting (`READ_TIMEOUT`) before `want` responses came.
    hung: bool,
    /// Bytes after the last complete response (a truncated answer).
    leftover: usize,
    /// Time from the start of the exchange to the first byte of the answer.
    first_byte: Option<Duration>,
}

impl Answer {
    fn first(&self) -> Option<&Response> {
        self.responses.first()
    }

    fn summary(&self) -> String {
        let mut parts: Vec<String> = self.responses.iter().map(Response::summary).collect();
        if parts.is_empty() {
            parts.push("no answer".into());
        }
        if self.leftover > 0 {
            parts.push(format!("{} stray bytes", self.leftover));
        }
        parts.push(
            if self.hung {
                "HUNG"
            } else if self.closed {
                "closed"
            } else {
                "left open"
            }
            .into(),
        );
        parts.join(" | ")
    }
}

/// Splits complete responses off the front of `buf`.
fn parse_responses(buf: &mut Vec<u8>, out: &mut Vec<Response>) {
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            return;
        }
        let body = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        if !(100..200).contains(&status) {
            out.push(Response { status, headers, body });
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s
}

fn is_closed_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// Reads until `want` responses came (then waits `linger` for a close), the server closed, or
/// `READ_TIMEOUT` passed.
fn read_answer(stream: &mut TcpStream, want: usize, linger: Duration, started: Instant) -> Answer {
    let mut answer = Answer::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut lingering = false;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                answer.closed = true;
                break;
            }
            Ok(n) => {
                answer.first_byte.get_or_insert_with(|| started.elapsed());
                buf.extend_from_slice(&chunk[..n]);
                parse_responses(&mut buf, &mut answer.responses);
            }
            Err(e) if is_closed_error(&e) => {
                answer.closed = true;
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                answer.hung = !lingering;
                break;
            }
            Err(e) => panic!("read: {e}"),
        }
        if !lingering && answer.responses.len() >= want {
            if linger.is_zero() {
                break;
            }
            lingering = true;
            stream.set_read_timeout(Some(linger)).unwrap();
        }
    }
    answer.leftover = buf.len();
    answer
}

/// Sends `request` (from another thread, so a server that answers before reading everything
/// cannot block us) and reads `want` responses, then checks for a close.
fn exchange(port: u16, request: Vec<u8>, want: usize) -> Answer {
    let started = Instant::now();
    let mut stream = connect(port);
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        // The server may answer and close before reading it all: a write error is fine.
        let _ = writer.write_all(&request);
    });
    let answer = read_answer(&mut stream, want, LINGER, started);
    let _ = stream.shutdown(Shutdown::Both);
    sender.join().unwrap();
    answer
}

/// `exchange` expecting one response.
fn send(port: u16, request: impl Into<Vec<u8>>) -> Answer {
    exchange(port, request.into(), 1)
}

/// A request head (`\r\n\r\n` included) with these extra header lines.
fn head(method: &str, path: &str, extra: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    for h in extra {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A POST with a `Content-Length` body and `Connection: close`.
fn post(path: &str, extra: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let len = format!("Content-Length: {}", body.len());
    let mut headers: Vec<&[u8]> = vec![
        b"Content-Type: application/json".as_slice(),
        len.as_bytes(),
        b"Connection: close".as_slice(),
    ];
    headers.extend_from_slice(extra);
    let mut out = head("POST", path, &headers);
    out.extend_from_slice(body);
    out
}

/// A `GET` with `Connection: close`.
fn get(path: &str, extra: &[&[u8]]) -> Vec<u8> {
    let mut headers: Vec<&[u8]> = vec![b"Connection: close".as_slice()];
    headers.extend_from_slice(extra);
    head("GET", path, &headers)
}

/// A chunked body of `total` bytes of `fill` in 64 KiB chunks, terminated.
fn chunked(total: usize, fill: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + total / 1024 + 16);
    let mut left = total;
    while left > 0 {
        let n = left.min(64 * 1024);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(fill, n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------------

/// What a hostile request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// LIMITATION: refused by actix-http's codec before a request exists: one of these 4xx
    /// statuses with an empty body (no contract JSON, no `X-Request-Id`), or no answer at all;
    /// either way the connection is closed.
    Codec(&'static [u16]),
    /// The contract's error JSON with this status and one of these codes.
    Contract(u16, &'static [&'static str]),
    /// An ordinary answer with this status (the request is odd but acceptable).
    Status(u16),
    /// Either an ordinary 200 (within actix-http's head limits) or a codec refusal.
    OkOrCodec(&'static [u16]),
}

fn check(expect: Expect, a: &Answer) -> Result<(), String> {
    if a.hung {
        return Err(format!("no answer and no close within {READ_TIMEOUT:?}: {}", a.summary()));
    }
    if let Some(r) = a.responses.iter().find(|r| r.status >= 500 || r.status == 0) {
        return Err(format!("answered {}: {}", r.status, a.summary()));
    }
    let codec = |statuses: &[u16]| -> Result<(), String> {
        match a.first() {
            None if a.closed => Ok(()),
            Some(r) if statuses.contains(&r.status) && r.body.is_empty() && a.closed => Ok(()),
            _ => Err(format!("expected a codec refusal {statuses:?} and a close: {}", a.summary())),
        }
    };
    match expect {
        Expect::Codec(statuses) => codec(statuses),
        Expect::Contract(status, codes) => match a.first() {
            Some(r) => r.check_error(status, codes),
            None => Err(format!("expected {status} {codes:?}: {}", a.summary())),
        },
        Expect::Status(status) => match a.first() {
            Some(r) if r.status == status => Ok(()),
            _ => Err(format!("expected {status}: {}", a.summary())),
        },
        Expect::OkOrCodec(statuses) => match a.first() {
            Some(r) if r.status == 200 => Ok(()),
            _ => codec(statuses),
        },
    }
}

const BAD_REQUEST: Expect = Expect::Contract(400, &["bad_request"]);
const NOT_FOUND: Expect = Expect::Contract(404, &["not_found"]);
const CODEC_400: Expect = Expect::Codec(&[400]);

/// A table of raw requests and what each must get.
#[derive(Default)]
struct Cases(Vec<(String, Vec<u8>, Expect)>);

impl Cases {
    fn add(&mut self, name: &str, request: impl Into<Vec<u8>>, expect: Expect) {
        self.0.push((name.to_string(), request.into(), expect));
    }
}

/// Runs table cases against a daemon; fails with every mismatch at once. Prints what the
/// server answered for each case (`--nocapture` shows it).
#[track_caller]
fn run_cases(d: &Daemon, cases: Cases) {
    let mut failures = Vec::new();
    for (name, request, expect) in cases.0 {
        let a = send(d.port, request);
        eprintln!("[{name}] {}", a.summary());
        if let Err(e) = check(expect, &a) {
            failures.push(format!("[{name}] {e}"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The daemon's health and memory
// ---------------------------------------------------------------------------------------------

/// The daemon's memory: resident now and its peak (`VmRSS`, `VmHWM`), in bytes.
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: u64,
    peak: u64,
}

fn mem(d: &Daemon) -> Mem {
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let field = |name: &str| {
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/<pid>/status"));
        kb * 1024
    };
    Mem { rss: field("VmRSS:"), peak: field("VmHWM:") }
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

/// The daemon's open descriptors once its workers are up (they start after the listening line).
fn baseline_fds(d: &Daemon) -> usize {
    for _ in 0..4 {
        livez(d.port).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    open_fds(d.pid())
}

/// Neither the resident memory after a burst nor its peak during it grew by
/// `RSS_GROWTH_LIMIT` over what it was before.
#[track_caller]
fn assert_mem_bounded(d: &Daemon, before: Mem, what: &str) {
    let after = mem(d);
    let kib = |b: u64| b / 1024;
    eprintln!(
        "[{what}] RSS {} KiB -> {} KiB, peak {} KiB -> {} KiB",
        kib(before.rss),
        kib(after.rss),
        kib(before.peak),
        kib(after.peak)
    );
    let base = before.rss.max(before.peak);
    assert!(
        after.rss < before.rss + RSS_GROWTH_LIMIT && after.peak < base + RSS_GROWTH_LIMIT,
        "{what}: memory grew: RSS {} KiB -> {} KiB, peak {} KiB -> {} KiB (limit +{} MiB)",
        kib(before.rss),
        kib(after.rss),
        kib(before.peak),
        kib(after.peak),
        RSS_GROWTH_LIMIT / MIB
    );
}

/// `GET /livez` on a fresh connection: 200 within `READ_TIMEOUT`.
fn livez(port: u16) -> Result<Duration, String> {
    let started = Instant::now();
    let a = send(port, get("/livez", &[]));
    match a.first() {
        Some(r) if r.status == 200 => Ok(started.elapsed()),
        _ => Err(format!("GET /livez: {}", a.summary())),
    }
}

/// The daemon answers `/livez` and never panicked.
#[track_caller]
fn assert_healthy(d: &Daemon) {
    if let Err(e) = livez(d.port) {
        panic!("daemon not alive after the hostile requests: {e}");
    }
    let stderr = d.stderr();
    assert!(!stderr.contains("panicked"), "the daemon panicked:\n{stderr}");
}

/// Runs `n` copies of `f` on threads and returns their results.
fn in_parallel<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = Arc::clone(&f);
            thread::spawn(move || f(i))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Huge headers
// ---------------------------------------------------------------------------------------------

#[test]
fn huge_headers_are_refused_without_5xx_or_hang() {
    let d = Daemon::start(Config::default());
    let big = |n: usize| format!("X-Big: {}", "a".repeat(n)).into_bytes();
    let (h64k, h1m) = (big(64 * 1024), big(1024 * 1024));
    let many: Vec<Vec<u8>> = (0..200).map(|i| format!("X-H{i}: v").into_bytes()).collect();
    let many: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    let ninety: Vec<Vec<u8>> =
        (0..90).map(|i| format!("X-H{i}: {}", "v".repeat(1000))).map(String::into_bytes).collect();
    let ninety: Vec<&[u8]> = ninety.iter().map(Vec::as_slice).collect();
    let long_path = format!("/{}", "a".repeat(100 * 1024));
    let long_api_path = format!("/api/v1/sessions/{}", "s".repeat(60 * 1024));
    let long_bearer = format!("Authorization: Bearer {}", "a".repeat(100 * 1024));
    let long_cookie = format!("Cookie: session_token={}", "c".repeat(60 * 1024));
    let long_key = format!("X-Api-Key: {}", "k".repeat(60 * 1024));
    let long_rid = format!("X-Request-Id: {}", "r".repeat(60 * 1024));
    let key = format!("X-Api-Key: {API_KEY}");
    let malformed = Expect::Contract(401, &["token_malformed"]);
    let mut c = Cases::default();
    // LIMITATION (the Codec cases): within actix-http's 128 KiB head buffer (96 headers, URIs
    // up to 65534 bytes) a request is ordinary, as no smaller head limit is configured; beyond
    // it the codec answers 431/400 with an empty body.
    c.add("one 64 KiB header", get("/livez", &[&h64k]), Expect::OkOrCodec(&[431]));
    c.add("one 1 MiB header", get("/livez", &[&h1m]), Expect::Codec(&[431]));
    c.add("200 headers", get("/livez", &many), Expect::Codec(&[431]));
    c.add("90 headers of 1 KB", get("/livez", &ninety), Expect::OkOrCodec(&[431]));
    c.add("100 KiB path", get(&long_path, &[]), Expect::Codec(&[400, 414, 431]));
    // Big values the daemon itself reads: the contract's errors.
    c.add("60 KiB session id", get(&long_api_path, &[key.as_bytes()]), BAD_REQUEST);
    let bearer = post("/api/v1/sessions/validate", &[long_bearer.as_bytes()], b"");
    c.add("100 KiB bearer token", bearer, malformed);
    c.add("60 KiB cookie", get("/api/v1/auth/verify", &[long_cookie.as_bytes()]), malformed);
    let api_key = get("/api/v1/sessions/x", &[long_key.as_bytes()]);
    c.add("60 KiB API key", api_key, Expect::Contract(403, &["api_key_invalid"]));
    c.add("60 KiB request id", get("/nowhere", &[long_rid.as_bytes()]), NOT_FOUND);
    run_cases(&d, c);

    // A burst: 200 heads of 1 MiB each from 8 clients at once. actix-http holds at most
    // 128 KiB of a head per connection, so the daemon's memory must not follow.
    let before = mem(&d);
    let port = d.port;
    let results = in_parallel(8, move |_| {
        let mut bad = Vec::new();
        for _ in 0..25 {
            let h = format!("X-Big: {}", "b".repeat(1024 * 1024)).into_bytes();
            let a = send(port, get("/livez", &[&h]));
            if let Err(e) = check(Expect::Codec(&[431]), &a) {
                bad.push(e);
            }
        }
        bad
    });
    let bad: Vec<String> = results.into_iter().flatten().collect();
    assert!(bad.is_empty(), "1 MiB heads in a burst:\n{}", bad.join("\n"));
    assert_mem_bounded(&d, before, "200 x 1 MiB heads");
    assert_healthy(&d);
}

// ---------------------------------------------------------------------------------------------
// 2. Huge bodies
// ---------------------------------------------------------------------------------------------

const TEN_MIB: usize = 10 * 1024 * 1024;

/// `POST /api/v1/sessions/validate` with a 10 MiB `Content-Length` body.
fn ten_mib_with_length(path: &str, extra: &[&[u8]]) -> Vec<u8> {
    let mut body = b"{\"token\": \"".to_vec();
    body.resize(TEN_MIB - 2, b'a');
    body.extend_from_slice(b"\"}");
    let mut headers = vec![b"Content-Type: application/json".as_slice()];
    let len = format!("Content-Length: {}", body.len());
    headers.push(len.as_bytes());
    headers.extend_from_slice(extra);
    let mut out = head("POST", path, &headers);
    out.extend_from_slice(&body);
    out
}

/// The same, chunked.
fn ten_mib_chunked(path: &str, extra: &[&[u8]]) -> Vec<u8> {
    let mut headers = vec![
        b"Content-Type: application/json".as_slice(),
        b"Transfer-Encoding: chunked".as_slice(),
    ];
    headers.extend_from_slice(extra);
    let mut out = head("POST", path, &headers);
    out.extend_from_slice(&chunked(TEN_MIB, b'a'));
    out
}

#[test]
fn huge_bodies_get_413_without_being_buffered() {
    let d = Daemon::start(Config::default());
    let key = format!("X-Api-Key: {API_KEY}");
    let too_large = Expect::Contract(413, &["payload_too_large"]);
    let before = mem(&d);
    let mut failures = Vec::new();
    let mut note = |name: &str, a: &Answer, expect: Expect| {
        eprintln!("[{name}] first byte after {:?}: {}", a.first_byte, a.summary());
        if let Err(e) = check(expect, a) {
            failures.push(format!("[{name}] {e}"));
        }
    };

    let a = send(d.port, ten_mib_with_length("/api/v1/sessions/validate", &[]));
    note("10 MiB, Content-Length", &a, too_large);
    let a = send(d.port, ten_mib_chunked("/api/v1/sessions/validate", &[]));
    note("10 MiB, chunked", &a, too_large);
    let a = send(d.port, ten_mib_chunked("/api/v1/sessions", &[key.as_bytes()]));
    note("10 MiB, chunked, create with key", &a, too_large);
    let a = send(d.port, ten_mib_with_length("/api/v1/sessions/x/refresh", &[key.as_bytes()]));
    note("10 MiB, Content-Length, refresh with key", &a, too_large);

    // A Content-Length claiming 1 GB with a small body: refused on the claim, at once, and the
    // connection is not kept waiting for the rest.
    let mut req = head(
        "POST",
        "/api/v1/sessions/validate",
        &[b"Content-Type: application/json", b"Content-Length: 1000000000"],
    );
    req.extend_from_slice(b"{\"token\": \"x\"}");
    let a = send(d.port, req);
    note("Content-Length 1 GB, small body", &a, too_large);
    if !a.closed {
        failures.push(format!("[Content-Length 1 GB] connection left open: {}", a.summary()));
    }

    // Neither Content-Length nor chunked: HTTP/1.1 says the request has no body, so the first
    // request is answered as bodiless (401 token_missing) and the 10 MiB that follow are read as
    // the next request head, which the codec refuses (LIMITATION: no JSON for that one).
    let mut req = head("POST", "/api/v1/sessions/validate", &[b"Content-Type: application/json"]);
    req.extend(std::iter::repeat_n(b'a', TEN_MIB));
    let a = exchange(d.port, req, 2);
    eprintln!("[10 MiB, no length] {}", a.summary());
    match a.responses.as_slice() {
        [first, rest @ ..] => {
            if let Err(e) = first.check_error(401, &["token_missing"]) {
                failures.push(format!("[10 MiB, no length] first answer: {e}"));
            }
            if rest.iter().any(|r| !(400..500).contains(&r.status) || !r.body.is_empty()) {
                failures.push(format!("[10 MiB, no length] {}", a.summary()));
            }
        }
        [] => failures.push(format!("[10 MiB, no length] no answer: {}", a.summary())),
    }
    if a.hung || !a.closed {
        failures.push(format!("[10 MiB, no length] not closed: {}", a.summary()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_mem_bounded(&d, before, "four 10 MiB bodies");

    // A burst: 8 clients send 10 MiB each at once (80 MiB), half chunked.
    let before = mem(&d);
    let port = d.port;
    let results = in_parallel(8, move |i| {
        let req = if i % 2 == 0 {
            ten_mib_with_length("/api/v1/sessions/validate", &[])
        } else {
            ten_mib_chunked("/api/v1/sessions/validate", &[])
        };
        let a = send(port, req);
        check(Expect::Contract(413, &["payload_too_large"]), &a).err()
    });
    let bad: Vec<String> = results.into_iter().flatten().collect();
    assert!(bad.is_empty(), "10 MiB bodies in a burst:\n{}", bad.join("\n"));
    assert_mem_bounded(&d, before, "8 x 10 MiB bodies at once");
    assert_healthy(&d);
}

// ---------------------------------------------------------------------------------------------
// 3. Deep and huge JSON
// ---------------------------------------------------------------------------------------------

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_objects(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// A signed (valid) HS256 token whose claims carry `extra` as the raw JSON of claim `x`.
fn token_with_raw_claim(sid: &str, extra: &str) -> String {
    let now = now();
    let payload = format!(
        "{{\"sub\":\"u-deep\",\"email\":\"deep@example.com\",\"role\":\"user\",\"sid\":\"{sid}\",\
         \"iat\":{now},\"exp\":{},\"x\":{extra}}}",
        now + 3600
    );
    sign_raw_hs256(br#"{"alg":"HS256","typ":"JWT"}"#, payload.as_bytes())
}

#[test]
fn deep_and_huge_json_is_a_400() {
    let d = Daemon::start(Config::default().set("server.max_body_bytes", "1048576"));
    let before = mem(&d);
    let deep = 100_000;
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "hj-1"));
    let validate = |body: String| d.post("/api/v1/sessions/validate").raw_json(body.as_bytes());
    let create = |body: String| d.post("/api/v1/sessions").key().raw_json(body.as_bytes());

    let many_attrs: Vec<String> = (0..20_000).map(|i| format!("\"k{i}\":\"v\"")).collect();
    let many_unknown: Vec<String> = (0..50_000).map(|i| format!("\"u{i}\":1")).collect();
    let surrogates = "\\ud800".repeat(100_000);
    let cases = vec![
        ("token: arrays 100k deep", validate(format!("{{\"token\": {}}}", nested_arrays(deep)))),
        ("token: objects 100k deep", validate(format!("{{\"token\": {}}}", nested_objects(deep)))),
        ("token: 100k unclosed arrays", validate(format!("{{\"token\": {}", "[".repeat(deep)))),
        ("unknown field, 100k deep", validate(format!("{{\"x\": {}}}", nested_arrays(deep)))),
        ("top level arrays 100k deep", validate(nested_arrays(deep))),
        ("duplicate token", validate(r#"{"token": "a", "token": "b"}"#.to_string())),
        ("50k unknown keys", validate(format!("{{{}}}", many_unknown.join(",")))),
        ("100k lone surrogates", validate(format!("{{\"token\": \"{surrogates}\"}}"))),
        (
            "attributes: objects 100k deep",
            create(format!("{{\"token\": \"{tok}\", \"attributes\": {}}}", nested_objects(deep))),
        ),
        (
            "attributes: value arrays 100k deep",
            create(format!(
                "{{\"token\": \"{tok}\", \"attributes\": {{\"a\": {}}}}}",
                nested_arrays(deep)
            )),
        ),
        (
            "attributes: 20k keys",
            create(format!(
                "{{\"token\": \"{tok}\", \"attributes\": {{{}}}}}",
                many_attrs.join(",")
            )),
        ),
        (
            "attributes: 900 KB value",
            create(format!(
                "{{\"token\": \"{tok}\", \"attributes\": {{\"a\": \"{}\"}}}}",
                "v".repeat(900_000)
            )),
        ),
        (
            "refresh: ttl 100k deep",
            d.post("/api/v1/sessions/hj-1/refresh")
                .key()
                .raw_json(format!("{{\"ttl_seconds\": {}}}", nested_arrays(deep)).as_bytes()),
        ),
    ];
    let mut failures = Vec::new();
    for (name, req) in cases {
        let r = req.send();
        eprintln!("[{name}] {} {}", r.status, r.body);
        if let Err(e) = r.check_error(400, "bad_request") {
            failures.push(format!("[{name}] {e}"));
        }
    }

    // Deep JSON inside a signed token: the payload is parsed into a `serde_json::Value`, whose
    // recursion limit (128 levels, the payload object included) is what refuses it; below the
    // limit the token is fine (the session just does not exist).
    let shallow = token_with_raw_claim("hj-ok", &nested_arrays(100));
    let r = d.create(&shallow);
    eprintln!("[token claim 100 deep] {} {}", r.status, r.body);
    if r.status != 201 {
        failures.push(format!("[token claim 100 deep] create: {} {}", r.status, r.body));
    }
    for depth in [126, 127, 128, 200, 2500] {
        let t = token_with_raw_claim(&format!("hj-{depth}"), &nested_arrays(depth));
        let code = if depth < 127 { "session_not_found" } else { "token_malformed" };
        for (how, r) in [("body", d.validate(&t)), ("bearer", d.validate_bearer(&t))] {
            eprintln!(
                "[token claim {depth} deep, {} bytes, {how}] {} {}",
                t.len(),
                r.status,
                r.body
            );
            if let Err(e) = r.check_error(401, code) {
                failures.push(format!("[token claim {depth} deep, {how}] {e}"));
            }
        }
    }
    // A very long token string within the body limit: malformed (over 8192 bytes), not parsed.
    let r = validate(format!("{{\"token\": \"{}\"}}", "a.b.c".repeat(200_000))).send();
    if let Err(e) = r.check_error(401, "token_malformed") {
        failures.push(format!("[1 MB token] {e}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_mem_bounded(&d, before, "deep and huge JSON");
    assert_healthy(&d);
}

// ---------------------------------------------------------------------------------------------
// 4. Invalid UTF-8
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_anywhere_gets_a_contract_error() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "u8-1"));
    d.create_ok(&tok);
    let key = format!("X-Api-Key: {API_KEY}");
    let key = key.as_bytes();
    let cookie_and_junk =
        [b"Cookie: junk=\xff\xfe; session_token=".as_slice(), tok.as_bytes()].concat();
    let validate = "/api/v1/sessions/validate";
    // Unreadable credentials are no credentials: 401 token_missing (or token_malformed).
    let no_token = Expect::Contract(401, &["token_missing", "token_malformed"]);
    let verify = "/api/v1/auth/verify";
    let mut c = Cases::default();
    c.add("body: token \\xff\\xfe", post(validate, &[], b"{\"token\": \"\xff\xfe\"}"), BAD_REQUEST);
    c.add("body: raw bytes", post(validate, &[], b"\xff\xfe\xfd{\"token\": 1}"), BAD_REQUEST);
    c.add("body: overlong /", post(validate, &[], b"{\"token\": \"\xc0\xaf\"}"), BAD_REQUEST);
    c.add("body: surrogate", post(validate, &[], b"{\"token\": \"\xed\xa0\x80\"}"), BAD_REQUEST);
    c.add("body: truncated", post(validate, &[], b"{\"token\": \"\xe2\x82\"}"), BAD_REQUEST);
    c.add("body: bad key", post(validate, &[], b"{\"\xff\": \"x\"}"), BAD_REQUEST);
    let attrs =
        [b"{\"token\": \"", tok.as_bytes(), b"\", \"attributes\": {\"a\": \"\xff\"}}"].concat();
    c.add("body: attribute value", post("/api/v1/sessions", &[key], &attrs), BAD_REQUEST);
    c.add("Bearer \\xff", post(validate, &[b"Authorization: Bearer \xff\xfe\xfd"], b""), no_token);
    c.add(
        "Authorization: \\xff",
        post(validate, &[b"Authorization: \xff\xfe \xfd"], b""),
        no_token,
    );
    c.add("Bearer on verify", get(verify, &[b"Authorization: Bearer a\x80.b\x80.c\x80"]), no_token);
    c.add(
        "Cookie: session_token=\\xff",
        get(verify, &[b"Cookie: session_token=\xff\xfe"]),
        no_token,
    );
    let bad_key = get("/api/v1/sessions/u8-1", &[b"X-Api-Key: \xff\xfe\xfd"]);
    c.add("X-Api-Key: \\xff", bad_key, Expect::Contract(403, &["api_key_invalid"]));
    // A path that does not percent-decode to UTF-8 is refused before routing (the router
    // would decode it lossily, and different ids would name one session).
    c.add("path: /api/v1/sessions/%FF%FE", get("/api/v1/sessions/%FF%FE", &[key]), BAD_REQUEST);
    c.add(
        "path: …/%C0%AF/refresh",
        post("/api/v1/sessions/%C0%AF/refresh", &[key], b""),
        BAD_REQUEST,
    );
    c.add("path: /%FF%FE", get("/%FF%FE", &[]), BAD_REQUEST);
    c.add("path: /api/v1/%ED%A0%80", get("/api/v1/%ED%A0%80", &[]), BAD_REQUEST);
    let query = Expect::Contract(401, &["token_missing"]);
    c.add("query: ?%FF=%FE", get("/api/v1/auth/verify?%FF=%FE", &[]), query);
    // LIMITATION: raw (not percent-encoded) bytes >= 0x80 in the request target are refused by
    // the `http` crate's URI parser inside actix-http's codec: 400, empty body.
    let raw_target = |target: &[u8]| {
        [b"GET ".as_slice(), target, b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"].concat()
    };
    c.add("path: raw \\xff\\xfe", raw_target(b"/api/v1/sessions/\xff\xfe"), CODEC_400);
    c.add("path: raw UTF-8 \u{e9}", raw_target("/api/v1/sessions/\u{e9}".as_bytes()), CODEC_400);
    // LIMITATION: a header name that is not a token: the codec's 400.
    c.add("header name \\xff", get("/livez", &[b"X-\xff: a"]), CODEC_400);
    run_cases(&d, c);

    // A client request id that is not UTF-8 is replaced by one the server makes.
    let mut failures = Vec::new();
    for (path, expect) in
        [("/nowhere", Expect::Contract(404, &["not_found"])), ("/livez", Expect::Status(200))]
    {
        let a = send(d.port, get(path, &[b"X-Request-Id: \xff\xfeabc"]));
        eprintln!("[X-Request-Id \\xff on {path}] {}", a.summary());
        if let Err(e) = check(expect, &a) {
            failures.push(format!("[X-Request-Id \\xff on {path}] {e}"));
        }
        let id = a.first().and_then(|r| r.header("x-request-id")).unwrap_or_default();
        if !valid_request_id(id) || id.contains("abc") {
            failures.push(format!("[X-Request-Id \\xff on {path}] not replaced: {id:?}"));
        }
    }
    // A non-UTF-8 cookie next to the session cookie: the cookie header is unreadable as a whole.
    let a = send(d.port, get("/api/v1/auth/verify", &[&cookie_and_junk]));
    eprintln!("[junk cookie next to the session cookie] {}", a.summary());
    if let Err(e) = check(Expect::Status(200), &a).or_else(|_| check(no_token, &a)) {
        failures.push(format!("[junk cookie next to the session cookie] {e}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The session is untouched by all of it.
    d.validate(&tok).expect_status(200);
    assert_healthy(&d);
}

/// A path parameter with percent-encoded bytes that are not UTF-8 is a malformed parameter; it
/// must not be decoded lossily (every invalid byte becoming U+FFFD), which makes `%FF%FE`,
/// `%80%80`, `%FE%FF`… all name the session whose id is "\u{FFFD}\u{FFFD}".
#[test]
fn invalid_utf8_in_a_path_parameter_names_no_session() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "\u{FFFD}\u{FFFD}"));
    d.create_ok(&tok);
    let key = format!("X-Api-Key: {API_KEY}");
    let key = key.as_bytes();
    let not_that_session = Expect::Contract(404, &["session_not_found"]);
    let mut failures = Vec::new();
    for encoded in ["%FF%FE", "%80%80", "%C0%AF%C0%AF"] {
        let path = format!("/api/v1/sessions/{encoded}");
        for (what, req) in [
            ("GET", get(&path, &[key])),
            ("refresh", post(&format!("{path}/refresh"), &[key], b"")),
            ("DELETE", head("DELETE", &path, &[key, b"Connection: close"])),
        ] {
            let a = send(d.port, req);
            eprintln!("[{what} {path}] {}", a.summary());
            let mut result = check(BAD_REQUEST, &a).or_else(|_| check(not_that_session, &a));
            // DELETE is idempotent: 200 is fine as long as it did not name the U+FFFD session.
            if what == "DELETE"
                && let Some(r) = a.first().filter(|r| r.status == 200)
            {
                result = if r.body_text().contains('\u{FFFD}') {
                    Err(format!("revoked a lossily decoded id: {}", a.summary()))
                } else {
                    Ok(())
                };
            }
            if let Err(e) = result {
                failures.push(format!("[{what} {path}] {e}"));
            }
        }
    }
    // The session "\u{FFFD}\u{FFFD}" was neither read nor refreshed nor revoked through them.
    let r = d.validate(&tok);
    if r.status != 200 {
        failures
            .push(format!("the session was revoked through a lossy id: {} {}", r.status, r.body));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_healthy(&d);
}

// ---------------------------------------------------------------------------------------------
// 5. Slow clients
// ---------------------------------------------------------------------------------------------

/// The limits config of the slow-client and many-connection tests.
fn tight_config() -> Config {
    Config::default()
        .set("server.client_request_timeout_ms", "1000")
        .set("server.request_timeout_ms", "1000")
        .set("server.keep_alive_seconds", "1")
}

/// How a slow client ended.
#[derive(Debug, Clone)]
struct Slow {
    /// The first response that came after the slow part began, if any.
    status: Option<u16>,
    /// When the server closed the connection (since the slow part began), if it did within
    /// the limit.
    closed_after: Option<Duration>,
    /// The first request's status (keep-alive variant).
    first: Option<u16>,
}

/// Connects; sends `first` (a complete keep-alive request) and reads its answer when given;
/// then sends `prefix` at once and `trickle` one byte every `interval`, reading in between,
/// until the server closes or `limit` passes.
fn slow_client(
    port: u16,
    first: Option<&[u8]>,
    prefix: &[u8],
    trickle: &[u8],
    interval: Duration,
    limit: Duration,
) -> Slow {
    let mut out = Slow { status: None, closed_after: None, first: None };
    let mut s = connect(port);
    if let Some(req) = first {
        s.write_all(req).unwrap();
        let a = read_answer(&mut s, 1, Duration::ZERO, Instant::now());
        out.first = a.first().map(|r| r.status);
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut next = 0;
    let closed = |s: &Slow| s.closed_after.is_some();
    if s.write_all(prefix).is_err() {
        out.closed_after = Some(started.elapsed());
    }
    while !closed(&out) && started.elapsed() < limit {
        if next < trickle.len() {
            if s.write_all(&trickle[next..=next]).is_err() {
                out.closed_after = Some(started.elapsed());
                break;
            }
            next += 1;
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && started.elapsed() < limit {
            let wait =
                until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            s.set_read_timeout(Some(wait)).unwrap();
            match s.read(&mut chunk) {
                Ok(0) => {
                    out.closed_after = Some(started.elapsed());
                    break;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    parse_responses(&mut buf, &mut responses);
                }
                Err(e) if is_closed_error(&e) => {
                    out.closed_after = Some(started.elapsed());
                    break;
                }
                Err(_) => {}
            }
        }
    }
    out.status = responses.first().map(|r| r.status);
    out
}

/// A slow client must have been cut off in time, with a 408 or 4xx or nothing.
fn check_cut_off(what: &str, s: &Slow, ok_statuses: &[u16]) -> Result<(), String> {
    match (s.closed_after, s.status) {
        (None, _) => Err(format!("{what}: still open after {CUT_OFF_WITHIN:?} ({s:?})")),
        (Some(_), Some(st)) if !ok_statuses.contains(&st) => {
            Err(format!("{what}: answered {st} ({s:?})"))
        }
        _ => Ok(()),
    }
}

/// Waits (bounded) until the daemon's open descriptors are back near `baseline`.
fn fds_settle(d: &Daemon, baseline: usize) -> usize {
    let mut last = 0;
    let settled = crate::harness::poll_until(Duration::from_secs(5), || {
        last = open_fds(d.pid());
        (last <= baseline + 5).then_some(())
    });
    if settled.is_none() {
        eprintln!("open fds {last}, baseline {baseline}");
    }
    last
}

/// A request head that would take a slow client 40 s to send at one byte every 500 ms.
const SLOW_HEAD: &[u8] = b"GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Slow: \
    aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn slowloris_heads_are_cut_off_while_others_are_served() {
    let d = Daemon::start(tight_config());
    let before = mem(&d);
    let fds = baseline_fds(&d);
    let port = d.port;
    let clients = thread::spawn(move || {
        in_parallel(50, move |_| {
            slow_client(port, None, b"", SLOW_HEAD, Duration::from_millis(500), CUT_OFF_WITHIN)
        })
    });
    thread::sleep(Duration::from_millis(300));
    let served = livez(d.port);
    let ends = clients.join().unwrap();
    let took = served.unwrap_or_else(|e| panic!("a normal client was not served: {e}"));
    eprintln!("normal client served in {took:?} during 50 slowloris heads");
    assert!(took < SERVED_WITHIN, "a normal client waited {took:?} during the slowloris");
    let failures: Vec<String> = ends
        .iter()
        .enumerate()
        .filter_map(|(i, s)| check_cut_off(&format!("slow head {i}"), s, &[408]).err())
        .collect();
    let times: Vec<u128> =
        ends.iter().filter_map(|s| s.closed_after).map(|t| t.as_millis()).collect();
    eprintln!(
        "slow heads: statuses {:?}, closed after {:?}..{:?} ms",
        ends.iter().map(|s| s.status).collect::<std::collections::BTreeSet<_>>(),
        times.iter().min(),
        times.iter().max()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_mem_bounded(&d, before, "50 slowloris heads");
    let left = fds_settle(&d, fds);
    assert!(
        left <= fds + 5,
        "the daemon holds {left} descriptors after the slowloris (baseline {fds})"
    );
    assert_healthy(&d);
}

/// `client_request_timeout_ms` must hold for every request head, not only a connection's first.
/// actix-http 3.20 starts the head timer for a connection's first request only: a known gap
/// (docs/security.md, "Known gaps"); `server.keep_alive_seconds` does not help once the next
/// head has begun.
#[test]
#[ignore = "actix-http times only a connection's first request head (docs/security.md, Known gaps)"]
fn slowloris_on_a_kept_alive_connection_is_cut_off() {
    let d = Daemon::start(tight_config());
    let port = d.port;
    let first = head("GET", "/livez", &[]);
    let ends = in_parallel(5, move |_| {
        slow_client(port, Some(&first), b"", SLOW_HEAD, Duration::from_millis(500), CUT_OFF_WITHIN)
    });
    let mut failures = Vec::new();
    for (i, s) in ends.iter().enumerate() {
        eprintln!("kept-alive slow head {i}: {s:?}");
        if s.first != Some(200) {
            failures.push(format!("client {i}: first request answered {:?}", s.first));
        }
        if let Err(e) =
            check_cut_off(&format!("second head on kept-alive connection {i}"), s, &[408])
        {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_healthy(&d);
}

/// A complete head followed by a body that stalls or trickles must not hold a connection (and
/// one of the `server.max_connections` slots) forever.
#[test]
fn slow_and_stalled_bodies_are_cut_off() {
    slow_bodies(2);
}

/// The same with a third kind: a chunked body over the limit (413 at once) whose chunks never
/// end. actix-http 3.20 drains a chunked body after the response instead of closing, so this
/// connection is held until the client stops: a known gap (docs/security.md, "Known gaps").
#[test]
#[ignore = "actix-http drains an endless chunked body after a 413 (docs/security.md, Known gaps)"]
fn endless_chunked_bodies_after_a_413_are_cut_off() {
    slow_bodies(3);
}

/// 20 slow clients (kinds in turn: stalled, trickling, endless chunked after a 413) against
/// `server.max_connections = 20`.
fn slow_bodies(kinds: usize) {
    let d = Daemon::start(tight_config().set("server.max_connections", "20"));
    let port = d.port;
    let stalled_head = post("/api/v1/sessions/validate", &[], &[]);
    let stalled_head: Vec<u8> = String::from_utf8(stalled_head)
        .unwrap()
        .replace("Content-Length: 0", "Content-Length: 100")
        .into_bytes();
    let over_limit = head(
        "POST",
        "/api/v1/sessions/validate",
        &[b"Content-Type: application/json", b"Transfer-Encoding: chunked"],
    );
    let chunked_head = chunked(70_000, b'a');
    let chunked_head = chunked_head[..chunked_head.len() - 5].to_vec(); // without the last chunk
    let slow = thread::spawn(move || {
        in_parallel(20, move |i| {
            let (prefix, trickle): (Vec<u8>, Vec<u8>) = match i % kinds {
                // A body that stalls after five of its 100 bytes.
                0 => ([stalled_head.as_slice(), b"{\"tok"].concat(), Vec::new()),
                // A body that trickles one byte every 500 ms.
                1 => ([stalled_head.as_slice(), b"{\"tok"].concat(), b"en\": \"".repeat(10)),
                // A chunked body over max_body_bytes (413 at once), then endless 1-byte chunks.
                _ => ([over_limit.as_slice(), &chunked_head].concat(), b"1\r\na\r\n".repeat(10)),
            };
            slow_client(port, None, &prefix, &trickle, Duration::from_millis(500), CUT_OFF_WITHIN)
        })
    });
    thread::sleep(Duration::from_millis(1500));
    // Every connection slot is held by a slow body now; a normal client must still get in.
    let served = livez(d.port);
    let ends = slow.join().unwrap();
    let mut failures = Vec::new();
    match served {
        Ok(took) if took < SERVED_WITHIN => eprintln!("normal client served in {took:?}"),
        Ok(took) => failures.push(format!(
            "a normal client waited {took:?}: 20 slow bodies hold all server.max_connections = 20"
        )),
        Err(e) => failures.push(format!("a normal client was not served: {e}")),
    }
    for (i, s) in ends.iter().enumerate() {
        let kind = ["stalled", "trickling", "endless chunked after 413"][i % kinds];
        eprintln!("{kind} body {i}: {s:?}");
        if let Err(e) = check_cut_off(&format!("{kind} body {i}"), s, &[400, 408, 413]) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_healthy(&d);
}

// ---------------------------------------------------------------------------------------------
// 6. Many connections from one client
// ---------------------------------------------------------------------------------------------

/// Raises the soft open-files limit to at least `want` (within the hard limit); returns it.
#[allow(unsafe_code)]
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit; no other memory.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

/// One request on an open keep-alive connection: its status, or what happened instead.
fn request_on(s: &mut TcpStream, req: &[u8]) -> Result<u16, String> {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let a = read_answer(s, 1, Duration::ZERO, Instant::now());
    a.first().map(|r| r.status).ok_or_else(|| a.summary())
}

#[test]
fn many_idle_connections_from_one_client() {
    const IDLE: usize = 1500;
    let limit = raise_nofile(IDLE as u64 + 512);
    assert!(limit >= IDLE as u64 + 64, "open-files limit {limit} too low for {IDLE} connections");
    let d = Daemon::start(tight_config().set("server.max_connections", "200"));
    let port = d.port;
    let before = mem(&d);
    let base_fds = baseline_fds(&d);

    // A keep-alive client that was there first keeps being served (every 100 ms, well within
    // keep_alive_seconds = 1) during the whole flood.
    let mut kept = connect(port);
    let ka_req = head("GET", "/livez", &[]);
    assert_eq!(request_on(&mut kept, &ka_req), Ok(200));
    let stop = Arc::new(Mutex::new(false));
    let kept_alive = {
        let stop = Arc::clone(&stop);
        let ka_req = ka_req.clone();
        thread::spawn(move || {
            let mut statuses = Vec::new();
            let mut idle_since = Instant::now();
            while !*stop.lock().unwrap() {
                let (t, idle) = (Instant::now(), idle_since.elapsed());
                let result = request_on(&mut kept, &ka_req);
                idle_since = Instant::now();
                let failed = result != Ok(200);
                statuses
                    .push((result.map_err(|e| format!("{e} after {idle:?} idle")), t.elapsed()));
                if failed {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            statuses
        })
    };

    // The flood: idle connections, none of which sends a byte.
    let started = Instant::now();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut idle = Vec::with_capacity(IDLE);
    let mut connect_failures = 0;
    let mut max_fds = 0;
    for i in 0..IDLE {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => {
                s.set_nonblocking(true).unwrap();
                idle.push((s, None::<(Duration, Vec<u8>)>));
            }
            Err(_) => connect_failures += 1,
        }
        if i % 100 == 0 {
            max_fds = max_fds.max(open_fds(d.pid()));
        }
    }
    eprintln!(
        "{} idle connections open after {:?} ({connect_failures} connects timed out)",
        idle.len(),
        started.elapsed()
    );

    // A new client during the flood: it waits in the accept queue behind the idle ones, which
    // the daemon answers 408 one `client_request_timeout_ms` after accepting each.
    let newcomer = thread::spawn(move || livez(port));

    // Every idle connection ends with a 408 and a close (or just a close), never a 5xx.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut chunk = [0u8; 512];
    loop {
        let mut pending = 0;
        for (s, end) in idle.iter_mut() {
            if end.is_some() {
                continue;
            }
            match s.read(&mut chunk) {
                Ok(0) => *end = Some((started.elapsed(), b"EOF".to_vec())),
                Ok(n) => *end = Some((started.elapsed(), chunk[..n.min(16)].to_vec())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => pending += 1,
                Err(e) => *end = Some((started.elapsed(), format!("{e}").into_bytes())),
            }
        }
        max_fds = max_fds.max(open_fds(d.pid()));
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let newcomer = newcomer.join().unwrap();
    *stop.lock().unwrap() = true;
    let kept_statuses = kept_alive.join().unwrap();

    let mut by_second = std::collections::BTreeMap::<u64, usize>::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (_, end) in &idle {
        match end {
            Some((t, bytes)) => {
                *by_second.entry(t.as_secs()).or_default() += 1;
                *outcomes.entry(String::from_utf8_lossy(bytes).into_owned()).or_default() += 1;
            }
            None => *outcomes.entry("still open".into()).or_default() += 1,
        }
    }
    eprintln!("idle connection outcomes: {outcomes:?}");
    eprintln!("idle connections ended per second since the flood began: {by_second:?}");
    eprintln!("daemon fds: baseline {base_fds}, at most {max_fds} during the flood");
    eprintln!("new client during the flood: {newcomer:?}");
    let slow_ka = kept_statuses.iter().map(|(_, t)| *t).max();
    eprintln!("{} requests on the kept-alive connection, slowest {slow_ka:?}", kept_statuses.len());

    let mut failures = Vec::new();
    if let Some(bad) = kept_statuses.iter().find(|(s, _)| *s != Ok(200)) {
        failures.push(format!("the kept-alive connection got {bad:?} during the flood"));
    }
    if let Err(e) = &newcomer {
        failures.push(format!("a new client during the flood: {e}"));
    }
    let wrong: Vec<&String> = outcomes
        .keys()
        .filter(|k| !(k.starts_with("HTTP/1.1 408") || *k == "EOF" || k.contains("reset")))
        .collect();
    if !wrong.is_empty() {
        failures.push(format!("idle connections ended with {wrong:?}"));
    }
    // Beyond server.max_connections the connections wait in the kernel's accept queue: the
    // daemon never holds many more descriptors than the limit.
    if max_fds > base_fds + 200 + 16 {
        failures.push(format!(
            "the daemon held {max_fds} descriptors with server.max_connections = 200 \
             (baseline {base_fds})"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(idle);
    let took = livez(port).unwrap_or_else(|e| panic!("after the flood: {e}"));
    assert!(took < SERVED_WITHIN, "a client after the flood waited {took:?}");
    assert_mem_bounded(&d, before, "1500 idle connections");
    assert_healthy(&d);
}

// ---------------------------------------------------------------------------------------------
// 7. Malformed HTTP
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_http_never_gets_a_5xx() {
    let d = Daemon::start(Config::default());
    // A validate request up to its headers; `extra` adds header lines, the blank line, a body.
    let v = |extra: &[u8]| {
        let start = b"POST /api/v1/sessions/validate HTTP/1.1\r\nHost: x\r\n";
        [start.as_slice(), b"Content-Type: application/json\r\n", extra].concat()
    };
    // A /livez request with these header lines (and the blank line).
    let l =
        |extra: &[u8]| [b"GET /livez HTTP/1.1\r\nHost: x\r\n".as_slice(), extra, b"\r\n"].concat();
    let close = b"Connection: close\r\n";
    let mut c = Cases::default();
    // LIMITATION (every CODEC_400 case): refused by actix-http before a request exists.
    c.add("garbage bytes", b"\x00\x01\x02\xff\xfe garbage\r\n\r\n", CODEC_400);
    let binary: Vec<u8> =
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    c.add("random binary", binary, CODEC_400);
    c.add("HTTP/0.9", b"GET /livez\r\n", CODEC_400);
    c.add("HTTP/2.0 request line", b"GET /livez HTTP/2.0\r\nHost: x\r\n\r\n", CODEC_400);
    c.add("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", CODEC_400);
    c.add("lower-case version", b"GET /livez http/1.1\r\nHost: x\r\n\r\n", CODEC_400);
    c.add("HTTP/1.1 without Host", b"GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n", CODEC_400);
    let cl_te = v(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    c.add("Content-Length and Transfer-Encoding", cl_te, CODEC_400);
    c.add("Content-Length -1", v(b"Content-Length: -1\r\n\r\n"), CODEC_400);
    c.add("Content-Length +2", v(b"Content-Length: +2\r\n\r\n{}"), CODEC_400);
    c.add("Content-Length 0x2", v(b"Content-Length: 0x2\r\n\r\n{}"), CODEC_400);
    c.add("Content-Length 2 2", v(b"Content-Length: 2 2\r\n\r\n{}"), CODEC_400);
    let overflow = v(b"Content-Length: 99999999999999999999999\r\n\r\n");
    c.add("Content-Length overflowing u64", overflow, CODEC_400);
    let two = v(b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}");
    c.add("two different Content-Lengths", two, CODEC_400);
    let gzip = v(b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
    c.add("Transfer-Encoding: gzip, chunked", gzip, CODEC_400);
    c.add("Transfer-Encoding: identity", v(b"Transfer-Encoding: identity\r\n\r\n"), CODEC_400);
    let te2 = v(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    c.add("Transfer-Encoding twice", te2, CODEC_400);
    c.add("NUL in a header value", l(b"X-A: a\x00b\r\n"), CODEC_400);
    c.add("CR in a header value", l(b"X-A: a\rb\r\n"), CODEC_400);
    c.add("header without a colon", l(b"X-A\r\n"), CODEC_400);
    c.add("space before the colon", l(b"X-A : a\r\n"), CODEC_400);
    c.add("obsolete line folding", l(b"X-A: a\r\n  b\r\n"), CODEC_400);
    c.add("bare CR line ends", b"GET /livez HTTP/1.1\rHost: x\r\r", CODEC_400);
    c.add("control byte in the method", b"GE\x01T /livez HTTP/1.1\r\nHost: x\r\n\r\n", CODEC_400);
    let pipelined = [l(b"X-A: a\x00b\r\n"), l(b"")].concat();
    c.add("pipelined after a bad one", pipelined, CODEC_400);
    // Framing errors inside a chunked body surface through the body extractor: contract JSON.
    let te = b"Transfer-Encoding: chunked\r\n\r\n";
    c.add("chunk size zz", v(&[te.as_slice(), b"zz\r\nabc\r\n0\r\n\r\n"].concat()), BAD_REQUEST);
    c.add("chunk size -5", v(&[te.as_slice(), b"-5\r\nabc\r\n0\r\n\r\n"].concat()), BAD_REQUEST);
    let huge_chunk = [te.as_slice(), b"ffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"].concat();
    c.add("chunk size overflowing", v(&huge_chunk), BAD_REQUEST);
    let long_chunk = [te.as_slice(), b"2\r\nabcdef\r\n0\r\n\r\n"].concat();
    c.add("chunk longer than its size", v(&long_chunk), BAD_REQUEST);
    let max = v(b"Content-Length: 18446744073709551615\r\n\r\n{}");
    c.add("Content-Length u64::MAX", max, Expect::Contract(413, &["payload_too_large"]));
    // Odd but well-formed: ordinary answers.
    let absurd = b"ABSURDMETHODNAME /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    c.add("absurd method", absurd, NOT_FOUND);
    let long_method =
        format!("{} /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "A".repeat(10_000));
    c.add("10 KB method", long_method, NOT_FOUND);
    c.add(
        "CONNECT",
        b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\nConnection: close\r\n\r\n",
        NOT_FOUND,
    );
    c.add("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", NOT_FOUND);
    let absolute =
        b"GET http://evil.example/livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    c.add("absolute-form target", absolute, Expect::Status(200));
    c.add("HTTP/1.0", b"GET /livez HTTP/1.0\r\n\r\n", Expect::Status(200));
    c.add(
        "bare LF line ends",
        b"GET /livez HTTP/1.1\nHost: x\nConnection: close\n\n",
        Expect::Status(200),
    );
    c.add(
        "GET with a body",
        l(b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"),
        Expect::Status(200),
    );
    let upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\n";
    let ws_post =
        [b"POST /ws HTTP/1.1\r\nHost: x\r\n".as_slice(), upgrade, close, b"\r\n"].concat();
    c.add("POST to the WebSocket path", ws_post, NOT_FOUND);
    let ws_get = [b"GET /ws HTTP/1.1\r\nHost: x\r\n".as_slice(), upgrade, close, b"\r\n"].concat();
    // The handshake authenticates first: no token, whatever else is missing.
    c.add("WebSocket upgrade without a key", ws_get, Expect::Contract(401, &["token_missing"]));
    run_cases(&d, c);

    // Pipelining: a good request then a bad one gets the 200 then the codec's 400 and a close.
    let a = exchange(
        d.port,
        [
            b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
            b"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n",
        ]
        .concat(),
        2,
    );
    eprintln!("[good then bad, pipelined] {}", a.summary());
    let statuses: Vec<u16> = a.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400], "good then bad, pipelined: {}", a.summary());
    assert!(a.closed, "good then bad, pipelined: {}", a.summary());
    // 100 pipelined requests on one connection are all answered.
    let mut many = Vec::new();
    for _ in 0..99 {
        many.extend_from_slice(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    many.extend_from_slice(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let a = exchange(d.port, many, 100);
    assert!(
        a.responses.len() == 100 && a.responses.iter().all(|r| r.status == 200),
        "100 pipelined requests: {} answers, {}",
        a.responses.len(),
        a.summary().chars().take(500).collect::<String>()
    );
    assert_healthy(&d);
}
