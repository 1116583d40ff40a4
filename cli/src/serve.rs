//! `meshhook-keys serve`: the HTTP admin endpoint, authenticated the way Supabase / PostgREST do it.
//!
//! Each request carries `Authorization: Bearer <JWT>` signed HS256 with the configured secret. The
//! token's `role` claim becomes the role of that request's transaction (`set_config('role', …,
//! true)`, i.e. `SET LOCAL ROLE`) and its claims go into `request.jwt.claims`, so the database's own
//! privileges decide: a role without the admin grant is refused by the extension (and audited), and
//! the API maps that to 403. The server connects as an "authenticator" role that may switch to the
//! roles tokens name (`GRANT ops TO authenticator`), like PostgREST.
//!
//! Hostile clients: requests are served concurrently (tokio, hyper's HTTP/1.1 server, axum), so a
//! slow client holds only its own connection. Every resource a client can make the server spend is
//! bounded: the request head (`max_header_bytes`, 431), the time to send it (`HEADER_READ_TIMEOUT`,
//! also the idle keep-alive timeout), the body (`max_body_bytes`, 413, checked against
//! Content-Length before anything is read), the whole request (`request_timeout`, 408), open
//! connections (`MAX_CONNECTIONS`). Every database use is bounded too: connecting
//! (`connect_timeout`), waiting for a pooled connection (`POOL_WAIT`), and each transaction
//! (`SET LOCAL statement_timeout` and `lock_timeout`, plus a client-side deadline that abandons the
//! connection if the server does not answer at all). `/healthz` opens its own connection, with its
//! own deadline (`HEALTH_TIMEOUT`), so a saturated pool or a stalled server gives a prompt 503.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;

/// Time a client has to send a request head, and how long an idle keep-alive connection is kept.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Open client connections; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 512;
/// Waiting for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Connecting to the database, unless the connection string sets connect_timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole of a /healthz check (connect and `SELECT 1`).
const HEALTH_TIMEOUT: Duration = Duration::from_millis(800);
/// /healthz checks running at once (each opens a connection); more wait, within HEALTH_TIMEOUT.
const HEALTH_CONCURRENCY: usize = 2;

/// The server's settings, from `serve`'s arguments (checked in `args`).
pub struct Config {
    pub listen: String,
    pub conninfo: Option<String>,
    pub jwt_secret: Vec<u8>,
    pub jwt_aud: Option<String>,
    pub jwt_leeway: u64,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub pool_size: usize,
    pub refusal_limit: usize,
    pub refusal_window: Duration,
}

struct App {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: postgres_native_tls::MakeTlsConnector,
    health: Semaphore,
    jwt_secret: Vec<u8>,
    jwt_validation: jsonwebtoken::Validation,
    statement_timeout: Duration,
    lock_timeout: Duration,
    refusals: std::sync::Mutex<Refusals>,
}

type St = State<Arc<App>>;

struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body.to_string(),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        retry_after: None,
    }
}

/// Database refusals (403) per token in a sliding window, so that a token the database keeps
/// refusing cannot append audit rows without bound: past `limit` refusals within `window`, its
/// requests are answered 429 without touching the database. A token is known by its `role` and
/// `sub` claims (any number of tokens for one subject share a budget), or by its signature when it
/// has no `sub`.
struct Refusals {
    limit: usize,
    window: Duration,
    seen: std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>,
}

/// Tokens tracked at most; beyond it, those without a refusal inside the window are forgotten.
const REFUSALS_TRACKED: usize = 10_000;

impl Refusals {
    fn new(limit: usize, window: Duration) -> Self {
        Refusals {
            limit,
            window,
            seen: Default::default(),
        }
    }

    fn expire(
        times: &mut std::collections::VecDeque<std::time::Instant>,
        cutoff: Option<std::time::Instant>,
    ) {
        while times
            .front()
            .is_some_and(|t| cutoff.is_some_and(|c| *t <= c))
        {
            times.pop_front();
        }
    }

    /// `Some(seconds until a refusal leaves the window)` when the token is over its budget.
    fn blocked(&mut self, key: &str, now: std::time::Instant) -> Option<u64> {
        let cutoff = now.checked_sub(self.window);
        let times = self.seen.get_mut(key)?;
        Self::expire(times, cutoff);
        if times.len() < self.limit {
            return None;
        }
        let oldest = *times.front()?;
        Some(
            (oldest + self.window)
                .saturating_duration_since(now)
                .as_secs()
                + 1,
        )
    }

