//! Contract section 4, "Health and operations": the overall health answer and its exact shape,
//! the five component routes with a meaningful detail each (and 404 `not_found` for an unknown
//! one), the circuit-breaker status in embedded and Redis mode, the health, breaker and
//! metrics answers through a Redis outage (`kill -9`) and back, the `test-integration`
//! self-test (API key, report shape, step coverage, no leftovers in the fallback store nor in
//! Redis, also while degraded), `/metrics` as strictly parsed Prometheus text exposition with
//! the contract's names and counters that move with traffic, a wedged actor turning health 503
//! within bounded time, and `/livez` / `/readyz`.
//!
//! Everything is black-box: the real binary, a real `redis-server` from the harness, and
//! polling on observable state (never a sleep) for anything that happens in the background.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Config, Daemon, Resp, poll_until, send_signal};
use crate::redis_server::{RedisServer, steady_redis_config, token, unique_prefix};
use crate::tokens::now;
use crate::ws_client::WsRequest;

/// How long background state (breakers, mode, bus subscription, gauges) gets to settle.
const SETTLE: Duration = Duration::from_secs(20);

/// The component route names and their keys in JSON bodies, in the contract's order.
const COMPONENTS: [(&str, &str); 5] = [
    ("jwt-token-adapter", "jwt_token_adapter"),
    ("session-validation-normalizer", "session_validation_normalizer"),
    ("fallback-session-provider", "fallback_session_provider"),
    ("websocket-auth-gateway", "websocket_auth_gateway"),
    ("service-boundary-coordinator", "service_boundary_coordinator"),
];

const STATUSES: [&str; 3] = ["healthy", "degraded", "unhealthy"];

const SELF_TEST: &str = "/api/integration-health/test-integration";

// --- small helpers -------------------------------------------------------------------------

/// The keys of a JSON object (panics when it is not one).
#[track_caller]
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not a JSON object: {v}")).keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every string inside a JSON value (recursively).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// `GET /api/integration-health/`.
fn overall(d: &Daemon) -> Resp {
    d.get("/api/integration-health/").send()
}

/// `GET /api/integration-health/{path}`, asserted 200 and shaped `{component, status,
/// details}`; returns the body.
#[track_caller]
fn component(d: &Daemon, path: &str) -> Value {
    let key = COMPONENTS.iter().find(|(p, _)| *p == path).expect("a known component").1;
    let r = d.get(&format!("/api/integration-health/{path}")).send().expect_status(200);
    let v = r.json();
    assert_eq!(keys(&v), set(&["component", "status", "details"]), "{path}: {v}");
    assert_eq!(v["component"], json!(key), "{path}: {v}");
    assert!(STATUSES.contains(&v["status"].as_str().unwrap_or("")), "{path}: status {v}");
    assert!(v["details"].is_object(), "{path}: details is not an object: {v}");
    v
}

/// `GET /api/integration-health/circuit-breaker-status`, asserted 200 and shaped per contract.
#[track_caller]
fn breakers(d: &Daemon) -> Value {
    let r = d.get("/api/integration-health/circuit-breaker-status").send().expect_status(200);
    let v = r.json();
    assert_eq!(keys(&v), set(&["summary", "breakers"]), "{v}");
    let s = &v["summary"];
    assert_eq!(keys(s), set(&["total_breakers", "active_breakers", "degraded_mode"]), "{v}");
    let all = keys(&v["breakers"]);
    assert_eq!(s["total_breakers"], json!(all.len()), "{v}");
    let mut active = 0;
    for name in &all {
        let b = &v["breakers"][name];
        assert_eq!(
            keys(b),
            set(&["state", "consecutive_failures", "total_trips", "opened_at", "retry_at"]),
            "breaker {name}: {v}"
        );
        let state = b["state"].as_str().unwrap_or("");
        assert!(["closed", "open", "half_open"].contains(&state), "breaker {name}: {v}");
        assert!(b["consecutive_failures"].is_u64() && b["total_trips"].is_u64(), "{v}");
        active += usize::from(state != "closed");
    }
    assert_eq!(s["active_breakers"], json!(active), "active_breakers counts the not closed: {v}");
    assert!(s["degraded_mode"].is_boolean(), "{v}");
    v
}

