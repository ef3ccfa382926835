//! Benchmarks of the embedded session store: `StoreCore` operations including the log write,
//! and acknowledged writes through the FallbackStore actor with concurrent writers.
//!
//! Run: `cargo bench -p sessiond-actors --bench store_ops` (real files in a temporary
//! directory under `$TMPDIR`, so the disk under it is what is measured).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sessiond_actors::domain::{Identity, NewSession, TokenFormat, UnixSeconds};
use sessiond_actors::fallback_store::FallbackStore;
use sessiond_actors::messages::CreateSession;
use sessiond_actors::store::{CreateOutcome, FsyncMode, StoreCore, StoreOptions};

const NOW: UnixSeconds = 1_764_300_000;
const INTERVAL_1S: FsyncMode = FsyncMode::Interval(Duration::from_secs(1));

fn open(dir: &std::path::Path, fsync: FsyncMode) -> StoreCore {
    StoreCore::open(StoreOptions {
        data_dir: dir.to_path_buf(),
        fsync,
        max_entries: 50_000_000,
        max_ttl_seconds: 86_400,
    })
    .unwrap()
    .0
}

/// A typical session: ~10-character id, ~20-character email, role "user", 1–2 attributes.
fn typical(i: u64, expires_at: UnixSeconds) -> NewSession {
    let mut attributes = BTreeMap::new();
    attributes.insert("ip".to_string(), format!("10.0.{}.{}", i % 250, i / 250 % 250));
    if i.is_multiple_of(2) {
        attributes.insert("ua".to_string(), "mobile".to_string());
    }
    let user = format!("{}", 100_000 + i % 50_000);
    NewSession {
        identity: Identity {
            email: format!("user{user}@example.com"),
            user_id: user,
            role: "user".to_string(),
            session_id: format!("s{i:09}"),
            format: TokenFormat::Enhanced,
            issued_at: Some(NOW),
            expires_at,
        },
        expires_at,
        attributes,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

/// `iters` creates, timed up to the acknowledgement of the last one (so the writer thread's
/// work is included: sustained throughput, not just queueing).
fn creates_until_acked(fsync: FsyncMode, iters: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), fsync);
    let rt = rt();
    let batch: Vec<NewSession> = (0..iters).map(|i| typical(i, NOW + 3600)).collect();
    let now = sessiond_actors::domain::now_seconds();
    let started = Instant::now();
    let mut last = None;
    for n in batch {
        let (outcome, durable) = store.create(n, now);
        black_box(&outcome);
        last = Some(durable);
    }
    if let Some(d) = last {
        rt.block_on(d.wait()).unwrap();
    }
    let elapsed = started.elapsed();
    drop(store);
    elapsed
}

fn bench_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_core");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    g.bench_function("create/interval_1s", |b| {
        b.iter_custom(|iters| creates_until_acked(INTERVAL_1S, iters))
    });
    g.bench_function("create/never", |b| {
        b.iter_custom(|iters| creates_until_acked(FsyncMode::Never, iters))
    });
    g.bench_function("create/always_pipelined", |b| {
        b.iter_custom(|iters| creates_until_acked(FsyncMode::Always, iters))
    });

    // One writer that waits for each acknowledgement: the round trip to the writer thread.
    for (name, fsync) in [("interval_1s", INTERVAL_1S), ("always", FsyncMode::Always)] {
        g.bench_function(BenchmarkId::new("create_await_each", name), |b| {
            b.iter_custom(|iters| {
                let dir = tempfile::tempdir().unwrap();
                let mut store = open(dir.path(), fsync);
                let rt = rt();
                let now = sessiond_actors::domain::now_seconds();
                let batch: Vec<NewSession> = (0..iters).map(|i| typical(i, now + 3600)).collect();
                let started = Instant::now();
                for n in batch {
                    let (_, durable) = store.create(n, now);
                    rt.block_on(durable.wait()).unwrap();
                }
                started.elapsed()
            })
        });
    }

    // Reads and updates against 100k live sessions.
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), INTERVAL_1S);
    let now = sessiond_actors::domain::now_seconds();
    let n = 100_000u64;
    for i in 0..n {
        let (o, _) = store.create(typical(i, now + 3600), now);
        assert!(matches!(o, CreateOutcome::Created(_)));
    }
    let ids: Vec<String> = (0..n).map(|i| format!("s{i:09}")).collect();
    let mut i = 0usize;
    g.bench_function("get/live", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            black_box(store.get(&ids[i], now))
        })
    });
    g.bench_function("get/missing", |b| b.iter(|| black_box(store.get("no-such-session", now))));
    g.bench_function("list_user/2_sessions", |b| {
        b.iter(|| {
            i = (i + 7919) % 50_000;
            black_box(store.list_user(&format!("{}", 100_000 + i), now))
        })
    });
    g.bench_function("refresh/interval_1s", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            black_box(store.refresh(&ids[i], Some(600), now).0)
        })
    });
    let mut next = n;
    g.bench_function("revoke_then_create/interval_1s", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            black_box(store.revoke(&ids[i], now).0);
            next += 1;
            black_box(store.create(typical(next, now + 3600), now).0)
        })
    });
    g.finish();
    drop(store);
}

/// `writers` concurrent tasks sending `CreateSession` to one actor; answers the time until
/// every write of `iters` in total was acknowledged.
fn actor_writers(sys: &SystemRunner, fsync: FsyncMode, writers: u64, iters: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), fsync);
    let elapsed = sys.block_on(async move {
        let addr = FallbackStore::new(store).start();
        let per_writer = iters.div_ceil(writers).max(1);
        let now = sessiond_actors::domain::now_seconds();
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let addr = addr.clone();
                actix_rt::spawn(async move {
                    for k in 0..per_writer {
                        let new = typical(w * per_writer + k, now + 3600);
                        let out = addr
                            .send(CreateSession { new, journal: false })
                            .await
                            .unwrap()
                            .unwrap();
                        assert!(matches!(out, CreateOutcome::Created(_)));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        // Scale to exactly `iters` writes.
        elapsed.mul_f64(iters as f64 / (per_writer * writers) as f64)
    });
    // Let the actor (and its store) go before the directory is removed.
    sys.block_on(async { actix_rt::time::sleep(Duration::from_millis(1)).await });
    elapsed
}

fn bench_actor(c: &mut Criterion) {
    let mut g = c.benchmark_group("fallback_store_actor");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let sys = System::new();
    for (name, fsync) in [("always", FsyncMode::Always), ("interval_1s", INTERVAL_1S)] {
        g.bench_function(BenchmarkId::new("create_64_writers", name), |b| {
            b.iter_custom(|iters| actor_writers(&sys, fsync, 64, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_core, bench_actor);
criterion_main!(benches);
