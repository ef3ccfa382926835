//! The typed messages the actors exchange. Each names the actor that handles it.

use actix::prelude::*;

use crate::domain::{AuthEvent, Identity, JournalEntry, NewSession, Session, UnixSeconds};
use crate::store::{CreateOutcome, RefreshOutcome, RevokeOutcome, StoreError, StoreStats};
use crate::token::TokenError;

// ---- TokenAdapter -------------------------------------------------------------------------

/// TokenAdapter: verify and normalize one token.
#[derive(Message, Debug)]
#[rtype(result = "Result<Identity, TokenError>")]
pub struct VerifyToken {
    /// The compact JWS.
    pub token: String,
}

/// TokenAdapter: hand out the immutable verifier for inline use on the hot path.
#[derive(Message, Debug)]
#[rtype(result = "std::sync::Arc<crate::token::Verifier>")]
pub struct GetVerifier;

// ---- FallbackStore ------------------------------------------------------------------------

/// FallbackStore: record a new session (or find the same one again).
#[derive(Message, Debug)]
#[rtype(result = "Result<CreateOutcome, StoreError>")]
pub struct CreateSession {
    /// What to record.
    pub new: NewSession,
    /// Also record the write in the durable journal, for replay into Redis (a write taken
    /// while degraded). Refused when the journal is full.
    pub journal: bool,
}

/// FallbackStore: push a live session's expiry forward.
#[derive(Message, Debug)]
#[rtype(result = "Result<RefreshOutcome, StoreError>")]
pub struct RefreshSession {
    /// The session id.
    pub session_id: String,
    /// New lifetime from now; `None` reuses the length it was created with.
    pub ttl_seconds: Option<i64>,
    /// Also record the write in the durable journal, for replay into Redis (a write taken
    /// while degraded). Refused when the journal is full.
    pub journal: bool,
}

/// FallbackStore: revoke one session id (idempotent).
#[derive(Message, Debug)]
#[rtype(result = "Result<RevokeOutcome, StoreError>")]
pub struct RevokeSession {
    /// The session id.
    pub session_id: String,
    /// Also record the write in the durable journal, for replay into Redis (a write taken
    /// while degraded). Refused when the journal is full.
    pub journal: bool,
}

/// FallbackStore: revoke every live session of a user; answers the revoked ids.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<String>, StoreError>")]
pub struct RevokeUserSessions {
    /// The user id.
    pub user_id: String,
    /// Also record the write in the durable journal, for replay into Redis (a write taken
    /// while degraded). Refused when the journal is full.
    pub journal: bool,
}

/// FallbackStore: counters for health and metrics.
#[derive(Message, Debug)]
#[rtype(result = "StoreStats")]
pub struct GetStoreStats;

/// FallbackStore: make every acknowledged write durable now (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct FlushStore;

/// FallbackStore (Redis mode): mirror a session as Redis holds it (created, refreshed or
/// validated by this instance). Kept unless the id is revoked here; never journaled. May be
/// sent with `do_send`.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct MirrorPut {
    /// The session as Redis holds it.
    pub session: Session,
    /// Its created length (`expires_at - created_at` at creation).
    pub created_len: i64,
}

/// FallbackStore (Redis mode): mirror a revocation seen elsewhere (the id stays revoked here
/// until the later of `until` and any earlier revocation). Never journaled. May be sent with
/// `do_send`.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct MirrorTomb {
    /// The session id.
    pub session_id: String,
    /// Until when the id stays revoked.
    pub until: UnixSeconds,
}

/// FallbackStore (Redis mode): mirror a revoke-all seen elsewhere (every live session of the
/// user held here is revoked). Never journaled. May be sent with `do_send`.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct MirrorRevokeUser {
    /// The user id.
    pub user_id: String,
    /// Unix seconds of the revoke-all: only sessions created at or before it are revoked.
    pub at: i64,
}

/// FallbackStore (Redis mode): mirror a new expiry seen elsewhere (set when the session is
/// live here). Never journaled. May be sent with `do_send`.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct MirrorExpiry {
    /// The session id.
    pub session_id: String,
    /// The new absolute expiry.
    pub expires_at: UnixSeconds,
}

/// FallbackStore: up to `max` of the oldest journal entries not yet replayed, in sequence
/// order. Answered once they are durable; empty when the journal is (or, while the log is
/// failing, when they cannot be made durable: compare with `StoreStats::journal_len`).
#[derive(Message, Debug)]
#[rtype(result = "Vec<JournalEntry>")]
pub struct PendingJournal {
    /// The most entries answered.
    pub max: usize,
}

