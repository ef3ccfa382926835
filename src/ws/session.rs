//! The per-connection actor: one per WebSocket, on the HTTP worker that accepted it.
//!
//! It sends the welcome frame, pings every `ws.heartbeat_interval_seconds` and drops a client
//! silent for `ws.client_timeout_seconds`, answers `ping` and `refresh` messages, turns the
//! events the WsGateway routes to it into `event` frames (closing with 4001 after a
//! revocation), sends `session.expiring` once before its expiry and closes with 4002 at it.
//!
//! Its frames go into a bounded [`Outbox`] drained by [`transport::write_loop`], which runs
//! inside this actor's context: the actor stops when the writer is done (close frame sent, or
//! the socket gone), or at once when the client's side ends.
//!
//! Expiry: the connection lives until `min(token exp, session expiry)` (the token's `exp`
//! alone when the session is unknown in degraded mode). A `session.refreshed` event of its
//! session sets the session part to the event's `data.expires_at`; an accepted `refresh`
//! message sets the token part to the new token's `exp` and drops the session part (the
//! contract: the connection then lives until the new token's expiry).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sessiond_actors::domain::{EventKind, now_millis};
use sessiond_actors::messages::{
    Admission, MoveConnection, ToConnection, UnregisterConnection, Validate,
};
use sessiond_actors::session_validator::{Failure, SessionValidator, Validation};
use sessiond_actors::ws_gateway::WsGateway;

use super::WsSettings;
use super::frames::{self, ClientFrame, Encoding, ServerFrame};
use super::outbox::{Close, Outbox, Outgoing};
use super::transport::{self, Inbound, InboundStream, Socket};

/// Close codes of CONTRACT.md section 5.
pub mod close_code {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation by the client.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Message over `ws.max_message_bytes`, repeated garbage, or a silent client.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The client does not read fast enough (its outbound queue overflowed).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session was revoked (also after `user.sessions_revoked`).
    pub const REVOKED: u16 = 4001;
    /// The token or session expired.
    pub const EXPIRED: u16 = 4002;
    /// A `refresh` message was refused.
    pub const REFRESH_REFUSED: u16 = 4003;
}

/// The `code` label of `sessiond_ws_closes_total`: the contract's codes and 1000 by number,
/// any other (a client's own choice, echoed back) as `other`, so the label stays bounded.
fn close_label(code: u16) -> &'static str {
    use close_code::*;
    match code {
        1000 => "1000",
        GOING_AWAY => "1001",
        PROTOCOL_ERROR => "1002",
        POLICY_VIOLATION => "1008",
        TRY_AGAIN_LATER => "1013",
        REVOKED => "4001",
        EXPIRED => "4002",
        REFRESH_REFUSED => "4003",
        _ => "other",
    }
}

fn count_close(label: &str) {
    sessiond_actors::metrics::metrics().ws_closes.with_label_values(&[label]).inc();
}

/// The connection's mailbox bound (the gateway's `try_send` fails beyond it and the
/// connection is closed with 1013).
pub const MAILBOX: usize = 256;
/// The bad client messages one connection may send; the last closes it with 1008.
pub const MAX_BAD_MESSAGES: u8 = 10;

/// What the handshake hands to a new connection.
pub struct Accepted {
    /// The gateway's admission.
    pub admission: Admission,
    /// The validation that authenticated the handshake.
    pub validation: Validation,
    /// The frame encoding.
    pub encoding: Encoding,
    /// Where frames go.
    pub socket: Socket,
    /// What the client sends.
    pub inbound: InboundStream,
}

/// The per-connection actor.
pub struct WsConnection {
    key: u64,
    connection_id: String,
    session_id: String,
    user_id: String,
    mode: &'static str,
    token_exp: i64,
    session_exp: Option<i64>,
    encoding: Encoding,
    outbox: Outbox,
    start: Option<(Socket, InboundStream)>,
    gateway: Addr<WsGateway>,
    validator: Addr<SessionValidator>,
    settings: Arc<WsSettings>,
    last_seen: Instant,
    bad_messages: u8,
    refreshing: bool,
    timers: Vec<SpawnHandle>,
    /// The expiry `session.expiring` was last sent for (it goes out once per expiry).
    warned_for: Option<i64>,
    warnings: u32,
    closing: bool,
}

