//! The journal of writes taken while degraded: entries not yet replayed into Redis, in
//! sequence order, with the next sequence number to hand out and the highest acknowledged one.
//! Pure: no I/O. The core writes the records that make it durable (see `docs/storage.md`).
//!
//! Each entry is held as the MessagePack payload of its `jrn` record (about 170 bytes for a
//! typical create, 60 for a revocation), not as a [`JournalOp`]: a million decoded entries
//! (strings and a `BTreeMap` each) would take several times the memory. Entries are decoded
//! only when they are handed out, and a snapshot writes the payloads as they are.

use std::collections::VecDeque;

use crate::domain::{JournalEntry, JournalOp, Session};

use super::record::{
    self, Attrs, Decoded, EncodeError, ExpiryRecord, JournalBody, JournalRecord, PutRecord, Record,
    TombRecord,
};

/// One pending entry: its sequence number and its `jrn` record payload.
struct Stored {
    seq: u64,
    payload: Box<[u8]>,
}

/// The pending entries and the sequence bookkeeping.
pub(crate) struct Journal {
    /// Not yet acknowledged, by increasing `seq`.
    entries: VecDeque<Stored>,
    /// The next sequence number to hand out (the first is 1).
    next_seq: u64,
    /// Every entry up to this one was acknowledged (0: none).
    acked: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Journal { entries: VecDeque::new(), next_seq: 1, acked: 0 }
    }
}

/// The `jrn` record payload of entry `seq`; refused over the payload limit, so that a snapshot
/// can always write it.
pub(crate) fn encode_entry(seq: u64, op: JournalBody<'_>) -> Result<Box<[u8]>, EncodeError> {
    record::encode_payload(&Record::Journal(JournalRecord { seq, op })).map(Vec::into_boxed_slice)
}

impl Journal {
    /// Entries not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence number acknowledged (0: none).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The oldest pending entry's sequence number.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Whether the journal has ever been used (then snapshots carry its bookkeeping).
    pub fn used(&self) -> bool {
        self.next_seq > 1
    }

    /// Whether `n` more entries fit under `max`.
    pub fn has_room(&self, n: usize, max: usize) -> bool {
        self.entries.len().saturating_add(n) <= max
    }

    /// Appends a live entry from [`encode_entry`]; `seq` must be [`Self::next_seq`] (callers
    /// encode everything first and push once the write is applied).
    pub fn push(&mut self, seq: u64, payload: Box<[u8]>) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.entries.push_back(Stored { seq, payload });
    }

    /// Up to `max` of the oldest pending entries, decoded, in order.
    pub fn pending(&self, max: usize) -> Vec<JournalEntry> {
        let mut out = Vec::with_capacity(max.min(self.entries.len()));
        for e in self.entries.iter().take(max) {
            match record::decode_payload(&e.payload) {
                Some(Decoded::Known(Record::Journal(j))) => {
                    out.push(JournalEntry { seq: j.seq, op: body_op(&j.op) });
                }
                // Only `encode_entry` fills the journal: this cannot happen.
                _ => log::error!("journal entry {} is corrupt in memory; not handed out", e.seq),
            }
        }
        out
    }

    /// Every pending entry's `jrn` record payload, in order (snapshots).
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|e| &*e.payload)
    }

    /// What acknowledging up to `up_to` would record: `up_to` capped at the last sequence
    /// number handed out, or `None` when everything up to there is already acknowledged.
    pub fn ack_target(&self, up_to: u64) -> Option<u64> {
        let up_to = up_to.min(self.next_seq - 1);
        (up_to > self.acked).then_some(up_to)
    }

    /// Acknowledges every entry up to `up_to` (from [`Self::ack_target`]): they are dropped.
    pub fn ack(&mut self, up_to: u64) {
        if up_to > self.acked {
            self.acked = up_to;
            self.drop_acked();
        }
    }

    fn drop_acked(&mut self) {
        while self.entries.front().is_some_and(|e| e.seq <= self.acked) {
            self.entries.pop_front();
        }
        if self.entries.capacity() > 1024 && self.entries.capacity() > 4 * self.entries.len() {
            self.entries.shrink_to_fit();
        }
    }

    /// Loading: an entry read from the log. Entries already acknowledged, or not after the
    /// last one held (which the writer never produces), are ignored.
    pub fn load_entry(&mut self, seq: u64, op: JournalBody<'_>) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        let after_last = self.entries.back().is_none_or(|e| e.seq < seq);
        if seq <= self.acked || !after_last {
            log::warn!("journal entry {seq} read out of order; ignored");
            return;
        }
        match encode_entry(seq, op) {
            Ok(payload) => self.entries.push_back(Stored { seq, payload }),
            // It was read from a payload within the limit; re-encoding it cannot grow it much.
            Err(e) => log::error!("journal entry {seq} cannot be kept: {e}"),
        }
    }

    /// Loading: an acknowledgement record.
    pub fn load_ack(&mut self, up_to: u64, next_seq: Option<u64>) {
        self.next_seq = self.next_seq.max(up_to.saturating_add(1)).max(next_seq.unwrap_or(0));
        if up_to > self.acked {
            self.acked = up_to;
            self.drop_acked();
        }
    }

    /// Loading is done: release spare capacity.
    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }
}

