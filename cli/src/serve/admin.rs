//! The admin API: everything the CLI does, as JSON over HTTP. Each endpoint is one SQL call as the
//! token's role (`db::as_token`), so the database's privileges decide and audit; each is described
//! by its `#[utoipa::path]`, from which `/api/openapi.json` is generated (the router and the
//! description come from the same list, `routes`).
//!
//! Bodies are JSON objects parsed strictly (`body`): unknown members, duplicate members, `null`
//! where a value is required, and anything but an object are 400. Errors are
//! `{"error", "sqlstate", "hint"}` with the status `reply::db_error` maps the SQLSTATE to.

use super::db::{rows, token_rows};
use super::reply::{ErrorBody, Reply, error, reply};
use super::request::{body, read_body, token, typed};
use super::{App, St};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The OpenAPI description's fixed parts; the paths come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshhook_keys admin API",
        description = "Key rotation for meshhook_keys over HTTP. Every call is one SQL function call in a transaction as the bearer token's `role` (PostgREST semantics): the database's privileges decide and its audit log records. Errors carry the database's SQLSTATE.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256, signed with the server's secret; `exp` required; the `role` claim is the database role of the request",
                    ))
                    .build(),
            ),
        );
    }
}

/// The router of the admin API and its OpenAPI description.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_keyrings))
        .routes(routes!(get_keyring))
        .routes(routes!(list_versions))
        .routes(routes!(key_usage))
        .routes(routes!(set_policy))
        .routes(routes!(rotate_keyring))
        .routes(routes!(reencrypt_batch, reencrypt_progress))
        .routes(routes!(reencrypt_events))
        .routes(routes!(reencrypt_pause))
        .routes(routes!(reencrypt_resume))
        .routes(routes!(retire_version))
        .routes(routes!(destroy_version))
        .routes(routes!(audit_log))
        .routes(routes!(verify))
        .routes(routes!(health))
        .routes(routes!(super::health::healthz))
        .routes(routes!(super::metrics::metrics))
        .routes(routes!(super::handlers::rotate))
        .routes(routes!(super::handlers::keys))
        .routes(routes!(super::handlers::progress))
        .routes(routes!(super::handlers::audit))
        .routes(routes!(openapi_json))
        .routes(routes!(whoami))
        .routes(routes!(super::console::index))
        .routes(routes!(super::console::script))
        .routes(routes!(super::console::style))
        .routes(routes!(super::console::favicon))
}

/// This description (OpenAPI 3.1). No token needed.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI description of every route", content_type = "application/json")))]
async fn openapi_json(State(app): St) -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        app.openapi.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

fn first(rows: Vec<Value>, what: &str) -> Reply {
    match rows.into_iter().next() {
        Some(v) => reply(200, v),
        None => error(404, &format!("no such {what}")),
    }
}

macro_rules! tried {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

/// List the keyrings: active version, its age, the policy, the next rotation, encryptions against
/// the limit, tenant, user-held.
#[utoipa::path(get, path = "/api/keyrings", tag = "keyrings",
    responses((status = 200, description = "The `keyrings` view, one object per keyring"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_keyrings(State(app): St, headers: HeaderMap) -> Reply {
    token_rows(&app, &headers, super::handlers::KEYRINGS_SQL, &[]).await
}

/// One keyring, with its versions.
#[utoipa::path(get, path = "/api/keyrings/{keyring}", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name")),
    responses((status = 200, description = "The keyring's row of the `keyrings` view, and `versions` (the `keys` view)"),
              (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn get_keyring(State(app): St, headers: HeaderMap, Path(keyring): Path<String>) -> Reply {
    let t = tried!(token(&app, &headers));
    let r = tried!(rows(&app, &t,
        "SELECT k.*, (SELECT coalesce(pg_catalog.json_agg(v ORDER BY v.version), '[]')
                        FROM meshhook_keys.keys v WHERE v.keyring OPERATOR(pg_catalog.=) k.keyring) AS versions
           FROM meshhook_keys.keyrings k WHERE k.keyring OPERATOR(pg_catalog.=) $1",
        &[&keyring]).await);
    first(r, "keyring")
}

/// A keyring's versions.
#[utoipa::path(get, path = "/api/keyrings/{keyring}/versions", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name")),
    responses((status = 200, description = "The `keys` view's rows of the keyring, by version"),
              (status = 403, body = ErrorBody)))]
async fn list_versions(State(app): St, headers: HeaderMap, Path(keyring): Path<String>) -> Reply {
    token_rows(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.keys WHERE keyring OPERATOR(pg_catalog.=) $1 ORDER BY version",
        &[&keyring],
    )
    .await
}

/// Rows per version in every registered column of the keyring (`key_usage`: reads the columns).
#[utoipa::path(get, path = "/api/keyrings/{keyring}/usage", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name")),
    responses((status = 200, description = "`key_usage(keyring)`"), (status = 403, body = ErrorBody)))]
