//! Contract sections 5 and 6 with a real Redis: events cross instances (a socket on B hears a
//! revocation made through A, once, with the same event id as A's own sockets), and the
//! `redis` breaker opening and closing reach every socket as `service.degraded` /
//! `service.recovered`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Config, Daemon};
use crate::redis_server::*;
use crate::ws_client::*;

/// An instance on this Redis: the fast breaker of `redis_config` (2 failures open it, 1 s
/// open, 1 success closes it) but a 2 s operation timeout, so that a loaded test machine does
/// not trip it before the test breaks Redis (`kill -9` is refused at once, not timed out).
fn config(redis: &RedisServer, prefix: &str) -> Config {
    redis_config(redis, prefix, "jwt_only").set("breaker.op_timeout_ms", "2000")
}

/// A connection of this token that has read its welcome; returns it and the welcome.
#[track_caller]
fn open(d: &Daemon, token: &str) -> (Ws, Value) {
    let mut ws = WsRequest::new(d).bearer(token).connect();
    let welcome = ws.expect_welcome();
    (ws, welcome)
}

#[test]
fn ws_a_socket_on_b_hears_a_revocation_made_through_a() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("ws-pair");
    let a = Daemon::start(config(&redis, &prefix));
    let b = Daemon::start(config(&redis, &prefix));

    let t1 = token("u-1", "cw-1");
    let t2 = token("u-2", "cw-2");
    let t3 = token("u-3", "cw-3");
    a.create_ok(&t1);
    a.create_ok(&t2);
    b.create_ok(&t3);

    // B authenticates sessions created through A (Redis is the source of truth).
    let (mut on_b, welcome) = open(&b, &t1);
    assert_eq!(welcome["mode"], json!("normal"), "{welcome}");
    let (mut on_a, _) = open(&a, &t1);
    let (mut u2_on_b, _) = open(&b, &t2);
    let (mut bystander_on_b, _) = open(&b, &t3);

    a.revoke("cw-1").expect_status(200);
    let heard_b = on_b.expect_event("session.revoked");
    assert_eq!(heard_b["session_id"], json!("cw-1"), "{heard_b}");
    assert_eq!(heard_b["user_id"], json!("u-1"), "{heard_b}");
    assert_eq!(on_b.expect_close("on B after the revocation through A"), Some(4001));
    let heard_a = on_a.expect_event("session.revoked");
    assert_eq!(on_a.expect_close("on A after its own revocation"), Some(4001));
    assert_eq!(heard_a, heard_b, "one event, the same on both instances");

    // Revoke-all through A closes the user's socket on B.
    a.revoke_all("u-2").expect_status(200);
    let (messages, end) = u2_on_b.until_close(FRAME_TIMEOUT);
    assert!(
        matches!(end, Incoming::Close(Some(4001), _)),
        "u-2 on B: expected 4001 after user.sessions_revoked, got {end:?} after {messages:?}"
    );
    assert!(
        messages.iter().any(|v| v["event"] == "user.sessions_revoked" && v["user_id"] == "u-2"),
        "u-2 on B: no user.sessions_revoked before the close: {messages:?}"
    );

    // Another user on B heard nothing and stays open.
    assert_eq!(bystander_on_b.ping_barrier("u-3 on B"), Vec::<Value>::new());
    assert_eq!(
        bystander_on_b.quiet_for(Duration::from_millis(500), "u-3 on B"),
        Vec::<Value>::new()
    );
}

