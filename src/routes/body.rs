//! Request bodies: JSON parsing with the contract's 400, without echoing client values.

use actix_web::web::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parses a JSON body. Error messages name fields and positions but never quote values, since
/// a value may be a token.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    // serde reads a struct from an array of its fields too; the contract's bodies are objects.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::bad_request("the body is empty; a JSON object is expected")),
        Some(_) => return Err(ApiError::bad_request("the body must be a JSON object")),
    }
    serde_json::from_slice(body).map_err(|e| {
        let at = format!("line {}, column {}", e.line(), e.column());
        let text = e.to_string();
        let message = if e.is_syntax() || e.is_eof() {
            format!("the body is not valid JSON ({at})")
        } else if text.starts_with("unknown field") || text.starts_with("missing field") {
            // serde's text here names a field, never a value.
            text
        } else {
            format!("the body does not have the expected shape ({at})")
        };
        ApiError::bad_request(message)
    })
}

/// Parses an optional JSON body: empty (or only whitespace) is `None`.
pub fn parse_optional_json<T: DeserializeOwned>(body: &Bytes) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_json(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct B {
        token: String,
        ttl_seconds: Option<i64>,
    }

    #[test]
    fn errors_never_quote_values() {
        let e = parse_json::<B>(&Bytes::from_static(
            br#"{"token": "secret", "ttl_seconds": "x-secret"}"#,
        ))
        .unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(!e.message.contains("secret"), "{}", e.message);
        let e = parse_json::<B>(&Bytes::from_static(b"{")).unwrap_err();
        assert!(e.message.contains("not valid JSON"));
        let e = parse_json::<B>(&Bytes::from_static(br#"{"token":"a","ttl":1}"#)).unwrap_err();
        assert!(e.message.contains("unknown field `ttl`"), "{}", e.message);
        assert!(parse_optional_json::<B>(&Bytes::from_static(b" \n")).unwrap().is_none());
        let e = parse_json::<B>(&Bytes::from_static(br#"["a", 60]"#)).unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{}", e.message);
        assert!(parse_json::<B>(&Bytes::from_static(b"")).is_err());
    }
}
