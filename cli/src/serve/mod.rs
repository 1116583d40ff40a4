//! `meshhook-keys serve`: the HTTP admin endpoint, authenticated the way Supabase / PostgREST do it.
//!
//! Each request carries `Authorization: Bearer <JWT>` signed HS256 with the configured secret
//! (`auth`). The token's `role` claim becomes the role of that request's transaction
//! (`set_config('role', …, true)`, i.e. `SET LOCAL ROLE`) and its claims go into
//! `request.jwt.claims` (`db`), so the database's own privileges decide: a role without the admin
//! grant is refused by the extension (and audited), and the API maps that to 403. The server
//! connects as an "authenticator" role that may switch to the roles tokens name
//! (`GRANT ops TO authenticator`), like PostgREST.
//!
//! Hostile clients: requests are served concurrently (tokio, hyper's HTTP/1.1 server, axum), so a
//! slow client holds only its own connection. Every resource a client can make the server spend is
//! bounded: the request head (`max_header_bytes`, 431, read to the end of the head before the
//! connection closes so that the client can read the answer), the time to send it
//! (`HEADER_READ_TIMEOUT`, also the idle keep-alive timeout), the body (`max_body_bytes`, 413,
//! checked against Content-Length before anything is read, and read only once the token is
//! valid), the whole request (`request_timeout`, 408), open connections (`MAX_CONNECTIONS`: at the
//! limit, the connection that has been idle or still sending its head the longest is closed to
//! make room), a token's database refusals (`auth::Refusals`), and `/healthz` (`health`). Every
//! database use is bounded too: connecting (`connect_timeout`), waiting for a pooled connection
//! (`POOL_WAIT`), and each transaction (`SET LOCAL statement_timeout` and `lock_timeout`, plus a
//! client-side deadline that abandons the connection if the server does not answer at all).
//!
//! SIGTERM or SIGINT: the server stops accepting connections, closes idle ones, lets requests in
//! progress finish (up to the request timeout), then exits 0.

mod activity;
mod admin;
mod auth;
mod console;
mod db;
mod handlers;
mod health;
mod metrics;
mod reply;
mod request;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use reply::{Reply, error};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Time a client has to send a request head, and how long an idle keep-alive connection is kept.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Open client connections; at the limit, the longest idle one is closed for a new one.
const MAX_CONNECTIONS: usize = 512;
/// Waiting for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Connecting to the database, unless the connection string sets connect_timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a connection ends, how long what the client still sends is read and discarded, so that
/// it can read the answer (a 431 to a huge head) instead of a reset; and how many such at once.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
const LINGERING: usize = 64;

/// The server's settings, from `serve`'s arguments (checked in `args`).
pub struct Config {
    pub listen: String,
    pub jwt_header: Option<axum::http::HeaderName>,
    pub conninfo: Option<String>,
    pub jwt_secret: Vec<u8>,
    pub jwt_aud: Option<String>,
    pub jwt_leeway: u64,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub pool_size: usize,
    pub refusal_limit: usize,
    pub refusal_window: Duration,
}

pub struct App {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: postgres_native_tls::MakeTlsConnector,
    health: health::Last,
    jwt_secret: Vec<u8>,
    jwt_header: Option<axum::http::HeaderName>,
    jwt_validation: jsonwebtoken::Validation,
    jwt_leeway: u64,
    statement_timeout: Duration,
    lock_timeout: Duration,
    max_body: usize,
    refusals: Arc<auth::Refusals>,
    /// The OpenAPI description, as served.
    openapi: std::sync::OnceLock<String>,
    /// True once the server is stopping (SIGTERM): streams end.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl App {
    /// The request's verified token, or 401.
    fn authenticate(&self, headers: &HeaderMap) -> Result<auth::Token, Reply> {
        auth::authenticate(
            headers,
            self.jwt_header.as_ref(),
            &self.jwt_secret,
            &self.jwt_validation,
            self.jwt_leeway,
        )
    }
}

type St = State<Arc<App>>;

async fn not_found() -> Reply {
    error(404, "no such endpoint")
}

/// The whole request, body included, within the request timeout (408 after it).
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            408,
            &format!("request not completed within {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Every route: the admin API's router, built from the same list as its OpenAPI description
/// (which the App keeps for `/api/openapi.json`), so no route goes undescribed.
fn router(app: Arc<App>, max_body: usize, request_timeout: Duration) -> Router {
    let (api, openapi) = admin::routes().split_for_parts();
    let _ = app
        .openapi
        .set(openapi.to_pretty_json().unwrap_or_default());
    api.fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(app)
        .layer(DefaultBodyLimit::max(max_body))
        // (refuses a Content-Length above the limit before reading anything: 413)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .layer(middleware::from_fn(console::security_headers))
}

/// A client connection: reads and writes go to the socket; when hyper is done with it (or it is
/// closed to make room), what the client still sends is read and discarded for up to `LINGER`
/// after our side is shut, so that a client still sending (a huge head) reads our answer instead
/// of a reset. At most `LINGERING` connections linger at once; others close at once.
struct Linger {
    stream: Option<tokio::net::TcpStream>,
    lingering: Arc<Semaphore>,
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _permit = permit;
            let _ = stream.shutdown().await;
            let mut buf = vec![0u8; 64 << 10];
            let mut read = 0;
            let _ = tokio::time::timeout(LINGER, async {
                while read < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
        });
    }
}

