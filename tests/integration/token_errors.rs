//! Contract section 1: every token rejection and its precise code, through the real daemon.

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use crate::harness::{Config, Daemon, OK, check_token_cases, public_key, test_file, toml_list};
use crate::tokens::*;

const OTHER_SECRET: &[u8] = b"another-secret-of-sufficient-length-0123456789";

/// HS256 plus one key for each asymmetric family, each with a `kid`.
fn asym_config() -> Config {
    let keys = [
        public_key(Some("rsa1"), "RS256", &test_file("fixtures/keys/rsa.pub.pem")),
        public_key(Some("ps1"), "PS256", &test_file("fixtures/keys/rsa2.pub.pem")),
        public_key(Some("ec1"), "ES256", &test_file("fixtures/keys/ec-p256.pub.pem")),
        public_key(Some("ec384"), "ES384", &test_file("fixtures/keys/ec-p384.pub.pem")),
        public_key(Some("ed1"), "EdDSA", &test_file("fixtures/keys/ed25519.pub.pem")),
    ];
    Config::default()
        .set(
            "tokens.algorithms",
            &toml_list(&["HS256", "RS256", "PS256", "ES256", "ES384", "EdDSA"]),
        )
        .set("tokens.public_keys", &format!("[{}]", keys.join(", ")))
}

fn claims(sid: &str) -> serde_json::Value {
    enhanced("u-1", "ada@example.com", "admin", sid)
}

fn rsa_pub_pem() -> Vec<u8> {
    key_pem("rsa.pub.pem")
}

#[test]
fn every_configured_algorithm_verifies_with_its_key() {
    let d = Daemon::start(asym_config());
    check_token_cases(
        &d,
        &[
            ("HS256", hs256(&claims("a1")), OK),
            (
                "RS256 kid",
                sign(&header("RS256", Some("rsa1")), &claims("a2"), &rsa_key(), Algorithm::RS256),
                OK,
            ),
            (
                "RS256 no kid",
                sign(&header("RS256", None), &claims("a3"), &rsa_key(), Algorithm::RS256),
                OK,
            ),
            (
                "PS256 kid",
                sign(&header("PS256", Some("ps1")), &claims("a4"), &rsa2_key(), Algorithm::PS256),
                OK,
            ),
            (
                "ES256 kid",
                sign(&header("ES256", Some("ec1")), &claims("a5"), &ec256_key(), Algorithm::ES256),
                OK,
            ),
            (
                "ES256 no kid",
                sign(&header("ES256", None), &claims("a6"), &ec256_key(), Algorithm::ES256),
                OK,
            ),
            (
                "ES384 kid",
                sign(
                    &header("ES384", Some("ec384")),
                    &claims("a7"),
                    &ec384_key(),
                    Algorithm::ES384,
                ),
                OK,
            ),
            (
                "EdDSA kid",
                sign(&header("EdDSA", Some("ed1")), &claims("a8"), &ed_key(), Algorithm::EdDSA),
                OK,
            ),
            (
                "EdDSA no kid",
                sign(&header("EdDSA", None), &claims("a9"), &ed_key(), Algorithm::EdDSA),
                OK,
            ),
        ],
    );
}

#[test]
fn hs384_and_hs512_secrets_work_when_configured() {
    let d =
        Daemon::start(Config::default().set("tokens.algorithms", &toml_list(&["HS384", "HS512"])));
    check_token_cases(
        &d,
        &[
            ("HS384", hmac(Algorithm::HS384, crate::harness::SECRET.as_bytes(), &claims("h1")), OK),
            ("HS512", hmac(Algorithm::HS512, crate::harness::SECRET.as_bytes(), &claims("h2")), OK),
            ("HS256 not configured", hs256(&claims("h3")), "token_algorithm_rejected"),
        ],
    );
}

