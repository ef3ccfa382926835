//! The circuit breaker that guards every Redis call (contract section 6).
//!
//! Two layers:
//!
//! - [`Breaker`]: a pure state machine over an injected [`Clock`]; no threads, no I/O, so
//!   every transition is unit-testable with a fake clock.
//! - [`SharedBreaker`]: the thread-safe handle used on the hot path. It hands out a [`Permit`]
//!   per admitted call, logs every transition once and sends it, as a [`BreakerEvent`], to
//!   whoever supervises the breakers (the Coordinator), in the order the transitions happened.
//!
//! States (`closed` / `open` / `half_open`, see [`BreakerState`]):
//!
//! - **Closed**: every call passes. `failure_threshold` consecutive failures (a timeout is a
//!   failure) open it; a success resets the count.
//! - **Open**: every call is rejected until `open_for` has passed since it opened; the next
//!   [`Breaker::allow`] then moves it to half-open and admits that call as a trial.
//! - **HalfOpen**: at most `success_threshold` trial calls may be in flight at once (so a hung
//!   server cannot absorb unlimited requests); `success_threshold` successes close it, any
//!   failure opens it again for a fresh `open_for` (a new trip).
//!
//! Only calls that were admitted are reported: a call rejected by [`Breaker::allow`] never ran
//! and must not be reported as a success or a failure.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

/// A source of time for the breaker: a monotonic clock for the open period and the wall clock
/// for the `opened_at` / `retry_at` fields of the status.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds on a monotonic clock (any origin; it never goes backwards).
    fn now_ms(&self) -> u64;
    /// The wall clock, in seconds since the Unix epoch.
    fn unix_seconds(&self) -> i64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }

    fn unix_seconds(&self) -> i64 {
        (**self).unix_seconds()
    }
}

/// The real clock: [`Instant`] for the monotonic part, [`SystemTime`] for the Unix time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_seconds(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
        }
    }
}

/// The tuning of a breaker, from the `[breaker]` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures (or timeouts) that open a closed breaker
    /// (`breaker.failure_threshold`; 0 is treated as 1).
    pub failure_threshold: u32,
    /// Successes in half-open that close the breaker, which is also the number of trial calls
    /// allowed in flight at once (`breaker.success_threshold`; 0 is treated as 1).
    pub success_threshold: u32,
    /// How long the breaker stays open before it lets trial calls through
    /// (`breaker.open_seconds`).
    pub open_for: Duration,
}

impl BreakerSettings {
    fn failure_threshold(&self) -> u32 {
        self.failure_threshold.max(1)
    }

    fn success_threshold(&self) -> u32 {
        self.success_threshold.max(1)
    }

    fn open_ms(&self) -> u64 {
        u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX)
    }

    /// `open_for` in whole seconds, rounded up (for `retry_at`).
    fn open_secs_ceil(&self) -> i64 {
        let secs = self.open_for.as_secs() + u64::from(self.open_for.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }
}

/// The state of a breaker, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are rejected.
    Open,
    /// A limited number of trial calls pass.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `sessiond_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
}

/// One breaker in the `circuit-breaker-status` answer (contract section 4); exactly its fields.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// The current state.
    pub state: BreakerState,
    /// Failures since the last success (kept while open: how many opened it).
    pub consecutive_failures: u32,
    /// How many times the breaker has opened (from closed or from half-open) since start.
    pub total_trips: u64,
    /// Unix seconds of the last opening; `null` when closed (kept while half-open).
    pub opened_at: Option<i64>,
    /// Unix seconds from which trial calls are let through; `null` when closed (kept while
    /// half-open, when it is in the past).
    pub retry_at: Option<i64>,
}

/// Identifies the phase in which a call was admitted, so that its verdict is ignored if the
/// breaker has changed state since (see [`Breaker::report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
}

/// The answer of [`Breaker::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the call may run. When false the call must not run and must not be reported.
    pub allowed: bool,
    /// The transition `allow` made (open → half-open when `open_for` has passed), to be
    /// announced by the caller; `Some` at most once per transition.
    pub transition: Option<Transition>,
    /// For an admitted call, its ticket for [`Breaker::report`]; `None` when rejected.
    pub ticket: Option<Ticket>,
}

/// The verdict on an admitted call, for [`Breaker::report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed or timed out.
    Failure,
    /// The call was given up without a verdict either way (e.g. the client went away): it
    /// frees its half-open trial slot and counts neither as a success nor as a failure.
    Abandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// The pure circuit-breaker state machine (see the module documentation).
