//! The embedded durable session store: sessions and revocations in memory, every write
//! appended to a checksummed MessagePack log in `data_dir` by a dedicated writer thread,
//! compacted by snapshot, reloaded on open. `docs/storage.md` describes the files, the
//! records, the memory layout and what each fsync mode guarantees.
//!
//! [`StoreCore`] is a plain struct (the FallbackStore actor wraps it): every mutation is
//! applied in memory at once and answers a [`Durable`] that resolves when the log write is
//! durable per the [`FsyncMode`]. Reads never touch the disk.
//!
//! In Redis mode the store is also the instance's mirror (`mirror_*`: writes seen in Redis) and
//! keeps the journal of writes taken while degraded (`*_journaled`, [`StoreCore::pending_journal`],
//! [`StoreCore::ack_journal`]): each entry is recorded by the same log frame as its write.

mod journal;
mod log;
mod record;
mod state;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

#[cfg(doc)]
use crate::domain::JournalOp;
use crate::domain::{JournalEntry, NewSession, Session, UnixSeconds};
use journal::Journal;
use record::{
    Attrs, ExpiryRecord, JournalAckRecord, JournalBody, PurgeRecord, PutRecord, Record,
    RevokeUserRecord, TombRecord, WatermarkRecord,
};
use state::{NewRow, State};
use writer::{Ack, Writer, WriterSetup};

pub use record::{FORMAT_VERSION, MAX_PAYLOAD_BYTES};
pub use writer::MAX_QUEUED_BYTES;

/// When the log is fsynced (`fallback.fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// Every write is fsynced before it is acknowledged; concurrent writers share an fsync.
    Always,
    /// Writes reach the OS before they are acknowledged; fsync runs every given interval.
    Interval(Duration),
    /// Writes reach the OS before they are acknowledged; the OS decides when they hit the disk.
    Never,
}

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Where the log and snapshots live (`fallback.data_dir`); created if missing.
    pub data_dir: PathBuf,
    /// The fsync policy.
    pub fsync: FsyncMode,
    /// The most sessions plus tombstones held; creates beyond it answer [`CreateOutcome::Full`].
    pub max_entries: usize,
    /// `sessions.max_ttl_seconds`: no expiry is ever set further than this ahead of now.
    pub max_ttl_seconds: i64,
}

/// Knobs that are not configuration: defaults suit production, tests make them small.
#[derive(Clone, Debug)]
pub struct StoreTuning {
    /// A snapshot is written once the log is larger than the larger of this and twice the
    /// size of the last snapshot. Default 64 MiB.
    pub compact_min_bytes: u64,
    /// After a failed snapshot (or a failed write), the next attempt waits this long.
    /// Default 10 s.
    pub snapshot_retry: Duration,
    /// The most journal entries held (writes taken while degraded, not yet replayed); a
    /// journaling write that would go beyond it is refused. Default 1,000,000
    /// ([`DEFAULT_MAX_JOURNAL`]).
    pub max_journal: usize,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            compact_min_bytes: DEFAULT_COMPACT_MIN_BYTES,
            snapshot_retry: Duration::from_secs(10),
            max_journal: DEFAULT_MAX_JOURNAL,
        }
    }
}

/// The default floor of the compaction threshold.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 << 20;

/// The default bound of the journal ([`StoreTuning::max_journal`]).
pub const DEFAULT_MAX_JOURNAL: usize = 1_000_000;

/// The message of the error a journaling write is refused with when the journal is full.
pub const JOURNAL_FULL: &str =
    "the journal is full: writes taken while degraded wait for their replay into Redis";

/// Snapshot frames are handed to the writer in chunks of about this size.
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;
/// The most revoke-all watermarks held; past it the one that ends first is forgotten (with a
/// warning): the tombstones of the sessions a revoke-all found stay, only the refusal of
/// older tokens of that user is lost.
pub const MAX_WATERMARKS: usize = 100_000;

/// What loading found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    /// Live sessions after loading.
    pub sessions: usize,
    /// Live tombstones after loading.
    pub tombstones: usize,
    /// Records read and applied.
    pub records: u64,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub truncated_bytes: u64,
    /// How long loading took.
    pub duration_ms: u64,
    /// The generation file loaded.
    pub generation: u64,
    /// Well-formed records of a kind this build does not know, skipped.
    pub skipped_records: u64,
    /// Sessions and tombstones dropped because they had expired.
    pub expired_dropped: usize,
    /// Bytes in the log after loading.
    pub log_bytes: u64,
    /// Journal entries not yet replayed, after loading.
    pub journal_entries: usize,
    /// The sequence number the next journal entry gets.
    pub journal_next_seq: u64,
}

/// Counters for health and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreStats {
    /// Sessions held (an expired one counts until the next sweep).
    pub live_sessions: usize,
    /// Tombstones held (an expired one counts until the next sweep).
    pub tombstones: usize,
    /// Bytes in the current log generation.
    pub log_bytes: u64,
    /// Unix ms of the last successful fsync, if any.
    pub last_fsync_at_ms: Option<i64>,
    /// Failed log I/O operations (writes, fsyncs, snapshot steps) since open.
    pub write_errors: u64,
    /// Users with at least one session held.
    pub users: usize,
    /// The current log generation.
    pub generation: u64,
    /// Snapshots completed since open.
    pub compactions: u64,
    /// False while the log is poisoned by a write error (writes fail until a snapshot
    /// rewrites the state).
    pub log_healthy: bool,
    /// Journal entries not yet replayed into Redis (the degraded-mode backlog).
    pub journal_len: usize,
    /// The most journal entries held ([`StoreTuning::max_journal`]).
    pub journal_max: usize,
    /// The sequence number of the oldest journal entry not yet replayed, if any.
    pub journal_oldest_seq: Option<u64>,
    /// The sequence number the next journal entry gets (the first is 1).
    pub journal_next_seq: u64,
    /// Every journal entry up to this sequence number has been replayed (0: none).
    pub journal_acked_seq: u64,
    /// Mirror puts of new sessions skipped because `max_entries` were held, since open.
    pub mirror_skipped: u64,
    /// Revoke-all watermarks held (users whose older tokens are refused), at most
    /// [`MAX_WATERMARKS`].
    pub watermarks: usize,
}

