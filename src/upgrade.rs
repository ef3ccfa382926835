//! The HTTP/1 upgrade service: actix-http hands it every request that carries
//! `Upgrade: websocket` (or is a `CONNECT`), together with the connection, instead of
//! keeping the connection in its dispatcher (whose two 8 KiB buffers would then live as long
//! as the WebSocket does).
//!
//! The request still goes through the same actix-web App as every other request (same
//! routes, middleware, `X-Request-Id`, JSON errors), with a body read until the client's
//! EOF, as actix-http gives such a request. The answer is written through the HTTP/1 codec:
//!
//! - a `101` carrying a [`transport::Handoff`] (the `GET <ws.path>` handler's): the raw
//!   socket is taken out of the codec, its buffers are dropped, and [`transport::run`]
//!   serves the WebSocket until it ends;
//! - any other answer goes out with `Connection: close`, as actix-http answered an upgrade
//!   request it did not upgrade.
//!
//! Either way the client then gets `client_disconnect_timeout` to close its side before the
//! connection is shut down, as actix-http's dispatcher did. The future lives as long as the
//! connection, so WebSockets keep counting towards `server.max_connections` and the graceful
//! stop waits for them.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, HttpMessage, Payload, Request, Response, StatusCode};
use actix_service::{Service, ServiceFactory};
use actix_web::web::Bytes;
use futures_util::Stream;
use futures_util::future::LocalBoxFuture;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::ws::transport;

type Conn = Framed<TcpStream, Codec>;
/// The connection while the App handles the request: shared with the request's payload.
type Shared = Rc<RefCell<Option<Conn>>>;

/// The upgrade service factory, over the App's service factory (one App per worker).
pub struct Upgrades<F> {
    app: F,
    linger: Duration,
}

impl<F> Upgrades<F> {
    /// `app` answers the requests; `linger` is how long a closed connection waits for the
    /// client's side (`client_disconnect_timeout`).
    pub fn new(app: F, linger: Duration) -> Self {
        Upgrades { app, linger }
    }
}

impl<F> ServiceFactory<(Request, Conn)> for Upgrades<F>
where
    F: ServiceFactory<Request, Config = (), InitError = ()>,
    F::Service: 'static,
    F::Future: 'static,
    F::Response: Into<Response<BoxBody>>,
    F::Error: Into<Response<BoxBody>>,
{
    type Response = ();
    type Error = actix_web::Error;
    type Config = ();
    type Service = UpgradeService<F::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, (): ()) -> Self::Future {
        let app = self.app.new_service(());
        let linger = self.linger;
        Box::pin(async move { Ok(UpgradeService { app: Rc::new(app.await?), linger }) })
    }
}

/// The upgrade service of one worker.
pub struct UpgradeService<S> {
    app: Rc<S>,
    linger: Duration,
}

impl<S> Service<(Request, Conn)> for UpgradeService<S>
where
    S: Service<Request> + 'static,
    S::Response: Into<Response<BoxBody>>,
    S::Error: Into<Response<BoxBody>>,
{
    type Response = ();
    type Error = actix_web::Error;
    type Future = Upgrade;

    actix_service::always_ready!();

    fn call(&self, (req, conn): (Request, Conn)) -> Upgrade {
        let app = Rc::clone(&self.app);
        let linger = self.linger;
        Upgrade::Answering(Box::pin(answer(app, req, conn, linger)))
    }
}

