//! `store_log`: the store's log/journal decoder on corrupt and truncated files.
//!
//! Every input is used twice:
//!
//! 1. `record::decode_payload` (the MessagePack record decoder, from the included
//!    `actors/src/store/record.rs`) on the input and on every framed chunk: it must not panic;
//!    a `Known` record must re-encode (`encode_payload`) and decode back to itself; an
//!    `UnknownKind` must not name a known kind.
//! 2. The input becomes the generation file `sessions-0000000000000001.log` of a fresh
//!    directory on tmpfs, opened with the public `StoreCore::open_with` (the `open` of the
//!    daemon with a fixed `now`). The first byte picks the layout (`mode % 4`):
//!    - 0, raw: the rest is the whole file (header included);
//!    - 1, valid 24-byte header, then the rest as raw frame bytes;
//!    - 2, valid header, then the rest split on `#FRAME#`, each piece framed with its correct
//!      length and CRC-32 (so the payload decoder and the record replay are reached past the
//!      checksum);
//!    - 3, as 2, but the last piece is appended raw: a torn or corrupt tail.
//!
//!    Flags: `0x04` a hostile base length (`u64::MAX`) in the header; `0x08` cut the file's
//!    last `input[last] % 64` bytes; `0x10` a leftover `.tmp` generation; `0x20` an older
//!    generation file.
//!
//! Invariants after the open (a violation panics):
//!
//! - `open` never panics: it loads or answers an error;
//! - the store never logs an error (`corrupt in memory`, `cannot be kept`, `left out of the
//!   snapshot`: the "cannot happen" paths) while loading, writing, compacting or reloading;
//! - the report adds up: `log_bytes + truncated_bytes` is the file's length (or the header
//!   alone for a file shorter than it), the file on disk is `log_bytes` long, generation 1,
//!   stale `.tmp` and older generations are gone, and `stats()` agrees with the report;
//! - the cut file takes appends: after a revocation of a probe id, `flush`, and a reopen,
//!   nothing is truncated, exactly one more record is read, the probe is revoked and every
//!   session, tombstone, user listing and journal entry is as before;
//! - a snapshot (`compact`, `flush`, reopen as generation 2) keeps all of that too, and skips
//!   no record.

use std::path::Path;
use std::sync::Mutex;

use sessiond_actors::domain::{JournalEntry, Session, UnixSeconds};
use sessiond_actors::store::{
    FsyncMode, LoadReport, Lookup, StoreCore, StoreOptions, StoreStats, StoreTuning,
};

use crate::record::{
    self, Decoded, FRAME_HEADER_LEN, HEADER_LEN, HeaderCheck, JournalBody, KNOWN_KINDS,
    MAX_PAYLOAD_BYTES, Record,
};

/// The time every open runs at.
pub const NOW: UnixSeconds = 1_000_000;
/// Separates the payloads of modes 2 and 3.
pub const SEP: &[u8] = b"#FRAME#";
/// The generation file the input becomes.
pub const GEN1: &str = "sessions-0000000000000001.log";
/// A session id no input is expected to hold.
const PROBE: &str = "fuzz-probe\u{1}id";
/// The most ids and users looked up per input.
const MAX_KEYS: usize = 256;

/// Error-level log messages, collected by [`Capture`].
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Error
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= log::Level::Error {
            let mut errors = ERRORS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            errors.push(format!("{}: {}", r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&Capture).is_ok() {
            log::set_max_level(log::LevelFilter::Error);
        }
    });
}

