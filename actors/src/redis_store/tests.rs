//! Tests of the Redis store against real `redis-server` processes started on free ports (never
//! the one on 6379), and against the embedded store, which it must agree with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::AsyncCommands;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use super::*;
use crate::domain::{Identity, JournalEntry, JournalOp, TokenFormat, UnixSeconds};
use crate::store::{FsyncMode, StoreCore, StoreOptions, StoreTuning};

const MAX_TTL: i64 = 3600;

// ---------------------------------------------------------------------------------------------
// Harness: one redis-server per test, on a free port, killed on drop.

/// A `redis-server` child process on 127.0.0.1, without persistence.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    stopped: bool,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One synchronous `PING`, bounded by `timeout`.
fn ping_once(port: u16, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout) else {
        return false;
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisServer {
    fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(s) = RedisServer::try_start(free_port()) {
                return s;
            }
        }
        panic!("could not start redis-server");
    }

    /// Starts on `port`; `None` when the server exits (the port was taken meanwhile).
    fn try_start(port: u16) -> Option<RedisServer> {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let mut server = RedisServer { child, port, _dir: dir, stopped: false };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.child.try_wait().unwrap().is_some() {
                return None;
            }
            if ping_once(port, Duration::from_millis(200)) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill();
        None
    }

    /// Restarts a killed server on the same port (empty: nothing is persisted).
    fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = RedisServer::try_start(self.port) {
                *self = s;
                return;
            }
            assert!(Instant::now() < deadline, "could not restart redis-server");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn signal(&mut self, sig: libc::c_int) {
        send_signal(self.child.id(), sig);
    }

    fn stop(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    fn kill(&mut self) {
        // SIGKILL works on a stopped process as well.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// A prefix no other store of this process uses.
fn fresh_prefix() -> String {
    format!("t{}", PREFIXES.fetch_add(1, Ordering::Relaxed))
}

fn settings(url: &str, prefix: &str, connect_timeout: Duration) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        key_prefix: prefix.to_string(),
        pool_size: 8,
        connect_timeout,
        max_ttl_seconds: MAX_TTL,
    }
}

fn store_on(server: &RedisServer) -> RedisStore {
    RedisStore::new(settings(&server.url(), &fresh_prefix(), Duration::from_secs(2))).unwrap()
}

