//! The token algorithm names of the contract.

use sessiond_actors::token::{Algorithm, parse_algorithm};

/// The algorithm names of the contract, in the order they are listed in error messages.
pub const ALGORITHM_NAMES: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// The algorithm a contract name stands for (exact case); `none` and unknown names give
/// `None`.
pub fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    parse_algorithm(name)
}

/// Whether an algorithm name is an HMAC one.
pub fn is_hmac_name(name: &str) -> bool {
    matches!(name, "HS256" | "HS384" | "HS512")
}

pub(super) fn algorithm_error(name: &str) -> String {
    if name.eq_ignore_ascii_case("none") {
        "algorithm \"none\" is never accepted".to_owned()
    } else {
        format!("unknown algorithm {name:?} (expected one of {})", ALGORITHM_NAMES.join(", "))
    }
}