/// The open connections: for each, its activity and how to close it.
#[derive(Default)]
struct Connections {
    next: AtomicUsize,
    open: Mutex<HashMap<usize, Open>>,
}

struct Open {
    activity: Arc<activity::Activity>,
    abort: Option<tokio::task::AbortHandle>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn add(&self) -> (usize, Arc<activity::Activity>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = activity::Activity::new();
        let open = Open {
            activity: activity.clone(),
            abort: None,
        };
        self.lock().insert(id, open);
        (id, activity)
    }
    fn set_abort(&self, id: usize, abort: tokio::task::AbortHandle) {
        if let Some(o) = self.lock().get_mut(&id) {
            o.abort = Some(abort);
        }
    }
    fn remove(&self, id: usize) {
        self.lock().remove(&id);
    }
    /// Close the connection idle the longest (waiting for a head, a body or a next request);
    /// false when every connection is busy.
    fn evict_one(&self) -> bool {
        let mut open = self.lock();
        let victim = open
            .iter()
            .filter(|(_, o)| !o.activity.is_busy() && o.abort.is_some())
            .max_by_key(|(_, o)| o.activity.idle_for())
            .map(|(id, _)| *id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(o) => {
                if let Some(a) = o.abort {
                    a.abort();
                }
                true
            }
            None => false,
        }
    }
}

pub fn serve(cfg: Config) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(run(cfg))
}

async fn run(cfg: Config) -> Result<(), String> {
    let prepared = crate::connect::prepare(cfg.conninfo.as_deref())?;
    let mut pg = prepared.config;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    let connect_timeout = *pg.get_connect_timeout().unwrap_or(&CONNECT_TIMEOUT);
    // (with sslmode=disable the connector is never used)
    let tls = match prepared.tls {
        Some(t) => t,
        None => postgres_native_tls::MakeTlsConnector::new(
            native_tls::TlsConnector::new().map_err(|e| format!("TLS setup: {e}"))?,
        ),
    };
    let manager = Manager::from_config(
        pg.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_size.max(1))
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(connect_timeout + Duration::from_secs(1)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("connection pool: {e}"))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = Arc::new(App {
        pool,
        pg,
        tls,
        health: Default::default(),
        jwt_secret: cfg.jwt_secret,
        jwt_header: cfg.jwt_header,
        jwt_validation: auth::validation(cfg.jwt_aud.as_deref()),
        jwt_leeway: cfg.jwt_leeway,
        statement_timeout: cfg.statement_timeout,
        lock_timeout: cfg.lock_timeout,
        max_body: cfg.max_body_bytes,
        refusals: Arc::new(auth::Refusals::new(cfg.refusal_limit, cfg.refusal_window)),
        openapi: Default::default(),
        stopping: stopped.clone(),
    });
    let service = router(app, cfg.max_body_bytes, cfg.request_timeout);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    // the bound address, not the requested one: with port 0 the system picks a free port
    let bound = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.clone(), |a| a.to_string());
    eprintln!("meshhook-keys: serving on http://{bound}");
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let lingering = Arc::new(Semaphore::new(LINGERING));
    let connections = Arc::new(Connections::default());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    loop {
        let stream = tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // (e.g. out of file descriptors: back off instead of spinning)
                    eprintln!("meshhook-keys: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // at the limit: make room by closing the connection idle the longest, if there is
                // one; otherwise wait for a request in progress to end (or for a signal)
                connections.evict_one();
                tokio::select! {
                    _ = sigterm.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    p = permits.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, activity) = connections.add();
        let router = service.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let guard = activity.busy();
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(activity.clone());
            async move {
                let r = router.oneshot(req).await;
                drop(guard);
                r
            }
        });
        let io = Linger {
            stream: Some(stream),
            lingering: lingering.clone(),
        };
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
        let mut stopped = stopped.clone();
        let done = connections.clone();
        let task = tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            done.remove(id);
            drop(permit);
        });
        connections.set_abort(id, task.abort_handle());
    }
    drop(listener);
    let drain = cfg.request_timeout + Duration::from_secs(1);
    eprintln!(
        "meshhook-keys: stopping: no new connections; finishing the requests in progress (up to {} ms)",
        drain.as_millis()
    );
    let _ = stop.send(true);
    let all = MAX_CONNECTIONS as u32;
    if tokio::time::timeout(drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        eprintln!(
            "meshhook-keys: stopping with requests still in progress after {} ms",
            drain.as_millis()
        );
    }
    Ok(())
}
