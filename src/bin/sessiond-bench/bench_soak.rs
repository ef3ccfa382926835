//! `sessiond-bench soak`: an hour (by default) of mixed load at a moderate rate on one daemon
//! in Redis mode, sampling the daemon's resident memory, open files, threads, CPU time and the
//! request latency every few seconds into a CSV (issue "hardening": no upward drift).
//!
//! It starts a `redis-server` on a free loopback port (never 6379) and one `sessiond` on it
//! (fsync `interval`), creates the steady-state number of sessions, then runs, paced to
//! `--rate` operations per second over a few keep-alive connections:
//!
//! | share | operation | expected answer |
//! |---|---|---|
//! | 70 % | `POST /api/v1/sessions/validate` of a live session | 200 `"valid":true` |
//! | 15 % | `POST /api/v1/sessions` (a fresh token) | 201 |
//! | 10 % | `DELETE /api/v1/sessions/{id}` of a live session (it leaves the live set) | 200 |
//! | 3 % | `POST /api/v1/sessions/{id}/refresh` of a live session | 200 |
//! | 2 % | `DELETE /api/v1/users/{id}/sessions` of a user with live sessions | 200 |
//!
//! plus `--ws` WebSockets kept open, each authenticated with a live session's token, with
//! churn (`--ws-churn` of them closed by the client and reopened per second); revocations
//! close some with 4001 and a replacement is opened. Closes are counted by code.
//!
//! The steady state is flat by construction: with the mix above, the live set settles where
//! creates balance revokes plus revoke-alls, `users × (15 − 10) / 2` sessions (2.5 per user),
//! which is where it starts; it is capped at `--max-live` (when full, a create becomes a
//! revoke). Tokens live [`TOKEN_LIFETIME_S`] and a session is revoked by [`MAX_AGE`] at the
//! latest, so revocation tombstones (kept until the session's expiry) plateau after
//! `TOKEN_LIFETIME_S`, well before the second half of an hour's run. Each load thread owns
//! the users `u % threads == k` (their creates, revokes and revoke-alls), so no two requests
//! race on one session.
//!
//! Errors: a transport error (after one retry on a fresh connection), any 5xx, a 401 for a
//! session that should be live, any other unexpected status; on the WebSocket side a refused
//! handshake for a live session, and any close but a 4001 of a revoked session. Every sample
//! appends a CSV row (`elapsed_s,rss_kib,open_fds,threads,cpu_ms,ops,errors,p50_ms,p99_ms,
//! max_ms,ws_open,redis_used_memory,live_sessions,ws_4001,degraded`; `degraded`: validations
//! answered in degraded mode, e.g. when a stalled host makes Redis calls exceed the breaker's
//! timeout) and prints a line. At the end it
//! prints a summary with the drift analysis (least-squares slope of `rss_kib` and `open_fds`
//! over the second half, per hour; first-vs-last-10-minutes means) and exits non-zero when
//! there were errors. SIGINT/SIGTERM end the run early (the summary is still printed).
//! Everything it starts (Redis, the daemon, a temp dir) is stopped and removed at the end, on
//! error too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt as _;
use sessiond_actors::domain::now_seconds;
use sessiond_actors::token::{Algorithm, sign_hmac};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::keepalive::{Conn, Response};
use crate::procs::{
    DropReport, Redis, ScratchDir, cpu_ms, percentile_us, scratch_dir, status_field,
};
use crate::ws_open::{Ws, describe, upgrade};

type Daemon = crate::procs::Daemon<Instant>;

const SECRET: &str = "soak-bench-hmac-secret-0123456789abcdef01";
const API_KEY: &str = "soak-bench-api-key-0123456789abcdef";
/// `exp - iat` of every token (and the daemon's `max_ttl_seconds`): bounds how long a
/// revocation tombstone is kept, so their number plateaus after this long.
const TOKEN_LIFETIME_S: i64 = 1200;
/// A live session this old is the next one revoked: it never gets near its token's expiry
/// (nor the `session.expiring` window, 300 s before it).
const MAX_AGE: Duration = Duration::from_secs(600);
/// Read/write timeout of every HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, upgrade and welcome of one WebSocket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing WebSocket may take to finish its close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A load thread this far behind its schedule starts a fresh one (and counts a lag).
const MAX_LAG: Duration = Duration::from_secs(1);
/// The operation mix, in percent (validate, create, revoke, refresh, revoke-all).
const MIX: [(Op, u32); 5] =
    [(Op::Validate, 70), (Op::Create, 15), (Op::Revoke, 10), (Op::Refresh, 3), (Op::RevokeAll, 2)];
/// Error descriptions kept verbatim for the summary.
const KEPT_EXAMPLES: usize = 30;
/// Window of the first-vs-last comparison (shorter runs use a quarter of their length).
const COMPARE_WINDOW_S: f64 = 600.0;

/// The options of `soak`.
#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// Duration of the load, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub seconds: u64,
    /// HTTP operations per second, all kinds together (the WebSocket churn comes on top).
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// WebSocket connections kept open.
    #[arg(long, default_value_t = 200)]
    pub ws: usize,
    /// WebSockets closed by the client and reopened per second.
    #[arg(long, default_value_t = 3.0)]
    pub ws_churn: f64,
    /// Seconds between two samples (CSV rows).
    #[arg(long, default_value_t = 5)]
    pub sample_seconds: u64,
    /// Where to write the samples.
    #[arg(long, default_value = "soak.csv")]
    pub csv: PathBuf,
    /// Users the sessions belong to; the steady state is 2.5 live sessions per user.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Upper bound of the live set (when full, a create becomes a revoke).
    #[arg(long, default_value_t = 20_000)]
    pub max_live: usize,
    /// Load threads, one keep-alive connection each.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// The sessiond binary (default: next to this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// splitmix64: enough randomness to pick sessions and operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