/// A durability failure: the write could not be made durable and is not acknowledged.
/// The in-memory state may already hold it, and a later snapshot may still persist it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// The answer to [`StoreCore::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Stored (and being logged).
    Created(Session),
    /// A live session with this id and user already exists: here it is.
    Existing(Session),
    /// The id is revoked.
    Revoked,
    /// A live session with this id belongs to another user.
    Conflict,
    /// `max_entries` are held, or (journaling) the journal is full.
    Full,
}

/// The answer to [`StoreCore::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The session is live.
    Live(Session),
    /// The id is revoked.
    Revoked,
    /// Unknown or expired.
    Missing,
}

/// The answer to [`StoreCore::refresh`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The session with its new expiry.
    Refreshed(Session),
    /// The id is revoked.
    Revoked,
    /// Unknown or expired.
    Missing,
}

/// The answer to [`StoreCore::revoke`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// False when the id was already revoked.
    pub newly_revoked: bool,
    /// The user of the live session that was revoked, if there was one.
    pub user_id: Option<String>,
}

enum DurableState {
    Ready,
    Failed(StoreError),
    Pending(tokio::sync::oneshot::Receiver<Result<(), StoreError>>),
}

/// Resolves once a write is durable per the fsync mode.
///
/// When it resolves to an error the outcome it came with must not be acknowledged.
#[must_use = "a write is acknowledged only once its Durable has resolved"]
pub struct Durable(DurableState);

impl Durable {
    /// Already durable (nothing was written, or nothing was pending).
    pub fn ready() -> Durable {
        Durable(DurableState::Ready)
    }

    /// Failed before anything was written.
    pub fn failed(e: StoreError) -> Durable {
        Durable(DurableState::Failed(e))
    }

    fn pending() -> (Durable, Ack) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Durable(DurableState::Pending(rx)), Ack::Async(tx))
    }

    /// Whether it resolves without waiting.
    pub fn is_ready(&self) -> bool {
        !matches!(self.0, DurableState::Pending(_))
    }

    /// Waits until the write is durable (or failed).
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            DurableState::Ready => Ok(()),
            DurableState::Failed(e) => Err(e),
            DurableState::Pending(rx) => {
                rx.await.unwrap_or_else(|_| Err(StoreError("log writer stopped".into())))
            }
        }
    }
}

/// The store: in-memory maps plus the handle on the log writer.
///
/// Dropping it writes and fsyncs everything queued, stops the writer and releases the lock.
pub struct StoreCore {
    /// Written only by the owner of the core (the FallbackStore actor); read inline by
    /// [`StoreReader`]s on other threads.
    state: Arc<RwLock<State>>,
    max_entries: usize,
    max_ttl: i64,
    tuning: StoreTuning,
    /// Declared before `_lock`: the writer is stopped before the lock is released.
    writer: Writer,
    _lock: File,
    scratch: Vec<u8>,
    next_generation: u64,
    last_full_sweep: Option<UnixSeconds>,
    over_capacity_warned: bool,
    last_snapshot_attempt: Option<Instant>,
    /// Writes taken while degraded, not yet replayed (owned here: readers never see it).
    journal: Journal,
    journal_full_warned: bool,
    mirror_skipped: u64,
    mirror_full_warned: bool,
}

