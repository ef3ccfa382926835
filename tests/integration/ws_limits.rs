//! Contract section 5, limits and lifecycle: garbage messages get `bad_request` and the tenth
//! closes with 1008; a message over `ws.max_message_bytes` closes with 1008; a client that
//! stops reading while events are pushed is closed with 1013 once its `ws.outbound_queue`
//! overflows, without the daemon's memory growing; the server pings every
//! `ws.heartbeat_interval_seconds` and drops a client silent for `ws.client_timeout_seconds`;
//! SIGTERM closes every socket with 1001.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Config, Daemon, send_signal};
use crate::ws_client::*;

/// The most events pushed at a client that stopped reading before the test reads again.
const SLOW_EVENTS: usize = 10_000;

/// A connection of this token that has read its welcome.
#[track_caller]
fn open(d: &Daemon, token: &str) -> Ws {
    let mut ws = WsRequest::new(d).bearer(token).connect();
    ws.expect_welcome();
    ws
}

/// The next message must be the `bad_request` error frame.
#[track_caller]
fn expect_bad_request(ws: &mut Ws, what: &str) {
    let v = ws.expect_msg(what);
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["code", "message", "type"]), "{what}: error frame {v}");
    assert_eq!(v["type"], json!("error"), "{what}: {v}");
    assert_eq!(v["code"], json!("bad_request"), "{what}: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
}

/// The connection ends with this close code; only `error` frames may come before it.
#[track_caller]
fn expect_closed_with(ws: &mut Ws, code: u16, what: &str) {
    let (messages, end) = ws.until_close(FRAME_TIMEOUT);
    assert!(
        matches!(end, Incoming::Close(Some(c), _) if c == code),
        "{what}: expected close {code}, got {end:?} after {messages:?}"
    );
    assert!(messages.iter().all(|v| v["type"] == "error"), "{what}: {messages:?}");
}

#[test]
fn ws_garbage_gets_bad_request_and_the_tenth_closes_1008() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "lg-1");
    let mut ws = open(&d, &token);
    let garbage = [
        "not json",
        "{",
        "[]",
        "{}",
        "null",
        "\"ping\"",
        r#"{"type":"nope"}"#,
        r#"{"type":42}"#,
        r#"{"type":"PING"}"#,
    ];
    for (i, g) in garbage.iter().enumerate() {
        ws.send_text(g);
        expect_bad_request(&mut ws, &format!("garbage #{} {g:?}", i + 1));
    }
    // Nine so far: still open, and a good message does not reset the count.
    ws.send_text(r#"{"type":"ping"}"#);
    assert_eq!(ws.expect_msg("pong after nine garbage messages"), json!({"type": "pong"}));
    ws.send_text("tenth");
    expect_closed_with(&mut ws, 1008, "the tenth garbage message");

    // Another connection has its own count.
    let mut fresh = open(&d, &token);
    fresh.send_text("garbage");
    expect_bad_request(&mut fresh, "a new connection's first garbage");
}

#[test]
fn ws_garbage_in_the_other_encoding_is_bad_request_too() {
    let d = Daemon::start(Config::default());
    let token = session_token(&d, "u-1", "lo-1");

    // A binary frame that is neither JSON nor MessagePack on a JSON connection.
    let mut js = open(&d, &token);
    js.send_binary(vec![0xc1, 0xff, 0x00]);
    expect_bad_request(&mut js, "binary garbage on a JSON connection");
    assert_eq!(js.ping_barrier("JSON connection"), Vec::<Value>::new());

    // Invalid MessagePack, and valid MessagePack of no known type.
    let mut mp = WsRequest::new(&d).bearer_protocol(&token, V1_MSGPACK).connect();
    mp.expect_welcome();
    mp.send_binary(vec![0xc1]);
    expect_bad_request(&mut mp, "the never-used MessagePack byte 0xc1");
    mp.send_binary(msgpack::encode(&json!({"type": "nope"})));
    expect_bad_request(&mut mp, "MessagePack {type: nope}");
    mp.send_binary(msgpack::encode(&json!([1, 2])));
    expect_bad_request(&mut mp, "MessagePack [1, 2]");
    // A text frame that is neither MessagePack nor JSON on a MessagePack connection.
    mp.send_text("garbage");
    expect_bad_request(&mut mp, "text garbage on a MessagePack connection");
    assert_eq!(mp.ping_barrier("MessagePack connection"), Vec::<Value>::new());
}

