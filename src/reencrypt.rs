//! Online re-encryption: move every registered ciphertext of a keyring to its active key.
//!
//! One call of [`batch`] is a bounded piece of work inside the caller's transaction:
//! * rows are found by a TID range over a window of heap blocks (`ctid >= (b,o) AND ctid < (b+k,0)`),
//!   so each batch reads only its window and a pass reads the table once, whatever its size;
//! * only rows whose header names an old version of the keyring are claimed, with
//!   `FOR UPDATE SKIP LOCKED`, so a row an application is updating is skipped (and retried on a later
//!   pass) instead of waited for;
//! * each row is written back with a compare-and-set (`WHERE ctid = $1 AND col = $old`), so a newer
//!   application value is never overwritten;
//! * the cursor and counters move forward in the same transaction as the rows, so a crash at any point
//!   loses at most the batch in flight, which is redone.
//!
//! The user's context expression is evaluated as the table's owner in a security-restricted
//! operation (as PostgreSQL does for index expressions during maintenance), never as the extension
//! owner, so registering an expression cannot escalate privileges.

use crate::audit;
use crate::context;
use crate::crypto::{self, FORMAT_V1, HEADER_LEN};
use crate::error::{KeysError, Result};
use crate::keycache;
use crate::plans;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// A registered column, as the job needs it, with its table resolved once.
pub struct Column {
    pub id: i32,
    pub rel: pg_sys::Oid,
    pub column: String,
    pub context_expr: Option<String>,
    /// `schema.table`, quoted; `None` when the table no longer exists.
    pub table: Option<String>,
    /// The table's owner, as whom the context expression and the row scans run.
    pub owner: pg_sys::Oid,
}

impl Column {
    /// Resolve a column of an existing table (registration).
    pub fn resolve(rel: pg_sys::Oid, column: &str, context_expr: Option<String>) -> Result<Self> {
        Ok(Column {
            id: 0,
            rel,
            column: column.to_string(),
            context_expr,
            table: Some(qualified_name(rel)?),
            owner: table_owner(rel)?,
        })
    }

    pub fn exists(&self) -> bool {
        self.table.is_some()
    }

    fn table(&self) -> Result<&str> {
        self.table.as_deref().ok_or_else(|| {
            KeysError::Internal(format!(
                "registered table {} no longer exists",
                self.rel.to_u32()
            ))
        })
    }
}

/// The 9-byte envelope header for a key id: what `substring(col from 1 for 9)` is compared with.
pub(crate) fn header(key_id: i64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.push(FORMAT_V1);
    h.extend_from_slice(&key_id.to_be_bytes());
    h
}

/// Run `f` as `role` inside a security-restricted operation with `row_security = off`, then switch
/// back. With row security off, a table whose policies would apply to its owner (FORCE ROW LEVEL
/// SECURITY) raises an error instead of silently hiding rows from a count or a batch: hidden rows
/// would otherwise look re-encrypted, and retiring their key would lose them. If `f` raises, the
/// transaction (or subtransaction) abort restores the user and the setting, as for any SECURITY
/// DEFINER function with a SET clause.
pub fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    context::with_setting(c"row_security", c"off", || {
        context::as_user_restricted(role, f)
    })
}

fn table_owner(rel: pg_sys::Oid) -> Result<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT (SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1)",
        &[rel.into()],
    )?
    .ok_or_else(|| KeysError::Internal(format!("relation {} does not exist", rel.to_u32())))
}

/// `schema.table` quoted, for building statements over a registered table.
fn qualified_name(rel: pg_sys::Oid) -> Result<String> {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = $1",
        &[rel.into()],
    )?
    .ok_or_else(|| KeysError::Internal("registered table vanished".into()))
}

/// How a failed row is named: its primary key as a row literal, or its ctid without one.
fn row_ref_expr(rel: pg_sys::Oid) -> Result<String> {
    let cols = Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY k.ord)
           FROM pg_catalog.pg_index i
           CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = $1 AND i.indisprimary",
        &[rel.into()],
    )?;
    Ok(match cols {
        Some(c) => format!("ROW({c})::text"),
        None => "'ctid ' || t.ctid::text".to_string(),
    })
}