/// Asserts the overall health body's exact shape and internal consistency (the contract's
/// top-level keys, the five components each with status and details, summary counts that
/// match the components, the status the worst of theirs).
#[track_caller]
fn check_overall(v: &Value) {
    assert_eq!(
        keys(v),
        set(&["status", "mode", "instance_id", "timestamp", "components", "integration_summary"]),
        "{v}"
    );
    let component_keys: Vec<&str> = COMPONENTS.iter().map(|(_, k)| *k).collect();
    assert_eq!(keys(&v["components"]), set(&component_keys), "{v}");
    let mut counts = BTreeMap::new();
    for key in component_keys {
        let c = &v["components"][key];
        assert_eq!(keys(c), set(&["status", "details"]), "component {key}: {v}");
        let status = c["status"].as_str().unwrap_or("");
        assert!(STATUSES.contains(&status), "component {key} status: {v}");
        assert!(c["details"].is_object(), "component {key} details: {v}");
        *counts.entry(status).or_insert(0u64) += 1;
    }
    let s = &v["integration_summary"];
    assert_eq!(
        keys(s),
        set(&[
            "total_components",
            "healthy_components",
            "degraded_components",
            "failed_components"
        ]),
        "{v}"
    );
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(s["total_components"], json!(5), "{v}");
    assert_eq!(s["healthy_components"], json!(count("healthy")), "{v}");
    assert_eq!(s["degraded_components"], json!(count("degraded")), "{v}");
    assert_eq!(s["failed_components"], json!(count("unhealthy")), "{v}");
    let worst = if count("unhealthy") > 0 {
        "unhealthy"
    } else if count("degraded") > 0 {
        "degraded"
    } else {
        "healthy"
    };
    assert_eq!(v["status"], json!(worst), "the overall status is the worst component's: {v}");
    assert!(["normal", "degraded"].contains(&v["mode"].as_str().unwrap_or("")), "mode: {v}");
    assert!(!v["instance_id"].as_str().unwrap_or("").is_empty(), "instance_id: {v}");
    let ts = v["timestamp"].as_i64().unwrap_or_else(|| panic!("timestamp not an integer: {v}"));
    assert!((ts - now()).abs() <= 5, "timestamp {ts} is not now ({}), in Unix seconds", now());
}

/// Polls the overall health until `done` holds for its body (bounded by `SETTLE`); every
/// answer on the way must be well-formed. Returns the matching answer and its body.
#[track_caller]
fn wait_overall(d: &Daemon, what: &str, done: impl Fn(&Value) -> bool) -> (Resp, Value) {
    let mut last = None;
    let found = poll_until(SETTLE, || {
        let r = overall(d);
        let v = r.json();
        check_overall(&v);
        if done(&v) {
            return Some((r, v));
        }
        last = Some(v);
        None
    });
    found.unwrap_or_else(|| {
        panic!("health never became {what} within {SETTLE:?}; last {}", last.unwrap_or_default())
    })
}

/// Polls the breaker status until `done` holds (bounded by `SETTLE`); returns it.
#[track_caller]
fn wait_breakers(d: &Daemon, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let found = poll_until(SETTLE, || {
        let v = breakers(d);
        if done(&v) {
            return Some(v);
        }
        last = Some(v);
        None
    });
    found.unwrap_or_else(|| {
        panic!("breakers never {what} within {SETTLE:?}; last {}", last.unwrap_or_default())
    })
}

/// Polls `/metrics` until the sample `name{labels}` equals `value` (bounded by `SETTLE`).
#[track_caller]
fn wait_metric(d: &Daemon, name: &str, labels: &[(&str, &str)], value: f64) {
    let mut last = None;
    let found = poll_until(SETTLE, || {
        last = scrape(d).get(name, labels);
        (last == Some(value)).then_some(())
    });
    assert!(found.is_some(), "{name}{labels:?} never became {value} within {SETTLE:?}: {last:?}");
}

/// `POST …/test-integration` with the API key: asserts 200, a passed report of the
/// contract's shape whose steps cover both layouts, create/validate/revoke, event delivery
/// and cleanup. Returns the report.
#[track_caller]
fn self_test_passes(d: &Daemon) -> Value {
    let r = d.post(SELF_TEST).key().send();
    assert_eq!(r.status, 200, "the self-test must pass: {} {}", r.status, r.body);
    let v = r.json();
    assert_eq!(keys(&v), set(&["status", "total_duration_ms", "steps"]), "{v}");
    assert_eq!(v["status"], json!("passed"), "{v}");
    let total = v["total_duration_ms"].as_f64().unwrap_or_else(|| panic!("total: {v}"));
    assert!(total >= 0.0, "{v}");
    let steps = v["steps"].as_array().unwrap_or_else(|| panic!("steps: {v}"));
    assert!(!steps.is_empty(), "no steps: {v}");
    let mut names = Vec::new();
    for s in steps {
        assert_eq!(keys(s), set(&["name", "status", "duration_ms", "error"]), "step {s}");
        let name = s["name"].as_str().unwrap_or_else(|| panic!("step name: {s}"));
        assert!(!name.is_empty(), "step {s}");
        assert_eq!(s["status"], json!("passed"), "step {s}");
        assert_eq!(s["error"], Value::Null, "a passed step has error null: {s}");
        let ms = s["duration_ms"].as_f64().unwrap_or_else(|| panic!("duration_ms: {s}"));
        assert!((0.0..=total).contains(&ms), "step {name} took {ms} ms of a {total} ms run");
        names.push(name.to_ascii_lowercase());
    }
    let covers = |words: &[&str]| names.iter().any(|n| words.iter().any(|w| n.contains(w)));
    for (what, words) in [
        ("the legacy layout", &["legacy"][..]),
        ("the enhanced layout", &["enhanced"]),
        ("session create", &["create"]),
        ("session validate", &["validate"]),
        ("session revoke", &["revoke"]),
        ("event delivery", &["deliver", "event"]),
        ("cleanup", &["clean", "purge"]),
    ] {
        assert!(covers(words), "no step covers {what}: {names:?}");
    }
    v
}

