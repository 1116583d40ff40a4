//! meshhook-keys: a thin command-line client over the meshhook_keys SQL functions.
//!
//! SQL stays the single source of truth: every command is one or a few calls of the extension's
//! functions and views, so a rotation behaves the same however it is started, and the database's
//! own privileges decide who may do what. Errors are the database's own messages (with hints).
//! No plaintext, key material or secret is ever printed: `verify` decrypts samples in the
//! database and reports only whether they decrypt.
//!
//! Exit codes: 0 ok, 1 refused or failed (by the database, or a failed check), 2 usage.

mod connect;
mod serve;

use clap::{Parser, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use postgres::Client;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "meshhook-keys",
    version,
    about = "Manage meshhook_keys keys: status, rotation, re-encryption, audit"
)]
struct Cli {
    /// Connection string (URL or key=value), like psql's; default: the PG* environment variables.
    #[arg(long, short = 'd', env = "MESHHOOK_KEYS_URL", global = true)]
    url: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long, short)]
        keyring: String,
        #[arg(long, short)]
        version: i32,
        #[arg(long)]
        force: bool,
    },
    /// Destroy a retired version's key material (crypto-erasure).
    Destroy {
        #[arg(long, short)]
        keyring: String,
        #[arg(long, short)]
        version: i32,
        #[arg(long)]
        force: bool,
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
        jwt_secret_file: Option<std::path::PathBuf>,
    },
    /// Serve the HTTP admin API (POST /api/keys/rotate, GET /api/keys, /api/keys/progress,
    /// /api/keys/audit, /metrics, /healthz), authenticating HS256 JWTs like PostgREST.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// File holding the JWT secret (or set MESHHOOK_KEYS_JWT_SECRET).
        #[arg(long)]
        jwt_secret_file: Option<std::path::PathBuf>,
        /// Required `aud` claim of every token (unset: `aud` is not checked).
        #[arg(long, env = "MESHHOOK_KEYS_JWT_AUD")]
        jwt_aud: Option<String>,
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
    },
}

/// The longest --expires-in of `token`: ten years, in seconds.
const MAX_LIFETIME: i64 = 10 * 366 * 24 * 3600;

/// A failure to report: the database's error (message, hint, SQLSTATE) or a failed check.
struct Failure(String, u8);

/// A failure: exit code 1.
fn fail(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 1)
}

