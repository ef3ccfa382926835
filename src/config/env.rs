//! The environment: the `SESSIOND_<SECTION>__<KEY>` overrides and `$STATE_DIRECTORY`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ConfigError;
use super::schema::{Kind, schema_kind, section_known};

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "SESSIOND_CONFIG";
/// The prefix of every override variable.
pub const ENV_PREFIX: &str = "SESSIOND_";

/// The variables of the process environment that the loader looks at. A `SESSIOND_*`
/// variable whose value is not UTF-8 is an error; other non-UTF-8 variables are ignored.
pub(super) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
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

/// What the environment contributed to the configuration.
pub(super) struct EnvOverrides {
    /// The first entry of `$STATE_DIRECTORY` (systemd's `StateDirectory=`), if set.
    pub(super) state_directory: Option<PathBuf>,
    /// `fallback.data_dir` was set by an override.
    pub(super) data_dir_set: bool,
    /// Every overridden key and the variable that set it.
    pub(super) origins: BTreeMap<String, String>,
}

/// Apply the `SESSIOND_<SECTION>__<KEY>` overrides of `env` to `table`, and note
/// `$STATE_DIRECTORY`. An unknown key, or one key set by two variables, is an error.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<EnvOverrides, ConfigError> {
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

    let mut data_dir_set = false;
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
            data_dir_set = true;
        }
        origins.insert(path, var);
    }
    Ok(EnvOverrides { state_directory, data_dir_set, origins })
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
