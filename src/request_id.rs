//! The request-id middleware: every response carries `X-Request-Id` (the client's own when it
//! is 1–128 characters of `A-Za-z0-9._-`, else a fresh one), and every error answer is rendered
//! as the contract's JSON body with that id.

use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::Error;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use futures_util::future::LocalBoxFuture;
use sessiond_actors::metrics::metrics;

use crate::error::{ApiError, from_status};

/// The header name.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Makes fresh ids: a per-process random prefix and a counter.
pub struct IdSource {
    prefix: String,
    counter: AtomicU64,
}

impl IdSource {
    pub fn new(prefix: String) -> Self {
        IdSource { prefix, counter: AtomicU64::new(0) }
    }

    fn fresh(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}

/// Whether a client-supplied id may be echoed.
pub fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The middleware factory.
#[derive(Clone)]
pub struct RequestIds {
    ids: Arc<IdSource>,
    body_limit: usize,
    deadline: Duration,
}

impl RequestIds {
    /// `deadline` bounds each request's handling, its body included
    /// (`server.request_timeout_ms`); a WebSocket only until its upgrade is answered.
    pub fn new(ids: Arc<IdSource>, body_limit: usize, deadline: Duration) -> Self {
        RequestIds { ids, body_limit, deadline }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestIds
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = RequestIdMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestIdMiddleware {
            service: Rc::new(service),
            ids: Arc::clone(&self.ids),
            body_limit: self.body_limit,
            deadline: self.deadline,
        }))
    }
}

pub struct RequestIdMiddleware<S> {
    service: Rc<S>,
    ids: Arc<IdSource>,
    body_limit: usize,
    deadline: Duration,
}

impl<S, B> Service<ServiceRequest> for RequestIdMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let id = req
            .headers()
            .get(&HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| acceptable(v))
            .map(str::to_owned)
            .unwrap_or_else(|| self.ids.fresh());
        let started = Instant::now();
        let service = Rc::clone(&self.service);
        let body_limit = self.body_limit;
        let deadline = self.deadline;
        // actix's router decodes the path lossily (invalid UTF-8 becomes U+FFFD), which would
        // let different ids name one session: such a path is refused before routing.
        let bad_path = !decodes_to_utf8(req.uri().path());
        Box::pin(async move {
            if bad_path {
                let api = ApiError::bad_request("the path is not valid UTF-8 once percent-decoded");
                return Err(refused(api, &id, false));
            }
            let called = match actix_rt::time::timeout(deadline, service.call(req)).await {
                Ok(called) => called,
                // A body that trickles or stalls must not hold the connection (and a slot of
                // server.max_connections) forever: actix-http has no body timer.
                Err(_) => {
                    log::debug!("request {id}: not done within {} ms", deadline.as_millis());
                    return Err(refused(ApiError::request_timeout(deadline), &id, true));
                }
            };
            let res = match called {
                Ok(res) => res,
                // An error before a response existed: answer it here, never as a bare 500.
                Err(e) => {
                    let status = e.as_response_error().status_code();
                    let api = e
                        .as_error::<ApiError>()
                        .cloned()
                        .unwrap_or_else(|| from_status(status, body_limit));
                    if api.status.is_server_error() {
                        log::error!("request {id}: {e}");
                    }
                    return Err(actix_web::error::InternalError::from_response(
                        e,
                        with_id(api.render(&id), &id),
                    )
                    .into());
                }
            };
            let mut res = match res.response().error() {
                Some(err) => {
                    let api = err
                        .as_error::<ApiError>()
                        .cloned()
                        .unwrap_or_else(|| from_status(res.status(), body_limit));
                    if api.status.is_server_error() {
                        let head = res.request();
                        log::error!("request {id} {} {}: {err}", head.method(), head.path());
                    }
                    res.into_response(api.render(&id))
                }
                None => res.map_into_boxed_body(),
            };
            if let Ok(v) = HeaderValue::from_str(&id) {
                res.headers_mut().insert(HEADER, v);
            }
            if res.status() == StatusCode::PAYLOAD_TOO_LARGE {
                // The rest of the body was not read: close instead of draining it.
                res.response_mut().head_mut().set_connection_type(ConnectionType::Close);
            }
            let took = started.elapsed().as_secs_f64();
            let head = res.request();
            // The route's pattern, never the raw path: the label set stays bounded.
            let route = head.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
            let status = res.status();
            metrics()
                .http_duration
                .with_label_values(&[route.as_str(), method_label(head.method()), status.as_str()])
                .observe(took);
            log::debug!(
                "request {id} {} {} {} {:.3}ms",
                head.method(),
                head.path(),
                status.as_u16(),
                took * 1000.0
            );
            Ok(res)
        })
    }
}

/// Whether `path` percent-decodes to valid UTF-8 (a `%` not followed by two hex digits is
/// kept as it is, as the router does).
fn decodes_to_utf8(path: &str) -> bool {
    if !path.contains('%') {
        return true;
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits: at most 0xff, so the cast cannot truncate.
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// The method as a metric label; methods outside the standard set share `other`.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::DELETE => "DELETE",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// An answer made here instead of by the routes (the request is not routed, or its handling
/// was abandoned), as an error actix sends as it is; `close`: the connection is not reused.
fn refused(api: ApiError, id: &str, close: bool) -> Error {
    let mut res = with_id(api.render(id), id);
    if close {
        res.head_mut().set_connection_type(ConnectionType::Close);
    }
    actix_web::error::InternalError::from_response(api.message.clone(), res).into()
}

fn with_id(mut res: actix_web::HttpResponse, id: &str) -> actix_web::HttpResponse {
    if let Ok(v) = HeaderValue::from_str(id) {
        res.headers_mut().insert(HEADER, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn paths_must_decode_to_utf8() {
        use super::decodes_to_utf8;
        assert!(decodes_to_utf8("/api/v1/sessions/s-1"));
        assert!(decodes_to_utf8("/api/v1/sessions/%C3%A9t%C3%A9"));
        assert!(decodes_to_utf8("/api/v1/sessions/100%"));
        assert!(decodes_to_utf8("/api/v1/sessions/%zz"));
        assert!(!decodes_to_utf8("/api/v1/sessions/%FF%FE"));
        assert!(!decodes_to_utf8("/api/v1/sessions/%80%80"));
        assert!(!decodes_to_utf8("/api/v1/sessions/%C0%AF"));
    }

    #[test]
    fn client_ids_are_checked() {
        assert!(acceptable("abc-1.2_3"));
        assert!(acceptable(&"a".repeat(128)));
        assert!(!acceptable(&"a".repeat(129)));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("a/b"));
    }
}
