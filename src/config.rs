//! The configuration model and loader (CONTRACT.md section 7).
//!
//! One TOML file (`--config FILE` or `SESSIOND_CONFIG`), then environment overrides
//! `SESSIOND_<SECTION>__<KEY>`, then value validation. Every error names the key it is about;
//! no error and no `Debug` output ever shows a secret (HMAC secret, API key, Redis password).
//!
//! See `docs/configuration.md` for the reference of every key.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sessiond_actors::store::FsyncMode;
use sessiond_actors::token::{Algorithm, PublicKeySpec, TokenSettings, parse_algorithm};

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "SESSIOND_CONFIG";
/// The prefix of every override variable.
pub const ENV_PREFIX: &str = "SESSIOND_";
/// The largest accepted `server.max_body_bytes` (16 MiB).
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The largest accepted duration in seconds for TTL-like keys (ten years); keeps every
/// `now + seconds` computation far from overflow.
pub const MAX_SECONDS: i64 = 10 * 365 * 24 * 3600;
/// The largest accepted `tokens.leeway_seconds`.
pub const MAX_LEEWAY_SECONDS: i64 = 3600;
/// The minimal length of an API key, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;

/// The algorithm names of the contract, in the order they are listed in error messages.
pub const ALGORITHM_NAMES: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A configuration problem. `Display` is the message for the operator; it names the key (and
/// the environment variable, when the value came from one) and never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: Option<String>,
    text: String,
}

impl ConfigError {
    /// An error not about one key (I/O on the config file, TOML syntax, ...).
    pub fn general(text: impl Into<String>) -> Self {
        ConfigError { key: None, text: text.into() }
    }

    /// `config key <key>: <message>`.
    pub fn at_key(key: impl Into<String>, message: impl fmt::Display) -> Self {
        let key = key.into();
        let text = format!("config key {key}: {message}");
        ConfigError { key: Some(key), text }
    }

    /// `unknown config key <key>`.
    fn unknown_key(key: impl Into<String>) -> Self {
        let key = key.into();
        let text = format!("unknown config key {key}");
        ConfigError { key: Some(key), text }
    }

    /// The key this error is about (`server.workers`, `tokens.public_keys[0].alg`), if any.
    #[cfg_attr(not(test), allow(dead_code))] // for callers that want the key alone; tests
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Prefix the message with the name of the environment variable the key's value came
    /// from, if it came from one.
    fn with_origin(mut self, origins: &BTreeMap<String, String>) -> Self {
        if let Some(key) = &self.key
            && let Some(var) = origin_of(key, origins)
        {
            self.text = format!("{var}: {}", self.text);
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ConfigError {}

/// The variable that set `key` or one of its parents (`tokens.public_keys` for
/// `tokens.public_keys[0].alg`).
fn origin_of<'a>(key: &str, origins: &'a BTreeMap<String, String>) -> Option<&'a str> {
    origins.iter().find_map(|(k, var)| {
        let rest = key.strip_prefix(k.as_str())?;
        (rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')).then_some(var.as_str())
    })
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The whole configuration. Every field is public; build one with [`load`] (or
/// `Config::default()` for the contract's defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tokens: TokensConfig,
    pub sessions: SessionsConfig,
    pub fallback: FallbackConfig,
    pub breaker: BreakerConfig,
    pub degraded: DegradedConfig,
    pub api: ApiConfig,
    pub ws: WsConfig,
    /// Facts about where the values came from (not configuration keys).
    #[serde(skip)]
    meta: LoadMeta,
}

/// Where the configuration came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LoadMeta {
    /// The config file, if one was read.
    source_path: Option<PathBuf>,
    /// `fallback.data_dir` was set by the file or the environment.
    data_dir_explicit: bool,
    /// The first entry of `$STATE_DIRECTORY` at load time (systemd's `StateDirectory=`).
    state_directory: Option<PathBuf>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The HTTP listen address, `IP:PORT` (validated at load; see [`ServerConfig::listen_addr`]).
    pub listen: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// The largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: "127.0.0.1:8080".to_owned(), workers: 0, max_body_bytes: 65536 }
    }
}

impl ServerConfig {
    /// `listen` as a socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::at_key(
                "server.listen",
                format!(
                    "{:?} is not a socket address (expected IP:PORT, e.g. 127.0.0.1:8080 or \
                     [::]:8080)",
                    self.listen
                ),
            )
        })
    }
}