/// The primary key (or ctid) of a row that failed, read only for failures (the row is locked by us).
fn failed_row_ref(col: &Column, ctid: &str) -> Result<String> {
    // (a sub-select: a row its own table's trigger deleted meanwhile gives NULL, not an error)
    let sql = format!(
        "SELECT (SELECT {} FROM ONLY {} AS t WHERE t.ctid OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.tid)",
        row_ref_expr(col.rel)?,
        col.table()?
    );
    Ok(Spi::get_one_with_args::<String>(&sql, &[ctid.into()])?
        .unwrap_or_else(|| format!("ctid {ctid}")))
}

/// The context expression as a select-list item. It sits on lines of its own so that a trailing
/// `--` comment in it cannot swallow the rest of the statement.
pub(crate) fn context_item(expr: &Option<String>) -> String {
    match expr {
        Some(e) => format!("(\n{e}\n)::text"),
        None => "''::text".to_string(),
    }
}

/// Check a context expression the way the job will run it: as the table owner, restricted, planned
/// (not executed) against the table. Raises PostgreSQL's own error if it does not parse or plan.
pub fn validate_context_expr(col: &Column) -> Result<()> {
    let table = col.table()?;
    let sql = format!(
        "SELECT {} FROM ONLY {table} AS t LIMIT 0",
        context_item(&col.context_expr)
    );
    let owner = col.owner;
    as_role(owner, || -> Result<()> {
        Spi::connect(|c| {
            // Prepared first (parsed, never run): one statement only, so an expression that closes
            // the parenthesis and appends a statement of its own is refused before anything runs.
            if statement_calls_volatile(&sql)? {
                return Err(KeysError::InvalidArgument(
                    "the context expression calls a volatile function (random(), clock_timestamp(), nextval(), or a function not marked STABLE or IMMUTABLE): it must give the same context every time the row is read".into(),
                ));
            }
            let t = c.select(sql.as_str(), None, &[])?;
            if t.columns()? != 1 {
                return Err(KeysError::InvalidArgument(
                    "the context expression must be one expression, not a list".into(),
                ));
            }
            Ok(())
        })
    })
}

/// Prepare `sql` and say whether its target list calls a volatile function; refused unless it is
/// exactly one statement (SPI_prepare accepts several). Must run inside an SPI connection.
fn statement_calls_volatile(sql: &str) -> Result<bool> {
    let text = std::ffi::CString::new(sql).map_err(|_| {
        KeysError::InvalidArgument("the context expression contains a NUL byte".into())
    })?;
    // SAFETY: SPI_prepare inside a connection; the plan's sources and queries are read, not changed,
    // and the plan is freed before returning (an error aborts the transaction, which frees it).
    unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), 0, std::ptr::null_mut());
        if plan.is_null() {
            return Err(KeysError::Internal(
                "the context expression could not be prepared".into(),
            ));
        }
        let mut volatile = false;
        let sources = pgrx::PgList::<pg_sys::CachedPlanSource>::from_pg(
            pg_sys::SPI_plan_get_plan_sources(plan),
        );
        if sources.len() != 1 {
            pg_sys::SPI_freeplan(plan);
            return Err(KeysError::SyntaxError(
                "the context expression must be one expression: it ends the statement and starts another".into(),
            ));
        }
        for src in sources.iter_ptr() {
            let queries = pgrx::PgList::<pg_sys::Query>::from_pg((*src).query_list);
            for q in queries.iter_ptr() {
                volatile |= pg_sys::contain_volatile_functions((*q).targetList.cast());
            }
        }
        pg_sys::SPI_freeplan(plan);
        Ok(volatile)
    }
}

/// Rows of `col` whose header names one of `keys`, counted as the table owner.
fn count_on_keys(col: &Column, keys: &[i64]) -> Result<i64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let table = col.table()?;
    let c = quote_identifier(&col.column);
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM ONLY {table} AS t
          WHERE pg_catalog.substr(t.{c}, 1, 9) = ANY ($1::bytea[])"
    );
    let headers: Vec<Vec<u8>> = keys.iter().map(|k| header(*k)).collect();
    let owner = col.owner;
    as_role(owner, || {
        Ok(Spi::get_one_with_args::<i64>(&sql, &[headers.into()])?.unwrap_or(0))
    })
}

