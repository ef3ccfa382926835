//! `sessiond`: the session coordination daemon. This file only dispatches; see `startup.rs`.

mod api_key;
mod cli;
mod config;
mod dev_keys;
mod error;
mod mint;
mod notify;
mod request_id;
mod routes;
mod self_test;
mod startup;
mod upgrade;
mod ws;

fn main() {
    // actix-http logs every malformed request head from a client at ERROR: by default those
    // are silenced, so a client cannot flood the log (RUST_LOG overrides this).
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,actix_http::h1::dispatcher=off"),
    )
    .init();
    let code = match cli::parse() {
        cli::Command::Serve(a) => startup::serve(&a),
        cli::Command::CheckConfig(a) => config::run_check_config(a.config.as_deref()),
        cli::Command::MintToken(a) => mint::run_mint(&a),
    };
    std::process::exit(code);
}
