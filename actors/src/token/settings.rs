//! What the verifier is built from: the `[tokens]` configuration, with key files already read.

use jsonwebtoken::Algorithm;

use crate::domain::UnixSeconds;

/// One configured public key (`tokens.public_keys` entry), its PEM already read.
#[derive(Clone)]
pub struct PublicKeySpec {
    /// The key id a token header names it by, if any.
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Algorithm,
    /// The PEM file's contents.
    pub pem: Vec<u8>,
    /// Where it came from (e.g. `tokens.public_keys[0]`), for error messages.
    pub source: String,
}

impl std::fmt::Debug for PublicKeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKeySpec")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Everything the verifier needs. Secrets are never printed by `Debug`.
#[derive(Clone)]
pub struct TokenSettings {
    /// The accepted algorithms (`tokens.algorithms`).
    pub algorithms: Vec<Algorithm>,
    /// The HMAC secret's bytes, if one is configured; it verifies the HS* algorithms listed.
    pub hmac_secret: Option<Vec<u8>>,
    /// The public keys.
    pub public_keys: Vec<PublicKeySpec>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Leeway for every time check, in seconds.
    pub leeway_seconds: UnixSeconds,
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("algorithms", &self.algorithms)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "<redacted>"))
            .field("public_keys", &self.public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}
