//! The embedded durable session store: sessions and revocations in memory, every write
//! appended to a checksummed MessagePack log in `data_dir` by a dedicated writer thread,
//! compacted by snapshot, reloaded on open. `docs/storage.md` describes the files, the
//! records, the memory layout and what each fsync mode guarantees.
//!
//! [`StoreCore`] is a plain struct (the FallbackStore actor wraps it): every mutation is
//! applied in memory at once and answers a [`Durable`] that resolves when the log write is
//! durable per the [`FsyncMode`]. Reads never touch the disk.

mod log;
mod record;
mod state;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::domain::{NewSession, Session, UnixSeconds};
use record::{Attrs, ExpiryRecord, PutRecord, Record, TombRecord};
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
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            compact_min_bytes: DEFAULT_COMPACT_MIN_BYTES,
            snapshot_retry: Duration::from_secs(10),
        }
    }
}

/// The default floor of the compaction threshold.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Snapshot frames are handed to the writer in chunks of about this size.
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;

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
    /// `max_entries` are held.
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
        let mut sink = Loader { state: &mut state, max_entries: o.max_entries };
        let loaded = log::load(&o.data_dir, &mut sink)?;
        let expired_dropped = state.sweep(now);
        state.shrink();
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
        };
        ::log::info!(
            "session store loaded from {}: {} sessions, {} tombstones, {} records in {} ms",
            o.data_dir.display(),
            report.sessions,
            report.tombstones,
            report.records,
            report.duration_ms
        );
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
        };
        Ok((core, report))
    }

    /// Records a new session: `Revoked` when the id has a live tombstone; `Existing` (the
    /// stored one) or `Conflict` when a live session has the id (same user or not); `Full` when
    /// `max_entries` are held after dropping expired entries; else `Created` with
    /// `created_at = now` and `expires_at = new.expires_at` (already capped by the caller).
    /// When the `Durable` fails the outcome must not be acknowledged.
    pub fn create(&mut self, new: NewSession, now: UnixSeconds) -> (CreateOutcome, Durable) {
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
        drop(st);
        if self.entries() >= self.max_entries {
            self.sweep_when_full(now);
            if self.entries() >= self.max_entries {
                return (CreateOutcome::Full, Durable::ready());
            }
        }
        let ident = &new.identity;
        let created_len = new.expires_at.saturating_sub(now);
        let rec = Record::Put(PutRecord {
            id,
            user_id: &ident.user_id,
            email: &ident.email,
            role: &ident.role,
            format: ident.format,
            created_at: now,
            expires_at: new.expires_at,
            created_len,
            attributes: Attrs::Map(&new.attributes),
        });
        self.scratch.clear();
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
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
        self.scratch.clear();
        let rec = Record::Expiry(ExpiryRecord { id: sid, expires_at });
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
            return (RefreshOutcome::Missing, Durable::failed(store_err(e)));
        }
        self.st_mut().set_expiry(sid, expires_at);
        let durable = self.submit_scratch();
        self.after_write(now);
        (RefreshOutcome::Refreshed(session), durable)
    }

    /// Revokes a session id; never refused, even when full.
    pub fn revoke(&mut self, sid: &str, now: UnixSeconds) -> (RevokeOutcome, Durable) {
        let st = self.st();
        let live_until = st.session(sid).filter(|s| s.expires_at > now).map(|s| s.expires_at);
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
        self.scratch.clear();
        let rec = Record::Tomb(TombRecord { id: sid, until });
        if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
            let outcome = RevokeOutcome { newly_revoked: false, user_id: None };
            return (outcome, Durable::failed(store_err(e)));
        }
        let (removed, _) = self.st_mut().put_tombstone(sid, until);
        let user_id = match live_until {
            Some(_) => removed.map(|(_, user)| user),
            None => None,
        };
        let durable = self.submit_scratch();
        self.check_capacity();
        self.after_write(now);
        (RevokeOutcome { newly_revoked: true, user_id }, durable)
    }

    /// The live sessions of a user, by `created_at` then id.
    pub fn list_user(&self, uid: &str, now: UnixSeconds) -> Vec<Session> {
        list_for_user(&self.st(), uid, now)
    }

    /// Revokes every live session of a user; answers their ids (in [`Self::list_user`]
    /// order). One durability wait covers them all.
    pub fn revoke_user(&mut self, uid: &str, now: UnixSeconds) -> (Vec<String>, Durable) {
        let mut live: Vec<(UnixSeconds, String, UnixSeconds)> = Vec::new();
        {
            let st = self.st();
            for id in st.user_session_ids(uid) {
                if let Some(slot) = st.session(id)
                    && slot.expires_at > now
                {
                    let created_at = slot.fields().map_or(0, |f| f.created_at);
                    live.push((created_at, id.to_string(), slot.expires_at));
                }
            }
        }
        if live.is_empty() {
            return (Vec::new(), self.barrier());
        }
        live.sort();
        self.scratch.clear();
        for (_, id, until) in &live {
            let rec = Record::Tomb(TombRecord { id, until: *until });
            if let Err(e) = record::encode_frame(&mut self.scratch, &rec) {
                return (Vec::new(), Durable::failed(store_err(e)));
            }
        }
        {
            let mut st = self.st_mut();
            for (_, id, until) in &live {
                st.put_tombstone(id, *until);
            }
        }
        let durable = self.submit_scratch();
        self.check_capacity();
        self.after_write(now);
        (live.into_iter().map(|(_, id, _)| id).collect(), durable)
    }

    /// Drops expired sessions and tombstones; answers how many.
    pub fn sweep(&mut self, now: UnixSeconds) -> usize {
        let n = self.st_mut().sweep(now);
        self.last_full_sweep = Some(now);
        if self.entries() <= self.max_entries {
            self.over_capacity_warned = false;
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

    /// Durable once everything written so far is: an answer that depends on a write not yet
    /// durable must not be acknowledged before it.
    fn barrier(&mut self) -> Durable {
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
            });
            push_snapshot_record(&mut self.writer, &mut chunk, &rec, &mut records);
        }
        for (id, until) in st.tombstones() {
            if until <= now {
                continue;
            }
            let rec = Record::Tomb(TombRecord { id, until });
            push_snapshot_record(&mut self.writer, &mut chunk, &rec, &mut records);
        }
        drop(st);
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
    if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
        let full = std::mem::replace(chunk, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 4096));
        writer.snapshot_chunk(full);
    }
}

/// Most records are sessions of about this many bytes (see [`Loader::size_hint`]).
const LOAD_BYTES_PER_ENTRY: u64 = 96;

/// Feeds loaded records into the maps.
struct Loader<'a> {
    state: &'a mut State,
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
        apply_record(self.state, rec);
    }
}

/// Replays one record into the maps (loading).
fn apply_record(state: &mut State, rec: Record<'_>) {
    match rec {
        Record::Put(p) => {
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
            state.set_expiry(e.id, e.expires_at);
        }
        Record::Tomb(t) => {
            state.put_tombstone(t.id, t.until);
        }
    }
}

#[cfg(test)]
mod tests;