impl WsConnection {
    /// A connection for an admitted, validated handshake.
    pub fn new(
        accepted: Accepted,
        gateway: Addr<WsGateway>,
        validator: Addr<SessionValidator>,
        settings: Arc<WsSettings>,
    ) -> Self {
        let Accepted { admission, validation, encoding, socket, inbound } = accepted;
        let identity = validation.identity;
        WsConnection {
            key: admission.key,
            connection_id: admission.connection_id,
            session_id: identity.session_id,
            user_id: identity.user_id,
            mode: validation.mode.as_str(),
            token_exp: identity.expires_at,
            session_exp: validation.session.map(|s| s.expires_at),
            encoding,
            outbox: Outbox::new(settings.outbound_queue),
            start: Some((socket, inbound)),
            gateway,
            validator,
            settings,
            last_seen: Instant::now(),
            bad_messages: 0,
            refreshing: false,
            timers: Vec::new(),
            warned_for: None,
            warnings: 0,
            closing: false,
        }
    }

    /// When the connection is closed with 4002 unless it is refreshed.
    fn expiry(&self) -> i64 {
        expiry(self.token_exp, self.session_exp)
    }

    fn send(&mut self, frame: &ServerFrame<'_>, ctx: &mut Context<Self>) {
        let encoded = frames::encode(frame, self.encoding);
        self.push_encoded(encoded, ctx);
    }

    fn push_encoded(&mut self, encoded: Result<frames::Encoded, String>, ctx: &mut Context<Self>) {
        match encoded {
            Ok(encoded) => self.push(Outgoing::Frame(encoded), ctx),
            Err(e) => log::error!("connection {}: frame not encodable: {e}", self.connection_id),
        }
    }

    fn push(&mut self, item: Outgoing, ctx: &mut Context<Self>) {
        if self.outbox.push(item).is_err() {
            self.close(Close::new(close_code::TRY_AGAIN_LATER, "client too slow"), true, ctx);
        }
    }

    /// Closes the connection: the close frame goes after the queued frames (or at once, with
    /// `drop_queue`); the actor stops when the writer is done.
    fn close(&mut self, close: Close, drop_queue: bool, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        count_close(close_label(close.code));
        log::debug!(
            "connection {}: closing with {} ({})",
            self.connection_id,
            close.code,
            close.reason
        );
        for t in self.timers.drain(..) {
            ctx.cancel_future(t);
        }
        self.outbox.close(close, drop_queue);
    }

    /// (Re-)arms the `session.expiring` and expiry timers for the current expiry.
    fn arm_expiry(&mut self, ctx: &mut Context<Self>) {
        for t in self.timers.drain(..) {
            ctx.cancel_future(t);
        }
        let expiry = self.expiry();
        let now_ms = now_millis();
        let warn_at = expiry.saturating_sub(self.settings.refresh_window_seconds);
        if self.warned_for != Some(expiry) {
            let t = ctx.run_later(delay(warn_at, now_ms), move |act, ctx| {
                act.warn_expiring(expiry, ctx);
            });
            self.timers.push(t);
        }
        let t = ctx.run_later(delay(expiry, now_ms), |act, ctx| {
            act.close(Close::new(close_code::EXPIRED, "token or session expired"), false, ctx);
        });
        self.timers.push(t);
    }

    fn warn_expiring(&mut self, expiry: i64, ctx: &mut Context<Self>) {
        if self.closing || self.warned_for == Some(expiry) {
            return;
        }
        self.warned_for = Some(expiry);
        self.warnings += 1;
        let id = format!("{}-x{}", self.connection_id, self.warnings);
        let data = serde_json::json!({ "expires_at": expiry });
        let frame = ServerFrame::Event {
            id: &id,
            event: EventKind::SessionExpiring.as_str(),
            session_id: Some(&self.session_id),
            user_id: Some(&self.user_id),
            at_ms: now_millis(),
            data: &data,
        };
        let encoded = frames::encode(&frame, self.encoding);
        self.push_encoded(encoded, ctx);
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.last_seen.elapsed() >= self.settings.client_timeout {
            log::debug!("connection {}: client silent, dropping it", self.connection_id);
            self.close(Close::new(close_code::POLICY_VIOLATION, "client timeout"), true, ctx);
            return;
        }
        self.push(Outgoing::Ping, ctx);
    }