#[test]
fn ws_events_cross_instances_once_each_with_unique_ids() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("ws-once");
    let a = Daemon::start(config(&redis, &prefix));
    let b = Daemon::start(config(&redis, &prefix));
    let t = token("u-1", "co-1");
    a.create_ok(&t);
    let (mut on_a, _) = open(&a, &t);
    let (mut on_b, _) = open(&b, &t);

    // Refreshed through A, then through B: each socket hears each once, the same ids.
    a.refresh("co-1", json!({})).expect_status(200);
    let first_a = on_a.expect_event("session.refreshed");
    let first_b = on_b.expect_event("session.refreshed");
    assert_eq!(first_a, first_b, "the refresh through A");
    b.refresh("co-1", json!({})).expect_status(200);
    let second_a = on_a.expect_event("session.refreshed");
    let second_b = on_b.expect_event("session.refreshed");
    assert_eq!(second_a, second_b, "the refresh through B");
    assert_ne!(first_a["id"], second_a["id"], "event ids are unique across instances");

    // No copy arrives later (local delivery plus the instance's own bus message, say).
    for (what, ws) in [("on A", &mut on_a), ("on B", &mut on_b)] {
        let late = ws.quiet_for(Duration::from_secs(1), what);
        assert_eq!(late, Vec::<Value>::new(), "{what}: duplicate deliveries");
        assert_eq!(ws.ping_barrier(what), Vec::<Value>::new());
    }
}

#[test]
fn ws_breaker_open_and_close_reach_every_socket() {
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("ws-breaker");
    let d = Daemon::start(config(&redis, &prefix));
    let t1 = token("u-1", "cb-1");
    let t2 = token("u-2", "cb-2");
    d.create_ok(&t1);
    d.create_ok(&t2);
    wait_for_mode(&d, &t1, "normal");
    let (s1, w1) = open(&d, &t1);
    let (s2, w2) = open(&d, &t1);
    let mut s3 = WsRequest::new(&d).bearer_protocol(&t2, V1_MSGPACK).connect();
    let w3 = s3.expect_welcome();
    for w in [&w1, &w2, &w3] {
        assert_eq!(w["mode"], json!("normal"), "before the outage: {w}");
    }
    let mut sockets = vec![("u-1 a", s1), ("u-1 b", s2), ("u-2 msgpack", s3)];

    redis.kill9();
    let (_, took) = wait_for_mode(&d, &t1, "degraded");
    eprintln!("degraded after {took:?}");
    for (what, ws) in &mut sockets {
        let (_, before) = ws.until_event("service.degraded");
        assert_eq!(before, Vec::<Value>::new(), "{what}: frames before service.degraded");
    }

    // A socket opened while degraded says so in its welcome.
    let (late, welcome) = open(&d, &t2);
    assert_eq!(welcome["mode"], json!("degraded"), "{welcome}");
    sockets.push(("u-2 opened while degraded", late));

    redis.restart_keeping_data();
    let (_, took) = wait_for_mode(&d, &t1, "normal");
    eprintln!("normal again after {took:?}");
    for (what, ws) in &mut sockets {
        let (_, before) = ws.until_event("service.recovered");
        for v in &before {
            assert!(
                v["type"] == "event"
                    && v["event"].as_str().is_some_and(|e| e.starts_with("service.")),
                "{what}: unexpected frame before service.recovered: {v}"
            );
        }
        if !before.is_empty() {
            eprintln!("{what}: service events before service.recovered: {before:?}");
        }
        assert_eq!(ws.ping_barrier(what), Vec::<Value>::new(), "{what}: open after recovery");
    }
}

/// The coordinator's health details of `d` (`bus_subscribed`, `mode`, ...).
fn coordinator_details(d: &Daemon) -> Value {
    let r = d.get("/api/integration-health/service-boundary-coordinator").send();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["details"].clone()
}

/// Waits until `d` is in normal mode with its bus subscription up.
#[track_caller]
fn wait_bus_up(d: &Daemon, what: &str) {
    let up = crate::harness::poll_until(Duration::from_secs(20), || {
        let c = coordinator_details(d);
        (c["mode"] == json!("normal") && c["redis"]["bus_subscribed"] == json!(true)).then_some(())
    });
    assert!(up.is_some(), "{what}: not normal with the bus up: {}", coordinator_details(d));
}

