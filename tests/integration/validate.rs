//! `POST /api/v1/sessions/validate`: the validation answer, the identity of both layouts, the
//! session id rule, `refresh_recommended`, and the session-level 401s.

use serde_json::{Value, json};

use crate::harness::{Config, Daemon};
use crate::tokens::*;

#[track_caller]
fn assert_session_shape(s: &Value) {
    for key in ["session_id", "user_id", "email", "role", "format"] {
        assert!(s[key].is_string(), "session.{key} not a string: {s}");
    }
    for key in ["created_at", "expires_at"] {
        assert!(s[key].is_i64(), "session.{key} not an integer: {s}");
    }
    assert!(s["attributes"].is_object(), "session.attributes not an object: {s}");
}

#[test]
fn enhanced_token_in_the_body() {
    let d = Daemon::start(Config::default());
    let t = now();
    let claims = json!({"sub": "u-100", "email": "ada@example.com", "role": "admin", "sid": "s-enh",
                        "iat": t - 5, "exp": t + 3600});
    let token = hs256(&claims);
    let created = d.create_ok(&token);
    let r = d.validate(&token).expect_status(200);
    let v = r.json();
    assert_eq!(v["valid"], json!(true), "{v}");
    assert_eq!(v["mode"], json!("normal"), "{v}");
    assert_eq!(v["refresh_recommended"], json!(false), "{v}");
    let id = &v["identity"];
    assert_eq!(id["user_id"], json!("u-100"), "{v}");
    assert_eq!(id["email"], json!("ada@example.com"), "{v}");
    assert_eq!(id["role"], json!("admin"), "{v}");
    assert_eq!(id["session_id"], json!("s-enh"), "{v}");
    assert_eq!(id["format"], json!("enhanced"), "{v}");
    assert_eq!(id["issued_at"], json!(t - 5), "{v}");
    assert_eq!(id["expires_at"], json!(t + 3600), "{v}");
    assert_session_shape(&v["session"]);
    assert_eq!(v["session"], created, "validation's session differs from the created one");
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"));
}

#[test]
fn legacy_token_by_bearer_with_integer_id_and_no_iat() {
    let d = Daemon::start(Config::default());
    let t = now();
    let claims = json!({"sub": "bob@example.com", "id": 42, "role": "user", "sid": "s-leg", "exp": t + 3600});
    let token = hs256(&claims);
    let created = d.create_ok(&token);
    assert_eq!(created["user_id"], json!("42"), "{created}");
    assert_eq!(created["email"], json!("bob@example.com"), "{created}");
    assert_eq!(created["format"], json!("legacy"), "{created}");
    let v = d.validate_bearer(&token).expect_status(200).json();
    let id = &v["identity"];
    assert_eq!(id["user_id"], json!("42"), "integer id rendered as a decimal string: {v}");
    assert_eq!(id["email"], json!("bob@example.com"), "{v}");
    assert_eq!(id["role"], json!("user"), "{v}");
    assert_eq!(id["format"], json!("legacy"), "{v}");
    assert_eq!(id["session_id"], json!("s-leg"), "{v}");
    assert!(
        id.as_object().unwrap().contains_key("issued_at"),
        "issued_at must be present (null): {v}"
    );
    assert_eq!(id["issued_at"], Value::Null, "{v}");
    assert_eq!(id["expires_at"], json!(t + 3600), "{v}");
    assert_eq!(v["mode"], json!("normal"));
    assert_eq!(v["session"], created);
}

#[test]
fn legacy_string_id_and_consistent_email() {
    let d = Daemon::start(Config::default());
    let token = hs256(&with(
        legacy("ada@example.com", json!("7"), "admin", "s-l2"),
        "email",
        json!("ada@example.com"),
    ));
    d.create_ok(&token);
    let v = d.validate(&token).expect_status(200).json();
    assert_eq!(v["identity"]["user_id"], json!("7"));
    assert_eq!(v["identity"]["email"], json!("ada@example.com"));
    assert_eq!(v["identity"]["format"], json!("legacy"));
}

#[test]
fn session_id_rule_sid_then_jti_then_hash() {
    let d = Daemon::start(Config::default());
    let base = enhanced("u-1", "a@example.com", "user", "x");

    let both = hs256(&with(with(base.clone(), "sid", json!("the-sid")), "jti", json!("the-jti")));
    assert_eq!(d.create_ok(&both)["session_id"], json!("the-sid"));
    assert_eq!(
        d.validate(&both).expect_status(200).json()["identity"]["session_id"],
        json!("the-sid")
    );

    let jti_only = hs256(&with(without(base.clone(), "sid"), "jti", json!("the-jti")));
    assert_eq!(d.create_ok(&jti_only)["session_id"], json!("the-jti"));
    assert_eq!(
        d.validate(&jti_only).expect_status(200).json()["identity"]["session_id"],
        json!("the-jti")
    );

    let neither = hs256(&without(base, "sid"));
    let expected = derived_session_id(&neither);
    assert_eq!(expected.len(), 24);
    assert_eq!(d.create_ok(&neither)["session_id"], json!(expected));
    let v = d.validate(&neither).expect_status(200).json();
    assert_eq!(v["identity"]["session_id"], json!(expected), "{v}");
    d.get_session(&expected).expect_status(200);
}

