//! Replays every seed (`seeds/<target>/`) and every saved finding (`regressions/<target>/`)
//! through the fuzz harnesses, on the stable toolchain and without libFuzzer:
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml --test replay
//! ```
//!
//! With `FUZZ_REPLAY_CORPUS=1` the working corpora (`corpus/<target>/`, grown by the fuzz
//! runs and not committed) are replayed too.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("seeds").join(target), root.join("regressions").join(target)];
    if std::env::var_os("FUZZ_REPLAY_CORPUS").is_some() {
        dirs.push(root.join("corpus").join(target));
    }
    let mut n = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{target}: {}", path.display());
            run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "{target}: no seed found (run the gen_seeds example)");
}

#[test]
fn token_verify() {
    replay("token_verify", sessiond_fuzz::token_verify::run);
}

#[test]
fn store_log() {
    replay("store_log", sessiond_fuzz::store_log::run);
}

#[test]
fn ws_frames() {
    replay("ws_frames", sessiond_fuzz::ws_frames::run);
}

/// Findings F1 and F2 (fuzz/README.md, fixed in d100ff4): every saved input is refused as a
/// binary frame (the `ws_frames` replay above also runs them through all the invariants).
#[test]
fn ws_frames_findings_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions").join("ws_frames");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let r = sessiond_fuzz::frames::decode_binary(&data);
        assert!(r.is_err(), "{} is accepted: {r:?}", path.display());
        n += 1;
    }
    assert!(n >= 4);
}

/// The harnesses are not vacuous: the seeds reach the paths they were made for.
#[test]
fn seeds_reach_the_deep_paths() {
    use sessiond_actors::store::{FsyncMode, StoreCore, StoreOptions, StoreTuning};
    use sessiond_fuzz::token_verify::{NOW, configs};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let seed = |target: &str, suffix: &str| -> Vec<u8> {
        let dir = root.join(target);
        let path = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no seed *{suffix} in {}", dir.display()));
        std::fs::read(path).unwrap()
    };

    // A raw token seed verifies with the lenient verifier; its strict twin with both.
    let legacy = seed("token_verify", "raw-legacy-HS256");
    let token = std::str::from_utf8(&legacy[1..]).unwrap();
    configs()[0].verifier.verify(token, NOW).unwrap();
    let strict = seed("token_verify", "raw-enhanced-strict-HS256");
    let token = std::str::from_utf8(&strict[1..]).unwrap();
    for c in configs() {
        c.verifier.verify(token, NOW).unwrap();
    }

    // The log seed loads sessions, tombstones and journal entries.
    let file = seed("store_log", "raw-appended");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(sessiond_fuzz::store_log::GEN1), &file[1..]).unwrap();
    let o = StoreOptions {
        data_dir: dir.path().to_path_buf(),
        fsync: FsyncMode::Never,
        max_entries: 1000,
        max_ttl_seconds: 3600,
    };
    let (_core, r) =
        StoreCore::open_with(o, StoreTuning::default(), sessiond_fuzz::store_log::NOW).unwrap();
    assert!(r.sessions >= 2 && r.tombstones >= 2 && r.journal_entries >= 1, "{r:?}");
    assert_eq!(r.truncated_bytes, 0, "{r:?}");

    // The frame seeds decode.
    let ping = seed("ws_frames", "msgpack-ping");
    assert_eq!(
        sessiond_fuzz::frames::decode_binary(&ping),
        Ok(sessiond_fuzz::frames::ClientFrame::Ping)
    );
}
