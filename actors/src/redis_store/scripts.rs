//! The Lua scripts that make each write one atomic step (docs/redis.md, "Scripts"), and how
//! they are invoked: `EVALSHA` first, `EVAL` (which also caches the script) when the server
//! answers `NOSCRIPT`, as `redis::Script` does. That type needs the `script` feature of `redis`,
//! which this build does not enable, so the SHA-1 of each source is computed here.
//!
//! Conventions shared by every script: times arrive as decimal strings in ARGV and are compared
//! as Lua numbers (doubles: exact for the magnitudes the store accepts, below 2^50); liveness is
//! always `stored time > ARGV now`, never Redis' own clock; every key written gets an
//! `EXPIREAT` of its logical end plus the grace (`keys::KEY_GRACE_SECONDS`). User and session
//! keys of other ids are built in the script as `prefix .. ':s:' .. sid`, `prefix .. ':r:' ..
//! sid` and `prefix .. ':u:' .. uid` (see `keys.rs`).

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Cmd, ErrorKind, ServerErrorKind, Value};

/// Helpers prepended to every script.
macro_rules! prelude {
    () => {
        r#"
local function tomb_live(rkey, now)
  local t = tonumber(redis.call('GET', rkey))
  if t and t > now then return t end
  return nil
end
local function put_tomb(rkey, till, grace)
  local old = tonumber(redis.call('GET', rkey))
  if old and old > till then till = old end
  redis.call('SET', rkey, till)
  redis.call('EXPIREAT', rkey, math.max(1, till + grace))
  return till
end
local function index_expire(ukey, grace)
  local top = redis.call('ZRANGE', ukey, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('EXPIREAT', ukey, math.max(1, tonumber(top[2]) + grace)) end
end
local function mark_live(wkey, issued, now, max_ttl)
  local w = tonumber(redis.call('GET', wkey))
  return w and issued <= w and w + max_ttl > now
end
local function unindex(prefix, uid, sid)
  if uid then redis.call('ZREM', prefix .. ':u:' .. uid, sid) end
end
local function set_expiry(skey, prefix, uid, sid, e, now, grace)
  redis.call('HSET', skey, 'e', e)
  redis.call('EXPIREAT', skey, math.max(1, math.max(e, now) + grace))
  local ukey = prefix .. ':u:' .. uid
  redis.call('ZADD', ukey, e, sid)
  index_expire(ukey, grace)
end
"#
    };
}

/// `get`: KEYS session, tombstone; ARGV now.
/// Answers `{1, d, e, c}` live, `{2}` revoked, `{0}` missing.
const GET: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'e', 'd', 'c')
local ce = tonumber(cur[1])
if ce and ce > now then return {1, cur[2], ce, tonumber(cur[3]) or 0} end
if tomb_live(KEYS[2], now) then return {2} end
return {0}
"#
);

/// `create`, and `Put` on replay: KEYS session, tombstone, user index, user watermark; ARGV
/// now, sid, uid, d, created_at, created_len, expires_at, grace, prefix, issued (the token's
/// `iat`; `now`, or the replayed session's `created_at`, when it had none), max_ttl, replay
/// (1 for a replayed `Put`, else 0).
/// Answers `{1}` created, `{2, d, e}` existing, `{3}` revoked (a tombstone, or, when the id is
/// not live, a revoke-all of the user at or after `issued`: then the id is tombstoned until
/// `expires_at`, so that it answers revoked everywhere, except on replay (ARGV 12 = 1) when a
/// dead session is still held under it), `{4}` conflict. A session that is already dead is stored too
/// (as the embedded store does), and kept until `now` + grace: a replayed `Expiry` that follows
/// may bring it back.
const CREATE: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[1])
local sid, uid = ARGV[2], ARGV[3]
local e = tonumber(ARGV[7])
local grace, prefix = tonumber(ARGV[8]), ARGV[9]
if tomb_live(KEYS[2], now) then return {3} end
local cur = redis.call('HMGET', KEYS[1], 'u', 'e', 'd')
local ce = tonumber(cur[2])
if ce and ce > now then
  if cur[1] == uid then return {2, cur[3], ce} end
  return {4}
end
if mark_live(KEYS[4], tonumber(ARGV[10]), now, tonumber(ARGV[11])) then
  -- A replayed create whose session is still held, dead, was stored by an earlier replay of
  -- the same journal (and then expired): no tombstone, or replaying twice would differ.
  if not (ARGV[12] == '1' and cur[1]) then put_tomb(KEYS[2], e, grace) end
  return {3}
end
if cur[1] and cur[1] ~= uid then unindex(prefix, cur[1], sid) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[4], 'u', uid, 't', ARGV[5], 'c', ARGV[6], 'e', ARGV[7])
redis.call('EXPIREAT', KEYS[1], math.max(1, math.max(e, now) + grace))
redis.call('ZADD', KEYS[3], ARGV[7], sid)
index_expire(KEYS[3], grace)
return {1}
"#
);