    fn record(&mut self, key: &str, now: std::time::Instant) {
        let cutoff = now.checked_sub(self.window);
        if self.seen.len() >= REFUSALS_TRACKED && !self.seen.contains_key(key) {
            self.seen.retain(|_, times| {
                Self::expire(times, cutoff);
                !times.is_empty()
            });
            if self.seen.len() >= REFUSALS_TRACKED {
                return; // (only as many subjects as valid tokens name: not reached in practice)
            }
        }
        let times = self.seen.entry(key.to_string()).or_default();
        Self::expire(times, cutoff);
        times.push_back(now);
        while times.len() > self.limit {
            times.pop_front();
        }
    }
}

/// The key a token's refusals are counted under.
fn refusal_key(headers: &HeaderMap, claims: &Value) -> String {
    let role = claims["role"].as_str().unwrap_or_default();
    match claims.get("sub") {
        Some(sub) if !sub.is_null() => format!("sub\u{0}{role}\u{0}{sub}"),
        _ => {
            let token = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            format!(
                "sig\u{0}{role}\u{0}{}",
                token.rsplit('.').next().unwrap_or_default()
            )
        }
    }
}

fn error(status: u16, msg: &str) -> Reply {
    reply(status, json!({ "error": msg }))
}

/// A database error as an HTTP reply: the database's message and SQLSTATE, with a matching status.
fn db_error(e: tokio_postgres::Error) -> Reply {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let status = match &code[..2] {
                "42" if code == "42501" => 403,
                "28" => 403,
                "22" | "42" => 400,
                "55" => 409,                    // includes 55P03, lock_timeout
                "57" if code == "57014" => 504, // statement_timeout
                "08" | "53" | "57" => 503,
                _ => 500,
            };
            reply(
                status,
                json!({ "error": db.message(), "sqlstate": code, "hint": db.hint() }),
            )
        }
        None => error(503, &format!("database unavailable: {e}")),
    }
}

/// How tokens are checked, as PostgREST does: HS256 only, `exp` required, `nbf` honoured, both with
/// `leeway` seconds of clock skew; `aud` must match when one is configured.
fn validation(aud: Option<&str>, leeway: u64) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    match aud {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.set_required_spec_claims(&["exp", "aud"]);
        }
        None => {
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp"]);
        }
    }
    v
}

/// Verify the bearer token; returns its claims.
fn authenticate(headers: &HeaderMap, app: &App) -> Result<Token, Reply> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| error(401, "missing bearer token"))?;
    let data = jsonwebtoken::decode::<Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(&app.jwt_secret),
        &app.jwt_validation,
    )
    .map_err(|e| error(401, &format!("invalid token: {e}")))?;
    // (the library skips an `exp` or `nbf` that is not a number: refuse it instead)
    for claim in ["exp", "nbf"] {
        if data
            .claims
            .get(claim)
            .is_some_and(|v| v.as_u64().is_none() && v.as_f64().is_none_or(|f| f < 0.0))
        {
            return Err(error(
                401,
                &format!("invalid token: {claim} is not a NumericDate"),
            ));
        }
    }
    if !data.claims.get("role").is_some_and(Value::is_string) {
        return Err(error(401, "invalid token: no role claim"));
    }
    let key = refusal_key(headers, &data.claims);
    let blocked = app
        .refusals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .blocked(&key, std::time::Instant::now());
    if let Some(secs) = blocked {
        let mut r = error(
            429,
            "too many requests refused by the database for this token: try again later",
        );
        r.retry_after = Some(secs);
        return Err(r);
    }
    Ok(Token {
        claims: data.claims,
        key,
    })
}

/// A verified token: its claims and the key its refusals are counted under.
struct Token {
    claims: Value,
    key: String,
}

