//! Contract section 6: a Redis outage — `kill -9` (connections refused) or SIGSTOP (a hang) —
//! degrades the instance instead of failing it: known sessions validate with `mode:
//! "degraded"`, unknown ones per `degraded.policy`, writes succeed and are journaled, and when
//! Redis answers again the journal is replayed and the instance is back to `normal`, so that a
//! fresh instance on that Redis sees the outage's writes. Also a daemon `kill -9`ed while
//! degraded, and a hammer of validations across outages (no 5xx, no wrong 401).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Client, Config, Daemon, Resp, poll_until};
use crate::redis_server::*;
use crate::tokens::{enhanced, hs256, now};

/// The longest a request may take while Redis is down or hung (the breaker's op timeout is
/// 100 ms: a request must never wait for Redis much longer than that).
const MAX_LATENCY: Duration = Duration::from_secs(3);

/// Sends a request and asserts it was answered within `MAX_LATENCY`.
#[track_caller]
fn timed(what: &str, f: impl FnOnce() -> Resp) -> Resp {
    let start = Instant::now();
    let r = f();
    let took = start.elapsed();
    assert!(took < MAX_LATENCY, "{what} took {took:?} during the outage: {} {}", r.status, r.body);
    r
}

/// `a` is within `slack` seconds of `b`.
#[track_caller]
fn assert_near(a: &Value, b: i64, slack: i64, what: &str) {
    let a = a.as_i64().unwrap_or_else(|| panic!("{what}: not an integer: {a}"));
    assert!((a - b).abs() <= slack, "{what}: {a} is not within {slack} s of {b}");
}

/// How Redis goes away and comes back.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `kill -9`, then a new process on the same port that reloads its append-only file.
    Kill9ThenRestartKeepingData,
    /// SIGSTOP, then SIGCONT.
    Hang,
}

/// The outage scenario of issue 3, under `jwt_only`.
fn outage_scenario(outage: Outage) {
    let mut redis = match outage {
        Outage::Kill9ThenRestartKeepingData => RedisServer::start_durable(),
        Outage::Hang => RedisServer::start(),
    };
    let prefix = unique_prefix("outage");
    let config = redis_config(&redis, &prefix, "jwt_only");
    let a = Daemon::start(config.clone());

    let known = token("u-1", "o-known");
    let victim = token("u-1", "o-victim");
    let stay = token("u-1", "o-stay");
    let never = token("u-1", "o-never");
    let during = token("u-2", "o-during");
    for (tok, sid) in [(&known, "o-known"), (&victim, "o-victim"), (&stay, "o-stay")] {
        a.create_with(json!({"token": tok, "ttl_seconds": 600})).expect_status(201);
        expect_valid(&a.validate(tok), "normal", sid);
    }

    match outage {
        Outage::Kill9ThenRestartKeepingData => redis.kill9(),
        Outage::Hang => redis.pause(),
    }
    let (_, took) = wait_for_mode(&a, &known, "degraded");
    eprintln!("{outage:?}: degraded after {took:?}");

    // Known session: its session, degraded. Unknown: the token alone (jwt_only).
    expect_valid(&timed("validate known", || a.validate(&known)), "degraded", "o-known");
    let v = expect_valid_unknown(&timed("validate unknown", || a.validate(&never)), "o-never");
    assert_eq!(v["identity"]["user_id"], json!("u-1"), "{v}");

    // A revoke during the outage: acknowledged, and refused locally at once.
    let r = timed("revoke", || a.revoke("o-victim")).expect_status(200).json();
    assert_eq!(r, json!({"revoked": true, "session_id": "o-victim"}));
    timed("validate revoked", || a.validate(&victim)).expect_error(401, "session_revoked");
    timed("create revoked", || a.create(&victim)).expect_error(409, "session_revoked");

    // A create and a refresh during the outage.
    let created = timed("create", || a.create_with(json!({"token": during, "ttl_seconds": 600})))
        .expect_status(201)
        .json()["session"]
        .clone();
    assert_eq!(created["session_id"], json!("o-during"), "{created}");
    let v =
        expect_valid(&timed("validate created", || a.validate(&during)), "degraded", "o-during");
    assert_eq!(v["session"], created, "{v}");
    let refreshed = timed("refresh", || a.refresh("o-stay", json!({"ttl_seconds": 1500})))
        .expect_status(200)
        .json()["session"]
        .clone();
    assert_near(&refreshed["expires_at"], now() + 1500, 2, "refreshed during the outage");
    let v = expect_valid(&timed("validate refreshed", || a.validate(&stay)), "degraded", "o-stay");
    assert_eq!(v["session"]["expires_at"], refreshed["expires_at"], "{v}");

    // Redis back: the instance returns to normal by itself.
    match outage {
        Outage::Kill9ThenRestartKeepingData => redis.restart_keeping_data(),
        Outage::Hang => redis.resume(),
    }
    let (_, took) = wait_for_mode(&a, &known, "normal");
    eprintln!("{outage:?}: normal again {took:?} after Redis came back");
    a.validate(&victim).expect_error(401, "session_revoked");
    expect_valid(&a.validate(&during), "normal", "o-during");

    // The journal was replayed before the instance said normal: a fresh instance (empty data
    // dir) on that Redis sees the outage's writes — the revocation wins over the stored
    // session the restarted/resumed Redis still holds.
    let c = Daemon::start(config);
    assert_now("fresh instance, session revoked during the outage", || {
        c.validate(&victim).check_error(401, "session_revoked")
    });
    c.create(&victim).expect_error(409, "session_revoked");
    assert_now("fresh instance, session created during the outage", || {
        check_normal(&c.validate(&during), "o-during")
    });
    assert_eq!(c.get_session("o-during").expect_status(200).json()["session"], created);
    assert_now("fresh instance, session refreshed during the outage", || {
        let s = c.get_session("o-stay").json()["session"].clone();
        if s["expires_at"] == refreshed["expires_at"] {
            Ok(())
        } else {
            Err(format!("expires_at {} instead of {}", s["expires_at"], refreshed["expires_at"]))
        }
    });
    expect_valid(&c.validate(&known), "normal", "o-known");
    assert_every_key_expires(&redis, &prefix);
}

