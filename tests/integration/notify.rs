//! Contract section 7 (systemd): the daemon speaks the `sd_notify` protocol to the datagram
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace): `READY=1`
//! with a `STATUS=` line once ready, `WATCHDOG=1` every half `WATCHDOG_USEC` while its actors
//! answer (and only when `WATCHDOG_PID` is unset or names it), `STATUS=` on mode changes in
//! Redis mode, and `STOPPING=1` on SIGTERM before it closes WebSockets with 1001 and exits 0.
//! Each test binds its own `UnixDatagram` as the notify socket and reads it with deadlines.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{BIN, Config, Daemon, DaemonBuilder, Resp, poll_until, send_signal};
use crate::redis_server::{RedisServer, steady_redis_config, unique_prefix};
use crate::ws_client::{FRAME_TIMEOUT, Incoming, V1, WsRequest, session_token};

/// How long the first datagram (`READY=1`) may take after the listening line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// `WATCHDOG_USEC` of the watchdog tests: a ping is due every 200 ms.
const WATCHDOG_USEC: &str = "400000";

/// A notify socket the test listens on, as systemd would.
struct NotifySocket {
    sock: UnixDatagram,
    /// The value of `NOTIFY_SOCKET` for the daemon.
    env: String,
    _dir: Option<TempDir>,
}

impl NotifySocket {
    /// A socket file in a temp dir.
    fn bind_path() -> NotifySocket {
        let dir = tempfile::Builder::new().prefix("sessiond-it-notify-").tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        NotifySocket { sock, env: path.display().to_string(), _dir: Some(dir) }
    }

    /// A socket in the abstract namespace (Linux), under a name unique to this test.
    #[cfg(target_os = "linux")]
    fn bind_abstract() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{SystemTime, UNIX_EPOCH};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let name = format!(
            "sessiond-it-notify-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr)
            .unwrap_or_else(|e| panic!("cannot bind the abstract socket @{name}: {e}"));
        NotifySocket { sock, env: format!("@{name}"), _dir: None }
    }

    /// The next datagram, if one arrives within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        // A zero read timeout is refused by the OS: wait at least a millisecond.
        self.sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                Some(String::from_utf8(buf[..n].to_vec()).unwrap_or_else(|e| {
                    panic!("a notify datagram is not UTF-8: {:?}", e.as_bytes())
                }))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }

    /// Datagrams until one satisfies `pred` (returned with those before it), or `Err` with
    /// everything seen when `limit` passes first.
    fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(String, Vec<String>), Vec<String>> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(seen);
            }
            match self.recv(left) {
                Some(m) if pred(&m) => return Ok((m, seen)),
                Some(m) => seen.push(m),
                None => return Err(seen),
            }
        }
    }

    /// Every datagram that arrives within `duration` from now, with its arrival time
    /// (counted from now).
    fn collect_for(&self, duration: Duration) -> Vec<(Duration, String)> {
        let start = Instant::now();
        let deadline = start + duration;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            if let Some(m) = self.recv(left) {
                out.push((start.elapsed(), m));
            }
        }
    }

    /// Everything already queued on the socket (nothing is waited for).
    fn drain(&self) -> Vec<String> {
        self.sock.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
        self.sock.set_nonblocking(false).unwrap();
        out
    }

    /// The first datagram, which must come within `READY_TIMEOUT` and be the `READY=1` one
    /// with a `STATUS=serving…` line; returns it.
    #[track_caller]
    fn expect_ready(&self) -> String {
        let first = self.recv(READY_TIMEOUT).unwrap_or_else(|| {
            panic!("no notify datagram within {READY_TIMEOUT:?} of the listening line")
        });
        assert!(has_line(&first, "READY=1"), "the first datagram is not READY=1: {first:?}");
        let status = status_of(&first)
            .unwrap_or_else(|| panic!("the READY datagram has no STATUS= line: {first:?}"));
        assert!(status.starts_with("serving"), "READY with STATUS={status:?}: {first:?}");
        first
    }
}

