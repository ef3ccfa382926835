//! The Coordinator actor: gives every auth event its cluster-unique id and fans it out to the
//! subscribers (the WebSocket gateway, tests, the self-test probe); in Redis mode it also
//! supervises the breakers and the instance mode, drives the health probe and the journal
//! replay, and carries auth events across instances on the Redis bus.
//!
//! Mode: degraded from the moment the `redis` breaker opens (or at start, when writes taken
//! while degraded are still waiting to be replayed) until the breaker has closed *and* the
//! journal has been replayed into Redis; each change raises `service.degraded` /
//! `service.recovered` once.
//!
//! Bus: every auth event raised here is published on `<prefix>:events` as
//! `{"origin": <instance id>, "event": <AuthEvent>}`; every instance subscribes, ignores its
//! own, delivers the others to its subscribers (exactly once per instance, since the raising
//! instance delivers its own events locally) and applies them to its mirror.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::RedisSide;
use crate::breaker::{BreakerEvent, BreakerState, SharedBreaker};
use crate::domain::{AuthEvent, EventKind, JournalOp, now_millis, now_seconds};
use crate::fallback_store::FallbackStore;
use crate::health::{
    ANSWER_TIMEOUT, CheckHealth, CheckLiveness, ComponentHealth, HealthStatus, Liveness, Ping,
    Watch,
};
use crate::messages::{
    AckJournal, ConnectedSessions, CoordinatorStats, Deliver, DeliverProbe, GetCoordinatorStats,
    GetStoreStats, MirrorExpiry, MirrorRevokeUser, MirrorTomb, PendingJournal, RaiseEvent,
    SessionSource, Subscribe,
};
use crate::metrics::metrics;
use crate::redis_store::{REPLAY_CHUNK, RefusedCreate};

/// The most subscribers held at once; a further subscription is refused with a warning.
pub const MAX_SUBSCRIBERS: usize = 1024;
/// Events raised while the bus could not take them, kept to publish after recovery.
pub const MAX_UNPUBLISHED: usize = 10_000;
/// Journal entries replayed per round trip batch.
pub const REPLAY_BATCH: usize = 1000;
/// The longest session id a token can carry (docs/tokens.md rule 7).
const MAX_TOKEN_ID_BYTES: usize = 256;
/// Wait between two attempts to (re)subscribe to the bus.
pub const BUS_RETRY: Duration = Duration::from_millis(250);
/// How often the bus subscription's connection is pinged.
pub const BUS_PROBE: Duration = Duration::from_secs(1);

/// What the Coordinator needs in Redis mode.
pub struct CoordinatorRedis {
    /// The Redis side shared with the pipeline (store, `redis` breaker, mode, cache).
    pub side: RedisSide,
    /// The `event_bus` breaker (the pub/sub subscription).
    pub bus_breaker: SharedBreaker,
    /// Transitions of both breakers.
    pub transitions: tokio::sync::mpsc::UnboundedReceiver<BreakerEvent>,
    /// The fallback store (mirror and journal).
    pub store: Addr<FallbackStore>,
    /// How often Redis is probed (PING through the breaker).
    pub probe_interval: Duration,
    /// `sessions.max_ttl_seconds`, for tombstones learned from the bus.
    pub max_ttl_seconds: i64,
}

struct RedisState {
    cfg: CoordinatorRedis,
    replaying: bool,
    unpublished: VecDeque<Vec<u8>>,
    /// Journal entries waiting for replay, as of the last probe tick.
    pending: usize,
    /// A reconciliation of the connected sessions is owed (the bus came back) and has not
    /// completed yet: retried on every probe tick until Redis answers it.
    reconcile_owed: bool,
    /// A reconciliation is running.
    reconciling: bool,
    /// The last replay attempt's outcome, for health.
    last_replay: Option<ReplayReport>,
}

