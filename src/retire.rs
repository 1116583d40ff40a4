//! Retiring and destroying key versions: the end of a data key's life.
//!
//! A retired version no longer decrypts; a destroyed one has its wrapped material wiped
//! (crypto-erasure), so nothing it sealed can ever be read again. Both are refused for the active
//! key and, unless forced, while any registered column still holds rows on the key or a
//! re-encryption job still has failed rows for the keyring.
//!
//! Invariants: the keyring is locked (after the audit chain, in the one lock order) before the
//! key's state is read, so a concurrent rotation or second retire cannot interleave with the
//! check; the state change, its audit row and the event published on the events channel commit
//! or roll back together with the check. Other backends' key caches see the new state through the
//! relcache invalidation of `data_key` (crate::resolver).

use crate::audit;
use crate::error::{KeysError, Result};
use crate::lock_order::{self, Row};
use crate::reencrypt;
use crate::store;
use pgrx::prelude::*;

fn lookup_key(keyring: &str, version: i32) -> Result<(i64, String)> {
    let (id, state) = Spi::get_two_with_args::<i64, String>(
        "SELECT (SELECT key_id FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2),
                (SELECT state FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2)",
        &[keyring.into(), version.into()],
    )?;
    match (id, state) {
        (Some(id), Some(state)) => Ok((id, state)),
        _ => Err(KeysError::UnknownKeyVersion {
            keyring: keyring.into(),
            version,
        }),
    }
}

/// Retire (`destroy` false) or destroy one key version of `keyring`, refused (55000) for the
/// active key, a key already in that state, and a key registered rows or unresolved failures still
/// need, unless `force`. The caller has checked that an admin is calling.
pub fn retire_or_destroy(keyring: &str, version: i32, force: bool, destroy: bool) -> Result<()> {
    lock_order::keyring(keyring, Row::CreateIfMissing)?;
    let (key_id, rows, failures) = gate(keyring, version, force, destroy)?;
    act(keyring, version, key_id, force, destroy, rows, failures)
}

/// The checks of a retire or a destroy, the keyring locked: the key id, and the rows that still
/// reference it and the failed rows of the keyring (both 0 unless forced).
fn gate(keyring: &str, version: i32, force: bool, destroy: bool) -> Result<(i64, i64, i64)> {
    let (key_id, state) = lookup_key(keyring, version)?;
    let refuse = |why: String| {
        Err(KeysError::KeyInUse {
            keyring: keyring.into(),
            version,
            why,
        })
    };
    match (state.as_str(), destroy) {
        ("active", _) => {
            return refuse("it is the active key; rotate the keyring first".into());
        }
        ("pending", _) => {
            return refuse(
                "it is pending, waiting for the standbys to replay it (see health())".into(),
            );
        }
        ("destroyed", _) => return refuse("it is already destroyed".into()),
        ("retired", false) => return refuse("it is already retired".into()),
        ("decrypt_only", true) if !force => {
            return refuse("retire it first (or pass force => true)".into());
        }
        _ => {}
    }
    let per_column = reencrypt::rows_on_key(keyring, key_id)?;
    let rows: i64 = per_column.iter().map(|(_, n)| n).sum();
    let failures = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_failure f
           JOIN meshhook_keys.reencrypt_job j ON j.id OPERATOR(pg_catalog.=) f.job_id
          WHERE j.keyring OPERATOR(pg_catalog.=) $1 AND j.state IN ('running', 'finished_with_errors')",
        &[keyring.into()],
    )?
    .unwrap_or(0);
    if (rows > 0 || failures > 0) && !force {
        // (the columns that still hold rows on it, most first, at most five named)
        let mut named = per_column.clone();
        named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut which: Vec<String> = named
            .iter()
            .take(5)
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        if named.len() > 5 {
            which.push(format!("and {} more columns", named.len() - 5));
        }
        let which = if which.is_empty() {
            String::new()
        } else {
            format!(" ({})", which.join(", "))
        };
        return refuse(format!(
            "{rows} row(s) in registered columns still reference it{which} and {failures} row(s) failed re-encryption; run CALL meshhook_keys.reencrypt('{keyring}') and resolve failures (meshhook_keys.reencrypt_progress shows a column whose batch failed, with its error), or pass force => true"
        ));
    }
    Ok((key_id, rows, failures))
}