/// A pooled connection that goes back to the pool only after a finished transaction: a request
/// abandoned midway (client-side deadline, request timeout) closes it instead.
struct Conn {
    obj: Option<Object>,
    clean: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.clean
            && let Some(obj) = self.obj.take()
        {
            drop(Object::take(obj));
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Run `sql` in a transaction as the token's role, with its claims in request.jwt.claims and the
/// configured statement and lock timeouts; its rows as a JSON array (converted as the CLI's are,
/// by `output::json_rows`).
async fn as_token(
    app: &App,
    token: &Token,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Value, Reply> {
    let r = run_as_token(app, &token.claims, sql, params).await;
    if let Err(reply) = &r
        && reply.status == 403
    {
        app.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&token.key, std::time::Instant::now());
    }
    r
}

async fn run_as_token(
    app: &App,
    claims: &Value,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Value, Reply> {
    let obj = app.pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => {
            error(503, &format!("database unavailable: {e}"))
        }
        deadpool_postgres::PoolError::Timeout(_) => error(
            503,
            "database unavailable: no connection within the pool and connect timeouts",
        ),
        e => error(503, &format!("database unavailable: {e}")),
    })?;
    let mut conn = Conn {
        obj: Some(obj),
        clean: false,
    };
    let role = claims["role"].as_str().unwrap_or_default();
    let claims_text = claims.to_string();
    let (st, lt) = (millis(app.statement_timeout), millis(app.lock_timeout));
    let wrapped = crate::output::json_rows_sql(sql);
    let client = conn.obj.as_mut().expect("a pooled connection");
    let work = async {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT set_config('statement_timeout', $3, true), set_config('lock_timeout', $4, true),
                    set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
            &[&role, &claims_text, &st, &lt],
        )
        .await?;
        let rows = tx.query(wrapped.as_str(), params).await?;
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>(rows)
    };
    // the server enforces statement_timeout; this deadline covers a server that does not answer
    let deadline = app.statement_timeout + Duration::from_secs(2);
    let rows = match tokio::time::timeout(deadline, work).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            // (the driver rolled the failed transaction back when `tx` was dropped; a connection
            // error leaves the connection unusable)
            conn.clean = e.as_db_error().is_some() && !client.is_closed();
            return Err(db_error(e));
        }
        Err(_) => {
            return Err(error(
                504,
                &format!(
                    "the database did not answer within {} ms",
                    deadline.as_millis()
                ),
            ));
        }
    };
    conn.clean = true;
    Ok(crate::output::json_rows(&rows)
        .map(Value::Array)
        .unwrap_or(Value::Null))
}

/// A spawned task that ends with its owner (a /healthz check abandoned at its deadline).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn healthz(State(app): St) -> Reply {
    let check = async {
        let _permit = app.health.acquire().await.map_err(|e| e.to_string())?;
        let (client, connection) = app
            .pg
            .connect(app.tls.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut task = AbortOnDrop(tokio::spawn(async move { drop(connection.await) }));
        let r = client.query_one("SELECT 1", &[]).await;
        drop(client); // (the connection says goodbye, if the server lets it, within 100 ms)
        let _ = tokio::time::timeout(Duration::from_millis(100), &mut task.0).await;
        r.map(drop).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
        Ok(Ok(())) => reply(200, json!({ "ok": true })),
        Ok(Err(e)) => error(503, &format!("database unavailable: {e}")),
        Err(_) => error(
            503,
            &format!(
                "database unavailable: no answer within {} ms",
                HEALTH_TIMEOUT.as_millis()
            ),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    keyring: Option<String>,
    reason: Option<String>,
}

async fn rotate(State(app): St, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Reply {
    let claims = match authenticate(&headers, &app) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status().as_u16(), &e.body_text()),
    };
    let req: RotateBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                400,
                &format!(
                    "the body must be a JSON object {{\"keyring\": string, \"reason\": string}} (both optional, no other fields): {e}"
                ),
            );
        }
    };
    let keyring = req.keyring.unwrap_or_else(|| "default".into());
    match as_token(
        &app,
        &claims,
        "SELECT keyring, version, key_id, activated_at FROM meshhook_keys.keys_rotate($1, $2)",
        &[&keyring, &req.reason],
    )
    .await
    {
        Ok(rows) => reply(200, rows.get(0).cloned().unwrap_or(Value::Null)),
        Err(r) => r,
    }
}

async fn list(app: &App, headers: &HeaderMap, sql: &str) -> Reply {
    let claims = match authenticate(headers, app) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match as_token(app, &claims, sql, &[]).await {
        Ok(v) => reply(200, v),
        Err(r) => r,
    }
}

async fn keys(State(app): St, headers: HeaderMap) -> Reply {
    list(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.keyrings ORDER BY keyring",
    )
    .await
}

async fn progress(State(app): St, headers: HeaderMap) -> Reply {
    list(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.reencrypt_progress ORDER BY job_id, table_name::text",
    )
    .await
}

