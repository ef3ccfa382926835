//! The WebSocket client side shared by the `ws*` and `soak` modes: the upgrade with
//! `Authorization: Bearer`, small client buffers, and the wait for the welcome frame.

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A client WebSocket.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket error as one line (an HTTP refusal with its status and body).
pub fn describe(e: WsError) -> String {
    match e {
        WsError::Http(resp) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            format!("HTTP {} {}", resp.status().as_u16(), body)
        }
        other => other.to_string(),
    }
}

/// Upgrades a connected TCP stream to `ws://{addr}/ws` with `Authorization: Bearer`, and
/// waits for the welcome frame.
pub async fn upgrade(tcp: tokio::net::TcpStream, addr: &str, token: &str) -> Result<Ws, String> {
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut req = format!("ws://{addr}/ws").into_client_request().map_err(describe)?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    req.headers_mut().insert(AUTHORIZATION, bearer);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(describe)?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"welcome\"") => {
                return Ok(ws);
            }
            Some(Ok(Message::Text(t))) => {
                return Err(format!("first frame is not a welcome: {}", t.as_str()));
            }
            Some(Ok(Message::Close(f))) => {
                return Err(format!("closed before the welcome: {f:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("before the welcome: {}", describe(e))),
            None => return Err("the connection ended before the welcome".into()),
        }
    }
}
