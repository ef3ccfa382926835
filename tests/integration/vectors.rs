//! RFC 7515 Appendix A: the RFC's own signed examples through the real daemon, with the answers
//! `tests/vectors/rfc7515/README.md` gives (signature first, then the time check).

use crate::harness::{Config, Daemon, public_key, test_file, toml_list, toml_str};

fn vector(name: &str) -> String {
    std::fs::read_to_string(test_file(&format!("vectors/rfc7515/{name}")))
        .unwrap()
        .trim()
        .to_string()
}

fn rsa_or_ec_config(alg: &str, pem: &str) -> Config {
    // The vectors' headers carry no kid: the key is configured without one.
    let key = public_key(None, alg, &test_file(&format!("vectors/rfc7515/{pem}")));
    Config::default()
        .unset("tokens.hmac_secret")
        .set("tokens.algorithms", &toml_list(&[alg]))
        .set("tokens.public_keys", &format!("[{key}]"))
}

#[test]
fn a1_hs256_with_its_key_file_is_expired() {
    let key_file = test_file("vectors/rfc7515/A1.hmac.key").display().to_string();
    let d = Daemon::start(
        Config::default()
            .unset("tokens.hmac_secret")
            .set("tokens.hmac_secret_file", &toml_str(&key_file)),
    );
    let token = vector("A1.jws");
    d.validate(&token).expect_error(401, "token_expired");
    d.validate_bearer(&token).expect_error(401, "token_expired");
    d.verify_bearer(&token).expect_error(401, "token_expired");
}

#[test]
fn a1_hs256_with_another_secret_is_an_invalid_signature() {
    let d = Daemon::start(Config::default());
    d.validate(&vector("A1.jws")).expect_error(401, "token_invalid_signature");
}

#[test]
fn a2_rs256_is_expired() {
    let d = Daemon::start(rsa_or_ec_config("RS256", "A2.rsa.pub.pem"));
    d.validate(&vector("A2.jws")).expect_error(401, "token_expired");
}

#[test]
fn a2_rs256_with_another_key_is_an_invalid_signature() {
    let key = public_key(None, "RS256", &test_file("fixtures/keys/rsa.pub.pem"));
    let d = Daemon::start(
        Config::default()
            .set("tokens.algorithms", &toml_list(&["HS256", "RS256"]))
            .set("tokens.public_keys", &format!("[{key}]")),
    );
    d.validate(&vector("A2.jws")).expect_error(401, "token_invalid_signature");
}

#[test]
fn a3_es256_is_expired() {
    let d = Daemon::start(rsa_or_ec_config("ES256", "A3.ec.pub.pem"));
    d.validate(&vector("A3.jws")).expect_error(401, "token_expired");
}

#[test]
fn a2_and_a3_are_rejected_when_their_algorithm_is_not_configured() {
    let d = Daemon::start(Config::default());
    d.validate(&vector("A2.jws")).expect_error(401, "token_algorithm_rejected");
    d.validate(&vector("A3.jws")).expect_error(401, "token_algorithm_rejected");
}

#[test]
fn a5_unsecured_is_algorithm_rejected() {
    let d = Daemon::start(Config::default());
    d.validate(&vector("A5.jws")).expect_error(401, "token_algorithm_rejected");
    let d = Daemon::start(rsa_or_ec_config("RS256", "A2.rsa.pub.pem"));
    d.validate(&vector("A5.jws")).expect_error(401, "token_algorithm_rejected");
}
