//! `token_verify`: `sessiond_actors::token::Verifier::verify` on hostile tokens.
//!
//! The first input byte picks a mode (`mode % 4`); the rest is the payload of that mode:
//!
//! - 0, raw: the rest is the token (exact `&str` when it is UTF-8, else lossy).
//! - 1, raw JSON, signed: the rest is `header JSON 0xFF payload JSON`; both are base64url-encoded
//!   as they are (any bytes, duplicate members, non-objects …) and HMAC-signed with the test
//!   secret, so the structure checks see the fuzzer's JSON *and* the signature verifies
//!   whenever the header names the algorithm it was signed with (`mode >> 2 & 3`).
//! - 2, claims JSON via `sign_hmac`: the rest is parsed as a JSON object and signed with
//!   `sign_hmac` (standard header), so every input reaches the claim and layout checks.
//! - 3, claims built from bytes: the rest drives a small builder that picks, for every claim
//!   the verifier reads, absent / a tricky string / an integer / a float / another type; then
//!   `sign_hmac`. This reaches the normalizer's corners (control characters, 256-byte limits,
//!   `@` placement, integer ids, time extremes) far faster than mutating JSON text.
//!
//! In modes 2 and 3 `now` is picked by `mode >> 4 & 3`: the fixed [`NOW`], `i64::MIN`,
//! `i64::MAX`, or 8 bytes taken from the input.
//!
//! Every token is verified by two verifiers: a lenient one (HS256/384/512, leeway 30 s, no
//! `iss`/`aud`) and a strict one (HS256 only, leeway 0, `iss` and `aud` required).
//!
//! Invariants checked (a violation panics, which libFuzzer reports as a crash):
//!
//! - `verify` never panics, whatever the input;
//! - on `Ok`: user id, email, role and session id are non-empty, at most
//!   `MAX_FIELD_BYTES` (256) bytes, without ASCII control characters (< 0x20, 0x7f); a legacy
//!   identity's email contains `@`, an enhanced identity's user id does not; the token is not
//!   expired at `now` (`now < exp + leeway`);
//! - on `Err`: the message quotes no part of the token (no base64url part of 20 characters or
//!   more appears in it; docs/tokens.md: "Error messages never quote the token");
//! - modes 2 and 3 (a well-formed token signed with the right key): the result equals, code
//!   for code and field for field, a reference model of steps 4 and 5 written from
//!   docs/tokens.md (registered claims, then layout and normalization), independently of the
//!   daemon's code.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Number, Value};
use sessiond_actors::domain::{Identity, TokenFormat, UnixSeconds};
use sessiond_actors::token::{
    MAX_FIELD_BYTES, MAX_TOKEN_BYTES, TokenError, TokenSettings, Verifier, derived_session_id,
    sign_hmac,
};

/// The HMAC secret both verifiers hold (and the seeds are signed with).
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-fuzz-secret";
/// The default verification time.
pub const NOW: UnixSeconds = 1_764_300_000;
/// The lenient verifier's leeway.
pub const LEEWAY: i64 = 30;
/// The strict verifier's required `iss`.
pub const ISSUER: &str = "https://issuer.example";
/// The strict verifier's required `aud`.
pub const AUDIENCE: &str = "sessiond";
/// Separates the header JSON from the payload JSON in mode 1 (never valid inside UTF-8).
pub const SEP: u8 = 0xff;

/// Which verifier, with what it was configured with (for the model).
pub struct Config {
    pub verifier: Verifier,
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<&'static str>,
    pub audience: Option<&'static str>,
    pub leeway: i64,
}

