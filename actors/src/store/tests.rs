//! Tests of the store against real files in temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::domain::{Identity, JournalEntry, JournalOp, TokenFormat};

const NOW: UnixSeconds = 1_000_000;
const MAX_TTL: i64 = 3600;

fn opts(dir: &Path, fsync: FsyncMode, max_entries: usize) -> StoreOptions {
    StoreOptions { data_dir: dir.to_path_buf(), fsync, max_entries, max_ttl_seconds: MAX_TTL }
}

fn open_at(dir: &Path, now: UnixSeconds) -> (StoreCore, LoadReport) {
    StoreCore::open_with(opts(dir, FsyncMode::Never, 1000), StoreTuning::default(), now).unwrap()
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

fn wait(d: Durable) {
    rt().block_on(d.wait()).unwrap();
}

fn create(
    s: &mut StoreCore,
    id: &str,
    user: &str,
    exp: UnixSeconds,
    now: UnixSeconds,
) -> CreateOutcome {
    let (o, d) = s.create(new_session(id, user, exp), now);
    wait(d);
    o
}

fn revoke(s: &mut StoreCore, id: &str, now: UnixSeconds) -> RevokeOutcome {
    let (o, d) = s.revoke(id, now);
    wait(d);
    o
}

fn refresh(s: &mut StoreCore, id: &str, ttl: Option<i64>, now: UnixSeconds) -> RefreshOutcome {
    let (o, d) = s.refresh(id, ttl, now);
    wait(d);
    o
}

fn live(s: &StoreCore, id: &str, now: UnixSeconds) -> Session {
    match s.get(id, now) {
        Lookup::Live(s) => s,
        other => panic!("{id} is not live: {other:?}"),
    }
}

fn log_path(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs.pop().unwrap()
}

// ---- create ---------------------------------------------------------------------------------

#[test]
fn create_stores_with_created_at_now() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    let o = create(&mut s, "s1", "u1", NOW + 100, NOW);
    let CreateOutcome::Created(sess) = o else { panic!("{o:?}") };
    assert_eq!(sess.session_id, "s1");
    assert_eq!(sess.user_id, "u1");
    assert_eq!(sess.email, "u1@example.com");
    assert_eq!(sess.role, "user");
    assert_eq!(sess.format, TokenFormat::Enhanced);
    assert_eq!(sess.created_at, NOW);
    assert_eq!(sess.expires_at, NOW + 100);
    assert_eq!(sess.attributes.get("ip").map(String::as_str), Some("203.0.113.7"));
    assert_eq!(live(&s, "s1", NOW + 1), sess);
}

#[test]
fn create_again_answers_existing_or_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    let CreateOutcome::Created(first) = create(&mut s, "s1", "u1", NOW + 100, NOW) else {
        panic!()
    };
    // Same user: the stored one, unchanged (not the new expiry, not the new created_at).
    assert_eq!(create(&mut s, "s1", "u1", NOW + 500, NOW + 5), CreateOutcome::Existing(first));
    assert_eq!(create(&mut s, "s1", "u2", NOW + 500, NOW + 5), CreateOutcome::Conflict);
    assert_eq!(live(&s, "s1", NOW + 5).user_id, "u1");
}

#[test]
fn create_of_a_revoked_id_is_refused_until_the_tombstone_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    revoke(&mut s, "s1", NOW + 1);
    assert_eq!(create(&mut s, "s1", "u1", NOW + 200, NOW + 2), CreateOutcome::Revoked);
    assert_eq!(create(&mut s, "s1", "u1", NOW + 200, NOW + 99), CreateOutcome::Revoked);
    assert!(matches!(create(&mut s, "s1", "u1", NOW + 200, NOW + 100), CreateOutcome::Created(_)));
    assert_eq!(s.stats().tombstones, 0);
}

#[test]
fn create_replaces_an_expired_session_not_yet_swept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 10, NOW);
    assert!(matches!(create(&mut s, "s1", "u2", NOW + 100, NOW + 10), CreateOutcome::Created(_)));
    assert!(s.list_user("u1", NOW + 10).is_empty());
    assert_eq!(s.list_user("u2", NOW + 10).len(), 1);
    assert_eq!(s.stats().users, 1);
}

#[test]
fn full_refuses_creates_but_never_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) =
        StoreCore::open_with(opts(dir.path(), FsyncMode::Never, 3), StoreTuning::default(), NOW)
            .unwrap();
    for i in 0..3 {
        assert!(matches!(
            create(&mut s, &format!("s{i}"), "u", NOW + 100, NOW),
            CreateOutcome::Created(_)
        ));
    }
    assert_eq!(create(&mut s, "s3", "u", NOW + 100, NOW), CreateOutcome::Full);
    // Existing answers still work when full.
    assert!(matches!(create(&mut s, "s0", "u", NOW + 100, NOW), CreateOutcome::Existing(_)));
    // Revocations go over the limit.
    assert!(revoke(&mut s, "unknown-1", NOW).newly_revoked);
    assert!(revoke(&mut s, "unknown-2", NOW).newly_revoked);
    assert!(revoke(&mut s, "s0", NOW).newly_revoked);
    let st = s.stats();
    assert_eq!(st.live_sessions + st.tombstones, 5);
    assert_eq!(s.get("unknown-2", NOW), Lookup::Revoked);
    assert_eq!(create(&mut s, "s4", "u", NOW + 100, NOW), CreateOutcome::Full);
}

#[test]
fn full_drops_expired_entries_before_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) =
        StoreCore::open_with(opts(dir.path(), FsyncMode::Never, 2), StoreTuning::default(), NOW)
            .unwrap();
    create(&mut s, "a", "u", NOW + 10, NOW);
    create(&mut s, "b", "u", NOW + 100, NOW);
    assert_eq!(create(&mut s, "c", "u", NOW + 100, NOW + 5), CreateOutcome::Full);
    assert!(matches!(create(&mut s, "c", "u", NOW + 100, NOW + 10), CreateOutcome::Created(_)));
}

#[test]
fn an_oversized_create_fails_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    let mut n = new_session("big", "u", NOW + 100);
    n.attributes.insert("blob".into(), "x".repeat(MAX_PAYLOAD_BYTES));
    let (_, d) = s.create(n, NOW);
    assert!(rt().block_on(d.wait()).is_err());
    assert_eq!(s.get("big", NOW), Lookup::Missing);
    assert_eq!(s.stats().live_sessions, 0);
}

// ---- get ------------------------------------------------------------------------------------

#[test]
fn get_answers_live_revoked_or_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    create(&mut s, "s2", "u1", NOW + 100, NOW);
    revoke(&mut s, "s2", NOW);
    assert!(matches!(s.get("s1", NOW + 99), Lookup::Live(_)));
    // Expired: missing even before the sweep.
    assert_eq!(s.get("s1", NOW + 100), Lookup::Missing);
    assert_eq!(s.stats().live_sessions, 1);
    assert_eq!(s.get("s2", NOW + 99), Lookup::Revoked);
    assert_eq!(s.get("s2", NOW + 100), Lookup::Missing);
    assert_eq!(s.get("nope", NOW), Lookup::Missing);
}

// ---- refresh --------------------------------------------------------------------------------

#[test]
fn refresh_sets_expiry_from_ttl_or_created_length_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    let RefreshOutcome::Refreshed(r) = refresh(&mut s, "s1", Some(500), NOW + 50) else { panic!() };
    assert_eq!(r.expires_at, NOW + 550);
    assert_eq!(r.created_at, NOW);
    assert_eq!(live(&s, "s1", NOW + 50).expires_at, NOW + 550);
    // None: the created length (100), not the last ttl.
    let RefreshOutcome::Refreshed(r) = refresh(&mut s, "s1", None, NOW + 60) else { panic!() };
    assert_eq!(r.expires_at, NOW + 160);
    // Capped at now + max_ttl.
    let RefreshOutcome::Refreshed(r) = refresh(&mut s, "s1", Some(i64::MAX), NOW + 70) else {
        panic!()
    };
    assert_eq!(r.expires_at, NOW + 70 + MAX_TTL);
}

#[test]
fn refresh_with_a_created_length_over_max_ttl_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 10 * MAX_TTL, NOW);
    let RefreshOutcome::Refreshed(r) = refresh(&mut s, "s1", None, NOW + 1) else { panic!() };
    assert_eq!(r.expires_at, NOW + 1 + MAX_TTL);
}

#[test]
fn refresh_answers_revoked_or_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    create(&mut s, "s2", "u1", NOW + 100, NOW);
    revoke(&mut s, "s2", NOW);
    assert_eq!(refresh(&mut s, "s2", None, NOW), RefreshOutcome::Revoked);
    assert_eq!(refresh(&mut s, "nope", None, NOW), RefreshOutcome::Missing);
    assert_eq!(refresh(&mut s, "s1", Some(10), NOW + 100), RefreshOutcome::Missing);
}

// ---- revoke ---------------------------------------------------------------------------------

