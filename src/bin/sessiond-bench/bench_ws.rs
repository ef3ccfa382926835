//! `sessiond-bench ws-connect | ws-revoke | ws-fanout | ws`: the WebSocket gateway's numbers
//! (issue 4, "Speed"; CONTRACT.md section 5).
//!
//! The tool starts its own release `sessiond` (embedded store; in Redis mode with its own
//! `redis-server` on a free loopback port for `ws-fanout`), mints the tokens itself and creates
//! their sessions through the API, then opens the WebSockets from **worker processes**: it
//! re-executes itself as `sessiond-bench ws-worker` N times, each worker holding a share of
//! the connections (one process may hold 20,000 descriptors, and the daemon already needs one
//! per connection). Workers report over stdout, one line per fact, each stamped with the wall
//! clock in nanoseconds (the one clock every process on the machine shares):
//!
//! ```text
//! READY <connections>                 tokens loaded, waiting for GO on stdin
//! CONNECTED <ok> <failed> <us>        every handshake done (welcome received, or failed)
//! FAIL <idx> <why…>                   a handshake that failed (the first 20), body verbatim
//! RSS <kib>                           the worker's own resident memory
//! EV <idx> <event> <id> <recv_ns> <at_ms>   an `event` frame
//! TXT <idx> <recv_ns> <frame…>        any other frame after the welcome, verbatim
//! CLOSE <idx> <code> <recv_ns> <reason…>    a close frame
//! GONE <idx> <why…>                   the connection ended without a close frame
//! ```
//!
//! Each phase prints one `RESULT mode=ws-… key=value…` line. After the phases the daemon is
//! SIGTERMed with every socket still open (`RESULT mode=ws-shutdown`: each must get 1001), so
//! the server closes the TCP connections first and the next run finds the client side's
//! ephemeral ports free.
//!
//! A worker exits when its stdin closes, so a coordinator that dies takes its workers along.
//! Everything the coordinator starts (workers, daemons, Redis, the temp dir) is stopped and
//! removed at the end, on error too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt as _;
use sessiond_actors::domain::now_seconds;
use sessiond_actors::token::{Algorithm, sign_hmac};
use tokio_tungstenite::tungstenite::Message;

use crate::keepalive;
use crate::procs::{
    self, DropReport, Redis, ScratchDir, cpu_ms, now_ns, percentile_ns as percentile, scratch_dir,
    status_field, wait_timeout,
};
use crate::ws_open::{Ws, describe, upgrade};

const SECRET: &str = "ws-bench-hmac-secret-0123456789abcdef0123";
const API_KEY: &str = "ws-bench-api-key-0123456789abcdef";
/// The daemon's per-user admission limit (`MAX_CONNECTIONS_PER_USER`).
const PER_USER_LIMIT: usize = 100;
/// The issue's targets, printed next to the measurements.
const TARGET_RATE: f64 = 5_000.0;
const TARGET_KIB_PER_CONN: f64 = 8.0;
const TARGET_REVOKE_P99_MS: f64 = 5.0;
const TARGET_FANOUT_MS: f64 = 250.0;
/// One handshake (connect, upgrade, welcome) may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one revocation's event and close may take before we count it as lost.
const REVOKE_WAIT: Duration = Duration::from_secs(5);
/// How long the `mode degraded` / `mode normal` line and the `service.*` events may take.
const MODE_WAIT: Duration = Duration::from_secs(30);
const EVENT_WAIT: Duration = Duration::from_secs(30);
/// `[breaker]` of the Redis-mode daemon (open_seconds short: recovery is measured too).
const BREAKER: &str = "[breaker]\nfailure_threshold = 5\nsuccess_threshold = 2\nopen_seconds = 2\n\
                       op_timeout_ms = 250\n";
/// Failed handshakes a worker describes (the rest are only counted).
const FAILURES_SHOWN: usize = 20;
/// Threads creating the sessions.
const CREATORS: usize = 4;

/// What `ws-*` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phases {
    /// Connect, report rate and RSS.
    Connect,
    /// Connect, then revoke sessions one at a time.
    Revoke,
    /// Redis mode: connect, kill Redis, time `service.degraded` (and `service.recovered`).
    Fanout,
    /// All of the above: connect and revoke on an embedded daemon, then fan-out on one in
    /// Redis mode.
    All,
}