fn build(
    algorithms: &[Algorithm],
    issuer: Option<&'static str>,
    audience: Option<&'static str>,
    leeway: i64,
) -> Config {
    let settings = TokenSettings {
        algorithms: algorithms.to_vec(),
        hmac_secret: Some(SECRET.to_vec()),
        public_keys: vec![],
        issuer: issuer.map(str::to_owned),
        audience: audience.map(str::to_owned),
        leeway_seconds: leeway,
    };
    let verifier = match Verifier::new(settings) {
        Ok(v) => v,
        Err(e) => panic!("fuzz setup: cannot build the verifier: {e}"),
    };
    Config { verifier, algorithms: algorithms.to_vec(), issuer, audience, leeway }
}

/// The lenient and the strict verifier, built once.
pub fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        [
            build(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512], None, None, LEEWAY),
            build(&[Algorithm::HS256], Some(ISSUER), Some(AUDIENCE), 0),
        ]
    })
}

fn hs_alg(selector: u8) -> Algorithm {
    match selector % 3 {
        0 => Algorithm::HS256,
        1 => Algorithm::HS384,
        _ => Algorithm::HS512,
    }
}

/// Signs raw header and payload bytes (any bytes) with the test secret.
pub fn sign_raw(header: &[u8], payload: &[u8], alg: Algorithm) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let key = match EncodingKey::from_secret(SECRET) {
        Ok(k) => k,
        Err(e) => panic!("fuzz setup: {e}"),
    };
    match jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg) {
        Ok(sig) => format!("{input}.{sig}"),
        Err(e) => panic!("fuzz setup: signing failed: {e}"),
    }
}

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            for c in configs() {
                let _ = check_generic(c, &token, NOW);
            }
        }
        1 => {
            let (header, payload) = match rest.iter().position(|b| *b == SEP) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
            };
            let token = sign_raw(header, payload, hs_alg(mode >> 2));
            for c in configs() {
                let _ = check_generic(c, &token, NOW);
            }
        }
        _ => {
            let (now, rest) = pick_now(mode >> 4, rest);
            let claims = if mode % 4 == 2 {
                match serde_json::from_slice::<Value>(rest) {
                    Ok(Value::Object(map)) => map,
                    _ => return,
                }
            } else {
                build_claims(&mut Bytes(rest))
            };
            let alg = hs_alg(mode >> 2);
            let token = match sign_hmac(SECRET, alg, &Value::Object(claims.clone())) {
                Ok(t) => t,
                Err(e) => panic!("sign_hmac refused an object: {e}"),
            };
            for c in configs() {
                let got = check_generic(c, &token, now);
                let want = model(c, &token, alg, &claims, now);
                assert_eq!(
                    Comparable::from(&got),
                    want,
                    "verify disagrees with the docs/tokens.md model\n  verifier algorithms \
                     {:?}, iss {:?}, aud {:?}, leeway {}\n  now {now}\n  claims {}",
                    c.algorithms,
                    c.issuer,
                    c.audience,
                    c.leeway,
                    Value::Object(claims.clone()),
                );
            }
        }
    }
}

fn pick_now(selector: u8, rest: &[u8]) -> (UnixSeconds, &[u8]) {
    match selector % 4 {
        0 => (NOW, rest),
        1 => (i64::MIN, rest),
        2 => (i64::MAX, rest),
        _ if rest.len() >= 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[..8]);
            (i64::from_le_bytes(b), &rest[8..])
        }
        _ => (NOW, rest),
    }
}

