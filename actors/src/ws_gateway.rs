//! The WsGateway actor: the registry of live WebSocket connections, indexed by session id and
//! by user id, and the router that hands each auth event to exactly the connections that must
//! get it.
//!
//! Routing (CONTRACT.md section 5): a connection gets the `session.*` events of its own
//! session, the `user.sessions_revoked` events of its user, and every `service.*` event —
//! nothing else. A `session.*` event that names a user goes only to that user's connections
//! of the session (a token can never borrow another user's session, so this only matters for
//! the degraded `jwt_only` path, where the session is unknown).
//!
//! Connections are held as `Recipient<ToConnection>`, never as concrete actor types, so the
//! gateway knows nothing of the WebSocket protocol. Delivery uses `try_send`: a connection
//! whose mailbox is full is forgotten and told to close with 1013, so one stuck connection
//! never slows the others or grows memory.
//!
//! A connection is registered only after its handshake validated the token; a revocation
//! that reaches the gateway while that validation was in flight would be missed, so the
//! gateway keeps the revocations of the last [`RECENT_REVOCATION_WINDOW`] and hands a newly
//! registered connection any that arrived after its validation started.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::health::{CheckHealth, ComponentHealth, Ping};

use crate::domain::{AuthEvent, EventKind};
use crate::messages::{
    Admission, AdmissionRefused, Deliver, GatewayStats, GetGatewayStats, MoveConnection,
    RegisterConnection, ShutdownConnections, Subscribe, ToConnection, UnregisterConnection,
};

/// The most connections one instance admits (a memory bound; the process's file descriptor
/// limit usually binds first).
pub const MAX_CONNECTIONS: usize = 20_000;
/// The most connections one user may hold on one instance.
pub const MAX_CONNECTIONS_PER_USER: usize = 100;
/// The gateway's mailbox capacity. The Coordinator delivers with `try_send`, which drops an
/// event when the mailbox is full; this leaves room for bursts of registrations and events.
pub const GATEWAY_MAILBOX: usize = 65_536;
/// How long revocations are remembered for connections whose handshake was in flight.
pub const RECENT_REVOCATION_WINDOW: Duration = Duration::from_secs(10);
/// The most revocations remembered for that purpose (the oldest are forgotten first).
pub const MAX_RECENT_REVOCATIONS: usize = 10_000;

/// Admission limits of one gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayLimits {
    /// The most connections in total.
    pub max_connections: usize,
    /// The most connections of one user.
    pub max_per_user: usize,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits { max_connections: MAX_CONNECTIONS, max_per_user: MAX_CONNECTIONS_PER_USER }
    }
}

struct Conn {
    session_id: Arc<str>,
    user_id: Arc<str>,
    recipient: Recipient<ToConnection>,
    created_at: Option<i64>,
}

/// Whether `event` concerns a connection whose session was created at `created_at`: a
/// revoke-all covers only sessions created at or before it (one held back by an outage may
/// arrive after the user logged in again); every other event covers every target.
fn covers(event: &AuthEvent, created_at: Option<i64>) -> bool {
    event.event != EventKind::UserSessionsRevoked
        || created_at.is_none_or(|c| c <= event.at_ms.div_euclid(1000))
}

/// What to remember a recent revocation by.
enum RevocationKey {
    Session(Arc<str>),
    User(Arc<str>),
}

/// The revocations received in the last [`RECENT_REVOCATION_WINDOW`], by session and user.
#[derive(Default)]
struct RecentRevocations {
    order: VecDeque<(Instant, RevocationKey)>,
    sessions: HashMap<Arc<str>, (Instant, Arc<AuthEvent>)>,
    users: HashMap<Arc<str>, (Instant, Arc<AuthEvent>)>,
}