///
/// Every transition is returned exactly once, by the call that made it ([`Breaker::allow`],
/// [`Breaker::on_success`], [`Breaker::on_failure`] or [`Breaker::report`]); the caller logs it
/// and tells the Coordinator.
pub struct Breaker<C: Clock> {
    settings: BreakerSettings,
    clock: C,
    phase: Phase,
    consecutive_failures: u32,
    total_trips: u64,
    opened_at: Option<i64>,
    retry_at: Option<i64>,
    /// Bumped on every transition; tickets of an older epoch are stale.
    epoch: u64,
}

impl<C: Clock> fmt::Debug for Breaker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("settings", &self.settings)
            .field("phase", &self.phase)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("total_trips", &self.total_trips)
            .field("opened_at", &self.opened_at)
            .field("retry_at", &self.retry_at)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Breaker<C> {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings, clock: C) -> Self {
        Breaker {
            settings,
            clock,
            phase: Phase::Closed,
            consecutive_failures: 0,
            total_trips: 0,
            opened_at: None,
            retry_at: None,
            epoch: 0,
        }
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The current state (an open breaker whose `open_for` has passed still reads `open` until
    /// the next [`Breaker::allow`]).
    pub fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The status fields of the contract.
    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.state(),
            consecutive_failures: self.consecutive_failures,
            total_trips: self.total_trips,
            opened_at: self.opened_at,
            retry_at: self.retry_at,
        }
    }

    /// Asks to make a call.
    ///
    /// Closed: admitted. Open: rejected until `open_for` has passed since it opened; then the
    /// breaker turns half-open (returned in [`Admission::transition`]) and admits this call as
    /// the first trial. HalfOpen: admitted while fewer than `success_threshold` trials are in
    /// flight, else rejected.
    ///
    /// An admitted call must be reported exactly once ([`Breaker::report`] with the ticket, or
    /// [`Breaker::on_success`] / [`Breaker::on_failure`]); a rejected call must not be reported.
    pub fn allow(&mut self) -> Admission {
        match self.phase {
            Phase::Closed => self.admit(None),
            Phase::Open { until_ms } => {
                if self.clock.now_ms() < until_ms {
                    return Admission { allowed: false, transition: None, ticket: None };
                }
                let t = self.enter(Phase::HalfOpen { in_flight: 1, successes: 0 });
                self.admit(Some(t))
            }
            Phase::HalfOpen { in_flight, successes } => {
                if in_flight >= self.settings.success_threshold() {
                    return Admission { allowed: false, transition: None, ticket: None };
                }
                self.phase = Phase::HalfOpen { in_flight: in_flight + 1, successes };
                self.admit(None)
            }
        }
    }

    /// Reports that a call admitted by [`Breaker::allow`] in the current state succeeded.
    ///
    /// Closed: resets the consecutive failures. HalfOpen: counts a trial success;
    /// `success_threshold` of them close the breaker (returned). Open: ignored (a call admitted
    /// before the breaker opened). Prefer [`Breaker::report`], which also ignores verdicts of
    /// calls admitted before the last transition.
    pub fn on_success(&mut self) -> Option<Transition> {
        match self.phase {
            Phase::Closed => {
                self.consecutive_failures = 0;
                None
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen { in_flight, successes } => {
                self.consecutive_failures = 0;
                let successes = successes.saturating_add(1);
                if successes >= self.settings.success_threshold() {
                    self.opened_at = None;
                    self.retry_at = None;
                    Some(self.enter(Phase::Closed))
                } else {
                    self.phase =
                        Phase::HalfOpen { in_flight: in_flight.saturating_sub(1), successes };
                    None
                }
            }
        }
    }

    /// Reports that a call admitted by [`Breaker::allow`] in the current state failed or timed
    /// out.
    ///
    /// Closed: counts; `failure_threshold` consecutive failures open the breaker (a trip,
    /// returned). HalfOpen: opens it again at once, for a fresh `open_for` (a new trip). Open:
    /// ignored (a call admitted before the breaker opened). Prefer [`Breaker::report`].
    pub fn on_failure(&mut self) -> Option<Transition> {
        match self.phase {
            Phase::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.settings.failure_threshold() {
                    Some(self.trip())
                } else {
                    None
                }
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen { .. } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                Some(self.trip())
            }
        }
    }

    /// Reports the verdict on the call admitted with `ticket`.
    ///
    /// A verdict on a call admitted before the breaker last changed state is ignored: a call
    /// started while closed that fails after the breaker opened does not count again, and one
    /// that succeeds while half-open is not taken for a trial. Otherwise as
    /// [`Breaker::on_success`] / [`Breaker::on_failure`]; [`Outcome::Abandoned`] only frees a
    /// half-open trial slot.
    pub fn report(&mut self, ticket: Ticket, outcome: Outcome) -> Option<Transition> {
        if ticket.epoch != self.epoch {
            return None;
        }
        match outcome {
            Outcome::Success => self.on_success(),
            Outcome::Failure => self.on_failure(),
            Outcome::Abandoned => {
                if let Phase::HalfOpen { in_flight, successes } = self.phase {
                    self.phase =
                        Phase::HalfOpen { in_flight: in_flight.saturating_sub(1), successes };
                }
                None
            }
        }
    }

    fn admit(&self, transition: Option<Transition>) -> Admission {
        Admission { allowed: true, transition, ticket: Some(Ticket { epoch: self.epoch }) }
    }

    /// Opens the breaker now for `open_for`; counts a trip.
    fn trip(&mut self) -> Transition {
        let now_ms = self.clock.now_ms();
        let unix = self.clock.unix_seconds();
        self.total_trips = self.total_trips.saturating_add(1);
        self.opened_at = Some(unix);
        self.retry_at = Some(unix.saturating_add(self.settings.open_secs_ceil()));
        self.enter(Phase::Open { until_ms: now_ms.saturating_add(self.settings.open_ms()) })
    }

    fn enter(&mut self, phase: Phase) -> Transition {
        let from = self.state();
        self.phase = phase;
        self.epoch = self.epoch.wrapping_add(1);
        Transition { from, to: self.state() }
    }
}

