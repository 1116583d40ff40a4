//! The web console: one page and its script and style, embedded in the binary at build time (no
//! CDN, no download at run time, no build step but `cargo build`). The page signs in with a JWT
//! kept in its memory and drives the admin API; what it shows comes from the API, as text.
//!
//! Every response of the server carries `X-Content-Type-Options: nosniff`, `X-Frame-Options:
//! DENY` and `Referrer-Policy: no-referrer` (`security_headers`); the console's carry a
//! Content-Security-Policy that allows this origin's own script, style and API calls only (no
//! inline script, no framing) and are not cached.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// The console's policy: this origin's script, style and API only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The console's page.
#[utoipa::path(get, path = "/", tag = "console", security(()),
    responses((status = 200, description = "The web console", content_type = "text/html")))]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The console's script.
#[utoipa::path(get, path = "/console.js", tag = "console", security(()),
    responses((status = 200, description = "The console's script", content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console.css", tag = "console", security(()),
    responses((status = 200, description = "The console's style sheet", content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// No icon (browsers ask for one): 204.
#[utoipa::path(get, path = "/favicon.ico", tag = "console", security(()),
    responses((status = 204, description = "No icon")))]
pub async fn favicon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

/// Headers every response carries: no MIME sniffing, no framing, no referrer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