/// Rows per key id in one registered column (for key_usage), counted as the table owner.
pub fn usage_by_key(col: &Column) -> Result<Vec<(Option<i64>, i64)>> {
    let table = col.table()?;
    let c = quote_identifier(&col.column);
    let sql = format!(
        "SELECT CASE WHEN pg_catalog.length(t.{c}) >= 37 AND pg_catalog.get_byte(t.{c}, 0) = 1
                     THEN ('x' || pg_catalog.encode(pg_catalog.substr(t.{c}, 2, 8), 'hex'))::bit(64)::bigint
                END AS key_id,
                pg_catalog.count(*)
           FROM ONLY {table} AS t WHERE t.{c} IS NOT NULL GROUP BY 1"
    );
    let owner = col.owner;
    as_role(owner, || {
        Spi::connect(|cl| {
            let mut out = Vec::new();
            for row in cl.select(sql.as_str(), None, &[])? {
                out.push((row.get::<i64>(1)?, row.get::<i64>(2)?.unwrap_or(0)));
            }
            Ok(out)
        })
    })
}

pub fn columns_of_keyring(keyring: &str) -> Result<Vec<Column>> {
    plans::run(
        "SELECT c.id, c.rel::oid, c.column_name::text, c.context_expr,
                    CASE WHEN r.oid IS NOT NULL THEN pg_catalog.format('%I.%I', n.nspname, r.relname) END,
                    r.relowner
               FROM meshhook_keys.encrypted_column c
               LEFT JOIN pg_catalog.pg_class r ON r.oid = c.rel
               LEFT JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
              WHERE c.keyring = $1 ORDER BY c.id",
        &[keyring.into()],
        |t| {
        let mut out = Vec::new();
        for row in t {
            out.push(Column {
                id: row.get::<i32>(1)?.unwrap_or_default(),
                rel: row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                column: row.get::<String>(3)?.unwrap_or_default(),
                context_expr: row.get::<String>(4)?,
                table: row.get::<String>(5)?,
                owner: row.get::<pg_sys::Oid>(6)?.unwrap_or(pg_sys::InvalidOid),
            });
        }
        Ok(out)
    })
}

/// Key ids of the keyring's versions that still decrypt but are not `except`.
fn old_key_ids(keyring: &str, except: i64) -> Result<Vec<i64>> {
    plans::run(
        "SELECT key_id FROM meshhook_keys.data_key
              WHERE keyring = $1 AND state = 'decrypt_only' AND key_id <> $2 ORDER BY version",
        &[keyring.into(), except.into()],
        |t| {
            let mut out = Vec::new();
            for row in t {
                if let Some(k) = row.get::<i64>(1)? {
                    out.push(k);
                }
            }
            Ok(out)
        },
    )
}

/// Rows still on `key_id` across the keyring's registered columns (existing tables only).
pub fn rows_on_key(keyring: &str, key_id: i64) -> Result<i64> {
    let mut n = 0;
    for col in columns_of_keyring(keyring)? {
        if col.exists() {
            n += count_on_keys(&col, &[key_id])?;
        }
    }
    Ok(n)
}

struct Job {
    id: i64,
    target_key_id: i64,
}

fn running_job(keyring: &str) -> Result<Option<Job>> {
    plans::run(
        "SELECT id, target_key_id FROM meshhook_keys.reencrypt_job WHERE keyring = $1 AND state = 'running'",
        &[keyring.into()],
        |t| {
            if t.is_empty() {
                return Ok(None);
            }
            let t = t.first();
            Ok(Some(Job {
                id: t.get::<i64>(1)?.unwrap_or(0),
                target_key_id: t.get::<i64>(2)?.unwrap_or(0),
            }))
        },
    )
}

/// The newest job for exactly this target, whatever its state.
fn job_for_target(keyring: &str, target: i64) -> Result<Option<i64>> {
    Ok(Spi::get_one_with_args::<i64>(
        "SELECT (SELECT id FROM meshhook_keys.reencrypt_job WHERE keyring = $1 AND target_key_id = $2
                  ORDER BY id DESC LIMIT 1)",
        &[keyring.into(), target.into()],
    )?)
}