#[test]
fn revoke_of_a_live_session_keeps_it_revoked_until_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    assert_eq!(
        revoke(&mut s, "s1", NOW + 1),
        RevokeOutcome { newly_revoked: true, user_id: Some("u1".into()) }
    );
    assert_eq!(
        revoke(&mut s, "s1", NOW + 2),
        RevokeOutcome { newly_revoked: false, user_id: None }
    );
    assert_eq!(s.get("s1", NOW + 99), Lookup::Revoked);
    assert_eq!(s.get("s1", NOW + 100), Lookup::Missing);
    assert!(s.list_user("u1", NOW).is_empty());
    assert_eq!(s.stats().users, 0);
}

#[test]
fn revoke_of_an_unknown_id_refuses_it_for_max_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    assert_eq!(revoke(&mut s, "future", NOW), RevokeOutcome { newly_revoked: true, user_id: None });
    assert_eq!(create(&mut s, "future", "u", NOW + 50, NOW + 10), CreateOutcome::Revoked);
    assert_eq!(s.get("future", NOW + MAX_TTL - 1), Lookup::Revoked);
    assert_eq!(s.get("future", NOW + MAX_TTL), Lookup::Missing);
}

#[test]
fn revoke_of_an_expired_session_counts_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 10, NOW);
    assert_eq!(
        revoke(&mut s, "s1", NOW + 10),
        RevokeOutcome { newly_revoked: true, user_id: None }
    );
    assert_eq!(s.get("s1", NOW + 10 + MAX_TTL - 1), Lookup::Revoked);
    assert_eq!(s.stats().live_sessions, 0);
    assert_eq!(s.stats().users, 0);
}

// ---- users ----------------------------------------------------------------------------------

#[test]
fn list_user_is_live_sessions_by_created_at_then_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "b", "u1", NOW + 100, NOW);
    create(&mut s, "a", "u1", NOW + 100, NOW);
    create(&mut s, "0", "u1", NOW + 100, NOW + 1);
    create(&mut s, "short", "u1", NOW + 5, NOW);
    create(&mut s, "gone", "u1", NOW + 100, NOW);
    create(&mut s, "other", "u2", NOW + 100, NOW);
    revoke(&mut s, "gone", NOW);
    let ids: Vec<_> = s.list_user("u1", NOW + 5).into_iter().map(|s| s.session_id).collect();
    assert_eq!(ids, ["a", "b", "0"]);
    assert!(s.list_user("nobody", NOW).is_empty());
}

#[test]
fn revoke_user_revokes_every_live_session() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "b", "u1", NOW + 100, NOW);
    create(&mut s, "a", "u1", NOW + 200, NOW);
    create(&mut s, "old", "u1", NOW + 5, NOW);
    create(&mut s, "other", "u2", NOW + 100, NOW);
    let (ids, d) = s.revoke_user("u1", NOW + 5);
    wait(d);
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(s.get("a", NOW + 150), Lookup::Revoked);
    assert_eq!(s.get("b", NOW + 50), Lookup::Revoked);
    assert!(matches!(s.get("other", NOW + 50), Lookup::Live(_)));
    assert!(s.list_user("u1", NOW + 5).is_empty());
    let (ids, d) = s.revoke_user("u1", NOW + 5);
    wait(d);
    assert!(ids.is_empty());
    drop(s);
    let (s, _) = open_at(dir.path(), NOW + 6);
    assert_eq!(s.get("a", NOW + 150), Lookup::Revoked);
    assert_eq!(s.get("b", NOW + 50), Lookup::Revoked);
}

fn create_issued(
    s: &mut StoreCore,
    id: &str,
    user: &str,
    iat: Option<UnixSeconds>,
    now: UnixSeconds,
    journaled: bool,
) -> CreateOutcome {
    let mut n = new_session(id, user, now + 100);
    n.identity.issued_at = iat;
    let (o, d) = if journaled { s.create_journaled(n, now) } else { s.create(n, now) };
    wait(d);
    o
}

#[test]
fn a_revoke_all_refuses_tokens_of_the_user_issued_at_or_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    let (_, d) = s.revoke_user("u1", NOW);
    wait(d);
    for journaled in [false, true] {
        // Issued before, in the same second, or without `iat` (counts as issued now).
        for (id, iat) in [("old", Some(NOW - 30)), ("same", Some(NOW)), ("none", None)] {
            let id = format!("{id}{journaled}");
            let o = create_issued(&mut s, &id, "u1", iat, NOW, journaled);
            assert_eq!(o, CreateOutcome::Revoked, "{id}");
            // Tombstoned: it answers revoked.
            assert_eq!(s.get(&id, NOW), Lookup::Revoked, "{id}");
        }
        // A later token, or another user's, creates.
        let o = create_issued(
            &mut s,
            &format!("new{journaled}"),
            "u1",
            Some(NOW + 1),
            NOW + 1,
            journaled,
        );
        assert!(matches!(o, CreateOutcome::Created(_)), "{o:?}");
        let o = create_issued(
            &mut s,
            &format!("other{journaled}"),
            "u2",
            Some(NOW - 30),
            NOW,
            journaled,
        );
        assert!(matches!(o, CreateOutcome::Created(_)), "{o:?}");
    }
    // Refused while journaling, the revocation is journaled too (for Redis); the creates are not.
    let journaled: Vec<String> = s
        .pending_journal(10)
        .into_iter()
        .map(|e| match e.op {
            JournalOp::Put { session, .. } => format!("put {}", session.session_id),
            JournalOp::Tomb { session_id, .. } => format!("tomb {session_id}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        journaled,
        ["tomb oldtrue", "tomb sametrue", "tomb nonetrue", "put newtrue", "put othertrue"]
    );
    // The watermark survives a reopen and a compaction, and ends after max_ttl.
    s.compact(NOW + 1);
    s.flush().unwrap();
    drop(s);
    let (mut s, _) = open_at(dir.path(), NOW + 2);
    assert_eq!(
        create_issued(&mut s, "old2", "u1", Some(NOW - 1), NOW + 2, true),
        CreateOutcome::Revoked
    );
    let later = NOW + MAX_TTL;
    assert!(matches!(
        create_issued(&mut s, "old3", "u1", Some(NOW - 1), later, false),
        CreateOutcome::Created(_)
    ));
}

#[test]
fn a_mirrored_revoke_all_sets_the_watermark_at_its_own_time_and_only_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    wait(s.mirror_revoke_user("u1", NOW - 10, NOW));
    // An older mirrored revoke-all does not lower it.
    wait(s.mirror_revoke_user("u1", NOW - 50, NOW));
    assert_eq!(create_issued(&mut s, "a", "u1", Some(NOW - 10), NOW, true), CreateOutcome::Revoked);
    assert!(matches!(
        create_issued(&mut s, "b", "u1", Some(NOW - 9), NOW, true),
        CreateOutcome::Created(_)
    ));
    drop(s);
    let (mut s, _) = open_at(dir.path(), NOW);
    assert_eq!(
        create_issued(&mut s, "c", "u1", Some(NOW - 11), NOW, false),
        CreateOutcome::Revoked
    );
}

// ---- sweep ----------------------------------------------------------------------------------

#[test]
fn sweep_drops_expired_sessions_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "a", "u1", NOW + 10, NOW);
    create(&mut s, "b", "u1", NOW + 20, NOW);
    create(&mut s, "c", "u2", NOW + 30, NOW);
    revoke(&mut s, "c", NOW);
    assert_eq!(s.sweep(NOW + 9), 0);
    assert_eq!(s.sweep(NOW + 20), 2);
    let st = s.stats();
    assert_eq!((st.live_sessions, st.tombstones, st.users), (0, 1, 0));
    assert_eq!(s.sweep(NOW + 30), 1);
    assert_eq!(s.stats().tombstones, 0);
}

// ---- durability -----------------------------------------------------------------------------

#[test]
fn reopen_restores_sessions_tombstones_expiries_and_users() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    create(&mut s, "s2", "u1", NOW + 100, NOW);
    create(&mut s, "s3", "u2", NOW + 100, NOW);
    refresh(&mut s, "s1", Some(1000), NOW + 10);
    revoke(&mut s, "s3", NOW + 10);
    revoke(&mut s, "never-seen", NOW + 10);
    let before: Vec<_> = ["s1", "s2"].iter().map(|id| live(&s, id, NOW + 20)).collect();
    drop(s);
    let (s, report) = open_at(dir.path(), NOW + 20);
    assert_eq!(report.sessions, 2);
    assert_eq!(report.tombstones, 2);
    assert_eq!(report.records, 6);
    assert_eq!(report.truncated_bytes, 0);
    let after: Vec<_> = ["s1", "s2"].iter().map(|id| live(&s, id, NOW + 20)).collect();
    assert_eq!(before, after);
    assert_eq!(after[0].expires_at, NOW + 1010);
    assert_eq!(s.get("s3", NOW + 20), Lookup::Revoked);
    assert_eq!(s.get("never-seen", NOW + 20), Lookup::Revoked);
    assert_eq!(s.list_user("u1", NOW + 20), before);
    assert!(s.list_user("u2", NOW + 20).is_empty());
}