#[test]
fn redis_kill9_degrades_serves_known_sessions_and_replays_after_restart() {
    outage_scenario(Outage::Kill9ThenRestartKeepingData);
}

#[test]
fn redis_hang_sigstop_degrades_serves_known_sessions_and_replays_after_sigcont() {
    outage_scenario(Outage::Hang);
}

#[test]
fn fail_closed_answers_503_for_unknown_sessions_during_an_outage() {
    // Redis comes back empty here ("Redis lost everything"): only the journal can bring the
    // outage's writes back.
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("fail-closed");
    let config = redis_config(&redis, &prefix, "fail_closed");
    let a = Daemon::start(config.clone());
    let known = token("u-1", "fc-known");
    let victim = token("u-1", "fc-victim");
    let never = token("u-1", "fc-never");
    let during = token("u-1", "fc-during");
    for (tok, sid) in [(&known, "fc-known"), (&victim, "fc-victim")] {
        a.create_ok(tok);
        expect_valid(&a.validate(tok), "normal", sid);
    }

    redis.kill9();
    wait_for_mode(&a, &known, "degraded");
    timed("validate unknown", || a.validate(&never)).expect_error(503, "store_unavailable");
    expect_valid(&timed("validate known", || a.validate(&known)), "degraded", "fc-known");
    timed("revoke", || a.revoke("fc-victim")).expect_status(200);
    timed("validate revoked", || a.validate(&victim)).expect_error(401, "session_revoked");
    timed("create", || a.create(&during)).expect_status(201);
    expect_valid(&timed("validate created", || a.validate(&during)), "degraded", "fc-during");
    // Still 503 for the unknown one: nothing was learnt about it.
    a.validate(&never).expect_error(503, "store_unavailable");

    redis.restart();
    wait_for_mode(&a, &during, "normal");
    // Normal again: the store answers for the unknown session.
    a.validate(&never).expect_error(401, "session_not_found");
    let c = Daemon::start(config);
    assert_now("fresh instance, revoked during the outage", || {
        c.validate(&victim).check_error(401, "session_revoked")
    });
    assert_now("fresh instance, created during the outage", || {
        check_normal(&c.validate(&during), "fc-during")
    });
    assert_every_key_expires(&redis, &prefix);
}