/// What the fallback store holds: `sessiond_fallback_sessions`, and the fallback component's
/// `sessions_held`, `revocations_held` and `journal_backlog`.
#[derive(Debug, PartialEq)]
struct Held {
    gauge: Option<f64>,
    sessions: Value,
    revocations: Value,
    journal: Value,
}

fn held(d: &Daemon) -> Held {
    let details = component(d, "fallback-session-provider")["details"].clone();
    Held {
        gauge: scrape(d).get("sessiond_fallback_sessions", &[]),
        sessions: details["sessions_held"].clone(),
        revocations: details["revocations_held"].clone(),
        journal: details["journal_backlog"].clone(),
    }
}

/// Every key of this Redis matching `pattern` (`SCAN … MATCH`, all cursors).
fn scan(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut conn = redis.conn();
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    loop {
        let reply = conn.command(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
        let parts = reply.array().unwrap_or_else(|| panic!("SCAN: {reply:?}"));
        cursor = parts[0].text().unwrap_or_else(|| panic!("SCAN cursor: {reply:?}"));
        for k in parts[1].array().unwrap_or_else(|| panic!("SCAN keys: {reply:?}")) {
            out.push(k.text().unwrap_or_else(|| panic!("SCAN key: {reply:?}")));
        }
        if cursor == "0" {
            return out;
        }
    }
}

/// A daemon on this Redis (the harness's fast breaker settings), once its health is healthy
/// (the event bus is subscribed and both breakers are closed).
fn redis_daemon(redis: &RedisServer, prefix: &str) -> Daemon {
    let d = Daemon::start(steady_redis_config(redis, prefix));
    wait_overall(&d, "healthy at start", |v| v["status"] == json!("healthy"));
    d
}

/// Kills Redis and waits until the daemon says it is degraded.
fn kill_and_wait_degraded(redis: &mut RedisServer, d: &Daemon) -> (Resp, Value) {
    redis.kill9();
    wait_overall(d, "mode degraded", |v| v["mode"] == json!("degraded"))
}

// --- a strict Prometheus text-exposition parser (format 0.0.4) -----------------------------

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the declared families and their types, and every sample.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of the samples named `name` whose labels include all of `labels`; `None` when
    /// no sample matches.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v)))
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like `get`, 0 when absent (for counters whose series appear on first use).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample value: a float, or `NaN`, `+Inf`, `-Inf` spelled exactly so.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// `name{label="value",…} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value with \\ \" \n escapes, then `,` or `}`
            // (a trailing comma is allowed by the format).
            let start = match chars.peek() {
                Some((i, '}')) => {
                    rest = &body[i + 1..];
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated label set".into()),
            };
            let eq = body[start..].find('=').ok_or("label without '='")? + start;
            let lname = &body[start..eq];
            if !is_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {lname} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None | Some((_, '\n')) => return Err(format!("label {lname}: unterminated")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("label {lname}: bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("label {lname} repeated"));
            }
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    rest = &body[i + 1..];
                    break;
                }
                other => return Err(format!("after label {lname}: {other:?}")),
            }
        }
    }
    // Tokens are separated by any run of blanks and tabs.
    let blank = [' ', '\t'];
    let trimmed = rest.trim_start_matches(blank);
    if trimmed.len() == rest.len() {
        return Err("no blank before the value".into());
    }
    let fields: Vec<&str> = trimmed.split(blank).filter(|f| !f.is_empty()).collect();
    let value = match fields.as_slice() {
        [v] => parse_value(v)?,
        [v, ts] => {
            ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
            parse_value(v)?
        }
        _ => return Err(format!("expected `value [timestamp]`, got {trimmed:?}")),
    };
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Parses the whole text strictly: `# HELP`/`# TYPE` lines well-formed, at most one of each
/// per family and before its samples; every sample's name declared by a `# TYPE` of its family
/// (a histogram's `_bucket`, `_sum` and `_count`, a summary's `_sum` and `_count`); a family's
/// lines in one group; no series twice; `le` on buckets only; and every histogram series
/// consistent (cumulative buckets ending with `+Inf` equal to `_count`, a `_sum`).
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    let mut series = BTreeSet::new();
    let mut with_samples = BTreeSet::new();
    let mut done_families = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut enter = |family: &str, current: &mut Option<String>| -> Result<(), String> {
        if current.as_deref() == Some(family) {
            return Ok(());
        }
        if done_families.contains(family) {
            return Err(format!("the lines of {family} are not in one group"));
        }
        if let Some(old) = current.take() {
            done_families.insert(old);
        }
        *current = Some(family.to_string());
        Ok(())
    };
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.first().copied() {
                Some("HELP") => {
                    let name = words.get(1).copied().unwrap_or("");
                    if !is_metric_name(name) || !comment.starts_with(" HELP ") {
                        return Err(at("malformed HELP".into()));
                    }
                    enter(name, &mut current).map_err(at)?;
                    if !helps.insert(name.to_string()) {
                        return Err(at(format!("second HELP for {name}")));
                    }
                }
                Some("TYPE") => {
                    let [_, name, kind] = words[..] else {
                        return Err(at("malformed TYPE".into()));
                    };
                    if !is_metric_name(name)
                        || !comment.starts_with(" TYPE ")
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                    {
                        return Err(at("malformed TYPE".into()));
                    }
                    enter(name, &mut current).map_err(at)?;
                    if with_samples.contains(name) {
                        return Err(at(format!("TYPE of {name} after its samples")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                }
                _ => {} // a plain comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, &types)
            .ok_or_else(|| at(format!("{} is not declared by a preceding # TYPE", sample.name)))?;
        enter(&family, &mut current).map_err(at)?;
        with_samples.insert(family.clone());
        let is_bucket = types[&family] == "histogram" && sample.name.ends_with("_bucket");
        if is_bucket != sample.labels.contains_key("le") && types[&family] != "summary" {
            return Err(at("`le` belongs on histogram buckets, and only there".into()));
        }
        if !series.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        samples.push(sample);
    }
    let exposition = Exposition { types, samples };
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// The family a sample name belongs to, if declared.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
    ] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|k| kinds.contains(&k.as_str()))
        {
            return Some(base.to_string());
        }
    }
    None
}

