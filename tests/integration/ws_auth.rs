//! Contract section 5, the handshake: `GET /ws` upgrades only after authentication, with the
//! token from (first match wins) `Authorization: Bearer`, a `bearer.<jwt>` entry of
//! `Sec-WebSocket-Protocol` (then `sessiond.v1` or `sessiond.v1.msgpack` is selected and the
//! token never echoed), the cookie `ws.cookie_name` (only from a listed Origin), or
//! `?access_token=` (only with `ws.allow_query_token`); the Origin allowlist; every refusal is
//! the HTTP error of section 3 and no upgrade. Also the welcome frame's fields.

use serde_json::{Value, json};

use crate::harness::{Config, Daemon, toml_list};
use crate::tokens::*;
use crate::ws_client::*;

const APP: &str = "https://app.example";
const ADMIN: &str = "https://admin.example";
const EVIL: &str = "https://evil.example";

/// `token` with a signature that no longer verifies.
fn tampered(token: &str) -> String {
    let claims = enhanced("u-evil", "evil@example.com", "admin", "ws-evil");
    tamper_payload(token, &claims)
}

/// Asserts that no response header of the handshake carries the token.
#[track_caller]
fn assert_token_not_echoed(headers: &tungstenite::http::HeaderMap, token: &str) {
    let signature = token.rsplit('.').next().unwrap();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(token) && !value.contains(signature) && !value.contains("bearer."),
            "the response header {name}: {value:?} echoes the token"
        );
    }
}

/// The welcome's session id.
#[track_caller]
fn welcome_sid(ws: &mut Ws) -> String {
    ws.expect_welcome()["session_id"].as_str().unwrap().to_string()
}

#[test]
fn ws_bearer_header_upgrades_and_the_welcome_has_the_contract_fields() {
    let d = Daemon::start(Config::default().set("ws.heartbeat_interval_seconds", "7"));
    let token = hs256(&enhanced("u-1", "u-1@example.com", "user", "wa-1"));
    let session = d.create_ok(&token);

    let mut ws = WsRequest::new(&d).bearer(&token).connect();
    assert_eq!(ws.protocol, None, "no subprotocol was offered, none may be selected");
    let welcome = ws.expect_welcome();
    let mut keys: Vec<&str> = welcome.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "connection_id",
            "expires_at",
            "heartbeat_interval_ms",
            "mode",
            "session_id",
            "type",
            "user_id"
        ],
        "welcome fields: {welcome}"
    );
    assert!(welcome["connection_id"].as_str().is_some_and(|s| !s.is_empty()), "{welcome}");
    assert_eq!(welcome["session_id"], json!("wa-1"), "{welcome}");
    assert_eq!(welcome["user_id"], json!("u-1"), "{welcome}");
    assert_eq!(welcome["mode"], json!("normal"), "{welcome}");
    assert!(welcome["expires_at"].is_i64(), "expires_at is integer seconds: {welcome}");
    assert_eq!(welcome["expires_at"], session["expires_at"], "{welcome} vs session {session}");
    assert_eq!(welcome["heartbeat_interval_ms"], json!(7000), "{welcome}");
    assert_eq!(ws.ping_barrier("after the welcome"), Vec::<Value>::new(), "only the pong");

    // A second connection of the same session: its own connection id.
    let mut again = WsRequest::new(&d).bearer(&token).connect();
    let second = again.expect_welcome();
    assert_ne!(second["connection_id"], welcome["connection_id"], "connection ids are unique");
    assert_eq!(second["session_id"], json!("wa-1"));

    // The legacy layout, an integer id: the user id is its decimal string.
    let legacy_token = hs256(&legacy("ada@example.com", json!(42), "admin", "wa-legacy"));
    d.create_ok(&legacy_token);
    let mut ws = WsRequest::new(&d).bearer(&legacy_token).connect();
    let w = ws.expect_welcome();
    assert_eq!(w["user_id"], json!("42"), "{w}");
    assert_eq!(w["session_id"], json!("wa-legacy"), "{w}");
}

