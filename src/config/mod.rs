//! The configuration model and loader (CONTRACT.md section 7).
//!
//! One TOML file (`--config FILE` or `SESSIOND_CONFIG`), then environment overrides
//! `SESSIOND_<SECTION>__<KEY>`, then value validation. Every error names the key it is about;
//! no error and no `Debug` output ever shows a secret (HMAC secret, API key, Redis password).
//!
//! See `docs/configuration.md` for the reference of every key.
//!
//! The parts: [`model`] (the sections and their defaults), [`schema`] (every key and its
//! kind), [`env`](mod@env) (the overrides), [`validate`] (value rules), [`algorithm`]
//! (algorithm names), [`files`] (the key material files), [`errors`] ([`ConfigError`]).

mod algorithm;
mod env;
mod errors;
mod files;
mod model;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sessiond_actors::store::FsyncMode;
use sessiond_actors::token::Algorithm;

// The public API, at the paths it had when this module was one file (`crate::config::X`). Not
// every item has a user outside the module, hence the `allow`s.
pub use algorithm::{algorithm_from_name, is_hmac_name};
pub use errors::ConfigError;
pub use model::{
    ApiConfig, BreakerConfig, DegradedConfig, DegradedPolicy, FallbackConfig, FsyncPolicy,
    ServerConfig, SessionsConfig, TokensConfig, WsConfig,
};

use algorithm::algorithm_error;
use env::CONFIG_ENV;
use env::{EnvOverrides, apply_overrides, process_env};
use schema::{check_unknown_keys, is_secret_key};

// ---------------------------------------------------------------------------------------------
// The configuration
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

impl Config {
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
    let data_dir_in_file = table
        .get("fallback")
        .and_then(toml::Value::as_table)
        .is_some_and(|t| t.contains_key("data_dir"));

    // Environment: overrides and STATE_DIRECTORY.
    let EnvOverrides { state_directory, data_dir_set, origins } = apply_overrides(&mut table, env)?;
    let data_dir_explicit = data_dir_in_file || data_dir_set;
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
