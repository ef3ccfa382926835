//! The FallbackStore actor: owns the [`StoreCore`] and answers the store messages of
//! [`crate::messages`].
//!
//! A mutation is applied to the core at once (so the next message already sees it); the
//! answer then waits, off the actor, for the log write to be durable per the fsync mode, so a
//! write is acknowledged only once it is durable. Concurrent writers share fsyncs: while one
//! batch is being fsynced the actor keeps taking messages, and their records form the next
//! batch. Reads answer from memory at once. Expired entries are swept every
//! [`SWEEP_INTERVAL`]. Start it on its own Arbiter: the core may block it briefly when the
//! writer's queue is full, and while a snapshot is being encoded.
//!
//! In Redis mode it is also the instance's mirror (`MirrorPut`, `MirrorTomb`,
//! `MirrorRevokeUser`, `MirrorExpiry`: applied at once, never journaled; their answers wait
//! off the actor, so `do_send` costs the sender nothing) and, while degraded, keeps the
//! journal of writes to replay into Redis (the `journal` flag of the write messages,
//! `PendingJournal`, `AckJournal`).

use std::time::Duration;

use actix::prelude::*;

use crate::domain::JournalEntry;
use crate::domain::now_seconds;
use crate::health::{CheckHealth, ComponentHealth, Ping};
use crate::messages::{
    AckJournal, CreateSession, FlushStore, GetStoreStats, MirrorExpiry, MirrorPut,
    MirrorRevokeUser, MirrorTomb, PendingJournal, PurgeSession, RefreshSession, RevokeSession,
    RevokeUserSessions,
};
use crate::store::{CreateOutcome, Durable, RefreshOutcome, RevokeOutcome, StoreCore, StoreError};

/// How often expired sessions and tombstones are dropped (and a due snapshot is started).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The FallbackStore actor.
pub struct FallbackStore {
    core: StoreCore,
}

impl FallbackStore {
    /// Wraps an opened store.
    pub fn new(core: StoreCore) -> Self {
        FallbackStore { core }
    }

    /// The store, for direct use before the actor is started or in tests.
    pub fn core(&self) -> &StoreCore {
        &self.core
    }
}

impl Actor for FallbackStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_INTERVAL, |act, _| {
            let dropped = act.core.maintain(now_seconds());
            if dropped > 0 {
                log::debug!("session store sweep dropped {dropped} expired entries");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Err(e) = self.core.flush() {
            log::error!("session store flush at stop failed: {e}");
        }
    }
}

impl Supervised for FallbackStore {}

/// Answers `outcome` once `durable` has resolved.
fn when_durable<T: 'static>(outcome: T, durable: Durable) -> ResponseFuture<Result<T, StoreError>> {
    Box::pin(async move { durable.wait().await.map(|()| outcome) })
}

impl Handler<CreateSession> for FallbackStore {
    type Result = ResponseFuture<Result<CreateOutcome, StoreError>>;

    fn handle(&mut self, msg: CreateSession, _: &mut Self::Context) -> Self::Result {
        let (outcome, durable) = if msg.journal {
            self.core.create_journaled(msg.new, now_seconds())
        } else {
            self.core.create(msg.new, now_seconds())
        };
        when_durable(outcome, durable)
    }
}

impl Handler<RefreshSession> for FallbackStore {
    type Result = ResponseFuture<Result<RefreshOutcome, StoreError>>;

    fn handle(&mut self, msg: RefreshSession, _: &mut Self::Context) -> Self::Result {
        let (sid, ttl, now) = (&msg.session_id, msg.ttl_seconds, now_seconds());
        let (outcome, durable) = if msg.journal {
            self.core.refresh_journaled(sid, ttl, now)
        } else {
            self.core.refresh(sid, ttl, now)
        };
        when_durable(outcome, durable)
    }
}

impl Handler<RevokeSession> for FallbackStore {
    type Result = ResponseFuture<Result<RevokeOutcome, StoreError>>;

    fn handle(&mut self, msg: RevokeSession, _: &mut Self::Context) -> Self::Result {
        let (outcome, durable) = if msg.journal {
            self.core.revoke_journaled(&msg.session_id, now_seconds())
        } else {
            self.core.revoke(&msg.session_id, now_seconds())
        };
        when_durable(outcome, durable)
    }
}