/// How the last journal replay went.
#[derive(Clone, Debug, Serialize)]
struct ReplayReport {
    /// Unix ms when it ended.
    at_ms: i64,
    /// Entries replayed (0 on failure).
    entries: usize,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// The Coordinator actor.
pub struct Coordinator {
    instance_id: String,
    next_seq: u64,
    subscribers: Vec<Recipient<Deliver>>,
    raised: BTreeMap<String, u64>,
    relayed: u64,
    redis: Option<RedisState>,
    watched: Vec<(&'static str, Recipient<Ping>)>,
    sessions: Option<Recipient<ConnectedSessions>>,
}

/// The bus's wire format.
#[derive(Serialize, Deserialize)]
struct BusEnvelope {
    origin: String,
    event: AuthEvent,
}

/// A breaker changed state (from the breakers' notifier).
#[derive(Message)]
#[rtype(result = "()")]
struct BreakerChanged(BreakerEvent);

/// The bus subscription is (again) up.
#[derive(Message)]
#[rtype(result = "()")]
struct BusSubscribed;

/// A message arrived on the bus.
#[derive(Message)]
#[rtype(result = "()")]
struct BusMessage(Vec<u8>);

impl Coordinator {
    /// A coordinator for the instance with this id (the prefix of every event id it raises),
    /// embedded mode.
    pub fn new(instance_id: String) -> Self {
        Coordinator {
            instance_id,
            next_seq: 0,
            subscribers: Vec::new(),
            raised: BTreeMap::new(),
            relayed: 0,
            redis: None,
            watched: Vec::new(),
            sessions: None,
        }
    }

    /// A coordinator in Redis mode.
    pub fn with_redis(instance_id: String, redis: CoordinatorRedis) -> Self {
        let mut c = Coordinator::new(instance_id);
        c.redis = Some(RedisState {
            cfg: redis,
            replaying: false,
            unpublished: VecDeque::new(),
            pending: 0,
            reconcile_owed: false,
            reconciling: false,
            last_replay: None,
        });
        c
    }

    fn fan_out(&mut self, event: Arc<AuthEvent>) {
        self.subscribers.retain(|sub| match sub.try_send(Deliver(Arc::clone(&event))) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                log::warn!("event subscriber mailbox full; event {} dropped for it", event.id);
                true
            }
            Err(SendError::Closed(_)) => false,
        });
    }

    /// The event `msg` describes, with the next event id of this instance.
    fn new_event(&mut self, msg: RaiseEvent) -> AuthEvent {
        self.next_seq += 1;
        AuthEvent {
            id: format!("{}-{}", self.instance_id, self.next_seq),
            event: msg.event,
            session_id: msg.session_id,
            user_id: msg.user_id,
            at_ms: msg.at_ms.unwrap_or_else(now_millis),
            data: msg.data,
        }
    }

    fn raise(&mut self, msg: RaiseEvent, ctx: &mut Context<Self>) {
        let kind = msg.event;
        let event = self.new_event(msg);
        *self.raised.entry(kind.as_str().to_owned()).or_insert(0) += 1;
        metrics().events_published.with_label_values(&[kind.as_str()]).inc();
        log::debug!("event {} {}", event.id, event.event.as_str());
        let event = Arc::new(event);
        if crosses_instances(event.event) {
            self.publish(&event, ctx);
        }
        self.fan_out(event);
    }

