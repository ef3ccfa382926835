//! Process plumbing shared by the benches that drive a real `sessiond` (and `redis-server`):
//! scratch directories, timestamped daemon logs, starting and stopping the daemon and Redis,
//! free ports, signals, percentiles.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(30);
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERMed daemon may take to exit before it is SIGKILLed.
const EXIT_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Small helpers

/// A numeric field (`Field:  123 kB`) of `/proc/<pid>/status`.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process has used, in ms (USER_HZ = 100 on Linux: 10 ms steps).
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

/// A fresh directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "sessiond-bench-{tag}-{}-{}",
        std::process::id(),
        sessiond_actors::domain::now_millis()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A scratch directory, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wall-clock nanoseconds since the Unix epoch: comparable across our processes.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is a child
    // we spawned and have not reaped yet, so it cannot name another process.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("kill({pid}, {signal}): {}", std::io::Error::last_os_error()))
    }
}

/// Waits for a child to exit, up to `timeout`: `Ok(None)` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `p`th percentile of sorted microsecond values, in ms: the value at the rounded
/// fractional index `(len - 1) * p / 100`, or NaN.
pub fn percentile_us(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// The `p`th percentile (nearest rank) of sorted nanosecond values, in ms, or NaN.
pub fn percentile_ns(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// Daemon logs

/// When a log line was read: [`Instant`] (one process) or `u64`, wall-clock ns since the Unix
/// epoch (comparable with the timestamps of other processes, see [`now_ns`]).
pub trait Stamp: Copy + PartialOrd + Send + 'static {
    fn now() -> Self;
}

impl Stamp for Instant {
    fn now() -> Self {
        Instant::now()
    }
}

impl Stamp for u64 {
    fn now() -> Self {
        now_ns()
    }
}

/// Stderr lines of a daemon, each stamped with the time it was read.
pub struct LogLines<T> {
    lines: Mutex<Vec<(T, String)>>,
    changed: Condvar,
}

impl<T> Default for LogLines<T> {
    fn default() -> Self {
        LogLines { lines: Mutex::new(Vec::new()), changed: Condvar::new() }
    }
}

impl<T: Stamp> LogLines<T> {
    pub fn push(&self, line: String) {
        let at = T::now();
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).push((at, line));
        self.changed.notify_all();
    }

    /// The first line read at or after `since` that contains `needle`, waiting up to `timeout`.
    pub fn wait_for(&self, needle: &str, since: T, timeout: Duration) -> Option<(T, String)> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut from = 0;
        loop {
            if let Some(hit) =
                lines[from..].iter().find(|(at, l)| *at >= since && l.contains(needle))
            {
                return Some(hit.clone());
            }
            from = lines.len();
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Every line read at or after `since` that contains `needle`.
    pub fn all(&self, needle: &str, since: T) -> Vec<(T, String)> {
        self.all_matching(&[needle], since)
    }

    /// Every line read at or after `since` that contains one of `needles`, in order.
    pub fn all_matching(&self, needles: &[&str], since: T) -> Vec<(T, String)> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .filter(|(at, l)| *at >= since && needles.iter().any(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    /// Lines at warn or error level read at or after `since`.
    pub fn problems(&self, since: T) -> Vec<(T, String)> {
        self.all_matching(&[" WARN ", " ERROR "], since)
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let start = lines.len().saturating_sub(n);
        lines[start..].iter().map(|(_, l)| format!("  {l}\n")).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// How [`Daemon`] reports on drop: only failures (`sessiond-bench: stopping NAME: …`), or
/// every outcome as [`Daemon::stop_note`] words it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DropReport {
    Failures,
    Notes,
}

/// How a SIGTERMed daemon ended.
enum Stopped {
    AlreadyExited(ExitStatus),
    Exited(ExitStatus),
    Killed,
}

/// A `sessiond` we started; stopped (SIGTERM, then SIGKILL after 15 s) on drop.
pub struct Daemon<T> {
    pub name: &'static str,
    child: Option<Child>,
    pub pid: u32,
    pub addr: String,
    pub log: Arc<LogLines<T>>,
    pub drop_report: DropReport,
}

impl<T: Stamp> Daemon<T> {
    /// Runs `binary serve --config CONFIG` with `RUST_LOG=rust_log` and waits for its
    /// ` listening on http://` line on stdout; stderr goes to [`Daemon::log`].
    pub fn start(
        name: &'static str,
        binary: &Path,
        config: &Path,
        rust_log: &str,
        drop_report: DropReport,
    ) -> Result<Daemon<T>, String> {
        let mut child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let log = Arc::new(LogLines::default());
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let pid = child.id();
        let mut daemon =
            Daemon { name, child: Some(child), pid, addr: String::new(), log, drop_report };
        let sink = Arc::clone(&daemon.log);
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink.push(String::from_utf8_lossy(&buf).trim_end().to_owned()),
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // Reads to the end so the daemon never blocks on a full pipe.
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                if let Some(addr) = line.trim_end().split(" listening on http://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
                line.clear();
            }
        });
        match rx.recv_timeout(DAEMON_READY_TIMEOUT) {
            Ok(addr) => {
                daemon.addr = addr;
                Ok(daemon)
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                Err(format!(
                    "{name} did not print its listening line within {DAEMON_READY_TIMEOUT:?}; \
                     stderr:\n{}",
                    daemon.log.tail(30)
                ))
            }
        }
    }
}

impl<T> Daemon<T> {
    /// SIGTERM, then waits for the exit (SIGKILL after 15 s). `None` if already stopped.
    fn terminate(&mut self) -> Option<Result<Stopped, String>> {
        let mut child = self.child.take()?;
        Some((|| {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(Stopped::AlreadyExited(status));
            }
            send_signal(child.id(), libc::SIGTERM)?;
            match wait_timeout(&mut child, EXIT_WAIT)? {
                Some(status) => Ok(Stopped::Exited(status)),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Ok(Stopped::Killed)
                }
            }
        })())
    }

    /// Stops it: its exit status after SIGTERM, or what went wrong.
    pub fn stop(&mut self) -> Result<ExitStatus, String> {
        let name = self.name;
        match self.terminate() {
            None => Err(format!("{name} already stopped")),
            Some(Ok(Stopped::Exited(status))) => Ok(status),
            Some(Ok(Stopped::AlreadyExited(status))) => {
                Err(format!("{name} had exited already: {status}"))
            }
            Some(Ok(Stopped::Killed)) => {
                Err(format!("{name} did not exit within {EXIT_WAIT:?} of SIGTERM"))
            }
            Some(Err(e)) => Err(e),
        }
    }

    /// Stops it and words the outcome (`None` if it was stopped already).
    pub fn stop_note(&mut self) -> Option<String> {
        let name = self.name;
        Some(match self.terminate()? {
            Ok(Stopped::AlreadyExited(status)) => format!("{name} had exited already: {status}"),
            Ok(Stopped::Exited(status)) => format!("{name} exit after SIGTERM: {status}"),
            Ok(Stopped::Killed) => format!("{name} did not exit within 15 s of SIGTERM: killed"),
            Err(e) => format!("{name} stop: {e}"),
        })
    }
}

