//! The API's endpoints: each checks the token first (before reading any body, so that a client
//! without a valid token cannot hold the server with a slow one), then makes one SQL call as the
//! token's role.

use super::auth::Token;
use super::db::as_token;
use super::reply::{Reply, error, reply};
use super::{App, St};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The token of a request, or the reply refusing it. A refusal sent before the body was read also
/// closes the connection, so that the rest of that body is never waited for.
fn token_first(app: &App, headers: &HeaderMap) -> Result<Token, Reply> {
    app.authenticate(headers).map_err(|mut r| {
        r.close = true;
        r
    })
}

/// The request's body: a JSON object (duplicate members refused), at most the body limit, read
/// within the request timeout.
async fn body_object(app: &App, req: Request) -> Result<Map<String, Value>, Reply> {
    let bytes = axum::body::to_bytes(req.into_body(), app.max_body)
        .await
        .map_err(|e| {
            let mut r = error(413, &format!("the body could not be read: {e}"));
            r.close = true;
            r
        })?;
    super::auth::strict_object(&bytes)
        .map_err(|e| error(400, &format!("the body must be a JSON object: {e}")))
}

/// A body that may hold only `allowed` members, each a string when present (`null` is refused:
/// leave the member out instead).
fn strings(body: &Map<String, Value>, allowed: &[&str]) -> Result<Vec<Option<String>>, Reply> {
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

/// POST /api/keys/rotate {"keyring": string, "reason": string} (both optional).
pub async fn rotate(State(app): St, req: Request) -> Reply {
    let token = match token_first(&app, req.headers()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = match body_object(&app, req).await {
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

async fn list(app: &App, headers: &HeaderMap, sql: &str) -> Reply {
    let token = match token_first(app, headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match as_token(app, &token, sql, &[]).await {
        Ok(v) => reply(200, v),
        Err(r) => r,
    }
}

/// GET /api/keys: the keyrings view.
pub async fn keys(State(app): St, headers: HeaderMap) -> Reply {
    list(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.keyrings ORDER BY keyring",
    )
    .await
}

/// GET /api/keys/progress: the reencrypt_progress view.
pub async fn progress(State(app): St, headers: HeaderMap) -> Reply {
    list(
        &app,
        &headers,
        "SELECT * FROM meshhook_keys.reencrypt_progress ORDER BY job_id, table_name::text",
    )
    .await
}

#[derive(Deserialize)]
pub struct AuditQuery {
    keyring: Option<String>,
    limit: Option<String>,
}

/// GET /api/keys/audit?keyring=&limit=: the newest audit rows, oldest first.
pub async fn audit(
    State(app): St,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Reply {
    let token = match token_first(&app, &headers) {
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
