//! The Redis harness: a real `redis-server` per test on a free loopback port (never the
//! machine's own Redis), with the outages the daemon must survive — `kill -9`, a hang (SIGSTOP),
//! a restart that lost everything or one that kept its data — and a tiny RESP client for the
//! assertions (`GET`, `KEYS`, `TTL`, `SUBSCRIBE`). Also the daemon-side helpers the Redis-mode
//! tests share: the config of an instance on a Redis, and waiting for a validation mode.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Config, Daemon, Resp, poll_until, send_signal, toml_str, wait_timeout};
use crate::tokens::{enhanced, hs256};

/// How long a `redis-server` gets to answer PING after it was spawned (AOF load included).
const REDIS_STARTUP: Duration = Duration::from_secs(10);
/// Read/write timeout of the RESP client (a paused server fails the call, it does not hang it).
const RESP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` started by the test, killed on drop (resumed first if paused).
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    durable: bool,
    paused: bool,
    dir: TempDir,
}

/// A free loopback port: bind `127.0.0.1:0`, read it, release it.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl RedisServer {
    /// A server that keeps nothing on disk (`--save "" --appendonly no`): a restart loses
    /// everything.
    pub fn start() -> RedisServer {
        RedisServer::launch(false)
    }

    /// A server with an append-only file fsynced on every write (`--appendonly yes
    /// --appendfsync always`): `restart_keeping_data` brings back every acknowledged write,
    /// even after `kill9`.
    pub fn start_durable() -> RedisServer {
        RedisServer::launch(true)
    }

    fn launch(durable: bool) -> RedisServer {
        let dir = tempfile::Builder::new().prefix("sessiond-it-redis-").tempdir().unwrap();
        let mut server =
            RedisServer { child: None, port: free_port(), durable, paused: false, dir };
        server.spawn();
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis-server.log")
    }

    /// What the server wrote so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn redis-server (is it installed?): {e}"));
        let deadline = Instant::now() + REDIS_STARTUP;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server on port {} exited with {status} at start:\n{}",
                    self.port,
                    self.log()
                );
            }
            if ping(self.port) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not answer PING within {REDIS_STARTUP:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        self.paused = false;
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// `kill -9`: the server is gone (connections refused) until a restart.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("redis-server running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.paused = false;
    }

    /// SIGSTOP: the server hangs (connections are accepted by the kernel, nothing answers).
    pub fn pause(&mut self) {
        assert!(!self.paused, "redis-server already paused");
        send_signal(self.pid(), libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after `pause`: it answers again, with its data.
    pub fn resume(&mut self) {
        assert!(self.paused, "redis-server not paused");
        send_signal(self.pid(), libc::SIGCONT);
        self.paused = false;
    }

    /// A fresh process on the same port with nothing in it ("Redis lost everything"); kills
    /// the running one first if there is one.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop_now();
        }
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("appendonly") || name.ends_with(".rdb") || name.ends_with(".aof") {
                let path = entry.path();
                if path.is_dir() {
                    fs::remove_dir_all(path).unwrap();
                } else {
                    fs::remove_file(path).unwrap();
                }
            }
        }
        self.spawn();
    }

    /// A new process on the same port that loads what the old one acknowledged (its
    /// append-only file); kills the running one first if there is one. Only for a server made
    /// by `start_durable`.
    pub fn restart_keeping_data(&mut self) {
        assert!(self.durable, "restart_keeping_data needs RedisServer::start_durable");
        if self.child.is_some() {
            self.stop_now();
        }
        self.spawn();
    }

    fn stop_now(&mut self) {
        if self.paused {
            send_signal(self.pid(), libc::SIGCONT);
            self.paused = false;
        }
        self.kill9();
    }

    /// A new RESP connection to it.
    pub fn conn(&self) -> RedisConn {
        RedisConn::connect(self.port)
            .unwrap_or_else(|e| panic!("cannot connect to redis-server:{}: {e}", self.port))
    }

    /// One command on a new connection.
    pub fn command(&self, args: &[&str]) -> Reply {
        self.conn().command(args)
    }

    /// `KEYS pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self.command(&["KEYS", pattern]);
        reply
            .array()
            .unwrap_or_else(|| panic!("KEYS {pattern}: {reply:?}"))
            .iter()
            .map(|k| k.text().unwrap_or_else(|| panic!("KEYS {pattern}: {reply:?}")))
            .collect()
    }

    /// `TTL key` (-1: no expiry, -2: no such key).
    pub fn ttl(&self, key: &str) -> i64 {
        let reply = self.command(&["TTL", key]);
        reply.int().unwrap_or_else(|| panic!("TTL {key}: {reply:?}"))
    }

    /// Subscribes to a channel (the subscription is active when this returns).
    pub fn subscribe(&self, channel: &str) -> Subscription {
        Subscription::start(self.port, channel)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                send_signal(child.id(), libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = wait_timeout(&mut child, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail = if log.len() > 4_000 { &log[log.len() - 4_000..] } else { &log[..] };
            eprintln!("--- redis-server:{} log ---\n{tail}\n--- end of log ---", self.port);
        }
    }
}