/// The datagram has exactly this line (`KEY=VALUE`).
fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// The value of the datagram's `STATUS=` line.
fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

fn is_watchdog(msg: &str) -> bool {
    has_line(msg, "WATCHDOG=1")
}

/// A daemon on this config with `NOTIFY_SOCKET` pointing at `sock`. `WATCHDOG_USEC` is set
/// empty (the daemon ignores it) so that a test runner's own systemd watchdog does not leak
/// into tests that expect no pings; the watchdog tests set it again (the last value wins).
fn notified(config: Config, sock: &NotifySocket) -> DaemonBuilder {
    Daemon::builder(config).env("NOTIFY_SOCKET", &sock.env).env("WATCHDOG_USEC", "")
}

/// `GET /livez` (a transport error fails the test).
fn livez(d: &Daemon) -> Resp {
    d.get("/livez").send()
}

/// `/livez` says the fallback store is stalled.
fn livez_reports_wedged_store(r: &Resp) -> bool {
    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    r.status == 503
        && v["status"] == json!("wedged")
        && v["stalled"].as_array().is_some_and(|a| a.contains(&json!("fallback_store")))
}

#[test]
fn notify_ready_with_status_on_a_path_socket() {
    let sock = NotifySocket::bind_path();
    let d = notified(Config::default(), &sock).start();
    let ready = sock.expect_ready();
    eprintln!("READY datagram: {ready:?}");
    // The daemon really is ready when it says so.
    d.get("/readyz").send().expect_status(200);
    // READY is said once; without a watchdog nothing else is sent while idle.
    let more = sock.collect_for(Duration::from_millis(500));
    assert!(more.is_empty(), "datagrams after READY with no watchdog: {more:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn notify_ready_on_an_abstract_socket() {
    let sock = NotifySocket::bind_abstract();
    let _d = notified(Config::default(), &sock).start();
    sock.expect_ready();
}

/// After READY: over 2 s, only `WATCHDOG=1` datagrams, about one per half `WATCHDOG_USEC`
/// (200 ms), never 1 s apart.
#[track_caller]
fn assert_pings_every_half_period(sock: &NotifySocket) {
    let window = Duration::from_secs(2);
    let got = sock.collect_for(window);
    let others: Vec<&String> = got.iter().map(|(_, m)| m).filter(|m| !is_watchdog(m)).collect();
    assert!(others.is_empty(), "datagrams other than WATCHDOG=1 while idle: {others:?}");
    let times: Vec<Duration> = got.iter().map(|(t, _)| *t).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("{} pings in {window:?} at {times:?}", times.len());
    // One due every 200 ms: about 10 in 2 s; loose bounds for a loaded machine.
    assert!(
        (5..=15).contains(&times.len()),
        "{} WATCHDOG=1 pings in {window:?} with WATCHDOG_USEC={WATCHDOG_USEC} (expected ~10), \
         at {times:?}",
        times.len()
    );
    // The typical gap is half the period (a daemon pinging once per full period would race
    // systemd's timeout): the median is robust to a few late pings on a loaded machine.
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        (Duration::from_millis(120)..=Duration::from_millis(320)).contains(&median),
        "median gap {median:?} between pings, expected ~200 ms: {gaps:?}"
    );
    let worst = gaps.iter().max().copied().unwrap_or_default();
    assert!(worst <= Duration::from_secs(1), "a gap of {worst:?} between pings: {gaps:?}");
}

#[test]
fn notify_watchdog_pings_every_half_period() {
    let sock = NotifySocket::bind_path();
    let _d = notified(Config::default(), &sock).env("WATCHDOG_USEC", WATCHDOG_USEC).start();
    // READY comes before any ping (the watchdog starts after it).
    sock.expect_ready();
    assert_pings_every_half_period(&sock);
}

