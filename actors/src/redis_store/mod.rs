//! The Redis session store: the source of truth when `sessions.redis_url` is set (CONTRACT.md
//! section 6), with the semantics of the embedded [`crate::store::StoreCore`] operation for
//! operation. `docs/redis.md` describes the key schema, the scripts, the expiry rules, the
//! pub/sub channel and the pool settings.
//!
//! - Every write is one Lua script (`scripts.rs`), so it is atomic and cancel-safe: dropping
//!   the future of a call either leaves the script unsent or lets it run whole.
//! - Time is always the caller's `now`, never Redis' clock; keys carry `EXPIREAT` only so that
//!   nothing is left behind forever.
//! - Connections come from a `deadpool-redis` pool whose wait, create and recycle timeouts are
//!   all `connect_timeout`, and [`RedisStore`] bounds each `pool.get()` by `connect_timeout` as
//!   a whole, so a dead or hung (SIGSTOPped) server answers an error instead of hanging. The
//!   connections' response timeout is `connect_timeout` too.
//! - Events travel on the channel `<prefix>:events`; [`RedisStore::subscribe`] opens a
//!   dedicated connection for them.
//!
//! Errors ([`RedisError`]) never contain the URL's password.

mod codec;
mod keys;
mod scripts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::aio::{PubSubSink, PubSubStream};
use deadpool_redis::redis::{self, AsyncConnectionConfig, Value};
use deadpool_redis::{Manager, Pool, Runtime};
use futures_util::StreamExt;

use crate::domain::{JournalEntry, JournalOp, NewSession, Session};
use crate::store::{CreateOutcome, Lookup, RefreshOutcome, RevokeOutcome};
use keys::{KEY_GRACE_SECONDS, Keys};
use scripts::{Arg, SCRIPTS};

/// At most this many sessions are answered by [`RedisStore::list_user`] (the oldest).
pub const LIST_USER_MAX: usize = 10_000;

/// Journal entries sent per round trip by [`RedisStore::replay`].
pub const REPLAY_CHUNK: usize = 256;

/// Times (and TTLs) must lie within ±2^50 seconds: the scripts compute in Lua numbers
/// (doubles), exact far beyond that; anything larger is refused.
pub const MAX_TIME_MAGNITUDE: i64 = 1 << 50;

/// How to reach Redis and how the store uses it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user][:password@]host[:port][/db]` or `redis+unix:///path?pass=…` (this build
    /// has no TLS: `rediss://` fails to connect).
    pub url: String,
    /// Every key and the events channel start with this (`sessions.key_prefix`).
    pub key_prefix: String,
    /// The most pooled connections (0 counts as 1).
    pub pool_size: usize,
    /// Bounds connecting, waiting for a pooled connection, recycling one, and each response.
    pub connect_timeout: Duration,
    /// `sessions.max_ttl_seconds`: refresh never sets an expiry further ahead, and revoking an
    /// unknown id refuses it for this long.
    pub max_ttl_seconds: i64,
}

impl RedisSettings {
    /// The URL with its password (if any) replaced by `***`, fit for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url, &secrets_of(&self.url))
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_ttl_seconds", &self.max_ttl_seconds)
            .finish()
    }
}

/// A Redis failure (unreachable, timed out, refused, or an unexpected reply). Its message
/// never contains the URL's password.
#[derive(Debug, Clone)]
pub struct RedisError(pub String);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisError {}

