//! Registration of ciphertext columns, re-encryption batches, key usage, retirement and destruction:
//! the SQL wrappers. The work is in crate::reencrypt and crate::retire.

use crate::api::rowcall;
use crate::audit;
use crate::error::{KeysError, OrRaise};
use crate::keyring::validate_keyring;
use crate::reencrypt;
use crate::retire;
use pgrx::prelude::*;

/// Register a bytea column that holds envelopes of `keyring`, with the SQL expression (over the row)
/// that gives the context it was encrypted with. Called by the `register_column(regclass, …)` wrapper.
/// Requires meshhook_keys_operator; also requires the privileges of the table's owner.
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
        reencrypt::register(rel, col, context, keyring)
    })()
    .or_raise()
}

/// Forget a registered column, for one keyring or (keyring NULL) all of them. Called by the
/// `unregister_column(regclass, name, text)` wrapper. Returns whether anything was registered.
/// Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _unregister_column(tbl: Option<pg_sys::Oid>, col: Option<&str>, keyring: Option<&str>) -> bool {
    (|| {
        audit::require_admin("unregister_column", keyring)?;
        let rel = tbl.ok_or(KeysError::NullArgument("tbl"))?;
        let col = col.ok_or(KeysError::NullArgument("col"))?;
        reencrypt::unregister(rel, col, keyring)
    })()
    .or_raise()
}

/// One bounded re-encryption batch for a keyring inside the caller's transaction: returns the rows
/// moved to the active key, or NULL when every registered row is already there. Requires
/// meshhook_keys_operator.
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

/// Pause the scheduler's re-encryption of a keyring: its job and cursor are kept, the scheduler
/// skips it until reencrypt_resume (an operator's reencrypt_batch or CALL reencrypt still runs).
/// Returns whether it was running before. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_pause(keyring: Option<&str>, reason: default!(Option<&str>, "NULL")) -> bool {
    (|| {
        audit::require_admin("reencrypt_pause", keyring)?;
        reencrypt::set_paused(validate_keyring(keyring)?, true, reason)
    })()
    .or_raise()
}

/// Resume the scheduler's re-encryption of a keyring paused by reencrypt_pause, from where it
/// stopped. Returns whether it was paused. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reencrypt_resume(keyring: Option<&str>, reason: default!(Option<&str>, "NULL")) -> bool {
    (|| {
        audit::require_admin("reencrypt_resume", keyring)?;
        reencrypt::set_paused(validate_keyring(keyring)?, false, reason)
    })()
    .or_raise()
}

// `_reencrypt_try` and `_reencrypt_take` run once per row of every batch, so they are plain V1
// functions reading their arguments in place (see `crate::api::rowcall`) rather than `#[pg_extern]`
// wrappers, whose per-call argument conversion and guards cost about as much as the rest of the
// function (bench/profile-reencrypt.sh). Their SQL declarations are below, as pgrx would write them.
extension_sql!(
    r#"
CREATE FUNCTION "_reencrypt_try"(
	"token" bytea,
	"row" tid,
	"ciphertext" bytea,
	"context" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_reencrypt_try_wrapper';

CREATE FUNCTION "_reencrypt_take"(
	"token" bytea,
	"row" tid
) RETURNS bytea
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_reencrypt_take_wrapper';
"#,
    name = "reencrypt_row_functions",
    requires = ["bootstrap"]
);

/// Internal to re-encryption: decrypt one claimed row and seal it under the target key, for
/// `_reencrypt_take`. Called by the batch's own UPDATE, which runs as the table owner and passes
/// the random token the batch armed the statement with; any other call (outside a batch, or from
/// the table owner's own code inside one, which cannot know the token) refuses (42501). It runs no
/// SQL and holds no search_path, so it is neither SECURITY DEFINER nor pinned: it only uses keys
/// the batch loaded before the statement. Executable by PUBLIC; a batch's UPDATE calls it as the
/// table's owner, whoever that is, and it refuses (42501) any call but that statement's.
/// SQL: `_reencrypt_try(token bytea, row tid, ciphertext bytea, context text) RETURNS bool`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _reencrypt_try_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the function manager with this function's four arguments.
    let (token, row, ciphertext, context) = unsafe {
        (
            rowcall::bytes(fcinfo, 0),
            rowcall::tid(fcinfo, 1),
            rowcall::bytes(fcinfo, 2),
            rowcall::bytes(fcinfo, 3),
        )
    };
    // (a NULL row is no row of the statement: refused like any call without its token)
    let Some(row) = row else {
        KeysError::NotInBatch("meshhook_keys._reencrypt_try").raise()
    };
    pg_sys::Datum::from(reencrypt::try_row(token, row, ciphertext, context).or_raise())
}

rowcall::v1_finfo!(pg_finfo__reencrypt_try_wrapper);

/// Internal to re-encryption: `_reencrypt_try` for a column with a blind index, which also
/// computes the row's index under the target key for `index_context`, for `_reencrypt_index`.
/// Executable by PUBLIC; a batch's UPDATE calls it as the table's owner, whoever that is, and it
/// refuses (42501) any call but that statement's.
#[pg_extern(volatile, parallel_unsafe)]
fn _reencrypt_try_indexed(
    token: Option<&[u8]>,
    row: pg_sys::ItemPointerData,
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
    index_context: Option<&str>,
) -> bool {
    reencrypt::try_row_indexed(
        token,
        &row,
        ciphertext,
        context.map(str::as_bytes),
        Some(index_context),
    )
    .or_raise()
}

