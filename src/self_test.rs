//! `POST /api/integration-health/test-integration`: an end-to-end run through the actors.
//!
//! Steps: a legacy and an enhanced token are signed and verified (both layouts normalized to
//! one identity); a session is created in the active store (Redis, or the fallback store when
//! embedded or degraded), validated, revoked and seen revoked; a `session.revoked` event gets
//! an id from the Coordinator and reaches a probe subscriber through the delivery path every
//! event takes; finally the session and its revocation are purged.
//!
//! Isolation:
//! - The tokens are signed with an HMAC secret drawn at start for this purpose only and held
//!   by a verifier of its own: the network's verifier never holds it, so nothing the
//!   self-test signs can validate a request, and the self-test cannot be used to mint tokens.
//! - The self-test's session and user ids are [`RESERVED_ID_BYTES`] long, more than any token
//!   can name (the token rules cap `sid`, `jti` and user ids at 256 bytes), so they cannot
//!   collide with a real session or user, and a real revoke-all never touches them.
//! - The probe event is delivered to the probe only: never published on the bus, never given
//!   to the WebSocket gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use sessiond_actors::coordinator::Coordinator;
use sessiond_actors::domain::{NewSession, TokenFormat, now_seconds};
use sessiond_actors::messages::{Deliver, DeliverProbe};
use sessiond_actors::session_validator::Pipeline;
use sessiond_actors::store::{CreateOutcome, Lookup};
use sessiond_actors::token::{Algorithm, TokenSettings, Verifier, sign_hmac};

/// The length of the self-test's session and user ids (tokens cap theirs at 256 bytes).
pub const RESERVED_ID_BYTES: usize = 300;
/// The self-test session's lifetime: if a run is cut short, what it left expires soon.
const SESSION_TTL: i64 = 60;
/// How long the probe subscriber waits for its event.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The most self-tests run at once; a further request is answered as a failed run at once.
const MAX_CONCURRENT: usize = 4;

/// One step's outcome (contract section 4).
#[derive(Serialize, Debug)]
pub struct StepReport {
    pub name: &'static str,
    pub status: &'static str,
    pub duration_ms: f64,
    pub error: Option<String>,
}

/// The whole run's outcome.
#[derive(Serialize, Debug)]
pub struct SelfTestReport {
    pub status: &'static str,
    pub total_duration_ms: f64,
    pub steps: Vec<StepReport>,
}

impl SelfTestReport {
    pub fn passed(&self) -> bool {
        self.status == "passed"
    }
}

/// The self-test's own key and verifier, made once at start.
pub struct SelfTest {
    secret: Vec<u8>,
    verifier: Verifier,
    running: Arc<tokio::sync::Semaphore>,
}

