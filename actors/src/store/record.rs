//! The log record format: the file header, the frame (`[u32 len][u32 crc32][payload]`) and the
//! MessagePack payload (a tagged [`Record`]). See `docs/storage.md` for the layout.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{TokenFormat, UnixSeconds};

/// The first eight bytes of every generation file.
pub const MAGIC: &[u8; 8] = b"SESSIOND";
/// The format version this build writes and reads. A file with a higher version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the file header: magic, version (u32 LE), flags (u32 LE, zero in version 1) and
/// the base length (u64 LE: the file's length when its snapshot was complete).
pub const HEADER_LEN: usize = 24;
/// Offset of the base length in the header.
pub const BASE_LEN_OFFSET: u64 = 16;
/// Bytes of a frame header: payload length (u32 LE) and CRC-32 (u32 LE).
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest payload accepted; a longer length field is treated as corruption.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The record kinds this build understands (the `k` of the payload).
pub const KNOWN_KINDS: [&str; 7] = ["put", "exp", "tomb", "jrn", "jack", "purge", "wm"];

/// A file header for `FORMAT_VERSION` with the given base length.
pub fn header(base_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base_len.to_le_bytes());
    h
}

/// What a file header says.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    /// A header of a version this build reads, with its base length.
    Ok {
        /// The file's length when its snapshot part was complete.
        base_len: u64,
    },
    /// Not a sessiond log at all.
    BadMagic,
    /// A sessiond log of a newer format version.
    Unsupported(u32),
}

/// Checks a complete file header.
pub fn check_header(h: &[u8; HEADER_LEN]) -> HeaderCheck {
    if &h[..8] != MAGIC {
        return HeaderCheck::BadMagic;
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&h[8..12]);
    let version = u32::from_le_bytes(v);
    if version == 0 || version > FORMAT_VERSION {
        return HeaderCheck::Unsupported(version);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[16..24]);
    HeaderCheck::Ok { base_len: u64::from_le_bytes(b) }
}

/// A session's attributes in a record: written as a MessagePack map, read back borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attrs<'a> {
    /// Borrowed from the caller's map (when writing a create).
    Map(&'a BTreeMap<String, String>),
    /// Borrowed pairs (when reading, or when writing a snapshot from memory).
    Pairs(Vec<(&'a str, &'a str)>),
}

impl Attrs<'_> {
    /// Whether there are no attributes (then the field is left out).
    pub fn is_empty(&self) -> bool {
        match self {
            Attrs::Map(m) => m.is_empty(),
            Attrs::Pairs(p) => p.is_empty(),
        }
    }
}

impl Default for Attrs<'_> {
    fn default() -> Self {
        Attrs::Pairs(Vec::new())
    }
}