/// Verifies and checks the invariants that hold for any token.
fn check_generic(c: &Config, token: &str, now: UnixSeconds) -> Result<Identity, TokenError> {
    let result = c.verifier.verify(token, now);
    match &result {
        Ok(id) => {
            for (what, value) in [
                ("user_id", &id.user_id),
                ("email", &id.email),
                ("role", &id.role),
                ("session_id", &id.session_id),
            ] {
                assert!(!value.is_empty(), "accepted token with an empty {what}: {token:?}");
                assert!(
                    value.len() <= MAX_FIELD_BYTES,
                    "accepted token with a {what} of {} bytes: {token:?}",
                    value.len()
                );
                assert!(
                    !value.bytes().any(|b| b < 0x20 || b == 0x7f),
                    "accepted token with a control character in {what} ({value:?}): {token:?}"
                );
            }
            match id.format {
                TokenFormat::Legacy => {
                    assert!(id.email.contains('@'), "legacy identity without @ in email: {id:?}")
                }
                TokenFormat::Enhanced => {
                    assert!(
                        !id.user_id.contains('@'),
                        "enhanced identity with @ in user id: {id:?}"
                    )
                }
            }
            assert!(
                now < id.expires_at.saturating_add(c.leeway),
                "accepted an expired token at {now}: {id:?}"
            );
        }
        Err(e) => {
            let message = e.to_string();
            for part in token.split('.') {
                assert!(
                    part.len() < 20 || !message.contains(part),
                    "the error message quotes part of the token: {message:?}"
                );
            }
        }
    }
    result
}

/// What is compared with the model: the code, the seconds of the time errors, the identity.
#[derive(Debug, PartialEq, Eq)]
pub enum Comparable {
    Ok(Identity),
    Expired(i64),
    NotYetValid(i64),
    Code(&'static str),
}

impl From<&Result<Identity, TokenError>> for Comparable {
    fn from(r: &Result<Identity, TokenError>) -> Self {
        match r {
            Ok(id) => Comparable::Ok(id.clone()),
            Err(TokenError::Expired { seconds_ago }) => Comparable::Expired(*seconds_ago),
            Err(TokenError::NotYetValid { seconds_ahead }) => {
                Comparable::NotYetValid(*seconds_ahead)
            }
            Err(e) => Comparable::Code(e.code()),
        }
    }
}

const MALFORMED: Comparable = Comparable::Code("token_malformed");
const CLAIMS_INVALID: Comparable = Comparable::Code("token_claims_invalid");

/// The expected result for a token signed by `sign_hmac` with `alg` over `claims`, per
/// docs/tokens.md (written from the page, not from the code).
pub fn model(
    c: &Config,
    token: &str,
    alg: Algorithm,
    claims: &Map<String, Value>,
    now: UnixSeconds,
) -> Comparable {
    // 1. Structure: sign_hmac's header and JSON are well formed; only the length can fail.
    if token.len() > MAX_TOKEN_BYTES {
        return MALFORMED;
    }
    // 2. Algorithm: must be listed.
    if !c.algorithms.contains(&alg) {
        return Comparable::Code("token_algorithm_rejected");
    }
    // 3. Signature: right key, right algorithm.
    // 4. Registered claims.
    let times = match model_claims(c, claims, now) {
        Ok(t) => t,
        Err(e) => return e,
    };
    // 5. Layout.
    model_layout(claims, token, times)
}

/// "Fractions are rounded down; integers beyond i64 saturate."
fn seconds(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else { return None };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return Some(i64::MAX);
    }
    let f = n.as_f64()?.floor();
    Some(if f >= i64::MAX as f64 {
        i64::MAX
    } else if f <= i64::MIN as f64 {
        i64::MIN
    } else {
        f as i64
    })
}

fn model_claims(
    c: &Config,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<(i64, Option<i64>), Comparable> {
    let exp = claims.get("exp").and_then(seconds).ok_or(CLAIMS_INVALID)?;
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => seconds(v).map(Some).ok_or(CLAIMS_INVALID),
    };
    let iat = time("iat")?;
    let nbf = time("nbf")?;
    if let Some(issuer) = c.issuer {
        match claims.get("iss") {
            Some(Value::String(s)) if s == issuer => {}
            _ => return Err(CLAIMS_INVALID),
        }
    }
    if let Some(audience) = c.audience {
        match claims.get("aud") {
            Some(Value::String(s)) if s == audience => {}
            Some(Value::Array(list)) => {
                if list.iter().any(|v| !v.is_string()) {
                    return Err(CLAIMS_INVALID);
                }
                if !list.iter().any(|v| v.as_str() == Some(audience)) {
                    return Err(CLAIMS_INVALID);
                }
            }
            _ => return Err(CLAIMS_INVALID),
        }
    }
    let leeway = c.leeway.max(0);
    if now >= exp.saturating_add(leeway) {
        return Err(Comparable::Expired(now.saturating_sub(exp)));
    }
    if let Some(nbf) = nbf
        && now < nbf.saturating_sub(leeway)
    {
        return Err(Comparable::NotYetValid(nbf.saturating_sub(now)));
    }
    if let Some(iat) = iat
        && iat > now.saturating_add(leeway)
    {
        return Err(Comparable::NotYetValid(iat.saturating_sub(now)));
    }
    Ok((exp, iat))
}

