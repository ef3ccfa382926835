//! The schema: every key and its value kind. It drives the environment overrides and the
//! refusal of unknown keys.

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    TableList,
}

use Kind::{Bool, Int, Str, StrList, TableList};

pub(super) const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[
            ("listen", Str),
            ("workers", Int),
            ("max_body_bytes", Int),
            ("max_connections", Int),
            ("client_request_timeout_ms", Int),
            ("request_timeout_ms", Int),
            ("keep_alive_seconds", Int),
        ],
    ),
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
        &[
            ("data_dir", Str),
            ("fsync", Str),
            ("fsync_interval_ms", Int),
            ("max_entries", Int),
            ("max_journal_entries", Int),
        ],
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
            ("max_connections", Int),
            ("max_connections_per_user", Int),
        ],
    ),
];

/// The keys of one `tokens.public_keys` entry.
const PUBLIC_KEY_FIELDS: [&str; 3] = ["kid", "alg", "pem_file"];

/// Keys whose values are secrets: their values never appear in an error.
pub(super) fn is_secret_key(key: &str) -> bool {
    key == "tokens.hmac_secret" || key == "api.keys" || key.starts_with("api.keys[")
}

pub(super) fn schema_kind(section: &str, key: &str) -> Option<Kind> {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)
        .and_then(|(_, keys)| keys.iter().find(|(k, _)| *k == key))
        .map(|(_, kind)| *kind)
}

pub(super) fn section_known(section: &str) -> bool {
    SCHEMA.iter().any(|(s, _)| *s == section)
}

/// Refuse unknown sections, keys and `public_keys` entry fields.
pub(super) fn check_unknown_keys(table: &toml::Table) -> Result<(), ConfigError> {
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