/// A transition of a [`SharedBreaker`], sent to its notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    /// The breaker's name (`redis`, `event_bus`).
    pub name: &'static str,
    /// What changed.
    pub transition: Transition,
    /// The breaker right after the transition.
    pub snapshot: BreakerSnapshot,
}

struct Shared {
    name: &'static str,
    breaker: Mutex<Breaker<Arc<dyn Clock>>>,
    notify: UnboundedSender<BreakerEvent>,
}

impl Shared {
    /// Locks the breaker; a poisoned lock is recovered (the state machine has no invariant a
    /// panic between two statements could break badly).
    fn lock(&self) -> MutexGuard<'_, Breaker<Arc<dyn Clock>>> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs and sends a transition. Called with the lock held, so events are sent in the order
    /// the transitions happened.
    fn announce(&self, breaker: &Breaker<Arc<dyn Clock>>, transition: Transition) {
        let snapshot = breaker.snapshot();
        if transition.to == BreakerState::Open {
            log::warn!(
                "circuit breaker `{}` {} -> open after {} consecutive failure(s) (trip {}); \
                 trial calls from unix time {}",
                self.name,
                transition.from,
                snapshot.consecutive_failures,
                snapshot.total_trips,
                snapshot.retry_at.unwrap_or_default(),
            );
        } else {
            log::info!("circuit breaker `{}` {} -> {}", self.name, transition.from, transition.to);
        }
        let event = BreakerEvent { name: self.name, transition, snapshot };
        if self.notify.send(event).is_err() {
            log::debug!("circuit breaker `{}`: nobody listens to its transitions", self.name);
        }
    }
}

/// The thread-safe breaker used on the hot path; cheap to clone (all clones share one state).
///
/// Every transition is logged once (`warn` when it opens, `info` otherwise) and sent once, in
/// order, as a [`BreakerEvent`] on the notifier given to [`SharedBreaker::new`].
#[derive(Clone)]
pub struct SharedBreaker {
    inner: Arc<Shared>,
}