fn field_ok(s: &str) -> bool {
    s.len() <= MAX_FIELD_BYTES && !s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fn non_empty_string(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn model_layout(
    claims: &Map<String, Value>,
    token: &str,
    (exp, iat): (i64, Option<i64>),
) -> Comparable {
    let Some(Value::String(sub)) = claims.get("sub") else { return MALFORMED };
    let id = claims.get("id");
    let email = claims.get("email");
    let legacy = if sub.contains('@') && id.is_some() {
        true
    } else if !sub.contains('@') && !sub.is_empty() && email.is_some() {
        false
    } else {
        return MALFORMED;
    };
    // "id, wherever it appears, must be a non-empty string or an integer (i64 or u64)".
    let id_rendered = match id {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(_) => return MALFORMED,
    };
    let email_value = match email {
        None => None,
        Some(v) => match non_empty_string(v) {
            Some(s) => Some(s.to_owned()),
            None => return MALFORMED,
        },
    };
    let Some(role) = claims.get("role").and_then(non_empty_string) else { return MALFORMED };
    let mut session = [None, None];
    for (slot, name) in session.iter_mut().zip(["sid", "jti"]) {
        match claims.get(name) {
            None => {}
            Some(v) => match non_empty_string(v) {
                Some(s) if field_ok(s) => *slot = Some(s.to_owned()),
                _ => return MALFORMED,
            },
        }
    }
    let (user_id, mail) = if legacy {
        (id_rendered.clone().unwrap_or_default(), sub.clone())
    } else {
        (sub.clone(), email_value.clone().unwrap_or_default())
    };
    if !field_ok(&user_id) || !field_ok(&mail) || !field_ok(role) {
        return MALFORMED;
    }
    if legacy {
        if email_value.is_some_and(|e| &e != sub) {
            return Comparable::Code("token_inconsistent");
        }
    } else if id_rendered.is_some_and(|i| &i != sub) {
        return Comparable::Code("token_inconsistent");
    }
    let [sid, jti] = session;
    Comparable::Ok(Identity {
        user_id,
        email: mail,
        role: role.to_owned(),
        session_id: sid.or(jti).unwrap_or_else(|| derived_session_id(token)),
        format: if legacy { TokenFormat::Legacy } else { TokenFormat::Enhanced },
        issued_at: iat,
        expires_at: exp,
    })
}

/// A cursor over the input that answers 0 once exhausted.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        a.to_vec()
    }
}

/// Strings that sit on the normalizer's edges.
fn tricky_string(b: &mut Bytes<'_>) -> String {
    let pick = b.byte();
    match pick % 20 {
        0 => String::new(),
        1 => "ada@example.com".into(),
        2 => "u-42".into(),
        3 => "42".into(),
        4 => "@".into(),
        5 => "a".repeat(MAX_FIELD_BYTES),
        6 => "a".repeat(MAX_FIELD_BYTES + 1),
        7 => format!("{}@example.com", "a".repeat(MAX_FIELD_BYTES - 12)),
        8 => "é".repeat(MAX_FIELD_BYTES / 2),
        9 => "line\nbreak".into(),
        10 => "del\u{7f}".into(),
        11 => "tab\there".into(),
        12 => "\u{85}next-line-c1".into(),
        13 => "admin".into(),
        14 => "s-1".into(),
        15 => ISSUER.into(),
        16 => AUDIENCE.into(),
        17 => "t_AAAAAAAAAAAAAAAAAAAAAA".into(),
        // The next bytes as a string (lossy), up to 300 of them.
        _ => {
            let n = usize::from(b.byte()) + usize::from(pick & 0x40) * 2;
            String::from_utf8_lossy(&b.take(n)).into_owned()
        }
    }
}

