//! Contract sections 2 and 3: the session management routes (create, get, refresh, revoke,
//! list, revoke-all), expiry and the TTL cap.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Config, Daemon, poll_until};
use crate::tokens::*;

fn token(user: &str, sid: &str) -> String {
    hs256(&enhanced(user, &format!("{user}@example.com"), "user", sid))
}

/// `a` is within `slack` seconds of `b`.
#[track_caller]
fn assert_near(a: &Value, b: i64, slack: i64, what: &str) {
    let a = a.as_i64().unwrap_or_else(|| panic!("{what}: not an integer: {a}"));
    assert!((a - b).abs() <= slack, "{what}: {a} is not within {slack} s of {b}");
}

fn ids(list: &Value) -> BTreeSet<String> {
    list["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array: {list}"))
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn create_returns_201_then_200_with_the_stored_session() {
    let d = Daemon::start(Config::default());
    let t = now();
    let claims = json!({"sub": "u-1", "email": "ada@example.com", "role": "admin", "sid": "s-1",
                        "iat": t, "exp": t + 1800});
    let tok = hs256(&claims);
    let r =
        d.create_with(json!({"token": tok, "attributes": {"ip": "203.0.113.7", "ua": "curl/8"}}));
    let first = r.expect_status(201).json()["session"].clone();
    assert_eq!(first["session_id"], json!("s-1"), "{first}");
    assert_eq!(first["user_id"], json!("u-1"));
    assert_eq!(first["email"], json!("ada@example.com"));
    assert_eq!(first["role"], json!("admin"));
    assert_eq!(first["format"], json!("enhanced"));
    assert_near(&first["created_at"], now(), 2, "created_at");
    assert_eq!(
        first["expires_at"],
        json!(t + 1800),
        "expires_at is the token's exp without ttl_seconds"
    );
    assert_eq!(first["attributes"], json!({"ip": "203.0.113.7", "ua": "curl/8"}));

    // The same session again: 200 with the stored one (first attributes kept).
    let again = d.create_with(json!({"token": tok, "attributes": {"ip": "198.51.100.1"}}));
    assert_eq!(again.expect_status(200).json()["session"], first);
    let again = d.create(&tok);
    assert_eq!(again.expect_status(200).json()["session"], first);

    // GET returns the same.
    assert_eq!(d.get_session("s-1").expect_status(200).json(), json!({"session": first}));
}

#[test]
fn create_without_attributes_has_an_empty_map() {
    let d = Daemon::start(Config::default());
    let s = d.create_ok(&token("u-1", "noattr"));
    assert_eq!(s["attributes"], json!({}), "{s}");
}

#[test]
fn create_with_ttl_seconds_and_the_max_ttl_cap() {
    let d = Daemon::start(Config::default().set("sessions.max_ttl_seconds", "100"));
    let tok = token("u-1", "ttl-60");
    let s = d.create_with(json!({"token": tok, "ttl_seconds": 60})).expect_status(201).json()["session"].clone();
    assert_near(&s["expires_at"], now() + 60, 2, "expires_at with ttl 60");

    let s = d
        .create_with(json!({"token": token("u-1", "ttl-huge"), "ttl_seconds": 100_000}))
        .expect_status(201)
        .json()["session"]
        .clone();
    assert_near(&s["expires_at"], now() + 100, 2, "ttl capped at max_ttl_seconds");

    // Without ttl_seconds the token's exp (an hour ahead) is capped too.
    let s = d.create_ok(&token("u-1", "exp-capped"));
    assert_near(&s["expires_at"], now() + 100, 2, "token exp capped at max_ttl_seconds");
}

