//! The typed messages the actors exchange. Each names the actor that handles it.

use actix::prelude::*;

use crate::domain::{AuthEvent, Identity, JournalEntry, NewSession, Session, UnixSeconds};
use crate::store::{CreateOutcome, Lookup, RefreshOutcome, RevokeOutcome, StoreError, StoreStats};
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

/// FallbackStore: look one session up.
#[derive(Message, Debug)]
#[rtype(result = "Lookup")]
pub struct GetSession {
    /// The session id.
    pub session_id: String,
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

/// FallbackStore: a user's live sessions.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Session>")]
pub struct ListUserSessions {
    /// The user id.
    pub user_id: String,
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
