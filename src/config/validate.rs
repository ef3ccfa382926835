//! Value validation: the ranges and formats of the contract. Every error names its key.

use std::fmt;

use super::algorithm::{algorithm_error, algorithm_from_name, is_hmac_name};
use super::{Config, ConfigError};

/// The largest accepted `server.max_body_bytes` (16 MiB).
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The largest accepted duration in seconds for TTL-like keys (ten years); keeps every
/// `now + seconds` computation far from overflow.
pub const MAX_SECONDS: i64 = 10 * 365 * 24 * 3600;
/// The largest accepted `tokens.leeway_seconds`.
pub const MAX_LEEWAY_SECONDS: i64 = 3600;
/// The minimal length of an API key, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;

fn has_whitespace(s: &str) -> bool {
    s.chars().any(char::is_whitespace)
}

impl Config {
    /// Value validation; every error names its key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        if s.max_connections == 0 {
            return Err(err("server.max_connections", "must be at least 1"));
        }
        if s.client_request_timeout_ms == 0 {
            return Err(err("server.client_request_timeout_ms", "must be at least 1"));
        }
        if s.request_timeout_ms == 0 {
            return Err(err("server.request_timeout_ms", "must be at least 1"));
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
        if se.redis_url.starts_with("rediss://") {
            return Err(err(
                "sessions.redis_url",
                "rediss:// (TLS) is not supported by this build; use redis:// or unix://, or a \
                 local TLS terminator",
            ));
        }
        if !se.redis_url.is_empty()
            && !["redis://", "unix://"].iter().any(|p| se.redis_url.starts_with(p))
        {
            // The URL itself is not shown: it may hold a password.
            return Err(err(
                "sessions.redis_url",
                "must be empty or start with redis:// or unix://",
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
        if fb.max_journal_entries == 0 {
            return Err(err("fallback.max_journal_entries", "must be at least 1"));
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
        if w.max_connections == 0 {
            return Err(err("ws.max_connections", "must be at least 1"));
        }
        if w.max_connections_per_user == 0 || w.max_connections_per_user > w.max_connections {
            return Err(err(
                "ws.max_connections_per_user",
                format!("must be from 1 to ws.max_connections ({})", w.max_connections),
            ));
        }
        Ok(())
    }
}

pub(super) fn check_api_key(key: &str) -> Result<(), String> {
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