#[test]
fn reopen_drops_what_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "a", "u1", NOW + 10, NOW);
    create(&mut s, "b", "u1", NOW + 100, NOW);
    revoke(&mut s, "b", NOW);
    create(&mut s, "c", "u1", NOW + 10, NOW);
    refresh(&mut s, "c", Some(500), NOW + 5);
    drop(s);
    let (s, report) = open_at(dir.path(), NOW + 100);
    assert_eq!((report.sessions, report.tombstones), (1, 0));
    assert_eq!(report.expired_dropped, 2);
    assert_eq!(s.list_user("u1", NOW + 100).len(), 1);
    assert_eq!(s.get("c", NOW + 100).clone(), Lookup::Live(live(&s, "c", NOW + 100)));
}

/// Writes three sessions; answers the log path and the byte offset where the third starts.
fn three_sessions(dir: &Path) -> (std::path::PathBuf, u64) {
    let (mut s, _) = open_at(dir, NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    create(&mut s, "s2", "u1", NOW + 100, NOW);
    s.flush().unwrap();
    let before_third = s.stats().log_bytes;
    create(&mut s, "s3", "u1", NOW + 100, NOW);
    drop(s);
    (log_path(dir), before_third)
}

fn assert_first_two_only(dir: &Path, good_len: u64, cut: u64) {
    let (s, report) = open_at(dir, NOW + 1);
    assert_eq!(report.truncated_bytes, cut);
    assert_eq!(report.records, 2);
    assert!(matches!(s.get("s1", NOW + 1), Lookup::Live(_)));
    assert!(matches!(s.get("s2", NOW + 1), Lookup::Live(_)));
    assert_eq!(s.get("s3", NOW + 1), Lookup::Missing);
    assert_eq!(std::fs::metadata(log_path(dir)).unwrap().len(), good_len);
    drop(s);
    // Appending after the cut works and survives another reopen.
    let (mut s, report) = open_at(dir, NOW + 1);
    assert_eq!(report.truncated_bytes, 0);
    create(&mut s, "s4", "u1", NOW + 100, NOW + 1);
    drop(s);
    let (s, report) = open_at(dir, NOW + 1);
    assert_eq!((report.records, report.truncated_bytes), (3, 0));
    assert!(matches!(s.get("s4", NOW + 1), Lookup::Live(_)));
}

#[test]
fn a_torn_tail_is_cut_off() {
    for keep in [1u64, 4, 8, 9, 20] {
        let dir = tempfile::tempdir().unwrap();
        let (path, good) = three_sessions(dir.path());
        let full = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(good + keep).unwrap();
        assert!(good + keep < full);
        drop(f);
        assert_first_two_only(dir.path(), good, keep);
    }
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_sessions(dir.path());
    let good = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"\x13\x00\x00\x00garbage garbage garbage").unwrap();
    drop(f);
    let (s, report) = open_at(dir.path(), NOW + 1);
    assert_eq!(report.records, 3);
    assert_eq!(report.truncated_bytes, 27);
    assert!(matches!(s.get("s3", NOW + 1), Lookup::Live(_)));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
}

#[test]
fn a_flipped_byte_in_the_last_record_cuts_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let (path, good) = three_sessions(dir.path());
    let full = std::fs::metadata(&path).unwrap().len();
    for offset in [good + 5, good + 12, full - 1] {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize] ^= 0x40;
        let copy = tempfile::tempdir().unwrap();
        std::fs::write(copy.path().join(path.file_name().unwrap()), &bytes).unwrap();
        assert_first_two_only(copy.path(), good, full - good);
    }
}

#[test]
fn a_record_of_an_unknown_kind_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_sessions(dir.path());
    #[derive(serde::Serialize)]
    struct Future {
        k: &'static str,
        v: u32,
    }
    let payload = rmp_serde::to_vec_named(&Future { k: "journal", v: 1 }).unwrap();
    let len = (payload.len() as u32).to_le_bytes();
    let crc = record::frame_crc(len, &payload).to_le_bytes();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&len).unwrap();
    f.write_all(&crc).unwrap();
    f.write_all(&payload).unwrap();
    drop(f);
    let (s, report) = open_at(dir.path(), NOW + 1);
    assert_eq!((report.records, report.skipped_records), (3, 1));
    assert_eq!(report.truncated_bytes, 0);
    assert!(matches!(s.get("s3", NOW + 1), Lookup::Live(_)));
}

#[test]
fn compaction_preserves_state_and_switches_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, r) = open_at(dir.path(), NOW);
    assert_eq!(r.generation, 1);
    for i in 0..50 {
        create(&mut s, &format!("s{i}"), &format!("u{}", i % 7), NOW + 100 + i, NOW);
    }
    for i in 0..10 {
        refresh(&mut s, &format!("s{i}"), Some(1000), NOW + 1);
        revoke(&mut s, &format!("s{}", 10 + i), NOW + 1);
    }
    create(&mut s, "short", "u0", NOW + 2, NOW);
    let expect: Vec<_> = (0..7).map(|u| s.list_user(&format!("u{u}"), NOW + 2)).collect();
    let before = s.stats().log_bytes;
    s.compact(NOW + 2);
    // Writes queued after the snapshot go to the new generation.
    create(&mut s, "after", "u9", NOW + 100, NOW + 2);
    s.flush().unwrap();
    let st = s.stats();
    assert_eq!((st.generation, st.compactions), (2, 1));
    assert!(st.log_bytes < before, "{} < {before}", st.log_bytes);
    let path = log_path(dir.path());
    assert!(path.ends_with(log::file_name(2)));
    drop(s);
    let (s, report) = open_at(dir.path(), NOW + 2);
    assert_eq!(report.generation, 2);
    // 40 sessions and 10 tombstones in the snapshot ("short" expired), then "after".
    assert_eq!(report.records, 51);
    let got: Vec<_> = (0..7).map(|u| s.list_user(&format!("u{u}"), NOW + 2)).collect();
    assert_eq!(got, expect);
    for i in 0..10 {
        assert_eq!(s.get(&format!("s{}", 10 + i), NOW + 2), Lookup::Revoked);
        assert_eq!(live(&s, &format!("s{i}"), NOW + 2).expires_at, NOW + 1001);
    }
    assert!(matches!(s.get("after", NOW + 2), Lookup::Live(_)));
}

#[test]
fn compaction_starts_by_itself_past_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = StoreTuning { compact_min_bytes: 4096, ..StoreTuning::default() };
    let (mut s, _) =
        StoreCore::open_with(opts(dir.path(), FsyncMode::Never, 10_000), tuning.clone(), NOW)
            .unwrap();
    // Many refreshes of few sessions: the log grows, the state does not.
    for i in 0..5 {
        create(&mut s, &format!("s{i}"), "u", NOW + 100, NOW);
    }
    for round in 0..400 {
        refresh(&mut s, &format!("s{}", round % 5), Some(100 + round), NOW);
    }
    s.flush().unwrap();
    let st = s.stats();
    assert!(st.compactions >= 1, "{st:?}");
    assert!(st.log_bytes < 8192, "{st:?}");
    let expect: Vec<_> = s.list_user("u", NOW);
    drop(s);
    let (s, _) =
        StoreCore::open_with(opts(dir.path(), FsyncMode::Never, 10_000), tuning, NOW).unwrap();
    assert_eq!(s.list_user("u", NOW), expect);
}

#[test]
fn leftover_tmp_and_old_generations_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    s.compact(NOW);
    create(&mut s, "s2", "u1", NOW + 100, NOW);
    s.flush().unwrap();
    drop(s);
    let d = dir.path();
    // A crash in the middle of a later snapshot, and one between rename and delete.
    std::fs::write(d.join(log::tmp_file_name(3)), b"SESSIONDhalf-written").unwrap();
    std::fs::copy(d.join(log::file_name(2)), d.join(log::file_name(1))).unwrap();
    let (s, report) = open_at(d, NOW);
    assert_eq!(report.generation, 2);
    assert!(!d.join(log::tmp_file_name(3)).exists());
    assert!(!d.join(log::file_name(1)).exists());
    assert!(matches!(s.get("s1", NOW), Lookup::Live(_)));
    assert!(matches!(s.get("s2", NOW), Lookup::Live(_)));
    drop(s);
    // The next snapshot reuses no name: generation 3.
    let (mut s, _) = open_at(d, NOW);
    s.compact(NOW);
    s.flush().unwrap();
    assert_eq!(s.stats().generation, 3);
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), NOW);
    let err = StoreCore::open(opts(dir.path(), FsyncMode::Never, 10)).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    drop(s);
    StoreCore::open(opts(dir.path(), FsyncMode::Never, 10)).unwrap();
}

#[test]
fn always_acks_after_the_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) =
        StoreCore::open_with(opts(dir.path(), FsyncMode::Always, 100), StoreTuning::default(), NOW)
            .unwrap();
    assert_eq!(s.stats().last_fsync_at_ms, None);
    let (_, d) = s.create(new_session("s1", "u", NOW + 100), NOW);
    assert!(!d.is_ready());
    wait(d);
    let st = s.stats();
    assert!(st.last_fsync_at_ms.is_some());
    assert_eq!(st.write_errors, 0);
    assert!(st.log_healthy);
    // An answer that depends on a durable write does not wait; nothing is pending.
    let (o, d) = s.create(new_session("s1", "u", NOW + 100), NOW);
    assert!(matches!(o, CreateOutcome::Existing(_)));
    assert!(d.is_ready());
}