fn seed() -> u64 {
    crate::procs::now_ns() ^ u64::from(std::process::id()).rotate_left(32)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// `used_memory` of `INFO memory`, through one RESP call.
fn redis_used_memory(port: u16) -> Option<u64> {
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n")?;
        let len: usize = head.strip_prefix('$')?.parse().ok()?;
        if body.len() >= len {
            let line = body.lines().find(|l| l.starts_with("used_memory:"))?;
            return line.trim_end().split(':').nth(1)?.parse().ok();
        }
    }
}

/// The string value of `"key":"…"` in a compact JSON body.
fn json_str<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = body.find(&pat)? + pat.len();
    let len = body[start..].find('"')?;
    Some(&body[start..start + len])
}

fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions

fn session_id(run: &str, n: u64) -> String {
    format!("soak-{run}-{n}")
}

fn user_id(u: usize) -> String {
    format!("soak-user-{u}")
}

fn mint(run: &str, n: u64, user: usize) -> Result<String, String> {
    let now = now_seconds();
    let claims = serde_json::json!({
        "sub": user_id(user), "email": format!("soak-user-{user}@example.com"),
        "role": "user", "sid": session_id(run, n), "iat": now, "exp": now + TOKEN_LIFETIME_S,
    });
    sign_hmac(SECRET.as_bytes(), Algorithm::HS256, &claims)
}

/// A session created by this run and not revoked (as far as we know).
#[derive(Clone)]
struct Live {
    n: u64,
    user: usize,
    token: Arc<str>,
    created: Instant,
}

/// One load thread's live sessions: random pick, removal and the oldest in O(1) (amortized).
#[derive(Default)]
struct LiveSet {
    list: Vec<Live>,
    index: HashMap<u64, usize>,
    /// Creation order, with removed sessions skipped lazily.
    order: VecDeque<(Instant, u64)>,
}

impl LiveSet {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn contains(&self, n: u64) -> bool {
        self.index.contains_key(&n)
    }

    fn insert(&mut self, s: Live) {
        self.index.insert(s.n, self.list.len());
        self.order.push_back((s.created, s.n));
        self.list.push(s);
        if self.order.len() > 4 * self.list.len() + 1024 {
            let index = &self.index;
            self.order.retain(|(_, n)| index.contains_key(n));
        }
    }

    fn remove(&mut self, n: u64) -> Option<Live> {
        let i = self.index.remove(&n)?;
        let s = self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.n, i);
        }
        Some(s)
    }

    fn random(&self, rng: &mut Rng) -> Option<&Live> {
        self.list.get(rng.below(self.list.len()))
    }

    fn oldest(&mut self) -> Option<&Live> {
        while let Some(&(_, n)) = self.order.front() {
            if let Some(&i) = self.index.get(&n) {
                return self.list.get(i);
            }
            self.order.pop_front();
        }
        None
    }

    /// Removes every session of `user`; answers how many.
    fn remove_user(&mut self, user: usize) -> usize {
        let ids: Vec<u64> = self.list.iter().filter(|s| s.user == user).map(|s| s.n).collect();
        for n in &ids {
            self.remove(*n);
        }
        ids.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Counters

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Validate,
    Create,
    Revoke,
    Refresh,
    RevokeAll,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Validate => "validate",
            Op::Create => "create",
            Op::Revoke => "revoke",
            Op::Refresh => "refresh",
            Op::RevokeAll => "revoke-all",
        }
    }

    fn pick(rng: &mut Rng) -> Op {
        let mut r = (rng.next_u64() % 100) as u32;
        for (op, share) in MIX {
            if r < share {
                return op;
            }
            r -= share;
        }
        Op::Validate
    }
}

/// What happened since the last sample.
#[derive(Default)]
struct Interval {
    ops: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    ws_4001: u64,
    /// Validations answered in degraded mode (Redis unreachable or its breaker open).
    degraded: u64,
}

/// What happened since the start.
#[derive(Default)]
struct Totals {
    ops: BTreeMap<Op, u64>,
    errors: u64,
    degraded: u64,
    errors_by: BTreeMap<String, u64>,
    examples: Vec<String>,
    latencies_us: Vec<u32>,
    retries: u64,
    lags: u64,
    /// Creates turned into revokes because the live set was full.
    full: u64,
    /// Revokes of a session that reached [`MAX_AGE`].
    retired: u64,
    /// Revoke-alls whose `revoked` differed from the sessions we held for that user.
    revoke_all_mismatch: u64,
    ws_opened: u64,
    ws_open: u64,
    ws_client_closed: u64,
    ws_closes: BTreeMap<u16, u64>,
    ws_refused: BTreeMap<String, u64>,
    /// Handshakes refused (401) because the session was revoked meanwhile: expected.
    ws_refused_revoked: u64,
    ws_events: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Stats {
    interval: Interval,
    totals: Totals,
}

impl Stats {
    fn error(&mut self, key: String, example: String) {
        self.interval.errors += 1;
        self.totals.errors += 1;
        *self.totals.errors_by.entry(key).or_default() += 1;
        if self.totals.examples.len() < KEPT_EXAMPLES {
            self.totals.examples.push(example);
        }
    }