impl<T> Drop for Daemon<T> {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        match self.drop_report {
            DropReport::Failures => {
                if let Err(e) = self.stop() {
                    eprintln!("sessiond-bench: stopping {}: {e}", self.name);
                }
            }
            DropReport::Notes => {
                if let Some(note) = self.stop_note() {
                    eprintln!("{note}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

pub fn redis_ping(port: u16) -> bool {
    let Ok(addr) = format!("127.0.0.1:{port}").parse() else { return false };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A `redis-server` on a free loopback port, keeping nothing on disk (its log goes to
/// `DIR/redis-server.log`); killed on drop.
pub struct Redis {
    binary: String,
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl Redis {
    /// Picks a free port; starts nothing yet (see [`Redis::spawn`]).
    pub fn new(binary: &str, dir: &Path) -> Result<Redis, String> {
        Ok(Redis { binary: binary.to_owned(), child: None, port: free_port()?, dir: dir.into() })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis-server.log")
    }

    /// Starts it (again, on the same port) and waits for PING to answer.
    pub fn spawn(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("redis-server is already running".into());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("{}: {e}", self.log_path().display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.binary)
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary))?;
        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(format!("redis-server on port {} exited: {status}\n{log}", self.port));
            }
            if redis_ping(self.port) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {REDIS_READY_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`; answers the time just before the signal was sent.
    pub fn kill9<T: Stamp>(&mut self) -> Result<T, String> {
        let mut child = self.child.take().ok_or("redis-server is not running")?;
        let at = T::now();
        let sent = send_signal(child.id(), libc::SIGKILL);
        let _ = child.wait();
        sent.map(|()| at)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
