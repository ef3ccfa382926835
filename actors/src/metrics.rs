//! The Prometheus metrics of one `sessiond` process (`GET /metrics`).
//!
//! Counters and histograms are updated where things happen (the pipeline, the coordinator,
//! the gateway, the HTTP middleware). Gauges that mirror state held elsewhere (sessions held,
//! journal backlog, breaker states) are set by whoever renders the exposition, just before it
//! does, from the owners' read views (see [`Metrics::render`]'s callers), so they are never
//! stale and never need a second copy of the state.
//!
//! Every label takes values from a small fixed set (error codes, event names, route patterns,
//! close codes), never from request data, so the number of series is bounded.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets (seconds) for validations and HTTP requests: 50 µs to 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];
/// Buckets (seconds) for journal replays: 1 ms to 60 s.
const REPLAY_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets (seconds) for the event-bus lag: 0.5 ms to 5 s.
const LAG_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// `sessiond_validations_total{result,mode}`: `result` is `valid` or the error code.
    pub validations: IntCounterVec,
    /// `sessiond_validation_duration_seconds`: token check plus session lookup.
    pub validation_duration: Histogram,
    /// `sessiond_breaker_state{breaker}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `sessiond_breaker_transitions_total{breaker,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `sessiond_mode`: 0 normal, 1 degraded.
    pub mode: IntGauge,
    /// `sessiond_ws_connections`: open WebSocket connections.
    pub ws_connections: IntGauge,
    /// `sessiond_ws_closes_total{code}`: WebSocket closes by close code.
    pub ws_closes: IntCounterVec,
    /// `sessiond_events_published_total{event}`: auth events raised by this instance.
    pub events_published: IntCounterVec,
    /// `sessiond_bus_events_received_total{event}`: auth events received from other instances.
    pub bus_received: IntCounterVec,
    /// `sessiond_bus_lag_seconds`: from an event's raising on another instance to its arrival.
    pub bus_lag: Histogram,
    /// `sessiond_fallback_sessions`: live sessions held by the fallback store.
    pub fallback_sessions: IntGauge,
    /// `sessiond_fallback_tombstones`: revocations held by the fallback store.
    pub fallback_tombstones: IntGauge,
    /// `sessiond_fallback_log_bytes`: bytes in the current log generation.
    pub fallback_log_bytes: IntGauge,
    /// `sessiond_fallback_write_errors`: failed log I/O operations since start.
    pub fallback_write_errors: IntGauge,
    /// `sessiond_fallback_last_fsync_timestamp_seconds`: Unix time of the last fsync (0: none).
    pub fallback_last_fsync: IntGauge,
    /// `sessiond_journal_backlog`: writes taken while degraded, not yet replayed into Redis.
    pub journal_backlog: IntGauge,
    /// `sessiond_journal_replay_duration_seconds`: one complete replay.
    pub replay_duration: Histogram,
    /// `sessiond_journal_replayed_total`: journal entries replayed into Redis.
    pub replayed: IntCounter,
    /// `sessiond_http_request_duration_seconds{route,method,status}`.
    pub http_duration: HistogramVec,
    /// `sessiond_self_tests_total{status}`: `test-integration` runs.
    pub self_tests: IntCounterVec,
}

/// Builds a metric and registers it; the names and options are constants of this module, so
/// building cannot fail except on a programming error, which the unit test below catches.
fn reg<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<M>,
) -> M {
    #[allow(clippy::expect_used)]
    let m = made.expect("metric options are constants");
    #[allow(clippy::expect_used)]
    registry.register(Box::new(m.clone())).expect("metric names are unique constants");
    m
}

