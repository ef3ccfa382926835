//! Token-making helpers: well-formed tokens of both claim layouts signed with the test keys,
//! and hand-built ones (any header, any bytes) for the rejection tests.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{SECRET, test_file};

/// Now, in Unix seconds.
pub fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Unpadded base64url.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// SHA-256 (FIPS 180-4), for the `t_` session id rule.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// The session id the contract derives for a token with neither `sid` nor `jti`.
pub fn derived_session_id(token: &str) -> String {
    let digest = b64url(&sha256(token.as_bytes()));
    format!("t_{}", &digest[..22])
}

/// Enhanced-layout claims (`sub` = user id, `email`), valid for an hour, with `sid` and `iat`.
pub fn enhanced(user_id: &str, email: &str, role: &str, sid: &str) -> Value {
    let now = now();
    json!({"sub": user_id, "email": email, "role": role, "sid": sid, "iat": now, "exp": now + 3600})
}

/// Legacy-layout claims (`sub` = email, `id`), valid for an hour, with `sid` and `iat`.
pub fn legacy(email: &str, id: Value, role: &str, sid: &str) -> Value {
    let now = now();
    json!({"sub": email, "id": id, "role": role, "sid": sid, "iat": now, "exp": now + 3600})
}

/// `claims` with `key` removed.
pub fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// `claims` with `key` set to `value`.
pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// An HS256 token with the default test secret.
pub fn hs256(claims: &Value) -> String {
    sign(
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::HS256,
    )
}

/// An HMAC token with this secret and algorithm.
pub fn hmac(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    let name = format!("{alg:?}");
    sign(
        &json!({"alg": name, "typ": "JWT"}),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
        alg,
    )
}

/// A token through `jsonwebtoken::encode` (its own header serialization).
pub fn encode(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

/// A token with a hand-built header, signed over exactly its two encoded parts.
pub fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// An HS256 token (test secret) over raw header and payload bytes.
pub fn sign_raw_hs256(header: &[u8], payload: &[u8]) -> String {
    let message = format!("{}.{}", b64url(header), b64url(payload));
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// A token with this header and claims and a literal signature part (e.g. empty for `none`).
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// `token` with its payload replaced (signature kept: no longer verifies).
pub fn tamper_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64url(claims.to_string().as_bytes()), parts[2])
}

/// Contents of a fixture key file (`tests/fixtures/keys/NAME`).
pub fn key_pem(name: &str) -> Vec<u8> {
    std::fs::read(test_file(&format!("fixtures/keys/{name}"))).unwrap()
}

/// The RSA signing key matching `rsa.pub.pem`.
pub fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_pem("rsa.key.pem")).unwrap()
}

/// The RSA signing key matching `rsa2.pub.pem`.
pub fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_pem("rsa2.key.pem")).unwrap()
}

/// The P-256 signing key matching `ec-p256.pub.pem`.
pub fn ec256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&key_pem("ec-p256.key.pem")).unwrap()
}

/// The P-384 signing key matching `ec-p384.pub.pem`.
pub fn ec384_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&key_pem("ec-p384.key.pem")).unwrap()
}

/// The Ed25519 signing key matching `ed25519.pub.pem`.
pub fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&key_pem("ed25519.key.pem")).unwrap()
}

/// A JWS header `{"alg": alg, "kid": kid?}`.
pub fn header(alg: &str, kid: Option<&str>) -> Value {
    match kid {
        Some(kid) => json!({"alg": alg, "typ": "JWT", "kid": kid}),
        None => json!({"alg": alg, "typ": "JWT"}),
    }
}

#[test]
fn helpers_sha256_and_base64url_match_known_answers() {
    assert_eq!(
        b64url(&sha256(b"abc")),
        // SHA-256("abc") = ba7816bf…f20015ad
        b64url(&[
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad
        ])
    );
    let long = vec![b'a'; 1000];
    assert_eq!(
        sha256(&long)[..4],
        // SHA-256 of 1000 × 'a' = 41edece4…
        [0x41, 0xed, 0xec, 0xe4]
    );
    assert_eq!(b64url(b""), "");
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    // The jsonwebtoken encoder and ours agree on the parts.
    let claims = json!({"sub": "u", "exp": 1});
    let a = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    );
    assert_eq!(a.split('.').nth(1).unwrap(), b64url(claims.to_string().as_bytes()));
}
