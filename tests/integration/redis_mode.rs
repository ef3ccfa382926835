//! Contract sections 2, 3 and 6 with `sessions.redis_url` set: every route answers as in the
//! embedded mode, with `mode: "normal"`, and the data lives in Redis (a fresh instance with an
//! empty data dir on the same Redis sees it; every key there expires).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Daemon, poll_until};
use crate::redis_server::*;
use crate::tokens::now;

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

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_route_in_redis_mode_keeps_its_data_in_redis() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("routes");
    let a = Daemon::start(steady_redis_config(&redis, &prefix));

    // Create: 201, then 200 with the stored session.
    let t1 = token("u-1", "r-1");
    let created = a
        .create_with(json!({"token": t1, "ttl_seconds": 600, "attributes": {"ip": "203.0.113.7"}}))
        .expect_status(201)
        .json()["session"]
        .clone();
    assert_eq!(created["session_id"], json!("r-1"), "{created}");
    assert_eq!(created["user_id"], json!("u-1"), "{created}");
    assert_eq!(created["attributes"], json!({"ip": "203.0.113.7"}), "{created}");
    assert_near(&created["expires_at"], now() + 600, 2, "expires_at");
    let again = a.create_with(json!({"token": t1, "attributes": {"ip": "198.51.100.1"}}));
    assert_eq!(again.expect_status(200).json()["session"], created, "create again");

    // Validate: normal, with the stored session.
    let v = expect_valid(&a.validate(&t1), "normal", "r-1");
    assert_eq!(v["session"], created, "{v}");
    assert_eq!(v["identity"]["user_id"], json!("u-1"), "{v}");

    // Get.
    assert_eq!(a.get_session("r-1").expect_status(200).json(), json!({"session": created}));

    // Refresh with and without ttl_seconds.
    let refreshed =
        a.refresh("r-1", json!({"ttl_seconds": 900})).expect_status(200).json()["session"].clone();
    assert_near(&refreshed["expires_at"], now() + 900, 2, "refreshed expires_at");
    assert_eq!(refreshed["created_at"], created["created_at"], "{refreshed}");
    let refreshed = a.refresh("r-1", json!({})).expect_status(200).json()["session"].clone();
    assert_near(&refreshed["expires_at"], now() + 600, 2, "refresh keeps the created length");
    assert_eq!(a.get_session("r-1").expect_status(200).json()["session"], refreshed);

    // List: the user's live sessions.
    let t2 = token("u-1", "r-2");
    let t3 = token("u-1", "r-3");
    let t_other = token("u-2", "r-other");
    a.create_ok(&t2);
    a.create_ok(&t3);
    a.create_ok(&t_other);
    assert_eq!(ids(&a.list("u-1").expect_status(200).json()), set(&["r-1", "r-2", "r-3"]));
    assert_eq!(ids(&a.list("u-2").expect_status(200).json()), set(&["r-other"]));
    assert_eq!(ids(&a.list("u-nobody").expect_status(200).json()), set(&[]));

    // Revoke: 200, idempotent; then 401 on validate, 409 on create, 404 on get, off the list.
    let r = a.revoke("r-2").expect_status(200).json();
    assert_eq!(r, json!({"revoked": true, "session_id": "r-2"}));
    let r = a.revoke("r-2").expect_status(200).json();
    assert_eq!(r, json!({"revoked": true, "session_id": "r-2"}), "revoke is idempotent");
    a.validate(&t2).expect_error(401, "session_revoked");
    a.create(&t2).expect_error(409, "session_revoked");
    a.get_session("r-2").expect_error(404, "session_not_found");
    assert_eq!(ids(&a.list("u-1").expect_status(200).json()), set(&["r-1", "r-3"]));

    // Unknown sessions in normal mode.
    let never = token("u-1", "r-never");
    a.validate(&never).expect_error(401, "session_not_found");
    a.get_session("r-never").expect_error(404, "session_not_found");
    a.refresh("r-never", json!({})).expect_error(404, "session_not_found");

    // A fresh instance (empty data dir) on the same Redis and prefix sees all of it.
    let b = Daemon::start(steady_redis_config(&redis, &prefix));
    assert_eq!(b.get_session("r-1").expect_status(200).json(), json!({"session": refreshed}));
    expect_valid(&b.validate(&t1), "normal", "r-1");
    expect_valid(&b.validate(&t3), "normal", "r-3");
    b.validate(&t2).expect_error(401, "session_revoked");
    b.create(&t2).expect_error(409, "session_revoked");
    b.validate(&never).expect_error(401, "session_not_found");
    assert_eq!(ids(&b.list("u-1").expect_status(200).json()), set(&["r-1", "r-3"]));
    assert_eq!(b.create(&t1).expect_status(200).json()["session"], refreshed, "stored one");

    // Revoke-all through the fresh instance: counts the live ones, every one refused after,
    // on both instances (A polled: it may hold them in its mirror until the event arrives).
    let r = b.revoke_all("u-1").expect_status(200).json();
    assert_eq!(r, json!({"revoked": 2}), "revoke-all of r-1 and r-3");
    assert_eq!(ids(&b.list("u-1").expect_status(200).json()), set(&[]));
    for (tok, sid) in [(&t1, "r-1"), (&t3, "r-3")] {
        b.validate(tok).expect_error(401, "session_revoked");
        b.create(tok).expect_error(409, "session_revoked");
        let refused =
            poll_until(MODE_DEADLINE, || a.validate(tok).check_error(401, "session_revoked").ok());
        assert!(refused.is_some(), "A still accepts {sid} after revoke-all on B");
    }
    assert_eq!(ids(&a.list("u-1").expect_status(200).json()), set(&[]));
    expect_valid(&a.validate(&t_other), "normal", "r-other");

    // Another prefix on the same Redis is another deployment: it sees none of it.
    let c = Daemon::start(steady_redis_config(&redis, &unique_prefix("routes-other")));
    c.get_session("r-other").expect_error(404, "session_not_found");
    c.validate(&t_other).expect_error(401, "session_not_found");

    // Redis holds it, and nothing there lives forever.
    assert_every_key_expires(&redis, &prefix);
}

#[test]
fn a_session_created_on_one_instance_is_refreshed_on_a_fresh_one() {
    // Writes through one instance land in Redis where the other reads them back at once.
    let redis = RedisServer::start();
    let prefix = unique_prefix("refresh");
    let a = Daemon::start(steady_redis_config(&redis, &prefix));
    let b = Daemon::start(steady_redis_config(&redis, &prefix));
    let tok = token("u-7", "x-1");
    a.create_with(json!({"token": tok, "ttl_seconds": 300})).expect_status(201);
    let s =
        b.refresh("x-1", json!({"ttl_seconds": 1200})).expect_status(200).json()["session"].clone();
    assert_near(&s["expires_at"], now() + 1200, 2, "refreshed on B");
    // A may have the session in its mirror; B's session.refreshed event updates it promptly.
    let seen = poll_until(MODE_DEADLINE, || {
        let v = expect_valid(&a.validate(&tok), "normal", "x-1");
        (v["session"] == s).then_some(())
    });
    assert!(seen.is_some(), "A never validated with B's refreshed session {s}");
    assert_eq!(a.get_session("x-1").expect_status(200).json()["session"], s, "A reads B's write");
    assert_every_key_expires(&redis, &prefix);
}
