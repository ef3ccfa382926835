//! The key material the configuration names: the HMAC secret (inline or file), the PEM
//! files of the public keys and the API keys (inline or file). Errors name the key and the
//! path, never the content.

use std::path::Path;

use sessiond_actors::token::{PublicKeySpec, TokenSettings};

use super::algorithm::{algorithm_error, algorithm_from_name};
use super::validate::check_api_key;
use super::{Config, ConfigError};

impl Config {
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