/// A usage or configuration error: exit code 2.
fn usage(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 2)
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(h) = db.hint() {
                    s.push_str(&format!("\nhint: {h}"));
                }
                fail(s)
            }
            None => fail(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Run a query and return its rows as JSON objects, columns in query order.
fn rows(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<Value>> {
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({sql}) AS q");
    let mut out = Vec::new();
    for r in client.query(wrapped.as_str(), params)? {
        let text: String = r.get(0);
        out.push(serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?);
    }
    Ok(out)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Print rows as a table (or JSON).
fn print(json: bool, title: Option<&str>, data: &[Value]) {
    if json {
        println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
        return;
    }
    if let Some(t) = title {
        println!("{t}");
    }
    let Some(Value::Object(first)) = data.first() else {
        println!("(no rows)");
        return;
    };
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(first.keys().cloned().collect::<Vec<_>>());
    for row in data {
        if let Value::Object(m) = row {
            table.add_row(m.values().map(cell).collect::<Vec<_>>());
        }
    }
    println!("{table}");
}

/// Run a query and print its rows; returns them for checks.
fn show(
    c: &mut Client,
    json: bool,
    title: Option<&str>,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<Value>> {
    let r = rows(c, sql, params)?;
    print(json, title, &r);
    Ok(r)
}

fn status(c: &mut Client, json: bool, no_usage: bool) -> Result<()> {
    let keyrings = rows(
        c,
        "SELECT keyring, active_version, date_trunc('second', active_age)::text AS active_age,
                rotation_interval::text, next_rotation_at, encryptions, max_encryptions,
                user_held, tenant, destroyed_at IS NOT NULL AS destroyed, failed_attempts, last_error
           FROM meshhook_keys.keyrings ORDER BY keyring",
        &[],
    )?;
    let usage = if no_usage {
        Vec::new()
    } else {
        rows(
            c,
            "SELECT k.keyring, u.table_name::text AS table_name, u.column_name::text AS column_name,
                    u.version, u.state, u.rows
               FROM meshhook_keys.keyrings k, meshhook_keys.key_usage(k.keyring) u
              WHERE u.version IS NOT NULL
              ORDER BY 1, 2, 3, 4",
            &[],
        )?
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "keyrings": keyrings, "usage": usage })
            )
            .unwrap_or_default()
        );
    } else {
        print(false, Some("Keyrings"), &keyrings);
        if !no_usage {
            print(
                false,
                Some("Rows per key version (registered columns)"),
                &usage,
            );
        }
    }
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total.max(1));
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// (rows total, rows done, rows failed, job state) of the keyring's newest job.
fn job_progress(c: &mut Client, keyring: &str) -> Result<Option<(i64, i64, i64, String)>> {
    let r = c.query_opt(
        "SELECT sum(rows_total)::bigint, sum(rows_done)::bigint, sum(rows_failed)::bigint, job_state
           FROM meshhook_keys.reencrypt_progress
          WHERE job_id = (SELECT max(job_id) FROM meshhook_keys.reencrypt_progress WHERE keyring = $1)
          GROUP BY job_state",
        &[&keyring],
    )?;
    Ok(r.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
}

fn reencrypt(c: &mut Client, json: bool, keyring: &str, batch_size: i32, wait: bool) -> Result<()> {
    let quiet = json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut moved: i64 = 0;
    let mut batches = 0;
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        progress_bar(0)
    };
    loop {
        if wait {
            std::thread::sleep(Duration::from_millis(500));
        } else {
            let n: Option<i64> = c
                .query_one(
                    "SELECT meshhook_keys.reencrypt_batch($1, $2)",
                    &[&keyring, &batch_size],
                )?
                .get(0);
            match n {
                Some(n) => {
                    moved += n;
                    batches += 1;
                }
                None => break,
            }
        }
        if let Some((total, done, failed, state)) = job_progress(c, keyring)? {
            pb.set_length(total.max(1) as u64);
            pb.set_position(done.max(0) as u64);
            pb.set_message(if failed > 0 {
                format!("{failed} failed")
            } else {
                String::new()
            });
            if wait && state != "running" {
                break;
            }
        } else if wait {
            break;
        }
    }
    pb.finish_and_clear();
    let summary = rows(
        c,
        "SELECT keyring, target_version, job_state AS state, sum(rows_total)::bigint AS rows_total,
                sum(rows_done)::bigint AS rows_done, sum(rows_failed)::bigint AS rows_failed
           FROM meshhook_keys.reencrypt_progress
          WHERE job_id = (SELECT max(job_id) FROM meshhook_keys.reencrypt_progress WHERE keyring = $1)
          GROUP BY keyring, target_version, job_state",
        &[&keyring],
    )?;
    if !json && !wait {
        println!("{moved} rows moved in {batches} batches");
    }
    print(json, Some("Re-encryption job"), &summary);
    let failed = summary
        .first()
        .and_then(|r| r.get("rows_failed"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if failed > 0 {
        return Err(fail(format!(
            "{failed} row(s) could not be re-encrypted: see meshhook_keys.reencrypt_failure"
        )));
    }
    Ok(())
}

fn verify(c: &mut Client, json: bool, sample: i64) -> Result<()> {
    let chain = rows(
        c,
        "SELECT ok, rows_checked, first_bad_id FROM meshhook_keys.audit_verify()",
        &[],
    )?;
    // The sampling runs inside the extension, as each table's owner (a registered context
    // expression is the table owner's code: never run it with this client's authority). Only
    // counts come back, never a value.
    let sample =
        i32::try_from(sample).map_err(|_| fail("--sample must be between 1 and 1000000"))?;
    let results = rows(
        c,
        "SELECT table_name::text AS table, column_name::text AS column, keyring, sampled, decrypted,
                failed, locked, ok, error
           FROM meshhook_keys.verify($1) ORDER BY 1, 2, 3",
        &[&sample],
    )?;
    let all_ok = chain
        .first()
        .and_then(|r| r.get("ok"))
        .and_then(Value::as_bool)
        == Some(true)
        && results
            .iter()
            .all(|r| r.get("ok").and_then(Value::as_bool) == Some(true));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "audit_chain": chain, "columns": results })
            )
            .unwrap_or_default()
        );
    } else {
        print(false, Some("Audit chain"), &chain);
        print(
            false,
            Some("Sample decryption per registered column"),
            &results,
        );
    }
    if all_ok {
        Ok(())
    } else {
        Err(fail("verification failed (see above)"))
    }
}

/// The shortest JWT secret accepted (from the file or the environment): 32 bytes, as PostgREST
/// requires for HS256.
const MIN_JWT_SECRET: usize = 32;

