//! The tests of the configuration module.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::io::Write;
use std::net::SocketAddr;

use super::algorithm::ALGORITHM_NAMES;
use super::model::{DegradedPolicy, PublicKeyConfig, redact_url_password};
use super::schema::Kind::{Bool, Int, Str, StrList, TableList};
use super::schema::SCHEMA;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn load_toml(text: &str) -> Result<Config, ConfigError> {
    load_from(Some(text), Vec::new())
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_from(None, env(pairs))
}

fn err_toml(text: &str) -> ConfigError {
    load_toml(text).expect_err("expected an error")
}

fn err_env(pairs: &[(&str, &str)]) -> ConfigError {
    load_env(pairs).expect_err("expected an error")
}

/// Assert the error is about `key` and its message names it.
fn assert_key(e: &ConfigError, key: &str) {
    assert_eq!(e.key(), Some(key), "{e}");
    assert!(e.to_string().contains(key), "{e}");
}

fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(content).unwrap();
    path
}

#[test]
fn defaults_are_the_contracts() {
    let c = load_from(None, Vec::new()).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.listen_addr().unwrap(), SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(c.fsync_mode(), FsyncMode::Interval(Duration::from_secs(1)));
    assert_eq!(c.server.workers, 0);
    assert_eq!(c.server.max_body_bytes, 65536);
    assert_eq!(c.tokens.algorithms, vec!["HS256"]);
    assert_eq!(c.tokens.hmac_secret, "");
    assert_eq!(c.tokens.hmac_secret_file, PathBuf::new());
    assert!(c.tokens.public_keys.is_empty());
    assert_eq!(c.tokens.issuer, "");
    assert_eq!(c.tokens.audience, "");
    assert_eq!(c.tokens.leeway_seconds, 30);
    assert_eq!(c.tokens.refresh_window_seconds, 300);
    assert_eq!(c.sessions.redis_url, "");
    assert_eq!(c.sessions.key_prefix, "sessiond");
    assert_eq!(c.sessions.max_ttl_seconds, 86400);
    assert_eq!(c.fallback.data_dir, PathBuf::from("data"));
    assert_eq!(c.fallback.fsync, FsyncPolicy::Interval);
    assert_eq!(c.fallback.fsync_interval_ms, 1000);
    assert_eq!(c.fallback.max_entries, 2_000_000);
    assert_eq!(c.breaker.failure_threshold, 5);
    assert_eq!(c.breaker.success_threshold, 2);
    assert_eq!(c.breaker.open_seconds, 5);
    assert_eq!(c.breaker.op_timeout_ms, 250);
    assert_eq!(c.degraded.policy, DegradedPolicy::JwtOnly);
    assert!(c.api.keys.is_empty());
    assert_eq!(c.api.keys_file, PathBuf::new());
    assert_eq!(c.ws.path, "/ws");
    assert!(c.ws.allowed_origins.is_empty());
    assert_eq!(c.ws.cookie_name, "session_token");
    assert!(!c.ws.allow_query_token);
    assert_eq!(c.ws.heartbeat_interval_seconds, 15);
    assert_eq!(c.ws.client_timeout_seconds, 45);
    assert_eq!(c.ws.max_message_bytes, 4096);
    assert_eq!(c.ws.outbound_queue, 256);
    assert_eq!(c.data_dir(), PathBuf::from("data"));
    assert!(c.source_path().is_none());
    // The defaults validate and equal Config::default().
    Config::default().validate().unwrap();
    assert_eq!(
        toml::Table::try_from(&c).unwrap(),
        toml::Table::try_from(Config::default()).unwrap()
    );
}