/// Every histogram series: buckets cumulative by `le`, a `+Inf` bucket equal to `_count`, and
/// a `_sum`.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (family, _) in e.types.iter().filter(|(_, k)| *k == "histogram") {
        let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut labels = s.labels.clone();
            let le = parse_value(&labels.remove("le").unwrap_or_default())
                .map_err(|err| format!("{family}: bucket le: {err}"))?;
            buckets.entry(labels).or_default().push((le, s.value));
        }
        for (labels, mut list) in buckets {
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            if list.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets not cumulative: {list:?}"));
            }
            let last = list.last().copied().unwrap_or((0.0, 0.0));
            let find = |suffix: &str| {
                e.samples
                    .iter()
                    .find(|s| s.name == format!("{family}{suffix}") && s.labels == labels)
                    .map(|s| s.value)
            };
            if last.0 != f64::INFINITY || find("_count") != Some(last.1) || find("_sum").is_none() {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {last:?}, _count {:?}, _sum {:?}",
                    find("_count"),
                    find("_sum")
                ));
            }
        }
    }
    Ok(())
}

/// `GET /metrics`: 200, `text/plain`, parsed strictly (panics with the text otherwise).
#[track_caller]
fn scrape(d: &Daemon) -> Exposition {
    let r = d.get("/metrics").send().expect_status(200);
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/plain"), "/metrics content type {ctype:?}");
    parse_exposition(&r.body)
        .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{}", r.body))
}

// --- the tests ------------------------------------------------------------------------------

#[test]
fn exposition_parser_accepts_the_format_and_rejects_malformed_text() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\n\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\n\
                h_count 2\n# TYPE g gauge\ng -1.5e3 1700000000\n# TYPE t gauge\nt \t 4\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(e.get("a_total", &[("y", "q\"\n")]), Some(3.0));
    assert_eq!(e.get("h_count", &[]), Some(2.0));
    assert_eq!(e.get("g", &[]), Some(-1500.0));
    assert_eq!(e.get("t", &[]), Some(4.0));
    for (bad, why) in [
        ("a 1\n", "no TYPE"),
        ("# TYPE a gauge\na one\n", "not a number"),
        ("# TYPE a gauge\na inf\n", "not the exposition's spelling"),
        ("# TYPE a gauge\na{x=1} 1\n", "unquoted label value"),
        ("# TYPE a gauge\na{x=\"\\t\"} 1\n", "bad escape"),
        ("# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", "repeated label"),
        ("# TYPE a gauge\na_bucket{le=\"1\"} 1\n", "suffix of a non-histogram"),
        ("# TYPE a gauge\n# TYPE a gauge\na 1\n", "two TYPEs"),
        ("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", "not grouped"),
        ("# TYPE a gauge\na 1\na 1\n", "same series twice"),
        ("# TYPE a wibble\na 1\n", "unknown type"),
        ("# TYPE a gauge\na\n", "no value"),
        ("# TYPE a gauge\na 1 2 3\n", "more than value and timestamp"),
        ("# TYPE a gauge\na 1 1.5\n", "a timestamp is an integer"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\nh_sum 1\n", "count mismatch"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\nh_sum 1\n", "no +Inf"),
        ("# TYPE a gauge\na 1", "no final newline"),
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?} ({why})");
    }
}

