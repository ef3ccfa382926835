//! The WebSocket transport: the only file that touches the WebSocket library (actix-ws), so
//! it can be swapped without touching the protocol.
//!
//! - [`upgrade`] completes the handshake (the subprotocol is chosen by the caller).
//! - [`InboundStream`] turns the client's frames into [`Inbound`] items: continuation frames
//!   are aggregated up to `ws.max_message_bytes`, and any larger frame or message becomes
//!   [`Inbound::TooLarge`] without being buffered.
//! - [`write_loop`] drains a connection's [`Outbox`] into the socket, one frame at a time.
//!
//! Backpressure, end to end: a client that stops reading fills its TCP window, then
//! actix-http's write buffer (the response body is no longer polled), then actix-ws's channel
//! (32 messages; `Session::text` waits), and then our own bounded outbox, whose overflow
//! closes the connection with 1013 and drops the queue.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Item, Message, MessageStream, ProtocolError, Session};
use futures_util::Stream;

use super::frames::Encoded;
use super::outbox::{Next, Outbox, Outgoing};

/// One item from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A text message (aggregated; UTF-8 checked by the decoder).
    Text(Bytes),
    /// A binary message (aggregated).
    Binary(Bytes),
    /// A WebSocket ping, with its payload.
    Ping(Bytes),
    /// A WebSocket pong.
    Pong,
    /// The client closes, with its code if it gave one.
    Close(Option<u16>),
    /// A frame or message over the size limit.
    TooLarge,
    /// A protocol violation (bad continuation, invalid UTF-8, bad opcode …).
    Invalid(String),
}

/// The sending half of an upgraded connection.
pub struct Socket(Session);

/// The result of a successful upgrade.
pub struct Upgraded {
    /// The `101 Switching Protocols` answer; its body carries the outgoing frames.
    pub response: HttpResponse,
    /// Where [`write_loop`] writes.
    pub socket: Socket,
    /// What the client sends.
    pub inbound: InboundStream,
}

/// Completes the WebSocket handshake, answering `protocol` in `Sec-WebSocket-Protocol` (the
/// caller checked that the client offered it). `Err` is a message for a 400 answer: the
/// request is not a valid WebSocket upgrade.
pub fn upgrade(
    req: &HttpRequest,
    payload: Payload,
    protocol: Option<&'static str>,
    max_message_bytes: usize,
) -> Result<Upgraded, String> {
    let handled = match protocol {
        Some(p) => actix_ws::handle_with_protocols(req, payload, &[p]),
        None => actix_ws::handle(req, payload),
    };
    let (response, session, stream) =
        handled.map_err(|e| format!("not a valid WebSocket upgrade request: {e}"))?;
    Ok(Upgraded {
        response,
        socket: Socket(session),
        inbound: InboundStream {
            inner: stream.max_frame_size(max_message_bytes),
            max: max_message_bytes,
            partial: None,
            done: false,
        },
    })
}

/// The client's messages, continuations aggregated up to the size limit. Ends after the
/// connection ends or after the first [`Inbound::TooLarge`] / [`Inbound::Invalid`].
pub struct InboundStream {
    inner: MessageStream,
    max: usize,
    /// A fragmented message being aggregated: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
    done: bool,
}

impl InboundStream {
    /// Adds a continuation frame to the message being aggregated; `Some` is a violation or
    /// an oversize message, which ends the stream.
    fn continuation(&mut self, item: Item) -> Option<Inbound> {
        let (first, bytes) = match item {
            Item::FirstText(b) => (Some(true), b),
            Item::FirstBinary(b) => (Some(false), b),
            Item::Continue(b) | Item::Last(b) => (None, b),
        };
        match (first, self.partial.as_mut()) {
            (Some(_), Some(_)) => {
                return Some(Inbound::Invalid(
                    "a new fragmented message started inside one".into(),
                ));
            }
            (None, None) => {
                return Some(Inbound::Invalid("a continuation frame without a first frame".into()));
            }
            (Some(is_text), None) => self.partial = Some((is_text, BytesMut::new())),
            (None, Some(_)) => {}
        }
        let (_, buf) = self.partial.as_mut()?;
        if buf.len() + bytes.len() > self.max {
            self.partial = None;
            return Some(Inbound::TooLarge);
        }
        buf.extend_from_slice(&bytes);
        None
    }
}

