//! The contract's error answers: `{"error": {"code", "message", "request_id"}}` with the right
//! status and headers, and the mapping from pipeline failures to them.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use sessiond_actors::session_validator::Failure;

/// `WWW-Authenticate` on every rejected token (RFC 6750).
pub const BEARER_INVALID: &str = "Bearer error=\"invalid_token\"";
/// `WWW-Authenticate` when no token was given at all (RFC 6750 section 3.1).
pub const BEARER_MISSING: &str = "Bearer realm=\"sessiond\"";

/// One error answer. The request id is filled in by the request-id middleware.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub www_authenticate: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), www_authenticate: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// A request not handled within `server.request_timeout_ms` (its body too slow): 408,
    /// code `request_timeout` (an extension of the contract's codes).
    pub fn request_timeout(deadline: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request was not complete within {} ms", deadline.as_millis()),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the daemon's log",
        )
    }

    pub fn token_missing() -> Self {
        ApiError {
            www_authenticate: Some(BEARER_MISSING),
            ..Self::new(StatusCode::UNAUTHORIZED, "token_missing", "no bearer token was given")
        }
    }

    fn bearer(mut self) -> Self {
        self.www_authenticate = Some(BEARER_INVALID);
        self
    }

    /// The answer as JSON with the given request id.
    pub fn render(&self, request_id: &str) -> HttpResponse {
        let body = serde_json::json!({
            "error": {"code": self.code, "message": self.message, "request_id": request_id}
        });
        let mut res = HttpResponse::build(self.status);
        if let Some(v) = self.www_authenticate {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static(v)));
        }
        res.json(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // The request-id middleware re-renders with the real id; this is the fallback.
        self.render("")
    }
}

/// Where a failure surfaced: the same failure maps to different statuses per route family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Token routes: validate, verify, the WebSocket handshake.
    Token,
    /// Management routes.
    Management,
}

/// Maps a pipeline failure to the contract's answer for the surface it happened on.
pub fn from_failure(failure: Failure, surface: Surface) -> ApiError {
    use StatusCode as S;
    match failure {
        Failure::Token(e) => ApiError::new(S::UNAUTHORIZED, e.code(), e.to_string()).bearer(),
        Failure::SessionNotFound => match surface {
            Surface::Token => {
                ApiError::new(S::UNAUTHORIZED, "session_not_found", "no such live session").bearer()
            }
            Surface::Management => {
                ApiError::new(S::NOT_FOUND, "session_not_found", "no such live session")
            }
        },
        Failure::SessionRevoked => match surface {
            Surface::Token => {
                ApiError::new(S::UNAUTHORIZED, "session_revoked", "the session was revoked")
                    .bearer()
            }
            Surface::Management => {
                ApiError::new(S::CONFLICT, "session_revoked", "the session was revoked")
            }
        },
        Failure::SessionConflict => {
            ApiError::bad_request("the session id is already held by another user's session")
        }
        Failure::StoreFull => ApiError::new(
            S::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the session store is full (fallback.max_entries, or the degraded-mode journal)",
        ),
        Failure::Store(e) => {
            log::error!("store failure: {e}");
            ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the session store cannot answer",
            )
        }
        Failure::BadRequest(m) => ApiError::bad_request(m),
        Failure::Unavailable => ApiError::new(
            S::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the session store cannot answer and degraded.policy is fail_closed",
        ),
    }
}

/// The contract's answer for an error actix itself produced (not an [`ApiError`]).
pub fn from_status(status: StatusCode, limit: usize) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(limit),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::not_found("no such route")
        }
        s if s.is_client_error() => ApiError::new(s, "bad_request", "malformed request"),
        _ => ApiError::internal(),
    }
}