#[test]
fn ws_a_revocation_taken_while_degraded_reaches_other_instances_even_after_a_crash() {
    // A revokes while Redis is down (journaled; its event can only wait in A's memory), then
    // A is killed: the event is lost with it. When A comes back and replays the journal into
    // Redis, it announces the replayed revocation on the bus, so B's socket is closed.
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("ws-crash");
    let mut a = Daemon::start(config(&redis, &prefix));
    let b = Daemon::start(config(&redis, &prefix));
    let t1 = token("u-1", "cc-1");
    a.create_ok(&t1);
    let (mut on_b, _) = open(&b, &t1);

    redis.kill9();
    wait_for_mode(&a, &t1, "degraded");
    a.revoke("cc-1").expect_status(200);
    a.kill9();
    redis.restart_keeping_data();
    wait_bus_up(&b, "B after Redis came back");
    a.restart();

    let (messages, end) = on_b.until_close(Duration::from_secs(30));
    assert!(
        matches!(end, Incoming::Close(Some(4001), _)),
        "B's socket: expected 4001 after the replayed revocation, got {end:?} after {messages:?}"
    );
    let revoked: Vec<&Value> =
        messages.iter().filter(|v| v["event"] == json!("session.revoked")).collect();
    assert_eq!(revoked.len(), 1, "{messages:?}");
    assert_eq!(revoked[0]["session_id"], json!("cc-1"), "{messages:?}");
    // And the revocation holds everywhere.
    assert_eq!(b.validate(&t1).status, 401);
    assert_eq!(a.validate(&t1).status, 401);
}

#[test]
fn ws_sockets_of_sessions_revoked_while_the_bus_was_down_are_closed_on_resubscription() {
    // A revocation whose bus event this instance never heard (its subscription was down when
    // it was published) is simulated by writing the tombstone straight into Redis; then the
    // subscription is cut. On resubscribing, the instance looks its connected sessions up in
    // Redis and closes the revoked one's socket; the other socket stays open.
    let redis = RedisServer::start();
    let prefix = unique_prefix("ws-reconcile");
    let b = Daemon::start(config(&redis, &prefix));
    let t1 = token("u-1", "rc-1");
    let t2 = token("u-2", "rc-2");
    b.create_ok(&t1);
    b.create_ok(&t2);
    let (mut revoked, _) = open(&b, &t1);
    let (mut bystander, _) = open(&b, &t2);
    wait_bus_up(&b, "B at start");

    let until = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap())
        .as_secs()
        + 3600;
    redis.command(&["DEL", &format!("{prefix}:s:rc-1")]);
    redis.command(&["SET", &format!("{prefix}:r:rc-1"), &until.to_string()]);
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);

    let (messages, end) = revoked.until_close(Duration::from_secs(20));
    assert!(
        matches!(end, Incoming::Close(Some(4001), _)),
        "expected 4001 after the reconciliation, got {end:?} after {messages:?}"
    );
    let event = messages.iter().find(|v| v["event"] == json!("session.revoked"));
    assert_eq!(event.map(|v| v["session_id"].clone()), Some(json!("rc-1")), "{messages:?}");
    assert_eq!(bystander.ping_barrier("the other session"), Vec::<Value>::new());
    assert_eq!(b.validate(&t1).status, 401);
    assert_eq!(b.validate(&t2).status, 200);
}