#[test]
fn an_answer_that_depends_on_a_pending_write_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) =
        StoreCore::open_with(opts(dir.path(), FsyncMode::Always, 100), StoreTuning::default(), NOW)
            .unwrap();
    let (_, first) = s.revoke("x", NOW);
    let (o, second) = s.revoke("x", NOW);
    assert!(!o.newly_revoked);
    // Either the first is already durable (ready) or the second waits for the same fsync.
    let rt = rt();
    rt.block_on(second.wait()).unwrap();
    rt.block_on(first.wait()).unwrap();
}

#[test]
fn interval_mode_fsyncs_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = StoreCore::open_with(
        opts(dir.path(), FsyncMode::Interval(Duration::from_millis(50)), 100),
        StoreTuning::default(),
        NOW,
    )
    .unwrap();
    create(&mut s, "s1", "u", NOW + 100, NOW);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.stats().last_fsync_at_ms.is_none() {
        assert!(std::time::Instant::now() < deadline, "no interval fsync");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn never_mode_still_flushes_on_demand_and_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u", NOW + 100, NOW);
    s.flush().unwrap();
    assert!(s.stats().last_fsync_at_ms.is_some());
    rt().block_on(s.flush_durable().wait()).unwrap();
    // Not awaited: the drop drains the queue.
    let (_, _unawaited) = s.create(new_session("s2", "u", NOW + 100), NOW);
    drop(s);
    let (s, _) = open_at(dir.path(), NOW);
    assert!(matches!(s.get("s2", NOW), Lookup::Live(_)));
}

#[test]
fn many_writes_without_waiting_are_all_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = StoreCore::open_with(
        opts(dir.path(), FsyncMode::Always, 1 << 20),
        StoreTuning::default(),
        NOW,
    )
    .unwrap();
    let mut pending = Vec::new();
    for i in 0..20_000 {
        let (_, d) = s.create(new_session(&format!("s{i}"), "u", NOW + 100), NOW);
        pending.push(d);
    }
    let rt = rt();
    for d in pending {
        rt.block_on(d.wait()).unwrap();
    }
    drop(s);
    let (s, report) = StoreCore::open_with(
        opts(dir.path(), FsyncMode::Always, 1 << 20),
        StoreTuning::default(),
        NOW,
    )
    .unwrap();
    assert_eq!(report.sessions, 20_000);
    assert_eq!(s.list_user("u", NOW).len(), 20_000);
}

// ---- journal --------------------------------------------------------------------------------

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

fn put_op(id: &str, user: &str, created_at: UnixSeconds, expires_at: UnixSeconds) -> JournalOp {
    JournalOp::Put {
        session: session_of(id, user, created_at, expires_at),
        created_len: expires_at - created_at,
        issued_at: None,
    }
}

fn tomb_op(id: &str, until: UnixSeconds, user: Option<&str>) -> JournalOp {
    JournalOp::Tomb { session_id: id.into(), until, user_id: user.map(str::to_string) }
}

fn ops(s: &StoreCore) -> Vec<(u64, JournalOp)> {
    s.pending_journal(usize::MAX).into_iter().map(|e| (e.seq, e.op)).collect()
}

fn jcreate(s: &mut StoreCore, id: &str, user: &str, exp: i64, now: i64) -> CreateOutcome {
    let (o, d) = s.create_journaled(new_session(id, user, exp), now);
    wait(d);
    o
}

fn jrevoke(s: &mut StoreCore, id: &str, now: UnixSeconds) -> RevokeOutcome {
    let (o, d) = s.revoke_journaled(id, now);
    wait(d);
    o
}

fn jrefresh(s: &mut StoreCore, id: &str, ttl: Option<i64>, now: UnixSeconds) -> RefreshOutcome {
    let (o, d) = s.refresh_journaled(id, ttl, now);
    wait(d);
    o
}

fn jrevoke_user(s: &mut StoreCore, uid: &str, now: UnixSeconds) -> Vec<String> {
    let (ids, d) = s.revoke_user_journaled(uid, now);
    wait(d);
    ids
}

fn ack(s: &mut StoreCore, up_to: u64) {
    wait(s.ack_journal(up_to));
}

fn open_tuned(dir: &Path, max_entries: usize, tuning: StoreTuning) -> (StoreCore, LoadReport) {
    StoreCore::open_with(opts(dir, FsyncMode::Never, max_entries), tuning, NOW).unwrap()
}

#[test]
fn journaled_writes_record_their_entries_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    assert!(matches!(jcreate(&mut s, "s1", "u1", NOW + 100, NOW), CreateOutcome::Created(_)));
    jcreate(&mut s, "s2", "u1", NOW + 200, NOW);
    assert!(matches!(jrefresh(&mut s, "s1", Some(300), NOW + 1), RefreshOutcome::Refreshed(_)));
    assert_eq!(
        jrevoke(&mut s, "s2", NOW + 2),
        RevokeOutcome { newly_revoked: true, user_id: Some("u1".into()) }
    );
    assert_eq!(jrevoke(&mut s, "never-seen", NOW + 2).user_id, None);
    // Not journaled: no entry, but the write happens.
    create(&mut s, "s3", "u1", NOW + 50, NOW + 2);
    // In list_user order: by created_at.
    assert_eq!(jrevoke_user(&mut s, "u1", NOW + 3), ["s1", "s3"]);
    let expect = vec![
        (1, put_op("s1", "u1", NOW, NOW + 100)),
        (2, put_op("s2", "u1", NOW, NOW + 200)),
        (3, JournalOp::Expiry { session_id: "s1".into(), expires_at: NOW + 301 }),
        (4, tomb_op("s2", NOW + 200, Some("u1"))),
        (5, tomb_op("never-seen", NOW + 2 + MAX_TTL, None)),
        (6, tomb_op("s1", NOW + 301, Some("u1"))),
        (7, tomb_op("s3", NOW + 50, Some("u1"))),
        (8, JournalOp::RevokeUser { user_id: "u1".into(), at: NOW + 3 }),
    ];
    assert_eq!(ops(&s), expect);
    let st = s.stats();
    assert_eq!(
        (st.journal_len, st.journal_oldest_seq, st.journal_next_seq, st.journal_acked_seq),
        (8, Some(1), 9, 0)
    );
    assert_eq!(st.journal_max, DEFAULT_MAX_JOURNAL);
    assert_eq!(s.journal_len(), 8);
    // The same from the log.
    drop(s);
    let (s, report) = open_at(dir.path(), NOW + 3);
    assert_eq!((report.journal_entries, report.journal_next_seq), (8, 9));
    assert_eq!(ops(&s), expect);
    assert_eq!(s.get("s1", NOW + 3), Lookup::Revoked);
    assert_eq!(s.get("s3", NOW + 3), Lookup::Revoked);
}

#[test]
fn writes_that_change_nothing_are_not_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) =
        open_tuned(dir.path(), 3, StoreTuning { max_journal: 100, ..StoreTuning::default() });
    jcreate(&mut s, "s1", "u1", NOW + 100, NOW);
    jcreate(&mut s, "s2", "u1", NOW + 100, NOW);
    jrevoke(&mut s, "s2", NOW);
    create(&mut s, "s0", "u0", NOW + 100, NOW);
    let before = ops(&s);
    assert_eq!(before.len(), 3);
    assert!(matches!(jcreate(&mut s, "s1", "u1", NOW + 100, NOW), CreateOutcome::Existing(_)));
    assert_eq!(jcreate(&mut s, "s1", "u2", NOW + 100, NOW), CreateOutcome::Conflict);
    assert_eq!(jcreate(&mut s, "s2", "u1", NOW + 100, NOW), CreateOutcome::Revoked);
    // max_entries (3) are held: Full, no entry.
    assert_eq!(jcreate(&mut s, "s9", "u1", NOW + 100, NOW), CreateOutcome::Full);
    assert_eq!(jrefresh(&mut s, "s2", None, NOW), RefreshOutcome::Revoked);
    assert_eq!(jrefresh(&mut s, "nope", None, NOW), RefreshOutcome::Missing);
    assert!(!jrevoke(&mut s, "s2", NOW).newly_revoked);
    // Plain writes never add entries.
    refresh(&mut s, "s1", Some(10), NOW);
    revoke(&mut s, "x", NOW);
    let (_, d) = s.revoke_user("u1", NOW);
    wait(d);
    assert_eq!(ops(&s), before);
    // A journaled revoke-all of a user with nothing held here still records the revoke-all:
    // Redis may hold sessions of that user.
    assert!(jrevoke_user(&mut s, "u1", NOW + 1).is_empty());
    assert_eq!(
        ops(&s).last().unwrap(),
        &(4, JournalOp::RevokeUser { user_id: "u1".into(), at: NOW + 1 })
    );
}