    fn publish(&mut self, event: &AuthEvent, ctx: &mut Context<Self>) {
        let Some(r) = self.redis.as_mut() else { return };
        let envelope = BusEnvelope { origin: self.instance_id.clone(), event: event.clone() };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(p) => p,
            Err(e) => {
                log::error!("event {} cannot be encoded: {e}", event.id);
                return;
            }
        };
        if r.cfg.side.mode.is_degraded() {
            queue_unpublished(&mut r.unpublished, payload);
            return;
        }
        let side = r.cfg.side.clone();
        let fut = async move {
            let redis = side.redis.clone();
            let p = payload.clone();
            match side.breaker.call(side.op_timeout, async move { redis.publish(&p).await }).await {
                Ok(()) => None,
                Err(_) => Some(payload),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|failed, act, _| {
            if let (Some(payload), Some(r)) = (failed, act.redis.as_mut()) {
                queue_unpublished(&mut r.unpublished, payload);
            }
        }));
    }

    fn set_mode(&mut self, degraded: bool, why: &str, ctx: &mut Context<Self>) {
        let Some(r) = self.redis.as_ref() else { return };
        if !r.cfg.side.mode.set_degraded(degraded) {
            return;
        }
        self.announce_mode(degraded, why, ctx);
    }

    /// Logs, counts and raises the event of a mode the flag already holds.
    fn announce_mode(&mut self, degraded: bool, why: &str, ctx: &mut Context<Self>) {
        let (kind, level) = if degraded {
            (EventKind::ServiceDegraded, log::Level::Warn)
        } else {
            (EventKind::ServiceRecovered, log::Level::Info)
        };
        log::log!(level, "mode {}: {why}", if degraded { "degraded" } else { "normal" });
        metrics().mode.set(i64::from(degraded));
        self.raise(
            RaiseEvent {
                event: kind,
                session_id: None,
                user_id: None,
                data: serde_json::json!({ "reason": why }),
                at_ms: None,
            },
            ctx,
        );
        if !degraded {
            self.flush_unpublished(ctx);
        }
    }

    fn flush_unpublished(&mut self, ctx: &mut Context<Self>) {
        let Some(r) = self.redis.as_mut() else { return };
        if r.unpublished.is_empty() {
            return;
        }
        let queued: Vec<Vec<u8>> = r.unpublished.drain(..).collect();
        let side = r.cfg.side.clone();
        ctx.spawn(
            async move {
                let mut failed = Vec::new();
                for payload in queued {
                    let redis = side.redis.clone();
                    let p = payload.clone();
                    let sent = side
                        .breaker
                        .call(side.op_timeout, async move { redis.publish(&p).await })
                        .await;
                    if sent.is_err() {
                        failed.push(payload);
                    }
                }
                failed
            }
            .into_actor(self)
            .map(|failed, act, _| {
                if let Some(r) = act.redis.as_mut() {
                    for p in failed {
                        queue_unpublished(&mut r.unpublished, p);
                    }
                }
            }),
        );
    }

    /// The periodic probe: PING through the breaker, then replay when there is something to
    /// replay and Redis is reachable.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(r) = self.redis.as_ref() else { return };
        let side = r.cfg.side.clone();
        let store = r.cfg.store.clone();
        let fut = async move {
            let redis = side.redis.clone();
            let pinged =
                side.breaker.call(side.op_timeout, async move { redis.ping().await }).await.is_ok();
            let pending = match store.send(GetStoreStats).await {
                Ok(stats) => stats.journal_len,
                Err(_) => 0,
            };
            (pinged, pending)
        };
        ctx.spawn(fut.into_actor(self).map(move |(pinged, pending), act, ctx| {
            let Some(r) = act.redis.as_mut() else { return };
            r.pending = pending;
            if pinged && r.reconcile_owed && !r.reconciling {
                act.reconcile(ctx);
            }
            let Some(r) = act.redis.as_mut() else { return };
            let degraded = r.cfg.side.mode.is_degraded();
            let closed = r.cfg.side.breaker.state() == BreakerState::Closed;
            // Read now, not when the probe started: two ticks may overlap.
            if pinged && closed && !r.replaying && (degraded || pending > 0) {
                act.replay(ctx);
            }
        }));
    }

    fn replay(&mut self, ctx: &mut Context<Self>) {
        let Some(r) = self.redis.as_mut() else { return };
        r.replaying = true;
        let side = r.cfg.side.clone();
        let store = r.cfg.store.clone();
        let max_ttl = r.cfg.max_ttl_seconds;
        let fut = async move {
            let started = std::time::Instant::now();
            let mut replayed = 0usize;
            // Revocations replayed into Redis, to announce on the bus: the events raised when
            // they were taken may never have left this instance (kept in memory while
            // degraded, lost if the process died since).
            let mut announce = Vec::new();
            // Replayed creates that Redis refused (revoked meanwhile, by id or by a revoke-all):
            // raised here too, since this instance's own sockets of them heard nothing.
            let mut refused_here = Vec::new();
            let result = async {
                loop {
                    let batch = store
                        .send(PendingJournal { max: REPLAY_BATCH })
                        .await
                        .map_err(|e| format!("fallback store unreachable: {e}"))?;
                    let Some(last) = batch.last().map(|e| e.seq) else { break };
                    let redis = side.redis.clone();
                    let now = now_seconds();
                    let n = batch.len();
                    let revocations: Vec<RaiseEvent> =
                        batch.iter().filter_map(|e| revocation_event(&e.op)).collect();
                    let refused = side
                        .breaker
                        .call(side.op_timeout * 8, async move { redis.replay(&batch, now).await })
                        .await
                        .map_err(|e| format!("replay into Redis failed: {e}"))?;
                    announce.extend(revocations);
                    // A create taken here while degraded that Redis refuses (the id was revoked
                    // elsewhere meanwhile) must not stay live in this instance's own store.
                    for RefusedCreate { session_id: sid, user_id } in refused {
                        log::info!("replayed create refused by Redis (revoked): {sid}");
                        refused_here.push(RaiseEvent {
                            event: EventKind::SessionRevoked,
                            session_id: Some(sid.clone()),
                            user_id: Some(user_id),
                            data: serde_json::json!({ "replayed": true }),
                            at_ms: None,
                        });
                        store
                            .send(MirrorTomb {
                                session_id: sid,
                                until: now.saturating_add(max_ttl),
                            })
                            .await
                            .map_err(|e| format!("fallback store unreachable: {e}"))?
                            .map_err(|e| format!("mirroring a refused create failed: {e}"))?;
                    }
                    store
                        .send(AckJournal { up_to: last })
                        .await
                        .map_err(|e| format!("fallback store unreachable: {e}"))?
                        .map_err(|e| format!("journal ack failed: {e}"))?;
                    replayed += n;
                }
                Ok::<_, String>(())
            }
            .await;
            (announce, refused_here, result.map(|()| (replayed, started.elapsed())))
        };
        ctx.spawn(fut.into_actor(self).map(|(announce, refused_here, result), act, ctx| {
            for event in announce {
                act.announce(event, ctx);
            }
            // Local sockets and, through the bus, other instances' (a degraded one may hold a
            // socket of it that no revocation named).
            for event in refused_here {
                act.raise(event, ctx);
            }
            if let Some(r) = act.redis.as_mut() {
                r.replaying = false;
            }
            let report = ReplayReport {
                at_ms: now_millis(),
                entries: *result.as_ref().map(|(n, _)| n).unwrap_or(&0),
                error: result.as_ref().err().cloned(),
            };
            if let Some(r) = act.redis.as_mut() {
                r.last_replay = Some(report);
            }
            match result {
                Ok((n, took)) => {
                    if n > 0 {
                        metrics().replay_duration.observe(took.as_secs_f64());
                        metrics().replayed.inc_by(n as u64);
                        log::info!(
                            "replayed {n} journaled writes into Redis in {} ms",
                            took.as_millis()
                        );
                    }
                    let closed = act
                        .redis
                        .as_ref()
                        .is_some_and(|r| r.cfg.side.breaker.state() == BreakerState::Closed);
                    if closed {
                        act.set_mode(
                            false,
                            "Redis answers and every journaled write is replayed",
                            ctx,
                        );
                    }
                }
                Err(e) => log::warn!("{e}; will retry"),
            }
        }));
    }

    /// After the bus was down, revocations made elsewhere may have been missed: every
    /// connected session is looked up in Redis, and each one Redis holds as revoked gets a
    /// local `session.revoked` (its sockets close with 4001) and a tombstone in the mirror.
    /// Only tombstones count: a session Redis does not know may be one of this instance's own
    /// writes still waiting for replay.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let (Some(r), Some(sessions)) = (self.redis.as_mut(), self.sessions.clone()) else {
            return;
        };
        r.reconcile_owed = true;
        if r.reconciling {
            return;
        }
        r.reconciling = true;
        let side = r.cfg.side.clone();
        let fut = async move {
            let ids = tokio::time::timeout(ANSWER_TIMEOUT, sessions.send(ConnectedSessions))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            // Pipelined, a chunk per round trip (and per breaker call, bounded like a replay
            // batch): one lookup per socket would keep the instance busy just when
            // `service.recovered` goes out to every socket.
            let mut revoked = Vec::new();
            for chunk in ids.chunks(REPLAY_CHUNK) {
                let redis = side.redis.clone();
                let chunk = chunk.to_vec();
                let lookups = async move { redis.revoked_among(&chunk, now_seconds()).await };
                match side.breaker.call(side.op_timeout * 8, lookups).await {
                    Ok(found) => revoked.extend(found),
                    // Redis is failing (or its breaker is open): retried on the next tick.
                    Err(_) => return (revoked, false),
                }
            }
            (revoked, true)
        };
        ctx.spawn(fut.into_actor(self).map(|(revoked, complete), act, _ctx| {
            if let Some(r) = act.redis.as_mut() {
                r.reconciling = false;
                if complete {
                    r.reconcile_owed = false;
                }
            }
            if revoked.is_empty() {
                return;
            }
            log::info!("{} connected sessions were revoked while the bus was down", revoked.len());
            for sid in revoked {
                if let Some(r) = act.redis.as_ref() {
                    r.cfg.side.confirmed.forget(&sid);
                    r.cfg.store.do_send(MirrorTomb {
                        session_id: sid.clone(),
                        until: now_seconds().saturating_add(r.cfg.max_ttl_seconds),
                    });
                }
                let event = act.new_event(RaiseEvent {
                    event: EventKind::SessionRevoked,
                    session_id: Some(sid),
                    user_id: None,
                    data: serde_json::json!({ "reconciled": true }),
                    at_ms: None,
                });
                act.fan_out(Arc::new(event));
            }
        }));
    }

    /// Publishes an event on the bus for the other instances only (the local subscribers got
    /// it when the write was taken), with a fresh id.
    fn announce(&mut self, msg: RaiseEvent, ctx: &mut Context<Self>) {
        let event = self.new_event(msg);
        self.publish(&event, ctx);
    }

    fn on_bus_message(&mut self, payload: &[u8]) {
        let envelope: BusEnvelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("ignoring an undecodable bus message: {e}");
                return;
            }
        };
        if envelope.origin == self.instance_id || !crosses_instances(envelope.event.event) {
            return;
        }
        let event = envelope.event;
        let m = metrics();
        m.bus_received.with_label_values(&[event.event.as_str()]).inc();
        m.bus_lag.observe(now_millis().saturating_sub(event.at_ms).max(0) as f64 / 1000.0);
        if let Some(r) = self.redis.as_ref() {
            apply_to_mirror(&r.cfg, &event);
        }
        self.relayed += 1;
        self.fan_out(Arc::new(event));
    }
}