impl RecentRevocations {
    fn record(&mut self, at: Instant, event: &Arc<AuthEvent>) {
        let key = match (event.event, &event.session_id, &event.user_id) {
            (EventKind::SessionRevoked, Some(sid), _) => {
                let sid: Arc<str> = Arc::from(sid.as_str());
                self.sessions.insert(Arc::clone(&sid), (at, Arc::clone(event)));
                RevocationKey::Session(sid)
            }
            (EventKind::UserSessionsRevoked, _, Some(uid)) => {
                let uid: Arc<str> = Arc::from(uid.as_str());
                self.users.insert(Arc::clone(&uid), (at, Arc::clone(event)));
                RevocationKey::User(uid)
            }
            _ => return,
        };
        self.order.push_back((at, key));
        while self.order.len() > MAX_RECENT_REVOCATIONS {
            self.pop_oldest();
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RECENT_REVOCATION_WINDOW)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((at, key)) = self.order.pop_front() else { return };
        let map = match &key {
            RevocationKey::Session(_) => &mut self.sessions,
            RevocationKey::User(_) => &mut self.users,
        };
        let id = match &key {
            RevocationKey::Session(id) | RevocationKey::User(id) => id,
        };
        // A later revocation of the same id replaced the entry: keep that one.
        if map.get(id).is_some_and(|(t, _)| *t == at) {
            map.remove(id);
        }
    }

    /// The revocations of this session or user received at or after `since`.
    fn since(&self, session_id: &str, user_id: &str, since: Instant) -> Vec<Arc<AuthEvent>> {
        let mut found = Vec::new();
        if let Some((at, ev)) = self.sessions.get(session_id) {
            let same_user = ev.user_id.as_deref().is_none_or(|u| u == user_id);
            if *at >= since && same_user {
                found.push(Arc::clone(ev));
            }
        }
        if let Some((at, ev)) = self.users.get(user_id)
            && *at >= since
        {
            found.push(Arc::clone(ev));
        }
        found
    }
}

/// The WsGateway actor. Start it with [`WsGateway::new`]; it subscribes itself to the
/// Coordinator it was given.
pub struct WsGateway {
    instance_id: String,
    limits: GatewayLimits,
    coordinator: Option<Recipient<Subscribe>>,
    next_key: u64,
    conns: HashMap<u64, Conn>,
    by_session: HashMap<Arc<str>, Vec<u64>>,
    by_user: HashMap<Arc<str>, Vec<u64>>,
    recent: RecentRevocations,
    shutting_down: bool,
    admitted_total: u64,
    refused_total: u64,
    events_total: u64,
    deliveries_total: u64,
    too_slow_total: u64,
}

impl WsGateway {
    /// A gateway for the instance with this id (the prefix of every connection id), with
    /// these admission limits, subscribing to `coordinator` (if given) when it starts.
    pub fn new(
        instance_id: String,
        limits: GatewayLimits,
        coordinator: Option<Recipient<Subscribe>>,
    ) -> Self {
        WsGateway {
            instance_id,
            limits,
            coordinator,
            next_key: 0,
            conns: HashMap::new(),
            by_session: HashMap::new(),
            by_user: HashMap::new(),
            recent: RecentRevocations::default(),
            shutting_down: false,
            admitted_total: 0,
            refused_total: 0,
            events_total: 0,
            deliveries_total: 0,
            too_slow_total: 0,
        }
    }

    fn register(&mut self, msg: RegisterConnection) -> Result<Admission, AdmissionRefused> {
        let user_count = self.by_user.get(msg.user_id.as_str()).map_or(0, Vec::len);
        let refused = if self.shutting_down {
            Some(AdmissionRefused::ShuttingDown)
        } else if self.conns.len() >= self.limits.max_connections {
            Some(AdmissionRefused::TooManyConnections { limit: self.limits.max_connections })
        } else if user_count >= self.limits.max_per_user {
            Some(AdmissionRefused::TooManyForUser { limit: self.limits.max_per_user })
        } else {
            None
        };
        if let Some(r) = refused {
            self.refused_total += 1;
            return Err(r);
        }
        self.next_key += 1;
        let key = self.next_key;
        let session_id = self.intern_session(&msg.session_id);
        let user_id = self.intern_user(&msg.user_id);
        self.by_session.entry(Arc::clone(&session_id)).or_default().push(key);
        self.by_user.entry(Arc::clone(&user_id)).or_default().push(key);
        let created_at = msg.created_at;
        self.conns.insert(key, Conn { session_id, user_id, recipient: msg.recipient, created_at });
        self.admitted_total += 1;

        // Revocations that may have raced the handshake's validation.
        self.recent.prune(Instant::now());
        for event in self.recent.since(&msg.session_id, &msg.user_id, msg.validated_at) {
            if covers(&event, created_at) {
                self.deliver(key, &event);
            }
        }
        Ok(Admission { key, connection_id: format!("{}-w{key}", self.instance_id) })
    }

