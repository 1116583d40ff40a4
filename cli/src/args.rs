//! The command line: clap's definitions of the global options and the subcommands, the handling of
//! a line clap refuses (with --json, a JSON error), and the checks of arguments clap cannot make
//! alone (the JWT secret, `verify --sample`, the limits of `serve`).

use crate::output::{Failure, Result, fail, usage};
use crate::serve;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "meshhook-keys",
    version,
    about = "Manage meshhook_keys keys: status, rotation, re-encryption, audit"
)]
pub struct Cli {
    /// Connection string (URL or key=value), like psql's; default: the PG* environment variables.
    #[arg(long, short = 'd', env = "MESHHOOK_KEYS_URL", global = true)]
    pub url: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Keyrings: active version, age, policy, next rotation, encryptions, rows per version.
    Status {
        /// Skip counting rows per key version (a full scan of every registered table).
        #[arg(long)]
        no_usage: bool,
    },
    /// Make a new key version active (keys_rotate).
    Rotate {
        #[arg(long, short, default_value = "default")]
        keyring: String,
        #[arg(long, short)]
        reason: Option<String>,
    },
    /// Re-encrypt every registered row to the active key, batch by batch, with live progress.
    Reencrypt {
        #[arg(long, short, default_value = "default")]
        keyring: String,
        #[arg(long, default_value_t = 1000)]
        batch_size: i32,
        /// Do not run batches: watch the background scheduler's job until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Retire a decrypt-only version (decryption with it refused afterwards).
    Retire {
        #[command(flatten)]
        target: KeyVersion,
    },
    /// Destroy a retired version's key material (crypto-erasure).
    Destroy {
        #[command(flatten)]
        target: KeyVersion,
    },
    /// The audit log, newest last; `sub` is the JWT subject of a request made through the HTTP API.
    Audit {
        /// Only entries at or after this time (any timestamptz input, e.g. '2026-11-01' or 'today').
        #[arg(long)]
        since: Option<String>,
        #[arg(long, short)]
        keyring: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Check the audit hash chain, and that a sample of every registered column decrypts.
    Verify {
        /// Rows sampled per registered column.
        #[arg(long, default_value_t = 5)]
        sample: i64,
    },
    /// Rewrap every data key from the previous root key to the current one.
    RootRewrap,
    /// Root key, scheduler, tenant check and logging settings that could leak secrets.
    Health,
    /// Print an HS256 JWT for a role, signed with the server's secret (for tests and operators).
    Token {
        #[arg(long)]
        role: String,
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime in seconds, at most ten years (negative: already expired, at most ten years ago).
        #[arg(long, default_value_t = 3600, allow_hyphen_values = true,
              value_parser = clap::value_parser!(i64).range(-MAX_LIFETIME..=MAX_LIFETIME))]
        expires_in: i64,
        #[arg(long)]
        jwt_secret_file: Option<PathBuf>,
    },
    /// Serve the HTTP admin API (POST /api/keys/rotate, GET /api/keys, /api/keys/progress,
    /// /api/keys/audit, /metrics, /healthz), authenticating HS256 JWTs like PostgREST.
    Serve {
        #[command(flatten)]
        options: ServeArgs,
    },
}

// (no doc comment on the flattened structs: `retire --help`, `destroy --help` and `serve --help`
// take their description from the variant)
#[derive(Args)]
pub struct KeyVersion {
    #[arg(long, short)]
    pub keyring: String,
    #[arg(long, short)]
    pub version: i32,
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: a free port, printed on stderr as "serving on http://ADDR").
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,
    /// File holding the JWT secret (or set MESHHOOK_KEYS_JWT_SECRET).
    #[arg(long)]
    jwt_secret_file: Option<PathBuf>,
    /// Required `aud` claim of every token (unset: `aud` is not checked).
    #[arg(long, env = "MESHHOOK_KEYS_JWT_AUD")]
    jwt_aud: Option<String>,
    /// A request header that may carry the token instead of `Authorization: Bearer` (the raw token,
    /// or `Bearer <token>`), as a proxy in front sets one (e.g. oauth2-proxy's
    /// X-Forwarded-Access-Token); the token is verified all the same. The console then signs in
    /// by itself.
    #[arg(long, env = "MESHHOOK_KEYS_JWT_HEADER")]
    jwt_header: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds (at most 30).
    #[arg(long, env = "MESHHOOK_KEYS_JWT_LEEWAY_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=30))]
    jwt_leeway_secs: u64,
    /// Largest request body accepted (413 above it).
    #[arg(long, env = "MESHHOOK_KEYS_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, at least 8192 (431 above it).
    #[arg(long, env = "MESHHOOK_KEYS_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    max_header_bytes: usize,
    /// Time a request (its body included) may take before it is answered 408.
    #[arg(
        long,
        env = "MESHHOOK_KEYS_REQUEST_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    request_timeout_ms: u64,
    /// statement_timeout of each request's transaction (SQLSTATE 57014: 504).
    #[arg(
        long,
        env = "MESHHOOK_KEYS_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    statement_timeout_ms: u64,
    /// lock_timeout of each request's transaction (SQLSTATE 55P03: 409).
    #[arg(long, env = "MESHHOOK_KEYS_LOCK_TIMEOUT_MS", default_value_t = 5_000)]
    lock_timeout_ms: u64,
    /// Database connections the API requests share (/healthz uses its own).
    #[arg(long, env = "MESHHOOK_KEYS_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// Requests of one token (its role and sub) the database may refuse (403) within
    /// --refusal-window-secs; beyond it, 429 without asking the database.
    #[arg(long, env = "MESHHOOK_KEYS_REFUSAL_LIMIT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    refusal_limit: u64,
    /// The sliding window of --refusal-limit, in seconds.
    #[arg(long, env = "MESHHOOK_KEYS_REFUSAL_WINDOW_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    refusal_window_secs: u64,
}