impl fmt::Debug for SharedBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBreaker")
            .field("name", &self.inner.name)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl SharedBreaker {
    /// A closed breaker named `name` that sends its transitions to `notify` (a closed receiver
    /// is tolerated).
    pub fn new(
        name: &'static str,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
        notify: UnboundedSender<BreakerEvent>,
    ) -> Self {
        SharedBreaker {
            inner: Arc::new(Shared {
                name,
                breaker: Mutex::new(Breaker::new(settings, clock)),
                notify,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Asks to make a call: `None` when the breaker rejects it (the call must not run), else a
    /// [`Permit`] on which to report the verdict.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut breaker = self.inner.lock();
        let admission = breaker.allow();
        if let Some(t) = admission.transition {
            self.inner.announce(&breaker, t);
        }
        drop(breaker);
        admission
            .ticket
            .map(|ticket| Permit { shared: Arc::clone(&self.inner), ticket: Some(ticket) })
    }

    /// The status fields of the contract.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.inner.lock().snapshot()
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.inner.lock().state()
    }

    /// Runs `f` through the breaker: rejected at once when the breaker does not admit the call
    /// (`f` is then dropped unpolled); otherwise `f` runs under `timeout`, and its success, its
    /// error or the timeout (a failure) is reported. If the returned future is dropped before
    /// it completes (the caller stopped waiting), the call is abandoned: it counts neither way
    /// and frees its half-open slot.
    pub async fn call<T, E, F>(&self, timeout: Duration, f: F) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let Some(permit) = self.try_acquire() else {
            return Err(CallError::Rejected);
        };
        // A caller that stops waiting (an HTTP client hanging up) says nothing about the
        // server: the call is abandoned, not failed. A hung server is caught by `timeout`.
        let mut guard = AbandonOnDrop(Some(permit));
        let result = tokio::time::timeout(timeout, f).await;
        let Some(permit) = guard.0.take() else {
            // The guard is only emptied here, once.
            return Err(CallError::Rejected);
        };
        match result {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            Ok(Err(e)) => {
                permit.failure();
                Err(CallError::Failed(e))
            }
            Err(_) => {
                permit.failure();
                Err(CallError::TimedOut)
            }
        }
    }
}

/// Abandons the permit it holds when dropped (a cancelled [`SharedBreaker::call`]).
struct AbandonOnDrop(Option<Permit>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.abandon();
        }
    }
}

/// The right to make one call through a [`SharedBreaker`]; report its verdict with
/// [`Permit::success`] or [`Permit::failure`].
///
/// A permit dropped without a verdict counts as a failure, so a cancelled or timed-out future
/// cannot keep a half-open trial slot forever. Use [`Permit::abandon`] for a call given up for
/// reasons that say nothing about the server.
#[must_use = "report the call's verdict; a dropped permit counts as a failure"]
pub struct Permit {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("breaker", &self.shared.name).finish_non_exhaustive()
    }
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.finish(Outcome::Success);
    }

    /// The call failed or timed out.
    pub fn failure(mut self) {
        self.finish(Outcome::Failure);
    }

    /// The call was given up without a verdict (e.g. the client went away): it frees its
    /// half-open trial slot and counts neither way.
    pub fn abandon(mut self) {
        self.finish(Outcome::Abandoned);
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let mut breaker = self.shared.lock();
        if let Some(t) = breaker.report(ticket, outcome) {
            self.shared.announce(&breaker, t);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish(Outcome::Failure);
    }
}