/// Run a statement through its kept plan (see crate::plans), ignoring its result.
fn run(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<()> {
    plans::run(sql, args, |_| Ok(()))
}

/// Make sure a running job exists for the keyring's active key, covering every registered column.
/// Returns `None` when there is nothing (left) to do for the active key.
fn ensure_job(keyring: &str, target: i64, target_version: i32, old: &[i64]) -> Result<Option<i64>> {
    if let Some(job) = running_job(keyring)? {
        if job.target_key_id == target {
            add_missing_columns(job.id, keyring, old)?;
            return Ok(Some(job.id));
        }
        // The keyring was rotated again while the job ran: its rows now go to the newer key.
        run(
            "UPDATE meshhook_keys.reencrypt_job SET state = 'superseded', finished_at = pg_catalog.now(),
                    updated_at = pg_catalog.now() WHERE id = $1",
            &[job.id.into()],
        )?;
        audit::record(
            "reencrypt_superseded",
            Some(keyring),
            None,
            None,
            None,
            serde_json::json!({ "job_id": job.id }),
        )?;
    }
    if old.is_empty() {
        // No version of this keyring other than the active one can still decrypt: nothing to move.
        return Ok(None);
    }
    let job_id = match job_for_target(keyring, target)? {
        // A finished job for this key is reopened only if a column was registered since.
        Some(id) => {
            if add_missing_columns(id, keyring, old)? == 0 {
                return Ok(None);
            }
            run(
                "UPDATE meshhook_keys.reencrypt_job SET state = 'running', finished_at = NULL,
                        updated_at = pg_catalog.now() WHERE id = $1",
                &[id.into()],
            )?;
            id
        }
        None => {
            let id = Spi::get_one_with_args::<i64>(
                "INSERT INTO meshhook_keys.reencrypt_job (keyring, target_key_id, target_version)
                 VALUES ($1, $2, $3) RETURNING id",
                &[keyring.into(), target.into(), target_version.into()],
            )?
            .ok_or_else(|| KeysError::Internal("job id is NULL".into()))?;
            add_missing_columns(id, keyring, old)?;
            id
        }
    };
    let (cols, total) = Spi::get_two_with_args::<i64, i64>(
        "SELECT pg_catalog.count(*), coalesce(pg_catalog.sum(rows_total), 0)::bigint
           FROM meshhook_keys.reencrypt_progress_column WHERE job_id = $1",
        &[job_id.into()],
    )?;
    audit::record(
        "reencrypt_start",
        Some(keyring),
        Some(target_version),
        Some(target),
        None,
        serde_json::json!({ "job_id": job_id, "columns": cols, "rows_total": total }),
    )?;
    Ok(Some(job_id))
}

/// Add a progress row for each registered column the job does not cover yet; returns how many.
fn add_missing_columns(job_id: i64, keyring: &str, old: &[i64]) -> Result<usize> {
    let missing: Vec<i32> = plans::run(
        "SELECT c.id FROM meshhook_keys.encrypted_column c
              WHERE c.keyring = $2
                AND NOT EXISTS (SELECT 1 FROM meshhook_keys.reencrypt_progress_column p
                                 WHERE p.job_id = $1 AND p.column_id = c.id)",
        &[job_id.into(), keyring.into()],
        |t| {
            let mut ids = Vec::new();
            for row in t {
                if let Some(id) = row.get::<i32>(1)? {
                    ids.push(id);
                }
            }
            Ok::<_, KeysError>(ids)
        },
    )?;
    if missing.is_empty() {
        return Ok(0);
    }
    let mut added = 0;
    for col in columns_of_keyring(keyring)? {
        if !missing.contains(&col.id) {
            continue;
        }
        let total = if col.exists() {
            count_on_keys(&col, old)?
        } else {
            0
        };
        run(
            "INSERT INTO meshhook_keys.reencrypt_progress_column (job_id, column_id, rows_total) VALUES ($1, $2, $3)",
            &[job_id.into(), col.id.into(), total.into()],
        )?;
        added += 1;
    }
    Ok(added)
}

struct Progress {
    column_id: i32,
    next_block: i64,
    next_offset: i32,
    /// Blocks in the column's table now (0 if it is gone).
    blocks: i64,
    /// Estimated rows per block of the table.
    per_block: f64,
}

/// The job's next column still running, with the shape of its table.
fn next_running_column(job_id: i64) -> Result<Option<Progress>> {
    plans::run(
        "SELECT p.column_id, p.next_block, p.next_offset,
                    CASE WHEN r.oid IS NULL THEN 0
                         ELSE pg_catalog.pg_relation_size(r.oid) / pg_catalog.current_setting('block_size')::bigint END,
                    CASE WHEN r.relpages > 0 AND r.reltuples > 0 THEN r.reltuples / r.relpages ELSE 50 END::float8
               FROM meshhook_keys.reencrypt_progress_column p
               JOIN meshhook_keys.encrypted_column e ON e.id = p.column_id
               LEFT JOIN pg_catalog.pg_class r ON r.oid = e.rel
              WHERE p.job_id = $1 AND p.state = 'running' ORDER BY p.column_id LIMIT 1",
        &[job_id.into()],
        |t| {
        if t.is_empty() {
            return Ok(None);
        }
        let t = t.first();
        Ok(Some(Progress {
            column_id: t.get::<i32>(1)?.unwrap_or(0),
            next_block: t.get::<i64>(2)?.unwrap_or(0),
            next_offset: t.get::<i32>(3)?.unwrap_or(0),
            blocks: t.get::<i64>(4)?.unwrap_or(0),
            per_block: t.get::<f64>(5)?.unwrap_or(50.0).max(1.0),
        }))
    })
}

/// A heap tuple id as (block, offset).
type Tid = (i64, i32);

fn tid_of(t: &pg_sys::ItemPointerData) -> Tid {
    let block = ((t.ip_blkid.bi_hi as u32) << 16) | t.ip_blkid.bi_lo as u32;
    (block as i64, t.ip_posid as i32)
}

fn tid_text((b, o): Tid) -> String {
    format!("({b},{o})")
}

/// A row that did not re-encrypt: where it is and why (never its value).
struct Failure {
    tid: Tid,
    sqlstate: String,
    message: String,
}

/// What one backend's batch has armed `_reencrypt_try` / `_reencrypt_take` with, for the length of
/// one statement. Keys are loaded before the statement (as the extension owner), so the functions
/// run no SQL of their own while the statement runs as the table's owner.
struct Armed {
    /// The old versions of the keyring, by key id: the key, or why it cannot decrypt.
    old: std::collections::HashMap<
        i64,
        std::result::Result<std::rc::Rc<keycache::CachedKey>, (String, String)>,
    >,
    target: std::rc::Rc<keycache::CachedKey>,
    /// The new envelope of the row `_reencrypt_try` last accepted, until `_reencrypt_take` writes it.
    stash: Option<(Tid, Vec<u8>)>,
    failures: Vec<Failure>,
    tried: i64,
    last: Option<Tid>,
}

thread_local! {
    static ARMED: std::cell::RefCell<Option<Armed>> = const { std::cell::RefCell::new(None) };
}

/// Disarms on drop, including when the statement raises (pgrx unwinds through us).
struct ArmGuard;

impl Drop for ArmGuard {
    fn drop(&mut self) {
        ARMED.with_borrow_mut(|a| *a = None);
    }
}

fn arm(armed: Armed) -> ArmGuard {
    ARMED.with_borrow_mut(|a| *a = Some(armed));
    ArmGuard
}

/// `_reencrypt_try(ctid, ciphertext, context)`: decrypt one claimed row with its old key and seal it
/// under the target key, keeping the result for `_reencrypt_take`. False (and recorded) when the row
/// does not decrypt; false (not recorded) when it is not on an old version of the armed keyring.
pub fn try_row(
    tid: &pg_sys::ItemPointerData,
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
) -> Result<bool> {
    ARMED.with_borrow_mut(|armed| {
        let armed = armed
            .as_mut()
            .ok_or(KeysError::NotInBatch("meshhook_keys._reencrypt_try"))?;
        let tid = tid_of(tid);
        armed.stash = None;
        let Some(old) = ciphertext else {
            return Ok(false);
        };
        armed.tried += 1;
        armed.last = Some(armed.last.map_or(tid, |l| l.max(tid)));
        let key = match crypto::parse_key_id(old) {
            // Only rows whose header names an old version are claimed, so this is always found.
            Ok(key_id) => match armed.old.get(&key_id) {
                Some(key) => key.as_ref().map_err(Clone::clone),
                None => return Ok(false),
            },
            Err(e) => {
                let e = KeysError::from(e);
                Err((e.sqlstate_code(), e.to_string()))
            }
        };
        let result = match (key, context) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err((
                KeysError::Internal(String::new()).sqlstate_code(),
                "the context expression returned NULL for this row".to_string(),
            )),
            (Ok(key), Some(ctx)) => crypto::open(&key.cipher, old, ctx.as_bytes())
                .map(|plain| {
                    crypto::seal(
                        &armed.target.cipher,
                        armed.target.key_id,
                        &plain,
                        ctx.as_bytes(),
                    )
                })
                .map_err(|e| {
                    let e = KeysError::from(e);
                    (e.sqlstate_code(), e.to_string())
                }),
        };
        match result {
            Ok(new) => {
                armed.stash = Some((tid, new));
                Ok(true)
            }
            Err((sqlstate, message)) => {
                armed.failures.push(Failure {
                    tid,
                    sqlstate,
                    message,
                });
                Ok(false)
            }
        }
    })
}