#[test]
fn daemon_kill9_while_degraded_replays_its_journal_after_restart() {
    // Redis comes back empty: the writes can only come from the crashed instance's journal.
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("crash");
    let config = redis_config(&redis, &prefix, "jwt_only");
    let mut a = Daemon::start(config.clone());
    let pre = token("u-1", "k-pre");
    let during = token("u-2", "k-during");
    let probe = token("u-3", "k-probe");
    a.create_ok(&pre);
    a.create_ok(&probe);
    expect_valid(&a.validate(&pre), "normal", "k-pre");

    redis.kill9();
    wait_for_mode(&a, &probe, "degraded");
    a.revoke("k-pre").expect_status(200);
    let created = a.create(&during).expect_status(201).json()["session"].clone();

    // Crash while degraded, restart on the same data dir with Redis still down.
    a.kill9();
    a.restart();
    a.validate(&pre).expect_error(401, "session_revoked");
    let v = expect_valid(
        &timed("validate after restart", || a.validate(&during)),
        "degraded",
        "k-during",
    );
    assert_eq!(v["session"], created, "{v}");

    // Redis back, empty: the restarted instance replays what it journaled before the crash.
    redis.restart();
    wait_for_mode(&a, &during, "normal");
    a.validate(&pre).expect_error(401, "session_revoked");
    let c = Daemon::start(config);
    assert_now("fresh instance, revoked before the crash", || {
        c.validate(&pre).check_error(401, "session_revoked")
    });
    assert_now("fresh instance, created before the crash", || {
        check_normal(&c.validate(&during), "k-during")
    });
    assert_eq!(c.get_session("k-during").expect_status(200).json()["session"], created);
    assert_every_key_expires(&redis, &prefix);
}

#[test]
fn a_full_journal_refuses_writes_with_503_and_loses_none_it_took() {
    // fallback.max_journal_entries bounds the degraded-mode backlog. When it is full, writes
    // (revocations included) are refused with 503 store_unavailable instead of being taken and
    // dropped; validations keep working; what was taken is replayed when Redis returns.
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("journal-full");
    let config = redis_config(&redis, &prefix, "jwt_only").set("fallback.max_journal_entries", "2");
    let a = Daemon::start(config.clone());
    let probe = token("u-0", "jf-probe");
    let victim = token("u-9", "jf-victim");
    a.create_ok(&probe);
    a.create_ok(&victim);

    redis.kill9();
    wait_for_mode(&a, &probe, "degraded");
    let t1 = token("u-1", "jf-1");
    let t2 = token("u-2", "jf-2");
    a.create(&t1).expect_status(201);
    a.create(&t2).expect_status(201);
    a.create(&token("u-3", "jf-3")).expect_error(503, "store_unavailable");
    a.revoke("jf-victim").expect_error(503, "store_unavailable");
    let health = a.get("/api/integration-health/fallback-session-provider").send().json();
    assert_eq!(health["status"], json!("degraded"), "{health}");
    assert_eq!(health["details"]["journal_backlog"], json!(2), "{health}");
    // Reads still answer, and the refused revocation did not happen.
    expect_valid(&a.validate(&t1), "degraded", "jf-1");
    expect_valid(&a.validate(&victim), "degraded", "jf-victim");

    redis.restart();
    wait_for_mode(&a, &t1, "normal");
    let c = Daemon::start(config);
    assert_now("fresh instance, taken while full-but-one", || {
        check_normal(&c.validate(&t2), "jf-2")
    });
    // With room again, the refused revocation can be made.
    a.revoke("jf-victim").expect_status(200);
    assert_now("revoked after recovery", || {
        c.validate(&victim).check_error(401, "session_revoked")
    });
}

/// Two instances on one durable Redis, where A took the create of `token` (user `u-1`, session
/// `<ids>-1`) while Redis was down and was `kill -9`ed before replaying it; Redis is back with
/// its data, A is still down, B never saw the session. `probe` (user `u-0`) is known to both.
struct UnreplayedCreate {
    redis: RedisServer,
    a: Daemon,
    b: Daemon,
    probe: String,
    token: String,
    config: Config,
}

impl UnreplayedCreate {
    fn new(name: &str, ids: &str) -> UnreplayedCreate {
        let mut redis = RedisServer::start_durable();
        let config = steady_redis_config(&redis, &unique_prefix(name));
        let mut a = Daemon::start(config.clone());
        let b = Daemon::start(config.clone());
        let probe = token("u-0", &format!("{ids}-probe"));
        let t = token("u-1", &format!("{ids}-1"));
        a.create_ok(&probe);
        redis.kill9();
        wait_for_mode(&a, &probe, "degraded");
        a.create(&t).expect_status(201);
        a.kill9();
        redis.restart_keeping_data();
        UnreplayedCreate { redis, a, b, probe, token: t, config }
    }
}