/// The longest --expires-in of `token`: ten years, in seconds.
const MAX_LIFETIME: i64 = 10 * 366 * 24 * 3600;

/// The command line, or the failure to report when clap refuses it. Without --json (and for
/// --help and --version) clap prints its own message and exits (usage errors with 2); with --json
/// the refusal comes back as a usage failure (exit code 2) to report as JSON.
pub fn parse() -> std::result::Result<Cli, Failure> {
    let e = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    // (--json as a word before any `--`: the only way to know it when parsing failed)
    let json = std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if !json
        || matches!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        e.exit(); // usage errors exit with 2
    }
    let msg = e.kind().to_string();
    let detail = e.to_string();
    let text = detail
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("error: "))
        .unwrap_or(&msg);
    Err(usage(text))
}

/// `verify --sample` as the extension takes it (an i32).
pub fn sample(sample: i64) -> Result<i32> {
    i32::try_from(sample).map_err(|_| fail("--sample must be between 1 and 1000000"))
}

/// The shortest JWT secret accepted (from the file or the environment): 32 bytes, as PostgREST
/// requires for HS256.
const MIN_JWT_SECRET: usize = 32;

/// The JWT secret: --jwt-secret-file (trimmed), else MESHHOOK_KEYS_JWT_SECRET; at least 32 bytes
/// (an empty or short secret is refused: exit code 2).
pub fn jwt_secret(file: &Option<PathBuf>) -> Result<Vec<u8>> {
    let (secret, source) = match (file, std::env::var("MESHHOOK_KEYS_JWT_SECRET")) {
        (Some(path), _) => (
            std::fs::read_to_string(path)
                .map_err(|e| {
                    usage(format!(
                        "cannot read the JWT secret file {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .as_bytes()
                .to_vec(),
            format!("the JWT secret file {}", path.display()),
        ),
        (None, Ok(s)) => (s.into_bytes(), "MESHHOOK_KEYS_JWT_SECRET".to_string()),
        (None, Err(_)) => {
            return Err(usage(
                "a JWT secret is needed: --jwt-secret-file PATH or MESHHOOK_KEYS_JWT_SECRET",
            ));
        }
    };
    if secret.len() < MIN_JWT_SECRET {
        return Err(usage(format!(
            "the JWT secret from {source} is {} bytes long: at least {MIN_JWT_SECRET} are required",
            secret.len()
        )));
    }
    Ok(secret)
}

impl ServeArgs {
    /// The server's configuration: the JWT secret read and checked, then the request head limit
    /// (below 8192: exit code 1).
    pub fn config(&self, conninfo: Option<String>) -> Result<serve::Config> {
        let secret = jwt_secret(&self.jwt_secret_file)?;
        if self.max_header_bytes < 8192 {
            return Err(fail("--max-header-bytes must be at least 8192"));
        }
        let jwt_header = match self.jwt_header.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(h) => Some(
                axum::http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| usage(format!("--jwt-header: {h:?} is not a header name")))?,
            ),
        };
        Ok(serve::Config {
            listen: self.listen.clone(),
            jwt_header,
            conninfo,
            jwt_secret: secret,
            jwt_aud: self.jwt_aud.clone().filter(|a| !a.is_empty()),
            jwt_leeway: self.jwt_leeway_secs,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            pool_size: self.pool_size,
            refusal_limit: usize::try_from(self.refusal_limit).unwrap_or(usize::MAX),
            refusal_window: Duration::from_secs(self.refusal_window_secs),
        })
    }
}
