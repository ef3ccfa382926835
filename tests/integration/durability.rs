//! Contract section 6, durability: with `fallback.fsync = "always"` no acknowledged write is
//! lost by `kill -9`; a torn or garbage log tail is cut off on load, never a reason to refuse
//! start; a clean SIGTERM flushes whatever the fsync mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{API_KEY, Client, Config, Daemon, poll_until};
use crate::tokens::*;

fn always() -> Config {
    Config::default().set_str("fallback.fsync", "always")
}

fn token(user: &str, sid: &str) -> String {
    hs256(&enhanced(user, &format!("{user}@example.com"), "user", sid))
}

/// Every regular file under the data dir except the `serve --dev` key files, with its size.
fn store_files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && !entry.file_name().to_string_lossy().starts_with("dev-") {
                out.insert(path, meta.len());
            }
        }
    }
    out
}

/// The files that grew (or appeared) between two listings: where the last write went.
fn grown(
    before: &BTreeMap<PathBuf, u64>,
    after: &BTreeMap<PathBuf, u64>,
) -> Vec<(PathBuf, u64, u64)> {
    after
        .iter()
        .filter_map(|(p, &len)| {
            let old = before.get(p).copied().unwrap_or(0);
            (len > old).then(|| (p.clone(), old, len))
        })
        .collect()
}

/// What the load generator saw acknowledged.
#[derive(Default)]
struct Acked {
    /// session id → user id, for every create answered 201/200.
    created: BTreeMap<String, String>,
    /// session ids for which a revoke was sent (answered or not).
    revoke_sent: BTreeSet<String>,
    /// session ids whose revoke was answered 200.
    revoked: BTreeSet<String>,
}

fn load_worker(
    client: Client,
    thread: usize,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    tick: mpsc::Sender<()>,
) {
    let user = format!("user-{}", thread % 4);
    let mut mine: Vec<String> = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let sid = format!("t{thread}-{i}");
        let body = json!({"token": token(&user, &sid), "ttl_seconds": 3600, "attributes": {"n": i.to_string()}});
        let Ok(r) = client
            .req("POST", "/api/v1/sessions")
            .header("X-Api-Key", API_KEY)
            .json(&body)
            .try_send()
        else {
            return;
        };
        assert!(r.status == 201, "create under load: {} {}", r.status, r.body);
        acked.lock().unwrap().created.insert(sid.clone(), user.clone());
        mine.push(sid);
        let _ = tick.send(());
        if i % 3 == 2 {
            // Revoke an earlier acknowledged one of ours.
            let victim = mine[mine.len() - 2].clone();
            acked.lock().unwrap().revoke_sent.insert(victim.clone());
            let Ok(r) = client
                .req("DELETE", &format!("/api/v1/sessions/{victim}"))
                .header("X-Api-Key", API_KEY)
                .try_send()
            else {
                return;
            };
            assert!(r.status == 200, "revoke under load: {} {}", r.status, r.body);
            acked.lock().unwrap().revoked.insert(victim);
            let _ = tick.send(());
        }
    }
}

