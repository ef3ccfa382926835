//! The pure JWT verifier and normalizer of CONTRACT.md section 1.
//!
//! [`Verifier::verify`] turns a JWS-compact token into an [`Identity`] or one precise
//! [`TokenError`], running the contract's checks in its order; the first that fails is the
//! answer, so nothing about the claims of a token with a bad signature is revealed:
//!
//! 1. structure ([`TokenError::Malformed`]): at most 8192 bytes; three parts, each strict
//!    unpadded base64url; header and payload JSON objects with unique member names; header
//!    `alg` a string, `kid` a string when present; none of `jku`, `x5u`, `jwk`, `x5c`, `crit`,
//!    `b64`;
//! 2. algorithm ([`TokenError::AlgorithmRejected`]): `alg` listed in `tokens.algorithms` (never
//!    `none`, in any case); a header `kid` naming a key bound to another algorithm is rejected,
//!    an unknown one is [`TokenError::InvalidSignature`];
//! 3. signature ([`TokenError::InvalidSignature`]): with the key the `kid` names, else with
//!    every key bound to the token's `alg`;
//! 4. registered claims: `exp` required and numeric, `iat`/`nbf` numeric when present,
//!    `iss`/`aud` when configured ([`TokenError::ClaimsInvalid`]); then
//!    [`TokenError::Expired`] and [`TokenError::NotYetValid`], with the leeway;
//! 5. layout ([`TokenError::Malformed`], then [`TokenError::Inconsistent`]).
//!
//! Signatures are checked by jsonwebtoken's crypto backend; everything else is done here, on
//! the decoded JSON, so that no library default (ignored `nbf`, accepted `jwk` headers, …)
//! decides for us. `docs/tokens.md` lists each rule with the attack it stops.

mod claims;
mod error;
mod keyring;
mod layout;
mod settings;
mod sign;
mod structure;

#[cfg(test)]
mod tests;

pub use error::{KeyError, TokenError};
pub use jsonwebtoken::Algorithm;
pub use keyring::MIN_HMAC_SECRET_BYTES;
pub use layout::{MAX_FIELD_BYTES, derived_session_id};
pub use settings::{PublicKeySpec, TokenSettings};
pub use sign::{algorithm_name, crypto_self_test, parse_algorithm, sign_hmac};
pub use structure::{FORBIDDEN_HEADERS, MAX_TOKEN_BYTES};

use serde::Serialize;

use crate::domain::{Identity, UnixSeconds};
use claims::ClaimRules;
use keyring::KeyRing;

/// What the key ring holds, for health details and logs: no secret, no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifierSummary {
    /// How many keys are configured (the HMAC secret counts once, each public key once).
    pub key_count: usize,
    /// The accepted algorithms, in configuration order.
    pub algorithms: Vec<String>,
    /// The key ids of the public keys that have one, in configuration order.
    pub kids: Vec<String>,
}

/// The immutable verifier: the key ring (every key pre-built and bound to one algorithm) and
/// the claim rules. Cheap to share as `Arc<Verifier>`; [`Verifier::verify`] is pure.
pub struct Verifier {
    ring: KeyRing,
    rules: ClaimRules,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("summary", &self.summary()).finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the key ring from `settings`, checking every key once:
    ///
    /// - the HMAC secret, when set, is at least [`MIN_HMAC_SECRET_BYTES`] long and verifies
    ///   exactly the HS256/HS384/HS512 listed in `algorithms` (at least one must be);
    /// - each public key's `alg` is listed in `algorithms`, its PEM is a public key of the kind
    ///   that algorithm needs (RSA of 2048–8192 bits for RS*/PS*, EC on P-256/P-384 for
    ///   ES256/ES384, Ed25519 for EdDSA), and its `kid`, when set, is non-empty and unique;
    /// - at least one key is configured.
    ///
    /// A negative leeway counts as zero.
    ///
    /// # Errors
    ///
    /// A [`KeyError`] naming the configuration key or key source at fault.
    pub fn new(settings: TokenSettings) -> Result<Verifier, KeyError> {
        let ring = KeyRing::new(&settings)?;
        let rules = ClaimRules {
            issuer: settings.issuer.filter(|s| !s.is_empty()),
            audience: settings.audience.filter(|s| !s.is_empty()),
            leeway: settings.leeway_seconds.max(0),
        };
        Ok(Verifier { ring, rules })
    }

    /// Verifies `token` at time `now` and returns its normalized identity, or the first check
    /// that failed, in the contract's order (see the module documentation).
    ///
    /// # Errors
    ///
    /// The [`TokenError`] of the first check that failed.
    pub fn verify(&self, token: &str, now: UnixSeconds) -> Result<Identity, TokenError> {
        let parsed = structure::parse(token)?;
        let candidates = self.ring.select(&parsed.alg, parsed.kid.as_deref())?;
        self.ring.verify_any(candidates, parsed.signing_input.as_bytes(), &parsed.signature)?;
        let times = claims::check(&parsed.claims, &self.rules, now)?;
        layout::normalize(&parsed.claims, token, times)
    }

    /// What the key ring holds, without secrets.
    #[must_use]
    pub fn summary(&self) -> VerifierSummary {
        VerifierSummary {
            key_count: self.ring.key_count(),
            algorithms: self
                .ring
                .algorithms()
                .iter()
                .map(|alg| algorithm_name(*alg).to_owned())
                .collect(),
            kids: self.ring.kids().to_vec(),
        }
    }
}