#[test]
fn overall_health_in_embedded_mode_has_the_contract_shape() {
    let d = Daemon::start(Config::default());
    let r = overall(&d).expect_status(200);
    let id = r.header("x-request-id").unwrap_or_default();
    assert!(!id.is_empty(), "no X-Request-Id: {:?}", r.headers);
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("application/json"), "content type {ctype:?}");
    let v = r.json();
    check_overall(&v);
    assert_eq!(v["status"], json!("healthy"), "{v}");
    assert_eq!(v["mode"], json!("normal"), "{v}");
    assert_eq!(v["integration_summary"]["healthy_components"], json!(5), "{v}");
    // The instance id is the coordinator's.
    let coordinator = component(&d, "service-boundary-coordinator");
    assert_eq!(v["instance_id"], coordinator["details"]["instance_id"], "{v} vs {coordinator}");

    // Without the trailing slash, and with the client's own request id echoed.
    let r = d.get("/api/integration-health").header("X-Request-Id", "ops-probe.1").send();
    let r = r.expect_status(200);
    assert_eq!(r.header("x-request-id").as_deref(), Some("ops-probe.1"));
    let v2 = r.json();
    check_overall(&v2);
    assert_eq!(v2["status"], json!("healthy"), "{v2}");
    assert_eq!(v2["instance_id"], v["instance_id"], "one instance id: {v} vs {v2}");
}

#[test]
fn component_routes_answer_component_status_and_details() {
    let d = Daemon::start(Config::default());
    for (path, key) in COMPONENTS {
        let v = component(&d, path);
        assert_eq!(v["status"], json!("healthy"), "{key}: {v}");
    }
    let jwt = component(&d, "jwt-token-adapter")["details"].clone();
    assert!(jwt["key_count"].as_u64().is_some_and(|n| n >= 1), "jwt key_count: {jwt}");
    let algs = jwt["algorithms"].as_array().unwrap_or_else(|| panic!("algorithms: {jwt}"));
    assert!(algs.contains(&json!("HS256")), "HS256 is configured: {jwt}");

    let coordinator = component(&d, "service-boundary-coordinator")["details"].clone();
    assert_eq!(coordinator["store"], json!("embedded"), "{coordinator}");

    // The normalizer counts what it answered.
    let before = component(&d, "session-validation-normalizer")["details"].clone();
    assert_eq!(before["store"], json!("embedded"), "{before}");
    assert_eq!(before["mode"], json!("normal"), "{before}");
    let tok = token("u-h1", "h-norm");
    d.create_ok(&tok);
    d.validate(&tok).expect_status(200);
    d.validate("not-a-jwt").expect_status(401);
    let after = component(&d, "session-validation-normalizer")["details"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("validations_valid_total"), 1, "{before} -> {after}");
    assert_eq!(delta("validations_rejected_total"), 1, "{before} -> {after}");
}

#[test]
fn fallback_session_provider_counts_sessions_and_revocations() {
    let d = Daemon::start(Config::default());
    let details = || component(&d, "fallback-session-provider")["details"].clone();
    let v = details();
    assert_eq!((&v["sessions_held"], &v["revocations_held"]), (&json!(0), &json!(0)), "{v}");
    d.create_ok(&token("u-f1", "f-1"));
    d.create_ok(&token("u-f1", "f-2"));
    let v = details();
    assert_eq!((&v["sessions_held"], &v["revocations_held"]), (&json!(2), &json!(0)), "{v}");
    assert_eq!(scrape(&d).get("sessiond_fallback_sessions", &[]), Some(2.0));
    d.revoke("f-1").expect_status(200);
    let v = details();
    assert_eq!((&v["sessions_held"], &v["revocations_held"]), (&json!(1), &json!(1)), "{v}");
    // Tombstones are not counted as sessions.
    assert_eq!(scrape(&d).get("sessiond_fallback_sessions", &[]), Some(1.0));
}

#[test]
fn websocket_auth_gateway_counts_connections() {
    let d = Daemon::start(Config::default());
    let connections = || component(&d, "websocket-auth-gateway")["details"]["connections"].clone();
    assert_eq!(connections(), json!(0));
    let tok = token("u-w1", "w-1");
    d.create_ok(&tok);
    let mut ws = WsRequest::new(&d).bearer(&tok).connect();
    ws.expect_welcome();
    let up = poll_until(SETTLE, || (connections() == json!(1)).then_some(()));
    assert!(up.is_some(), "connections never 1 with one client: {}", connections());
    assert_eq!(scrape(&d).get("sessiond_ws_connections", &[]), Some(1.0));
    ws.close();
    let down = poll_until(SETTLE, || (connections() == json!(0)).then_some(()));
    assert!(down.is_some(), "connections never back to 0: {}", connections());
}

#[test]
fn unknown_component_is_404_not_found() {
    let d = Daemon::start(Config::default());
    for path in ["no-such-component", "jwt_token_adapter", "JWT-TOKEN-ADAPTER"] {
        d.get(&format!("/api/integration-health/{path}")).send().expect_error(404, "not_found");
    }
}