#[test]
fn create_refuses_bad_bodies() {
    let d = Daemon::start(Config::default());
    let tok = token("u-1", "bad-bodies");
    let cases = [
        ("ttl 0", json!({"token": tok, "ttl_seconds": 0})),
        ("ttl negative", json!({"token": tok, "ttl_seconds": -5})),
        ("ttl a string", json!({"token": tok, "ttl_seconds": "60"})),
        ("ttl fractional", json!({"token": tok, "ttl_seconds": 1.5})),
        ("unknown field", json!({"token": tok, "user_id": "someone"})),
        ("attribute not a string", json!({"token": tok, "attributes": {"n": 1}})),
        ("attributes not a map", json!({"token": tok, "attributes": ["a"]})),
        ("token not a string", json!({"token": 12})),
        ("body an array", json!([tok])),
        // serde accepts a struct as a sequence of its fields unless told otherwise.
        ("body an array of every field", json!([tok, 60, {}])),
    ];
    let mut failures = Vec::new();
    for (name, body) in cases {
        if let Err(e) = d.create_with(body).check_error(400, "bad_request") {
            failures.push(format!("[{name}] {e}"));
        }
    }
    for (name, raw) in
        [("truncated JSON", &b"{\"token\": \"abc"[..]), ("not JSON", b"token=abc"), ("empty", b"")]
    {
        if let Err(e) =
            d.post("/api/v1/sessions").key().raw_json(raw).send().check_error(400, "bad_request")
        {
            failures.push(format!("[{name}] {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // None of it created the session.
    d.get_session("bad-bodies").expect_error(404, "session_not_found");
}

#[test]
fn create_with_a_rejected_token_gives_the_token_error() {
    let d = Daemon::start(Config::default());
    let expired =
        hs256(&with(enhanced("u-1", "a@example.com", "user", "ce"), "exp", json!(now() - 3600)));
    d.create(&expired).expect_error(401, "token_expired");
    d.create("garbage").expect_error(401, "token_malformed");
    d.get_session("ce").expect_error(404, "session_not_found");
}

#[test]
fn get_unknown_session_and_overlong_ids() {
    let d = Daemon::start(Config::default());
    d.get_session("nope").expect_error(404, "session_not_found");
    let long = "a".repeat(300);
    d.get_session(&long).expect_error(400, "bad_request");
    d.revoke(&long).expect_error(400, "bad_request");
    d.refresh(&long, json!({})).expect_error(400, "bad_request");
    d.list(&long).expect_error(400, "bad_request");
    d.revoke_all(&long).expect_error(400, "bad_request");
    // 256 bytes is still an id.
    d.get_session(&"a".repeat(256)).expect_error(404, "session_not_found");
}

#[test]
fn refresh_with_and_without_ttl() {
    let d = Daemon::start(Config::default());
    let tok = token("u-1", "ref-1");
    let created = d
        .create_with(json!({"token": tok, "ttl_seconds": 1000}))
        .expect_status(201)
        .json()["session"]
        .clone();

    let s =
        d.refresh("ref-1", json!({"ttl_seconds": 50})).expect_status(200).json()["session"].clone();
    assert_near(&s["expires_at"], now() + 50, 2, "refresh with ttl 50");
    assert_eq!(s["session_id"], created["session_id"]);
    assert_eq!(s["created_at"], created["created_at"], "refresh keeps created_at");
    assert_eq!(s["user_id"], created["user_id"]);

    // Without ttl: now + the length the session was created with (1000), not the last refresh.
    let s = d.refresh("ref-1", json!({})).expect_status(200).json()["session"].clone();
    assert_near(&s["expires_at"], now() + 1000, 2, "refresh without ttl");
    assert_eq!(d.get_session("ref-1").expect_status(200).json()["session"], s);
    // The validation answer shows the refreshed session.
    assert_eq!(d.validate(&tok).expect_status(200).json()["session"], s);
}

#[test]
fn refresh_without_ttl_of_a_session_created_from_the_token_exp() {
    let d = Daemon::start(Config::default());
    let t = now();
    let tok =
        hs256(&with(enhanced("u-1", "a@example.com", "user", "ref-exp"), "exp", json!(t + 700)));
    let created = d.create_ok(&tok);
    assert_eq!(created["expires_at"], json!(t + 700));
    let length = t + 700 - created["created_at"].as_i64().unwrap();
    let s = d.refresh("ref-exp", json!({})).expect_status(200).json()["session"].clone();
    assert_near(&s["expires_at"], now() + length, 2, "refresh without ttl");
}

#[test]
fn refresh_is_capped_and_checks_its_input() {
    let d = Daemon::start(Config::default().set("sessions.max_ttl_seconds", "100"));
    d.create_with(json!({"token": token("u-1", "ref-cap"), "ttl_seconds": 30})).expect_status(201);
    let s =
        d.refresh("ref-cap", json!({"ttl_seconds": 100_000})).expect_status(200).json()["session"]
            .clone();
    assert_near(&s["expires_at"], now() + 100, 2, "refresh capped at max_ttl_seconds");

    d.refresh("ref-cap", json!({"ttl_seconds": 0})).expect_error(400, "bad_request");
    d.refresh("ref-cap", json!({"ttl_seconds": -1})).expect_error(400, "bad_request");
    d.refresh("ref-cap", json!({"ttl_seconds": "10"})).expect_error(400, "bad_request");
    d.refresh("ref-cap", json!({"ttl": 10})).expect_error(400, "bad_request");
    d.refresh("ref-cap", json!([10])).expect_error(400, "bad_request");
    d.post("/api/v1/sessions/ref-cap/refresh")
        .key()
        .raw_json(b"{")
        .send()
        .expect_error(400, "bad_request");
    d.refresh("no-such-session", json!({})).expect_error(404, "session_not_found");
}

#[test]
fn enormous_ttls_are_capped_or_refused_never_an_internal_error() {
    let d = Daemon::start(Config::default().set("sessions.max_ttl_seconds", "100"));
    d.create_ok(&token("u-1", "big-ttl"));
    let huge = [json!(i64::MAX), json!(u64::MAX), json!(1e30)];
    let mut failures = Vec::new();
    for (i, ttl) in huge.iter().enumerate() {
        let create =
            d.create_with(json!({"token": token("u-1", &format!("big-{i}")), "ttl_seconds": ttl}));
        let refresh = d.refresh("big-ttl", json!({"ttl_seconds": ttl}));
        for r in [create, refresh] {
            let ok = match r.status {
                200 | 201 => {
                    let exp = r.json()["session"]["expires_at"].as_i64().unwrap_or(i64::MAX);
                    exp <= now() + 101
                }
                400 => r.check_error(400, "bad_request").is_ok(),
                _ => false,
            };
            if !ok {
                failures.push(format!("ttl_seconds {ttl}: {} {} {}", r.what, r.status, r.body));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn refresh_of_a_revoked_session_is_409() {
    let d = Daemon::start(Config::default());
    d.create_ok(&token("u-1", "ref-rev"));
    d.revoke("ref-rev").expect_status(200);
    d.refresh("ref-rev", json!({})).expect_error(409, "session_revoked");
    d.refresh("ref-rev", json!({"ttl_seconds": 60})).expect_error(409, "session_revoked");
}

#[test]
fn revoke_is_idempotent_and_final() {
    let d = Daemon::start(Config::default());
    let tok = token("u-1", "rev-1");
    d.create_ok(&tok);
    let r = d.revoke("rev-1").expect_status(200).json();
    assert_eq!(r, json!({"revoked": true, "session_id": "rev-1"}));
    let r = d.revoke("rev-1").expect_status(200).json();
    assert_eq!(r, json!({"revoked": true, "session_id": "rev-1"}));
    d.get_session("rev-1").expect_error(404, "session_not_found");
    d.validate(&tok).expect_error(401, "session_revoked");
    d.create(&tok).expect_error(409, "session_revoked");
    d.create_with(json!({"token": tok, "ttl_seconds": 60})).expect_error(409, "session_revoked");
    assert!(ids(&d.list("u-1").expect_status(200).json()).is_empty());
}

#[test]
fn revoke_of_an_unknown_id_blocks_its_creation() {
    let d = Daemon::start(Config::default());
    let r = d.revoke("pre-revoked").expect_status(200).json();
    assert_eq!(r, json!({"revoked": true, "session_id": "pre-revoked"}));
    let tok = token("u-1", "pre-revoked");
    d.create(&tok).expect_error(409, "session_revoked");
    d.validate(&tok).expect_error(401, "session_revoked");
}

#[test]
fn list_shows_live_sessions_of_that_user_only() {
    let d = Daemon::start(Config::default());
    let mut created = Vec::new();
    for sid in ["l-a", "l-b", "l-c"] {
        created.push(
            d.create_with(json!({"token": token("u-list", sid), "attributes": {"k": sid}}))
                .expect_status(201),
        );
    }
    d.create_ok(&token("u-other", "l-other"));
    d.create_with(json!({"token": token("u-list", "l-short"), "ttl_seconds": 1}))
        .expect_status(201);
    d.revoke("l-b").expect_status(200);

    let expected: BTreeSet<String> = ["l-a", "l-c"].iter().map(|s| s.to_string()).collect();
    let listed = poll_until(Duration::from_secs(10), || {
        let v = d.list("u-list").expect_status(200).json();
        (ids(&v) == expected).then_some(v)
    })
    .unwrap_or_else(|| panic!("list never became {expected:?}: {}", d.list("u-list").body));
    for s in listed["sessions"].as_array().unwrap() {
        let sid = s["session_id"].as_str().unwrap();
        assert_eq!(s["user_id"], json!("u-list"));
        assert_eq!(s["attributes"], json!({"k": sid}));
        assert_eq!(*s, d.get_session(sid).expect_status(200).json()["session"]);
    }
    assert_eq!(d.list("nobody").expect_status(200).json(), json!({"sessions": []}));
}

#[test]
fn revoke_all_counts_and_leaves_other_users_alone() {
    let d = Daemon::start(Config::default());
    let mine: Vec<String> = ["ra-1", "ra-2", "ra-3"].iter().map(|s| token("u-ra", s)).collect();
    for t in &mine {
        d.create_ok(t);
    }
    let other = token("u-keep", "keep-1");
    d.create_ok(&other);

    assert_eq!(d.revoke_all("u-ra").expect_status(200).json(), json!({"revoked": 3}));
    assert_eq!(d.list("u-ra").expect_status(200).json(), json!({"sessions": []}));
    for (t, sid) in mine.iter().zip(["ra-1", "ra-2", "ra-3"]) {
        d.validate(t).expect_error(401, "session_revoked");
        d.create(t).expect_error(409, "session_revoked");
        d.get_session(sid).expect_error(404, "session_not_found");
    }
    d.validate(&other).expect_status(200);
    assert_eq!(ids(&d.list("u-keep").expect_status(200).json()).len(), 1);
    assert_eq!(d.revoke_all("u-ra").expect_status(200).json(), json!({"revoked": 0}));
    assert_eq!(d.revoke_all("nobody").expect_status(200).json(), json!({"revoked": 0}));
}

#[test]
fn session_expires_after_ttl_seconds() {
    let d = Daemon::start(Config::default());
    let tok = token("u-exp", "exp-ttl");
    let s =
        d.create_with(json!({"token": tok, "ttl_seconds": 1})).expect_status(201).json()["session"]
            .clone();
    let expires_at = s["expires_at"].as_i64().unwrap();
    assert_near(&s["expires_at"], now() + 1, 1, "expires_at");
    let gone = poll_until(Duration::from_secs(10), || {
        let r = d.get_session("exp-ttl");
        (r.status != 200).then_some(r)
    })
    .expect("the session never expired");
    assert!(now() >= expires_at, "the session expired before its expires_at");
    gone.expect_error(404, "session_not_found");
    d.validate(&tok).expect_error(401, "session_not_found");
    assert_eq!(d.list("u-exp").expect_status(200).json(), json!({"sessions": []}));
    d.refresh("exp-ttl", json!({})).expect_error(404, "session_not_found");
}

#[test]
fn session_expires_at_the_token_exp() {
    let d = Daemon::start(Config::default().set("tokens.leeway_seconds", "0"));
    let exp = now() + 2;
    let tok =
        hs256(&with(enhanced("u-te", "a@example.com", "user", "exp-token"), "exp", json!(exp)));
    let s = d.create_ok(&tok);
    assert_eq!(s["expires_at"], json!(exp));
    let gone = poll_until(Duration::from_secs(10), || {
        let r = d.get_session("exp-token");
        (r.status != 200).then_some(r)
    })
    .expect("the session never expired");
    assert!(now() >= exp, "the session expired before the token's exp");
    gone.expect_error(404, "session_not_found");
}

#[test]
fn expired_session_can_be_recreated() {
    // Expiry is not revocation: a new login with the same id after expiry creates it again.
    let d = Daemon::start(Config::default());
    let tok = token("u-1", "recreate");
    d.create_with(json!({"token": tok, "ttl_seconds": 1})).expect_status(201);
    poll_until(Duration::from_secs(10), || (d.get_session("recreate").status == 404).then_some(()))
        .expect("the session never expired");
    d.create_with(json!({"token": tok, "ttl_seconds": 60})).expect_status(201);
    d.validate(&tok).expect_status(200);
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn ids_with_reserved_characters_work_percent_encoded() {
    let d = Daemon::start(Config::default());
    let user = "auth0|12345";
    let sid = "s 1/2?x#y";
    let tok = hs256(&enhanced(user, "a@example.com", "user", sid));
    let created = d.create_ok(&tok);
    assert_eq!(created["session_id"], json!(sid));
    assert_eq!(created["user_id"], json!(user));
    let (u, s) = (path_segment(user), path_segment(sid));
    assert_eq!(d.get_session(&s).expect_status(200).json()["session"], created);
    assert_eq!(d.list(&u).expect_status(200).json(), json!({"sessions": [created]}));
    d.refresh(&s, json!({"ttl_seconds": 60})).expect_status(200);
    assert_eq!(d.revoke(&s).expect_status(200).json(), json!({"revoked": true, "session_id": sid}));
    d.validate(&tok).expect_error(401, "session_revoked");
    assert_eq!(d.revoke_all(&u).expect_status(200).json(), json!({"revoked": 0}));
}