#[test]
fn a_journaled_create_that_redis_refuses_on_replay_is_revoked_locally_too() {
    // A takes a create while Redis is down and crashes before replaying it; meanwhile the id
    // is revoked in Redis through B. When A replays, Redis refuses the create: A's own store
    // must not keep the session live, or A would accept it in the next outage.
    let UnreplayedCreate { mut redis, mut a, b, probe, token: t, .. } =
        UnreplayedCreate::new("refused-put", "rp");
    b.revoke("rp-1").expect_status(200);
    a.restart();
    // Normal again once the journal is replayed. (No validation of rp-1 now: a normal-mode
    // lookup would itself teach A the revocation.)
    wait_for_mode(&a, &probe, "normal");

    // The next outage: A answers from its own store.
    redis.kill9();
    wait_for_mode(&a, &probe, "degraded");
    a.validate(&t).expect_error(401, "session_revoked");
}

#[test]
fn a_create_journaled_before_another_instances_revoke_all_does_not_survive_its_replay() {
    // A takes a create while Redis is down and dies before replaying it; meanwhile the user
    // logs out everywhere through B, which never saw that session. When A replays, the
    // revoke-all's watermark in Redis refuses the create: the session is revoked everywhere.
    let UnreplayedCreate { redis: _redis, mut a, b, probe, token: t, config } =
        UnreplayedCreate::new("journaled-vs-revoke-all", "jr");
    wait_for_mode(&b, &probe, "normal");
    b.revoke_all("u-1").expect_status(200);
    a.restart();
    wait_for_mode(&a, &probe, "normal");

    let c = Daemon::start(config);
    for (name, d) in [("A", &a), ("B", &b), ("a fresh instance", &c)] {
        assert_now(name, || d.validate(&t).check_error(401, "session_revoked"));
    }
}

#[test]
fn a_degraded_instance_refuses_a_re_create_from_a_token_older_than_its_revoke_all() {
    // B created a session that A never held. While Redis is down the user logs out
    // everywhere through A, then the old token is presented to A again: A cannot see B's
    // session, but the token was issued before the revoke-all, so it is refused (create and
    // validation), while a token issued after it works.
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("re-create-vs-revoke-all");
    let config = steady_redis_config(&redis, &prefix);
    let a = Daemon::start(config.clone());
    let b = Daemon::start(config);
    let probe = token("u-0", "rc-probe");
    let old = token("u-1", "rc-old");
    a.create_ok(&probe);
    b.create_ok(&old);

    redis.kill9();
    wait_for_mode(&a, &probe, "degraded");
    a.revoke_all("u-1").expect_status(200);
    a.create(&old).expect_error(409, "session_revoked");
    a.validate(&old).expect_error(401, "session_revoked");
    // Issued after the revoke-all (its second is over: `iat` one second ahead, within the
    // leeway), a new login's token creates and validates.
    let mut claims = enhanced("u-1", "u-1@example.com", "user", "rc-new");
    claims["iat"] = json!(now() + 1);
    let new = hs256(&claims);
    a.create(&new).expect_status(201);
    expect_valid(&a.validate(&new), "degraded", "rc-new");

    // Redis back: the journal (revoke-all, its refusal, the new create) replays; everywhere
    // the old token is revoked and the new one live.
    redis.restart_keeping_data();
    wait_for_mode(&a, &probe, "normal");
    assert_now("B, old token", || b.validate(&old).check_error(401, "session_revoked"));
    assert_now("B, new token", || check_normal(&b.validate(&new), "rc-new"));
}

#[test]
fn revoke_all_during_an_outage_reaches_sessions_this_instance_never_saw() {
    // "No logout is ever lost": a user's log-out-everywhere taken while degraded also revokes,
    // once replayed, the user's session that another instance created and this one never saw.
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("revoke-all-outage");
    let config = redis_config(&redis, &prefix, "jwt_only");
    let a = Daemon::start(config.clone());
    let mine: Vec<String> = (0..2).map(|i| token("u-9", &format!("ra-a{i}"))).collect();
    let theirs = token("u-9", "ra-b");
    let other_user = token("u-8", "ra-other");
    {
        let b = Daemon::start(config.clone());
        b.create_ok(&theirs);
        expect_valid(&b.validate(&theirs), "normal", "ra-b");
    }
    for (i, tok) in mine.iter().enumerate() {
        a.create_ok(tok);
        expect_valid(&a.validate(tok), "normal", &format!("ra-a{i}"));
    }
    a.create_ok(&other_user);

    redis.kill9();
    wait_for_mode(&a, &other_user, "degraded");
    let r = a.revoke_all("u-9").expect_status(200).json();
    assert!(r["revoked"].as_u64().is_some_and(|n| n >= 2), "revoke-all while degraded: {r}");
    for tok in &mine {
        a.validate(tok).expect_error(401, "session_revoked");
    }

    redis.restart_keeping_data();
    wait_for_mode(&a, &other_user, "normal");
    let c = Daemon::start(config);
    for (what, tok) in [("ra-a0", &mine[0]), ("ra-a1", &mine[1]), ("ra-b (made on B)", &theirs)] {
        assert_now(&format!("fresh instance, {what} after revoke-all during the outage"), || {
            c.validate(tok).check_error(401, "session_revoked")
        });
    }
    assert_eq!(c.list("u-9").expect_status(200).json(), json!({"sessions": []}));
    expect_valid(&c.validate(&other_user), "normal", "ra-other");
}

