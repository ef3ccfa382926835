//! Contract section 7: the log (stderr) never contains a token, a secret or an API key, even
//! at `RUST_LOG=debug` and after rejections.

use serde_json::json;

use crate::harness::{API_KEY, Config, Daemon, SECRET};
use crate::tokens::*;

#[track_caller]
fn assert_absent(log: &str, secrets: &[(&str, String)]) {
    assert!(
        !log.trim().is_empty(),
        "the daemon logged nothing at all: the test would prove nothing"
    );
    let leaks: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| !s.is_empty() && log.contains(s.as_str()))
        .map(|(n, _)| *n)
        .collect();
    assert!(leaks.is_empty(), "the log contains: {leaks:?}");
}

/// The token itself and its signature part (a leak of either is a leak).
fn token_secrets(name: &str, token: &str) -> Vec<(String, String)> {
    vec![
        (format!("{name} token"), token.to_string()),
        (format!("{name} signature"), token.rsplit('.').next().unwrap().to_string()),
    ]
}

#[test]
fn no_token_secret_or_api_key_in_the_log() {
    let mut d = Daemon::builder(Config::default()).rust_log("debug").start();
    let wrong_key = "wrong-api-key-9e8d7c6b5a4f";
    let good = hs256(&enhanced("u-log", "log@example.com", "user", "log-1"));
    let expired = hs256(&with(
        enhanced("u-log", "log@example.com", "user", "log-2"),
        "exp",
        json!(now() - 3600),
    ));
    let bad_sig = hmac(
        jsonwebtoken::Algorithm::HS256,
        b"some-other-secret-0123456789abcdefgh",
        &enhanced("u-log", "log@example.com", "user", "log-3"),
    );
    let no_role = hs256(&without(enhanced("u-log", "log@example.com", "user", "log-4"), "role"));
    let unknown_session = hs256(&enhanced("u-log", "log@example.com", "user", "log-5"));

    d.create_with(json!({"token": good, "attributes": {"ip": "203.0.113.7"}})).expect_status(201);
    d.create(&good).expect_status(200);
    d.validate(&good).expect_status(200);
    d.validate_bearer(&good).expect_status(200);
    d.verify_bearer(&good).expect_status(200);
    d.get("/api/v1/auth/verify")
        .header("Cookie", &format!("session_token={good}"))
        .send()
        .expect_status(200);
    d.validate(&expired).expect_error(401, "token_expired");
    d.validate(&bad_sig).expect_error(401, "token_invalid_signature");
    d.validate_bearer(&no_role).expect_error(401, "token_malformed");
    d.verify_bearer(&unknown_session).expect_error(401, "session_not_found");
    d.create(&expired).expect_error(401, "token_expired");
    d.post("/api/v1/sessions")
        .json(&json!({"token": good}))
        .send()
        .expect_error(401, "api_key_required");
    d.post("/api/v1/sessions")
        .header("X-Api-Key", wrong_key)
        .json(&json!({"token": good}))
        .send()
        .expect_error(403, "api_key_invalid");
    d.get_session("log-1").expect_status(200);
    d.refresh("log-1", json!({"ttl_seconds": 60})).expect_status(200);
    d.revoke("log-1").expect_status(200);
    d.validate(&good).expect_error(401, "session_revoked");
    d.revoke_all("u-log").expect_status(200);
    assert_eq!(d.terminate().code(), Some(0));

    let mut secrets: Vec<(String, String)> = vec![
        ("HMAC secret".into(), SECRET.into()),
        ("API key".into(), API_KEY.into()),
        ("wrong API key".into(), wrong_key.into()),
    ];
    for (name, t) in [
        ("good", &good),
        ("expired", &expired),
        ("bad-signature", &bad_sig),
        ("no-role", &no_role),
        ("unknown-session", &unknown_session),
    ] {
        secrets.extend(token_secrets(name, t));
    }
    let secrets: Vec<(&str, String)> =
        secrets.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    assert_absent(&d.stderr(), &secrets);
}

#[test]
fn no_dev_secret_or_dev_key_in_the_log() {
    let config = Config::default().unset("tokens.hmac_secret").unset("api.keys");
    let mut d = Daemon::builder(config).arg("--dev").rust_log("debug").start();
    let secret = std::fs::read_to_string(d.data_dir().join("dev-hmac-secret")).unwrap_or_default();
    let key = std::fs::read_to_string(d.data_dir().join("dev-api-key")).unwrap().trim().to_string();
    d.get("/api/v1/sessions/x")
        .header("X-Api-Key", &key)
        .send()
        .expect_error(404, "session_not_found");
    d.get("/api/v1/sessions/x")
        .header("X-Api-Key", "wrong-key-0000000000")
        .send()
        .expect_error(403, "api_key_invalid");
    assert_eq!(d.terminate().code(), Some(0));
    assert_absent(
        &d.stderr(),
        &[("dev HMAC secret", secret.trim().to_string()), ("dev API key", key)],
    );
}
