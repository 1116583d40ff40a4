//! Who a request is: the bearer token checked as PostgREST does it, and each token's budget of
//! database refusals.
//!
//! Tokens: HS256 only; the header and the claims are parsed strictly first (a duplicate member
//! anywhere is refused, as RFC 7515 §5.2 allows, so `{"role":"app","role":"ops"}` cannot mean one
//! thing here and another to a different parser; a `crit` header names extensions we do not
//! understand, so it is refused as §4.1.11 requires); `exp` is required and `nbf` honoured, each a
//! non-negative NumericDate compared with `leeway` seconds of clock skew, whatever its size; `aud`
//! must match when one is configured.
//!
//! Refusals: a token the database keeps refusing could append audit rows without bound. Each
//! token has a budget of `limit` refusals per sliding `window`, and a request *reserves* its place
//! in the budget before it reaches the database, so that K concurrent requests of a refused token
//! make at most `limit` database refusals, not K: a token may have at most `limit - refusals in the
//! window` requests in the database at once; more wait (up to `RESERVE_WAIT`) for one to finish;
//! past the budget, 429 without touching the database.

use super::reply::{Reply, error};
use axum::http::HeaderMap;
use base64::Engine;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a request waits for its token's place in the database when the token's other requests
/// fill it.
const RESERVE_WAIT: Duration = Duration::from_secs(5);
/// Tokens tracked at most; beyond it, those without a refusal inside the window are forgotten.
const REFUSALS_TRACKED: usize = 10_000;

/// A JSON value parsed with duplicate object members refused at every depth.
struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(de::Error::custom(format!("duplicate member \"{key}\"")));
            }
        }
        Ok(Value::Object(out))
    }
}

/// A JSON object parsed strictly (no duplicate members at any depth), or why not.
pub fn strict_object(bytes: &[u8]) -> Result<Object, String> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(m))) => Ok(m),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

type Object = Map<String, Value>;

/// The token's header and claims segments, decoded and parsed strictly.
fn segments(token: &str) -> Result<(Object, Object), String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three base64url segments".into());
    };
    let decode = |s: &str, what: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| format!("{what} is not base64url: {e}"))
            .and_then(|b| strict_object(&b).map_err(|e| format!("{what}: {e}")))
    };
    Ok((decode(h, "header")?, decode(c, "claims")?))
}

/// How tokens are checked: HS256 only, the signature and `aud` by the library, `exp` and `nbf` by
/// [`check_times`] (the library ignores a time it cannot read as u64).
pub fn validation(aud: Option<&str>) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    match aud {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.set_required_spec_claims(&["aud"]);
        }
        None => {
            v.validate_aud = false;
            v.set_required_spec_claims::<&str>(&[]);
        }
    }
    v
}

/// The time as a NumericDate (seconds since 1970, with a fraction).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `exp` (required) and `nbf` (optional): non-negative numbers, compared with `now` and `leeway`
/// seconds of skew as real numbers, so a value of any size is honoured.
fn check_times(claims: &Object, now: f64, leeway: u64) -> Result<(), String> {
    let time = |name: &str| -> Result<Option<f64>, String> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(t)),
                _ => Err(format!("{name} is not a NumericDate")),
            },
        }
    };
    let leeway = leeway as f64;
    match time("exp")? {
        None => return Err("no exp claim".into()),
        Some(exp) if exp + leeway < now => return Err("the token has expired".into()),
        _ => {}
    }
    if let Some(nbf) = time("nbf")?
        && nbf - leeway > now
    {
        return Err("the token is not valid yet (nbf)".into());
    }
    Ok(())
}

/// Whether the claims of a token verified earlier are still in their time (a long stream checks
/// again at each step).
pub fn still_valid(claims: &Value, leeway: u64) -> Result<(), String> {
    let now = unix_now();
    match claims.as_object() {
        Some(c) => check_times(c, now, leeway),
        None => Err("no claims".into()),
    }
}

/// A verified token: its claims, and the key its refusals are counted under.
pub struct Token {
    pub claims: Value,
    pub key: String,
}