#[test]
fn ws_subprotocol_bearer_entry_selects_sessiond_v1_and_never_echoes_the_token() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "wp-1");

    // bearer.<jwt>, sessiond.v1: JSON.
    let mut ws = WsRequest::new(&d).bearer_protocol(&token, V1).connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1));
    assert_token_not_echoed(ws.response.headers(), &token);
    assert!(matches!(ws.next(FRAME_TIMEOUT), Incoming::Text(v) if v["type"] == "welcome"));

    // The token entry after the protocol: the same.
    let entry = format!("bearer.{token}");
    let mut ws = WsRequest::new(&d).protocols(&[V1, &entry]).connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1));
    assert_token_not_echoed(ws.response.headers(), &token);
    assert_eq!(welcome_sid(&mut ws), "wp-1");

    // bearer.<jwt>, sessiond.v1.msgpack: MessagePack, binary frames.
    let mut ws = WsRequest::new(&d).bearer_protocol(&token, V1_MSGPACK).connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1_MSGPACK));
    assert_token_not_echoed(ws.response.headers(), &token);
    match ws.next(FRAME_TIMEOUT) {
        Incoming::Binary(v) => {
            assert_eq!(v["type"], json!("welcome"), "{v}");
            assert_eq!(v["session_id"], json!("wp-1"), "{v}");
        }
        other => panic!("sessiond.v1.msgpack selected: expected a binary welcome, got {other:?}"),
    }

    // Both protocols offered: one of them is selected and the frames follow it.
    let mut ws = WsRequest::new(&d).protocols(&[&entry, V1, V1_MSGPACK]).connect();
    let selected = ws.protocol.clone();
    assert!(
        selected.as_deref() == Some(V1) || selected.as_deref() == Some(V1_MSGPACK),
        "selected {selected:?}"
    );
    assert_token_not_echoed(ws.response.headers(), &token);
    match (ws.is_msgpack(), ws.next(FRAME_TIMEOUT)) {
        (true, Incoming::Binary(v)) | (false, Incoming::Text(v)) => {
            assert_eq!(v["type"], json!("welcome"), "{v}")
        }
        (msgpack, other) => panic!("selected {selected:?} (msgpack {msgpack}), got {other:?}"),
    }

    // A refused subprotocol token: the 401, and the token is not in the answer either.
    let bad = tampered(&token);
    let r =
        WsRequest::new(&d).bearer_protocol(&bad, V1).expect_refused(401, "token_invalid_signature");
    assert_token_not_echoed(&r.headers, &bad);
    assert!(!r.body.contains(&bad), "the refusal body echoes the token: {}", r.body);
}

#[test]
fn ws_cookie_token_is_accepted_only_from_a_listed_origin() {
    let d = Daemon::start(
        Config::default()
            .set("ws.allowed_origins", &toml_list(&[APP, ADMIN]))
            .set_str("ws.cookie_name", "sd_token"),
    );
    let token = session_token(&d, "u-1", "wc-1");
    let cookie = format!("theme=dark; sd_token={token}; lang=en");

    let mut ws = WsRequest::new(&d).cookie(&cookie).origin(APP).connect();
    assert_eq!(welcome_sid(&mut ws), "wc-1");
    let mut ws = WsRequest::new(&d).cookie(&format!("sd_token={token}")).origin(ADMIN).connect();
    assert_eq!(welcome_sid(&mut ws), "wc-1");

    // Not from a listed Origin: refused, with or without an Origin header.
    WsRequest::new(&d).cookie(&cookie).origin(EVIL).expect_refused(403, "origin_forbidden");
    WsRequest::new(&d).cookie(&cookie).expect_refused(403, "origin_forbidden");

    // Another cookie name is no token; no token at all is token_missing.
    WsRequest::new(&d)
        .cookie(&format!("session_token={token}"))
        .origin(APP)
        .expect_refused(401, "token_missing");
    WsRequest::new(&d).origin(APP).expect_refused(401, "token_missing");
    // A cookie token is checked like any other.
    WsRequest::new(&d)
        .cookie(&format!("sd_token={}", tampered(&token)))
        .origin(APP)
        .expect_refused(401, "token_invalid_signature");
}

#[test]
fn ws_cookie_auth_is_off_with_an_empty_origin_list() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "wo-1");
    let cookie = format!("session_token={token}");
    WsRequest::new(&d).cookie(&cookie).origin(APP).expect_refused(403, "origin_forbidden");
    WsRequest::new(&d).cookie(&cookie).expect_refused(403, "origin_forbidden");

    // With an empty list there is no Origin check for the other sources.
    let mut ws = WsRequest::new(&d).bearer(&token).origin(EVIL).connect();
    assert_eq!(welcome_sid(&mut ws), "wo-1");
    let mut ws = WsRequest::new(&d).bearer_protocol(&token, V1).origin(APP).connect();
    assert_eq!(welcome_sid(&mut ws), "wo-1");
}

#[test]
fn ws_origin_allowlist_refuses_unlisted_origins_and_lets_none_pass() {
    let d = Daemon::start(Config::default().set("ws.allowed_origins", &toml_list(&[APP])));
    let token = session_token(&d, "u-1", "wl-1");

    let mut ws = WsRequest::new(&d).bearer(&token).origin(APP).connect();
    assert_eq!(welcome_sid(&mut ws), "wl-1");
    let mut ws = WsRequest::new(&d).bearer(&token).connect();
    assert_eq!(welcome_sid(&mut ws), "wl-1", "a request without Origin passes the check");

    for origin in [EVIL, ADMIN, "null", "http://app.example", "https://app.example:8443"] {
        WsRequest::new(&d).bearer(&token).origin(origin).expect_refused(403, "origin_forbidden");
    }
    WsRequest::new(&d)
        .bearer_protocol(&token, V1)
        .origin(EVIL)
        .expect_refused(403, "origin_forbidden");
    // An unlisted Origin is refused whatever the token.
    WsRequest::new(&d).origin(EVIL).expect_refused(403, "origin_forbidden");
}

