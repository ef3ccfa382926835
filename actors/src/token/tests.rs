//! Tests of the verifier: every rejection path with its code, the check order, each algorithm
//! family with the fixture keys, the RFC 7515 vectors, key ring errors, and property tests of
//! layout detection and normalization.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};

use super::*;
use crate::domain::{Identity, TokenFormat};

const NOW: i64 = 1_764_300_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
const LEEWAY: i64 = 30;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/../tests/vectors/rfc7515/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn vector_token(name: &str) -> String {
    String::from_utf8(vector(name)).unwrap().trim().to_owned()
}

fn settings(algorithms: &[Algorithm]) -> TokenSettings {
    TokenSettings {
        algorithms: algorithms.to_vec(),
        hmac_secret: Some(SECRET.to_vec()),
        public_keys: vec![],
        issuer: None,
        audience: None,
        leeway_seconds: LEEWAY,
    }
}

fn pubkey(kid: Option<&str>, alg: Algorithm, file: &str) -> PublicKeySpec {
    PublicKeySpec {
        kid: kid.map(str::to_owned),
        alg,
        pem: fixture(file),
        source: format!("test:{file}"),
    }
}

/// The private key file matching a public key file (`rsa.pub.pem` → `rsa.key.pem`).
fn private_of(pub_file: &str) -> String {
    pub_file.replace(".pub.pem", ".key.pem")
}

fn encoding_key(alg: Algorithm, pub_file: &str) -> EncodingKey {
    use jsonwebtoken::AlgorithmFamily::*;
    match alg.family() {
        Hmac => EncodingKey::from_secret(SECRET).unwrap(),
        Rsa => EncodingKey::from_rsa_pem(&fixture(&private_of(pub_file))).unwrap(),
        Ec => EncodingKey::from_ec_pem(&fixture(&private_of(pub_file))).unwrap(),
        Ed => EncodingKey::from_ed_pem(&fixture(&private_of(pub_file))).unwrap(),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs raw header and payload JSON text with `key`.
fn sign_raw(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

fn sign_json(header: &Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), alg, key)
}

/// HS256 with the test secret and a plain header.
fn hs(claims: &Value) -> String {
    sign_json(
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
}

/// HS256 with the test secret and extra header members.
fn hs_header(extra: Value, claims: &Value) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    for (k, v) in extra.as_object().unwrap() {
        header[k] = v.clone();
    }
    sign_json(&header, claims, Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap())
}

fn legacy() -> Value {
    json!({"sub": "ada@example.com", "id": 42, "role": "admin", "exp": NOW + 3600,
           "iat": NOW - 10, "sid": "s-1"})
}

fn enhanced() -> Value {
    json!({"sub": "u-42", "email": "ada@example.com", "role": "admin", "exp": NOW + 3600})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn hs_verifier() -> Verifier {
    Verifier::new(settings(&[Algorithm::HS256])).unwrap()
}

fn code(result: &Result<Identity, TokenError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

fn check(verifier: &Verifier, token: &str) -> &'static str {
    code(&verifier.verify(token, NOW))
}

/// Replaces the signature part of a token.
fn resign(token: &str, signature: &str) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{signature}")
}

/// A token whose signature is valid but for other bytes.
fn bad_signature(token: &str) -> String {
    let other = hs(&json!({"other": true}));
    resign(token, other.rsplit_once('.').unwrap().1)
}

// ---------------------------------------------------------------------------------------------
// Happy paths and normalization

#[test]
fn token_legacy_layout_normalizes() {
    let id = hs_verifier().verify(&hs(&legacy()), NOW).unwrap();
    assert_eq!(
        id,
        Identity {
            user_id: "42".into(),
            email: "ada@example.com".into(),
            role: "admin".into(),
            session_id: "s-1".into(),
            format: TokenFormat::Legacy,
            issued_at: Some(NOW - 10),
            expires_at: NOW + 3600,
        }
    );
}

#[test]
fn token_enhanced_layout_normalizes() {
    let token = hs(&enhanced());
    let id = hs_verifier().verify(&token, NOW).unwrap();
    assert_eq!(id.user_id, "u-42");
    assert_eq!(id.email, "ada@example.com");
    assert_eq!(id.format, TokenFormat::Enhanced);
    assert_eq!(id.issued_at, None);
    assert_eq!(id.session_id, derived_session_id(&token));
}

#[test]
fn token_identity_json_shape() {
    let id = hs_verifier().verify(&hs(&legacy()), NOW).unwrap();
    assert_eq!(
        serde_json::to_value(&id).unwrap(),
        json!({"user_id": "42", "email": "ada@example.com", "role": "admin",
               "session_id": "s-1", "format": "legacy", "issued_at": NOW - 10,
               "expires_at": NOW + 3600})
    );
}

#[test]
fn token_string_id_and_huge_integer_ids() {
    let v = hs_verifier();
    let id = v.verify(&hs(&with(legacy(), "id", json!("abc-1"))), NOW);
    assert_eq!(id.unwrap().user_id, "abc-1");
    let id = v.verify(&hs(&with(legacy(), "id", json!(u64::MAX))), NOW);
    assert_eq!(id.unwrap().user_id, u64::MAX.to_string());
    let id = v.verify(&hs(&with(legacy(), "id", json!(-7))), NOW);
    assert_eq!(id.unwrap().user_id, "-7");
}

#[test]
fn token_float_times_are_floored() {
    let claims =
        with(with(legacy(), "exp", json!(NOW as f64 + 100.9)), "iat", json!(NOW as f64 - 0.5));
    let id = hs_verifier().verify(&hs(&claims), NOW).unwrap();
    assert_eq!(id.expires_at, NOW + 100);
    assert_eq!(id.issued_at, Some(NOW - 1));
}

#[test]
fn token_session_id_rule() {
    let v = hs_verifier();
    let both = with(with(legacy(), "sid", json!("S")), "jti", json!("J"));
    assert_eq!(v.verify(&hs(&both), NOW).unwrap().session_id, "S");
    let jti = with(without(legacy(), "sid"), "jti", json!("J"));
    assert_eq!(v.verify(&hs(&jti), NOW).unwrap().session_id, "J");
    let none = without(legacy(), "sid");
    let token = hs(&none);
    let sid = v.verify(&token, NOW).unwrap().session_id;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes());
    assert_eq!(sid, format!("t_{}", &b64(&digest)[..22]));
    assert_eq!(sid.len(), 24);
}

// ---------------------------------------------------------------------------------------------
// Every algorithm family with the fixture keys