async fn key_usage(State(app): St, headers: HeaderMap, Path(keyring): Path<String>) -> Reply {
    token_rows(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.key_usage($1)",
        &[&keyring],
    )
    .await
}

/// A keyring's rotation policy.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    /// Rotate after this long (PostgreSQL interval syntax, e.g. `"90 days"`); `null`: no scheduled
    /// rotation. Required.
    rotation_interval: Option<String>,
    /// Rotate after this many encryptions under one version; `null` or absent: the server default.
    max_encryptions: Option<i64>,
}

/// Set a keyring's rotation policy (`keyring_set_policy`).
#[utoipa::path(put, path = "/api/keyrings/{keyring}/policy", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name")),
    request_body = PolicyBody,
    responses((status = 200, description = "The keyring's row of the `keyrings` view after the change"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn set_policy(State(app): St, Path(keyring): Path<String>, req: Request) -> Reply {
    let t = tried!(token(&app, req.headers()));
    let map = tried!(read_body(&app, req, true, &["rotation_interval", "max_encryptions"]).await);
    if !map.contains_key("rotation_interval") {
        return error(
            400,
            "\"rotation_interval\" is required (an interval, or null for no scheduled rotation)",
        );
    }
    let b: PolicyBody = tried!(typed(map));
    let r = tried!(rows(&app, &t,
        "SELECT k.* FROM meshhook_keys.keyring_set_policy($1, $2::text::interval, $3) s,
                LATERAL (SELECT * FROM meshhook_keys.keyrings WHERE keyring OPERATOR(pg_catalog.=) $1) k",
        &[&keyring, &b.rotation_interval, &b.max_encryptions]).await);
    first(r, "keyring")
}

/// Rotate: a new version, active at once (`keys_rotate`; the keyring is created on first use).
#[utoipa::path(post, path = "/api/keyrings/{keyring}/rotate", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name")),
    request_body(content = ReasonBody, description = "May be empty"),
    responses((status = 200, description = "`{keyring, version, key_id, activated_at}`"),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rotate_keyring(State(app): St, Path(keyring): Path<String>, req: Request) -> Reply {
    let t = tried!(token(&app, req.headers()));
    let b: ReasonBody = tried!(body(&app, req).await);
    let r =
        tried!(rows(&app, &t,
        "SELECT keyring, version, key_id, activated_at FROM meshhook_keys.keys_rotate($1, $2)",
        &[&keyring, &b.reason]).await);
    first(r, "keyring")
}

/// One batch of re-encryption.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Rows at most (default 1000).
    batch_size: Option<i32>,
}

/// Run one bounded batch of the keyring's re-encryption now (`reencrypt_batch`; starts a job
/// when none runs). The scheduler carries on with the rest.
#[utoipa::path(post, path = "/api/keyrings/{keyring}/reencrypt", tag = "reencryption",
    params(("keyring" = String, Path, description = "The keyring's name")),
    request_body(content = BatchBody, description = "May be empty"),
    responses((status = 200, description = "`{rows_moved}`: rows moved by the batch, `null` when nothing was left"),
              (status = 403, body = ErrorBody)))]