/// `_reencrypt_take(ctid)`: the envelope `_reencrypt_try` just made for this same row.
pub fn take_row(tid: &pg_sys::ItemPointerData) -> Result<Vec<u8>> {
    ARMED.with_borrow_mut(|armed| {
        let armed = armed
            .as_mut()
            .ok_or(KeysError::NotInBatch("meshhook_keys._reencrypt_take"))?;
        match armed.stash.take() {
            Some((t, new)) if t == tid_of(tid) => Ok(new),
            _ => Err(KeysError::Internal(
                "re-encryption row order broken: no envelope prepared for this row".into(),
            )),
        }
    })
}

/// Load the old versions of the keyring for decryption, as the extension owner.
fn load_old_keys(
    old: &[i64],
) -> std::collections::HashMap<
    i64,
    std::result::Result<std::rc::Rc<keycache::CachedKey>, (String, String)>,
> {
    old.iter()
        .map(|&k| {
            (
                k,
                keycache::key_for_decrypt(k).map_err(|e| (e.sqlstate_code(), e.to_string())),
            )
        })
        .collect()
}

/// One bounded batch for `keyring`, in the caller's transaction. Returns the rows moved, or `None`
/// when every registered row is on the active key (the job is finished).
pub fn batch(keyring: &str, batch_size: i32) -> Result<Option<i64>> {
    // A table owner's trigger (or context expression, default, policy) must not start a batch of
    // its own from inside ours: one batch at a time per backend, and never nested in foreign code.
    if context::running_foreign_code() {
        return Err(KeysError::NestedBatch("a re-encryption batch"));
    }
    let batch_size = batch_size.clamp(1, 1_000_000) as i64;
    // Audited actions take the audit lock first (see audit::lock_chain; not a plain role
    // re-encrypting its user-held keyring, whose rows are written at commit); then one batch per
    // keyring at a time.
    // (The two locks in one statement: its target list is evaluated in order.)
    let audit_lock = if audit::deferred_for_caller() {
        "NULL"
    } else {
        crate::store::AUDIT_LOCK_EXPR
    };
    run(
        &format!(
            "SELECT {audit_lock}, pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('meshhook_keys.reencrypt:' || $1))"
        ),
        &[keyring.into()],
    )?;
    let active =
        keycache::active_key(keyring)?.ok_or_else(|| KeysError::NoActiveKey(keyring.into()))?;
    let target = active.key_id;
    let target_version = active.version;
    let old = old_key_ids(keyring, target)?;
    let Some(job_id) = ensure_job(keyring, target, target_version, &old)? else {
        return Ok(None);
    };
    let headers: Vec<Vec<u8>> = old.iter().map(|k| header(*k)).collect();
    let old_keys = load_old_keys(&old);
    let columns = columns_of_keyring(keyring)?;

    let mut moved: i64 = 0;
    let mut budget_blocks: i64 = 0;
    while moved < batch_size {
        let Some(p) = next_running_column(job_id)? else {
            finish_job(job_id, keyring, target_version)?;
            return Ok(if moved > 0 { Some(moved) } else { None });
        };
        let col = columns
            .iter()
            .find(|c| c.id == p.column_id)
            .ok_or_else(|| KeysError::Internal("progress row for an unregistered column".into()))?;
        if !col.exists() {
            set_column_state(job_id, col.id, "done")?;
            continue;
        }
        let (blocks, per_block) = (p.blocks, p.per_block);
        if p.next_block >= blocks {
            end_of_pass(job_id, col, &old)?;
            continue;
        }
        // A window of blocks expected to hold about one batch of rows; the whole batch reads at most
        // eight windows of rows that need no work before returning.
        let window = ((batch_size as f64 / per_block).ceil() as i64).clamp(1, 100_000);
        if budget_blocks == 0 {
            budget_blocks = window * 8;
        }
        let hi = (p.next_block + window).min(blocks.max(p.next_block + 1));
        let limit = batch_size - moved;
        let w = move_window(
            col,
            &headers,
            Armed {
                old: old_keys.clone(),
                target: active.clone(),
                stash: None,
                failures: Vec::new(),
                tried: 0,
                last: None,
            },
            (p.next_block, p.next_offset),
            hi,
            limit,
        )?;
        for f in &w.failures {
            run(
                "INSERT INTO meshhook_keys.reencrypt_failure (job_id, column_id, row_ref, sqlstate, error)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (job_id, column_id, row_ref) DO UPDATE SET at = pg_catalog.now()",
                &[
                    job_id.into(),
                    col.id.into(),
                    failed_row_ref(col, &tid_text(f.tid))?.into(),
                    f.sqlstate.as_str().into(),
                    f.message.as_str().into(),
                ],
            )?;
        }
        // A full batch resumes right after the last row it claimed; otherwise the window is done.
        let (next_block, next_offset) = match w.last {
            Some((b, o)) if w.tried == limit => (b, o + 1),
            _ => (hi, 0),
        };
        moved += w.moved;
        run(
            "WITH job AS (UPDATE meshhook_keys.reencrypt_job SET updated_at = pg_catalog.now() WHERE id = $1)
             UPDATE meshhook_keys.reencrypt_progress_column
                SET next_block = $3, next_offset = $4, rows_done = rows_done + $5,
                    rows_failed = CASE WHEN $6 THEN (SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_failure f
                                                      WHERE f.job_id = $1 AND f.column_id = $2)
                                       ELSE rows_failed END,
                    updated_at = pg_catalog.clock_timestamp()
              WHERE job_id = $1 AND column_id = $2",
            &[
                job_id.into(),
                col.id.into(),
                next_block.into(),
                next_offset.into(),
                w.moved.into(),
                (!w.failures.is_empty()).into(),
            ],
        )?;
        budget_blocks -= hi - p.next_block;
        if budget_blocks <= 0 {
            break;
        }
    }
    Ok(Some(moved))
}

