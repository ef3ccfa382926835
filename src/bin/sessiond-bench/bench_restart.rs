//! `sessiond-bench restart`: start the daemon on a data dir holding N live sessions and report
//! the time until it is ready and its resident memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use sessiond_actors::domain::now_seconds;
use sessiond_actors::store::{CreateOutcome, FsyncMode, StoreCore, StoreOptions};

use crate::bench_store::sample_session;
use crate::procs::{scratch_dir, status_field};

pub fn run(sessions: usize, binary: Option<PathBuf>, dir: Option<PathBuf>) -> Result<(), String> {
    let binary = match binary {
        Some(b) => b,
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("sessiond"),
    };
    let (dir, remove_after) = match dir {
        Some(d) => (d, false),
        None => (scratch_dir("restart")?, true),
    };
    let data = dir.join("data");
    let now = now_seconds();
    let fill = Instant::now();
    {
        let opts = StoreOptions {
            data_dir: data.clone(),
            fsync: FsyncMode::Never,
            max_entries: sessions + 1,
            max_ttl_seconds: 86_400,
        };
        let (mut core, report) = StoreCore::open(opts).map_err(|e| e.to_string())?;
        for i in report.sessions..sessions {
            match core.create(sample_session(i, now), now).0 {
                CreateOutcome::Created(_) => {}
                other => return Err(format!("filling session {i}: {other:?}")),
            }
        }
        core.flush().map_err(|e| e.to_string())?;
    }
    eprintln!("filled {sessions} sessions in {:.1} s", fill.elapsed().as_secs_f64());
    let config = dir.join("sessiond.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[tokens]\nhmac_secret = \"bench-secret-bench-secret-bench-secret\"\n\
             [fallback]\ndata_dir = \"{}\"\nmax_entries = {}\n",
            data.display(),
            sessions + 1000
        ),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.contains("listening on") {
            ready = true;
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rss = status_field(child.id(), "VmRSS:");
    let hwm = status_field(child.id(), "VmHWM:");
    // SAFETY-free stop: the daemon flushes on SIGTERM; kill() sends SIGKILL, fine for a bench.
    let _ = child.kill();
    let _ = child.wait();
    if remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !ready {
        return Err("the daemon exited before it was ready".into());
    }
    println!(
        "RESULT mode=restart sessions={sessions} ready_s={secs:.3} rss_mib={:.1} peak_rss_mib={:.1}",
        rss.unwrap_or(0) as f64 / 1024.0,
        hwm.unwrap_or(0) as f64 / 1024.0
    );
    Ok(())
}