fn act(
    keyring: &str,
    version: i32,
    key_id: i64,
    force: bool,
    destroy: bool,
    rows: i64,
    failures: i64,
) -> Result<()> {
    if destroy {
        Spi::run_with_args(
            "UPDATE meshhook_keys.data_key SET state = 'destroyed', wrapped_key = NULL, destroy_at = NULL,
                    destroyed_at = pg_catalog.now(), retired_at = coalesce(retired_at, pg_catalog.now())
              WHERE key_id OPERATOR(pg_catalog.=) $1",
            &[key_id.into()],
        )?;
    } else {
        Spi::run_with_args(
            "UPDATE meshhook_keys.data_key SET state = 'retired', retired_at = pg_catalog.now() WHERE key_id OPERATOR(pg_catalog.=) $1",
            &[key_id.into()],
        )?;
    }
    if !destroy && !reencrypt::run_since_last_registration(keyring)? {
        // (a column nobody registered is what re-encryption never moves: its rows on this version
        // are what a retire makes undecryptable, and a destroy loses for good)
        pgrx::pg_sys::panic::ErrorReport::new(
            pgrx::PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "meshhook_keys.find_unregistered('{keyring}') has not been run since the last column was registered: a bytea column nobody registered may still hold rows on version {version}"
            ),
            "meshhook_keys::retire",
        )
        .set_hint(format!(
            "Look with meshhook_keys.find_unregistered('{keyring}'); meshhook_keys.keys_unretire('{keyring}', {version}) takes this retirement back until the version is destroyed."
        ))
        .report(pgrx::PgLogLevel::WARNING);
    }
    audit::record(
        if destroy { "destroy" } else { "retire" },
        Some(keyring),
        Some(version),
        Some(key_id),
        None,
        serde_json::json!({ "forced": force, "rows_referencing": rows, "failed_rows": failures }),
    )?;
    store::notify(
        if destroy { "destroy" } else { "retire" },
        keyring,
        Some(version),
    )
}

/// Take back a retirement: a retired version of `keyring` decrypts again (`decrypt_only`).
/// Retirement is reversible until the version is destroyed; refused (55000) for any version that
/// is not retired, and for a destroyed one, whose key material is gone. The caller has checked
/// that an admin is calling. Audited, with the reason given.
pub fn unretire(keyring: &str, version: i32, reason: Option<&str>) -> Result<()> {
    lock_order::keyring(keyring, Row::Existing)?;
    let (key_id, state) = lookup_key(keyring, version)?;
    let why = match state.as_str() {
        "retired" => None,
        "destroyed" => Some("it is destroyed: its key material is gone for good".to_string()),
        other => Some(format!("it is not retired (it is {other})")),
    };
    if let Some(why) = why {
        return Err(KeysError::KeyInUse {
            keyring: keyring.into(),
            version,
            why,
        });
    }
    Spi::run_with_args(
        "UPDATE meshhook_keys.data_key SET state = 'decrypt_only', retired_at = NULL, destroy_at = NULL, destroy_forced = false
          WHERE key_id OPERATOR(pg_catalog.=) $1",
        &[key_id.into()],
    )?;
    audit::record(
        "unretire",
        Some(keyring),
        Some(version),
        Some(key_id),
        reason,
        serde_json::json!({}),
    )?;
    store::notify("unretire", keyring, Some(version))
}