fn store_with_ttl(server: &RedisServer, max_ttl: i64) -> RedisStore {
    let mut s = settings(&server.url(), &fresh_prefix(), Duration::from_secs(2));
    s.max_ttl_seconds = max_ttl;
    RedisStore::new(s).unwrap()
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Logical time starts at the real clock, so that the keys' `EXPIREAT` (real time) never drops
/// a key a test still reads; tests move `now` forward instead of sleeping.
fn base_now() -> UnixSeconds {
    crate::domain::now_seconds()
}

fn new_session(id: &str, user: &str, expires_at: UnixSeconds) -> NewSession {
    let mut attributes = BTreeMap::new();
    attributes.insert("ip".to_string(), "203.0.113.7".to_string());
    NewSession {
        identity: Identity {
            user_id: user.to_string(),
            email: format!("{user}@example.com"),
            role: "user".to_string(),
            session_id: id.to_string(),
            format: TokenFormat::Enhanced,
            issued_at: None,
            expires_at,
        },
        expires_at,
        attributes,
    }
}

fn session_of(id: &str, user: &str, created_at: UnixSeconds, expires_at: UnixSeconds) -> Session {
    let n = new_session(id, user, expires_at);
    Session {
        session_id: id.to_string(),
        user_id: user.to_string(),
        email: n.identity.email,
        role: n.identity.role,
        format: n.identity.format,
        created_at,
        expires_at,
        attributes: n.attributes,
    }
}

fn entries(ops: Vec<JournalOp>) -> Vec<JournalEntry> {
    ops.into_iter().enumerate().map(|(i, op)| JournalEntry { seq: i as u64 + 1, op }).collect()
}

fn put(id: &str, user: &str, created_at: UnixSeconds, expires_at: UnixSeconds) -> JournalOp {
    JournalOp::Put {
        session: session_of(id, user, created_at, expires_at),
        created_len: expires_at - created_at,
        issued_at: None,
    }
}

fn tomb(id: &str, until: UnixSeconds) -> JournalOp {
    JournalOp::Tomb { session_id: id.to_string(), until, user_id: None }
}

fn live(l: Lookup) -> Session {
    match l {
        Lookup::Live(s) => s,
        other => panic!("expected a live session, got {other:?}"),
    }
}

fn ids(v: &[Session]) -> Vec<&str> {
    v.iter().map(|s| s.session_id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Pure parts.

#[test]
fn sha1_matches_the_standard_vectors() {
    assert_eq!(scripts::sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    assert_eq!(scripts::sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(
        scripts::sha1_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
    );
    assert_eq!(scripts::sha1_hex(&[b'a'; 1_000_000]), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

#[test]
fn the_password_never_shows() {
    let s = settings("redis://user:s3cr%21t@127.0.0.1:1/0", "p", Duration::from_millis(300));
    assert_eq!(s.redacted_url(), "redis://user:***@127.0.0.1:1/0");
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("s3cr"), "{dbg}");
    let q = settings("redis+unix:///tmp/r.sock?db=1&pass=hunter2", "p", Duration::from_secs(1));
    assert_eq!(q.redacted_url(), "redis+unix:///tmp/r.sock?db=1&pass=***");
    // Nothing listens on port 1: the error names the server, not the password.
    let store = RedisStore::new(s).unwrap();
    let e = rt().block_on(store.ping()).unwrap_err();
    assert!(!e.0.contains("s3cr") && !e.0.contains("%21"), "{e}");
    assert!(e.0.contains("127.0.0.1:1"), "{e}");
    assert!(!format!("{store:?}").contains("s3cr"));
    // A URL that does not parse.
    let bad = settings("redis://:topsecret@[::1", "p", Duration::from_secs(1));
    if let Err(e) = RedisStore::new(bad) {
        assert!(!e.0.contains("topsecret"), "{e}");
    }
    assert!(RedisStore::new(settings("redis://127.0.0.1/", "p", Duration::ZERO)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Each operation, each outcome.

#[tokio::test]
async fn scripts_are_named_by_the_sha_redis_computes() {
    let server = RedisServer::start();
    let mut c = raw(&server).await;
    for s in SCRIPTS.all() {
        let sha: String =
            redis::cmd("SCRIPT").arg("LOAD").arg(s.source).query_async(&mut c).await.unwrap();
        assert_eq!(sha, s.sha, "script {}", s.name);
    }
}

#[tokio::test]
async fn create_answers_created_existing_conflict_and_revoked() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    let n = new_session("s1", "u1", now + 100);
    let CreateOutcome::Created(s) = st.create(&n, now).await.unwrap() else { panic!() };
    assert_eq!(s, session_of("s1", "u1", now, now + 100));
    // The same again, later, with other fields: the stored one comes back.
    let mut again = new_session("s1", "u1", now + 500);
    again.identity.email = "other@example.com".into();
    assert_eq!(st.create(&again, now + 5).await.unwrap(), CreateOutcome::Existing(s.clone()));
    assert_eq!(
        st.create(&new_session("s1", "u2", now + 100), now + 5).await.unwrap(),
        CreateOutcome::Conflict
    );
    // Revoked, then refused until the tombstone ends; created again after that.
    assert!(st.revoke("s1", now + 10).await.unwrap().newly_revoked);
    assert_eq!(
        st.create(&new_session("s1", "u1", now + 200), now + 99).await.unwrap(),
        CreateOutcome::Revoked
    );
    assert!(matches!(
        st.create(&new_session("s1", "u2", now + 300), now + 100).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    // Over an expired session of another user: created, and the index follows the owner.
    assert!(matches!(
        st.create(&new_session("s2", "u1", now + 10), now).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    assert!(matches!(
        st.create(&new_session("s2", "u3", now + 100), now + 10).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    assert!(st.list_user("u1", now + 10).await.unwrap().is_empty());
    assert_eq!(ids(&st.list_user("u3", now + 10).await.unwrap()), ["s2"]);
    // Empty attributes round-trip.
    let mut bare = new_session("s3", "u1", now + 100);
    bare.attributes.clear();
    st.create(&bare, now).await.unwrap();
    assert!(live(st.get("s3", now).await.unwrap()).attributes.is_empty());
}

#[tokio::test]
async fn get_answers_live_missing_and_revoked_and_expires_by_time() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    assert_eq!(st.get("nope", now).await.unwrap(), Lookup::Missing);
    st.create(&new_session("s1", "u1", now + 100), now).await.unwrap();
    let (l, len) = st.get_with_len("s1", now + 50).await.unwrap();
    assert_eq!(live(l), session_of("s1", "u1", now, now + 100));
    assert_eq!(len, Some(100));
    // Expired at exactly its expires_at, as in the embedded store.
    assert_eq!(st.get("s1", now + 99).await.unwrap().clone(), st.get("s1", now).await.unwrap());
    assert_eq!(st.get_with_len("s1", now + 100).await.unwrap(), (Lookup::Missing, None));
    // A revoked session stays revoked until its expiry, then is unknown.
    st.create(&new_session("s2", "u1", now + 100), now).await.unwrap();
    st.revoke("s2", now + 1).await.unwrap();
    assert_eq!(st.get_with_len("s2", now + 99).await.unwrap(), (Lookup::Revoked, None));
    assert_eq!(st.get("s2", now + 100).await.unwrap(), Lookup::Missing);
}

#[tokio::test]
async fn refresh_answers_refreshed_revoked_missing_and_caps_at_max_ttl() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.create(&new_session("s1", "u1", now + 100), now).await.unwrap();
    // With a ttl.
    let RefreshOutcome::Refreshed(s) = st.refresh("s1", Some(500), now + 10).await.unwrap() else {
        panic!()
    };
    assert_eq!(s, session_of("s1", "u1", now, now + 510));
    assert_eq!(live(st.get("s1", now + 509).await.unwrap()).expires_at, now + 510);
    // Without: the created length (100), whatever the current expiry.
    let RefreshOutcome::Refreshed(s) = st.refresh("s1", None, now + 20).await.unwrap() else {
        panic!()
    };
    assert_eq!(s.expires_at, now + 120);
    // Capped at now + max_ttl.
    let RefreshOutcome::Refreshed(s) =
        st.refresh("s1", Some(10 * MAX_TTL), now + 30).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(s.expires_at, now + 30 + MAX_TTL);
    assert_eq!(st.get_with_len("s1", now + 30).await.unwrap().1, Some(100));
    // The user index follows the new expiry.
    assert_eq!(ids(&st.list_user("u1", now + 1000).await.unwrap()), ["s1"]);
    assert_eq!(st.refresh("nope", None, now).await.unwrap(), RefreshOutcome::Missing);
    assert_eq!(
        st.refresh("s1", None, now + 31 + MAX_TTL).await.unwrap(),
        RefreshOutcome::Missing,
        "expired"
    );
    st.revoke("s1", now + 40).await.unwrap();
    assert_eq!(st.refresh("s1", Some(5), now + 41).await.unwrap(), RefreshOutcome::Revoked);
    // A huge ttl is clamped, not refused.
    st.create(&new_session("s2", "u1", now + 100), now).await.unwrap();
    let RefreshOutcome::Refreshed(s) = st.refresh("s2", Some(i64::MAX), now).await.unwrap() else {
        panic!()
    };
    assert_eq!(s.expires_at, now + MAX_TTL);
}

#[tokio::test]
async fn revoke_answers_newly_with_user_already_and_unknown() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.create(&new_session("s1", "u1", now + 100), now).await.unwrap();
    assert_eq!(
        st.revoke("s1", now + 1).await.unwrap(),
        RevokeOutcome { newly_revoked: true, user_id: Some("u1".into()) }
    );
    assert_eq!(
        st.revoke("s1", now + 2).await.unwrap(),
        RevokeOutcome { newly_revoked: false, user_id: None }
    );
    assert!(st.list_user("u1", now + 2).await.unwrap().is_empty());
    // Until its expiry, then the id may be revoked afresh (a new tombstone).
    assert_eq!(st.get("s1", now + 99).await.unwrap(), Lookup::Revoked);
    assert_eq!(
        st.revoke("s1", now + 100).await.unwrap(),
        RevokeOutcome { newly_revoked: true, user_id: None }
    );
    // Unknown: refused for max_ttl.
    assert_eq!(
        st.revoke("ghost", now).await.unwrap(),
        RevokeOutcome { newly_revoked: true, user_id: None }
    );
    assert_eq!(st.get("ghost", now + MAX_TTL - 1).await.unwrap(), Lookup::Revoked);
    assert_eq!(st.get("ghost", now + MAX_TTL).await.unwrap(), Lookup::Missing);
    assert_eq!(
        st.create(&new_session("ghost", "u1", now + 100), now + 5).await.unwrap(),
        CreateOutcome::Revoked
    );
    // An expired session counts as unknown: no user.
    st.create(&new_session("s2", "u1", now + 10), now).await.unwrap();
    assert_eq!(
        st.revoke("s2", now + 10).await.unwrap(),
        RevokeOutcome { newly_revoked: true, user_id: None }
    );
    assert_eq!(st.get("s2", now + 10 + MAX_TTL - 1).await.unwrap(), Lookup::Revoked);
}

#[tokio::test]
async fn list_user_is_live_only_sorted_and_prunes_the_index() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.create(&new_session("b", "u1", now + 100), now).await.unwrap();
    st.create(&new_session("a", "u1", now + 100), now).await.unwrap();
    st.create(&new_session("old", "u1", now + 100), now - 5).await.unwrap();
    st.create(&new_session("short", "u1", now + 10), now).await.unwrap();
    st.create(&new_session("gone", "u1", now + 100), now).await.unwrap();
    st.create(&new_session("x", "u2", now + 100), now).await.unwrap();
    st.revoke("gone", now).await.unwrap();
    assert_eq!(ids(&st.list_user("u1", now).await.unwrap()), ["old", "a", "b", "short"]);
    assert_eq!(ids(&st.list_user("u1", now + 10).await.unwrap()), ["old", "a", "b"]);
    assert_eq!(ids(&st.list_user("u2", now).await.unwrap()), ["x"]);
    assert!(st.list_user("nobody", now).await.unwrap().is_empty());
    // Members dead for longer than the grace are pruned.
    let mut c = raw(&server).await;
    let ukey = st.inner.keys.user("u1");
    assert_eq!(c.zcard::<_, usize>(&ukey).await.unwrap(), 4);
    st.list_user("u1", now + 10 + KEY_GRACE_SECONDS).await.unwrap();
    assert_eq!(c.zcard::<_, usize>(&ukey).await.unwrap(), 3);
    // A member whose session hash is gone is pruned too.
    c.del::<_, ()>(st.inner.keys.session("a")).await.unwrap();
    assert_eq!(ids(&st.list_user("u1", now).await.unwrap()), ["old", "b"]);
    assert_eq!(c.zcard::<_, usize>(&ukey).await.unwrap(), 2);
}

#[tokio::test]
async fn list_user_answers_at_most_ten_thousand_the_oldest() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    // 10,050 sessions, created_at in groups of 7 so that ties straddle the limit.
    let n = LIST_USER_MAX + 50;
    let ops = (0..n)
        .map(|i| put(&format!("s{i:05}"), "big", now - 2000 + (i / 7) as i64, now + 1000))
        .collect();
    st.replay(&entries(ops), now).await.unwrap();
    let got = st.list_user("big", now).await.unwrap();
    assert_eq!(got.len(), LIST_USER_MAX);
    let expect: Vec<String> = (0..LIST_USER_MAX).map(|i| format!("s{i:05}")).collect();
    assert_eq!(ids(&got), expect.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test]
async fn revoke_user_revokes_every_live_session_in_list_order() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    // An earlier revoke-all (its watermark is before every token below).
    assert!(st.revoke_user("u1", now - 10).await.unwrap().is_empty());
    st.create(&new_session("b", "u1", now + 100), now).await.unwrap();
    st.create(&new_session("a", "u1", now + 200), now).await.unwrap();
    st.create(&new_session("first", "u1", now + 300), now - 1).await.unwrap();
    st.create(&new_session("dead", "u1", now + 5), now).await.unwrap();
    st.create(&new_session("x", "u2", now + 100), now).await.unwrap();
    assert_eq!(st.revoke_user("u1", now + 5).await.unwrap(), ["first", "a", "b"]);
    // Each tombstone lasts until its session's expiry.
    assert_eq!(st.get("b", now + 99).await.unwrap(), Lookup::Revoked);
    assert_eq!(st.get("b", now + 100).await.unwrap(), Lookup::Missing);
    assert_eq!(st.get("a", now + 199).await.unwrap(), Lookup::Revoked);
    assert_eq!(st.get("first", now + 299).await.unwrap(), Lookup::Revoked);
    assert_eq!(st.get("dead", now + 5).await.unwrap(), Lookup::Missing);
    assert!(live(st.get("x", now + 5).await.unwrap()).user_id == "u2");
    assert!(st.list_user("u1", now + 5).await.unwrap().is_empty());
    assert!(st.revoke_user("u1", now + 5).await.unwrap().is_empty());
    assert_eq!(
        st.create(&new_session("a", "u1", now + 100), now + 6).await.unwrap(),
        CreateOutcome::Revoked
    );
}

#[tokio::test]
async fn every_key_expires() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.create(&new_session("s1", "u1", now + 100), now).await.unwrap();
    st.create(&new_session("s2", "u1", now + 300), now).await.unwrap();
    st.refresh("s2", Some(1000), now).await.unwrap();
    st.revoke("s1", now).await.unwrap();
    st.revoke("ghost", now).await.unwrap();
    let mut c = raw(&server).await;
    let keys: Vec<String> = c.keys(format!("{}:*", st.inner.keys.prefix())).await.unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for k in keys {
        let at: i64 = redis::cmd("EXPIRETIME").arg(&k).query_async(&mut c).await.unwrap();
        let expect = if k.ends_with(":s:s2") || k.ends_with(":u:u1") {
            now + 1000
        } else if k.ends_with(":r:s1") {
            now + 100
        } else {
            assert!(k.ends_with(":r:ghost"), "{k}");
            now + MAX_TTL
        };
        assert_eq!(at, expect + KEY_GRACE_SECONDS, "{k}");
    }
}

#[tokio::test]
async fn oversized_sessions_and_out_of_range_times_are_refused() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    let mut big = new_session("big", "u1", now + 100);
    big.attributes.insert("blob".into(), "x".repeat(codec::MAX_ENCODED_BYTES));
    let e = st.create(&big, now).await.unwrap_err();
    assert!(e.0.contains("over the limit"), "{e}");
    assert_eq!(st.get("big", now).await.unwrap(), Lookup::Missing);
    assert!(st.create(&new_session("s", "u", i64::MAX), now).await.is_err());
    assert!(st.get("s", i64::MIN).await.is_err());
    let huge = entries(vec![put("s", "u", now, i64::MAX)]);
    assert!(st.replay(&huge, now).await.is_err());
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    let mut c = raw(&server).await;
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut c).await.unwrap();
    st.create(&new_session("s1", "u1", now + 100), now).await.unwrap();
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut c).await.unwrap();
    st.replay(&entries(vec![tomb("s1", now + 50), put("s2", "u1", now, now + 100)]), now)
        .await
        .unwrap();
    assert_eq!(st.get("s1", now).await.unwrap(), Lookup::Revoked);
    assert_eq!(live(st.get("s2", now).await.unwrap()).created_at, now);
}

#[tokio::test]
async fn a_replayed_create_of_a_revoked_id_is_reported_refused() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.revoke("gone", now).await.unwrap();
    let refused = st
        .replay(
            &entries(vec![put("gone", "u1", now, now + 100), put("fresh", "u1", now, now + 100)]),
            now,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = refused.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(ids, ["gone"]);
    assert_eq!(refused[0].user_id, "u1");
    assert_eq!(st.get("gone", now).await.unwrap(), Lookup::Revoked);
    assert_eq!(live(st.get("fresh", now).await.unwrap()).created_at, now);
}

#[tokio::test]
async fn revoked_among_answers_the_revoked_ids_of_many_in_chunks() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    // More ids than one chunk: live, revoked and unknown ones, after a script cache flush.
    let ids: Vec<String> = (0..REPLAY_CHUNK + 44).map(|i| format!("m{i}")).collect();
    let mut want = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match i % 3 {
            0 => {
                st.create(&new_session(id, "u1", now + 100), now).await.unwrap();
            }
            1 => {
                st.revoke(id, now).await.unwrap();
                want.push(id.clone());
            }
            _ => {}
        }
    }
    let mut c = raw(&server).await;
    redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut c).await.unwrap();
    assert_eq!(st.revoked_among(&ids, now).await.unwrap(), want);
    assert!(st.revoked_among(&[], now).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_revoke_all_refuses_creates_from_tokens_issued_at_or_before_it() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.revoke_user("u1", now).await.unwrap();
    let issued = |id: &str, user: &str, iat: Option<i64>| {
        let mut n = new_session(id, user, now + 100);
        n.identity.issued_at = iat;
        n
    };
    for (id, iat) in [("old", Some(now - 30)), ("same", Some(now)), ("none", None)] {
        let o = st.create(&issued(id, "u1", iat), now).await.unwrap();
        assert_eq!(o, CreateOutcome::Revoked, "{id}");
        assert_eq!(st.get(id, now).await.unwrap(), Lookup::Revoked, "{id}");
    }
    let o = st.create(&issued("new", "u1", Some(now + 1)), now + 1).await.unwrap();
    assert!(matches!(o, CreateOutcome::Created(_)), "{o:?}");
    let o = st.create(&issued("other", "u2", Some(now - 30)), now).await.unwrap();
    assert!(matches!(o, CreateOutcome::Created(_)), "{o:?}");
    // A replayed revoke-all sets it at its own time, and never lowers it.
    st.replay(&entries(vec![JournalOp::RevokeUser { user_id: "u3".into(), at: now - 5 }]), now)
        .await
        .unwrap();
    assert_eq!(
        st.create(&issued("a", "u3", Some(now - 5)), now).await.unwrap(),
        CreateOutcome::Revoked
    );
    assert!(matches!(
        st.create(&issued("b", "u3", Some(now - 4)), now).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    st.replay(&entries(vec![JournalOp::RevokeUser { user_id: "u1".into(), at: now - 100 }]), now)
        .await
        .unwrap();
    assert_eq!(
        st.create(&issued("c", "u1", Some(now - 1)), now).await.unwrap(),
        CreateOutcome::Revoked
    );
    // It ends max_ttl seconds after the revoke-all.
    let later = now + MAX_TTL;
    let o = st.create(&issued("d", "u1", Some(now - 1)), later).await.unwrap();
    assert!(matches!(o, CreateOutcome::Created(_)), "{o:?}");
}

#[tokio::test]
async fn a_replayed_create_from_a_token_issued_before_a_revoke_all_is_reported_refused() {
    // Taken while degraded on one instance; meanwhile another instance revoked all the
    // user's sessions in Redis. The replayed create must not survive it.
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.revoke_user("u1", now).await.unwrap();
    let with_iat =
        |id: &str, created_at: i64, iat: Option<i64>| match put(id, "u1", created_at, now + 100) {
            JournalOp::Put { session, created_len, .. } => {
                JournalOp::Put { session, created_len, issued_at: iat }
            }
            other => other,
        };
    let refused = st
        .replay(
            &entries(vec![
                with_iat("before", now - 20, Some(now - 21)),
                // No `iat`: its created_at stands for it.
                with_iat("no-iat", now, None),
                with_iat("after", now + 1, Some(now + 1)),
            ]),
            now + 1,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = refused.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(ids, ["before", "no-iat"]);
    assert_eq!(st.get("before", now + 1).await.unwrap(), Lookup::Revoked);
    assert!(matches!(st.get("after", now + 1).await.unwrap(), Lookup::Live(_)));
}

// ---------------------------------------------------------------------------------------------
// Atomicity.

#[tokio::test]
async fn revoke_user_misses_no_session_created_concurrently() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    for round in 0..5 {
        let user = format!("u{round}");
        let mut creates = tokio::task::JoinSet::new();
        let mut revokes = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (st2, user2) = (st.clone(), user.clone());
            creates.spawn(async move {
                let sid = format!("r{round}-{i}");
                // Tokens issued after the revoke-alls' time: their watermark refuses none.
                let mut n = new_session(&sid, &user2, now + 600);
                n.identity.issued_at = Some(now + 1);
                let o = st2.create(&n, now).await.unwrap();
                assert!(matches!(o, CreateOutcome::Created(_)), "{o:?}");
                sid
            });
            if i % 50 == 25 {
                let (st, user) = (st.clone(), user.clone());
                revokes.spawn(async move { st.revoke_user(&user, now).await.unwrap() });
            }
        }
        let created = creates.join_all().await;
        let mut revoked: Vec<String> = revokes.join_all().await.into_iter().flatten().collect();
        let n_revoked = revoked.len();
        revoked.sort();
        revoked.dedup();
        assert_eq!(revoked.len(), n_revoked, "a session was revoked twice");
        let listed = st.list_user(&user, now).await.unwrap();
        for sid in &created {
            let l = st.get(sid, now).await.unwrap();
            if revoked.binary_search(sid).is_ok() {
                assert_eq!(l, Lookup::Revoked, "{sid}");
            } else {
                assert!(matches!(l, Lookup::Live(_)), "{sid} neither revoked nor live: {l:?}");
                assert!(listed.iter().any(|s| &s.session_id == sid));
            }
        }
        assert_eq!(listed.len() + revoked.len(), created.len());
        println!("round {round}: {n_revoked} revoked, {} created after", listed.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Replay.

#[tokio::test]
async fn replay_applies_each_kind_of_entry() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    // Already in Redis: sessions of u1 (one created after the revoke-all), one of u2.
    st.create(&new_session("old", "u1", now + 500), now - 100).await.unwrap();
    st.create(&new_session("young", "u1", now + 500), now - 10).await.unwrap();
    st.create(&new_session("other", "u2", now + 500), now - 100).await.unwrap();
    st.create(&new_session("taken", "u2", now + 500), now - 100).await.unwrap();
    let journal = entries(vec![
        put("p1", "u3", now - 50, now + 100),
        JournalOp::Expiry { session_id: "p1".into(), expires_at: now + 400 },
        JournalOp::Expiry { session_id: "never".into(), expires_at: now + 400 },
        tomb("other", now + 10),
        tomb("unknown", now + 300),
        JournalOp::RevokeUser { user_id: "u1".into(), at: now - 20 },
        // Live for another user: left alone.
        put("taken", "u9", now - 5, now + 100),
        // Expired by the time of the replay, and with no Expiry after it.
        put("stale", "u3", now - 500, now - 1),
    ]);
    st.replay(&journal, now).await.unwrap();
    let p1 = live(st.get("p1", now).await.unwrap());
    assert_eq!((p1.created_at, p1.expires_at), (now - 50, now + 400));
    assert_eq!(st.get_with_len("p1", now).await.unwrap().1, Some(150));
    assert_eq!(st.get("never", now).await.unwrap(), Lookup::Missing);
    // The tombstone lasts until the later of `until` and the session's expiry.
    assert_eq!(st.get("other", now + 499).await.unwrap(), Lookup::Revoked);
    assert_eq!(st.get("unknown", now + 299).await.unwrap(), Lookup::Revoked);
    assert_eq!(st.get("unknown", now + 300).await.unwrap(), Lookup::Missing);
    assert_eq!(st.get("old", now).await.unwrap(), Lookup::Revoked);
    assert_eq!(live(st.get("young", now).await.unwrap()).created_at, now - 10);
    assert_eq!(live(st.get("taken", now).await.unwrap()).user_id, "u2");
    assert_eq!(st.get("stale", now).await.unwrap(), Lookup::Missing);
    assert_eq!(ids(&st.list_user("u3", now).await.unwrap()), ["p1"]);
    assert_eq!(ids(&st.list_user("u1", now).await.unwrap()), ["young"]);
    assert!(st.list_user("u2", now).await.unwrap().iter().all(|s| s.session_id == "taken"));
    assert_eq!(st.replay(&[], now).await.map_err(|e| e.0), Ok(Vec::new()));
}

#[tokio::test]
async fn an_expiry_replayed_after_its_put_revives_a_session_dead_by_its_first_expiry() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    // Created with 10 s, refreshed to 200 s while degraded; replayed 50 s later.
    let journal = entries(vec![
        put("s1", "u1", now - 50, now - 40),
        JournalOp::Expiry { session_id: "s1".into(), expires_at: now + 150 },
    ]);
    st.replay(&journal, now).await.unwrap();
    assert_eq!(live(st.get("s1", now).await.unwrap()).expires_at, now + 150);
    st.replay(&journal, now + 1).await.unwrap();
    assert_eq!(live(st.get("s1", now + 1).await.unwrap()).expires_at, now + 150);
}

/// The state seen through the API, for comparing stores.
async fn snapshot(st: &RedisStore, sids: &[String], users: &[String], now: i64) -> String {
    let mut out = String::new();
    for sid in sids {
        out += &format!("{sid}: {:?}\n", st.get_with_len(sid, now).await.unwrap());
    }
    for u in users {
        out += &format!("{u}: {:?}\n", ids(&st.list_user(u, now).await.unwrap()));
    }
    out
}

#[tokio::test]
async fn replay_is_idempotent_and_revocations_win() {
    let server = RedisServer::start();
    let now = base_now();
    let sids: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
    let users = vec!["u1".to_string(), "u2".to_string()];
    let journal = entries(vec![
        // Put then Tomb: revoked.
        put("a", "u1", now - 10, now + 100),
        JournalOp::Expiry { session_id: "a".into(), expires_at: now + 200 },
        JournalOp::Tomb { session_id: "a".into(), until: now + 200, user_id: Some("u1".into()) },
        // Tomb then Put: the Put is refused.
        tomb("b", now + 300),
        put("b", "u1", now - 5, now + 100),
        // An expiry after a revocation does not resurrect.
        JournalOp::Expiry { session_id: "b".into(), expires_at: now + 900 },
        // Plain put, refreshed.
        put("c", "u2", now - 10, now + 100),
        JournalOp::Expiry { session_id: "c".into(), expires_at: now + 50 },
        // Revoke-all after a put, and a put after the revoke-all.
        put("d", "u1", now - 9, now + 100),
        JournalOp::RevokeUser { user_id: "u1".into(), at: now - 8 },
        put("e", "u1", now - 7, now + 100),
    ]);
    let once = store_on(&server);
    once.replay(&journal, now).await.unwrap();
    let want = snapshot(&once, &sids, &users, now).await;
    assert!(want.contains("a: (Revoked, None)"), "{want}");
    assert!(want.contains("b: (Revoked, None)"), "{want}");
    assert!(want.contains("d: (Revoked, None)"), "{want}");
    assert!(want.contains("u1: [\"e\"]"), "{want}");
    // Twice.
    let twice = store_on(&server);
    twice.replay(&journal, now).await.unwrap();
    twice.replay(&journal, now).await.unwrap();
    assert_eq!(snapshot(&twice, &sids, &users, now).await, want);
    // Every prefix first (an interrupted replay), then the whole.
    for cut in 0..journal.len() {
        let st = store_on(&server);
        st.replay(&journal[..cut], now).await.unwrap();
        st.replay(&journal, now).await.unwrap();
        assert_eq!(snapshot(&st, &sids, &users, now).await, want, "cut at {cut}");
    }
    // In chunks smaller than the journal: the same.
    let chunked = store_on(&server);
    for part in journal.chunks(3) {
        chunked.replay(part, now).await.unwrap();
    }
    assert_eq!(snapshot(&chunked, &sids, &users, now).await, want);
}

#[tokio::test]
async fn ten_thousand_entries_replay_and_replay_again_idempotently() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.ping().await.unwrap();
    // A degraded instance's typical mix: creates, refreshes, revocations, some revoke-alls.
    let ops: Vec<JournalOp> = (0..10_000)
        .map(|i| match i % 10 {
            0..=4 => put(&format!("s{i}"), &format!("u{}", i % 500), now - 100, now + 1000),
            5..=6 => {
                JournalOp::Expiry { session_id: format!("s{}", i - 5), expires_at: now + 2000 }
            }
            7..=8 => tomb(&format!("s{}", i - 5), now + 1500),
            _ => JournalOp::RevokeUser { user_id: format!("u{}", i % 500), at: now - 200 },
        })
        .collect();
    let journal = entries(ops);
    let started = Instant::now();
    st.replay(&journal, now).await.unwrap();
    let first = started.elapsed();
    let started = Instant::now();
    st.replay(&journal, now).await.unwrap();
    let second = started.elapsed();
    println!("replay of 10,000 entries: {first:?} (again, idempotent: {second:?})");
    // Its speed is measured, not asserted (noisy machines): docs/benchmarks.md.
    for i in (0..10_000).step_by(10) {
        assert_eq!(live(st.get(&format!("s{i}"), now).await.unwrap()).expires_at, now + 2000);
        assert_eq!(st.get(&format!("s{}", i + 2), now).await.unwrap(), Lookup::Revoked);
        assert_eq!(live(st.get(&format!("s{}", i + 4), now).await.unwrap()).expires_at, now + 1000);
    }
}

// ---------------------------------------------------------------------------------------------
// Failures: a hung server, a dead one.

#[tokio::test]
async fn a_stopped_server_answers_errors_within_the_connect_timeout() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let st = RedisStore::new(settings(&server.url(), &fresh_prefix(), timeout)).unwrap();
    let now = base_now();
    st.ping().await.unwrap();
    st.create(&new_session("s1", "u1", now + 100), now).await.unwrap();
    let events = st.subscribe().await.unwrap();
    let mut probe = events.probe();
    probe.ping().await.unwrap();
    server.stop();
    let slack = Duration::from_millis(250);
    // With pooled connections (recycling them hangs) ...
    for _ in 0..3 {
        let t = Instant::now();
        assert!(st.ping().await.is_err());
        assert!(t.elapsed() < timeout + slack, "ping took {:?}", t.elapsed());
    }
    let t = Instant::now();
    assert!(st.get("s1", now).await.is_err());
    assert!(t.elapsed() < timeout + slack, "get took {:?}", t.elapsed());
    // ... and without (connecting works, the handshake hangs).
    let fresh = RedisStore::new(settings(&server.url(), &fresh_prefix(), timeout)).unwrap();
    let t = Instant::now();
    assert!(fresh.ping().await.is_err());
    assert!(t.elapsed() < timeout + slack, "fresh ping took {:?}", t.elapsed());
    let t = Instant::now();
    assert!(fresh.subscribe().await.is_err());
    assert!(t.elapsed() < timeout + slack, "subscribe took {:?}", t.elapsed());
    // The subscription's probe notices too.
    let t = Instant::now();
    assert!(probe.ping().await.is_err());
    assert!(t.elapsed() < timeout + slack, "probe took {:?}", t.elapsed());
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    while st.ping().await.is_err() {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(st.get("s1", now).await.unwrap(), Lookup::Live(_)));
}

#[tokio::test]
async fn a_killed_server_answers_errors_promptly_and_the_store_recovers_after_a_restart() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let st = RedisStore::new(settings(&server.url(), &fresh_prefix(), timeout)).unwrap();
    let now = base_now();
    st.ping().await.unwrap();
    let mut events = st.subscribe().await.unwrap();
    server.kill();
    for _ in 0..3 {
        let t = Instant::now();
        assert!(st.ping().await.is_err());
        assert!(st.create(&new_session("s1", "u1", now + 100), now).await.is_err());
        assert!(t.elapsed() < timeout, "took {:?}", t.elapsed());
    }
    // The stream ends.
    let end = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
    assert_eq!(end, Ok(None));
    // Back on the same port (empty): the same store works again, scripts reloaded.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while st.ping().await.is_err() {
        assert!(Instant::now() < deadline, "no recovery after restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        st.create(&new_session("s1", "u1", now + 100), now).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    st.replay(&entries(vec![tomb("s1", now + 10)]), now).await.unwrap();
    assert_eq!(st.get("s1", now).await.unwrap(), Lookup::Revoked);
}

// ---------------------------------------------------------------------------------------------
// Pub/sub.

#[tokio::test]
async fn published_events_reach_every_subscriber() {
    let server = RedisServer::start();
    let st = store_on(&server);
    assert_eq!(st.events_channel(), format!("{}:events", st.inner.keys.prefix()));
    let mut a = st.subscribe().await.unwrap();
    let mut b = st.subscribe().await.unwrap();
    // Another prefix is another channel.
    let other = store_on(&server);
    let mut c = other.subscribe().await.unwrap();
    st.publish(b"one").await.unwrap();
    st.publish(&[0, 159, 146, 150]).await.unwrap();
    let wait = Duration::from_secs(2);
    for s in [&mut a, &mut b] {
        assert_eq!(tokio::time::timeout(wait, s.next()).await.unwrap().unwrap(), b"one");
        assert_eq!(
            tokio::time::timeout(wait, s.next()).await.unwrap().unwrap(),
            [0, 159, 146, 150]
        );
    }
    a.probe().ping().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), c.next()).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Agreement with the embedded store.

#[derive(Clone, Debug)]
enum Op {
    Create { id: u8, user: u8, ttl: i64 },
    Get { id: u8 },
    Refresh { id: u8, ttl: Option<i64> },
    Revoke { id: u8 },
    ListUser { user: u8 },
    RevokeUser { user: u8 },
    Advance { secs: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..10, 0u8..3, 0i64..200).prop_map(|(id, user, ttl)| Op::Create { id, user, ttl }),
        2 => (0u8..10).prop_map(|id| Op::Get { id }),
        2 => (0u8..10, proptest::option::of(0i64..200))
            .prop_map(|(id, ttl)| Op::Refresh { id, ttl }),
        2 => (0u8..10).prop_map(|id| Op::Revoke { id }),
        1 => (0u8..3).prop_map(|user| Op::ListUser { user }),
        1 => (0u8..3).prop_map(|user| Op::RevokeUser { user }),
        2 => (0i64..80).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// Smaller than the ttls generated, so that the cap matters.
const MODEL_MAX_TTL: i64 = 150;

fn embedded(dir: &std::path::Path, now: i64) -> StoreCore {
    let o = StoreOptions {
        data_dir: dir.to_path_buf(),
        fsync: FsyncMode::Never,
        max_entries: 100_000,
        max_ttl_seconds: MODEL_MAX_TTL,
    };
    StoreCore::open_with(o, StoreTuning::default(), now).unwrap().0
}

fn all_sids() -> Vec<String> {
    (0..10).map(|i| format!("s{i}")).collect()
}

fn all_users() -> Vec<String> {
    (0..3).map(|i| format!("u{i}")).collect()
}

/// The embedded store's view, in the same shape as [`snapshot`] (without the created length,
/// which the embedded store does not answer).
fn embedded_view(core: &StoreCore, now: i64) -> Vec<String> {
    let mut out: Vec<String> =
        all_sids().iter().map(|sid| format!("{sid}: {:?}", core.get(sid, now))).collect();
    out.extend(all_users().iter().map(|u| format!("{u}: {:?}", ids(&core.list_user(u, now)))));
    out
}

async fn redis_view(st: &RedisStore, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    for sid in all_sids() {
        out.push(format!("{sid}: {:?}", st.get(&sid, now).await.unwrap()));
    }
    for u in all_users() {
        out.push(format!("{u}: {:?}", ids(&st.list_user(&u, now).await.unwrap())));
    }
    out
}

#[test]
fn every_operation_agrees_with_the_embedded_store() {
    let server = RedisServer::start();
    let rt = rt();
    let mut runner = TestRunner::new(ProptestConfig { cases: 48, ..ProptestConfig::default() });
    runner
        .run(&proptest::collection::vec(op(), 1..70), |ops| {
            let dir = tempfile::tempdir().unwrap();
            let mut now = base_now();
            let mut core = embedded(dir.path(), now);
            let st = store_with_ttl(&server, MODEL_MAX_TTL);
            for op in &ops {
                let sid = |id: &u8| format!("s{id}");
                let uid = |u: &u8| format!("u{u}");
                match op {
                    Op::Create { id, user, ttl } => {
                        let n = new_session(&sid(id), &uid(user), now + ttl);
                        let (want, d) = core.create(n.clone(), now);
                        rt.block_on(d.wait()).unwrap();
                        let got = rt.block_on(st.create(&n, now)).unwrap();
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Get { id } => {
                        let got = rt.block_on(st.get(&sid(id), now)).unwrap();
                        prop_assert_eq!(got, core.get(&sid(id), now), "{:?}", op);
                    }
                    Op::Refresh { id, ttl } => {
                        let (want, d) = core.refresh(&sid(id), *ttl, now);
                        rt.block_on(d.wait()).unwrap();
                        let got = rt.block_on(st.refresh(&sid(id), *ttl, now)).unwrap();
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Revoke { id } => {
                        let (want, d) = core.revoke(&sid(id), now);
                        rt.block_on(d.wait()).unwrap();
                        let got = rt.block_on(st.revoke(&sid(id), now)).unwrap();
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::ListUser { user } => {
                        let got = rt.block_on(st.list_user(&uid(user), now)).unwrap();
                        prop_assert_eq!(got, core.list_user(&uid(user), now), "{:?}", op);
                    }
                    Op::RevokeUser { user } => {
                        let (want, d) = core.revoke_user(&uid(user), now);
                        rt.block_on(d.wait()).unwrap();
                        let got = rt.block_on(st.revoke_user(&uid(user), now)).unwrap();
                        prop_assert_eq!(got, want, "{:?}", op);
                    }
                    Op::Advance { secs } => now += secs,
                }
            }
            prop_assert_eq!(rt.block_on(redis_view(&st, now)), embedded_view(&core, now));
            Ok(())
        })
        .unwrap();
}

#[test]
fn replaying_the_embedded_journal_reproduces_the_embedded_state() {
    let server = RedisServer::start();
    let rt = rt();
    let mut runner = TestRunner::new(ProptestConfig { cases: 48, ..ProptestConfig::default() });
    runner
        .run(&(proptest::collection::vec(op(), 1..70), 0usize..100), |(ops, cut)| {
            let dir = tempfile::tempdir().unwrap();
            let mut now = base_now();
            let mut core = embedded(dir.path(), now);
            // Writes taken while degraded, journaled as the FallbackStore takes them.
            for op in &ops {
                let sid = |id: &u8| format!("s{id}");
                let uid = |u: &u8| format!("u{u}");
                let d = match op {
                    Op::Create { id, user, ttl } => {
                        core.create_journaled(new_session(&sid(id), &uid(user), now + ttl), now).1
                    }
                    Op::Refresh { id, ttl } => core.refresh_journaled(&sid(id), *ttl, now).1,
                    Op::Revoke { id } => core.revoke_journaled(&sid(id), now).1,
                    Op::RevokeUser { user } => core.revoke_user_journaled(&uid(user), now).1,
                    Op::Get { .. } | Op::ListUser { .. } => continue,
                    Op::Advance { secs } => {
                        now += secs;
                        continue;
                    }
                };
                rt.block_on(d.wait()).unwrap();
            }
            let journal = core.pending_journal(usize::MAX);
            let want = embedded_view(&core, now);
            // Into an empty Redis, once.
            let st = store_with_ttl(&server, MODEL_MAX_TTL);
            rt.block_on(st.replay(&journal, now)).unwrap();
            prop_assert_eq!(rt.block_on(redis_view(&st, now)), want.clone());
            // Again: nothing changes.
            rt.block_on(st.replay(&journal, now)).unwrap();
            prop_assert_eq!(rt.block_on(redis_view(&st, now)), want.clone());
            // Interrupted after a prefix, then replayed whole.
            let st = store_with_ttl(&server, MODEL_MAX_TTL);
            let cut = cut.min(journal.len());
            rt.block_on(st.replay(&journal[..cut], now)).unwrap();
            rt.block_on(st.replay(&journal, now)).unwrap();
            prop_assert_eq!(rt.block_on(redis_view(&st, now)), want);
            Ok(())
        })
        .unwrap();
}

/// A measurement, not a check: `cargo test --release -p sessiond-actors measure_get --
/// --ignored --nocapture`. A pooled call costs two round trips: deadpool-redis sends
/// `UNWATCH` + `PING` whenever it hands out an idle connection.
#[tokio::test]
#[ignore]
async fn measure_get_latency() {
    let server = RedisServer::start();
    let st = store_on(&server);
    let now = base_now();
    st.create(&new_session("s1", "u1", now + 1000), now).await.unwrap();
    for _ in 0..100 {
        st.get("s1", now).await.unwrap();
    }
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        st.get("s1", now).await.unwrap();
    }
    println!("sequential get: {:?}/op", t.elapsed() / n);
    let mut c = raw(&server).await;
    let t = Instant::now();
    for _ in 0..n {
        let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    }
    println!("raw PING: {:?}/op", t.elapsed() / n);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let st = st.clone();
        set.spawn(async move {
            for _ in 0..1000 {
                st.get("s1", now).await.unwrap();
            }
        });
    }
    set.join_all().await;
    println!("64 concurrent: {:.0} get/s", 64_000.0 / t.elapsed().as_secs_f64());
}
