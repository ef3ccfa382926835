//! Token verification + normalization cost per algorithm family: the full
//! `Verifier::verify` path (structure, algorithm, signature, claims, layout) on a valid token.
//!
//! Run: `cargo bench -p sessiond-actors --bench token_verify`. Keys come from
//! `tests/fixtures/keys/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{AlgorithmFamily, EncodingKey};
use serde_json::{Value, json};
use sessiond_actors::token::{Algorithm, PublicKeySpec, TokenSettings, Verifier, algorithm_name};

const NOW: i64 = 1_764_300_000;
const SECRET: &[u8] = b"benchmark secret, at least thirty-two bytes long";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn claims(sid: bool) -> Value {
    let mut claims = json!({"sub": "ada@example.com", "id": 42, "role": "admin",
                            "iat": NOW - 60, "exp": NOW + 3600, "iss": "bench"});
    if sid {
        claims["sid"] = json!("s-0123456789abcdef");
    }
    claims
}

/// A verifier for `alg` and a valid token for it.
fn setup(alg: Algorithm, key_file: &str, sid: bool) -> (Verifier, String) {
    let (settings, key) = if alg.family() == AlgorithmFamily::Hmac {
        let settings = TokenSettings {
            algorithms: vec![alg],
            hmac_secret: Some(SECRET.to_vec()),
            public_keys: vec![],
            issuer: None,
            audience: None,
            leeway_seconds: 30,
        };
        (settings, EncodingKey::from_secret(SECRET).unwrap())
    } else {
        let private = fixture(&format!("{key_file}.key.pem"));
        let key = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&private),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&private),
            _ => EncodingKey::from_ed_pem(&private),
        }
        .unwrap();
        let settings = TokenSettings {
            algorithms: vec![alg],
            hmac_secret: None,
            public_keys: vec![PublicKeySpec {
                kid: Some("k1".into()),
                alg,
                pem: fixture(&format!("{key_file}.pub.pem")),
                source: key_file.into(),
            }],
            issuer: None,
            audience: None,
            leeway_seconds: 30,
        };
        (settings, key)
    };
    let header = json!({"alg": algorithm_name(alg), "typ": "JWT", "kid": "k1"});
    let header = if alg.family() == AlgorithmFamily::Hmac {
        json!({"alg": algorithm_name(alg), "typ": "JWT"})
    } else {
        header
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims(sid).to_string())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap();
    let token = format!("{input}.{sig}");
    let verifier = Verifier::new(settings).unwrap();
    verifier.verify(&token, NOW).expect("the bench token must verify");
    (verifier, token)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("token_verify");
    let cases = [
        ("HS256", Algorithm::HS256, "", true),
        ("HS256_derived_sid", Algorithm::HS256, "", false),
        ("RS256", Algorithm::RS256, "rsa", true),
        ("PS256", Algorithm::PS256, "rsa", true),
        ("ES256", Algorithm::ES256, "ec-p256", true),
        ("ES384", Algorithm::ES384, "ec-p384", true),
        ("EdDSA", Algorithm::EdDSA, "ed25519", true),
    ];
    for (name, alg, key_file, sid) in cases {
        let (verifier, token) = setup(alg, key_file, sid);
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token), black_box(NOW)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