/// Why [`SharedBreaker::call`] did not return a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError<E> {
    /// The breaker rejected the call; it did not run.
    Rejected,
    /// The call did not finish within the timeout (counted as a failure).
    TimedOut,
    /// The call returned this error (counted as a failure).
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected => f.write_str("rejected by the circuit breaker"),
            CallError::TimedOut => f.write_str("timed out"),
            CallError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Failed(e) => Some(e),
            CallError::Rejected | CallError::TimedOut => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    const T0: i64 = 1_764_300_000;

    /// A clock that moves only when told to; Unix time follows the monotonic one.
    #[derive(Debug, Default)]
    struct FakeClock {
        ms: AtomicU64,
    }

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.ms.fetch_add(u64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.ms.load(Ordering::SeqCst)
        }

        fn unix_seconds(&self) -> i64 {
            T0 + i64::try_from(self.now_ms() / 1000).unwrap()
        }
    }

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 3,
            success_threshold: 2,
            open_for: Duration::from_secs(5),
        }
    }

    fn breaker() -> (Breaker<Arc<FakeClock>>, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::default());
        (Breaker::new(settings(), Arc::clone(&clock)), clock)
    }

    const CLOSED_TO_OPEN: Transition =
        Transition { from: BreakerState::Closed, to: BreakerState::Open };
    const OPEN_TO_HALF: Transition =
        Transition { from: BreakerState::Open, to: BreakerState::HalfOpen };
    const HALF_TO_OPEN: Transition =
        Transition { from: BreakerState::HalfOpen, to: BreakerState::Open };
    const HALF_TO_CLOSED: Transition =
        Transition { from: BreakerState::HalfOpen, to: BreakerState::Closed };

    /// Admits a call, asserting it is admitted without a transition, and reports `outcome`.
    fn run(b: &mut Breaker<Arc<FakeClock>>, outcome: Outcome) -> Option<Transition> {
        let a = b.allow();
        assert!(a.allowed);
        assert_eq!(a.transition, None);
        b.report(a.ticket.unwrap(), outcome)
    }

    /// Trips a fresh breaker (3 failures) at the clock's current time.
    fn trip(b: &mut Breaker<Arc<FakeClock>>) {
        assert_eq!(run(b, Outcome::Failure), None);
        assert_eq!(run(b, Outcome::Failure), None);
        assert_eq!(run(b, Outcome::Failure), Some(CLOSED_TO_OPEN));
    }

    #[test]
    fn breaker_state_names_and_gauge() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::Closed.gauge(), 0);
        assert_eq!(BreakerState::HalfOpen.gauge(), 1);
        assert_eq!(BreakerState::Open.gauge(), 2);
        for s in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn breaker_new_is_closed_and_admits() {
        let (mut b, _) = breaker();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            b.snapshot(),
            BreakerSnapshot {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                total_trips: 0,
                opened_at: None,
                retry_at: None
            }
        );
        for _ in 0..100 {
            assert_eq!(run(&mut b, Outcome::Success), None);
        }
    }

    #[test]
    fn breaker_failures_below_threshold_stay_closed() {
        let (mut b, _) = breaker();
        assert_eq!(run(&mut b, Outcome::Failure), None);
        assert_eq!(run(&mut b, Outcome::Failure), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().consecutive_failures, 2);
        assert_eq!(b.snapshot().total_trips, 0);
        assert!(b.allow().allowed);
    }

    #[test]
    fn breaker_success_in_between_resets_the_count() {
        let (mut b, _) = breaker();
        run(&mut b, Outcome::Failure);
        run(&mut b, Outcome::Failure);
        assert_eq!(run(&mut b, Outcome::Success), None);
        assert_eq!(b.snapshot().consecutive_failures, 0);
        assert_eq!(run(&mut b, Outcome::Failure), None);
        assert_eq!(run(&mut b, Outcome::Failure), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(run(&mut b, Outcome::Failure), Some(CLOSED_TO_OPEN));
    }

    #[test]
    fn breaker_opens_exactly_at_threshold() {
        let (mut b, clock) = breaker();
        clock.advance(Duration::from_millis(2_500));
        trip(&mut b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.snapshot(),
            BreakerSnapshot {
                state: BreakerState::Open,
                consecutive_failures: 3,
                total_trips: 1,
                opened_at: Some(T0 + 2),
                retry_at: Some(T0 + 7)
            }
        );
    }

    #[test]
    fn breaker_rejects_while_open_until_open_for_has_passed() {
        let (mut b, clock) = breaker();
        trip(&mut b);
        for _ in 0..10 {
            let a = b.allow();
            assert!(!a.allowed);
            assert_eq!(a.transition, None);
            assert_eq!(a.ticket, None);
        }
        clock.advance(Duration::from_millis(4_999));
        let a = b.allow();
        assert!(!a.allowed);
        assert_eq!(a.transition, None);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(1));
        let a = b.allow();
        assert!(a.allowed);
        assert_eq!(a.transition, Some(OPEN_TO_HALF));
        assert!(a.ticket.is_some());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // opened_at / retry_at are kept while half-open.
        let s = b.snapshot();
        assert_eq!((s.opened_at, s.retry_at), (Some(T0), Some(T0 + 5)));
        assert_eq!(s.total_trips, 1);
    }

    #[test]
    fn breaker_half_open_limits_trials_in_flight() {
        let (mut b, clock) = breaker();
        trip(&mut b);
        clock.advance(Duration::from_secs(5));
        let first = b.allow();
        assert_eq!(first.transition, Some(OPEN_TO_HALF));
        let second = b.allow();
        assert!(second.allowed);
        assert_eq!(second.transition, None);
        // success_threshold (2) trials in flight: the rest are rejected.
        for _ in 0..5 {
            let a = b.allow();
            assert!(!a.allowed);
            assert_eq!(a.transition, None);
        }
        // A success frees a slot.
        assert_eq!(b.report(first.ticket.unwrap(), Outcome::Success), None);
        let third = b.allow();
        assert!(third.allowed);
        assert!(!b.allow().allowed);
        // An abandoned trial frees its slot without a verdict.
        assert_eq!(b.report(third.ticket.unwrap(), Outcome::Abandoned), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow().allowed);
        assert!(!b.allow().allowed);
    }

    #[test]
    fn breaker_failure_in_half_open_reopens_with_a_new_trip() {
        let (mut b, clock) = breaker();
        trip(&mut b);
        clock.advance(Duration::from_secs(5));
        let first = b.allow();
        let second = b.allow();
        assert_eq!(b.report(first.ticket.unwrap(), Outcome::Success), None);
        clock.advance(Duration::from_millis(1_200));
        assert_eq!(b.report(second.ticket.unwrap(), Outcome::Failure), Some(HALF_TO_OPEN));
        assert_eq!(
            b.snapshot(),
            BreakerSnapshot {
                state: BreakerState::Open,
                consecutive_failures: 1,
                total_trips: 2,
                opened_at: Some(T0 + 6),
                retry_at: Some(T0 + 11)
            }
        );
        // A fresh open_for from the reopening.
        clock.advance(Duration::from_millis(4_999));
        assert!(!b.allow().allowed);
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.allow().transition, Some(OPEN_TO_HALF));
    }

    #[test]
    fn breaker_success_threshold_successes_close() {
        let (mut b, clock) = breaker();
        trip(&mut b);
        clock.advance(Duration::from_secs(5));
        let first = b.allow();
        let second = b.allow();
        assert_eq!(b.report(first.ticket.unwrap(), Outcome::Success), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.report(second.ticket.unwrap(), Outcome::Success), Some(HALF_TO_CLOSED));
        assert_eq!(
            b.snapshot(),
            BreakerSnapshot {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                total_trips: 1,
                opened_at: None,
                retry_at: None
            }
        );
        // Closed again: it takes a full failure_threshold to open.
        trip(&mut b);
        assert_eq!(b.snapshot().total_trips, 2);
    }

    #[test]
    fn breaker_no_ticket_api_follows_the_same_rules() {
        let (mut b, clock) = breaker();
        assert!(b.allow().allowed);
        assert_eq!(b.on_failure(), None);
        assert!(b.allow().allowed);
        assert_eq!(b.on_failure(), None);
        assert!(b.allow().allowed);
        assert_eq!(b.on_failure(), Some(CLOSED_TO_OPEN));
        // Verdicts arriving while open (calls admitted before the trip) are ignored.
        assert_eq!(b.on_failure(), None);
        assert_eq!(b.on_success(), None);
        assert_eq!(b.snapshot().consecutive_failures, 3);
        clock.advance(Duration::from_secs(5));
        assert_eq!(b.allow().transition, Some(OPEN_TO_HALF));
        assert_eq!(b.on_success(), None);
        assert!(b.allow().allowed);
        assert_eq!(b.on_success(), Some(HALF_TO_CLOSED));
    }

    #[test]
    fn breaker_ignores_stale_verdicts() {
        let (mut b, clock) = breaker();
        // Two calls admitted while closed, still running when the breaker opens.
        let slow_a = b.allow().ticket.unwrap();
        let slow_b = b.allow().ticket.unwrap();
        trip(&mut b);
        assert_eq!(b.report(slow_a, Outcome::Failure), None);
        assert_eq!(b.snapshot().consecutive_failures, 3);
        clock.advance(Duration::from_secs(5));
        let trial = b.allow();
        assert_eq!(trial.transition, Some(OPEN_TO_HALF));
        // A closed-era success is not a trial success, nor does it free a trial slot.
        assert_eq!(b.report(slow_b, Outcome::Success), None);
        assert!(b.allow().allowed);
        assert!(!b.allow().allowed);
        // A closed-era ticket cannot reopen it either.
        assert_eq!(b.report(slow_b, Outcome::Failure), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.snapshot().total_trips, 1);
    }

    #[test]
    fn breaker_zero_thresholds_act_as_one() {
        let clock = Arc::new(FakeClock::default());
        let s = BreakerSettings {
            failure_threshold: 0,
            success_threshold: 0,
            open_for: Duration::ZERO,
        };
        let mut b = Breaker::new(s, Arc::clone(&clock));
        assert_eq!(run(&mut b, Outcome::Failure), Some(CLOSED_TO_OPEN));
        let a = b.allow();
        assert_eq!(a.transition, Some(OPEN_TO_HALF));
        assert!(!b.allow().allowed);
        assert_eq!(b.report(a.ticket.unwrap(), Outcome::Success), Some(HALF_TO_CLOSED));
    }

    #[test]
    fn breaker_snapshot_json_matches_the_contract() {
        let (mut b, _) = breaker();
        let closed = serde_json::to_value(b.snapshot()).unwrap();
        assert_eq!(
            closed,
            serde_json::json!({"state": "closed", "consecutive_failures": 0, "total_trips": 0,
                               "opened_at": null, "retry_at": null})
        );
        trip(&mut b);
        let open = serde_json::to_value(b.snapshot()).unwrap();
        let keys: BTreeSet<&str> = open.as_object().unwrap().keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> =
            ["state", "consecutive_failures", "total_trips", "opened_at", "retry_at"].into();
        assert_eq!(keys, expected);
        assert_eq!(
            open,
            serde_json::json!({"state": "open", "consecutive_failures": 3, "total_trips": 1,
                               "opened_at": T0, "retry_at": T0 + 5})
        );
    }

    #[test]
    fn breaker_system_clock_is_sane() {
        let c = SystemClock::new();
        let a = c.now_ms();
        assert!(c.now_ms() >= a);
        assert!(c.unix_seconds() > T0 - 86_400 * 365);
    }

    fn shared(
        s: BreakerSettings,
    ) -> (SharedBreaker, Arc<FakeClock>, UnboundedReceiver<BreakerEvent>) {
        let clock = Arc::new(FakeClock::default());
        let (tx, rx) = unbounded_channel();
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        (SharedBreaker::new("redis", s, dyn_clock, tx), clock, rx)
    }

    fn drain(rx: &mut UnboundedReceiver<BreakerEvent>) -> Vec<BreakerEvent> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[test]
    fn breaker_shared_sends_each_transition_exactly_once() {
        let (b, clock, mut rx) = shared(settings());
        for _ in 0..2 {
            b.try_acquire().unwrap().failure();
        }
        assert!(drain(&mut rx).is_empty());
        b.try_acquire().unwrap().failure();
        // Rejections while open send nothing.
        for _ in 0..5 {
            assert!(b.try_acquire().is_none());
        }
        clock.advance(Duration::from_secs(5));
        let t1 = b.try_acquire().unwrap();
        let t2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none());
        t1.success();
        t2.success();
        b.try_acquire().unwrap().success();
        let events = drain(&mut rx);
        let got: Vec<(&str, Transition, BreakerState)> =
            events.iter().map(|e| (e.name, e.transition, e.snapshot.state)).collect();
        assert_eq!(
            got,
            vec![
                ("redis", CLOSED_TO_OPEN, BreakerState::Open),
                ("redis", OPEN_TO_HALF, BreakerState::HalfOpen),
                ("redis", HALF_TO_CLOSED, BreakerState::Closed),
            ]
        );
        assert_eq!(events[0].snapshot.total_trips, 1);
        assert_eq!(events[0].snapshot.retry_at, Some(T0 + 5));
        assert_eq!(events[2].snapshot.opened_at, None);
        assert_eq!(b.snapshot(), events[2].snapshot);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.name(), "redis");
    }

    #[test]
    fn breaker_shared_dropped_permit_is_a_failure() {
        let (b, clock, mut rx) = shared(settings());
        for _ in 0..3 {
            drop(b.try_acquire().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.snapshot().consecutive_failures, 3);
        clock.advance(Duration::from_secs(5));
        let t1 = b.try_acquire().unwrap();
        let t2 = b.try_acquire().unwrap();
        drop(t1);
        // The dropped trial reopened the breaker; the other trial's verdict is stale.
        assert_eq!(b.state(), BreakerState::Open);
        t2.success();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.snapshot().total_trips, 2);
        let got: Vec<Transition> = drain(&mut rx).into_iter().map(|e| e.transition).collect();
        assert_eq!(got, vec![CLOSED_TO_OPEN, OPEN_TO_HALF, HALF_TO_OPEN]);
    }

    #[test]
    fn breaker_shared_abandoned_permit_counts_neither_way() {
        let (b, clock, mut rx) = shared(settings());
        for _ in 0..2 {
            b.try_acquire().unwrap().failure();
        }
        b.try_acquire().unwrap().abandon();
        assert_eq!(b.snapshot().consecutive_failures, 2);
        b.try_acquire().unwrap().failure();
        clock.advance(Duration::from_secs(5));
        let t1 = b.try_acquire().unwrap();
        let _t2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_none());
        t1.abandon();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.try_acquire().unwrap().success();
        let got: Vec<Transition> = drain(&mut rx).into_iter().map(|e| e.transition).collect();
        assert_eq!(got, vec![CLOSED_TO_OPEN, OPEN_TO_HALF]);
    }

    #[test]
    fn breaker_shared_survives_a_poisoned_lock() {
        let (b, _, _rx) = shared(settings());
        let inner = Arc::clone(&b.inner);
        let joined = std::thread::spawn(move || {
            let _guard = inner.breaker.lock().unwrap();
            panic!("poison the breaker lock");
        })
        .join();
        assert!(joined.is_err());
        assert!(b.inner.breaker.is_poisoned());
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.snapshot().consecutive_failures, 1);
    }

    #[test]
    fn breaker_shared_tolerates_a_closed_notifier() {
        let (b, _, rx) = shared(settings());
        drop(rx);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn breaker_call_reports_success_failure_and_rejection() {
        let s = BreakerSettings { failure_threshold: 2, ..settings() };
        let (b, _, mut rx) = shared(s);
        let t = Duration::from_secs(5);
        assert_eq!(b.call(t, async { Ok::<_, String>(7) }).await, Ok(7));
        assert_eq!(
            b.call(t, async { Err::<u8, _>("boom".to_owned()) }).await,
            Err(CallError::Failed("boom".to_owned()))
        );
        assert_eq!(b.snapshot().consecutive_failures, 1);
        assert_eq!(b.call(t, async { Ok::<_, String>(1) }).await, Ok(1));
        assert_eq!(b.snapshot().consecutive_failures, 0);
        for _ in 0..2 {
            let _ = b.call(t, async { Err::<u8, _>("boom".to_owned()) }).await;
        }
        assert_eq!(b.state(), BreakerState::Open);
        let polled = std::sync::atomic::AtomicBool::new(false);
        let r = b
            .call(t, async {
                polled.store(true, Ordering::SeqCst);
                Ok::<_, String>(1)
            })
            .await;
        assert_eq!(r, Err(CallError::Rejected));
        assert!(!polled.load(Ordering::SeqCst), "a rejected call must not run");
        assert_eq!(b.snapshot().consecutive_failures, 2);
        let got: Vec<Transition> = drain(&mut rx).into_iter().map(|e| e.transition).collect();
        assert_eq!(got, vec![CLOSED_TO_OPEN]);
    }

    #[tokio::test]
    async fn breaker_call_timeout_is_counted_as_a_failure() {
        let s = BreakerSettings { failure_threshold: 2, ..settings() };
        let (b, _, mut rx) = shared(s);
        let t = Duration::from_millis(20);
        let never = std::future::pending::<Result<(), String>>();
        assert_eq!(b.call(t, never).await, Err(CallError::TimedOut));
        assert_eq!(b.snapshot().consecutive_failures, 1);
        assert_eq!(b.state(), BreakerState::Closed);
        let never = std::future::pending::<Result<(), String>>();
        assert_eq!(b.call(t, never).await, Err(CallError::TimedOut));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[tokio::test]
    async fn breaker_cancelled_call_frees_the_half_open_slot() {
        let s = BreakerSettings { success_threshold: 1, ..settings() };
        let (b, clock, _rx) = shared(s);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        clock.advance(Duration::from_secs(5));
        // The caller gives up (its own timeout) before the call's: the call future is dropped.
        let hung = b.call(Duration::from_secs(3600), std::future::pending::<Result<(), ()>>());
        assert!(tokio::time::timeout(Duration::from_millis(20), hung).await.is_err());
        // Abandoned: no verdict on the server, and the trial slot is free again.
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.snapshot().total_trips, 1);
        b.try_acquire().expect("the slot was freed").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_call_error_display() {
        assert_eq!(CallError::<String>::Rejected.to_string(), "rejected by the circuit breaker");
        assert_eq!(CallError::<String>::TimedOut.to_string(), "timed out");
        assert_eq!(CallError::Failed("boom".to_owned()).to_string(), "boom");
    }
}