    /// The shared `Arc<str>` of a session id already indexed, or a new one.
    fn intern_session(&self, id: &str) -> Arc<str> {
        match self.by_session.get_key_value(id) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(id),
        }
    }

    fn intern_user(&self, id: &str) -> Arc<str> {
        match self.by_user.get_key_value(id) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(id),
        }
    }

    fn unregister(&mut self, key: u64) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        remove_key(&mut self.by_session, &conn.session_id, key);
        remove_key(&mut self.by_user, &conn.user_id, key);
        Some(conn)
    }

    fn move_to(&mut self, key: u64, session_id: &str) {
        let new_sid = self.intern_session(session_id);
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if *conn.session_id == *session_id {
            return;
        }
        let old = std::mem::replace(&mut conn.session_id, Arc::clone(&new_sid));
        remove_key(&mut self.by_session, &old, key);
        self.by_session.entry(new_sid).or_default().push(key);
    }

    /// The keys of the connections that must get this event, in no particular order.
    fn targets(&self, event: &AuthEvent) -> Vec<u64> {
        match event.event {
            EventKind::ServiceDegraded | EventKind::ServiceRecovered => {
                self.conns.keys().copied().collect()
            }
            EventKind::SessionRevoked
            | EventKind::SessionRefreshed
            | EventKind::SessionExpiring => {
                let Some(sid) = event.session_id.as_deref() else { return Vec::new() };
                let Some(keys) = self.by_session.get(sid) else { return Vec::new() };
                keys.iter()
                    .copied()
                    .filter(|k| {
                        let owner = event.user_id.as_deref();
                        owner.is_none_or(|u| self.conns.get(k).is_some_and(|c| *c.user_id == *u))
                    })
                    .collect()
            }
            EventKind::UserSessionsRevoked => {
                let Some(uid) = event.user_id.as_deref() else { return Vec::new() };
                let Some(keys) = self.by_user.get(uid) else { return Vec::new() };
                keys.iter()
                    .copied()
                    .filter(|k| self.conns.get(k).is_some_and(|c| covers(event, c.created_at)))
                    .collect()
            }
        }
    }

    fn route(&mut self, event: &Arc<AuthEvent>) {
        self.events_total += 1;
        self.recent.record(Instant::now(), event);
        for key in self.targets(event) {
            self.deliver(key, event);
        }
    }

    fn deliver(&mut self, key: u64, event: &Arc<AuthEvent>) {
        let Some(conn) = self.conns.get(&key) else { return };
        match conn.recipient.try_send(ToConnection::Event(Arc::clone(event))) {
            Ok(()) => self.deliveries_total += 1,
            Err(SendError::Full(_)) => {
                self.too_slow_total += 1;
                if let Some(conn) = self.unregister(key) {
                    log::debug!("connection {key}: mailbox full, closing it as too slow");
                    // `do_send` ignores the mailbox bound: this one message always gets there.
                    conn.recipient.do_send(ToConnection::TooSlow);
                }
            }
            Err(SendError::Closed(_)) => {
                self.unregister(key);
            }
        }
    }

    fn stats(&self) -> GatewayStats {
        GatewayStats {
            connections: self.conns.len(),
            sessions: self.by_session.len(),
            users: self.by_user.len(),
            admitted_total: self.admitted_total,
            refused_total: self.refused_total,
            events_total: self.events_total,
            deliveries_total: self.deliveries_total,
            too_slow_total: self.too_slow_total,
            shutting_down: self.shutting_down,
        }
    }
}

