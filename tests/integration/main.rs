//! Black-box integration tests of the `sessiond` binary: every test starts the real daemon on a
//! free port with its own temp data dir and talks to it over HTTP, as a client would. The
//! expectations come from `CONTRACT.md` (sections 1, 2, 3, 6's durability paragraph and 7).
//!
//! One test binary made of modules (ripgrep style); `harness` spawns the daemon, `tokens`
//! makes tokens, `redis_server` spawns real `redis-server`s (and breaks them) for the Redis-mode
//! tests (`redis_*`, contract section 6), `ws_client` is a blocking WebSocket client for the
//! gateway tests (`ws_*`, contract section 5); the other modules are the tests.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod redis_server;
mod tokens;
mod ws_client;

mod chaos;
mod cli;
mod durability;
mod health_routes;
mod hostile_http;
mod http;
mod logs;
mod notify;
mod redis_cluster;
mod redis_mode;
mod redis_outage;
mod sessions;
mod token_errors;
mod validate;
mod vectors;
mod verify;
mod ws_auth;
mod ws_cluster;
mod ws_events;
mod ws_limits;
mod ws_transport;