async fn reencrypt_batch(State(app): St, Path(keyring): Path<String>, req: Request) -> Reply {
    let t = tried!(token(&app, req.headers()));
    let b: BatchBody = tried!(body(&app, req).await);
    let r = tried!(
        rows(
            &app,
            &t,
            "SELECT meshhook_keys.reencrypt_batch($1, $2) AS rows_moved",
            &[&keyring, &b.batch_size.unwrap_or(1000)]
        )
        .await
    );
    first(r, "keyring")
}

const PROGRESS_SQL: &str = "SELECT pg_catalog.json_build_object(
        'job_id', max(job_id), 'target_version', max(target_version), 'state', max(job_state),
        'rows_total', coalesce(sum(rows_total), 0), 'rows_done', coalesce(sum(rows_done), 0),
        'rows_failed', coalesce(sum(rows_failed), 0), 'started_at', min(started_at),
        'updated_at', max(updated_at), 'tables', coalesce(pg_catalog.json_agg(p ORDER BY p.table_name::text), '[]')) AS progress
      FROM meshhook_keys.reencrypt_progress p
     WHERE keyring OPERATOR(pg_catalog.=) $1
       AND job_id OPERATOR(pg_catalog.=) (SELECT max(job_id) FROM meshhook_keys.reencrypt_progress WHERE keyring OPERATOR(pg_catalog.=) $1)";

/// The keyring's latest re-encryption job: totals and per table.
#[utoipa::path(get, path = "/api/keyrings/{keyring}/reencrypt", tag = "reencryption",
    params(("keyring" = String, Path, description = "The keyring's name")),
    responses((status = 200, description = "`{job_id, target_version, state, rows_total, rows_done, rows_failed, started_at, updated_at, tables}` (`job_id` null: no job yet)"),
              (status = 403, body = ErrorBody)))]
async fn reencrypt_progress(
    State(app): St,
    headers: HeaderMap,
    Path(keyring): Path<String>,
) -> Reply {
    let t = tried!(token(&app, &headers));
    let r = tried!(rows(&app, &t, PROGRESS_SQL, &[&keyring]).await);
    reply(
        200,
        r.into_iter()
            .next()
            .and_then(|v| v.get("progress").cloned())
            .unwrap_or(Value::Null),
    )
}

/// How long a progress stream lasts at most (the client reconnects).
const EVENTS_FOR: Duration = Duration::from_secs(600);

/// Server-Sent Events of the keyring's re-encryption: a `progress` event a second (the same JSON
/// as `GET /api/keyrings/{keyring}/reencrypt`, plus `rate` in rows/s and `eta_seconds`) while
/// the latest job runs (or until one starts), then one last event and the end; `error` with the
/// error body if a poll fails or the token has expired (checked at each poll). A stream lasts at
/// most 10 minutes, and ends when the server stops: reconnect for more.
#[utoipa::path(get, path = "/api/keyrings/{keyring}/reencrypt/events", tag = "reencryption",
    params(("keyring" = String, Path, description = "The keyring's name")),
    responses((status = 200, description = "`text/event-stream` of `progress` events", content_type = "text/event-stream"),
              (status = 401, body = ErrorBody)))]