/// A process killed (and reaped) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn notify_watchdog_pings_when_watchdog_pid_names_the_daemon() {
    // The harness cannot know the pid before the spawn: a shell exports its own pid and
    // `exec`s the daemon, which keeps that pid (as systemd sets it for the main process).
    let dir = tempfile::Builder::new().prefix("sessiond-it-").tempdir().unwrap();
    let config = dir.path().join("sessiond.toml");
    fs::write(&config, Config::default().render(dir.path())).unwrap();
    let stderr = File::create(dir.path().join("sessiond.stderr.log")).unwrap();
    let sock = NotifySocket::bind_path();
    let mut cmd = Command::new("sh");
    for (k, _) in std::env::vars() {
        if k.starts_with("SESSIOND_") || k.starts_with("WATCHDOG_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("-c")
        .arg(r#"export WATCHDOG_PID=$$; exec "$0" serve --config "$1""#)
        .arg(BIN)
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock.env)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = KillOnDrop(cmd.spawn().unwrap());
    let log = || fs::read_to_string(dir.path().join("sessiond.stderr.log")).unwrap_or_default();
    let ready = sock.recv(Duration::from_secs(30));
    let ready = ready.unwrap_or_else(|| panic!("no READY within 30 s; stderr:\n{}", log()));
    assert!(has_line(&ready, "READY=1"), "first datagram {ready:?}; stderr:\n{}", log());
    let exe = fs::read_link(format!("/proc/{}/exe", child.0.id())).unwrap();
    assert!(exe.ends_with("sessiond"), "the shell did not exec the daemon: {}", exe.display());
    assert_pings_every_half_period(&sock);
}

#[test]
fn notify_no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let sock = NotifySocket::bind_path();
    let d = notified(Config::default(), &sock)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("WATCHDOG_PID", "1")
        .start();
    assert_ne!(d.pid(), 1);
    sock.expect_ready();
    let got = sock.collect_for(Duration::from_millis(1500));
    assert!(
        !got.iter().any(|(_, m)| is_watchdog(m)),
        "WATCHDOG=1 sent although WATCHDOG_PID=1 is not the daemon: {got:?}"
    );
}

#[test]
fn notify_watchdog_stops_while_an_actor_is_wedged() {
    let sock = NotifySocket::bind_path();
    let mut d = notified(Config::default(), &sock)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("SESSIOND_TEST_HOOKS", "1")
        .start();
    sock.expect_ready();
    // Healthy: pings flow and /livez answers 200.
    for n in 1..=2 {
        if let Err(seen) = sock.wait_for(Duration::from_secs(5), is_watchdog) {
            panic!("WATCHDOG=1 number {n} did not come within 5 s; got {seen:?}");
        }
    }
    let r = livez(&d).expect_status(200);
    assert_eq!(r.json()["status"], json!("alive"), "{}", r.body);

    send_signal(d.pid(), libc::SIGUSR2);
    let mut last = None;
    let wedged = poll_until(Duration::from_secs(15), || {
        let r = livez(&d);
        let hit = livez_reports_wedged_store(&r).then_some(());
        last = Some(r);
        hit
    });
    let last = last.unwrap();
    assert!(
        wedged.is_some(),
        "/livez never reported the wedged fallback store; last answer {} {}",
        last.status,
        last.body
    );

    // The wedge is established: at most one ping may have been in flight when it began.
    let before = sock.drain();
    eprintln!("drained after the wedge was observed: {before:?}");
    let after = sock.collect_for(Duration::from_secs(2));
    let pings: Vec<&String> = after.iter().map(|(_, m)| m).filter(|m| is_watchdog(m)).collect();
    assert!(pings.is_empty(), "WATCHDOG=1 sent while the fallback store is wedged: {after:?}");
    // Still wedged at the end (the silence was not a lull between pings).
    let r = livez(&d);
    assert!(livez_reports_wedged_store(&r), "/livez at the end: {} {}", r.status, r.body);
    let log = d.stderr();
    assert!(
        log.contains("watchdog: not pinging systemd"),
        "no log line about the withheld pings; stderr:\n{log}"
    );
    d.kill9();
}

