//! HTTP conventions of contract section 3: `X-Request-Id`, the error body, API keys on every
//! management route, 404 for unknown routes, 413 over `server.max_body_bytes`, probes.

use std::collections::BTreeSet;

use serde_json::json;

use crate::harness::{API_KEY, Config, Daemon, Req, Resp, raw_http, toml_list, toml_str};
use crate::tokens::*;

/// Every management route, with a body that would otherwise succeed or at least be well-formed.
fn management_routes(d: &Daemon, tok: &str) -> Vec<Req> {
    vec![
        d.post("/api/v1/sessions").json(&json!({"token": tok})),
        d.get("/api/v1/sessions/mr-1"),
        d.post("/api/v1/sessions/mr-1/refresh").json(&json!({})),
        d.delete("/api/v1/sessions/mr-1"),
        d.get("/api/v1/users/u-1/sessions"),
        d.delete("/api/v1/users/u-1/sessions"),
    ]
}

#[test]
fn api_key_required_and_invalid_on_every_management_route() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "mr-1"));
    let mut failures = Vec::new();
    for req in management_routes(&d, &tok) {
        let r = req.send();
        if let Err(e) = r.check_error(401, "api_key_required") {
            failures.push(e);
        }
    }
    let wrong_keys = [
        "wrong-key-0123456789abcdef".to_string(),
        API_KEY[..API_KEY.len() - 1].to_string(),
        format!("{API_KEY}x"),
        API_KEY.to_uppercase(),
    ];
    for key in &wrong_keys {
        for req in management_routes(&d, &tok) {
            if let Err(e) = req.header("X-Api-Key", key).send().check_error(403, "api_key_invalid")
            {
                failures.push(format!("key {key:?}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing happened without a key: the session does not exist and can be created now.
    d.get_session("mr-1").expect_error(404, "session_not_found");
    d.create(&tok).expect_status(201);
    // With the right key every route answers (none of them 401/403).
    for req in management_routes(&d, &tok) {
        let r = req.key().send();
        assert!(r.status < 400, "{} with the right key: {} {}", r.what, r.status, r.body);
    }
}

#[test]
fn an_empty_api_key_header_is_not_a_key() {
    let d = Daemon::start(Config::default());
    let r = d.get("/api/v1/sessions/x").header("X-Api-Key", "").send();
    assert!(
        r.check_error(401, "api_key_required").is_ok()
            || r.check_error(403, "api_key_invalid").is_ok(),
        "empty X-Api-Key: {} {}",
        r.status,
        r.body
    );
}

#[test]
fn several_keys_and_a_keys_file() {
    let keys_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys_file.path(), "file-key-one-0123456789\n\nfile-key-two-0123456789\n")
        .unwrap();
    let d = Daemon::start(
        Config::default()
            .set("api.keys", &toml_list(&[API_KEY, "second-key-0123456789"]))
            .set("api.keys_file", &toml_str(&keys_file.path().display().to_string())),
    );
    for key in
        [API_KEY, "second-key-0123456789", "file-key-one-0123456789", "file-key-two-0123456789"]
    {
        d.get("/api/v1/sessions/none")
            .header("X-Api-Key", key)
            .send()
            .expect_error(404, "session_not_found");
    }
    d.get("/api/v1/sessions/none")
        .header("X-Api-Key", "file-key-three-0123456789")
        .send()
        .expect_error(403, "api_key_invalid");
}

fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[test]
fn every_response_has_a_request_id() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "rid-1"));
    let responses: Vec<Resp> = vec![
        d.get("/livez").send(),
        d.get("/readyz").send(),
        d.get("/no/such/route").send(),
        d.create(&tok),
        d.create(&tok),
        d.validate(&tok),
        d.verify_bearer(&tok),
        d.get("/api/v1/auth/verify").send(),
        d.validate("garbage"),
        d.get_session("rid-1"),
        d.get("/api/v1/sessions/rid-1").send(),
        d.list("u-1"),
        d.refresh("rid-1", json!({})),
        d.revoke("rid-1"),
        d.revoke_all("u-1"),
    ];
    let mut seen = BTreeSet::new();
    for r in &responses {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{}: no X-Request-Id ({})", r.what, r.status));
        assert!(
            valid_request_id(&id),
            "{}: generated X-Request-Id {id:?} is not 1–128 of A-Za-z0-9._-",
            r.what
        );
        assert!(seen.insert(id.clone()), "{}: X-Request-Id {id} was already used", r.what);
        if r.status >= 400 {
            assert_eq!(r.json()["error"]["request_id"], json!(id), "{}: body request_id", r.what);
        }
    }
}

