//! Key material for `serve --dev` and `mint-token --dev`.
//!
//! `serve --dev` generates, once, an HMAC secret and an API key into the data directory and
//! reuses them on every later run; `mint-token --dev` signs with that secret. The files are
//! created exclusively (`O_EXCL`) with mode 0600; their content is never printed or logged.

use std::fmt::Write as _;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, is_hmac_name};

/// The HMAC secret's file name in the data directory.
pub const SECRET_FILE: &str = "dev-hmac-secret";
/// The API key's file name in the data directory.
pub const API_KEY_FILE: &str = "dev-api-key";
/// The prefix of generated API keys.
pub const API_KEY_PREFIX: &str = "sk_dev_";

/// Where the development keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevKeys {
    /// The HMAC secret file (absolute).
    pub secret_path: PathBuf,
    /// The API key file (absolute).
    pub api_key_path: PathBuf,
    /// Whether this call generated (at least one of) them.
    pub created: bool,
}

/// Make sure the development keys exist in `data_dir`: create the directory (mode 0700) if it
/// is missing, and each key file that is missing (mode 0600, created exclusively, so a key is
/// generated once and reused afterwards, even with concurrent starts).
pub fn ensure_dev_keys(data_dir: &Path) -> io::Result<DevKeys> {
    let dir = std::path::absolute(data_dir)?;
    if !dir.is_dir() {
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    }
    let secret_path = dir.join(SECRET_FILE);
    let api_key_path = dir.join(API_KEY_FILE);
    let secret_created = create_once(&secret_path, || random_hex(32))?;
    let api_created =
        create_once(&api_key_path, || random_hex(20).map(|hex| format!("{API_KEY_PREFIX}{hex}")))?;
    Ok(DevKeys { secret_path, api_key_path, created: secret_created || api_created })
}

/// The development keys of `data_dir` if both files exist (`created` is false); `None` when
/// they have not been generated yet. Never creates anything.
pub fn find_dev_keys(data_dir: &Path) -> io::Result<Option<DevKeys>> {
    let dir = std::path::absolute(data_dir)?;
    let secret_path = dir.join(SECRET_FILE);
    let api_key_path = dir.join(API_KEY_FILE);
    if secret_path.is_file() && api_key_path.is_file() {
        Ok(Some(DevKeys { secret_path, api_key_path, created: false }))
    } else {
        Ok(None)
    }
}

/// Use the development keys where the configuration has none: the secret file as
/// `tokens.hmac_secret_file` when no token key is configured (no `hmac_secret`,
/// `hmac_secret_file` or `public_keys`), the API key file as `api.keys_file` when no API key
/// is configured.
pub fn apply_dev_keys(config: &mut Config, keys: &DevKeys) {
    if !config.tokens.has_key() {
        config.tokens.hmac_secret_file.clone_from(&keys.secret_path);
    }
    if !config.api.has_key() {
        config.api.keys_file.clone_from(&keys.api_key_path);
    }
}

/// Create `path` exclusively with mode 0600 and the generated content; `Ok(false)` when it
/// already exists (it is then reused, provided it is not empty).
fn create_once(path: &Path, generate: impl FnOnce() -> io::Result<String>) -> io::Result<bool> {
    let opened = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    match opened {
        Ok(mut file) => {
            let written = generate().and_then(|content| {
                // The mode given to open() is filtered by the umask; make sure it is 0600.
                file.set_permissions(Permissions::from_mode(0o600))?;
                file.write_all(content.as_bytes())?;
                file.sync_all()
            });
            if let Err(e) = written {
                // Do not leave an empty or partial key behind for the next run to reuse.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if std::fs::metadata(path)?.len() == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is empty; delete it to have a new key generated", path.display()),
                ));
            }
            Ok(false)
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))),
    }
}

/// `n` random bytes from the OS, as lowercase hex.
fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
    let mut hex = String::with_capacity(2 * n);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// Quote for a POSIX shell when needed.
