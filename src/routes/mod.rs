//! The HTTP routes of CONTRACT.md sections 3 and 4, and the JSON 404 for everything else.

mod body;
pub mod health;
mod probes;
mod sessions;
pub(crate) mod token_source;
mod verify;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;

pub use probes::Readiness;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/sessions/validate", web::post().to(sessions::validate))
            .route("/auth/verify", web::get().to(verify::verify))
            .route("/sessions", web::post().to(sessions::create))
            .route("/sessions/{session_id}", web::get().to(sessions::get))
            .route("/sessions/{session_id}", web::delete().to(sessions::revoke))
            .route("/sessions/{session_id}/refresh", web::post().to(sessions::refresh))
            .route("/users/{user_id}/sessions", web::get().to(sessions::list_user))
            .route("/users/{user_id}/sessions", web::delete().to(sessions::revoke_user)),
    )
    .service(
        web::scope("/api/integration-health")
            .route("", web::get().to(health::overall))
            .route("/", web::get().to(health::overall))
            .route("/circuit-breaker-status", web::get().to(health::breakers))
            .route("/test-integration", web::post().to(health::test_integration))
            .route("/{component}", web::get().to(health::component)),
    )
    .route("/metrics", web::get().to(health::metrics_text))
    .route("/livez", web::get().to(health::livez))
    .route("/readyz", web::get().to(probes::readyz));
}

/// How much of a client's method or path a 404 message quotes.
const MAX_QUOTED_CHARS: usize = 200;

/// The answer for any route that does not exist (or a method a route does not take).
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // Both come from the client: quoted only in part, so an error body stays small.
    let clip = |s: &str| s.chars().take(MAX_QUOTED_CHARS).collect::<String>();
    Err(ApiError::not_found(format!(
        "no such route: {} {}",
        clip(req.method().as_str()),
        clip(req.path())
    )))
}