#[test]
fn pending_and_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    for i in 0..5 {
        jcreate(&mut s, &format!("s{i}"), "u", NOW + 100, NOW);
    }
    let first_two: Vec<u64> = s.pending_journal(2).iter().map(|e| e.seq).collect();
    assert_eq!(first_two, [1, 2]);
    ack(&mut s, 2);
    assert_eq!(s.pending_journal(10).iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    // Going back or repeating writes nothing and changes nothing.
    let bytes = s.stats().log_bytes;
    let d = s.ack_journal(1);
    assert!(d.is_ready());
    wait(d);
    ack(&mut s, 2);
    s.flush().unwrap();
    assert_eq!(s.stats().log_bytes, bytes);
    assert_eq!(s.journal_len(), 3);
    // Past the last seq handed out: capped, so later entries are not acknowledged in advance.
    ack(&mut s, 1000);
    assert_eq!(s.journal_len(), 0);
    let st = s.stats();
    assert_eq!((st.journal_oldest_seq, st.journal_next_seq, st.journal_acked_seq), (None, 6, 5));
    jcreate(&mut s, "s9", "u", NOW + 100, NOW);
    assert_eq!(s.pending_journal(10)[0].seq, 6);
    drop(s);
    let (s, _) = open_at(dir.path(), NOW);
    assert_eq!(s.pending_journal(10).iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    // The acknowledged writes themselves are still there: the journal only tracks replay.
    assert_eq!(s.list_user("u", NOW).len(), 6);
}

#[test]
fn an_ack_survives_reopen_and_seqs_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    for i in 0..4 {
        jrevoke(&mut s, &format!("r{i}"), NOW);
    }
    ack(&mut s, 3);
    drop(s);
    let (mut s, report) = open_at(dir.path(), NOW);
    assert_eq!((report.journal_entries, report.journal_next_seq), (1, 5));
    assert_eq!(ops(&s), vec![(4, tomb_op("r3", NOW + MAX_TTL, None))]);
    ack(&mut s, 4);
    drop(s);
    // Everything acknowledged: the next seq still continues.
    let (mut s, report) = open_at(dir.path(), NOW);
    assert_eq!((report.journal_entries, report.journal_next_seq), (0, 5));
    jrevoke(&mut s, "r9", NOW);
    assert_eq!(s.pending_journal(1)[0].seq, 5);
}

#[test]
fn the_journal_survives_compaction_and_reopen_with_seq_continuity() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    jcreate(&mut s, "a", "u1", NOW + 100, NOW);
    jcreate(&mut s, "b", "u1", NOW + 100, NOW);
    // An entry whose session changed later: the journal keeps the write as it was taken.
    jrevoke(&mut s, "a", NOW + 1);
    jrefresh(&mut s, "b", Some(500), NOW + 1);
    jrevoke_user(&mut s, "u2", NOW + 1);
    ack(&mut s, 1);
    let expect = ops(&s);
    assert_eq!(expect.len(), 4);
    s.compact(NOW + 1);
    jcreate(&mut s, "c", "u3", NOW + 100, NOW + 1);
    s.flush().unwrap();
    assert_eq!(s.stats().generation, 2);
    drop(s);
    let (mut s, report) = open_at(dir.path(), NOW + 1);
    assert_eq!(report.generation, 2);
    let mut after = expect.clone();
    after.push((6, put_op("c", "u3", NOW + 1, NOW + 100)));
    assert_eq!(ops(&s), after);
    assert_eq!(report.journal_next_seq, 7);
    assert_eq!(s.get("a", NOW + 1), Lookup::Revoked);
    assert_eq!(live(&s, "b", NOW + 1).expires_at, NOW + 501);
    // Acknowledge everything, compact: the snapshot holds no entry, and the seq goes on.
    ack(&mut s, 6);
    s.compact(NOW + 1);
    s.flush().unwrap();
    drop(s);
    let (mut s, report) = open_at(dir.path(), NOW + 1);
    assert_eq!((report.generation, report.journal_entries, report.journal_next_seq), (3, 0, 7));
    jrevoke(&mut s, "z", NOW + 1);
    assert_eq!(s.pending_journal(1)[0].seq, 7);
    // A snapshot by itself, past the threshold, carries the journal too.
    drop(s);
    let tuning = StoreTuning { compact_min_bytes: 2048, ..StoreTuning::default() };
    let (mut s, _) = open_tuned(dir.path(), 1000, tuning.clone());
    for i in 0..100 {
        jrefresh(&mut s, "b", Some(600 + i), NOW + 1);
    }
    s.flush().unwrap();
    assert!(s.stats().compactions >= 1);
    let expect = ops(&s);
    assert_eq!(expect.len(), 101);
    drop(s);
    let (s, _) = open_tuned(dir.path(), 1000, tuning);
    assert_eq!(ops(&s), expect);
}

#[test]
fn a_torn_tail_loses_only_the_unacknowledged_journaled_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    jcreate(&mut s, "a", "u", NOW + 100, NOW);
    jrevoke(&mut s, "x", NOW);
    ack(&mut s, 1);
    s.flush().unwrap();
    let good = s.stats().log_bytes;
    // Not waited for: the crash comes first.
    let (_, _unacknowledged) = s.create_journaled(new_session("b", "u", NOW + 100), NOW);
    drop(s);
    let path = log_path(dir.path());
    let full = std::fs::metadata(&path).unwrap().len();
    assert!(full > good);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(full - 3).unwrap();
    let (s, report) = open_at(dir.path(), NOW);
    assert_eq!(report.truncated_bytes, full - 3 - good);
    assert_eq!(ops(&s), vec![(2, tomb_op("x", NOW + MAX_TTL, None))]);
    assert_eq!(s.stats().journal_acked_seq, 1);
    assert_eq!(s.get("b", NOW), Lookup::Missing);
    assert!(matches!(s.get("a", NOW), Lookup::Live(_)));
}

#[test]
fn a_torn_revoke_all_keeps_each_recorded_revocation_with_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "a", "u", NOW + 100, NOW);
    create(&mut s, "b", "u", NOW + 200, NOW);
    s.flush().unwrap();
    let good = s.stats().log_bytes;
    let (_, _unacknowledged) = s.revoke_user_journaled("u", NOW);
    drop(s);
    // Three frames: tomb a (+ entry 1), tomb b (+ entry 2), the revoke-all (entry 3). Cut
    // inside the last one.
    let path = log_path(dir.path());
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(full - 2).unwrap();
    let (mut s, report) = open_at(dir.path(), NOW);
    assert!(report.truncated_bytes > 0);
    assert!(std::fs::metadata(&path).unwrap().len() > good);
    assert_eq!(
        ops(&s),
        vec![(1, tomb_op("a", NOW + 100, Some("u"))), (2, tomb_op("b", NOW + 200, Some("u")))]
    );
    // The client got no answer and retries: the revoke-all itself is journaled again.
    assert!(jrevoke_user(&mut s, "u", NOW + 1).is_empty());
    assert_eq!(ops(&s)[2], (3, JournalOp::RevokeUser { user_id: "u".into(), at: NOW + 1 }));
}

#[test]
fn a_full_journal_refuses_journaling_writes_only() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = StoreTuning { max_journal: 3, ..StoreTuning::default() };
    let (mut s, _) = open_tuned(dir.path(), 1000, tuning.clone());
    create(&mut s, "live", "u", NOW + 100, NOW);
    jcreate(&mut s, "j1", "u", NOW + 100, NOW);
    jcreate(&mut s, "j2", "u", NOW + 100, NOW);
    // Two entries held, one free: a revoke-all of "u" needs four (three tombs and the
    // revoke-all) and is refused whole.
    let (ids, d) = s.revoke_user_journaled("u", NOW);
    let err = rt().block_on(d.wait()).unwrap_err();
    assert!(err.0.contains("journal is full"), "{err}");
    assert!(ids.is_empty());
    assert_eq!(s.list_user("u", NOW).len(), 3);
    jrevoke(&mut s, "j1", NOW);
    assert_eq!(s.journal_len(), 3);
    // Full.
    let bytes = s.stats().log_bytes;
    assert_eq!(jcreate(&mut s, "j3", "u", NOW + 100, NOW), CreateOutcome::Full);
    assert_eq!(s.get("j3", NOW), Lookup::Missing);
    let (_, d) = s.refresh_journaled("live", Some(999), NOW);
    assert!(rt().block_on(d.wait()).unwrap_err().0.contains("journal is full"));
    assert_eq!(live(&s, "live", NOW).expires_at, NOW + 100);
    let (_, d) = s.revoke_journaled("live", NOW);
    assert!(rt().block_on(d.wait()).unwrap_err().0.contains("journal is full"));
    assert!(matches!(s.get("live", NOW), Lookup::Live(_)));
    let (_, d) = s.revoke_user_journaled("nobody", NOW);
    assert!(rt().block_on(d.wait()).is_err());
    s.flush().unwrap();
    assert_eq!(s.stats().log_bytes, bytes, "a refused write writes nothing");
    // Answers that change nothing are still given.
    assert!(!jrevoke(&mut s, "j1", NOW).newly_revoked);
    assert!(matches!(jcreate(&mut s, "j2", "u", NOW + 100, NOW), CreateOutcome::Existing(_)));
    // Plain and mirror writes still work.
    assert!(matches!(create(&mut s, "p", "u", NOW + 100, NOW), CreateOutcome::Created(_)));
    assert!(revoke(&mut s, "p", NOW).newly_revoked);
    wait(s.mirror_tomb("m", NOW + 50, NOW));
    assert_eq!(s.get("m", NOW), Lookup::Revoked);
    assert_eq!(s.journal_len(), 3);
    // Once replay catches up, journaling writes are taken again.
    ack(&mut s, 1);
    assert!(matches!(jcreate(&mut s, "j3", "u", NOW + 100, NOW), CreateOutcome::Created(_)));
    // A journal reopened over the bound is kept whole (never dropped), and refuses until
    // it drains.
    drop(s);
    let small = StoreTuning { max_journal: 1, ..tuning };
    let (mut s, report) = open_tuned(dir.path(), 1000, small);
    assert_eq!(report.journal_entries, 3);
    assert_eq!(jcreate(&mut s, "j4", "u", NOW + 100, NOW), CreateOutcome::Full);
}

