//! `/livez` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::Addr;
use actix_web::{HttpResponse, web};
use sessiond_actors::coordinator::Coordinator;
use sessiond_actors::messages::GetCoordinatorStats;

/// Set once the listeners are bound and the fallback store is loaded.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// 200 while the actor system answers: the Coordinator is asked, with a bound on the wait.
pub async fn livez(coordinator: web::Data<Addr<Coordinator>>) -> HttpResponse {
    let ask = coordinator.send(GetCoordinatorStats);
    match tokio::time::timeout(std::time::Duration::from_secs(2), ask).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(serde_json::json!({"status": "alive"})),
        _ => HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "wedged"})),
    }
}

/// 200 once ready, else 503.
pub async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    if readiness.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "starting"}))
    }
}