/// `[tokens]`. `Debug` never shows the HMAC secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Accepted algorithm names (`HS256` … `EdDSA`).
    pub algorithms: Vec<String>,
    /// The HMAC secret itself (its UTF-8 bytes); empty: none.
    pub hmac_secret: String,
    /// A file holding the HMAC secret; empty: none.
    pub hmac_secret_file: PathBuf,
    /// Public keys (PEM files).
    pub public_keys: Vec<PublicKeyConfig>,
    /// Required `iss`; empty: not checked.
    pub issuer: String,
    /// Required `aud`; empty: not checked.
    pub audience: String,
    /// Leeway for time checks (0..=3600).
    pub leeway_seconds: i64,
    /// `refresh_recommended` and `session.expiring` fire this long before expiry (≥ 0).
    pub refresh_window_seconds: i64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            algorithms: vec!["HS256".to_owned()],
            hmac_secret: String::new(),
            hmac_secret_file: PathBuf::new(),
            public_keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_seconds: 30,
            refresh_window_seconds: 300,
        }
    }
}

impl fmt::Debug for TokensConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokensConfig")
            .field("algorithms", &self.algorithms)
            .field("hmac_secret", &redacted(!self.hmac_secret.is_empty()))
            .field("hmac_secret_file", &self.hmac_secret_file)
            .field("public_keys", &self.public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("refresh_window_seconds", &self.refresh_window_seconds)
            .finish()
    }
}

impl TokensConfig {
    /// Whether any token key is configured (HMAC secret, secret file or public key).
    pub fn has_key(&self) -> bool {
        !self.hmac_secret.is_empty()
            || !self.hmac_secret_file.as_os_str().is_empty()
            || !self.public_keys.is_empty()
    }
}

/// One `tokens.public_keys` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// The key id tokens name it by.
    #[serde(default)]
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub kid: Option<String>,
    /// The one algorithm the key verifies.
    pub alg: String,
    /// The PEM file.
    pub pem_file: PathBuf,
}

/// `[sessions]`. `Debug` hides a password in `redis_url`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Redis URL; empty: embedded store only.
    pub redis_url: String,
    /// Prefix of every Redis key and channel.
    pub key_prefix: String,
    /// No session is ever set to expire further ahead than this (≥ 1).
    pub max_ttl_seconds: i64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            redis_url: String::new(),
            key_prefix: "sessiond".to_owned(),
            max_ttl_seconds: 86400,
        }
    }
}

impl SessionsConfig {
    /// `redis_url` with any password replaced by `***`, for logs and `Debug`.
    pub fn redis_url_for_log(&self) -> String {
        redact_url_password(&self.redis_url)
    }
}

impl fmt::Debug for SessionsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionsConfig")
            .field("redis_url", &self.redis_url_for_log())
            .field("key_prefix", &self.key_prefix)
            .field("max_ttl_seconds", &self.max_ttl_seconds)
            .finish()
    }
}

/// `fallback.fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before acknowledging every write.
    Always,
    /// fsync every `fsync_interval_ms`.
    Interval,
    /// Leave it to the OS.
    Never,
}

/// `[fallback]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// The data directory as configured; use [`Config::data_dir`] for the resolved one.
    pub data_dir: PathBuf,
    /// When the durable log is fsynced.
    pub fsync: FsyncPolicy,
    /// The period for `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// Extension: the most entries (sessions plus revocation tombstones) the store holds.
    pub max_entries: usize,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            data_dir: PathBuf::from("data"),
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 1000,
            max_entries: 2_000_000,
        }
    }
}

/// `[breaker]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Successes in half-open that close it.
    pub success_threshold: u32,
    /// How long it stays open before trial calls.
    pub open_seconds: u64,
    /// A call slower than this counts as a failure.
    pub op_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            success_threshold: 2,
            open_seconds: 5,
            op_timeout_ms: 250,
        }
    }
}

/// `degraded.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum DegradedPolicy {
    /// Accept an unknown session on the token alone.
    JwtOnly,
    /// Answer 503 `store_unavailable`.
    FailClosed,
}

/// `[degraded]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct DegradedConfig {
    /// What to do with a session the instance does not know while degraded.
    pub policy: DegradedPolicy,
}