// ---- mirror ---------------------------------------------------------------------------------

#[test]
fn mirror_put_stores_replaces_and_skips_what_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    let m = session_of("m1", "u1", NOW - 50, NOW + 100);
    wait(s.mirror_put(&m, 150, NOW));
    assert_eq!(live(&s, "m1", NOW), m);
    // Refresh without ttl reuses the created length given.
    let RefreshOutcome::Refreshed(r) = refresh(&mut s, "m1", None, NOW) else { panic!() };
    assert_eq!(r.expires_at, NOW + 150);
    // The same again writes nothing (validations mirror every time).
    wait(s.mirror_put(&r, 150, NOW));
    s.flush().unwrap();
    let bytes = s.stats().log_bytes;
    for _ in 0..10 {
        wait(s.mirror_put(&r, 150, NOW));
    }
    s.flush().unwrap();
    assert_eq!(s.stats().log_bytes, bytes);
    // Redis knows better: replaced, even under another user, and capped at max_ttl.
    let mut other = session_of("m1", "u2", NOW, NOW + 10 * MAX_TTL);
    other.attributes.clear();
    wait(s.mirror_put(&other, 10 * MAX_TTL, NOW));
    let got = live(&s, "m1", NOW);
    assert_eq!((got.user_id.as_str(), got.expires_at), ("u2", NOW + MAX_TTL));
    assert!(got.attributes.is_empty());
    assert!(s.list_user("u1", NOW).is_empty());
    // Expired: not stored.
    wait(s.mirror_put(&session_of("old", "u1", NOW - 100, NOW), 100, NOW));
    assert_eq!(s.get("old", NOW), Lookup::Missing);
    assert_eq!(s.journal_len(), 0);
    drop(s);
    let (s, _) = open_at(dir.path(), NOW);
    assert_eq!(live(&s, "m1", NOW).user_id, "u2");
}

#[test]
fn mirror_put_never_overrides_a_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    revoke(&mut s, "s1", NOW);
    wait(s.mirror_put(&session_of("s1", "u1", NOW, NOW + 100), 100, NOW + 1));
    assert_eq!(s.get("s1", NOW + 1), Lookup::Revoked);
    wait(s.mirror_tomb("s2", NOW + 10, NOW));
    wait(s.mirror_put(&session_of("s2", "u1", NOW, NOW + 100), 100, NOW + 1));
    assert_eq!(s.get("s2", NOW + 1), Lookup::Revoked);
    // Once the tombstone has expired, it may come back.
    wait(s.mirror_put(&session_of("s2", "u1", NOW, NOW + 100), 100, NOW + 10));
    assert!(matches!(s.get("s2", NOW + 10), Lookup::Live(_)));
}

#[test]
fn mirror_tomb_removes_and_keeps_the_longer_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "s1", "u1", NOW + 100, NOW);
    wait(s.mirror_tomb("s1", NOW + 500, NOW));
    assert_eq!(s.get("s1", NOW + 499), Lookup::Revoked);
    assert!(s.list_user("u1", NOW).is_empty());
    assert_eq!(s.stats().users, 0);
    // A shorter one changes nothing, and writes nothing.
    s.flush().unwrap();
    let bytes = s.stats().log_bytes;
    wait(s.mirror_tomb("s1", NOW + 200, NOW));
    wait(s.mirror_tomb("gone", NOW - 1, NOW));
    s.flush().unwrap();
    assert_eq!(s.stats().log_bytes, bytes);
    assert_eq!(s.get("s1", NOW + 499), Lookup::Revoked);
    wait(s.mirror_tomb("s1", NOW + 900, NOW));
    assert_eq!(s.get("s1", NOW + 899), Lookup::Revoked);
    // Never refused, never journaled; creates of the id are refused.
    assert_eq!(create(&mut s, "s1", "u1", NOW + 50, NOW + 1), CreateOutcome::Revoked);
    assert_eq!(s.journal_len(), 0);
    drop(s);
    let (s, _) = open_at(dir.path(), NOW + 1);
    assert_eq!(s.get("s1", NOW + 899), Lookup::Revoked);
    assert_eq!(s.get("s1", NOW + 900), Lookup::Missing);
}

#[test]
fn mirror_revoke_user_and_mirror_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    create(&mut s, "a", "u1", NOW + 100, NOW);
    create(&mut s, "b", "u1", NOW + 200, NOW);
    create(&mut s, "c", "u2", NOW + 100, NOW);
    wait(s.mirror_expiry("c", NOW + 300, NOW));
    assert_eq!(live(&s, "c", NOW).expires_at, NOW + 300);
    wait(s.mirror_expiry("c", NOW + 100 * MAX_TTL, NOW));
    assert_eq!(live(&s, "c", NOW).expires_at, NOW + MAX_TTL);
    // Not held, or not live: nothing.
    wait(s.mirror_expiry("nope", NOW + 300, NOW));
    assert_eq!(s.get("nope", NOW), Lookup::Missing);
    wait(s.mirror_revoke_user("u1", NOW, NOW));
    assert_eq!(s.get("a", NOW + 99), Lookup::Revoked);
    assert_eq!(s.get("b", NOW + 199), Lookup::Revoked);
    assert!(matches!(s.get("c", NOW), Lookup::Live(_)));
    wait(s.mirror_expiry("a", NOW + 300, NOW));
    assert_eq!(s.get("a", NOW + 99), Lookup::Revoked);
    wait(s.mirror_revoke_user("nobody", NOW, NOW));
    assert_eq!(s.journal_len(), 0);
    drop(s);
    let (s, _) = open_at(dir.path(), NOW);
    assert_eq!(s.get("b", NOW + 199), Lookup::Revoked);
    assert_eq!(live(&s, "c", NOW).expires_at, NOW + MAX_TTL);
}

#[test]
fn the_mirror_stays_within_max_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_tuned(dir.path(), 2, StoreTuning::default());
    wait(s.mirror_put(&session_of("a", "u", NOW, NOW + 10), 10, NOW));
    wait(s.mirror_put(&session_of("b", "u", NOW, NOW + 100), 100, NOW));
    wait(s.mirror_put(&session_of("c", "u", NOW, NOW + 100), 100, NOW));
    assert_eq!(s.get("c", NOW), Lookup::Missing);
    assert_eq!(s.stats().mirror_skipped, 1);
    // A session already held is still updated.
    wait(s.mirror_put(&session_of("b", "u", NOW, NOW + 200), 200, NOW));
    assert_eq!(live(&s, "b", NOW).expires_at, NOW + 200);
    // Revocations go over the limit.
    wait(s.mirror_tomb("t", NOW + 100, NOW));
    assert_eq!(s.get("t", NOW), Lookup::Revoked);
    // Expired entries make room.
    wait(s.mirror_put(&session_of("c", "u", NOW, NOW + 100), 100, NOW + 10));
    assert_eq!(s.stats().mirror_skipped, 2);
    s.sweep(NOW + 100);
    wait(s.mirror_put(&session_of("c", "u", NOW, NOW + 200), 200, NOW + 100));
    assert!(matches!(s.get("c", NOW + 100), Lookup::Live(_)));
}