/// The journal body of a data record (its own `j` left out).
pub(crate) fn put_body<'a>(p: &PutRecord<'a>) -> JournalBody<'a> {
    JournalBody::Put(PutRecord { journal: None, ..p.clone() })
}

/// The journal body of an `exp` record.
pub(crate) fn expiry_body<'a>(e: &ExpiryRecord<'a>) -> JournalBody<'a> {
    JournalBody::Expiry(ExpiryRecord::plain(e.id, e.expires_at))
}

/// The journal body of a `tomb` record (with its user, when it has one).
pub(crate) fn tomb_body<'a>(t: &TombRecord<'a>) -> JournalBody<'a> {
    JournalBody::Tomb(TombRecord { journal: None, ..t.clone() })
}

/// The journal op a record body describes.
fn body_op(b: &JournalBody<'_>) -> JournalOp {
    match b {
        JournalBody::Put(p) => {
            let attributes = match &p.attributes {
                Attrs::Map(m) => (*m).clone(),
                Attrs::Pairs(v) => {
                    v.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
                }
            };
            JournalOp::Put {
                session: Session {
                    session_id: p.id.to_string(),
                    user_id: p.user_id.to_string(),
                    email: p.email.to_string(),
                    role: p.role.to_string(),
                    format: p.format,
                    created_at: p.created_at,
                    expires_at: p.expires_at,
                    attributes,
                },
                created_len: p.created_len,
                issued_at: p.issued_at,
            }
        }
        JournalBody::Expiry(e) => {
            JournalOp::Expiry { session_id: e.id.to_string(), expires_at: e.expires_at }
        }
        JournalBody::Tomb(t) => JournalOp::Tomb {
            session_id: t.id.to_string(),
            until: t.until,
            user_id: t.user_id.map(str::to_string),
        },
        JournalBody::RevokeUser(r) => {
            JournalOp::RevokeUser { user_id: r.user_id.to_string(), at: r.at }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::TokenFormat;
    use crate::store::record::RevokeUserRecord;

    fn tomb(j: &mut Journal, seq: u64, id: &str) {
        j.push(seq, encode_entry(seq, JournalBody::Tomb(TombRecord::plain(id, 9))).unwrap());
    }

    fn seqs(j: &Journal) -> Vec<u64> {
        j.pending(usize::MAX).iter().map(|e| e.seq).collect()
    }

    #[test]
    fn acks_drop_entries_and_never_go_back_or_past_the_last_seq() {
        let mut j = Journal::default();
        assert_eq!((j.next_seq(), j.acked(), j.oldest_seq()), (1, 0, None));
        assert_eq!(j.ack_target(5), None);
        for seq in 1..=4 {
            tomb(&mut j, seq, &format!("s{seq}"));
        }
        assert_eq!(j.pending(2).iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(j.ack_target(2), Some(2));
        j.ack(2);
        assert_eq!(j.ack_target(1), None);
        assert_eq!(j.oldest_seq(), Some(3));
        // Capped at the last seq handed out.
        assert_eq!(j.ack_target(100), Some(4));
        j.ack(4);
        assert_eq!((j.len(), j.next_seq(), j.acked()), (0, 5, 4));
        assert!(j.has_room(3, 3));
        assert!(!j.has_room(4, 3));
    }

    #[test]
    fn loading_keeps_unacked_entries_and_the_highest_seq() {
        let mut j = Journal::default();
        let body = |id| JournalBody::Tomb(TombRecord::plain(id, 9));
        j.load_entry(1, body("a"));
        j.load_entry(2, body("b"));
        j.load_ack(1, None);
        j.load_entry(2, body("dup"));
        j.load_entry(3, body("c"));
        assert_eq!(seqs(&j), [2, 3]);
        j.load_ack(3, Some(10));
        assert_eq!((j.len(), j.next_seq(), j.acked()), (0, 10, 3));
        assert_eq!(j.ack_target(9), Some(9));
    }

    #[test]
    fn entries_decode_to_their_ops() {
        let mut attributes = BTreeMap::new();
        attributes.insert("ip".to_string(), "203.0.113.7".to_string());
        let put = PutRecord {
            id: "s1",
            user_id: "u1",
            email: "u1@example.com",
            role: "user",
            format: TokenFormat::Legacy,
            created_at: 10,
            expires_at: 70,
            created_len: 60,
            attributes: Attrs::Map(&attributes),
            journal: Some(1),
            issued_at: Some(9),
        };
        let tomb = TombRecord { id: "s1", until: 70, journal: Some(3), user_id: Some("u1") };
        let mut j = Journal::default();
        j.push(1, encode_entry(1, put_body(&put)).unwrap());
        let exp = ExpiryRecord { id: "s1", expires_at: 80, journal: Some(2) };
        j.push(2, encode_entry(2, expiry_body(&exp)).unwrap());
        j.push(3, encode_entry(3, tomb_body(&tomb)).unwrap());
        let ru = JournalBody::RevokeUser(RevokeUserRecord { user_id: "u1", at: 20 });
        j.push(4, encode_entry(4, ru).unwrap());
        let session = Session {
            session_id: "s1".into(),
            user_id: "u1".into(),
            email: "u1@example.com".into(),
            role: "user".into(),
            format: TokenFormat::Legacy,
            created_at: 10,
            expires_at: 70,
            attributes,
        };
        let ops: Vec<JournalOp> = j.pending(10).into_iter().map(|e| e.op).collect();
        assert_eq!(
            ops,
            [
                JournalOp::Put { session, created_len: 60, issued_at: Some(9) },
                JournalOp::Expiry { session_id: "s1".into(), expires_at: 80 },
                JournalOp::Tomb { session_id: "s1".into(), until: 70, user_id: Some("u1".into()) },
                JournalOp::RevokeUser { user_id: "u1".into(), at: 20 },
            ]
        );
        // What a typical entry costs in memory, besides the 24-byte slot.
        let sizes: Vec<usize> = j.payloads().map(<[u8]>::len).collect();
        assert!(sizes[0] < 160 && sizes[2] < 60, "{sizes:?}");
    }

    fn vm_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    #[ignore = "scale measurement: cargo test --release -p sessiond-actors journal_of_one_million -- --ignored --nocapture"]
    fn journal_of_one_million_creates() {
        let before = vm_rss_kib();
        let mut j = Journal::default();
        let mut attrs = BTreeMap::new();
        for i in 0..1_000_000u64 {
            attrs.clear();
            attrs.insert("ip".to_string(), format!("10.{}.{}.{}", i % 250, i / 250 % 250, i % 7));
            if i.is_multiple_of(2) {
                attrs.insert("ua".to_string(), "mobile".to_string());
            }
            let (id, user) = (format!("s{i:09}"), format!("{}", 1_000_000 + i));
            let email = format!("user{i:07}@example.com");
            let p = PutRecord {
                id: &id,
                user_id: &user,
                email: &email,
                role: "user",
                format: TokenFormat::Enhanced,
                created_at: 1,
                expires_at: 86_401,
                created_len: 86_400,
                attributes: Attrs::Map(&attrs),
                journal: None,
                issued_at: None,
            };
            let seq = j.next_seq();
            j.push(seq, encode_entry(seq, put_body(&p)).unwrap());
        }
        let grown = vm_rss_kib().saturating_sub(before) / 1024;
        let t = std::time::Instant::now();
        let n = j.pending(10_000).len();
        println!(
            "journal of 1,000,000 typical creates: VmRSS +{grown} MiB; 10,000 entries decoded \
             in {} ms ({n})",
            t.elapsed().as_millis()
        );
    }
}
