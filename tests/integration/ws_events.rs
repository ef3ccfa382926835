//! Contract section 5, events and client messages on one instance: `session.revoked` then
//! close 4001, `user.sessions_revoked` then 4001 on every socket of the user, `session.refreshed`,
//! `session.expiring` once then 4002 at expiry; exact delivery (a connection hears its
//! session's events, its user's events and `service.*` — another user's socket hears nothing);
//! `ping` → `pong`; `refresh` with a token of the same user → `reauthenticated`, anything else
//! → 4003; MessagePack frames carry the same fields as JSON ones.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Config, Daemon};
use crate::tokens::*;
use crate::ws_client::*;

/// A connection of this token that has read its welcome.
#[track_caller]
fn open(d: &Daemon, token: &str) -> Ws {
    let mut ws = WsRequest::new(d).bearer(token).connect();
    ws.expect_welcome();
    ws
}

/// A MessagePack connection of this token that has read its welcome.
#[track_caller]
fn open_msgpack(d: &Daemon, token: &str) -> Ws {
    let mut ws = WsRequest::new(d).bearer_protocol(token, V1_MSGPACK).connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1_MSGPACK));
    ws.expect_welcome();
    ws
}

/// Asserts that `heard` holds only events `name` of the session `sid` (what a socket of
/// another session of the same user may hear, as its user's event).
#[track_caller]
fn only_user_events(heard: &[Value], name: &str, sid: &str, what: &str) {
    for v in heard {
        assert!(
            v["type"] == "event" && v["event"] == name && v["session_id"] == sid,
            "{what}: unexpected frame {v} (all: {heard:?})"
        );
    }
}

/// A token of this user and session with this `exp`.
fn token_exp(user: &str, sid: &str, exp: i64) -> String {
    hs256(&with(enhanced(user, &format!("{user}@example.com"), "user", sid), "exp", json!(exp)))
}

#[test]
fn ws_revoke_sends_session_revoked_then_closes_4001() {
    let d = Daemon::start(Config::default());
    let t1 = session_token(&d, "u-1", "ev-1");
    let t1b = session_token(&d, "u-1", "ev-1b");
    let t2 = session_token(&d, "u-2", "ev-2");
    let mut victim = open(&d, &t1);
    let mut same_user = open(&d, &t1b);
    let mut other_user = open(&d, &t2);

    d.revoke("ev-1").expect_status(200);
    let ev = victim.expect_event("session.revoked");
    assert_eq!(ev["session_id"], json!("ev-1"), "{ev}");
    assert_eq!(ev["user_id"], json!("u-1"), "{ev}");
    assert_eq!(victim.expect_close("after session.revoked"), Some(4001));

    // The user's other session stays open (it may hear the revocation as its user's event).
    let heard = same_user.ping_barrier("the user's other session");
    only_user_events(&heard, "session.revoked", "ev-1", "the user's other session");
    // Another user hears nothing.
    assert_eq!(other_user.ping_barrier("another user"), Vec::<Value>::new());

    // The revoked session cannot come back.
    WsRequest::new(&d).bearer(&t1).expect_refused(401, "session_revoked");
    // Revoking it again is idempotent and sends nothing to anyone.
    d.revoke("ev-1").expect_status(200);
    let heard = same_user.ping_barrier("the user's other session, second revoke");
    only_user_events(&heard, "session.revoked", "ev-1", "the user's other session");
    assert_eq!(other_user.ping_barrier("another user, second revoke"), Vec::<Value>::new());
}