/// What the hammer threads saw.
#[derive(Default)]
struct Seen {
    normal: AtomicU64,
    degraded: AtomicU64,
    /// How many answers were wrong, and the first of them.
    bad_count: AtomicU64,
    bad: Mutex<Vec<String>>,
    slowest: Mutex<Duration>,
}

impl Seen {
    fn record_bad(&self, what: String) {
        self.bad_count.fetch_add(1, Ordering::Relaxed);
        let mut bad = lock(&self.bad);
        if bad.len() < 20 {
            bad.push(what);
        }
    }
}

fn hammer(client: Client, tokens: Vec<(String, String)>, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    for (tok, sid) in tokens.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let start = Instant::now();
        let r =
            client.req("POST", "/api/v1/sessions/validate").json(&json!({"token": tok})).try_send();
        let took = start.elapsed();
        {
            let mut slowest = lock(&seen.slowest);
            if took > *slowest {
                *slowest = took;
            }
        }
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                seen.record_bad(e);
                continue;
            }
        };
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        let ok = r.status == 200
            && v["valid"] == json!(true)
            && v["session"]["session_id"] == json!(sid);
        match (ok, v["mode"].as_str()) {
            (true, Some("normal")) => seen.normal.fetch_add(1, Ordering::Relaxed),
            (true, Some("degraded")) => seen.degraded.fetch_add(1, Ordering::Relaxed),
            _ => {
                seen.record_bad(format!("{sid}: {} {}", r.status, r.body));
                0
            }
        };
    }
}

/// A lock that a panicking thread did not spoil (the data is plain counters and lists).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops the hammer threads when the test ends, however it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn no_5xx_and_no_wrong_401_for_known_sessions_across_outages() {
    const THREADS: usize = 3;
    // Redis keeps its data across the restart, so every session stays live all along and
    // every answer must be 200 with the session.
    let mut redis = RedisServer::start_durable();
    let prefix = unique_prefix("hammer");
    let a = Daemon::start(redis_config(&redis, &prefix, "jwt_only"));
    let tokens: Vec<(String, String)> = (0..6)
        .map(|i| {
            let sid = format!("h-{i}");
            (token(&format!("u-{}", i % 2), &sid), sid)
        })
        .collect();
    for (tok, sid) in &tokens {
        a.create_ok(tok);
        expect_valid(&a.validate(tok), "normal", sid);
    }

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(Arc::clone(&stop));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let mut mine = tokens.clone();
            mine.rotate_left(i);
            let (client, seen, stop) = (a.client(), Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || hammer(client, mine, seen, stop))
        })
        .collect();
    let wait_count = |counter: &AtomicU64, more: u64, what: &str| {
        let target = counter.load(Ordering::Relaxed) + more;
        let reached =
            poll_until(MODE_DEADLINE, || (counter.load(Ordering::Relaxed) >= target).then_some(()));
        if reached.is_none() {
            let bad = lock(&seen.bad).clone();
            panic!("{what}: fewer than {more} such answers within {MODE_DEADLINE:?}; bad: {bad:?}");
        }
    };

    wait_count(&seen.normal, 50, "before the outage, normal");
    redis.kill9();
    wait_count(&seen.degraded, 100, "Redis killed, degraded");
    redis.restart_keeping_data();
    wait_count(&seen.normal, 100, "Redis restarted, normal");
    redis.pause();
    wait_count(&seen.degraded, 100, "Redis hung, degraded");
    redis.resume();
    wait_count(&seen.normal, 100, "Redis resumed, normal");

    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let bad = lock(&seen.bad).clone();
    let bad_count = seen.bad_count.load(Ordering::Relaxed);
    let slowest = *lock(&seen.slowest);
    eprintln!(
        "hammer: {} normal, {} degraded, {bad_count} bad, slowest {slowest:?}",
        seen.normal.load(Ordering::Relaxed),
        seen.degraded.load(Ordering::Relaxed),
    );
    assert!(
        bad_count == 0,
        "{bad_count} answers were not 200 valid with the session; the first ones: {bad:#?}"
    );
    assert!(slowest < MAX_LATENCY, "the slowest validation took {slowest:?}");
}