#[test]
fn ws_a_revoke_all_held_back_by_an_outage_spares_sessions_created_after_it() {
    // A takes a revoke-all of u-1 while Redis is down: its event waits in A's memory. A second
    // later u-1 logs in again through B (also degraded). When Redis is back the event reaches
    // B late; it must revoke what existed when it was taken, not the new session, whose
    // socket stays open.
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("ws-late-ra");
    let a = Daemon::start(config(&redis, &prefix));
    let b = Daemon::start(config(&redis, &prefix));
    let old = token("u-1", "lr-old");
    let probe = token("u-9", "lr-probe");
    a.create_ok(&old);
    a.create_ok(&probe);
    expect_valid(&b.validate(&probe), "normal", "lr-probe");

    redis.kill9();
    wait_for_mode(&a, &probe, "degraded");
    wait_for_mode(&b, &probe, "degraded");
    a.revoke_all("u-1").expect_status(200);
    // Not a synchronization: created_at has one-second resolution, and the new session must
    // be created in a later second than the revoke-all.
    std::thread::sleep(Duration::from_millis(1100));
    let new = token("u-1", "lr-new");
    b.create(&new).expect_status(201);
    let (mut on_b, _) = open(&b, &new);
    // Also a new login through A, with a socket on B, which cannot see that session (degraded,
    // `jwt_only`): its token was issued after the revoke-all, so the late event spares it too.
    let new_on_a = token("u-1", "lr-new-a");
    a.create(&new_on_a).expect_status(201);
    let (mut unknown_on_b, _) = open(&b, &new_on_a);

    redis.restart_keeping_data();
    wait_bus_up(&a, "A after Redis came back");
    wait_bus_up(&b, "B after Redis came back");
    // B has heard A's revoke-all once it counts a relayed event.
    let heard = crate::harness::poll_until(Duration::from_secs(20), || {
        let relayed = coordinator_details(&b)["events_relayed"].as_u64().unwrap_or(0);
        (relayed >= 1).then_some(())
    });
    assert!(heard.is_some(), "B never heard A's revoke-all: {}", coordinator_details(&b));
    for (what, socket) in [
        ("the new session's socket on B", &mut on_b),
        ("the socket on B of the new session B never held", &mut unknown_on_b),
    ] {
        let heard = socket.ping_barrier(what);
        assert!(
            heard.iter().all(|v| v["event"].as_str().is_some_and(|e| e.starts_with("service."))),
            "{what} heard more than service events: {heard:?}"
        );
    }
    assert_now("the new session on B", || check_normal(&b.validate(&new), "lr-new"));
    assert_now("the new session on A", || check_normal(&a.validate(&new), "lr-new"));
    assert_now("the old session on B", || b.validate(&old).check_error(401, "session_revoked"));
    assert_now("the old session on A", || a.validate(&old).check_error(401, "session_revoked"));
}

#[test]
fn ws_a_socket_of_a_journaled_create_refused_on_replay_is_closed_4001() {
    // A takes a create while Redis is down and a socket opens on it. A is then paused (so it
    // can neither replay nor hear anything) while Redis comes back and the user logs out
    // everywhere through B, which never saw that session. When A resumes, Redis refuses the
    // replayed create (the revoke-all's watermark): A's own socket must hear it and close.
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("ws-refused-put");
    let a = Daemon::start(config(&redis, &prefix));
    let b = Daemon::start(config(&redis, &prefix));
    let probe = token("u-9", "rw-probe");
    a.create_ok(&probe);

    redis.kill9();
    wait_for_mode(&a, &probe, "degraded");
    let t = token("u-1", "rw-1");
    a.create(&t).expect_status(201);
    let (mut ws, welcome) = open(&a, &t);
    assert_eq!(welcome["mode"], json!("degraded"), "{welcome}");

    crate::harness::send_signal(a.pid(), libc::SIGSTOP);
    redis.restart_keeping_data();
    wait_for_mode(&b, &probe, "normal");
    b.revoke_all("u-1").expect_status(200);
    crate::harness::send_signal(a.pid(), libc::SIGCONT);

    let (frames, end) = ws.until_close(Duration::from_secs(20));
    assert!(
        frames
            .iter()
            .any(|v| v["event"] == json!("session.revoked") && v["session_id"] == json!("rw-1")),
        "no session.revoked for the refused create: {frames:?} then {end:?}"
    );
    assert!(matches!(end, Incoming::Close(Some(4001), _)), "{end:?} after {frames:?}");
    assert_now("A, after its replay", || a.validate(&t).check_error(401, "session_revoked"));
}