/// `refresh`: KEYS session, tombstone; ARGV now, ttl (empty: the created length), max_ttl,
/// grace, prefix, sid. Answers `{1, d, new e}` refreshed, `{2}` revoked, `{0}` missing.
const REFRESH: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'u', 'e', 'd', 'c')
local ce = tonumber(cur[2])
if ce and ce > now then
  local len = tonumber(ARGV[2]) or tonumber(cur[4]) or 0
  local ne = math.min(now + len, now + tonumber(ARGV[3]))
  set_expiry(KEYS[1], ARGV[5], cur[1], ARGV[6], ne, now, tonumber(ARGV[4]))
  return {1, cur[3], ne}
end
if tomb_live(KEYS[2], now) then return {2} end
return {0}
"#
);

/// `revoke`: KEYS session, tombstone; ARGV now, max_ttl, grace, prefix, sid.
/// Answers `{1, uid}` a live session revoked, `{0}` already revoked, `{1}` unknown id revoked.
const REVOKE: &str = concat!(
    prelude!(),
    r#"
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'u', 'e')
local ce = tonumber(cur[2])
if ce and ce > now then
  redis.call('DEL', KEYS[1])
  unindex(ARGV[4], cur[1], ARGV[5])
  put_tomb(KEYS[2], ce, grace)
  return {1, cur[1]}
end
if tomb_live(KEYS[2], now) then return {0} end
if cur[1] then
  redis.call('DEL', KEYS[1])
  unindex(ARGV[4], cur[1], ARGV[5])
end
put_tomb(KEYS[2], now + tonumber(ARGV[2]), grace)
return {1}
"#
);

/// `revoke_user`, and `RevokeUser` on replay: KEYS user index, user watermark; ARGV now,
/// grace, prefix, uid, cutoff (empty: none; else only sessions with created_at <= cutoff),
/// max_ttl, then the ids to spare (replay: sessions the journal itself creates after the
/// revoke-all, in the same second). Raises the user's watermark to the revoke-all's time (the
/// cutoff, or now): `create` then refuses tokens issued at or before it for max_ttl seconds.
/// Prunes dead members; answers the revoked ids and their created_at, flat:
/// `{sid, t, sid, t, ...}`.
const REVOKE_USER: &str = concat!(
    prelude!(),
    r#"
local now, grace, prefix, uid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local cutoff = tonumber(ARGV[5])
local max_ttl = tonumber(ARGV[6])
local spare = {}
for i = 7, #ARGV do spare[ARGV[i]] = true end
local at = cutoff or now
local w = tonumber(redis.call('GET', KEYS[2]))
if not w or w < at then
  redis.call('SET', KEYS[2], at)
  redis.call('EXPIREAT', KEYS[2], math.max(1, at + max_ttl + grace))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - grace)
local out = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local skey = prefix .. ':s:' .. sid
  local cur = redis.call('HMGET', skey, 'u', 'e', 't')
  local ce = tonumber(cur[2])
  if cur[1] ~= uid then
    redis.call('ZREM', KEYS[1], sid)
  elseif ce and ce > now then
    local t = tonumber(cur[3]) or 0
    if (not cutoff or t <= cutoff) and not spare[sid] then
      redis.call('DEL', skey)
      redis.call('ZREM', KEYS[1], sid)
      put_tomb(prefix .. ':r:' .. sid, ce, grace)
      out[#out + 1] = sid
      out[#out + 1] = t
    end
  end
end
return out
"#
);

/// `list_user`: KEYS user index; ARGV now, grace, prefix, uid, limit. Prunes dead members;
/// answers the live sessions flat, `{sid, d, e, ...}`: all of them, or when more than `limit`
/// are live, those with the `limit` smallest created_at plus any tied with the last one (the
/// caller sorts by created_at then id and keeps `limit`).
const LIST_USER: &str = concat!(
    prelude!(),
    r#"
local now, grace, prefix, uid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - grace)
local live = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local cur = redis.call('HMGET', prefix .. ':s:' .. sid, 'u', 'e', 't', 'd')
  local ce = tonumber(cur[2])
  if cur[1] ~= uid then
    redis.call('ZREM', KEYS[1], sid)
  elseif ce and ce > now then
    live[#live + 1] = {sid, tonumber(cur[3]) or 0, cur[4], ce}
  end
end
if #live > limit then
  table.sort(live, function(a, b) return a[2] < b[2] end)
  local cut = live[limit][2]
  local n = limit
  while live[n + 1] and live[n + 1][2] <= cut do n = n + 1 end
  for i = #live, n + 1, -1 do live[i] = nil end
end
local out = {}
for _, v in ipairs(live) do
  out[#out + 1] = v[1]
  out[#out + 1] = v[3]
  out[#out + 1] = v[4]
end
return out
"#
);

/// `Expiry` on replay: KEYS session, tombstone; ARGV now, expires_at, grace, prefix, sid. Sets
/// the expiry of the session if its hash is held (live, or expired at `now` but not yet gone:
/// the refresh was taken while it was live, and the embedded store's log sets the expiry of any
/// session it holds) and the id is not revoked; answers 1 when it did. A revoked id has no
/// hash, and an unknown one gets none.
const EXPIRY: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'u', 'e')
if not (cur[1] and cur[2]) or tomb_live(KEYS[2], now) then return 0 end
set_expiry(KEYS[1], ARGV[4], cur[1], ARGV[5], tonumber(ARGV[2]), now, tonumber(ARGV[3]))
return 1
"#
);

/// `Tomb` on replay: KEYS session, tombstone; ARGV now, until, grace, prefix, sid. When `until`
/// is still ahead: removes the session whatever its state (revocations win) and keeps a
/// tombstone until the latest of `until`, the live session's expiry and an earlier tombstone;
/// answers 1. A revocation already over (`until <= now`) changes nothing (answers 0): the
/// session it revoked has expired too, so a live session with that id is a later one, created
/// after the tombstone ended.
const TOMB: &str = concat!(
    prelude!(),
    r#"
local now, till, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if till <= now then return 0 end
local cur = redis.call('HMGET', KEYS[1], 'u', 'e')
local ce = tonumber(cur[2])
if ce and ce > till then till = ce end
if cur[1] then
  redis.call('DEL', KEYS[1])
  unindex(ARGV[4], cur[1], ARGV[5])
end
put_tomb(KEYS[2], till, grace)
return 1
"#
);

/// One script: its source and the SHA-1 `EVALSHA` names it by.
#[derive(Debug)]
pub(crate) struct LuaScript {
    /// For error messages.
    pub(crate) name: &'static str,
    /// The Lua source.
    pub(crate) source: &'static str,
    /// Lower-case hex SHA-1 of `source`.
    pub(crate) sha: String,
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str) -> LuaScript {
        LuaScript { name, source, sha: sha1_hex(source.as_bytes()) }
    }

    /// `EVALSHA sha numkeys keys.. args..` (or `EVAL source ..` when `by_sha` is false).
    pub(crate) fn command(&self, by_sha: bool, keys: &[&str], args: &[Arg<'_>]) -> Cmd {
        let mut cmd = if by_sha {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.sha);
            c
        } else {
            let mut c = redis::cmd("EVAL");
            c.arg(self.source);
            c
        };
        cmd.arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            match a {
                Arg::Str(s) => cmd.arg(*s),
                Arg::Bytes(b) => cmd.arg(*b),
                Arg::Int(i) => cmd.arg(*i),
            };
        }
        cmd
    }
}