impl Serialize for Attrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Attrs::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m.iter() {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Attrs::Pairs(p) => {
                let mut map = s.serialize_map(Some(p.len()))?;
                for (k, v) in p {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Attrs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attrs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                // A hostile size hint cannot make us allocate much: capped.
                let mut pairs = Vec::with_capacity(m.size_hint().unwrap_or(0).min(16));
                while let Some((k, v)) = m.next_entry::<&'de str, &'de str>()? {
                    pairs.push((k, v));
                }
                Ok(Attrs::Pairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// A session as written by `put` (short field names keep records small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRecord<'a> {
    /// Session id.
    #[serde(rename = "i", borrow)]
    pub id: &'a str,
    /// User id.
    #[serde(rename = "u", borrow)]
    pub user_id: &'a str,
    /// Email.
    #[serde(rename = "e", borrow)]
    pub email: &'a str,
    /// Role.
    #[serde(rename = "r", borrow)]
    pub role: &'a str,
    /// Token layout.
    #[serde(rename = "f")]
    pub format: TokenFormat,
    /// `created_at`.
    #[serde(rename = "c")]
    pub created_at: UnixSeconds,
    /// `expires_at`.
    #[serde(rename = "x")]
    pub expires_at: UnixSeconds,
    /// The length the session was created with (`expires_at - created_at` at creation).
    #[serde(rename = "l")]
    pub created_len: i64,
    /// Attributes; left out when empty.
    #[serde(rename = "a", borrow, default, skip_serializing_if = "Attrs::is_empty")]
    pub attributes: Attrs<'a>,
    /// Journal sequence number: the create is also a journal entry (`JournalOp::Put`) not
    /// yet replayed. Left out when not journaled.
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<u64>,
    /// The `iat` of the token that created it, when it had one and the create was taken
    /// here (a replayed create is refused when a revoke-all of the user came after the token
    /// was issued). Left out when unknown (mirrored sessions, tokens without `iat`).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<UnixSeconds>,
}

/// A user's revoke-all watermark: tokens of the user issued at or before `at` create no
/// session here until `until` (see `docs/storage.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkRecord<'a> {
    /// User id.
    #[serde(rename = "u", borrow)]
    pub user_id: &'a str,
    /// When the revoke-all was taken.
    #[serde(rename = "a")]
    pub at: UnixSeconds,
    /// When the watermark stops mattering (`at` + `sessions.max_ttl_seconds`).
    #[serde(rename = "t")]
    pub until: UnixSeconds,
}

/// A new expiry for a live session (`refresh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryRecord<'a> {
    /// Session id.
    #[serde(rename = "i", borrow)]
    pub id: &'a str,
    /// The new `expires_at`.
    #[serde(rename = "x")]
    pub expires_at: UnixSeconds,
    /// Journal sequence number: the refresh is also a journal entry (`JournalOp::Expiry`).
    /// Left out when not journaled.
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<u64>,
}

/// A revocation: the id is removed and refused until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombRecord<'a> {
    /// Session id.
    #[serde(rename = "i", borrow)]
    pub id: &'a str,
    /// Refused until then.
    #[serde(rename = "t")]
    pub until: UnixSeconds,
    /// Journal sequence number: the revocation is also a journal entry (`JournalOp::Tomb`).
    /// Left out when not journaled.
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<u64>,
    /// The revoked session's user, when known; written only with a journal entry (it is the
    /// entry's `user_id`). Left out when unknown.
    #[serde(rename = "u", borrow, default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
}

impl<'a> TombRecord<'a> {
    /// A revocation that is not a journal entry.
    pub fn plain(id: &'a str, until: UnixSeconds) -> Self {
        TombRecord { id, until, journal: None, user_id: None }
    }
}

impl<'a> ExpiryRecord<'a> {
    /// A new expiry that is not a journal entry.
    pub fn plain(id: &'a str, expires_at: UnixSeconds) -> Self {
        ExpiryRecord { id, expires_at, journal: None }
    }
}

/// A session id forgotten entirely: its session and its tombstone are removed (only the
/// self-test's own sessions are purged; never journaled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord<'a> {
    /// Session id.
    #[serde(rename = "i", borrow)]
    pub id: &'a str,
}

/// A revoke-all of a user, as a journal entry (`JournalOp::RevokeUser`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeUserRecord<'a> {
    /// User id.
    #[serde(rename = "u", borrow)]
    pub user_id: &'a str,
    /// When the revoke-all was taken.
    #[serde(rename = "a")]
    pub at: UnixSeconds,
}