/// FallbackStore: every journal entry with `seq <= up_to` has been replayed into Redis; they
/// are dropped, durably.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct AckJournal {
    /// The highest sequence number replayed.
    pub up_to: u64,
}

// ---- Coordinator --------------------------------------------------------------------------

/// Coordinator: an auth event raised on this instance, to be given an id and fanned out.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RaiseEvent {
    /// What happened.
    pub event: crate::domain::EventKind,
    /// The session concerned, if any.
    pub session_id: Option<String>,
    /// The user concerned, if any.
    pub user_id: Option<String>,
    /// Event-specific details.
    pub data: serde_json::Value,
    /// When the write it announces was taken (Unix ms); `None`: when the Coordinator stamps
    /// it. A revoke-all sets it, so that its receivers judge "created at or before it" by the
    /// same second the stores' watermark used, not by when the event was stamped.
    pub at_ms: Option<i64>,
}

/// Delivered by the Coordinator to every subscriber: one event, with its id.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Deliver(pub std::sync::Arc<AuthEvent>);

/// Coordinator: add a subscriber that receives every event raised or relayed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<Deliver>);

/// Coordinator: counters of what it has fanned out.
#[derive(Message, Debug)]
#[rtype(result = "CoordinatorStats")]
pub struct GetCoordinatorStats;

/// What the Coordinator reports about itself.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CoordinatorStats {
    /// This instance's id, the prefix of every event id it raises.
    pub instance_id: String,
    /// Events raised here, by kind name.
    pub events_raised: std::collections::BTreeMap<String, u64>,
    /// Live subscribers.
    pub subscribers: usize,
}

pub use validator_msgs::*;

// ---- SessionValidator ---------------------------------------------------------------------

mod validator_msgs {
    use super::*;
    use crate::session_validator::{Created, Failure, Validation};
    use std::collections::BTreeMap;

    /// SessionValidator: is this token, and its session, good right now?
    #[derive(Message, Debug)]
    #[rtype(result = "Result<Validation, Failure>")]
    pub struct Validate {
        /// The compact JWS.
        pub token: String,
    }

    /// SessionValidator: create the session of a token (or find the same one again).
    #[derive(Message, Debug)]
    #[rtype(result = "Result<Created, Failure>")]
    pub struct CreateFromToken {
        /// The compact JWS.
        pub token: String,
        /// Lifetime from now; `None` uses the token's `exp`.
        pub ttl_seconds: Option<i64>,
        /// Attributes to keep with the session.
        pub attributes: BTreeMap<String, String>,
    }

    /// SessionValidator: one live session by id.
    #[derive(Message, Debug)]
    #[rtype(result = "Result<Session, Failure>")]
    pub struct FetchSession {
        /// The session id.
        pub session_id: String,
    }

    /// SessionValidator: refresh a live session; emits `session.refreshed`.
    #[derive(Message, Debug)]
    #[rtype(result = "Result<Session, Failure>")]
    pub struct RefreshById {
        /// The session id.
        pub session_id: String,
        /// Lifetime from now; `None` reuses the length it was created with.
        pub ttl_seconds: Option<i64>,
    }

    /// SessionValidator: revoke a session id (idempotent); emits `session.revoked`.
    #[derive(Message, Debug)]
    #[rtype(result = "Result<(), Failure>")]
    pub struct RevokeById {
        /// The session id.
        pub session_id: String,
    }

    /// SessionValidator: a user's live sessions.
    #[derive(Message, Debug)]
    #[rtype(result = "Result<Vec<Session>, Failure>")]
    pub struct ListForUser {
        /// The user id.
        pub user_id: String,
    }

    /// SessionValidator: revoke every live session of a user; emits `user.sessions_revoked`.
    #[derive(Message, Debug)]
    #[rtype(result = "Result<usize, Failure>")]
    pub struct RevokeForUser {
        /// The user id.
        pub user_id: String,
    }
}

// ---- WsGateway ----------------------------------------------------------------------------

/// WsGateway → one WebSocket connection: what the gateway tells a live connection.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum ToConnection {
    /// An auth event this connection must get: one of its session, one of its user, or a
    /// `service.*` event. The gateway has already done the routing.
    Event(std::sync::Arc<AuthEvent>),
    /// The server is stopping: close with 1001.
    Shutdown,
    /// The connection's mailbox overflowed (it cannot keep up): close with 1013. The gateway
    /// has already forgotten it.
    TooSlow,
}