fn take_errors() -> Vec<String> {
    std::mem::take(&mut *ERRORS.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn assert_no_errors(when: &str) {
    let errors = take_errors();
    assert!(errors.is_empty(), "the store logged errors {when}: {errors:#?}");
}

/// Where the temporary store directories go: tmpfs when there is one (fsync is cheap there).
fn scratch_root() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    install_logger();
    let Some((&mode, rest)) = data.split_first() else { return };
    check_payload(rest);
    let base_len = if mode & 0x04 != 0 { u64::MAX } else { HEADER_LEN as u64 };
    let mut file = match mode % 4 {
        0 => rest.to_vec(),
        1 => {
            let mut f = record::header(base_len).to_vec();
            f.extend_from_slice(rest);
            f
        }
        m => {
            let mut f = record::header(base_len).to_vec();
            let mut pieces = crate::split_on(rest, SEP);
            let tail = if m == 3 { pieces.pop() } else { None };
            for p in pieces {
                check_payload(p);
                if record::append_frame(&mut f, p).is_err() {
                    return;
                }
            }
            if let Some(t) = tail {
                f.extend_from_slice(t);
            }
            f
        }
    };
    if mode & 0x08 != 0 {
        let cut = usize::from(data.last().copied().unwrap_or(0) % 64);
        file.truncate(file.len().saturating_sub(cut));
    }
    run_store(&file, mode);
}

/// The direct decoder invariants.
pub fn check_payload(payload: &[u8]) {
    match record::decode_payload(payload) {
        None => {}
        Some(Decoded::UnknownKind(k)) => {
            assert!(!KNOWN_KINDS.contains(&k), "a known kind {k:?} decoded as unknown");
        }
        Some(Decoded::Known(rec)) => {
            let Ok(again) = record::encode_payload(&rec) else {
                assert!(payload.len() > MAX_PAYLOAD_BYTES / 2, "{rec:?} cannot be re-encoded");
                return;
            };
            assert_eq!(
                record::decode_payload(&again),
                Some(Decoded::Known(rec.clone())),
                "a decoded record does not survive re-encoding: {rec:?}"
            );
        }
    }
}

/// The ids and user ids the records of `file` name, read the way the loader reads (header,
/// then frames up to the first torn or corrupt one), for the lookups.
fn keys(file: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut ids = vec![PROBE.to_owned()];
    let mut users = Vec::new();
    let Some(h) = file.get(..HEADER_LEN) else { return (ids, users) };
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(h);
    if !matches!(record::check_header(&hb), HeaderCheck::Ok { .. }) {
        return (ids, users);
    }
    let mut pos = HEADER_LEN;
    while let Some(fh) = file.get(pos..pos + FRAME_HEADER_LEN) {
        let mut fhb = [0u8; FRAME_HEADER_LEN];
        fhb.copy_from_slice(fh);
        let (len_bytes, len, crc) = record::parse_frame_header(&fhb);
        let start = pos + FRAME_HEADER_LEN;
        let Some(payload) = (len <= MAX_PAYLOAD_BYTES)
            .then(|| file.get(start..start.saturating_add(len)))
            .flatten()
        else {
            break;
        };
        if record::frame_crc(len_bytes, payload) != crc {
            break;
        }
        let mut id = |s: &str| ids.push(s.to_owned());
        match record::decode_payload(payload) {
            None => break,
            Some(Decoded::UnknownKind(_)) => {}
            Some(Decoded::Known(rec)) => match rec {
                Record::Put(p) => {
                    id(p.id);
                    users.push(p.user_id.to_owned());
                }
                Record::Expiry(e) => id(e.id),
                Record::Tomb(t) => {
                    id(t.id);
                    users.extend(t.user_id.map(str::to_owned));
                }
                Record::Purge(p) => id(p.id),
                Record::Watermark(w) => users.push(w.user_id.to_owned()),
                Record::Journal(j) => match j.op {
                    JournalBody::Put(p) => {
                        id(p.id);
                        users.push(p.user_id.to_owned());
                    }
                    JournalBody::Expiry(e) => id(e.id),
                    JournalBody::Tomb(t) => id(t.id),
                    JournalBody::RevokeUser(r) => users.push(r.user_id.to_owned()),
                },
                Record::JournalAck(_) => {}
            },
        }
        pos = start + len;
    }
    for v in [&mut ids, &mut users] {
        v.sort();
        v.dedup();
        v.truncate(MAX_KEYS);
    }
    (ids, users)
}

/// Everything observable about the loaded state, for comparing two opens.
#[derive(Debug, PartialEq, Eq)]
struct View {
    sessions: usize,
    tombstones: usize,
    users: usize,
    journal: Vec<JournalEntry>,
    journal_next_seq: u64,
    journal_acked_seq: u64,
    lookups: Vec<(String, Lookup)>,
    listings: Vec<(String, Vec<Session>)>,
    /// Each user's revoke-all watermark.
    watermarks: Vec<(String, Option<i64>)>,
    watermark_count: usize,
}

fn view(core: &StoreCore, ids: &[String], users: &[String]) -> View {
    let st: StoreStats = core.stats();
    let reader = core.reader();
    let lookups = ids
        .iter()
        .map(|id| {
            let l = core.get(id, NOW);
            assert_eq!(reader.get(id, NOW), l, "reader and core disagree on {id:?}");
            (id.clone(), l)
        })
        .collect();
    let listings = users
        .iter()
        .map(|u| {
            let l = core.list_user(u, NOW);
            assert!(l.iter().all(|s| &s.user_id == u), "list_user({u:?}) lists another user");
            (u.clone(), l)
        })
        .collect();
    View {
        sessions: st.live_sessions,
        tombstones: st.tombstones,
        users: st.users,
        journal: core.pending_journal(usize::MAX),
        journal_next_seq: st.journal_next_seq,
        journal_acked_seq: st.journal_acked_seq,
        lookups,
        listings,
        watermarks: users.iter().map(|u| (u.clone(), reader.watermark(u, NOW))).collect(),
        watermark_count: st.watermarks,
    }
}

fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        data_dir: dir.to_path_buf(),
        fsync: FsyncMode::Never,
        max_entries: 1000,
        max_ttl_seconds: 3600,
    }
}

