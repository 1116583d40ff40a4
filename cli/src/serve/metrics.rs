//! GET /metrics: `meshhook_keys.metrics()` in the Prometheus text format (0.0.4), as the token's
//! role (operators only: others get 403).

use super::St;
use super::db::as_token;
use super::reply::error;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

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
/// `metrics()` in the Prometheus text format (0.0.4), operators only.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4"),
              (status = 403, body = super::reply::ErrorBody)))]
pub async fn metrics(State(app): St, headers: HeaderMap) -> Response {
    let token = match app.authenticate(&headers) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    match as_token(
        &app,
        &token,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
