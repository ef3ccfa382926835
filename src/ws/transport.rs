//! The WebSocket transport: the only file that touches the WebSocket protocol library
//! (actix-http's `ws` codec), so it can be swapped without touching the protocol.
//!
//! The socket does not stay inside actix-http's HTTP/1 dispatcher: the upgrade service
//! ([`crate::upgrade`]) takes the raw TCP stream out of it once the `101` is written, and
//! [`run`] speaks the WebSocket protocol on it with buffers of our own, so an idle
//! connection holds no read or write buffer at all (the dispatcher's two 8 KiB buffers are
//! dropped at the upgrade).
//!
//! - [`accept`] checks the handshake and builds the `101` (the subprotocol is chosen by the
//!   caller); [`switch`] attaches the [`Handoff`] that starts the connection once the socket
//!   is there.
//! - [`InboundStream`] turns the client's frames into [`Inbound`] items: continuation frames
//!   are aggregated up to `ws.max_message_bytes`, and any larger frame or message becomes
//!   [`Inbound::TooLarge`] without being buffered. It reads through a small stack buffer and
//!   releases its own buffer whenever it is empty.
//! - [`write_loop`] drains a connection's [`Outbox`] into the socket, one frame at a time;
//!   a frame's bytes are released once written.
//!
//! Backpressure, end to end: a client that stops reading fills its TCP window and the
//! kernel's send buffer; the frame being written then waits (only that one frame is held),
//! and our own bounded outbox fills, whose overflow closes the connection with 1013 and drops
//! the queue.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_codec::{Decoder, Encoder};
use actix_http::ResponseBuilder;
use actix_http::ws::{self, CloseCode, CloseReason, Codec, Frame, Item, Message, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::Stream;
use tokio::net::TcpStream;

use super::frames::Encoded;
use super::outbox::{Next, Outbox, Outgoing};

/// Bytes read from the socket per read call, through a stack buffer.
const READ_CHUNK: usize = 2048;
/// The largest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// The largest close reason (the code takes the other two bytes).
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

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

/// The upgraded socket, shared by the connection's reader and writer (both run on the
/// worker thread that accepted it), and by the upgrade service, which waits until both are
/// gone.
struct Conn {
    io: TcpStream,
    /// Woken when a reader or writer is dropped.
    done: Cell<Option<Waker>>,
}

impl Conn {
    fn wake_owner(&self) {
        if let Some(w) = self.done.take() {
            w.wake();
        }
    }
}

/// Marks a request that reached the app through the upgrade service (its socket can be
/// taken over): only such a request may be answered with a `101`.
#[derive(Clone, Copy, Debug)]
pub struct Upgradable;

/// A connection the handshake accepted, waiting for its socket: the upgrade service hands
/// the socket over once the `101` is written. Dropped without a socket (the `101` could not
/// be written), it starts the connection on a socket that is already gone, so the actor
/// runs, finds it closed, and unregisters.
pub struct Handoff {
    start: Option<Box<dyn FnOnce(Socket, InboundStream)>>,
    max_message_bytes: usize,
}

impl Handoff {
    /// `start` runs the connection on its two halves.
    pub fn new(
        max_message_bytes: usize,
        start: impl FnOnce(Socket, InboundStream) + 'static,
    ) -> Self {
        Handoff { start: Some(Box::new(start)), max_message_bytes }
    }

    fn start(mut self, conn: Option<Rc<Conn>>, read: BytesMut) {
        if let Some(start) = self.start.take() {
            let socket = Socket { conn: conn.clone() };
            let inbound = InboundStream::new(conn, read, self.max_message_bytes);
            start(socket, inbound);
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            start(Socket { conn: None }, InboundStream::new(None, BytesMut::new(), 0));
        }
    }
}

/// Checks that `req` is a WebSocket handshake the server can complete and builds its `101`,
/// answering `protocol` in `Sec-WebSocket-Protocol` (the caller checked that the client
/// offered it). `Err` is a message for a 400 answer.
pub fn accept(
    req: &HttpRequest,
    protocol: Option<&'static str>,
) -> Result<ResponseBuilder, String> {
    let mut response = ws::handshake(req.head())
        .map_err(|e| format!("not a valid WebSocket upgrade request: {e}"))?;
    if !req.extensions().contains::<Upgradable>() {
        // Only a handshake with a body (chunked) gets here: actix-http did not hand its socket
        // to the upgrade service.
        return Err("not a valid WebSocket upgrade request: a handshake has no body".to_owned());
    }
    if let Some(p) = protocol {
        response.insert_header((actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, p));
    }
    Ok(response)
}

/// The `101` answer carrying `handoff` for the upgrade service.
pub fn switch(mut response: ResponseBuilder, handoff: Handoff) -> HttpResponse {
    let mut response = HttpResponse::from(response.finish()).map_into_boxed_body();
    response.extensions_mut().insert(handoff);
    response
}

/// Runs an upgraded connection on `io`: `read` holds the bytes that arrived after the
/// request head. Resolves with the socket once the connection's reader and writer are both
/// gone, for the caller to close (`None` cannot happen: nothing else holds it).
pub async fn run(io: TcpStream, read: BytesMut, handoff: Handoff) -> Option<TcpStream> {
    let conn = Rc::new(Conn { io, done: Cell::new(None) });
    handoff.start(Some(Rc::clone(&conn)), read);
    poll_fn(|cx| {
        if Rc::strong_count(&conn) == 1 {
            Poll::Ready(())
        } else {
            conn.done.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    })
    .await;
    Rc::try_unwrap(conn).ok().map(|conn| conn.io)
}

/// The sending half of an upgraded connection.
pub struct Socket {
    conn: Option<Rc<Conn>>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.wake_owner();
        }
    }
}