#[test]
fn ws_revoke_all_closes_every_socket_of_the_user_and_leaves_others_open() {
    let d = Daemon::start(Config::default());
    let s1 = session_token(&d, "u-1", "ea-1");
    let s2 = session_token(&d, "u-1", "ea-2");
    let other = session_token(&d, "u-2", "ea-3");
    let mut sockets = vec![
        ("s1 json", open(&d, &s1)),
        ("s1 msgpack", open_msgpack(&d, &s1)),
        ("s2", open(&d, &s2)),
    ];
    let mut bystander = open(&d, &other);

    let r = d.revoke_all("u-1").expect_status(200).json();
    assert_eq!(r, json!({"revoked": 2}), "{r}");

    for (what, ws) in &mut sockets {
        let (messages, end) = ws.until_close(FRAME_TIMEOUT);
        assert!(
            matches!(end, Incoming::Close(Some(4001), _)),
            "{what}: expected close 4001 after user.sessions_revoked; got {end:?} after {messages:?}"
        );
        let revoked_all: Vec<&Value> =
            messages.iter().filter(|v| v["event"] == "user.sessions_revoked").collect();
        assert_eq!(
            revoked_all.len(),
            1,
            "{what}: one user.sessions_revoked before 4001: {messages:?}"
        );
        check_event_shape(revoked_all[0]);
        assert_eq!(revoked_all[0]["user_id"], json!("u-1"), "{what}: {messages:?}");
        for v in &messages {
            assert!(
                v["type"] == "event"
                    && (v["event"] == "user.sessions_revoked" || v["event"] == "session.revoked"),
                "{what}: unexpected frame before the close: {v}"
            );
        }
    }
    assert_eq!(bystander.ping_barrier("another user"), Vec::<Value>::new());
    d.validate(&other).expect_status(200);
    for t in [&s1, &s2] {
        WsRequest::new(&d).bearer(t).expect_refused(401, "session_revoked");
    }
}

#[test]
fn ws_refreshed_event_reaches_the_session_and_not_another_user() {
    let d = Daemon::start(Config::default());
    let t1 = session_token(&d, "u-1", "er-1");
    let t1b = session_token(&d, "u-1", "er-1b");
    let t2 = session_token(&d, "u-2", "er-2");
    let mut own = open(&d, &t1);
    let mut same_user = open(&d, &t1b);
    let mut other_user = open(&d, &t2);

    d.refresh("er-1", json!({"ttl_seconds": 900})).expect_status(200);
    let ev = own.expect_event("session.refreshed");
    assert_eq!(ev["session_id"], json!("er-1"), "{ev}");
    assert_eq!(ev["user_id"], json!("u-1"), "{ev}");
    assert_eq!(own.ping_barrier("after session.refreshed"), Vec::<Value>::new(), "stays open");

    let heard = same_user.ping_barrier("the user's other session");
    only_user_events(&heard, "session.refreshed", "er-1", "the user's other session");
    assert_eq!(other_user.ping_barrier("another user"), Vec::<Value>::new());

    // A second refresh: a second event with another id.
    d.refresh("er-1", json!({})).expect_status(200);
    let ev2 = own.expect_event("session.refreshed");
    assert_ne!(ev2["id"], ev["id"], "event ids are unique: {ev} {ev2}");
}

#[test]
fn ws_ping_message_gets_a_pong() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "eg-1");
    let mut ws = open(&d, &token);
    for _ in 0..3 {
        ws.send_text(r#"{"type":"ping"}"#);
        assert_eq!(ws.expect_msg("pong"), json!({"type": "pong"}));
    }
    let mut mp = open_msgpack(&d, &token);
    mp.send(&json!({"type": "ping"}));
    assert_eq!(mp.expect_msg("MessagePack pong"), json!({"type": "pong"}));
}

#[test]
fn ws_refresh_message_with_a_token_of_the_same_user_reauthenticates() {
    let d = Daemon::start(
        Config::default()
            .set("tokens.leeway_seconds", "0")
            .set("tokens.refresh_window_seconds", "1"),
    );
    let t = now();
    let old_exp = t + 4;
    let first = token_exp("u-1", "eq-1", old_exp);
    d.create_with(json!({"token": first, "ttl_seconds": 600})).expect_status(201);
    let mut ws = WsRequest::new(&d).bearer(&first).connect();
    let welcome = ws.expect_welcome();
    assert_eq!(welcome["expires_at"], json!(old_exp), "the token expires first: {welcome}");

    let new_exp = t + 60;
    ws.send(&json!({"type": "refresh", "token": token_exp("u-1", "eq-1", new_exp)}));
    let answer = ws.expect_msg("reauthenticated");
    assert_eq!(answer, json!({"type": "reauthenticated", "expires_at": new_exp}));

    // It outlives the first token: no session.expiring, no 4002 past the old expiry.
    let until = (old_exp + 2) * 1000 - now_ms();
    let heard = ws.quiet_for(
        Duration::from_millis(u64::try_from(until.max(0)).unwrap()),
        "past the old expiry",
    );
    assert_eq!(heard, Vec::<Value>::new(), "nothing after reauthentication");
    assert_eq!(ws.ping_barrier("past the old expiry"), Vec::<Value>::new());
}

