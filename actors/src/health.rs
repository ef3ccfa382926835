//! Health and liveness: the typed messages every actor answers, the five components of
//! CONTRACT.md section 4 and how one component's answer is awaited (bounded, so an actor that
//! does not answer in time is reported `unhealthy` instead of hanging the health route).

use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

/// How long a health or liveness question waits for an actor's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// A component's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working as configured.
    Healthy,
    /// Working, with reduced guarantees (e.g. Redis down: answering from the fallback store).
    Degraded,
    /// Not working (or not answering).
    Unhealthy,
}

/// One component's answer: its status and what an operator can act on.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentHealth {
    /// The status.
    pub status: HealthStatus,
    /// Details (counts, states, settings), a JSON object.
    pub details: serde_json::Value,
}

impl ComponentHealth {
    /// A status with details.
    pub fn new(status: HealthStatus, details: serde_json::Value) -> Self {
        ComponentHealth { status, details }
    }

    /// Judged by the worst problem: `unhealthy` when `unhealthy` names one, else `degraded`
    /// when `degraded` does, else `healthy`. The reason goes into `details` (an object) as
    /// `problem`, `null` when healthy.
    pub fn judge(
        unhealthy: Option<&str>,
        degraded: Option<&str>,
        mut details: serde_json::Value,
    ) -> Self {
        let (status, problem) = match (unhealthy, degraded) {
            (Some(p), _) => (HealthStatus::Unhealthy, Some(p)),
            (None, Some(p)) => (HealthStatus::Degraded, Some(p)),
            (None, None) => (HealthStatus::Healthy, None),
        };
        details["problem"] = serde_json::json!(problem);
        ComponentHealth { status, details }
    }
}

/// Asks an actor for its health.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "ComponentHealth")]
pub struct CheckHealth;

/// Asks an actor to answer at all (liveness): the answer proves its mailbox is served.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Ping;

/// Coordinator: watch these actors for liveness (sent once per actor at start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    /// A name for logs and answers (`fallback_store`, `ws_gateway`, ...).
    pub name: &'static str,
    /// Where the pings go.
    pub actor: Recipient<Ping>,
}

/// Coordinator: ping every watched actor now; answers which did not answer in time.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Liveness")]
pub struct CheckLiveness;

/// The answer to [`CheckLiveness`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Liveness {
    /// Watched actors that answered.
    pub answered: usize,
    /// The names of those that did not answer within [`ANSWER_TIMEOUT`].
    pub stalled: Vec<&'static str>,
}

impl Liveness {
    /// True when every watched actor answered.
    pub fn alive(&self) -> bool {
        self.stalled.is_empty()
    }
}

/// The five components of the health routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The TokenAdapter.
    JwtTokenAdapter,
    /// The SessionValidator.
    SessionValidationNormalizer,
    /// The FallbackStore.
    FallbackSessionProvider,
    /// The WsGateway.
    WebsocketAuthGateway,
    /// The Coordinator.
    ServiceBoundaryCoordinator,
}

impl Component {
    /// Every component, in the order of the contract.
    pub const ALL: [Component; 5] = [
        Component::JwtTokenAdapter,
        Component::SessionValidationNormalizer,
        Component::FallbackSessionProvider,
        Component::WebsocketAuthGateway,
        Component::ServiceBoundaryCoordinator,
    ];

    /// The name in the route (`/api/integration-health/{path}`).
    pub fn path(self) -> &'static str {
        match self {
            Component::JwtTokenAdapter => "jwt-token-adapter",
            Component::SessionValidationNormalizer => "session-validation-normalizer",
            Component::FallbackSessionProvider => "fallback-session-provider",
            Component::WebsocketAuthGateway => "websocket-auth-gateway",
            Component::ServiceBoundaryCoordinator => "service-boundary-coordinator",
        }
    }

    /// The key in JSON bodies.
    pub fn key(self) -> &'static str {
        match self {
            Component::JwtTokenAdapter => "jwt_token_adapter",
            Component::SessionValidationNormalizer => "session_validation_normalizer",
            Component::FallbackSessionProvider => "fallback_session_provider",
            Component::WebsocketAuthGateway => "websocket_auth_gateway",
            Component::ServiceBoundaryCoordinator => "service_boundary_coordinator",
        }
    }

    /// The component named by a route segment.
    pub fn from_path(path: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.path() == path)
    }
}

/// Asks one actor for its health, waiting at most [`ANSWER_TIMEOUT`]; no answer (or a
/// stopped actor) is `unhealthy`.
pub async fn ask(actor: &Recipient<CheckHealth>) -> ComponentHealth {
    match tokio::time::timeout(ANSWER_TIMEOUT, actor.send(CheckHealth)).await {
        Ok(Ok(h)) => h,
        Ok(Err(_)) => ComponentHealth::new(
            HealthStatus::Unhealthy,
            serde_json::json!({"error": "the actor has stopped"}),
        ),
        Err(_) => ComponentHealth::new(
            HealthStatus::Unhealthy,
            serde_json::json!({
                "error": format!("no answer within {} ms", ANSWER_TIMEOUT.as_millis())
            }),
        ),
    }
}

/// The overall status: the worst of the components'.
pub fn overall<'a>(components: impl IntoIterator<Item = &'a ComponentHealth>) -> HealthStatus {
    components.into_iter().map(|c| c.status).max().unwrap_or(HealthStatus::Healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_keys_round_trip() {
        for c in Component::ALL {
            assert_eq!(Component::from_path(c.path()), Some(c));
            assert_eq!(c.key(), c.path().replace('-', "_"));
        }
        assert_eq!(Component::from_path("circuit-breaker-status"), None);
    }

    #[test]
    fn judged_by_the_worst_problem() {
        let h = ComponentHealth::judge(Some("down"), Some("slow"), serde_json::json!({"n": 1}));
        assert_eq!(
            (h.status, h.details["problem"].as_str()),
            (HealthStatus::Unhealthy, Some("down"))
        );
        let h = ComponentHealth::judge(None, Some("slow"), serde_json::json!({}));
        assert_eq!(h.status, HealthStatus::Degraded);
        let h = ComponentHealth::judge(None, None, serde_json::json!({"n": 1}));
        assert_eq!((h.status, h.details["problem"].is_null()), (HealthStatus::Healthy, true));
        assert_eq!(h.details["n"], 1);
    }

    #[test]
    fn the_worst_status_wins() {
        let h = |s| ComponentHealth::new(s, serde_json::json!({}));
        let all = [h(HealthStatus::Healthy), h(HealthStatus::Degraded)];
        assert_eq!(overall(&all), HealthStatus::Degraded);
        let all = [h(HealthStatus::Unhealthy), h(HealthStatus::Degraded)];
        assert_eq!(overall(&all), HealthStatus::Unhealthy);
        assert_eq!(overall(&[]), HealthStatus::Healthy);
    }
}
