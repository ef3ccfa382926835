//! The command line (CONTRACT.md section 7): `sessiond [serve|check-config|mint-token]`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Session coordination daemon: JWT verification, sessions, auth events";

const LONG_ABOUT: &str = "\
Session coordination daemon: verifies JWTs (HS*, RS*, PS*, ES*, EdDSA), keeps server-side
sessions (Redis, or an embedded durable store), and pushes auth events to WebSocket clients.

Configuration comes from one TOML file (--config FILE, or the file named by the
SESSIOND_CONFIG environment variable; without either, the built-in defaults), and every key
can be overridden by an environment variable SESSIOND_<SECTION>__<KEY>, e.g.
SESSIOND_SESSIONS__REDIS_URL=redis://127.0.0.1:6379. See docs/configuration.md.

Without a command, `serve` runs.

Examples:
  sessiond serve --config /etc/sessiond/sessiond.toml
  sessiond serve --dev
  sessiond check-config --config /etc/sessiond/sessiond.toml
  sessiond mint-token --dev --format enhanced --user-id 42 --email ada@example.com --role admin";

const SERVE_LONG_ABOUT: &str = "\
Run the daemon (the default command). Logs go to stderr (RUST_LOG, e.g. RUST_LOG=info).

With --dev and no token key or API key configured, an HMAC secret and an API key are
generated once into the data directory (fallback.data_dir), reused on later runs, and the
commands to try the daemon out are printed.

Example:
  sessiond serve --config /etc/sessiond/sessiond.toml";

const CHECK_LONG_ABOUT: &str = "\
Load and validate the configuration, read the key files it names, and exit: 0 with
`config OK` and the resolved listen address and data directory on stdout, or 1 with the
reason on stderr.

Example:
  sessiond check-config --config /etc/sessiond/sessiond.toml";

const MINT_LONG_ABOUT: &str = "\
Sign a token with the configured HMAC secret (tokens.hmac_secret or tokens.hmac_secret_file),
or with --dev the one `sessiond serve --dev` generated, using the first HS256/HS384/HS512
algorithm of tokens.algorithms. The token alone is printed on stdout. iss and aud are set
when tokens.issuer and tokens.audience are configured.

Layouts: legacy puts the email in `sub` and the user id in `id`; enhanced puts the user id in
`sub` and the email in `email`.

Example:
  TOKEN=$(sessiond mint-token --dev --format enhanced --user-id 42 --email ada@example.com --role admin --sid s-1)";

const CONFIG_HELP: &str = "The TOML configuration file (default: the built-in defaults)";