#[test]
fn notify_stopping_on_sigterm_then_1001_and_exit_0() {
    let sock = NotifySocket::bind_path();
    let mut d = notified(Config::default(), &sock).start();
    sock.expect_ready();
    let token = session_token(&d, "u-1", "notify-stop");
    let mut ws = WsRequest::new(&d).bearer_protocol(&token, V1).connect();
    ws.expect_welcome();

    send_signal(d.pid(), libc::SIGTERM);
    let (messages, end) = ws.until_close(FRAME_TIMEOUT);
    assert!(
        matches!(end, Incoming::Close(Some(1001), _)),
        "expected close 1001 on SIGTERM, got {end:?} after {messages:?}"
    );
    // STOPPING=1 is sent before the sockets are closed: it is queued by now.
    let queued = sock.drain();
    let stopping = queued.iter().find(|m| has_line(m, "STOPPING=1")).unwrap_or_else(|| {
        panic!("no STOPPING=1 datagram queued when the 1001 close arrived: {queued:?}")
    });
    let status = status_of(stopping)
        .unwrap_or_else(|| panic!("the STOPPING datagram has no STATUS= line: {stopping:?}"));
    assert!(status.starts_with("stopping"), "STOPPING with STATUS={status:?}");

    let started = Instant::now();
    let exit = d.wait_exit();
    assert!(exit.success(), "exit after SIGTERM: {exit}\n{}", d.stderr());
    assert!(started.elapsed() < Duration::from_secs(15), "exit took {:?}", started.elapsed());
    let rest = sock.drain();
    assert!(!rest.iter().any(|m| has_line(m, "READY=1")), "READY=1 again while stopping: {rest:?}");
}

#[test]
fn notify_sigterm_without_websockets_sends_stopping_and_exits_0() {
    let sock = NotifySocket::bind_path();
    let mut d = notified(Config::default(), &sock).start();
    sock.expect_ready();
    let started = Instant::now();
    send_signal(d.pid(), libc::SIGTERM);
    if let Err(seen) = sock.wait_for(Duration::from_secs(10), |m| has_line(m, "STOPPING=1")) {
        panic!("no STOPPING=1 within 10 s of SIGTERM; got {seen:?}");
    }
    let exit = d.wait_exit();
    assert!(exit.success(), "exit after SIGTERM: {exit}\n{}", d.stderr());
    assert!(started.elapsed() < Duration::from_secs(15), "exit took {:?}", started.elapsed());
}

#[test]
fn notify_status_follows_redis_outage_and_recovery() {
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("notify");
    let sock = NotifySocket::bind_path();
    let _d = notified(steady_redis_config(&redis, &prefix), &sock).start();
    let ready = sock.expect_ready();
    assert!(
        status_of(&ready).is_some_and(|s| s.contains("Redis")),
        "READY in Redis mode should say so: {ready:?}"
    );

    let limit = Duration::from_secs(20);
    redis.kill9();
    let started = Instant::now();
    let degraded = |m: &str| status_of(m).is_some_and(|s| s.starts_with("degraded"));
    match sock.wait_for(limit, degraded) {
        Ok((m, _)) => eprintln!("{m:?} {:?} after the kill", started.elapsed()),
        Err(seen) => panic!("no STATUS=degraded within {limit:?} of the Redis kill: {seen:?}"),
    }

    redis.restart();
    let started = Instant::now();
    let serving = |m: &str| status_of(m).is_some_and(|s| s.starts_with("serving"));
    match sock.wait_for(limit, serving) {
        Ok((m, seen)) => {
            eprintln!("{m:?} {:?} after the restart", started.elapsed());
            assert!(!seen.iter().any(|m| has_line(m, "READY=1")), "READY=1 again: {seen:?}");
        }
        Err(seen) => panic!("no STATUS=serving within {limit:?} of the Redis restart: {seen:?}"),
    }
}
