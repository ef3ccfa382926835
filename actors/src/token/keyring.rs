//! The key ring: every verification key, bound to exactly one algorithm, built once at start.
//!
//! Steps 2 and 3 of the check order live here: choosing the keys a token may be checked with
//! (algorithm allow-list, `kid` lookup, algorithm binding) and checking its signature.

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{AlgorithmFamily, DecodingKey, DecodingKeyKind};

use super::error::{KeyError, TokenError};
use super::settings::{PublicKeySpec, TokenSettings};
use super::{Algorithm, algorithm_name, parse_algorithm};

/// The shortest HMAC secret accepted, in bytes (RFC 7518 section 3.2: at least the hash size;
/// 32 bytes is HS256's).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// RSA modulus sizes the backend verifies (aws-lc's `RSA_*_2048_8192_*` parameters).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// One verification key and the one algorithm it verifies.
struct KeyEntry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Every configured key, pre-built, with the lookups the check order needs.
pub(crate) struct KeyRing {
    provider: &'static CryptoProvider,
    algorithms: Vec<Algorithm>,
    entries: Vec<KeyEntry>,
    /// For each accepted algorithm, the indexes of the entries bound to it.
    by_alg: Vec<(Algorithm, Vec<usize>)>,
    has_hmac_secret: bool,
    public_key_count: usize,
    kids: Vec<String>,
}

impl KeyRing {
    /// Builds and checks every key. See the module documentation of `token` for the rules.
    pub(crate) fn new(settings: &TokenSettings) -> Result<KeyRing, KeyError> {
        let provider = CryptoProvider::try_get_default().ok_or_else(|| {
            KeyError(
                "tokens: no jsonwebtoken crypto provider is available (build with exactly one \
                 of its features aws_lc_rs or rust_crypto)"
                    .to_owned(),
            )
        })?;
        if settings.algorithms.is_empty() {
            return Err(KeyError(
                "tokens.algorithms: is empty; list at least one algorithm".to_owned(),
            ));
        }
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for alg in &settings.algorithms {
            if !algorithms.contains(alg) {
                algorithms.push(*alg);
            }
        }

        let mut entries = Vec::new();
        let mut has_hmac_secret = false;
        if let Some(secret) = &settings.hmac_secret {
            entries.extend(hmac_entries(secret, &algorithms)?);
            has_hmac_secret = true;
        }

        let mut kids: Vec<String> = Vec::new();
        for spec in &settings.public_keys {
            if !algorithms.contains(&spec.alg) {
                return Err(KeyError(format!(
                    "{}: its alg {} is not listed in tokens.algorithms",
                    spec.source,
                    algorithm_name(spec.alg)
                )));
            }
            if let Some(kid) = &spec.kid {
                if kid.is_empty() {
                    return Err(KeyError(format!(
                        "{}: kid is empty; omit it or give a name",
                        spec.source
                    )));
                }
                if kids.contains(kid) {
                    return Err(KeyError(format!(
                        "{}: kid {kid:?} is used by another key of tokens.public_keys",
                        spec.source
                    )));
                }
                kids.push(kid.clone());
            }
            let key = public_key(spec, provider)?;
            entries.push(KeyEntry { kid: spec.kid.clone(), alg: spec.alg, key });
        }

        if entries.is_empty() {
            return Err(KeyError(
                "tokens: no key configured: set tokens.hmac_secret, tokens.hmac_secret_file or \
                 tokens.public_keys"
                    .to_owned(),
            ));
        }

        let by_alg = algorithms
            .iter()
            .map(|alg| {
                let idx = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.alg == *alg)
                    .map(|(i, _)| i)
                    .collect();
                (*alg, idx)
            })
            .collect();

        Ok(KeyRing {
            provider,
            algorithms,
            entries,
            by_alg,
            has_hmac_secret,
            public_key_count: settings.public_keys.len(),
            kids,
        })
    }

    /// Step 2: the accepted algorithm and the keys the token may be checked with.
    ///
    /// Returns the entry indexes to try, or the rejection.
    pub(crate) fn select(&self, alg: &str, kid: Option<&str>) -> Result<&[usize], TokenError> {
        if alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgorithmRejected("alg none is never accepted".to_owned()));
        }
        let Some(alg) = parse_algorithm(alg) else {
            return Err(TokenError::AlgorithmRejected(
                "alg is not a supported algorithm".to_owned(),
            ));
        };
        let Some((_, candidates)) = self.by_alg.iter().find(|(a, _)| *a == alg) else {
            return Err(TokenError::AlgorithmRejected(format!(
                "alg {} is not listed in tokens.algorithms",
                algorithm_name(alg)
            )));
        };
        match kid {
            None => Ok(candidates.as_slice()),
            Some(kid) => {
                let Some(index) = self.entries.iter().position(|e| e.kid.as_deref() == Some(kid))
                else {
                    return Err(TokenError::InvalidSignature);
                };
                if self.entries[index].alg != alg {
                    return Err(TokenError::AlgorithmRejected(format!(
                        "kid names a key bound to {}, not {}",
                        algorithm_name(self.entries[index].alg),
                        algorithm_name(alg)
                    )));
                }
                // `index` is bound to `alg`, so it is in `candidates`.
                let at = candidates
                    .iter()
                    .position(|i| *i == index)
                    .ok_or(TokenError::InvalidSignature)?;
                Ok(&candidates[at..=at])
            }
        }
    }

    /// Step 3: whether `signature` over `signing_input` verifies with one of `candidates`.
    pub(crate) fn verify_any(
        &self,
        candidates: &[usize],
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        // The backend's verifiers take the signature as a `&Vec<u8>`.
        let signature = signature.to_vec();
        for entry in candidates.iter().filter_map(|i| self.entries.get(*i)) {
            let Ok(verifier) = (self.provider.verifier_factory)(&entry.alg, &entry.key) else {
                continue;
            };
            if verifier.verify(signing_input, &signature).is_ok() {
                return Ok(());
            }
        }
        Err(TokenError::InvalidSignature)
    }

    /// The accepted algorithms, deduplicated, in configuration order.
    pub(crate) fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// How many keys were configured (the HMAC secret counts once).
    pub(crate) fn key_count(&self) -> usize {
        usize::from(self.has_hmac_secret) + self.public_key_count
    }

    /// The configured key ids, in configuration order.
    pub(crate) fn kids(&self) -> &[String] {
        &self.kids
    }
}