impl Default for DegradedConfig {
    fn default() -> Self {
        DegradedConfig { policy: DegradedPolicy::JwtOnly }
    }
}

/// `[api]`. `Debug` never shows a key.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Service keys for the management routes.
    pub keys: Vec<String>,
    /// A file with more keys, one a line.
    pub keys_file: PathBuf,
}

impl ApiConfig {
    /// Whether any API key source is configured.
    pub fn has_key(&self) -> bool {
        !self.keys.is_empty() || !self.keys_file.as_os_str().is_empty()
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("keys_file", &self.keys_file)
            .finish()
    }
}

/// `[ws]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// The upgrade path.
    pub path: String,
    /// Allowed `Origin`s; empty: any (and no cookie auth).
    pub allowed_origins: Vec<String>,
    /// The cookie a token may come from.
    pub cookie_name: String,
    /// Accept `?access_token=`.
    pub allow_query_token: bool,
    /// Server ping period.
    pub heartbeat_interval_seconds: u64,
    /// A silent client is dropped after this.
    pub client_timeout_seconds: u64,
    /// The largest accepted client message.
    pub max_message_bytes: usize,
    /// Outbound frames queued per connection before it is closed with 1013.
    pub outbound_queue: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: "/ws".to_owned(),
            allowed_origins: Vec::new(),
            cookie_name: "session_token".to_owned(),
            allow_query_token: false,
            heartbeat_interval_seconds: 15,
            client_timeout_seconds: 45,
            max_message_bytes: 4096,
            outbound_queue: 256,
        }
    }
}

fn redacted(set: bool) -> &'static str {
    if set { "<redacted>" } else { "" }
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                // `redis://password@host` style: the whole userinfo may be the password.
                "***".to_owned()
            };
            format!("{scheme}://{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The schema: every key and its value kind (drives env overrides and unknown-key detection)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    TableList,
}

use Kind::{Bool, Int, Str, StrList, TableList};

const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    ("server", &[("listen", Str), ("workers", Int), ("max_body_bytes", Int)]),
    (
        "tokens",
        &[
            ("algorithms", StrList),
            ("hmac_secret", Str),
            ("hmac_secret_file", Str),
            ("public_keys", TableList),
            ("issuer", Str),
            ("audience", Str),
            ("leeway_seconds", Int),
            ("refresh_window_seconds", Int),
        ],
    ),
    ("sessions", &[("redis_url", Str), ("key_prefix", Str), ("max_ttl_seconds", Int)]),
    (
        "fallback",
        &[("data_dir", Str), ("fsync", Str), ("fsync_interval_ms", Int), ("max_entries", Int)],
    ),
    (
        "breaker",
        &[
            ("failure_threshold", Int),
            ("success_threshold", Int),
            ("open_seconds", Int),
            ("op_timeout_ms", Int),
        ],
    ),
    ("degraded", &[("policy", Str)]),
    ("api", &[("keys", StrList), ("keys_file", Str)]),
    (
        "ws",
        &[
            ("path", Str),
            ("allowed_origins", StrList),
            ("cookie_name", Str),
            ("allow_query_token", Bool),
            ("heartbeat_interval_seconds", Int),
            ("client_timeout_seconds", Int),
            ("max_message_bytes", Int),
            ("outbound_queue", Int),
        ],
    ),
];

/// The keys of one `tokens.public_keys` entry.
const PUBLIC_KEY_FIELDS: [&str; 3] = ["kid", "alg", "pem_file"];

/// Keys whose values are secrets: their values never appear in an error.
fn is_secret_key(key: &str) -> bool {
    key == "tokens.hmac_secret" || key == "api.keys" || key.starts_with("api.keys[")
}

fn schema_kind(section: &str, key: &str) -> Option<Kind> {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)
        .and_then(|(_, keys)| keys.iter().find(|(k, _)| *k == key))
        .map(|(_, kind)| *kind)
}

