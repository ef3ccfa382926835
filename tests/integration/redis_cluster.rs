//! Contract sections 3, 5 ("events cross instances", "ids unique across all instances") and 6:
//! several instances on one Redis agree on sessions and revocations, and their auth events go
//! through the Redis channel `<key_prefix>:events`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Daemon, poll_until};
use crate::redis_server::*;

/// How long a revocation made through one instance may take to be refused by another.
const PROPAGATION: Duration = Duration::from_secs(5);

/// Polls `d` until it refuses `tok` with 401 `session_revoked`; returns how long it took.
#[track_caller]
fn wait_refused(d: &Daemon, tok: &str, what: &str) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    let ok = poll_until(PROPAGATION, || {
        let r = d.validate(tok);
        match r.check_error(401, "session_revoked") {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        }
    });
    assert!(ok.is_some(), "{what}: not refused within {PROPAGATION:?}; last: {last}");
    start.elapsed()
}

#[test]
fn two_instances_on_one_redis_agree_on_sessions_and_revocations() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("pair");
    let a = Daemon::start(steady_redis_config(&redis, &prefix));
    let b = Daemon::start(steady_redis_config(&redis, &prefix));

    // Create on A, validate on B.
    let t1 = token("u-1", "p-1");
    let created = a.create_ok(&t1);
    let v = expect_valid(&b.validate(&t1), "normal", "p-1");
    assert_eq!(v["session"], created, "{v}");
    assert_eq!(b.get_session("p-1").expect_status(200).json()["session"], created);
    assert_eq!(b.create(&t1).expect_status(200).json()["session"], created, "B sees it stored");
    // A knows it too (validated there: in its mirror, maybe in a cache).
    expect_valid(&a.validate(&t1), "normal", "p-1");

    // Revoke on B: A refuses it promptly, although it had it.
    b.revoke("p-1").expect_status(200);
    b.validate(&t1).expect_error(401, "session_revoked");
    let took = wait_refused(&a, &t1, "revoked on B, validated on A");
    eprintln!("revocation through B refused by A after {took:?}");
    a.create(&t1).expect_error(409, "session_revoked");
    a.get_session("p-1").expect_error(404, "session_not_found");

    // Revoke-all on A: B refuses every session of the user, including one B created itself
    // and had validated; the other user's session is untouched.
    let user: Vec<(String, String)> =
        (0..3).map(|i| (format!("p-u2-{i}"), token("u-2", &format!("p-u2-{i}")))).collect();
    a.create_ok(&user[0].1);
    a.create_ok(&user[1].1);
    b.create_ok(&user[2].1);
    let other = token("u-3", "p-u3");
    b.create_ok(&other);
    for (sid, tok) in &user {
        expect_valid(&a.validate(tok), "normal", sid);
        expect_valid(&b.validate(tok), "normal", sid);
    }
    let r = a.revoke_all("u-2").expect_status(200).json();
    assert_eq!(r, json!({"revoked": 3}), "revoke-all counts the user's live sessions");
    for (sid, tok) in &user {
        a.validate(tok).expect_error(401, "session_revoked");
        wait_refused(&b, tok, &format!("{sid} after revoke-all on A, validated on B"));
        b.create(tok).expect_error(409, "session_revoked");
    }
    let list = b.list("u-2").expect_status(200).json();
    assert_eq!(list, json!({"sessions": []}), "B lists no live session of u-2");
    expect_valid(&a.validate(&other), "normal", "p-u3");
    expect_valid(&b.validate(&other), "normal", "p-u3");

    assert_every_key_expires(&redis, &prefix);
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// (origin, event name, session id, user id) of a published message; checks its shape.
#[track_caller]
fn event_key(m: &Value) -> (String, String, Option<String>, Option<String>) {
    let origin = m["origin"].as_str().unwrap_or_else(|| panic!("no origin: {m}")).to_string();
    assert!(!origin.is_empty(), "empty origin: {m}");
    let e = &m["event"];
    let id = e["id"].as_str().unwrap_or_else(|| panic!("no event.id: {m}"));
    let n = id.strip_prefix(&format!("{origin}-")).unwrap_or_else(|| {
        panic!("event id {id:?} is not \"<origin>-<n>\" with origin {origin:?}: {m}")
    });
    assert!(n.parse::<u64>().is_ok(), "event id {id:?} does not end with a counter: {m}");
    let at = e["at_ms"].as_i64().unwrap_or_else(|| panic!("at_ms is not an integer: {m}"));
    assert!((at - now_ms()).abs() < 60_000, "at_ms {at} is not now (milliseconds): {m}");
    assert!(e["data"].is_object(), "data is not an object: {m}");
    let name = e["event"].as_str().unwrap_or_else(|| panic!("no event.event: {m}")).to_string();
    let text = |v: &Value| v.as_str().map(str::to_string);
    (origin, name, text(&e["session_id"]), text(&e["user_id"]))
}

