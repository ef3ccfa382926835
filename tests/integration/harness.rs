//! Spawning the real `sessiond` binary: a config file per test in its own temp dir, readiness
//! from the one `listening on` line on stdout, stderr captured to a file (printed when a test
//! fails, and searched by the log tests), and an HTTP client whose 4xx/5xx are answers.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sessiond");
/// The version `--version` and the listening line must show.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The HMAC secret of the default test config (≥ 32 bytes).
pub const SECRET: &str = "itest-hmac-secret-3f9a1c7e5b2d4068-abcdefghijklmnop";
/// The API key of the default test config.
pub const API_KEY: &str = "itest-api-key-7c41e9a2d0b35f86";
/// How long a daemon gets to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to exit after SIGTERM, and a CLI command to finish.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of the HTTP client (a hung daemon fails the test, it does not hang it).
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a file under `tests/` (fixtures and vectors; read-only).
pub fn test_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(rel)
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    // A JSON string is a valid TOML basic string (same escapes).
    serde_json::to_string(s).unwrap()
}

/// A TOML array of strings.
pub fn toml_list(items: &[&str]) -> String {
    let inner: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// One `public_keys` entry: `{kid = …, alg = …, pem_file = …}` (kid optional).
pub fn public_key(kid: Option<&str>, alg: &str, pem: &Path) -> String {
    let pem = toml_str(&pem.display().to_string());
    match kid {
        Some(kid) => {
            format!("{{kid = {}, alg = {}, pem_file = {pem}}}", toml_str(kid), toml_str(alg))
        }
        None => format!("{{alg = {}, pem_file = {pem}}}", toml_str(alg)),
    }
}

/// A daemon configuration, rendered to TOML when the daemon starts. Values are raw TOML;
/// the text `{dir}` in a value is replaced by the test's temp dir.
#[derive(Clone, Debug)]
pub struct Config {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl Default for Config {
    fn default() -> Self {
        Config { sections: Vec::new() }
            .set("server.listen", &toml_str("127.0.0.1:0"))
            .set("server.workers", "2")
            .set("tokens.algorithms", &toml_list(&["HS256"]))
            .set("tokens.hmac_secret", &toml_str(SECRET))
            .set("fallback.data_dir", &toml_str("{dir}/data"))
            .set("api.keys", &toml_list(&[API_KEY]))
    }
}

impl Config {
    /// Sets `section.key` to a raw TOML value.
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        let (section, name) = key.split_once('.').expect("key is section.name");
        let value = toml_value.to_string();
        match self.sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, entries)) => match entries.iter_mut().find(|(k, _)| k == name) {
                Some(entry) => entry.1 = value,
                None => entries.push((name.to_string(), value)),
            },
            None => self.sections.push((section.to_string(), vec![(name.to_string(), value)])),
        }
        self
    }

    /// Sets `section.key` to a TOML string.
    pub fn set_str(self, key: &str, value: &str) -> Self {
        self.set(key, &toml_str(value))
    }

    /// Removes `section.key` (back to the daemon's default).
    pub fn unset(mut self, key: &str) -> Self {
        let (section, name) = key.split_once('.').expect("key is section.name");
        if let Some((_, entries)) = self.sections.iter_mut().find(|(s, _)| s == section) {
            entries.retain(|(k, _)| k != name);
        }
        self
    }

    /// The TOML text, with `{dir}` replaced.
    pub fn render(&self, dir: &Path) -> String {
        let dir = dir.display().to_string();
        let mut out = String::new();
        for (section, entries) in &self.sections {
            if entries.is_empty() {
                continue;
            }
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in entries {
                out.push_str(&format!("{k} = {}\n", v.replace("{dir}", &dir)));
            }
            out.push('\n');
        }
        out
    }
}

/// Builder for a daemon with extra arguments or environment.
pub struct DaemonBuilder {
    config: Config,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    rust_log: String,
    use_serve: bool,
}

impl DaemonBuilder {
    /// An extra argument after `serve --config FILE` (e.g. `--dev`).
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// An environment variable for the daemon (`{dir}` replaced by the temp dir).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// `RUST_LOG` of the daemon (default `info`).
    pub fn rust_log(mut self, level: &str) -> Self {
        self.rust_log = level.to_string();
        self
    }

    /// Start without the `serve` word (it is the default command).
    pub fn without_serve_word(mut self) -> Self {
        self.use_serve = false;
        self
    }