fn store_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl StoreCore {
    /// Opens (or creates) the store in `o.data_dir` at the current time.
    pub fn open(o: StoreOptions) -> std::io::Result<(StoreCore, LoadReport)> {
        StoreCore::open_with(o, StoreTuning::default(), crate::domain::now_seconds())
    }

    /// Opens the store with explicit tuning, dropping what has expired at `now`.
    pub fn open_with(
        o: StoreOptions,
        tuning: StoreTuning,
        now: UnixSeconds,
    ) -> std::io::Result<(StoreCore, LoadReport)> {
        let started = Instant::now();
        std::fs::create_dir_all(&o.data_dir)?;
        let lock = log::lock_dir(&o.data_dir)?;
        let mut state = State::default();
        let mut journal = Journal::default();
        let mut sink =
            Loader { state: &mut state, journal: &mut journal, max_entries: o.max_entries };
        let loaded = log::load(&o.data_dir, &mut sink)?;
        let expired_dropped = state.sweep(now);
        state.shrink();
        journal.shrink();
        let writer = Writer::start(WriterSetup {
            dir: o.data_dir.clone(),
            file: loaded.file,
            path: loaded.path,
            generation: loaded.generation,
            len: loaded.len,
            mode: o.fsync,
            compact_min_bytes: tuning.compact_min_bytes,
            base_len: loaded.base_len,
        })?;
        let report = LoadReport {
            sessions: state.session_count(),
            tombstones: state.tombstone_count(),
            records: loaded.records,
            truncated_bytes: loaded.truncated_bytes,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            generation: loaded.generation,
            skipped_records: loaded.skipped_records,
            expired_dropped,
            log_bytes: loaded.len,
            journal_entries: journal.len(),
            journal_next_seq: journal.next_seq(),
        };
        ::log::info!(
            "session store loaded from {}: {} sessions, {} tombstones, {} records in {} ms",
            o.data_dir.display(),
            report.sessions,
            report.tombstones,
            report.records,
            report.duration_ms
        );
        if let Some(oldest) = journal.oldest_seq() {
            ::log::info!(
                "session store journal holds {} writes not yet replayed into Redis (seq {oldest} \
                 to {})",
                journal.len(),
                journal.next_seq() - 1
            );
        }
        let core = StoreCore {
            state: Arc::new(RwLock::new(state)),
            max_entries: o.max_entries,
            max_ttl: o.max_ttl_seconds.max(0),
            tuning,
            writer,
            _lock: lock,
            scratch: Vec::with_capacity(1024),
            next_generation: loaded.generation + 1,
            last_full_sweep: None,
            over_capacity_warned: false,
            last_snapshot_attempt: None,
            journal,
            journal_full_warned: false,
            mirror_skipped: 0,
            mirror_full_warned: false,
        };
        Ok((core, report))
    }

    /// Records a new session: `Revoked` when the id has a live tombstone; `Existing` (the
    /// stored one) or `Conflict` when a live session has the id (same user or not); `Full` when
    /// `max_entries` are held after dropping expired entries; else `Created` with
    /// `created_at = now` and `expires_at = new.expires_at` (already capped by the caller).
    /// When the `Durable` fails the outcome must not be acknowledged.
    pub fn create(&mut self, new: NewSession, now: UnixSeconds) -> (CreateOutcome, Durable) {
        self.create_impl(new, now, false)
    }

    /// [`Self::create`], and a `Created` session is also a journal entry
    /// ([`JournalOp::Put`]) recorded by the same log frame. Answers `Full` as well when the
    /// journal holds [`StoreTuning::max_journal`] entries.
    pub fn create_journaled(
        &mut self,
        new: NewSession,
        now: UnixSeconds,
    ) -> (CreateOutcome, Durable) {
        self.create_impl(new, now, true)
    }

    fn create_impl(
        &mut self,
        new: NewSession,
        now: UnixSeconds,
        journal: bool,
    ) -> (CreateOutcome, Durable) {
        let id = new.identity.session_id.as_str();
        let st = self.st();
        if st.tombstone(id).is_some_and(|until| until > now) {
            drop(st);
            return (CreateOutcome::Revoked, self.barrier());
        }
        if let Some(slot) = st.session(id)
            && slot.expires_at > now
        {
            let outcome = match slot.fields() {
                Some(f) if f.user_id == new.identity.user_id => {
                    CreateOutcome::Existing(f.to_session(id, slot.expires_at))
                }
                Some(_) => CreateOutcome::Conflict,
                None => {
                    ::log::error!("session {id:?} is corrupt in memory");
                    CreateOutcome::Conflict
                }
            };
            drop(st);
            return (outcome, self.barrier());
        }
        // A revoke-all of the user refuses every token issued at or before it (one without
        // `iat` counts as issued now): a re-create of a session it revoked elsewhere, or a
        // session of a token stolen before it, is refused, and the id tombstoned until the
        // session would have expired (as Redis does), so that it answers revoked.
        let issued = new.identity.issued_at.unwrap_or(now);
        let marked = st.watermark(&new.identity.user_id, now).is_some_and(|at| issued <= at);
        drop(st);
        if marked {
            // Taken while degraded, the revocation goes to Redis too (as a DELETE would);
            // otherwise a tombstone until the session would have expired, as Redis keeps.
            let durable = if journal {
                self.revoke_journaled(id, now).1
            } else {
                self.mirror_tomb(id, new.expires_at, now)
            };
            return (CreateOutcome::Revoked, durable);
        }
        if journal && !self.journal_room(1) {
            return (CreateOutcome::Full, Durable::ready());
        }
        if self.entries() >= self.max_entries {
            self.sweep_when_full(now);
            if self.entries() >= self.max_entries {
                return (CreateOutcome::Full, Durable::ready());
            }
        }
        let seq = journal.then(|| self.journal.next_seq());
        let ident = &new.identity;
        let created_len = new.expires_at.saturating_sub(now);
        let put = PutRecord {
            id,
            user_id: &ident.user_id,
            email: &ident.email,
            role: &ident.role,
            format: ident.format,
            created_at: now,
            expires_at: new.expires_at,
            created_len,
            attributes: Attrs::Map(&new.attributes),
            journal: seq,
            issued_at: ident.issued_at,
        };
        let entry = match seq.map(|seq| journal::encode_entry(seq, journal::put_body(&put))) {
            Some(Err(e)) => return (CreateOutcome::Full, Durable::failed(store_err(e))),
            Some(Ok(payload)) => Some(payload),
            None => None,
        };
        self.scratch.clear();
        if let Err(e) = record::encode_frame(&mut self.scratch, &Record::Put(put)) {
            return (CreateOutcome::Full, Durable::failed(store_err(e)));
        }
        self.st_mut().insert_session(
            id,
            NewRow {
                user_id: &ident.user_id,
                email: &ident.email,
                role: &ident.role,
                format: ident.format,
                created_at: now,
                expires_at: new.expires_at,
                created_len,
                attributes: new.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            },
        );
        let durable = self.submit_scratch();
        let NewSession { identity, expires_at, attributes } = new;
        let session = Session {
            session_id: identity.session_id,
            user_id: identity.user_id,
            email: identity.email,
            role: identity.role,
            format: identity.format,
            created_at: now,
            expires_at,
            attributes,
        };
        if let (Some(seq), Some(payload)) = (seq, entry) {
            self.journal.push(seq, payload);
        }
        self.after_write(now);
        (CreateOutcome::Created(session), durable)
    }

    /// Looks a session up.
    pub fn get(&self, sid: &str, now: UnixSeconds) -> Lookup {
        lookup(&self.st(), sid, now)
    }

    /// A read-only view of the maps for other threads: reads see every write the moment it is
    /// applied, like [`Self::get`] does, without a message to the owner.
    pub fn reader(&self) -> StoreReader {
        StoreReader { state: Arc::clone(&self.state) }
    }

    fn st(&self) -> RwLockReadGuard<'_, State> {
        // A panic while the lock was held leaves maps that are still consistent per entry.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn st_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes a live session's expiry to `now + ttl` (or `now +` its created length),
    /// never beyond `now + max_ttl_seconds`.
    pub fn refresh(
        &mut self,
        sid: &str,
        ttl: Option<i64>,
        now: UnixSeconds,
    ) -> (RefreshOutcome, Durable) {
        self.refresh_impl(sid, ttl, now, false)
    }

    /// [`Self::refresh`], and a `Refreshed` session is also a journal entry
    /// ([`JournalOp::Expiry`]) recorded by the same log frame. When the journal is full the
    /// refresh is refused: nothing changes and the `Durable` fails ([`JOURNAL_FULL`]).
    pub fn refresh_journaled(
        &mut self,
        sid: &str,
        ttl: Option<i64>,
        now: UnixSeconds,
    ) -> (RefreshOutcome, Durable) {
        self.refresh_impl(sid, ttl, now, true)
    }

    fn refresh_impl(
        &mut self,
        sid: &str,
        ttl: Option<i64>,
        now: UnixSeconds,
        journal: bool,
    ) -> (RefreshOutcome, Durable) {
        let st = self.st();
        let (session, expires_at) = match st.session(sid) {
            Some(slot) if slot.expires_at > now => match slot.fields() {
                Some(f) => {
                    let len = ttl.unwrap_or(f.created_len);
                    let expires_at = now.saturating_add(len).min(now.saturating_add(self.max_ttl));
                    (f.to_session(sid, expires_at), expires_at)
                }
                None => {
                    ::log::error!("session {sid:?} is corrupt in memory");
                    return (RefreshOutcome::Missing, Durable::ready());
                }
            },
            _ => {
                let revoked = st.tombstone(sid).is_some_and(|until| until > now);
                drop(st);
                if revoked {
                    return (RefreshOutcome::Revoked, self.barrier());
                }
                return (RefreshOutcome::Missing, Durable::ready());
            }
        };
        drop(st);
        if journal && !self.journal_room(1) {
            return (RefreshOutcome::Missing, journal_full());
        }
        let seq = journal.then(|| self.journal.next_seq());
        let exp = ExpiryRecord { id: sid, expires_at, journal: seq };
        let entry = match seq.map(|seq| journal::encode_entry(seq, journal::expiry_body(&exp))) {
            Some(Err(e)) => return (RefreshOutcome::Missing, Durable::failed(store_err(e))),
            Some(Ok(payload)) => Some(payload),
            None => None,
        };
        self.scratch.clear();
        if let Err(e) = record::encode_frame(&mut self.scratch, &Record::Expiry(exp)) {
            return (RefreshOutcome::Missing, Durable::failed(store_err(e)));
        }
        self.st_mut().set_expiry(sid, expires_at);
        let durable = self.submit_scratch();
        if let (Some(seq), Some(payload)) = (seq, entry) {
            self.journal.push(seq, payload);
        }
        self.after_write(now);
        (RefreshOutcome::Refreshed(session), durable)
    }

    /// Revokes a session id; never refused, even when full.
    pub fn revoke(&mut self, sid: &str, now: UnixSeconds) -> (RevokeOutcome, Durable) {
        self.revoke_impl(sid, now, false)
    }

    /// [`Self::revoke`], and a new revocation (`newly_revoked`) is also a journal entry
    /// ([`JournalOp::Tomb`], with the session's user when it was live) recorded by the same
    /// log frame. When the journal is full the revocation is refused (a revocation that could
    /// not be replayed would be lost silently): nothing changes and the `Durable` fails
    /// ([`JOURNAL_FULL`]).
    pub fn revoke_journaled(&mut self, sid: &str, now: UnixSeconds) -> (RevokeOutcome, Durable) {
        self.revoke_impl(sid, now, true)
    }

    fn revoke_impl(
        &mut self,
        sid: &str,
        now: UnixSeconds,
        journal: bool,
    ) -> (RevokeOutcome, Durable) {
        let st = self.st();
        let live = st.session(sid).filter(|s| s.expires_at > now);
        let live_until = live.map(|s| s.expires_at);
        // The user goes into the journal entry; only read when journaling.
        let live_user = live.filter(|_| journal).and_then(|s| s.fields()).map(|f| f.user_id);
        let live_user = live_user.map(str::to_string);
        let earlier = st.tombstone(sid);
        drop(st);
        let until = match live_until {
            Some(exp) => exp,
            None => {
                if earlier.is_some_and(|until| until > now) {
                    let outcome = RevokeOutcome { newly_revoked: false, user_id: None };
                    return (outcome, self.barrier());
                }
                // Unknown (or expired): refuse the id for as long as any session could live.
                now.saturating_add(self.max_ttl)
            }
        };
        let until = until.max(earlier.unwrap_or(until));
        if journal && !self.journal_room(1) {
            let outcome = RevokeOutcome { newly_revoked: false, user_id: None };
            return (outcome, journal_full());
        }
        let seq = journal.then(|| self.journal.next_seq());
        let tomb = TombRecord { id: sid, until, journal: seq, user_id: live_user.as_deref() };
        let not_revoked = || RevokeOutcome { newly_revoked: false, user_id: None };
        let entry = match seq.map(|seq| journal::encode_entry(seq, journal::tomb_body(&tomb))) {
            Some(Err(e)) => return (not_revoked(), Durable::failed(store_err(e))),
            Some(Ok(payload)) => Some(payload),
            None => None,
        };
        self.scratch.clear();
        if let Err(e) = record::encode_frame(&mut self.scratch, &Record::Tomb(tomb)) {
            return (not_revoked(), Durable::failed(store_err(e)));
        }
        let (removed, _) = self.st_mut().put_tombstone(sid, until);
        let user_id = match live_until {
            Some(_) => removed.map(|(_, user)| user),
            None => None,
        };
        let durable = self.submit_scratch();
        if let (Some(seq), Some(payload)) = (seq, entry) {
            self.journal.push(seq, payload);
        }
        self.check_capacity();
        self.after_write(now);
        (RevokeOutcome { newly_revoked: true, user_id }, durable)
    }

    /// Forgets a session id entirely (its session and its tombstone), durably. Only for the
    /// self-test's own sessions: a real revocation must never be forgotten.
    pub fn purge(&mut self, sid: &str, now: UnixSeconds) -> Durable {
        self.scratch.clear();
        if let Err(e) =
            record::encode_frame(&mut self.scratch, &Record::Purge(PurgeRecord { id: sid }))
        {
            return Durable::failed(store_err(e));
        }
        self.st_mut().purge(sid);
        let durable = self.submit_scratch();
        self.after_write(now);
        durable
    }

    /// The live sessions of a user, by `created_at` then id.
    pub fn list_user(&self, uid: &str, now: UnixSeconds) -> Vec<Session> {
        list_for_user(&self.st(), uid, now)
    }

    /// Revokes every live session of a user; answers their ids (in [`Self::list_user`]
    /// order). One durability wait covers them all.
    pub fn revoke_user(&mut self, uid: &str, now: UnixSeconds) -> (Vec<String>, Durable) {
        self.revoke_user_impl(uid, now, false, UnixSeconds::MAX)
    }

    /// [`Self::revoke_user`], journaled: one [`JournalOp::Tomb`] per revoked session (in the
    /// answered order) and then [`JournalOp::RevokeUser`] `{ at: now }`, each recorded by the
    /// frame that records the change. The `RevokeUser` entry is written even when no session
    /// of the user is held here: the user's sessions held only by Redis must be revoked on
    /// replay. When the journal cannot take all the entries, nothing changes and the `Durable`
    /// fails ([`JOURNAL_FULL`]).
    pub fn revoke_user_journaled(&mut self, uid: &str, now: UnixSeconds) -> (Vec<String>, Durable) {
        self.revoke_user_impl(uid, now, true, UnixSeconds::MAX)
    }

    fn revoke_user_impl(
        &mut self,
        uid: &str,
        now: UnixSeconds,
        journal: bool,
        created_by: UnixSeconds,
    ) -> (Vec<String>, Durable) {
        let mut live: Vec<(UnixSeconds, String, UnixSeconds)> = Vec::new();
        {
            let st = self.st();
            for id in st.user_session_ids(uid) {
                if let Some(slot) = st.session(id)
                    && slot.expires_at > now
                {
                    let created_at = slot.fields().map_or(0, |f| f.created_at);
                    if created_at <= created_by {
                        live.push((created_at, id.to_string(), slot.expires_at));
                    }
                }
            }
        }
        if journal && !self.journal_room(live.len().saturating_add(1)) {
            return (Vec::new(), journal_full());
        }
        // The watermark: tokens of the user issued at or before the revoke-all create nothing
        // here afterwards (a local revoke-all is at `now`, a mirrored one at its own time).
        let at = if created_by == UnixSeconds::MAX { now } else { created_by };
        let until = at.saturating_add(self.max_ttl);
        let mark = self.st().watermark(uid, now).is_none_or(|old| old < at);
        if live.is_empty() && !journal && !mark {
            return (Vec::new(), self.barrier());
        }
        live.sort();
        let first_seq = self.journal.next_seq();
        let user = journal.then_some(uid);
        // With the journal: each tomb frame carries its entry, then a `jrn` frame the
        // revoke-all. Everything is encoded before anything changes.
        let mut entries: Vec<(u64, Box<[u8]>)> = Vec::new();
        self.scratch.clear();
        for (k, (_, id, until)) in live.iter().enumerate() {
            let seq = journal.then_some(first_seq + k as u64);
            let tomb = TombRecord { id, until: *until, journal: seq, user_id: user };
            if let Some(seq) = seq {
                match journal::encode_entry(seq, journal::tomb_body(&tomb)) {
                    Ok(payload) => entries.push((seq, payload)),
                    Err(e) => return (Vec::new(), Durable::failed(store_err(e))),
                }
            }
            if let Err(e) = record::encode_frame(&mut self.scratch, &Record::Tomb(tomb)) {
                return (Vec::new(), Durable::failed(store_err(e)));
            }
        }
        if mark {
            let rec = Record::Watermark(WatermarkRecord { user_id: uid, at, until });
            if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
                return (Vec::new(), Durable::failed(store_err(e)));
            }
        }
        if journal {
            let seq = first_seq + live.len() as u64;
            let body = JournalBody::RevokeUser(RevokeUserRecord { user_id: uid, at: now });
            let framed = journal::encode_entry(seq, body).and_then(|payload| {
                record::append_frame(&mut self.scratch, &payload)?;
                Ok(payload)
            });
            match framed {
                Ok(payload) => entries.push((seq, payload)),
                Err(e) => return (Vec::new(), Durable::failed(store_err(e))),
            }
        }
        {
            let mut st = self.st_mut();
            for (_, id, until) in &live {
                st.put_tombstone(id, *until);
            }
            if mark {
                if st.watermark(uid, now).is_none() && st.watermark_count() >= MAX_WATERMARKS {
                    ::log::warn!(
                        "{MAX_WATERMARKS} revoke-all watermarks held: the one ending first is \
                         forgotten"
                    );
                    st.evict_oldest_watermark();
                }
                st.raise_watermark(uid, at, until);
            }
        }
        let durable = self.submit_scratch();
        for (seq, payload) in entries {
            self.journal.push(seq, payload);
        }
        self.check_capacity();
        self.after_write(now);
        (live.into_iter().map(|(_, id, _)| id).collect(), durable)
    }

    /// Mirror (Redis mode): stores `session` as Redis holds it, replacing any session with
    /// that id, with `expires_at` capped at `now + max_ttl_seconds`. Never journaled. Nothing
    /// is written when the id has a live tombstone here (the revocation stays), when the
    /// session has expired, or when the same session (same fields and expiry) is already
    /// held, so mirroring every validation costs a log write only when something changed.
    /// A *new* id is skipped (counted in [`StoreStats::mirror_skipped`], a warning logged once
    /// per crossing) when `max_entries` are held after dropping expired entries: the mirror is
    /// a cache and stays bounded; the `Durable` still resolves `Ok`.
    pub fn mirror_put(&mut self, session: &Session, created_len: i64, now: UnixSeconds) -> Durable {
        let id = session.session_id.as_str();
        let expires_at = session.expires_at.min(now.saturating_add(self.max_ttl));
        if expires_at <= now {
            return self.barrier();
        }
        let st = self.st();
        if st.tombstone(id).is_some_and(|until| until > now) {
            drop(st);
            return self.barrier();
        }
        let held = st.session(id);
        if held.is_some_and(|slot| same_session(slot, session, expires_at, created_len)) {
            drop(st);
            return self.barrier();
        }
        let is_new = held.is_none();
        drop(st);
        if is_new && self.entries() >= self.max_entries {
            self.sweep_when_full(now);
            if self.entries() >= self.max_entries {
                self.mirror_skipped += 1;
                if !self.mirror_full_warned {
                    self.mirror_full_warned = true;
                    ::log::warn!(
                        "session store holds max_entries = {} entries: sessions seen in Redis \
                         are not mirrored until some expire",
                        self.max_entries
                    );
                }
                return Durable::ready();
            }
        }
        let rec = Record::Put(PutRecord {
            id,
            user_id: &session.user_id,
            email: &session.email,
            role: &session.role,
            format: session.format,
            created_at: session.created_at,
            expires_at,
            created_len,
            attributes: Attrs::Map(&session.attributes),
            journal: None,
            issued_at: None,
        });
        self.scratch.clear();
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
            return Durable::failed(store_err(e));
        }
        self.st_mut().insert_session(
            id,
            NewRow {
                user_id: &session.user_id,
                email: &session.email,
                role: &session.role,
                format: session.format,
                created_at: session.created_at,
                expires_at,
                created_len,
                attributes: session.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            },
        );
        let durable = self.submit_scratch();
        self.after_write(now);
        durable
    }

    /// Mirror (Redis mode): records a revocation seen elsewhere. Removes the session if held
    /// and keeps the id revoked until the later of `until` and any earlier tombstone. Never
    /// refused (like [`Self::revoke`]), never journaled. Nothing is written when nothing would
    /// change (no session held and a tombstone at least as long, or `until <= now`).
    pub fn mirror_tomb(&mut self, sid: &str, until: UnixSeconds, now: UnixSeconds) -> Durable {
        let st = self.st();
        let held = st.session(sid).is_some();
        let earlier = st.tombstone(sid);
        drop(st);
        if !held && (until <= now || earlier.is_some_and(|e| e >= until)) {
            return self.barrier();
        }
        let until = until.max(earlier.unwrap_or(until));
        self.scratch.clear();
        let rec = Record::Tomb(TombRecord::plain(sid, until));
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
            return Durable::failed(store_err(e));
        }
        self.st_mut().put_tombstone(sid, until);
        let durable = self.submit_scratch();
        self.check_capacity();
        self.after_write(now);
        durable
    }

    /// Mirror (Redis mode): a revoke-all seen elsewhere. Revokes every live session of the user
    /// held here, as [`Self::revoke_user`] does (never journaled).
    ///
    /// Only sessions created at or before `at` (the revoke-all's time) are revoked: a
    /// revoke-all that arrives late must not reach a session created after it.
    pub fn mirror_revoke_user(&mut self, uid: &str, at: UnixSeconds, now: UnixSeconds) -> Durable {
        self.revoke_user_impl(uid, now, false, at).1
    }

    /// Mirror (Redis mode): a new expiry seen elsewhere (a refresh). Sets it, capped at
    /// `now + max_ttl_seconds`, when the session is live here; otherwise, or when the expiry
    /// is already that, nothing is written. Never journaled.
    pub fn mirror_expiry(
        &mut self,
        sid: &str,
        expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Durable {
        let expires_at = expires_at.min(now.saturating_add(self.max_ttl));
        let current = self.st().session(sid).map(|s| s.expires_at);
        match current {
            Some(cur) if cur > now && cur != expires_at => {}
            _ => return self.barrier(),
        }
        self.scratch.clear();
        let rec = Record::Expiry(ExpiryRecord::plain(sid, expires_at));
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
            return Durable::failed(store_err(e));
        }
        self.st_mut().set_expiry(sid, expires_at);
        let durable = self.submit_scratch();
        self.after_write(now);
        durable
    }

    /// Up to `max` of the oldest journal entries not yet acknowledged, in sequence order.
    ///
    /// Answered from memory: the newest entries may not be durable yet. A caller that hands
    /// them on (the replay into Redis) should wait for [`Self::barrier`] first, as the
    /// FallbackStore actor does, so that no entry leaves the store before it is durable (an
    /// entry lost with a torn tail was then never seen outside, and its sequence number may
    /// be handed out again after a restart).
    pub fn pending_journal(&self, max: usize) -> Vec<JournalEntry> {
        self.journal.pending(max)
    }

    /// Journal entries not yet acknowledged.
    pub fn journal_len(&self) -> usize {
        self.journal.len()
    }

    /// Records that every journal entry with `seq <= up_to_seq` has been replayed: they are
    /// dropped from memory at once, and a `jack` record makes that durable. `up_to_seq` is
    /// capped at the last sequence number handed out; acknowledging again what is already
    /// acknowledged writes nothing. When the `Durable` fails the entries are still gone from
    /// memory, and the snapshot that repairs the log records the acknowledgement.
    pub fn ack_journal(&mut self, up_to_seq: u64) -> Durable {
        let Some(up_to) = self.journal.ack_target(up_to_seq) else {
            return self.barrier();
        };
        self.scratch.clear();
        let rec = Record::JournalAck(JournalAckRecord { up_to, next_seq: None });
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
            return Durable::failed(store_err(e));
        }
        self.journal.ack(up_to);
        if self.journal.has_room(1, self.tuning.max_journal) {
            self.journal_full_warned = false;
        }
        self.submit_scratch()
    }

    /// Whether the journal can take `n` more entries; logs once per crossing when it cannot.
    fn journal_room(&mut self, n: usize) -> bool {
        if self.journal.has_room(n, self.tuning.max_journal) {
            return true;
        }
        if !self.journal_full_warned {
            self.journal_full_warned = true;
            ::log::error!(
                "session store journal holds {} writes not yet replayed into Redis (max {}): \
                 degraded writes are refused until the replay catches up",
                self.journal.len(),
                self.tuning.max_journal
            );
        }
        false
    }

    /// Drops expired sessions and tombstones; answers how many.
    pub fn sweep(&mut self, now: UnixSeconds) -> usize {
        let n = self.st_mut().sweep(now);
        self.last_full_sweep = Some(now);
        if self.entries() <= self.max_entries {
            self.over_capacity_warned = false;
        }
        if self.entries() < self.max_entries {
            self.mirror_full_warned = false;
        }
        n
    }

    /// Periodic upkeep: [`Self::sweep`], then a snapshot when the log is due one (or must be
    /// rewritten after a write error). Answers how many entries the sweep dropped.
    pub fn maintain(&mut self, now: UnixSeconds) -> usize {
        let n = self.sweep(now);
        self.after_write(now);
        n
    }

    /// Counters for health and metrics.
    pub fn stats(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let sh = self.writer.shared();
        let last = sh.last_fsync_ms.load(Relaxed);
        let st = self.st();
        StoreStats {
            live_sessions: st.session_count(),
            tombstones: st.tombstone_count(),
            log_bytes: sh.log_bytes.load(Relaxed),
            last_fsync_at_ms: (last != i64::MIN).then_some(last),
            write_errors: sh.write_errors.load(Relaxed),
            users: st.user_count(),
            generation: sh.generation.load(Relaxed),
            compactions: sh.compactions.load(Relaxed),
            log_healthy: !sh.needs_snapshot.load(Relaxed),
            journal_len: self.journal.len(),
            journal_max: self.tuning.max_journal,
            journal_oldest_seq: self.journal.oldest_seq(),
            journal_next_seq: self.journal.next_seq(),
            journal_acked_seq: self.journal.acked(),
            mirror_skipped: self.mirror_skipped,
            watermarks: st.watermark_count(),
        }
    }

    /// Makes everything written so far durable (fsync in every mode), blocking until done.
    /// Used at shutdown.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.writer.flush(Ack::Sync(tx));
        rx.recv().unwrap_or_else(|_| Err(StoreError("log writer stopped".into())))
    }

    /// Like [`Self::flush`], without blocking: the answer resolves once it is done.
    pub fn flush_durable(&mut self) -> Durable {
        let (durable, ack) = Durable::pending();
        self.writer.flush(ack);
        durable
    }

    /// Writes a snapshot into a new generation now, whatever the log's size. The switch
    /// happens on the writer thread; [`Self::flush`] afterwards waits for it.
    pub fn compact(&mut self, now: UnixSeconds) {
        self.snapshot(now);
    }

    fn entries(&self) -> usize {
        let st = self.st();
        st.session_count() + st.tombstone_count()
    }

    /// At capacity: drop expired entries, at most once per second of `now`.
    fn sweep_when_full(&mut self, now: UnixSeconds) {
        if self.last_full_sweep.is_none_or(|t| t < now) {
            self.sweep(now);
        }
    }

    fn check_capacity(&mut self) {
        if self.entries() > self.max_entries && !self.over_capacity_warned {
            self.over_capacity_warned = true;
            ::log::warn!(
                "session store holds {} entries, over max_entries = {}: revocations are never \
                 refused; they go away as they expire",
                self.entries(),
                self.max_entries
            );
        }
    }

    /// Hands the frames in `scratch` to the writer with an ack.
    fn submit_scratch(&mut self) -> Durable {
        let (durable, ack) = Durable::pending();
        self.writer.append(&self.scratch, Some(ack));
        if self.scratch.capacity() > 64 << 10 {
            self.scratch = Vec::with_capacity(1024);
        }
        durable
    }

    /// Durable once everything written so far is (per the fsync mode): an answer that
    /// depends on a write not yet durable must not be acknowledged before it. Ready at once
    /// when nothing is pending.
    pub fn barrier(&mut self) -> Durable {
        if !self.writer.has_pending() {
            return Durable::ready();
        }
        let (durable, ack) = Durable::pending();
        self.writer.barrier(ack);
        durable
    }

    /// Starts a snapshot when the log has grown past its threshold, or must be rewritten.
    fn after_write(&mut self, now: UnixSeconds) {
        use std::sync::atomic::Ordering::Acquire;
        let sh = self.writer.shared();
        if sh.snapshot_pending.load(Acquire) {
            return;
        }
        let poisoned = sh.needs_snapshot.load(Acquire);
        let due = sh.log_bytes.load(Acquire) > sh.compact_threshold.load(Acquire);
        if !poisoned && !due {
            return;
        }
        let retrying = poisoned || sh.snapshot_failed.load(Acquire);
        if retrying
            && self.last_snapshot_attempt.is_some_and(|t| t.elapsed() < self.tuning.snapshot_retry)
        {
            return;
        }
        self.snapshot(now);
    }

    /// Streams the live state to the writer as generation `next_generation`.
    fn snapshot(&mut self, now: UnixSeconds) {
        use std::sync::atomic::Ordering::Release;
        let generation = self.next_generation;
        self.next_generation += 1;
        self.last_snapshot_attempt = Some(Instant::now());
        let started = Instant::now();
        self.writer.shared().snapshot_pending.store(true, Release);
        self.writer.snapshot_begin(generation);
        let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 4096);
        let mut records = 0u64;
        // Readers go on reading while the snapshot is encoded; only the owner writes.
        let state = Arc::clone(&self.state);
        let st = state.read().unwrap_or_else(PoisonError::into_inner);
        for (id, slot) in st.sessions() {
            if slot.expires_at <= now {
                continue;
            }
            let Some(f) = slot.fields() else {
                ::log::error!("session {id:?} is corrupt in memory; left out of the snapshot");
                continue;
            };
            let rec = Record::Put(PutRecord {
                id,
                user_id: f.user_id,
                email: f.email,
                role: f.role,
                format: f.format,
                created_at: f.created_at,
                expires_at: slot.expires_at,
                created_len: f.created_len,
                attributes: Attrs::Pairs(f.attributes),
                journal: None,
                issued_at: None,
            });
            push_snapshot_record(&mut self.writer, &mut chunk, &rec, &mut records);
        }
        for (user_id, at, until) in st.watermarks() {
            if until <= now {
                continue;
            }
            let rec = Record::Watermark(WatermarkRecord { user_id, at, until });
            push_snapshot_record(&mut self.writer, &mut chunk, &rec, &mut records);
        }
        for (id, until) in st.tombstones() {
            if until <= now {
                continue;
            }
            let rec = Record::Tomb(TombRecord::plain(id, until));
            push_snapshot_record(&mut self.writer, &mut chunk, &rec, &mut records);
        }
        drop(st);
        // The journal goes forward whole: its bookkeeping, then every pending entry.
        if self.journal.used() {
            let rec = Record::JournalAck(JournalAckRecord {
                up_to: self.journal.acked(),
                next_seq: Some(self.journal.next_seq()),
            });
            push_snapshot_record(&mut self.writer, &mut chunk, &rec, &mut records);
            for payload in self.journal.payloads() {
                match record::append_frame(&mut chunk, payload) {
                    Ok(()) => records += 1,
                    // Entries are checked against the limit when they are taken.
                    Err(e) => ::log::error!("journal entry left out of the snapshot: {e}"),
                }
                flush_snapshot_chunk(&mut self.writer, &mut chunk);
            }
        }
        if !chunk.is_empty() {
            self.writer.snapshot_chunk(chunk);
        }
        self.writer.snapshot_end();
        ::log::info!(
            "snapshot of {records} records queued as generation {generation} in {} ms",
            started.elapsed().as_millis()
        );
    }
}

