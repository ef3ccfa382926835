//! The in-memory maps of the store, kept compact (see `docs/storage.md`, "Memory layout").
//!
//! - `sessions`: session id (`Arc<str>`, shared with the user index) → [`Slot`], which is the
//!   expiry plus one boxed byte blob holding every other field (format, created_at, created
//!   length, user id, email, role, attributes) with varint lengths. One allocation per session
//!   besides the id, 24 bytes per map entry.
//! - `users`: user id → the ids of its sessions (one inline, or a vector).
//! - `tombstones`: revoked session id → until when it stays revoked.
//!
//! An id is never both a session and a tombstone. Nothing here touches the disk.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::domain::{Session, TokenFormat, UnixSeconds};

/// A session held in memory.
pub(crate) struct Slot {
    /// When the session expires.
    pub expires_at: UnixSeconds,
    /// Everything else, encoded by [`encode_blob`].
    data: Box<[u8]>,
}

/// The fields of a session besides its id and expiry, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fields<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub role: &'a str,
    pub format: TokenFormat,
    pub created_at: UnixSeconds,
    pub created_len: i64,
    pub attributes: Vec<(&'a str, &'a str)>,
}

impl Fields<'_> {
    /// The API form of the session.
    pub fn to_session(&self, id: &str, expires_at: UnixSeconds) -> Session {
        Session {
            session_id: id.to_string(),
            user_id: self.user_id.to_string(),
            email: self.email.to_string(),
            role: self.role.to_string(),
            format: self.format,
            created_at: self.created_at,
            expires_at,
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        // Truncation to the low seven bits is the point.
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes the fields into `out` (cleared first): format (1 byte), created_at and created
/// length (i64 LE each), then user id, email, role, attribute count and attribute pairs,
/// each string as a varint length and its UTF-8 bytes.
fn encode_blob<'a, I>(out: &mut Vec<u8>, row: NewRow<'_, I>)
where
    I: ExactSizeIterator<Item = (&'a str, &'a str)>,
{
    out.clear();
    out.push(match row.format {
        TokenFormat::Legacy => 0,
        TokenFormat::Enhanced => 1,
    });
    out.extend_from_slice(&row.created_at.to_le_bytes());
    out.extend_from_slice(&row.created_len.to_le_bytes());
    put_str(out, row.user_id);
    put_str(out, row.email);
    put_str(out, row.role);
    put_varint(out, row.attributes.len());
    for (k, v) in row.attributes {
        put_str(out, k);
        put_str(out, v);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn i64(&mut self) -> Option<i64> {
        let bytes = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Some(i64::from_le_bytes(a))
    }
    fn varint(&mut self) -> Option<usize> {
        let mut n = 0usize;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            n |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = self.varint()?;
        let bytes = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        std::str::from_utf8(bytes).ok()
    }
}

/// The user id, the cheap part of a blob (used on removal).
fn blob_user(data: &[u8]) -> Option<&str> {
    let mut r = Reader { buf: data, pos: 17 };
    r.str()
}

fn decode_blob(data: &[u8]) -> Option<Fields<'_>> {
    let mut r = Reader { buf: data, pos: 0 };
    let format = match r.byte()? {
        0 => TokenFormat::Legacy,
        1 => TokenFormat::Enhanced,
        _ => return None,
    };
    let created_at = r.i64()?;
    let created_len = r.i64()?;
    let user_id = r.str()?;
    let email = r.str()?;
    let role = r.str()?;
    let n = r.varint()?;
    let mut attributes = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let k = r.str()?;
        let v = r.str()?;
        attributes.push((k, v));
    }
    Some(Fields { user_id, email, role, format, created_at, created_len, attributes })
}

impl Slot {
    /// The decoded fields. `None` only if the blob were corrupt, which [`encode_blob`] never
    /// produces; callers treat it as a missing session and log it.
    pub fn fields(&self) -> Option<Fields<'_>> {
        decode_blob(&self.data)
    }
}

/// The session ids of one user: almost always one, so that one is kept inline.
enum UserSids {
    One(Arc<str>),
    Many(Vec<Arc<str>>),
}