    /// Starts the daemon; panics (with its stderr) if it does not become ready.
    pub fn start(self) -> Daemon {
        match self.try_start() {
            Ok(d) => d,
            Err(e) => panic!("sessiond did not start: {e}"),
        }
    }

    /// Starts the daemon, or says why it did not.
    pub fn try_start(self) -> Result<Daemon, String> {
        let dir = tempfile::Builder::new().prefix("sessiond-it-").tempdir().unwrap();
        let config_path = dir.path().join("sessiond.toml");
        fs::write(&config_path, self.config.render(dir.path())).unwrap();
        let stderr_path = dir.path().join("sessiond.stderr.log");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .new_agent();
        let dir_str = dir.path().display().to_string();
        let mut d = Daemon {
            child: None,
            config_path,
            stderr_path,
            args: self.args,
            envs: self.envs.into_iter().map(|(k, v)| (k, v.replace("{dir}", &dir_str))).collect(),
            rust_log: self.rust_log,
            use_serve: self.use_serve,
            port: 0,
            stdout: Arc::new(Mutex::new(String::new())),
            agent,
            dir,
        };
        d.spawn()?;
        Ok(d)
    }
}

/// A running `sessiond` (killed on drop; its temp dir removed).
pub struct Daemon {
    child: Option<Child>,
    config_path: PathBuf,
    stderr_path: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    rust_log: String,
    use_serve: bool,
    /// The port it listens on.
    pub port: u16,
    stdout: Arc<Mutex<String>>,
    agent: ureq::Agent,
    dir: TempDir,
}