impl SelfTest {
    /// A fresh self-test key (32 random bytes) and its verifier.
    pub fn new() -> Result<SelfTest, String> {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("self-test key: no randomness: {e}"))?;
        let verifier = Verifier::new(TokenSettings {
            algorithms: vec![Algorithm::HS256],
            hmac_secret: Some(secret.clone()),
            public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_seconds: 0,
        })
        .map_err(|e| format!("self-test verifier: {e}"))?;
        Ok(SelfTest {
            secret,
            verifier,
            running: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
        })
    }

    /// Runs every step; a step that fails skips the steps that depend on it, and the cleanup
    /// always runs once a session was created.
    pub async fn run(
        &self,
        pipeline: &Pipeline,
        coordinator: &Addr<Coordinator>,
    ) -> SelfTestReport {
        let started = Instant::now();
        let mut steps = Vec::new();
        let Ok(_permit) = self.running.try_acquire() else {
            steps.push(failed(
                "admission",
                0.0,
                format!("{MAX_CONCURRENT} self-tests already run"),
            ));
            return finish(started, steps, "refused");
        };
        let run_id = random_hex();
        let sid = reserved_id("sid", &run_id);
        let uid = reserved_id("uid", &run_id);

        let legacy = step(&mut steps, "token_legacy_layout", || self.token(TokenFormat::Legacy));
        let enhanced =
            step(&mut steps, "token_enhanced_layout", || self.token(TokenFormat::Enhanced));
        let Some(identity) = enhanced.filter(|_| legacy.is_some()) else {
            return finish(started, steps, "failed");
        };
        let now = now_seconds();
        let mut reserved = identity;
        reserved.session_id = sid.clone();
        reserved.user_id = uid.clone();
        let new = NewSession {
            identity: reserved,
            expires_at: now + SESSION_TTL,
            attributes: Default::default(),
        };
        // Unjournaled: what the fallback store takes for the self-test is never replayed.
        let backend = &pipeline.backend.unjournaled();
        let t = Instant::now();
        let created = match backend.create(new, now).await {
            Ok(a) => match a.value {
                CreateOutcome::Created(_) => Ok(a.degraded),
                other => Err(format!("create answered {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        let degraded = record(&mut steps, "session_create", t, created);
        if let Some(degraded) = degraded {
            let t = Instant::now();
            let seen = match backend.lookup(&sid, now_seconds()).await.value {
                Lookup::Live(s) if s.user_id == uid => Ok(()),
                other => Err(format!("the new session looks up as {other:?}")),
            };
            let validated = record(&mut steps, "session_validate", t, seen).is_some();
            if validated {
                let t = Instant::now();
                let revoked = match backend.revoke(&sid, now_seconds()).await {
                    Ok(_) => match backend.lookup(&sid, now_seconds()).await.value {
                        Lookup::Revoked => Ok(()),
                        other => Err(format!("after the revoke it looks up as {other:?}")),
                    },
                    Err(e) => Err(e.to_string()),
                };
                record(&mut steps, "session_revoke", t, revoked);
            }
            let t = Instant::now();
            let delivered = self.delivery(coordinator, &sid, &uid).await;
            record(&mut steps, "event_delivery", t, delivered);
            let t = Instant::now();
            let purged = match backend.purge(&sid, &uid).await {
                Ok(()) => match backend.lookup(&sid, now_seconds()).await.value {
                    Lookup::Missing => Ok(()),
                    other => Err(format!("after the purge it looks up as {other:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            record(&mut steps, "cleanup", t, purged);
            if degraded {
                log::debug!("self-test ran against the fallback store (degraded mode)");
            }
        }
        finish(started, steps, "failed")
    }

    /// Signs a token of this layout with the self-test key and checks that it verifies to the
    /// identity it was signed with.
    fn token(&self, format: TokenFormat) -> Result<sessiond_actors::domain::Identity, String> {
        let now = now_seconds();
        let claims = match format {
            TokenFormat::Legacy => serde_json::json!({
                "sub": "self-test@sessiond.invalid", "id": 1, "role": "self-test",
                "sid": "self-test", "iat": now, "exp": now + SESSION_TTL,
            }),
            TokenFormat::Enhanced => serde_json::json!({
                "sub": "1", "email": "self-test@sessiond.invalid", "role": "self-test",
                "sid": "self-test", "iat": now, "exp": now + SESSION_TTL,
            }),
        };
        let token = sign_hmac(&self.secret, Algorithm::HS256, &claims)?;
        let id = self.verifier.verify(&token, now).map_err(|e| format!("{}: {e}", e.code()))?;
        if id.user_id != "1" || id.email != "self-test@sessiond.invalid" || id.format != format {
            return Err(format!("normalized to the wrong identity: {id:?}"));
        }
        Ok(id)
    }

    async fn delivery(
        &self,
        coordinator: &Addr<Coordinator>,
        sid: &str,
        uid: &str,
    ) -> Result<(), String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let probe = ProbeSubscriber(tx).start();
        let msg =
            DeliverProbe { to: probe.recipient(), session_id: sid.into(), user_id: uid.into() };
        let id = tokio::time::timeout(DELIVERY_TIMEOUT, coordinator.send(msg))
            .await
            .map_err(|_| "the coordinator did not answer".to_owned())?
            .map_err(|e| format!("the coordinator is gone: {e}"))??;
        let event = tokio::time::timeout(DELIVERY_TIMEOUT, rx.recv())
            .await
            .map_err(|_| "the probe subscriber got nothing".to_owned())?
            .ok_or_else(|| "the probe subscriber stopped".to_owned())?;
        if event.id != id || event.session_id.as_deref() != Some(sid) {
            return Err(format!("the probe got event {} instead of {id}", event.id));
        }
        Ok(())
    }
}

/// Receives the probe event.
struct ProbeSubscriber(tokio::sync::mpsc::Sender<Arc<sessiond_actors::domain::AuthEvent>>);

impl Actor for ProbeSubscriber {
    type Context = Context<Self>;
}

impl Handler<Deliver> for ProbeSubscriber {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let _ = self.0.try_send(msg.0);
        ctx.stop();
    }
}

fn reserved_id(kind: &str, run_id: &str) -> String {
    let mut id = format!("sessiond-self-test.{kind}.{run_id}.");
    while id.len() < RESERVED_ID_BYTES {
        id.push('x');
    }
    id
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Without randomness the ids are still reserved (by length), only not unique per run;
        // concurrent runs are bounded and each cleans up after itself.
        return format!("{:x}", Instant::now().elapsed().as_nanos());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

fn failed(name: &'static str, duration_ms: f64, error: String) -> StepReport {
    StepReport { name, status: "failed", duration_ms, error: Some(error) }
}

fn record<T>(
    steps: &mut Vec<StepReport>,
    name: &'static str,
    t: Instant,
    result: Result<T, String>,
) -> Option<T> {
    let duration_ms = ms(t);
    match result {
        Ok(v) => {
            steps.push(StepReport { name, status: "passed", duration_ms, error: None });
            Some(v)
        }
        Err(e) => {
            log::warn!("self-test step {name} failed: {e}");
            steps.push(failed(name, duration_ms, e));
            None
        }
    }
}

fn step<T>(
    steps: &mut Vec<StepReport>,
    name: &'static str,
    f: impl FnOnce() -> Result<T, String>,
) -> Option<T> {
    let t = Instant::now();
    let r = f();
    record(steps, name, t, r)
}

/// The report; `on_failure` is the metric label of a run that did not pass (`failed`, or
/// `refused` when too many ran at once).
fn finish(started: Instant, steps: Vec<StepReport>, on_failure: &str) -> SelfTestReport {
    let passed = !steps.is_empty() && steps.iter().all(|s| s.status == "passed");
    let status = if passed { "passed" } else { "failed" };
    let label = if passed { "passed" } else { on_failure };
    sessiond_actors::metrics::metrics().self_tests.with_label_values(&[label]).inc();
    SelfTestReport { status, total_duration_ms: ms(started), steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ids_are_longer_than_any_token_can_name() {
        let id = reserved_id("sid", &random_hex());
        assert_eq!(id.len(), RESERVED_ID_BYTES);
        assert!(id.len() > 256);
    }

    #[test]
    fn both_layouts_verify_with_the_self_test_key_only() {
        let st = SelfTest::new().unwrap();
        assert_eq!(st.token(TokenFormat::Legacy).unwrap().format, TokenFormat::Legacy);
        assert_eq!(st.token(TokenFormat::Enhanced).unwrap().format, TokenFormat::Enhanced);
        let other = SelfTest::new().unwrap();
        let claims = serde_json::json!({"sub": "1", "email": "a@b", "role": "r",
            "exp": now_seconds() + 60});
        let token = sign_hmac(&st.secret, Algorithm::HS256, &claims).unwrap();
        assert!(other.verifier.verify(&token, now_seconds()).is_err());
    }
}