#[test]
fn ws_refresh_message_with_another_users_or_an_invalid_token_closes_4003() {
    let d = Daemon::start(Config::default());
    let mine = session_token(&d, "u-1", "en-1");
    let theirs = session_token(&d, "u-2", "en-2");
    let cases = [
        ("another user's valid token", theirs.clone()),
        (
            "a bad signature",
            tamper_payload(&mine, &enhanced("u-1", "u-1@example.com", "admin", "en-1")),
        ),
        ("an expired token", token_exp("u-1", "en-1", now() - 3600)),
        ("not a token", "garbage".to_string()),
    ];
    for (what, token) in cases {
        let mut ws = open(&d, &mine);
        ws.send(&json!({"type": "refresh", "token": token}));
        let (messages, end) = ws.until_close(FRAME_TIMEOUT);
        assert!(
            matches!(end, Incoming::Close(Some(4003), _)),
            "refresh with {what}: expected close 4003, got {end:?} after {messages:?}"
        );
        assert!(
            messages.iter().all(|v| v["type"] != "reauthenticated"),
            "refresh with {what}: {messages:?}"
        );
    }
    // The refused refreshes revoked nothing.
    d.validate(&mine).expect_status(200);
    d.validate(&theirs).expect_status(200);
}

#[test]
fn ws_expiry_sends_session_expiring_once_then_closes_4002() {
    let d = Daemon::start(
        Config::default()
            .set("tokens.leeway_seconds", "0")
            .set("tokens.refresh_window_seconds", "2"),
    );
    let exp = now() + 5;
    let token = token_exp("u-1", "ex-1", exp);
    let session = d.create_ok(&token);
    assert_eq!(session["expires_at"], json!(exp), "{session}");
    let mut ws = WsRequest::new(&d).bearer(&token).connect();
    let welcome = ws.expect_welcome();
    assert_eq!(welcome["expires_at"], json!(exp), "{welcome}");

    let mut frames = Vec::new();
    let end = loop {
        match ws.next(Duration::from_secs(10)) {
            Incoming::Text(v) | Incoming::Binary(v) => frames.push((now_ms(), v)),
            other => break (now_ms(), other),
        }
    };
    let expiring: Vec<&(i64, Value)> =
        frames.iter().filter(|(_, v)| v["event"] == "session.expiring").collect();
    assert_eq!(
        frames.len(),
        1,
        "exactly one frame (session.expiring) before the close: {frames:?}"
    );
    assert_eq!(expiring.len(), 1, "one session.expiring: {frames:?}");
    let (at, ev) = expiring[0];
    check_event_shape(ev);
    assert_eq!(ev["session_id"], json!("ex-1"), "{ev}");
    assert_eq!(ev["user_id"], json!("u-1"), "{ev}");
    // Two seconds (the refresh window) before expiry, give or take the second's granularity.
    let due = (exp - 2) * 1000;
    assert!(
        (due - 1000..=due + 1500).contains(at),
        "session.expiring came at {at}, {} ms from its due time {due}",
        at - due
    );
    let (closed_at, close) = end;
    assert!(matches!(close, Incoming::Close(Some(4002), _)), "expected close 4002, got {close:?}");
    assert!(
        (exp * 1000 - 1000..=exp * 1000 + 2500).contains(&closed_at),
        "closed at {closed_at}, {} ms from the expiry {}",
        closed_at - exp * 1000,
        exp * 1000
    );
}

#[test]
fn ws_msgpack_frames_carry_the_same_fields_as_json() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "em-1");
    let mut js = WsRequest::new(&d).bearer_protocol(&token, V1).connect();
    let mut mp = WsRequest::new(&d).bearer_protocol(&token, V1_MSGPACK).connect();
    assert_eq!(mp.protocol.as_deref(), Some(V1_MSGPACK));

    let wj = js.expect_welcome();
    let wm = mp.expect_welcome();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(&wj), keys(&wm), "welcome: {wj} vs {wm}");
    for k in keys(&wj) {
        if k != "connection_id" {
            assert_eq!(wj[&k], wm[&k], "welcome field {k}: {wj} vs {wm}");
        }
    }
    assert!(wm["connection_id"].is_string(), "{wm}");

    mp.send(&json!({"type": "ping"}));
    assert_eq!(mp.expect_msg("pong"), json!({"type": "pong"}));

    js.send(&json!({"type": "nope"}));
    mp.send(&json!({"type": "nope"}));
    let (ej, em) = (js.expect_msg("error"), mp.expect_msg("error"));
    assert_eq!(keys(&ej), keys(&em), "error: {ej} vs {em}");
    assert_eq!(em["type"], json!("error"), "{em}");
    assert_eq!(em["code"], json!("bad_request"), "{em}");
    assert!(em["message"].is_string(), "{em}");

    d.refresh("em-1", json!({})).expect_status(200);
    let (rj, rm) = (js.expect_event("session.refreshed"), mp.expect_event("session.refreshed"));
    assert_eq!(rj, rm, "the same event in both encodings");

    d.revoke("em-1").expect_status(200);
    let (vj, vm) = (js.expect_event("session.revoked"), mp.expect_event("session.revoked"));
    assert_eq!(vj, vm, "the same event in both encodings");
    assert_eq!(js.expect_close("json"), Some(4001));
    assert_eq!(mp.expect_close("msgpack"), Some(4001));
}

