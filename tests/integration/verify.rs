//! `GET /api/v1/auth/verify`: forward auth for nginx `auth_request`, Traefik, Envoy. 200 with
//! the `X-Auth-*` headers and an empty body, from a bearer token or the `ws.cookie_name`
//! cookie; the same 401s as validate.

use serde_json::json;

use crate::harness::{Config, Daemon, Resp};
use crate::tokens::*;

#[track_caller]
fn assert_auth_headers(r: &Resp, user: &str, email: &str, role: &str, sid: &str) {
    assert_eq!(r.status, 200, "{}: {} {}", r.what, r.status, r.body);
    assert!(r.body.is_empty(), "verify body must be empty, got {:?}", r.body);
    for (name, want) in [
        ("x-auth-user-id", user),
        ("x-auth-email", email),
        ("x-auth-role", role),
        ("x-auth-session-id", sid),
        ("x-auth-mode", "normal"),
    ] {
        assert_eq!(r.header(name).as_deref(), Some(want), "header {name}");
    }
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn bearer_enhanced_and_legacy() {
    let d = Daemon::start(Config::default());
    let enh = hs256(&enhanced("u-9", "ada@example.com", "admin", "v-1"));
    let leg = hs256(&legacy("bob@example.com", json!(42), "user", "v-2"));
    d.create_ok(&enh);
    d.create_ok(&leg);
    assert_auth_headers(&d.verify_bearer(&enh), "u-9", "ada@example.com", "admin", "v-1");
    assert_auth_headers(&d.verify_bearer(&leg), "42", "bob@example.com", "user", "v-2");
}

#[test]
fn default_cookie_name() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-9", "ada@example.com", "admin", "v-c1"));
    d.create_ok(&tok);
    let r = d.get("/api/v1/auth/verify").header("Cookie", &format!("session_token={tok}")).send();
    assert_auth_headers(&r, "u-9", "ada@example.com", "admin", "v-c1");
    let r = d
        .get("/api/v1/auth/verify")
        .header("Cookie", &format!("theme=dark; session_token={tok}; lang=en"))
        .send();
    assert_auth_headers(&r, "u-9", "ada@example.com", "admin", "v-c1");
}

#[test]
fn configured_cookie_name() {
    let d = Daemon::start(Config::default().set_str("ws.cookie_name", "sso_jwt"));
    let tok = hs256(&enhanced("u-9", "ada@example.com", "admin", "v-c2"));
    d.create_ok(&tok);
    let r = d.get("/api/v1/auth/verify").header("Cookie", &format!("sso_jwt={tok}")).send();
    assert_auth_headers(&r, "u-9", "ada@example.com", "admin", "v-c2");
    // The default name is not read when another is configured.
    d.get("/api/v1/auth/verify")
        .header("Cookie", &format!("session_token={tok}"))
        .send()
        .expect_error(401, "token_missing");
}

#[test]
fn bad_cookie_token_is_rejected_like_validate() {
    let d = Daemon::start(Config::default());
    d.get("/api/v1/auth/verify")
        .header("Cookie", "session_token=garbage")
        .send()
        .expect_error(401, "token_malformed");
}

#[test]
fn rejections_are_the_validate_401s() {
    let d = Daemon::start(Config::default());
    let t = now();
    let expired =
        hs256(&with(enhanced("u-1", "a@example.com", "user", "v-e"), "exp", json!(t - 3600)));
    let unknown = hs256(&enhanced("u-1", "a@example.com", "user", "v-unknown"));
    let revoked = hs256(&enhanced("u-1", "a@example.com", "user", "v-revoked"));
    d.create_ok(&revoked);
    d.revoke("v-revoked").expect_status(200);
    let none =
        unsigned(&json!({"alg": "none"}), &enhanced("u-1", "a@example.com", "user", "v-n"), "");
    d.verify_bearer(&expired).expect_error(401, "token_expired");
    d.verify_bearer(&unknown).expect_error(401, "session_not_found");
    d.verify_bearer(&revoked).expect_error(401, "session_revoked");
    d.verify_bearer(&none).expect_error(401, "token_algorithm_rejected");
    d.verify_bearer("a.b").expect_error(401, "token_malformed");
    d.get("/api/v1/auth/verify").send().expect_error(401, "token_missing");
    for r in [d.verify_bearer(&expired), d.verify_bearer(&none)] {
        assert!(r.header("x-auth-user-id").is_none(), "a rejected token got identity headers");
    }
}

#[test]
fn needs_no_api_key() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-9", "ada@example.com", "admin", "v-nk"));
    d.create_ok(&tok);
    d.verify_bearer(&tok).expect_status(200);
}