// ---- model ----------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Create {
        id: u8,
        user: u8,
        ttl: i64,
        j: bool,
        /// The token's `iat` relative to now (`None`: no `iat`).
        iat: Option<i64>,
    },
    Get {
        id: u8,
    },
    Refresh {
        id: u8,
        ttl: Option<i64>,
        j: bool,
    },
    Revoke {
        id: u8,
        j: bool,
    },
    ListUser {
        user: u8,
    },
    RevokeUser {
        user: u8,
        j: bool,
    },
    Sweep,
    Advance {
        secs: i64,
    },
    Reopen,
    Compact,
    /// Acknowledge up to the k-th pending entry (past the end: beyond the last seq).
    Ack {
        k: u8,
    },
    MirrorPut {
        id: u8,
        user: u8,
        ttl: i64,
    },
    MirrorTomb {
        id: u8,
        ttl: i64,
    },
    MirrorRevokeUser {
        user: u8,
    },
    MirrorExpiry {
        id: u8,
        ttl: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let j = any::<bool>();
    let store_ops = prop_oneof![
        4 => (0u8..12, 0u8..4, 1i64..200, j, proptest::option::of(-100i64..3))
            .prop_map(|(id, user, ttl, j, iat)| Op::Create { id, user, ttl, j, iat }),
        2 => (0u8..12).prop_map(|id| Op::Get { id }),
        2 => (0u8..12, proptest::option::of(0i64..200), j)
            .prop_map(|(id, ttl, j)| Op::Refresh { id, ttl, j }),
        2 => (0u8..12, j).prop_map(|(id, j)| Op::Revoke { id, j }),
        1 => (0u8..4).prop_map(|user| Op::ListUser { user }),
        1 => (0u8..4, j).prop_map(|(user, j)| Op::RevokeUser { user, j }),
        1 => Just(Op::Sweep),
        2 => (0i64..80).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ];
    let redis_ops = prop_oneof![
        2 => (0u8..8).prop_map(|k| Op::Ack { k }),
        2 => (0u8..12, 0u8..4, -10i64..200)
            .prop_map(|(id, user, ttl)| Op::MirrorPut { id, user, ttl }),
        1 => (0u8..12, -20i64..200).prop_map(|(id, ttl)| Op::MirrorTomb { id, ttl }),
        1 => (0u8..4).prop_map(|user| Op::MirrorRevokeUser { user }),
        1 => (0u8..12, -10i64..200).prop_map(|(id, ttl)| Op::MirrorExpiry { id, ttl }),
    ];
    prop_oneof![4 => store_ops, 1 => redis_ops]
}

const MODEL_MAX_TTL: i64 = 150;

struct Model {
    sessions: HashMap<String, (Session, i64)>,
    tombs: HashMap<String, i64>,
    /// Revoke-all watermarks by user: (at, until).
    marks: HashMap<String, (i64, i64)>,
    journal: Vec<JournalEntry>,
    next_seq: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            sessions: HashMap::new(),
            tombs: HashMap::new(),
            marks: HashMap::new(),
            journal: Vec::new(),
            next_seq: 1,
        }
    }
}

impl Model {
    fn live(&self, id: &str, now: i64) -> Option<&Session> {
        self.sessions.get(id).map(|(s, _)| s).filter(|s| s.expires_at > now)
    }
    fn revoked(&self, id: &str, now: i64) -> bool {
        self.tombs.get(id).is_some_and(|t| *t > now)
    }
    fn journal(&mut self, op: JournalOp) {
        self.journal.push(JournalEntry { seq: self.next_seq, op });
        self.next_seq += 1;
    }
    fn create(&mut self, n: NewSession, now: i64, j: bool) -> CreateOutcome {
        let id = n.identity.session_id.clone();
        if self.revoked(&id, now) {
            return CreateOutcome::Revoked;
        }
        if let Some(s) = self.live(&id, now) {
            return if s.user_id == n.identity.user_id {
                CreateOutcome::Existing(s.clone())
            } else {
                CreateOutcome::Conflict
            };
        }
        let issued = n.identity.issued_at.unwrap_or(now);
        if self
            .marks
            .get(&n.identity.user_id)
            .is_some_and(|(at, until)| *until > now && issued <= *at)
        {
            if j {
                self.revoke(&id, now, true);
            } else if n.expires_at > now {
                self.sessions.remove(&id);
                let t = self.tombs.entry(id).or_insert(n.expires_at);
                *t = (*t).max(n.expires_at);
            }
            return CreateOutcome::Revoked;
        }
        let s = Session {
            session_id: id.clone(),
            user_id: n.identity.user_id,
            email: n.identity.email,
            role: n.identity.role,
            format: n.identity.format,
            created_at: now,
            expires_at: n.expires_at,
            attributes: n.attributes,
        };
        self.tombs.remove(&id);
        self.sessions.insert(id, (s.clone(), n.expires_at - now));
        if j {
            self.journal(JournalOp::Put {
                session: s.clone(),
                created_len: n.expires_at - now,
                issued_at: n.identity.issued_at,
            });
        }
        CreateOutcome::Created(s)
    }
    fn get(&self, id: &str, now: i64) -> Lookup {
        match self.live(id, now) {
            Some(s) => Lookup::Live(s.clone()),
            None if self.revoked(id, now) => Lookup::Revoked,
            None => Lookup::Missing,
        }
    }
    fn refresh(&mut self, id: &str, ttl: Option<i64>, now: i64, j: bool) -> RefreshOutcome {
        if self.live(id, now).is_some()
            && let Some((s, len)) = self.sessions.get_mut(id)
        {
            s.expires_at = (now + ttl.unwrap_or(*len)).min(now + MODEL_MAX_TTL);
            let s = s.clone();
            if j {
                let expires_at = s.expires_at;
                self.journal(JournalOp::Expiry { session_id: id.into(), expires_at });
            }
            return RefreshOutcome::Refreshed(s);
        }
        if self.revoked(id, now) { RefreshOutcome::Revoked } else { RefreshOutcome::Missing }
    }
    fn revoke(&mut self, id: &str, now: i64, j: bool) -> RevokeOutcome {
        let outcome = if let Some(s) = self.live(id, now).cloned() {
            self.sessions.remove(id);
            let t = self.tombs.entry(id.to_string()).or_insert(s.expires_at);
            *t = (*t).max(s.expires_at);
            RevokeOutcome { newly_revoked: true, user_id: Some(s.user_id) }
        } else if self.revoked(id, now) {
            return RevokeOutcome { newly_revoked: false, user_id: None };
        } else {
            self.sessions.remove(id);
            let t = self.tombs.entry(id.to_string()).or_insert(now + MODEL_MAX_TTL);
            *t = (*t).max(now + MODEL_MAX_TTL);
            RevokeOutcome { newly_revoked: true, user_id: None }
        };
        if j {
            let until = self.tombs[id];
            let user_id = outcome.user_id.clone();
            self.journal(JournalOp::Tomb { session_id: id.into(), until, user_id });
        }
        outcome
    }
    fn revoke_user(&mut self, user: &str, now: i64, j: bool) -> Vec<String> {
        let ids: Vec<String> =
            self.list_user(user, now).into_iter().map(|s| s.session_id).collect();
        for id in &ids {
            self.revoke(id, now, j);
        }
        let mark = self.marks.entry(user.to_string()).or_insert((now, now + MODEL_MAX_TTL));
        mark.0 = mark.0.max(now);
        mark.1 = mark.1.max(now + MODEL_MAX_TTL);
        if j {
            self.journal(JournalOp::RevokeUser { user_id: user.into(), at: now });
        }
        ids
    }
    fn ack(&mut self, k: u8) -> u64 {
        let up_to = match self.journal.get(usize::from(k)) {
            Some(e) => e.seq,
            None => self.next_seq + 3,
        };
        self.journal.retain(|e| e.seq > up_to);
        up_to
    }
    fn mirror_put(&mut self, s: Session, created_len: i64, now: i64) {
        let mut s = s;
        s.expires_at = s.expires_at.min(now + MODEL_MAX_TTL);
        if s.expires_at <= now || self.revoked(&s.session_id, now) {
            return;
        }
        self.tombs.remove(&s.session_id);
        self.sessions.insert(s.session_id.clone(), (s, created_len));
    }
    fn mirror_tomb(&mut self, id: &str, until: i64, now: i64) {
        let earlier = self.tombs.get(id).copied();
        if !self.sessions.contains_key(id) && (until <= now || earlier.is_some_and(|e| e >= until))
        {
            return;
        }
        self.sessions.remove(id);
        self.tombs.insert(id.into(), until.max(earlier.unwrap_or(until)));
    }
    fn mirror_expiry(&mut self, id: &str, expires_at: i64, now: i64) {
        if self.live(id, now).is_some()
            && let Some((s, _)) = self.sessions.get_mut(id)
        {
            s.expires_at = expires_at.min(now + MODEL_MAX_TTL);
        }
    }
    fn list_user(&self, user: &str, now: i64) -> Vec<Session> {
        let mut v: Vec<Session> = self
            .sessions
            .values()
            .map(|(s, _)| s)
            .filter(|s| s.user_id == user && s.expires_at > now)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.session_id).cmp(&(b.created_at, &b.session_id)));
        v
    }
    fn sweep(&mut self, now: i64) -> usize {
        let before = self.sessions.len() + self.tombs.len();
        self.sessions.retain(|_, (s, _)| s.expires_at > now);
        self.tombs.retain(|_, t| *t > now);
        self.marks.retain(|_, (_, until)| *until > now);
        before - self.sessions.len() - self.tombs.len()
    }
}