/// A read-only handle on the store's maps, for answering lookups inline on any thread (the
/// validation hot path) without a message to the FallbackStore actor. Writes still go through
/// the actor; a reader sees each one the moment it is applied in memory.
#[derive(Clone)]
pub struct StoreReader {
    state: Arc<RwLock<State>>,
}

impl StoreReader {
    /// Looks a session up, as [`StoreCore::get`].
    pub fn get(&self, sid: &str, now: UnixSeconds) -> Lookup {
        lookup(&self.state.read().unwrap_or_else(PoisonError::into_inner), sid, now)
    }

    /// A user's live sessions, as [`StoreCore::list_user`].
    pub fn list_user(&self, uid: &str, now: UnixSeconds) -> Vec<Session> {
        list_for_user(&self.state.read().unwrap_or_else(PoisonError::into_inner), uid, now)
    }

    /// The time of the user's latest revoke-all known here, while its watermark lasts
    /// (`sessions.max_ttl_seconds` after it): tokens issued at or before it are revoked.
    pub fn watermark(&self, uid: &str, now: UnixSeconds) -> Option<UnixSeconds> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).watermark(uid, now)
    }
}

fn lookup(state: &State, sid: &str, now: UnixSeconds) -> Lookup {
    if let Some(slot) = state.session(sid)
        && slot.expires_at > now
    {
        return match slot.fields() {
            Some(f) => Lookup::Live(f.to_session(sid, slot.expires_at)),
            None => {
                ::log::error!("session {sid:?} is corrupt in memory");
                Lookup::Missing
            }
        };
    }
    if state.tombstone(sid).is_some_and(|until| until > now) {
        return Lookup::Revoked;
    }
    Lookup::Missing
}