/// One upgrade request's connection: answering (the App's future is large, so it is boxed
/// and freed once answered), then serving the WebSocket (small, for the connection's life).
pub enum Upgrade {
    /// The App handles the request.
    Answering(LocalBoxFuture<'static, Option<LocalBoxFuture<'static, ()>>>),
    /// The WebSocket runs, or the connection closes.
    Serving(LocalBoxFuture<'static, ()>),
}

impl Future for Upgrade {
    type Output = Result<(), actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Upgrade::Answering(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Ready(Some(next)) => *this = Upgrade::Serving(next),
                },
                Upgrade::Serving(fut) => return fut.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

/// Answers the request through the App; `Some` is what serves the connection afterwards.
async fn answer<S>(
    app: Rc<S>,
    req: Request,
    conn: Conn,
    linger: Duration,
) -> Option<LocalBoxFuture<'static, ()>>
where
    S: Service<Request>,
    S::Response: Into<Response<BoxBody>>,
    S::Error: Into<Response<BoxBody>>,
{
    let shared: Shared = Rc::new(RefCell::new(Some(conn)));
    // The body, as actix-http gives an upgrade request that it does not upgrade: what the
    // client sends until its EOF.
    let payload: actix_http::BoxedPayloadStream = Box::pin(EofPayload(Rc::clone(&shared)));
    let (req, _none) = req.replace_payload(Payload::Stream { payload });
    req.extensions_mut().insert(transport::Upgradable);
    let mut res: Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.into(),
        Err(e) => e.into(),
    };
    // The payload (if anyone still holds it) ends here: the connection is ours again.
    let mut conn = shared.borrow_mut().take()?;
    let handoff = match res.status() {
        StatusCode::SWITCHING_PROTOCOLS => res.extensions_mut().remove::<transport::Handoff>(),
        _ => None,
    };
    match handoff {
        Some(handoff) => {
            let (head, _empty) = res.into_parts();
            // On failure the handoff is dropped: the connection starts on a gone socket.
            send(&mut conn, Message::Item((head, BodySize::None))).await.ok()?;
            // The codec and its buffers go; only bytes the client sent after the head stay.
            let parts = conn.into_parts();
            let (io, read) = (parts.io, parts.read_buf);
            Some(Box::pin(async move {
                if let Some(io) = transport::run(io, read, handoff).await {
                    close(io, linger).await;
                }
            }))
        }
        None => {
            res.head_mut().set_connection_type(ConnectionType::Close);
            if write_response(&mut conn, res).await.is_ok() {
                close(conn.into_parts().io, linger).await;
            }
            None
        }
    }
}

/// Encodes one HTTP/1 message and flushes it.
async fn send(conn: &mut Conn, msg: Message<(Response<()>, BodySize)>) -> io::Result<()> {
    Pin::new(&mut *conn).write(msg)?;
    poll_fn(|cx| Pin::new(&mut *conn).flush::<Message<(Response<()>, BodySize)>>(cx)).await
}

/// Writes a whole answer, head and body.
async fn write_response(conn: &mut Conn, res: Response<BoxBody>) -> io::Result<()> {
    let (head, mut body) = res.into_parts();
    let size = body.size();
    send(conn, Message::Item((head, size))).await?;
    if matches!(size, BodySize::None | BodySize::Sized(0)) {
        return Ok(());
    }
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
            Some(Ok(chunk)) => send(conn, Message::Chunk(Some(chunk))).await?,
            Some(Err(e)) => return Err(io::Error::other(e.to_string())),
            None => return send(conn, Message::Chunk(None)).await,
        }
    }
}

/// Closes the connection as actix-http's dispatcher closed an answered upgrade request: the
/// client gets `linger` to close its side first (what it still sends is read and dropped, so
/// the close is not turned into a reset), then the connection is shut down.
async fn close(mut io: TcpStream, linger: Duration) {
    let _ = tokio::time::timeout(linger, poll_fn(|cx| drain(&io, cx))).await;
    let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
}

/// Reads and drops until EOF or an error.
fn drain(io: &TcpStream, cx: &mut Context<'_>) -> Poll<()> {
    let mut buf = [0u8; 512];
    loop {
        match io.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
        }
        match io.try_read(&mut buf) {
            Ok(0) => return Poll::Ready(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Poll::Ready(()),
        }
    }
}

/// A request body read from the connection until the client's EOF.
struct EofPayload(Shared);

impl Stream for EofPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut shared = self.0.borrow_mut();
        let Some(conn) = shared.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(conn).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Message::Chunk(Some(bytes))))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Ok(_)) | None) => Poll::Ready(None),
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(PayloadError::Incomplete(None)))),
        }
    }
}