/// The options of the `ws-*` modes.
#[derive(Args, Clone, Debug)]
pub struct WsArgs {
    /// WebSocket connections, one session each.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Users the sessions are spread over (the daemon admits 100 connections per user).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Load-client processes; each holds an equal share of the connections.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Tokio threads per worker process.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
    /// Handshakes in flight per worker process.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Sessions revoked one at a time (ws-revoke, ws).
    #[arg(long, default_value_t = 200)]
    pub revocations: usize,
    /// Skip restarting Redis and timing `service.recovered` (ws-fanout, ws).
    #[arg(long)]
    pub no_recover: bool,
    /// Loopback source addresses the connections are spread over (connection i connects from
    /// 127.0.0.(2 + i % N)); 0: all from the kernel's default. Beyond ~14,000 connections from
    /// one address to one port, the kernel's search for a free ephemeral port slows connect()
    /// down: the client's cost, not the daemon's.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=250))]
    pub source_addrs: u8,
    /// Seconds to wait after the last welcome before the RSS is read (and before the revoke
    /// and fan-out phases start).
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Seconds to wait, after the sessions exist and before connecting, e.g. to attach a
    /// profiler to the daemon (`heaptrack -p <pid>`; the pid is printed on stderr).
    #[arg(long, default_value_t = 0)]
    pub pause_before_connect: u64,
    /// The sessiond binary (default: next to this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The redis-server binary (ws-fanout, ws).
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

/// The hidden `ws-worker` mode: one load-client process.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// The daemon's `host:port`.
    #[arg(long)]
    pub addr: String,
    /// A file of `<index> <token>` lines.
    #[arg(long)]
    pub tokens: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Connect from 127.0.0.(2 + index % N); 0: from the kernel's default address.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: u8,
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The 1-minute load average: other work on the box skews every number here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn session_id(run: &str, i: usize) -> String {
    format!("wsb-{run}-{i}")
}

fn user_of(i: usize, users: usize) -> usize {
    i % users
}

fn mint(run: &str, i: usize, users: usize, now: i64) -> Result<String, String> {
    let u = user_of(i, users);
    let claims = serde_json::json!({
        "sub": format!("ws-user-{u}"), "email": format!("ws-user-{u}@example.com"),
        "role": "user", "sid": session_id(run, i), "iat": now, "exp": now + 7200,
    });
    sign_hmac(SECRET.as_bytes(), Algorithm::HS256, &claims)
}

// ---------------------------------------------------------------------------------------------
// HTTP calls to the daemon's API

/// One API call (`X-Api-Key` set) on a keep-alive connection; on a transport error it is
/// retried once on a fresh connection (every request here is idempotent). Answers status and
/// body.
fn api(
    http: &mut keepalive::Conn,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let headers = [("X-Api-Key", API_KEY)];
    let body = body.unwrap_or("");
    let r = match http.request(method, path, &headers, body) {
        Ok(r) => r,
        Err(_) => http.request(method, path, &headers, body)?,
    };
    Ok((r.status, r.body))
}

// ---------------------------------------------------------------------------------------------
// The daemon and Redis

type Daemon = procs::Daemon<u64>;

impl Daemon {
    fn rss_kib(&self) -> Result<u64, String> {
        status_field(self.pid, "VmRSS:").ok_or_else(|| format!("no VmRSS for pid {}", self.pid))
    }
}

fn write_config(
    path: &Path,
    data: &Path,
    redis_port: Option<u16>,
    sessions: usize,
) -> Result<(), String> {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [tokens]\nhmac_secret = \"{SECRET}\"\n\n\
         [api]\nkeys = [\"{API_KEY}\"]\n\n\
         [fallback]\ndata_dir = \"{}\"\nfsync = \"interval\"\nmax_entries = {}\n\n\
         [ws]\npath = \"/ws\"\nheartbeat_interval_seconds = 15\nclient_timeout_seconds = 45\n",
        data.display(),
        sessions * 2 + 1000
    );
    if let Some(port) = redis_port {
        text.push_str(&format!(
            "\n[sessions]\nredis_url = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"wsbench\"\n\n\
             [degraded]\npolicy = \"jwt_only\"\n\n{BREAKER}"
        ));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Creates session `i` for every token through `POST /api/v1/sessions`, on a few keep-alive
/// connections.
fn create_sessions(addr: &str, tokens: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let chunk = tokens.len().div_ceil(CREATORS).max(1);
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = tokens
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut http = keepalive::Conn::new(addr, HTTP_TIMEOUT);
                    for t in part {
                        let body = serde_json::json!({ "token": t }).to_string();
                        let (status, answer) =
                            api(&mut http, "POST", "/api/v1/sessions", Some(&body))?;
                        if status != 201 && status != 200 {
                            return Err(format!("creating a session: HTTP {status} {answer}"));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a creator thread panicked".into())))
            .collect()
    });
    for r in results {
        r?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "created {} sessions in {secs:.1} s ({:.0}/s)",
        tokens.len(),
        tokens.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The coordinator's view of the workers

#[derive(Debug)]
enum Report {
    Ready(usize),
    Connected { ok: usize, failed: usize, us: u64 },
    Fail(String),
    Rss(u64),
    Event { idx: usize, event: String, id: String, recv_ns: u64, at_ms: i64 },
    Text { idx: usize, frame: String },
    Close { idx: usize, code: u16, recv_ns: u64, reason: String },
    Gone { idx: usize, why: String },
    Other(String),
    Exited,
}

fn parse_report(line: &str) -> Report {
    let parsed = (|| {
        let mut it = line.splitn(2, ' ');
        let tag = it.next()?;
        let rest = it.next().unwrap_or("");
        let mut f = rest.split(' ');
        Some(match tag {
            "READY" => Report::Ready(f.next()?.parse().ok()?),
            "CONNECTED" => Report::Connected {
                ok: f.next()?.parse().ok()?,
                failed: f.next()?.parse().ok()?,
                us: f.next()?.parse().ok()?,
            },
            "FAIL" => Report::Fail(rest.to_owned()),
            "RSS" => Report::Rss(f.next()?.parse().ok()?),
            "EV" => Report::Event {
                idx: f.next()?.parse().ok()?,
                event: f.next()?.to_owned(),
                id: f.next()?.to_owned(),
                recv_ns: f.next()?.parse().ok()?,
                at_ms: f.next()?.parse().ok()?,
            },
            "TXT" => {
                let mut p = rest.splitn(3, ' ');
                let idx = p.next()?.parse().ok()?;
                let _recv_ns = p.next()?;
                Report::Text { idx, frame: p.next().unwrap_or("").to_owned() }
            }
            "CLOSE" => {
                let mut p = rest.splitn(4, ' ');
                Report::Close {
                    idx: p.next()?.parse().ok()?,
                    code: p.next()?.parse().ok()?,
                    recv_ns: p.next()?.parse().ok()?,
                    reason: p.next().unwrap_or("").to_owned(),
                }
            }
            "GONE" => {
                let mut p = rest.splitn(2, ' ');
                Report::Gone {
                    idx: p.next()?.parse().ok()?,
                    why: p.next().unwrap_or("").to_owned(),
                }
            }
            _ => return None,
        })
    })();
    parsed.unwrap_or_else(|| Report::Other(line.to_owned()))
}

/// One worker process; its stdin closed (it exits) and reaped on drop.
struct Worker {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Worker {
    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("worker stdin closed")?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).map_err(|e| format!("worker: {e}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take()
            && !matches!(wait_timeout(&mut child, Duration::from_secs(5)), Ok(Some(_)))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Default, Clone)]
struct Conn {
    connected: bool,
    closed: bool,
    /// Targeted by the revoke phase.
    target: bool,
    revoked_ns: Option<u64>,
    close: Option<(u16, u64, String)>,
    degraded: Option<(u64, i64)>,
    recovered: Option<(u64, i64)>,
}

/// The workers and what they reported.
struct Fleet {
    workers: Vec<Worker>,
    rx: mpsc::Receiver<(usize, Report)>,
    conns: Vec<Conn>,
    ready: usize,
    /// Connections the ready workers hold tokens for.
    ready_conns: usize,
    connected_reports: Vec<Option<(usize, usize, u64)>>,
    worker_rss: Vec<Option<u64>>,
    failures: Vec<String>,
    anomalies: Vec<String>,
    alive: usize,
    degraded_count: usize,
    recovered_count: usize,
    /// `service.*` event ids seen, with their counts.
    service_ids: BTreeMap<String, usize>,
    /// A close code every connection may get now (1001 while the daemon stops).
    expected_close: Option<u16>,
    exited: usize,
}

impl Fleet {
    /// Writes each worker's token file and starts the workers; waits until all are READY.
    fn start(a: &WsArgs, addr: &str, tokens: &[String], dir: &Path) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let mut workers = Vec::new();
        for w in 0..a.workers {
            let path = dir.join(format!("worker-{w}.tokens"));
            let mut text = String::new();
            for (i, t) in tokens.iter().enumerate().filter(|(i, _)| i % a.workers == w) {
                text.push_str(&format!("{i} {t}\n"));
            }
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut child = Command::new(&exe)
                .arg("ws-worker")
                .args(["--addr", addr, "--tokens"])
                .arg(&path)
                .args(["--threads", &a.worker_threads.to_string()])
                .args(["--in-flight", &a.in_flight.to_string()])
                .args(["--source-addrs", &a.source_addrs.to_string()])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("{}: {e}", exe.display()))?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().ok_or("no worker stdout")?;
            workers.push(Worker { child: Some(child), stdin });
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    if tx.send((w, parse_report(line.trim_end()))).is_err() {
                        break;
                    }
                    line.clear();
                }
                let _ = tx.send((w, Report::Exited));
            });
        }
        let mut fleet = Fleet {
            conns: vec![Conn::default(); tokens.len()],
            connected_reports: vec![None; workers.len()],
            worker_rss: vec![None; workers.len()],
            workers,
            rx,
            ready: 0,
            ready_conns: 0,
            failures: Vec::new(),
            anomalies: Vec::new(),
            alive: 0,
            degraded_count: 0,
            recovered_count: 0,
            service_ids: BTreeMap::new(),
            expected_close: None,
            exited: 0,
        };
        let n = fleet.workers.len();
        if !fleet.wait(Duration::from_secs(60), |f| f.ready == n || f.exited > 0)
            || fleet.exited > 0
        {
            return Err(format!(
                "workers not ready ({} of {n}; {} exited)",
                fleet.ready, fleet.exited
            ));
        }
        if fleet.ready_conns != tokens.len() {
            return Err(format!(
                "the workers hold {} tokens, not {}",
                fleet.ready_conns,
                tokens.len()
            ));
        }
        Ok(fleet)
    }