/// The JWT secret: --jwt-secret-file (trimmed), else MESHHOOK_KEYS_JWT_SECRET; at least 32 bytes
/// (an empty or short secret is refused: exit code 2).
fn jwt_secret(file: &Option<std::path::PathBuf>) -> Result<Vec<u8>> {
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

fn run(cli: Cli) -> Result<()> {
    if let Command::Token {
        role,
        sub,
        expires_in,
        jwt_secret_file,
    } = &cli.command
    {
        let secret = jwt_secret(jwt_secret_file)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let claims =
            serde_json::json!({ "role": role, "sub": sub, "iat": now, "exp": now + expires_in });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .map_err(|e| fail(e.to_string()))?;
        if cli.json {
            println!(
                "{}",
                serde_json::json!({ "token": token, "role": role, "sub": sub, "iat": now, "exp": now + expires_in })
            );
        } else {
            println!("{token}");
        }
        return Ok(());
    }
    if let Command::Serve {
        listen,
        jwt_secret_file,
        jwt_aud,
        jwt_leeway_secs,
        max_body_bytes,
        max_header_bytes,
        request_timeout_ms,
        statement_timeout_ms,
        lock_timeout_ms,
        pool_size,
        refusal_limit,
        refusal_window_secs,
    } = &cli.command
    {
        let secret = jwt_secret(jwt_secret_file)?;
        return serve::serve(serve::Config {
            listen: listen.clone(),
            conninfo: cli.url.clone(),
            jwt_secret: secret,
            jwt_aud: jwt_aud.clone().filter(|a| !a.is_empty()),
            jwt_leeway: *jwt_leeway_secs,
            max_body_bytes: *max_body_bytes,
            max_header_bytes: *max_header_bytes,
            request_timeout: Duration::from_millis(*request_timeout_ms),
            statement_timeout: Duration::from_millis(*statement_timeout_ms),
            lock_timeout: Duration::from_millis(*lock_timeout_ms),
            pool_size: *pool_size,
            refusal_limit: usize::try_from(*refusal_limit).unwrap_or(usize::MAX),
            refusal_window: Duration::from_secs(*refusal_window_secs),
        })
        .map_err(fail);
    }
    let mut c = connect::connect(cli.url.as_deref()).map_err(fail)?;
    let json = cli.json;
    match cli.command {
        Command::Status { no_usage } => status(&mut c, json, no_usage),
        Command::Rotate { keyring, reason } => show(
            &mut c,
            json,
            Some("Rotated"),
            "SELECT keyring, version, key_id, activated_at FROM meshhook_keys.keys_rotate($1, $2)",
            &[&keyring, &reason],
        )
        .map(drop),
        Command::Reencrypt {
            keyring,
            batch_size,
            wait,
        } => reencrypt(&mut c, json, &keyring, batch_size, wait),
        Command::Retire {
            keyring,
            version,
            force,
        } => show(
            &mut c,
            json,
            None,
            "SELECT meshhook_keys.keys_retire($1, $2, $3) AS retired",
            &[&keyring, &version, &force],
        )
        .map(drop),
        Command::Destroy {
            keyring,
            version,
            force,
        } => show(
            &mut c,
            json,
            None,
            "SELECT meshhook_keys.keys_destroy($1, $2, $3) AS destroyed",
            &[&keyring, &version, &force],
        )
        .map(drop),
        Command::Audit {
            since,
            keyring,
            limit,
        } => show(
            &mut c,
            json,
            Some("Audit log"),
            "SELECT * FROM (
                     SELECT id, at, actor, detail -> 'jwt' ->> 'sub' AS sub, role_name, action,
                            outcome, keyring, version, reason, detail
                       FROM meshhook_keys.audit_log
                      WHERE ($1::text IS NULL OR at >= $1::text::timestamptz)
                        AND ($2::text IS NULL OR keyring = $2)
                      ORDER BY id DESC LIMIT $3) a ORDER BY id",
            &[&since, &keyring, &limit],
        )
        .map(drop),
        Command::Verify { sample } => verify(&mut c, json, sample),
        Command::RootRewrap => show(
            &mut c,
            json,
            Some("Root key rewrap"),
            "SELECT rewrapped, already_current FROM meshhook_keys.root_key_rewrap()",
            &[],
        )
        .map(drop),
        Command::Serve { .. } | Command::Token { .. } => unreachable!("handled above"),
        Command::Health => {
            let sql = "SELECT item, status, detail FROM meshhook_keys.health()";
            let r = show(&mut c, json, Some("Health"), sql, &[])?;
            if r.iter()
                .any(|x| x.get("status").and_then(Value::as_str) == Some("error"))
            {
                return Err(fail("health: at least one check is in error"));
            }
            Ok(())
        }
    }
}

/// An error on stderr: a line of text, or with --json a JSON object
/// `{"error": message, "exit_code": code}`.
fn report(json: bool, msg: &str, code: u8) -> ExitCode {
    if json {
        eprintln!("{}", serde_json::json!({ "error": msg, "exit_code": code }));
    } else {
        eprintln!("meshhook-keys: error: {msg}");
    }
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
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
            return report(true, text, 2);
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => report(json, &msg, code),
    }
}
