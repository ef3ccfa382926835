//! Step 4 of the check order: the registered claims (`exp`, `iat`, `nbf`, `iss`, `aud`) and
//! the time checks, run only once the signature verified.

use serde_json::{Map, Value};

use super::error::TokenError;
use crate::domain::UnixSeconds;

/// What the registered-claim checks need from the settings.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    /// Required `iss`, if configured.
    pub issuer: Option<String>,
    /// Required `aud`, if configured.
    pub audience: Option<String>,
    /// Leeway for every time check, never negative.
    pub leeway: i64,
}

/// The times of an accepted token, floored to whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    /// `exp`.
    pub expires_at: UnixSeconds,
    /// `iat`, when present.
    pub issued_at: Option<UnixSeconds>,
}

fn invalid(why: &str) -> TokenError {
    TokenError::ClaimsInvalid(why.to_owned())
}

/// A JSON number as whole Unix seconds: integers as they are (saturating beyond `i64`),
/// fractions floored. `None` when the value is not a number.
pub(crate) fn seconds(value: &Value) -> Option<UnixSeconds> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        Some(i)
    } else if n.as_u64().is_some() {
        Some(i64::MAX)
    } else {
        // `as` saturates at the i64 bounds; a JSON number is never NaN or infinite.
        n.as_f64().map(|f| f.floor() as i64)
    }
}

/// An optional numeric time claim: absent is fine, present must be a number.
fn optional_seconds(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<UnixSeconds>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => seconds(value)
            .map(Some)
            .ok_or_else(|| TokenError::ClaimsInvalid(format!("{name} is not a number"))),
    }
}

/// Runs the registered-claim checks in the contract's order.
pub(crate) fn check(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: UnixSeconds,
) -> Result<Times, TokenError> {
    let exp = match claims.get("exp") {
        None => return Err(invalid("exp is required")),
        Some(value) => seconds(value).ok_or_else(|| invalid("exp is not a number"))?,
    };
    let iat = optional_seconds(claims, "iat")?;
    let nbf = optional_seconds(claims, "nbf")?;

    if let Some(issuer) = &rules.issuer {
        match claims.get("iss") {
            None => return Err(invalid("iss is required")),
            Some(Value::String(iss)) if iss == issuer => {}
            Some(Value::String(_)) => return Err(invalid("iss does not match")),
            Some(_) => return Err(invalid("iss is not a string")),
        }
    }
    if let Some(audience) = &rules.audience {
        match claims.get("aud") {
            None => return Err(invalid("aud is required")),
            Some(Value::String(aud)) => {
                if aud != audience {
                    return Err(invalid("aud does not match"));
                }
            }
            Some(Value::Array(list)) => {
                let mut found = false;
                for item in list {
                    match item {
                        Value::String(aud) => found |= aud == audience,
                        _ => return Err(invalid("aud is not a string or a list of strings")),
                    }
                }
                if !found {
                    return Err(invalid("aud does not contain the configured audience"));
                }
            }
            Some(_) => return Err(invalid("aud is not a string or a list of strings")),
        }
    }

    let leeway = rules.leeway;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired { seconds_ago: now.saturating_sub(exp) });
    }
    if let Some(nbf) = nbf
        && now < nbf.saturating_sub(leeway)
    {
        return Err(TokenError::NotYetValid { seconds_ahead: nbf.saturating_sub(now) });
    }
    if let Some(iat) = iat
        && iat > now.saturating_add(leeway)
    {
        return Err(TokenError::NotYetValid { seconds_ahead: iat.saturating_sub(now) });
    }

    Ok(Times { expires_at: exp, issued_at: iat })
}
