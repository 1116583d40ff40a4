//! Registration of ciphertext columns, re-encryption batches, key usage, retirement and destruction.

use crate::audit;
use crate::error::{KeysError, OrRaise, Result};
use crate::keyring::validate_keyring;
use crate::reencrypt::{self, Column};
use pgrx::prelude::*;

fn lookup_key(keyring: &str, version: i32) -> Result<(i64, String)> {
    let (id, state) = Spi::get_two_with_args::<i64, String>(
        "SELECT (SELECT key_id FROM meshhook_keys.data_key WHERE keyring = $1 AND version = $2),
                (SELECT state FROM meshhook_keys.data_key WHERE keyring = $1 AND version = $2)",
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

/// The extension's own tables (the built-in store) are registered by the extension, with a fixed
/// context expression, and run as the extension's owner: no one may change that registration into
/// running their code with the owner's authority. System catalogs hold no envelopes.
fn refuse_extension_table(rel: pg_sys::Oid) -> Result<()> {
    let system = Spi::get_one_with_args::<String>(
        "SELECT (SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1 AND n.nspname OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog', 'information_schema', 'pg_toast']))",
        &[rel.into()],
    )?;
    if let Some(n) = system {
        return Err(KeysError::WrongObjectType(format!(
            "{n} is a system catalog: only ordinary tables of your own can be registered"
        )));
    }
    let name = Spi::get_one_with_args::<String>(
        "SELECT (SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
                  WHERE c.oid = $1 AND c.relnamespace = 'meshhook_keys'::pg_catalog.regnamespace)",
        &[rel.into()],
    )?;
    match name {
        Some(n) => Err(KeysError::ExtensionTable(n)),
        None => Ok(()),
    }
}

/// Register a bytea column that holds envelopes of `keyring`, with the SQL expression (over the row)
/// that gives the context it was encrypted with. Called by the `register_column(regclass, …)` wrapper.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _register_column(
    tbl: Option<pg_sys::Oid>,
    col: Option<&str>,
    context: Option<&str>,
    keyring: Option<&str>,
) -> i32 {
    (|| {
        audit::require_admin("register_column", keyring)?;
        let rel = tbl.ok_or(KeysError::NullArgument("tbl"))?;
        let col = col.ok_or(KeysError::NullArgument("col"))?;
        let keyring = validate_keyring(keyring)?;
        refuse_extension_table(rel)?;
        let (relkind, owner, attnum, typname) = Spi::connect(|c| {
                let t = c.select(
                    "SELECT c.relkind::text, c.relowner,
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped AND a.attnum > 0),
                            (SELECT a.atttypid::regtype::text FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped AND a.attnum > 0)
                       FROM pg_catalog.pg_class c WHERE c.oid = $1",
                    None,
                    &[rel.into(), col.into()],
                )?;
                if t.is_empty() {
                    return Err(KeysError::UndefinedTable(rel.to_u32()));
                }
                let t = t.first();
                Ok((t.get::<String>(1)?, t.get::<pg_sys::Oid>(2)?, t.get::<i16>(3)?, t.get::<String>(4)?))
            })?;
        if relkind.as_deref() != Some("r") {
            return Err(KeysError::WrongObjectType(
                "only ordinary tables can be registered (register each partition of a partitioned table)".into(),
            ));
        }
        // Only someone acting with the table owner's privileges may register a column: the context
        // expression will be evaluated as that owner.
        let owner = owner.unwrap_or(pg_sys::InvalidOid);
        // SAFETY: catalog lookup of role membership.
        let may = |role| unsafe { pg_sys::has_privs_of_role(role, owner) };
        if !crate::context::caller().role().is_some_and(may) {
            return Err(KeysError::NotTableOwner);
        }
        if attnum.is_none() {
            return Err(KeysError::UndefinedColumn(col.into()));
        }
        if typname.as_deref() != Some("bytea") {
            return Err(KeysError::DatatypeMismatch(format!(
                "column \"{col}\" is of type {}, but ciphertext columns must be bytea",
                typname.unwrap_or_default()
            )));
        }
        let context = context.filter(|c| !c.trim().is_empty()).map(str::to_string);
        let column = Column::resolve(rel, col, context.clone())?;
        reencrypt::validate_context_expr(&column)?;
        let id = Spi::get_one_with_args::<i32>(
            "INSERT INTO meshhook_keys.encrypted_column (rel, column_name, context_expr, keyring)
             VALUES ($1::oid::regclass, $2, $3, $4)
             ON CONFLICT (rel, column_name, keyring) DO UPDATE
                SET context_expr = EXCLUDED.context_expr,
                    registered_at = pg_catalog.now(), registered_by = session_user
             RETURNING id",
            &[rel.into(), col.into(), context.clone().into(), keyring.into()],
        )?
        .ok_or_else(|| KeysError::Internal("registration id is NULL".into()))?;
        audit::record(
            "register_column",
            Some(keyring),
            None,
            None,
            None,
            serde_json::json!({ "table_oid": rel.to_u32(), "column": col, "context_expr": context }),
        )?;
        Ok(id)
    })()
    .or_raise()
}