/// PING over a fresh connection answers `+PONG` (a loading or paused server does not).
fn ping(port: u16) -> bool {
    let Ok(mut conn) = RedisConn::connect_with_timeout(port, Duration::from_millis(500)) else {
        return false;
    };
    matches!(conn.try_command(&["PING"]), Ok(Reply::Status(s)) if s == "PONG")
}

// --- RESP ---

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A status or bulk string as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }
}

/// The RESP encoding of a command.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one reply.
fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let line = line.strip_suffix("\r\n").ok_or_else(|| bad(format!("bad line {line:?}")))?;
    let (kind, rest) = line.split_at(1);
    let number = || rest.parse::<i64>().map_err(|_| bad(format!("bad number in {line:?}")));
    match kind {
        "+" => Ok(Reply::Status(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Int(number()?)),
        "$" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0u8; usize::try_from(n).unwrap() + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(buf.len() - 2);
            Ok(Reply::Bulk(Some(buf)))
        }
        "*" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let items = (0..n).map(|_| read_reply(r)).collect::<io::Result<Vec<_>>>()?;
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(bad(format!("unknown reply type in {line:?}"))),
    }
}

/// One RESP connection.
pub struct RedisConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RedisConn {
    pub fn connect(port: u16) -> io::Result<RedisConn> {
        RedisConn::connect_with_timeout(port, RESP_TIMEOUT)
    }

    fn connect_with_timeout(port: u16, timeout: Duration) -> io::Result<RedisConn> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(RedisConn { reader: BufReader::new(stream), writer })
    }

    /// Sends a command and reads its reply.
    pub fn try_command(&mut self, args: &[&str]) -> io::Result<Reply> {
        self.writer.write_all(&encode(args))?;
        read_reply(&mut self.reader)
    }

    /// Sends a command and reads its reply; an I/O error fails the test.
    pub fn command(&mut self, args: &[&str]) -> Reply {
        self.try_command(args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }
}