fn list_for_user(state: &State, uid: &str, now: UnixSeconds) -> Vec<Session> {
    let mut out: Vec<Session> = state
        .user_session_ids(uid)
        .iter()
        .filter_map(|id| match lookup(state, id, now) {
            Lookup::Live(s) => Some(s),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| {
        a.created_at.cmp(&b.created_at).then_with(|| a.session_id.cmp(&b.session_id))
    });
    out
}

fn push_snapshot_record(
    writer: &mut Writer,
    chunk: &mut Vec<u8>,
    rec: &Record<'_>,
    records: &mut u64,
) {
    match record::encode_frame(chunk, rec) {
        Ok(()) => *records += 1,
        // Everything in memory was encodable when it was written; this cannot happen.
        Err(e) => ::log::error!("left out of the snapshot: {e}"),
    }
    flush_snapshot_chunk(writer, chunk);
}

/// Hands a full chunk to the writer.
fn flush_snapshot_chunk(writer: &mut Writer, chunk: &mut Vec<u8>) {
    if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
        let full = std::mem::replace(chunk, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 4096));
        writer.snapshot_chunk(full);
    }
}

/// Most records are sessions of about this many bytes (see [`Loader::size_hint`]).
const LOAD_BYTES_PER_ENTRY: u64 = 96;