/// Forget a registered column, for one keyring or (keyring NULL) all of them. Called by the
/// `unregister_column(regclass, name, text)` wrapper. Returns whether anything was registered.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _unregister_column(tbl: Option<pg_sys::Oid>, col: Option<&str>, keyring: Option<&str>) -> bool {
    (|| {
        audit::require_admin("unregister_column", keyring)?;
        let rel = tbl.ok_or(KeysError::NullArgument("tbl"))?;
        let col = col.ok_or(KeysError::NullArgument("col"))?;
        refuse_extension_table(rel)?;
        let ids: Vec<i32> = Spi::connect(|c| {
            let mut ids = Vec::new();
            for row in c.select(
                "SELECT id FROM meshhook_keys.encrypted_column
                  WHERE rel = $1::oid::regclass AND column_name = $2 AND keyring = coalesce($3, keyring)",
                None,
                &[rel.into(), col.into(), keyring.into()],
            )? {
                ids.extend(row.get::<i32>(1)?);
            }
            Ok::<_, KeysError>(ids)
        })?;
        if ids.is_empty() {
            return Ok(false);
        }
        Spi::run_with_args(
            "DELETE FROM meshhook_keys.reencrypt_progress_column WHERE column_id = ANY ($1) AND state = 'running'",
            &[ids.clone().into()],
        )?;
        Spi::run_with_args("DELETE FROM meshhook_keys.encrypted_column WHERE id = ANY ($1)", &[ids.into()])?;
        audit::record(
            "unregister_column",
            keyring,
            None,
            None,
            None,
            serde_json::json!({ "table_oid": rel.to_u32(), "column": col }),
        )?;
        Ok(true)
    })()
    .or_raise()
}

/// One bounded re-encryption batch for a keyring inside the caller's transaction: returns the rows
/// moved to the active key, or NULL when every registered row is already there.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_batch(
    keyring: default!(Option<&str>, "'default'"),
    batch_size: default!(Option<i32>, "1000"),
) -> Option<i64> {
    (|| {
        audit::require_admin("reencrypt_batch", keyring)?;
        let keyring = validate_keyring(keyring)?;
        let n = batch_size.ok_or(KeysError::NullArgument("batch_size"))?;
        if n < 1 {
            return Err(KeysError::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        reencrypt::batch(keyring, n)
    })()
    .or_raise()
}

/// Internal to re-encryption: decrypt one claimed row and seal it under the target key, for
/// `_reencrypt_take`. Called by the batch's own UPDATE, which runs as the table owner; outside such
/// a batch in this session it refuses (42501). It runs no SQL and holds no search_path, so it is
/// neither SECURITY DEFINER nor pinned: it only uses keys the batch loaded before the statement.
#[pg_extern(volatile, parallel_unsafe)]
fn _reencrypt_try(
    row: pg_sys::ItemPointerData,
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
) -> bool {
    reencrypt::try_row(&row, ciphertext, context).or_raise()
}

/// Internal to re-encryption: the new envelope `_reencrypt_try` prepared for this same row.
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _reencrypt_take(row: pg_sys::ItemPointerData) -> Vec<u8> {
    reencrypt::take_row(&row).or_raise()
}

/// Rows per key version in every registered column of a keyring (rows on keys of other keyrings or
/// not envelopes at all are counted with a NULL version).
/// One row of key_usage: table, column, version (NULL: not this keyring's), state, rows.
type UsageRow = (pg_sys::Oid, String, Option<i32>, Option<String>, i64);

#[allow(clippy::type_complexity)]
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _key_usage(
    keyring: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(table_oid, pg_sys::Oid),
        name!(column_name, String),
        name!(version, Option<i32>),
        name!(state, Option<String>),
        name!(rows, i64),
    ),
> {
    let rows = (|| {
        audit::require_admin("key_usage", keyring)?;
        let keyring = validate_keyring(keyring)?;
        let mut out = Vec::new();
        for col in reencrypt::columns_of_keyring(keyring)? {
            if !col.exists() {
                continue;
            }
            for (key_id, n) in reencrypt::usage_by_key(&col)? {
                let (version, state) = match key_id {
                    Some(k) => Spi::get_two_with_args::<i32, String>(
                        "SELECT (SELECT version FROM meshhook_keys.data_key WHERE key_id = $1 AND keyring = $2),
                                (SELECT state FROM meshhook_keys.data_key WHERE key_id = $1 AND keyring = $2)",
                        &[k.into(), keyring.into()],
                    )?,
                    None => (None, None),
                };
                out.push((col.rel, col.column.clone(), version, state, n));
            }
        }
        // merge "other" buckets per column
        out.sort_by(|a, b| (a.0.to_u32(), &a.1, a.2).cmp(&(b.0.to_u32(), &b.1, b.2)));
        let mut merged: Vec<UsageRow> = Vec::new();
        for r in out {
            match merged.last_mut() {
                Some(m) if m.0 == r.0 && m.1 == r.1 && m.2 == r.2 => m.4 += r.4,
                _ => merged.push(r),
            }
        }
        Ok(merged)
    })()
    .or_raise();
    TableIterator::new(rows)
}

fn retire_or_destroy(
    keyring: Option<&str>,
    version: Option<i32>,
    force: Option<bool>,
    destroy: bool,
) -> Result<()> {
    let function = if destroy {
        "keys_destroy"
    } else {
        "keys_retire"
    };
    audit::require_admin(function, keyring)?;
    let keyring = validate_keyring(keyring)?;
    let version = version.ok_or(KeysError::NullArgument("version"))?;
    let force = force.unwrap_or(false);
    crate::audit::lock_chain()?;
    crate::store::lock_keyring(keyring)?;
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
        ("destroyed", _) => return refuse("it is already destroyed".into()),
        ("retired", false) => return refuse("it is already retired".into()),
        ("decrypt_only", true) if !force => {
            return refuse("retire it first (or pass force => true)".into());
        }
        _ => {}
    }
    let rows = reencrypt::rows_on_key(keyring, key_id)?;
    let failures = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_failure f
           JOIN meshhook_keys.reencrypt_job j ON j.id = f.job_id
          WHERE j.keyring = $1 AND j.state IN ('running', 'finished_with_errors')",
        &[keyring.into()],
    )?
    .unwrap_or(0);
    if (rows > 0 || failures > 0) && !force {
        return refuse(format!(
            "{rows} row(s) in registered columns still reference it and {failures} row(s) failed re-encryption; run CALL meshhook_keys.reencrypt('{keyring}') and resolve failures, or pass force => true"
        ));
    }
    if destroy {
        Spi::run_with_args(
            "UPDATE meshhook_keys.data_key SET state = 'destroyed', wrapped_key = NULL,
                    destroyed_at = pg_catalog.now(), retired_at = coalesce(retired_at, pg_catalog.now())
              WHERE key_id = $1",
            &[key_id.into()],
        )?;
    } else {
        Spi::run_with_args(
            "UPDATE meshhook_keys.data_key SET state = 'retired', retired_at = pg_catalog.now() WHERE key_id = $1",
            &[key_id.into()],
        )?;
    }
    audit::record(
        if destroy { "destroy" } else { "retire" },
        Some(keyring),
        Some(version),
        Some(key_id),
        None,
        serde_json::json!({ "forced": force, "rows_referencing": rows, "failed_rows": failures }),
    )?;
    crate::store::notify(
        if destroy { "destroy" } else { "retire" },
        keyring,
        Some(version),
    )
}