#[test]
fn contract_example_file_loads() {
    // The contract's block of keys and defaults, verbatim.
    let text = r#"
[server]
listen = "127.0.0.1:8080"
workers = 0                        # 0: one per core
max_body_bytes = 65536

[tokens]
algorithms = ["HS256"]
hmac_secret = ""                   # or hmac_secret_file; at least one key overall
hmac_secret_file = ""
public_keys = []                   # [{kid = "k1", alg = "RS256", pem_file = "…"}]
issuer = ""                        # empty: not checked
audience = ""                      # empty: not checked
leeway_seconds = 30
refresh_window_seconds = 300

[sessions]
redis_url = ""                     # empty: embedded store only
key_prefix = "sessiond"
max_ttl_seconds = 86400

[fallback]
data_dir = "data"                  # under systemd: $STATE_DIRECTORY
fsync = "interval"                 # always | interval | never
fsync_interval_ms = 1000

[breaker]
failure_threshold = 5
success_threshold = 2
open_seconds = 5
op_timeout_ms = 250

[degraded]
policy = "jwt_only"                # jwt_only | fail_closed

[api]
keys = []                          # or keys_file, one key a line
keys_file = ""

[ws]
path = "/ws"
allowed_origins = []
cookie_name = "session_token"
allow_query_token = false
heartbeat_interval_seconds = 15
client_timeout_seconds = 45
max_message_bytes = 4096
outbound_queue = 256
"#;
    let c = load_toml(text).unwrap();
    assert_eq!(
        toml::Table::try_from(&c).unwrap(),
        toml::Table::try_from(Config::default()).unwrap()
    );
    // Explicitly set, so STATE_DIRECTORY does not apply.
    let c = load_from(Some(text), env(&[("STATE_DIRECTORY", "/var/lib/sessiond")])).unwrap();
    assert_eq!(c.data_dir(), PathBuf::from("data"));
}

#[test]
fn schema_matches_the_model() {
    let table = toml::Table::try_from(Config::default()).unwrap();
    let sections: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut schema_sections: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
    schema_sections.sort_unstable();
    assert_eq!(sections, schema_sections);
    for (section, keys) in SCHEMA {
        let t = table[*section].as_table().unwrap();
        assert_eq!(t.len(), keys.len(), "{section}");
        for (key, kind) in *keys {
            let v = t.get(*key).unwrap_or_else(|| panic!("{section}.{key}"));
            let ok = match kind {
                Str => v.is_str(),
                Int => v.is_integer(),
                Bool => v.is_bool(),
                StrList | TableList => v.is_array(),
            };
            assert!(ok, "{section}.{key} is {v:?}, schema says {kind:?}");
        }
    }
}

#[test]
fn file_values_are_read() {
    let c = load_toml(
        r#"
[server]
listen = "[::]:9000"
workers = 4
[tokens]
algorithms = ["HS256", "RS256"]
hmac_secret = "0123456789abcdef"
public_keys = [{kid = "k1", alg = "RS256", pem_file = "/k.pem"}, {alg = "RS256", pem_file = "/k2.pem"}]
issuer = "https://issuer"
audience = "aud"
[sessions]
redis_url = "redis://:pw@redis:6380/0"
[fallback]
fsync = "always"
max_entries = 10
[degraded]
policy = "fail_closed"
[ws]
allowed_origins = ["https://app.example.com", "http://localhost:3000"]
allow_query_token = true
"#,
    )
    .unwrap();
    assert_eq!(c.server.listen_addr().unwrap().to_string(), "[::]:9000");
    assert_eq!(c.fsync_mode(), FsyncMode::Always);
    assert_eq!(c.server.workers, 4);
    assert_eq!(c.tokens.public_keys.len(), 2);
    assert_eq!(c.tokens.public_keys[0].kid.as_deref(), Some("k1"));
    assert_eq!(c.tokens.public_keys[1].kid, None);
    assert_eq!(c.fallback.fsync, FsyncPolicy::Always);
    assert_eq!(c.fallback.max_entries, 10);
    assert_eq!(c.degraded.policy, DegradedPolicy::FailClosed);
    assert!(c.ws.allow_query_token);
    assert_eq!(c.ws.allowed_origins.len(), 2);
}