impl UserSids {
    fn push(&mut self, id: Arc<str>) {
        match self {
            UserSids::One(first) => {
                let first = first.clone();
                *self = UserSids::Many(vec![first, id]);
            }
            UserSids::Many(v) => v.push(id),
        }
    }

    /// Removes `id`; answers whether the set is now empty.
    fn remove(&mut self, id: &str) -> bool {
        match self {
            UserSids::One(only) => &**only == id,
            UserSids::Many(v) => {
                if let Some(pos) = v.iter().position(|s| &**s == id) {
                    v.swap_remove(pos);
                }
                match v.len() {
                    0 => true,
                    1 => {
                        if let Some(last) = v.pop() {
                            *self = UserSids::One(last);
                        }
                        false
                    }
                    _ => {
                        // Give memory back after a user's sessions mostly went away.
                        if v.capacity() > 4 * v.len() {
                            v.shrink_to_fit();
                        }
                        false
                    }
                }
            }
        }
    }

    fn as_slice(&self) -> &[Arc<str>] {
        match self {
            UserSids::One(one) => std::slice::from_ref(one),
            UserSids::Many(v) => v,
        }
    }
}

/// What [`State::insert_session`] stores.
pub(crate) struct NewRow<'a, I> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub role: &'a str,
    pub format: TokenFormat,
    pub created_at: UnixSeconds,
    pub expires_at: UnixSeconds,
    pub created_len: i64,
    pub attributes: I,
}

/// The maps. Pure: no I/O, no clock.
#[derive(Default)]
pub(crate) struct State {
    sessions: HashMap<Arc<str>, Slot>,
    users: HashMap<Box<str>, UserSids>,
    tombstones: HashMap<Box<str>, UnixSeconds>,
    /// Revoke-all watermarks by user: `(at, until)`.
    watermarks: HashMap<Box<str>, (UnixSeconds, UnixSeconds)>,
    /// Reused to build blobs.
    scratch: Vec<u8>,
}

fn link_user(users: &mut HashMap<Box<str>, UserSids>, user: &str, id: Arc<str>) {
    match users.get_mut(user) {
        Some(sids) => sids.push(id),
        None => {
            users.insert(Box::from(user), UserSids::One(id));
        }
    }
}

fn unlink_user(users: &mut HashMap<Box<str>, UserSids>, user: &str, id: &str) {
    if let Some(sids) = users.get_mut(user)
        && sids.remove(id)
    {
        users.remove(user);
    }
}

impl State {
    /// Sessions held (expired ones count until swept).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Tombstones held (expired ones count until swept).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Users with at least one session held.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The session stored under `id`, expired or not.
    pub fn session(&self, id: &str) -> Option<&Slot> {
        self.sessions.get(id)
    }

    /// The tombstone of `id`, expired or not.
    pub fn tombstone(&self, id: &str) -> Option<UnixSeconds> {
        self.tombstones.get(id).copied()
    }

