//! Step 1 of the check order: the token's structure.
//!
//! Three base64url parts (strict: no padding, URL-safe alphabet only, canonical trailing bits),
//! a header and a payload that are JSON objects with unique member names, a header `alg` that
//! is a string, a `kid` that is a string when present, and none of the headers that would let
//! the token choose its own key or change how it is processed. Every failure here is
//! [`TokenError::Malformed`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::error::TokenError;

/// The longest token accepted, in bytes; longer ones are malformed before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Header parameters that are refused outright: `jku`, `x5u`, `jwk` and `x5c` would let the
/// token name or carry its own key; `crit` would oblige us to understand extensions we do not
/// implement.
pub const FORBIDDEN_HEADERS: [&str; 5] = ["jku", "x5u", "jwk", "x5c", "crit"];

/// A token that passed the structure checks.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The header's `alg`, as written.
    pub alg: String,
    /// The header's `kid`, when present.
    pub kid: Option<String>,
    /// The payload's members.
    pub claims: Map<String, Value>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

fn malformed(why: &str) -> TokenError {
    TokenError::Malformed(why.to_owned())
}

/// Runs the structure checks on `token`.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!("token longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let mut pieces = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(malformed("a JWT has exactly three dot-separated parts"));
    };
    // The signing input is everything before the second dot. Both lengths come from the
    // same string, so the range is in bounds and on a char boundary ('.' is ASCII).
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or_else(|| malformed("a JWT has exactly three dot-separated parts"))?;

    let header_bytes = decode_part(header_b64, "header")?;
    let payload_bytes = decode_part(payload_b64, "payload")?;
    let signature = decode_part(signature_b64, "signature")?;

    let header = parse_object(&header_bytes, "header")?;
    let claims = parse_object(&payload_bytes, "payload")?;

    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        Some(_) => return Err(malformed("header alg is not a string")),
        None => return Err(malformed("header has no alg")),
    };
    let kid = match header.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("header kid is not a string")),
        None => None,
    };
    if let Some(name) = FORBIDDEN_HEADERS.iter().find(|name| header.contains_key(**name)) {
        return Err(TokenError::Malformed(format!(
            "header parameter {name} is not accepted: keys never come from the token"
        )));
    }
    if header.contains_key("b64") {
        return Err(malformed(
            "header parameter b64 is not accepted: payloads are always base64url",
        ));
    }

    Ok(Parsed { signing_input, alg, kid, claims, signature })
}

/// Strict base64url: the URL-safe alphabet, no padding, no non-canonical trailing bits.
pub(crate) fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(format!("{what} is not valid unpadded base64url")))
}

/// Parses a JSON object whose top-level member names are unique. The error never quotes the
/// input (serde_json's own messages can).
fn parse_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, TokenError> {
    match serde_json::from_slice::<UniqueObject>(bytes) {
        Ok(UniqueObject(map)) => Ok(map),
        Err(e) if e.is_data() => Err(TokenError::Malformed(format!(
            "{what} is not a JSON object with unique member names"
        ))),
        Err(_) => Err(TokenError::Malformed(format!("{what} is not valid JSON"))),
    }
}

/// A JSON object that refuses duplicate top-level member names (RFC 7515 section 5.2 allows
/// rejecting them; accepting "last one wins" invites parser-differential attacks such as
/// `{"alg":"HS256","alg":"none"}`).
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let value: Value = access.next_value()?;
            map.insert(key, value);
        }
        Ok(UniqueObject(map))
    }
}
