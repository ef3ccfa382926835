//! CONTRACT.md section 4: `/api/integration-health/...`, `/livez` and `/metrics`.
//!
//! Each component's health is its actor's answer to `CheckHealth`, awaited for at most
//! `health::ANSWER_TIMEOUT` (no answer: `unhealthy`). All five are asked at once.

use std::sync::Arc;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};
use sessiond_actors::breaker::SharedBreaker;
use sessiond_actors::coordinator::Coordinator;
use sessiond_actors::domain::now_seconds;
use sessiond_actors::fallback_store::FallbackStore;
use sessiond_actors::health::{
    self, ANSWER_TIMEOUT, CheckHealth, CheckLiveness, Component, ComponentHealth, HealthStatus,
};
use sessiond_actors::messages::{GetGatewayStats, GetStoreStats};
use sessiond_actors::metrics::{CONTENT_TYPE, metrics};
use sessiond_actors::session_validator::{Pipeline, SessionValidator};
use sessiond_actors::ws_gateway::WsGateway;

use crate::api_key::ApiKeys;
use crate::error::ApiError;
use crate::self_test::SelfTest;

/// What the operations routes need (shared by every worker).
pub struct Operations {
    pub instance_id: String,
    pub token_adapter: Recipient<CheckHealth>,
    pub store: Addr<FallbackStore>,
    pub gateway: Addr<WsGateway>,
    pub coordinator: Addr<Coordinator>,
    /// `redis` and `event_bus` in Redis mode; none in embedded mode.
    pub breakers: Vec<SharedBreaker>,
    pub pipeline: Arc<Pipeline>,
    pub self_test: SelfTest,
}

impl Operations {
    fn degraded(&self) -> bool {
        self.pipeline.backend.is_degraded()
    }

    async fn component(&self, c: Component, validator: &Addr<SessionValidator>) -> ComponentHealth {
        match c {
            Component::JwtTokenAdapter => health::ask(&self.token_adapter).await,
            Component::SessionValidationNormalizer => {
                health::ask(&validator.clone().recipient()).await
            }
            Component::FallbackSessionProvider => {
                health::ask(&self.store.clone().recipient()).await
            }
            Component::WebsocketAuthGateway => health::ask(&self.gateway.clone().recipient()).await,
            Component::ServiceBoundaryCoordinator => {
                health::ask(&self.coordinator.clone().recipient()).await
            }
        }
    }
}

fn status_code(s: HealthStatus) -> StatusCode {
    match s {
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

/// A JSON answer that no cache keeps.
fn with_json(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// `GET /api/integration-health/`: every component, the overall status and a summary.
pub async fn overall(
    ops: web::Data<Operations>,
    validator: web::Data<Addr<SessionValidator>>,
) -> HttpResponse {
    // The mode is read once, before the components answer: the coordinator's details, taken
    // after, can only be as new or newer.
    let degraded = ops.degraded();
    let answers = futures_util::future::join_all(
        Component::ALL.into_iter().map(|c| ops.component(c, &validator)),
    )
    .await;
    let status = health::overall(&answers);
    let count = |s: HealthStatus| answers.iter().filter(|a| a.status == s).count();
    let mut components = Map::new();
    for (c, a) in Component::ALL.into_iter().zip(&answers) {
        components.insert(c.key().to_owned(), json!(a));
    }
    let body = json!({
        "status": status,
        "mode": if degraded { "degraded" } else { "normal" },
        "instance_id": ops.instance_id,
        "timestamp": now_seconds(),
        "components": components,
        "integration_summary": {
            "total_components": answers.len(),
            "healthy_components": count(HealthStatus::Healthy),
            "degraded_components": count(HealthStatus::Degraded),
            "failed_components": count(HealthStatus::Unhealthy),
        },
    });
    with_json(status_code(status), &body)
}

/// `GET /api/integration-health/{component}`.
pub async fn component(
    path: web::Path<String>,
    ops: web::Data<Operations>,
    validator: web::Data<Addr<SessionValidator>>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let Some(c) = Component::from_path(&name) else {
        return Err(ApiError::not_found(format!(
            "no such component; the components are {}",
            Component::ALL.map(Component::path).join(", ")
        )));
    };
    let a = ops.component(c, &validator).await;
    let body = json!({"component": c.key(), "status": a.status, "details": a.details});
    Ok(with_json(status_code(a.status), &body))
}

/// `GET /api/integration-health/circuit-breaker-status`.
pub async fn breakers(ops: web::Data<Operations>) -> HttpResponse {
    let mut breakers = Map::new();
    let mut active = 0;
    for b in &ops.breakers {
        let snap = b.snapshot();
        if snap.state != sessiond_actors::breaker::BreakerState::Closed {
            active += 1;
        }
        breakers.insert(b.name().to_owned(), json!(snap));
    }
    let body = json!({
        "summary": {
            "total_breakers": breakers.len(),
            "active_breakers": active,
            "degraded_mode": ops.degraded(),
        },
        "breakers": breakers,
    });
    with_json(StatusCode::OK, &body)
}

/// `POST /api/integration-health/test-integration` (API key): 200 passed, 503 failed.
pub async fn test_integration(
    req: HttpRequest,
    keys: web::Data<ApiKeys>,
    ops: web::Data<Operations>,
) -> Result<HttpResponse, ApiError> {
    keys.check(&req)?;
    let report = ops.self_test.run(&ops.pipeline, &ops.coordinator).await;
    let status = if report.passed() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(with_json(status, &json!(report)))
}

/// `GET /livez`: 200 while the Coordinator and every actor it watches answer.
pub async fn livez(ops: web::Data<Operations>) -> HttpResponse {
    let ask = ops.coordinator.send(CheckLiveness);
    // The coordinator waits ANSWER_TIMEOUT for the others; it gets as long again itself.
    match tokio::time::timeout(ANSWER_TIMEOUT * 2, ask).await {
        Ok(Ok(live)) if live.alive() => {
            HttpResponse::Ok().json(json!({"status": "alive", "actors": live.answered + 1}))
        }
        Ok(Ok(live)) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "wedged", "stalled": live.stalled})),
        _ => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "wedged", "stalled": ["coordinator"]})),
    }
}

/// `GET /metrics`: the state-mirroring gauges are refreshed from their owners first (each
/// asked with the same bound as health; one that does not answer keeps its last values).
pub async fn metrics_text(ops: web::Data<Operations>) -> HttpResponse {
    let m = metrics();
    let store = tokio::time::timeout(ANSWER_TIMEOUT, ops.store.send(GetStoreStats));
    let gateway = tokio::time::timeout(ANSWER_TIMEOUT, ops.gateway.send(GetGatewayStats));
    let (store, gateway) = futures_util::future::join(store, gateway).await;
    if let Ok(Ok(s)) = store {
        m.fallback_sessions.set(s.live_sessions as i64);
        m.fallback_tombstones.set(s.tombstones as i64);
        m.fallback_log_bytes.set(s.log_bytes as i64);
        m.fallback_write_errors.set(s.write_errors as i64);
        m.fallback_last_fsync.set(s.last_fsync_at_ms.map_or(0, |t| t / 1000));
        m.journal_backlog.set(s.journal_len as i64);
    }
    if let Ok(Ok(g)) = gateway {
        m.ws_connections.set(g.connections as i64);
    }
    for b in &ops.breakers {
        m.breaker_state.with_label_values(&[b.name()]).set(b.state().gauge());
    }
    m.mode.set(i64::from(ops.degraded()));
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CONTENT_TYPE, CONTENT_TYPE))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(m.render())
}