    fn apply(&mut self, w: usize, r: Report) {
        match r {
            Report::Ready(n) => {
                self.ready += 1;
                self.ready_conns += n;
            }
            Report::Connected { ok, failed, us } => {
                self.connected_reports[w] = Some((ok, failed, us))
            }
            Report::Fail(text) => self.failures.push(text),
            Report::Rss(kib) => self.worker_rss[w] = Some(kib),
            Report::Event { idx, event, id, recv_ns, at_ms } => {
                let Some(c) = self.conns.get_mut(idx) else {
                    self.anomalies.push(format!("event for unknown connection {idx}"));
                    return;
                };
                match event.as_str() {
                    "session.revoked" if c.target && c.revoked_ns.is_none() => {
                        c.revoked_ns = Some(recv_ns);
                    }
                    "service.degraded" | "service.recovered" => {
                        *self.service_ids.entry(format!("{event} {id}")).or_default() += 1;
                        let slot = if event == "service.degraded" {
                            &mut c.degraded
                        } else {
                            &mut c.recovered
                        };
                        if slot.is_none() {
                            *slot = Some((recv_ns, at_ms));
                            if event == "service.degraded" {
                                self.degraded_count += 1;
                            } else {
                                self.recovered_count += 1;
                            }
                        } else {
                            self.anomalies.push(format!("connection {idx}: {event} twice ({id})"));
                        }
                    }
                    _ => self.anomalies.push(format!(
                        "connection {idx} (target={}): unexpected event {event} id {id}",
                        c.target
                    )),
                }
            }
            Report::Text { idx, frame } => {
                self.anomalies.push(format!("connection {idx}: unexpected frame {frame}"));
            }
            Report::Close { idx, code, recv_ns, reason } => {
                if let Some(c) = self.conns.get_mut(idx) {
                    let expected = (c.target && code == 4001) || self.expected_close == Some(code);
                    if !expected {
                        self.anomalies.push(format!(
                            "connection {idx} (target={}): close {code} {reason:?}",
                            c.target
                        ));
                    }
                    c.close = Some((code, recv_ns, reason));
                    if !c.closed {
                        c.closed = true;
                        if c.connected {
                            self.alive -= 1;
                        }
                    }
                }
            }
            Report::Gone { idx, why } => {
                if let Some(c) = self.conns.get_mut(idx) {
                    if c.close.is_none() {
                        self.anomalies
                            .push(format!("connection {idx}: gone without a close: {why}"));
                    }
                    if !c.closed {
                        c.closed = true;
                        if c.connected {
                            self.alive -= 1;
                        }
                    }
                }
            }
            Report::Other(line) => self.anomalies.push(format!("worker {w}: {line}")),
            Report::Exited => self.exited += 1,
        }
    }

