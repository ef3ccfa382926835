//! Where the pipeline's reads and writes go: the embedded store alone, or Redis (the source of
//! truth, behind the `redis` circuit breaker) with the fallback store as the instance's mirror
//! and, while degraded, as the durable journal of writes to replay (CONTRACT.md section 6).
//!
//! Rules, in order, for Redis mode:
//! - a revocation known locally always wins (mirror tombstones are checked first);
//! - while the instance is degraded (breaker open, or a journal not yet replayed), everything
//!   is answered from the fallback store and writes are journaled;
//! - otherwise Redis answers; when the call fails (breaker rejected, timeout, error) that one
//!   request is answered from the fallback store, as degraded;
//! - a validation may be answered from the mirror without a Redis round trip when Redis
//!   confirmed that session less than [`CONFIRM_TTL_MS`] ago and the event bus is connected
//!   (so a revocation anywhere reaches the mirror as a tombstone within the bus's delivery
//!   time). docs/architecture.md explains the trade-off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;

use crate::breaker::{CallError, SharedBreaker};
use crate::domain::{NewSession, Session, UnixSeconds, now_millis};
use crate::fallback_store::FallbackStore;
use crate::messages::{
    CreateSession, MirrorExpiry, MirrorPut, MirrorRevokeUser, MirrorTomb, PurgeSession,
    RefreshSession, RevokeSession, RevokeUserSessions,
};
use crate::redis_store::RedisStore;
use crate::store::{CreateOutcome, Lookup, RefreshOutcome, RevokeOutcome, StoreError, StoreReader};

/// How long a Redis confirmation of a live session lets the mirror answer for it.
pub const CONFIRM_TTL_MS: i64 = 1000;
/// The most confirmations remembered; beyond it the cache is cleared (it refills itself).
pub const CONFIRM_CAPACITY: usize = 100_000;

/// What to do in degraded mode with a session this instance does not know
/// (`degraded.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DegradedPolicy {
    /// Accept it on the token alone (`session: null`, `mode: degraded`).
    JwtOnly,
    /// Answer 503 `store_unavailable`.
    FailClosed,
}

/// The instance mode, shared between the Coordinator (which sets it) and the pipeline.
#[derive(Default, Debug)]
pub struct ModeFlag(AtomicU8);

impl ModeFlag {
    /// Whether the instance is degraded (breaker open or journal not yet replayed).
    pub fn is_degraded(&self) -> bool {
        self.0.load(Ordering::Acquire) == 1
    }

    /// Sets the mode; answers whether it changed.
    pub fn set_degraded(&self, degraded: bool) -> bool {
        self.0.swap(u8::from(degraded), Ordering::AcqRel) != u8::from(degraded)
    }
}

/// Recent Redis confirmations of live sessions: session id → when (Unix ms).
#[derive(Default)]
pub struct ConfirmCache(Mutex<HashMap<String, i64>>);

impl ConfirmCache {
    fn fresh(&self, sid: &str, now_ms: i64) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(sid).is_some_and(|at| now_ms - at < CONFIRM_TTL_MS)
    }

    fn confirm(&self, sid: &str, now_ms: i64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CONFIRM_CAPACITY && !map.contains_key(sid) {
            map.clear();
        }
        map.insert(sid.to_owned(), now_ms);
    }

    /// Forgets one session (an event changed it).
    pub fn forget(&self, sid: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(sid);
    }

    /// Forgets everything (the bus reconnected: events may have been missed).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// The Redis side, shared with the Coordinator.
#[derive(Clone)]
pub struct RedisSide {
    /// The Redis store.
    pub redis: RedisStore,
    /// The `redis` breaker every call passes.
    pub breaker: SharedBreaker,
    /// `breaker.op_timeout_ms`.
    pub op_timeout: Duration,
    /// The instance mode.
    pub mode: Arc<ModeFlag>,
    /// Whether the event-bus subscription is up (the cache is used only then).
    pub bus_up: Arc<AtomicBool>,
    /// Recent confirmations.
    pub confirmed: Arc<ConfirmCache>,
}

/// The answer of a lookup, with the path that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    /// The answer.
    pub value: T,
    /// True when the fallback path answered.
    pub degraded: bool,
}

fn normal<T>(value: T) -> Answer<T> {
    Answer { value, degraded: false }
}

fn degraded<T>(value: T) -> Answer<T> {
    Answer { value, degraded: true }
}

/// Where reads and writes go.
pub struct Backend {
    /// The fallback store (the only store in embedded mode).
    pub store: Addr<FallbackStore>,
    /// Its read view.
    pub reader: StoreReader,
    /// The Redis side, when `sessions.redis_url` is set.
    pub redis: Option<RedisSide>,
    /// `sessions.max_ttl_seconds`.
    pub max_ttl_seconds: i64,
    /// False only for the self-test's backend ([`Backend::unjournaled`]).
    pub journal_writes: bool,
}

