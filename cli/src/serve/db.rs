//! One request's database work: a pooled connection, a transaction as the token's role with its
//! claims in `request.jwt.claims`, the configured statement and lock timeouts, and a client-side
//! deadline for a server that does not answer at all.

use super::App;
use super::auth::Token;
use super::reply::{Reply, db_error, error, reply};
use deadpool_postgres::Object;
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::types::ToSql;

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

/// Run `sql` as the token's role; its rows as a JSON array (converted as the CLI's are, by
/// `output::json_rows`). The request first takes its place in the token's refusal budget (429
/// when there is none), and a database refusal (403) is counted against it.
pub async fn as_token(
    app: &App,
    token: &Token,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Value, Reply> {
    let reservation = app.refusals.reserve(token).await?;
    let r = run_as_token(app, &token.claims, sql, params).await;
    reservation.finish(matches!(&r, Err(reply) if counts_as_refusal(reply.status)));
    r
}

/// One SQL call as the token's role; its rows (500 if they are not an array).
pub async fn rows(
    app: &App,
    token: &Token,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Value>, Reply> {
    match as_token(app, token, sql, params).await? {
        Value::Array(rows) => Ok(rows),
        _ => Err(error(500, "the database returned no rows")),
    }
}

/// A request whose answer is one statement's rows: the request's token (refused before anything
/// else), then `sql` as its role; the rows as a JSON array.
pub async fn token_rows(
    app: &App,
    headers: &axum::http::HeaderMap,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Reply {
    let token = match super::request::token(app, headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match rows(app, &token, sql, params).await {
        Ok(r) => reply(200, Value::Array(r)),
        Err(r) => r,
    }
}

/// Whether a failed request counts against its token's refusal budget: a refusal (403), and any
/// failure after which the database may have refused and audited it without our seeing the answer
/// (a statement timeout or no answer, 504: a refused backend waits for its audit writer; 500).
/// Not: an answer that is no refusal (400, 404, 409), or a request that never reached the
/// database (503).
fn counts_as_refusal(status: u16) -> bool {
    matches!(status, 403 | 500 | 504)
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

#[cfg(test)]
mod tests {
    #[test]
    fn what_counts_as_a_refusal() {
        for s in [403, 500, 504] {
            assert!(super::counts_as_refusal(s), "{s}");
        }
        for s in [200, 400, 404, 409, 503] {
            assert!(!super::counts_as_refusal(s), "{s}");
        }
    }
}
