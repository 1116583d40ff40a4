//! Replies: a JSON body, a status, and for errors the database's message and SQLSTATE.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
    /// Close the connection after this reply (sent before the request's body was read).
    pub close: bool,
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
        if self.close {
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

pub fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        retry_after: None,
        close: false,
    }
}

pub fn error(status: u16, msg: &str) -> Reply {
    reply(status, json!({ "error": msg }))
}

/// A database error as an HTTP reply: the database's message and SQLSTATE, with a matching status.
pub fn db_error(e: tokio_postgres::Error) -> Reply {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let status = match &code[..2] {
                "42" if code == "42501" => 403,
                "42" if code == "42704" => 404, // an unknown keyring or version
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

/// An error: the database's message and SQLSTATE, or the server's own reason.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// What went wrong (never a secret).
    error: String,
    /// The database's SQLSTATE, when the database refused.
    sqlstate: Option<String>,
    /// The database's hint, if any.
    hint: Option<String>,
}