#[test]
fn env_overrides_every_kind() {
    let c = load_env(&[
        ("SESSIOND_SERVER__LISTEN", "0.0.0.0:9999"), // string (addr)
        ("SESSIOND_SERVER__WORKERS", "3"),           // integer
        ("sessiond_ws__allow_query_token", "true"),  // bool, lower case
        ("SESSIOND_TOKENS__ALGORITHMS", "HS256, RS256"), // comma list
        ("SESSIOND_WS__ALLOWED_ORIGINS", r#"["https://a.example"]"#), // TOML list
        ("SESSIOND_TOKENS__PUBLIC_KEYS", r#"[{kid="k1", alg="RS256", pem_file="/k.pem"}]"#), // TOML array of tables
        ("SESSIOND_SESSIONS__REDIS_URL", "redis://localhost:6379"),
        ("SESSIOND_DEGRADED__POLICY", "fail_closed"), // enum
        ("SESSIOND_FALLBACK__FSYNC", "never"),
        ("SESSIOND_API__KEYS", ""), // empty list
        ("SESSIOND_CONFIG", "/not/an/override.toml"),
        ("SESSIOND_API_KEY", "not an override either"),
        ("OTHER", "x"),
    ])
    .unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:9999");
    assert_eq!(c.server.workers, 3);
    assert!(c.ws.allow_query_token);
    assert_eq!(c.tokens.algorithms, vec!["HS256", "RS256"]);
    assert_eq!(c.ws.allowed_origins, vec!["https://a.example"]);
    assert_eq!(
        c.tokens.public_keys,
        vec![PublicKeyConfig {
            kid: Some("k1".into()),
            alg: "RS256".into(),
            pem_file: "/k.pem".into()
        }]
    );
    assert_eq!(c.sessions.redis_url, "redis://localhost:6379");
    assert_eq!(c.degraded.policy, DegradedPolicy::FailClosed);
    assert_eq!(c.fallback.fsync, FsyncPolicy::Never);
    assert!(c.api.keys.is_empty());

    // Env wins over the file.
    let c = load_from(
        Some("[server]\nworkers = 2\n[ws]\nallow_query_token = true\n"),
        env(&[
            ("SESSIOND_SERVER__WORKERS", "5"),
            ("SESSIOND_WS__ALLOW_QUERY_TOKEN", "0"),
            ("SESSIOND_API__KEYS", "aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.workers, 5);
    assert!(!c.ws.allow_query_token);
    assert_eq!(c.api.keys.len(), 2);
}

#[test]
fn env_type_errors_name_key_and_variable() {
    let e = err_env(&[("SESSIOND_SERVER__WORKERS", "x")]);
    assert_key(&e, "server.workers");
    assert_eq!(
        e.to_string(),
        "SESSIOND_SERVER__WORKERS: config key server.workers: invalid type: string \"x\", expected usize"
    );
    let e = err_env(&[("SESSIOND_WS__ALLOW_QUERY_TOKEN", "maybe")]);
    assert_key(&e, "ws.allow_query_token");
    let e = err_env(&[("SESSIOND_BREAKER__OPEN_SECONDS", "-1")]);
    assert_key(&e, "breaker.open_seconds");
    let e = err_env(&[("SESSIOND_TOKENS__PUBLIC_KEYS", "RS256")]);
    assert!(
        e.to_string().starts_with("SESSIOND_TOKENS__PUBLIC_KEYS: config key tokens.public_keys"),
        "{e}"
    );
    let e = err_env(&[("SESSIOND_TOKENS__ALGORITHMS", "[\"HS256\"")]);
    assert!(e.to_string().contains("tokens.algorithms"), "{e}");
    let e = err_env(&[("SESSIOND_TOKENS__ALGORITHMS", "HS256,none")]);
    assert_key(&e, "tokens.algorithms[1]");
    assert!(e.to_string().starts_with("SESSIOND_TOKENS__ALGORITHMS: "), "{e}");
    let e = err_env(&[(
        "SESSIOND_TOKENS__PUBLIC_KEYS",
        r#"[{alg="RS256", pem_file="/k", colour="red"}]"#,
    )]);
    assert_key(&e, "tokens.public_keys[0].colour");
    assert!(e.to_string().starts_with("SESSIOND_TOKENS__PUBLIC_KEYS: "), "{e}");
}

#[test]
fn unknown_keys_are_refused() {
    let e = err_toml("[server]\nfoo = 1\n");
    assert_eq!(e.to_string(), "unknown config key server.foo");
    let e = err_toml("[nope]\nfoo = 1\n");
    assert_eq!(e.to_string(), "unknown config key nope");
    let e = err_toml("top = 1\n");
    assert_eq!(e.to_string(), "unknown config key top");
    let e = err_toml(
        "[tokens]\nalgorithms=[\"RS256\"]\npublic_keys = [{alg = \"RS256\", pem_file = \"/k\", x = 1}]\n",
    );
    assert_key(&e, "tokens.public_keys[0].x");
    let e = err_env(&[("SESSIOND_SERVER__FOO", "1")]);
    assert_eq!(e.to_string(), "SESSIOND_SERVER__FOO: unknown config key server.foo");
    let e = err_env(&[("SESSIOND_NOPE__FOO", "1")]);
    assert_eq!(e.to_string(), "SESSIOND_NOPE__FOO: unknown config key nope.foo");
    let e = err_env(&[("SESSIOND_SERVER__LISTEN__X", "1")]);
    assert!(e.to_string().contains("unknown config key server.listen__x"), "{e}");
    // The same key twice in different cases.
    let e = err_env(&[("SESSIOND_SERVER__WORKERS", "1"), ("sessiond_server__workers", "2")]);
    assert!(e.to_string().contains("both set config key server.workers"), "{e}");
}

#[test]
fn file_type_errors_name_the_key() {
    let e = err_toml("[server]\nworkers = \"x\"\n");
    assert_eq!(
        e.to_string(),
        "config key server.workers: invalid type: string \"x\", expected usize"
    );
    assert_key(&err_toml("server = 5\n"), "server");
    assert_key(&err_toml("[ws]\nallow_query_token = 1\n"), "ws.allow_query_token");
    assert_key(&err_toml("[tokens]\nalgorithms = \"HS256\"\n"), "tokens.algorithms");
    assert_key(
        &err_toml("[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{alg = \"RS256\"}]\n"),
        "tokens.public_keys[0]",
    );
    let e = err_toml("[fallback]\nfsync = \"sometimes\"\n");
    assert_key(&e, "fallback.fsync");
    assert!(e.to_string().contains("always"), "{e}");
    let e = err_toml("[degraded]\npolicy = \"open\"\n");
    assert_key(&e, "degraded.policy");
    assert!(e.to_string().contains("fail_closed"), "{e}");
    assert_key(&err_toml("[server]\nlisten = \"localhost\"\n"), "server.listen");
    assert_key(&err_toml("[server]\nworkers = -1\n"), "server.workers");
}

#[test]
fn secrets_do_not_appear_in_type_errors() {
    let e = err_toml("[tokens]\nhmac_secret = 123456789\n");
    assert_key(&e, "tokens.hmac_secret");
    assert!(!e.to_string().contains("123456789"), "{e}");
    let e = err_toml("[api]\nkeys = [987654321]\n");
    assert_key(&e, "api.keys[0]");
    assert!(!e.to_string().contains("987654321"), "{e}");
}

#[test]
fn syntax_errors_name_file_and_line_without_content() {
    let e = load_toml("[server]\nworkers = 1\nhmac = \"s3cr3t\n").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("config: TOML syntax error at line 3"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bad.toml", b"[server\n");
    let e = load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("line 1"), "{e}");

    let e = load(Some(&dir.path().join("missing.toml"))).unwrap_err();
    assert!(e.to_string().contains("missing.toml"), "{e}");
}

#[test]
fn load_reads_the_file_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "s.toml", b"[server]\nworkers = 7\n");
    let c = load(Some(&path)).unwrap();
    assert_eq!(c.server.workers, 7);
    assert_eq!(c.source_path(), Some(path.as_path()));
}

#[test]
fn every_validation_error_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
        ("[server]\nmax_body_bytes = 16777217", "server.max_body_bytes"),
        ("[tokens]\nalgorithms = []", "tokens.algorithms"),
        ("[tokens]\nalgorithms = [\"HS256\", \"none\"]", "tokens.algorithms[1]"),
        ("[tokens]\nalgorithms = [\"hs256\"]", "tokens.algorithms[0]"),
        ("[tokens]\nalgorithms = [\"XS1\"]", "tokens.algorithms[0]"),
        (
            "[tokens]\npublic_keys = [{alg = \"RS256\", pem_file = \"/k\"}]",
            "tokens.public_keys[0].alg",
        ),
        (
            "[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{alg = \"RS999\", pem_file = \"/k\"}]",
            "tokens.public_keys[0].alg",
        ),
        (
            "[tokens]\npublic_keys = [{alg = \"HS256\", pem_file = \"/k\"}]",
            "tokens.public_keys[0].alg",
        ),
        (
            "[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{kid = \"\", alg = \"RS256\", pem_file = \"/k\"}]",
            "tokens.public_keys[0].kid",
        ),
        (
            "[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{kid = \"a\", alg = \"RS256\", pem_file = \"/k\"}, {kid = \"a\", alg = \"RS256\", pem_file = \"/k\"}]",
            "tokens.public_keys[1].kid",
        ),
        (
            "[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{alg = \"RS256\", pem_file = \"\"}]",
            "tokens.public_keys[0].pem_file",
        ),
        ("[tokens]\nhmac_secret = \"abc\"\nhmac_secret_file = \"/s\"", "tokens.hmac_secret"),
        ("[tokens]\nleeway_seconds = 3601", "tokens.leeway_seconds"),
        ("[tokens]\nrefresh_window_seconds = -1", "tokens.refresh_window_seconds"),
        ("[tokens]\nleeway_seconds = -1", "tokens.leeway_seconds"),
        ("[sessions]\nmax_ttl_seconds = -5", "sessions.max_ttl_seconds"),
        ("[sessions]\nmax_ttl_seconds = 315360001", "sessions.max_ttl_seconds"),
        ("[server]\nlisten = \"localhost:80\"", "server.listen"),
        ("[server]\nlisten = \"127.0.0.1\"", "server.listen"),
        ("[sessions]\nmax_ttl_seconds = 0", "sessions.max_ttl_seconds"),
        ("[sessions]\nkey_prefix = \"\"", "sessions.key_prefix"),
        ("[sessions]\nkey_prefix = \"a b\"", "sessions.key_prefix"),
        ("[sessions]\nredis_url = \"http://x\"", "sessions.redis_url"),
        ("[sessions]\nredis_url = \"rediss://x:6380\"", "sessions.redis_url"),
        ("[fallback]\nfsync_interval_ms = 0", "fallback.fsync_interval_ms"),
        ("[fallback]\nmax_entries = 0", "fallback.max_entries"),
        ("[fallback]\ndata_dir = \"\"", "fallback.data_dir"),
        ("[breaker]\nfailure_threshold = 0", "breaker.failure_threshold"),
        ("[breaker]\nsuccess_threshold = 0", "breaker.success_threshold"),
        ("[breaker]\nopen_seconds = 0", "breaker.open_seconds"),
        ("[breaker]\nop_timeout_ms = 0", "breaker.op_timeout_ms"),
        ("[api]\nkeys = [\"short\"]", "api.keys[0]"),
        ("[ws]\npath = \"ws\"", "ws.path"),
        ("[ws]\nmax_message_bytes = 63", "ws.max_message_bytes"),
        ("[ws]\noutbound_queue = 0", "ws.outbound_queue"),
        ("[ws]\nheartbeat_interval_seconds = 45", "ws.heartbeat_interval_seconds"),
        ("[ws]\nheartbeat_interval_seconds = 0", "ws.heartbeat_interval_seconds"),
        ("[ws]\nallowed_origins = [\"https://a.example/\"]", "ws.allowed_origins[0]"),
        ("[ws]\ncookie_name = \"a;b\"", "ws.cookie_name"),
    ];
    for (text, key) in cases {
        let e = load_toml(text).expect_err(text);
        assert_key(&e, key);
    }
    // Valid edge values.
    for text in [
        "[server]\nmax_body_bytes = 16777216",
        "[server]\nmax_body_bytes = 1",
        "[tokens]\nleeway_seconds = 3600\nrefresh_window_seconds = 0",
        "[sessions]\nredis_url = \"unix:///run/redis.sock\"\nmax_ttl_seconds = 1",
        "[ws]\nheartbeat_interval_seconds = 44\nmax_message_bytes = 64\noutbound_queue = 1",
        "[tokens]\nalgorithms = [\"HS256\",\"HS384\",\"HS512\",\"RS256\",\"RS384\",\"RS512\",\"PS256\",\"PS384\",\"PS512\",\"ES256\",\"ES384\",\"EdDSA\"]",
    ] {
        load_toml(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[test]
fn redis_url_is_never_shown() {
    let e = err_toml("[sessions]\nredis_url = \"http://:hunter2@x\"");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let c = load_toml("[sessions]\nredis_url = \"redis://user:hunter2@host:6379/0\"").unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert_eq!(c.sessions.redis_url_for_log(), "redis://user:***@host:6379/0");
    assert_eq!(redact_url_password("redis://host:1"), "redis://host:1");
    assert_eq!(redact_url_password("redis://pw@host"), "redis://***@host");
}

#[test]
fn debug_hides_secrets() {
    let c = load_toml(
        "[tokens]\nhmac_secret = \"supersecretvalue\"\n[api]\nkeys = [\"apikey-0123456789abcdef\"]\n",
    )
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("supersecretvalue"), "{dbg}");
    assert!(!dbg.contains("apikey-0123456789abcdef"), "{dbg}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
}

#[test]
fn state_directory_rule() {
    let sd = [("STATE_DIRECTORY", "/var/lib/sessiond:/var/lib/other")];
    // Not set by file or env: STATE_DIRECTORY's first entry.
    let c = load_from(None, env(&sd)).unwrap();
    assert_eq!(c.data_dir(), PathBuf::from("/var/lib/sessiond"));
    assert_eq!(c.fallback.data_dir, PathBuf::from("data"));
    // Set by the file.
    let c = load_from(Some("[fallback]\ndata_dir = \"/srv/d\""), env(&sd)).unwrap();
    assert_eq!(c.data_dir(), PathBuf::from("/srv/d"));
    // Set by the environment (even to the default value).
    let mut vars = env(&sd);
    vars.push(("SESSIOND_FALLBACK__DATA_DIR".into(), "data".into()));
    let c = load_from(None, vars).unwrap();
    assert_eq!(c.data_dir(), PathBuf::from("data"));
    // No STATE_DIRECTORY (or an empty one).
    let c = load_from(None, env(&[("STATE_DIRECTORY", "")])).unwrap();
    assert_eq!(c.data_dir(), PathBuf::from("data"));
}

#[test]
fn secret_file_loses_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[u8], &[u8])] = &[
        (b"secret", b"secret"),
        (b"secret\n", b"secret"),
        (b"secret\r\n", b"secret"),
        (b"secret\n\n", b"secret\n"),
        (b" secret \n", b" secret "),
    ];
    for (i, (content, expected)) in cases.iter().enumerate() {
        let path = write_file(dir.path(), &format!("s{i}"), content);
        let mut c = Config::default();
        c.tokens.hmac_secret_file = path;
        let settings = c.token_settings().unwrap();
        assert_eq!(settings.hmac_secret.as_deref(), Some(*expected));
    }
    // Empty (after the newline) is refused.
    let path = write_file(dir.path(), "empty", b"\n");
    let mut c = Config::default();
    c.tokens.hmac_secret_file = path;
    assert_key(&c.token_settings().unwrap_err(), "tokens.hmac_secret_file");
    // Missing file: names key and path, not content.
    let mut c = Config::default();
    c.tokens.hmac_secret_file = dir.path().join("nope");
    let e = c.token_settings().unwrap_err();
    assert_key(&e, "tokens.hmac_secret_file");
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn token_settings_maps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let pem = write_file(dir.path(), "k.pem", b"-----BEGIN PUBLIC KEY-----\n");
    let text = format!(
        "[tokens]\nalgorithms = [\"HS512\", \"ES256\"]\nhmac_secret = \"inline-secret\"\n\
         public_keys = [{{kid = \"e1\", alg = \"ES256\", pem_file = {:?}}}]\n\
         issuer = \"iss\"\nleeway_seconds = 5\n",
        pem.display().to_string()
    );
    let s = load_toml(&text).unwrap().token_settings().unwrap();
    assert_eq!(s.algorithms, vec![Algorithm::HS512, Algorithm::ES256]);
    assert_eq!(s.hmac_secret.as_deref(), Some(&b"inline-secret"[..]));
    assert_eq!(s.public_keys.len(), 1);
    assert_eq!(s.public_keys[0].kid.as_deref(), Some("e1"));
    assert_eq!(s.public_keys[0].alg, Algorithm::ES256);
    assert_eq!(s.public_keys[0].pem, b"-----BEGIN PUBLIC KEY-----\n");
    assert_eq!(s.public_keys[0].source, "tokens.public_keys[0]");
    assert_eq!(s.issuer.as_deref(), Some("iss"));
    assert_eq!(s.audience, None);
    assert_eq!(s.leeway_seconds, 5);

    let text = "[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{alg = \"RS256\", pem_file = \"/definitely/missing.pem\"}]\n";
    let e = load_toml(text).unwrap().token_settings().unwrap_err();
    assert_key(&e, "tokens.public_keys[0].pem_file");
    assert!(e.to_string().contains("/definitely/missing.pem"), "{e}");

    // No key at all is not this module's business.
    let s = Config::default().token_settings().unwrap();
    assert!(s.hmac_secret.is_none() && s.public_keys.is_empty());
}

#[test]
fn algorithm_names() {
    for name in ALGORITHM_NAMES {
        assert!(algorithm_from_name(name).is_some(), "{name}");
    }
    for name in ["none", "None", "hs256", "", "HS1"] {
        assert!(algorithm_from_name(name).is_none(), "{name}");
    }
}

#[test]
fn api_keys_file_parsing_and_length_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "keys",
        b"# service keys\n\n  key-from-file-0000001  \n\t\n# another\r\nkey-from-file-0000002\r\n",
    );
    let mut c = Config::default();
    c.api.keys = vec!["inline-key-000000001".into()];
    c.api.keys_file = file;
    assert_eq!(
        c.api_keys().unwrap(),
        vec!["inline-key-000000001", "key-from-file-0000001", "key-from-file-0000002"]
    );

    // Too short, in the file: names the file line, not the key.
    let file = write_file(dir.path(), "short", b"key-from-file-0000001\nshort-key\n");
    let mut c = Config::default();
    c.api.keys_file = file;
    let e = c.api_keys().unwrap_err();
    assert_key(&e, "api.keys_file");
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(!e.to_string().contains("short-key"), "{e}");

    // Whitespace inside.
    let file = write_file(dir.path(), "ws", b"key with spaces inside\n");
    let mut c = Config::default();
    c.api.keys_file = file;
    assert!(c.api_keys().unwrap_err().to_string().contains("line 1"));

    // Inline: exactly 16 is fine, 15 is not, and the key is not shown.
    let mut c = Config::default();
    c.api.keys = vec!["a".repeat(16), "b".repeat(15)];
    let e = c.api_keys().unwrap_err();
    assert_key(&e, "api.keys[1]");
    assert!(!e.to_string().contains(&"b".repeat(15)), "{e}");
    let e = err_toml("[api]\nkeys = [\"bbbbbbbbbbbbbbb\"]");
    assert!(!e.to_string().contains("bbbbbbbbbbbbbbb"), "{e}");

    // Missing file.
    let mut c = Config::default();
    c.api.keys_file = dir.path().join("missing");
    assert_key(&c.api_keys().unwrap_err(), "api.keys_file");
}

#[test]
fn check_reads_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", b"0123456789abcdef0123456789abcdef\n");
    let keys = write_file(dir.path(), "keys", b"0123456789abcdef0123\n");
    let mut c = Config::default();
    c.tokens.hmac_secret_file = secret;
    c.api.keys_file = keys.clone();
    check(&c).unwrap();
    c.api.keys_file = dir.path().join("missing");
    assert_key(&check(&c).unwrap_err(), "api.keys_file");
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("abc", 0), (1, 1));
    assert_eq!(line_col("a\nbc", 3), (2, 2));
    assert_eq!(line_col("é\néx", 5), (2, 2));
    assert_eq!(line_col("é\né", 4), (2, 1)); // inside a character
}
