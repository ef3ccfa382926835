//! Domain types shared by every actor: the normalized identity, the session record and the
//! auth events. Their JSON shapes are the ones of CONTRACT.md sections 1, 2 and 5.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Unix time in whole seconds.
pub type UnixSeconds = i64;

/// The claim layout a token arrived in (CONTRACT.md section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// `sub` is the email, the user id comes from `id`.
    Legacy,
    /// `sub` is the user id, the email comes from `email`.
    Enhanced,
}

impl TokenFormat {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Legacy => "legacy",
            TokenFormat::Enhanced => "enhanced",
        }
    }
}

/// The normalized identity of an accepted token, whatever its layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user id (integer ids are rendered as decimal strings).
    pub user_id: String,
    /// The user's email.
    pub email: String,
    /// The user's role, never empty.
    pub role: String,
    /// `sid`, else `jti`, else `t_` + 22 characters of the token's SHA-256.
    pub session_id: String,
    /// Which claim layout the token used.
    pub format: TokenFormat,
    /// The token's `iat`, when it had one.
    pub issued_at: Option<UnixSeconds>,
    /// The token's `exp`.
    pub expires_at: UnixSeconds,
}

/// The server-side record of one login (CONTRACT.md section 2), as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session id (see [`Identity::session_id`]).
    pub session_id: String,
    /// The user the session belongs to.
    pub user_id: String,
    /// The user's email at creation.
    pub email: String,
    /// The user's role at creation.
    pub role: String,
    /// The layout of the token that created it.
    pub format: TokenFormat,
    /// When it was created.
    pub created_at: UnixSeconds,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// Free-form string attributes given at creation.
    pub attributes: BTreeMap<String, String>,
}

impl Session {
    /// Whether the session is still live at `now`.
    pub fn is_live(&self, now: UnixSeconds) -> bool {
        self.expires_at > now
    }
}

/// What a create request asks the store to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    /// The identity of the token that asked for it.
    pub identity: Identity,
    /// When the session should expire, already capped by `sessions.max_ttl_seconds`.
    pub expires_at: UnixSeconds,
    /// The attributes to keep with it.
    pub attributes: BTreeMap<String, String>,
}

/// The kinds of auth event (CONTRACT.md section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A session was revoked.
    #[serde(rename = "session.revoked")]
    SessionRevoked,
    /// A session was refreshed.
    #[serde(rename = "session.refreshed")]
    SessionRefreshed,
    /// Every session of a user was revoked.
    #[serde(rename = "user.sessions_revoked")]
    UserSessionsRevoked,
    /// A connection's session is about to expire.
    #[serde(rename = "session.expiring")]
    SessionExpiring,
    /// The instance entered degraded mode.
    #[serde(rename = "service.degraded")]
    ServiceDegraded,
    /// The instance left degraded mode.
    #[serde(rename = "service.recovered")]
    ServiceRecovered,
}

impl EventKind {
    /// The event's name on the wire, e.g. `session.revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionRevoked => "session.revoked",
            EventKind::SessionRefreshed => "session.refreshed",
            EventKind::UserSessionsRevoked => "user.sessions_revoked",
            EventKind::SessionExpiring => "session.expiring",
            EventKind::ServiceDegraded => "service.degraded",
            EventKind::ServiceRecovered => "service.recovered",
        }
    }

    /// Every kind, for metrics and tests.
    pub const ALL: [EventKind; 6] = [
        EventKind::SessionRevoked,
        EventKind::SessionRefreshed,
        EventKind::UserSessionsRevoked,
        EventKind::SessionExpiring,
        EventKind::ServiceDegraded,
        EventKind::ServiceRecovered,
    ];
}

/// One auth event, as fanned out by the Coordinator and sent to WebSocket clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthEvent {
    /// Unique across instances: the raising instance's id, a dash, a counter.
    pub id: String,
    /// What happened.
    pub event: EventKind,
    /// The session concerned, if any.
    pub session_id: Option<String>,
    /// The user concerned, if any.
    pub user_id: Option<String>,
    /// When it was raised, in Unix milliseconds.
    pub at_ms: i64,
    /// Event-specific details.
    pub data: serde_json::Value,
}

/// The current Unix time in seconds.
pub fn now_seconds() -> UnixSeconds {
    now_millis().div_euclid(1000)
}

/// The current Unix time in milliseconds.
pub fn now_millis() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        // A clock before 1970 is a broken clock; treat it as the epoch.
        Err(_) => 0,
    }
}

/// One write taken while degraded, kept in the fallback store's durable journal until it has
/// been replayed into Redis. Replaying is idempotent, and revocations win: a `Put` never
/// resurrects a revoked id, and an `Expiry` never touches a revoked or missing session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalOp {
    /// A session created while degraded (with the length it was created with).
    Put {
        /// The session as created.
        session: Session,
        /// `expires_at - created_at` at creation, what a later refresh without ttl reuses.
        created_len: i64,
        /// The `iat` of the token that created it, when it had one: the replay refuses the
        /// create when a revoke-all of the user at or after it reached Redis first.
        issued_at: Option<UnixSeconds>,
    },
    /// A session's expiry set by a refresh while degraded.
    Expiry {
        /// The session id.
        session_id: String,
        /// The new absolute expiry.
        expires_at: UnixSeconds,
    },
    /// A revocation taken while degraded: the id stays revoked until `until`.
    Tomb {
        /// The session id.
        session_id: String,
        /// Until when the id stays revoked.
        until: UnixSeconds,
        /// The session's user, when it was known (to clean the user index).
        user_id: Option<String>,
    },
    /// A revoke-all taken while degraded: every session of the user created at or before `at`
    /// is revoked (including ones this instance never knew).
    RevokeUser {
        /// The user id.
        user_id: String,
        /// When the revoke-all was taken.
        at: UnixSeconds,
    },
}

/// A journal entry: its sequence number (increasing, never reused) and the write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the journal.
    pub seq: u64,
    /// The write.
    pub op: JournalOp,
}