async fn reencrypt_events(
    State(app): St,
    headers: HeaderMap,
    Path(keyring): Path<String>,
    activity: Option<axum::Extension<Arc<super::activity::Activity>>>,
) -> axum::response::Response {
    let t = match token(&app, &headers) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(4);
    // (the connection is busy while the stream lasts, not only until its head is sent)
    let busy = activity.map(|a| a.0.busy());
    let mut stopping = app.stopping.clone();
    tokio::spawn(async move {
        let _busy = busy;
        let start = tokio::time::Instant::now();
        let mut last: Option<(tokio::time::Instant, i64)> = None;
        let mut rate = 0.0_f64;
        loop {
            // the token is checked again at each poll: a stream ends when its token expires
            if let Err(why) = super::auth::still_valid(&t.claims, app.jwt_leeway) {
                let body = json!({ "error": format!("invalid token: {why}") });
                let _ = tx
                    .send(Ok(Event::default().event("error").data(body.to_string())))
                    .await;
                break;
            }
            let r = rows(&app, &t, PROGRESS_SQL, &[&keyring]).await;
            let (event, done) = match r {
                Ok(r) => {
                    let mut p = r
                        .into_iter()
                        .next()
                        .and_then(|v| v.get("progress").cloned())
                        .unwrap_or(Value::Null);
                    let done_rows = p["rows_done"].as_i64().unwrap_or(0);
                    let total = p["rows_total"].as_i64().unwrap_or(0);
                    let now = tokio::time::Instant::now();
                    if let Some((at, before)) = last {
                        let secs = now.duration_since(at).as_secs_f64();
                        if secs > 0.0 {
                            let current = (done_rows - before).max(0) as f64 / secs;
                            rate = if rate == 0.0 {
                                current
                            } else {
                                0.5 * rate + 0.5 * current
                            };
                        }
                    }
                    last = Some((now, done_rows));
                    let eta =
                        (rate > 0.0).then(|| ((total - done_rows).max(0) as f64 / rate).ceil());
                    // (no job yet: wait for one)
                    let running = p["job_id"].is_null() || p["state"].as_str() == Some("running");
                    if let Value::Object(m) = &mut p {
                        m.insert("rate".into(), json!((rate * 10.0).round() / 10.0));
                        m.insert("eta_seconds".into(), json!(eta));
                    }
                    (
                        Event::default().event("progress").data(p.to_string()),
                        !running,
                    )
                }
                Err(e) => (
                    Event::default().event("error").data(e.body.to_string()),
                    true,
                ),
            };
            if tx.send(Ok(event)).await.is_err() || done || start.elapsed() > EVENTS_FOR {
                break;
            }
            // (the server stopping ends the stream at once rather than after the drain time)
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
    });
    Sse::new(tokio_stream_from(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream of what `rx` receives.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Why a key changes, or re-encryption is paused or resumed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    /// Recorded in the audit log.
    reason: Option<String>,
}

/// Pause the scheduler's re-encryption of the keyring (`reencrypt_pause`): its job and cursor are
/// kept; an operator's own batches still run.
#[utoipa::path(post, path = "/api/keyrings/{keyring}/reencrypt/pause", tag = "reencryption",
    params(("keyring" = String, Path, description = "The keyring's name")),
    request_body(content = ReasonBody, description = "May be empty"),
    responses((status = 200, description = "`{changed}`: false if it was already paused"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn reencrypt_pause(State(app): St, Path(keyring): Path<String>, req: Request) -> Reply {
    pause_or_resume(
        app,
        keyring,
        req,
        "SELECT meshhook_keys.reencrypt_pause($1, $2) AS changed",
    )
    .await
}

/// Resume the scheduler's re-encryption of the keyring where it stopped (`reencrypt_resume`).
#[utoipa::path(post, path = "/api/keyrings/{keyring}/reencrypt/resume", tag = "reencryption",
    params(("keyring" = String, Path, description = "The keyring's name")),
    request_body(content = ReasonBody, description = "May be empty"),
    responses((status = 200, description = "`{changed}`: false if it was not paused"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn reencrypt_resume(State(app): St, Path(keyring): Path<String>, req: Request) -> Reply {
    pause_or_resume(
        app,
        keyring,
        req,
        "SELECT meshhook_keys.reencrypt_resume($1, $2) AS changed",
    )
    .await
}

async fn pause_or_resume(app: Arc<App>, keyring: String, req: Request, sql: &str) -> Reply {
    let t = tried!(token(&app, req.headers()));
    let b: ReasonBody = tried!(body(&app, req).await);
    let r = tried!(rows(&app, &t, sql, &[&keyring, &b.reason]).await);
    first(r, "keyring")
}

/// Options of a retirement.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    /// Retire although registered rows still use the version (they will not decrypt).
    force: Option<bool>,
}

/// Retire a version: it no longer decrypts (`keys_retire`; reversible until destroyed).
#[utoipa::path(post, path = "/api/keyrings/{keyring}/versions/{version}/retire", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name"), ("version" = i32, Path, description = "The version")),
    request_body(content = RetireBody, description = "May be empty"),
    responses((status = 200, description = "`{retired: true}`"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retire_version(
    State(app): St,
    Path((keyring, version)): Path<(String, i32)>,
    req: Request,
) -> Reply {
    let t = tried!(token(&app, req.headers()));
    let b: RetireBody = tried!(body(&app, req).await);
    let r = tried!(
        rows(
            &app,
            &t,
            "SELECT meshhook_keys.keys_retire($1, $2, $3) AS retired",
            &[&keyring, &version, &b.force.unwrap_or(false)]
        )
        .await
    );
    first(r, "version")
}

/// Destroy a version, confirmed by the keyring's name.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DestroyBody {
    /// The keyring's name again, as a confirmation (required).
    confirm: String,
    /// Destroy although registered rows still use the version.
    force: Option<bool>,
    /// A grace period (interval syntax): the scheduler destroys the version then, unless cancelled.
    after: Option<String>,
}

/// Destroy a retired version: its key material is erased and what it encrypted is lost for good
/// (`keys_destroy`). The body must name the keyring again.
#[utoipa::path(post, path = "/api/keyrings/{keyring}/versions/{version}/destroy", tag = "keyrings",
    params(("keyring" = String, Path, description = "The keyring's name"), ("version" = i32, Path, description = "The version")),
    request_body = DestroyBody,
    responses((status = 200, description = "`{destroyed: true}`"), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn destroy_version(
    State(app): St,
    Path((keyring, version)): Path<(String, i32)>,
    req: Request,
) -> Reply {
    let t = tried!(token(&app, req.headers()));
    let b: DestroyBody = tried!(body(&app, req).await);
    if b.confirm != keyring {
        return error(
            400,
            "\"confirm\" must be the keyring's name: destruction cannot be undone",
        );
    }
    let r = tried!(
        rows(
            &app,
            &t,
            "SELECT meshhook_keys.keys_destroy($1, $2, $3, $4::text::interval) AS destroyed",
            &[&keyring, &version, &b.force.unwrap_or(false), &b.after]
        )
        .await
    );
    first(r, "version")
}

/// Filters and the cursor of the audit log.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only this keyring's rows.
    keyring: Option<String>,
    /// Only this action (`rotate`, `retire`, `destroy`, `reencrypt`, ...).
    action: Option<String>,
    /// Only this outcome: `ok`, `refused` or `failed`.
    outcome: Option<String>,
    /// Only rows at or after this time (timestamptz syntax).
    since: Option<String>,
    /// The cursor: only rows with a smaller id (the `next_before` of the previous page).
    before: Option<i64>,
    /// Rows per page, 1 to 1000 (default 100).
    limit: Option<i64>,
}

/// The audit log, newest first, a page at a time.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditParams),
    responses((status = 200, description = "`{rows, next_before}`: `next_before` is the cursor of the next (older) page, `null` at the end"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_log(
    State(app): St,
    headers: HeaderMap,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Reply {
    let t = tried!(token(&app, &headers));
    let Query(q) = tried!(q.map_err(|e| error(400, &e.body_text())));
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(400, "limit must be between 1 and 1000");
    }
    let r = tried!(rows(&app, &t,
        "SELECT pg_catalog.json_build_object('rows', coalesce(pg_catalog.json_agg(a ORDER BY a.id DESC), '[]'),
                'next_before', CASE WHEN pg_catalog.count(*) OPERATOR(pg_catalog.=) $6 THEN min(a.id) END) AS page
           FROM (SELECT id, at, actor, role_name, action, outcome, keyring, version, reason, detail
                   FROM meshhook_keys.audit_log
                  WHERE ($1::text IS NULL OR keyring OPERATOR(pg_catalog.=) $1)
                    AND ($2::text IS NULL OR action OPERATOR(pg_catalog.=) $2)
                    AND ($3::text IS NULL OR outcome OPERATOR(pg_catalog.=) $3)
                    AND ($4::text IS NULL OR at OPERATOR(pg_catalog.>=) $4::text::timestamptz)
                    AND ($5::bigint IS NULL OR id OPERATOR(pg_catalog.<) $5)
                  ORDER BY id DESC LIMIT $6) a",
        &[&q.keyring, &q.action, &q.outcome, &q.since, &q.before, &limit]).await);
    reply(
        200,
        r.into_iter()
            .next()
            .and_then(|v| v.get("page").cloned())
            .unwrap_or(Value::Null),
    )
}

/// How many rows to sample per column.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VerifyParams {
    /// Rows sampled per registered column (default 100).
    sample: Option<i32>,
}

/// Verify: the audit chain (`audit_verify`) and a sample of every registered column decrypts
/// (`verify`), as `meshhook-keys verify` does.
#[utoipa::path(get, path = "/api/verify", tag = "health", params(VerifyParams),
    responses((status = 200, description = "`{audit: {ok, rows_checked, first_bad_id}, columns: [...]}`"),
              (status = 403, body = ErrorBody)))]
async fn verify(
    State(app): St,
    headers: HeaderMap,
    q: Result<Query<VerifyParams>, QueryRejection>,
) -> Reply {
    let t = tried!(token(&app, &headers));
    let Query(q) = tried!(q.map_err(|e| error(400, &e.body_text())));
    let r = tried!(rows(&app, &t,
        "SELECT (SELECT pg_catalog.row_to_json(a) FROM meshhook_keys.audit_verify() a) AS audit,
                (SELECT coalesce(pg_catalog.json_agg(v), '[]') FROM meshhook_keys.verify($1) v) AS columns",
        &[&q.sample.unwrap_or(100)]).await);
    first(r, "verification")
}

/// Health findings: root key, scheduler, tenant check, logging settings (`health()`).
#[utoipa::path(get, path = "/api/health", tag = "health",
    responses((status = 200, description = "`health()` rows: `{item, status, detail}`"), (status = 403, body = ErrorBody)))]
async fn health(State(app): St, headers: HeaderMap) -> Reply {
    token_rows(
        &app,
        &headers,
        "SELECT item, status, detail FROM meshhook_keys.health()",
        &[],
    )
    .await
}

/// The token's role and what it may do: `operator` (read keyrings, rotate, re-encrypt, retire,
/// destroy), `admin`. Any valid token may ask (the console disables what the role may not use).
#[utoipa::path(get, path = "/api/whoami", tag = "health",
    responses((status = 200, description = "`{role, operator, admin, sub}`"), (status = 401, body = ErrorBody)))]
async fn whoami(State(app): St, headers: HeaderMap) -> Reply {
    let t = tried!(token(&app, &headers));
    let r = tried!(rows(&app, &t,
        "SELECT current_user AS role,
                pg_catalog.pg_has_role(current_user, 'meshhook_keys_operator', 'MEMBER') AS operator,
                pg_catalog.pg_has_role(current_user, 'meshhook_keys_admin', 'MEMBER') AS admin,
                pg_catalog.current_setting('request.jwt.claims', true)::json ->> 'sub' AS sub",
        &[]).await);
    first(r, "role")
}
