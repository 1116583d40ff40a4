//! GET /healthz: can the server reach the database? Anonymous, so what a client can make it cost is
//! bounded: one check at a time, its answer shared by every request that waited for it and reused
//! for `HEALTH_CACHE` (a flood of /healthz opens about one database session a second, not one per
//! request), and each check on its own connection within `HEALTH_TIMEOUT`, so that a saturated
//! pool or a stalled server still gives a prompt 503.

use super::St;
use super::reply::{Reply, error, reply};
use axum::extract::State;
use serde_json::json;
use std::time::{Duration, Instant};

/// One check (connect and `SELECT 1`); no answer within it is an answer (503), reused as others.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(800);
/// The whole of a /healthz answer: waiting for the check in progress, or making one.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(950);
/// How long one check's answer is reused.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

/// The last check: when it finished, and its answer (`Err`: why the database is unavailable).
pub type Last = tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>;

/// A spawned task that ends with its owner (a check abandoned at its deadline).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn check(app: &super::App) -> Result<(), String> {
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
}

/// Can the server reach the database? No token needed.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "`{\"ok\": true}`"), (status = 503, body = super::reply::ErrorBody)))]
pub async fn healthz(State(app): St) -> Reply {
    // The answer is made in a task of its own, which finishes (and leaves its answer for the next
    // second's requests) even when the client that asked goes away: a client that asks and
    // hangs up at once cannot make every request a new database session.
    let answer = tokio::spawn(async move {
        let mut last = app.health.lock().await;
        if let Some((at, r)) = last.as_ref()
            && at.elapsed() < HEALTH_CACHE
        {
            return r.clone();
        }
        let r = tokio::time::timeout(HEALTH_TIMEOUT, check(&app))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {} ms",
                    HEALTH_TIMEOUT.as_millis()
                ))
            });
        *last = Some((Instant::now(), r.clone()));
        r
    });
    let answer = async { answer.await.unwrap_or_else(|e| Err(e.to_string())) };
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(())) => reply(200, json!({ "ok": true })),
        Ok(Err(e)) => error(503, &format!("database unavailable: {e}")),
        Err(_) => error(
            503,
            &format!(
                "database unavailable: no answer within {} ms",
                ANSWER_TIMEOUT.as_millis()
            ),
        ),
    }
}