/// Schedule the destruction of a version `after` from now (keys_destroy(..., after => ...)): the
/// same checks as a destroy now, then `destroy_at` set; the scheduler destroys it once due,
/// checking again (a schedule made with `force` stays forced). Reversible until then with
/// [`cancel_destroy`] or [`unretire`]. Audited. Returns when it will be destroyed.
pub fn schedule_destroy(
    keyring: &str,
    version: i32,
    force: bool,
    after_micros: i128,
) -> Result<String> {
    if after_micros <= 0 {
        return Err(KeysError::InvalidArgument(
            "after must be a positive interval (or NULL to destroy now)".into(),
        ));
    }
    lock_order::keyring(keyring, Row::Existing)?;
    let (key_id, rows, failures) = gate(keyring, version, force, true)?;
    let at = Spi::get_one_with_args::<String>(
        "UPDATE meshhook_keys.data_key
            SET destroy_at = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2::pg_catalog.float8 OPERATOR(pg_catalog./) 1000000),
                destroy_forced = $3
          WHERE key_id OPERATOR(pg_catalog.=) $1
         RETURNING destroy_at::pg_catalog.text",
        &[key_id.into(), (after_micros as f64).into(), force.into()],
    )?
    .unwrap_or_default();
    audit::record(
        "destroy_scheduled",
        Some(keyring),
        Some(version),
        Some(key_id),
        None,
        serde_json::json!({ "destroy_at": at, "forced": force, "rows_referencing": rows, "failed_rows": failures }),
    )?;
    store::notify("destroy_scheduled", keyring, Some(version))?;
    Ok(at)
}

/// Cancel a scheduled destruction (keys_destroy_cancel); refused (55000) when none is scheduled.
/// Audited.
pub fn cancel_destroy(keyring: &str, version: i32) -> Result<()> {
    lock_order::keyring(keyring, Row::Existing)?;
    let (key_id, _) = lookup_key(keyring, version)?;
    let cancelled = Spi::get_one_with_args::<bool>(
        "WITH c AS (UPDATE meshhook_keys.data_key SET destroy_at = NULL, destroy_forced = false
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND destroy_at IS NOT NULL RETURNING 1)
         SELECT EXISTS (SELECT FROM c)",
        &[key_id.into()],
    )?
    .unwrap_or(false);
    if !cancelled {
        return Err(KeysError::KeyInUse {
            keyring: keyring.into(),
            version,
            why: "no destruction is scheduled for it".into(),
        });
    }
    audit::record(
        "destroy_cancelled",
        Some(keyring),
        Some(version),
        Some(key_id),
        None,
        serde_json::json!({}),
    )?;
    store::notify("destroy_cancelled", keyring, Some(version))
}

/// The scheduled destructions that are due: (keyring, version, forced).
pub fn due_destructions() -> Result<Vec<(String, i32, bool)>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT keyring, version, destroy_forced FROM meshhook_keys.data_key
              WHERE destroy_at OPERATOR(pg_catalog.<=) pg_catalog.now() AND state OPERATOR(pg_catalog.<>) 'destroyed'
              ORDER BY destroy_at, keyring, version",
            None,
            &[],
        )? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i32>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        Ok::<_, KeysError>(out)
    })
}

/// Carry out a due destruction (the scheduler): destroyed if it still passes the checks; if not
/// (rows registered since reference it), the schedule is dropped and the error returned, for the
/// scheduler to audit as a failure.
pub fn destroy_due(keyring: &str, version: i32, forced: bool) -> Result<()> {
    lock_order::keyring(keyring, Row::Existing)?;
    match gate(keyring, version, forced, true) {
        Ok((key_id, rows, failures)) => act(keyring, version, key_id, forced, true, rows, failures),
        Err(e) => Err(e),
    }
}

/// Drop a schedule the scheduler could not carry out (it stays refused until scheduled again).
pub fn drop_schedule(keyring: &str, version: i32) -> Result<()> {
    Spi::run_with_args(
        "UPDATE meshhook_keys.data_key SET destroy_at = NULL, destroy_forced = false
          WHERE keyring OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
        &[keyring.into(), version.into()],
    )?;
    Ok(())
}