#[test]
fn a_valid_client_request_id_is_echoed() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "rid-2"));
    let max = "a".repeat(127) + "Z";
    for id in ["abc-123", "A.b_c-9", "x", max.as_str()] {
        let r = d.get("/livez").header("X-Request-Id", id).send().expect_status(200);
        assert_eq!(r.header("x-request-id").as_deref(), Some(id));
        let r = d
            .post("/api/v1/sessions/validate")
            .header("X-Request-Id", id)
            .json(&json!({"token": "x"}))
            .send();
        r.expect_error(401, "token_malformed");
        assert_eq!(r.header("x-request-id").as_deref(), Some(id));
        let r = d.get("/nowhere").header("X-Request-Id", id).send();
        assert_eq!(r.expect_error(404, "not_found")["error"]["request_id"], json!(id));
        let r = d
            .post("/api/v1/sessions")
            .header("X-Request-Id", id)
            .json(&json!({"token": tok}))
            .send();
        assert_eq!(r.expect_error(401, "api_key_required")["error"]["request_id"], json!(id));
    }
}

#[test]
fn an_invalid_client_request_id_is_replaced() {
    let d = Daemon::start(Config::default());
    let too_long = "a".repeat(129);
    for id in [too_long.as_str(), "has space", "slash/no", "semi;colon", "quote\"d", "tab\there"] {
        let r = d.get("/nowhere").header("X-Request-Id", id).send();
        let body = r.expect_error(404, "not_found");
        let got = r.header("x-request-id").unwrap();
        assert_ne!(got, id, "invalid request id {id:?} was echoed");
        assert!(valid_request_id(&got), "replacement {got:?} is not a valid request id");
        assert_eq!(body["error"]["request_id"], json!(got));
        let r = d.get("/livez").header("X-Request-Id", id).send().expect_status(200);
        assert_ne!(r.header("x-request-id").as_deref(), Some(id));
    }
    // An empty one too (raw, since clients may drop empty headers).
    let (status, text) = raw_http(
        d.port,
        b"GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: \r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let header = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("x-request-id:").map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    assert!(!header.is_empty(), "empty X-Request-Id not replaced: {text}");
}

#[test]
fn unknown_routes_and_wrong_methods_are_json_404() {
    let d = Daemon::start(Config::default());
    let cases = [
        d.get("/"),
        d.get("/nope"),
        d.get("/api/v1"),
        d.get("/api/v1/sessions"),
        d.post("/api/v1/sessions/validate/extra").json(&json!({})),
        d.post("/api/v1/auth/verify"),
        d.req("PUT", "/api/v1/sessions").key().json(&json!({})),
        d.req("PATCH", "/api/v1/sessions/x").key().json(&json!({})),
        d.get("/api/v1/sessions/x/refresh").key(),
        d.req("PUT", "/api/v1/users/u/sessions").key(),
        d.post("/livez"),
    ];
    let mut failures = Vec::new();
    for req in cases {
        if let Err(e) = req.send().check_error(404, "not_found") {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn payload_too_large() {
    let d = Daemon::start(Config::default().set("server.max_body_bytes", "512"));
    let big = json!({"token": "x".repeat(4000)});
    d.post("/api/v1/sessions/validate").json(&big).send().expect_error(413, "payload_too_large");
    d.post("/api/v1/sessions").key().json(&big).send().expect_error(413, "payload_too_large");
    d.post("/api/v1/sessions/s/refresh")
        .key()
        .json(&json!({"pad": "y".repeat(4000)}))
        .send()
        .expect_error(413, "payload_too_large");
    // Under the limit it is an ordinary answer.
    d.post("/api/v1/sessions/validate")
        .json(&json!({"token": "x".repeat(100)}))
        .send()
        .expect_error(401, "token_malformed");
    let r = d.post("/api/v1/sessions/validate").header("X-Request-Id", "big-1").json(&big).send();
    assert_eq!(r.expect_error(413, "payload_too_large")["error"]["request_id"], json!("big-1"));

    // Chunked, without a Content-Length.
    let chunk = "y".repeat(1000);
    let mut req = String::from(
        "POST /api/v1/sessions/validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    req.push_str(&format!("{:x}\r\n{{\"token\": \"\r\n", 11));
    for _ in 0..4 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("2\r\n\"}\r\n0\r\n\r\n");
    let (status, text) = raw_http(d.port, req.as_bytes());
    assert_eq!(status, 413, "chunked body over the limit: {text}");
    assert!(text.contains("payload_too_large"), "{text}");
}

#[test]
fn livez_and_readyz() {
    let d = Daemon::start(Config::default());
    d.get("/livez").send().expect_status(200);
    d.get("/readyz").send().expect_status(200);
}

#[test]
fn json_content_types_on_success() {
    let d = Daemon::start(Config::default());
    let tok = hs256(&enhanced("u-1", "a@example.com", "user", "ct-1"));
    for r in
        [d.create(&tok), d.validate(&tok), d.get_session("ct-1"), d.list("u-1"), d.revoke("ct-1")]
    {
        assert!(r.status < 300, "{}: {} {}", r.what, r.status, r.body);
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "{}: content type {ct:?}", r.what);
        r.json();
    }
}