/// The bus event that announces a replayed revocation, if the entry is one.
fn revocation_event(op: &JournalOp) -> Option<RaiseEvent> {
    match op {
        // An id longer than any token can name (the self-test's) has no socket anywhere.
        JournalOp::Tomb { session_id, .. } if session_id.len() > MAX_TOKEN_ID_BYTES => None,
        JournalOp::Tomb { session_id, user_id, .. } => Some(RaiseEvent {
            event: EventKind::SessionRevoked,
            session_id: Some(session_id.clone()),
            user_id: user_id.clone(),
            data: serde_json::json!({ "replayed": true }),
            at_ms: None,
        }),
        // Not a revoke-all: a receiver would apply it to every session of the user it holds
        // now, including ones created after the revoke-all was taken, which Redis spares.
        JournalOp::RevokeUser { .. } | JournalOp::Put { .. } | JournalOp::Expiry { .. } => None,
    }
}

fn queue_unpublished(queue: &mut VecDeque<Vec<u8>>, payload: Vec<u8>) {
    if queue.len() >= MAX_UNPUBLISHED {
        queue.pop_front();
        log::warn!("{MAX_UNPUBLISHED} events wait for the bus; the oldest is dropped");
    }
    queue.push_back(payload);
}

/// Auth events cross instances; `service.*` and `session.expiring` are per instance.
fn crosses_instances(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::SessionRevoked | EventKind::SessionRefreshed | EventKind::UserSessionsRevoked
    )
}

