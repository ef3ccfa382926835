//! Validation and session management (CONTRACT.md section 3).

use std::collections::BTreeMap;

use actix::Addr;
use actix_web::web::{Bytes, Path};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sessiond_actors::messages::{
    CreateFromToken, FetchSession, ListForUser, RefreshById, RevokeById, RevokeForUser, Validate,
};
use sessiond_actors::session_validator::SessionValidator;

use super::body::{parse_json, parse_optional_json};
use super::token_source;
use crate::api_key::ServiceKey;
use crate::error::{ApiError, Surface, from_failure};

type Validator = web::Data<Addr<SessionValidator>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    token: String,
    ttl_seconds: Option<i64>,
    attributes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    ttl_seconds: Option<i64>,
}

/// Sends a message to the worker's validator; a dead mailbox is a bug (500).
macro_rules! ask {
    ($validator:expr, $msg:expr, $surface:expr) => {
        $validator
            .send($msg)
            .await
            .map_err(|e| {
                log::error!("session validator unreachable: {e}");
                ApiError::internal()
            })?
            .map_err(|f| from_failure(f, $surface))
    };
}

/// `POST /api/v1/sessions/validate`: token from the body, else `Authorization: Bearer`.
pub async fn validate(
    req: HttpRequest,
    body: Bytes,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let from_body = parse_optional_json::<ValidateBody>(&body)?.and_then(|b| b.token);
    let token = from_body
        .filter(|t| !t.is_empty())
        .or_else(|| token_source::bearer(&req))
        .ok_or_else(ApiError::token_missing)?;
    let validation = ask!(validator, Validate { token }, Surface::Token)?;
    Ok(HttpResponse::Ok().json(validation))
}

/// `POST /api/v1/sessions`: 201 when created, 200 with the stored one when it existed.
pub async fn create(
    _key: ServiceKey,
    body: Bytes,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let b: CreateBody = parse_json(&body)?;
    if b.token.is_empty() {
        return Err(ApiError::token_missing());
    }
    let msg = CreateFromToken {
        token: b.token,
        ttl_seconds: b.ttl_seconds,
        attributes: b.attributes.unwrap_or_default(),
    };
    let created = ask!(validator, msg, Surface::Management)?;
    let mut res = if created.created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(res.json(serde_json::json!({ "session": created.session })))
}

/// `GET /api/v1/sessions/{session_id}`.
pub async fn get(
    _key: ServiceKey,
    path: Path<String>,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let session =
        ask!(validator, FetchSession { session_id: path.into_inner() }, Surface::Management)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "session": session })))
}

/// `POST /api/v1/sessions/{session_id}/refresh`.
pub async fn refresh(
    _key: ServiceKey,
    path: Path<String>,
    body: Bytes,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let ttl_seconds = parse_optional_json::<RefreshBody>(&body)?.and_then(|b| b.ttl_seconds);
    let msg = RefreshById { session_id: path.into_inner(), ttl_seconds };
    let session = ask!(validator, msg, Surface::Management)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "session": session })))
}

/// `DELETE /api/v1/sessions/{session_id}`: idempotent.
pub async fn revoke(
    _key: ServiceKey,
    path: Path<String>,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let session_id = path.into_inner();
    ask!(validator, RevokeById { session_id: session_id.clone() }, Surface::Management)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "revoked": true, "session_id": session_id })))
}

/// `GET /api/v1/users/{user_id}/sessions`: live sessions only.
pub async fn list_user(
    _key: ServiceKey,
    path: Path<String>,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let sessions =
        ask!(validator, ListForUser { user_id: path.into_inner() }, Surface::Management)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "sessions": sessions })))
}

/// `DELETE /api/v1/users/{user_id}/sessions`.
pub async fn revoke_user(
    _key: ServiceKey,
    path: Path<String>,
    validator: Validator,
) -> Result<HttpResponse, ApiError> {
    let n = ask!(validator, RevokeForUser { user_id: path.into_inner() }, Surface::Management)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "revoked": n })))
}
