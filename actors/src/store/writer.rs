//! The log-writer thread and group commit.
//!
//! The store core (one thread: the FallbackStore actor) hands encoded frames and their acks
//! to a queue guarded by a mutex; consecutive appends are coalesced into one buffer as they
//! are queued. The writer thread blocks until the queue is non-empty, takes everything queued
//! at once, writes each run of appends with one `write_all`, then per fsync mode:
//!
//! - `Always`: one `sync_data` for the whole batch, then every ack of the batch (group
//!   commit: writers queued while the previous fsync ran share the next one);
//! - `Interval(d)`: ack after the write; `sync_data` once `d` has passed since the last one
//!   (also when idle: the wait for work times out at the deadline);
//! - `Never`: ack after the write.
//!
//! Bound: every queued item counts its bytes plus 64 per ack; the producer waits while the
//! count is at or over [`MAX_QUEUED_BYTES`] (8 MiB). So at most 8 MiB + one item (a frame is
//! at most 1 MiB + 8 bytes; snapshot chunks about 256 KiB) is queued, at most 131,072 acks,
//! plus one such batch in the writer's hands.
//!
//! After a failed write or fsync the log is *poisoned*: the file's tail is unknown (and after
//! a failed fsync the kernel may have dropped the dirty pages), so nothing more is written to
//! it and every ack fails until a snapshot (which rewrites the whole state into a new
//! generation file) succeeds. The core starts that snapshot itself (`needs_snapshot`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::log::{self as logfile, sync_dir};
use super::{FsyncMode, StoreError};
use crate::domain::now_millis;

/// The producer waits while this many bytes are queued (see the module docs).
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// What one queued ack counts against [`MAX_QUEUED_BYTES`] (more than its real size, so
/// that acks without bytes, such as barriers, are bounded too: at most 131,072 queued).
const ACK_COST: usize = 64;