fn apply_to_mirror(cfg: &CoordinatorRedis, event: &AuthEvent) {
    let side = &cfg.side;
    match event.event {
        EventKind::SessionRevoked => {
            if let Some(sid) = &event.session_id {
                side.confirmed.forget(sid);
                cfg.store.do_send(MirrorTomb {
                    session_id: sid.clone(),
                    until: now_seconds().saturating_add(cfg.max_ttl_seconds),
                });
            }
        }
        EventKind::SessionRefreshed => {
            if let (Some(sid), Some(exp)) = (&event.session_id, event.data["expires_at"].as_i64()) {
                side.confirmed.forget(sid);
                cfg.store.do_send(MirrorExpiry { session_id: sid.clone(), expires_at: exp });
            }
        }
        EventKind::UserSessionsRevoked => {
            if let Some(uid) = &event.user_id {
                side.confirmed.clear();
                // Only what existed when the revoke-all was taken: the event may arrive late
                // (held back by an outage), after the user logged in again.
                let at = event.at_ms.div_euclid(1000);
                cfg.store.do_send(MirrorRevokeUser { user_id: uid.clone(), at });
            }
        }
        _ => {}
    }
}

/// Keeps a subscription to the bus, reconnecting through the `event_bus` breaker.
async fn run_bus(addr: Addr<Coordinator>, side: RedisSide, bus_breaker: SharedBreaker) {
    loop {
        if !addr.connected() {
            return;
        }
        let Some(permit) = bus_breaker.try_acquire() else {
            tokio::time::sleep(BUS_RETRY).await;
            continue;
        };
        match tokio::time::timeout(side.op_timeout * 4, side.redis.subscribe()).await {
            Ok(Ok(mut stream)) => {
                permit.success();
                // Events may have been missed while the bus was down: no cached confirmation
                // may outlive that.
                side.confirmed.clear();
                side.bus_up.store(true, Ordering::Release);
                log::info!("event bus subscribed");
                addr.do_send(BusSubscribed);
                let mut probe = stream.probe();
                let mut tick = tokio::time::interval(BUS_PROBE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => addr.do_send(BusMessage(msg)),
                            None => break,
                        },
                        // A hung server (SIGSTOP) closes nothing and sends nothing: only a PING
                        // on the subscription notices.
                        _ = tick.tick() => {
                            if let Err(e) = probe.ping().await {
                                log::debug!("event bus probe: {e}");
                                break;
                            }
                        }
                    }
                }
                side.bus_up.store(false, Ordering::Release);
                log::warn!("event bus subscription lost; reconnecting");
                if let Some(p) = bus_breaker.try_acquire() {
                    p.failure();
                }
            }
            Ok(Err(e)) => {
                log::debug!("event bus subscribe failed: {e}");
                permit.failure();
            }
            Err(_) => permit.failure(),
        }
        tokio::time::sleep(BUS_RETRY).await;
    }
}