#[test]
fn kill_9_under_concurrent_load_loses_no_acknowledged_write() {
    const THREADS: usize = 8;
    const WRITES_BEFORE_KILL: usize = 600;
    let mut d = Daemon::start(always());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (client, acked, stop, tx) =
                (d.client(), Arc::clone(&acked), Arc::clone(&stop), tx.clone());
            std::thread::spawn(move || load_worker(client, t, acked, stop, tx))
        })
        .collect();
    drop(tx);
    // Wait for enough acknowledged writes (bounded), then kill while the clients are mid-flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut count = 0;
    while count < WRITES_BEFORE_KILL && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(()) => count += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    d.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        if let Err(panic) = w.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.created.len() >= 100,
        "only {} creates acknowledged before the kill",
        acked.created.len()
    );
    assert!(!acked.revoked.is_empty(), "no revoke acknowledged before the kill");

    eprintln!(
        "acknowledged before kill -9: {} creates, {} revokes ({} revokes sent)",
        acked.created.len(),
        acked.revoked.len(),
        acked.revoke_sent.len()
    );
    d.restart();
    let mut failures = Vec::new();
    let mut live_by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (sid, user) in &acked.created {
        if acked.revoke_sent.contains(sid) {
            continue;
        }
        let r = d.get_session(sid);
        if r.status != 200 {
            failures.push(format!("acknowledged create {sid}: GET {} {}", r.status, r.body));
        } else if r.json()["session"]["user_id"] != json!(user) {
            failures.push(format!("acknowledged create {sid}: wrong session {}", r.body));
        }
        live_by_user.entry(user.clone()).or_default().insert(sid.clone());
    }
    for sid in &acked.revoked {
        let user = &acked.created[sid];
        if let Err(e) = d.get_session(sid).check_error(404, "session_not_found") {
            failures.push(format!("acknowledged revoke {sid}: {e}"));
        }
        if let Err(e) = d.create(&token(user, sid)).check_error(409, "session_revoked") {
            failures.push(format!("acknowledged revoke {sid}, create again: {e}"));
        }
    }
    for (user, sids) in &live_by_user {
        let listed: BTreeSet<String> = d.list(user).expect_status(200).json()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<_> = sids.difference(&listed).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "list of {user} lacks {} acknowledged sessions: {missing:?}",
                missing.len()
            ));
        }
        let resurrected: Vec<_> = listed.intersection(&acked.revoked).collect();
        if !resurrected.is_empty() {
            failures.push(format!("list of {user} shows revoked sessions: {resurrected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} acknowledged creates and {} acknowledged revokes lost:\n{}",
        failures.len(),
        acked.created.len(),
        acked.revoked.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    // And it keeps working on the recovered store.
    d.create_ok(&token("user-new", "after-restart"));
}

#[test]
fn sigterm_flushes_even_with_a_long_fsync_interval() {
    let mut d = Daemon::start(
        Config::default()
            .set_str("fallback.fsync", "interval")
            .set("fallback.fsync_interval_ms", "600000"),
    );
    for i in 0..40 {
        d.create_with(json!({"token": token("u-flush", &format!("f-{i}")), "attributes": {"i": i.to_string()}}))
            .expect_status(201);
    }
    for i in 0..10 {
        d.revoke(&format!("f-{i}")).expect_status(200);
    }
    d.revoke("f-never-created").expect_status(200);
    assert_eq!(d.terminate().code(), Some(0));
    d.restart();
    for i in 0..10 {
        d.get_session(&format!("f-{i}")).expect_error(404, "session_not_found");
        d.create(&token("u-flush", &format!("f-{i}"))).expect_error(409, "session_revoked");
    }
    for i in 10..40 {
        let s = d.get_session(&format!("f-{i}")).expect_status(200).json()["session"].clone();
        assert_eq!(s["attributes"], json!({"i": i.to_string()}));
    }
    d.create(&token("u-flush", "f-never-created")).expect_error(409, "session_revoked");
    assert_eq!(
        d.list("u-flush").expect_status(200).json()["sessions"].as_array().unwrap().len(),
        30
    );
}

#[test]
fn interval_mode_loses_at_most_the_interval() {
    const INTERVAL_MS: u64 = 100;
    let mut d = Daemon::start(
        Config::default()
            .set_str("fallback.fsync", "interval")
            .set("fallback.fsync_interval_ms", &INTERVAL_MS.to_string()),
    );
    for i in 0..20 {
        d.create_ok(&token("u-int", &format!("i-{i}")));
    }
    d.revoke("i-0").expect_status(200);
    // What this test is about is time passing: wait five intervals after the last write.
    let last_write = Instant::now();
    poll_until(Duration::from_secs(5), || {
        (last_write.elapsed() >= Duration::from_millis(5 * INTERVAL_MS)).then_some(())
    });
    d.kill9();
    d.restart();
    d.get_session("i-0").expect_error(404, "session_not_found");
    for i in 1..20 {
        d.get_session(&format!("i-{i}")).expect_status(200);
    }
}

#[test]
fn refresh_survives_kill_9() {
    let mut d = Daemon::start(always());
    d.create_with(json!({"token": token("u-r", "r-1"), "ttl_seconds": 100})).expect_status(201);
    let refreshed =
        d.refresh("r-1", json!({"ttl_seconds": 5000})).expect_status(200).json()["session"].clone();
    d.kill9();
    d.restart();
    assert_eq!(d.get_session("r-1").expect_status(200).json()["session"], refreshed);
}

/// Writes `keep-1`, `keep-2` and a revoked `gone-1`, kills the daemon, lets `damage` do its
/// worst to the log (given the file the last write grew and its size before that write), and
/// checks the daemon starts with that data intact and keeps new writes across another crash.
fn survive_damage(damage: impl FnOnce(&Path, u64, u64)) {
    let mut d = Daemon::start(always());
    let keep1 = token("u-d", "keep-1");
    let keep2 = token("u-d", "keep-2");
    let gone = token("u-d", "gone-1");
    d.create_ok(&keep1);
    d.create_ok(&gone);
    d.revoke("gone-1").expect_status(200);
    let before = store_files(&d.data_dir());
    d.create_with(json!({"token": keep2, "attributes": {"a": "b"}})).expect_status(201);
    let after = store_files(&d.data_dir());
    let grew = grown(&before, &after);
    assert!(
        !grew.is_empty(),
        "no file in the data dir grew after an acknowledged write with fsync=always: {after:?}"
    );
    d.kill9();
    let (log, old_len, new_len) = grew.last().unwrap().clone();
    damage(&log, old_len, new_len);

    d.restart();
    d.get_session("keep-1").expect_status(200);
    d.get_session("gone-1").expect_error(404, "session_not_found");
    d.create(&gone).expect_error(409, "session_revoked");
    d.validate(&keep1).expect_status(200);
    d.validate(&gone).expect_error(401, "session_revoked");

    // New writes after the damaged tail survive the next crash.
    d.create_ok(&token("u-d", "new-1"));
    d.revoke("keep-1").expect_status(200);
    d.kill9();
    d.restart();
    d.get_session("new-1").expect_status(200);
    d.get_session("keep-1").expect_error(404, "session_not_found");
    d.create(&keep1).expect_error(409, "session_revoked");
    d.get_session("gone-1").expect_error(404, "session_not_found");
    assert_eq!(d.terminate().code(), Some(0));
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn garbage_appended_to_the_log_is_cut_off() {
    survive_damage(|log, _, _| {
        let junk: Vec<u8> =
            (0u32..97).map(|i| (i.wrapping_mul(151).wrapping_add(7) % 251) as u8).collect();
        append(log, &junk);
    });
}

#[test]
fn a_huge_length_prefix_at_the_tail_is_cut_off() {
    survive_damage(|log, _, _| {
        let mut junk = vec![0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f];
        junk.extend_from_slice(b"\x93\xa4junk\x01\x02");
        append(log, &junk);
    });
}

#[test]
fn zeroes_appended_to_the_log_are_cut_off() {
    survive_damage(|log, _, _| append(log, &[0u8; 4096]));
}

#[test]
fn a_record_torn_in_the_middle_is_cut_off() {
    survive_damage(|log, old_len, new_len| {
        // Cut the last record (keep-2) in half: keep-2 may be lost, nothing before it.
        let f = OpenOptions::new().write(true).open(log).unwrap();
        f.set_len(old_len + (new_len - old_len) / 2).unwrap();
        f.sync_all().unwrap();
    });
}

#[test]
fn a_record_torn_after_its_first_byte_is_cut_off() {
    survive_damage(|log, old_len, _| {
        let f = OpenOptions::new().write(true).open(log).unwrap();
        f.set_len(old_len + 1).unwrap();
        f.sync_all().unwrap();
    });
}