/// How an ack is delivered.
pub(crate) enum Ack {
    /// To an async waiter ([`super::Durable`]).
    Async(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    /// To a blocked thread (`flush`).
    Sync(std::sync::mpsc::SyncSender<Result<(), StoreError>>),
}

impl Ack {
    fn send(self, r: Result<(), StoreError>) {
        // A waiter that went away no longer cares: ignoring the send error is right.
        match self {
            Ack::Async(tx) => {
                let _ = tx.send(r);
            }
            Ack::Sync(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

enum Op {
    /// Frames to append, the acks due once they are durable, the sequence number of the last.
    Append { bytes: Vec<u8>, acks: Vec<Ack>, last_seq: u64 },
    /// Make everything before durable (fsync in every mode), then ack.
    Flush(Ack),
    /// Start writing generation `generation` (a snapshot) to its `.tmp` file.
    SnapshotBegin { generation: u64 },
    /// Snapshot frames.
    SnapshotChunk(Vec<u8>),
    /// Finish the snapshot: fsync, rename, fsync the directory, switch appends to it, delete
    /// the old generation. `seq`: the last write whose state the snapshot includes.
    SnapshotEnd { seq: u64 },
}

impl Op {
    /// What the op counts against [`MAX_QUEUED_BYTES`] when it is queued.
    fn cost(&self) -> usize {
        match self {
            Op::Append { bytes, acks, .. } => bytes.len() + acks.len() * ACK_COST,
            Op::SnapshotChunk(bytes) => bytes.len(),
            Op::Flush(_) => ACK_COST,
            Op::SnapshotBegin { .. } | Op::SnapshotEnd { .. } => 0,
        }
    }
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    bytes: usize,
    shutdown: bool,
    /// The writer thread has ended (normally or by a panic): nothing will be written.
    dead: bool,
    writer_waiting: bool,
    producer_waiting: bool,
}

/// State shared by the core and the writer thread: the queue and the counters.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    space: Condvar,
    /// Bytes in the current generation file.
    pub log_bytes: AtomicU64,
    /// The highest write sequence number known durable (per the fsync mode).
    pub durable_seq: AtomicU64,
    /// Unix ms of the last successful fsync, `i64::MIN` when none.
    pub last_fsync_ms: AtomicI64,
    /// Failed log I/O operations (write, fsync, snapshot steps).
    pub write_errors: AtomicU64,
    /// Completed snapshots.
    pub compactions: AtomicU64,
    /// Log size past which the core starts a snapshot.
    pub compact_threshold: AtomicU64,
    /// The log is poisoned: appends fail until a snapshot succeeds.
    pub needs_snapshot: AtomicBool,
    /// A snapshot is queued or being written.
    pub snapshot_pending: AtomicBool,
    /// The last snapshot failed.
    pub snapshot_failed: AtomicBool,
    /// The current generation number.
    pub generation: AtomicU64,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Nothing panics while holding this lock; if something did, the queue is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The core's handle on the writer thread. Dropping it drains the queue, fsyncs and joins.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Sequence number of the last write queued.
    seq: u64,
}

/// Everything the writer thread owns.
pub(crate) struct WriterSetup {
    pub dir: PathBuf,
    pub file: File,
    pub path: PathBuf,
    pub generation: u64,
    pub len: u64,
    pub mode: FsyncMode,
    pub compact_min_bytes: u64,
    pub base_len: u64,
}

impl Writer {
    /// Starts the writer thread; appends go at `setup.len`.
    pub fn start(mut setup: WriterSetup) -> std::io::Result<Writer> {
        setup.file.seek(SeekFrom::Start(setup.len))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            space: Condvar::new(),
            log_bytes: AtomicU64::new(setup.len),
            durable_seq: AtomicU64::new(0),
            last_fsync_ms: AtomicI64::new(i64::MIN),
            write_errors: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            compact_threshold: AtomicU64::new(
                setup.compact_min_bytes.max(setup.base_len.saturating_mul(2)),
            ),
            needs_snapshot: AtomicBool::new(false),
            snapshot_pending: AtomicBool::new(false),
            snapshot_failed: AtomicBool::new(false),
            generation: AtomicU64::new(setup.generation),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new().name("sessiond-log".into()).spawn(move || {
            let guard = DeadOnExit(thread_shared.clone());
            WriterThread::new(thread_shared, setup).run();
            drop(guard);
        })?;
        Ok(Writer { shared, thread: Some(thread), seq: 0 })
    }

    /// The counters.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Whether some queued write is not yet durable.
    pub fn has_pending(&self) -> bool {
        self.shared.durable_seq.load(Ordering::Acquire) < self.seq
    }

    /// Queues frames (one or more records) with an optional ack.
    pub fn append(&mut self, frames: &[u8], ack: Option<Ack>) {
        self.seq += 1;
        let seq = self.seq;
        let mut q = self.wait_for_space();
        if q.dead {
            // The ack is dropped: its waiter sees "log writer stopped".
            return;
        }
        q.bytes += frames.len() + if ack.is_some() { ACK_COST } else { 0 };
        match q.ops.back_mut() {
            Some(Op::Append { bytes, acks, last_seq }) => {
                bytes.extend_from_slice(frames);
                acks.extend(ack);
                *last_seq = seq;
            }
            _ => q.ops.push_back(Op::Append {
                bytes: frames.to_vec(),
                acks: ack.into_iter().collect(),
                last_seq: seq,
            }),
        }
        self.wake(q);
    }

    /// An ack due once every write queued so far is durable.
    pub fn barrier(&mut self, ack: Ack) {
        let seq = self.seq;
        let mut q = self.wait_for_space();
        if q.dead {
            return;
        }
        q.bytes += ACK_COST;
        match q.ops.back_mut() {
            Some(Op::Append { acks, .. }) => acks.push(ack),
            _ => q.ops.push_back(Op::Append { bytes: Vec::new(), acks: vec![ack], last_seq: seq }),
        }
        self.wake(q);
    }

    /// Queues a flush: everything before it is written and fsynced, then `ack`.
    pub fn flush(&mut self, ack: Ack) {
        self.push(Op::Flush(ack));
    }

    /// Queues the start of a snapshot into generation `generation`.
    pub fn snapshot_begin(&mut self, generation: u64) {
        self.push(Op::SnapshotBegin { generation });
    }

    /// Queues snapshot frames (waits while the queue is full).
    pub fn snapshot_chunk(&mut self, bytes: Vec<u8>) {
        self.push(Op::SnapshotChunk(bytes));
    }

    /// Queues the end of the snapshot.
    pub fn snapshot_end(&mut self) {
        let seq = self.seq;
        self.push(Op::SnapshotEnd { seq });
    }

    fn push(&mut self, op: Op) {
        let mut q = self.wait_for_space();
        if q.dead {
            if let Op::SnapshotEnd { .. } = op {
                self.shared.snapshot_pending.store(false, Ordering::Release);
            }
            return;
        }
        q.bytes += op.cost();
        q.ops.push_back(op);
        self.wake(q);
    }

    fn wait_for_space(&self) -> MutexGuard<'_, Queue> {
        let mut q = lock(&self.shared.queue);
        while q.bytes >= MAX_QUEUED_BYTES && !q.dead {
            q.producer_waiting = true;
            q = self.shared.space.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        q.producer_waiting = false;
        q
    }

    fn wake(&self, q: MutexGuard<'_, Queue>) {
        let waiting = q.writer_waiting;
        drop(q);
        if waiting {
            self.shared.work.notify_one();
        }
    }

    /// Stops the thread after it has written and fsynced everything queued.
    pub fn shutdown(&mut self) {
        {
            let mut q = lock(&self.shared.queue);
            q.shutdown = true;
        }
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the store's log writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Marks the queue dead when the writer thread ends, even by a panic, so that the producer
/// never waits for space forever and later acks fail at once.
struct DeadOnExit(Arc<Shared>);

impl Drop for DeadOnExit {
    fn drop(&mut self) {
        let mut q = lock(&self.0.queue);
        q.dead = true;
        // Pending acks are dropped with the ops: their waiters see "log writer stopped".
        q.ops.clear();
        q.bytes = 0;
        drop(q);
        self.0.space.notify_all();
        self.0.snapshot_pending.store(false, Ordering::Release);
    }
}

enum Wake {
    Work,
    SyncDue,
    Shutdown,
}

struct Snapshot {
    file: File,
    tmp: PathBuf,
    generation: u64,
    len: u64,
}

struct WriterThread {
    shared: Arc<Shared>,
    dir: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    mode: FsyncMode,
    compact_min_bytes: u64,
    dirty: bool,
    last_sync: Instant,
    poisoned: Option<String>,
    snapshot: Option<Snapshot>,
    snapshot_failed: bool,
    group: Vec<Ack>,
    group_seq: u64,
}

impl WriterThread {
    fn new(shared: Arc<Shared>, s: WriterSetup) -> WriterThread {
        WriterThread {
            shared,
            dir: s.dir,
            file: s.file,
            path: s.path,
            len: s.len,
            mode: s.mode,
            compact_min_bytes: s.compact_min_bytes,
            dirty: false,
            last_sync: Instant::now(),
            poisoned: None,
            snapshot: None,
            snapshot_failed: false,
            group: Vec::new(),
            group_seq: 0,
        }
    }

    fn run(mut self) {
        let mut batch: VecDeque<Op> = VecDeque::new();
        loop {
            match self.next(&mut batch) {
                Wake::Work => {
                    for op in batch.drain(..) {
                        self.apply(op);
                    }
                    self.finish_group();
                }
                Wake::SyncDue => self.sync(),
                Wake::Shutdown => {
                    if self.dirty {
                        self.sync();
                    }
                    if let Some(s) = self.snapshot.take() {
                        remove_quietly(&s.tmp);
                    }
                    return;
                }
            }
        }
    }

    /// Blocks until there is work (swapped into `batch`), an interval fsync is due, or
    /// shutdown with an empty queue.
    fn next(&self, batch: &mut VecDeque<Op>) -> Wake {
        let mut q = lock(&self.shared.queue);
        loop {
            if !q.ops.is_empty() {
                std::mem::swap(&mut q.ops, batch);
                q.bytes = 0;
                let producer_waiting = q.producer_waiting;
                drop(q);
                if producer_waiting {
                    self.shared.space.notify_all();
                }
                return Wake::Work;
            }
            if q.shutdown {
                return Wake::Shutdown;
            }
            let deadline = match self.mode {
                FsyncMode::Interval(d) if self.dirty => Some(self.last_sync + d),
                _ => None,
            };
            q.writer_waiting = true;
            q = match deadline {
                None => self.shared.work.wait(q).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        q.writer_waiting = false;
                        return Wake::SyncDue;
                    }
                    self.shared
                        .work
                        .wait_timeout(q, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            q.writer_waiting = false;
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Append { bytes, acks, last_seq } => {
                if !bytes.is_empty() && self.poisoned.is_none() {
                    match self.file.write_all(&bytes) {
                        Ok(()) => {
                            self.len += bytes.len() as u64;
                            self.dirty = true;
                        }
                        Err(e) => self.poison(format!("log write failed: {e}")),
                    }
                }
                self.group.extend(acks);
                self.group_seq = self.group_seq.max(last_seq);
            }
            Op::Flush(ack) => {
                self.finish_group();
                if self.dirty && self.poisoned.is_none() {
                    self.sync();
                }
                ack.send(self.status());
            }
            Op::SnapshotBegin { generation } => {
                self.finish_group();
                self.snapshot_begin(generation);
            }
            Op::SnapshotChunk(bytes) => self.snapshot_chunk(&bytes),
            Op::SnapshotEnd { seq } => {
                self.finish_group();
                self.snapshot_end(seq);
            }
        }
    }

    fn status(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            None => Ok(()),
            Some(e) => Err(StoreError(e.clone())),
        }
    }

    /// Makes the current group durable per the mode and answers its acks.
    fn finish_group(&mut self) {
        match self.mode {
            FsyncMode::Always if self.dirty => self.sync(),
            FsyncMode::Interval(d) if self.dirty && self.last_sync.elapsed() >= d => self.sync(),
            _ => {}
        }
        self.shared.log_bytes.store(self.len, Ordering::Relaxed);
        let status = self.status();
        if status.is_ok() {
            self.shared.durable_seq.fetch_max(self.group_seq, Ordering::AcqRel);
        }
        for ack in self.group.drain(..) {
            ack.send(status.clone());
        }
    }

    fn sync(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = Instant::now();
                self.shared.last_fsync_ms.store(now_millis(), Ordering::Relaxed);
            }
            Err(e) => self.poison(format!("log fsync failed: {e}")),
        }
    }

    fn poison(&mut self, msg: String) {
        log::error!(
            "{msg} ({}); writes fail until the state is rewritten into a new generation",
            self.path.display()
        );
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.poisoned = Some(msg);
        self.shared.needs_snapshot.store(true, Ordering::Release);
    }

    fn snapshot_fail(&mut self, what: &str, e: &std::io::Error) {
        log::error!("store snapshot failed: {what}: {e}");
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.snapshot_failed = true;
        if let Some(s) = self.snapshot.take() {
            remove_quietly(&s.tmp);
        }
    }

    fn snapshot_begin(&mut self, generation: u64) {
        self.snapshot_failed = false;
        let tmp = self.dir.join(logfile::tmp_file_name(generation));
        match logfile::create_tmp(&tmp) {
            Ok((file, len)) => self.snapshot = Some(Snapshot { file, tmp, generation, len }),
            Err(e) => {
                remove_quietly(&tmp);
                self.snapshot_fail("cannot create the snapshot file", &e);
            }
        }
    }

    fn snapshot_chunk(&mut self, bytes: &[u8]) {
        let Some(s) = self.snapshot.as_mut() else {
            return;
        };
        match s.file.write_all(bytes) {
            Ok(()) => s.len += bytes.len() as u64,
            Err(e) => self.snapshot_fail("cannot write the snapshot", &e),
        }
    }

    fn snapshot_end(&mut self, seq: u64) {
        if let Some(mut s) = self.snapshot.take() {
            match finish_snapshot(&self.dir, &mut s) {
                Ok(path) => {
                    let old = std::mem::replace(&mut self.path, path);
                    self.file = s.file;
                    self.len = s.len;
                    self.dirty = false;
                    self.last_sync = Instant::now();
                    if let Err(e) = std::fs::remove_file(&old) {
                        log::warn!("cannot delete old log {}: {e}", old.display());
                    }
                    if self.poisoned.take().is_some() {
                        log::info!("store log rewritten; writes are durable again");
                    }
                    let sh = &self.shared;
                    sh.durable_seq.fetch_max(seq, Ordering::AcqRel);
                    sh.needs_snapshot.store(false, Ordering::Release);
                    sh.log_bytes.store(self.len, Ordering::Relaxed);
                    sh.compact_threshold.store(
                        self.compact_min_bytes.max(self.len.saturating_mul(2)),
                        Ordering::Relaxed,
                    );
                    sh.generation.store(s.generation, Ordering::Relaxed);
                    sh.compactions.fetch_add(1, Ordering::Relaxed);
                    sh.last_fsync_ms.store(now_millis(), Ordering::Relaxed);
                    sh.snapshot_failed.store(false, Ordering::Release);
                    log::info!(
                        "store compacted into generation {} ({} bytes)",
                        s.generation,
                        self.len
                    );
                }
                Err(e) => {
                    self.snapshot = Some(s);
                    self.snapshot_fail("cannot complete the snapshot", &e);
                }
            }
        }
        if self.snapshot_failed {
            self.shared.snapshot_failed.store(true, Ordering::Release);
        }
        self.shared.snapshot_pending.store(false, Ordering::Release);
    }
}

/// Stamps the base length into the header, fsyncs, renames into place, fsyncs the directory.
fn finish_snapshot(dir: &Path, s: &mut Snapshot) -> std::io::Result<PathBuf> {
    logfile::stamp_base_len(&mut s.file, s.len)?;
    s.file.seek(SeekFrom::Start(s.len))?;
    s.file.sync_all()?;
    let path = dir.join(logfile::file_name(s.generation));
    std::fs::rename(&s.tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

fn remove_quietly(p: &Path) {
    if let Err(e) = std::fs::remove_file(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot delete {}: {e}", p.display());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::record::{self, Record, TombRecord};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    fn ack() -> (Ack, tokio::sync::oneshot::Receiver<Result<(), StoreError>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Ack::Async(tx), rx)
    }

    fn frame(id: &str) -> Vec<u8> {
        let mut b = Vec::new();
        record::encode_frame(&mut b, &Record::Tomb(TombRecord::plain(id, 5))).unwrap();
        b
    }

    #[test]
    fn a_failed_write_fails_every_ack_until_a_snapshot_rewrites_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(logfile::file_name(1));
        std::fs::write(&path, record::header(record::HEADER_LEN as u64)).unwrap();
        // Read-only: every write fails.
        let file = File::open(&path).unwrap();
        let mut w = Writer::start(WriterSetup {
            dir: dir.path().to_path_buf(),
            file,
            path: path.clone(),
            generation: 1,
            len: record::HEADER_LEN as u64,
            mode: FsyncMode::Always,
            compact_min_bytes: 1 << 20,
            base_len: record::HEADER_LEN as u64,
        })
        .unwrap();
        let rt = rt();
        let (a, rx) = ack();
        w.append(&frame("a"), Some(a));
        assert!(rt.block_on(rx).unwrap().is_err());
        assert!(w.shared().needs_snapshot.load(Ordering::Acquire));
        assert_eq!(w.shared().write_errors.load(Ordering::Relaxed), 1);
        assert!(w.has_pending());
        let (a, rx) = ack();
        w.barrier(a);
        assert!(rt.block_on(rx).unwrap().is_err());
        let (a, rx) = ack();
        w.append(&frame("b"), Some(a));
        assert!(rt.block_on(rx).unwrap().is_err());
        // Nothing more was attempted on the broken file.
        assert_eq!(w.shared().write_errors.load(Ordering::Relaxed), 1);

        w.snapshot_begin(2);
        let mut state = frame("a");
        state.extend(frame("b"));
        w.snapshot_chunk(state);
        w.snapshot_end();
        let (a, rx) = ack();
        w.flush(a);
        rt.block_on(rx).unwrap().unwrap();
        assert!(!w.has_pending());
        assert!(!w.shared().needs_snapshot.load(Ordering::Acquire));
        assert_eq!(w.shared().generation.load(Ordering::Relaxed), 2);
        assert!(!path.exists());
        let (a, rx) = ack();
        w.append(&frame("c"), Some(a));
        rt.block_on(rx).unwrap().unwrap();
        drop(w);

        let new_path = dir.path().join(logfile::file_name(2));
        let bytes = std::fs::read(&new_path).unwrap();
        let mut h = [0u8; record::HEADER_LEN];
        h.copy_from_slice(&bytes[..record::HEADER_LEN]);
        let base = record::HEADER_LEN + 2 * frame("a").len();
        assert_eq!(record::check_header(&h), record::HeaderCheck::Ok { base_len: base as u64 });
        assert_eq!(bytes.len(), base + frame("c").len());
    }

    #[test]
    fn a_failed_snapshot_keeps_the_old_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(logfile::file_name(1));
        std::fs::write(&path, record::header(record::HEADER_LEN as u64)).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut w = Writer::start(WriterSetup {
            dir: dir.path().to_path_buf(),
            file,
            path: path.clone(),
            generation: 1,
            len: record::HEADER_LEN as u64,
            mode: FsyncMode::Never,
            compact_min_bytes: 1 << 20,
            base_len: record::HEADER_LEN as u64,
        })
        .unwrap();
        // A directory where the tmp file should go: creating it fails.
        std::fs::create_dir(dir.path().join(logfile::tmp_file_name(2))).unwrap();
        w.snapshot_begin(2);
        w.snapshot_chunk(frame("x"));
        w.snapshot_end();
        let rt = rt();
        let (a, rx) = ack();
        w.append(&frame("y"), Some(a));
        rt.block_on(rx).unwrap().unwrap();
        let (a, rx) = ack();
        w.flush(a);
        rt.block_on(rx).unwrap().unwrap();
        assert!(w.shared().snapshot_failed.load(Ordering::Acquire));
        assert!(!w.shared().snapshot_pending.load(Ordering::Acquire));
        assert_eq!(w.shared().generation.load(Ordering::Relaxed), 1);
        drop(w);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (record::HEADER_LEN + frame("y").len()) as u64
        );
    }
}
