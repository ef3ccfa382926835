//! `sessiond-bench`: the load and measurement tool of sessiond, as redis-benchmark is Redis's.
//!
//! Modes (see `--help` and docs/benchmarks.md):
//! - `baseline`: a trivial actix-web JSON echo server, the yardstick wrk compares against.
//! - `prepare`: mints tokens, creates their sessions on a running daemon, writes a wrk script.
//! - `store`: acknowledged writes/s through the FallbackStore actor, per fsync mode.
//! - `restart`: builds a data dir holding N sessions, starts the daemon on it, reports the
//!   time to ready and the resident memory.
//! - `outage`: under a validation load on a daemon in Redis mode, `kill -9` its Redis, journal
//!   writes, restart Redis; reports time to degraded, 5xx/401 answers, replay time.
//! - `ws-connect`, `ws-revoke`, `ws-fanout`, `ws`: the WebSocket gateway with N connections
//!   held by worker processes (`ws-worker`, hidden): connect+authenticate rate and RSS per
//!   connection, revocation latency, `service.*` fan-out time (see bench_ws.rs).
//! - `soak`: an hour of mixed load (validate, create, revoke, refresh, revoke-all, WebSocket
//!   churn) on a daemon in Redis mode, sampling RSS, open files and latency into a CSV, with a
//!   drift analysis at the end (see bench_soak.rs).

mod bench_outage;
mod bench_restart;
mod bench_soak;
mod bench_store;
mod bench_ws;
mod http_client;
mod keepalive;
mod procs;
mod ws_open;

use std::io::Write as _;
use std::path::PathBuf;

use actix_web::{App, HttpResponse, HttpServer, web};
use clap::{Parser, Subcommand};
use sessiond_actors::token::{Algorithm, sign_hmac};

#[derive(Parser)]
#[command(name = "sessiond-bench", version, about = "Load and measurement tool for sessiond")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve a trivial JSON echo route (POST /echo and POST /api/v1/sessions/validate) to
    /// measure what actix-web itself does on this machine.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// HTTP workers (0: one per core), as `server.workers`.
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// Mint N tokens, create their sessions on a running daemon, write tokens.txt and a wrk
    /// script (validate.lua) that validates them round-robin.
    Prepare {
        /// The daemon's base URL (http only).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// File holding the HMAC secret the daemon verifies with (e.g. data/dev-hmac-secret).
        #[arg(long)]
        secret_file: PathBuf,
        /// File holding an API key of the daemon (e.g. data/dev-api-key).
        #[arg(long)]
        api_key_file: PathBuf,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Where to write tokens.txt and validate.lua.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
    },
    /// Acknowledged session writes/s through the FallbackStore actor.
    Store {
        /// always | interval | never
        #[arg(long, default_value = "interval")]
        fsync: String,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Total writes.
        #[arg(long, default_value_t = 200_000)]
        writes: usize,
        /// Data directory (a fresh temporary one when not given).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a data dir holding N live sessions, start `sessiond` on it, report time to ready
    /// and RSS.
    Restart {
        #[arg(long, default_value_t = 1_000_000)]
        sessions: usize,
        /// The sessiond binary (default: next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Data directory (a fresh temporary one when not given).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Start a redis-server and sessiond in Redis mode, validate under load, `kill -9` Redis,
    /// journal writes while it is down, restart it empty; report time to degraded, 5xx/401
    /// answers during the outage, replay time, and what a fresh instance sees.
    Outage {
        /// Sessions created before the load and validated round-robin.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Load threads, one keep-alive connection each.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Duration of the load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds of load before Redis is killed.
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// Session creates made while Redis is down (journaled, replayed on recovery).
        #[arg(long, default_value_t = 10_000)]
        journal_writes: usize,
        /// Threads making those writes.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Outage writes checked on a fresh instance after recovery.
        #[arg(long, default_value_t = 100)]
        verify: usize,
        /// The sessiond binary (default: next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The redis-server binary.
        #[arg(long, default_value = "redis-server")]
        redis_server: String,
    },
    /// Start sessiond, create N sessions over ≥ N/100 users, open N authenticated WebSockets
    /// from worker processes; report connect+authenticate rate and daemon RSS per connection.
    WsConnect(bench_ws::WsArgs),
    /// ws-connect, then revoke sessions one at a time through the API; report the time from
    /// each DELETE's start to its socket receiving `session.revoked` (p50/p99/max).
    WsRevoke(bench_ws::WsArgs),
    /// Redis mode with its own redis-server: connect N WebSockets, `kill -9` Redis and time
    /// `service.degraded` to every socket; restart Redis and time `service.recovered`.
    WsFanout(bench_ws::WsArgs),
    /// ws-revoke (embedded store), then ws-fanout (Redis mode).
    Ws(bench_ws::WsArgs),
    /// Start a redis-server and sessiond in Redis mode, run a mixed load (validate, create,
    /// revoke, refresh, revoke-all, WebSocket churn) at a moderate rate, sample RSS, open
    /// files and latency into a CSV; report the drift (slope over the second half).
    Soak(bench_soak::SoakArgs),
    /// One load-client process of the ws modes (started by them).
    #[command(hide = true)]
    WsWorker(bench_ws::WorkerArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match Cli::parse().mode {
        Mode::Baseline { listen, workers } => baseline(&listen, workers),
        Mode::Prepare { url, secret_file, api_key_file, sessions, out } => {
            prepare(&url, &secret_file, &api_key_file, sessions, &out)
        }
        Mode::Store { fsync, writers, writes, dir } => {
            bench_store::run(&fsync, writers, writes, dir)
        }
        Mode::Restart { sessions, binary, dir } => bench_restart::run(sessions, binary, dir),
        Mode::Outage {
            sessions,
            clients,
            seconds,
            warmup,
            journal_writes,
            writers,
            verify,
            binary,
            redis_server,
        } => bench_outage::run(bench_outage::Options {
            sessions,
            clients,
            seconds,
            warmup,
            journal_writes,
            writers,
            verify,
            binary,
            redis_server,
        }),
        Mode::WsConnect(a) => bench_ws::run(bench_ws::Phases::Connect, &a),
        Mode::WsRevoke(a) => bench_ws::run(bench_ws::Phases::Revoke, &a),
        Mode::WsFanout(a) => bench_ws::run(bench_ws::Phases::Fanout, &a),
        Mode::Ws(a) => bench_ws::run(bench_ws::Phases::All, &a),
        Mode::WsWorker(a) => bench_ws::worker(&a),
        Mode::Soak(a) => bench_soak::run(&a),
    };
    if let Err(e) = result {
        eprintln!("sessiond-bench: {e}");
        std::process::exit(1);
    }
}

async fn echo(body: web::Json<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok().json(body.into_inner())
}

fn baseline(listen: &str, workers: usize) -> Result<(), String> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    actix_rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .route("/echo", web::post().to(echo))
                .route("/api/v1/sessions/validate", web::post().to(echo))
        })
        .workers(workers)
        .bind(listen)
        .map_err(|e| format!("bind {listen}: {e}"))?;
        for a in server.addrs() {
            println!("baseline listening on http://{a}");
        }
        server.run().await.map_err(|e| e.to_string())
    })
}

