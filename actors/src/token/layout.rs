//! Step 5 of the check order: the claim layout (legacy or enhanced) and the normalized
//! [`Identity`].
//!
//! | layout   | `sub`                   | user id from            | email from |
//! |----------|-------------------------|-------------------------|------------|
//! | legacy   | the email (has `@`)     | `id` (string or integer) | `sub`     |
//! | enhanced | the user id (no `@`)    | `sub`                   | `email`    |
//!
//! Every shape problem is [`TokenError::Malformed`]; they are all checked before the
//! consistency rule ([`TokenError::Inconsistent`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::claims::Times;
use super::error::TokenError;
use crate::domain::{Identity, TokenFormat};

/// The longest user id, email, role or session id accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// The length of the hash part of a derived session id (`t_` + this many characters).
pub const DERIVED_SESSION_ID_CHARS: usize = 22;

fn malformed(why: &str) -> TokenError {
    TokenError::Malformed(why.to_owned())
}

/// Detects the layout of `claims` and builds the identity.
pub(crate) fn normalize(
    claims: &Map<String, Value>,
    token: &str,
    times: Times,
) -> Result<Identity, TokenError> {
    let sub = match claims.get("sub") {
        Some(Value::String(sub)) => sub.as_str(),
        Some(_) => return Err(malformed("sub is not a string")),
        None => return Err(malformed("sub is required")),
    };
    let id_claim = claims.get("id");
    let email_claim = claims.get("email");

    let (format, user_id, email, other) = if sub.contains('@') {
        let Some(id) = id_claim else {
            return Err(malformed(
                "claim layout not recognised: sub is an email but there is no id claim",
            ));
        };
        let user_id = render_id(id)?;
        let other = email_claim.map(email_value).transpose()?;
        (TokenFormat::Legacy, user_id, sub.to_owned(), other)
    } else {
        let Some(email) = email_claim else {
            return Err(malformed(
                "claim layout not recognised: sub is not an email and there is no email claim",
            ));
        };
        if sub.is_empty() {
            return Err(malformed("sub is empty"));
        }
        let email = email_value(email)?;
        let other = id_claim.map(render_id).transpose()?;
        (TokenFormat::Enhanced, sub.to_owned(), email, other)
    };

    let role = match claims.get("role") {
        Some(Value::String(role)) if !role.is_empty() => role.clone(),
        Some(_) => return Err(malformed("role is not a non-empty string")),
        None => return Err(malformed("role is required")),
    };
    let sid = session_claim(claims, "sid")?;
    let jti = session_claim(claims, "jti")?;

    check_field(&user_id, "user id")?;
    check_field(&email, "email")?;
    check_field(&role, "role")?;

    match (format, other) {
        (TokenFormat::Legacy, Some(email_claim)) if email_claim != sub => {
            return Err(TokenError::Inconsistent(
                "legacy layout: the email claim differs from sub".to_owned(),
            ));
        }
        (TokenFormat::Enhanced, Some(id_claim)) if id_claim != sub => {
            return Err(TokenError::Inconsistent(
                "enhanced layout: the id claim differs from sub".to_owned(),
            ));
        }
        _ => {}
    }

    let session_id = match sid.or(jti) {
        Some(id) => id.to_owned(),
        None => derived_session_id(token),
    };

    Ok(Identity {
        user_id,
        email,
        role,
        session_id,
        format,
        issued_at: times.issued_at,
        expires_at: times.expires_at,
    })
}

/// An `id` claim rendered as a string: a non-empty string as is, an integer in decimal.
pub(crate) fn render_id(value: &Value) -> Result<String, TokenError> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(malformed("id is not a non-empty string or an integer")),
    }
}

fn email_value(value: &Value) -> Result<String, TokenError> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(malformed("email is not a non-empty string")),
    }
}

/// `sid` or `jti`: absent, or a non-empty string that passes [`check_field`].
fn session_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => {
            check_field(s, name)?;
            Ok(Some(s.as_str()))
        }
        Some(_) => Err(TokenError::Malformed(format!("{name} is not a non-empty string"))),
    }
}

/// At most [`MAX_FIELD_BYTES`] bytes and no ASCII control character (these values end up in
/// HTTP headers, logs and store keys).
fn check_field(value: &str, what: &str) -> Result<(), TokenError> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(TokenError::Malformed(format!(
            "{what} is longer than {MAX_FIELD_BYTES} bytes"
        )));
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(TokenError::Malformed(format!("{what} contains a control character")));
    }
    Ok(())
}

/// `t_` + the first 22 characters of the unpadded base64url SHA-256 of the whole token.
#[must_use]
pub fn derived_session_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut encoded = URL_SAFE_NO_PAD.encode(digest);
    encoded.truncate(DERIVED_SESSION_ID_CHARS);
    format!("t_{encoded}")
}