/// A fresh random instance id: 16 lowercase hex characters.
pub fn random_instance_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to time and pid, still unique enough per host.
        let mix = (now_millis() as u64) ^ (u64::from(std::process::id()) << 32);
        bytes = mix.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(r) = self.redis.as_mut() else { return };
        // Breaker transitions arrive on a channel; forward them as messages.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut transitions = std::mem::replace(&mut r.cfg.transitions, rx);
        drop(tx);
        let addr = ctx.address();
        actix::spawn(async move {
            while let Some(ev) = transitions.recv().await {
                addr.do_send(BreakerChanged(ev));
            }
        });
        actix::spawn(run_bus(ctx.address(), r.cfg.side.clone(), r.cfg.bus_breaker.clone()));
        let interval = r.cfg.probe_interval;
        ctx.run_interval(interval, |act, ctx| act.tick(ctx));
        // Writes journaled before a crash are replayed as soon as Redis answers. The flag may
        // already say degraded (the startup reads the journal before the first answer).
        if r.cfg.side.mode.is_degraded() {
            self.announce_mode(true, "journaled writes from an earlier run wait for replay", ctx);
        }
        let Some(r) = self.redis.as_ref() else { return };
        let store = r.cfg.store.clone();
        ctx.spawn(
            async move { store.send(GetStoreStats).await.map(|s| s.journal_len).unwrap_or(0) }
                .into_actor(self)
                .map(|pending, act, ctx| {
                    if pending > 0 {
                        act.set_mode(
                            true,
                            "journaled writes from an earlier run wait for replay",
                            ctx,
                        );
                    }
                    act.tick(ctx);
                }),
        );
    }
}

