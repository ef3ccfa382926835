//! The SessionValidator actor: the one pipeline every route and the WebSocket handshake use:
//! token → identity → session → the contract's answer.
//!
//! One instance runs on each HTTP worker's arbiter, so a request reaches it without crossing
//! threads; tokens are verified inline with the shared [`Verifier`] snapshot, lookups read the
//! fallback store inline (or ask Redis), and writes go through [`Backend`].

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::backend::Backend;
pub use crate::backend::DegradedPolicy;
use crate::domain::{
    EventKind, Identity, NewSession, Session, UnixSeconds, now_millis, now_seconds,
};
use crate::health::{CheckHealth, ComponentHealth, HealthStatus, Ping};
use crate::messages::{
    CreateFromToken, FetchSession, ListForUser, RaiseEvent, RefreshById, RevokeById, RevokeForUser,
    Validate,
};
use crate::metrics::metrics;
use crate::store::{CreateOutcome, Lookup, RefreshOutcome, StoreError};
use crate::token::{TokenError, Verifier};

/// The most attributes a session may carry.
pub const MAX_ATTRIBUTES: usize = 32;
/// The longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// The longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// The longest session or user id accepted in a path, in bytes (the verifier's own bound).
pub const MAX_ID_BYTES: usize = 256;

/// Settings the pipeline needs from the configuration.
#[derive(Clone, Debug)]
pub struct ValidatorSettings {
    /// `sessions.max_ttl_seconds`.
    pub max_ttl_seconds: i64,
    /// `tokens.refresh_window_seconds`.
    pub refresh_window_seconds: i64,
    /// `degraded.policy`.
    pub degraded_policy: DegradedPolicy,
}

/// Which path answered a validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The session store answered.
    Normal,
    /// The fallback path answered (Redis unavailable).
    Degraded,
}

impl Mode {
    /// The lowercase name used in JSON and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Degraded => "degraded",
        }
    }
}

/// A successful validation.
#[derive(Clone, Debug, Serialize)]
pub struct Validation {
    /// Always true; failures are [`Failure`]s.
    pub valid: bool,
    /// Which path answered.
    pub mode: Mode,
    /// The token's normalized identity.
    pub identity: Identity,
    /// The session, `None` only in degraded mode for a session this instance does not know.
    pub session: Option<Session>,
    /// Whether the token expires within the refresh window.
    pub refresh_recommended: bool,
}

/// The answer to a create.
#[derive(Clone, Debug)]
pub struct Created {
    /// The stored session.
    pub session: Session,
    /// False when the same session already existed.
    pub created: bool,
}

/// Why a request through the pipeline failed; the daemon maps each to the contract's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The token was rejected.
    Token(TokenError),
    /// No such live session.
    SessionNotFound,
    /// The session was revoked.
    SessionRevoked,
    /// The session id is already held by another user's session.
    SessionConflict,
    /// The store holds as many entries as it may.
    StoreFull,
    /// The store could not make a write durable.
    Store(StoreError),
    /// A parameter is out of its bounds.
    BadRequest(String),
    /// Degraded, the session is unknown here, and `degraded.policy = "fail_closed"`.
    Unavailable,
}

impl Failure {
    /// The contract's error code for this failure (as `validate` answers it).
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Token(e) => e.code(),
            Failure::SessionNotFound => "session_not_found",
            Failure::SessionRevoked => "session_revoked",
            Failure::SessionConflict | Failure::BadRequest(_) => "bad_request",
            Failure::StoreFull | Failure::Store(_) => "store_unavailable",
            Failure::Unavailable => "store_unavailable",
        }
    }
}

/// What every SessionValidator instance shares.
pub struct Pipeline {
    /// The key ring snapshot, used inline.
    pub verifier: Arc<Verifier>,
    /// Where reads and writes go (embedded store, or Redis with the fallback store).
    pub backend: Backend,
    /// Where auth events go.
    pub events: Recipient<RaiseEvent>,
    /// Settings from the configuration.
    pub settings: ValidatorSettings,
}

/// The SessionValidator actor (one per HTTP worker).
pub struct SessionValidator {
    pipeline: Arc<Pipeline>,
}