/// A subscription to one channel: a thread reads the pushed messages.
pub struct Subscription {
    channel: String,
    messages: mpsc::Receiver<String>,
    stream: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl Subscription {
    fn start(port: u16, channel: &str) -> Subscription {
        let mut conn = RedisConn::connect(port).unwrap();
        let confirm = conn.command(&["SUBSCRIBE", channel]);
        assert_eq!(
            confirm.array().and_then(|a| a.first()).and_then(Reply::text).as_deref(),
            Some("subscribe"),
            "SUBSCRIBE {channel}: {confirm:?}"
        );
        let stream = conn.writer.try_clone().unwrap();
        // The reader blocks until a message or the shutdown on drop.
        conn.reader.get_ref().set_read_timeout(None).unwrap();
        let (tx, messages) = mpsc::channel();
        let mut reader = conn.reader;
        let handle = std::thread::spawn(move || {
            while let Ok(reply) = read_reply(&mut reader) {
                let Some(parts) = reply.array() else { continue };
                if parts.len() == 3 && parts[0].text().as_deref() == Some("message") {
                    let Some(payload) = parts[2].text() else { continue };
                    if tx.send(payload).is_err() {
                        return;
                    }
                }
            }
        });
        Subscription { channel: channel.to_string(), messages, stream, reader: Some(handle) }
    }

    /// The next message, if one comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Messages parsed as JSON, collected until `done` says the set is complete (then for
    /// `grace` more, to catch duplicates) or `limit` passes.
    pub fn collect_json(
        &self,
        limit: Duration,
        grace: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = Instant::now() + limit;
        let mut end: Option<Instant> = None;
        loop {
            let stop_at = end.unwrap_or(deadline);
            let now = Instant::now();
            if now >= stop_at {
                return out;
            }
            if let Some(m) = self.next(stop_at - now) {
                let v: Value = serde_json::from_str(&m).unwrap_or_else(|e| {
                    panic!("message on {} is not JSON ({e}): {m:?}", self.channel)
                });
                out.push(v);
            }
            if end.is_none() && done(&out) {
                end = Some(Instant::now() + grace);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

// --- daemon side ---

/// A key prefix unique to this test run and name.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("it{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The Redis events channel of a prefix.
pub fn events_channel(prefix: &str) -> String {
    format!("{prefix}:events")
}

/// An instance on this Redis with this prefix: small breaker values (2 failures, 1 success,
/// 1 s open, 100 ms timeout) so outages are seen fast, `fsync = "always"` so the journal
/// survives `kill -9`, and the degraded policy given.
pub fn redis_config(redis: &RedisServer, prefix: &str, policy: &str) -> Config {
    Config::default()
        .set_str("sessions.redis_url", &redis.url())
        .set_str("sessions.key_prefix", prefix)
        .set_str("fallback.fsync", "always")
        .set("breaker.failure_threshold", "2")
        .set("breaker.success_threshold", "1")
        .set("breaker.open_seconds", "1")
        .set("breaker.op_timeout_ms", "100")
        .set("degraded.policy", &toml_str(policy))
}

/// [`redis_config`] with a 2 s operation timeout: for tests that do not hang Redis (a killed
/// Redis refuses at once), so that a loaded test machine cannot trip the breaker by itself.
pub fn steady_redis_config(redis: &RedisServer, prefix: &str) -> Config {
    redis_config(redis, prefix, "jwt_only").set("breaker.op_timeout_ms", "2000")
}

/// A token of the enhanced layout for this user and session id (valid one hour).
pub fn token(user: &str, sid: &str) -> String {
    hs256(&enhanced(user, &format!("{user}@example.com"), "user", sid))
}

/// How long an instance gets to notice an outage or a recovery.
pub const MODE_DEADLINE: Duration = Duration::from_secs(10);

/// Validates `token` until the answer is 200 with this `mode` (bounded by `MODE_DEADLINE`);
/// every answer on the way must be 200 `valid: true` (the token's session is known and live):
/// a 5xx or a 401 on the way fails the test. Returns the matching answer and how long it took.
#[track_caller]
pub fn wait_for_mode(d: &Daemon, token: &str, mode: &str) -> (Value, Duration) {
    let start = Instant::now();
    let mut last = None;
    let found = poll_until(MODE_DEADLINE, || {
        let r = d.validate(token);
        assert!(
            r.status == 200 && r.json()["valid"] == json!(true),
            "while waiting for mode {mode}, a known live session got {} {} after {:?}",
            r.status,
            r.body,
            start.elapsed()
        );
        let v = r.json();
        if v["mode"] == json!(mode) {
            return Some(v);
        }
        last = Some(v);
        None
    });
    match found {
        Some(v) => (v, start.elapsed()),
        None => panic!(
            "no validation answered mode {mode:?} within {MODE_DEADLINE:?}; last answer {}",
            last.unwrap_or(Value::Null)
        ),
    }
}

/// Asserts a 200 validation with this mode whose session is `sid`'s; returns the body.
#[track_caller]
pub fn expect_valid(r: &Resp, mode: &str, sid: &str) -> Value {
    assert_eq!(r.status, 200, "{}: expected 200, got {} {}", r.what, r.status, r.body);
    let v = r.json();
    assert_eq!(v["valid"], json!(true), "{v}");
    assert_eq!(v["mode"], json!(mode), "expected mode {mode}: {v}");
    assert_eq!(v["identity"]["session_id"], json!(sid), "{v}");
    assert_eq!(v["session"]["session_id"], json!(sid), "expected the session of {sid}: {v}");
    v
}

/// Asserts the degraded answer for a session the instance does not know (`jwt_only`).
#[track_caller]
pub fn expect_valid_unknown(r: &Resp, sid: &str) -> Value {
    assert_eq!(r.status, 200, "{}: expected 200, got {} {}", r.what, r.status, r.body);
    let v = r.json();
    assert_eq!(v["valid"], json!(true), "{v}");
    assert_eq!(v["mode"], json!("degraded"), "{v}");
    assert_eq!(v["session"], Value::Null, "an unknown session has session null: {v}");
    assert_eq!(v["identity"]["session_id"], json!(sid), "{v}");
    assert!(v["refresh_recommended"].is_boolean(), "{v}");
    v
}

/// Every key in this test's Redis has an expiry (`TTL` > 0); at least one key mentions the
/// prefix (the data is really there). Returns the keys.
#[track_caller]
pub fn assert_every_key_expires(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let keys = redis.keys("*");
    assert!(
        keys.iter().any(|k| k.contains(prefix)),
        "no key with the prefix {prefix:?} in Redis: {keys:?}"
    );
    let forever: Vec<String> = keys.iter().filter(|k| redis.ttl(k) == -1).cloned().collect();
    assert!(forever.is_empty(), "keys without an expiry: {forever:?} (all keys: {keys:?})");
    keys
}

/// Asserts `check` now; when it fails, polls it for a while longer so the failure says
/// whether the daemon was late (eventually right) or wrong.
#[track_caller]
pub fn assert_now(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let Err(first) = check() else { return };
    let start = Instant::now();
    let later = poll_until(Duration::from_secs(5), || check().ok());
    match later {
        Some(()) => panic!(
            "{what}: wrong at first ({first}), right {:?} later: the daemon answered before \
             it was consistent",
            start.elapsed()
        ),
        None => panic!("{what}: {first} (still wrong 5 s later)"),
    }
}

/// `Ok` when `r` is a 200 validation in normal mode with the session `sid`.
pub fn check_normal(r: &Resp, sid: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    let ok = r.status == 200
        && v["valid"] == json!(true)
        && v["mode"] == json!("normal")
        && v["session"]["session_id"] == json!(sid);
    if ok {
        Ok(())
    } else {
        Err(format!("expected 200 normal with the session {sid}, got {} {}", r.status, r.body))
    }
}

#[test]
fn redis_harness_start_command_subscribe_pause_restart() {
    let mut redis = RedisServer::start_durable();
    assert_ne!(redis.port(), 6379, "never the machine's Redis");
    assert_eq!(redis.command(&["SET", "k", "v", "EX", "100"]), Reply::Status("OK".into()));
    assert_eq!(redis.command(&["GET", "k"]).text().as_deref(), Some("v"));
    assert_eq!(redis.keys("*"), vec!["k".to_string()]);
    assert!(redis.ttl("k") > 0);
    assert_eq!(redis.ttl("nope"), -2);

    let sub = redis.subscribe("chan");
    assert_eq!(redis.command(&["PUBLISH", "chan", "{\"a\":1}"]), Reply::Int(1));
    assert_eq!(sub.next(Duration::from_secs(5)).as_deref(), Some("{\"a\":1}"));
    drop(sub);

    redis.pause();
    assert!(!ping(redis.port()), "a paused server must not answer");
    redis.resume();
    assert!(ping(redis.port()));

    redis.kill9();
    assert!(!ping(redis.port()));
    redis.restart_keeping_data();
    assert_eq!(redis.command(&["GET", "k"]).text().as_deref(), Some("v"), "data kept");

    redis.pause();
    redis.restart();
    assert_eq!(redis.command(&["GET", "k"]), Reply::Bulk(None), "data gone");

    let mut plain = RedisServer::start();
    plain.command(&["SET", "x", "1"]);
    plain.restart();
    assert!(plain.keys("*").is_empty());
    plain.pause();
    // Dropped while paused: resumed and killed.
}
