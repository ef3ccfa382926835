//! The WebSocket gateway's daemon side (CONTRACT.md section 5): the `GET <ws.path>` handshake,
//! one connection actor per socket, the protocol's frames, and the transport.
//!
//! - [`handshake`]: Origin and token-source rules, validation through the worker's
//!   SessionValidator, admission by the WsGateway, then the upgrade.
//! - [`session`]: the per-connection actor (welcome, heartbeat, refresh, expiry, close codes).
//! - [`frames`]: server → client and client → server frames, JSON or MessagePack.
//! - [`outbox`]: the connection's bounded outbound queue.
//! - [`transport`]: the only file that touches the WebSocket library; it runs on the raw socket
//!   the upgrade service ([`crate::upgrade`]) takes out of actix-http's HTTP/1 dispatcher.
//!
//! The registry and the routing of events live in the actors crate (`WsGateway`).

pub mod frames;
pub mod handshake;
pub mod outbox;
pub mod session;
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use sessiond_actors::messages::{GetGatewayStats, ShutdownConnections};
use sessiond_actors::ws_gateway::WsGateway;

use crate::config::Config;

/// What the WebSocket side needs from the configuration.
#[derive(Clone, Debug)]
pub struct WsSettings {
    /// `ws.allowed_origins`.
    pub allowed_origins: Vec<String>,
    /// `ws.cookie_name`.
    pub cookie_name: String,
    /// `ws.allow_query_token`.
    pub allow_query_token: bool,
    /// `ws.heartbeat_interval_seconds`.
    pub heartbeat: Duration,
    /// `ws.client_timeout_seconds`.
    pub client_timeout: Duration,
    /// `ws.max_message_bytes`.
    pub max_message_bytes: usize,
    /// `ws.outbound_queue`.
    pub outbound_queue: usize,
    /// `tokens.refresh_window_seconds`: `session.expiring` goes out this long before expiry.
    pub refresh_window_seconds: i64,
}

impl WsSettings {
    /// The settings of a checked configuration.
    pub fn from_config(config: &Config) -> Self {
        let ws = &config.ws;
        WsSettings {
            allowed_origins: ws.allowed_origins.clone(),
            cookie_name: ws.cookie_name.clone(),
            allow_query_token: ws.allow_query_token,
            heartbeat: Duration::from_secs(ws.heartbeat_interval_seconds),
            client_timeout: Duration::from_secs(ws.client_timeout_seconds),
            max_message_bytes: ws.max_message_bytes,
            outbound_queue: ws.outbound_queue,
            refresh_window_seconds: config.tokens.refresh_window_seconds,
        }
    }
}

/// The app data of the WebSocket route.
pub struct WsState {
    /// The registry and router of connections.
    pub gateway: Addr<WsGateway>,
    /// Shared with every connection.
    pub settings: Arc<WsSettings>,
}

/// Tells every connection to close with 1001 and waits (at most `bound`) until they have.
pub async fn close_all(gateway: &Addr<WsGateway>, bound: Duration) {
    if gateway.send(ShutdownConnections).await.is_err() {
        return;
    }
    let started = Instant::now();
    loop {
        let left = match gateway.send(GetGatewayStats).await {
            Ok(stats) => stats.connections,
            Err(_) => return,
        };
        if left == 0 {
            log::info!("WebSocket connections closed");
            return;
        }
        if started.elapsed() >= bound {
            log::warn!(
                "{left} WebSocket connection(s) still open after {bound:?}; stopping anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
