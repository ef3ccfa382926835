//! What a session hash holds in its `d` field, and the decoding of script replies.
//!
//! `d` is `rmp_serde::to_vec_named` of [`StoredFields`]: a MessagePack map with one-letter
//! field names (small, and fields can be added later with `#[serde(default)]`). The session id
//! is the key's suffix and the expiry is the hash field `e` (it changes on refresh without
//! rewriting `d`), so neither is in `d`.

use std::collections::BTreeMap;

use deadpool_redis::redis::Value;
use serde::{Deserialize, Serialize};

use crate::domain::{NewSession, Session, TokenFormat, UnixSeconds};

/// The largest `d` accepted, the same bound as a record of the embedded store's log.
pub(crate) const MAX_ENCODED_BYTES: usize = crate::store::MAX_PAYLOAD_BYTES;

/// The session fields kept in `d`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredFields {
    #[serde(rename = "u")]
    user_id: String,
    #[serde(rename = "m")]
    email: String,
    #[serde(rename = "r")]
    role: String,
    #[serde(rename = "f")]
    format: TokenFormat,
    #[serde(rename = "c")]
    created_at: UnixSeconds,
    #[serde(rename = "a", default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
}

/// Encodes the fields of a session being created at `created_at`; refuses more than
/// [`MAX_ENCODED_BYTES`].
pub(crate) fn encode_new(new: &NewSession, created_at: UnixSeconds) -> Result<Vec<u8>, String> {
    let id = &new.identity;
    encode(&StoredFields {
        user_id: id.user_id.clone(),
        email: id.email.clone(),
        role: id.role.clone(),
        format: id.format,
        created_at,
        attributes: new.attributes.clone(),
    })
}

/// Encodes the fields of an existing session (replay).
pub(crate) fn encode_session(s: &Session) -> Result<Vec<u8>, String> {
    encode(&StoredFields {
        user_id: s.user_id.clone(),
        email: s.email.clone(),
        role: s.role.clone(),
        format: s.format,
        created_at: s.created_at,
        attributes: s.attributes.clone(),
    })
}

fn encode(f: &StoredFields) -> Result<Vec<u8>, String> {
    let d = rmp_serde::to_vec_named(f).map_err(|e| format!("cannot encode a session: {e}"))?;
    if d.len() > MAX_ENCODED_BYTES {
        return Err(format!(
            "a session encodes to {} bytes, over the limit of {MAX_ENCODED_BYTES}",
            d.len()
        ));
    }
    Ok(d)
}

/// Rebuilds the API session from its id, `d` and expiry.
pub(crate) fn decode(sid: &str, d: &[u8], expires_at: UnixSeconds) -> Result<Session, String> {
    let f: StoredFields = rmp_serde::from_slice(d)
        .map_err(|e| format!("session {sid:?} is corrupt in redis: {e}"))?;
    Ok(Session {
        session_id: sid.to_string(),
        user_id: f.user_id,
        email: f.email,
        role: f.role,
        format: f.format,
        created_at: f.created_at,
        expires_at,
        attributes: f.attributes,
    })
}

/// The elements of an array reply.
pub(crate) fn array(v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        // Lua's empty table.
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("unexpected reply from a script: {}", kind(&other))),
    }
}

/// An integer reply element.
pub(crate) fn int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "unexpected non-numeric reply from a script".to_string()),
        Value::SimpleString(s) => {
            s.parse().map_err(|_| "unexpected non-numeric reply from a script".to_string())
        }
        other => Err(format!("expected a number from a script, got {}", kind(other))),
    }
}

/// A binary string reply element.
pub(crate) fn bytes(v: Value) -> Result<Vec<u8>, String> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(format!("expected a string from a script, got {}", kind(&other))),
    }
}

/// A UTF-8 string reply element.
pub(crate) fn string(v: Value) -> Result<String, String> {
    String::from_utf8(bytes(v)?).map_err(|_| "a script answered a non-UTF-8 id".to_string())
}

/// The reply's kind, for error messages (never its content).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a status",
        Value::Okay => "OK",
        Value::ServerError(_) => "an error",
        _ => "another type",
    }
}