    fn latency(&mut self, op: Op, us: u32) {
        self.interval.ops += 1;
        self.interval.latencies_us.push(us);
        self.totals.latencies_us.push(us);
        *self.totals.ops.entry(op).or_default() += 1;
    }
}

/// What the load threads, the WebSocket manager and the sampler share.
struct Ctx {
    addr: String,
    run: String,
    threads: usize,
    users_per_thread: usize,
    cap_per_thread: usize,
    sets: Vec<Mutex<LiveSet>>,
    next_n: AtomicU64,
    stats: Mutex<Stats>,
    stop: AtomicBool,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn is_live(&self, set: usize, n: u64) -> bool {
        self.sets.get(set).is_some_and(|s| lock(s).contains(n))
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP load

/// One request with the API key; a transport error is retried once on a fresh connection
/// (every operation here is idempotent). Answers the response (or the error) and whether it
/// was retried.
fn call(conn: &mut Conn, method: &str, path: &str, body: &str) -> (Result<Response, String>, bool) {
    let headers = [("X-Api-Key", API_KEY)];
    match conn.request(method, path, &headers, body) {
        Ok(r) => (Ok(r), false),
        Err(_) => (conn.request(method, path, &headers, body), true),
    }
}

/// Creates session `n` of `user`; answers the live session on 201 (or on 200 after a retry:
/// the first attempt got through).
fn create(
    ctx: &Ctx,
    conn: &mut Conn,
    n: u64,
    user: usize,
) -> (Result<Live, (u16, String)>, bool, Duration) {
    let token = match mint(&ctx.run, n, user) {
        Ok(t) => t,
        Err(e) => return (Err((0, format!("mint: {e}"))), false, Duration::ZERO),
    };
    let body = serde_json::json!({ "token": token }).to_string();
    let sent = Instant::now();
    let (answer, retried) = call(conn, "POST", "/api/v1/sessions", &body);
    let took = sent.elapsed();
    let result = match answer {
        Ok(r) if r.status == 201 || (retried && r.status == 200) => {
            Ok(Live { n, user, token: Arc::from(token.as_str()), created: Instant::now() })
        }
        Ok(r) => Err((r.status, r.body)),
        Err(e) => Err((0, format!("transport error: {e}"))),
    };
    (result, retried, took)
}

/// Creates `count` sessions for thread `k`'s users before the load starts.
fn prefill(ctx: &Ctx, k: usize, count: usize) -> Result<(), String> {
    let mut conn = Conn::new(&ctx.addr, HTTP_TIMEOUT);
    let mut rng = Rng::new(seed() ^ k as u64);
    for _ in 0..count {
        if ctx.stopped() {
            return Err("stopped by a signal".into());
        }
        let n = ctx.next_n.fetch_add(1, Ordering::Relaxed);
        let user = k + ctx.threads * rng.below(ctx.users_per_thread);
        match create(ctx, &mut conn, n, user).0 {
            Ok(live) => lock(&ctx.sets[k]).insert(live),
            Err((status, body)) => {
                return Err(format!("creating a session: HTTP {status} {}", clip(&body, 300)));
            }
        }
    }
    Ok(())
}

/// Thread `k`: its share of `--rate`, open loop (each operation at its scheduled time).
fn load_thread(ctx: &Ctx, k: usize, rate: f64, t0: Instant, deadline: Instant) {
    let mut conn = Conn::new(&ctx.addr, HTTP_TIMEOUT);
    let mut rng = Rng::new(seed() ^ (k as u64).wrapping_mul(0x1000_0001));
    let period = Duration::from_secs_f64(ctx.threads as f64 / rate);
    let mut next = t0 + period.mul_f64(k as f64 / ctx.threads as f64);
    loop {
        let now = Instant::now();
        if ctx.stopped() || now >= deadline {
            return;
        }
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        if now - next > MAX_LAG {
            next = now;
            lock(&ctx.stats).totals.lags += 1;
        }
        next += period;
        one_op(ctx, k, &mut conn, &mut rng);
    }
}

/// Classifies an answer: `None` when it is the expected one, else the error key and text.
fn check(op: Op, answer: &Result<Response, String>, ok: &[u16]) -> Option<(String, String)> {
    match answer {
        Ok(r) if ok.contains(&r.status) => None,
        Ok(r) => {
            let code = json_str(&r.body, "code").unwrap_or("-");
            Some((
                format!("{} {} {code}", op.name(), r.status),
                format!("{}: HTTP {} {}", op.name(), r.status, clip(&r.body, 300)),
            ))
        }
        Err(e) => Some((format!("{} transport", op.name()), format!("{}: {e}", op.name()))),
    }
}

fn one_op(ctx: &Ctx, k: usize, conn: &mut Conn, rng: &mut Rng) {
    let set = &ctx.sets[k];
    let mut op = Op::pick(rng);
    // The session (and user) the operation is about; revokes take theirs out of the live set
    // before the request is sent.
    let mut target: Option<Live> = None;
    let mut removed_for_user = 0usize;
    {
        let mut s = lock(set);
        let overdue = s.oldest().filter(|o| o.created.elapsed() >= MAX_AGE).map(|o| o.n);
        let mut stats = lock(&ctx.stats);
        if let Some(n) = overdue {
            // Retire it before its token gets near expiry, whatever was drawn.
            op = Op::Revoke;
            target = s.remove(n);
            stats.totals.retired += 1;
        } else if op == Op::Create && s.len() >= ctx.cap_per_thread {
            op = Op::Revoke;
            stats.totals.full += 1;
        } else if op != Op::Create && s.len() == 0 {
            op = Op::Create;
        }
        drop(stats);
        match op {
            Op::Create => {}
            Op::Validate | Op::Refresh => target = s.random(rng).cloned(),
            Op::Revoke => {
                if target.is_none() {
                    let n = s.random(rng).map(|l| l.n);
                    target = n.and_then(|n| s.remove(n));
                }
            }
            Op::RevokeAll => {
                // A user drawn uniformly (not the user of a random session, which favours
                // users with many): on average live / users sessions go, the balance the
                // steady state relies on. It may have none: still a valid call.
                let user = k + ctx.threads * rng.below(ctx.users_per_thread);
                removed_for_user = s.remove_user(user);
                target =
                    Some(Live { n: u64::MAX, user, token: Arc::from(""), created: Instant::now() });
            }
        }
    }
    let (answer, retried, took) = match (op, &target) {
        (Op::Create, _) => {
            let n = ctx.next_n.fetch_add(1, Ordering::Relaxed);
            let user = k + ctx.threads * rng.below(ctx.users_per_thread);
            let (result, retried, took) = create(ctx, conn, n, user);
            let mut stats = lock(&ctx.stats);
            stats.latency(op, micros(took));
            stats.totals.retries += u64::from(retried);
            match result {
                Ok(live) => {
                    drop(stats);
                    lock(set).insert(live);
                }
                Err((status, body)) => {
                    let code = json_str(&body, "code").unwrap_or("-");
                    stats.error(
                        format!("create {status} {code}"),
                        format!("create: HTTP {status} {}", clip(&body, 300)),
                    );
                }
            }
            return;
        }
        (_, None) => return,
        (Op::Validate, Some(t)) => {
            let body = serde_json::json!({ "token": &*t.token }).to_string();
            let sent = Instant::now();
            let (a, retried) = call(conn, "POST", "/api/v1/sessions/validate", &body);
            (a, retried, sent.elapsed())
        }
        (Op::Refresh, Some(t)) => {
            let path = format!("/api/v1/sessions/{}/refresh", session_id(&ctx.run, t.n));
            let sent = Instant::now();
            let (a, retried) = call(conn, "POST", &path, "");
            (a, retried, sent.elapsed())
        }
        (Op::Revoke, Some(t)) => {
            let path = format!("/api/v1/sessions/{}", session_id(&ctx.run, t.n));
            let sent = Instant::now();
            let (a, retried) = call(conn, "DELETE", &path, "");
            (a, retried, sent.elapsed())
        }
        (Op::RevokeAll, Some(t)) => {
            let path = format!("/api/v1/users/{}/sessions", user_id(t.user));
            let sent = Instant::now();
            let (a, retried) = call(conn, "DELETE", &path, "");
            (a, retried, sent.elapsed())
        }
    };
    let mut problem = check(op, &answer, &[200]);
    if problem.is_none()
        && let (Op::Validate, Ok(r)) = (op, &answer)
        && !r.body.contains("\"valid\":true")
    {
        problem = Some(("validate 200 not-valid".into(), format!("validate: {}", r.body)));
    }
    // A 401 for a session this thread no longer holds would be expected (cannot happen: only
    // this thread revokes its users' sessions); for one it holds, it is an error.
    if let (Some(_), Ok(r), Some(t)) = (&problem, &answer, &target)
        && r.status == 401
        && matches!(op, Op::Validate | Op::Refresh)
        && !ctx.is_live(k, t.n)
    {
        problem = None;
    }
    let mut stats = lock(&ctx.stats);
    stats.latency(op, micros(took));
    stats.totals.retries += u64::from(retried);
    if let (Op::Validate, Ok(r)) = (op, &answer)
        && r.body.contains("\"mode\":\"degraded\"")
    {
        stats.interval.degraded += 1;
        stats.totals.degraded += 1;
    }
    if let Some((key, example)) = problem {
        stats.error(key, example);
    } else if let (Op::RevokeAll, Ok(r)) = (op, &answer) {
        let expected = format!("\"revoked\":{removed_for_user}");
        if !r.body.contains(&expected) {
            stats.totals.revoke_all_mismatch += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSockets

/// Connects, upgrades with `Authorization: Bearer`, and waits for the welcome frame.
async fn open(addr: &str, token: &str) -> Result<Ws, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    upgrade(tcp, addr, token).await
}

/// How a socket ended.
enum End {
    /// We closed it (churn, or the end of the run).
    Client,
    /// The server sent a close frame.
    Server(u16, String),
    /// It ended without a close frame.
    Gone(String),
}

enum WsNote {
    Opened(u64),
    Refused(u64, String),
    Event(String),
    Ended(u64, End),
}

/// Reads until the stream ends (letting tungstenite finish the close handshake), or gives up
/// after [`CLOSE_TIMEOUT`].
async fn drain(ws: &mut Ws) {
    let _ =
        tokio::time::timeout(CLOSE_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} })
            .await;
}

/// One socket: opens, reads (tungstenite answers the server's pings while we read), reports.
async fn socket(
    addr: Arc<str>,
    c: u64,
    token: Arc<str>,
    tx: mpsc::UnboundedSender<WsNote>,
    mut close: oneshot::Receiver<()>,
) {
    let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, open(&addr, &token)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let _ = tx.send(WsNote::Refused(c, e));
            return;
        }
        Err(_) => {
            let _ = tx.send(WsNote::Refused(c, format!("no welcome within {HANDSHAKE_TIMEOUT:?}")));
            return;
        }
    };
    let _ = tx.send(WsNote::Opened(c));
    let end = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let event = serde_json::from_str::<serde_json::Value>(t.as_str())
                        .ok()
                        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| "(other text frame)".to_owned());
                    let _ = tx.send(WsNote::Event(event));
                }
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    drain(&mut ws).await;
                    break End::Server(code, reason);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Gone(describe(e)),
                None => break End::Gone("the stream ended without a close frame".into()),
            },
            // A close request, or the manager is gone: close it ourselves.
            _ = &mut close => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "soak churn".into() };
                let _ = ws.close(Some(frame)).await;
                drain(&mut ws).await;
                break End::Client;
            }
        }
    };
    let _ = tx.send(WsNote::Ended(c, end));
}