fn hist(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            registry: r.clone(),
            validations: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "sessiond_validations_total",
                        "Token validations by result and mode.",
                    ),
                    &["result", "mode"],
                ),
            ),
            validation_duration: reg(
                &r,
                Histogram::with_opts(hist(
                    "sessiond_validation_duration_seconds",
                    "Time to validate a token and look its session up.",
                    LATENCY_BUCKETS,
                )),
            ),
            breaker_state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "sessiond_breaker_state",
                        "Breaker state: 0 closed, 1 half-open, 2 open.",
                    ),
                    &["breaker"],
                ),
            ),
            breaker_transitions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("sessiond_breaker_transitions_total", "Breaker state changes."),
                    &["breaker", "to"],
                ),
            ),
            mode: reg(&r, IntGauge::new("sessiond_mode", "Instance mode: 0 normal, 1 degraded.")),
            ws_connections: reg(
                &r,
                IntGauge::new("sessiond_ws_connections", "Open WebSocket connections."),
            ),
            ws_closes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("sessiond_ws_closes_total", "WebSocket connections closed, by code."),
                    &["code"],
                ),
            ),
            events_published: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "sessiond_events_published_total",
                        "Auth events raised by this instance.",
                    ),
                    &["event"],
                ),
            ),
            bus_received: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "sessiond_bus_events_received_total",
                        "Auth events received from other instances on the Redis bus.",
                    ),
                    &["event"],
                ),
            ),
            bus_lag: reg(
                &r,
                Histogram::with_opts(hist(
                    "sessiond_bus_lag_seconds",
                    "Delay from an event's raising on another instance to its arrival here.",
                    LAG_BUCKETS,
                )),
            ),
            fallback_sessions: reg(
                &r,
                IntGauge::new(
                    "sessiond_fallback_sessions",
                    "Live sessions held by the fallback store (revocations not counted).",
                ),
            ),
            fallback_tombstones: reg(
                &r,
                IntGauge::new(
                    "sessiond_fallback_tombstones",
                    "Revocations held by the fallback store.",
                ),
            ),
            fallback_log_bytes: reg(
                &r,
                IntGauge::new(
                    "sessiond_fallback_log_bytes",
                    "Bytes in the fallback store's current log generation.",
                ),
            ),
            fallback_write_errors: reg(
                &r,
                IntGauge::new(
                    "sessiond_fallback_write_errors",
                    "Failed fallback-store log writes, fsyncs and snapshot steps since start.",
                ),
            ),
            fallback_last_fsync: reg(
                &r,
                IntGauge::new(
                    "sessiond_fallback_last_fsync_timestamp_seconds",
                    "Unix time of the fallback store's last successful fsync (0: none yet).",
                ),
            ),
            journal_backlog: reg(
                &r,
                IntGauge::new(
                    "sessiond_journal_backlog",
                    "Writes taken while degraded that are not yet replayed into Redis.",
                ),
            ),
            replay_duration: reg(
                &r,
                Histogram::with_opts(hist(
                    "sessiond_journal_replay_duration_seconds",
                    "Duration of a complete journal replay into Redis.",
                    REPLAY_BUCKETS,
                )),
            ),
            replayed: reg(
                &r,
                IntCounter::new(
                    "sessiond_journal_replayed_total",
                    "Journal entries replayed into Redis.",
                ),
            ),
            http_duration: reg(
                &r,
                HistogramVec::new(
                    hist(
                        "sessiond_http_request_duration_seconds",
                        "HTTP request durations by route pattern, method and status.",
                        LATENCY_BUCKETS,
                    ),
                    &["route", "method", "status"],
                ),
            ),
            self_tests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "sessiond_self_tests_total",
                        "test-integration runs by outcome (passed, failed, refused: too many at once).",
                    ),
                    &["status"],
                ),
            ),
        };
        let info = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("sessiond_build_info", "Always 1; the version in a label."),
                &["version"],
            ),
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
        for kind in crate::domain::EventKind::ALL {
            m.events_published.with_label_values(&[kind.as_str()]);
        }
        m.validations.with_label_values(&["valid", "normal"]);
        #[cfg(target_os = "linux")]
        {
            // Process RSS, CPU, open files: what a soak or a leak alert watches.
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = r.register(Box::new(pc)) {
                log::warn!("process metrics unavailable: {e}");
            }
        }
        m
    }

    /// The exposition in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts one validation.
    pub fn validation(&self, result: &str, degraded: bool, seconds: f64) {
        let mode = if degraded { "degraded" } else { "normal" };
        self.validations.with_label_values(&[result, mode]).inc();
        self.validation_duration.observe(seconds);
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_builds_and_renders() {
        let m = metrics();
        m.validation("valid", false, 0.0002);
        m.validation("token_expired", true, 0.0001);
        m.ws_closes.with_label_values(&["4001"]).inc();
        let text = m.render();
        for name in [
            "sessiond_validations_total{mode=\"normal\",result=\"valid\"}",
            "sessiond_validation_duration_seconds_bucket",
            "sessiond_ws_connections",
            "sessiond_fallback_sessions",
            "sessiond_build_info{version=",
            "sessiond_ws_closes_total{code=\"4001\"}",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
