//! What a request brings: its token (checked before anything else) and its body, a JSON object
//! parsed strictly.

use super::App;
use super::auth::Token;
use super::reply::{Reply, error};
use axum::extract::Request;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The token, or the reply refusing it; a refusal sent before the body was read closes the
/// connection, so that the rest of that body is never waited for.
pub fn token(app: &App, headers: &HeaderMap) -> Result<Token, Reply> {
    app.authenticate(headers).map_err(|mut r| {
        r.close = true;
        r
    })
}

/// The request's body: a JSON object (no duplicate members, at most the body limit; an empty
/// body is `{}` if `empty_ok`) whose members may be `null` only if named in `nullable`.
pub async fn read_body(
    app: &App,
    req: Request,
    empty_ok: bool,
    nullable: &[&str],
) -> Result<Object, Reply> {
    // (while the client sends its body the connection counts as idle: a client that sends it
    // slowly does not hold its place against others)
    let waiting = req
        .extensions()
        .get::<std::sync::Arc<super::activity::Activity>>()
        .map(|a| a.waiting_for_client());
    let bytes = axum::body::to_bytes(req.into_body(), app.max_body).await;
    drop(waiting);
    let bytes = bytes.map_err(|e| {
        let mut r = error(413, &format!("the body could not be read: {e}"));
        r.close = true;
        r
    })?;
    let bytes = if empty_ok && bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    let map = super::auth::strict_object(bytes)
        .map_err(|e| error(400, &format!("the body must be a JSON object: {e}")))?;
    if let Some((k, _)) = map
        .iter()
        .find(|(k, v)| v.is_null() && !nullable.contains(&k.as_str()))
    {
        return Err(error(
            400,
            &format!("\"{k}\" must not be null (leave it out for the default)"),
        ));
    }
    Ok(map)
}

/// The body as `T`, whose `deny_unknown_fields` refuses unknown members.
pub fn typed<T: DeserializeOwned>(map: Object) -> Result<T, Reply> {
    serde_json::from_value(Value::Object(map)).map_err(|e| error(400, &format!("the body: {e}")))
}

/// `read_body` then `typed`, for bodies without nullable members.
pub async fn body<T: DeserializeOwned>(app: &App, req: Request) -> Result<T, Reply> {
    typed(read_body(app, req, true, &[]).await?)
}

pub type Object = serde_json::Map<String, Value>;
