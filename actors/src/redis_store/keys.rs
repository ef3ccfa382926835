//! The key schema (docs/redis.md): every key starts with the configured prefix.
//!
//! | key | type | holds | expires (`EXPIREAT`) |
//! |---|---|---|---|
//! | `<prefix>:s:<sid>` | hash | `d` MessagePack fields, `u` user id, `t` created_at, `c` created length, `e` expires_at | `e` + grace |
//! | `<prefix>:r:<sid>` | string | the tombstone's `until` | `until` + grace |
//! | `<prefix>:u:<uid>` | sorted set | session ids scored by their `expires_at` | highest score + grace |
//! | `<prefix>:w:<uid>` | string | the user's revoke-all watermark: tokens issued at or before it create nothing | watermark + max_ttl + grace |
//! | `<prefix>:events` | pub/sub channel | auth events | - |
//!
//! The Lua scripts build user and session keys themselves from the prefix (`prefix .. ':s:' ..
//! sid`), so the infixes below and the ones in `scripts.rs` must agree.

/// Seconds added to every key's `EXPIREAT`: liveness is always decided by comparing the stored
/// times with the caller's `now`, never by Redis' clock, and this slack keeps a key around a
/// little past its logical end, so a Redis clock running ahead of the instances' clocks cannot
/// drop a session or a tombstone early. Dead index members are pruned only once their score is
/// this far in the past, for the same reason.
pub(crate) const KEY_GRACE_SECONDS: i64 = 60;

/// Builds the keys of one key prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (used as is, without a trailing colon).
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// The prefix, as the scripts receive it.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of a session.
    pub(crate) fn session(&self, sid: &str) -> String {
        format!("{}:s:{sid}", self.prefix)
    }

    /// The tombstone of a revoked session id.
    pub(crate) fn tomb(&self, sid: &str) -> String {
        format!("{}:r:{sid}", self.prefix)
    }

    /// The index of a user's sessions.
    pub(crate) fn user(&self, uid: &str) -> String {
        format!("{}:u:{uid}", self.prefix)
    }

    /// The revoke-all watermark of a user.
    pub(crate) fn watermark(&self, uid: &str) -> String {
        format!("{}:w:{uid}", self.prefix)
    }

    /// The pub/sub channel of auth events.
    pub(crate) fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
}