#[test]
fn algorithm_rejections() {
    let d = Daemon::start(asym_config());
    let c = claims("r1");
    let pem_as_secret = EncodingKey::from_secret(&rsa_pub_pem()).unwrap();
    check_token_cases(
        &d,
        &[
            (
                "alg none, empty signature",
                unsigned(&json!({"alg": "none"}), &c, ""),
                "token_algorithm_rejected",
            ),
            (
                "alg none with typ, empty signature",
                unsigned(&json!({"alg": "none", "typ": "JWT"}), &c, ""),
                "token_algorithm_rejected",
            ),
            ("alg NONE", unsigned(&json!({"alg": "NONE"}), &c, ""), "token_algorithm_rejected"),
            (
                "alg none with a signature part",
                unsigned(&json!({"alg": "none"}), &c, "c2lnbmF0dXJl"),
                "token_algorithm_rejected",
            ),
            (
                "HS512 not configured",
                hmac(Algorithm::HS512, crate::harness::SECRET.as_bytes(), &c),
                "token_algorithm_rejected",
            ),
            (
                "RS512 not configured",
                sign(&header("RS512", None), &c, &rsa_key(), Algorithm::RS512),
                "token_algorithm_rejected",
            ),
            (
                "unknown alg name",
                unsigned(&json!({"alg": "XS999"}), &c, "c2ln"),
                "token_algorithm_rejected",
            ),
            (
                "kid of an RS256 key with alg ES256",
                sign(&header("ES256", Some("rsa1")), &c, &ec256_key(), Algorithm::ES256),
                "token_algorithm_rejected",
            ),
            (
                "kid of an RS256 key with alg HS256 (PEM as HMAC secret)",
                sign(&header("HS256", Some("rsa1")), &c, &pem_as_secret, Algorithm::HS256),
                "token_algorithm_rejected",
            ),
            (
                "kid of an ES256 key with alg RS256",
                sign(&header("RS256", Some("ec1")), &c, &rsa_key(), Algorithm::RS256),
                "token_algorithm_rejected",
            ),
            (
                "kid of a PS256 key with alg RS256 (same RSA family)",
                sign(&header("RS256", Some("ps1")), &c, &rsa2_key(), Algorithm::RS256),
                "token_algorithm_rejected",
            ),
        ],
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_pem_is_refused() {
    // Config with RS256 (that public key) and HS256 with another secret: the HMAC check fails.
    let d = Daemon::start(asym_config());
    let pem_as_secret = EncodingKey::from_secret(&rsa_pub_pem()).unwrap();
    let forged = sign(&header("HS256", None), &claims("f1"), &pem_as_secret, Algorithm::HS256);
    d.validate(&forged).expect_error(401, "token_invalid_signature");
    d.verify_bearer(&forged).expect_error(401, "token_invalid_signature");
    d.create(&forged).expect_error(401, "token_invalid_signature");

    // Config with only RS256: HS256 is not an accepted algorithm at all.
    let keys = public_key(Some("rsa1"), "RS256", &test_file("fixtures/keys/rsa.pub.pem"));
    let only_rsa = Config::default()
        .unset("tokens.hmac_secret")
        .set("tokens.algorithms", &toml_list(&["RS256"]))
        .set("tokens.public_keys", &format!("[{keys}]"));
    let d = Daemon::start(only_rsa);
    check_token_cases(
        &d,
        &[
            ("HS256 with the PEM as secret, no kid", forged.clone(), "token_algorithm_rejected"),
            (
                "HS256 with the PEM as secret, kid rsa1",
                sign(
                    &header("HS256", Some("rsa1")),
                    &claims("f2"),
                    &pem_as_secret,
                    Algorithm::HS256,
                ),
                "token_algorithm_rejected",
            ),
            (
                "RS256 is fine",
                sign(&header("RS256", Some("rsa1")), &claims("f3"), &rsa_key(), Algorithm::RS256),
                OK,
            ),
        ],
    );
}

#[test]
fn invalid_signatures_and_unknown_kids() {
    let d = Daemon::start(asym_config());
    let c = claims("s1");
    let good = hs256(&c);
    // Change the first character of the signature (six data bits, no padding bits).
    let (message, signature) = good.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let sig_flipped = format!("{message}.{first}{}", &signature[1..]);
    check_token_cases(
        &d,
        &[
            (
                "HS256 other secret",
                hmac(Algorithm::HS256, OTHER_SECRET, &c),
                "token_invalid_signature",
            ),
            (
                "HS256 payload tampered",
                tamper_payload(&good, &with(c.clone(), "role", json!("root"))),
                "token_invalid_signature",
            ),
            ("HS256 signature altered", sig_flipped, "token_invalid_signature"),
            (
                "HS256 signature empty",
                format!("{}.", good.rsplit_once('.').unwrap().0),
                "token_invalid_signature",
            ),
            (
                "RS256 kid rsa1 signed by another RSA key",
                sign(&header("RS256", Some("rsa1")), &c, &rsa2_key(), Algorithm::RS256),
                "token_invalid_signature",
            ),
            (
                "RS256 without kid signed by a key not bound to RS256",
                sign(&header("RS256", None), &c, &rsa2_key(), Algorithm::RS256),
                "token_invalid_signature",
            ),
            (
                "RS256 unknown kid (right key)",
                sign(&header("RS256", Some("nope")), &c, &rsa_key(), Algorithm::RS256),
                "token_invalid_signature",
            ),
            (
                "HS256 unknown kid (right secret)",
                sign(
                    &header("HS256", Some("nope")),
                    &c,
                    &EncodingKey::from_secret(crate::harness::SECRET.as_bytes()).unwrap(),
                    Algorithm::HS256,
                ),
                "token_invalid_signature",
            ),
            (
                "ES256 kid ec1 signed by another EC key",
                sign(&header("ES256", Some("ec1")), &c, &ec384_key(), Algorithm::ES384),
                "token_invalid_signature",
            ),
            (
                "PS256 header over an RS256 signature",
                sign(&header("PS256", Some("ps1")), &c, &rsa2_key(), Algorithm::RS256),
                "token_invalid_signature",
            ),
        ],
    );
}

#[test]
fn malformed_structure() {
    let d = Daemon::start(Config::default());
    let good = hs256(&claims("m1"));
    let parts: Vec<&str> = good.split('.').collect();
    let hdr = json!({"alg": "HS256", "typ": "JWT"}).to_string();
    check_token_cases(
        &d,
        &[
            ("not a JWT", "not-a-jwt".to_string(), "token_malformed"),
            ("two parts", format!("{}.{}", parts[0], parts[1]), "token_malformed"),
            ("four parts", format!("{good}.{}", parts[2]), "token_malformed"),
            ("empty parts", "..".to_string(), "token_malformed"),
            ("header not base64url", format!("!!!.{}.{}", parts[1], parts[2]), "token_malformed"),
            ("payload not base64url", format!("{}.%%%.{}", parts[0], parts[2]), "token_malformed"),
            (
                "signature not base64url",
                format!("{}.{}.***", parts[0], parts[1]),
                "token_malformed",
            ),
            (
                "header not JSON",
                format!("{}.{}.{}", b64url(b"not json"), parts[1], parts[2]),
                "token_malformed",
            ),
            (
                "payload not JSON (signed)",
                sign_raw_hs256(hdr.as_bytes(), b"{\"sub\": oops"),
                "token_malformed",
            ),
            (
                "payload not JSON (unsigned)",
                format!("{}.{}.{}", parts[0], b64url(b"[[["), parts[2]),
                "token_malformed",
            ),
            ("whitespace in token", format!("{} ", good).replace('.', ". "), "token_malformed"),
        ],
    );
}

#[test]
fn forbidden_headers_are_malformed_even_when_signed() {
    let d = Daemon::start(Config::default());
    let c = claims("h1");
    let key = EncodingKey::from_secret(crate::harness::SECRET.as_bytes()).unwrap();
    let with_header = |name: &str, value: serde_json::Value| {
        let mut h = header("HS256", None);
        h[name] = value;
        sign(&h, &c, &key, Algorithm::HS256)
    };
    let jwk = json!({"kty": "oct", "k": b64url(b"attacker-chosen-secret-0123456789abc")});
    check_token_cases(
        &d,
        &[
            (
                "jku",
                with_header("jku", json!("https://attacker.example/jwks.json")),
                "token_malformed",
            ),
            ("jwk", with_header("jwk", jwk), "token_malformed"),
            ("crit", with_header("crit", json!(["exp"])), "token_malformed"),
            (
                "x5u",
                with_header("x5u", json!("https://attacker.example/cert.pem")),
                "token_malformed",
            ),
            ("x5c", with_header("x5c", json!(["MIIBszCCAVmgAwIBAgIUBnDA"])), "token_malformed"),
            // Structure is checked before the algorithm: a forbidden header wins over alg none.
            (
                "jku with alg none",
                unsigned(&json!({"alg": "none", "jku": "https://attacker.example/"}), &c, ""),
                "token_malformed",
            ),
            // ... and before the signature.
            (
                "jwk with a bad signature",
                {
                    let mut h = header("HS256", None);
                    h["jwk"] = json!({"kty": "oct", "k": "AAAA"});
                    sign(&h, &c, &EncodingKey::from_secret(OTHER_SECRET).unwrap(), Algorithm::HS256)
                },
                "token_malformed",
            ),
        ],
    );
}

#[test]
fn exp_must_be_present_and_numeric() {
    let d = Daemon::start(Config::default());
    let c = claims("e1");
    check_token_cases(
        &d,
        &[
            ("exp missing", hs256(&without(c.clone(), "exp")), "token_claims_invalid"),
            (
                "exp as a string",
                hs256(&with(c.clone(), "exp", json!((now() + 3600).to_string()))),
                "token_claims_invalid",
            ),
            ("exp null", hs256(&with(c.clone(), "exp", json!(null))), "token_claims_invalid"),
            ("exp boolean", hs256(&with(c.clone(), "exp", json!(true))), "token_claims_invalid"),
            ("exp numeric is fine", hs256(&c), OK),
        ],
    );
}

#[test]
fn issuer_and_audience_when_configured() {
    let d = Daemon::start(
        Config::default()
            .set_str("tokens.issuer", "https://issuer.test")
            .set_str("tokens.audience", "sessiond-api"),
    );
    let base =
        with(with(claims("i0"), "iss", json!("https://issuer.test")), "aud", json!("sessiond-api"));
    let sid = |n: &str| with(base.clone(), "sid", json!(n));
    check_token_cases(
        &d,
        &[
            ("iss and aud match", hs256(&sid("i1")), OK),
            (
                "aud list containing the audience",
                hs256(&with(sid("i2"), "aud", json!(["other", "sessiond-api"]))),
                OK,
            ),
            ("iss missing", hs256(&without(sid("i3"), "iss")), "token_claims_invalid"),
            (
                "iss mismatch",
                hs256(&with(sid("i4"), "iss", json!("https://evil.test"))),
                "token_claims_invalid",
            ),
            ("iss a number", hs256(&with(sid("i5"), "iss", json!(5))), "token_claims_invalid"),
            ("aud missing", hs256(&without(sid("i6"), "aud")), "token_claims_invalid"),
            (
                "aud mismatch",
                hs256(&with(sid("i7"), "aud", json!("other-api"))),
                "token_claims_invalid",
            ),
            ("aud a number", hs256(&with(sid("i8"), "aud", json!(42))), "token_claims_invalid"),
            (
                "aud list without the audience",
                hs256(&with(sid("i9"), "aud", json!(["a", "b"]))),
                "token_claims_invalid",
            ),
            // iss/aud come before the time checks.
            (
                "iss mismatch and expired",
                hs256(&with(
                    with(sid("i10"), "iss", json!("https://evil.test")),
                    "exp",
                    json!(now() - 3600),
                )),
                "token_claims_invalid",
            ),
        ],
    );
}

#[test]
fn issuer_and_audience_not_checked_when_not_configured() {
    let d = Daemon::start(Config::default());
    check_token_cases(
        &d,
        &[
            ("no iss, no aud", hs256(&claims("n1")), OK),
            (
                "any iss and aud",
                hs256(&with(with(claims("n2"), "iss", json!("whoever")), "aud", json!("x"))),
                OK,
            ),
        ],
    );
}

#[test]
fn time_checks_with_leeway() {
    let d = Daemon::start(Config::default().set("tokens.leeway_seconds", "30"));
    let c = |sid: &str| claims(sid);
    let t = now();
    check_token_cases(
        &d,
        &[
            (
                "expired beyond leeway",
                hs256(&with(c("t1"), "exp", json!(t - 120))),
                "token_expired",
            ),
            (
                "expired long ago",
                hs256(&with(c("t2"), "exp", json!(1_300_819_380))),
                "token_expired",
            ),
            ("expired within leeway", hs256(&with(c("t3"), "exp", json!(t - 10))), OK),
            (
                "nbf in the future beyond leeway",
                hs256(&with(c("t4"), "nbf", json!(t + 300))),
                "token_not_yet_valid",
            ),
            ("nbf in the future within leeway", hs256(&with(c("t5"), "nbf", json!(t + 10))), OK),
            ("nbf in the past", hs256(&with(c("t6"), "nbf", json!(t - 10))), OK),
            (
                "iat in the future beyond leeway",
                hs256(&with(c("t7"), "iat", json!(t + 300))),
                "token_not_yet_valid",
            ),
            ("iat in the future within leeway", hs256(&with(c("t8"), "iat", json!(t + 10))), OK),
        ],
    );
}

#[test]
fn time_checks_without_leeway() {
    let d = Daemon::start(Config::default().set("tokens.leeway_seconds", "0"));
    let t = now();
    check_token_cases(
        &d,
        &[
            ("expired 5 s ago", hs256(&with(claims("z1"), "exp", json!(t - 5))), "token_expired"),
            (
                "nbf 30 s ahead",
                hs256(&with(claims("z2"), "nbf", json!(t + 30))),
                "token_not_yet_valid",
            ),
            (
                "iat 30 s ahead",
                hs256(&with(claims("z3"), "iat", json!(t + 30))),
                "token_not_yet_valid",
            ),
            ("valid", hs256(&claims("z4")), OK),
        ],
    );
}

#[test]
fn layout_detection_and_role() {
    let d = Daemon::start(Config::default());
    let t = now();
    let base = |v: serde_json::Value| with(with(v, "exp", json!(t + 3600)), "iat", json!(t));
    check_token_cases(
        &d,
        &[
            ("legacy", hs256(&legacy("ada@example.com", json!("42"), "admin", "l1")), OK),
            ("legacy integer id", hs256(&legacy("bob@example.com", json!(43), "user", "l2")), OK),
            ("enhanced", hs256(&enhanced("u-7", "eve@example.com", "user", "l3")), OK),
            (
                "sub with @ but no id (email only)",
                hs256(&base(
                    json!({"sub": "a@example.com", "email": "a@example.com", "role": "r", "sid": "l4"}),
                )),
                "token_malformed",
            ),
            (
                "sub without @ but no email (id only)",
                hs256(&base(json!({"sub": "u-1", "id": "u-1", "role": "r", "sid": "l5"}))),
                "token_malformed",
            ),
            (
                "no sub",
                hs256(&base(
                    json!({"id": "1", "email": "a@example.com", "role": "r", "sid": "l6"}),
                )),
                "token_malformed",
            ),
            (
                "sub a number",
                hs256(&base(
                    json!({"sub": 5, "email": "a@example.com", "role": "r", "sid": "l6b"}),
                )),
                "token_malformed",
            ),
            (
                "missing role",
                hs256(&without(legacy("ada@example.com", json!("42"), "x", "l7"), "role")),
                "token_malformed",
            ),
            ("empty role", hs256(&enhanced("u-1", "a@example.com", "", "l8")), "token_malformed"),
            (
                "role a number",
                hs256(&with(enhanced("u-1", "a@example.com", "x", "l9"), "role", json!(1))),
                "token_malformed",
            ),
            (
                "role null",
                hs256(&with(enhanced("u-1", "a@example.com", "x", "l10"), "role", json!(null))),
                "token_malformed",
            ),
        ],
    );
}

#[test]
fn inconsistent_id_and_email() {
    let d = Daemon::start(Config::default());
    check_token_cases(
        &d,
        &[
            (
                "legacy with another email",
                hs256(&with(
                    legacy("ada@example.com", json!("42"), "admin", "c1"),
                    "email",
                    json!("eve@example.com"),
                )),
                "token_inconsistent",
            ),
            (
                "legacy with the same email",
                hs256(&with(
                    legacy("ada@example.com", json!("42"), "admin", "c2"),
                    "email",
                    json!("ada@example.com"),
                )),
                OK,
            ),
            (
                "enhanced with another id",
                hs256(&with(enhanced("u-1", "ada@example.com", "admin", "c3"), "id", json!("u-2"))),
                "token_inconsistent",
            ),
            (
                "enhanced with the same id",
                hs256(&with(enhanced("u-1", "ada@example.com", "admin", "c4"), "id", json!("u-1"))),
                OK,
            ),
            (
                "enhanced with the same id as an integer",
                hs256(&with(enhanced("42", "ada@example.com", "admin", "c5"), "id", json!(42))),
                OK,
            ),
            (
                "enhanced with another integer id",
                hs256(&with(enhanced("42", "ada@example.com", "admin", "c6"), "id", json!(43))),
                "token_inconsistent",
            ),
        ],
    );
}

#[test]
fn checks_run_in_the_contract_order() {
    let d = Daemon::start(Config::default());
    let t = now();
    let wrong = |c: &serde_json::Value| hmac(Algorithm::HS256, OTHER_SECRET, c);
    let no_role = without(claims("o1"), "role");
    check_token_cases(
        &d,
        &[
            (
                "bad signature beats expired",
                wrong(&with(claims("o2"), "exp", json!(t - 3600))),
                "token_invalid_signature",
            ),
            (
                "bad signature beats missing exp",
                wrong(&without(claims("o3"), "exp")),
                "token_invalid_signature",
            ),
            ("bad signature beats bad layout", wrong(&no_role), "token_invalid_signature"),
            (
                "bad signature beats inconsistent",
                wrong(&with(claims("o4"), "id", json!("someone-else"))),
                "token_invalid_signature",
            ),
            (
                "rejected algorithm beats bad signature",
                hmac(Algorithm::HS512, OTHER_SECRET, &claims("o5")),
                "token_algorithm_rejected",
            ),
            (
                "missing exp beats bad layout",
                hs256(&without(no_role.clone(), "exp")),
                "token_claims_invalid",
            ),
            (
                "expired beats bad layout",
                hs256(&with(no_role.clone(), "exp", json!(t - 3600))),
                "token_expired",
            ),
            (
                "expired beats inconsistent",
                hs256(&with(with(claims("o6"), "id", json!("x")), "exp", json!(t - 3600))),
                "token_expired",
            ),
            (
                "not yet valid beats inconsistent",
                hs256(&with(with(claims("o7"), "id", json!("x")), "nbf", json!(t + 3600))),
                "token_not_yet_valid",
            ),
            (
                "malformed structure beats everything",
                format!("{}.x", wrong(&no_role)),
                "token_malformed",
            ),
        ],
    );
}

#[test]
fn token_missing() {
    let d = Daemon::start(Config::default());
    d.post("/api/v1/sessions/validate").send().expect_error(401, "token_missing");
    d.post("/api/v1/sessions/validate").json(&json!({})).send().expect_error(401, "token_missing");
    d.get("/api/v1/auth/verify").send().expect_error(401, "token_missing");
    d.get("/api/v1/auth/verify")
        .header("Cookie", "unrelated=1")
        .send()
        .expect_error(401, "token_missing");
}