fn tuning() -> StoreTuning {
    StoreTuning { max_journal: 1000, ..StoreTuning::default() }
}

fn open(dir: &Path, what: &str) -> (StoreCore, LoadReport) {
    match StoreCore::open_with(opts(dir), tuning(), NOW) {
        Ok(x) => x,
        Err(e) => panic!("{what}: the store does not reopen: {e}"),
    }
}

fn flush(core: &mut StoreCore, what: &str) {
    if let Err(e) = core.flush() {
        panic!("{what}: flush failed: {e}");
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX)
}

fn run_store(file: &[u8], mode: u8) {
    let dir = match tempfile::Builder::new().prefix("sessiond-fuzz-").tempdir_in(scratch_root()) {
        Ok(d) => d,
        Err(e) => panic!("fuzz setup: no temporary directory: {e}"),
    };
    let d = dir.path();
    let gen1 = d.join(GEN1);
    let tmp = d.join("sessions-0000000000000001.log.tmp");
    let gen0 = d.join("sessions-0000000000000000.log");
    let write = |p: &Path, bytes: &[u8]| {
        if let Err(e) = std::fs::write(p, bytes) {
            panic!("fuzz setup: cannot write {}: {e}", p.display());
        }
    };
    write(&gen1, file);
    if mode & 0x10 != 0 {
        write(&tmp, b"unfinished snapshot");
    }
    if mode & 0x20 != 0 {
        write(&gen0, &record::header(HEADER_LEN as u64));
    }
    let (ids, users) = keys(file);
    take_errors();

    // 1. The hostile file.
    let (mut core, r1) = match StoreCore::open_with(opts(d), tuning(), NOW) {
        Ok(x) => x,
        Err(_) => {
            // Refusing a file (not a sessiond log, a newer version) is a correct answer.
            assert_no_errors("while refusing a file");
            return;
        }
    };
    assert_no_errors("while loading");
    let original = file.len() as u64;
    if original < HEADER_LEN as u64 {
        assert_eq!((r1.log_bytes, r1.truncated_bytes), (HEADER_LEN as u64, 0), "{r1:?}");
    } else {
        assert_eq!(r1.log_bytes + r1.truncated_bytes, original, "report does not add up: {r1:?}");
    }
    assert_eq!(file_len(&gen1), r1.log_bytes, "file length differs from the report: {r1:?}");
    assert_eq!(r1.generation, 1, "{r1:?}");
    assert!(!tmp.exists(), "the leftover .tmp generation is still there");
    assert!(!gen0.exists(), "the superseded generation is still there");
    let st = core.stats();
    assert_eq!(
        (st.live_sessions, st.tombstones, st.log_bytes, st.journal_len, st.generation),
        (r1.sessions, r1.tombstones, r1.log_bytes, r1.journal_entries, r1.generation),
        "stats disagree with the load report"
    );
    assert!(st.log_healthy);
    let v1 = view(&core, &ids, &users);
    assert_eq!(v1.journal.len(), r1.journal_entries);

    // 2. The cut file takes an append that reads back.
    // The probe is revoked when it is unknown (an input that names it is left alone).
    let probe_missing = v1.lookups.iter().any(|(id, l)| id == PROBE && *l == Lookup::Missing);
    if probe_missing {
        let (outcome, _durable) = core.revoke(PROBE, NOW);
        assert!(outcome.newly_revoked && outcome.user_id.is_none(), "{outcome:?}");
    }
    flush(&mut core, "after the probe");
    drop(core);
    assert_no_errors("while appending the probe");
    let (mut core, r2) = open(d, "after the probe");
    assert_no_errors("while reloading after the probe");
    assert_eq!(r2.truncated_bytes, 0, "the probe append was cut off: {r1:?} then {r2:?}");
    let added = u64::from(probe_missing);
    assert_eq!(r2.records, r1.records + added, "{r1:?} then {r2:?}");
    assert_eq!(r2.skipped_records, r1.skipped_records, "{r1:?} then {r2:?}");
    let v2 = view(&core, &ids, &users);
    let mut want = v1;
    if probe_missing {
        want.tombstones += 1;
        for (id, l) in &mut want.lookups {
            if id == PROBE {
                *l = Lookup::Revoked;
            }
        }
    }
    assert_eq!(v2, want, "state changed across an append and a reload");

    // 3. A snapshot keeps everything.
    core.compact(NOW);
    flush(&mut core, "after the snapshot");
    drop(core);
    assert_no_errors("while writing the snapshot");
    let (core, r3) = open(d, "after the snapshot");
    assert_no_errors("while reloading the snapshot");
    assert_eq!((r3.generation, r3.truncated_bytes, r3.skipped_records), (2, 0, 0), "{r3:?}");
    let v3 = view(&core, &ids, &users);
    assert_eq!(v3, v2, "state changed across a snapshot and a reload");
    drop(core);
    assert_no_errors("while closing");
}
