//! `sessiond-bench store`: acknowledged session writes/s through the FallbackStore actor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use sessiond_actors::domain::{Identity, NewSession, TokenFormat, now_seconds};
use sessiond_actors::fallback_store::FallbackStore;
use sessiond_actors::messages::CreateSession;
use sessiond_actors::store::{CreateOutcome, FsyncMode, StoreCore, StoreOptions};

use crate::procs::scratch_dir;

/// A typical session: ~10-character ids, a ~20-character email, one attribute.
pub fn sample_session(i: usize, now: i64) -> NewSession {
    let mut attributes = BTreeMap::new();
    attributes.insert("ip".to_owned(), "203.0.113.7".to_owned());
    NewSession {
        identity: Identity {
            user_id: format!("u{:08}", i / 3),
            email: format!("user{:08}@example.com", i / 3),
            role: "user".to_owned(),
            session_id: format!("s{i:09}"),
            format: TokenFormat::Enhanced,
            issued_at: Some(now),
            expires_at: now + 3600,
        },
        expires_at: now + 3600,
        attributes,
    }
}

pub fn parse_fsync(name: &str) -> Result<FsyncMode, String> {
    match name {
        "always" => Ok(FsyncMode::Always),
        "interval" => Ok(FsyncMode::Interval(Duration::from_millis(1000))),
        "never" => Ok(FsyncMode::Never),
        other => Err(format!("--fsync: expected always|interval|never, got {other}")),
    }
}

pub fn run(fsync: &str, writers: usize, writes: usize, dir: Option<PathBuf>) -> Result<(), String> {
    let mode = parse_fsync(fsync)?;
    let writers = writers.max(1);
    let (dir, remove_after) = match dir {
        Some(d) => (d, false),
        None => (scratch_dir("store")?, true),
    };
    let opts = StoreOptions {
        data_dir: dir.clone(),
        fsync: mode,
        max_entries: writes + 1,
        max_ttl_seconds: 86_400,
    };
    let (core, _) = StoreCore::open(opts).map_err(|e| e.to_string())?;
    let result = actix_rt::System::new().block_on(async move {
        let arbiter = Arbiter::new();
        let store =
            FallbackStore::start_in_arbiter(&arbiter.handle(), move |_| FallbackStore::new(core));
        let now = now_seconds();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let store = store.clone();
            tasks.push(actix_rt::spawn(async move {
                let mut i = w;
                while i < writes {
                    match store
                        .send(CreateSession { new: sample_session(i, now), journal: false })
                        .await
                    {
                        Ok(Ok(CreateOutcome::Created(_))) => {}
                        other => return Err(format!("write {i}: {other:?}")),
                    }
                    i += writers;
                }
                Ok(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let secs = started.elapsed().as_secs_f64();
        arbiter.stop();
        Ok::<f64, String>(secs)
    });
    if remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let secs = result?;
    println!(
        "RESULT mode=store fsync={fsync} writers={writers} writes={writes} seconds={secs:.3} writes_per_s={:.0}",
        writes as f64 / secs
    );
    Ok(())
}