/// The store: a connection pool and the settings. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// For the dedicated pub/sub connections.
    client: redis::Client,
    keys: Keys,
    max_ttl: i64,
    connect_timeout: Duration,
    /// The URL's password in the forms an error could show it; scrubbed from every message.
    secrets: Vec<String>,
    redacted_url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.redacted_url)
            .field("key_prefix", &self.inner.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Builds the pool (no connection is made until the first call).
    pub fn new(s: RedisSettings) -> Result<RedisStore, RedisError> {
        let secrets = secrets_of(&s.url);
        let redacted_url = redact(&s.url, &secrets);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            RedisError(redact(&format!("redis {redacted_url}: {what}: {e}"), &secrets))
        };
        if s.connect_timeout.is_zero() {
            return Err(RedisError("redis connect_timeout must be positive".into()));
        }
        let ct = Some(s.connect_timeout);
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(ct).set_response_timeout(ct);
        let manager =
            Manager::new_with_config(s.url.as_str(), config).map_err(|e| fail("bad URL", &e))?;
        let client = redis::Client::open(s.url.as_str()).map_err(|e| fail("bad URL", &e))?;
        let pool = Pool::builder(manager)
            .max_size(s.pool_size.max(1))
            .wait_timeout(ct)
            .create_timeout(ct)
            .recycle_timeout(ct)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| fail("cannot build the pool", &e))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                pool,
                client,
                keys: Keys::new(&s.key_prefix),
                max_ttl: s.max_ttl_seconds.clamp(0, MAX_TIME_MAGNITUDE),
                connect_timeout: s.connect_timeout,
                secrets,
                redacted_url,
            }),
        })
    }

    /// `PING` on a pooled connection: the health probe.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let pong: String =
            redis::cmd("PING").query_async(&mut conn).await.map_err(|e| self.err("PING", &e))?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisError(format!("redis PING answered {pong:?}")))
        }
    }

    /// Forgets a session id entirely: its session, its tombstone and its entry in the user's
    /// index, in one `MULTI`. Only the self-test's own sessions are ever purged.
    pub async fn purge(&self, session_id: &str, user_id: &str) -> Result<(), RedisError> {
        let k = &self.inner.keys;
        let mut conn = self.conn().await?;
        redis::pipe()
            .atomic()
            .del(k.session(session_id))
            .ignore()
            .del(k.tomb(session_id))
            .ignore()
            .zrem(k.user(user_id), session_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err("purge", &e))
    }

    /// Records a new session, as [`crate::store::StoreCore::create`] (never `Full`): `Revoked`
    /// over a live tombstone, `Existing`/`Conflict` over a live session of the same/another
    /// user, else `Created` with `created_at = now`. Refuses a session encoding to more than
    /// 1 MiB.
    pub async fn create(&self, new: &NewSession, now: i64) -> Result<CreateOutcome, RedisError> {
        check_time("now", now)?;
        check_time("expires_at", new.expires_at)?;
        let d = codec::encode_new(new, now).map_err(RedisError)?;
        let ident = &new.identity;
        let sid = ident.session_id.as_str();
        let k = &self.inner.keys;
        let (skey, rkey, ukey) = (k.session(sid), k.tomb(sid), k.user(&ident.user_id));
        let wkey = k.watermark(&ident.user_id);
        let issued = ident.issued_at.unwrap_or(now).clamp(-MAX_TIME_MAGNITUDE, MAX_TIME_MAGNITUDE);
        let reply = self
            .run(
                &SCRIPTS.create,
                &[&skey, &rkey, &ukey, &wkey],
                &[
                    Arg::Int(now),
                    Arg::Str(sid),
                    Arg::Str(&ident.user_id),
                    Arg::Bytes(&d),
                    Arg::Int(now),
                    Arg::Int(new.expires_at.saturating_sub(now)),
                    Arg::Int(new.expires_at),
                    Arg::Int(KEY_GRACE_SECONDS),
                    Arg::Str(k.prefix()),
                    Arg::Int(issued),
                    Arg::Int(self.inner.max_ttl),
                    Arg::Int(0),
                ],
            )
            .await?;
        let mut items = codec::array(reply).map_err(RedisError)?.into_iter();
        match status(items.next())? {
            1 => Ok(CreateOutcome::Created(Session {
                session_id: ident.session_id.clone(),
                user_id: ident.user_id.clone(),
                email: ident.email.clone(),
                role: ident.role.clone(),
                format: ident.format,
                created_at: now,
                expires_at: new.expires_at,
                attributes: new.attributes.clone(),
            })),
            2 => {
                let d = codec::bytes(next(&mut items)?).map_err(RedisError)?;
                let e = codec::int(&next(&mut items)?).map_err(RedisError)?;
                Ok(CreateOutcome::Existing(codec::decode(sid, &d, e).map_err(RedisError)?))
            }
            3 => Ok(CreateOutcome::Revoked),
            4 => Ok(CreateOutcome::Conflict),
            other => Err(unexpected("create", other)),
        }
    }

    /// Looks a session up: `Live`, `Revoked` (a live tombstone) or `Missing`.
    pub async fn get(&self, session_id: &str, now: i64) -> Result<Lookup, RedisError> {
        Ok(self.get_with_len(session_id, now).await?.0)
    }

    /// Which of `ids` Redis holds as revoked (a live tombstone and no live session), looked
    /// up [`REPLAY_CHUNK`] at a time in one round trip each (pipelined `get` scripts on one
    /// connection): what an instance checks for every connected session after its event bus
    /// subscription was down, without one round trip per socket.
    pub async fn revoked_among(&self, ids: &[String], now: i64) -> Result<Vec<String>, RedisError> {
        check_time("now", now)?;
        let mut revoked = Vec::new();
        if ids.is_empty() {
            return Ok(revoked);
        }
        let k = &self.inner.keys;
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(REPLAY_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for sid in chunk {
                let (skey, rkey) = (k.session(sid), k.tomb(sid));
                pipe.add_command(SCRIPTS.get.command(true, &[&skey, &rkey], &[Arg::Int(now)]));
            }
            let replies = self.query_scripts(&pipe, &mut conn, "get").await?;
            for (sid, reply) in chunk.iter().zip(replies) {
                if let Value::ServerError(e) = &reply {
                    return Err(self.err("get", e));
                }
                let mut items = codec::array(reply).map_err(RedisError)?.into_iter();
                if status(items.next())? == 2 {
                    revoked.push(sid.clone());
                }
            }
        }
        Ok(revoked)
    }

    /// [`Self::get`], plus the length the session was created with when it is live (what the
    /// fallback store needs to mirror it).
    pub async fn get_with_len(
        &self,
        session_id: &str,
        now: i64,
    ) -> Result<(Lookup, Option<i64>), RedisError> {
        check_time("now", now)?;
        let k = &self.inner.keys;
        let (skey, rkey) = (k.session(session_id), k.tomb(session_id));
        let reply = self.run(&SCRIPTS.get, &[&skey, &rkey], &[Arg::Int(now)]).await?;
        let mut items = codec::array(reply).map_err(RedisError)?.into_iter();
        match status(items.next())? {
            1 => {
                let d = codec::bytes(next(&mut items)?).map_err(RedisError)?;
                let e = codec::int(&next(&mut items)?).map_err(RedisError)?;
                let c = codec::int(&next(&mut items)?).map_err(RedisError)?;
                let s = codec::decode(session_id, &d, e).map_err(RedisError)?;
                Ok((Lookup::Live(s), Some(c)))
            }
            2 => Ok((Lookup::Revoked, None)),
            0 => Ok((Lookup::Missing, None)),
            other => Err(unexpected("get", other)),
        }
    }

    /// Pushes a live session's expiry to `now + ttl` (or `now +` its created length), never
    /// beyond `now + max_ttl_seconds`; `Revoked` or `Missing` otherwise.
    pub async fn refresh(
        &self,
        session_id: &str,
        ttl: Option<i64>,
        now: i64,
    ) -> Result<RefreshOutcome, RedisError> {
        check_time("now", now)?;
        // Clamping cannot change the answer: the result is capped at now + max_ttl anyway.
        let ttl = ttl.map(|t| t.clamp(-MAX_TIME_MAGNITUDE, MAX_TIME_MAGNITUDE));
        let ttl_arg = ttl.map(|t| t.to_string()).unwrap_or_default();
        let k = &self.inner.keys;
        let (skey, rkey) = (k.session(session_id), k.tomb(session_id));
        let reply = self
            .run(
                &SCRIPTS.refresh,
                &[&skey, &rkey],
                &[
                    Arg::Int(now),
                    Arg::Str(&ttl_arg),
                    Arg::Int(self.inner.max_ttl),
                    Arg::Int(KEY_GRACE_SECONDS),
                    Arg::Str(k.prefix()),
                    Arg::Str(session_id),
                ],
            )
            .await?;
        let mut items = codec::array(reply).map_err(RedisError)?.into_iter();
        match status(items.next())? {
            1 => {
                let d = codec::bytes(next(&mut items)?).map_err(RedisError)?;
                let e = codec::int(&next(&mut items)?).map_err(RedisError)?;
                let s = codec::decode(session_id, &d, e).map_err(RedisError)?;
                Ok(RefreshOutcome::Refreshed(s))
            }
            2 => Ok(RefreshOutcome::Revoked),
            0 => Ok(RefreshOutcome::Missing),
            other => Err(unexpected("refresh", other)),
        }
    }

    /// Revokes a session id, as [`crate::store::StoreCore::revoke`]: a live session is removed
    /// and tombstoned until the later of its expiry and any earlier tombstone (`newly_revoked`,
    /// its user); an id already revoked is not newly revoked; an unknown or expired id is
    /// tombstoned until `now + max_ttl_seconds` (`newly_revoked`, no user).
    pub async fn revoke(&self, session_id: &str, now: i64) -> Result<RevokeOutcome, RedisError> {
        check_time("now", now)?;
        let k = &self.inner.keys;
        let (skey, rkey) = (k.session(session_id), k.tomb(session_id));
        let reply = self
            .run(
                &SCRIPTS.revoke,
                &[&skey, &rkey],
                &[
                    Arg::Int(now),
                    Arg::Int(self.inner.max_ttl),
                    Arg::Int(KEY_GRACE_SECONDS),
                    Arg::Str(k.prefix()),
                    Arg::Str(session_id),
                ],
            )
            .await?;
        let mut items = codec::array(reply).map_err(RedisError)?.into_iter();
        match status(items.next())? {
            0 => Ok(RevokeOutcome { newly_revoked: false, user_id: None }),
            1 => {
                let user_id = match items.next() {
                    Some(v) => Some(codec::string(v).map_err(RedisError)?),
                    None => None,
                };
                Ok(RevokeOutcome { newly_revoked: true, user_id })
            }
            other => Err(unexpected("revoke", other)),
        }
    }

    /// The user's live sessions by `created_at`, then id; at most [`LIST_USER_MAX`] (the
    /// oldest). Prunes index members that are gone.
    pub async fn list_user(&self, user_id: &str, now: i64) -> Result<Vec<Session>, RedisError> {
        check_time("now", now)?;
        let k = &self.inner.keys;
        let ukey = k.user(user_id);
        let reply = self
            .run(
                &SCRIPTS.list_user,
                &[&ukey],
                &[
                    Arg::Int(now),
                    Arg::Int(KEY_GRACE_SECONDS),
                    Arg::Str(k.prefix()),
                    Arg::Str(user_id),
                    Arg::Int(i64::try_from(LIST_USER_MAX).unwrap_or(i64::MAX)),
                ],
            )
            .await?;
        let items = codec::array(reply).map_err(RedisError)?;
        let mut out = Vec::with_capacity(items.len() / 3);
        let mut it = items.into_iter();
        while let Some(sid) = it.next() {
            let sid = codec::string(sid).map_err(RedisError)?;
            let d = codec::bytes(next(&mut it)?).map_err(RedisError)?;
            let e = codec::int(&next(&mut it)?).map_err(RedisError)?;
            match codec::decode(&sid, &d, e) {
                Ok(s) => out.push(s),
                // As the embedded store does with a corrupt entry: log it, leave it out.
                Err(msg) => log::error!("{msg}"),
            }
        }
        out.sort_by(|a, b| {
            a.created_at.cmp(&b.created_at).then_with(|| a.session_id.cmp(&b.session_id))
        });
        out.truncate(LIST_USER_MAX);
        Ok(out)
    }

    /// Revokes every live session of the user in one atomic script (a session created
    /// concurrently is either revoked or created after); answers their ids by `created_at`,
    /// then id. Each tombstone lasts until the later of the session's expiry and any earlier
    /// tombstone.
    pub async fn revoke_user(&self, user_id: &str, now: i64) -> Result<Vec<String>, RedisError> {
        check_time("now", now)?;
        let k = &self.inner.keys;
        let (ukey, wkey) = (k.user(user_id), k.watermark(user_id));
        let reply = self
            .run(
                &SCRIPTS.revoke_user,
                &[&ukey, &wkey],
                &[
                    Arg::Int(now),
                    Arg::Int(KEY_GRACE_SECONDS),
                    Arg::Str(k.prefix()),
                    Arg::Str(user_id),
                    Arg::Str(""),
                    Arg::Int(self.inner.max_ttl),
                ],
            )
            .await?;
        let items = codec::array(reply).map_err(RedisError)?;
        let mut revoked = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let Some(sid) = it.next() {
            let sid = codec::string(sid).map_err(RedisError)?;
            let t = codec::int(&next(&mut it)?).map_err(RedisError)?;
            revoked.push((t, sid));
        }
        revoked.sort();
        Ok(revoked.into_iter().map(|(_, sid)| sid).collect())
    }

    /// Replays journal entries in order, [`REPLAY_CHUNK`] scripts per round trip on one
    /// connection. Idempotent (replaying twice is replaying once) and revocations win:
    ///
    /// - `Put`: as `create` from the given session (its own `created_at` and expiry): refused
    ///   over a live tombstone, a no-op when the id is live (whoever's it is), else stored
    ///   (even when it has expired at `now`: an `Expiry` after it may extend it);
    /// - `Expiry`: sets the expiry of the session when it is held and not revoked (never
    ///   recreates one);
    /// - `Tomb`: when `until` is still ahead, removes the session whatever its state and keeps
    ///   a tombstone until the latest of `until`, the live session's expiry and an earlier
    ///   tombstone; a revocation already over changes nothing;
    /// - `RevokeUser`: revokes every live session of the user created at or before `at`,
    ///   except those the journal itself `Put`s after this entry.
    ///
    /// Replaying the embedded store's journal into an empty Redis gives the embedded store's
    /// state (a property test checks it).
    ///
    /// Each entry is one atomic script; if the call fails or is dropped midway a prefix of the
    /// entries has been applied, and replaying them all again is correct.
    pub async fn replay(
        &self,
        entries: &[JournalEntry],
        now: i64,
    ) -> Result<Vec<RefusedCreate>, RedisError> {
        check_time("now", now)?;
        let mut refused = Vec::new();
        if entries.is_empty() {
            return Ok(refused);
        }
        let spared = revoke_user_spares(entries);
        let mut conn = self.conn().await?;
        for (n, chunk) in entries.chunks(REPLAY_CHUNK).enumerate() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (i, entry) in chunk.iter().enumerate() {
                let spare = spared.get(&(n * REPLAY_CHUNK + i)).map_or(&[][..], Vec::as_slice);
                pipe.add_command(self.replay_command(&entry.op, now, spare)?);
            }
            // The entries before a NOSCRIPT are idempotent: sending the chunk again is safe.
            let replies = self.query_scripts(&pipe, &mut conn, "replay").await?;
            if let Some(Value::ServerError(e)) =
                replies.iter().find(|v| matches!(v, Value::ServerError(_)))
            {
                return Err(self.err("replay", e));
            }
            for (entry, reply) in chunk.iter().zip(replies) {
                if let JournalOp::Put { session, .. } = &entry.op
                    && create_refused_as_revoked(reply)
                {
                    refused.push(RefusedCreate {
                        session_id: session.session_id.clone(),
                        user_id: session.user_id.clone(),
                    });
                }
            }
        }
        Ok(refused)
    }

    /// Publishes one event on the events channel.
    pub async fn publish(&self, payload: &[u8]) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        redis::cmd("PUBLISH")
            .arg(self.inner.keys.events())
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| self.err("PUBLISH", &e))?;
        Ok(())
    }

    /// The pub/sub channel of auth events: `<prefix>:events`.
    pub fn events_channel(&self) -> String {
        self.inner.keys.events()
    }

    /// Opens a dedicated (non-pooled) connection subscribed to the events channel, within
    /// `connect_timeout`. The stream ends when that connection is lost; subscribe again then.
    pub async fn subscribe(&self) -> Result<EventStream, RedisError> {
        let channel = self.events_channel();
        let open = async {
            let (mut sink, stream) = self.inner.client.get_async_pubsub().await?.split();
            sink.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(self.inner.connect_timeout, open).await {
            Ok(Ok((sink, stream))) => {
                Ok(EventStream { stream, sink, timeout: self.inner.connect_timeout })
            }
            Ok(Err(e)) => Err(self.err("SUBSCRIBE", &e)),
            Err(_) => Err(self.timed_out("SUBSCRIBE")),
        }
    }

    /// A pooled connection within `connect_timeout`, whatever the pool has to do to get one
    /// (wait for a slot, recycle idle connections one after another, connect).
    async fn conn(&self) -> Result<deadpool_redis::Connection, RedisError> {
        match tokio::time::timeout(self.inner.connect_timeout, self.inner.pool.get()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.err("no connection", &e)),
            Err(_) => Err(self.timed_out("no connection")),
        }
    }

    /// Runs one script on a pooled connection.
    async fn run(
        &self,
        script: &scripts::LuaScript,
        keys: &[&str],
        args: &[Arg<'_>],
    ) -> Result<Value, RedisError> {
        let mut conn = self.conn().await?;
        scripts::invoke(&mut conn, script, keys, args)
            .await
            .map_err(|e| self.err(&format!("script {}", script.name), &e))
    }

    /// The script call of one journal entry; `spare`: for a `RevokeUser`, the ids to leave.
    fn replay_command(
        &self,
        op: &JournalOp,
        now: i64,
        spare: &[&str],
    ) -> Result<redis::Cmd, RedisError> {
        let k = &self.inner.keys;
        let grace = Arg::Int(KEY_GRACE_SECONDS);
        let prefix = Arg::Str(k.prefix());
        let cmd = match op {
            JournalOp::Put { session, created_len, issued_at } => {
                check_time("created_at", session.created_at)?;
                check_time("expires_at", session.expires_at)?;
                let d = codec::encode_session(session).map_err(RedisError)?;
                let sid = session.session_id.as_str();
                let (skey, rkey, ukey) = (k.session(sid), k.tomb(sid), k.user(&session.user_id));
                let wkey = k.watermark(&session.user_id);
                let issued = issued_at
                    .unwrap_or(session.created_at)
                    .clamp(-MAX_TIME_MAGNITUDE, MAX_TIME_MAGNITUDE);
                SCRIPTS.create.command(
                    true,
                    &[&skey, &rkey, &ukey, &wkey],
                    &[
                        Arg::Int(now),
                        Arg::Str(sid),
                        Arg::Str(&session.user_id),
                        Arg::Bytes(&d),
                        Arg::Int(session.created_at),
                        Arg::Int((*created_len).clamp(-MAX_TIME_MAGNITUDE, MAX_TIME_MAGNITUDE)),
                        Arg::Int(session.expires_at),
                        grace,
                        prefix,
                        Arg::Int(issued),
                        Arg::Int(self.inner.max_ttl),
                        Arg::Int(1),
                    ],
                )
            }
            JournalOp::Expiry { session_id, expires_at } => {
                check_time("expires_at", *expires_at)?;
                let (skey, rkey) = (k.session(session_id), k.tomb(session_id));
                SCRIPTS.expiry.command(
                    true,
                    &[&skey, &rkey],
                    &[Arg::Int(now), Arg::Int(*expires_at), grace, prefix, Arg::Str(session_id)],
                )
            }
            JournalOp::Tomb { session_id, until, user_id: _ } => {
                check_time("until", *until)?;
                let (skey, rkey) = (k.session(session_id), k.tomb(session_id));
                SCRIPTS.tomb.command(
                    true,
                    &[&skey, &rkey],
                    &[Arg::Int(now), Arg::Int(*until), grace, prefix, Arg::Str(session_id)],
                )
            }
            JournalOp::RevokeUser { user_id, at } => {
                check_time("at", *at)?;
                let (ukey, wkey) = (k.user(user_id), k.watermark(user_id));
                let mut args = vec![
                    Arg::Int(now),
                    grace,
                    prefix,
                    Arg::Str(user_id),
                    Arg::Int(*at),
                    Arg::Int(self.inner.max_ttl),
                ];
                args.extend(spare.iter().map(|sid| Arg::Str(sid)));
                SCRIPTS.revoke_user.command(true, &[&ukey, &wkey], &args)
            }
        };
        Ok(cmd)
    }

    /// Sends a pipeline of script calls and answers one reply per call (errors included, as
    /// values). When the server answers `NOSCRIPT` (its script cache was flushed: a restart,
    /// `SCRIPT FLUSH`), the scripts are loaded and the whole pipeline is sent again, so its
    /// calls must be safe to repeat.
    async fn query_scripts(
        &self,
        pipe: &redis::Pipeline,
        conn: &mut deadpool_redis::Connection,
        what: &str,
    ) -> Result<Vec<Value>, RedisError> {
        let mut replies = self.query_pipeline(pipe, conn, what).await?;
        if replies.iter().any(scripts::value_is_noscript) {
            log::info!("redis does not hold the store's scripts; loading them");
            self.load_scripts(conn).await?;
            replies = self.query_pipeline(pipe, conn, what).await?;
        }
        Ok(replies)
    }

    async fn query_pipeline(
        &self,
        pipe: &redis::Pipeline,
        conn: &mut deadpool_redis::Connection,
        what: &str,
    ) -> Result<Vec<Value>, RedisError> {
        let reply: Value = pipe.query_async(conn).await.map_err(|e| self.err(what, &e))?;
        codec::array(reply).map_err(RedisError)
    }

    /// `SCRIPT LOAD`s every script (one round trip), checking the server's SHA-1 against ours.
    async fn load_scripts(&self, conn: &mut deadpool_redis::Connection) -> Result<(), RedisError> {
        let all = SCRIPTS.all();
        let mut pipe = redis::pipe();
        for s in all {
            pipe.cmd("SCRIPT").arg("LOAD").arg(s.source);
        }
        let shas: Vec<String> =
            pipe.query_async(conn).await.map_err(|e| self.err("SCRIPT LOAD", &e))?;
        for (s, sha) in all.iter().zip(&shas) {
            if *sha != s.sha {
                return Err(RedisError(format!(
                    "redis answered SHA-1 {sha} for script {}, expected {}",
                    s.name, s.sha
                )));
            }
        }
        Ok(())
    }

    fn err(&self, what: &str, e: &dyn std::fmt::Display) -> RedisError {
        let msg = format!("redis {}: {what}: {e}", self.inner.redacted_url);
        RedisError(redact(&msg, &self.inner.secrets))
    }

    fn timed_out(&self, what: &str) -> RedisError {
        RedisError(format!(
            "redis {}: {what}: timed out after {} ms",
            self.inner.redacted_url,
            self.inner.connect_timeout.as_millis()
        ))
    }
}