#[test]
fn breaker_status_in_embedded_mode_has_no_breakers() {
    let d = Daemon::start(Config::default());
    let v = breakers(&d);
    assert_eq!(
        v,
        json!({"summary": {"total_breakers": 0, "active_breakers": 0, "degraded_mode": false},
               "breakers": {}})
    );
}

#[test]
fn breaker_status_in_redis_mode_has_two_closed_breakers() {
    let redis = RedisServer::start();
    let d = redis_daemon(&redis, &unique_prefix("health-breakers"));
    let v = breakers(&d);
    assert_eq!(
        v["summary"],
        json!({"total_breakers": 2, "active_breakers": 0,
                                     "degraded_mode": false})
    );
    for name in ["redis", "event_bus"] {
        assert_eq!(
            v["breakers"][name],
            json!({"state": "closed", "consecutive_failures": 0, "total_trips": 0,
                   "opened_at": null, "retry_at": null}),
            "breaker {name}: {v}"
        );
    }
    assert_eq!(keys(&v["breakers"]), set(&["redis", "event_bus"]), "{v}");
    let coordinator = component(&d, "service-boundary-coordinator");
    assert_eq!(coordinator["status"], json!("healthy"), "{coordinator}");
    assert_eq!(coordinator["details"]["store"], json!("redis"), "{coordinator}");
    let m = scrape(&d);
    for name in ["redis", "event_bus"] {
        assert_eq!(m.get("sessiond_breaker_state", &[("breaker", name)]), Some(0.0), "{name}");
    }
}

#[test]
fn redis_outage_degrades_health_breakers_and_metrics_and_recovery_restores_them() {
    let mut redis = RedisServer::start();
    let d = redis_daemon(&redis, &unique_prefix("health-outage"));

    kill_and_wait_degraded(&mut redis, &d);
    // A fresh answer: the one that first said `mode: degraded` may hold component answers
    // taken an instant before the mode changed.
    let r = overall(&d);
    let v = r.json();
    check_overall(&v);
    assert_eq!(v["mode"], json!("degraded"), "{v}");
    assert_eq!(r.status, 200, "degraded is not unhealthy: {}", r.body);
    assert_eq!(v["status"], json!("degraded"), "{v}");
    assert!(v["integration_summary"]["degraded_components"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["integration_summary"]["failed_components"], json!(0), "{v}");
    let coordinator = &v["components"]["service_boundary_coordinator"];
    assert_eq!(coordinator["status"], json!("degraded"), "{v}");
    // A message, not just a state word: some sentence about Redis, a breaker or the mode.
    let said = strings(&coordinator["details"]);
    assert!(
        said.iter().any(|m| {
            let m = m.to_ascii_lowercase();
            m.contains(' ') && ["redis", "breaker", "degraded"].iter().any(|w| m.contains(w))
        }),
        "the coordinator's details must say what is wrong: {said:?}"
    );
    // The component route agrees.
    let c = component(&d, "service-boundary-coordinator");
    assert_eq!(c["status"], json!("degraded"), "{c}");
    let normalizer = component(&d, "session-validation-normalizer");
    assert_eq!(normalizer["details"]["mode"], json!("degraded"), "{normalizer}");

    let b = breakers(&d);
    let redis_b = &b["breakers"]["redis"];
    assert!(["open", "half_open"].contains(&redis_b["state"].as_str().unwrap()), "{b}");
    assert!(redis_b["total_trips"].as_u64() >= Some(1), "{b}");
    let (opened, retry) = (redis_b["opened_at"].as_i64(), redis_b["retry_at"].as_i64());
    assert!(opened.is_some() && retry >= opened, "opened_at/retry_at of an open breaker: {b}");
    assert!((opened.unwrap() - now()).abs() <= 30, "opened_at is recent Unix seconds: {b}");
    assert!(b["summary"]["active_breakers"].as_u64() >= Some(1), "{b}");
    assert_eq!(b["summary"]["degraded_mode"], json!(true), "{b}");
    // Open most of the time (half-open only during a trial call).
    wait_metric(&d, "sessiond_breaker_state", &[("breaker", "redis")], 2.0);
    wait_metric(&d, "sessiond_breaker_state", &[("breaker", "event_bus")], 2.0);
    wait_breakers(&d, "both open", |b| {
        b["breakers"]["redis"]["state"] == json!("open")
            && b["breakers"]["event_bus"]["state"] == json!("open")
            && b["summary"]["active_breakers"] == json!(2)
    });
    // Still live and ready: degraded is a working mode.
    d.get("/livez").send().expect_status(200);
    d.get("/readyz").send().expect_status(200);

    redis.restart();
    let (r, v) = wait_overall(&d, "healthy and normal again", |v| {
        v["status"] == json!("healthy") && v["mode"] == json!("normal")
    });
    assert_eq!(r.status, 200);
    assert_eq!(v["components"]["service_boundary_coordinator"]["status"], json!("healthy"));
    let b = breakers(&d);
    assert_eq!(
        b["summary"],
        json!({"total_breakers": 2, "active_breakers": 0,
                                     "degraded_mode": false})
    );
    for name in ["redis", "event_bus"] {
        let one = &b["breakers"][name];
        assert_eq!(one["state"], json!("closed"), "{b}");
        assert_eq!((&one["opened_at"], &one["retry_at"]), (&Value::Null, &Value::Null), "{b}");
        assert!(one["total_trips"].as_u64() >= Some(1), "trips are counted since start: {b}");
    }
    let m = scrape(&d);
    for name in ["redis", "event_bus"] {
        assert_eq!(m.get("sessiond_breaker_state", &[("breaker", name)]), Some(0.0), "{name}");
    }
}

#[test]
fn test_integration_needs_the_api_key() {
    let d = Daemon::start(Config::default());
    d.post(SELF_TEST).send().expect_error(401, "api_key_required");
    d.post(SELF_TEST)
        .header("X-Api-Key", "not-the-key")
        .send()
        .expect_error(403, "api_key_invalid");
}

#[test]
fn test_integration_passes_in_embedded_mode_and_leaves_nothing_behind() {
    let d = Daemon::start(Config::default());
    // Something real in the store, which the self-test must leave exactly as it is.
    d.create_ok(&token("u-s1", "st-live"));
    d.create_ok(&token("u-s1", "st-gone"));
    d.revoke("st-gone").expect_status(200);
    let before = held(&d);
    assert_eq!(before.gauge, Some(1.0), "{before:?}");
    let revoked = [("event", "session.revoked")];
    let published = scrape(&d).count("sessiond_events_published_total", &revoked);
    // A client of a real session: the self-test's probe event is for the probe only.
    let mut ws = WsRequest::new(&d).bearer(&token("u-s1", "st-live")).connect();
    ws.expect_welcome();
    self_test_passes(&d);
    self_test_passes(&d);
    assert_eq!(held(&d), before, "the self-test left something in the fallback store");
    let frames = ws.ping_barrier("after the self-tests");
    assert!(frames.is_empty(), "a real client got the self-test's frames: {frames:?}");
    let now_published = scrape(&d).count("sessiond_events_published_total", &revoked);
    assert_eq!(now_published, published, "the probe event is not a published auth event");
    assert_eq!(d.list("u-s1").expect_status(200).json()["sessions"].as_array().unwrap().len(), 1);
}

#[test]
fn test_integration_passes_in_redis_mode_and_leaves_no_key() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("health-selftest");
    let d = redis_daemon(&redis, &prefix);
    d.create_ok(&token("u-r1", "rs-live"));
    let before = held(&d);
    self_test_passes(&d);
    assert_eq!(held(&d), before, "the self-test left something in the fallback store");
    let all = scan(&redis, &format!("{prefix}:*"));
    assert!(all.iter().any(|k| k.contains("rs-live")), "SCAN sees the real session: {all:?}");
    let left = scan(&redis, &format!("{prefix}:*self-test*"));
    assert!(left.is_empty(), "the self-test left keys in Redis: {left:?}");
}