/// Removes `key` from the index entry `id`, dropping the entry when it becomes empty.
fn remove_key(index: &mut HashMap<Arc<str>, Vec<u64>>, id: &str, key: u64) {
    if let Some(keys) = index.get_mut(id) {
        keys.retain(|k| *k != key);
        if keys.is_empty() {
            index.remove(id);
        }
    }
}

impl Actor for WsGateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(GATEWAY_MAILBOX);
        if let Some(coordinator) = &self.coordinator {
            coordinator.do_send(Subscribe(ctx.address().recipient()));
        }
    }
}

impl Handler<Deliver> for WsGateway {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
        self.route(&msg.0);
    }
}

impl Handler<RegisterConnection> for WsGateway {
    type Result = Result<Admission, AdmissionRefused>;

    fn handle(&mut self, msg: RegisterConnection, _ctx: &mut Context<Self>) -> Self::Result {
        self.register(msg)
    }
}

impl Handler<UnregisterConnection> for WsGateway {
    type Result = ();

    fn handle(&mut self, msg: UnregisterConnection, _ctx: &mut Context<Self>) {
        self.unregister(msg.key);
    }
}

impl Handler<MoveConnection> for WsGateway {
    type Result = ();

    fn handle(&mut self, msg: MoveConnection, _ctx: &mut Context<Self>) {
        self.move_to(msg.key, &msg.session_id);
    }
}

impl Handler<ShutdownConnections> for WsGateway {
    type Result = ();

    fn handle(&mut self, _msg: ShutdownConnections, _ctx: &mut Context<Self>) {
        self.shutting_down = true;
        for conn in self.conns.values() {
            // Ignores the mailbox bound: every connection must hear it.
            conn.recipient.do_send(ToConnection::Shutdown);
        }
        log::info!("told {} WebSocket connection(s) to close", self.conns.len());
    }
}

impl Handler<GetGatewayStats> for WsGateway {
    type Result = MessageResult<GetGatewayStats>;