fn family_roundtrip(alg: Algorithm, pub_file: &str) {
    let mut s = settings(&[alg]);
    if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac {
        s.hmac_secret = None;
        s.public_keys = vec![pubkey(Some("k1"), alg, pub_file)];
    }
    let v = Verifier::new(s).unwrap();
    let key = encoding_key(alg, pub_file);
    let name = algorithm_name(alg);
    let token = sign_json(&json!({"alg": name}), &legacy(), alg, &key);
    assert_eq!(check(&v, &token), "ok", "{name}");
    // With the kid too, for public keys.
    if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac {
        let token = sign_json(&json!({"alg": name, "kid": "k1"}), &legacy(), alg, &key);
        assert_eq!(check(&v, &token), "ok", "{name} with kid");
    }
    // A flipped claim byte breaks it.
    let tampered = sign_json(&json!({"alg": name}), &enhanced(), alg, &key);
    let (_, sig) = tampered.rsplit_once('.').unwrap();
    let forged = resign(&token, sig);
    assert_eq!(check(&v, &forged), "token_invalid_signature", "{name}");
}

#[test]
fn token_family_hs256_hs384_hs512() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        family_roundtrip(alg, "");
    }
}

#[test]
fn token_family_rs256_rs384_rs512() {
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        family_roundtrip(alg, "rsa.pub.pem");
    }
}

#[test]
fn token_family_ps256_ps384_ps512() {
    for alg in [Algorithm::PS256, Algorithm::PS384, Algorithm::PS512] {
        family_roundtrip(alg, "rsa.pub.pem");
    }
}

#[test]
fn token_family_es256_es384() {
    family_roundtrip(Algorithm::ES256, "ec-p256.pub.pem");
    family_roundtrip(Algorithm::ES384, "ec-p384.pub.pem");
}

#[test]
fn token_family_eddsa() {
    family_roundtrip(Algorithm::EdDSA, "ed25519.pub.pem");
}

#[test]
fn token_certificate_pem_verifies_like_its_public_key() {
    for (alg, base) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS256, "rsa"),
        (Algorithm::ES256, "ec-p256"),
        (Algorithm::ES384, "ec-p384"),
        (Algorithm::EdDSA, "ed25519"),
    ] {
        let mut s = settings(&[alg]);
        s.hmac_secret = None;
        s.public_keys = vec![pubkey(None, alg, &format!("{base}.cert.pem"))];
        let v = Verifier::new(s).unwrap_or_else(|e| panic!("{base}: {e}"));
        let key = encoding_key(alg, &format!("{base}.pub.pem"));
        let token = sign_json(&json!({"alg": algorithm_name(alg)}), &legacy(), alg, &key);
        assert_eq!(check(&v, &token), "ok", "{base} {alg:?}");
    }
    // A certificate of the wrong kind is refused like a key of the wrong kind.
    let mut s = settings(&[Algorithm::ES256]);
    s.hmac_secret = None;
    s.public_keys = vec![pubkey(None, Algorithm::ES256, "ec-p384.cert.pem")];
    assert!(Verifier::new(s).is_err());
}

#[test]
fn token_no_kid_tries_every_key_of_the_alg() {
    let mut s = settings(&[Algorithm::RS256]);
    s.hmac_secret = None;
    s.public_keys = vec![
        pubkey(Some("a"), Algorithm::RS256, "rsa.pub.pem"),
        pubkey(None, Algorithm::RS256, "rsa2.pub.pem"),
    ];
    let v = Verifier::new(s).unwrap();
    for file in ["rsa.pub.pem", "rsa2.pub.pem"] {
        let key = encoding_key(Algorithm::RS256, file);
        let token = sign_json(&json!({"alg": "RS256"}), &legacy(), Algorithm::RS256, &key);
        assert_eq!(check(&v, &token), "ok", "{file}");
    }
    // With kid "a", only that key is tried: rsa2's signature fails.
    let key2 = encoding_key(Algorithm::RS256, "rsa2.pub.pem");
    let token = sign_json(&json!({"alg": "RS256", "kid": "a"}), &legacy(), Algorithm::RS256, &key2);
    assert_eq!(check(&v, &token), "token_invalid_signature");
}

// ---------------------------------------------------------------------------------------------
// Structure: token_malformed

#[test]
fn token_malformed_part_counts() {
    let v = hs_verifier();
    let good = hs(&legacy());
    let parts: Vec<&str> = good.split('.').collect();
    for bad in [
        String::new(),
        "abc".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{good}."),
        format!(".{good}"),
    ] {
        assert_eq!(check(&v, &bad), "token_malformed", "{bad}");
    }
}

#[test]
fn token_malformed_bad_base64_in_each_part() {
    let v = hs_verifier();
    let good = hs(&legacy());
    let parts: Vec<&str> = good.split('.').collect();
    for i in 0..3 {
        for corrupt in ["=", "+", "/", "!", " "] {
            let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            p[i].push_str(corrupt);
            let bad = p.join(".");
            assert_eq!(check(&v, &bad), "token_malformed", "part {i} + {corrupt:?}");
        }
    }
    // Padded base64url of the header is refused even though it decodes.
    let padded = format!("{}=.{}.{}", parts[0], parts[1], parts[2]);
    assert_eq!(check(&v, &padded), "token_malformed");
    // Standard-alphabet signature: replace '-'/'_' by '+'/'/'.
    let std_sig = parts[2].replace('-', "+").replace('_', "/");
    if std_sig != parts[2] {
        let bad = format!("{}.{}.{std_sig}", parts[0], parts[1]);
        assert_eq!(check(&v, &bad), "token_malformed");
    }
    // Non-canonical trailing bits: a 1-byte value encoded as "AB" instead of "AA".
    let noncanon = format!("{}.{}.AB", parts[0], parts[1]);
    assert_eq!(check(&v, &noncanon), "token_malformed");
}