#[test]
fn ws_msgpack_is_selected_for_a_client_with_an_authorization_header_too() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "eh-1");
    let mut ws = WsRequest::new(&d).bearer(&token).protocols(&[V1_MSGPACK]).connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1_MSGPACK));
    let w = ws.expect_welcome();
    assert_eq!(w["session_id"], json!("eh-1"), "{w}");
    let mut ws = WsRequest::new(&d).bearer(&token).protocols(&[V1]).connect();
    assert_eq!(ws.protocol.as_deref(), Some(V1));
    assert!(matches!(ws.next(FRAME_TIMEOUT), Incoming::Text(v) if v["type"] == "welcome"));
}

#[test]
fn ws_session_expiry_closes_4002_before_the_token_expires() {
    let d = Daemon::start(
        Config::default()
            .set("tokens.leeway_seconds", "0")
            .set("tokens.refresh_window_seconds", "2"),
    );
    // A one-hour token whose session lives 5 s: the connection ends with the session.
    let token = hs256(&enhanced("u-1", "u-1@example.com", "user", "es-1"));
    let session =
        d.create_with(json!({"token": token, "ttl_seconds": 5})).expect_status(201).json();
    let expires_at = session["session"]["expires_at"].as_i64().unwrap();
    let mut ws = WsRequest::new(&d).bearer(&token).connect();
    let welcome = ws.expect_welcome();
    assert_eq!(welcome["expires_at"], json!(expires_at), "the session ends first: {welcome}");

    let (messages, end) = ws.until_close(Duration::from_secs(10));
    let closed_at = now_ms();
    assert!(matches!(end, Incoming::Close(Some(4002), _)), "expected 4002, got {end:?}");
    assert_eq!(messages.len(), 1, "one session.expiring before the close: {messages:?}");
    check_event_shape(&messages[0]);
    assert_eq!(messages[0]["event"], json!("session.expiring"), "{messages:?}");
    assert_eq!(messages[0]["session_id"], json!("es-1"), "{messages:?}");
    assert!(
        (expires_at * 1000 - 1000..=expires_at * 1000 + 2500).contains(&closed_at),
        "closed at {closed_at}, {} ms from the session's expiry",
        closed_at - expires_at * 1000
    );
}

#[test]
fn ws_a_session_refreshed_through_the_api_keeps_its_socket_past_the_old_expiry() {
    let d = Daemon::start(
        Config::default()
            .set("tokens.leeway_seconds", "0")
            .set("tokens.refresh_window_seconds", "1"),
    );
    let token = hs256(&enhanced("u-1", "u-1@example.com", "user", "ek-1"));
    let session =
        d.create_with(json!({"token": token, "ttl_seconds": 4})).expect_status(201).json();
    let old_expiry = session["session"]["expires_at"].as_i64().unwrap();
    let mut ws = WsRequest::new(&d).bearer(&token).connect();
    assert_eq!(ws.expect_welcome()["expires_at"], json!(old_expiry));

    d.refresh("ek-1", json!({"ttl_seconds": 600})).expect_status(200);
    let ev = ws.expect_event("session.refreshed");
    assert_eq!(ev["session_id"], json!("ek-1"), "{ev}");

    // The session did not expire: neither session.expiring nor 4002 at its old expiry.
    let until = (old_expiry + 2) * 1000 - now_ms();
    let heard = ws.quiet_for(
        Duration::from_millis(u64::try_from(until.max(0)).unwrap()),
        "past the session's old expiry",
    );
    assert_eq!(heard, Vec::<Value>::new(), "nothing after the refresh");
    assert_eq!(ws.ping_barrier("past the old expiry"), Vec::<Value>::new());
}