fn model_opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        data_dir: dir.to_path_buf(),
        fsync: FsyncMode::Never,
        max_entries: 10_000,
        max_ttl_seconds: MODEL_MAX_TTL,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut now = NOW;
        let mut s = StoreCore::open_with(model_opts(dir.path()), StoreTuning::default(), now).unwrap().0;
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Create { id, user, ttl, j, iat } => {
                    let mut n = new_session(&format!("s{id}"), &format!("u{user}"), now + ttl);
                    n.identity.issued_at = iat.map(|off| now + off);
                    let (got, d) = if j {
                        s.create_journaled(n.clone(), now)
                    } else {
                        s.create(n.clone(), now)
                    };
                    rt.block_on(d.wait()).unwrap();
                    prop_assert_eq!(got, m.create(n, now, j));
                }
                Op::Get { id } => {
                    let id = format!("s{id}");
                    prop_assert_eq!(s.get(&id, now), m.get(&id, now));
                }
                Op::Refresh { id, ttl, j } => {
                    let id = format!("s{id}");
                    let (got, d) = if j {
                        s.refresh_journaled(&id, ttl, now)
                    } else {
                        s.refresh(&id, ttl, now)
                    };
                    rt.block_on(d.wait()).unwrap();
                    prop_assert_eq!(got, m.refresh(&id, ttl, now, j));
                }
                Op::Revoke { id, j } => {
                    let id = format!("s{id}");
                    let (got, d) =
                        if j { s.revoke_journaled(&id, now) } else { s.revoke(&id, now) };
                    rt.block_on(d.wait()).unwrap();
                    prop_assert_eq!(got, m.revoke(&id, now, j));
                }
                Op::ListUser { user } => {
                    let u = format!("u{user}");
                    prop_assert_eq!(s.list_user(&u, now), m.list_user(&u, now));
                }
                Op::RevokeUser { user, j } => {
                    let u = format!("u{user}");
                    let (got, d) =
                        if j { s.revoke_user_journaled(&u, now) } else { s.revoke_user(&u, now) };
                    rt.block_on(d.wait()).unwrap();
                    prop_assert_eq!(got, m.revoke_user(&u, now, j));
                }
                Op::Sweep => prop_assert_eq!(s.sweep(now), m.sweep(now)),
                Op::Advance { secs } => now += secs,
                Op::Reopen => {
                    drop(s);
                    let (s2, report) =
                        StoreCore::open_with(model_opts(dir.path()), StoreTuning::default(), now)
                            .unwrap();
                    s = s2;
                    prop_assert_eq!(report.truncated_bytes, 0);
                    prop_assert_eq!(report.journal_next_seq, m.next_seq);
                    // Loading drops what has expired (the count is of log entries, so it is
                    // not compared).
                    m.sweep(now);
                }
                Op::Compact => {
                    s.compact(now);
                    s.flush().unwrap();
                }
                Op::Ack { k } => {
                    let up_to = m.ack(k);
                    rt.block_on(s.ack_journal(up_to).wait()).unwrap();
                }
                Op::MirrorPut { id, user, ttl } => {
                    let (id, user) = (format!("s{id}"), format!("u{user}"));
                    let sess = session_of(&id, &user, now - 5, now + ttl);
                    rt.block_on(s.mirror_put(&sess, ttl + 5, now).wait()).unwrap();
                    m.mirror_put(sess, ttl + 5, now);
                }
                Op::MirrorTomb { id, ttl } => {
                    let id = format!("s{id}");
                    rt.block_on(s.mirror_tomb(&id, now + ttl, now).wait()).unwrap();
                    m.mirror_tomb(&id, now + ttl, now);
                }
                Op::MirrorRevokeUser { user } => {
                    let u = format!("u{user}");
                    rt.block_on(s.mirror_revoke_user(&u, now, now).wait()).unwrap();
                    m.revoke_user(&u, now, false);
                }
                Op::MirrorExpiry { id, ttl } => {
                    let id = format!("s{id}");
                    rt.block_on(s.mirror_expiry(&id, now + ttl, now).wait()).unwrap();
                    m.mirror_expiry(&id, now + ttl, now);
                }
            }
            for i in 0..12 {
                let id = format!("s{i}");
                prop_assert_eq!(s.get(&id, now), m.get(&id, now));
            }
            prop_assert_eq!(s.pending_journal(usize::MAX), m.journal.clone());
            prop_assert_eq!(s.stats().journal_next_seq, m.next_seq);
        }
        drop(s);
        let (s, _) = StoreCore::open_with(model_opts(dir.path()), StoreTuning::default(), now).unwrap();
        for i in 0..12 {
            let id = format!("s{i}");
            prop_assert_eq!(s.get(&id, now), m.get(&id, now));
        }
        for u in 0..4 {
            let u = format!("u{u}");
            prop_assert_eq!(s.list_user(&u, now), m.list_user(&u, now));
        }
        prop_assert_eq!(s.pending_journal(usize::MAX), m.journal);
    }
}

// ---- scale (ignored: run with --ignored --nocapture in release) -----------------------------

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes a log of `n` typical sessions directly (as a previous run would have left it), so
/// that this process's memory holds only what loading builds.
fn write_typical_log(dir: &Path, n: usize, now: UnixSeconds) {
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(dir.join(log::file_name(1))).unwrap());
    f.write_all(&record::header(record::HEADER_LEN as u64)).unwrap();
    let mut buf = Vec::with_capacity(256);
    let mut attrs = BTreeMap::new();
    for i in 0..n {
        attrs.clear();
        attrs.insert("ip".to_string(), format!("10.{}.{}.{}", i % 250, i / 250 % 250, i % 7));
        if i.is_multiple_of(2) {
            attrs.insert("ua".to_string(), "mobile".to_string());
        }
        let id = format!("s{i:09}");
        let user = format!("{}", 1_000_000 + i);
        let email = format!("user{i:07}@example.com");
        buf.clear();
        record::encode_frame(
            &mut buf,
            &Record::Put(PutRecord {
                id: &id,
                user_id: &user,
                email: &email,
                role: "user",
                format: TokenFormat::Enhanced,
                created_at: now,
                expires_at: now + 86_400,
                created_len: 86_400,
                attributes: Attrs::Map(&attrs),
                journal: None,
                issued_at: None,
            }),
        )
        .unwrap();
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

#[test]
#[ignore = "scale measurement: cargo test --release -p sessiond-actors load_one_million -- --ignored --nocapture"]
fn load_one_million_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000;
    write_typical_log(dir.path(), n, NOW);
    let file_len = std::fs::metadata(dir.path().join(log::file_name(1))).unwrap().len();
    let rss_before = vm_kib("VmRSS:");
    let (mut s, report) = StoreCore::open_with(
        opts(dir.path(), FsyncMode::Interval(Duration::from_secs(1)), 2_000_000),
        StoreTuning::default(),
        NOW,
    )
    .unwrap();
    let rss_after = vm_kib("VmRSS:");
    let hwm = vm_kib("VmHWM:");
    assert_eq!(report.sessions, n);
    println!(
        "load: {n} sessions, {file_len} log bytes, {} ms; VmRSS before {} MiB, after {} MiB \
         (+{} MiB), VmHWM {} MiB",
        report.duration_ms,
        rss_before / 1024,
        rss_after / 1024,
        (rss_after - rss_before) / 1024,
        hwm / 1024
    );
    let t = std::time::Instant::now();
    let dropped = s.sweep(NOW + 1);
    println!("sweep of {n} live sessions (none due): {} ms", t.elapsed().as_millis());
    assert_eq!(dropped, 0);
    let t = std::time::Instant::now();
    s.compact(NOW + 1);
    println!("snapshot of {n} sessions queued in {} ms", t.elapsed().as_millis());
    let t = std::time::Instant::now();
    s.flush().unwrap();
    println!(
        "snapshot written and switched after another {} ms ({} bytes)",
        t.elapsed().as_millis(),
        s.stats().log_bytes
    );
    println!("VmHWM after snapshot {} MiB", vm_kib("VmHWM:") / 1024);
}

#[test]
fn a_reader_on_another_thread_sees_every_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open_at(dir.path(), NOW);
    let reader = s.reader();
    let get = |id: &'static str| {
        let r = reader.clone();
        std::thread::spawn(move || r.get(id, NOW)).join().unwrap()
    };
    assert_eq!(get("r-1"), Lookup::Missing);
    create(&mut s, "r-1", "u1", NOW + 60, NOW);
    assert!(matches!(get("r-1"), Lookup::Live(ref x) if x.user_id == "u1"));
    assert_eq!(reader.list_user("u1", NOW).len(), 1);
    refresh(&mut s, "r-1", Some(600), NOW);
    assert!(matches!(get("r-1"), Lookup::Live(ref x) if x.expires_at == NOW + 600));
    revoke(&mut s, "r-1", NOW);
    assert_eq!(get("r-1"), Lookup::Revoked);
    assert!(reader.list_user("u1", NOW).is_empty());
    // The reader keeps the maps alive, but the store's owner alone writes them.
    drop(s);
    assert_eq!(reader.get("r-1", NOW), Lookup::Revoked);
}