/// The messages of the events channel, on a dedicated connection.
pub struct EventStream {
    stream: PubSubStream,
    sink: PubSubSink,
    timeout: Duration,
}

impl EventStream {
    /// The next message's payload; `None` once the connection is lost (it does not reconnect:
    /// call [`RedisStore::subscribe`] again).
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.stream.next().await.map(|msg| msg.get_payload_bytes().to_vec())
    }

    /// A handle that checks the subscription's connection answers (a server that hangs,
    /// e.g. SIGSTOPped, delivers nothing and closes nothing: only a probe notices).
    pub fn probe(&self) -> SubscriptionProbe {
        SubscriptionProbe { sink: self.sink.clone(), timeout: self.timeout }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

/// Pings the connection of an [`EventStream`] (see [`EventStream::probe`]).
#[derive(Clone)]
pub struct SubscriptionProbe {
    sink: PubSubSink,
    timeout: Duration,
}

impl SubscriptionProbe {
    /// `PING` on the subscribed connection, within the store's `connect_timeout`.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        match tokio::time::timeout(self.timeout, self.sink.ping::<Value>()).await {
            Ok(Ok(_)) => Ok(()),
            // A PING error names no URL or password: it comes from the server or the socket.
            Ok(Err(e)) => Err(RedisError(format!("redis subscription PING: {e}"))),
            Err(_) => Err(RedisError(format!(
                "redis subscription PING: timed out after {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

impl std::fmt::Debug for SubscriptionProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionProbe").finish_non_exhaustive()
    }
}

/// For each `RevokeUser` entry (by index), the sessions of that user the journal `Put`s after
/// it with a `created_at` it would cover (`<= at`: created in the same second, after the
/// revoke-all). Replaying the journal again must not revoke them: the first replay applied
/// the revoke-all before they existed.
/// Whether a `create` script's reply is `{3}`: the id is revoked in Redis.
fn create_refused_as_revoked(reply: Value) -> bool {
    match codec::array(reply) {
        Ok(items) => matches!(items.first(), Some(Value::Int(3))),
        Err(_) => false,
    }
}

fn revoke_user_spares(entries: &[JournalEntry]) -> HashMap<usize, Vec<&str>> {
    let mut puts: HashMap<&str, Vec<(usize, i64, &str)>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let JournalOp::Put { session, .. } = &e.op {
            puts.entry(session.user_id.as_str()).or_default().push((
                i,
                session.created_at,
                session.session_id.as_str(),
            ));
        }
    }
    let mut out = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let JournalOp::RevokeUser { user_id, at } = &e.op
            && let Some(list) = puts.get(user_id.as_str())
        {
            let later = &list[list.partition_point(|(j, _, _)| *j < i)..];
            let spare: Vec<&str> =
                later.iter().filter(|(_, c, _)| c <= at).map(|(_, _, sid)| *sid).collect();
            if !spare.is_empty() {
                out.insert(i, spare);
            }
        }
    }
    out
}

/// A replayed `Put` that Redis refused as revoked (by id, or by a revoke-all's watermark).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedCreate {
    /// The session id.
    pub session_id: String,
    /// Its user.
    pub user_id: String,
}