/// Verify the bearer token of a request (401 with the reason when it is not acceptable).
pub fn authenticate(
    headers: &HeaderMap,
    token_header: Option<&axum::http::HeaderName>,
    secret: &[u8],
    validation: &jsonwebtoken::Validation,
    leeway: u64,
) -> Result<Token, Reply> {
    let refuse = |why: &str| error(401, &format!("invalid token: {why}"));
    let bearer = |v: &axum::http::HeaderValue| v.to_str().ok().map(|h| h.trim().to_owned());
    let token = match headers.get(axum::http::header::AUTHORIZATION) {
        Some(v) => bearer(v).and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned)),
        // (a header a proxy in front sets: the raw token, or "Bearer <token>")
        None => token_header
            .and_then(|name| headers.get(name))
            .and_then(bearer)
            .map(|h| h.strip_prefix("Bearer ").map(str::to_owned).unwrap_or(h)),
    }
    .ok_or_else(|| error(401, "missing bearer token"))?;
    let token = token.trim();
    let (header, claims) = segments(token).map_err(|e| refuse(&e))?;
    if header.contains_key("crit") {
        return Err(refuse(
            "the header has a crit member, naming extensions this server does not understand",
        ));
    }
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret),
        validation,
    )
    .map_err(|e| refuse(&e.to_string()))?;
    let now = unix_now();
    check_times(&claims, now, leeway).map_err(|e| refuse(&e))?;
    if !claims.get("role").is_some_and(Value::is_string) {
        return Err(refuse("no role claim"));
    }
    let claims = Value::Object(claims);
    let key = refusal_key(token, &claims);
    Ok(Token { claims, key })
}

/// The key a token's refusals are counted under: its `role` and `sub` claims (any number of tokens
/// for one subject share a budget), or its signature when it has no `sub`.
fn refusal_key(token: &str, claims: &Value) -> String {
    let role = claims["role"].as_str().unwrap_or_default();
    match claims.get("sub") {
        Some(sub) if !sub.is_null() => format!("sub\u{0}{role}\u{0}{sub}"),
        _ => format!(
            "sig\u{0}{role}\u{0}{}",
            token.rsplit('.').next().unwrap_or_default()
        ),
    }
}

#[derive(Default)]
struct Budget {
    /// Refusals inside the window, oldest first.
    refused: VecDeque<Instant>,
    /// Requests of this token in the database now.
    inflight: usize,
}

/// Every token's refusal budget.
pub struct Refusals {
    limit: usize,
    window: Duration,
    seen: Mutex<HashMap<String, Budget>>,
    freed: tokio::sync::Notify,
}

enum Reserve {
    Granted,
    /// Over the budget: seconds until a refusal leaves the window.
    Over(u64),
    /// The token's other requests fill its place in the database.
    Wait,
}

impl Refusals {
    pub fn new(limit: usize, window: Duration) -> Self {
        Refusals {
            limit: limit.max(1),
            window,
            seen: Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn expire(b: &mut Budget, cutoff: Option<Instant>) {
        while b
            .refused
            .front()
            .is_some_and(|t| cutoff.is_some_and(|c| *t <= c))
        {
            b.refused.pop_front();
        }
    }

    fn try_reserve(&self, key: &str, now: Instant) -> Reserve {
        let cutoff = now.checked_sub(self.window);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REFUSALS_TRACKED && !seen.contains_key(key) {
            seen.retain(|_, b| {
                Self::expire(b, cutoff);
                !b.refused.is_empty() || b.inflight > 0
            });
        }
        let b = seen.entry(key.to_string()).or_default();
        Self::expire(b, cutoff);
        if b.refused.len() >= self.limit {
            let oldest = b.refused[0];
            return Reserve::Over(
                (oldest + self.window)
                    .saturating_duration_since(now)
                    .as_secs()
                    + 1,
            );
        }
        if b.refused.len() + b.inflight >= self.limit {
            return Reserve::Wait;
        }
        b.inflight += 1;
        Reserve::Granted
    }

    fn finish(&self, key: &str, refused: bool, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = seen.get_mut(key) {
            b.inflight = b.inflight.saturating_sub(1);
            if refused {
                b.refused.push_back(now);
                while b.refused.len() > self.limit {
                    b.refused.pop_front();
                }
            }
        }
        drop(seen);
        self.freed.notify_waiters();
    }

    /// A place in the database for one request of `token`, or 429.
    pub async fn reserve(self: &Arc<Self>, token: &Token) -> Result<Reservation, Reply> {
        let deadline = tokio::time::Instant::now() + RESERVE_WAIT;
        loop {
            // (registered before the check, so that a release between the two is not missed)
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_reserve(&token.key, Instant::now()) {
                Reserve::Granted => {
                    return Ok(Reservation {
                        refusals: self.clone(),
                        key: token.key.clone(),
                        done: false,
                    });
                }
                Reserve::Over(secs) => return Err(too_many(secs)),
                Reserve::Wait => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(too_many(1));
                    }
                }
            }
        }
    }
}