    fn on_event(&mut self, event: &sessiond_actors::domain::AuthEvent, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.send(&ServerFrame::event(event), ctx);
        let mine = event.session_id.as_deref() == Some(self.session_id.as_str());
        let my_user = event.user_id.as_deref() == Some(self.user_id.as_str());
        match event.event {
            EventKind::SessionRevoked if mine => {
                self.close(Close::new(close_code::REVOKED, "session revoked"), false, ctx);
            }
            EventKind::UserSessionsRevoked if my_user => {
                self.close(Close::new(close_code::REVOKED, "user sessions revoked"), false, ctx);
            }
            EventKind::SessionRefreshed if mine => {
                if let Some(exp) = event.data.get("expires_at").and_then(|v| v.as_i64()) {
                    self.session_exp = Some(exp);
                    if !self.closing {
                        self.arm_expiry(ctx);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_message(&mut self, decoded: Result<ClientFrame, String>, ctx: &mut Context<Self>) {
        match decoded {
            Ok(ClientFrame::Ping) => self.send(&ServerFrame::Pong, ctx),
            Ok(ClientFrame::Refresh { token }) => self.refresh(token, ctx),
            Err(message) => {
                self.bad_messages = self.bad_messages.saturating_add(1);
                if self.bad_messages >= MAX_BAD_MESSAGES {
                    let close = Close::new(close_code::POLICY_VIOLATION, "too many bad messages");
                    self.close(close, false, ctx);
                } else {
                    self.send(&ServerFrame::Error { code: "bad_request", message: &message }, ctx);
                }
            }
        }
    }

    fn refresh(&mut self, token: String, ctx: &mut Context<Self>) {
        if self.refreshing {
            let message = "a refresh is already in progress on this connection";
            self.send(&ServerFrame::Error { code: "bad_request", message }, ctx);
            return;
        }
        self.refreshing = true;
        let validation = self.validator.send(Validate { token });
        ctx.spawn(validation.into_actor(self).map(|answer, act, ctx| {
            act.refreshing = false;
            if act.closing {
                return;
            }
            let refused = match answer {
                Ok(Ok(v)) if v.identity.user_id == act.user_id => {
                    return act.reauthenticated(v, ctx);
                }
                Ok(Ok(_)) => Cow::Borrowed("refresh refused: a token of another user"),
                Ok(Err(f)) => Cow::Owned(format!("refresh refused: {}", failure_code(&f))),
                Err(_) => Cow::Borrowed("refresh refused: validator unavailable"),
            };
            let close = Close { code: close_code::REFRESH_REFUSED, reason: refused };
            act.close(close, false, ctx);
        }));
    }

    fn reauthenticated(&mut self, v: Validation, ctx: &mut Context<Self>) {
        let identity = v.identity;
        if identity.session_id != self.session_id {
            self.gateway
                .do_send(MoveConnection { key: self.key, session_id: identity.session_id.clone() });
            self.session_id = identity.session_id;
        }
        self.mode = v.mode.as_str();
        self.token_exp = identity.expires_at;
        self.session_exp = None;
        let expires_at = self.expiry();
        self.send(&ServerFrame::Reauthenticated { expires_at }, ctx);
        if !self.closing {
            self.arm_expiry(ctx);
        }
    }
}

/// `min(token exp, session expiry)`.
fn expiry(token_exp: i64, session_exp: Option<i64>) -> i64 {
    session_exp.map_or(token_exp, |s| s.min(token_exp))
}

/// The time from `now_ms` until the Unix second `at` (zero when it is past).
fn delay(at: i64, now_ms: i64) -> Duration {
    let ms = at.saturating_mul(1000).saturating_sub(now_ms).max(0);
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The contract's code for a refused refresh (for the close reason; never the token).
fn failure_code(f: &Failure) -> &'static str {
    match f {
        Failure::Token(e) => e.code(),
        Failure::SessionNotFound => "session_not_found",
        Failure::SessionRevoked => "session_revoked",
        Failure::Unavailable | Failure::Store(_) | Failure::StoreFull => "store_unavailable",
        Failure::SessionConflict | Failure::BadRequest(_) => "bad_request",
    }
}

/// The close code answering a client's close: its own when it may be sent back, else 1000.
fn echo_code(code: Option<u16>) -> u16 {
    code.filter(|c| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)).unwrap_or(1000)
}

impl Actor for WsConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some((socket, inbound)) = self.start.take() {
            // A closing client gets `ws.client_timeout_seconds` to take its last frames.
            let flush = self.settings.client_timeout;
            let writer = transport::write_loop(socket, self.outbox.clone(), flush);
            // The connection ends when its writer does: close frame sent, or socket gone.
            ctx.spawn(writer.into_actor(self).map(|(), _act, ctx| ctx.stop()));
            ctx.add_stream(inbound);
        }
        let expires_at = self.expiry();
        let heartbeat_interval_ms =
            u64::try_from(self.settings.heartbeat.as_millis()).unwrap_or(u64::MAX);
        let welcome = ServerFrame::Welcome {
            connection_id: &self.connection_id,
            session_id: &self.session_id,
            user_id: &self.user_id,
            mode: self.mode,
            expires_at,
            heartbeat_interval_ms,
        };
        let encoded = frames::encode(&welcome, self.encoding);
        self.push_encoded(encoded, ctx);
        self.arm_expiry(ctx);
        ctx.run_interval(self.settings.heartbeat, |act, ctx| act.heartbeat(ctx));
        log::debug!(
            "connection {} open: session {} user {} mode {} until {expires_at}",
            self.connection_id,
            self.session_id,
            self.user_id,
            self.mode
        );
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if !self.closing {
            // The socket went away without a close handshake.
            count_close("abnormal");
        }
        self.outbox.end();
        self.gateway.do_send(UnregisterConnection { key: self.key });
        log::debug!("connection {} gone", self.connection_id);
    }
}

impl Handler<ToConnection> for WsConnection {
    type Result = ();

    fn handle(&mut self, msg: ToConnection, ctx: &mut Context<Self>) {
        match msg {
            ToConnection::Event(event) => self.on_event(&event, ctx),
            ToConnection::Shutdown => {
                self.close(Close::new(close_code::GOING_AWAY, "server shutting down"), false, ctx);
            }
            ToConnection::TooSlow => {
                self.close(Close::new(close_code::TRY_AGAIN_LATER, "client too slow"), true, ctx);
            }
        }
    }
}

impl StreamHandler<Inbound> for WsConnection {
    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        if self.closing {
            return;
        }
        match msg {
            Inbound::Text(bytes) => self.on_message(frames::decode_text(&bytes), ctx),
            Inbound::Binary(bytes) => self.on_message(frames::decode_binary(&bytes), ctx),
            Inbound::Ping(payload) => self.push(Outgoing::Pong(payload.to_vec()), ctx),
            Inbound::Pong => {}
            Inbound::Close(code) => {
                // The client closes: answer its close frame, then the writer ends.
                self.close(Close::new(echo_code(code), ""), true, ctx);
            }
            Inbound::TooLarge => {
                let close = Close::new(close_code::POLICY_VIOLATION, "message too large");
                self.close(close, false, ctx);
            }
            Inbound::Invalid(why) => {
                log::debug!("connection {}: protocol violation: {why}", self.connection_id);
                self.close(Close::new(close_code::PROTOCOL_ERROR, "protocol error"), true, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The client's side ended. Unless a close frame is on its way, nobody is listening.
        if !self.closing {
            self.outbox.end();
            ctx.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_earlier_of_token_and_session() {
        assert_eq!(expiry(100, None), 100);
        assert_eq!(expiry(100, Some(50)), 50);
        assert_eq!(expiry(100, Some(150)), 100);
    }

    #[test]
    fn delays_never_go_negative() {
        assert_eq!(delay(10, 9_500), Duration::from_millis(500));
        assert_eq!(delay(10, 10_000), Duration::ZERO);
        assert_eq!(delay(10, 99_000), Duration::ZERO);
        assert_eq!(delay(i64::MAX, 0), Duration::from_millis(i64::MAX as u64));
    }

    #[test]
    fn client_close_codes_are_echoed_only_when_sendable() {
        assert_eq!(echo_code(Some(1000)), 1000);
        assert_eq!(echo_code(Some(4001)), 4001);
        assert_eq!(echo_code(Some(1001)), 1001);
        assert_eq!(echo_code(Some(1005)), 1000, "1005 must never be sent");
        assert_eq!(echo_code(Some(1006)), 1000);
        assert_eq!(echo_code(Some(999)), 1000);
        assert_eq!(echo_code(None), 1000);
    }

    #[test]
    fn refused_refreshes_name_the_contract_code() {
        assert_eq!(failure_code(&Failure::SessionRevoked), "session_revoked");
        assert_eq!(failure_code(&Failure::SessionNotFound), "session_not_found");
        assert_eq!(failure_code(&Failure::Unavailable), "store_unavailable");
    }
}
