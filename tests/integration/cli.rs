//! Contract section 7: the command line (`--version`, `--help`, `check-config`, `mint-token`,
//! `serve --dev`), configuration errors naming the key, and environment overrides.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{
    API_KEY, CliOutput, Config, Daemon, VERSION, public_key, run_cli, test_file, toml_list,
    toml_str,
};
use crate::tokens::*;

fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let path = dir.join("sessiond.toml");
    std::fs::write(&path, config.render(dir)).unwrap();
    path
}

fn check_config(config: &Config) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), config);
    run_cli(&["check-config", "--config", path.to_str().unwrap()], &[], dir.path())
}

#[test]
fn version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["--version"], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("sessiond") && out.stdout.contains(VERSION),
        "--version printed {:?}",
        out.stdout
    );
}

#[test]
fn help_mentions_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["--help"], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    for cmd in ["serve", "check-config", "mint-token"] {
        assert!(out.stdout.contains(cmd), "--help does not mention {cmd}:\n{}", out.stdout);
    }
    let out = run_cli(&["mint-token", "--help"], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    for opt in ["--format", "--user-id", "--email", "--role", "--ttl", "--sid", "--config", "--dev"]
    {
        assert!(
            out.stdout.contains(opt),
            "mint-token --help does not mention {opt}:\n{}",
            out.stdout
        );
    }
    let out = run_cli(&["serve", "--help"], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    for opt in ["--config", "--dev"] {
        assert!(out.stdout.contains(opt), "serve --help does not mention {opt}:\n{}", out.stdout);
    }
}

#[test]
fn the_listening_line() {
    let d = Daemon::start(Config::default());
    let first = d.stdout().lines().next().unwrap_or_default().to_string();
    assert_eq!(first, format!("sessiond {VERSION} listening on http://127.0.0.1:{}", d.port));
}

#[test]
fn serve_is_the_default_command() {
    let d = Daemon::builder(Config::default()).without_serve_word().start();
    d.get("/livez").send().expect_status(200);
}

#[test]
fn sigterm_exits_zero() {
    let mut d = Daemon::start(Config::default());
    d.get("/livez").send().expect_status(200);
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
}

#[test]
fn sighup_is_logged_and_ignored() {
    // No configuration reload: SIGHUP must neither stop the daemon (its default action would,
    // without draining or flushing) nor change anything.
    let mut d = Daemon::start(Config::default());
    crate::harness::send_signal(d.pid(), libc::SIGHUP);
    let logged = crate::harness::poll_until(std::time::Duration::from_secs(10), || {
        d.stderr().contains("SIGHUP ignored").then_some(())
    });
    assert!(logged.is_some(), "no SIGHUP log line:\n{}", d.stderr());
    d.get("/livez").send().expect_status(200);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn sigterm_right_after_the_listening_line_exits_zero() {
    // The listening line is the readiness signal: a stop request from then on (systemd stopping
    // a unit that just became ready, a test harness) must be a clean, flushed exit 0.
    for _ in 0..5 {
        let mut d = Daemon::start(Config::default());
        let status = d.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "exit status after SIGTERM right after readiness: {status}"
        );
    }
}

#[test]
fn check_config_accepts_a_good_config() {
    let out = check_config(&Config::default());
    assert_eq!(out.code(), Some(0), "{out:?}");
    let full = Config::default()
        .set("server.max_body_bytes", "1024")
        .set("tokens.algorithms", &toml_list(&["HS256", "RS256"]))
        .set(
            "tokens.public_keys",
            &format!(
                "[{}]",
                public_key(Some("k1"), "RS256", &test_file("fixtures/keys/rsa.pub.pem"))
            ),
        )
        .set_str("tokens.issuer", "https://issuer.test")
        .set_str("tokens.audience", "api")
        .set("tokens.leeway_seconds", "10")
        .set("tokens.refresh_window_seconds", "60")
        .set("sessions.max_ttl_seconds", "3600")
        .set_str("fallback.fsync", "always")
        .set("fallback.fsync_interval_ms", "500")
        .set("fallback.max_entries", "100000")
        .set_str("degraded.policy", "fail_closed")
        .set_str("ws.cookie_name", "sso")
        .set("ws.allowed_origins", &toml_list(&["https://app.example"]));
    let out = check_config(&full);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn check_config_refuses_bad_configs_naming_the_key() {
    let missing_pem =
        format!("[{}]", public_key(Some("k1"), "RS256", Path::new("/nonexistent/key.pem")));
    let cases: Vec<(&str, Config, &[&str])> = vec![
        ("unknown key", Config::default().set("server.bogus", "1"), &["bogus"]),
        ("unknown section", Config::default().set("nosuch.thing", "1"), &["nosuch"]),
        ("misspelt key", Config::default().set("tokens.algoritms", "[\"HS256\"]"), &["algoritms"]),
        ("workers not a number", Config::default().set_str("server.workers", "many"), &["workers"]),
        (
            "listen not an address",
            Config::default().set_str("server.listen", "not an address"),
            &["listen"],
        ),
        (
            "max_body_bytes not a number",
            Config::default().set_str("server.max_body_bytes", "big"),
            &["max_body_bytes"],
        ),
        ("fsync mode", Config::default().set_str("fallback.fsync", "sometimes"), &["fsync"]),
        ("degraded policy", Config::default().set_str("degraded.policy", "maybe"), &["policy"]),
        (
            "unknown algorithm",
            Config::default().set("tokens.algorithms", "[\"HS257\"]"),
            &["algorithms"],
        ),
        (
            "short HMAC secret",
            Config::default().set_str("tokens.hmac_secret", "short"),
            &["hmac_secret"],
        ),
        (
            "negative leeway",
            Config::default().set("tokens.leeway_seconds", "-1"),
            &["leeway_seconds"],
        ),
        (
            "missing PEM file",
            Config::default()
                .set("tokens.algorithms", "[\"HS256\", \"RS256\"]")
                .set("tokens.public_keys", &missing_pem),
            &["pem_file", "/nonexistent/key.pem", "public_keys"],
        ),
        (
            "unknown field in a public key",
            Config::default().set("tokens.algorithms", "[\"HS256\", \"RS256\"]").set(
                "tokens.public_keys",
                &format!(
                    "[{{kid = \"k\", alg = \"RS256\", pem_file = {}, colour = \"red\"}}]",
                    toml_str(&test_file("fixtures/keys/rsa.pub.pem").display().to_string())
                ),
            ),
            &["colour"],
        ),
        ("no key at all", Config::default().unset("tokens.hmac_secret"), &["hmac_secret", "key"]),
        ("wrong type for keys", Config::default().set_str("api.keys", API_KEY), &["keys"]),
        (
            "no connections allowed",
            Config::default().set("server.max_connections", "0"),
            &["server.max_connections"],
        ),
        (
            "no head timeout",
            Config::default().set("server.client_request_timeout_ms", "0"),
            &["server.client_request_timeout_ms"],
        ),
        (
            "empty journal",
            Config::default().set("fallback.max_journal_entries", "0"),
            &["fallback.max_journal_entries"],
        ),
        ("no sockets", Config::default().set("ws.max_connections", "0"), &["ws.max_connections"]),
        (
            "per-user over the total",
            Config::default()
                .set("ws.max_connections", "10")
                .set("ws.max_connections_per_user", "11"),
            &["ws.max_connections_per_user"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, config, needles) in cases {
        let out = check_config(&config);
        if out.code() != Some(1) {
            failures.push(format!("[{name}] exit {:?}, stderr {:?}", out.code(), out.stderr));
        } else if !needles.iter().any(|n| out.stderr.contains(n)) {
            failures.push(format!(
                "[{name}] stderr does not name any of {needles:?}: {:?}",
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_config_refuses_unreadable_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[server\nlisten = ").unwrap();
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[], dir.path());
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(!out.stderr.trim().is_empty());
    let out = run_cli(&["check-config", "--config", "/nonexistent/sessiond.toml"], &[], dir.path());
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/sessiond.toml"), "{out:?}");
}

#[test]
fn serve_refuses_a_bad_config_at_start() {
    let err = Daemon::builder(Config::default().set("server.bogus", "1"))
        .try_start()
        .err()
        .expect("the daemon started with an unknown key");
    assert!(err.contains("bogus"), "start-up failure does not name the key: {err}");
}

#[test]
fn environment_overrides_the_file() {
    // The file's listen address is unusable; the environment's wins.
    let d = Daemon::builder(Config::default().set_str("server.listen", "not an address"))
        .env("SESSIOND_SERVER__LISTEN", "127.0.0.1:0")
        .env("SESSIOND_TOKENS__HMAC_SECRET", "secret-from-the-environment-0123456789abcdef")
        .env("SESSIOND_SESSIONS__MAX_TTL_SECONDS", "50")
        .start();
    let from_env = hmac(
        jsonwebtoken::Algorithm::HS256,
        b"secret-from-the-environment-0123456789abcdef",
        &enhanced("u-1", "a@example.com", "user", "env-1"),
    );
    let s = d.create_ok(&from_env);
    let expires = s["expires_at"].as_i64().unwrap();
    assert!(expires <= now() + 51, "max_ttl_seconds from the environment not applied: {s}");
    d.validate(&from_env).expect_status(200);
    d.validate(&hs256(&enhanced("u-1", "a@example.com", "user", "env-2")))
        .expect_error(401, "token_invalid_signature");
}

#[test]
fn environment_values_are_checked_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &Config::default());
    let config = path.to_str().unwrap();
    let out = run_cli(
        &["check-config", "--config", config],
        &[("SESSIOND_SERVER__WORKERS", "lots")],
        dir.path(),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("workers"), "{out:?}");
    let out = run_cli(
        &["check-config", "--config", config],
        &[("SESSIOND_FALLBACK__FSYNC", "sometimes")],
        dir.path(),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("fsync"), "{out:?}");
    let out = run_cli(
        &["check-config", "--config", config],
        &[("SESSIOND_FALLBACK__FSYNC", "always")],
        dir.path(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn sessiond_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), &Config::default());
    let out =
        run_cli(&["check-config"], &[("SESSIOND_CONFIG", good.to_str().unwrap())], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = write_config(bad_dir.path(), &Config::default().set("server.bogus", "1"));
    let out = run_cli(&["check-config"], &[("SESSIOND_CONFIG", bad.to_str().unwrap())], dir.path());
    assert_eq!(out.code(), Some(1), "SESSIOND_CONFIG was not read: {out:?}");
    assert!(out.stderr.contains("bogus"), "{out:?}");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn serve_dev_generates_keys_once_and_mint_token_uses_them() {
    let config = Config::default().unset("tokens.hmac_secret").unset("api.keys");
    let mut d = Daemon::builder(config).arg("--dev").start();
    let secret_file = d.data_dir().join("dev-hmac-secret");
    let key_file = d.data_dir().join("dev-api-key");
    assert_eq!(mode_of(&secret_file), 0o600, "dev-hmac-secret mode");
    assert_eq!(mode_of(&key_file), 0o600, "dev-api-key mode");
    let secret = std::fs::read(&secret_file).unwrap();
    let api_key = std::fs::read_to_string(&key_file).unwrap().trim().to_string();
    assert!(secret.len() >= 32, "dev secret too short");
    assert!(api_key.len() >= 16, "dev API key too short: {api_key:?}");
    let out = d.wait_stdout_contains("mint-token");
    assert!(out.lines().count() > 1, "no instructions after the listening line:\n{out}");

    // Restart: the same keys are reused. (A request first: a SIGTERM right after the listening
    // line is its own test.)
    d.get("/livez").send().expect_status(200);
    assert_eq!(d.terminate().code(), Some(0));
    d.restart();
    assert_eq!(std::fs::read(&secret_file).unwrap(), secret, "dev-hmac-secret changed on restart");
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap().trim(),
        api_key,
        "dev-api-key changed on restart"
    );
    assert_eq!(mode_of(&secret_file), 0o600);

    let config = d.config_path().to_str().unwrap().to_string();
    let mint = |args: &[&str]| {
        let mut all = vec!["mint-token", "--dev", "--config", config.as_str()];
        all.extend_from_slice(args);
        let out = run_cli(&all, &[], d.dir());
        assert_eq!(out.code(), Some(0), "mint-token {args:?}: {out:?}");
        let token = out.stdout.trim().to_string();
        assert_eq!(token.split('.').count(), 3, "mint-token printed {:?}", out.stdout);
        token
    };
    let enh = mint(&[
        "--format",
        "enhanced",
        "--user-id",
        "u-dev",
        "--email",
        "dev@example.com",
        "--role",
        "admin",
        "--sid",
        "dev-1",
        "--ttl",
        "600",
    ]);
    let created = d
        .post("/api/v1/sessions")
        .header("X-Api-Key", &api_key)
        .json(&json!({"token": enh}))
        .send();
    assert_eq!(created.clone().expect_status(201).json()["session"]["session_id"], json!("dev-1"));
    let v = d.validate(&enh).expect_status(200).json();
    let id = &v["identity"];
    assert_eq!(id["user_id"], json!("u-dev"), "{v}");
    assert_eq!(id["email"], json!("dev@example.com"), "{v}");
    assert_eq!(id["role"], json!("admin"), "{v}");
    assert_eq!(id["format"], json!("enhanced"), "{v}");
    assert_eq!(id["session_id"], json!("dev-1"), "{v}");
    let exp = id["expires_at"].as_i64().unwrap();
    assert!((exp - (now() + 600)).abs() <= 5, "--ttl 600 gave expires_at {exp}");

    let leg = mint(&[
        "--format",
        "legacy",
        "--user-id",
        "42",
        "--email",
        "old@example.com",
        "--role",
        "user",
    ]);
    let created = d
        .post("/api/v1/sessions")
        .header("X-Api-Key", &api_key)
        .json(&json!({"token": leg}))
        .send();
    let session = created.expect_status(201).json()["session"].clone();
    let v = d.validate(&leg).expect_status(200).json();
    assert_eq!(v["identity"]["format"], json!("legacy"), "{v}");
    assert_eq!(v["identity"]["user_id"], json!("42"), "{v}");
    assert_eq!(v["identity"]["email"], json!("old@example.com"), "{v}");
    assert_eq!(v["session"], session);

    // The dev API key guards the management routes.
    d.get("/api/v1/sessions/dev-1").send().expect_error(401, "api_key_required");
    d.get("/api/v1/sessions/dev-1")
        .header("X-Api-Key", "not-the-dev-key-0000")
        .send()
        .expect_error(403, "api_key_invalid");
}

#[test]
fn mint_token_with_the_configured_secret() {
    let d = Daemon::start(Config::default());
    let config = d.config_path().to_str().unwrap().to_string();
    let out = run_cli(
        &[
            "mint-token",
            "--config",
            &config,
            "--format",
            "enhanced",
            "--user-id",
            "u-m",
            "--email",
            "m@example.com",
            "--role",
            "ops",
            "--sid",
            "mint-1",
        ],
        &[],
        d.dir(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let token = out.stdout.trim().to_string();
    assert!(!out.stderr.contains(&token), "mint-token logged the token");
    d.create_ok(&token);
    let v = d.validate(&token).expect_status(200).json();
    assert_eq!(v["identity"]["user_id"], json!("u-m"));
    assert_eq!(v["identity"]["role"], json!("ops"));
}

#[test]
fn mint_token_refuses_a_bad_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &Config::default());
    let out = run_cli(
        &[
            "mint-token",
            "--config",
            path.to_str().unwrap(),
            "--format",
            "modern",
            "--user-id",
            "u",
            "--email",
            "e@example.com",
            "--role",
            "r",
        ],
        &[],
        dir.path(),
    );
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "printed a token anyway: {:?}", out.stdout);
}
