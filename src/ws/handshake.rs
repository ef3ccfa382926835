//! `GET <ws.path>`: authenticates, then upgrades (CONTRACT.md section 5).
//!
//! In order, the first failure is the answer and nothing is upgraded:
//! 1. Origin: when `ws.allowed_origins` is non-empty, an Origin not in it → 403
//!    `origin_forbidden` (no Origin passes: non-browser clients send none).
//! 2. The token, first match wins: `Authorization: Bearer`, a `Sec-WebSocket-Protocol` entry
//!    `bearer.<jwt>`, the cookie `ws.cookie_name`, the query `?access_token=` (only with
//!    `ws.allow_query_token`). None → 401 `token_missing`. A cookie token counts only from a
//!    listed Origin: otherwise (including every cookie when the list is empty) 403
//!    `origin_forbidden`.
//! 3. Validation through the worker's SessionValidator → the 401 of the validate route.
//! 4. Subprotocol: without a `Sec-WebSocket-Protocol` header the connection speaks JSON and
//!    the answer names no subprotocol. With one, the client's first `sessiond.v1` or
//!    `sessiond.v1.msgpack` entry is selected (the `bearer.…` entry is never echoed); a list
//!    with neither → 400 `bad_request` (every standard client fails a handshake whose answer
//!    names no subprotocol or one it did not offer).
//! 5. The WebSocket handshake itself (a request that is no upgrade → 400 `bad_request`).
//!    The `101` goes out through the upgrade service ([`crate::upgrade`]), which hands the
//!    raw socket to the connection.
//! 6. Admission by the WsGateway: 503 `too_many_connections` (instance full), 429
//!    `too_many_connections` (user's limit), 503 `shutting_down`.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use sessiond_actors::messages::{AdmissionRefused, RegisterConnection, Validate};
use sessiond_actors::session_validator::SessionValidator;

use super::WsState;
use super::frames::Encoding;
use super::session::{self, Accepted, WsConnection};
use super::transport;
use crate::error::{ApiError, Surface, from_failure};
use crate::routes::token_source;

/// The prefix of a token carried in `Sec-WebSocket-Protocol`.
pub const PROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Where the handshake's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer …`.
    Authorization,
    /// A `Sec-WebSocket-Protocol` entry `bearer.<jwt>`.
    Subprotocol,
    /// The cookie `ws.cookie_name`.
    Cookie,
    /// The query parameter `access_token`.
    Query,
}

/// The token candidates of one request, each already extracted.
#[derive(Debug, Default)]
pub struct Candidates {
    /// From `Authorization: Bearer`.
    pub authorization: Option<String>,
    /// From a `bearer.<jwt>` subprotocol entry.
    pub subprotocol: Option<String>,
    /// From the cookie.
    pub cookie: Option<String>,
    /// From `?access_token=` (collected only when allowed).
    pub query: Option<String>,
}

/// Why a handshake was refused before validation.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `origin_forbidden`, with the message.
    OriginForbidden(&'static str),
    /// 401 `token_missing`.
    TokenMissing,
}

/// The Origin rule: `Ok` when there is no allowlist, no Origin, or a listed one.
pub fn check_origin(origin: Option<&str>, allowed: &[String]) -> Result<(), Refusal> {
    match origin {
        Some(o) if !allowed.is_empty() && !is_listed(o, allowed) => {
            Err(Refusal::OriginForbidden("the Origin is not in ws.allowed_origins"))
        }
        _ => Ok(()),
    }
}

/// Whether `origin` is in the allowlist (scheme and host are case-insensitive).
pub fn is_listed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// The token to validate, first match wins; a cookie token needs a listed Origin.
pub fn choose_token(
    c: Candidates,
    origin: Option<&str>,
    allowed: &[String],
) -> Result<(TokenSource, String), Refusal> {
    if let Some(t) = c.authorization {
        return Ok((TokenSource::Authorization, t));
    }
    if let Some(t) = c.subprotocol {
        return Ok((TokenSource::Subprotocol, t));
    }
    if let Some(t) = c.cookie {
        return match origin {
            Some(o) if is_listed(o, allowed) => Ok((TokenSource::Cookie, t)),
            _ if allowed.is_empty() => Err(Refusal::OriginForbidden(
                "cookie authentication needs ws.allowed_origins (it is empty)",
            )),
            _ => Err(Refusal::OriginForbidden(
                "a cookie token needs an Origin in ws.allowed_origins",
            )),
        };
    }
    if let Some(t) = c.query {
        return Ok((TokenSource::Query, t));
    }
    Err(Refusal::TokenMissing)
}

/// Every entry of every `Sec-WebSocket-Protocol` header, in order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// The token of the first `bearer.<jwt>` entry, if any.
pub fn protocol_token(offered: &[&str]) -> Option<String> {
    offered.iter().find_map(|p| {
        let prefix = p.get(..PROTOCOL_TOKEN_PREFIX.len())?;
        let token = &p[PROTOCOL_TOKEN_PREFIX.len()..];
        (prefix.eq_ignore_ascii_case(PROTOCOL_TOKEN_PREFIX) && !token.is_empty())
            .then(|| token.to_owned())
    })
}