/// WsGateway: admit and index a new connection (answered before the upgrade completes, so a
/// refused connection gets an HTTP answer instead of a socket).
#[derive(Message)]
#[rtype(result = "Result<Admission, AdmissionRefused>")]
pub struct RegisterConnection {
    /// The session the connection belongs to (the token's session id).
    pub session_id: String,
    /// The user the connection belongs to.
    pub user_id: String,
    /// When the handshake started validating: a revocation of this session or user that the
    /// gateway received since then is delivered to the new connection at once (it may have
    /// been missed by the validation).
    pub validated_at: std::time::Instant,
    /// Where the gateway sends this connection's events.
    pub recipient: Recipient<ToConnection>,
    /// The session's `created_at` when the validation knew the session, else its token's `iat`
    /// (no session is created before its token is issued): a revoke-all taken before it does
    /// not close this connection. `None` (neither known) counts as covered.
    pub created_at: Option<i64>,
}

/// An admitted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The gateway's key for the connection (for [`UnregisterConnection`] and
    /// [`MoveConnection`]).
    pub key: u64,
    /// Unique across instances: `<instance id>-w<key>`.
    pub connection_id: String,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionRefused {
    /// The instance holds as many connections as it may.
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// The user holds as many connections as one user may.
    TooManyForUser {
        /// The limit.
        limit: usize,
    },
    /// The server is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for AdmissionRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdmissionRefused::TooManyConnections { limit } => {
                write!(f, "this instance holds its maximum of {limit} WebSocket connections")
            }
            AdmissionRefused::TooManyForUser { limit } => {
                write!(f, "this user holds the maximum of {limit} WebSocket connections")
            }
            AdmissionRefused::ShuttingDown => f.write_str("the server is shutting down"),
        }
    }
}

/// WsGateway: a connection has gone (sent by the connection when it stops; idempotent).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UnregisterConnection {
    /// The key from its [`Admission`].
    pub key: u64,
}

/// WsGateway: a connection now belongs to another session of the same user (after a
/// `refresh` message with a token naming another session).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MoveConnection {
    /// The key from its [`Admission`].
    pub key: u64,
    /// The new session id.
    pub session_id: String,
}

/// WsGateway: tell every connection to close with 1001 and admit no new one (SIGTERM).
/// Answers once every connection has been told; [`GatewayStats::connections`] then falls to
/// zero as they close.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ShutdownConnections;

/// Coordinator (self-test): give a `session.revoked` event for this session a fresh event id
/// and deliver it to `to` only, through the same delivery path as every event; never
/// published on the bus nor given to the other subscribers. Answers the event id.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct DeliverProbe {
    /// The probe subscriber.
    pub to: Recipient<Deliver>,
    /// The self-test session.
    pub session_id: String,
    /// The self-test user.
    pub user_id: String,
}

/// WsGateway: the distinct session ids that have a live connection.
#[derive(Message, Debug)]
#[rtype(result = "Vec<String>")]
pub struct ConnectedSessions;

/// Coordinator: where to ask for the connected sessions when it must reconcile them with
/// Redis (after its bus subscription was down: events may have been missed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionSource(pub Recipient<ConnectedSessions>);

/// FallbackStore: forget a session id entirely (session and tombstone), durably. Only the
/// self-test's own sessions are ever purged.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct PurgeSession {
    /// Session id.
    pub session_id: String,
}

/// FallbackStore, test builds only: block the actor's thread for this long (to prove that
/// liveness and the watchdog notice a wedged actor).
#[cfg(debug_assertions)]
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Wedge(pub std::time::Duration);

/// WsGateway: counters for health and metrics.
#[derive(Message, Debug)]
#[rtype(result = "GatewayStats")]
pub struct GetGatewayStats;

/// What the WsGateway reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewayStats {
    /// Live connections.
    pub connections: usize,
    /// Distinct sessions with at least one connection.
    pub sessions: usize,
    /// Distinct users with at least one connection.
    pub users: usize,
    /// Connections admitted since start.
    pub admitted_total: u64,
    /// Connections refused by the admission limits (or during shutdown) since start.
    pub refused_total: u64,
    /// Events received from the Coordinator since start.
    pub events_total: u64,
    /// Event frames handed to connections since start (one per event per connection).
    pub deliveries_total: u64,
    /// Connections dropped because their mailbox was full.
    pub too_slow_total: u64,
    /// Whether [`ShutdownConnections`] was received.
    pub shutting_down: bool,
}
