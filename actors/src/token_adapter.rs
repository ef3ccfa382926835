//! The TokenAdapter actor: owner of the key ring.
//!
//! Verification itself is pure ([`crate::token::Verifier`]); the actor hands out the immutable
//! verifier as an `Arc` so the hot path can verify inline, without an actor hop, and answers
//! [`VerifyToken`] for callers that prefer a message.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{Identity, now_seconds};
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