    fn handle(&mut self, _msg: GetGatewayStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl Handler<crate::messages::ConnectedSessions> for WsGateway {
    type Result = MessageResult<crate::messages::ConnectedSessions>;

    fn handle(
        &mut self,
        _msg: crate::messages::ConnectedSessions,
        _ctx: &mut Context<Self>,
    ) -> Self::Result {
        MessageResult(self.by_session.keys().map(|s| s.to_string()).collect())
    }
}

/// The gateway is reported `degraded` from this share of `max_connections` on.
const NEAR_FULL_SHARE: f64 = 0.9;

impl Handler<CheckHealth> for WsGateway {
    type Result = MessageResult<CheckHealth>;

    fn handle(&mut self, _msg: CheckHealth, _ctx: &mut Context<Self>) -> Self::Result {
        let s = self.stats();
        let max = self.limits.max_connections;
        let near_full = s.connections as f64 >= max as f64 * NEAR_FULL_SHARE;
        MessageResult(ComponentHealth::judge(
            s.shutting_down.then_some("shutting down: no connection is admitted"),
            near_full.then_some("near the connection limit"),
            serde_json::json!({
                "connections": s.connections,
                "sessions": s.sessions,
                "users": s.users,
                "max_connections": max,
                "max_connections_per_user": self.limits.max_per_user,
                "admitted_total": s.admitted_total,
                "refused_total": s.refused_total,
                "events_total": s.events_total,
                "deliveries_total": s.deliveries_total,
                "closed_too_slow_total": s.too_slow_total,
            }),
        ))
    }
}

impl Handler<Ping> for WsGateway {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Coordinator;
    use crate::messages::RaiseEvent;
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    /// A stand-in connection: forwards what it gets to the test.
    struct Probe(UnboundedSender<ToConnection>);
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<ToConnection> for Probe {
        type Result = ();
        fn handle(&mut self, msg: ToConnection, _ctx: &mut Context<Self>) {
            let _ = self.0.send(msg);
        }
    }

    struct Client {
        key: u64,
        rx: UnboundedReceiver<ToConnection>,
    }

    impl Client {
        /// The ids of the events received so far (after the gateway has answered a stats
        /// request, so everything it sent before has been handled by the probe too).
        async fn events(&mut self, gw: &Addr<WsGateway>) -> Vec<String> {
            gw.send(GetGatewayStats).await.unwrap();
            // One turn of the probe's mailbox.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut ids = Vec::new();
            while let Ok(m) = self.rx.try_recv() {
                match m {
                    ToConnection::Event(e) => ids.push(e.id.clone()),
                    ToConnection::Shutdown => ids.push("shutdown".into()),
                    ToConnection::TooSlow => ids.push("too-slow".into()),
                }
            }
            ids
        }
    }

    async fn connect(gw: &Addr<WsGateway>, sid: &str, uid: &str) -> Client {
        try_connect(gw, sid, uid, Instant::now()).await.unwrap()
    }

    async fn try_connect(
        gw: &Addr<WsGateway>,
        sid: &str,
        uid: &str,
        validated_at: Instant,
    ) -> Result<Client, AdmissionRefused> {
        let (tx, rx) = unbounded_channel();
        let recipient = Probe(tx).start().recipient();
        let msg = RegisterConnection {
            created_at: None,
            session_id: sid.into(),
            user_id: uid.into(),
            validated_at,
            recipient,
        };
        let admission = gw.send(msg).await.unwrap()?;
        Ok(Client { key: admission.key, rx })
    }

    fn event(id: &str, kind: EventKind, sid: Option<&str>, uid: Option<&str>) -> Deliver {
        Deliver(Arc::new(AuthEvent {
            id: id.into(),
            event: kind,
            session_id: sid.map(Into::into),
            user_id: uid.map(Into::into),
            at_ms: 0,
            data: serde_json::json!({}),
        }))
    }

    fn gateway(limits: GatewayLimits) -> Addr<WsGateway> {
        WsGateway::new("inst".into(), limits, None).start()
    }

    #[actix_rt::test]
    async fn each_event_reaches_exactly_the_connections_that_must_get_it() {
        let gw = gateway(GatewayLimits::default());
        let mut a = connect(&gw, "s-1", "u-1").await; // user 1, session 1
        let mut a2 = connect(&gw, "s-1", "u-1").await; // a second tab on the same session
        let mut b = connect(&gw, "s-2", "u-1").await; // user 1, another session
        let mut c = connect(&gw, "s-3", "u-2").await; // another user

        for ev in [
            event("e1", EventKind::SessionRevoked, Some("s-1"), Some("u-1")),
            event("e2", EventKind::SessionRefreshed, Some("s-2"), Some("u-1")),
            event("e3", EventKind::UserSessionsRevoked, None, Some("u-1")),
            event("e4", EventKind::ServiceDegraded, None, None),
            event("e5", EventKind::SessionRevoked, Some("s-9"), Some("u-1")),
            event("e6", EventKind::UserSessionsRevoked, None, Some("u-9")),
            event("e7", EventKind::SessionRefreshed, Some("s-3"), Some("u-2")),
            event("e8", EventKind::ServiceRecovered, None, None),
            // A session event naming another user than the connection's: not for it.
            event("e9", EventKind::SessionRevoked, Some("s-3"), Some("u-1")),
            // A session event without a session id reaches nobody.
            event("e10", EventKind::SessionRevoked, None, Some("u-1")),
        ] {
            gw.do_send(ev);
        }
        assert_eq!(a.events(&gw).await, ["e1", "e3", "e4", "e8"]);
        assert_eq!(a2.events(&gw).await, ["e1", "e3", "e4", "e8"]);
        assert_eq!(b.events(&gw).await, ["e2", "e3", "e4", "e8"]);
        assert_eq!(c.events(&gw).await, ["e4", "e7", "e8"]);

        let stats = gw.send(GetGatewayStats).await.unwrap();
        assert_eq!(stats.connections, 4);
        assert_eq!(stats.sessions, 3);
        assert_eq!(stats.users, 2);
        assert_eq!(stats.events_total, 10);
        assert_eq!(stats.deliveries_total, 15);
    }

    #[actix_rt::test]
    async fn unregistered_and_moved_connections_follow_their_index() {
        let gw = gateway(GatewayLimits::default());
        let mut a = connect(&gw, "s-1", "u-1").await;
        let mut b = connect(&gw, "s-1", "u-1").await;
        gw.do_send(UnregisterConnection { key: b.key });
        gw.do_send(UnregisterConnection { key: b.key }); // idempotent
        gw.do_send(MoveConnection { key: a.key, session_id: "s-2".into() });
        gw.do_send(event("old", EventKind::SessionRevoked, Some("s-1"), Some("u-1")));
        gw.do_send(event("new", EventKind::SessionRevoked, Some("s-2"), Some("u-1")));
        assert_eq!(a.events(&gw).await, ["new"]);
        assert!(b.events(&gw).await.is_empty());
        let stats = gw.send(GetGatewayStats).await.unwrap();
        assert_eq!((stats.connections, stats.sessions, stats.users), (1, 1, 1));
        gw.do_send(UnregisterConnection { key: a.key });
        let stats = gw.send(GetGatewayStats).await.unwrap();
        assert_eq!((stats.connections, stats.sessions, stats.users), (0, 0, 0));
    }

    #[actix_rt::test]
    async fn admission_is_bounded_in_total_and_per_user() {
        let gw = gateway(GatewayLimits { max_connections: 3, max_per_user: 2 });
        let _a = connect(&gw, "s-1", "u-1").await;
        let _b = connect(&gw, "s-2", "u-1").await;
        let third = try_connect(&gw, "s-3", "u-1", Instant::now()).await.err();
        assert_eq!(third, Some(AdmissionRefused::TooManyForUser { limit: 2 }));
        let _c = connect(&gw, "s-4", "u-2").await;
        let fourth = try_connect(&gw, "s-5", "u-3", Instant::now()).await.err();
        assert_eq!(fourth, Some(AdmissionRefused::TooManyConnections { limit: 3 }));
        let stats = gw.send(GetGatewayStats).await.unwrap();
        assert_eq!((stats.admitted_total, stats.refused_total), (3, 2));
    }

    #[actix_rt::test]
    async fn a_revocation_that_raced_the_handshake_is_delivered_on_registration() {
        let gw = gateway(GatewayLimits::default());
        let before = Instant::now();
        gw.do_send(event("rev", EventKind::SessionRevoked, Some("s-1"), Some("u-1")));
        gw.do_send(event("all", EventKind::UserSessionsRevoked, None, Some("u-2")));
        gw.send(GetGatewayStats).await.unwrap();
        let after = Instant::now();
        // Validation started before the revocations arrived: they are replayed.
        let mut late = try_connect(&gw, "s-1", "u-1", before).await.unwrap();
        assert_eq!(late.events(&gw).await, ["rev"]);
        let mut late_user = try_connect(&gw, "s-7", "u-2", before).await.unwrap();
        assert_eq!(late_user.events(&gw).await, ["all"]);
        // Validation started after them: the validation itself saw the revocation.
        let mut fresh = try_connect(&gw, "s-1", "u-1", after).await.unwrap();
        assert!(fresh.events(&gw).await.is_empty());
        // Another user's connection claiming the session id gets nothing.
        let mut other = try_connect(&gw, "s-1", "u-3", before).await.unwrap();
        assert!(other.events(&gw).await.is_empty());
    }

    #[test]
    fn recent_revocations_are_bounded_and_expire() {
        let mut r = RecentRevocations::default();
        let t0 = Instant::now();
        for i in 0..(MAX_RECENT_REVOCATIONS + 10) {
            let ev = Arc::new(AuthEvent {
                id: format!("e{i}"),
                event: EventKind::SessionRevoked,
                session_id: Some(format!("s-{i}")),
                user_id: None,
                at_ms: 0,
                data: serde_json::Value::Null,
            });
            r.record(t0, &ev);
        }
        assert_eq!(r.order.len(), MAX_RECENT_REVOCATIONS);
        assert_eq!(r.sessions.len(), MAX_RECENT_REVOCATIONS);
        assert!(r.since("s-0", "u", t0).is_empty(), "the oldest were forgotten");
        assert_eq!(r.since("s-10", "u", t0).len(), 1);
        r.prune(t0 + RECENT_REVOCATION_WINDOW + Duration::from_millis(1));
        assert!(r.order.is_empty() && r.sessions.is_empty() && r.users.is_empty());
    }

    #[actix_rt::test]
    async fn shutdown_reaches_everyone_and_closes_admission() {
        let gw = gateway(GatewayLimits::default());
        let mut a = connect(&gw, "s-1", "u-1").await;
        let mut b = connect(&gw, "s-2", "u-2").await;
        gw.send(ShutdownConnections).await.unwrap();
        assert_eq!(a.events(&gw).await, ["shutdown"]);
        assert_eq!(b.events(&gw).await, ["shutdown"]);
        let refused = try_connect(&gw, "s-3", "u-3", Instant::now()).await.err();
        assert_eq!(refused, Some(AdmissionRefused::ShuttingDown));
        assert!(gw.send(GetGatewayStats).await.unwrap().shutting_down);
    }

    /// A connection that never handles its mailbox.
    struct Stuck;
    impl Actor for Stuck {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.set_mailbox_capacity(2);
            // Block the mailbox: wait forever before handling anything.
            ctx.wait(actix::fut::wrap_future(std::future::pending::<()>()));
        }
    }
    impl Handler<ToConnection> for Stuck {
        type Result = ();
        fn handle(&mut self, _msg: ToConnection, _ctx: &mut Context<Self>) {}
    }

    #[actix_rt::test]
    async fn a_connection_with_a_full_mailbox_is_dropped_not_waited_for() {
        let gw = gateway(GatewayLimits::default());
        let stuck = Stuck.start();
        tokio::task::yield_now().await;
        let msg = RegisterConnection {
            created_at: None,
            session_id: "s-1".into(),
            user_id: "u-1".into(),
            validated_at: Instant::now(),
            recipient: stuck.recipient(),
        };
        gw.send(msg).await.unwrap().unwrap();
        let mut ok = connect(&gw, "s-2", "u-2").await;
        for i in 0..10 {
            gw.do_send(event(&format!("e{i}"), EventKind::ServiceDegraded, None, None));
        }
        assert_eq!(ok.events(&gw).await.len(), 10);
        let stats = gw.send(GetGatewayStats).await.unwrap();
        assert_eq!(stats.connections, 1, "the stuck connection was forgotten");
        assert_eq!(stats.too_slow_total, 1);
    }

    #[actix_rt::test]
    async fn it_subscribes_to_the_coordinator_and_names_connections_after_the_instance() {
        let coord = Coordinator::new("c".into()).start();
        let gw = WsGateway::new(
            "inst".into(),
            GatewayLimits::default(),
            Some(coord.clone().recipient()),
        )
        .start();
        let (tx, mut rx) = unbounded_channel();
        let msg = RegisterConnection {
            created_at: None,
            session_id: "s-1".into(),
            user_id: "u-1".into(),
            validated_at: Instant::now(),
            recipient: Probe(tx).start().recipient(),
        };
        let admission = gw.send(msg).await.unwrap().unwrap();
        assert_eq!(admission.connection_id, format!("inst-w{}", admission.key));
        coord.do_send(RaiseEvent {
            event: EventKind::SessionRevoked,
            session_id: Some("s-1".into()),
            user_id: Some("u-1".into()),
            data: serde_json::json!({}),
            at_ms: None,
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        match got {
            Some(ToConnection::Event(e)) => assert_eq!(e.id, "c-1"),
            other => panic!("expected the event, got {other:?}"),
        }
    }
}