/// A socket the manager started.
struct Sock {
    /// Which live set its session is in, and the session.
    set: usize,
    n: u64,
    opened: bool,
    close: Option<oneshot::Sender<()>>,
}

/// Keeps `target` sockets open until the stop flag, closing and reopening `churn` per second;
/// at the end closes them all.
async fn ws_manager(ctx: Arc<Ctx>, target: usize, churn: f64) {
    let addr: Arc<str> = Arc::from(ctx.addr.as_str());
    let (tx, mut rx) = mpsc::unbounded_channel::<WsNote>();
    let mut socks: HashMap<u64, Sock> = HashMap::new();
    let mut next_c = 0u64;
    let mut rng = Rng::new(seed() ^ 0x5eed);
    let mut credit = 0.0f64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if ctx.stopped() {
                    break;
                }
                credit += churn * 0.1;
                while credit >= 1.0 {
                    credit -= 1.0;
                    let open: Vec<u64> = socks
                        .iter()
                        .filter(|(_, s)| s.opened && s.close.is_some())
                        .map(|(c, _)| *c)
                        .collect();
                    if let Some(c) = open.get(rng.below(open.len()))
                        && let Some(close) = socks.get_mut(c).and_then(|s| s.close.take())
                    {
                        let _ = close.send(());
                    }
                }
                // Refill (closing sockets count until they are gone), a few per tick.
                let mut started = 0;
                while socks.len() < target && started < 20 {
                    started += 1;
                    let Some((set, live)) = pick_live(&ctx, &mut rng) else { break };
                    let (close_tx, close_rx) = oneshot::channel();
                    let c = next_c;
                    next_c += 1;
                    socks.insert(c, Sock { set, n: live.n, opened: false, close: Some(close_tx) });
                    tokio::spawn(socket(Arc::clone(&addr), c, live.token, tx.clone(), close_rx));
                }
            }
            Some(note) = rx.recv() => handle_note(&ctx, &mut socks, note),
        }
    }
    // The end: close every socket, wait for them to finish.
    for s in socks.values_mut() {
        if let Some(close) = s.close.take() {
            let _ = close.send(());
        }
    }
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT + CLOSE_TIMEOUT;
    while !socks.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(note)) => handle_note(&ctx, &mut socks, note),
            _ => break,
        }
    }
    if !socks.is_empty() {
        eprintln!("soak: {} WebSockets did not finish closing", socks.len());
    }
}