impl SessionValidator {
    /// A validator over the shared pipeline.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        SessionValidator { pipeline }
    }
}

impl Actor for SessionValidator {
    type Context = Context<Self>;
}

fn check_id(kind: &str, id: &str) -> Result<(), Failure> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Failure::BadRequest(format!("{kind} must be 1 to {MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

fn check_ttl(ttl: Option<i64>) -> Result<(), Failure> {
    match ttl {
        Some(t) if t < 1 => Err(Failure::BadRequest("ttl_seconds must be at least 1".into())),
        _ => Ok(()),
    }
}

fn check_attributes(attrs: &BTreeMap<String, String>) -> Result<(), Failure> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(Failure::BadRequest(format!("at most {MAX_ATTRIBUTES} attributes")));
    }
    for (k, v) in attrs {
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES {
            return Err(Failure::BadRequest(format!(
                "attribute names must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes"
            )));
        }
        if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(Failure::BadRequest(format!(
                "attribute values must be at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// The expiry a create asks for: now + ttl when given, else the token's `exp`, never more
/// than `max_ttl` ahead of now.
pub fn create_expiry(
    identity: &Identity,
    ttl: Option<i64>,
    now: UnixSeconds,
    max_ttl: i64,
) -> UnixSeconds {
    let wanted = match ttl {
        Some(t) => now.saturating_add(t),
        None => identity.expires_at,
    };
    wanted.min(now.saturating_add(max_ttl))
}

impl Pipeline {
    fn verify(&self, token: &str, now: UnixSeconds) -> Result<Identity, Failure> {
        self.verifier.verify(token, now).map_err(Failure::Token)
    }

    fn raise(
        &self,
        event: EventKind,
        session_id: Option<String>,
        user_id: Option<String>,
        data: serde_json::Value,
    ) {
        self.events.do_send(RaiseEvent { event, session_id, user_id, data, at_ms: None });
    }

    /// Token → identity → session, the answer of `POST /api/v1/sessions/validate`; counted
    /// and timed in the metrics.
    pub async fn validate(&self, token: &str) -> Result<Validation, Failure> {
        let started = std::time::Instant::now();
        let result = self.validate_uncounted(token).await;
        let (label, degraded) = match &result {
            Ok(v) => ("valid", v.mode == Mode::Degraded),
            Err(f) => (f.code(), self.backend.is_degraded()),
        };
        metrics().validation(label, degraded, started.elapsed().as_secs_f64());
        result
    }

    async fn validate_uncounted(&self, token: &str) -> Result<Validation, Failure> {
        let now = now_seconds();
        let identity = self.verify(token, now)?;
        let answer = self.backend.lookup(&identity.session_id, now).await;
        let mode = if answer.degraded { Mode::Degraded } else { Mode::Normal };
        let session = match answer.value {
            Lookup::Live(s) if s.user_id == identity.user_id => Some(s),
            // A token naming another user's session id gets nothing from it.
            Lookup::Live(_) => return Err(Failure::SessionNotFound),
            Lookup::Revoked => return Err(Failure::SessionRevoked),
            Lookup::Missing if !answer.degraded => return Err(Failure::SessionNotFound),
            // Degraded, and this instance does not know the session: a revoke-all it knows of
            // that came at or after the token was issued revokes it (a session created
            // elsewhere before it); otherwise the policy decides.
            Lookup::Missing
                if self.backend.revoked_by_watermark(
                    &identity.user_id,
                    identity.issued_at.unwrap_or(now),
                    now,
                ) =>
            {
                return Err(Failure::SessionRevoked);
            }
            Lookup::Missing => match self.settings.degraded_policy {
                DegradedPolicy::JwtOnly => None,
                DegradedPolicy::FailClosed => return Err(Failure::Unavailable),
            },
        };
        let refresh_recommended =
            identity.expires_at.saturating_sub(now) <= self.settings.refresh_window_seconds;
        Ok(Validation { valid: true, mode, identity, session, refresh_recommended })
    }

    async fn create(&self, msg: CreateFromToken) -> Result<Created, Failure> {
        check_ttl(msg.ttl_seconds)?;
        check_attributes(&msg.attributes)?;
        let now = now_seconds();
        let identity = self.verify(&msg.token, now)?;
        let expires_at =
            create_expiry(&identity, msg.ttl_seconds, now, self.settings.max_ttl_seconds);
        let new = NewSession { identity, expires_at, attributes: msg.attributes };
        match self.backend.create(new, now).await.map_err(Failure::Store)?.value {
            CreateOutcome::Created(session) => Ok(Created { session, created: true }),
            CreateOutcome::Existing(session) => Ok(Created { session, created: false }),
            CreateOutcome::Revoked => Err(Failure::SessionRevoked),
            CreateOutcome::Conflict => Err(Failure::SessionConflict),
            CreateOutcome::Full => Err(Failure::StoreFull),
        }
    }

    async fn fetch(&self, session_id: String) -> Result<Session, Failure> {
        check_id("session id", &session_id)?;
        match self.backend.get(&session_id, now_seconds()).await {
            Lookup::Live(s) => Ok(s),
            Lookup::Missing | Lookup::Revoked => Err(Failure::SessionNotFound),
        }
    }

    async fn refresh(
        &self,
        session_id: String,
        ttl_seconds: Option<i64>,
    ) -> Result<Session, Failure> {
        check_id("session id", &session_id)?;
        check_ttl(ttl_seconds)?;
        let now = now_seconds();
        match self
            .backend
            .refresh(&session_id, ttl_seconds, now)
            .await
            .map_err(Failure::Store)?
            .value
        {
            RefreshOutcome::Refreshed(s) => {
                self.raise(
                    EventKind::SessionRefreshed,
                    Some(s.session_id.clone()),
                    Some(s.user_id.clone()),
                    serde_json::json!({ "expires_at": s.expires_at }),
                );
                Ok(s)
            }
            RefreshOutcome::Revoked => Err(Failure::SessionRevoked),
            RefreshOutcome::Missing => Err(Failure::SessionNotFound),
        }
    }

    async fn revoke(&self, session_id: String) -> Result<(), Failure> {
        check_id("session id", &session_id)?;
        let outcome =
            self.backend.revoke(&session_id, now_seconds()).await.map_err(Failure::Store)?.value;
        // Every acknowledged DELETE emits the event (CONTRACT section 3), a repeated one too: a
        // socket of that session that slipped past the first (opened in degraded mode on
        // another instance, say) is closed by the next.
        self.raise(
            EventKind::SessionRevoked,
            Some(session_id),
            outcome.user_id,
            serde_json::json!({}),
        );
        Ok(())
    }

    async fn list(&self, user_id: String) -> Result<Vec<Session>, Failure> {
        check_id("user id", &user_id)?;
        Ok(self.backend.list_user(&user_id, now_seconds()).await)
    }

    async fn revoke_user(&self, user_id: String) -> Result<usize, Failure> {
        check_id("user id", &user_id)?;
        // One clock reading for the store (its watermark, in seconds) and the event (`at_ms`):
        // receivers spare sessions created after the event's second, so both must agree.
        let now_ms = now_millis();
        let now = now_ms.div_euclid(1000);
        let ids = self.backend.revoke_user(&user_id, now).await.map_err(Failure::Store)?.value;
        self.events.do_send(RaiseEvent {
            event: EventKind::UserSessionsRevoked,
            session_id: None,
            user_id: Some(user_id),
            data: serde_json::json!({ "revoked": ids.len() }),
            at_ms: Some(now_ms),
        });
        Ok(ids.len())
    }
}

impl Pipeline {
    /// The normalizer's health: the path answers take now, the policy, and what it has
    /// answered since start. `degraded` while the instance is degraded and the policy is
    /// `fail_closed` (unknown sessions are then refused with 503).
    pub fn health(&self) -> ComponentHealth {
        let degraded = self.backend.is_degraded();
        let fail_closed = self.settings.degraded_policy == DegradedPolicy::FailClosed;
        let (mut valid, mut rejected) = (0u64, 0u64);
        for family in prometheus::core::Collector::collect(&metrics().validations) {
            for m in family.get_metric() {
                let n = m.get_counter().get_value() as u64;
                if m.get_label().iter().any(|l| l.name() == "result" && l.value() == "valid") {
                    valid += n;
                } else {
                    rejected += n;
                }
            }
        }
        let status =
            if degraded && fail_closed { HealthStatus::Degraded } else { HealthStatus::Healthy };
        ComponentHealth::new(
            status,
            serde_json::json!({
                "mode": if degraded { "degraded" } else { "normal" },
                "store": if self.backend.redis.is_some() { "redis" } else { "embedded" },
                "degraded_policy": match self.settings.degraded_policy {
                    DegradedPolicy::JwtOnly => "jwt_only",
                    DegradedPolicy::FailClosed => "fail_closed",
                },
                "refresh_window_seconds": self.settings.refresh_window_seconds,
                "max_ttl_seconds": self.settings.max_ttl_seconds,
                "validations_valid_total": valid,
                "validations_rejected_total": rejected,
            }),
        )
    }
}

impl Handler<CheckHealth> for SessionValidator {
    type Result = MessageResult<CheckHealth>;

    fn handle(&mut self, _msg: CheckHealth, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.pipeline.health())
    }
}

impl Handler<Ping> for SessionValidator {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}

macro_rules! delegate {
    ($msg:ty, $out:ty, |$p:ident, $m:ident| $body:expr) => {
        impl Handler<$msg> for SessionValidator {
            type Result = ResponseFuture<$out>;

            fn handle(&mut self, $m: $msg, _ctx: &mut Context<Self>) -> Self::Result {
                let $p = Arc::clone(&self.pipeline);
                Box::pin(async move { $body.await })
            }
        }
    };
}

delegate!(Validate, Result<Validation, Failure>, |p, m| p.validate(&m.token));
delegate!(CreateFromToken, Result<Created, Failure>, |p, m| p.create(m));
delegate!(FetchSession, Result<Session, Failure>, |p, m| p.fetch(m.session_id));
delegate!(RefreshById, Result<Session, Failure>, |p, m| p.refresh(m.session_id, m.ttl_seconds));
delegate!(RevokeById, Result<(), Failure>, |p, m| p.revoke(m.session_id));
delegate!(ListForUser, Result<Vec<Session>, Failure>, |p, m| p.list(m.user_id));
delegate!(RevokeForUser, Result<usize, Failure>, |p, m| p.revoke_user(m.user_id));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Coordinator;
    use crate::domain::AuthEvent;
    use crate::fallback_store::FallbackStore;
    use crate::messages::{Deliver, Subscribe};
    use crate::store::{FsyncMode, StoreCore, StoreOptions};
    use crate::token::{Algorithm, TokenSettings, sign_hmac};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    struct Probe(tokio::sync::mpsc::UnboundedSender<Arc<AuthEvent>>);
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<Deliver> for Probe {
        type Result = ();
        fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
            let _ = self.0.send(msg.0);
        }
    }

    fn token(user: &str, sid: &str, exp_in: i64) -> String {
        let now = now_seconds();
        let claims = serde_json::json!({"sub": user, "email": format!("{user}@example.com"),
            "role": "user", "sid": sid, "iat": now, "exp": now + exp_in});
        sign_hmac(SECRET, Algorithm::HS256, &claims).unwrap()
    }

    struct Rig {
        validator: Addr<SessionValidator>,
        events: tokio::sync::mpsc::UnboundedReceiver<Arc<AuthEvent>>,
        _dir: tempfile::TempDir,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = StoreCore::open(StoreOptions {
            data_dir: dir.path().to_path_buf(),
            fsync: FsyncMode::Never,
            max_entries: 100,
            max_ttl_seconds: 3600,
        })
        .unwrap();
        let reader = core.reader();
        let store = FallbackStore::new(core).start();
        let coordinator = Coordinator::new("test".into()).start();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        coordinator.send(Subscribe(Probe(tx).start().recipient())).await.unwrap();
        let verifier = Verifier::new(TokenSettings {
            algorithms: vec![Algorithm::HS256],
            hmac_secret: Some(SECRET.to_vec()),
            public_keys: vec![],
            issuer: None,
            audience: None,
            leeway_seconds: 0,
        })
        .unwrap();
        let pipeline = Arc::new(Pipeline {
            verifier: Arc::new(verifier),
            backend: Backend {
                store,
                reader,
                redis: None,
                max_ttl_seconds: 3600,
                journal_writes: true,
            },
            events: coordinator.recipient(),
            settings: ValidatorSettings {
                max_ttl_seconds: 3600,
                refresh_window_seconds: 300,
                degraded_policy: DegradedPolicy::JwtOnly,
            },
        });
        Rig { validator: SessionValidator::new(pipeline).start(), events, _dir: dir }
    }

    fn create_msg(token: &str, ttl: Option<i64>) -> CreateFromToken {
        CreateFromToken { token: token.into(), ttl_seconds: ttl, attributes: BTreeMap::new() }
    }

    #[actix_rt::test]
    async fn writes_raise_their_events_and_reads_follow_the_store() {
        let mut r = rig().await;
        let t = token("u1", "s-1", 3600);
        let created = r.validator.send(create_msg(&t, Some(600))).await.unwrap().unwrap();
        assert!(created.created);
        let again = r.validator.send(create_msg(&t, Some(600))).await.unwrap().unwrap();
        assert!(!again.created);
        let v = r.validator.send(Validate { token: t.clone() }).await.unwrap().unwrap();
        assert_eq!(v.mode, Mode::Normal);
        assert_eq!(v.session.unwrap().session_id, "s-1");
        assert!(!v.refresh_recommended);

        let msg = RefreshById { session_id: "s-1".into(), ttl_seconds: Some(900) };
        let s = r.validator.send(msg).await.unwrap().unwrap();
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.event, EventKind::SessionRefreshed);
        assert_eq!(e.session_id.as_deref(), Some("s-1"));
        assert_eq!(e.data["expires_at"], s.expires_at);

        r.validator.send(RevokeById { session_id: "s-1".into() }).await.unwrap().unwrap();
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.event, EventKind::SessionRevoked);
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        let v = r.validator.send(Validate { token: t.clone() }).await.unwrap();
        assert_eq!(v.unwrap_err(), Failure::SessionRevoked);
        // Revoking again is idempotent, and raises the event again (a socket that slipped past
        // the first is closed by the next).
        r.validator.send(RevokeById { session_id: "s-1".into() }).await.unwrap().unwrap();
        let e = r.events.recv().await.unwrap();
        assert_eq!((e.event, e.session_id.as_deref()), (EventKind::SessionRevoked, Some("s-1")));
        let again = r.validator.send(create_msg(&t, None)).await.unwrap();
        assert_eq!(again.unwrap_err(), Failure::SessionRevoked);

        for sid in ["s-2", "s-3"] {
            r.validator.send(create_msg(&token("u2", sid, 3600), None)).await.unwrap().unwrap();
        }
        let n = r.validator.send(RevokeForUser { user_id: "u2".into() }).await.unwrap().unwrap();
        assert_eq!(n, 2);
        let e = r.events.recv().await.unwrap();
        assert_eq!(e.event, EventKind::UserSessionsRevoked);
        assert_eq!(e.data["revoked"], 2);
        assert!(e.id.starts_with("test-"));
    }

    #[actix_rt::test]
    async fn a_token_cannot_borrow_another_users_session() {
        let r = rig().await;
        r.validator.send(create_msg(&token("u1", "shared", 3600), None)).await.unwrap().unwrap();
        let other = token("u2", "shared", 3600);
        let v = r.validator.send(Validate { token: other.clone() }).await.unwrap();
        assert_eq!(v.unwrap_err(), Failure::SessionNotFound);
        let c = r.validator.send(create_msg(&other, None)).await.unwrap();
        assert_eq!(c.unwrap_err(), Failure::SessionConflict);
    }

    #[actix_rt::test]
    async fn refresh_is_recommended_inside_the_window_and_expiry_is_capped() {
        let r = rig().await;
        let t = token("u1", "s-w", 100);
        let c = r.validator.send(create_msg(&t, Some(999_999))).await.unwrap().unwrap();
        assert!(c.session.expires_at <= now_seconds() + 3600);
        let v = r.validator.send(Validate { token: t }).await.unwrap().unwrap();
        assert!(v.refresh_recommended);
        let bad = r.validator.send(create_msg(&token("u1", "s-x", 100), Some(0))).await.unwrap();
        assert!(matches!(bad, Err(Failure::BadRequest(_))));
    }
}