#[derive(Deserialize)]
struct AuditQuery {
    keyring: Option<String>,
    limit: Option<String>,
}

async fn audit(
    State(app): St,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Reply {
    let claims = match authenticate(&headers, &app) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(400, &e.body_text()),
    };
    let limit: i64 = q
        .limit
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .clamp(1, 10_000);
    match as_token(
        &app,
        &claims,
        "SELECT * FROM (SELECT id, at, actor, role_name, action, outcome, keyring, version, reason, detail
                          FROM meshhook_keys.audit_log WHERE ($1::text IS NULL OR keyring = $1)
                         ORDER BY id DESC LIMIT $2) a ORDER BY id",
        &[&q.keyring, &limit],
    )
    .await
    {
        Ok(v) => reply(200, v),
        Err(r) => r,
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped (text format 0.0.4).
fn label_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value in the text format (`NaN`, `+Inf`, `-Inf` spelt as Prometheus does).
fn sample_value(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_f64().map(|f| f.to_string()),
        Value::String(s) => match s.as_str() {
            "NaN" => Some("NaN".into()),
            "Infinity" => Some("+Inf".into()),
            "-Infinity" => Some("-Inf".into()),
            _ => None,
        },
        _ => None,
    }
}

fn metric_help(name: &str) -> &'static str {
    match name {
        "meshhook_keys_key_active_version" => "The active key version of the keyring.",
        "meshhook_keys_key_age_seconds" => "Seconds since the active version was activated.",
        "meshhook_keys_rotation_interval_seconds" => "The keyring's rotation interval.",
        "meshhook_keys_rotation_due_in_seconds" => {
            "Seconds until the next scheduled rotation (negative: overdue)."
        }
        "meshhook_keys_key_encryptions" => "Encryptions counted with the active version.",
        "meshhook_keys_key_max_encryptions" => "The keyring's encryption limit per version.",
        "meshhook_keys_decrypt_only_versions" => "Versions that only decrypt (not retired).",
        "meshhook_keys_scheduler_failed_attempts" => {
            "Consecutive failed scheduled rotations of the keyring."
        }
        "meshhook_keys_scheduler_retry_in_seconds" => "Seconds until the scheduler retries.",
        "meshhook_keys_reencrypt_jobs_running" => "Re-encryption jobs running.",
        "meshhook_keys_reencrypt_rows_remaining" => "Rows still to re-encrypt.",
        "meshhook_keys_reencrypt_rows_failed" => "Rows that could not be re-encrypted.",
        "meshhook_keys_reencrypt_rows_per_second" => "Re-encryption rate.",
        "meshhook_keys_reencrypt_seconds_since_progress" => {
            "Seconds since a running re-encryption job last made progress."
        }
        "meshhook_keys_key_pending_seconds" => {
            "Seconds a new version has waited for the standbys to replay it."
        }
        "meshhook_keys_scheduler_up" => "1 when the background scheduler runs.",
        "meshhook_keys_scheduler_ticks_total" => "Scheduler ticks since the server started.",
        "meshhook_keys_scheduler_seconds_since_tick" => "Seconds since the scheduler's last tick.",
        "meshhook_keys_encryptions_counted" => "1 when encryptions are counted (preloaded).",
        _ => "A meshhook_keys metric.",
    }
}

/// `meshhook_keys.metrics()` rows (`{"metric", "keyring", "value"}`) in the Prometheus text format.
fn render_metrics(rows: &[Value]) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for row in rows {
        let Some(name) = row.get("metric").and_then(Value::as_str) else {
            continue;
        };
        let Some(value) = row.get("value").and_then(sample_value) else {
            continue; // (NULL: the metric does not apply)
        };
        if current != Some(name) {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {kind}\n",
                metric_help(name)
            ));
            current = Some(name);
        }
        match row.get("keyring").and_then(Value::as_str) {
            Some(k) => out.push_str(&format!(
                "{name}{{keyring=\"{}\"}} {value}\n",
                label_escape(k)
            )),
            None => out.push_str(&format!("{name} {value}\n")),
        }
    }
    out
}

/// GET /metrics: `meshhook_keys.metrics()` as the token's role (operators only: others get 403).
async fn metrics(State(app): St, headers: HeaderMap) -> Response {
    let claims = match authenticate(&headers, &app) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match as_token(
        &app,
        &claims,
        "SELECT metric, keyring, value FROM meshhook_keys.metrics() ORDER BY metric, keyring NULLS FIRST",
        &[],
    )
    .await
    {
        Ok(Value::Array(rows)) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render_metrics(&rows),
        )
            .into_response(),
        Ok(_) => error(500, "metrics() returned no rows").into_response(),
        Err(r) => r.into_response(),
    }
}