/// A random live session of a random load thread (with its set's index).
fn pick_live(ctx: &Ctx, rng: &mut Rng) -> Option<(usize, Live)> {
    let first = rng.below(ctx.sets.len());
    (0..ctx.sets.len()).find_map(|i| {
        let k = (first + i) % ctx.sets.len();
        lock(&ctx.sets[k]).random(rng).cloned().map(|l| (k, l))
    })
}

fn handle_note(ctx: &Ctx, socks: &mut HashMap<u64, Sock>, note: WsNote) {
    let mut stats = lock(&ctx.stats);
    match note {
        WsNote::Opened(c) => {
            if let Some(s) = socks.get_mut(&c) {
                s.opened = true;
                stats.totals.ws_opened += 1;
                stats.totals.ws_open += 1;
            }
        }
        WsNote::Refused(c, why) => {
            let Some(s) = socks.remove(&c) else { return };
            let status = why.strip_prefix("HTTP ").and_then(|r| r.get(..3)).unwrap_or("-");
            let code = json_str(&why, "code").unwrap_or("-");
            let key = format!("{status} {code}");
            *stats.totals.ws_refused.entry(key.clone()).or_default() += 1;
            drop(stats);
            // Revoked between the pick and the handshake: expected.
            let live = ctx.is_live(s.set, s.n);
            let mut stats = lock(&ctx.stats);
            if status == "401" && !live {
                stats.totals.ws_refused_revoked += 1;
            } else {
                stats.error(
                    format!("ws handshake {key}"),
                    format!("ws handshake: {}", clip(&why, 300)),
                );
            }
        }
        WsNote::Event(e) => *stats.totals.ws_events.entry(e).or_default() += 1,
        WsNote::Ended(c, end) => {
            let Some(s) = socks.remove(&c) else { return };
            if s.opened {
                stats.totals.ws_open = stats.totals.ws_open.saturating_sub(1);
            }
            match end {
                End::Client => stats.totals.ws_client_closed += 1,
                End::Server(code, reason) => {
                    *stats.totals.ws_closes.entry(code).or_default() += 1;
                    drop(stats);
                    let live = ctx.is_live(s.set, s.n);
                    let mut stats = lock(&ctx.stats);
                    if code == 4001 && !live {
                        stats.interval.ws_4001 += 1;
                    } else {
                        let what = if live { "live" } else { "revoked" };
                        stats.error(
                            format!("ws close {code} ({what} session)"),
                            format!("ws close {code} {reason:?} of a {what} session"),
                        );
                    }
                }
                End::Gone(why) => stats.error("ws gone".into(), format!("ws gone: {why}")),
            }
        }
    }
}