/// A command for the binary with a clean `SESSIOND_*` environment.
pub fn sessiond_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("SESSIOND_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

impl Daemon {
    /// Starts a daemon with this config.
    pub fn start(config: Config) -> Daemon {
        Daemon::builder(config).start()
    }

    /// A builder, for arguments and environment.
    pub fn builder(config: Config) -> DaemonBuilder {
        DaemonBuilder {
            config,
            args: Vec::new(),
            envs: Vec::new(),
            rust_log: "info".to_string(),
            use_serve: true,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let stderr = OpenOptions::new().create(true).append(true).open(&self.stderr_path).unwrap();
        let mut cmd = sessiond_command();
        if self.use_serve {
            cmd.arg("serve");
        }
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot spawn {BIN}: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let buffer = Arc::clone(&self.stdout);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                buffer.lock().unwrap().push_str(&format!("{line}\n"));
                if tx.is_some() && line.contains(" listening on http://") {
                    let _ = tx.take().unwrap().send(line);
                }
            }
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => {
                let port = line
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    .ok_or_else(|| format!("cannot read the port from {line:?}"))?;
                self.port = port;
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let status = match child.try_wait() {
                    Ok(Some(s)) => format!("exited with {s}"),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        "no listening line in time; killed".to_string()
                    }
                };
                Err(format!(
                    "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                ))
            }
        }
    }

    /// The test's temp dir (config, stderr log, data dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `fallback.data_dir` of the default config.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the daemon wrote on stderr so far (all runs).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the daemon wrote on stdout so far (all runs).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) until stdout contains `needle`; returns stdout.
    pub fn wait_stdout_contains(&self, needle: &str) -> String {
        let out = poll_until(Duration::from_secs(10), || {
            let out = self.stdout();
            out.contains(needle).then_some(out)
        });
        out.unwrap_or_else(|| panic!("stdout never contained {needle:?}:\n{}", self.stdout()))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        send_signal(child.id(), libc::SIGTERM);
        match wait_timeout(&mut child, EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sessiond did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// The pid of the running daemon (for signals and `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Waits (bounded) for the daemon to exit on its own, e.g. after a signal the test sent
    /// with `send_signal(d.pid(), …)`.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        match wait_timeout(&mut child, EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sessiond did not exit within {EXIT_TIMEOUT:?}\n{}", self.stderr());
            }
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts it again on the same config and data dir (it must have been stopped).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        if let Err(e) = self.spawn() {
            panic!("sessiond did not restart: {e}");
        }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A client of this daemon that can move to other threads (it outlives a restart only
    /// if the port stays the same, which it does not: take a new one after a restart).
    pub fn client(&self) -> Client {
        Client { base: self.url(""), agent: self.agent.clone() }
    }

    /// A request to this daemon.
    pub fn req(&self, method: &str, path: &str) -> Req {
        self.client().req(method, path)
    }

    pub fn get(&self, path: &str) -> Req {
        self.req("GET", path)
    }

    pub fn post(&self, path: &str) -> Req {
        self.req("POST", path)
    }

    pub fn delete(&self, path: &str) -> Req {
        self.req("DELETE", path)
    }

    // --- the contract's routes, with the default API key ---

    /// `POST /api/v1/sessions/validate` with `{"token": …}`.
    pub fn validate(&self, token: &str) -> Resp {
        self.post("/api/v1/sessions/validate").json(&json!({ "token": token })).send()
    }

    /// `POST /api/v1/sessions/validate` with `Authorization: Bearer …` and no body.
    pub fn validate_bearer(&self, token: &str) -> Resp {
        self.post("/api/v1/sessions/validate").bearer(token).send()
    }

    /// `GET /api/v1/auth/verify` with `Authorization: Bearer …`.
    pub fn verify_bearer(&self, token: &str) -> Resp {
        self.get("/api/v1/auth/verify").bearer(token).send()
    }

    /// `POST /api/v1/sessions` with `{"token": …}`.
    pub fn create(&self, token: &str) -> Resp {
        self.create_with(json!({ "token": token }))
    }

    /// `POST /api/v1/sessions` with this body.
    pub fn create_with(&self, body: Value) -> Resp {
        self.post("/api/v1/sessions").key().json(&body).send()
    }

    /// Creates the token's session, asserting 201; returns the session object.
    pub fn create_ok(&self, token: &str) -> Value {
        self.create(token).expect_status(201).json()["session"].clone()
    }

    /// `GET /api/v1/sessions/{id}`.
    pub fn get_session(&self, id: &str) -> Resp {
        self.get(&format!("/api/v1/sessions/{id}")).key().send()
    }

    /// `POST /api/v1/sessions/{id}/refresh` with this body.
    pub fn refresh(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/api/v1/sessions/{id}/refresh")).key().json(&body).send()
    }

    /// `DELETE /api/v1/sessions/{id}`.
    pub fn revoke(&self, id: &str) -> Resp {
        self.delete(&format!("/api/v1/sessions/{id}")).key().send()
    }

    /// `GET /api/v1/users/{user}/sessions`.
    pub fn list(&self, user: &str) -> Resp {
        self.get(&format!("/api/v1/users/{user}/sessions")).key().send()
    }

    /// `DELETE /api/v1/users/{user}/sessions`.
    pub fn revoke_all(&self, user: &str) -> Resp {
        self.delete(&format!("/api/v1/users/{user}/sessions")).key().send()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let err = self.stderr();
            let tail = if err.len() > 16_000 { &err[err.len() - 16_000..] } else { &err[..] };
            eprintln!(
                "--- sessiond stderr ({}) ---\n{tail}\n--- end of stderr ---",
                self.stderr_path.display()
            );
        }
    }
}

/// Sends a signal to a process we started.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) with the pid of our own child and a valid signal number; no memory involved.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Polls `try_wait` until the child exits or the deadline passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    poll_until(limit, || child.try_wait().ok().flatten())
}

/// Calls `f` until it returns `Some`, at most for `limit` (short pauses in between: this is
/// for waiting on time passing or a process exiting, never for ordering).
pub fn poll_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The result of a CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs the binary with these arguments and environment to completion (bounded), in `cwd`.
pub fn run_cli(args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> CliOutput {
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let mut cmd = sessiond_command();
    cmd.args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let status = match wait_timeout(&mut child, EXIT_TIMEOUT) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`sessiond {}` did not finish within {EXIT_TIMEOUT:?}; stderr:\n{}",
                args.join(" "),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    CliOutput {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// An HTTP client of one daemon (`Send`, cheap to clone).
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A request to the daemon.
    pub fn req(&self, method: &str, path: &str) -> Req {
        Req {
            base: self.base.clone(),
            agent: self.agent.clone(),
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }
}

/// A request being built.
pub struct Req {
    base: String,
    agent: ureq::Agent,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Req {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `X-Api-Key` with the default test key.
    pub fn key(self) -> Self {
        self.header("X-Api-Key", API_KEY)
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn json(mut self, v: &Value) -> Self {
        self.headers.push(("Content-Type".into(), "application/json".into()));
        self.body = Some(serde_json::to_vec(v).unwrap());
        self
    }

    /// A raw body sent as `application/json` (for malformed JSON).
    pub fn raw_json(mut self, body: &[u8]) -> Self {
        self.headers.push(("Content-Type".into(), "application/json".into()));
        self.body = Some(body.to_vec());
        self
    }

    /// Sends it; a transport error fails the test.
    pub fn send(self) -> Resp {
        match self.try_send() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends it; a transport error (e.g. the daemon was killed) is an `Err`.
    pub fn try_send(self) -> Result<Resp, String> {
        let what = format!("{} {}", self.method, self.path);
        let mut builder = ureq::http::Request::builder()
            .method(self.method.as_str())
            .uri(format!("{}{}", self.base, self.path));
        for (k, v) in &self.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let result = match self.body {
            Some(body) => self.agent.run(builder.body(body).unwrap()),
            None => self.agent.run(builder.body(()).unwrap()),
        };
        let mut response = result.map_err(|e| format!("{what}: transport error: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| format!("{what}: cannot read the body: {e}"))?;
        Ok(Resp { what, status, headers, body })
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `METHOD /path`, for messages.
    pub what: String,
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Resp {
    /// A header as text (first value).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {:?} (status {})",
                self.what, self.body, self.status
            )
        })
    }

    /// `error.code` of an error body, if any.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
    }

    /// Asserts the status; returns self.
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} with body {}",
            self.what, self.status, self.body
        );
        self
    }

    /// Asserts a contract error answer: the status, the code, the body shape, `request_id`
    /// equal to `X-Request-Id`, JSON content type. Returns the body.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        if let Err(e) = self.check_error(status, code) {
            panic!("{e}");
        }
        self.json()
    }

    /// Like `expect_error`, as a `Result` for table-driven tests.
    pub fn check_error(&self, status: u16, code: &str) -> Result<(), String> {
        let got = self.error_code();
        if self.status != status || got.as_deref() != Some(code) {
            return Err(format!(
                "{}: expected {status} {code}, got {} {:?} (body {})",
                self.what, self.status, got, self.body
            ));
        }
        let body = self.json();
        let err = &body["error"];
        if !err["message"].is_string() {
            return Err(format!("{}: error.message is not a string: {}", self.what, self.body));
        }
        let header = self.header("x-request-id");
        if header.is_none() || err["request_id"].as_str() != header.as_deref() {
            return Err(format!(
                "{}: error.request_id {} differs from X-Request-Id {:?}",
                self.what, err["request_id"], header
            ));
        }
        let ctype = self.header("content-type").unwrap_or_default();
        if !ctype.starts_with("application/json") {
            return Err(format!("{}: error content type {ctype:?}", self.what));
        }
        if status == 401 && code.starts_with("token_") && code != "token_missing" {
            let www = self.header("www-authenticate").unwrap_or_default();
            if !(www.starts_with("Bearer") && www.contains("error=\"invalid_token\"")) {
                return Err(format!("{}: 401 {code} with WWW-Authenticate {www:?}", self.what));
            }
        }
        Ok(())
    }
}

/// Sends raw bytes as one HTTP/1.1 request (connection closed by us after) and returns the
/// status code and the whole answer text.
pub fn raw_http(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    // The server may answer (and close) before reading everything: a write error is fine.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer);
                if let Some(end) = text.find("\r\n\r\n") {
                    // Stop once the declared body is complete.
                    let head = &text[..end].to_ascii_lowercase();
                    if let Some(len) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        && answer.len() >= end + 4 + len
                    {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// What a token in a table-driven test must get from `POST /api/v1/sessions/validate`.
pub const OK: &str = "ok";

/// Runs token cases against one daemon and fails with every mismatch at once. `OK` means:
/// creating the token's session (with `ttl_seconds` 600) answers 201 or 200 and validating
/// it answers 200 `valid: true`; any other expectation is the 401 error code of validate.
#[track_caller]
pub fn check_token_cases(d: &Daemon, cases: &[(&str, String, &str)]) {
    let mut failures = Vec::new();
    for (name, token, expected) in cases {
        if *expected == OK {
            let created = d.create_with(json!({"token": token, "ttl_seconds": 600}));
            if created.status != 201 && created.status != 200 {
                failures.push(format!("[{name}] create: {} {}", created.status, created.body));
                continue;
            }
            let r = d.validate(token);
            if r.status != 200 || r.json()["valid"] != json!(true) {
                failures.push(format!("[{name}] validate: {} {}", r.status, r.body));
            }
        } else if let Err(e) = d.validate(token).check_error(401, expected) {
            failures.push(format!("[{name}] {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