fn shell_quote(s: &str) -> String {
    let safe =
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c));
    if safe { s.to_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// The address a local client reaches the listener at (unspecified → loopback).
fn client_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// What `serve --dev` prints to stdout: where the keys are and copy-paste commands to mint a
/// token and create, validate and revoke a session against `listen` (the address actually
/// bound; an unspecified IP is shown as loopback). Never contains the secret or the key.
pub fn dev_instructions(config: &Config, keys: &DevKeys, listen: SocketAddr) -> String {
    let secret_used = config.tokens.hmac_secret_file == keys.secret_path;
    let api_key_used = config.api.keys_file == keys.api_key_path;
    let data_dir = keys.secret_path.parent().unwrap_or(Path::new("."));
    let base = format!("http://{}", client_addr(listen));
    let secret_file = shell_quote(&keys.secret_path.display().to_string());
    let api_key_file = shell_quote(&keys.api_key_path.display().to_string());

    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line(&format!(
        "sessiond is running in development mode (do not use these keys in production).\n\
         Development keys in {} ({}):",
        data_dir.display(),
        if keys.created { "generated now, reused on later runs" } else { "reused" }
    ));
    if secret_used {
        line(&format!("  HMAC secret: {}  (tokens.hmac_secret_file)", keys.secret_path.display()));
    } else {
        line(&format!(
            "  HMAC secret: {}  (not used: the configuration has its own token keys)",
            keys.secret_path.display()
        ));
    }
    if api_key_used {
        line(&format!("  API key:     {}  (api.keys_file)", keys.api_key_path.display()));
    } else {
        line(&format!(
            "  API key:     {}  (not used: the configuration has its own API keys)",
            keys.api_key_path.display()
        ));
    }
    if !config.tokens.algorithms.iter().any(|a| is_hmac_name(a)) {
        line(
            "  Note: tokens.algorithms lists no HS256/HS384/HS512, so HMAC-signed tokens \
             (mint-token) are rejected; add HS256 to use them.",
        );
    }
    line("");

    let mut mint = String::from("mint-token --dev");
    if let Some(path) = config.source_path() {
        // Writing to a String cannot fail.
        let _ = write!(mint, " --config {}", shell_quote(&path.display().to_string()));
    }
    mint.push_str(" --format enhanced --user-id 42 --email ada@example.com --role admin --sid s-1");
    // mint-token --dev finds the keys through the data dir; say where when it came from
    // systemd's STATE_DIRECTORY, which another shell does not have.
    let env_prefix = if config.data_dir() == config.fallback.data_dir {
        String::new()
    } else {
        format!(
            "SESSIOND_FALLBACK__DATA_DIR={} ",
            shell_quote(&config.data_dir().display().to_string())
        )
    };

    line("Try it from another shell in this directory:");
    line("");
    if api_key_used {
        line(&format!("  export SESSIOND_API_KEY=$(cat {api_key_file})"));
    } else {
        line("  export SESSIOND_API_KEY=...   # one of your configured api.keys");
    }
    line(&format!("  TOKEN=$({env_prefix}sessiond {mint})"));
    line(&format!("  # or from a source checkout: TOKEN=$({env_prefix}cargo run -q -- {mint})"));
    line("");
    line("  # create the session");
    line(&format!(
        "  curl -sS -X POST {base}/api/v1/sessions -H \"X-Api-Key: $SESSIOND_API_KEY\" \\\n\
         \x20      -H 'Content-Type: application/json' -d \"{{\\\"token\\\": \\\"$TOKEN\\\"}}\""
    ));
    line("  # validate the token");
    line(&format!(
        "  curl -sS -X POST {base}/api/v1/sessions/validate -H \"Authorization: Bearer $TOKEN\""
    ));
    line("  # revoke the session");
    line(&format!(
        "  curl -sS -X DELETE {base}/api/v1/sessions/s-1 -H \"X-Api-Key: $SESSIOND_API_KEY\""
    ));
    if secret_used {
        line("");
        line(&format!("  # other services sign tokens with the HMAC secret in {secret_file}"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::load_from;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_created_once_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state").join("data");
        let first = ensure_dev_keys(&dir).unwrap();
        assert!(first.created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&first.secret_path), 0o600);
        assert_eq!(mode(&first.api_key_path), 0o600);
        assert!(first.secret_path.is_absolute());

        let secret = std::fs::read_to_string(&first.secret_path).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
        let key = std::fs::read_to_string(&first.api_key_path).unwrap();
        assert!(key.starts_with("sk_dev_"));
        assert_eq!(key.len(), 7 + 40);
        assert!(key[7..].chars().all(|c| c.is_ascii_hexdigit()));

        let second = ensure_dev_keys(&dir).unwrap();
        assert!(!second.created);
        assert_eq!(second.secret_path, first.secret_path);
        assert_eq!(std::fs::read_to_string(&second.secret_path).unwrap(), secret);
        assert_eq!(std::fs::read_to_string(&second.api_key_path).unwrap(), key);

        assert_eq!(find_dev_keys(&dir).unwrap(), Some(DevKeys { created: false, ..first.clone() }));

        // A missing file alone is regenerated; the other is kept.
        std::fs::remove_file(&first.api_key_path).unwrap();
        assert_eq!(find_dev_keys(&dir).unwrap(), None);
        let third = ensure_dev_keys(&dir).unwrap();
        assert!(third.created);
        assert_eq!(std::fs::read_to_string(&third.secret_path).unwrap(), secret);
        assert_ne!(std::fs::read_to_string(&third.api_key_path).unwrap(), key);
    }

    #[test]
    fn existing_directory_mode_is_left_alone_and_empty_files_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o755)).unwrap();
        ensure_dev_keys(tmp.path()).unwrap();
        assert_eq!(mode(tmp.path()), 0o755);

        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(SECRET_FILE), b"").unwrap();
        let e = ensure_dev_keys(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn find_does_not_create() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        assert_eq!(find_dev_keys(&dir).unwrap(), None);
        assert!(!dir.exists());
    }

    #[test]
    fn dev_keys_are_applied_only_where_nothing_is_configured() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = ensure_dev_keys(tmp.path()).unwrap();

        let mut c = load_from(None, Vec::new()).unwrap();
        apply_dev_keys(&mut c, &keys);
        assert_eq!(c.tokens.hmac_secret_file, keys.secret_path);
        assert_eq!(c.api.keys_file, keys.api_key_path);
        // The generated material passes the config rules.
        let settings = c.token_settings().unwrap();
        assert_eq!(settings.hmac_secret.unwrap().len(), 64);
        assert_eq!(c.api_keys().unwrap().len(), 1);

        let mut c = load_from(
            Some("[tokens]\nhmac_secret = \"configured\"\n[api]\nkeys = [\"configured-key-0001\"]"),
            Vec::new(),
        )
        .unwrap();
        apply_dev_keys(&mut c, &keys);
        assert_eq!(c.tokens.hmac_secret_file, PathBuf::new());
        assert_eq!(c.api.keys_file, PathBuf::new());

        let mut c = load_from(
            Some(
                "[tokens]\nalgorithms = [\"RS256\"]\npublic_keys = [{alg = \"RS256\", pem_file = \"/k.pem\"}]\n[api]\nkeys_file = \"/keys\"",
            ),
            Vec::new(),
        )
        .unwrap();
        apply_dev_keys(&mut c, &keys);
        assert_eq!(c.tokens.hmac_secret_file, PathBuf::new());
        assert_eq!(c.api.keys_file, PathBuf::from("/keys"));

        let mut c = load_from(Some("[tokens]\nhmac_secret_file = \"/s\""), Vec::new()).unwrap();
        apply_dev_keys(&mut c, &keys);
        assert_eq!(c.tokens.hmac_secret_file, PathBuf::from("/s"));
        assert_eq!(c.api.keys_file, keys.api_key_path);
    }

    #[test]
    fn instructions_show_paths_and_commands_but_no_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = ensure_dev_keys(tmp.path()).unwrap();
        let mut c =
            load_from(None, vec![("SESSIOND_SERVER__LISTEN".into(), "0.0.0.0:9090".into())])
                .unwrap();
        apply_dev_keys(&mut c, &keys);
        let text = dev_instructions(&c, &keys, c.server.listen_addr().unwrap());
        let secret = std::fs::read_to_string(&keys.secret_path).unwrap();
        let key = std::fs::read_to_string(&keys.api_key_path).unwrap();
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(&key), "{text}");
        let api_path = keys.api_key_path.display().to_string();
        assert!(text.contains(&format!("export SESSIOND_API_KEY=$(cat {api_path})")), "{text}");
        assert!(text.contains(&keys.secret_path.display().to_string()), "{text}");
        assert!(text.contains(
            "TOKEN=$(sessiond mint-token --dev --format enhanced --user-id 42 --email ada@example.com --role admin --sid s-1)"
        ), "{text}");
        assert!(text.contains("cargo run -q -- mint-token --dev"), "{text}");
        assert!(text.contains("POST http://127.0.0.1:9090/api/v1/sessions "), "{text}");
        assert!(text.contains("X-Api-Key: $SESSIOND_API_KEY"), "{text}");
        assert!(text.contains("http://127.0.0.1:9090/api/v1/sessions/validate"), "{text}");
        assert!(text.contains("DELETE http://127.0.0.1:9090/api/v1/sessions/s-1"), "{text}");
    }

    #[test]
    fn instructions_mention_config_and_foreign_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = ensure_dev_keys(tmp.path()).unwrap();
        let cfg = tmp.path().join("my config.toml");
        std::fs::write(
            &cfg,
            "[api]\nkeys = [\"configured-key-0001\"]\n[server]\nlisten = \"[::]:8081\"\n",
        )
        .unwrap();
        let mut c = crate::config::load(Some(&cfg)).unwrap();
        apply_dev_keys(&mut c, &keys);
        let text = dev_instructions(&c, &keys, c.server.listen_addr().unwrap());
        assert!(text.contains(&format!("--config '{}'", cfg.display())), "{text}");
        assert!(text.contains("one of your configured api.keys"), "{text}");
        assert!(!text.contains("configured-key-0001"), "{text}");
        assert!(text.contains("http://[::1]:8081/api/v1/sessions/validate"), "{text}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote("/a b"), "'/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