fn section_known(section: &str) -> bool {
    SCHEMA.iter().any(|(s, _)| *s == section)
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Load the configuration: the file `path`, else the file named by `$SESSIOND_CONFIG`, else
/// the defaults; then the `SESSIOND_<SECTION>__<KEY>` overrides of the process environment;
/// then validation.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let env = process_env()?;
    let file: Option<PathBuf> = match path {
        Some(p) => Some(p.to_path_buf()),
        None => env
            .iter()
            .find(|(k, v)| k == CONFIG_ENV && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v)),
    };
    match file {
        Some(file) => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::general(format!("cannot read config file {}: {e}", file.display()))
            })?;
            let mut config = load_inner(Some((&file.display().to_string(), &text)), env)?;
            config.meta.source_path = Some(file);
            Ok(config)
        }
        None => load_inner(None, env),
    }
}

/// [`load`] from given TOML text (`None`: defaults) and environment, for tests and tools.
#[cfg_attr(not(test), allow(dead_code))]
pub fn load_from(
    toml_text: Option<&str>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    load_inner(toml_text.map(|t| ("config", t)), env)
}

/// The variables of the process environment that the loader looks at. A `SESSIOND_*`
/// variable whose value is not UTF-8 is an error; other non-UTF-8 variables are ignored.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let relevant = name.eq_ignore_ascii_case("STATE_DIRECTORY") || has_env_prefix(name);
        if !relevant {
            continue;
        }
        match value.into_string() {
            Ok(v) => out.push((name.to_owned(), v)),
            Err(_) if has_env_prefix(name) => {
                return Err(ConfigError::general(format!("{name}: value is not UTF-8")));
            }
            Err(v) => out.push((name.to_owned(), v.to_string_lossy().into_owned())),
        }
    }
    Ok(out)
}

fn has_env_prefix(name: &str) -> bool {
    name.len() >= ENV_PREFIX.len()
        && name.is_char_boundary(ENV_PREFIX.len())
        && name[..ENV_PREFIX.len()].eq_ignore_ascii_case(ENV_PREFIX)
}

/// `source`: (name for messages, TOML text).
fn load_inner(
    source: Option<(&str, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table = match source {
        Some((name, text)) => parse_toml(name, text)?,
        None => toml::Table::new(),
    };
    check_unknown_keys(&table)?;
    let mut data_dir_explicit = table
        .get("fallback")
        .and_then(toml::Value::as_table)
        .is_some_and(|t| t.contains_key("data_dir"));

    // Environment: overrides and STATE_DIRECTORY.
    let mut state_directory = None;
    let mut overrides: BTreeMap<String, (String, String, Kind)> = BTreeMap::new();
    for (name, value) in env {
        if name == "STATE_DIRECTORY" {
            state_directory = value.split(':').find(|s| !s.is_empty()).map(PathBuf::from);
            continue;
        }
        if !has_env_prefix(&name) || name.eq_ignore_ascii_case(CONFIG_ENV) {
            continue;
        }
        let rest = &name[ENV_PREFIX.len()..];
        let Some((section, key)) = rest.split_once("__") else {
            continue; // e.g. SESSIOND_API_KEY: not an override
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let path = format!("{section}.{key}");
        let kind = if section_known(&section) { schema_kind(&section, &key) } else { None };
        let Some(kind) = kind else {
            return Err(ConfigError::general(format!("{name}: unknown config key {path}")));
        };
        if let Some((other, _, _)) = overrides.get(&path) {
            return Err(ConfigError::general(format!(
                "{other} and {name} both set config key {path}"
            )));
        }
        overrides.insert(path, (name, value, kind));
    }

    let mut origins = BTreeMap::new();
    for (path, (var, value, kind)) in overrides {
        let Some((section, key)) = path.split_once('.') else {
            continue;
        };
        let parsed = env_value(&var, &path, &value, kind)?;
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(ConfigError::at_key(section, "expected a table"));
        };
        section_table.insert(key.to_owned(), parsed);
        if path == "fallback.data_dir" {
            data_dir_explicit = true;
        }
        origins.insert(path, var);
    }
    // Entries of a `public_keys` array set by the environment are checked too.
    check_unknown_keys(&table).map_err(|e| e.with_origin(&origins))?;

    let mut config: Config = serde_path_to_error::deserialize(table).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let message = if is_secret_key(&key) {
            "invalid type or value (not shown: this key holds a secret)".to_owned()
        } else {
            inner.message().to_owned()
        };
        ConfigError::at_key(key, message).with_origin(&origins)
    })?;
    config.meta = LoadMeta { source_path: None, data_dir_explicit, state_directory };
    config.validate().map_err(|e| e.with_origin(&origins))?;
    Ok(config)
}