/// Refuses times the scripts could not compute with exactly.
fn check_time(what: &str, t: i64) -> Result<(), RedisError> {
    if (-MAX_TIME_MAGNITUDE..=MAX_TIME_MAGNITUDE).contains(&t) {
        Ok(())
    } else {
        Err(RedisError(format!("{what} = {t} is out of range for the redis store")))
    }
}

fn status(v: Option<Value>) -> Result<i64, RedisError> {
    codec::int(&v.ok_or_else(|| RedisError("empty reply from a redis script".into()))?)
        .map_err(RedisError)
}

fn next(it: &mut impl Iterator<Item = Value>) -> Result<Value, RedisError> {
    it.next().ok_or_else(|| RedisError("short reply from a redis script".into()))
}

fn unexpected(what: &str, status: i64) -> RedisError {
    RedisError(format!("unexpected status {status} from the redis {what} script"))
}

/// The password of a URL, in every form an error message could show: as written in the
/// userinfo (`redis://user:secret@host`) or a `pass`/`password` query parameter, and
/// percent-decoded.
fn secrets_of(url: &str) -> Vec<String> {
    let mut raw = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, pass)) = userinfo.split_once(':')
        {
            raw.push(pass.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((k, v)) = pair.split_once('=')
                && (k == "pass" || k == "password")
            {
                raw.push(v.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for s in raw.into_iter().filter(|s| !s.is_empty()) {
        let decoded = percent_decode(&s);
        if decoded != s && !decoded.is_empty() {
            out.push(decoded);
        }
        out.push(s);
    }
    // Longest first, so a secret containing another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn redact(msg: &str, secrets: &[String]) -> String {
    let mut out = msg.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests;
