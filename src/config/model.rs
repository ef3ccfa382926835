//! The sections of the configuration: one struct per `[section]`, their enums and the
//! contract's defaults. `Debug` never shows a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

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
    /// Extension: the most open HTTP connections (WebSockets included) in total; beyond it
    /// new connections wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Extension: how long a client gets to send a request's head (slow clients get 408).
    pub client_request_timeout_ms: u64,
    /// Extension: how long one request may take once its head is in, its body included
    /// (beyond: 408 `request_timeout`, connection closed).
    pub request_timeout_ms: u64,
    /// Extension: how long an idle keep-alive connection is kept (0: no keep-alive).
    pub keep_alive_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".to_owned(),
            workers: 0,
            max_body_bytes: 65536,
            max_connections: 25_000,
            client_request_timeout_ms: 5000,
            request_timeout_ms: 10_000,
            keep_alive_seconds: 5,
        }
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
    /// The data directory as configured; use [`Config::data_dir`](super::Config::data_dir) for
    /// the resolved one.
    pub data_dir: PathBuf,
    /// When the durable log is fsynced.
    pub fsync: FsyncPolicy,
    /// The period for `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// Extension: the most entries (sessions plus revocation tombstones) the store holds.
    pub max_entries: usize,
    /// Extension: the most writes taken while degraded that wait for replay into Redis.
    pub max_journal_entries: usize,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            data_dir: PathBuf::from("data"),
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 1000,
            max_entries: 2_000_000,
            max_journal_entries: 1_000_000,
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
    /// Extension: the most WebSocket connections held (beyond: 503 `too_many_connections`).
    pub max_connections: usize,
    /// Extension: the most WebSocket connections of one user (beyond: 429).
    pub max_connections_per_user: usize,
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
            max_connections: 20_000,
            max_connections_per_user: 100,
        }
    }
}

fn redacted(set: bool) -> &'static str {
    if set { "<redacted>" } else { "" }
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`.
pub(super) fn redact_url_password(url: &str) -> String {
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