/// An ARGV entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// A string.
    Str(&'a str),
    /// Binary data (a MessagePack blob).
    Bytes(&'a [u8]),
    /// A number, sent in decimal.
    Int(i64),
}

/// Every script of the store.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) get: LuaScript,
    pub(crate) create: LuaScript,
    pub(crate) refresh: LuaScript,
    pub(crate) revoke: LuaScript,
    pub(crate) revoke_user: LuaScript,
    pub(crate) list_user: LuaScript,
    pub(crate) expiry: LuaScript,
    pub(crate) tomb: LuaScript,
}

impl Scripts {
    /// All of them, for loading.
    pub(crate) fn all(&self) -> [&LuaScript; 8] {
        [
            &self.get,
            &self.create,
            &self.refresh,
            &self.revoke,
            &self.revoke_user,
            &self.list_user,
            &self.expiry,
            &self.tomb,
        ]
    }
}

/// The scripts, hashed once per process.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    get: LuaScript::new("get", GET),
    create: LuaScript::new("create", CREATE),
    refresh: LuaScript::new("refresh", REFRESH),
    revoke: LuaScript::new("revoke", REVOKE),
    revoke_user: LuaScript::new("revoke_user", REVOKE_USER),
    list_user: LuaScript::new("list_user", LIST_USER),
    expiry: LuaScript::new("expiry", EXPIRY),
    tomb: LuaScript::new("tomb", TOMB),
});

/// Whether an error is the server's `NOSCRIPT` (the script cache does not hold the SHA).
pub(crate) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Whether a pipelined reply is `NOSCRIPT`.
pub(crate) fn value_is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// Runs a script: `EVALSHA`, then `EVAL` on `NOSCRIPT`. Cancel-safe: a script runs at most
/// once, atomically, and `NOSCRIPT` means it did not run.
pub(crate) async fn invoke<C>(
    conn: &mut C,
    script: &LuaScript,
    keys: &[&str],
    args: &[Arg<'_>],
) -> redis::RedisResult<Value>
where
    C: redis::aio::ConnectionLike + Send,
{
    match script.command(true, keys, args).query_async::<Value>(conn).await {
        Err(e) if is_noscript(&e) => {
            script.command(false, keys, args).query_async::<Value>(conn).await
        }
        other => other,
    }
}

/// SHA-1 (FIPS 180-4) of `data` in lower-case hex, as `SCRIPT LOAD` answers it.
pub(crate) fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let bit_len = u64::try_from(data.len()).unwrap_or(u64::MAX).wrapping_mul(8);
    let mut msg = Vec::with_capacity(data.len() + 72);
    msg.extend_from_slice(data);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    let mut w = [0u32; 80];
    for block in msg.chunks_exact(64) {
        for (slot, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *slot = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t =
                a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = String::with_capacity(40);
    for v in h {
        for byte in v.to_be_bytes() {
            out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(byte & 0xF), 16).unwrap_or('0'));
        }
    }
    out
}