/// The write a journal-only entry describes; the same bodies as the data records (their own
/// `j` left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", content = "v")]
pub enum JournalBody<'a> {
    /// `JournalOp::Put`.
    #[serde(rename = "put", borrow)]
    Put(PutRecord<'a>),
    /// `JournalOp::Expiry`.
    #[serde(rename = "exp", borrow)]
    Expiry(ExpiryRecord<'a>),
    /// `JournalOp::Tomb` (`u`: the user, when known).
    #[serde(rename = "tomb", borrow)]
    Tomb(TombRecord<'a>),
    /// `JournalOp::RevokeUser`.
    #[serde(rename = "ru", borrow)]
    RevokeUser(RevokeUserRecord<'a>),
}

/// A journal entry that changes nothing in the maps: a revoke-all's closing entry, or a
/// pending entry restated by a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord<'a> {
    /// Sequence number.
    #[serde(rename = "j")]
    pub seq: u64,
    /// The write.
    #[serde(rename = "o", borrow)]
    pub op: JournalBody<'a>,
}

/// Journal bookkeeping: every entry up to `s` has been replayed; a snapshot also states the
/// next sequence number to hand out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalAckRecord {
    /// Every entry with a sequence number up to this one was replayed.
    #[serde(rename = "s")]
    pub up_to: u64,
    /// The next sequence number (snapshots only); left out otherwise.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
}

/// One log record. Adjacently tagged: `{"k": kind, "v": body}`, both as MessagePack maps, so
/// new optional fields (with `#[serde(default)]`) and new kinds can be added later; a reader
/// skips a well-formed record of a kind it does not know (see [`decode_payload`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", content = "v")]
pub enum Record<'a> {
    /// A session was created (or is restated by a snapshot).
    #[serde(rename = "put", borrow)]
    Put(PutRecord<'a>),
    /// A live session got a new expiry.
    #[serde(rename = "exp", borrow)]
    Expiry(ExpiryRecord<'a>),
    /// A session id was revoked.
    #[serde(rename = "tomb", borrow)]
    Tomb(TombRecord<'a>),
    /// A journal entry with no effect on the maps.
    #[serde(rename = "jrn", borrow)]
    Journal(JournalRecord<'a>),
    /// Journal entries acknowledged as replayed (and, in snapshots, the next sequence number).
    #[serde(rename = "jack")]
    JournalAck(JournalAckRecord),
    /// A session id forgotten entirely (session and tombstone).
    #[serde(rename = "purge", borrow)]
    Purge(PurgeRecord<'a>),
    /// A user's revoke-all watermark was raised (or is restated by a snapshot).
    #[serde(rename = "wm", borrow)]
    Watermark(WatermarkRecord<'a>),
}

/// Only the tag, to recognise records of kinds a later version added.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    k: &'a str,
}

/// A decoded payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A record this build understands.
    Known(Record<'a>),
    /// A well-formed record of a kind this build does not know: skipped.
    UnknownKind(&'a str),
}

/// Decodes one payload; `None` when it is not a well-formed record (treated as corruption).
pub fn decode_payload(payload: &[u8]) -> Option<Decoded<'_>> {
    match rmp_serde::from_slice::<Record<'_>>(payload) {
        Ok(r) => Some(Decoded::Known(r)),
        Err(_) => match rmp_serde::from_slice::<Envelope<'_>>(payload) {
            Ok(env) if !KNOWN_KINDS.contains(&env.k) => Some(Decoded::UnknownKind(env.k)),
            _ => None,
        },
    }
}

/// The CRC of a frame: CRC-32 (IEEE) over the four length bytes and the payload.
pub fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(payload);
    h.finalize()
}

/// Why a record could not be encoded.
#[derive(Debug)]
pub enum EncodeError {
    /// The serializer failed (cannot happen for these types; kept to avoid a panic path).
    Serialize(String),
    /// The payload is over [`MAX_PAYLOAD_BYTES`].
    TooLarge(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Serialize(e) => write!(f, "cannot encode log record: {e}"),
            EncodeError::TooLarge(n) => {
                write!(f, "log record of {n} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes")
            }
        }
    }
}

/// Appends one framed record to `out`. On error `out` is left as it was.
pub fn encode_frame(out: &mut Vec<u8>, rec: &Record<'_>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    if let Err(e) = rmp_serde::encode::write_named(out, rec) {
        out.truncate(start);
        return Err(EncodeError::Serialize(e.to_string()));
    }
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    let len32 = match u32::try_from(payload_len) {
        Ok(n) if payload_len <= MAX_PAYLOAD_BYTES => n,
        _ => {
            out.truncate(start);
            return Err(EncodeError::TooLarge(payload_len));
        }
    };
    let len_bytes = len32.to_le_bytes();
    let crc = frame_crc(len_bytes, &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes a record's payload alone (no frame header); refused over [`MAX_PAYLOAD_BYTES`].
pub fn encode_payload(rec: &Record<'_>) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    rmp_serde::encode::write_named(&mut out, rec)
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if out.len() > MAX_PAYLOAD_BYTES {
        return Err(EncodeError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Appends a frame around a payload from [`encode_payload`]. On error `out` is unchanged.
pub fn append_frame(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), EncodeError> {
    let len32 = match u32::try_from(payload.len()) {
        Ok(n) if payload.len() <= MAX_PAYLOAD_BYTES => n,
        _ => return Err(EncodeError::TooLarge(payload.len())),
    };
    let len_bytes = len32.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads a frame header: `(payload length, crc)`.
pub fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> ([u8; 4], usize, u32) {
    let mut len = [0u8; 4];
    len.copy_from_slice(&h[..4]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&h[4..]);
    (
        len,
        // u32 always fits usize on the 32/64-bit targets we build for.
        usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX),
        u32::from_le_bytes(crc),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn put<'a>(attrs: &'a BTreeMap<String, String>) -> Record<'a> {
        Record::Put(PutRecord {
            id: "s-1",
            user_id: "42",
            email: "ada@example.com",
            role: "user",
            format: TokenFormat::Enhanced,
            created_at: 100,
            expires_at: 200,
            created_len: 100,
            attributes: Attrs::Map(attrs),
            journal: None,
            issued_at: None,
        })
    }

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[FRAME_HEADER_LEN..]
    }

    #[test]
    fn frames_round_trip_with_borrowed_strings() {
        let mut attrs = BTreeMap::new();
        attrs.insert("ip".to_string(), "203.0.113.7".to_string());
        let mut buf = Vec::new();
        encode_frame(&mut buf, &put(&attrs)).unwrap();
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&buf[..FRAME_HEADER_LEN]);
        let (lb, len, crc) = parse_frame_header(&h);
        assert_eq!(len, buf.len() - FRAME_HEADER_LEN);
        assert_eq!(crc, frame_crc(lb, payload(&buf)));
        match decode_payload(payload(&buf)) {
            Some(Decoded::Known(Record::Put(p))) => {
                assert_eq!(p.id, "s-1");
                assert_eq!(p.attributes, Attrs::Pairs(vec![("ip", "203.0.113.7")]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn journal_fields_are_left_out_when_absent_and_round_trip_when_present() {
        let attrs = BTreeMap::new();
        let mut plain = Vec::new();
        encode_frame(&mut plain, &put(&attrs)).unwrap();
        let Record::Put(mut p) = put(&attrs) else { unreachable!() };
        p.journal = Some(42);
        let mut journaled = Vec::new();
        encode_frame(&mut journaled, &Record::Put(p)).unwrap();
        // "j" and a one-byte integer.
        assert_eq!(journaled.len(), plain.len() + 3);
        match decode_payload(payload(&journaled)) {
            Some(Decoded::Known(Record::Put(p))) => assert_eq!(p.journal, Some(42)),
            other => panic!("unexpected {other:?}"),
        }
        match decode_payload(payload(&plain)) {
            Some(Decoded::Known(Record::Put(p))) => assert_eq!(p.journal, None),
            other => panic!("unexpected {other:?}"),
        }
        // A version-1 record without the fields (what earlier builds wrote) reads as "not
        // journaled".
        #[derive(Serialize)]
        #[serde(tag = "k", content = "v")]
        enum Old<'a> {
            #[serde(rename = "tomb")]
            Tomb { i: &'a str, t: i64 },
        }
        let b = rmp_serde::to_vec_named(&Old::Tomb { i: "z", t: 5 }).unwrap();
        assert_eq!(
            decode_payload(&b),
            Some(Decoded::Known(Record::Tomb(TombRecord::plain("z", 5))))
        );
    }

    #[test]
    fn a_framed_payload_is_the_same_frame() {
        let rec = Record::Journal(JournalRecord {
            seq: 1 << 40,
            op: JournalBody::RevokeUser(RevokeUserRecord { user_id: "u", at: 11 }),
        });
        let mut a = Vec::new();
        encode_frame(&mut a, &rec).unwrap();
        let mut b = vec![9];
        append_frame(&mut b, &encode_payload(&rec).unwrap()).unwrap();
        assert_eq!(&b[1..], &a[..]);
        assert!(matches!(
            append_frame(&mut b, &vec![0; MAX_PAYLOAD_BYTES + 1]),
            Err(EncodeError::TooLarge(_))
        ));
        assert_eq!(&b[1..], &a[..]);
    }

    #[test]
    fn empty_attributes_are_left_out_and_read_back_empty() {
        let attrs = BTreeMap::new();
        let mut buf = Vec::new();
        encode_frame(&mut buf, &put(&attrs)).unwrap();
        match decode_payload(payload(&buf)) {
            Some(Decoded::Known(Record::Put(p))) => assert!(p.attributes.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tomb_and_expiry_round_trip() {
        for rec in [
            Record::Tomb(TombRecord::plain("x", 7)),
            Record::Expiry(ExpiryRecord::plain("y", 9)),
            Record::Tomb(TombRecord { id: "x", until: 7, journal: Some(3), user_id: Some("u") }),
            Record::Expiry(ExpiryRecord { id: "y", expires_at: 9, journal: Some(4) }),
            Record::Journal(JournalRecord {
                seq: 5,
                op: JournalBody::RevokeUser(RevokeUserRecord { user_id: "u", at: 11 }),
            }),
            Record::Journal(JournalRecord {
                seq: 6,
                op: JournalBody::Tomb(TombRecord {
                    id: "z",
                    until: 12,
                    journal: None,
                    user_id: None,
                }),
            }),
            Record::JournalAck(JournalAckRecord { up_to: 4, next_seq: None }),
            Record::JournalAck(JournalAckRecord { up_to: 4, next_seq: Some(7) }),
        ] {
            let mut buf = Vec::new();
            encode_frame(&mut buf, &rec).unwrap();
            assert_eq!(decode_payload(payload(&buf)), Some(Decoded::Known(rec)));
        }
    }

    #[test]
    fn unknown_kinds_are_recognised_and_extra_fields_ignored() {
        #[derive(Serialize)]
        #[serde(tag = "k", content = "v")]
        enum Future<'a> {
            #[serde(rename = "journal")]
            Journal { upto: u64 },
            #[serde(rename = "tomb")]
            Tomb { i: &'a str, t: i64, replayed: bool },
        }
        let b = rmp_serde::to_vec_named(&Future::Journal { upto: 3 }).unwrap();
        assert_eq!(decode_payload(&b), Some(Decoded::UnknownKind("journal")));
        let b = rmp_serde::to_vec_named(&Future::Tomb { i: "z", t: 5, replayed: true }).unwrap();
        assert_eq!(
            decode_payload(&b),
            Some(Decoded::Known(Record::Tomb(TombRecord::plain("z", 5))))
        );
    }

    #[test]
    fn garbage_and_truncated_payloads_are_not_records() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, &Record::Tomb(TombRecord::plain("x", 7))).unwrap();
        let p = payload(&buf);
        assert_eq!(decode_payload(&p[..p.len() - 1]), None);
        assert_eq!(decode_payload(&[0xc1, 0x00, 0x17]), None);
        // A known kind with a body of the wrong shape is corruption, not an unknown kind.
        #[derive(Serialize)]
        struct Bad {
            k: &'static str,
            v: u8,
        }
        let b = rmp_serde::to_vec_named(&Bad { k: "put", v: 1 }).unwrap();
        assert_eq!(decode_payload(&b), None);
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(check_header(&header(77)), HeaderCheck::Ok { base_len: 77 });
        let mut h = header(0);
        h[0] = b'X';
        assert_eq!(check_header(&h), HeaderCheck::BadMagic);
        let mut h = header(0);
        h[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(check_header(&h), HeaderCheck::Unsupported(2));
    }

    #[test]
    fn oversized_records_are_refused() {
        let big = "x".repeat(MAX_PAYLOAD_BYTES + 1);
        let mut attrs = BTreeMap::new();
        attrs.insert("k".to_string(), big);
        let mut buf = vec![1, 2, 3];
        assert!(matches!(encode_frame(&mut buf, &put(&attrs)), Err(EncodeError::TooLarge(_))));
        assert_eq!(buf, vec![1, 2, 3]);
    }
}
