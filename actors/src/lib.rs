//! The actors of `sessiond` and the pure parts they wrap.
//!
//! - [`token`]: the pure JWT verifier and normalizer ([`token::Verifier`]).
//! - [`store`]: the embedded, durable session store ([`store::StoreCore`] and its log).
//! - [`domain`]: identities, sessions and auth events.
//!
//! The actors themselves live in [`token_adapter`], [`fallback_store`], [`session_validator`],
//! [`coordinator`] and [`ws_gateway`]; their messages in [`messages`].

pub mod backend;
pub mod breaker;
pub mod coordinator;
pub mod domain;
pub mod fallback_store;
pub mod health;
pub mod messages;
pub mod metrics;
pub mod redis_store;
pub mod session_validator;
pub mod store;
pub mod token;
pub mod token_adapter;
pub mod ws_gateway;
