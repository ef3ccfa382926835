//! Algorithm names, HMAC signing (for `mint-token`, `--dev` and the self-tests) and the crypto
//! backend self-test run at start.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{AlgorithmFamily, EncodingKey};

use super::Algorithm;

/// The algorithm named exactly `name` (JOSE spelling, case-sensitive: `HS256`, `RS256`,
/// `PS256`, `ES256`, `EdDSA`, …). `none` and every other name give `None`.
#[must_use]
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The JOSE name of `alg` (the inverse of [`parse_algorithm`]).
#[must_use]
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a variant added upstream has no name we accept.
        _ => "unsupported",
    }
}

/// Signs `claims` (a JSON object) as a JWS-compact JWT with the header
/// `{"alg":…,"typ":"JWT"}`. Only HS256/HS384/HS512 are accepted; the secret's length is not
/// checked here (the [`Verifier`](super::Verifier) refuses secrets under 32 bytes).
///
/// # Errors
///
/// A non-HMAC `alg`, claims that are not an object, an empty secret, or no crypto provider.
pub fn sign_hmac(
    secret: &[u8],
    alg: Algorithm,
    claims: &serde_json::Value,
) -> Result<String, String> {
    if alg.family() != AlgorithmFamily::Hmac {
        return Err(format!(
            "sign_hmac: {} is not an HMAC algorithm (HS256, HS384, HS512)",
            algorithm_name(alg)
        ));
    }
    if !claims.is_object() {
        return Err("sign_hmac: the claims must be a JSON object".to_owned());
    }
    if CryptoProvider::try_get_default().is_none() {
        return Err("sign_hmac: no jsonwebtoken crypto provider is available".to_owned());
    }
    let header = serde_json::json!({"alg": algorithm_name(alg), "typ": "JWT"});
    let header = serde_json::to_vec(&header).map_err(|e| format!("sign_hmac: header: {e}"))?;
    let payload = serde_json::to_vec(claims).map_err(|e| format!("sign_hmac: claims: {e}"))?;
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let key = EncodingKey::from_secret(secret)
        .map_err(|e| format!("sign_hmac: unusable secret (it must not be empty): {e}"))?;
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, alg)
        .map_err(|e| format!("sign_hmac: signing failed: {e}"))?;
    Ok(format!("{signing_input}.{signature}"))
}

/// Checks at start that jsonwebtoken has a crypto backend and that it signs and verifies: a
/// probe HS256 token must verify, and the same token with a flipped signature must not.
///
/// # Errors
///
/// What failed, as a message; the daemon refuses to start with it.
pub fn crypto_self_test() -> Result<(), String> {
    if CryptoProvider::try_get_default().is_none() {
        return Err("crypto self-test: jsonwebtoken has no crypto provider (it must be built \
                    with exactly one of its features aws_lc_rs or rust_crypto)"
            .to_owned());
    }
    let secret = b"sessiond crypto self-test secret, 32+ bytes long";
    let token =
        sign_hmac(secret, Algorithm::HS256, &serde_json::json!({"sub": "self-test", "exp": 0}))
            .map_err(|e| format!("crypto self-test: {e}"))?;
    let key = jsonwebtoken::DecodingKey::from_secret(secret)
        .map_err(|e| format!("crypto self-test: cannot build the probe key: {e}"))?;
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| "crypto self-test: the probe token has no signature".to_owned())?;
    let verifies = |sig: &str| {
        jsonwebtoken::crypto::verify(sig, signing_input.as_bytes(), &key, Algorithm::HS256)
            .map_err(|e| format!("crypto self-test: verification failed to run: {e}"))
    };
    if !verifies(signature)? {
        return Err("crypto self-test: a freshly signed HS256 probe does not verify".to_owned());
    }
    // Flip the first signature character to another alphabet letter ('A' <-> 'B' keep the
    // encoding canonical since the first character carries no trailing bits).
    let flipped_first = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{flipped_first}{}", signature.get(1..).unwrap_or(""));
    if verifies(&tampered)? {
        return Err(
            "crypto self-test: a tampered HS256 probe verifies; the crypto backend is broken"
                .to_owned(),
        );
    }
    Ok(())
}
