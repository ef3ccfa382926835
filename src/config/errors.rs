//! [`ConfigError`]: a configuration problem that names its key and never shows a secret.

use std::collections::BTreeMap;
use std::fmt;

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
    pub(super) fn unknown_key(key: impl Into<String>) -> Self {
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
    pub(super) fn with_origin(mut self, origins: &BTreeMap<String, String>) -> Self {
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