fn read_trimmed(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{}: {e}", path.display()))
}

const WRK_SCRIPT: &str = r#"-- Generated by sessiond-bench prepare: validates the prepared tokens round-robin.
local tokens = {}
for line in io.lines("TOKENS_PATH") do tokens[#tokens + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, nil, '{"token":"' .. tokens[i] .. '"}')
end
done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d duration_s=%.2f rps=%.0f p50_us=%d p90_us=%d p99_us=%d p999_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"#;

fn prepare(
    url: &str,
    secret_file: &PathBuf,
    api_key_file: &PathBuf,
    sessions: usize,
    out: &PathBuf,
) -> Result<(), String> {
    let secret = read_trimmed(secret_file)?;
    let api_key = read_trimmed(api_key_file)?;
    let target = http_client::Target::parse(url)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let now = sessiond_actors::domain::now_seconds();
    let mut tokens = Vec::with_capacity(sessions);
    let run = now.to_string();
    for i in 0..sessions {
        let claims = serde_json::json!({
            "sub": format!("bench-user-{}", i % 100), "email": format!("user{}@example.com", i % 100),
            "role": "user", "sid": format!("bench-{run}-{i}"), "iat": now, "exp": now + 7200,
        });
        let token = sign_hmac(secret.as_bytes(), Algorithm::HS256, &claims)?;
        let body = serde_json::json!({ "token": token }).to_string();
        let status = target.post("/api/v1/sessions", &[("X-Api-Key", &api_key)], &body)?;
        if status != 201 && status != 200 {
            return Err(format!("creating session {i}: HTTP {status}"));
        }
        tokens.push(token);
    }
    let tokens_path = out.join("tokens.txt");
    let mut f = std::fs::File::create(&tokens_path).map_err(|e| e.to_string())?;
    for t in &tokens {
        writeln!(f, "{t}").map_err(|e| e.to_string())?;
    }
    let abs = std::fs::canonicalize(&tokens_path).map_err(|e| e.to_string())?;
    let script = WRK_SCRIPT.replace("TOKENS_PATH", &abs.display().to_string());
    std::fs::write(out.join("validate.lua"), script).map_err(|e| e.to_string())?;
    println!("prepared {sessions} sessions; wrk script: {}", out.join("validate.lua").display());
    Ok(())
}