#[test]
fn events_go_through_the_redis_channel_with_ids_unique_across_instances() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("events");
    let sub = redis.subscribe(&events_channel(&prefix));
    let a = Daemon::start(steady_redis_config(&redis, &prefix));
    let b = Daemon::start(steady_redis_config(&redis, &prefix));

    let s = |x: &str| Some(x.to_string());
    // Each instance raises each kind of event, several times, so that two instances'
    // counters overlap.
    a.create_ok(&token("u-1", "e-1"));
    a.refresh("e-1", json!({})).expect_status(200);
    b.refresh("e-1", json!({})).expect_status(200);
    a.refresh("e-1", json!({"ttl_seconds": 100})).expect_status(200);
    b.revoke("e-1").expect_status(200);
    a.create_ok(&token("u-2", "e-2"));
    a.create_ok(&token("u-2", "e-3"));
    a.revoke_all("u-2").expect_status(200);
    b.create_ok(&token("u-3", "e-4"));
    b.revoke_all("u-3").expect_status(200);
    a.create_ok(&token("u-4", "e-5"));
    a.revoke("e-5").expect_status(200);

    // (instance, event, session id, user id), in the order raised.
    let expected = vec![
        ("A", "session.refreshed", s("e-1"), s("u-1")),
        ("B", "session.refreshed", s("e-1"), s("u-1")),
        ("A", "session.refreshed", s("e-1"), s("u-1")),
        ("B", "session.revoked", s("e-1"), s("u-1")),
        ("A", "user.sessions_revoked", None, s("u-2")),
        ("B", "user.sessions_revoked", None, s("u-3")),
        ("A", "session.revoked", s("e-5"), s("u-4")),
    ];
    let got = sub.collect_json(Duration::from_secs(5), Duration::from_millis(300), |ms| {
        ms.len() >= expected.len()
    });
    let keys: Vec<_> = got.iter().map(event_key).collect();
    let all = || format!("{:#}", Value::Array(got.clone()));

    // The origins: only A revoked e-5, only B revoked e-1.
    let origin_of = |name: &str, sid: &str| {
        keys.iter()
            .find(|(_, n, s, _)| n == name && s.as_deref() == Some(sid))
            .map(|k| k.0.clone())
            .unwrap_or_else(|| panic!("no {name} of {sid} on the channel: {}", all()))
    };
    let origin_a = origin_of("session.revoked", "e-5");
    let origin_b = origin_of("session.revoked", "e-1");
    assert_ne!(origin_a, origin_b, "two instances share an origin: {}", all());
    let who = |o: &str| {
        if o == origin_a {
            "A"
        } else if o == origin_b {
            "B"
        } else {
            "?"
        }
    };
    for (inst, name, sid, user) in &expected {
        let n = keys
            .iter()
            .filter(|(o, nm, si, us)| {
                who(o) == *inst
                    && nm == name
                    && us == user
                    && (*name == "user.sessions_revoked" || si == sid)
            })
            .count();
        let wanted = expected
            .iter()
            .filter(|(i, nm, si, us)| i == inst && nm == name && si == sid && us == user)
            .count();
        assert_eq!(
            n,
            wanted,
            "{inst} {name} {sid:?} {user:?}: published {n} times, expected {wanted}: {}",
            all()
        );
    }
    assert!(keys.iter().all(|(o, ..)| who(o) != "?"), "an event from neither instance: {}", all());

    // Ids are unique across the instances.
    let ids: Vec<&str> = got.iter().map(|m| m["event"]["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate event ids: {ids:?}");
}

#[test]
fn revocations_still_cross_instances_after_redis_restarts() {
    // The subscription is re-established after an outage (Redis keeps its data here: the
    // point is the event bus, not the replay).
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("bus-reconnect");
    let a = Daemon::start(steady_redis_config(&redis, &prefix));
    let b = Daemon::start(steady_redis_config(&redis, &prefix));
    let t1 = token("u-1", "br-1");
    let t2 = token("u-1", "br-2");
    a.create_ok(&t1);
    a.create_ok(&t2);
    for d in [&a, &b] {
        expect_valid(&d.validate(&t1), "normal", "br-1");
        expect_valid(&d.validate(&t2), "normal", "br-2");
    }

    redis.kill9();
    wait_for_mode(&a, &t1, "degraded");
    wait_for_mode(&b, &t1, "degraded");
    redis.restart_keeping_data();
    wait_for_mode(&a, &t1, "normal");
    wait_for_mode(&b, &t1, "normal");

    let sub = redis.subscribe(&events_channel(&prefix));
    b.revoke("br-1").expect_status(200);
    let took = wait_refused(&a, &t1, "revoked on B after the restart, validated on A");
    eprintln!("after the restart, revocation through B refused by A after {took:?}");
    let got = sub.collect_json(Duration::from_secs(5), Duration::ZERO, |ms| {
        ms.iter().any(|m| {
            m["event"]["event"] == json!("session.revoked")
                && m["event"]["session_id"] == json!("br-1")
        })
    });
    assert!(
        got.iter().any(|m| m["event"]["session_id"] == json!("br-1")),
        "B's session.revoked never reached the channel after the restart: {got:?}"
    );

    a.revoke_all("u-1").expect_status(200);
    wait_refused(&b, &t2, "revoke-all on A after the restart, validated on B");
}