/// Parse TOML; syntax errors carry the source name, line and column, but never the text of
/// the line (it could hold a secret).
fn parse_toml(name: &str, text: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str::<toml::Table>(text).map_err(|e| {
        let message = e.message().trim_end();
        match e.span() {
            Some(span) => {
                let (line, column) = line_col(text, span.start);
                ConfigError::general(format!(
                    "{name}: TOML syntax error at line {line}, column {column}: {message}"
                ))
            }
            None => ConfigError::general(format!("{name}: TOML syntax error: {message}")),
        }
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit_once('\n').map_or(before, |(_, l)| l).chars().count() + 1;
    (line, column)
}

/// Refuse unknown sections, keys and `public_keys` entry fields.
fn check_unknown_keys(table: &toml::Table) -> Result<(), ConfigError> {
    for (section, value) in table {
        if !section_known(section) {
            return Err(ConfigError::unknown_key(section.clone()));
        }
        let Some(keys) = value.as_table() else {
            continue; // a type error, reported by serde with its key
        };
        for (key, value) in keys {
            if schema_kind(section, key).is_none() {
                return Err(ConfigError::unknown_key(format!("{section}.{key}")));
            }
            if section == "tokens"
                && key == "public_keys"
                && let Some(entries) = value.as_array()
            {
                for (i, entry) in entries.iter().enumerate() {
                    let Some(entry) = entry.as_table() else {
                        continue;
                    };
                    if let Some(field) =
                        entry.keys().find(|f| !PUBLIC_KEY_FIELDS.contains(&f.as_str()))
                    {
                        return Err(ConfigError::unknown_key(format!(
                            "tokens.public_keys[{i}].{field}"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Type an environment value after the key's kind. Values that do not parse as the kind are
/// passed on as strings so that the deserializer reports them with the key and the expected
/// type.
fn env_value(var: &str, path: &str, value: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let trimmed = value.trim();
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_owned()),
        Kind::Int => trimmed
            .parse::<i64>()
            .map_or_else(|_| toml::Value::String(value.to_owned()), toml::Value::Integer),
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => toml::Value::String(value.to_owned()),
        },
        Kind::StrList | Kind::TableList if trimmed.starts_with('[') => {
            let doc = format!("v = {trimmed}");
            let mut parsed = toml::from_str::<toml::Table>(&doc).map_err(|e| {
                ConfigError::general(format!(
                    "{var}: config key {path}: not a TOML array literal: {}",
                    e.message().trim_end()
                ))
            })?;
            parsed.remove("v").unwrap_or(toml::Value::Array(Vec::new()))
        }
        Kind::StrList => toml::Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Kind::TableList if trimmed.is_empty() => toml::Value::Array(Vec::new()),
        Kind::TableList => {
            return Err(ConfigError::general(format!(
                "{var}: config key {path}: expected a TOML array literal, e.g. \
                 [{{kid = \"k1\", alg = \"RS256\", pem_file = \"/etc/sessiond/k1.pem\"}}]"
            )));
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// The algorithm a contract name stands for (exact case). Uses the token module's parser and
/// falls back to the contract's own list.
pub fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    if !ALGORITHM_NAMES.contains(&name) {
        return None;
    }
    parse_algorithm(name).or_else(|| contract_algorithm(name))
}

fn contract_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Whether an algorithm name is an HMAC one.
pub fn is_hmac_name(name: &str) -> bool {
    matches!(name, "HS256" | "HS384" | "HS512")
}

fn algorithm_error(name: &str) -> String {
    if name.eq_ignore_ascii_case("none") {
        "algorithm \"none\" is never accepted".to_owned()
    } else {
        format!("unknown algorithm {name:?} (expected one of {})", ALGORITHM_NAMES.join(", "))
    }
}

fn has_whitespace(s: &str) -> bool {
    s.chars().any(char::is_whitespace)
}

impl Config {
    /// Value validation; every error names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        fn err(key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
            ConfigError::at_key(key, message)
        }

        // [server]
        let s = &self.server;
        s.listen_addr()?;
        if s.max_body_bytes == 0 || s.max_body_bytes > MAX_BODY_LIMIT {
            return Err(err(
                "server.max_body_bytes",
                format!(
                    "must be between 1 and {MAX_BODY_LIMIT} (16 MiB), got {}",
                    s.max_body_bytes
                ),
            ));
        }

        // [tokens]
        let t = &self.tokens;
        if t.algorithms.is_empty() {
            return Err(err("tokens.algorithms", "must list at least one algorithm"));
        }
        for (i, name) in t.algorithms.iter().enumerate() {
            if algorithm_from_name(name).is_none() {
                return Err(err(format!("tokens.algorithms[{i}]"), algorithm_error(name)));
            }
        }
        let mut kids: Vec<&str> = Vec::new();
        for (i, pk) in t.public_keys.iter().enumerate() {
            if let Some(kid) = &pk.kid {
                if kid.is_empty() {
                    return Err(err(
                        format!("tokens.public_keys[{i}].kid"),
                        "must not be empty (omit it for a key without kid)",
                    ));
                }
                if kids.contains(&kid.as_str()) {
                    return Err(err(
                        format!("tokens.public_keys[{i}].kid"),
                        format!("duplicate kid {kid:?}"),
                    ));
                }
                kids.push(kid);
            }
            let alg_key = format!("tokens.public_keys[{i}].alg");
            if algorithm_from_name(&pk.alg).is_none() {
                return Err(err(alg_key, algorithm_error(&pk.alg)));
            }
            if is_hmac_name(&pk.alg) {
                return Err(err(
                    alg_key,
                    format!(
                        "{} is an HMAC algorithm; configure HMAC secrets with \
                         tokens.hmac_secret or tokens.hmac_secret_file",
                        pk.alg
                    ),
                ));
            }
            if !t.algorithms.contains(&pk.alg) {
                return Err(err(alg_key, format!("{} is not listed in tokens.algorithms", pk.alg)));
            }
            if pk.pem_file.as_os_str().is_empty() {
                return Err(err(format!("tokens.public_keys[{i}].pem_file"), "must not be empty"));
            }
        }
        if !t.hmac_secret.is_empty() && !t.hmac_secret_file.as_os_str().is_empty() {
            return Err(err(
                "tokens.hmac_secret",
                "set either tokens.hmac_secret or tokens.hmac_secret_file, not both",
            ));
        }
        if !(0..=MAX_LEEWAY_SECONDS).contains(&t.leeway_seconds) {
            return Err(err(
                "tokens.leeway_seconds",
                format!("must be between 0 and {MAX_LEEWAY_SECONDS}, got {}", t.leeway_seconds),
            ));
        }
        if !(0..=MAX_SECONDS).contains(&t.refresh_window_seconds) {
            return Err(err(
                "tokens.refresh_window_seconds",
                format!(
                    "must be between 0 and {MAX_SECONDS} (ten years), got {}",
                    t.refresh_window_seconds
                ),
            ));
        }

        // [sessions]
        let se = &self.sessions;
        if !se.redis_url.is_empty()
            && !["redis://", "rediss://", "unix://"].iter().any(|p| se.redis_url.starts_with(p))
        {
            // The URL itself is not shown: it may hold a password.
            return Err(err(
                "sessions.redis_url",
                "must be empty or start with redis://, rediss:// or unix://",
            ));
        }
        if se.key_prefix.is_empty() || has_whitespace(&se.key_prefix) {
            return Err(err("sessions.key_prefix", "must be non-empty and contain no whitespace"));
        }
        if !(1..=MAX_SECONDS).contains(&se.max_ttl_seconds) {
            return Err(err(
                "sessions.max_ttl_seconds",
                format!(
                    "must be between 1 and {MAX_SECONDS} (ten years), got {}",
                    se.max_ttl_seconds
                ),
            ));
        }

        // [fallback]
        let fb = &self.fallback;
        if fb.data_dir.as_os_str().is_empty() {
            return Err(err("fallback.data_dir", "must not be empty"));
        }
        if fb.fsync_interval_ms == 0 {
            return Err(err("fallback.fsync_interval_ms", "must be at least 1"));
        }
        if fb.max_entries == 0 {
            return Err(err("fallback.max_entries", "must be at least 1"));
        }

        // [breaker]
        let b = &self.breaker;
        for (key, value) in [
            ("breaker.failure_threshold", u64::from(b.failure_threshold)),
            ("breaker.success_threshold", u64::from(b.success_threshold)),
            ("breaker.open_seconds", b.open_seconds),
            ("breaker.op_timeout_ms", b.op_timeout_ms),
        ] {
            if value == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }

        // [api]: keys are checked by `api_keys()`; only the inline ones here, so that a bad
        // inline key is refused at load time.
        for (i, key) in self.api.keys.iter().enumerate() {
            check_api_key(key).map_err(|m| err(format!("api.keys[{i}]"), m))?;
        }

        // [ws]
        let w = &self.ws;
        if !w.path.starts_with('/') || has_whitespace(&w.path) {
            return Err(err(
                "ws.path",
                format!("must start with / and contain no whitespace, got {:?}", w.path),
            ));
        }
        for (i, origin) in w.allowed_origins.iter().enumerate() {
            check_origin(origin).map_err(|m| err(format!("ws.allowed_origins[{i}]"), m))?;
        }
        if w.cookie_name.is_empty()
            || w.cookie_name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "()<>@,;:\\\"/[]?={}".contains(c))
        {
            return Err(err(
                "ws.cookie_name",
                format!("must be a valid cookie name, got {:?}", w.cookie_name),
            ));
        }
        if w.heartbeat_interval_seconds == 0 {
            return Err(err("ws.heartbeat_interval_seconds", "must be at least 1"));
        }
        if w.heartbeat_interval_seconds >= w.client_timeout_seconds {
            return Err(err(
                "ws.heartbeat_interval_seconds",
                format!(
                    "must be less than ws.client_timeout_seconds ({} >= {})",
                    w.heartbeat_interval_seconds, w.client_timeout_seconds
                ),
            ));
        }
        if w.max_message_bytes < 64 {
            return Err(err(
                "ws.max_message_bytes",
                format!("must be at least 64, got {}", w.max_message_bytes),
            ));
        }
        if w.outbound_queue == 0 {
            return Err(err("ws.outbound_queue", "must be at least 1"));
        }
        Ok(())
    }

    /// `fallback.fsync` and `fallback.fsync_interval_ms` as the store's fsync mode.
    pub fn fsync_mode(&self) -> FsyncMode {
        match self.fallback.fsync {
            FsyncPolicy::Always => FsyncMode::Always,
            FsyncPolicy::Interval => {
                FsyncMode::Interval(Duration::from_millis(self.fallback.fsync_interval_ms))
            }
            FsyncPolicy::Never => FsyncMode::Never,
        }
    }

    /// The data directory: `fallback.data_dir`, except that when neither the file nor the
    /// environment set it and systemd's `$STATE_DIRECTORY` was set at load time, the first
    /// entry of `$STATE_DIRECTORY`.
    pub fn data_dir(&self) -> PathBuf {
        match (&self.meta.state_directory, self.meta.data_dir_explicit) {
            (Some(state), false) => state.clone(),
            _ => self.fallback.data_dir.clone(),
        }
    }

    /// The config file the values came from, if any.
    pub fn source_path(&self) -> Option<&Path> {
        self.meta.source_path.as_deref()
    }

    /// The accepted algorithms (validated at load time).
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        self.tokens
            .algorithms
            .iter()
            .enumerate()
            .map(|(i, name)| {
                algorithm_from_name(name).ok_or_else(|| {
                    ConfigError::at_key(format!("tokens.algorithms[{i}]"), algorithm_error(name))
                })
            })
            .collect()
    }

    /// The HMAC secret's bytes, if one is configured: `tokens.hmac_secret`'s UTF-8 bytes, or
    /// the content of `tokens.hmac_secret_file` less one trailing `\n` or `\r\n`.
    pub fn hmac_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let t = &self.tokens;
        if !t.hmac_secret.is_empty() {
            return Ok(Some(t.hmac_secret.as_bytes().to_vec()));
        }
        if t.hmac_secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let path = &t.hmac_secret_file;
        let mut bytes = read_secret_file("tokens.hmac_secret_file", path)?;
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.truncate(bytes.len() - 1);
        }
        if bytes.is_empty() {
            return Err(ConfigError::at_key(
                "tokens.hmac_secret_file",
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(bytes))
    }

    /// What the token verifier is built from: algorithms, HMAC secret and PEM files read.
    pub fn token_settings(&self) -> Result<TokenSettings, ConfigError> {
        let t = &self.tokens;
        let mut public_keys = Vec::with_capacity(t.public_keys.len());
        for (i, pk) in t.public_keys.iter().enumerate() {
            let key = format!("tokens.public_keys[{i}].pem_file");
            let alg = algorithm_from_name(&pk.alg).ok_or_else(|| {
                ConfigError::at_key(
                    format!("tokens.public_keys[{i}].alg"),
                    algorithm_error(&pk.alg),
                )
            })?;
            let pem = std::fs::read(&pk.pem_file).map_err(|e| {
                ConfigError::at_key(
                    key.clone(),
                    format!("cannot read {}: {e}", pk.pem_file.display()),
                )
            })?;
            public_keys.push(PublicKeySpec {
                kid: pk.kid.clone(),
                alg,
                pem,
                source: format!("tokens.public_keys[{i}]"),
            });
        }
        Ok(TokenSettings {
            algorithms: self.algorithms()?,
            hmac_secret: self.hmac_secret()?,
            public_keys,
            issuer: (!t.issuer.is_empty()).then(|| t.issuer.clone()),
            audience: (!t.audience.is_empty()).then(|| t.audience.clone()),
            leeway_seconds: t.leeway_seconds,
        })
    }

    /// The service keys: `api.keys`, then the lines of `api.keys_file` (trimmed; blank lines
    /// and `#` comments skipped). Each must be at least 16 characters without whitespace;
    /// errors name the key's position, never the key.
    pub fn api_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys = Vec::new();
        for (i, key) in self.api.keys.iter().enumerate() {
            check_api_key(key).map_err(|m| ConfigError::at_key(format!("api.keys[{i}]"), m))?;
            keys.push(key.clone());
        }
        let path = &self.api.keys_file;
        if !path.as_os_str().is_empty() {
            let bytes = read_secret_file("api.keys_file", path)?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ConfigError::at_key(
                    "api.keys_file",
                    format!("{} is not UTF-8 text", path.display()),
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                check_api_key(line).map_err(|m| {
                    ConfigError::at_key(
                        "api.keys_file",
                        format!("{} line {}: {m}", path.display(), n + 1),
                    )
                })?;
                keys.push(line.to_owned());
            }
        }
        Ok(keys)
    }
}

/// Read a file holding secrets; errors name the key and path, never the content. Warns when
/// the file is readable by group or others.
fn read_secret_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::at_key(key, format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "{key}: {} is readable by group or others; consider chmod 600",
                path.display()
            );
        }
    }
    Ok(bytes)
}

fn check_api_key(key: &str) -> Result<(), String> {
    if has_whitespace(key) {
        return Err("an API key must not contain whitespace".to_owned());
    }
    let n = key.chars().count();
    if n < MIN_API_KEY_CHARS {
        return Err(format!(
            "an API key must be at least {MIN_API_KEY_CHARS} characters (this one has {n})"
        ));
    }
    Ok(())
}

/// An allowed origin is `http(s)://host[:port]`, exactly as browsers send it.
fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('/') && !has_whitespace(host) => Ok(()),
        _ => Err(format!(
            "{origin:?} is not an origin (expected scheme://host[:port] without path or \
             trailing slash, e.g. https://app.example.com)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// Everything `check-config` verifies beyond parsing: the token key material and API keys are
/// readable and well-formed, and the token verifier accepts the key ring.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let settings = config.token_settings()?;
    config.api_keys()?;
    sessiond_actors::token::Verifier::new(settings)
        .map_err(|e| ConfigError::general(format!("tokens: {e}")))?;
    Ok(())
}

/// `sessiond check-config`: prints `config OK …` to stdout and returns 0, or prints the reason
/// to stderr and returns 1.
pub fn run_check_config(path: Option<&Path>) -> i32 {
    match load(path).and_then(|c| check(&c).map(|()| c)) {
        Ok(config) => {
            let line = format!(
                "config OK: listen {}, data dir {}",
                config.server.listen,
                config.data_dir().display()
            );
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Err(e) => {
            eprintln!("sessiond: config error: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;

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
redis_url = "rediss://:pw@redis:6380/0"
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
            e.to_string()
                .starts_with("SESSIOND_TOKENS__PUBLIC_KEYS: config key tokens.public_keys"),
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
            // Once the token module's parser is implemented, it must agree.
            if let Some(alg) = parse_algorithm(name) {
                assert_eq!(Some(alg), contract_algorithm(name), "{name}");
            }
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
}