/// The HMAC secret, once per HS* algorithm listed.
fn hmac_entries(secret: &[u8], algorithms: &[Algorithm]) -> Result<Vec<KeyEntry>, KeyError> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(KeyError(format!(
            "tokens.hmac_secret / tokens.hmac_secret_file: the HMAC secret is {} bytes, at least \
             {MIN_HMAC_SECRET_BYTES} are required",
            secret.len()
        )));
    }
    let hmac_algs: Vec<Algorithm> =
        algorithms.iter().copied().filter(|alg| alg.family() == AlgorithmFamily::Hmac).collect();
    if hmac_algs.is_empty() {
        return Err(KeyError(
            "tokens.hmac_secret / tokens.hmac_secret_file: an HMAC secret is set but \
             tokens.algorithms lists none of HS256, HS384, HS512"
                .to_owned(),
        ));
    }
    hmac_algs
        .into_iter()
        .map(|alg| {
            let key = DecodingKey::from_secret(secret).map_err(|_| {
                KeyError(
                    "tokens.hmac_secret / tokens.hmac_secret_file: unusable HMAC secret".to_owned(),
                )
            })?;
            Ok(KeyEntry { kid: None, alg, key })
        })
        .collect()
}

/// Parses one public key as the kind its algorithm needs and checks it can verify.
fn public_key(spec: &PublicKeySpec, provider: &CryptoProvider) -> Result<DecodingKey, KeyError> {
    let alg = algorithm_name(spec.alg);
    let wrong_kind = |kind: &str| {
        KeyError(format!(
            "{}: not {kind} public key in PEM (SubjectPublicKeyInfo `PUBLIC KEY`), which {alg} \
             needs",
            spec.source
        ))
    };
    match spec.alg.family() {
        AlgorithmFamily::Rsa => {
            let key = DecodingKey::from_rsa_pem(&spec.pem).map_err(|_| wrong_kind("an RSA"))?;
            let DecodingKeyKind::SecretOrDer(der) = key.kind() else {
                return Err(wrong_kind("an RSA"));
            };
            // Rejects what `from_rsa_pem` lets through but can never verify, e.g. a private key.
            let (n, _e) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|_| wrong_kind("an RSA"))?;
            let bits = modulus_bits(&n);
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(KeyError(format!(
                    "{}: the RSA key has {bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} are \
                     supported",
                    spec.source
                )));
            }
            Ok(key)
        }
        AlgorithmFamily::Ec => {
            let key = DecodingKey::from_ec_pem(&spec.pem).map_err(|_| wrong_kind("an EC"))?;
            let (curve, point_len) = match spec.alg {
                Algorithm::ES256 => ("P-256", 65),
                _ => ("P-384", 97),
            };
            match key.kind() {
                // An uncompressed point: 0x04 || x || y.
                DecodingKeyKind::SecretOrDer(point)
                    if point.len() == point_len && point.first() == Some(&4) =>
                {
                    Ok(key)
                }
                _ => Err(KeyError(format!(
                    "{}: the EC key is not on curve {curve}, which {alg} needs",
                    spec.source
                ))),
            }
        }
        AlgorithmFamily::Ed => {
            let key = DecodingKey::from_ed_pem(&spec.pem).map_err(|_| wrong_kind("an Ed25519"))?;
            match key.kind() {
                DecodingKeyKind::SecretOrDer(raw) if raw.len() == 32 => Ok(key),
                _ => Err(wrong_kind("an Ed25519")),
            }
        }
        AlgorithmFamily::Hmac => Err(KeyError(format!(
            "{}: {alg} is an HMAC algorithm; set tokens.hmac_secret or tokens.hmac_secret_file \
             instead of a public key",
            spec.source
        ))),
    }
}

/// The bit length of a big-endian unsigned integer.
fn modulus_bits(n: &[u8]) -> usize {
    let Some(first) = n.iter().position(|b| *b != 0) else {
        return 0;
    };
    let lead = n[first];
    (n.len() - first - 1) * 8 + (8 - lead.leading_zeros() as usize)
}