/// Internal to re-encryption: the blind index `_reencrypt_try_indexed` computed for this same row.
/// Executable by PUBLIC; a batch's UPDATE calls it as the table's owner, whoever that is, and it
/// refuses (42501) any call but that statement's.
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _reencrypt_index(token: &[u8], row: pg_sys::ItemPointerData) -> Vec<u8> {
    reencrypt::take_index(token, &row).or_raise().to_vec()
}

/// Internal to re-encryption: the new envelope `_reencrypt_try` prepared for this same row.
/// Executable by PUBLIC; a batch's UPDATE calls it as the table's owner, whoever that is, and it
/// refuses (42501) any call but that statement's.
/// SQL: `_reencrypt_take(token bytea, row tid) RETURNS bytea`, STRICT.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _reencrypt_take_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the function manager with this function's two arguments, neither NULL
    // (STRICT).
    let (token, row) = unsafe { (rowcall::bytes(fcinfo, 0), rowcall::tid(fcinfo, 1)) };
    let (Some(token), Some(row)) = (token, row) else {
        KeysError::NotInBatch("meshhook_keys._reencrypt_take").raise()
    };
    reencrypt::take_row(token, row, crate::api::plain::varlena).or_raise()
}

rowcall::v1_finfo!(pg_finfo__reencrypt_take_wrapper);

/// The unregistered bytea columns that hold envelopes of a keyring, each read as its table's
/// owner, at most `max_blocks` blocks each; columns whose read failed or stopped early are listed
/// too. Audited. Requires meshhook_keys_operator.
#[allow(clippy::type_complexity)]
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _find_unregistered(
    keyring: Option<&str>,
    max_blocks: Option<i32>,
) -> TableIterator<
    'static,
    (
        name!(table_oid, pg_sys::Oid),
        name!(column_name, String),
        name!(rows, Option<i64>),
        name!(blocks_read, i64),
        name!(blocks, i64),
        name!(error, Option<String>),
    ),
> {
    let rows = (|| {
        audit::require_admin("find_unregistered", keyring)?;
        let keyring = validate_keyring(keyring)?;
        let max_blocks = max_blocks.ok_or(KeysError::NullArgument("max_blocks"))?;
        reencrypt::find_unregistered(keyring, i64::from(max_blocks))
    })()
    .or_raise();
    TableIterator::new(
        rows.into_iter()
            .map(|f| (f.table, f.column, f.rows, f.blocks_read, f.blocks, f.error)),
    )
}

/// Rows per key version in every registered column of a keyring (rows on keys of other keyrings or
/// not envelopes at all are counted with a NULL version). Requires meshhook_keys_operator.
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
        reencrypt::key_usage(keyring)
    })()
    .or_raise();
    TableIterator::new(rows)
}

/// keys_retire and keys_destroy: the operator check, the arguments, then crate::retire.
fn retire_wrapper(
    function: &'static str,
    keyring: Option<&str>,
    version: Option<i32>,
    force: Option<bool>,
    destroy: bool,
) -> bool {
    (|| {
        audit::require_admin(function, keyring)?;
        let keyring = validate_keyring(keyring)?;
        let version = version.ok_or(KeysError::NullArgument("version"))?;
        retire::retire_or_destroy(keyring, version, force.unwrap_or(false), destroy)
    })()
    .or_raise();
    true
}

/// Retire a decrypt-only key version: decryption with it is refused from now on. Refused while
/// registered rows still reference it, unless forced. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_retire(
    keyring: Option<&str>,
    version: Option<i32>,
    force: default!(Option<bool>, "false"),
) -> bool {
    retire_wrapper("keys_retire", keyring, version, force, false)
}

/// Take back a retirement: a retired key version decrypts again (decrypt_only). Reversible until
/// the version is destroyed: refused (55000) for a version that is not retired, or is destroyed.
/// Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_unretire(
    keyring: Option<&str>,
    version: Option<i32>,
    reason: default!(Option<&str>, "NULL"),
) -> bool {
    (|| {
        audit::require_admin("keys_unretire", keyring)?;
        let keyring = validate_keyring(keyring)?;
        let version = version.ok_or(KeysError::NullArgument("version"))?;
        retire::unretire(keyring, version, reason)
    })()
    .or_raise();
    true
}

/// Destroy a retired key version: its wrapped key material is wiped (crypto-erasure), so nothing it
/// encrypted can ever be decrypted again. Refused while registered rows reference it unless
/// forced, as keys_retire. With `after`, scheduled instead: the scheduler destroys it once the
/// interval has passed (checking again), keys_destroy_cancel or keys_unretire take it back until
/// then. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_destroy(
    keyring: Option<&str>,
    version: Option<i32>,
    force: default!(Option<bool>, "false"),
    after: default!(Option<pgrx::datum::Interval>, "NULL"),
) -> bool {
    let Some(after) = after else {
        return retire_wrapper("keys_destroy", keyring, version, force, true);
    };
    (|| {
        audit::require_admin("keys_destroy", keyring)?;
        let keyring = validate_keyring(keyring)?;
        let version = version.ok_or(KeysError::NullArgument("version"))?;
        retire::schedule_destroy(keyring, version, force.unwrap_or(false), after.as_micros())
    })()
    .or_raise();
    true
}

/// Cancel a destruction scheduled by keys_destroy(..., after => ...); refused (55000) when none is
/// scheduled for the version. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_destroy_cancel(keyring: Option<&str>, version: Option<i32>) -> bool {
    (|| {
        audit::require_admin("keys_destroy_cancel", keyring)?;
        let keyring = validate_keyring(keyring)?;
        let version = version.ok_or(KeysError::NullArgument("version"))?;
        retire::cancel_destroy(keyring, version)
    })()
    .or_raise();
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
/// (see crate::verify). Called by the `verify(integer)` wrapper. Requires meshhook_keys_operator.
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