impl Handler<PurgeSession> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: PurgeSession, _: &mut Self::Context) -> Self::Result {
        let durable = self.core.purge(&msg.session_id, now_seconds());
        when_durable((), durable)
    }
}

/// The journal is reported `degraded` from this share of its capacity on: writes taken in
/// degraded mode will soon be refused.
const JOURNAL_WARN_SHARE: f64 = 0.9;

impl Handler<CheckHealth> for FallbackStore {
    type Result = MessageResult<CheckHealth>;

    fn handle(&mut self, _: CheckHealth, _: &mut Self::Context) -> Self::Result {
        let s = self.core.stats();
        let now_ms = crate::domain::now_millis();
        let journal_full =
            s.journal_max > 0 && s.journal_len as f64 >= s.journal_max as f64 * JOURNAL_WARN_SHARE;
        MessageResult(ComponentHealth::judge(
            (!s.log_healthy).then_some("the log cannot be written: writes are refused"),
            journal_full.then_some("the degraded-mode journal is nearly full"),
            serde_json::json!({
                "sessions_held": s.live_sessions,
                "revocations_held": s.tombstones,
                "users": s.users,
                "journal_backlog": s.journal_len,
                "journal_capacity": s.journal_max,
                "log_bytes": s.log_bytes,
                "log_generation": s.generation,
                "log_writable": s.log_healthy,
                "write_errors": s.write_errors,
                "last_fsync_at_ms": s.last_fsync_at_ms,
                "last_fsync_ago_ms": s.last_fsync_at_ms.map(|t| now_ms.saturating_sub(t)),
                "compactions": s.compactions,
                "mirror_skipped": s.mirror_skipped,
                "revoke_all_watermarks": s.watermarks,
            }),
        ))
    }
}

impl Handler<Ping> for FallbackStore {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

#[cfg(debug_assertions)]
impl Handler<crate::messages::Wedge> for FallbackStore {
    type Result = ();

    fn handle(&mut self, msg: crate::messages::Wedge, _: &mut Self::Context) {
        log::warn!("test hook: the fallback store actor is wedged for {:?}", msg.0);
        std::thread::sleep(msg.0);
    }
}

impl Handler<RevokeUserSessions> for FallbackStore {
    type Result = ResponseFuture<Result<Vec<String>, StoreError>>;

    fn handle(&mut self, msg: RevokeUserSessions, _: &mut Self::Context) -> Self::Result {
        let (ids, durable) = if msg.journal {
            self.core.revoke_user_journaled(&msg.user_id, now_seconds())
        } else {
            self.core.revoke_user(&msg.user_id, now_seconds())
        };
        when_durable(ids, durable)
    }
}

impl Handler<GetStoreStats> for FallbackStore {
    type Result = MessageResult<GetStoreStats>;

    fn handle(&mut self, _: GetStoreStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.stats())
    }
}

impl Handler<FlushStore> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, _: FlushStore, _: &mut Self::Context) -> Self::Result {
        let durable = self.core.flush_durable();
        Box::pin(durable.wait())
    }
}

impl Handler<MirrorPut> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: MirrorPut, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.core.mirror_put(&msg.session, msg.created_len, now_seconds()).wait())
    }
}

impl Handler<MirrorTomb> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: MirrorTomb, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.core.mirror_tomb(&msg.session_id, msg.until, now_seconds()).wait())
    }
}

impl Handler<MirrorRevokeUser> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: MirrorRevokeUser, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.core.mirror_revoke_user(&msg.user_id, msg.at, now_seconds()).wait())
    }
}

impl Handler<MirrorExpiry> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: MirrorExpiry, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.core.mirror_expiry(&msg.session_id, msg.expires_at, now_seconds()).wait())
    }
}

impl Handler<PendingJournal> for FallbackStore {
    type Result = ResponseFuture<Vec<JournalEntry>>;

    fn handle(&mut self, msg: PendingJournal, _: &mut Self::Context) -> Self::Result {
        let entries = self.core.pending_journal(msg.max);
        // Nothing leaves the store before it is durable.
        let durable = if entries.is_empty() { Durable::ready() } else { self.core.barrier() };
        Box::pin(async move {
            match durable.wait().await {
                Ok(()) => entries,
                Err(e) => {
                    log::warn!("journal entries not handed out: they are not durable: {e}");
                    Vec::new()
                }
            }
        })
    }
}

