//! Writes the seed corpora into `fuzz/seeds/<target>/` (run from anywhere):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//! ```
//!
//! - `token_verify`: valid legacy and enhanced tokens (HS256/384/512, with and without
//!   `iss`/`aud`, `sid`/`jti`, integer and string ids) and classic bad ones, in every mode.
//! - `store_log`: real log files written by `StoreCore` (plain and journaled writes, revocations,
//!   refreshes, a purge, a journal ack, and a snapshot), raw, header-less, as framed payloads,
//!   and with torn tails.
//! - `ws_frames`: the client frames of docs/protocol.md, as JSON and as MessagePack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sessiond_actors::domain::{Identity, NewSession, TokenFormat};
use sessiond_actors::store::{FsyncMode, StoreCore, StoreOptions, StoreTuning};
use sessiond_actors::token::{Algorithm, sign_hmac};
use sessiond_fuzz::record::{self, FRAME_HEADER_LEN, HEADER_LEN};
use sessiond_fuzz::{store_log, token_verify};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target)
}

struct Out {
    dir: PathBuf,
    n: usize,
}

impl Out {
    fn new(target: &str) -> Result<Out> {
        let dir = seeds_dir(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Out { dir, n: 0 })
    }

    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.n += 1;
        std::fs::write(self.dir.join(format!("{:03}-{name}", self.n)), bytes)?;
        Ok(())
    }
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

const NOW: i64 = token_verify::NOW;

fn legacy() -> Value {
    json!({"sub": "ada@example.com", "id": 42, "role": "admin", "exp": NOW + 3600,
           "iat": NOW - 10, "sid": "s-1"})
}

fn enhanced() -> Value {
    json!({"sub": "u-42", "email": "ada@example.com", "role": "admin", "exp": NOW + 3600})
}

fn strict(mut v: Value) -> Value {
    v["iss"] = json!(token_verify::ISSUER);
    v["aud"] = json!([token_verify::AUDIENCE, "other"]);
    v
}