struct Window {
    moved: i64,
    tried: i64,
    last: Option<Tid>,
    failures: Vec<Failure>,
}

/// Move the rows of one window that are on an old key, in one statement run as the table owner:
/// the rows are claimed `FOR UPDATE SKIP LOCKED` (a row an application holds is skipped, never
/// waited for), and each claimed row is re-encrypted from its current value and written back.
/// Rows that do not decrypt are left as they are and returned as failures.
fn move_window(
    col: &Column,
    headers: &[Vec<u8>],
    armed: Armed,
    from: Tid,
    to_block: i64,
    limit: i64,
) -> Result<Window> {
    if headers.is_empty() {
        return Ok(Window {
            moved: 0,
            tried: 0,
            last: None,
            failures: Vec::new(),
        });
    }
    let table = col.table()?;
    let c = quote_identifier(&col.column);
    // `_reencrypt_try` is a filter evaluated after the TID condition (it is declared costly), and
    // `_reencrypt_take` is evaluated for the same row right after it passes; take checks the ctid.
    let sql = format!(
        "UPDATE ONLY {table} AS t SET {c} = meshhook_keys._reencrypt_take(t.ctid)
          WHERE t.ctid = ANY (ARRAY(
                  SELECT s.ctid FROM ONLY {table} AS s
                   WHERE s.ctid >= $1::text::tid AND s.ctid < $2::text::tid
                     AND pg_catalog.substr(s.{c}, 1, 9) = ANY ($3::bytea[])
                   ORDER BY s.ctid
                   LIMIT $4
                   FOR UPDATE OF s SKIP LOCKED))
            AND meshhook_keys._reencrypt_try(t.ctid, t.{c}, {ctx})",
        ctx = context_item(&col.context_expr),
    );
    let lo = tid_text(from);
    let hi = tid_text((to_block, 0));
    let headers = headers.to_vec();
    let guard = arm(armed);
    let moved = as_role(col.owner, || {
        plans::run(
            &sql,
            &[lo.into(), hi.into(), headers.into(), limit.into()],
            |t| Ok(t.len() as i64),
        )
    })?;
    let armed = ARMED
        .with_borrow_mut(|a| a.take())
        .ok_or_else(|| KeysError::Internal("re-encryption state lost".into()))?;
    drop(guard);
    // Every envelope sealed counts against the target key's encryption limit, written or not.
    crate::usage::count(
        armed.target.key_id,
        (armed.tried - armed.failures.len() as i64).max(0) as u64,
    );
    Ok(Window {
        moved,
        tried: armed.tried,
        last: armed.last,
        failures: armed.failures,
    })
}