#[test]
fn test_integration_passes_while_degraded() {
    let mut redis = RedisServer::start();
    let d = redis_daemon(&redis, &unique_prefix("health-selftest-degraded"));
    kill_and_wait_degraded(&mut redis, &d);
    d.create_ok(&token("u-d1", "sd-live"));
    let before = held(&d);
    self_test_passes(&d);
    let after = held(&d);
    assert_eq!(
        (&after.gauge, &after.sessions, &after.revocations),
        (&before.gauge, &before.sessions, &before.revocations),
        "the self-test left a session or a revocation in the fallback store"
    );
    let v = overall(&d).expect_status(200).json();
    assert_eq!(v["mode"], json!("degraded"), "the self-test ran while degraded: {v}");
}

#[test]
fn test_integration_while_degraded_leaves_nothing_behind_after_recovery() {
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("health-selftest-replay");
    let d = redis_daemon(&redis, &prefix);
    kill_and_wait_degraded(&mut redis, &d);
    // A real write during the outage: its replay shows the journal reached Redis.
    d.create_ok(&token("u-d2", "sd-during"));
    let before = held(&d);
    self_test_passes(&d);
    let after = held(&d);

    redis.restart();
    wait_overall(&d, "healthy and normal again", |v| {
        v["status"] == json!("healthy") && v["mode"] == json!("normal")
    });
    let all = scan(&redis, &format!("{prefix}:*"));
    assert!(all.iter().any(|k| k.contains("sd-during")), "the journal was replayed: {all:?}");
    let left = scan(&redis, &format!("{prefix}:*self-test*"));
    let ttls: Vec<i64> = left.iter().map(|k| redis.ttl(k)).collect();
    assert!(
        left.is_empty(),
        "the degraded self-test's writes were replayed into Redis: {left:?} with TTLs {ttls:?} \
         (fallback store before the self-test {before:?}, after {after:?})"
    );
    assert_eq!(after.journal, before.journal, "the self-test left writes in the journal");
}

