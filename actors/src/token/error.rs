//! The verifier's two error types: [`TokenError`] (a rejected token, one contract code each)
//! and [`KeyError`] (a key ring that cannot be built at start).

use std::fmt;

/// Why a token was rejected. Each variant maps to exactly one error code of CONTRACT.md
/// section 3 ([`TokenError::code`]); the `Display` text is a short human message that never
/// contains the token, a claim value that could be a credential, or a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWS-compact JWT, bad base64url or JSON, a forbidden header, or a claim layout
    /// that is not recognised (`token_malformed`).
    Malformed(String),
    /// The header's `alg` is not configured, is `none`, or does not match the key its `kid`
    /// names (`token_algorithm_rejected`).
    AlgorithmRejected(String),
    /// The signature does not verify with any key it may be checked with, or the header's
    /// `kid` is unknown (`token_invalid_signature`).
    InvalidSignature,
    /// `exp` missing or not a number, `iat`/`nbf` not numbers, or `iss`/`aud` missing,
    /// mistyped or not matching (`token_claims_invalid`).
    ClaimsInvalid(String),
    /// `now >= exp + leeway` (`token_expired`); `seconds_ago` is `now - exp`.
    Expired {
        /// How long ago the token's `exp` passed, in seconds.
        seconds_ago: i64,
    },
    /// `now < nbf - leeway`, or `iat > now + leeway` (`token_not_yet_valid`).
    NotYetValid {
        /// How far ahead of `now` the offending `nbf` or `iat` is, in seconds.
        seconds_ahead: i64,
    },
    /// `id`/`email` disagree with the detected layout (`token_inconsistent`).
    Inconsistent(String),
}

impl TokenError {
    /// The contract's error code, e.g. `token_expired`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::AlgorithmRejected(_) => "token_algorithm_rejected",
            TokenError::InvalidSignature => "token_invalid_signature",
            TokenError::ClaimsInvalid(_) => "token_claims_invalid",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::Inconsistent(_) => "token_inconsistent",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "token malformed: {why}"),
            TokenError::AlgorithmRejected(why) => write!(f, "token algorithm rejected: {why}"),
            TokenError::InvalidSignature => f.write_str("token signature does not verify"),
            TokenError::ClaimsInvalid(why) => write!(f, "token claims invalid: {why}"),
            TokenError::Expired { seconds_ago } => write!(f, "token expired {seconds_ago} s ago"),
            TokenError::NotYetValid { seconds_ahead } => {
                write!(f, "token not valid for another {seconds_ahead} s")
            }
            TokenError::Inconsistent(why) => write!(f, "token inconsistent: {why}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// The key ring could not be built from the `[tokens]` configuration. The message names the
/// configuration key or key source at fault (e.g. `tokens.public_keys[1]`) and never contains
/// key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}