    /// Stores a session under `id`, replacing any session and dropping any tombstone of `id`.
    pub fn insert_session<'a, I>(&mut self, id: &str, row: NewRow<'_, I>)
    where
        I: ExactSizeIterator<Item = (&'a str, &'a str)>,
    {
        if !self.tombstones.is_empty() {
            self.tombstones.remove(id);
        }
        let (user_id, expires_at) = (row.user_id, row.expires_at);
        encode_blob(&mut self.scratch, row);
        // One exact-size allocation for the blob.
        let slot = Slot { expires_at, data: Box::from(self.scratch.as_slice()) };
        if self.scratch.capacity() > 4096 {
            self.scratch = Vec::new();
        }
        // One hash of the id for the session map, whether it is new or replaced.
        match self.sessions.entry(Arc::from(id)) {
            Entry::Occupied(mut e) => {
                let old_user = blob_user(&e.get().data).unwrap_or_default();
                if old_user != user_id {
                    unlink_user(&mut self.users, old_user, id);
                    link_user(&mut self.users, user_id, e.key().clone());
                }
                e.insert(slot);
            }
            Entry::Vacant(e) => {
                link_user(&mut self.users, user_id, e.key().clone());
                e.insert(slot);
            }
        }
    }

    /// Makes room for about `n` more sessions (loading).
    pub fn reserve(&mut self, n: usize) {
        self.sessions.reserve(n);
        self.users.reserve(n);
    }

    /// Removes the session `id`; answers its expiry and user id.
    pub fn remove_session(&mut self, id: &str) -> Option<(UnixSeconds, String)> {
        let (key, slot) = self.sessions.remove_entry(id)?;
        let user = blob_user(&slot.data).unwrap_or_default().to_string();
        unlink_user(&mut self.users, &user, &key);
        Some((slot.expires_at, user))
    }

    /// Forgets `id` entirely: its session and its tombstone.
    pub fn purge(&mut self, id: &str) {
        self.remove_session(id);
        self.tombstones.remove(id);
    }

    /// Sets the expiry of the session `id`; answers whether there was one.
    pub fn set_expiry(&mut self, id: &str, expires_at: UnixSeconds) -> bool {
        match self.sessions.get_mut(id) {
            Some(slot) => {
                slot.expires_at = expires_at;
                true
            }
            None => false,
        }
    }

    /// Revokes `id`: removes its session and keeps the later of `until` and any earlier
    /// tombstone. Answers the removed session's expiry and user, and the tombstone's `until`.
    pub fn put_tombstone(
        &mut self,
        id: &str,
        until: UnixSeconds,
    ) -> (Option<(UnixSeconds, String)>, UnixSeconds) {
        let removed = self.remove_session(id);
        let until = match self.tombstones.get_mut(id) {
            Some(t) => {
                *t = (*t).max(until);
                *t
            }
            None => {
                self.tombstones.insert(Box::from(id), until);
                until
            }
        };
        (removed, until)
    }

    /// The ids of the sessions of `user` (expired or not).
    pub fn user_session_ids(&self, user: &str) -> &[Arc<str>] {
        self.users.get(user).map(UserSids::as_slice).unwrap_or(&[])
    }

    /// Drops every session and tombstone that has expired at `now`; answers how many.
    pub fn sweep(&mut self, now: UnixSeconds) -> usize {
        let before = self.sessions.len() + self.tombstones.len();
        let users = &mut self.users;
        self.sessions.retain(|id, slot| {
            if slot.expires_at > now {
                return true;
            }
            let user = blob_user(&slot.data).unwrap_or_default();
            unlink_user(users, user, id);
            false
        });
        self.tombstones.retain(|_, until| *until > now);
        self.watermarks.retain(|_, (_, until)| *until > now);
        let after = self.sessions.len() + self.tombstones.len();
        let dropped = before - after;
        if dropped > 0 && self.sessions.capacity() > 4 * self.sessions.len().max(1024) {
            self.sessions.shrink_to_fit();
            self.users.shrink_to_fit();
        }
        if dropped > 0 && self.tombstones.capacity() > 4 * self.tombstones.len().max(1024) {
            self.tombstones.shrink_to_fit();
        }
        dropped
    }

    /// Every session, for snapshots.
    pub fn sessions(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.sessions.iter().map(|(k, v)| (&**k, v))
    }

    /// Every tombstone, for snapshots.
    pub fn tombstones(&self) -> impl Iterator<Item = (&str, UnixSeconds)> {
        self.tombstones.iter().map(|(k, v)| (&**k, *v))
    }

    /// The user's revoke-all watermark (`at`) while it matters at `now`.
    pub fn watermark(&self, user: &str, now: UnixSeconds) -> Option<UnixSeconds> {
        self.watermarks.get(user).filter(|(_, until)| *until > now).map(|(at, _)| *at)
    }

    /// Raises the user's watermark to `at` (kept until `until`); each part only goes up.
    /// Answers whether anything changed.
    pub fn raise_watermark(&mut self, user: &str, at: UnixSeconds, until: UnixSeconds) -> bool {
        match self.watermarks.get_mut(user) {
            Some((a, u)) => {
                let changed = at > *a || until > *u;
                *a = (*a).max(at);
                *u = (*u).max(until);
                changed
            }
            None => {
                self.watermarks.insert(Box::from(user), (at, until));
                true
            }
        }
    }

    /// Forgets the watermark whose `until` comes first (the map is full).
    pub fn evict_oldest_watermark(&mut self) {
        let oldest = self.watermarks.iter().min_by_key(|(_, (_, until))| *until);
        if let Some(user) = oldest.map(|(u, _)| u.clone()) {
            self.watermarks.remove(&user);
        }
    }

    /// How many watermarks are held.
    pub fn watermark_count(&self) -> usize {
        self.watermarks.len()
    }

    /// Every watermark `(user, at, until)`, for snapshots.
    pub fn watermarks(&self) -> impl Iterator<Item = (&str, UnixSeconds, UnixSeconds)> {
        self.watermarks.iter().map(|(k, (a, u))| (&**k, *a, *u))
    }

    /// Releases spare capacity (after loading).
    pub fn shrink(&mut self) {
        self.sessions.shrink_to_fit();
        self.users.shrink_to_fit();
        self.tombstones.shrink_to_fit();
        self.watermarks.shrink_to_fit();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn row<'a>(
        user: &'a str,
        exp: i64,
        attrs: &'a [(&'a str, &'a str)],
    ) -> NewRow<'a, impl ExactSizeIterator<Item = (&'a str, &'a str)>> {
        NewRow {
            user_id: user,
            email: "ada@example.com",
            role: "user",
            format: TokenFormat::Legacy,
            created_at: 10,
            expires_at: exp,
            created_len: exp - 10,
            attributes: attrs.iter().copied(),
        }
    }

    #[test]
    fn blob_round_trips() {
        let mut s = State::default();
        let long = "é".repeat(300);
        let attrs = [("ip", "203.0.113.7"), ("ua", long.as_str())];
        s.insert_session("s1", row("u1", 100, &attrs));
        let slot = s.session("s1").unwrap();
        let f = slot.fields().unwrap();
        assert_eq!(f.user_id, "u1");
        assert_eq!(f.email, "ada@example.com");
        assert_eq!(f.role, "user");
        assert_eq!(f.format, TokenFormat::Legacy);
        assert_eq!(f.created_at, 10);
        assert_eq!(f.created_len, 90);
        assert_eq!(f.attributes, attrs.to_vec());
        assert_eq!(slot.expires_at, 100);
        assert_eq!(blob_user(&slot.data), Some("u1"));
    }

    #[test]
    fn user_index_follows_sessions() {
        let mut s = State::default();
        s.insert_session("a", row("u", 100, &[]));
        s.insert_session("b", row("u", 100, &[]));
        s.insert_session("c", row("u", 100, &[]));
        assert_eq!(s.user_session_ids("u").len(), 3);
        s.remove_session("b");
        assert_eq!(s.user_session_ids("u").len(), 2);
        // Replacing a session under another user moves it in the index.
        s.insert_session("a", row("v", 100, &[]));
        assert_eq!(s.user_session_ids("u").len(), 1);
        assert_eq!(s.user_session_ids("v").len(), 1);
        s.put_tombstone("c", 50);
        assert_eq!(s.user_count(), 1);
        assert!(s.user_session_ids("u").is_empty());
        assert_eq!(s.tombstone("c"), Some(50));
        s.put_tombstone("c", 40);
        assert_eq!(s.tombstone("c"), Some(50));
        assert_eq!(s.sweep(60), 1);
        assert_eq!(s.sweep(100), 1);
        assert_eq!(s.user_count(), 0);
        assert_eq!(s.session_count() + s.tombstone_count(), 0);
    }

    #[test]
    fn inserting_drops_a_tombstone() {
        let mut s = State::default();
        s.put_tombstone("a", 5);
        s.insert_session("a", row("u", 100, &[]));
        assert_eq!(s.tombstone("a"), None);
        assert!(s.session("a").is_some());
    }
}