impl Stream for InboundStream {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let msg = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(match e {
                        ProtocolError::Overflow => Some(Inbound::TooLarge),
                        ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                            Some(Inbound::Invalid("a text message that is not UTF-8".into()))
                        }
                        // The connection itself failed: nothing more to say to it.
                        ProtocolError::Io(_) => None,
                        other => Some(Inbound::Invalid(other.to_string())),
                    });
                }
                Poll::Ready(Some(Ok(m))) => m,
            };
            let item = match msg {
                Message::Text(t) => Inbound::Text(t.into_bytes()),
                Message::Binary(b) => Inbound::Binary(b),
                Message::Ping(p) => Inbound::Ping(p),
                Message::Pong(_) => Inbound::Pong,
                Message::Close(reason) => Inbound::Close(reason.map(|r| u16::from(r.code))),
                Message::Nop => continue,
                Message::Continuation(item) => {
                    let is_last = matches!(item, Item::Last(_));
                    if let Some(bad) = this.continuation(item) {
                        this.done = true;
                        return Poll::Ready(Some(bad));
                    }
                    if !is_last {
                        continue;
                    }
                    match this.partial.take() {
                        Some((true, buf)) => Inbound::Text(buf.freeze()),
                        Some((false, buf)) => Inbound::Binary(buf.freeze()),
                        None => continue,
                    }
                }
            };
            return Poll::Ready(Some(item));
        }
    }
}

/// Drains `outbox` into the socket until a close frame went out, the outbox ended, or the
/// socket is gone. Once a close was requested, the frames still queued and the close frame
/// get `flush` to reach the client (a client that stopped reading finds the close frame
/// when it reads again); a send still waiting then is abandoned and the connection dropped.
pub async fn write_loop(socket: Socket, outbox: Outbox, flush: Duration) {
    let Socket(mut session) = socket;
    loop {
        match poll_fn(|cx| outbox.poll_next(cx)).await {
            Next::Send(item) => {
                let sent = {
                    let send = send(&mut session, item);
                    let interrupted = interrupted(&outbox, flush);
                    tokio::select! {
                        biased;
                        r = send => Some(r),
                        () = interrupted => None,
                    }
                };
                match sent {
                    Some(Ok(())) => {}
                    // The connection is gone.
                    Some(Err(_)) => return,
                    // Dropped or out of time: whatever is still queued is dropped too.
                    None => outbox.give_up(),
                }
            }
            Next::Close(close) => {
                let since = outbox.close_requested_at().unwrap_or_else(Instant::now);
                let reason = CloseReason {
                    code: CloseCode::from(close.code),
                    description: Some(close.reason.into_owned()),
                };
                let deadline = tokio::time::Instant::from_std(since + flush);
                let _ = tokio::time::timeout_at(deadline, session.close(Some(reason))).await;
                return;
            }
            Next::End => return,
        }
    }
}

async fn send(session: &mut Session, item: Outgoing) -> Result<(), actix_ws::Closed> {
    match item {
        Outgoing::Frame(Encoded::Text(s)) => session.text(s).await,
        Outgoing::Frame(Encoded::Binary(b)) => session.binary(b).await,
        Outgoing::Ping => session.ping(b"").await,
        Outgoing::Pong(p) => session.pong(&p).await,
    }
}

/// Resolves when the send in flight should be abandoned: at once when the queue was dropped
/// or ended, `flush` after a close was requested.
async fn interrupted(outbox: &Outbox, flush: Duration) {
    if let Some(since) = poll_fn(|cx| outbox.poll_interrupt(cx)).await {
        tokio::time::sleep_until(tokio::time::Instant::from_std(since + flush)).await;
    }
}