impl Handler<BreakerChanged> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: BreakerChanged, ctx: &mut Context<Self>) {
        let ev = msg.0;
        metrics()
            .breaker_transitions
            .with_label_values(&[ev.name, ev.transition.to.as_str()])
            .inc();
        if ev.name != "redis" {
            return;
        }
        match ev.transition.to {
            BreakerState::Open => self.set_mode(true, "the redis breaker opened", ctx),
            // Recovery is announced once the journal is replayed (see `replay`).
            BreakerState::Closed => self.tick(ctx),
            BreakerState::HalfOpen => {}
        }
    }
}

impl Handler<BusMessage> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: BusMessage, _ctx: &mut Context<Self>) {
        self.on_bus_message(&msg.0);
    }
}

impl Handler<RaiseEvent> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: RaiseEvent, ctx: &mut Context<Self>) {
        self.raise(msg, ctx);
    }
}

impl Handler<Subscribe> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) {
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            log::warn!("event subscriber refused: {MAX_SUBSCRIBERS} already subscribed");
            return;
        }
        self.subscribers.push(msg.0);
    }
}

impl Handler<GetCoordinatorStats> for Coordinator {
    type Result = MessageResult<GetCoordinatorStats>;

    fn handle(&mut self, _msg: GetCoordinatorStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(CoordinatorStats {
            instance_id: self.instance_id.clone(),
            events_raised: self.raised.clone(),
            subscribers: self.subscribers.len(),
        })
    }
}

impl Handler<BusSubscribed> for Coordinator {
    type Result = ();

    fn handle(&mut self, _msg: BusSubscribed, ctx: &mut Context<Self>) {
        self.reconcile(ctx);
    }
}

impl Handler<SessionSource> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: SessionSource, _ctx: &mut Context<Self>) {
        self.sessions = Some(msg.0);
    }
}

impl Handler<Watch> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: Watch, _ctx: &mut Context<Self>) {
        self.watched.retain(|(_, r)| r.connected());
        self.watched.push((msg.name, msg.actor));
    }
}

impl Handler<CheckLiveness> for Coordinator {
    type Result = ResponseFuture<Liveness>;

    /// Pings every watched actor at once; each gets [`ANSWER_TIMEOUT`]. The Coordinator
    /// answering at all proves its own mailbox is served.
    fn handle(&mut self, _msg: CheckLiveness, _ctx: &mut Context<Self>) -> Self::Result {
        let pings: Vec<_> = self
            .watched
            .iter()
            .map(|&(name, ref actor)| {
                let ask = actor.send(Ping);
                async move {
                    let ok = matches!(tokio::time::timeout(ANSWER_TIMEOUT, ask).await, Ok(Ok(())));
                    (name, ok)
                }
            })
            .collect();
        Box::pin(async move {
            let mut live = Liveness::default();
            for (name, ok) in futures_util::future::join_all(pings).await {
                if ok {
                    live.answered += 1;
                } else {
                    live.stalled.push(name);
                }
            }
            live
        })
    }
}

impl Handler<Ping> for Coordinator {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}

impl Handler<DeliverProbe> for Coordinator {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: DeliverProbe, _ctx: &mut Context<Self>) -> Self::Result {
        let event = self.new_event(RaiseEvent {
            event: EventKind::SessionRevoked,
            session_id: Some(msg.session_id),
            user_id: Some(msg.user_id),
            data: serde_json::json!({ "self_test": true }),
            at_ms: None,
        });
        let id = event.id.clone();
        msg.to.try_send(Deliver(Arc::new(event))).map_err(|e| format!("delivery failed: {e}"))?;
        Ok(id)
    }
}

impl Handler<CheckHealth> for Coordinator {
    type Result = MessageResult<CheckHealth>;

    fn handle(&mut self, _msg: CheckHealth, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.health())
    }
}