fn gone(e: MailboxError) -> StoreError {
    StoreError(format!("the fallback store is not answering: {e}"))
}

fn log_redis_failure<E: std::fmt::Display>(what: &str, e: &CallError<E>) {
    match e {
        CallError::Rejected => {}
        CallError::TimedOut => {
            log::debug!("redis {what}: timed out; answering from the fallback store")
        }
        CallError::Failed(e) => log::debug!("redis {what}: {e}; answering from the fallback store"),
    }
}

impl Backend {
    /// The Redis side when the instance is not degraded (else `None`: use the fallback).
    fn live_redis(&self) -> Option<&RedisSide> {
        self.redis.as_ref().filter(|r| !r.mode.is_degraded())
    }

    /// Whether a revoke-all of `user` known to this instance covers a token issued at
    /// `issued` (at or before it).
    pub fn revoked_by_watermark(&self, user: &str, issued: UnixSeconds, now: UnixSeconds) -> bool {
        self.reader.watermark(user, now).is_some_and(|at| issued <= at)
    }

    /// Whether the instance is in degraded mode (never in embedded mode).
    pub fn is_degraded(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.mode.is_degraded())
    }

    /// Whether writes taken by the fallback store must be journaled for replay.
    fn journaling(&self) -> bool {
        self.redis.is_some() && self.journal_writes
    }

    /// The same backend, except that the writes the fallback store takes in Redis mode are
    /// not journaled (never replayed into Redis): for the self-test, which purges what it
    /// wrote and must leave nothing for a later replay.
    pub fn unjournaled(&self) -> Backend {
        Backend {
            store: self.store.clone(),
            reader: self.reader.clone(),
            redis: self.redis.clone(),
            max_ttl_seconds: self.max_ttl_seconds,
            journal_writes: false,
        }
    }

    /// Looks a session up for validation.
    pub async fn lookup(&self, sid: &str, now: UnixSeconds) -> Answer<Lookup> {
        let local = self.reader.get(sid, now);
        let Some(side) = self.redis.as_ref() else {
            return normal(local);
        };
        if local == Lookup::Revoked {
            return normal(Lookup::Revoked);
        }
        if side.mode.is_degraded() {
            return degraded(local);
        }
        let now_ms = now_millis();
        if matches!(local, Lookup::Live(_))
            && side.bus_up.load(Ordering::Acquire)
            && side.confirmed.fresh(sid, now_ms)
        {
            return normal(local);
        }
        let redis = side.redis.clone();
        let id = sid.to_owned();
        match side
            .breaker
            .call(side.op_timeout, async move { redis.get_with_len(&id, now).await })
            .await
        {
            Ok((Lookup::Live(s), len)) => {
                side.confirmed.confirm(sid, now_ms);
                let stale = match &local {
                    Lookup::Live(l) => l.expires_at != s.expires_at,
                    _ => true,
                };
                if stale {
                    let created_len = len.unwrap_or(s.expires_at - s.created_at);
                    self.store.do_send(MirrorPut { session: s.clone(), created_len });
                }
                normal(Lookup::Live(s))
            }
            Ok((Lookup::Revoked, _)) => {
                self.store.do_send(MirrorTomb {
                    session_id: sid.to_owned(),
                    until: now.saturating_add(self.max_ttl_seconds),
                });
                normal(Lookup::Revoked)
            }
            Ok((Lookup::Missing, _)) => normal(Lookup::Missing),
            Err(e) => {
                log_redis_failure("get", &e);
                degraded(local)
            }
        }
    }

    /// One live session by id (management `GET`).
    pub async fn get(&self, sid: &str, now: UnixSeconds) -> Lookup {
        self.lookup(sid, now).await.value
    }

    /// A user's live sessions.
    pub async fn list_user(&self, uid: &str, now: UnixSeconds) -> Vec<Session> {
        if let Some(side) = self.live_redis() {
            let redis = side.redis.clone();
            let id = uid.to_owned();
            match side
                .breaker
                .call(side.op_timeout, async move { redis.list_user(&id, now).await })
                .await
            {
                Ok(list) => return list,
                Err(e) => log_redis_failure("list_user", &e),
            }
        }
        self.reader.list_user(uid, now)
    }

    /// Creates a session.
    pub async fn create(
        &self,
        new: NewSession,
        now: UnixSeconds,
    ) -> Result<Answer<CreateOutcome>, StoreError> {
        if let Some(side) = self.live_redis() {
            let redis = side.redis.clone();
            let n = new.clone();
            match side
                .breaker
                .call(side.op_timeout, async move { redis.create(&n, now).await })
                .await
            {
                Ok(outcome) => {
                    if let CreateOutcome::Created(s) | CreateOutcome::Existing(s) = &outcome {
                        side.confirmed.confirm(&s.session_id, now_millis());
                        let created_len = s.expires_at - s.created_at;
                        self.store.do_send(MirrorPut { session: s.clone(), created_len });
                    }
                    return Ok(normal(outcome));
                }
                Err(e) => log_redis_failure("create", &e),
            }
        }
        let journal = self.journaling();
        let outcome = self.store.send(CreateSession { new, journal }).await.map_err(gone)??;
        Ok(Answer { value: outcome, degraded: self.redis.is_some() })
    }

    /// Refreshes a session.
    pub async fn refresh(
        &self,
        sid: &str,
        ttl: Option<i64>,
        now: UnixSeconds,
    ) -> Result<Answer<RefreshOutcome>, StoreError> {
        if self.reader.get(sid, now) == Lookup::Revoked {
            return Ok(normal(RefreshOutcome::Revoked));
        }
        if let Some(side) = self.live_redis() {
            let redis = side.redis.clone();
            let id = sid.to_owned();
            match side
                .breaker
                .call(side.op_timeout, async move { redis.refresh(&id, ttl, now).await })
                .await
            {
                Ok(outcome) => {
                    if let RefreshOutcome::Refreshed(s) = &outcome {
                        self.store.do_send(MirrorExpiry {
                            session_id: s.session_id.clone(),
                            expires_at: s.expires_at,
                        });
                    }
                    return Ok(normal(outcome));
                }
                Err(e) => log_redis_failure("refresh", &e),
            }
        }
        let journal = self.journaling();
        let msg = RefreshSession { session_id: sid.to_owned(), ttl_seconds: ttl, journal };
        let outcome = self.store.send(msg).await.map_err(gone)??;
        Ok(Answer { value: outcome, degraded: self.redis.is_some() })
    }

    /// Revokes a session id.
    pub async fn revoke(
        &self,
        sid: &str,
        now: UnixSeconds,
    ) -> Result<Answer<RevokeOutcome>, StoreError> {
        if let Some(side) = self.live_redis() {
            let redis = side.redis.clone();
            let id = sid.to_owned();
            match side
                .breaker
                .call(side.op_timeout, async move { redis.revoke(&id, now).await })
                .await
            {
                Ok(outcome) => {
                    side.confirmed.forget(sid);
                    self.store.do_send(MirrorTomb {
                        session_id: sid.to_owned(),
                        until: now.saturating_add(self.max_ttl_seconds),
                    });
                    return Ok(normal(outcome));
                }
                Err(e) => log_redis_failure("revoke", &e),
            }
        }
        let journal = self.journaling();
        let msg = RevokeSession { session_id: sid.to_owned(), journal };
        let outcome = self.store.send(msg).await.map_err(gone)??;
        Ok(Answer { value: outcome, degraded: self.redis.is_some() })
    }

    /// Forgets a session id entirely, in Redis (when it answers) and in the fallback store.
    /// Only for the self-test's own sessions: a real revocation must never be forgotten.
    pub async fn purge(&self, sid: &str, uid: &str) -> Result<(), StoreError> {
        let mut in_redis = Ok(());
        if let Some(side) = self.live_redis() {
            let redis = side.redis.clone();
            let (s, u) = (sid.to_owned(), uid.to_owned());
            in_redis = side
                .breaker
                .call(side.op_timeout, async move { redis.purge(&s, &u).await })
                .await
                .map_err(|e| StoreError(format!("redis purge: {e}")));
            side.confirmed.forget(sid);
        }
        // The local copy goes either way; a Redis failure is still reported.
        let msg = PurgeSession { session_id: sid.to_owned() };
        self.store.send(msg).await.map_err(gone)??;
        in_redis
    }

    /// Revokes every live session of a user; answers their ids.
    pub async fn revoke_user(
        &self,
        uid: &str,
        now: UnixSeconds,
    ) -> Result<Answer<Vec<String>>, StoreError> {
        if let Some(side) = self.live_redis() {
            let redis = side.redis.clone();
            let id = uid.to_owned();
            match side
                .breaker
                .call(side.op_timeout, async move { redis.revoke_user(&id, now).await })
                .await
            {
                Ok(ids) => {
                    for sid in &ids {
                        side.confirmed.forget(sid);
                    }
                    self.store.do_send(MirrorRevokeUser { user_id: uid.to_owned(), at: now });
                    return Ok(normal(ids));
                }
                Err(e) => log_redis_failure("revoke_user", &e),
            }
        }
        let journal = self.journaling();
        let msg = RevokeUserSessions { user_id: uid.to_owned(), journal };
        let ids = self.store.send(msg).await.map_err(gone)??;
        Ok(Answer { value: ids, degraded: self.redis.is_some() })
    }
}