impl Socket {
    /// Writes one message; its bytes are released once written.
    async fn send(&mut self, message: Message) -> Result<(), ()> {
        let conn = self.conn.as_ref().ok_or(())?;
        let mut buf = BytesMut::new();
        Codec::new().encode(message, &mut buf).map_err(|_| ())?;
        let mut written = 0;
        poll_fn(|cx| {
            while written < buf.len() {
                match conn.io.poll_write_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(())) => {}
                }
                match conn.io.try_write(&buf[written..]) {
                    Ok(0) => return Poll::Ready(Err(())),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(())),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

/// The client's messages, continuations aggregated up to the size limit. Ends after the
/// connection ends or after the first [`Inbound::TooLarge`] / [`Inbound::Invalid`].
pub struct InboundStream {
    conn: Option<Rc<Conn>>,
    codec: Codec,
    /// Bytes read and not yet decoded; empty (no allocation) between frames.
    buf: BytesMut,
    max: usize,
    /// A fragmented message being aggregated: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
    /// The client's side ended (EOF, or a read error).
    eof: bool,
    done: bool,
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.wake_owner();
        }
    }
}

impl InboundStream {
    fn new(conn: Option<Rc<Conn>>, read: BytesMut, max: usize) -> Self {
        // The dispatcher's read buffer is large: keep only the bytes it still held.
        let buf = if read.is_empty() { BytesMut::new() } else { BytesMut::from(&read[..]) };
        InboundStream {
            eof: conn.is_none(),
            conn,
            codec: Codec::new().max_size(max),
            buf,
            max,
            partial: None,
            done: false,
        }
    }

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

    /// The next frame from the bytes read so far; `Err` ends the stream (with an item, or
    /// without when there is nothing to tell the client).
    fn decode(&mut self) -> Result<Option<Frame>, Option<Inbound>> {
        let decoded = self.codec.decode(&mut self.buf);
        if self.buf.is_empty() {
            // Release the buffer between frames: an idle connection holds none.
            self.buf = BytesMut::new();
        }
        decoded.map_err(|e| match e {
            ProtocolError::Overflow => Some(Inbound::TooLarge),
            ProtocolError::Io(_) => None,
            other => Some(Inbound::Invalid(other.to_string())),
        })
    }