impl Coordinator {
    /// Healthy in embedded mode; in Redis mode `degraded` while the instance is degraded, a
    /// breaker is not closed, the bus subscription is down, or journaled writes wait for
    /// replay, with the reason in `problems`.
    fn health(&self) -> ComponentHealth {
        let mut details = serde_json::json!({
            "instance_id": self.instance_id,
            "store": if self.redis.is_some() { "redis" } else { "embedded" },
            "subscribers": self.subscribers.len(),
            "watched_actors": self.watched.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            "events_raised": self.raised,
            "events_relayed": self.relayed,
        });
        let Some(r) = self.redis.as_ref() else {
            details["mode"] = "normal".into();
            return ComponentHealth::new(HealthStatus::Healthy, details);
        };
        let side = &r.cfg.side;
        let degraded = side.mode.is_degraded();
        let bus_up = side.bus_up.load(Ordering::Acquire);
        let redis_b = side.breaker.snapshot();
        let bus_b = r.cfg.bus_breaker.snapshot();
        let mut problems = Vec::new();
        if degraded {
            problems.push("degraded mode: answering from the fallback store".to_owned());
        }
        if redis_b.state != BreakerState::Closed {
            problems.push(format!("the redis breaker is {}", redis_b.state.as_str()));
        }
        if !bus_up {
            problems.push("the event-bus subscription is down".to_owned());
        }
        if r.pending > 0 {
            let why = match r.last_replay.as_ref().and_then(|l| l.error.as_deref()) {
                Some(e) => format!(": the last replay failed: {e}"),
                None => String::new(),
            };
            problems.push(format!("{} journaled writes wait for replay{why}", r.pending));
        }
        details["mode"] = if degraded { "degraded" } else { "normal" }.into();
        details["problems"] = serde_json::json!(problems);
        details["redis"] = serde_json::json!({
            "breakers": { "redis": redis_b, "event_bus": bus_b },
            "bus_subscribed": bus_up,
            "journal_backlog": r.pending,
            "replaying": r.replaying,
            "last_replay": r.last_replay,
            "events_waiting_for_bus": r.unpublished.len(),
        });
        let status =
            if problems.is_empty() { HealthStatus::Healthy } else { HealthStatus::Degraded };
        ComponentHealth::new(status, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe(tokio::sync::mpsc::UnboundedSender<Arc<AuthEvent>>);
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<Deliver> for Probe {
        type Result = ();
        fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
            let _ = self.0.send(msg.0);
        }
    }

    #[actix_rt::test]
    async fn an_event_keeps_the_time_its_raiser_gave_it() {
        let coord = Coordinator::new("abc".into()).start();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        coord.send(Subscribe(Probe(tx).start().recipient())).await.unwrap();
        for at_ms in [Some(1_795_000_000_999), None] {
            coord
                .send(RaiseEvent {
                    event: EventKind::UserSessionsRevoked,
                    session_id: None,
                    user_id: Some("42".into()),
                    data: serde_json::json!({}),
                    at_ms,
                })
                .await
                .unwrap();
        }
        assert_eq!(rx.recv().await.unwrap().at_ms, 1_795_000_000_999);
        let stamped = rx.recv().await.unwrap().at_ms;
        assert!((now_millis() - stamped).abs() < 60_000, "{stamped}");
    }

    #[actix_rt::test]
    async fn events_get_unique_ids_and_reach_every_subscriber() {
        let coord = Coordinator::new("abc".into()).start();
        let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel();
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        coord.send(Subscribe(Probe(tx1).start().recipient())).await.unwrap();
        coord.send(Subscribe(Probe(tx2).start().recipient())).await.unwrap();
        for sid in ["s-1", "s-2"] {
            coord
                .send(RaiseEvent {
                    event: EventKind::SessionRevoked,
                    session_id: Some(sid.into()),
                    user_id: Some("42".into()),
                    data: serde_json::json!({}),
                    at_ms: None,
                })
                .await
                .unwrap();
        }
        let a = rx1.recv().await.unwrap();
        let b = rx1.recv().await.unwrap();
        assert_eq!(a.id, "abc-1");
        assert_eq!(b.id, "abc-2");
        assert_eq!(a.session_id.as_deref(), Some("s-1"));
        assert_eq!(rx2.recv().await.unwrap().id, "abc-1");
        let stats = coord.send(GetCoordinatorStats).await.unwrap();
        assert_eq!(stats.events_raised.get("session.revoked"), Some(&2));
        assert_eq!(stats.subscribers, 2);
    }

    #[test]
    fn instance_ids_are_random_hex() {
        let a = random_instance_id();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_instance_id());
    }
}
