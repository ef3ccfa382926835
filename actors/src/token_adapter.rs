//! The TokenAdapter actor: owner of the key ring.
//!
//! Verification itself is pure ([`crate::token::Verifier`]); the actor hands out the immutable
//! verifier as an `Arc` so the hot path can verify inline, without an actor hop, and answers
//! [`VerifyToken`] for callers that prefer a message.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{Identity, now_seconds};
use crate::health::{CheckHealth, ComponentHealth, HealthStatus, Ping};
use crate::messages::{GetVerifier, VerifyToken};
use crate::token::{TokenError, Verifier};

/// The TokenAdapter actor.
pub struct TokenAdapter {
    verifier: Arc<Verifier>,
}

impl TokenAdapter {
    /// Wraps a verifier built at start.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        TokenAdapter { verifier }
    }
}

impl Actor for TokenAdapter {
    type Context = Context<Self>;
}

impl Handler<VerifyToken> for TokenAdapter {
    type Result = Result<Identity, TokenError>;

    fn handle(&mut self, msg: VerifyToken, _ctx: &mut Context<Self>) -> Self::Result {
        self.verifier.verify(&msg.token, now_seconds())
    }
}

impl Handler<GetVerifier> for TokenAdapter {
    type Result = MessageResult<GetVerifier>;

    fn handle(&mut self, _msg: GetVerifier, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(Arc::clone(&self.verifier))
    }
}

impl Handler<CheckHealth> for TokenAdapter {
    type Result = MessageResult<CheckHealth>;

    /// Healthy while at least one key is loaded (start-up refuses a ring without one, so an
    /// unhealthy adapter means a bug).
    fn handle(&mut self, _msg: CheckHealth, _ctx: &mut Context<Self>) -> Self::Result {
        let s = self.verifier.summary();
        let status = if s.key_count > 0 { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
        MessageResult(ComponentHealth::new(
            status,
            serde_json::json!({
                "key_count": s.key_count,
                "algorithms": s.algorithms,
                "kids": s.kids,
                "layouts": ["legacy", "enhanced"],
            }),
        ))
    }
}

impl Handler<Ping> for TokenAdapter {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}