/// The subprotocol to answer: `Ok(None)` when the client offered none (JSON, no header),
/// its first `sessiond.v1*` entry otherwise; `Err` when it offered only others.
pub fn negotiate(offered: &[&str]) -> Result<Option<Encoding>, &'static str> {
    if offered.is_empty() {
        return Ok(None);
    }
    offered.iter().find_map(|p| Encoding::from_protocol(p)).map(Some).ok_or(
        "Sec-WebSocket-Protocol must offer sessiond.v1 or sessiond.v1.msgpack \
         (next to any bearer.<token> entry)",
    )
}

/// `?access_token=` from a query string (percent-decoded), if present and non-empty.
pub fn query_token(query: &str) -> Option<String> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query).ok()?.into_inner();
    pairs.into_iter().find(|(k, _)| k == "access_token").map(|(_, v)| v).filter(|v| !v.is_empty())
}

fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::OriginForbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "origin_forbidden", m),
        Refusal::TokenMissing => ApiError::token_missing(),
    }
}

fn admission_refused(r: AdmissionRefused) -> ApiError {
    let (status, code) = match r {
        AdmissionRefused::TooManyConnections { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections")
        }
        AdmissionRefused::TooManyForUser { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "too_many_connections")
        }
        AdmissionRefused::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
    };
    ApiError::new(status, code, r.to_string())
}