    /// Reads what the socket has into the buffer: `Ready` when something was read or the
    /// client's side ended.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(conn) = self.conn.as_ref() else {
            self.eof = true;
            return Poll::Ready(());
        };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match conn.io.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    self.eof = true;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            match conn.io.try_read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(());
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Poll::Ready(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.eof = true;
                    return Poll::Ready(());
                }
            }
        }
    }

    /// The item a decoded frame makes, if any (`Err`: the stream ends with it).
    fn item(&mut self, frame: Frame) -> Result<Option<Inbound>, Inbound> {
        Ok(Some(match frame {
            Frame::Text(t) => match std::str::from_utf8(&t) {
                Ok(_) => Inbound::Text(t),
                Err(_) => return Err(Inbound::Invalid("a text message that is not UTF-8".into())),
            },
            Frame::Binary(b) => Inbound::Binary(b),
            Frame::Ping(p) => Inbound::Ping(p),
            Frame::Pong(_) => Inbound::Pong,
            Frame::Close(reason) => Inbound::Close(reason.map(|r| u16::from(r.code))),
            Frame::Continuation(item) => {
                let is_last = matches!(item, Item::Last(_));
                if let Some(bad) = self.continuation(item) {
                    return Err(bad);
                }
                if !is_last {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some((true, buf)) => Inbound::Text(buf.freeze()),
                    Some((false, buf)) => Inbound::Binary(buf.freeze()),
                    None => return Ok(None),
                }
            }
        }))
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
            match this.decode() {
                Ok(Some(frame)) => match this.item(frame) {
                    Ok(Some(item)) => return Poll::Ready(Some(item)),
                    Ok(None) => continue,
                    Err(bad) => {
                        this.done = true;
                        return Poll::Ready(Some(bad));
                    }
                },
                Ok(None) => {}
                Err(end) => {
                    this.done = true;
                    return Poll::Ready(end);
                }
            }
            if this.eof {
                this.done = true;
                return Poll::Ready(None);
            }
            if this.poll_read(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// Drains `outbox` into the socket until a close frame went out, the outbox ended, or the
/// socket is gone. Once a close was requested, the frames still queued and the close frame
/// get `flush` to reach the client (a client that stopped reading finds the close frame
/// when it reads again); a send still waiting then is abandoned and the connection dropped.
pub async fn write_loop(mut socket: Socket, outbox: Outbox, flush: Duration) {
    loop {
        match poll_fn(|cx| outbox.poll_next(cx)).await {
            Next::Send(item) => {
                let sent = {
                    let send = socket.send(message(item));
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
                    Some(Err(())) => return,
                    // Dropped or out of time: whatever is still queued is dropped too.
                    None => outbox.give_up(),
                }
            }
            Next::Close(close) => {
                let since = outbox.close_requested_at().unwrap_or_else(Instant::now);
                let mut description = close.reason.into_owned();
                truncate(&mut description, MAX_CLOSE_REASON);
                let reason = CloseReason {
                    code: CloseCode::from(close.code),
                    description: Some(description),
                };
                let deadline = tokio::time::Instant::from_std(since + flush);
                let close = socket.send(Message::Close(Some(reason)));
                let _ = tokio::time::timeout_at(deadline, close).await;
                return;
            }
            Next::End => return,
        }
    }
}

/// The WebSocket message of one outgoing item (control payloads cut to 125 bytes).
fn message(item: Outgoing) -> Message {
    match item {
        Outgoing::Frame(Encoded::Text(s)) => Message::Text(s.into()),
        Outgoing::Frame(Encoded::Binary(b)) => Message::Binary(b.into()),
        Outgoing::Ping => Message::Ping(Bytes::new()),
        Outgoing::Pong(mut p) => {
            p.truncate(MAX_CONTROL_PAYLOAD);
            Message::Pong(p.into())
        }
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Resolves when the send in flight should be abandoned: at once when the queue was dropped
/// or ended, `flush` after a close was requested.
async fn interrupted(outbox: &Outbox, flush: Duration) {
    if let Some(since) = poll_fn(|cx| outbox.poll_interrupt(cx)).await {
        tokio::time::sleep_until(tokio::time::Instant::from_std(since + flush)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(100);
        truncate(&mut s, MAX_CLOSE_REASON);
        assert_eq!(s.len(), 122);
        let mut short = "client too slow".to_owned();
        truncate(&mut short, MAX_CLOSE_REASON);
        assert_eq!(short, "client too slow");
    }

    #[test]
    fn pongs_carry_at_most_125_bytes() {
        match message(Outgoing::Pong(vec![7; 300])) {
            Message::Pong(p) => assert_eq!(p.len(), MAX_CONTROL_PAYLOAD),
            other => panic!("{other:?}"),
        }
    }
}