impl Handler<AckJournal> for FallbackStore {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: AckJournal, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.core.ack_journal(msg.up_to).wait())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::domain::{Identity, JournalOp, NewSession, Session, TokenFormat};
    use crate::store::{FsyncMode, Lookup, StoreOptions, StoreStats, StoreTuning};

    fn open(dir: &Path, fsync: FsyncMode) -> StoreCore {
        StoreCore::open(StoreOptions {
            data_dir: dir.to_path_buf(),
            fsync,
            max_entries: 1_000_000,
            max_ttl_seconds: 86_400,
        })
        .unwrap()
        .0
    }

    fn new_session(id: &str, user: &str) -> NewSession {
        let exp = now_seconds() + 3600;
        NewSession {
            identity: Identity {
                user_id: user.to_string(),
                email: format!("{user}@example.com"),
                role: "user".to_string(),
                session_id: id.to_string(),
                format: TokenFormat::Legacy,
                issued_at: None,
                expires_at: exp,
            },
            expires_at: exp,
            attributes: BTreeMap::new(),
        }
    }

    #[actix_rt::test]
    async fn every_message_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(dir.path(), FsyncMode::Always);
        let reader = core.reader();
        let addr = FallbackStore::new(core).start();
        let created = addr
            .send(CreateSession { new: new_session("s1", "u1"), journal: false })
            .await
            .unwrap()
            .unwrap();
        let CreateOutcome::Created(s1) = created else { panic!("{created:?}") };
        let again = addr
            .send(CreateSession { new: new_session("s1", "u1"), journal: false })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, CreateOutcome::Existing(s1.clone()));
        assert_eq!(reader.get("s1", now_seconds()), Lookup::Live(s1.clone()));
        let refreshed = addr
            .send(RefreshSession { session_id: "s1".into(), ttl_seconds: Some(60), journal: false })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(refreshed, RefreshOutcome::Refreshed(_)));
        assert_eq!(reader.list_user("u1", now_seconds()).len(), 1);
        addr.send(CreateSession { new: new_session("s2", "u1"), journal: false })
            .await
            .unwrap()
            .unwrap();
        let revoked = addr
            .send(RevokeSession { session_id: "s2".into(), journal: false })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked, RevokeOutcome { newly_revoked: true, user_id: Some("u1".into()) });
        let ids = addr
            .send(RevokeUserSessions { user_id: "u1".into(), journal: false })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids, ["s1"]);
        let stats: StoreStats = addr.send(GetStoreStats).await.unwrap();
        assert_eq!((stats.live_sessions, stats.tombstones), (0, 2));
        assert!(stats.last_fsync_at_ms.is_some());
        addr.send(FlushStore).await.unwrap().unwrap();
    }

    #[actix_rt::test]
    async fn journal_and_mirror_messages() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(dir.path(), FsyncMode::Always);
        let reader = core.reader();
        let addr = FallbackStore::new(core).start();
        let out = addr
            .send(CreateSession { new: new_session("j1", "u1"), journal: true })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(out, CreateOutcome::Created(_)));
        let refreshed = addr
            .send(RefreshSession { session_id: "j1".into(), ttl_seconds: Some(60), journal: true })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(refreshed, RefreshOutcome::Refreshed(_)));
        addr.send(RevokeSession { session_id: "x".into(), journal: true }).await.unwrap().unwrap();
        let ids = addr
            .send(RevokeUserSessions { user_id: "u1".into(), journal: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids, ["j1"]);
        let pending = addr.send(PendingJournal { max: 3 }).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(matches!(pending[0].op, JournalOp::Put { .. }));
        addr.send(AckJournal { up_to: 2 }).await.unwrap().unwrap();
        let pending = addr.send(PendingJournal { max: 100 }).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(matches!(pending[2].op, JournalOp::RevokeUser { .. }));
        let stats = addr.send(GetStoreStats).await.unwrap();
        assert_eq!(
            (stats.journal_len, stats.journal_oldest_seq, stats.journal_next_seq),
            (3, Some(3), 6)
        );

        // Mirror writes, fire-and-forget: applied in mailbox order, never journaled.
        let now = now_seconds();
        let mut m = match addr
            .send(CreateSession { new: new_session("tmp", "u2"), journal: false })
            .await
            .unwrap()
            .unwrap()
        {
            CreateOutcome::Created(s) => s,
            other => panic!("{other:?}"),
        };
        m.session_id = "m1".into();
        addr.do_send(MirrorPut { session: m.clone(), created_len: 3600 });
        addr.do_send(MirrorPut {
            session: Session { session_id: "m2".into(), ..m.clone() },
            created_len: 3600,
        });
        addr.do_send(MirrorTomb { session_id: "m2".into(), until: now + 600 });
        addr.do_send(MirrorExpiry { session_id: "m1".into(), expires_at: now + 120 });
        // A message answered after the fire-and-forget ones: they have been applied.
        addr.send(GetStoreStats).await.unwrap();
        let got = reader.get("m1", now);
        assert_eq!(got, Lookup::Live(Session { expires_at: now + 120, ..m.clone() }));
        assert_eq!(reader.get("m2", now), Lookup::Revoked);
        addr.send(MirrorRevokeUser { user_id: "u2".into(), at: i64::MAX }).await.unwrap().unwrap();
        assert_eq!(reader.get("m1", now), Lookup::Revoked);
        assert_eq!(reader.get("tmp", now), Lookup::Revoked);
        assert_eq!(addr.send(GetStoreStats).await.unwrap().journal_len, 3);
        addr.send(AckJournal { up_to: 5 }).await.unwrap().unwrap();
        assert!(addr.send(PendingJournal { max: 100 }).await.unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn a_full_journal_refuses_journaled_writes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            data_dir: dir.path().to_path_buf(),
            fsync: FsyncMode::Never,
            max_entries: 1000,
            max_ttl_seconds: 86_400,
        };
        let tuning = StoreTuning { max_journal: 1, ..StoreTuning::default() };
        let core = StoreCore::open_with(opts, tuning, now_seconds()).unwrap().0;
        let reader = core.reader();
        let addr = FallbackStore::new(core).start();
        addr.send(RevokeSession { session_id: "a".into(), journal: true }).await.unwrap().unwrap();
        let err = addr
            .send(RevokeSession { session_id: "b".into(), journal: true })
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.0.contains("journal is full"), "{err}");
        let out = addr
            .send(CreateSession { new: new_session("c", "u"), journal: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, CreateOutcome::Full);
        // Not journaled: still taken.
        addr.send(RevokeSession { session_id: "b".into(), journal: false }).await.unwrap().unwrap();
        assert_eq!(reader.get("b", now_seconds()), Lookup::Revoked);
    }

    /// Many concurrent writers with `Always`: every acknowledged write is in the log.
    async fn concurrent_writers(dir: &Path, writers: usize, per_writer: usize) -> f64 {
        let addr = FallbackStore::new(open(dir, FsyncMode::Always)).start();
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let addr = addr.clone();
                actix_rt::spawn(async move {
                    for i in 0..per_writer {
                        let out = addr
                            .send(CreateSession {
                                new: new_session(&format!("w{w}-{i}"), &format!("u{w}")),
                                journal: false,
                            })
                            .await
                            .unwrap()
                            .unwrap();
                        assert!(matches!(out, CreateOutcome::Created(_)));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let rate = (writers * per_writer) as f64 / started.elapsed().as_secs_f64();
        let stats = addr.send(GetStoreStats).await.unwrap();
        assert_eq!(stats.write_errors, 0);
        // The acks came before stopping: what reopening finds was fsynced by then. Stop the
        // actor without a flush first (its core is dropped with it).
        System::current().stop_with_code(0);
        rate
    }

    #[test]
    fn concurrent_always_writers_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new();
        sys.block_on(concurrent_writers(dir.path(), 64, 20));
        drop(sys);
        // A fresh open finds every acknowledged session.
        let core = open(dir.path(), FsyncMode::Always);
        assert_eq!(core.stats().live_sessions, 64 * 20);
        for w in 0..64 {
            assert_eq!(core.list_user(&format!("u{w}"), now_seconds()).len(), 20);
        }
    }

    #[test]
    #[ignore = "throughput measurement: cargo test --release -p sessiond-actors always_64 -- --ignored --nocapture"]
    fn always_64_writers_rate() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::new();
        let rate = sys.block_on(concurrent_writers(dir.path(), 64, 1000));
        println!(
            "fsync=always, 64 concurrent writers through the actor: {rate:.0} acknowledged writes/s"
        );
    }
}