#[test]
fn metrics_exposition_has_the_contract_names() {
    let d = Daemon::start(Config::default());
    d.create_ok(&token("u-m1", "m-1"));
    let m = scrape(&d);
    for (family, kind) in [
        ("sessiond_validations_total", "counter"),
        ("sessiond_validation_duration_seconds", "histogram"),
        ("sessiond_ws_connections", "gauge"),
        ("sessiond_events_published_total", "counter"),
        ("sessiond_fallback_sessions", "gauge"),
    ] {
        assert_eq!(m.types.get(family).map(String::as_str), Some(kind), "{family}: {m:?}");
    }
    assert!(m.get("sessiond_validation_duration_seconds_count", &[]).is_some());
    assert_eq!(m.get("sessiond_ws_connections", &[]), Some(0.0));
    assert_eq!(m.get("sessiond_fallback_sessions", &[]), Some(1.0));
    // The revoked-event series exists before the first revoke (a zero, not a gap).
    assert_eq!(
        m.get("sessiond_events_published_total", &[("event", "session.revoked")]),
        Some(0.0)
    );
}

#[test]
fn metrics_count_validations_requests_and_events() {
    const N: usize = 7;
    let d = Daemon::start(Config::default());
    let tok = token("u-m2", "m-2");
    d.create_ok(&tok);
    let valid = [("result", "valid"), ("mode", "normal")];
    let route = "/api/v1/sessions/validate";
    let http_ok = [("route", route), ("method", "POST"), ("status", "200")];
    let http_401 = [("route", route), ("method", "POST"), ("status", "401")];
    let revoked = [("event", "session.revoked")];

    let before = scrape(&d);
    for _ in 0..N {
        d.validate(&tok).expect_status(200);
    }
    let bad = d.validate("not-a-jwt");
    let code = bad.error_code().unwrap_or_else(|| panic!("no error code: {}", bad.body));
    assert_eq!(bad.status, 401, "{}", bad.body);
    let rejected = [("result", code.as_str()), ("mode", "normal")];
    let after = scrape(&d);

    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    assert_eq!(delta("sessiond_validations_total", &valid), N as f64);
    assert_eq!(delta("sessiond_validations_total", &rejected), 1.0, "{code}");
    assert_eq!(delta("sessiond_validations_total", &[]), N as f64 + 1.0, "nothing else counted");
    assert_eq!(
        delta("sessiond_validation_duration_seconds_count", &[]),
        N as f64 + 1.0,
        "every validation is timed"
    );
    assert_eq!(delta("sessiond_http_request_duration_seconds_count", &http_ok), N as f64);
    assert_eq!(delta("sessiond_http_request_duration_seconds_count", &http_401), 1.0);
    assert_eq!(delta("sessiond_events_published_total", &revoked), 0.0);

    d.revoke("m-2").expect_status(200);
    let later = scrape(&d);
    assert_eq!(
        later.count("sessiond_events_published_total", &revoked)
            - after.count("sessiond_events_published_total", &revoked),
        1.0,
        "a revoke raises session.revoked"
    );
}

#[test]
fn a_wedged_actor_makes_health_503_unhealthy_without_hanging() {
    let d = Daemon::builder(Config::default()).env("SESSIOND_TEST_HOOKS", "1").start();
    wait_overall(&d, "healthy", |v| v["status"] == json!("healthy"));
    send_signal(d.pid(), libc::SIGUSR2);
    let start = Instant::now();
    let (r, v) = wait_overall(&d, "unhealthy", |v| v["status"] == json!("unhealthy"));
    assert_eq!(r.status, 503, "unhealthy is 503: {}", r.body);
    let fallback = &v["components"]["fallback_session_provider"];
    assert_eq!(fallback["status"], json!("unhealthy"), "{v}");
    assert!(v["integration_summary"]["failed_components"].as_u64() >= Some(1), "{v}");
    // Bounded: one health answer takes about the actors' answer timeout, not forever.
    let t = Instant::now();
    let r = d.get("/api/integration-health/fallback-session-provider").send();
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["status"], json!("unhealthy"), "{}", r.body);
    let t = Instant::now();
    d.get("/livez").send().expect_status(503);
    assert!(t.elapsed() < Duration::from_secs(5), "livez took {:?}", t.elapsed());
    // The other components still answer.
    component(&d, "jwt-token-adapter");
    eprintln!("unhealthy {:?} after the wedge", start.elapsed());
}

#[test]
fn livez_and_readyz_answer() {
    let d = Daemon::start(Config::default());
    let r = d.get("/livez").send().expect_status(200);
    assert_eq!(r.json()["status"], json!("alive"), "{}", r.body);
    assert!(r.header("x-request-id").is_some());
    d.get("/readyz").send().expect_status(200);
}
