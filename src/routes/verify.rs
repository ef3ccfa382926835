//! `GET /api/v1/auth/verify`: forward-auth for nginx `auth_request`, Traefik ForwardAuth and
//! Envoy ext_authz. 200 with `X-Auth-*` headers, or the same 401 as validate.

use actix::Addr;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sessiond_actors::messages::Validate;
use sessiond_actors::session_validator::SessionValidator;

use super::token_source;
use crate::error::{ApiError, Surface, from_failure};
use crate::startup::HttpSettings;

pub async fn verify(
    req: HttpRequest,
    validator: web::Data<Addr<SessionValidator>>,
    settings: web::Data<HttpSettings>,
) -> Result<HttpResponse, ApiError> {
    let token = token_source::bearer(&req)
        .or_else(|| token_source::cookie(&req, &settings.cookie_name))
        .ok_or_else(ApiError::token_missing)?;
    let validation = validator
        .send(Validate { token })
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|f| from_failure(f, Surface::Token))?;
    let id = &validation.identity;
    let mut res = HttpResponse::Ok().finish();
    for (name, value) in [
        ("x-auth-user-id", id.user_id.as_str()),
        ("x-auth-email", id.email.as_str()),
        ("x-auth-role", id.role.as_str()),
        ("x-auth-session-id", id.session_id.as_str()),
        ("x-auth-mode", validation.mode.as_str()),
    ] {
        // The verifier refuses control characters in these claims, so this cannot fail for a
        // token it accepted; answer 500 rather than drop a header if it ever does.
        let v = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| ApiError::internal())?;
        res.headers_mut().insert(HeaderName::from_static(name), v);
    }
    Ok(res)
}
