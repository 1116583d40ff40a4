//! The first endpoints (0.5.0's `/api/keys…`), kept beside the admin API (`admin`), which does
//! more with keyrings in the path. Each checks the token first (before reading any body, so that a client
//! without a valid token cannot hold the server with a slow one), then makes one SQL call as the
//! token's role.

use super::St;
use super::db::{as_token, token_rows};
use super::reply::{Reply, error, reply};
use super::request::{Object, read_body, token};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

/// A body that may hold only `allowed` members, each a string when present (`null` was refused
/// by `read_body`).
fn strings(body: &Object, allowed: &[&str]) -> Result<Vec<Option<String>>, Reply> {
    if let Some(k) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(
            400,
            &format!(
                "unknown member \"{k}\" in the body (allowed: {})",
                allowed.join(", ")
            ),
        ));
    }
    allowed
        .iter()
        .map(|name| match body.get(*name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(error(
                400,
                &format!("\"{name}\" must be a string (leave it out for the default)"),
            )),
        })
        .collect()
}

/// Rotate a keyring named in the body (`{"keyring", "reason"}`, both optional: `{}` rotates
/// `default`); as `POST /api/keyrings/{keyring}/rotate`.
#[utoipa::path(post, path = "/api/keys/rotate", tag = "keys (0.5.0)",
    request_body(content = String, description = "`{\"keyring\": string, \"reason\": string}`, both optional", content_type = "application/json"),
    responses((status = 200, description = "`{keyring, version, key_id, activated_at}`"),
              (status = 400, body = super::reply::ErrorBody), (status = 403, body = super::reply::ErrorBody)))]
pub async fn rotate(State(app): St, req: Request) -> Reply {
    let token = match token(&app, req.headers()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = match read_body(&app, req, false, &[]).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let [keyring, reason]: [Option<String>; 2] = match strings(&body, &["keyring", "reason"]) {
        Ok(v) => v.try_into().expect("two members"),
        Err(r) => return r,
    };
    let keyring = keyring.unwrap_or_else(|| "default".into());
    match as_token(
        &app,
        &token,
        "SELECT keyring, version, key_id, activated_at FROM meshhook_keys.keys_rotate($1, $2)",
        &[&keyring, &reason],
    )
    .await
    {
        Ok(rows) => reply(200, rows.get(0).cloned().unwrap_or(Value::Null)),
        Err(r) => r,
    }
}

/// Every keyring (the keyrings view), for `GET /api/keys` and `GET /api/keyrings`.
pub const KEYRINGS_SQL: &str = "SELECT * FROM meshhook_keys.keyrings ORDER BY keyring";

/// The keyrings view (as `GET /api/keyrings`).
#[utoipa::path(get, path = "/api/keys", tag = "keys (0.5.0)",
    responses((status = 200, description = "The `keyrings` view"), (status = 403, body = super::reply::ErrorBody)))]
pub async fn keys(State(app): St, headers: HeaderMap) -> Reply {
    token_rows(&app, &headers, KEYRINGS_SQL, &[]).await
}

/// The `reencrypt_progress` view: every job, per table.
#[utoipa::path(get, path = "/api/keys/progress", tag = "keys (0.5.0)",
    responses((status = 200, description = "The `reencrypt_progress` view"), (status = 403, body = super::reply::ErrorBody)))]
pub async fn progress(State(app): St, headers: HeaderMap) -> Reply {
    token_rows(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.reencrypt_progress ORDER BY job_id, table_name::text",
        &[],
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this keyring's rows.
    keyring: Option<String>,
    /// How many of the newest rows (default 100, at most 10,000).
    limit: Option<String>,
}

/// The newest audit rows, oldest first (`GET /api/audit` pages through all of them).
#[utoipa::path(get, path = "/api/keys/audit", tag = "keys (0.5.0)", params(AuditQuery),
    responses((status = 200, description = "Audit rows"), (status = 403, body = super::reply::ErrorBody)))]
pub async fn audit(
    State(app): St,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Reply {
    let token = match token(&app, &headers) {
        Ok(t) => t,
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
        &token,
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
