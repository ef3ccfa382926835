//! `sessiond-bench outage`: the resilience measurement of Redis mode (issue 3, "Speed and
//! resilience"; CONTRACT.md section 6). Under a validation load, `kill -9` the Redis the
//! daemon uses, journal writes while it is down, restart it empty on the same port, and report:
//! how fast the instance went degraded, whether any request got a 5xx or a 401 meanwhile, how
//! fast the journal was replayed, and whether a fresh instance on that Redis sees the writes.
//!
//! Everything it starts (a `redis-server` on a free loopback port, the daemons, a temp dir) is
//! stopped and removed at the end, on error too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sessiond_actors::domain::now_seconds;
use sessiond_actors::token::{Algorithm, sign_hmac};

use crate::keepalive::Conn;
use crate::procs::{DropReport, Redis, ScratchDir, percentile_us, scratch_dir};

type Daemon = crate::procs::Daemon<Instant>;

const SECRET: &str = "outage-bench-hmac-secret-0123456789abcdef";
const API_KEY: &str = "outage-bench-api-key-0123456789";
/// `[breaker]` defaults the config relies on: failure_threshold × op_timeout_ms + 200 ms.
const FAILURE_THRESHOLD: u64 = 5;
const OP_TIMEOUT_MS: u64 = 250;
const DEGRADED_TARGET_MS: u64 = FAILURE_THRESHOLD * OP_TIMEOUT_MS + 200;
/// Read/write timeout of every HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the kill the `mode degraded` line may take before we go on without it.
const DEGRADED_WAIT: Duration = Duration::from_secs(10);
/// How long after the restart the `mode normal` line may take.
const RECOVERY_WAIT: Duration = Duration::from_secs(60);
/// Non-200 answers kept (with their bodies) per load thread.
const KEPT_ERRORS: usize = 50_000;
/// Bodies printed per (phase, status, code).
const PRINTED_BODIES: usize = 3;

/// The command-line options of `outage`.
pub struct Options {
    pub sessions: usize,
    pub clients: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub journal_writes: usize,
    pub writers: usize,
    pub verify: usize,
    pub binary: Option<PathBuf>,
    pub redis_server: String,
}

// ---------------------------------------------------------------------------------------------
// Processes

fn write_config(path: &Path, port: u16, data: &Path) -> Result<(), String> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [tokens]\nhmac_secret = \"{SECRET}\"\n\n\
         [api]\nkeys = [\"{API_KEY}\"]\n\n\
         [sessions]\nredis_url = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"outage\"\n\n\
         [fallback]\ndata_dir = \"{}\"\nfsync = \"interval\"\n\n\
         [degraded]\npolicy = \"jwt_only\"\n\n\
         [breaker]\nfailure_threshold = {FAILURE_THRESHOLD}\nsuccess_threshold = 2\n\
         open_seconds = 5\nop_timeout_ms = {OP_TIMEOUT_MS}\n",
        data.display()
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Tokens and answers

fn token(sid: &str, i: usize, now: i64) -> Result<String, String> {
    let claims = serde_json::json!({
        "sub": format!("outage-user-{}", i % 100), "email": format!("user{}@example.com", i % 100),
        "role": "user", "sid": sid, "iat": now, "exp": now + 7200,
    });
    sign_hmac(SECRET.as_bytes(), Algorithm::HS256, &claims)
}

/// The string value of `"key":"…"` in a compact JSON body.
fn json_str<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = body.find(&pat)? + pat.len();
    let len = body[start..].find('"')?;
    Some(&body[start..start + len])
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum AnswerMode {
    Normal,
    Degraded,
    /// No `mode` (an error answer, or a transport error).
    Absent,
    Other,
}

impl AnswerMode {
    fn of(body: &str) -> AnswerMode {
        match json_str(body, "mode") {
            Some("normal") => AnswerMode::Normal,
            Some("degraded") => AnswerMode::Degraded,
            Some(_) => AnswerMode::Other,
            None => AnswerMode::Absent,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AnswerMode::Normal => "normal",
            AnswerMode::Degraded => "degraded",
            AnswerMode::Absent => "-",
            AnswerMode::Other => "other",
        }
    }
}