fn time_value(b: &mut Bytes<'_>) -> Value {
    let pick = b.byte();
    let delta = i64::from(b.byte() as i8);
    match pick % 12 {
        0 => Value::from(NOW + 3600),
        1 => Value::from(NOW + delta),
        2 => Value::from(NOW - LEEWAY + delta),
        3 => Value::from(NOW + LEEWAY + delta),
        4 => Value::from(i64::MAX),
        5 => Value::from(i64::MIN),
        6 => Value::from(u64::MAX),
        7 => Value::from(i64::MAX as u64 + 1),
        8 => Number::from_f64((NOW + delta) as f64 + 0.5).map_or(Value::Null, Value::Number),
        9 => Number::from_f64(delta as f64 * 1e300).map_or(Value::Null, Value::Number),
        10 => Value::from(b.i64()),
        _ => Value::from(-0.5),
    }
}

/// A value for any claim: mostly the expected type, sometimes another one.
fn any_value(b: &mut Bytes<'_>, time: bool) -> Option<Value> {
    let pick = b.byte();
    Some(match pick % 10 {
        0 => return None,
        1..=4 if time => time_value(b),
        1..=4 => Value::String(tricky_string(b)),
        5 => Value::from(i64::from(b.byte()) - 1),
        6 => Value::from(b.i64()),
        7 => Value::from(u64::MAX),
        8 => match b.byte() % 5 {
            0 => Value::Null,
            1 => Value::Bool(true),
            2 => Value::from(42.0),
            3 => Value::Array(vec![Value::String(tricky_string(b)), Value::from(1)]),
            _ => Value::Object(Map::new()),
        },
        _ if time => Value::String("1764300000".into()),
        _ => Value::String(tricky_string(b)),
    })
}

/// Claims driven by the input bytes: the claims the verifier reads, plus an extra one.
pub fn build_claims(b: &mut Bytes<'_>) -> Map<String, Value> {
    let mut claims = Map::new();
    let layout = b.byte();
    for (name, time) in [
        ("sub", false),
        ("id", false),
        ("email", false),
        ("role", false),
        ("sid", false),
        ("jti", false),
        ("exp", true),
        ("iat", true),
        ("nbf", true),
        ("iss", false),
        ("aud", false),
    ] {
        if let Some(v) = any_value(b, time) {
            claims.insert(name.to_owned(), v);
        }
    }
    // Nudge half the inputs towards an acceptable token of either layout.
    if layout & 1 == 1 {
        let legacy = layout & 2 == 2;
        claims.entry("sub").or_insert_with(|| {
            Value::String(if legacy { "ada@example.com" } else { "u-42" }.into())
        });
        if legacy {
            claims.entry("id").or_insert_with(|| Value::from(42));
        } else {
            claims.entry("email").or_insert_with(|| Value::String("ada@example.com".into()));
        }
        claims.entry("role").or_insert_with(|| Value::String("admin".into()));
        claims.entry("exp").or_insert_with(|| Value::from(NOW + 3600));
        if layout & 4 == 4 {
            claims.entry("iss").or_insert_with(|| Value::String(ISSUER.into()));
            claims.entry("aud").or_insert_with(|| Value::String(AUDIENCE.into()));
        }
    }
    if layout & 8 == 8 {
        let name = tricky_string(b);
        let v = any_value(b, false).unwrap_or(Value::Null);
        claims.insert(name, v);
    }
    claims
}
