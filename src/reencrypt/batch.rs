//! The batch: one bounded, resumable piece of the re-encryption of a keyring's registered
//! columns, in the caller's transaction. It locks the keyring, makes sure a job for the active key
//! covers every registered column, then moves rows window by window (a TID range of heap blocks)
//! until it has moved a batch of rows or read eight windows, advancing each column's cursor.
//!
//! Invariants: one batch per keyring at a time (lock_order::reencryption: the audit chain lock
//! unless the caller's audit rows are deferred to commit, then the keyring's re-encryption lock), and none started from code a table
//! owner wrote (a trigger, context expression, default or policy of the table being moved). Rows
//! are claimed `FOR UPDATE SKIP LOCKED` and re-encrypted from the value they hold while locked, so
//! a newer application value is never overwritten. The cursors move in the same transaction as
//! the rows. Every envelope sealed counts against the target key's encryption limit.

use crate::context;
use crate::error::{KeysError, Result};
use crate::plans;
use crate::reencrypt::jobs::{
    advance_cursor, end_of_pass, ensure_job, fail_column, finish_job, next_running_column,
    record_failed_row, set_column_state,
};
use crate::reencrypt::registry::{
    Column, as_role, columns_of_keyring, context_item, failed_row_ref, header,
};
use crate::reencrypt::rows::{Armed, Failure, Tid, arm, load_old_keys, tid_text};
use crate::resolver;
use crate::usage;
use pgrx::spi::quote_identifier;

/// Key ids of the keyring's versions that still decrypt but are not `except`.
fn old_key_ids(keyring: &str, except: i64) -> Result<Vec<i64>> {
    plans::run(
        "SELECT key_id FROM meshhook_keys.data_key
              WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'decrypt_only' AND key_id OPERATOR(pg_catalog.<>) $2 ORDER BY version",
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

/// One bounded batch for `keyring`, in the caller's transaction. Returns the rows moved, or `None`
/// when every registered row is on the active key (the job is finished).
pub fn batch(keyring: &str, batch_size: i32) -> Result<Option<i64>> {
    // A table owner's trigger (or context expression, default, policy) must not start a batch of
    // its own from inside ours: one batch at a time per backend, and never nested in foreign code.
    if context::running_foreign_code() {
        return Err(KeysError::NestedBatch("a re-encryption batch"));
    }
    let batch_size = batch_size.clamp(1, 1_000_000) as i64;
    // The audit chain lock (unless the caller's audit rows wait for commit), then one batch per
    // keyring at a time.
    crate::lock_order::reencryption(keyring)?;
    // A read-write statement first (as the advisory lock statement was before our locks left
    // SQL): it increments the command counter, which applies the key cache invalidations this
    // transaction queued, and takes a fresh snapshot, so that a rotation made earlier in the same
    // transaction (the one a tick just made) is seen. tick()'s same-tick test fails without it.
    plans::run("SELECT 1", &[], |_| Ok(()))?;
    let active =
        resolver::active_key(keyring)?.ok_or_else(|| KeysError::NoActiveKey(keyring.into()))?;
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
        // One column's window in a subtransaction of its own: if the table's code (or anything
        // else) raises, its rows roll back, the column is marked failed, and the keyring's other
        // columns go on (one table never wedges a shared keyring).
        let w = match crate::seal::isolated(|| {
            let w = move_window(
                col,
                &headers,
                Armed::new(old_keys.clone(), active.clone()),
                (p.next_block, p.next_offset),
                hi,
                limit,
            )?;
            for f in &w.failures {
                record_failed_row(
                    job_id,
                    col.id,
                    &failed_row_ref(col, &tid_text(f.tid))?,
                    &f.sqlstate,
                    &f.message,
                )?;
            }
            Ok(w)
        }) {
            Ok(w) => w,
            Err(f) => {
                fail_column(job_id, keyring, col, &f.sqlstate, &f.message)?;
                continue;
            }
        };
        // A full batch resumes right after the last row it claimed; otherwise the window is done.
        let (next_block, next_offset) = match w.last {
            Some((b, o)) if w.tried == limit => (b, o + 1),
            _ => (hi, 0),
        };
        moved += w.moved;
        advance_cursor(
            job_id,
            col.id,
            (next_block, next_offset),
            w.moved,
            !w.failures.is_empty(),
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
          WHERE t.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
                  SELECT s.ctid FROM ONLY {table} AS s
                   WHERE s.ctid OPERATOR(pg_catalog.>=) $1::text::tid AND s.ctid OPERATOR(pg_catalog.<) $2::text::tid
                     AND pg_catalog.substr(s.{c}, 1, 9) OPERATOR(pg_catalog.=) ANY ($3::bytea[])
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
    let armed = guard
        .disarm()
        .ok_or_else(|| KeysError::Internal("re-encryption state lost".into()))?;
    // Every envelope sealed counts against the target key's encryption limit, written or not; past
    // the ceiling the window is refused (and rolled back with its subtransaction).
    usage::count(
        &armed.target,
        (armed.tried - armed.failures.len() as i64).max(0) as u64,
    )?;
    Ok(Window {
        moved,
        tried: armed.tried,
        last: armed.last,
        failures: armed.failures,
    })
}
