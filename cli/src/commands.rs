//! The commands that talk to the database (status, rotate, reencrypt, retire, destroy, audit,
//! verify, root-rewrap, health) and `token`, which only signs. Each is one or a few calls of the
//! extension's functions and views, its rows printed by `output`; a failed check is a failure
//! (exit code 1) after the rows are printed.

use crate::args::{self, KeyVersion};
use crate::output::{Result, fail, json_rows, json_rows_sql, print, print_sections};
use indicatif::{ProgressBar, ProgressStyle};
use postgres::Client;
use postgres::types::ToSql;
use serde_json::Value;
use std::time::Duration;

/// Run a query and return its rows as JSON objects, columns in query order.
fn rows(client: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Value>> {
    let rows = client.query(json_rows_sql(sql).as_str(), params)?;
    json_rows(&rows).map_err(fail)
}

/// Run a query and print its rows; returns them for checks.
fn show(
    c: &mut Client,
    json: bool,
    title: Option<&str>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Value>> {
    let r = rows(c, sql, params)?;
    print(json, title, &r);
    Ok(r)
}

pub fn status(c: &mut Client, json: bool, no_usage: bool) -> Result<()> {
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
    let usage_title = (!no_usage).then_some("Rows per key version (registered columns)");
    print_sections(
        json,
        &[
            ("keyrings", Some("Keyrings"), &keyrings[..]),
            ("usage", usage_title, &usage[..]),
        ],
    );
    Ok(())
}

pub fn rotate(c: &mut Client, json: bool, keyring: &str, reason: Option<&str>) -> Result<()> {
    show(
        c,
        json,
        Some("Rotated"),
        "SELECT keyring, version, key_id, activated_at FROM meshhook_keys.keys_rotate($1, $2)",
        &[&keyring, &reason],
    )
    .map(drop)
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

pub fn reencrypt(
    c: &mut Client,
    json: bool,
    keyring: &str,
    batch_size: i32,
    wait: bool,
) -> Result<()> {
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

pub fn retire(c: &mut Client, json: bool, target: &KeyVersion) -> Result<()> {
    show(
        c,
        json,
        None,
        "SELECT meshhook_keys.keys_retire($1, $2, $3) AS retired",
        &[&target.keyring, &target.version, &target.force],
    )
    .map(drop)
}

pub fn destroy(c: &mut Client, json: bool, target: &KeyVersion) -> Result<()> {
    show(
        c,
        json,
        None,
        "SELECT meshhook_keys.keys_destroy($1, $2, $3) AS destroyed",
        &[&target.keyring, &target.version, &target.force],
    )
    .map(drop)
}

pub fn audit(
    c: &mut Client,
    json: bool,
    since: Option<&str>,
    keyring: Option<&str>,
    limit: i64,
) -> Result<()> {
    show(
        c,
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
    .map(drop)
}

pub fn verify(c: &mut Client, json: bool, sample: i64) -> Result<()> {
    let chain = rows(
        c,
        "SELECT ok, rows_checked, first_bad_id FROM meshhook_keys.audit_verify()",
        &[],
    )?;
    // The sampling runs inside the extension, as each table's owner (a registered context
    // expression is the table owner's code: never run it with this client's authority). Only
    // counts come back, never a value.
    let sample = args::sample(sample)?;
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
    print_sections(
        json,
        &[
            ("audit_chain", Some("Audit chain"), &chain[..]),
            (
                "columns",
                Some("Sample decryption per registered column"),
                &results[..],
            ),
        ],
    );
    if all_ok {
        Ok(())
    } else {
        Err(fail("verification failed (see above)"))
    }
}

pub fn root_rewrap(c: &mut Client, json: bool) -> Result<()> {
    show(
        c,
        json,
        Some("Root key rewrap"),
        "SELECT rewrapped, already_current FROM meshhook_keys.root_key_rewrap()",
        &[],
    )
    .map(drop)
}

pub fn health(c: &mut Client, json: bool) -> Result<()> {
    let sql = "SELECT item, status, detail FROM meshhook_keys.health()";
    let r = show(c, json, Some("Health"), sql, &[])?;
    if r.iter()
        .any(|x| x.get("status").and_then(Value::as_str) == Some("error"))
    {
        return Err(fail("health: at least one check is in error"));
    }
    Ok(())
}

/// An HS256 JWT for `role` (and `sub`), valid from now for `expires_in` seconds: the token alone,
/// or with --json an object with it and its claims.
pub fn token(
    json: bool,
    role: &str,
    sub: Option<&str>,
    expires_in: i64,
    jwt_secret_file: &Option<std::path::PathBuf>,
) -> Result<()> {
    let secret = args::jwt_secret(jwt_secret_file)?;
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
    if json {
        println!(
            "{}",
            serde_json::json!({ "token": token, "role": role, "sub": sub, "iat": now, "exp": now + expires_in })
        );
    } else {
        println!("{token}");
    }
    Ok(())
}