#[test]
fn refresh_recommended_within_the_refresh_window() {
    let d = Daemon::start(Config::default().set("tokens.refresh_window_seconds", "300"));
    let soon =
        hs256(&with(enhanced("u-1", "a@example.com", "user", "soon"), "exp", json!(now() + 100)));
    let later =
        hs256(&with(enhanced("u-1", "a@example.com", "user", "later"), "exp", json!(now() + 1000)));
    for t in [&soon, &later] {
        d.create_with(json!({"token": t, "ttl_seconds": 3600})).expect_status(201);
    }
    assert_eq!(d.validate(&soon).expect_status(200).json()["refresh_recommended"], json!(true));
    assert_eq!(d.validate(&later).expect_status(200).json()["refresh_recommended"], json!(false));

    // A wider window recommends a refresh for the later one too.
    let d = Daemon::start(Config::default().set("tokens.refresh_window_seconds", "2000"));
    d.create_with(json!({"token": later, "ttl_seconds": 3600})).expect_status(201);
    assert_eq!(d.validate(&later).expect_status(200).json()["refresh_recommended"], json!(true));
}

#[test]
fn no_session_is_session_not_found() {
    let d = Daemon::start(Config::default());
    let token = hs256(&enhanced("u-1", "a@example.com", "user", "never-created"));
    d.validate(&token).expect_error(401, "session_not_found");
    d.validate_bearer(&token).expect_error(401, "session_not_found");
    d.get_session("never-created").expect_error(404, "session_not_found");
}

#[test]
fn revoked_session_is_session_revoked() {
    let d = Daemon::start(Config::default());
    let token = hs256(&enhanced("u-1", "a@example.com", "user", "to-revoke"));
    d.create_ok(&token);
    d.validate(&token).expect_status(200);
    d.revoke("to-revoke").expect_status(200);
    d.validate(&token).expect_error(401, "session_revoked");
    d.validate_bearer(&token).expect_error(401, "session_revoked");
    d.create(&token).expect_error(409, "session_revoked");
    d.get_session("to-revoke").expect_error(404, "session_not_found");
}

#[test]
fn a_session_id_of_another_user() {
    let d = Daemon::start(Config::default());
    let owner = hs256(&enhanced("u-owner", "owner@example.com", "user", "shared-id"));
    let intruder = hs256(&enhanced("u-intruder", "intruder@example.com", "admin", "shared-id"));
    let legacy_intruder = hs256(&legacy("intruder@example.com", json!(9), "admin", "shared-id"));
    let created = d.create_ok(&owner);
    d.validate(&intruder).expect_error(401, "session_not_found");
    d.validate(&legacy_intruder).expect_error(401, "session_not_found");
    d.create(&intruder).expect_error(400, "bad_request");
    // The owner's session is untouched.
    assert_eq!(d.get_session("shared-id").expect_status(200).json()["session"], created);
    d.validate(&owner).expect_status(200);
}

#[test]
fn validate_needs_no_api_key_and_ignores_a_wrong_one() {
    let d = Daemon::start(Config::default());
    let token = hs256(&enhanced("u-1", "a@example.com", "user", "nk"));
    d.create_ok(&token);
    d.post("/api/v1/sessions/validate")
        .header("X-Api-Key", "wrong-key-0000000000")
        .json(&json!({"token": token}))
        .send()
        .expect_status(200);
}

#[test]
fn validate_body_errors() {
    let d = Daemon::start(Config::default());
    d.post("/api/v1/sessions/validate")
        .raw_json(b"{\"token\": ")
        .send()
        .expect_error(400, "bad_request");
    d.post("/api/v1/sessions/validate")
        .raw_json(b"not json")
        .send()
        .expect_error(400, "bad_request");
    d.post("/api/v1/sessions/validate")
        .json(&json!({"token": 5}))
        .send()
        .expect_error(400, "bad_request");
    // serde reads a struct from a sequence of its fields unless told otherwise: the body
    // `["<token>"]` is not `{"token": …}`.
    let token = hs256(&enhanced("u-1", "a@example.com", "user", "arr"));
    d.create_ok(&token);
    d.post("/api/v1/sessions/validate")
        .json(&json!([token]))
        .send()
        .expect_error(400, "bad_request");
    let token = hs256(&enhanced("u-1", "a@example.com", "user", "bx"));
    d.post("/api/v1/sessions/validate")
        .json(&json!({"token": token, "surprise": 1}))
        .send()
        .expect_error(400, "bad_request");
}

#[test]
fn expired_session_is_session_not_found_on_validate() {
    let d = Daemon::start(Config::default());
    let token = hs256(&enhanced("u-1", "a@example.com", "user", "short"));
    d.create_with(json!({"token": token, "ttl_seconds": 1})).expect_status(201);
    let gone = crate::harness::poll_until(std::time::Duration::from_secs(10), || {
        let r = d.validate(&token);
        (r.status != 200).then_some(r)
    })
    .expect("the session never expired");
    gone.expect_error(401, "session_not_found");
}

#[test]
fn integer_ids_beyond_i64_and_negative_render_exactly() {
    let d = Daemon::start(Config::default());
    for (id, want, sid) in [
        (json!(12_345_678_901_234_567_890u64), "12345678901234567890", "big-id"),
        (json!(-5), "-5", "neg-id"),
        (json!(0), "0", "zero-id"),
    ] {
        let token = hs256(&legacy("ada@example.com", id, "user", sid));
        assert_eq!(d.create_ok(&token)["user_id"], json!(want));
        assert_eq!(
            d.validate(&token).expect_status(200).json()["identity"]["user_id"],
            json!(want)
        );
    }
}