/// One validation answer. `status` 0 is a transport error.
#[derive(Clone, Copy)]
struct Sample {
    /// When the answer arrived, µs since the load started.
    at_us: u64,
    latency_us: u32,
    status: u16,
    mode: AnswerMode,
    /// A degraded answer with `session: null` (the mirror did not know the session).
    session_null: bool,
}

/// A non-200 answer (or transport error) with its body.
struct Failure {
    at_us: u64,
    status: u16,
    body: String,
}

#[derive(Default)]
struct LoadResult {
    samples: Vec<Sample>,
    failures: Vec<Failure>,
    failures_dropped: u64,
    connects: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One load thread: validates `tokens` round-robin (starting at its own offset) until the
/// deadline or the stop flag.
fn load_thread(
    addr: String,
    tokens: Arc<Vec<String>>,
    offset: usize,
    t0: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> LoadResult {
    let mut out = LoadResult::default();
    let mut conn = Conn::new(&addr, HTTP_TIMEOUT);
    let bodies: Vec<String> =
        tokens.iter().map(|t| serde_json::json!({ "token": t }).to_string()).collect();
    let mut i = offset;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let body = &bodies[i % bodies.len()];
        i += 1;
        let sent = Instant::now();
        let answer = conn.post("/api/v1/sessions/validate", &[], body);
        let now = Instant::now();
        let at_us = micros(now.duration_since(t0));
        let latency_us = u32::try_from(micros(now.duration_since(sent))).unwrap_or(u32::MAX);
        let (status, text) = match answer {
            Ok(r) => (r.status, r.body),
            Err(e) => {
                // Do not spin on a dead server.
                std::thread::sleep(Duration::from_millis(1));
                (0, format!("transport error: {e}"))
            }
        };
        let mode = if status == 0 { AnswerMode::Absent } else { AnswerMode::of(&text) };
        let session_null = mode == AnswerMode::Degraded && text.contains("\"session\":null");
        out.samples.push(Sample { at_us, latency_us, status, mode, session_null });
        if status != 200 || mode == AnswerMode::Other {
            if out.failures.len() < KEPT_ERRORS {
                out.failures.push(Failure { at_us, status, body: text });
            } else {
                out.failures_dropped += 1;
            }
        }
    }
    out.connects = conn.connects;
    out
}

/// The load threads; on drop (an error path) they are stopped and joined.
struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<LoadResult>>,
}