/// Feeds loaded records into the maps and the journal.
struct Loader<'a> {
    state: &'a mut State,
    journal: &'a mut Journal,
    max_entries: usize,
}

impl log::Sink for Loader<'_> {
    fn size_hint(&mut self, file_len: u64) {
        // Sizing the maps up front spares rehashing them while they grow; capacity that is
        // never touched costs no resident memory.
        let estimate = usize::try_from(file_len / LOAD_BYTES_PER_ENTRY).unwrap_or(usize::MAX);
        self.state.reserve(estimate.min(self.max_entries));
    }

    fn apply(&mut self, rec: Record<'_>) {
        apply_record(self.state, self.journal, rec);
    }
}

/// Replays one record into the maps and the journal (loading).
fn apply_record(state: &mut State, jrn: &mut Journal, rec: Record<'_>) {
    match rec {
        Record::Put(p) => {
            if let Some(seq) = p.journal {
                jrn.load_entry(seq, journal::put_body(&p));
            }
            let attrs = match p.attributes {
                Attrs::Pairs(v) => v,
                Attrs::Map(m) => m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            };
            state.insert_session(
                p.id,
                NewRow {
                    user_id: p.user_id,
                    email: p.email,
                    role: p.role,
                    format: p.format,
                    created_at: p.created_at,
                    expires_at: p.expires_at,
                    created_len: p.created_len,
                    attributes: attrs.into_iter(),
                },
            );
        }
        Record::Expiry(e) => {
            if let Some(seq) = e.journal {
                jrn.load_entry(seq, journal::expiry_body(&e));
            }
            state.set_expiry(e.id, e.expires_at);
        }
        Record::Tomb(t) => {
            if let Some(seq) = t.journal {
                jrn.load_entry(seq, journal::tomb_body(&t));
            }
            state.put_tombstone(t.id, t.until);
        }
        Record::Purge(p) => state.purge(p.id),
        Record::Watermark(w) => {
            state.raise_watermark(w.user_id, w.at, w.until);
        }
        Record::Journal(j) => jrn.load_entry(j.seq, j.op),
        Record::JournalAck(a) => jrn.load_ack(a.up_to, a.next_seq),
    }
}

/// Whether `slot` holds `s` exactly (with the given expiry and created length).
fn same_session(
    slot: &state::Slot,
    s: &Session,
    expires_at: UnixSeconds,
    created_len: i64,
) -> bool {
    if slot.expires_at != expires_at {
        return false;
    }
    let Some(f) = slot.fields() else {
        return false;
    };
    f.user_id == s.user_id
        && f.email == s.email
        && f.role == s.role
        && f.format == s.format
        && f.created_at == s.created_at
        && f.created_len == created_len
        && f.attributes.len() == s.attributes.len()
        && f.attributes.iter().all(|(k, v)| s.attributes.get(*k).is_some_and(|x| x == v))
}

/// The `Durable` of a journaling write refused because the journal is full.
fn journal_full() -> Durable {
    Durable::failed(StoreError(JOURNAL_FULL.to_string()))
}

#[cfg(test)]
mod tests;