fn set_column_state(job_id: i64, column_id: i32, state: &str) -> Result<()> {
    run(
        "UPDATE meshhook_keys.reencrypt_progress_column SET state = $3, updated_at = pg_catalog.clock_timestamp()
          WHERE job_id = $1 AND column_id = $2",
        &[job_id.into(), column_id.into(), state.into()],
    )
}

/// The cursor reached the end of the table: count what is still on old keys. Nothing left: done.
/// Only rows that failed left: done with errors. Otherwise (rows skipped because they were locked,
/// or moved behind the cursor by an update) start another pass.
fn end_of_pass(job_id: i64, col: &Column, old: &[i64]) -> Result<()> {
    let remaining = count_on_keys(col, old)?;
    let failed = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_failure WHERE job_id = $1 AND column_id = $2",
        &[job_id.into(), col.id.into()],
    )?
    .unwrap_or(0);
    if remaining == 0 {
        set_column_state(job_id, col.id, "done")
    } else if remaining <= failed {
        set_column_state(job_id, col.id, "done_with_errors")
    } else {
        run(
            "UPDATE meshhook_keys.reencrypt_progress_column
                SET pass = pass + 1, next_block = 0, next_offset = 0, updated_at = pg_catalog.clock_timestamp()
              WHERE job_id = $1 AND column_id = $2",
            &[job_id.into(), col.id.into()],
        )
    }
}

fn finish_job(job_id: i64, keyring: &str, target_version: i32) -> Result<()> {
    let (done, failed) = Spi::get_two_with_args::<i64, i64>(
        "SELECT coalesce(pg_catalog.sum(rows_done), 0)::bigint, coalesce(pg_catalog.sum(rows_failed), 0)::bigint
           FROM meshhook_keys.reencrypt_progress_column WHERE job_id = $1",
        &[job_id.into()],
    )?;
    let failed = failed.unwrap_or(0);
    let state = if failed > 0 {
        "finished_with_errors"
    } else {
        "finished"
    };
    let seconds = Spi::get_one_with_args::<f64>(
        "UPDATE meshhook_keys.reencrypt_job SET state = $2, finished_at = pg_catalog.now(), updated_at = pg_catalog.now()
          WHERE id = $1 RETURNING EXTRACT(epoch FROM finished_at - started_at)::float8",
        &[job_id.into(), state.into()],
    )?;
    audit::record(
        "reencrypt_finish",
        Some(keyring),
        Some(target_version),
        None,
        None,
        serde_json::json!({ "job_id": job_id, "rows_done": done, "rows_failed": failed,
                            "state": state, "seconds": seconds }),
    )
}