#[test]
fn ws_message_over_max_message_bytes_closes_1008() {
    let d = Daemon::start(Config::default().set("ws.max_message_bytes", "1024"));
    let token = session_token(&d, "u-1", "lm-1");
    let ping = r#"{"type":"ping"}"#;
    let padded = |len: usize| format!("{ping}{}", " ".repeat(len - ping.len()));

    // Exactly the limit: a valid ping (JSON allows trailing whitespace).
    let mut ws = open(&d, &token);
    ws.send_text(&padded(1024));
    assert_eq!(ws.expect_msg("a 1024-byte ping"), json!({"type": "pong"}));
    // One byte over.
    ws.send_text(&padded(1025));
    expect_closed_with(&mut ws, 1008, "a 1025-byte message");

    // Over the limit in fragments none of which is over it.
    let mut ws = open(&d, &token);
    let part = " ".repeat(600);
    ws.send_fragmented_text(&[ping, &part, &part]);
    expect_closed_with(&mut ws, 1008, "a fragmented 1215-byte message");

    // Far over it, binary.
    let mut ws = open(&d, &token);
    ws.send_binary(vec![0x20; 64 * 1024]);
    expect_closed_with(&mut ws, 1008, "a 64 KiB binary message");
}

#[test]
fn ws_slow_reader_is_closed_1013_and_the_daemon_memory_stays_bounded() {
    let d = Daemon::start(
        Config::default()
            .set("ws.outbound_queue", "4")
            // Only the queue may end this connection, not the idle timeout.
            .set("ws.heartbeat_interval_seconds", "60")
            .set("ws.client_timeout_seconds", "600"),
    );
    let token = session_token(&d, "u-slow", "ls-1");
    let mut slow = WsRequest::new(&d).bearer(&token).recv_buffer(4096).connect();
    slow.expect_welcome();

    // The client reads nothing from here on; events are pushed at it from 4 threads.
    let pid = d.pid();
    let rss_start = rss_kib(pid);
    let mut rss_max = rss_start;
    let client = d.client();
    let start = Instant::now();
    let mut produced = 0usize;
    let gone = loop {
        std::thread::scope(|s| {
            for _ in 0..4 {
                let c = client.clone();
                s.spawn(move || {
                    for _ in 0..100 {
                        c.req("POST", "/api/v1/sessions/ls-1/refresh")
                            .key()
                            .json(&json!({}))
                            .send()
                            .expect_status(200);
                    }
                });
            }
        });
        produced += 400;
        rss_max = rss_max.max(rss_kib(pid));
        // The gauge (when there is one) says when the connection is gone; else a bound far
        // beyond what the socket buffers of a 4 KiB receive window and a queue of 4 can hold.
        if ws_connections(&d) == Some(0.0) {
            break true;
        }
        if produced >= SLOW_EVENTS || start.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    eprintln!(
        "slow reader: {produced} events in {:?}, connection gone from the gauge: {gone}, \
         RSS {rss_start} KiB -> max {rss_max} KiB",
        start.elapsed()
    );

    // Now read what is there: some of the events, then the close.
    let (messages, end) = slow.until_close(Duration::from_secs(20));
    if end == Incoming::Timeout {
        // Diagnose: is the connection still served (events lost before its queue, or the close
        // abandoned) or stuck?
        slow.send(&json!({"type": "ping"}));
        let (after, then) = slow.until_close(Duration::from_secs(5));
        panic!(
            "a client that stopped reading through {produced} events ({:?}) was not closed: \
             {} messages, then nothing for 20 s; a ping message then got {after:?} and {then:?}",
            start.elapsed(),
            messages.len()
        );
    }
    assert!(
        matches!(end, Incoming::Close(Some(1013), _)),
        "a client that stopped reading through {produced} events must be closed with 1013; got \
         {end:?} after {} messages (gauge said gone: {gone})",
        messages.len()
    );
    eprintln!("slow reader: {} events read before the close", messages.len());
    assert!(messages.len() < produced, "{} of {produced} events were delivered", messages.len());
    let mut ids = BTreeSet::new();
    for v in &messages {
        assert_eq!(v["event"], json!("session.refreshed"), "{v}");
        assert!(ids.insert(v["id"].as_str().unwrap_or_default().to_string()), "duplicate {v}");
    }
    let growth = rss_max.saturating_sub(rss_start);
    assert!(
        growth < 32 * 1024,
        "the daemon's RSS grew by {growth} KiB ({rss_start} -> {rss_max}) for one slow client"
    );

    if ws_connections(&d).is_some() {
        wait_ws_connections(&d, 0.0, Duration::from_secs(5));
    }

    // The daemon serves a new connection, which gets the next event.
    let mut fresh = open(&d, &token);
    d.refresh("ls-1", json!({})).expect_status(200);
    fresh.expect_event("session.refreshed");
}

#[test]
fn ws_server_pings_and_drops_a_silent_client() {
    let d = Daemon::start(
        Config::default()
            .set("ws.heartbeat_interval_seconds", "1")
            .set("ws.client_timeout_seconds", "2"),
    );
    let token = session_token(&d, "u-1", "lh-1");
    let mut live = WsRequest::new(&d).bearer(&token).connect();
    assert_eq!(live.expect_welcome()["heartbeat_interval_ms"], json!(1000));
    let mut silent = WsRequest::new(&d).bearer(&token).connect();
    silent.expect_welcome();
    // From here the silent client neither reads through tungstenite nor writes: raw reads
    // never answer a ping.
    let mut tcp = silent.into_tcp();
    let silent_since = Instant::now();
    let watcher = std::thread::spawn(move || {
        let end = raw_wait_end(&mut tcp, Duration::from_secs(15));
        (end, silent_since.elapsed())
    });

    // The live client only answers pings (tungstenite does, on read) for 4.5 s: twice the
    // client timeout without a message of its own.
    let heard = live.quiet_for(Duration::from_millis(4500), "a client that answers pings");
    assert_eq!(heard, Vec::<Value>::new());
    assert!(live.pings >= 3, "{} pings in 4.5 s at a 1 s heartbeat", live.pings);

    let (end, after) = watcher.join().unwrap();
    let code = end.unwrap_or_else(|e| panic!("the silent client was not dropped: {e}"));
    eprintln!("silent client dropped after {after:?} (close code {code:?})");
    assert!(after >= Duration::from_millis(1500), "dropped after {after:?}, before the timeout");
    assert!(after <= Duration::from_secs(6), "dropped only after {after:?}");
    assert_eq!(live.ping_barrier("the live client"), Vec::<Value>::new());
}

#[test]
fn ws_sigterm_closes_every_socket_with_1001() {
    let mut d = Daemon::start(Config::default());
    let t1 = session_token(&d, "u-1", "lt-1");
    let t2 = session_token(&d, "u-2", "lt-2");
    let mut a = open(&d, &t1);
    let mut b = WsRequest::new(&d).bearer_protocol(&t2, V1_MSGPACK).connect();
    b.expect_welcome();

    send_signal(d.pid(), libc::SIGTERM);
    for (what, ws) in [("json", &mut a), ("msgpack", &mut b)] {
        let (messages, end) = ws.until_close(FRAME_TIMEOUT);
        assert!(
            matches!(end, Incoming::Close(Some(1001), _)),
            "{what}: expected close 1001 on SIGTERM, got {end:?} after {messages:?}"
        );
    }
    let status = d.wait_exit();
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[test]
fn ws_connections_gauge_follows_open_sockets() {
    let d = Daemon::start(Config::default());
    let t1 = session_token(&d, "u-1", "lc-1");
    let t2 = session_token(&d, "u-2", "lc-2");
    let limit = Duration::from_secs(5);
    wait_ws_connections(&d, 0.0, limit);
    let mut a = open(&d, &t1);
    let mut b = open(&d, &t2);
    wait_ws_connections(&d, 2.0, limit);
    d.revoke("lc-1").expect_status(200);
    a.expect_event("session.revoked");
    assert_eq!(a.expect_close("revoked"), Some(4001));
    wait_ws_connections(&d, 1.0, limit);
    b.close();
    wait_ws_connections(&d, 0.0, limit);
}

#[test]
fn ws_admission_limits_come_from_the_configuration() {
    let d = Daemon::start(
        Config::default().set("ws.max_connections", "3").set("ws.max_connections_per_user", "2"),
    );
    let a1 = session_token(&d, "u-1", "al-1");
    let a2 = session_token(&d, "u-1", "al-2");
    let a3 = session_token(&d, "u-1", "al-3");
    let b1 = session_token(&d, "u-2", "al-4");
    let c1 = session_token(&d, "u-3", "al-5");
    let _one = open(&d, &a1);
    let _two = open(&d, &a2);
    // A third socket of u-1: over the per-user limit.
    WsRequest::new(&d).bearer(&a3).expect_refused(429, "too_many_connections");
    let _three = open(&d, &b1);
    // A fourth socket in all: over the instance's limit.
    WsRequest::new(&d).bearer(&c1).expect_refused(503, "too_many_connections");
    let health = d.get("/api/integration-health/websocket-auth-gateway").send().json();
    assert_eq!(health["details"]["max_connections"], json!(3), "{health}");
    assert_eq!(health["details"]["max_connections_per_user"], json!(2), "{health}");
    assert_eq!(health["status"], json!("degraded"), "3 of 3 is past 90 %: {health}");
}