async fn not_found() -> Reply {
    error(404, "no such endpoint")
}

/// The whole request, body included, within the request timeout (408 after it).
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            408,
            &format!("request not completed within {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

fn router(app: Arc<App>, max_body: usize, request_timeout: Duration) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/keys/rotate", post(rotate))
        .route("/api/keys", get(keys))
        .route("/api/keys/progress", get(progress))
        .route("/api/keys/audit", get(audit))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(app)
        .layer(DefaultBodyLimit::max(max_body))
        // (refuses a Content-Length above the limit before reading anything: 413)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
}

pub fn serve(cfg: Config) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(run(cfg))
}

async fn run(cfg: Config) -> Result<(), String> {
    let prepared = crate::connect::prepare(cfg.conninfo.as_deref())?;
    let mut pg = prepared.config;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    let connect_timeout = *pg.get_connect_timeout().unwrap_or(&CONNECT_TIMEOUT);
    // (with sslmode=disable the connector is never used)
    let tls = match prepared.tls {
        Some(t) => t,
        None => postgres_native_tls::MakeTlsConnector::new(
            native_tls::TlsConnector::new().map_err(|e| format!("TLS setup: {e}"))?,
        ),
    };
    let manager = Manager::from_config(
        pg.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_size.max(1))
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(connect_timeout + Duration::from_secs(1)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("connection pool: {e}"))?;
    let app = Arc::new(App {
        pool,
        pg,
        tls,
        health: Semaphore::new(HEALTH_CONCURRENCY),
        jwt_secret: cfg.jwt_secret,
        jwt_validation: validation(cfg.jwt_aud.as_deref(), cfg.jwt_leeway),
        statement_timeout: cfg.statement_timeout,
        lock_timeout: cfg.lock_timeout,
        refusals: std::sync::Mutex::new(Refusals::new(
            cfg.refusal_limit.max(1),
            cfg.refusal_window,
        )),
    });
    let service = router(app, cfg.max_body_bytes, cfg.request_timeout);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    // the bound address, not the requested one: with port 0 the system picks a free port
    let bound = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.clone(), |a| a.to_string());
    eprintln!("meshhook-keys: serving on http://{bound}");
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    loop {
        let permit = connections
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // (e.g. out of file descriptors: back off instead of spinning)
                eprintln!("meshhook-keys: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service.clone()),
        );
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_bounded_per_token_in_a_sliding_window() {
        let mut r = Refusals::new(3, Duration::from_secs(60));
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 0..3 {
            assert_eq!(r.blocked("a", at(s)), None);
            r.record("a", at(s));
        }
        assert_eq!(r.blocked("a", at(3)), Some(58));
        assert_eq!(r.blocked("b", at(3)), None);
        // the first refusal leaves the window at 60 s
        assert_eq!(r.blocked("a", at(60)), None);
        r.record("a", at(60));
        assert!(r.blocked("a", at(60)).is_some());
        assert_eq!(r.blocked("a", at(200)), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let rows = vec![
            json!({"metric": "meshhook_keys_scheduler_ticks_total", "keyring": null, "value": 7.0}),
            json!({"metric": "meshhook_keys_key_active_version", "keyring": "x\"y", "value": 2}),
            json!({"metric": "meshhook_keys_key_active_version", "keyring": "z", "value": "NaN"}),
            json!({"metric": "meshhook_keys_key_age_seconds", "keyring": "z", "value": null}),
        ];
        let text = render_metrics(&rows);
        assert!(text.contains("# TYPE meshhook_keys_scheduler_ticks_total counter\nmeshhook_keys_scheduler_ticks_total 7\n"));
        assert!(text.contains("# TYPE meshhook_keys_key_active_version gauge\n"));
        assert!(text.contains("meshhook_keys_key_active_version{keyring=\"x\\\"y\"} 2\n"));
        assert!(text.contains("meshhook_keys_key_active_version{keyring=\"z\"} NaN\n"));
        assert!(!text.contains("age_seconds"));
        assert_eq!(
            text.matches("# TYPE meshhook_keys_key_active_version")
                .count(),
            1
        );
    }
}