/// Sets the stop flag on SIGINT or SIGTERM.
async fn on_signal(ctx: Arc<Ctx>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("soak: cannot install the signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => eprintln!("soak: SIGTERM, stopping"),
        _ = int.recv() => eprintln!("soak: SIGINT, stopping"),
    }
    ctx.stop.store(true, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Samples and the drift analysis

/// One CSV row.
#[derive(Clone, Debug, Default)]
struct Row {
    elapsed_s: f64,
    rss_kib: u64,
    open_fds: u64,
    threads: u64,
    cpu_ms: u64,
    ops: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    ws_open: u64,
    redis_used_memory: Option<u64>,
    live_sessions: usize,
    ws_4001: u64,
    degraded: u64,
}

const CSV_HEADER: &str = "elapsed_s,rss_kib,open_fds,threads,cpu_ms,ops,errors,p50_ms,p99_ms,\
                          max_ms,ws_open,redis_used_memory,live_sessions,ws_4001,degraded";

impl Row {
    fn csv(&self) -> String {
        format!(
            "{:.1},{},{},{},{},{},{},{:.3},{:.3},{:.3},{},{},{},{},{}",
            self.elapsed_s,
            self.rss_kib,
            self.open_fds,
            self.threads,
            self.cpu_ms,
            self.ops,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.ws_open,
            self.redis_used_memory.map_or_else(String::new, |m| m.to_string()),
            self.live_sessions,
            self.ws_4001,
            self.degraded
        )
    }
}

/// Least-squares slope of `y` over `x` (`None` with fewer than 2 distinct `x`).
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The drift of one column: slope over the second half (per hour) and first/last window means.
struct Drift {
    slope_per_h: Option<f64>,
    half_mean: Option<f64>,
    first: Option<f64>,
    last: Option<f64>,
}

/// `window`: the number of samples of the first and of the last window.
fn drift(rows: &[Row], span_s: f64, window: usize, col: impl Fn(&Row) -> f64) -> Drift {
    let half: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.elapsed_s >= span_s / 2.0)
        .map(|r| (r.elapsed_s, col(r)))
        .collect();
    let window = window.clamp(1, rows.len().max(1));
    Drift {
        slope_per_h: slope(&half).map(|s| s * 3600.0),
        half_mean: mean(half.iter().map(|p| p.1)),
        first: mean(rows.iter().take(window).map(&col)),
        last: mean(rows.iter().rev().take(window).map(&col)),
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "none".to_owned(), |v| format!("{v:.digits$}"))
}

fn print_drift(name: &str, unit: &str, d: &Drift) {
    let pct = |num: Option<f64>, den: Option<f64>| match (num, den) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:+.2} %", a / b * 100.0),
        _ => "n/a".to_owned(),
    };
    println!(
        "  {name:<18} slope {:>10} {unit}/h ({} of its mean per hour); first {:>10} -> last {:>10} ({})",
        fmt_opt(d.slope_per_h, 1),
        pct(d.slope_per_h, d.half_mean),
        fmt_opt(d.first, 1),
        fmt_opt(d.last, 1),
        pct(d.last.zip(d.first).map(|(l, f)| l - f), d.first),
    );
}

fn sample(ctx: &Ctx, daemon_pid: u32, redis_port: u16, elapsed: f64) -> Result<Row, String> {
    let rss_kib = status_field(daemon_pid, "VmRSS:")
        .ok_or_else(|| format!("the daemon (pid {daemon_pid}) is gone: no VmRSS"))?;
    let (interval, ws_open) = {
        let mut stats = lock(&ctx.stats);
        (std::mem::take(&mut stats.interval), stats.totals.ws_open)
    };
    let mut lat = interval.latencies_us;
    lat.sort_unstable();
    Ok(Row {
        elapsed_s: elapsed,
        rss_kib,
        open_fds: open_fds(daemon_pid).unwrap_or(0),
        threads: status_field(daemon_pid, "Threads:").unwrap_or(0),
        cpu_ms: cpu_ms(daemon_pid).unwrap_or(0),
        ops: interval.ops,
        errors: interval.errors,
        p50_ms: percentile_us(&lat, 50.0),
        p99_ms: percentile_us(&lat, 99.0),
        max_ms: lat.last().map_or(f64::NAN, |&l| f64::from(l) / 1000.0),
        ws_open,
        redis_used_memory: redis_used_memory(redis_port),
        live_sessions: ctx.sets.iter().map(|s| lock(s).len()).sum(),
        ws_4001: interval.ws_4001,
        degraded: interval.degraded,
    })
}

// ---------------------------------------------------------------------------------------------
// The run

fn write_config(path: &Path, port: u16, data: &Path, ws: usize) -> Result<(), String> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [tokens]\nhmac_secret = \"{SECRET}\"\n\n\
         [api]\nkeys = [\"{API_KEY}\"]\n\n\
         [sessions]\nredis_url = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"soak\"\n\
         max_ttl_seconds = {TOKEN_LIFETIME_S}\n\n\
         [fallback]\ndata_dir = \"{}\"\nfsync = \"interval\"\n\n\
         [degraded]\npolicy = \"jwt_only\"\n\n\
         [ws]\npath = \"/ws\"\nmax_connections = {}\n",
        data.display(),
        (ws * 2).max(1000)
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn check_args(a: &SoakArgs) -> Result<(), String> {
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    if !(a.ws_churn >= 0.0 && a.ws_churn.is_finite()) {
        return Err("--ws-churn must be a number ≥ 0".into());
    }
    if a.threads == 0 || a.sample_seconds == 0 || a.seconds == 0 {
        return Err("--threads, --sample-seconds and --seconds must be at least 1".into());
    }
    if a.users < a.threads {
        return Err("--users must be at least --threads".into());
    }
    if a.max_live < a.threads {
        return Err("--max-live must be at least --threads".into());
    }
    Ok(())
}