#[test]
fn token_malformed_bad_json() {
    let v = hs_verifier();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let cases = [
        (r#"{"alg":"HS256""#, legacy().to_string()),
        ("[1,2]", legacy().to_string()),
        ("\"HS256\"", legacy().to_string()),
        (r#"{"alg":"HS256"}"#, "not json".to_owned()),
        (r#"{"alg":"HS256"}"#, "[]".to_owned()),
        (r#"{"alg":"HS256"}"#, "null".to_owned()),
        (r#"{"alg":"HS256"}"#, format!("{} x", legacy())),
        (r#"{"alg":"HS256"}"#, String::new()),
    ];
    for (header, payload) in cases {
        let token = sign_raw(header, &payload, Algorithm::HS256, &key);
        assert_eq!(check(&v, &token), "token_malformed", "{header} {payload}");
    }
    // Invalid UTF-8 in the payload.
    let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(b"{\"sub\":\"\xff\"}"));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
    assert_eq!(check(&v, &format!("{input}.{sig}")), "token_malformed");
}

#[test]
fn token_malformed_duplicate_members() {
    let v = hs_verifier();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let token =
        sign_raw(r#"{"alg":"HS256","alg":"none"}"#, &legacy().to_string(), Algorithm::HS256, &key);
    assert_eq!(check(&v, &token), "token_malformed");
    let payload = r#"{"sub":"ada@example.com","id":1,"role":"admin","exp":1,"exp":9999999999}"#;
    let token = sign_raw(r#"{"alg":"HS256"}"#, payload, Algorithm::HS256, &key);
    assert_eq!(check(&v, &token), "token_malformed");
}

#[test]
fn token_malformed_header_alg_and_kid_types() {
    let v = hs_verifier();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    for header in [
        json!({"typ": "JWT"}),
        json!({"alg": 256}),
        json!({"alg": null}),
        json!({"alg": ["HS256"]}),
        json!({"alg": "HS256", "kid": 1}),
        json!({"alg": "HS256", "kid": null}),
    ] {
        let token = sign_json(&header, &legacy(), Algorithm::HS256, &key);
        assert_eq!(check(&v, &token), "token_malformed", "{header}");
    }
}

#[test]
fn token_malformed_forbidden_headers() {
    let v = hs_verifier();
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("jwk", json!({"kty": "oct", "k": b64(SECRET)})),
        ("crit", json!(["exp"])),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("b64", json!(false)),
        ("b64", json!(true)),
    ] {
        // Correctly signed, otherwise valid: the header alone makes it malformed.
        let token = hs_header(json!({ name: value }), &legacy());
        let result = hs_verifier().verify(&token, NOW);
        assert_eq!(code(&result), "token_malformed", "{name}");
        assert_eq!(check(&v, &token), "token_malformed", "{name}");
    }
}

#[test]
fn token_malformed_oversize_before_decoding() {
    let v = hs_verifier();
    let padding = "x".repeat(MAX_TOKEN_BYTES);
    let big = hs(&with(legacy(), "pad", json!(padding)));
    assert!(big.len() > MAX_TOKEN_BYTES);
    assert_eq!(check(&v, &big), "token_malformed");
    // Not even base64 is looked at.
    let junk = "!".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        v.verify(&junk, NOW).unwrap_err(),
        TokenError::Malformed(format!("token longer than {MAX_TOKEN_BYTES} bytes"))
    );
    // Exactly at the limit is looked at (and here fails on its own merits).
    let pad_len = MAX_TOKEN_BYTES - hs(&with(legacy(), "pad", json!(""))).len();
    let exact = hs(&with(legacy(), "pad", json!("y".repeat(pad_len * 3 / 4))));
    assert!(exact.len() <= MAX_TOKEN_BYTES, "{}", exact.len());
    assert_eq!(check(&v, &exact), "ok");
}

// ---------------------------------------------------------------------------------------------
// Algorithm: token_algorithm_rejected

#[test]
fn token_alg_none_in_any_case_is_rejected() {
    let v = hs_verifier();
    for none in ["none", "None", "NONE", "nOnE"] {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": none}).to_string().as_bytes()),
            b64(legacy().to_string().as_bytes())
        );
        assert_eq!(check(&v, &format!("{input}.")), "token_algorithm_rejected", "{none}");
        // Even with a real-looking signature attached.
        let sig = hs(&legacy()).rsplit_once('.').unwrap().1.to_owned();
        assert_eq!(check(&v, &format!("{input}.{sig}")), "token_algorithm_rejected");
    }
}

#[test]
fn token_alg_not_configured_or_unknown() {
    let v = hs_verifier();
    let key384 = EncodingKey::from_secret(SECRET).unwrap();
    let token = sign_json(&json!({"alg": "HS384"}), &legacy(), Algorithm::HS384, &key384);
    assert_eq!(check(&v, &token), "token_algorithm_rejected");
    for alg in ["hs256", "HS1024", "", "RSA-OAEP", "ES512"] {
        let token = hs_header(json!({ "alg": alg }), &legacy());
        assert_eq!(check(&v, &token), "token_algorithm_rejected", "{alg:?}");
    }
}

#[test]
fn token_alg_confusion_rsa_public_pem_as_hmac_secret() {
    // The classic attack: sign HS256 with the server's RSA public key bytes as the secret.
    let pem = fixture("rsa.pub.pem");
    let evil = EncodingKey::from_secret(&pem).unwrap();
    let token = sign_json(&json!({"alg": "HS256"}), &legacy(), Algorithm::HS256, &evil);

    // Only RS256 configured: HS256 is not an accepted algorithm.
    let mut s = settings(&[Algorithm::RS256]);
    s.hmac_secret = None;
    s.public_keys = vec![pubkey(None, Algorithm::RS256, "rsa.pub.pem")];
    let v = Verifier::new(s).unwrap();
    assert_eq!(check(&v, &token), "token_algorithm_rejected");

    // HS256 listed too (with or without a secret): the RSA key never verifies HS256.
    let mut s = settings(&[Algorithm::RS256, Algorithm::HS256]);
    s.public_keys = vec![pubkey(Some("rsa"), Algorithm::RS256, "rsa.pub.pem")];
    let v = Verifier::new(s.clone()).unwrap();
    assert_eq!(check(&v, &token), "token_invalid_signature");
    s.hmac_secret = None;
    let v = Verifier::new(s).unwrap();
    assert_eq!(check(&v, &token), "token_invalid_signature");
    // Naming the RSA key by kid in an HS256 token: the kid is bound to RS256.
    let token =
        sign_json(&json!({"alg": "HS256", "kid": "rsa"}), &legacy(), Algorithm::HS256, &evil);
    assert_eq!(check(&v, &token), "token_algorithm_rejected");
}

#[test]
fn token_kid_unknown_and_bound_to_other_alg() {
    let mut s = settings(&[Algorithm::RS256, Algorithm::ES256]);
    s.hmac_secret = None;
    s.public_keys = vec![
        pubkey(Some("rsa"), Algorithm::RS256, "rsa.pub.pem"),
        pubkey(Some("ec"), Algorithm::ES256, "ec-p256.pub.pem"),
    ];
    let v = Verifier::new(s).unwrap();
    let rsa = encoding_key(Algorithm::RS256, "rsa.pub.pem");
    let unknown =
        sign_json(&json!({"alg": "RS256", "kid": "nope"}), &legacy(), Algorithm::RS256, &rsa);
    assert_eq!(check(&v, &unknown), "token_invalid_signature");
    let other = sign_json(&json!({"alg": "RS256", "kid": "ec"}), &legacy(), Algorithm::RS256, &rsa);
    assert_eq!(check(&v, &other), "token_algorithm_rejected");
    let right =
        sign_json(&json!({"alg": "RS256", "kid": "rsa"}), &legacy(), Algorithm::RS256, &rsa);
    assert_eq!(check(&v, &right), "ok");
    // The HMAC secret has no kid: an HS256 token with a kid is an unknown kid.
    let hv = hs_verifier();
    assert_eq!(check(&hv, &hs_header(json!({"kid": "k"}), &legacy())), "token_invalid_signature");
}

#[test]
fn token_hmac_alg_without_secret_is_invalid_signature() {
    let mut s = settings(&[Algorithm::HS256, Algorithm::ES256]);
    s.hmac_secret = None;
    s.public_keys = vec![pubkey(None, Algorithm::ES256, "ec-p256.pub.pem")];
    let v = Verifier::new(s).unwrap();
    assert_eq!(check(&v, &hs(&legacy())), "token_invalid_signature");
}

#[test]
fn token_secret_verifies_only_listed_hmac_algs() {
    let v = Verifier::new(settings(&[Algorithm::HS256, Algorithm::HS512])).unwrap();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let t512 = sign_json(&json!({"alg": "HS512"}), &legacy(), Algorithm::HS512, &key);
    assert_eq!(check(&v, &t512), "ok");
    let t384 = sign_json(&json!({"alg": "HS384"}), &legacy(), Algorithm::HS384, &key);
    assert_eq!(check(&v, &t384), "token_algorithm_rejected");
    // An HS512 signature presented as HS256 does not verify.
    let mixed = resign(&hs(&legacy()), t512.rsplit_once('.').unwrap().1);
    assert_eq!(check(&v, &mixed), "token_invalid_signature");
}

// ---------------------------------------------------------------------------------------------
// Signature and the check order

#[test]
fn token_order_bad_signature_beats_claims_and_layout() {
    let v = hs_verifier();
    let expired = with(legacy(), "exp", json!(NOW - 1000));
    assert_eq!(check(&v, &bad_signature(&hs(&expired))), "token_invalid_signature");
    let no_exp = without(legacy(), "exp");
    assert_eq!(check(&v, &bad_signature(&hs(&no_exp))), "token_invalid_signature");
    let no_role = without(legacy(), "role");
    assert_eq!(check(&v, &bad_signature(&hs(&no_role))), "token_invalid_signature");
    // Signature made with another secret.
    let other = EncodingKey::from_secret(b"another secret, also 32 bytes long!").unwrap();
    let token = sign_json(&json!({"alg": "HS256"}), &expired, Algorithm::HS256, &other);
    assert_eq!(check(&v, &token), "token_invalid_signature");
    // Empty signature.
    assert_eq!(check(&v, &resign(&hs(&legacy()), "")), "token_invalid_signature");
}

#[test]
fn token_order_structure_then_alg_then_signature() {
    let v = hs_verifier();
    // Forbidden header and alg none: structure wins.
    let input = format!(
        "{}.{}",
        b64(json!({"alg": "none", "jwk": {}}).to_string().as_bytes()),
        b64(legacy().to_string().as_bytes())
    );
    assert_eq!(check(&v, &format!("{input}.")), "token_malformed");
    // Unconfigured alg and bad signature: algorithm wins.
    let token = bad_signature(&hs_header(json!({"alg": "RS256"}), &legacy()));
    assert_eq!(check(&v, &token), "token_algorithm_rejected");
    // Expired and inconsistent: expired wins.
    let claims = with(with(legacy(), "exp", json!(NOW - 100)), "email", json!("x@y"));
    assert_eq!(check(&v, &hs(&claims)), "token_expired");
    // Claims invalid and expired: claims_invalid wins.
    let mut s = settings(&[Algorithm::HS256]);
    s.issuer = Some("issuer".into());
    let vi = Verifier::new(s).unwrap();
    let claims = with(legacy(), "exp", json!(NOW - 100));
    assert_eq!(check(&vi, &hs(&claims)), "token_claims_invalid");
    // Expired and not yet valid: expired wins.
    let claims = with(with(legacy(), "exp", json!(NOW - 100)), "nbf", json!(NOW + 1000));
    assert_eq!(check(&v, &hs(&claims)), "token_expired");
}

// ---------------------------------------------------------------------------------------------
// Registered claims

#[test]
fn token_exp_required_and_numeric() {
    let v = hs_verifier();
    assert_eq!(check(&v, &hs(&without(legacy(), "exp"))), "token_claims_invalid");
    for bad in [json!("1999999999"), json!(null), json!(true), json!([1])] {
        let token = hs(&with(legacy(), "exp", bad.clone()));
        assert_eq!(check(&v, &token), "token_claims_invalid", "{bad}");
    }
}

#[test]
fn token_iat_nbf_must_be_numbers() {
    let v = hs_verifier();
    for claim in ["iat", "nbf"] {
        for bad in [json!("1"), json!(null), json!({})] {
            let token = hs(&with(legacy(), claim, bad.clone()));
            assert_eq!(check(&v, &token), "token_claims_invalid", "{claim} {bad}");
        }
    }
}

#[test]
fn token_expiry_and_leeway() {
    let v = hs_verifier();
    let at = |exp: i64| v.verify(&hs(&with(legacy(), "exp", json!(exp))), NOW);
    assert!(at(NOW + 1).is_ok());
    assert!(at(NOW).is_ok(), "within leeway");
    assert!(at(NOW - LEEWAY + 1).is_ok(), "within leeway");
    assert_eq!(at(NOW - LEEWAY).unwrap_err(), TokenError::Expired { seconds_ago: LEEWAY });
    let err = at(NOW - 12 - LEEWAY).unwrap_err();
    assert_eq!(err, TokenError::Expired { seconds_ago: 42 });
    assert_eq!(err.code(), "token_expired");
    assert_eq!(err.to_string(), "token expired 42 s ago");
    // Extreme values do not overflow.
    assert!(at(i64::MAX).is_ok());
    assert_eq!(code(&at(i64::MIN)), "token_expired");
    let huge = v.verify(&hs(&with(legacy(), "exp", json!(1e300))), NOW);
    assert_eq!(huge.unwrap().expires_at, i64::MAX);
    let tiny = v.verify(&hs(&with(legacy(), "exp", json!(-1e300))), NOW);
    assert_eq!(code(&tiny), "token_expired");
}

#[test]
fn token_zero_leeway() {
    let mut s = settings(&[Algorithm::HS256]);
    s.leeway_seconds = 0;
    let v = Verifier::new(s).unwrap();
    let at = |exp: i64| check(&v, &hs(&with(legacy(), "exp", json!(exp))));
    assert_eq!(at(NOW + 1), "ok");
    assert_eq!(at(NOW), "token_expired");
}

#[test]
fn token_nbf_honoured_with_leeway() {
    let v = hs_verifier();
    let at = |nbf: i64| v.verify(&hs(&with(legacy(), "nbf", json!(nbf))), NOW);
    assert!(at(NOW - 100).is_ok());
    assert!(at(NOW + LEEWAY).is_ok(), "within leeway");
    let err = at(NOW + LEEWAY + 1).unwrap_err();
    assert_eq!(err, TokenError::NotYetValid { seconds_ahead: LEEWAY + 1 });
    assert_eq!(err.code(), "token_not_yet_valid");
    assert_eq!(code(&at(NOW + 3000)), "token_not_yet_valid");
}

#[test]
fn token_iat_in_the_future_beyond_leeway() {
    let v = hs_verifier();
    let at = |iat: i64| v.verify(&hs(&with(legacy(), "iat", json!(iat))), NOW);
    assert!(at(NOW + LEEWAY).is_ok(), "within leeway");
    assert_eq!(
        at(NOW + LEEWAY + 5).unwrap_err(),
        TokenError::NotYetValid { seconds_ahead: LEEWAY + 5 }
    );
}

fn iss_aud_verifier() -> Verifier {
    let mut s = settings(&[Algorithm::HS256]);
    s.issuer = Some("https://issuer.example".into());
    s.audience = Some("sessiond".into());
    Verifier::new(s).unwrap()
}

fn iss_aud_claims() -> Value {
    with(with(legacy(), "iss", json!("https://issuer.example")), "aud", json!("sessiond"))
}

#[test]
fn token_iss_rules() {
    let v = iss_aud_verifier();
    assert_eq!(check(&v, &hs(&iss_aud_claims())), "ok");
    assert_eq!(check(&v, &hs(&without(iss_aud_claims(), "iss"))), "token_claims_invalid");
    for bad in [json!("https://other.example"), json!(1), json!(["https://issuer.example"])] {
        let token = hs(&with(iss_aud_claims(), "iss", bad.clone()));
        assert_eq!(check(&v, &token), "token_claims_invalid", "{bad}");
    }
}

#[test]
fn token_aud_rules() {
    let v = iss_aud_verifier();
    let aud = |value: Value| check(&v, &hs(&with(iss_aud_claims(), "aud", value)));
    assert_eq!(aud(json!(["other", "sessiond"])), "ok");
    assert_eq!(aud(json!(["sessiond"])), "ok");
    assert_eq!(aud(json!(["other"])), "token_claims_invalid");
    assert_eq!(aud(json!([])), "token_claims_invalid");
    assert_eq!(aud(json!(["sessiond", 1])), "token_claims_invalid");
    assert_eq!(aud(json!("other")), "token_claims_invalid");
    assert_eq!(aud(json!("Sessiond")), "token_claims_invalid");
    assert_eq!(aud(json!(7)), "token_claims_invalid");
    assert_eq!(aud(json!(null)), "token_claims_invalid");
    assert_eq!(aud(json!({"aud": "sessiond"})), "token_claims_invalid");
    assert_eq!(check(&v, &hs(&without(iss_aud_claims(), "aud"))), "token_claims_invalid");
}

#[test]
fn token_iss_aud_not_checked_when_not_configured() {
    let v = hs_verifier();
    let claims = with(with(legacy(), "iss", json!(5)), "aud", json!({"x": 1}));
    assert_eq!(check(&v, &hs(&claims)), "ok");
    // Empty strings mean "not checked", as in the configuration.
    let mut s = settings(&[Algorithm::HS256]);
    s.issuer = Some(String::new());
    s.audience = Some(String::new());
    let v = Verifier::new(s).unwrap();
    assert_eq!(check(&v, &hs(&legacy())), "ok");
}

// ---------------------------------------------------------------------------------------------
// Layout

#[test]
fn token_layout_not_recognised() {
    let v = hs_verifier();
    let cases = [
        without(legacy(), "id"),                                  // email sub, no id
        without(enhanced(), "email"),                             // id sub, no email
        without(legacy(), "sub"),                                 // no sub
        with(legacy(), "sub", json!(42)),                         // sub not a string
        with(legacy(), "sub", json!(null)),                       // sub null
        with(with(enhanced(), "sub", json!("")), "id", json!(1)), // empty sub
        json!({"exp": NOW + 10, "role": "admin", "id": 1, "email": "a@b"}),
    ];
    for claims in cases {
        assert_eq!(check(&v, &hs(&claims)), "token_malformed", "{claims}");
    }
}

#[test]
fn token_layout_bad_id_and_email() {
    let v = hs_verifier();
    for bad in [json!(""), json!(1.5), json!(true), json!(null), json!([1]), json!({})] {
        let token = hs(&with(legacy(), "id", bad.clone()));
        assert_eq!(check(&v, &token), "token_malformed", "legacy id {bad}");
        let token = hs(&with(enhanced(), "id", bad.clone()));
        assert_eq!(check(&v, &token), "token_malformed", "enhanced id {bad}");
    }
    for bad in [json!(""), json!(1), json!(null), json!(["a@b"])] {
        let token = hs(&with(enhanced(), "email", bad.clone()));
        assert_eq!(check(&v, &token), "token_malformed", "enhanced email {bad}");
        let token = hs(&with(legacy(), "email", bad.clone()));
        assert_eq!(check(&v, &token), "token_malformed", "legacy email {bad}");
    }
}

#[test]
fn token_role_required_non_empty_string() {
    let v = hs_verifier();
    assert_eq!(check(&v, &hs(&without(legacy(), "role"))), "token_malformed");
    assert_eq!(check(&v, &hs(&without(enhanced(), "role"))), "token_malformed");
    for bad in [json!(""), json!(1), json!(null), json!(["admin"])] {
        let token = hs(&with(legacy(), "role", bad.clone()));
        assert_eq!(check(&v, &token), "token_malformed", "{bad}");
    }
}

#[test]
fn token_inconsistent_both_ways() {
    let v = hs_verifier();
    // Legacy with an email claim that is not sub.
    let claims = with(legacy(), "email", json!("eve@example.com"));
    let err = v.verify(&hs(&claims), NOW).unwrap_err();
    assert_eq!(err.code(), "token_inconsistent");
    // Exactly: case differs.
    let claims = with(legacy(), "email", json!("ADA@example.com"));
    assert_eq!(check(&v, &hs(&claims)), "token_inconsistent");
    // Legacy with a matching email claim is fine.
    let claims = with(legacy(), "email", json!("ada@example.com"));
    assert_eq!(check(&v, &hs(&claims)), "ok");
    // Enhanced with an id claim that is not sub.
    let claims = with(enhanced(), "id", json!("u-43"));
    assert_eq!(check(&v, &hs(&claims)), "token_inconsistent");
    // Enhanced with an integer id rendering to sub is fine; otherwise inconsistent.
    let claims = with(with(enhanced(), "sub", json!("42")), "id", json!(42));
    let id = v.verify(&hs(&claims), NOW).unwrap();
    assert_eq!((id.user_id.as_str(), id.format), ("42", TokenFormat::Enhanced));
    let claims = with(with(enhanced(), "sub", json!("042")), "id", json!(42));
    assert_eq!(check(&v, &hs(&claims)), "token_inconsistent");
}

#[test]
fn token_malformed_beats_inconsistent() {
    let v = hs_verifier();
    let claims = without(with(legacy(), "email", json!("eve@example.com")), "role");
    assert_eq!(check(&v, &hs(&claims)), "token_malformed");
}

#[test]
fn token_field_limits_and_control_characters() {
    let v = hs_verifier();
    let long = "a".repeat(MAX_FIELD_BYTES + 1);
    let ok_len = "a".repeat(MAX_FIELD_BYTES);
    assert_eq!(check(&v, &hs(&with(legacy(), "id", json!(ok_len)))), "ok");
    let cases = [
        with(legacy(), "id", json!(long)),
        with(legacy(), "sub", json!(format!("{long}@example.com"))),
        with(enhanced(), "sub", json!(long)),
        with(enhanced(), "email", json!(long)),
        with(legacy(), "role", json!(long)),
        with(legacy(), "sid", json!(long)),
        with(without(legacy(), "sid"), "jti", json!(long)),
        with(legacy(), "id", json!("4\n2")),
        with(legacy(), "sub", json!("ada@example.com\r\nX-Evil: 1")),
        with(enhanced(), "email", json!("a\u{7f}@b")),
        with(legacy(), "role", json!("admin\u{0}")),
        with(legacy(), "sid", json!("s\t1")),
        with(legacy(), "jti", json!("j\u{1b}")),
        with(legacy(), "sid", json!("")),
        with(legacy(), "sid", json!(7)),
        with(legacy(), "jti", json!("")),
        with(legacy(), "jti", json!(null)),
    ];
    for claims in cases {
        assert_eq!(check(&v, &hs(&claims)), "token_malformed", "{claims}");
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

#[test]
fn token_error_messages_and_codes() {
    let cases = [
        (TokenError::Malformed("x".into()), "token_malformed"),
        (TokenError::AlgorithmRejected("x".into()), "token_algorithm_rejected"),
        (TokenError::InvalidSignature, "token_invalid_signature"),
        (TokenError::ClaimsInvalid("x".into()), "token_claims_invalid"),
        (TokenError::Expired { seconds_ago: 12 }, "token_expired"),
        (TokenError::NotYetValid { seconds_ahead: 5 }, "token_not_yet_valid"),
        (TokenError::Inconsistent("x".into()), "token_inconsistent"),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code);
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(TokenError::Expired { seconds_ago: 12 }.to_string(), "token expired 12 s ago");
}

#[test]
fn token_messages_never_contain_the_token_or_claims() {
    let v = hs_verifier();
    let secretish = "SECRET-VALUE-abcdef";
    let tokens = [
        hs(&with(legacy(), "exp", json!(secretish))),
        hs(&with(legacy(), "aud", json!(secretish))),
        hs(&with(legacy(), "id", json!(format!("{secretish}\n")))),
        hs(&with(legacy(), "email", json!(format!("{secretish}@x")))),
        hs_header(json!({"alg": secretish}), &legacy()),
        hs_header(json!({"kid": secretish}), &legacy()),
        format!("{secretish}.{secretish}.{secretish}"),
        bad_signature(&hs(&legacy())),
    ];
    let mut s = settings(&[Algorithm::HS256]);
    s.audience = Some("sessiond".into());
    let va = Verifier::new(s).unwrap();
    for token in tokens {
        for verifier in [&v, &va] {
            if let Err(e) = verifier.verify(&token, NOW) {
                let msg = e.to_string();
                assert!(!msg.contains(&token), "{msg}");
                assert!(!msg.contains(secretish), "{msg}");
                for part in token.split('.').filter(|p| p.len() > 8) {
                    assert!(!msg.contains(part), "{msg}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key ring

fn key_error(s: TokenSettings) -> String {
    match Verifier::new(s) {
        Ok(_) => panic!("expected a KeyError"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn token_keyring_errors() {
    // No key at all.
    let mut s = settings(&[Algorithm::HS256]);
    s.hmac_secret = None;
    assert_eq!(
        key_error(s),
        "tokens: no key configured: set tokens.hmac_secret, tokens.hmac_secret_file or \
         tokens.public_keys"
    );
    // Short secret, and empty.
    for len in [0, 1, 31] {
        let mut s = settings(&[Algorithm::HS256]);
        s.hmac_secret = Some(vec![b'k'; len]);
        let msg = key_error(s);
        assert!(msg.contains("tokens.hmac_secret"), "{msg}");
        assert!(msg.contains("32"), "{msg}");
    }
    let mut s = settings(&[Algorithm::HS256]);
    s.hmac_secret = Some(vec![b'k'; 32]);
    assert!(Verifier::new(s).is_ok());
    // Secret with no HMAC algorithm listed.
    let mut s = settings(&[Algorithm::RS256]);
    s.public_keys = vec![pubkey(None, Algorithm::RS256, "rsa.pub.pem")];
    assert!(key_error(s).contains("tokens.hmac_secret"));
    // Public key whose alg is not listed.
    let mut s = settings(&[Algorithm::HS256]);
    s.public_keys = vec![pubkey(None, Algorithm::RS256, "rsa.pub.pem")];
    let msg = key_error(s);
    assert!(msg.contains("test:rsa.pub.pem") && msg.contains("RS256"), "{msg}");
    // Empty algorithms.
    let s = settings(&[]);
    assert!(key_error(s).contains("tokens.algorithms"));
    // Duplicate kids.
    let mut s = settings(&[Algorithm::RS256, Algorithm::ES256]);
    s.hmac_secret = None;
    s.public_keys = vec![
        pubkey(Some("k"), Algorithm::RS256, "rsa.pub.pem"),
        pubkey(Some("k"), Algorithm::ES256, "ec-p256.pub.pem"),
    ];
    let msg = key_error(s);
    assert!(msg.contains("test:ec-p256.pub.pem") && msg.contains("\"k\""), "{msg}");
    // Empty kid.
    let mut s = settings(&[Algorithm::RS256]);
    s.hmac_secret = None;
    s.public_keys = vec![pubkey(Some(""), Algorithm::RS256, "rsa.pub.pem")];
    assert!(key_error(s).contains("test:rsa.pub.pem"));
}

#[test]
fn token_keyring_wrong_pem_kind() {
    let cases = [
        (Algorithm::RS256, "ec-p256.pub.pem"),
        (Algorithm::PS256, "ed25519.pub.pem"),
        (Algorithm::RS256, "rsa.key.pem"), // a private key
        (Algorithm::ES256, "rsa.pub.pem"),
        (Algorithm::ES256, "ec-p384.pub.pem"), // wrong curve
        (Algorithm::ES384, "ec-p256.pub.pem"), // wrong curve
        (Algorithm::ES256, "ec-p256.key.pem"), // a private key
        (Algorithm::EdDSA, "ec-p256.pub.pem"),
        (Algorithm::EdDSA, "ed25519.key.pem"), // a private key
        (Algorithm::HS256, "rsa.pub.pem"),     // HMAC algs take no public key
    ];
    for (alg, file) in cases {
        let mut s = settings(&[alg]);
        s.hmac_secret = None;
        s.public_keys = vec![pubkey(None, alg, file)];
        let msg = key_error(s);
        assert!(msg.contains(&format!("test:{file}")), "{file}: {msg}");
    }
    let mut s = settings(&[Algorithm::RS256]);
    s.hmac_secret = None;
    s.public_keys = vec![PublicKeySpec {
        kid: None,
        alg: Algorithm::RS256,
        pem: b"not a pem".to_vec(),
        source: "tokens.public_keys[3]".into(),
    }];
    assert!(key_error(s).starts_with("tokens.public_keys[3]: "));
}

#[test]
fn token_summary_has_no_secrets() {
    let mut s = settings(&[Algorithm::HS256, Algorithm::RS256, Algorithm::HS256]);
    s.public_keys = vec![
        pubkey(Some("r1"), Algorithm::RS256, "rsa.pub.pem"),
        pubkey(None, Algorithm::RS256, "rsa2.pub.pem"),
    ];
    let v = Verifier::new(s).unwrap();
    let summary = v.summary();
    assert_eq!(
        summary,
        VerifierSummary {
            key_count: 3,
            algorithms: vec!["HS256".into(), "RS256".into()],
            kids: vec!["r1".into()],
        }
    );
    let text = serde_json::to_string(&summary).unwrap() + &format!("{v:?}");
    assert!(!text.contains(std::str::from_utf8(SECRET).unwrap()));
    assert!(!text.contains("BEGIN"));
}

#[test]
fn token_verifier_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Verifier>();
    assert_send_sync::<std::sync::Arc<Verifier>>();
}

// ---------------------------------------------------------------------------------------------
// Helpers exported for the daemon

#[test]
fn token_parse_algorithm_names() {
    for name in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ] {
        let alg = parse_algorithm(name).unwrap();
        assert_eq!(algorithm_name(alg), name);
    }
    for name in ["none", "None", "hs256", "ES512", "EDDSA", "", " HS256"] {
        assert_eq!(parse_algorithm(name), None, "{name}");
    }
}

#[test]
fn token_sign_hmac_shape_and_limits() {
    let claims = legacy();
    let token = sign_hmac(SECRET, Algorithm::HS384, &claims).unwrap();
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "HS384", "typ": "JWT"}));
    let v = Verifier::new(settings(&[Algorithm::HS384])).unwrap();
    assert_eq!(check(&v, &token), "ok");
    assert!(sign_hmac(SECRET, Algorithm::RS256, &claims).is_err());
    assert!(sign_hmac(SECRET, Algorithm::EdDSA, &claims).is_err());
    assert!(sign_hmac(SECRET, Algorithm::HS256, &json!([1])).is_err());
    assert!(sign_hmac(b"", Algorithm::HS256, &claims).is_err());
}

#[test]
fn token_crypto_self_test_passes() {
    crypto_self_test().unwrap();
}

// ---------------------------------------------------------------------------------------------
// RFC 7515 Appendix A vectors (answers from tests/vectors/rfc7515/README.md)

fn rfc_now() -> i64 {
    crate::domain::now_seconds()
}

#[test]
fn token_rfc7515_a1_hs256() {
    let token = vector_token("A1.jws");
    let key = vector("A1.hmac.key");
    assert_eq!(key.len(), 64);
    let mut s = settings(&[Algorithm::HS256]);
    s.hmac_secret = Some(key);
    let v = Verifier::new(s).unwrap();
    let err = v.verify(&token, rfc_now()).unwrap_err();
    assert_eq!(err.code(), "token_expired");
    assert!(matches!(err, TokenError::Expired { seconds_ago } if seconds_ago > 400_000_000));
    // Any other HMAC secret.
    let v = hs_verifier();
    assert_eq!(code(&v.verify(&token, rfc_now())), "token_invalid_signature");
}

#[test]
fn token_rfc7515_a2_rs256() {
    let mut s = settings(&[Algorithm::RS256]);
    s.hmac_secret = None;
    s.public_keys = vec![PublicKeySpec {
        kid: None,
        alg: Algorithm::RS256,
        pem: vector("A2.rsa.pub.pem"),
        source: "A2.rsa.pub.pem".into(),
    }];
    let v = Verifier::new(s).unwrap();
    let result = v.verify(&vector_token("A2.jws"), rfc_now());
    assert_eq!(code(&result), "token_expired");
}

#[test]
fn token_rfc7515_a3_es256() {
    let mut s = settings(&[Algorithm::ES256]);
    s.hmac_secret = None;
    s.public_keys = vec![PublicKeySpec {
        kid: None,
        alg: Algorithm::ES256,
        pem: vector("A3.ec.pub.pem"),
        source: "A3.ec.pub.pem".into(),
    }];
    let v = Verifier::new(s).unwrap();
    let result = v.verify(&vector_token("A3.jws"), rfc_now());
    assert_eq!(code(&result), "token_expired");
}

#[test]
fn token_rfc7515_a5_none() {
    let token = vector_token("A5.jws");
    let mut s = settings(&[Algorithm::HS256]);
    s.hmac_secret = Some(vector("A1.hmac.key"));
    let verifiers = [Verifier::new(s).unwrap(), hs_verifier()];
    for v in &verifiers {
        assert_eq!(code(&v.verify(&token, rfc_now())), "token_algorithm_rejected");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

mod props {
    use proptest::prelude::*;

    use super::*;

    fn email() -> impl Strategy<Value = String> {
        "[a-z0-9._%+-]{1,24}@[a-z0-9-]{1,20}\\.[a-z]{2,8}"
    }

    /// A user id without `@`, as enhanced tokens carry in `sub`.
    fn plain_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_:.|-]{1,64}"
    }

    #[derive(Debug, Clone)]
    enum Id {
        Str(String),
        I64(i64),
        U64(u64),
    }

    impl Id {
        fn json(&self) -> Value {
            match self {
                Id::Str(s) => json!(s),
                Id::I64(i) => json!(i),
                Id::U64(u) => json!(u),
            }
        }
        fn rendered(&self) -> String {
            match self {
                Id::Str(s) => s.clone(),
                Id::I64(i) => i.to_string(),
                Id::U64(u) => u.to_string(),
            }
        }
    }

    fn id() -> impl Strategy<Value = Id> {
        prop_oneof![
            "[^\\x00-\\x1f\\x7f]{1,40}".prop_map(Id::Str),
            any::<i64>().prop_map(Id::I64),
            any::<u64>().prop_map(Id::U64),
        ]
    }

    fn role() -> impl Strategy<Value = String> {
        "[a-z_]{1,16}"
    }

    fn session() -> impl Strategy<Value = (Option<String>, Option<String>)> {
        (proptest::option::of("[A-Za-z0-9-]{1,40}"), proptest::option::of("[A-Za-z0-9-]{1,40}"))
    }

    fn base(role: &str, exp_offset: i64) -> Value {
        json!({"role": role, "exp": NOW + exp_offset})
    }

    fn with_session(mut claims: Value, sid: &Option<String>, jti: &Option<String>) -> Value {
        if let Some(sid) = sid {
            claims["sid"] = json!(sid);
        }
        if let Some(jti) = jti {
            claims["jti"] = json!(jti);
        }
        claims
    }

    /// Arbitrary JSON, nested a little.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
            email().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Claims built from the names the verifier looks at, with arbitrary values.
    fn any_claims() -> impl Strategy<Value = Value> {
        let names = ["sub", "id", "email", "role", "exp", "iat", "nbf", "iss", "aud", "sid", "jti"];
        prop::collection::vec((prop::sample::select(names.to_vec()), any_json()), 0..12).prop_map(
            |pairs| {
                let mut map = serde_json::Map::new();
                for (k, v) in pairs {
                    map.insert(k.to_owned(), v);
                }
                Value::Object(map)
            },
        )
    }

    proptest! {
        #[test]
        fn token_prop_legacy_detected(sub in email(), id in id(), role in role(),
                                      (sid, jti) in session()) {
            let mut claims = with_session(base(&role, 600), &sid, &jti);
            claims["sub"] = json!(sub);
            claims["id"] = id.json();
            let token = hs(&claims);
            let identity = hs_verifier().verify(&token, NOW).unwrap();
            prop_assert_eq!(identity.format, TokenFormat::Legacy);
            prop_assert_eq!(&identity.user_id, &id.rendered());
            prop_assert_eq!(&identity.email, &sub);
            prop_assert_eq!(&identity.role, &role);
            prop_assert_eq!(identity.expires_at, NOW + 600);
            prop_assert_eq!(identity.issued_at, None);
        }

        #[test]
        fn token_prop_enhanced_detected(sub in plain_id(), email in email(), role in role(),
                                        (sid, jti) in session()) {
            let mut claims = with_session(base(&role, 600), &sid, &jti);
            claims["sub"] = json!(sub);
            claims["email"] = json!(email);
            let identity = hs_verifier().verify(&hs(&claims), NOW).unwrap();
            prop_assert_eq!(identity.format, TokenFormat::Enhanced);
            prop_assert_eq!(&identity.user_id, &sub);
            prop_assert_eq!(&identity.email, &email);
        }

        #[test]
        fn token_prop_integer_ids_render_decimal(sub in email(), n in any::<i64>()) {
            let mut claims = base("user", 60);
            claims["sub"] = json!(sub);
            claims["id"] = json!(n);
            let identity = hs_verifier().verify(&hs(&claims), NOW).unwrap();
            prop_assert_eq!(identity.user_id.parse::<i64>().unwrap(), n);
            prop_assert_eq!(identity.user_id, n.to_string());
        }

        #[test]
        fn token_prop_legacy_consistency(sub in email(), other in email(), id in id()) {
            let mut claims = base("user", 60);
            claims["sub"] = json!(sub);
            claims["id"] = id.json();
            claims["email"] = json!(other);
            let result = hs_verifier().verify(&hs(&claims), NOW);
            if other == sub {
                prop_assert!(result.is_ok());
            } else {
                prop_assert_eq!(code(&result), "token_inconsistent");
            }
        }

        #[test]
        fn token_prop_enhanced_consistency(sub in plain_id(), email in email(), id in id(),
                                           same in any::<bool>()) {
            let mut claims = base("user", 60);
            claims["email"] = json!(email);
            claims["id"] = id.json();
            // Half the time sub is the id's rendering, so both outcomes are exercised.
            let sub = if same && !id.rendered().contains('@') { id.rendered() } else { sub };
            claims["sub"] = json!(sub);
            let result = hs_verifier().verify(&hs(&claims), NOW);
            if sub.contains('@') {
                prop_assert_eq!(code(&result), "token_malformed");
            } else if id.rendered() == sub {
                prop_assert_eq!(result.unwrap().user_id, sub);
            } else {
                prop_assert_eq!(code(&result), "token_inconsistent");
            }
        }

        #[test]
        fn token_prop_session_id_rule(sub in email(), (sid, jti) in session()) {
            let mut claims = with_session(base("user", 60), &sid, &jti);
            claims["sub"] = json!(sub);
            claims["id"] = json!(1);
            let token = hs(&claims);
            let identity = hs_verifier().verify(&token, NOW).unwrap();
            match sid.or(jti) {
                Some(expected) => prop_assert_eq!(identity.session_id, expected),
                None => {
                    prop_assert_eq!(&identity.session_id, &derived_session_id(&token));
                    prop_assert_eq!(identity.session_id.len(), 24);
                    prop_assert!(identity.session_id.starts_with("t_"));
                    prop_assert!(identity.session_id[2..].bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                }
            }
        }

        #[test]
        fn token_prop_no_layout_without_the_other_claim(sub in ".{0,40}", role in role()) {
            // Neither id nor email: never accepted, always token_malformed.
            let mut claims = base(&role, 60);
            claims["sub"] = json!(sub);
            prop_assert_eq!(check(&hs_verifier(), &hs(&claims)), "token_malformed");
        }

        #[test]
        fn token_prop_verify_never_panics_on_strings(s in ".{0,300}") {
            let _ = hs_verifier().verify(&s, NOW);
        }

        #[test]
        fn token_prop_verify_never_panics_on_dotted_parts(
            a in "[A-Za-z0-9_=+/-]{0,60}", b in "[A-Za-z0-9_=+/-]{0,60}",
            c in "[A-Za-z0-9_=+/-]{0,90}") {
            let result = hs_verifier().verify(&format!("{a}.{b}.{c}"), NOW);
            prop_assert!(result.is_err());
        }

        #[test]
        fn token_prop_signed_arbitrary_claims(claims in any_claims(), now in any::<i64>()) {
            // Correctly signed garbage: never panics; when accepted, the identity is sane.
            let token = hs(&claims);
            if let Ok(identity) = hs_verifier().verify(&token, now) {
                prop_assert!(!identity.user_id.is_empty());
                prop_assert!(!identity.email.is_empty());
                prop_assert!(!identity.role.is_empty());
                prop_assert!(!identity.session_id.is_empty());
                for field in [&identity.user_id, &identity.email, &identity.role,
                              &identity.session_id] {
                    prop_assert!(field.len() <= MAX_FIELD_BYTES);
                    prop_assert!(!field.bytes().any(|b| b < 0x20 || b == 0x7f));
                }
                match identity.format {
                    TokenFormat::Legacy => prop_assert!(identity.email.contains('@')),
                    TokenFormat::Enhanced => prop_assert!(!identity.user_id.contains('@')),
                }
            }
        }

        #[test]
        fn token_prop_bad_signature_hides_everything(claims in any_claims()) {
            prop_assert_eq!(check(&hs_verifier(), &bad_signature(&hs(&claims))),
                            "token_invalid_signature");
        }
    }
}