/// `sessiond`'s arguments. Without a command, the top-level `serve` options apply.
#[derive(Debug, Parser)]
#[command(
    name = "sessiond",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The command; `serve` when none is given.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve`'s options, accepted without the command too (`sessiond --dev`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The commands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the daemon (the default command)
    #[command(long_about = SERVE_LONG_ABOUT)]
    Serve(ServeArgs),
    /// Validate the configuration and exit (0 when valid, 1 otherwise)
    #[command(long_about = CHECK_LONG_ABOUT)]
    CheckConfig(CheckConfigArgs),
    /// Sign a token with the configured (or --dev) HMAC secret and print it
    #[command(long_about = MINT_LONG_ABOUT)]
    MintToken(MintArgs),
}

/// `serve`'s options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ServeArgs {
    #[arg(long, value_name = "FILE", env = "SESSIOND_CONFIG", help = CONFIG_HELP)]
    pub config: Option<PathBuf>,
    /// Development mode: when no token key / API key is configured, generate an HMAC secret
    /// and an API key into the data directory once (reused afterwards) and print how to use
    /// them
    #[arg(long)]
    pub dev: bool,
}

/// `check-config`'s options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct CheckConfigArgs {
    #[arg(long, value_name = "FILE", env = "SESSIOND_CONFIG", help = CONFIG_HELP)]
    pub config: Option<PathBuf>,
}

/// The claim layout of a minted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenFormat {
    /// sub = the email, id = the user id
    Legacy,
    /// sub = the user id, email = the email
    Enhanced,
}

/// `mint-token`'s options.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MintArgs {
    /// The claim layout
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: TokenFormat,
    /// The user id (legacy: `id` claim, a JSON integer when it is a plain decimal number;
    /// enhanced: `sub`, must not contain @)
    #[arg(long, value_name = "ID")]
    pub user_id: String,
    /// The user's email (legacy: `sub`, must contain @; enhanced: `email`)
    #[arg(long, value_name = "EMAIL")]
    pub email: String,
    /// The user's role (`role` claim)
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// Lifetime in seconds: exp = now + TTL
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, allow_negative_numbers = true)]
    pub ttl: i64,
    /// The session id (`sid` claim); without it the daemon derives one from the token
    #[arg(long, value_name = "ID")]
    pub sid: Option<String>,
    #[arg(long, value_name = "FILE", env = "SESSIOND_CONFIG", help = CONFIG_HELP)]
    pub config: Option<PathBuf>,
    /// Sign with the HMAC secret `sessiond serve --dev` generated in the data directory
    /// (used only when the configuration has no token key of its own)
    #[arg(long)]
    pub dev: bool,
}

impl Cli {
    /// The command to run, `serve` (with the top-level options) when none was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

/// Parse the process arguments; on `--help`, `--version` or an error clap prints and exits.
pub fn parse() -> Command {
    Cli::parse().into_command()
}

/// Parse given arguments (the first is the program name).
#[cfg_attr(not(test), allow(dead_code))]
pub fn try_parse_from<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map(Cli::into_command)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        try_parse_from(std::iter::once("sessiond").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default() {
        // (Assumes SESSIOND_CONFIG is not set in the test environment.)
        if std::env::var_os("SESSIOND_CONFIG").is_some() {
            return;
        }
        assert_eq!(parse(&[]).unwrap(), Command::Serve(ServeArgs::default()));
        assert_eq!(
            parse(&["--dev", "--config", "/c.toml"]).unwrap(),
            Command::Serve(ServeArgs { config: Some("/c.toml".into()), dev: true })
        );
        assert_eq!(
            parse(&["serve", "--config", "x.toml"]).unwrap(),
            Command::Serve(ServeArgs { config: Some("x.toml".into()), dev: false })
        );
        // Top-level options do not mix with a command.
        assert!(parse(&["--dev", "check-config"]).is_err());
    }

    #[test]
    fn check_config_takes_config() {
        assert_eq!(
            parse(&["check-config", "--config", "/etc/s.toml"]).unwrap(),
            Command::CheckConfig(CheckConfigArgs { config: Some("/etc/s.toml".into()) })
        );
        assert!(parse(&["check-config", "--dev"]).is_err());
    }

    #[test]
    fn mint_token_arguments() {
        let cmd = parse(&[
            "mint-token",
            "--format",
            "legacy",
            "--user-id",
            "42",
            "--email",
            "ada@example.com",
            "--role",
            "admin",
        ])
        .unwrap();
        let Command::MintToken(m) = cmd else { panic!("{cmd:?}") };
        assert_eq!(m.format, TokenFormat::Legacy);
        assert_eq!(m.user_id, "42");
        assert_eq!(m.ttl, 3600);
        assert_eq!(m.sid, None);
        assert!(!m.dev);

        let cmd = parse(&[
            "mint-token",
            "--dev",
            "--format",
            "enhanced",
            "--user-id",
            "u1",
            "--email",
            "e@x",
            "--role",
            "r",
            "--ttl",
            "-5",
            "--sid",
            "s-1",
            "--config",
            "c.toml",
        ])
        .unwrap();
        let Command::MintToken(m) = cmd else { panic!("{cmd:?}") };
        assert_eq!(m.format, TokenFormat::Enhanced);
        assert_eq!(m.ttl, -5);
        assert_eq!(m.sid.as_deref(), Some("s-1"));
        assert_eq!(m.config, Some(PathBuf::from("c.toml")));
        assert!(m.dev);

        // Required arguments and known formats.
        let e = parse(&["mint-token", "--format", "legacy"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = parse(&[
            "mint-token",
            "--format",
            "jwt",
            "--user-id",
            "1",
            "--email",
            "a@b",
            "--role",
            "r",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn version_and_help() {
        let e = parse(&["--version"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayVersion);
        assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")));
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        let help = e.to_string();
        assert!(help.contains("SESSIOND_CONFIG"), "{help}");
        assert!(help.contains("mint-token"), "{help}");
        let help = parse(&["mint-token", "--help"]).unwrap_err().to_string();
        for flag in
            ["--format", "--user-id", "--email", "--role", "--ttl", "--sid", "--config", "--dev"]
        {
            assert!(help.contains(flag), "{flag}: {help}");
        }
        assert!(help.contains("[default: 3600]"), "{help}");
    }
}