#[test]
fn ws_query_token_only_when_allowed() {
    let off = Daemon::start(Config::default());
    let token = session_token(&off, "u-1", "wq-1");
    WsRequest::new(&off)
        .path(&format!("/ws?access_token={token}"))
        .expect_refused(401, "token_missing");

    let on = Daemon::start(Config::default().set("ws.allow_query_token", "true"));
    let token = session_token(&on, "u-1", "wq-1");
    let mut ws = WsRequest::new(&on).path(&format!("/ws?access_token={token}")).connect();
    assert_eq!(welcome_sid(&mut ws), "wq-1");
    WsRequest::new(&on)
        .path(&format!("/ws?access_token={}", tampered(&token)))
        .expect_refused(401, "token_invalid_signature");
    WsRequest::new(&on).path("/ws?other=1").expect_refused(401, "token_missing");
}

#[test]
fn ws_the_first_token_source_wins() {
    let d = Daemon::start(
        Config::default()
            .set("ws.allowed_origins", &toml_list(&[APP]))
            .set("ws.allow_query_token", "true"),
    );
    let a = session_token(&d, "u-a", "wf-a");
    let b = session_token(&d, "u-b", "wf-b");
    let bad = tampered(&a);
    let query = |t: &str| format!("/ws?access_token={t}");
    let cookie = |t: &str| format!("session_token={t}");
    let entry = |t: &str| format!("bearer.{t}");

    // Authorization over the subprotocol, the cookie and the query.
    let mut ws = WsRequest::new(&d)
        .path(&query(&b))
        .bearer(&a)
        .protocols(&[&entry(&b), V1])
        .cookie(&cookie(&b))
        .origin(APP)
        .connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1));
    assert_eq!(welcome_sid(&mut ws), "wf-a", "Authorization comes first");
    // The subprotocol over the cookie and the query.
    let mut ws = WsRequest::new(&d)
        .path(&query(&b))
        .protocols(&[&entry(&a), V1])
        .cookie(&cookie(&b))
        .origin(APP)
        .connect();
    assert_eq!(welcome_sid(&mut ws), "wf-a", "the subprotocol entry comes second");
    // The cookie over the query.
    let mut ws = WsRequest::new(&d).path(&query(&b)).cookie(&cookie(&a)).origin(APP).connect();
    assert_eq!(welcome_sid(&mut ws), "wf-a", "the cookie comes third");

    // The first source found is the answer: a bad one does not fall through to a good one.
    WsRequest::new(&d)
        .bearer(&bad)
        .protocols(&[&entry(&a), V1])
        .expect_refused(401, "token_invalid_signature");
    WsRequest::new(&d)
        .protocols(&[&entry(&bad), V1])
        .cookie(&cookie(&a))
        .origin(APP)
        .expect_refused(401, "token_invalid_signature");
    WsRequest::new(&d)
        .path(&query(&a))
        .cookie(&cookie(&bad))
        .origin(APP)
        .expect_refused(401, "token_invalid_signature");
}

#[test]
fn ws_handshake_refusals_are_the_http_errors_of_section_3() {
    let d = Daemon::start(Config::default());
    let live = session_token(&d, "u-1", "wr-live");
    let t = now();

    WsRequest::new(&d).expect_refused(401, "token_missing");
    WsRequest::new(&d).bearer("not-a-jwt").expect_refused(401, "token_malformed");
    WsRequest::new(&d).bearer(&tampered(&live)).expect_refused(401, "token_invalid_signature");
    let expired =
        hs256(&with(enhanced("u-1", "u-1@example.com", "user", "wr-old"), "exp", json!(t - 3600)));
    WsRequest::new(&d).bearer(&expired).expect_refused(401, "token_expired");
    let none = unsigned(
        &json!({"alg": "none", "typ": "JWT"}),
        &enhanced("u-1", "u-1@example.com", "user", "wr-live"),
        "",
    );
    WsRequest::new(&d).bearer(&none).expect_refused(401, "token_algorithm_rejected");

    // A valid token without a live session: no upgrade either.
    let no_session = hs256(&enhanced("u-1", "u-1@example.com", "user", "wr-none"));
    WsRequest::new(&d).bearer(&no_session).expect_refused(401, "session_not_found");
    let revoked = session_token(&d, "u-1", "wr-revoked");
    d.revoke("wr-revoked").expect_status(200);
    WsRequest::new(&d).bearer(&revoked).expect_refused(401, "session_revoked");

    // The client's own request id comes back in the header and the body.
    let r =
        WsRequest::new(&d).header("X-Request-Id", "ws-req.1").expect_refused(401, "token_missing");
    assert_eq!(r.header("x-request-id").as_deref(), Some("ws-req.1"));

    // And the live one upgrades.
    let mut ws = WsRequest::new(&d).bearer(&live).connect();
    assert_eq!(welcome_sid(&mut ws), "wr-live");
}

#[test]
fn ws_path_is_configurable() {
    let d = Daemon::start(Config::default().set_str("ws.path", "/realtime"));
    let token = session_token(&d, "u-1", "wx-1");
    let mut ws = WsRequest::new(&d).path("/realtime").bearer(&token).connect();
    assert_eq!(welcome_sid(&mut ws), "wx-1");
    WsRequest::new(&d).bearer(&token).expect_refused(404, "not_found");
}