    /// Applies reports until `done` holds or `timeout` passes; answers whether it holds.
    fn wait(&mut self, timeout: Duration, done: impl Fn(&Fleet) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left) {
                Ok((w, r)) => self.apply(w, r),
                Err(_) => return done(self),
            }
        }
    }

    /// Applies whatever has arrived, without waiting.
    fn drain(&mut self) {
        while let Ok((w, r)) = self.rx.try_recv() {
            self.apply(w, r);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

/// What the connect phase measured.
struct Connected {
    fleet: Fleet,
}

/// Starts the workers, opens every connection, reports `RESULT mode=ws-connect`.
fn connect_phase(
    a: &WsArgs,
    daemon: &Daemon,
    tokens: &[String],
    dir: &Path,
    label: &str,
) -> Result<Connected, String> {
    let mut fleet = Fleet::start(a, &daemon.addr, tokens, dir)?;
    if a.pause_before_connect > 0 {
        eprintln!(
            "pausing {} s before connecting (sessiond pid {})",
            a.pause_before_connect, daemon.pid
        );
        std::thread::sleep(Duration::from_secs(a.pause_before_connect));
    }
    let rss_before = daemon.rss_kib()?;
    let hwm_before = status_field(daemon.pid, "VmHWM:").unwrap_or(0);
    let started = Instant::now();
    for w in &mut fleet.workers {
        w.send("GO")?;
    }
    let n = fleet.workers.len();
    let timeout = Duration::from_secs(120) + Duration::from_millis(tokens.len() as u64 * 10);
    let all =
        fleet.wait(timeout, |f| f.connected_reports.iter().all(Option::is_some) || f.exited > 0);
    let wall = started.elapsed();
    if !all {
        return Err(format!(
            "the workers did not finish connecting within {timeout:?} ({} of {n} reported, {} \
             exited); first failures: {:?}",
            fleet.connected_reports.iter().flatten().count(),
            fleet.exited,
            fleet.failures.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let ok: usize = fleet.connected_reports.iter().flatten().map(|r| r.0).sum();
    let failed: usize = fleet.connected_reports.iter().flatten().map(|r| r.1).sum();
    let worker_max_us = fleet.connected_reports.iter().flatten().map(|r| r.2).max().unwrap_or(0);
    // Which connections are up: every one not reported as failed. Workers report FAIL with the
    // index first.
    let failed_idx: Vec<usize> = fleet
        .failures
        .iter()
        .filter_map(|f| f.split(' ').next().and_then(|i| i.parse().ok()))
        .collect();
    for c in &mut fleet.conns {
        c.connected = true;
    }
    for i in failed_idx {
        if let Some(c) = fleet.conns.get_mut(i) {
            c.connected = false;
        }
    }
    fleet.alive = fleet.conns.iter().filter(|c| c.connected && !c.closed).count();
    if failed > FAILURES_SHOWN * n {
        // Only the first failures carry their index; the rest count as up but will show as
        // missing events. Say so rather than guess.
        fleet.anomalies.push(format!("{failed} handshakes failed; only some are identified"));
    }
    std::thread::sleep(Duration::from_secs(a.settle));
    fleet.drain();
    let rss_after = daemon.rss_kib()?;
    let hwm_after = status_field(daemon.pid, "VmHWM:").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid)).map(|d| d.count()).unwrap_or(0);
    // Give the workers a moment to report their own RSS.
    fleet.wait(Duration::from_secs(2), |f| f.worker_rss.iter().all(Option::is_some));
    let client_rss: u64 = fleet.worker_rss.iter().flatten().sum();
    let secs = wall.as_secs_f64();
    let growth = rss_after.saturating_sub(rss_before);
    let per_conn = if ok == 0 { f64::NAN } else { growth as f64 / ok as f64 };
    let pairs = [
        ("connections", tokens.len().to_string()),
        ("users", a.users.to_string()),
        ("workers", a.workers.to_string()),
        ("worker_threads", a.worker_threads.to_string()),
        ("in_flight_per_worker", a.in_flight.to_string()),
        ("connected", ok.to_string()),
        ("failed", failed.to_string()),
        ("connect_s", format!("{secs:.3}")),
        ("rate_per_s", format!("{:.0}", ok as f64 / secs.max(1e-9))),
        ("rate_target_per_s", format!("{TARGET_RATE:.0}")),
        ("slowest_worker_s", format!("{:.3}", worker_max_us as f64 / 1e6)),
        ("daemon_rss_before_kib", rss_before.to_string()),
        ("daemon_rss_after_kib", rss_after.to_string()),
        ("daemon_rss_growth_kib", growth.to_string()),
        ("rss_kib_per_conn", format!("{per_conn:.2}")),
        ("rss_target_kib_per_conn", format!("{TARGET_KIB_PER_CONN:.0}")),
        ("daemon_hwm_before_kib", hwm_before.to_string()),
        ("daemon_hwm_after_kib", hwm_after.to_string()),
        ("daemon_fds", fds.to_string()),
        ("client_rss_kib", client_rss.to_string()),
        ("loadavg_1m", loadavg()),
    ];
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT mode=ws-connect{label} {}", pairs.join(" "));
    if !fleet.failures.is_empty() {
        println!("failed handshakes (first {}, verbatim):", fleet.failures.len().min(40));
        for f in fleet.failures.iter().take(40) {
            println!("  {f}");
        }
    }
    Ok(Connected { fleet })
}

/// Revokes `a.revocations` sessions one at a time; reports `RESULT mode=ws-revoke`.
fn revoke_phase(a: &WsArgs, daemon: &Daemon, c: &mut Connected, run: &str) -> Result<(), String> {
    let fleet = &mut c.fleet;
    fleet.drain();
    let up: Vec<usize> = (0..fleet.conns.len())
        .filter(|&i| fleet.conns[i].connected && !fleet.conns[i].closed)
        .collect();
    if up.is_empty() {
        return Err("no connection is up".into());
    }
    let n = a.revocations.min(up.len());
    let targets: Vec<usize> = (0..n).map(|k| up[k * up.len() / n]).collect();
    for &i in &targets {
        fleet.conns[i].target = true;
    }
    let connected_at_start = fleet.alive;
    let mut http = keepalive::Conn::new(&daemon.addr, HTTP_TIMEOUT);
    // Opens the keep-alive connection before the first timed call.
    let (status, body) = api(&mut http, "GET", "/livez", None)?;
    if status != 200 {
        return Err(format!("GET /livez: HTTP {status} {body}"));
    }
    let mut latencies = Vec::new();
    let mut http_ns = Vec::new();
    let mut lost = Vec::new();
    let mut not_4001 = Vec::new();
    let mut bad_answers = Vec::new();
    let started = Instant::now();
    for &i in &targets {
        let path = format!("/api/v1/sessions/{}", session_id(run, i));
        let t0 = now_ns();
        let answer = api(&mut http, "DELETE", &path, None);
        let t1 = now_ns();
        http_ns.push(t1.saturating_sub(t0));
        match answer {
            Ok((200, body)) if body.contains("\"revoked\":true") => {}
            Ok((status, body)) => bad_answers.push(format!("DELETE {path}: HTTP {status} {body}")),
            Err(e) => bad_answers.push(format!("DELETE {path}: {e}")),
        }
        let got = fleet.wait(REVOKE_WAIT, |f| {
            let c = &f.conns[i];
            c.revoked_ns.is_some() && c.close.is_some()
        });
        let conn = &fleet.conns[i];
        match conn.revoked_ns {
            Some(at) => latencies.push(at.saturating_sub(t0)),
            None => lost.push(i),
        }
        match &conn.close {
            Some((4001, _, _)) => {}
            Some((code, _, reason)) => not_4001.push(format!("connection {i}: {code} {reason:?}")),
            None if got => {}
            None => not_4001.push(format!("connection {i}: no close frame within {REVOKE_WAIT:?}")),
        }
    }
    let took = started.elapsed();
    // Let stray deliveries (to the wrong sockets) arrive before counting anomalies.
    std::thread::sleep(Duration::from_millis(500));
    fleet.drain();
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    http_ns.sort_unstable();
    let closed_4001 =
        targets.iter().filter(|&&i| matches!(fleet.conns[i].close, Some((4001, _, _)))).count();
    let pairs = [
        ("connected_at_start", connected_at_start.to_string()),
        ("revocations", n.to_string()),
        ("events_received", latencies.len().to_string()),
        ("closed_4001", closed_4001.to_string()),
        ("lost", lost.len().to_string()),
        ("p50_ms", format!("{:.3}", percentile(&sorted, 50.0))),
        ("p90_ms", format!("{:.3}", percentile(&sorted, 90.0))),
        ("p99_ms", format!("{:.3}", percentile(&sorted, 99.0))),
        ("max_ms", format!("{:.3}", sorted.last().map_or(f64::NAN, |&v| ms(v)))),
        ("min_ms", format!("{:.3}", sorted.first().map_or(f64::NAN, |&v| ms(v)))),
        ("p99_target_ms", format!("{TARGET_REVOKE_P99_MS:.0}")),
        ("http_p50_ms", format!("{:.3}", percentile(&http_ns, 50.0))),
        ("http_p99_ms", format!("{:.3}", percentile(&http_ns, 99.0))),
        ("non200_answers", bad_answers.len().to_string()),
        ("connected_at_end", fleet.alive.to_string()),
        ("phase_s", format!("{:.2}", took.as_secs_f64())),
        ("loadavg_1m", loadavg()),
    ];
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT mode=ws-revoke {}", pairs.join(" "));
    for b in bad_answers.iter().take(20) {
        println!("  answer: {b}");
    }
    for l in lost.iter().take(20) {
        println!("  no session.revoked on connection {l} within {REVOKE_WAIT:?}");
    }
    for x in not_4001.iter().take(20) {
        println!("  close: {x}");
    }
    Ok(())
}

/// What one `service.*` fan-out measured.
struct Fanout {
    received: usize,
    expected: usize,
    /// (recv_ns, at_ms) of every socket that got it.
    recv: Vec<(u64, i64)>,
}

fn fanout_stats(
    name: &str,
    f: &Fanout,
    kill_ns: u64,
    log_ns: Option<u64>,
) -> Vec<(String, String)> {
    let last = f.recv.iter().map(|r| r.0).max();
    let first = f.recv.iter().map(|r| r.0).min();
    let at_ms: Vec<i64> = {
        let mut v: Vec<i64> = f.recv.iter().map(|r| r.1).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let raised_ns = at_ms.first().map(|&m| u64::try_from(m).unwrap_or(0) * 1_000_000);
    let since = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(a), Some(b)) => format!("{:.1}", (b as f64 - a as f64) / 1e6),
        _ => "none".to_owned(),
    };
    // The raise: the earlier of the log line's arrival (it can lag behind when the box is
    // busy: our reader thread must run) and the event's own `at_ms` (1 ms resolution).
    let raise = match (log_ns, raised_ns) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Per-socket delay from the raise (or the kill when there is none).
    let base = raise.unwrap_or(kill_ns);
    let mut delays: Vec<u64> = f.recv.iter().map(|r| r.0.saturating_sub(base)).collect();
    delays.sort_unstable();
    vec![
        (format!("{name}_expected"), f.expected.to_string()),
        (format!("{name}_received"), f.received.to_string()),
        (format!("{name}_event_at_ms_values"), at_ms.len().to_string()),
        (format!("{name}_raise_to_last_ms"), since(raise, last)),
        (format!("{name}_log_line_to_first_ms"), since(log_ns, first)),
        (format!("{name}_log_line_to_last_ms"), since(log_ns, last)),
        (format!("{name}_raised_at_ms_to_last_ms"), since(raised_ns, last)),
        (format!("{name}_raise_to_p50_ms"), format!("{:.1}", percentile(&delays, 50.0))),
        (format!("{name}_raise_to_p99_ms"), format!("{:.1}", percentile(&delays, 99.0))),
        (format!("{name}_first_to_last_ms"), since(first, last)),
    ]
}

fn collect_fanout(fleet: &mut Fleet, degraded: bool, expected: usize) -> Fanout {
    let count = |f: &Fleet| if degraded { f.degraded_count } else { f.recovered_count };
    fleet.wait(EVENT_WAIT, |f| count(f) >= expected);
    // Anything still in flight.
    std::thread::sleep(Duration::from_millis(200));
    fleet.drain();
    let recv: Vec<(u64, i64)> = fleet
        .conns
        .iter()
        .filter_map(|c| if degraded { c.degraded } else { c.recovered })
        .collect();
    Fanout { received: recv.len(), expected, recv }
}

/// Kills Redis, times `service.degraded` to every socket; restarts it and times
/// `service.recovered`. Reports `RESULT mode=ws-fanout`.
fn fanout_phase(
    a: &WsArgs,
    daemon: &Daemon,
    redis: &mut Redis,
    c: &mut Connected,
) -> Result<(), String> {
    let fleet = &mut c.fleet;
    fleet.drain();
    let expected = fleet.alive;
    let worker_pids: Vec<u32> =
        fleet.workers.iter().filter_map(|w| w.child.as_ref().map(Child::id)).collect();
    let cpu = |pid: u32| cpu_ms(pid).unwrap_or(0);
    let workers_cpu = || worker_pids.iter().map(|&p| cpu(p)).sum::<u64>();
    let kill_ns = redis.kill9::<u64>()?;
    let degraded_line = daemon.log.wait_for("mode degraded", kill_ns, MODE_WAIT);
    let (daemon_cpu0, workers_cpu0) = (cpu(daemon.pid), workers_cpu());
    let degraded = collect_fanout(fleet, true, expected);
    let (daemon_cpu1, workers_cpu1) = (cpu(daemon.pid), workers_cpu());
    let mut pairs: Vec<(String, String)> = vec![
        ("connected".into(), expected.to_string()),
        (
            "kill_to_mode_degraded_line_ms".into(),
            degraded_line
                .as_ref()
                .map_or("none".into(), |(at, _)| format!("{:.1}", ms(at.saturating_sub(kill_ns)))),
        ),
    ];
    pairs.extend(fanout_stats("degraded", &degraded, kill_ns, degraded_line.as_ref().map(|l| l.0)));
    // CPU used from the `mode degraded` line until every socket had the event (plus the 200 ms
    // collect_fanout waits for stragglers): who does the work of the fan-out.
    pairs.push((
        "degraded_daemon_cpu_ms".into(),
        (daemon_cpu1 - daemon_cpu0.min(daemon_cpu1)).to_string(),
    ));
    pairs.push((
        "degraded_clients_cpu_ms".into(),
        (workers_cpu1 - workers_cpu0.min(workers_cpu1)).to_string(),
    ));
    let last = degraded.recv.iter().map(|r| r.0).max();
    pairs.push((
        "kill_to_last_degraded_ms".into(),
        last.map_or("none".into(), |l| format!("{:.1}", ms(l.saturating_sub(kill_ns)))),
    ));
    if !a.no_recover {
        fleet.drain();
        let expected = fleet.alive;
        let restart_ns = now_ns();
        redis.spawn()?;
        let normal_line = daemon.log.wait_for("mode normal", restart_ns, MODE_WAIT);
        let recovered = collect_fanout(fleet, false, expected);
        pairs.push((
            "restart_to_mode_normal_line_ms".into(),
            normal_line.as_ref().map_or("none".into(), |(at, _)| {
                format!("{:.1}", ms(at.saturating_sub(restart_ns)))
            }),
        ));
        pairs.extend(fanout_stats(
            "recovered",
            &recovered,
            restart_ns,
            normal_line.as_ref().map(|l| l.0),
        ));
    }
    pairs.push(("target_ms".into(), format!("{TARGET_FANOUT_MS:.0}")));
    pairs.push(("connected_at_end".into(), fleet.alive.to_string()));
    pairs.push(("loadavg_1m".into(), loadavg()));
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT mode=ws-fanout {}", pairs.join(" "));
    for (id, n) in &fleet.service_ids {
        println!("  {id}: {n} sockets");
    }
    if let Some((_, l)) = &degraded_line {
        println!("  daemon: {l}");
    }
    Ok(())
}

/// SIGTERMs the daemon while the sockets are open: every one must get 1001 before it exits.
/// The server then closes the TCP connections first, so their TIME_WAIT stays on its side
/// instead of using up the client addresses' ephemeral ports for the next run. Reports
/// `RESULT mode=ws-shutdown`.
fn shutdown_phase(c: &mut Connected, daemon: &mut Daemon, label: &str) {
    let fleet = &mut c.fleet;
    fleet.drain();
    let expected = fleet.alive;
    fleet.expected_close = Some(1001);
    let t0 = now_ns();
    let exit = daemon.stop_note().unwrap_or_default();
    let exited_ns = now_ns();
    fleet.wait(Duration::from_secs(10), |f| f.alive == 0);
    let closes: Vec<u64> = fleet
        .conns
        .iter()
        .filter_map(|c| match c.close {
            Some((1001, at, _)) if at >= t0 => Some(at),
            _ => None,
        })
        .collect();
    let last = closes.iter().max().map_or("none".to_owned(), |l| format!("{:.1}", ms(l - t0)));
    println!(
        "RESULT mode=ws-shutdown{label} connected={expected} closed_1001={} not_closed={} \
         sigterm_to_last_1001_ms={last} sigterm_to_exit_ms={:.1}",
        closes.len(),
        fleet.alive,
        ms(exited_ns.saturating_sub(t0))
    );
    println!("  {exit}");
}

/// Mints the tokens, starts a daemon (in Redis mode with `redis`), creates the sessions.
fn prepare(
    a: &WsArgs,
    binary: &Path,
    dir: &Path,
    tag: &str,
    redis_port: Option<u16>,
    run: &str,
) -> Result<(Daemon, Vec<String>), String> {
    let now = now_seconds();
    let tokens =
        (0..a.connections).map(|i| mint(run, i, a.users, now)).collect::<Result<Vec<_>, _>>()?;
    let data = dir.join(format!("data-{tag}"));
    let config = dir.join(format!("sessiond-{tag}.toml"));
    write_config(&config, &data, redis_port, a.connections)?;
    // `mode degraded` is a warning; `mode normal` is the coordinator's info line.
    let rust_log =
        if redis_port.is_some() { "warn,sessiond_actors::coordinator=info" } else { "warn" };
    let daemon = Daemon::start("sessiond", binary, &config, rust_log, DropReport::Notes)?;
    eprintln!("sessiond (pid {}) on {} [{tag}]", daemon.pid, daemon.addr);
    create_sessions(&daemon.addr, &tokens)?;
    Ok((daemon, tokens))
}

fn report_anomalies(fleet: &Fleet, daemon: &Daemon, since_ns: u64) {
    if !fleet.anomalies.is_empty() {
        println!("anomalies ({}, first 30 verbatim):", fleet.anomalies.len());
        for x in fleet.anomalies.iter().take(30) {
            println!("  {x}");
        }
    }
    let problems = daemon.log.problems(since_ns);
    if !problems.is_empty() {
        println!("daemon warnings/errors ({}, first 20):", problems.len());
        for (_, l) in problems.iter().take(20) {
            println!("  {l}");
        }
    }
}

/// Runs the chosen phases.
pub fn run(phases: Phases, a: &WsArgs) -> Result<(), String> {
    if a.connections == 0 || a.workers == 0 || a.users == 0 || a.in_flight == 0 {
        return Err("--connections, --workers, --users and --in-flight must be at least 1".into());
    }
    let per_user = a.connections.div_ceil(a.users);
    if per_user > PER_USER_LIMIT {
        return Err(format!(
            "{} connections over {} users is {per_user} per user; the daemon admits \
             {PER_USER_LIMIT}: use --users {} or more",
            a.connections,
            a.users,
            a.connections.div_ceil(PER_USER_LIMIT)
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(load) = loadavg().parse::<f64>().ok().filter(|l| *l > cores as f64) {
        eprintln!(
            "warning: the 1-minute load average is {load:.1} on {cores} cores before the run; \
             other work skews every number below"
        );
    }
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("sessiond"),
    };
    let scratch = ScratchDir(scratch_dir("ws")?);
    let dir = scratch.0.clone();
    let run = format!("{}-{}", now_seconds(), std::process::id());

    if matches!(phases, Phases::Connect | Phases::Revoke | Phases::All) {
        let t0 = now_ns();
        let (mut daemon, tokens) = prepare(a, &binary, &dir, "embedded", None, &run)?;
        let mut c = connect_phase(a, &daemon, &tokens, &dir, "")?;
        if phases != Phases::Connect {
            revoke_phase(a, &daemon, &mut c, &run)?;
        }
        shutdown_phase(&mut c, &mut daemon, "");
        report_anomalies(&c.fleet, &daemon, t0);
        drop(c);
        drop(daemon);
    }
    if matches!(phases, Phases::Fanout | Phases::All) {
        let t0 = now_ns();
        let mut redis = Redis::new(&a.redis_server, &dir)?;
        redis.spawn()?;
        eprintln!("redis-server on 127.0.0.1:{}", redis.port);
        let (mut daemon, tokens) = prepare(a, &binary, &dir, "redis", Some(redis.port), &run)?;
        let mut c = connect_phase(a, &daemon, &tokens, &dir, "-redis")?;
        std::thread::sleep(Duration::from_secs(1));
        fanout_phase(a, &daemon, &mut redis, &mut c)?;
        shutdown_phase(&mut c, &mut daemon, "-redis");
        report_anomalies(&c.fleet, &daemon, t0);
        drop(c);
        drop(daemon);
        drop(redis);
    }
    drop(scratch);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The worker process

type Out = mpsc::Sender<String>;

/// A thread that writes report lines to stdout, flushing whenever it has caught up; the
/// process exits when the coordinator stops reading.
fn start_output() -> Out {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        while let Ok(line) = rx.recv() {
            let mut ok = writeln!(w, "{line}").is_ok();
            while let Ok(more) = rx.try_recv() {
                ok &= writeln!(w, "{more}").is_ok();
            }
            if !ok || w.flush().is_err() {
                std::process::exit(0);
            }
        }
    });
    tx
}

fn say(out: &Out, line: String) {
    let _ = out.send(line);
}

/// The hidden `ws-worker` mode.
pub fn worker(a: &WorkerArgs) -> Result<(), String> {
    let text =
        std::fs::read_to_string(&a.tokens).map_err(|e| format!("{}: {e}", a.tokens.display()))?;
    let mut conns = Vec::new();
    for line in text.lines() {
        let (idx, token) = line.split_once(' ').ok_or("malformed tokens file")?;
        let idx: usize = idx.parse().map_err(|_| "malformed index in tokens file")?;
        conns.push((idx, token.to_owned()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let out = start_output();
    say(&out, format!("READY {}", conns.len()));
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        if line.trim() == "GO" {
            break;
        }
    }
    // From now on: exit when the coordinator closes our stdin (or says STOP).
    std::thread::spawn(move || {
        let mut l = String::new();
        loop {
            l.clear();
            match std::io::stdin().read_line(&mut l) {
                Ok(n) if n > 0 && l.trim() != "STOP" => {}
                _ => std::process::exit(0),
            }
        }
    });
    let target: SocketAddr = a.addr.parse().map_err(|e| format!("--addr {}: {e}", a.addr))?;
    let to = Target { addr: Arc::from(a.addr.as_str()), socket: target, sources: a.source_addrs };
    runtime.block_on(connect_all(Arc::new(to), conns, a.in_flight.max(1), out));
    Ok(())
}

/// Where a worker connects to, and from.
struct Target {
    /// `host:port` as given (for the request URL).
    addr: Arc<str>,
    socket: SocketAddr,
    /// Spread over 127.0.0.2 … 127.0.0.(1 + sources); 0: no explicit source.
    sources: u8,
}

async fn connect_all(addr: Arc<Target>, conns: Vec<(usize, String)>, in_flight: usize, out: Out) {
    let started = Instant::now();
    let n = conns.len();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let spawner = {
        let out = out.clone();
        tokio::spawn(async move {
            for (idx, token) in conns {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
                let addr = Arc::clone(&addr);
                let done = done_tx.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let opened =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, open(&addr, idx, &token)).await;
                    drop(permit);
                    drop(token);
                    match opened {
                        Ok(Ok(ws)) => {
                            let _ = done.send(Ok(()));
                            drop(done);
                            listen(idx, ws, out).await;
                        }
                        Ok(Err(e)) => {
                            let _ = done.send(Err(format!("{idx} {e}")));
                        }
                        Err(_) => {
                            let _ = done.send(Err(format!(
                                "{idx} no welcome within {HANDSHAKE_TIMEOUT:?}"
                            )));
                        }
                    }
                });
            }
        })
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    while ok + failed < n {
        match done_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                if failed <= FAILURES_SHOWN {
                    say(&out, format!("FAIL {e}"));
                }
            }
            None => break,
        }
    }
    let _ = spawner.await;
    say(&out, format!("CONNECTED {ok} {failed} {}", started.elapsed().as_micros()));
    if let Some(kib) = status_field(std::process::id(), "VmRSS:") {
        say(&out, format!("RSS {kib}"));
    }
    // The connections live on in their tasks until the coordinator closes our stdin.
    std::future::pending::<()>().await;
}

/// Connects, upgrades with `Authorization: Bearer`, and waits for the welcome frame.
async fn open(to: &Target, idx: usize, token: &str) -> Result<Ws, String> {
    let tcp = match to.sources {
        0 => tokio::net::TcpStream::connect(to.socket).await,
        n => {
            let last = u8::try_from(idx % usize::from(n)).unwrap_or(0).saturating_add(2);
            let ip = std::net::IpAddr::from([127, 0, 0, last]);
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
            socket.connect(to.socket).await
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    upgrade(tcp, &to.addr, token).await
}

fn report_text(idx: usize, text: &str, recv_ns: u64, out: &Out) {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return say(out, format!("TXT {idx} {recv_ns} {text}")),
    };
    if v.get("type").and_then(|t| t.as_str()) == Some("event") {
        let event = v.get("event").and_then(|e| e.as_str()).unwrap_or("?");
        let id = v.get("id").and_then(|e| e.as_str()).unwrap_or("?");
        let at_ms = v.get("at_ms").and_then(serde_json::Value::as_i64).unwrap_or(0);
        say(out, format!("EV {idx} {event} {id} {recv_ns} {at_ms}"));
    } else {
        say(out, format!("TXT {idx} {recv_ns} {text}"));
    }
}

/// Reads the connection until it ends, reporting every frame but pings and pongs (tungstenite
/// answers the server's pings itself while we read).
async fn listen(idx: usize, mut ws: Ws, out: Out) {
    let mut closed = false;
    while let Some(msg) = ws.next().await {
        let recv_ns = now_ns();
        match msg {
            Ok(Message::Text(t)) => report_text(idx, t.as_str(), recv_ns, &out),
            Ok(Message::Binary(b)) => {
                say(&out, format!("TXT {idx} {recv_ns} <binary {} bytes>", b.len()))
            }
            Ok(Message::Close(f)) => {
                closed = true;
                let (code, reason) = f.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                say(&out, format!("CLOSE {idx} {code} {recv_ns} {reason}"));
            }
            Ok(_) => {}
            Err(e) => {
                if !closed {
                    say(&out, format!("GONE {idx} {}", describe(e)));
                }
                return;
            }
        }
    }
    if !closed {
        say(&out, format!("GONE {idx} the stream ended without a close frame"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        assert!(matches!(parse_report("READY 7500"), Report::Ready(7500)));
        assert!(matches!(
            parse_report("CONNECTED 7499 1 123456"),
            Report::Connected { ok: 7499, failed: 1, us: 123_456 }
        ));
        match parse_report("EV 12 session.revoked abc-7 1700000000000000000 1700000000000") {
            Report::Event { idx, event, id, recv_ns, at_ms } => {
                assert_eq!((idx, event.as_str(), id.as_str()), (12, "session.revoked", "abc-7"));
                assert_eq!((recv_ns, at_ms), (1_700_000_000_000_000_000, 1_700_000_000_000));
            }
            other => panic!("{other:?}"),
        }
        match parse_report("CLOSE 3 4001 99 session revoked") {
            Report::Close { idx, code, recv_ns, reason } => {
                assert_eq!((idx, code, recv_ns, reason.as_str()), (3, 4001, 99, "session revoked"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_report("CLOSE 3 1005 99 "), Report::Close { code: 1005, .. }));
        assert!(matches!(parse_report("what"), Report::Other(_)));
        assert!(matches!(parse_report("EV x"), Report::Other(_)));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(percentile(&[5_000_000], 99.0), 5.0);
    }

    #[test]
    fn tokens_spread_users_within_the_limit() {
        let now = now_seconds();
        let t = mint("r", 7, 200, now).unwrap();
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(user_of(207, 200), 7);
        assert_eq!(session_id("r", 7), "wsb-r-7");
    }
}