impl Load {
    fn join(&mut self) -> Vec<LoadResult> {
        self.handles.drain(..).filter_map(|h| h.join().ok()).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// What the journal writers saw.
#[derive(Default)]
struct WriteResult {
    /// Index of every write that answered 2xx.
    ok: Vec<usize>,
    by_status: BTreeMap<u16, u64>,
    failures: Vec<String>,
}

fn journal_writer(
    addr: String,
    tokens: Arc<Vec<String>>,
    first: usize,
    step: usize,
) -> WriteResult {
    let mut out = WriteResult::default();
    let mut conn = Conn::new(&addr, HTTP_TIMEOUT);
    let mut i = first;
    while i < tokens.len() {
        let body = serde_json::json!({ "token": tokens[i] }).to_string();
        let status = match conn.post("/api/v1/sessions", &[("X-Api-Key", API_KEY)], &body) {
            Ok(r) => {
                if !(200..300).contains(&r.status) && out.failures.len() < 20 {
                    out.failures.push(format!("write {i}: HTTP {} {}", r.status, r.body));
                }
                r.status
            }
            Err(e) => {
                if out.failures.len() < 20 {
                    out.failures.push(format!("write {i}: transport error: {e}"));
                }
                0
            }
        };
        *out.by_status.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            out.ok.push(i);
        }
        i += step;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The run

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn since_ms(later: Option<Instant>, earlier: Option<Instant>) -> Option<f64> {
    Some(ms(later?.checked_duration_since(earlier?)?))
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| format!("{v:.1}"))
}

/// `replayed N journaled writes into Redis in X ms` → (N, X).
fn parse_replay(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("replayed ").nth(1)?;
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let x = rest.split(" in ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some((n, x))
}

pub fn run(opts: Options) -> Result<(), String> {
    if opts.sessions == 0 || opts.clients == 0 || opts.writers == 0 {
        return Err("--sessions, --clients and --writers must be at least 1".into());
    }
    if opts.warmup >= opts.seconds {
        return Err("--warmup must be shorter than --seconds".into());
    }
    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("sessiond"),
    };
    let scratch = ScratchDir(scratch_dir("outage")?);
    let dir = scratch.0.clone();
    let mut redis = Redis::new(&opts.redis_server, &dir.join("redis"))?;
    std::fs::create_dir_all(&redis.dir).map_err(|e| e.to_string())?;
    redis.spawn()?;
    eprintln!("redis-server on 127.0.0.1:{}", redis.port);
    let config = dir.join("sessiond.toml");
    write_config(&config, redis.port, &dir.join("data"))?;
    let mut daemon = Daemon::start("sessiond", &binary, &config, "info", DropReport::Failures)?;
    eprintln!("sessiond on {}", daemon.addr);

    // Tokens: the load's sessions (created now, in normal mode) and the outage's writes.
    let now = now_seconds();
    let run_id = format!("{}-{now}", std::process::id());
    let mut load_tokens = Vec::with_capacity(opts.sessions);
    for i in 0..opts.sessions {
        load_tokens.push(token(&format!("load-{run_id}-{i}"), i, now)?);
    }
    let mut write_tokens = Vec::with_capacity(opts.journal_writes);
    for i in 0..opts.journal_writes {
        write_tokens.push(token(&format!("outage-{run_id}-{i}"), i, now)?);
    }
    let mut conn = Conn::new(&daemon.addr, HTTP_TIMEOUT);
    for (i, t) in load_tokens.iter().enumerate() {
        let body = serde_json::json!({ "token": t }).to_string();
        let r = conn.post("/api/v1/sessions", &[("X-Api-Key", API_KEY)], &body)?;
        if r.status != 201 && r.status != 200 {
            return Err(format!("creating session {i}: HTTP {} {}", r.status, r.body));
        }
    }
    drop(conn);
    eprintln!(
        "created {} sessions; load: {} clients for {} s",
        opts.sessions, opts.clients, opts.seconds
    );

    // Load.
    let load_tokens = Arc::new(load_tokens);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(opts.seconds);
    let mut load = Load { stop: Arc::clone(&stop), handles: Vec::new() };
    for c in 0..opts.clients {
        let (addr, tokens, stop) =
            (daemon.addr.clone(), Arc::clone(&load_tokens), Arc::clone(&stop));
        let offset = c * load_tokens.len() / opts.clients;
        load.handles.push(std::thread::spawn(move || {
            load_thread(addr, tokens, offset, t0, deadline, stop)
        }));
    }

    // The outage.
    std::thread::sleep(Duration::from_secs(opts.warmup));
    let kill_at = redis.kill9::<Instant>()?;
    eprintln!(
        "redis-server killed (SIGKILL) at t={:.3} s",
        kill_at.duration_since(t0).as_secs_f64()
    );
    let degraded_line = daemon.log.wait_for("mode degraded", kill_at, DEGRADED_WAIT);
    if degraded_line.is_none() {
        eprintln!("WARNING: no `mode degraded` line within {DEGRADED_WAIT:?} of the kill");
    }

    // Journaled writes while Redis is down.
    let write_tokens = Arc::new(write_tokens);
    let writes_started = Instant::now();
    let writers: Vec<JoinHandle<WriteResult>> = (0..opts.writers)
        .map(|w| {
            let (addr, tokens, step) =
                (daemon.addr.clone(), Arc::clone(&write_tokens), opts.writers);
            std::thread::spawn(move || journal_writer(addr, tokens, w, step))
        })
        .collect();
    let mut writes = WriteResult::default();
    for h in writers {
        let r = h.join().map_err(|_| "a journal writer panicked")?;
        writes.ok.extend(r.ok);
        for (s, n) in r.by_status {
            *writes.by_status.entry(s).or_default() += n;
        }
        writes.failures.extend(r.failures);
    }
    let writes_took = writes_started.elapsed();
    writes.ok.sort_unstable();
    eprintln!(
        "{} of {} journal writes answered 2xx in {:.0} ms",
        writes.ok.len(),
        opts.journal_writes,
        ms(writes_took)
    );

    // Redis back, empty, on the same port.
    let restart_at = Instant::now();
    redis.spawn()?;
    let redis_ready = Instant::now();
    eprintln!("redis-server restarted at t={:.3} s", restart_at.duration_since(t0).as_secs_f64());
    let normal_line = daemon.log.wait_for("mode normal", restart_at, RECOVERY_WAIT);
    if normal_line.is_none() {
        eprintln!("WARNING: no `mode normal` line within {RECOVERY_WAIT:?} of the restart");
    }
    let mut results = load.join();
    let load_end = Instant::now();
    let replays: Vec<(u64, u64)> = daemon
        .log
        .all("journaled writes into Redis", kill_at)
        .iter()
        .filter_map(|(_, l)| parse_replay(l))
        .collect();
    // The replay that let the instance recover: the one logged right before `mode normal`
    // (more than one replay line means replays overlapped, or one was retried).
    let recovering_replay: Option<(u64, u64)> = {
        let lines =
            daemon.log.all_matching(&["journaled writes into Redis", "mode normal"], kill_at);
        let normal_at = lines.iter().position(|(_, l)| l.contains("mode normal"));
        let before = normal_at.map_or(&lines[..], |i| &lines[..i]);
        before.iter().rev().find_map(|(_, l)| parse_replay(l))
    };
    let transitions = daemon.log.all("mode degraded", kill_at).len()
        + daemon.log.all("mode normal", kill_at).len();
    // The daemon's own account of the outage: breaker, mode, bus and replay lines.
    let story =
        daemon.log.all_matching(&["circuit breaker", "sessiond_actors::coordinator]"], kill_at);
    // The trial period that ended the outage: the last `redis` half-open before `mode normal`.
    let half_open = normal_line.as_ref().and_then(|(normal_at, _)| {
        daemon
            .log
            .all("circuit breaker `redis` open -> half_open", kill_at)
            .into_iter()
            .filter(|(at, _)| at <= normal_at)
            .map(|(at, _)| at)
            .next_back()
    });
    let problems = daemon.log.problems(t0);
    let exit_a = daemon.stop();

    // A fresh instance on the same Redis, with an empty data dir: only Redis can know the
    // sessions written during the outage.
    let config_b = dir.join("sessiond-fresh.toml");
    write_config(&config_b, redis.port, &dir.join("data-fresh"))?;
    let mut fresh =
        Daemon::start("fresh sessiond", &binary, &config_b, "info", DropReport::Failures)?;
    let sample: Vec<usize> = if writes.ok.is_empty() || opts.verify == 0 {
        Vec::new()
    } else {
        let n = opts.verify.min(writes.ok.len());
        (0..n).map(|k| writes.ok[k * writes.ok.len() / n]).collect()
    };
    let mut verified = 0usize;
    let mut verify_failures = Vec::new();
    let mut conn = Conn::new(&fresh.addr, HTTP_TIMEOUT);
    for &i in &sample {
        let body = serde_json::json!({ "token": write_tokens[i] }).to_string();
        match conn.post("/api/v1/sessions/validate", &[], &body) {
            Ok(r)
                if r.status == 200
                    && AnswerMode::of(&r.body) == AnswerMode::Normal
                    && r.body.contains("\"session\":{") =>
            {
                verified += 1;
            }
            Ok(r) => verify_failures.push(format!("write {i}: HTTP {} {}", r.status, r.body)),
            Err(e) => verify_failures.push(format!("write {i}: transport error: {e}")),
        }
    }
    drop(conn);
    let exit_b = fresh.stop();

    // Report.
    let milestones = Milestones {
        t0,
        kill: kill_at,
        degraded: degraded_line.as_ref().map(|(at, _)| *at),
        restart: restart_at,
        normal: normal_line.as_ref().map(|(at, _)| *at),
    };
    let samples: Vec<Sample> = results.iter().flat_map(|r| r.samples.iter().copied()).collect();
    let mut failures: Vec<Failure> =
        results.iter_mut().flat_map(|r| std::mem::take(&mut r.failures)).collect();
    failures.sort_by_key(|f| f.at_us);
    let failures_dropped: u64 = results.iter().map(|r| r.failures_dropped).sum();
    let connects: u64 = results.iter().map(|r| r.connects).sum();
    let kill_us = milestones.us(kill_at);
    let recovered_us = milestones.normal.map_or(u64::MAX, |n| milestones.us(n));
    let first_degraded = samples
        .iter()
        .filter(|s| s.mode == AnswerMode::Degraded && s.at_us >= kill_us)
        .map(|s| s.at_us)
        .min();
    let first_non_degraded_after_restart = samples
        .iter()
        .filter(|s| s.mode != AnswerMode::Degraded && s.at_us >= milestones.us(restart_at))
        .map(|s| s.at_us)
        .min();
    let in_outage = |s: &&Sample| s.at_us >= kill_us && s.at_us < recovered_us;
    let errors_5xx = samples.iter().filter(in_outage).filter(|s| s.status >= 500).count();
    let unauthorized = samples.iter().filter(in_outage).filter(|s| s.status == 401).count();
    let transport = samples.iter().filter(in_outage).filter(|s| s.status == 0).count();
    let other_bad = samples
        .iter()
        .filter(in_outage)
        .filter(|s| s.status != 0 && s.status != 200 && s.status != 401 && s.status < 500)
        .count();
    let total_5xx = samples.iter().filter(|s| s.status >= 500).count();
    let total_401 = samples.iter().filter(|s| s.status == 401).count();
    let post_recovery_401 =
        samples.iter().filter(|s| s.at_us >= recovered_us && s.status == 401).count();
    let total_transport = samples.iter().filter(|s| s.status == 0).count();
    let degraded_session_null = samples.iter().filter(|s| s.session_null).count();
    let replayed_total: u64 = replays.iter().map(|r| r.0).sum();
    let writes_failed = opts.journal_writes - writes.ok.len();
    let span = load_end.duration_since(t0).min(Duration::from_secs(opts.seconds));

    let kill_to_first_degraded =
        first_degraded.map(|us| (us.saturating_sub(kill_us)) as f64 / 1000.0);
    let restart_us = milestones.us(restart_at);
    let pairs: Vec<(&str, String)> = vec![
        ("sessions", opts.sessions.to_string()),
        ("clients", opts.clients.to_string()),
        ("seconds", opts.seconds.to_string()),
        ("requests", samples.len().to_string()),
        ("rps", format!("{:.0}", samples.len() as f64 / span.as_secs_f64())),
        ("kill_to_first_degraded_ms", show(kill_to_first_degraded)),
        ("kill_to_mode_degraded_ms", show(since_ms(milestones.degraded, Some(kill_at)))),
        ("degraded_target_ms", DEGRADED_TARGET_MS.to_string()),
        ("errors_5xx", errors_5xx.to_string()),
        ("unauthorized_401", unauthorized.to_string()),
        ("transport_errors", transport.to_string()),
        ("other_non200", other_bad.to_string()),
        ("journal_writes", opts.journal_writes.to_string()),
        ("journal_write_failures", writes_failed.to_string()),
        ("journal_write_ms", format!("{:.0}", ms(writes_took))),
        ("redis_restart_ms", format!("{:.1}", ms(redis_ready.duration_since(restart_at)))),
        ("restart_to_half_open_ms", show(since_ms(half_open, Some(restart_at)))),
        ("half_open_to_normal_ms", show(since_ms(milestones.normal, half_open))),
        ("restart_to_normal_ms", show(since_ms(milestones.normal, Some(restart_at)))),
        (
            "restart_to_first_non_degraded_answer_ms",
            show(
                first_non_degraded_after_restart
                    .map(|us| us.saturating_sub(restart_us) as f64 / 1000.0),
            ),
        ),
        ("replayed", recovering_replay.map_or("none".into(), |r| r.0.to_string())),
        ("replay_ms", recovering_replay.map_or("none".into(), |r| r.1.to_string())),
        ("replay_lines", replays.len().to_string()),
        ("replayed_total", replayed_total.to_string()),
        ("verified_in_fresh_instance", format!("{verified}/{}", sample.len())),
        ("total_5xx", total_5xx.to_string()),
        ("total_401", total_401.to_string()),
        ("post_recovery_401", post_recovery_401.to_string()),
        ("total_transport_errors", total_transport.to_string()),
        ("degraded_session_null", degraded_session_null.to_string()),
        ("mode_transitions", transitions.to_string()),
        ("reconnects", connects.saturating_sub(opts.clients as u64).to_string()),
    ];
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!();
    println!("RESULT mode=outage {}", pairs.join(" "));

    println!();
    println!("timeline (t = seconds since the load started)");
    println!("  redis killed (SIGKILL)        t={:.3}", milestones.secs(Some(kill_at)));
    println!(
        "  first degraded answer         t={}",
        first_degraded.map_or("none".into(), |us| format!("{:.3}", us as f64 / 1e6))
    );
    println!("  `mode degraded` log line      t={}", milestones.show_secs(milestones.degraded));
    println!(
        "  journal writes                {} in {:.0} ms ({:.0}/s), {} not 2xx",
        opts.journal_writes,
        ms(writes_took),
        opts.journal_writes as f64 / writes_took.as_secs_f64().max(1e-9),
        writes_failed
    );
    println!("  redis restarted (empty)       t={:.3}", milestones.secs(Some(restart_at)));
    println!("  `mode normal` log line        t={}", milestones.show_secs(milestones.normal));
    println!(
        "  load stopped                  t={:.3}",
        load_end.duration_since(t0).as_secs_f64().min(opts.seconds as f64)
    );
    println!("  daemon log since the kill (breaker, coordinator):");
    for (at, line) in &story {
        println!("    t={:.3} {line}", milestones.secs(Some(*at)));
    }
    println!();
    print_phases(&milestones, &samples);

    let mut shown: BTreeMap<(usize, u16, String), usize> = BTreeMap::new();
    let mut counts: BTreeMap<(usize, u16, String), usize> = BTreeMap::new();
    for f in &failures {
        let code = json_str(&f.body, "code").unwrap_or("-").to_owned();
        *counts.entry((milestones.phase(f.at_us), f.status, code)).or_default() += 1;
    }
    if !counts.is_empty() {
        println!();
        println!(
            "non-200 answers by phase, status and code (all of them are listed below the counts)"
        );
        for ((phase, status, code), n) in &counts {
            println!("  {:<28} {:>3} {:<24} {n}", PHASES[*phase], status, code);
        }
        if failures_dropped > 0 {
            println!("  ({failures_dropped} more not kept)");
        }
        println!("example bodies:");
        for f in &failures {
            let code = json_str(&f.body, "code").unwrap_or("-").to_owned();
            let key = (milestones.phase(f.at_us), f.status, code);
            let n = shown.entry(key).or_default();
            if *n < PRINTED_BODIES {
                *n += 1;
                println!("  t={:.3} HTTP {} {}", f.at_us as f64 / 1e6, f.status, f.body);
            }
        }
    }
    if !writes.failures.is_empty() {
        println!();
        println!("journal writes that did not answer 2xx (status: count {:?}):", writes.by_status);
        for f in &writes.failures {
            println!("  {f}");
        }
    }
    if !verify_failures.is_empty() {
        println!();
        println!("fresh-instance validations that failed:");
        for f in verify_failures.iter().take(10) {
            println!("  {f}");
        }
    }
    if !problems.is_empty() {
        println!();
        println!("daemon warnings/errors ({}):", problems.len());
        for (at, l) in problems.iter().take(40) {
            println!("  t={:.3} {l}", milestones.secs(Some(*at)));
        }
    }
    println!();
    match exit_a {
        Ok(s) => println!("sessiond exit after SIGTERM: {s}"),
        Err(e) => println!("sessiond stop: {e}"),
    }
    match exit_b {
        Ok(s) => println!("fresh sessiond exit after SIGTERM: {s}"),
        Err(e) => println!("fresh sessiond stop: {e}"),
    }
    drop(redis);
    drop(scratch);
    Ok(())
}

const PHASES: [&str; 5] = [
    "1 before the kill",
    "2 kill -> mode degraded",
    "3 degraded, redis down",
    "4 restart -> mode normal",
    "5 after recovery",
];

struct Milestones {
    t0: Instant,
    kill: Instant,
    degraded: Option<Instant>,
    restart: Instant,
    normal: Option<Instant>,
}

impl Milestones {
    fn us(&self, at: Instant) -> u64 {
        micros(at.saturating_duration_since(self.t0))
    }

    fn secs(&self, at: Option<Instant>) -> f64 {
        at.map_or(f64::NAN, |a| a.saturating_duration_since(self.t0).as_secs_f64())
    }

    fn show_secs(&self, at: Option<Instant>) -> String {
        at.map_or_else(|| "none".to_owned(), |a| format!("{:.3}", self.secs(Some(a))))
    }

    /// The phase an answer at `at_us` belongs to.
    fn phase(&self, at_us: u64) -> usize {
        let bound = |i: Option<Instant>| i.map_or(u64::MAX, |i| self.us(i));
        if at_us < self.us(self.kill) {
            0
        } else if at_us < bound(self.degraded).min(self.us(self.restart)) {
            1
        } else if at_us < self.us(self.restart) {
            2
        } else if at_us < bound(self.normal) {
            3
        } else {
            4
        }
    }
}

fn print_phases(m: &Milestones, samples: &[Sample]) {
    let mut per: Vec<Vec<&Sample>> = vec![Vec::new(); PHASES.len()];
    for s in samples {
        per[m.phase(s.at_us)].push(s);
    }
    println!(
        "{:<26} {:>8} {:>9} {:>8} {:>8} {:>9}  answers by (status, mode)",
        "phase", "answers", "secs", "p50 ms", "p99 ms", "max ms"
    );
    for (i, list) in per.iter().enumerate() {
        let mut lat: Vec<u32> = list.iter().map(|s| s.latency_us).collect();
        lat.sort_unstable();
        let (lo, hi) =
            match (list.iter().map(|s| s.at_us).min(), list.iter().map(|s| s.at_us).max()) {
                (Some(lo), Some(hi)) => (lo, hi),
                _ => (0, 0),
            };
        let mut by: BTreeMap<(u16, AnswerMode), usize> = BTreeMap::new();
        for s in list {
            *by.entry((s.status, s.mode)).or_default() += 1;
        }
        let by_text: Vec<String> =
            by.iter().map(|((st, mode), n)| format!("{st}/{}={n}", mode.name())).collect();
        println!(
            "{:<26} {:>8} {:>9.3} {:>8.2} {:>8.2} {:>9.2}  {}",
            PHASES[i],
            list.len(),
            (hi - lo) as f64 / 1e6,
            percentile_us(&lat, 50.0),
            percentile_us(&lat, 99.0),
            lat.last().map_or(f64::NAN, |&l| f64::from(l) / 1000.0),
            by_text.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_replay_line() {
        let l = "[2025-01-01T00:00:00Z INFO  sessiond_actors::coordinator] replayed 10000 journaled writes into Redis in 412 ms";
        assert_eq!(parse_replay(l), Some((10000, 412)));
    }

    #[test]
    fn reads_the_mode() {
        assert_eq!(
            AnswerMode::of(r#"{"valid":true,"mode":"degraded","session":null}"#),
            AnswerMode::Degraded
        );
        assert_eq!(AnswerMode::of(r#"{"error":{"code":"session_not_found"}}"#), AnswerMode::Absent);
        assert_eq!(json_str(r#"{"error":{"code":"internal"}}"#, "code"), Some("internal"));
    }
}
