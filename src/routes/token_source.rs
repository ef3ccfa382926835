//! Where a token is taken from: `Authorization: Bearer …` and cookies.

use actix_web::HttpRequest;
use actix_web::http::header;

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any.
pub fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The value of the named cookie, if any and non-empty.
pub fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    let c = req.cookie(name)?;
    let v = c.value().trim();
    (!v.is_empty()).then(|| v.to_owned())
}
