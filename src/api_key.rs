//! The management routes' `X-Api-Key` check, in constant time.
//!
//! Keys are held as SHA-256 digests; the presented key is hashed and compared with every
//! configured digest with `subtle`, without an early exit, so neither the position of a
//! mismatch nor the length of a key can be told from the timing.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The header name.
pub const HEADER: &str = "x-api-key";

/// The configured service keys, as digests.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        ApiKeys { digests: keys.iter().map(|k| digest(k.as_bytes())).collect() }
    }

    /// Whether `presented` is one of the keys; constant time in the key material.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0u8);
        for k in &self.digests {
            found |= k.ct_eq(&d);
        }
        found.into()
    }

    /// The check itself: missing → 401 `api_key_required`, wrong → 403 `api_key_invalid`.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match req.headers().get(HEADER) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "api_key_required",
                "this route needs the X-Api-Key header",
            )),
            Some(v) if self.matches(v.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "api_key_invalid",
                "the API key is not valid",
            )),
        }
    }
}

/// Extractor that admits only requests with a valid key; put it first in a handler's arguments.
pub struct ServiceKey;

impl FromRequest for ServiceKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let result = match req.app_data::<web::Data<ApiKeys>>() {
            Some(keys) => keys.check(req).map(|()| ServiceKey),
            None => Err(ApiError::internal()),
        };
        ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::ApiKeys;

    #[test]
    fn matches_only_configured_keys() {
        let keys =
            ApiKeys::new(&["k-0123456789abcdef".to_owned(), "k-fedcba9876543210".to_owned()]);
        assert!(keys.matches(b"k-0123456789abcdef"));
        assert!(keys.matches(b"k-fedcba9876543210"));
        assert!(!keys.matches(b"k-0123456789abcdeF"));
        assert!(!keys.matches(b""));
        assert!(!ApiKeys::new(&[]).matches(b""));
    }
}