/// The `GET <ws.path>` handler. Its `101` carries the connection's start
/// ([`transport::Handoff`]); the upgrade service ([`crate::upgrade`]) writes it and hands
/// the socket over.
pub async fn upgrade(
    req: HttpRequest,
    validator: web::Data<Addr<SessionValidator>>,
    state: web::Data<WsState>,
) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings;
    let allowed = &settings.allowed_origins;
    // A non-ASCII Origin cannot be listed: it stays present, and unlisted.
    let origin = req.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    check_origin(origin, allowed).map_err(refusal)?;

    let offered = offered_protocols(req.headers());
    let candidates = Candidates {
        authorization: token_source::bearer(&req),
        subprotocol: protocol_token(&offered),
        cookie: token_source::cookie(&req, &settings.cookie_name),
        query: settings.allow_query_token.then(|| query_token(req.query_string())).flatten(),
    };
    let (_source, token) = choose_token(candidates, origin, allowed).map_err(refusal)?;

    let validated_at = Instant::now();
    let validation = validator
        .send(Validate { token })
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|f| from_failure(f, Surface::Token))?;

    let encoding = negotiate(&offered).map_err(ApiError::bad_request)?;
    let response =
        transport::accept(&req, encoding.map(Encoding::protocol)).map_err(ApiError::bad_request)?;

    // The connection's address exists before it runs, so the gateway can index it first.
    let mut ctx = Context::<WsConnection>::new();
    ctx.set_mailbox_capacity(session::MAILBOX);
    let register = RegisterConnection {
        session_id: validation.identity.session_id.clone(),
        user_id: validation.identity.user_id.clone(),
        validated_at,
        recipient: ctx.address().recipient(),
        // Unknown session (a degraded `jwt_only` answer): its token's `iat` bounds when it
        // was created, and a revoke-all before that does not cover it (the watermark).
        created_at: validation
            .session
            .as_ref()
            .map(|s| s.created_at)
            .or(validation.identity.issued_at),
    };
    let admission = state
        .gateway
        .send(register)
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(admission_refused)?;
    let gateway = state.gateway.clone();
    let validator = validator.get_ref().clone();
    let settings = Arc::clone(&state.settings);
    let encoding = encoding.unwrap_or(Encoding::Json);
    let handoff = transport::Handoff::new(settings.max_message_bytes, move |socket, inbound| {
        let accepted = Accepted { admission, validation, encoding, socket, inbound };
        ctx.run(WsConnection::new(accepted, gateway, validator, settings));
    });
    Ok(transport::switch(response, handoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(origins: &[&str]) -> Vec<String> {
        origins.iter().map(|s| (*s).to_owned()).collect()
    }

    fn only(source: TokenSource) -> Candidates {
        let t = Some("tok".to_owned());
        match source {
            TokenSource::Authorization => Candidates { authorization: t, ..Default::default() },
            TokenSource::Subprotocol => Candidates { subprotocol: t, ..Default::default() },
            TokenSource::Cookie => Candidates { cookie: t, ..Default::default() },
            TokenSource::Query => Candidates { query: t, ..Default::default() },
        }
    }

    #[test]
    fn the_origin_allowlist_applies_only_when_set_and_only_to_requests_with_an_origin() {
        let app = list(&["https://app.example.com"]);
        assert_eq!(check_origin(None, &app), Ok(()));
        assert_eq!(check_origin(Some("https://app.example.com"), &app), Ok(()));
        assert_eq!(check_origin(Some("HTTPS://APP.example.com"), &app), Ok(()));
        assert!(check_origin(Some("https://evil.example.com"), &app).is_err());
        assert!(check_origin(Some("null"), &app).is_err());
        assert!(check_origin(Some("https://app.example.com:8443"), &app).is_err());
        assert_eq!(check_origin(Some("https://evil.example.com"), &[]), Ok(()));
    }

    #[test]
    fn the_first_token_source_wins() {
        let all = || Candidates {
            authorization: Some("a".into()),
            subprotocol: Some("p".into()),
            cookie: Some("c".into()),
            query: Some("q".into()),
        };
        let app = list(&["https://app"]);
        assert_eq!(choose_token(all(), None, &app), Ok((TokenSource::Authorization, "a".into())));
        let c = Candidates { authorization: None, ..all() };
        assert_eq!(choose_token(c, None, &app), Ok((TokenSource::Subprotocol, "p".into())));
        let c = Candidates { authorization: None, subprotocol: None, ..all() };
        let got = choose_token(c, Some("https://app"), &app);
        assert_eq!(got, Ok((TokenSource::Cookie, "c".into())));
        let c = Candidates { query: Some("q".into()), ..Default::default() };
        assert_eq!(choose_token(c, None, &[]), Ok((TokenSource::Query, "q".into())));
        assert_eq!(choose_token(Candidates::default(), None, &app), Err(Refusal::TokenMissing));
    }

    #[test]
    fn a_cookie_token_needs_a_listed_origin() {
        let app = list(&["https://app"]);
        // Listed Origin: accepted.
        assert!(choose_token(only(TokenSource::Cookie), Some("https://app"), &app).is_ok());
        // No Origin, or an empty list: cookie auth is off.
        let no_origin = choose_token(only(TokenSource::Cookie), None, &app);
        assert!(matches!(no_origin, Err(Refusal::OriginForbidden(_))));
        let empty = choose_token(only(TokenSource::Cookie), Some("https://app"), &[]);
        assert!(matches!(empty, Err(Refusal::OriginForbidden(_))));
        // The cookie is the first match: a query token behind it does not rescue it.
        let c =
            Candidates { cookie: Some("c".into()), query: Some("q".into()), ..Default::default() };
        assert!(matches!(choose_token(c, None, &[]), Err(Refusal::OriginForbidden(_))));
        // Other sources do not need an Origin at all.
        for s in [TokenSource::Authorization, TokenSource::Subprotocol, TokenSource::Query] {
            assert_eq!(choose_token(only(s), None, &[]), Ok((s, "tok".into())));
        }
    }

    #[test]
    fn subprotocols_carry_the_token_and_select_the_encoding() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            "sessiond.v1.msgpack, bearer.aaa.bbb.ccc".parse().unwrap(),
        );
        headers.append(header::SEC_WEBSOCKET_PROTOCOL, "sessiond.v1".parse().unwrap());
        let offered = offered_protocols(&headers);
        assert_eq!(offered, ["sessiond.v1.msgpack", "bearer.aaa.bbb.ccc", "sessiond.v1"]);
        assert_eq!(protocol_token(&offered).as_deref(), Some("aaa.bbb.ccc"));
        assert_eq!(negotiate(&offered), Ok(Some(Encoding::MsgPack)));
        assert_eq!(negotiate(&["bearer.x", "sessiond.v1"]), Ok(Some(Encoding::Json)));
        assert_eq!(negotiate(&[]), Ok(None));
        assert!(negotiate(&["bearer.x"]).is_err());
        assert!(negotiate(&["chat"]).is_err());
        assert_eq!(protocol_token(&["Bearer.xyz"]).as_deref(), Some("xyz"));
        assert_eq!(protocol_token(&["bearer."]), None);
        assert_eq!(protocol_token(&["sessiond.v1", "bear"]), None);
    }

    #[test]
    fn the_query_token_is_percent_decoded() {
        assert_eq!(query_token("access_token=a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(query_token("x=1&access_token=a%2Eb").as_deref(), Some("a.b"));
        assert_eq!(query_token("access_token="), None);
        assert_eq!(query_token("token=a"), None);
        assert_eq!(query_token(""), None);
    }

    #[test]
    fn refusals_map_to_the_contract_codes() {
        let e = refusal(Refusal::OriginForbidden("x"));
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "origin_forbidden"));
        let e = refusal(Refusal::TokenMissing);
        assert_eq!((e.status, e.code), (StatusCode::UNAUTHORIZED, "token_missing"));
        let e = admission_refused(AdmissionRefused::TooManyForUser { limit: 2 });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let e = admission_refused(AdmissionRefused::ShuttingDown);
        assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"));
    }
}