fn too_many(retry_after: u64) -> Reply {
    let mut r = error(
        429,
        "too many requests refused by the database for this token: try again later",
    );
    r.retry_after = Some(retry_after);
    r
}

/// A request's place in its token's budget. Finished with whether the database refused it; a
/// request abandoned on the way (a timeout) counts as refused, since the database may have
/// refused, and audited, it.
pub struct Reservation {
    refusals: Arc<Refusals>,
    key: String,
    done: bool,
}

impl Reservation {
    pub fn finish(mut self, refused: bool) {
        self.done = true;
        self.refusals.finish(&self.key, refused, Instant::now());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.refusals.finish(&self.key, true, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &str) -> Token {
        Token {
            claims: Value::Null,
            key: key.into(),
        }
    }

    #[test]
    fn refusals_are_bounded_per_token_in_a_sliding_window() {
        let r = Refusals::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 0..3 {
            assert!(matches!(r.try_reserve("a", at(s)), Reserve::Granted));
            r.finish("a", true, at(s));
        }
        assert!(matches!(r.try_reserve("a", at(3)), Reserve::Over(58)));
        assert!(matches!(r.try_reserve("b", at(3)), Reserve::Granted));
        // the first refusal leaves the window at 60 s
        assert!(matches!(r.try_reserve("a", at(60)), Reserve::Granted));
        r.finish("a", true, at(60));
        assert!(matches!(r.try_reserve("a", at(60)), Reserve::Over(_)));
        assert!(matches!(r.try_reserve("a", at(200)), Reserve::Granted));
    }

    #[test]
    fn requests_in_the_database_count_against_the_budget() {
        let r = Refusals::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..3 {
            assert!(matches!(r.try_reserve("a", now), Reserve::Granted));
        }
        assert!(matches!(r.try_reserve("a", now), Reserve::Wait));
        r.finish("a", false, now); // one succeeded: its place is free again
        assert!(matches!(r.try_reserve("a", now), Reserve::Granted));
        r.finish("a", true, now);
        assert!(matches!(r.try_reserve("a", now), Reserve::Wait));
    }

    #[tokio::test]
    async fn an_abandoned_reservation_counts_as_refused() {
        let r = Arc::new(Refusals::new(1, Duration::from_secs(60)));
        drop(r.reserve(&token("a")).await.ok().expect("granted"));
        assert!(r.reserve(&token("a")).await.is_err());
    }

    #[test]
    fn strict_parsing_refuses_duplicates_at_any_depth() {
        assert!(strict_object(br#"{"role":"app","role":"ops"}"#).is_err());
        assert!(strict_object(br#"{"a":{"b":1,"b":2}}"#).is_err());
        assert!(strict_object(br#"{"a":[{"b":1,"b":2}]}"#).is_err());
        assert!(strict_object(br#"["x"]"#).is_err());
        assert_eq!(
            strict_object(br#"{"role":"app","n":1e30}"#).unwrap()["role"],
            "app"
        );
    }

    #[test]
    fn times_of_any_size_are_compared() {
        let claims = |s: &str| strict_object(s.as_bytes()).unwrap();
        let now = 1_000_000.0;
        assert!(check_times(&claims(r#"{"exp":2000000}"#), now, 5).is_ok());
        assert!(check_times(&claims(r#"{}"#), now, 5).is_err());
        assert!(check_times(&claims(r#"{"exp":999990}"#), now, 5).is_err());
        assert!(check_times(&claims(r#"{"exp":999996}"#), now, 5).is_ok());
        assert!(check_times(&claims(r#"{"exp":2000000,"nbf":1e30}"#), now, 5).is_err());
        assert!(
            check_times(
                &claims(r#"{"exp":2000000,"nbf":18446744073709551616}"#),
                now,
                5
            )
            .is_err()
        );
        assert!(check_times(&claims(r#"{"exp":2000000,"nbf":-1}"#), now, 5).is_err());
        assert!(check_times(&claims(r#"{"exp":"2000000"}"#), now, 5).is_err());
        assert!(check_times(&claims(r#"{"exp":1e30,"nbf":999000.5}"#), now, 5).is_ok());
    }
}
