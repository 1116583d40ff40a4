//! `meshhook-keys serve`: the HTTP admin endpoint, authenticated the way Supabase / PostgREST do it.
//!
//! Each request carries `Authorization: Bearer <JWT>` signed HS256 with the configured secret. The
//! token's `role` claim becomes the role of that request's transaction (`set_config('role', …,
//! true)`, i.e. `SET LOCAL ROLE`) and its claims go into `request.jwt.claims`, so the database's own
//! privileges decide: a role without the admin grant is refused by the extension (and audited), and
//! the API maps that to 403. The server connects as an "authenticator" role that may switch to the
//! roles tokens name (`GRANT ops TO authenticator`), like PostgREST.

use serde_json::{Value, json};
use std::io::Read;

pub struct Config {
    pub listen: String,
    pub conninfo: String,
    pub jwt_secret: Vec<u8>,
}

struct Reply {
    status: u16,
    body: Value,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply { status, body }
}

fn error(status: u16, msg: &str) -> Reply {
    reply(status, json!({ "error": msg }))
}

/// A database error as an HTTP reply: the database's message and SQLSTATE, with a matching status.
fn db_error(e: postgres::Error) -> Reply {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let status = match &code[..2] {
                "42" if code == "42501" => 403,
                "28" => 403,
                "22" | "42" => 400,
                "55" => 409,
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

/// Verify the bearer token; returns its claims.
fn authenticate(header: Option<&str>, secret: &[u8]) -> Result<Value, Reply> {
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| error(401, "missing bearer token"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(secret),
        &validation,
    )
    .map_err(|e| error(401, &format!("invalid token: {e}")))?;
    if !data.claims.get("role").is_some_and(Value::is_string) {
        return Err(error(401, "invalid token: no role claim"));
    }
    Ok(data.claims)
}

/// Run `f` in a transaction as the token's role, with its claims in request.jwt.claims.
fn as_token<T>(
    conninfo: &str,
    claims: &Value,
    f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, postgres::Error>,
) -> Result<T, Reply> {
    let mut client = crate::connect::connect(conninfo)
        .map_err(|e| error(503, &format!("database unavailable: {e}")))?;
    let mut tx = client.transaction().map_err(db_error)?;
    let role = claims["role"].as_str().unwrap_or_default();
    tx.execute(
        "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
        &[&role, &claims.to_string()],
    )
    .map_err(db_error)?;
    let out = f(&mut tx).map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    Ok(out)
}

fn json_rows(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Value, postgres::Error> {
    let wrapped = format!("SELECT coalesce(json_agg(q), '[]')::text FROM ({sql}) AS q");
    let text: String = tx.query_one(wrapped.as_str(), params)?.get(0);
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.replace('+', " "))
    })
}

fn handle(cfg: &Config, method: &str, url: &str, auth: Option<&str>, body: &str) -> Reply {
    let path = url.split('?').next().unwrap_or("");
    if method == "GET" && path == "/healthz" {
        return match crate::connect::connect(&cfg.conninfo)
            .and_then(|mut c| c.query_one("SELECT 1", &[]).map_err(|e| e.to_string()))
        {
            Ok(_) => reply(200, json!({ "ok": true })),
            Err(e) => error(503, &format!("database unavailable: {e}")),
        };
    }
    let known = matches!(
        (method, path),
        ("POST", "/api/keys/rotate")
            | ("GET", "/api/keys")
            | ("GET", "/api/keys/progress")
            | ("GET", "/api/keys/audit")
    );
    if !known {
        return error(404, "no such endpoint");
    }
    let claims = match authenticate(auth, &cfg.jwt_secret) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let result = match (method, path) {
        ("POST", "/api/keys/rotate") => {
            let req: Value = match serde_json::from_str(body) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return error(
                        400,
                        "the body must be a JSON object {\"keyring\": ..., \"reason\": ...}",
                    );
                }
            };
            let keyring = req
                .get("keyring")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let reason = req
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            as_token(&cfg.conninfo, &claims, |tx| {
                json_rows(
                    tx,
                    "SELECT keyring, version, key_id, activated_at FROM meshhook_keys.keys_rotate($1, $2)",
                    &[&keyring, &reason],
                )
            })
            .map(|rows| rows.get(0).cloned().unwrap_or(Value::Null))
        }
        ("GET", "/api/keys") => as_token(&cfg.conninfo, &claims, |tx| {
            json_rows(
                tx,
                "SELECT * FROM meshhook_keys.keyrings ORDER BY keyring",
                &[],
            )
        }),
        ("GET", "/api/keys/progress") => as_token(&cfg.conninfo, &claims, |tx| {
            json_rows(
                tx,
                "SELECT * FROM meshhook_keys.reencrypt_progress ORDER BY job_id, table_name::text",
                &[],
            )
        }),
        _ => {
            let keyring = query_param(url, "keyring");
            let limit: i64 = query_param(url, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100)
                .clamp(1, 10_000);
            as_token(&cfg.conninfo, &claims, |tx| {
                json_rows(
                    tx,
                    "SELECT * FROM (SELECT id, at, actor, role_name, action, outcome, keyring, version, reason, detail
                                      FROM meshhook_keys.audit_log WHERE ($1::text IS NULL OR keyring = $1)
                                     ORDER BY id DESC LIMIT $2) a ORDER BY id",
                    &[&keyring, &limit],
                )
            })
        }
    };
    match result {
        Ok(v) => reply(200, v),
        Err(r) => r,
    }
}

pub fn serve(cfg: Config) -> Result<(), String> {
    let server = tiny_http::Server::http(&cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    eprintln!("meshhook-keys: serving on http://{}", cfg.listen);
    for mut request in server.incoming_requests() {
        let mut body = String::new();
        let _ = request.as_reader().take(1 << 20).read_to_string(&mut body);
        let auth = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string());
        let r = handle(
            &cfg,
            request.method().as_str(),
            request.url(),
            auth.as_deref(),
            &body,
        );
        let response = tiny_http::Response::from_string(r.body.to_string())
            .with_status_code(r.status)
            .with_header(
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                    .expect("a valid header"),
            );
        let _ = request.respond(response);
    }
    Ok(())
}