pub fn run(a: &SoakArgs) -> Result<(), String> {
    check_args(a)?;
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("sessiond"),
    };
    if let Some(parent) = a.csv.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut csv = std::fs::File::create(&a.csv).map_err(|e| format!("{}: {e}", a.csv.display()))?;
    writeln!(csv, "{CSV_HEADER}").map_err(|e| format!("{}: {e}", a.csv.display()))?;

    // The runtime of the WebSockets and the signal handler, one worker thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let scratch = ScratchDir(scratch_dir("soak")?);
    let dir = scratch.0.clone();
    let mut redis = Redis::new(&a.redis_server, &dir.join("redis"))?;
    std::fs::create_dir_all(&redis.dir).map_err(|e| e.to_string())?;
    redis.spawn()?;
    let config = dir.join("sessiond.toml");
    write_config(&config, redis.port, &dir.join("data"), a.ws)?;
    let mut daemon = Daemon::start("sessiond", &binary, &config, "warn", DropReport::Failures)?;
    eprintln!(
        "soak: redis-server on 127.0.0.1:{}; sessiond (pid {}) on {}",
        redis.port, daemon.pid, daemon.addr
    );

    let users_per_thread = a.users / a.threads;
    let ctx = Arc::new(Ctx {
        addr: daemon.addr.clone(),
        run: format!("{}-{}", now_seconds(), std::process::id()),
        threads: a.threads,
        users_per_thread,
        cap_per_thread: a.max_live / a.threads,
        sets: (0..a.threads).map(|_| Mutex::new(LiveSet::default())).collect(),
        next_n: AtomicU64::new(0),
        stats: Mutex::new(Stats::default()),
        stop: AtomicBool::new(false),
    });
    runtime.spawn(on_signal(Arc::clone(&ctx)));

    // The steady state: creates (15 %) = revokes (10 %) + revoke-alls (2 %) × live / users.
    let steady = (users_per_thread * a.threads * 5 / 2).min(a.max_live);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..a.threads)
            .map(|k| {
                let ctx = &ctx;
                scope.spawn(move || prefill(ctx, k, steady / a.threads))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a prefill thread panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    })?;
    eprintln!(
        "soak: {} live sessions over {} users created in {:.1} s; load: {} ops/s, {} WebSockets \
         ({}/s churn), {} s, a sample every {} s into {}",
        steady / a.threads * a.threads,
        users_per_thread * a.threads,
        started.elapsed().as_secs_f64(),
        a.rate,
        a.ws,
        a.ws_churn,
        a.seconds,
        a.sample_seconds,
        a.csv.display()
    );
    let baseline_problems = Instant::now();

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.seconds);
    let ws = runtime.spawn(ws_manager(Arc::clone(&ctx), a.ws, a.ws_churn));
    let loaders: Vec<_> = (0..a.threads)
        .map(|k| {
            let ctx = Arc::clone(&ctx);
            let rate = a.rate;
            std::thread::spawn(move || load_thread(&ctx, k, rate, t0, deadline))
        })
        .collect();

    // Sampling.
    println!(
        "{:>8} {:>10} {:>6} {:>4} {:>9} {:>6} {:>4} {:>7} {:>7} {:>8} {:>5} {:>6} {:>10} {:>5}",
        "elapsed",
        "rss_kib",
        "fds",
        "thr",
        "cpu_ms",
        "ops",
        "err",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "ws",
        "live",
        "redis_kib",
        "deg"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut failure: Option<String> = None;
    let step = Duration::from_secs(a.sample_seconds);
    let mut k = 1u32;
    loop {
        let at = (t0 + step * k).min(deadline);
        while Instant::now() < at && !ctx.stopped() {
            std::thread::sleep((at - Instant::now()).min(Duration::from_millis(200)));
        }
        if ctx.stopped() {
            break;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        match sample(&ctx, daemon.pid, redis.port, elapsed) {
            Ok(row) => {
                if let Err(e) = writeln!(csv, "{}", row.csv()) {
                    failure = Some(format!("{}: {e}", a.csv.display()));
                    break;
                }
                println!(
                    "{:>7.1}s {:>10} {:>6} {:>4} {:>9} {:>6} {:>4} {:>7.2} {:>7.2} {:>8.2} {:>5} \
                     {:>6} {:>10} {:>5}",
                    row.elapsed_s,
                    row.rss_kib,
                    row.open_fds,
                    row.threads,
                    row.cpu_ms,
                    row.ops,
                    row.errors,
                    row.p50_ms,
                    row.p99_ms,
                    row.max_ms,
                    row.ws_open,
                    row.live_sessions,
                    row.redis_used_memory
                        .map_or_else(|| "-".to_owned(), |m| (m / 1024).to_string()),
                    row.degraded
                );
                rows.push(row);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if at >= deadline {
            break;
        }
        k += 1;
    }
    ctx.stop.store(true, Ordering::Relaxed);
    for h in loaders {
        if h.join().is_err() {
            failure.get_or_insert_with(|| "a load thread panicked".into());
        }
    }
    if runtime.block_on(ws).is_err() {
        failure.get_or_insert_with(|| "the WebSocket manager panicked".into());
    }
    let span = t0.elapsed().as_secs_f64().min(a.seconds as f64);
    let problems = daemon.log.problems(baseline_problems);
    let exit = daemon.stop();
    drop(redis);
    drop(scratch);
    runtime.shutdown_timeout(Duration::from_secs(1));

    // Summary.
    let stats = std::mem::take(&mut *lock(&ctx.stats));
    let t = stats.totals;
    let mut lat = t.latencies_us;
    lat.sort_unstable();
    let ops: u64 = t.ops.values().sum();
    let window_s = COMPARE_WINDOW_S.min(span / 4.0);
    let window = ((window_s / a.sample_seconds as f64).round() as usize).max(1);
    let rss = drift(&rows, span, window, |r| r.rss_kib as f64);
    let fds = drift(&rows, span, window, |r| r.open_fds as f64);
    let thr = drift(&rows, span, window, |r| r.threads as f64);
    let p99 = drift(&rows, span, window, |r| r.p99_ms);
    let redis_mem = drift(&rows, span, window, |r| r.redis_used_memory.unwrap_or(0) as f64);
    let live = drift(&rows, span, window, |r| r.live_sessions as f64);
    let by_op: Vec<String> = t.ops.iter().map(|(op, n)| format!("{}={n}", op.name())).collect();
    let closes: Vec<String> = t.ws_closes.iter().map(|(c, n)| format!("{c}={n}")).collect();
    println!();
    println!(
        "RESULT mode=soak seconds={span:.0} samples={} ops={ops} rps={:.1} errors={} p50_ms={:.2} \
         p99_ms={:.2} max_ms={:.2} ws_opened={} ws_client_closed={} ws_refused_revoked={} \
         rss_slope_kib_per_h={} fds_slope_per_h={} rss_first_kib={} rss_last_kib={} \
         fds_first={} fds_last={} degraded_answers={}",
        rows.len(),
        ops as f64 / span.max(1e-9),
        t.errors,
        percentile_us(&lat, 50.0),
        percentile_us(&lat, 99.0),
        lat.last().map_or(f64::NAN, |&l| f64::from(l) / 1000.0),
        t.ws_opened,
        t.ws_client_closed,
        t.ws_refused_revoked,
        fmt_opt(rss.slope_per_h, 1),
        fmt_opt(fds.slope_per_h, 2),
        fmt_opt(rss.first, 0),
        fmt_opt(rss.last, 0),
        fmt_opt(fds.first, 1),
        fmt_opt(fds.last, 1),
        t.degraded,
    );
    println!("operations: {}", by_op.join(" "));
    println!(
        "  retried after a transport error: {}; schedule restarts (> {MAX_LAG:?} behind): {}; \
         creates turned into revokes (live set full): {}; sessions retired at {} s: {}; \
         revoke-alls with an unexpected count: {}",
        t.retries,
        t.lags,
        t.full,
        MAX_AGE.as_secs(),
        t.retired,
        t.revoke_all_mismatch
    );
    println!(
        "websockets: opened {}, closed by us {}, closed by the server {{{}}}, handshakes refused \
         {:?} (of which for a revoked session, expected: {})",
        t.ws_opened,
        t.ws_client_closed,
        closes.join(" "),
        t.ws_refused,
        t.ws_refused_revoked
    );
    println!("  events: {:?}", t.ws_events);
    println!();
    println!(
        "drift: least-squares slope over the second half (t ≥ {:.0} s, {} samples), and the \
         means of the first and last {window} samples ({:.0} s):",
        span / 2.0,
        rows.iter().filter(|r| r.elapsed_s >= span / 2.0).count(),
        window as f64 * a.sample_seconds as f64
    );
    print_drift("rss_kib", "KiB", &rss);
    print_drift("open_fds", "fds", &fds);
    print_drift("threads", "threads", &thr);
    print_drift("p99_ms", "ms", &p99);
    print_drift("redis_used_memory", "B", &redis_mem);
    print_drift("live_sessions", "sessions", &live);
    if !t.errors_by.is_empty() {
        println!();
        println!("errors by kind:");
        for (k, n) in &t.errors_by {
            println!("  {k:<48} {n}");
        }
        println!("first {} verbatim:", t.examples.len());
        for x in &t.examples {
            println!("  {x}");
        }
    }
    if !problems.is_empty() {
        println!();
        println!("daemon warnings/errors ({}, first 30):", problems.len());
        for (_, l) in problems.iter().take(30) {
            println!("  {l}");
        }
    }
    match exit {
        Ok(s) => println!("sessiond exit after SIGTERM: {s}"),
        Err(e) => println!("sessiond stop: {e}"),
    }
    println!("samples: {}", a.csv.display());
    if let Some(f) = failure {
        return Err(f);
    }
    if t.errors > 0 {
        return Err(format!("{} errors during the soak", t.errors));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> =
            (0..10).map(|i| (f64::from(i), 3.0 * f64::from(i) + 1.0)).collect();
        assert!((slope(&pts).unwrap() - 3.0).abs() < 1e-9);
        assert!(slope(&pts[..1]).is_none());
        assert!(slope(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn live_set_removes_and_finds_the_oldest() {
        let now = Instant::now();
        let mut s = LiveSet::default();
        for n in 0..5u64 {
            let created = now + Duration::from_millis(n);
            s.insert(Live { n, user: (n % 2) as usize, token: Arc::from("t"), created });
        }
        assert_eq!(s.remove(0).map(|l| l.n), Some(0));
        assert!(s.remove(0).is_none());
        assert_eq!(s.oldest().map(|l| l.n), Some(1));
        assert_eq!(s.remove_user(1), 2); // 1 and 3
        assert_eq!(s.oldest().map(|l| l.n), Some(2));
        assert_eq!(s.len(), 2);
        assert!(s.contains(4) && !s.contains(3));
        for (i, l) in s.list.iter().enumerate() {
            assert_eq!(s.index[&l.n], i);
        }
    }

    #[test]
    fn the_mix_adds_up() {
        assert_eq!(MIX.iter().map(|m| m.1).sum::<u32>(), 100);
        let mut rng = Rng::new(1);
        let mut counts: BTreeMap<Op, u32> = BTreeMap::new();
        for _ in 0..100_000 {
            *counts.entry(Op::pick(&mut rng)).or_default() += 1;
        }
        assert!((69_000..71_000).contains(&counts[&Op::Validate]));
        assert!((1_700..2_300).contains(&counts[&Op::RevokeAll]));
    }

    #[test]
    fn csv_rows_match_the_header() {
        let row = Row { redis_used_memory: Some(5), ..Row::default() };
        assert_eq!(row.csv().split(',').count(), CSV_HEADER.split(',').count());
        assert_eq!(Row::default().csv().split(',').count(), CSV_HEADER.split(',').count());
    }
}