fn tokens() -> Result<()> {
    let mut out = Out::new("token_verify")?;
    let s = token_verify::SECRET;
    let claim_sets = [
        ("legacy", legacy()),
        ("enhanced", enhanced()),
        ("legacy-strict", strict(legacy())),
        ("enhanced-strict", strict(enhanced())),
        (
            "legacy-string-id-email",
            json!({"sub": "ada@example.com", "id": "u-42", "email": "ada@example.com",
                   "role": "user", "exp": NOW + 60, "nbf": NOW - 5, "jti": "j-1"}),
        ),
        (
            "enhanced-with-id",
            json!({"sub": "42", "id": 42, "email": "ada@example.com", "role": "user",
                   "exp": NOW as f64 + 60.5, "iat": NOW}),
        ),
        ("expired", json!({"sub": "u-1", "email": "a@b", "role": "r", "exp": NOW - 3600})),
        (
            "inconsistent",
            json!({"sub": "ada@example.com", "id": 1, "email": "eve@example.com",
                   "role": "r", "exp": NOW + 60}),
        ),
    ];
    for (name, claims) in &claim_sets {
        for (alg, tag) in [(Algorithm::HS256, 0u8), (Algorithm::HS384, 1), (Algorithm::HS512, 2)] {
            let token = sign_hmac(s, alg, claims)?;
            if tag == 0 || *name == "legacy" {
                out.put(&format!("raw-{name}-{alg:?}"), &with_mode(0, token.as_bytes()))?;
            }
            // Mode 2: the claims JSON, signed by the target with `mode >> 2` as algorithm.
            let text = serde_json::to_vec(claims)?;
            out.put(&format!("claims-{name}-{alg:?}"), &with_mode(2 | (tag << 2), &text))?;
        }
        let header = br#"{"alg":"HS256","typ":"JWT"}"#;
        let mut raw = header.to_vec();
        raw.push(token_verify::SEP);
        raw.extend_from_slice(&serde_json::to_vec(claims)?);
        out.put(&format!("json-{name}"), &with_mode(1, &raw))?;
    }
    // Mode 1: headers the structure checks refuse, and a kid (unknown for the HMAC secret).
    for (name, header) in [
        ("kid", &br#"{"alg":"HS256","kid":"k1"}"#[..]),
        ("jwk", br#"{"alg":"HS256","jwk":{}}"#),
        ("crit", br#"{"alg":"HS256","crit":["b64"],"b64":false}"#),
        ("dup-alg", br#"{"alg":"HS256","alg":"none"}"#),
        ("none", br#"{"alg":"none"}"#),
        ("alg-not-string", br#"{"alg":1}"#),
        ("array", br#"["HS256"]"#),
    ] {
        let mut raw = header.to_vec();
        raw.push(token_verify::SEP);
        raw.extend_from_slice(&serde_json::to_vec(&enhanced())?);
        out.put(&format!("json-header-{name}"), &with_mode(1, &raw))?;
    }
    let mut dup = br#"{"alg":"HS256"}"#.to_vec();
    dup.push(token_verify::SEP);
    dup.extend_from_slice(br#"{"sub":"u-1","email":"a@b","role":"r","exp":1,"exp":9999999999}"#);
    out.put("json-dup-exp", &with_mode(1, &dup))?;
    // Mode 0: shapes that never get past the structure checks.
    for (name, token) in [
        ("empty", ""),
        ("two-parts", "eyJhbGciOiJIUzI1NiJ9.e30"),
        ("five-parts", "a.b.c.d.e"),
        ("padded", "eyJhbGciOiJIUzI1NiJ9.e30=.AA"),
        ("std-alphabet", "eyJhbGciOiJIUzI1NiJ9.e3+/.AA"),
    ] {
        out.put(&format!("raw-{name}"), &with_mode(0, token.as_bytes()))?;
    }
    // Mode 3: the byte-driven builder (both layouts nudged, then varied).
    for (name, bytes) in [
        ("builder-legacy", &[3u8, 0x03, 5, 1, 5, 2, 5, 3, 1, 13, 1, 14, 0, 1, 0, 0, 0][..]),
        ("builder-enhanced", &[3, 0x01, 1, 2, 0, 1, 1, 1, 1, 13, 0, 0, 1, 0, 0, 0, 0]),
        ("builder-strict", &[3, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("builder-long", &[3, 0x09, 1, 6, 1, 7, 1, 8, 1, 5, 1, 9, 1, 10, 1, 0, 3, 1, 0]),
        ("builder-now-bytes", &[0x33, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01, 0, 0, 0, 0]),
    ] {
        out.put(name, bytes)?;
    }
    println!("token_verify: {} seeds", out.n);
    Ok(())
}

fn new_session(
    id: &str,
    user: &str,
    format: TokenFormat,
    exp: i64,
    attrs: &[(&str, &str)],
) -> NewSession {
    NewSession {
        identity: Identity {
            user_id: user.to_owned(),
            email: format!("{user}@example.com"),
            role: "user".to_owned(),
            session_id: id.to_owned(),
            format,
            issued_at: None,
            expires_at: exp,
        },
        expires_at: exp,
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The frames' payloads of a generation file.
fn payloads(file: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos + FRAME_HEADER_LEN <= file.len() {
        let mut fh = [0u8; FRAME_HEADER_LEN];
        fh.copy_from_slice(&file[pos..pos + FRAME_HEADER_LEN]);
        let (_, len, _) = record::parse_frame_header(&fh);
        let start = pos + FRAME_HEADER_LEN;
        out.push(file[start..start + len].to_vec());
        pos = start + len;
    }
    out
}

fn store_files() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let now = store_log::NOW;
    let dir = tempfile::tempdir()?;
    let o = StoreOptions {
        data_dir: dir.path().to_path_buf(),
        fsync: FsyncMode::Never,
        max_entries: 1000,
        max_ttl_seconds: 3600,
    };
    let (mut core, _) = StoreCore::open_with(o.clone(), StoreTuning::default(), now)?;
    let _ = core.create(
        new_session("s-1", "42", TokenFormat::Enhanced, now + 3000, &[("ip", "203.0.113.7")]),
        now,
    );
    let _ = core.create(new_session("s-2", "42", TokenFormat::Legacy, now + 2000, &[]), now);
    let _ = core.create(
        new_session("s-3", "7", TokenFormat::Enhanced, now + 100, &[("ua", "x"), ("ip", "::1")]),
        now,
    );
    let _ = core.refresh("s-3", Some(600), now);
    let _ = core.revoke("s-2", now);
    let _ = core.revoke("never-seen", now);
    let _ = core.create(new_session("self-test", "0", TokenFormat::Enhanced, now + 10, &[]), now);
    let _ = core.purge("self-test", now);
    let _ = core.create_journaled(
        new_session("j-1", "9", TokenFormat::Legacy, now + 3000, &[("ip", "10.0.0.1")]),
        now,
    );
    let _ = core.refresh_journaled("j-1", None, now);
    let _ =
        core.create_journaled(new_session("j-2", "9", TokenFormat::Enhanced, now + 3000, &[]), now);
    let _ = core.revoke_journaled("j-2", now);
    let _ = core.revoke_user_journaled("7", now);
    let _ = core.ack_journal(2);
    core.flush()?;
    let appended = std::fs::read(dir.path().join(store_log::GEN1))?;
    core.compact(now);
    core.flush()?;
    drop(core);
    let snapshot = std::fs::read(dir.path().join("sessions-0000000000000002.log"))?;
    Ok(vec![("appended", appended), ("snapshot", snapshot)])
}

fn store() -> Result<()> {
    let mut out = Out::new("store_log")?;
    for (name, file) in store_files()? {
        out.put(&format!("raw-{name}"), &with_mode(0, &file))?;
        out.put(&format!("headerless-{name}"), &with_mode(1, &file[HEADER_LEN..]))?;
        // Torn in the middle of the last frame, and a flipped byte (checksum mismatch).
        out.put(&format!("raw-{name}-torn"), &with_mode(0, &file[..file.len() - 3]))?;
        let mut flipped = file.clone();
        let mid = HEADER_LEN + (flipped.len() - HEADER_LEN) / 2;
        flipped[mid] ^= 0x40;
        out.put(&format!("raw-{name}-flipped"), &with_mode(0, &flipped))?;
        let p = payloads(&file);
        let joined = p.join(store_log::SEP);
        out.put(&format!("framed-{name}"), &with_mode(2, &joined))?;
        let mut torn = joined.clone();
        torn.extend_from_slice(store_log::SEP);
        torn.extend_from_slice(&[0x20, 0, 0, 0, 1, 2, 3, 4, 0x82]);
        out.put(&format!("framed-{name}-torn-tail"), &with_mode(3, &torn))?;
        // One payload alone per seed, for the decoder.
        for (i, one) in p.iter().enumerate() {
            out.put(&format!("payload-{name}-{i}"), &with_mode(2, one))?;
        }
    }
    // Headers: foreign, newer version, torn, hostile base length.
    let mut newer = record::header(HEADER_LEN as u64);
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    out.put("raw-newer-version", &with_mode(0, &newer))?;
    out.put("raw-foreign", &with_mode(0, b"not a sessiond log, not at all"))?;
    out.put("raw-torn-header", &with_mode(0, b"SESSIOND\x01"))?;
    out.put("hostile-base-len-skip-files", &with_mode(0x04 | 0x10 | 0x20 | 1, &[]))?;
    out.put("empty", &[2])?;
    println!("store_log: {} seeds", out.n);
    Ok(())
}

fn frames() -> Result<()> {
    let mut out = Out::new("ws_frames")?;
    let token = sign_hmac(token_verify::SECRET, Algorithm::HS256, &enhanced())?;
    let docs = [
        ("ping", json!({"type": "ping"})),
        ("refresh", json!({"type": "refresh", "token": token})),
        ("refresh-first", json!({"token": "a.b.c", "type": "refresh"})),
        ("ping-extra", json!({"type": "ping", "extra": [1, {"x": null}]})),
        ("unknown-type", json!({"type": "subscribe"})),
        ("refresh-no-token", json!({"type": "refresh"})),
    ];
    for (name, doc) in &docs {
        out.put(&format!("json-{name}"), serde_json::to_string(doc)?.as_bytes())?;
        out.put(&format!("msgpack-{name}"), &rmp_serde::to_vec_named(doc)?)?;
    }
    out.put("json-spaced", b" \n\t{ \"type\" : \"ping\" }\r\n")?;
    out.put("json-escaped", br#"{"type":"p\u0069ng"}"#)?;
    out.put("json-dup-type", br#"{"type":"ping","type":"refresh","token":"x.y.z"}"#)?;
    out.put("json-array", br#"["ping"]"#)?;
    out.put("msgpack-array", &rmp_serde::to_vec(&("ping",))?)?;
    // map16 and map32 headers, a bin-typed token, trailing bytes.
    out.put("msgpack-map16", b"\xde\x00\x01\xa4type\xa4ping")?;
    out.put("msgpack-map32", b"\xdf\x00\x00\x00\x01\xa4type\xa4ping")?;
    out.put("msgpack-bin-token", b"\x82\xa4type\xa7refresh\xa5token\xc4\x05a.b.c")?;
    out.put("msgpack-trailing", b"\x81\xa4type\xa4ping\xc1\xc1")?;
    println!("ws_frames: {} seeds", out.n);
    Ok(())
}

fn main() -> Result<()> {
    tokens()?;
    store()?;
    frames()?;
    Ok(())
}