/// Retire a decrypt-only key version: decryption with it is refused from now on. Refused while
/// registered rows still reference it, unless forced. Admin only; audited.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_retire(
    keyring: Option<&str>,
    version: Option<i32>,
    force: default!(Option<bool>, "false"),
) -> bool {
    retire_or_destroy(keyring, version, force, false).or_raise();
    true
}

/// Destroy a retired key version: its wrapped key material is wiped (crypto-erasure), so nothing it
/// encrypted can ever be decrypted again. Same gate as keys_retire. Admin only; audited.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_destroy(
    keyring: Option<&str>,
    version: Option<i32>,
    force: default!(Option<bool>, "false"),
) -> bool {
    retire_or_destroy(keyring, version, force, true).or_raise();
    true
}

/// One row of verify: table, column, keyring, sampled, decrypted, failed, locked, ok, error.
type VerifyRow = (
    pg_sys::Oid,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    bool,
    Option<String>,
);

/// Sample each registered column and count the rows that decrypt, as the table owner reads them
/// (see crate::verify). Admin only. Called by the `verify(integer)` wrapper.
#[allow(clippy::type_complexity)]
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _verify(
    sample: Option<i32>,
) -> TableIterator<
    'static,
    (
        name!(table_oid, pg_sys::Oid),
        name!(column_name, String),
        name!(keyring, String),
        name!(sampled, i64),
        name!(decrypted, i64),
        name!(failed, i64),
        name!(locked, i64),
        name!(ok, bool),
        name!(error, Option<String>),
    ),
> {
    let rows = (|| {
        audit::require_admin("verify", None)?;
        let sample = sample.ok_or(KeysError::NullArgument("sample"))?;
        if !(1..=1_000_000).contains(&sample) {
            return Err(KeysError::InvalidArgument(
                "sample must be between 1 and 1000000".into(),
            ));
        }
        let checked = crate::verify::verify(sample as i64)?;
        Ok(checked
            .into_iter()
            .map(|c| -> VerifyRow {
                let ok = c.error.is_none() && c.failed == 0;
                (
                    c.rel,
                    c.column,
                    c.keyring,
                    c.sampled,
                    c.decrypted,
                    c.failed,
                    c.locked,
                    ok,
                    c.error,
                )
            })
            .collect::<Vec<_>>())
    })()
    .or_raise();
    TableIterator::new(rows)
}
