//! The batch: one bounded, resumable piece of the re-encryption of a keyring's registered
//! columns, in the caller's transaction. It locks the keyring, makes sure a job for the active key
//! covers every registered column, then moves rows window by window (a TID range of heap blocks)
//! until it has moved a batch of rows or read eight windows, advancing each column's cursor.
//!
//! Invariants: one batch per keyring at a time (lock_order::reencryption: the audit chain lock
//! unless the caller's audit rows are deferred to commit, then the keyring's re-encryption lock), and none started from code a table
//! owner wrote (a trigger, context expression, default or policy of the table being moved). Rows
//! are re-encrypted from the value they hold once locked (by the `UPDATE` itself, or claimed
//! `FOR UPDATE SKIP LOCKED` when a row is held), so a newer application value is never overwritten. The cursors move in the same transaction as
//! the rows. Every envelope sealed counts against the target key's encryption limit.

use crate::context;
use crate::error::{KeysError, Result};
use crate::plans;
use crate::reencrypt::jobs::{
    advance_cursor, back_off, end_of_pass, ensure_job, fail_column, finish_job,
    next_running_column, record_failed_row, set_column_state,
};
use crate::reencrypt::registry::{
    Column, as_role, check_index_target, columns_of_keyring, context_item, failed_row_ref,
    key_ranges, on_keys_test,
};
use crate::reencrypt::rows::{Armed, Failure, Tid, arm, load_old_keys, tid_text};
use crate::resolver;
use crate::usage;
use pgrx::spi::quote_identifier;

/// Key ids of the keyring's versions that still decrypt but are not `except`, newest first (most
/// rows still to move are on the newest of them: its range is tested first).
fn old_key_ids(keyring: &str, except: i64) -> Result<Vec<i64>> {
    plans::run(
        "SELECT key_id FROM meshhook_keys.data_key
              WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'decrypt_only' AND key_id OPERATOR(pg_catalog.<>) $2 ORDER BY version DESC",
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
    let ranges = key_ranges(&old);
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
        // Every running column is backing off (a row held, a passing failure): wait a moment
        // before returning, so that a caller looping over batches (CALL reencrypt) does not spin.
        if p.waiting {
            if moved == 0 {
                crate::latch::wait(WAITING_PAUSE);
            }
            break;
        }
        let (blocks, per_block) = (p.blocks, p.per_block);
        if p.next_block >= blocks {
            // Another pass begins with the next batch: what this pass left (a row held by an open
            // transaction, most often) is not retried at once, and again, within one batch.
            if end_of_pass(job_id, col, &old)? {
                break;
            }
            continue;
        }
        // A window of blocks expected to hold about the rows the batch still has to move; the whole
        // batch reads at most eight windows of a full batch's size before returning. Whole blocks
        // expected to hold no more than that are moved directly; a batch smaller than a block's
        // rows claims them, up to its size.
        let limit = batch_size - moved;
        let window = ((limit as f64 / per_block).ceil() as i64).clamp(1, 100_000);
        let direct_blocks = ((limit as f64 / per_block).floor() as i64).min(100_000);
        if budget_blocks == 0 {
            budget_blocks = window * 8;
        }
        let direct = direct_blocks >= 1;
        let window = if direct { direct_blocks } else { window };
        let hi = (p.next_block + window).min(blocks.max(p.next_block + 1));
        // One column's window in a subtransaction of its own: if the table's code (or anything
        // else) raises, its rows roll back, the column is marked failed, and the keyring's other
        // columns go on (one table never wedges a shared keyring). A cancel or a timeout of the
        // statement reaches the caller; a deadlock, a serialization failure, a lock timeout or
        // running out of resources is not the table's failure either: the column backs off and is
        // taken up again later (other columns first).
        let w = match crate::seal::isolated_except(
            || {
                let w = move_window(
                    col,
                    &ranges,
                    || Armed::new(old_keys.clone(), active.clone()),
                    (p.next_block, p.next_offset),
                    hi,
                    (!direct).then_some(limit),
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
            },
            |sqlstate| sqlstate.starts_with("57"),
        )? {
            Ok(w) => w,
            Err(f) if crate::seal::not_the_calls_own(&f.sqlstate) => {
                back_off(job_id, col.id)?;
                continue;
            }
            Err(f) => {
                fail_column(job_id, keyring, col, &f.sqlstate, &f.message)?;
                continue;
            }
        };
        // A claimed window that reached its limit resumes right after the last row it claimed;
        // otherwise the window is done.
        let (next_block, next_offset) = match w.last {
            Some((b, o)) if !w.whole && w.tried == limit => (b, o + 1),
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
        // Done when the block budget is spent, or when a direct window left less than a quarter of
        // the batch to move: a window of a block or two more is not worth another statement.
        if budget_blocks <= 0 || (w.whole && moved * 4 >= batch_size * 3) {
            break;
        }
    }
    Ok(Some(moved))
}

/// How long a batch that finds every column backing off waits before it returns 0.
const WAITING_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

struct Window {
    moved: i64,
    tried: i64,
    last: Option<Tid>,
    failures: Vec<Failure>,
    /// Every row of the window was looked at (the direct path), not at most `limit` of them.
    whole: bool,
}

/// SQLSTATE 55P03 (lock_not_available): what `lock_timeout` raises.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Move the rows of one window that are on an old key, in one statement run as the table owner.
///
/// First directly: a plain `UPDATE` of the window's TID range whose row lock and recheck of the
/// key-id test (`EvalPlanQual`, when another transaction changed the row first) are the
/// compare-and-set: a row is re-encrypted from the value it holds once locked, and a row a
/// concurrent writer already moved to the active key (or deleted) is left alone. It waits at most
/// `meshhook_keys.reencrypt_row_wait` for a row lock (a wait holds the rows the statement has
/// already rewritten, so it is short: an application transaction holds a row for milliseconds, an
/// idle one longer); if that runs out, the attempt is rolled back and the window is claimed
/// instead: its rows locked `FOR UPDATE SKIP LOCKED` first, so a held row is skipped (left for a
/// later pass) rather than waited for.
///
/// With a `limit` (a batch smaller than a block's rows), the window is claimed from the start, at
/// most `limit` rows of it.
fn move_window(
    col: &Column,
    ranges: &[Vec<u8>],
    armed: impl Fn() -> Armed,
    from: Tid,
    to_block: i64,
    limit: Option<i64>,
) -> Result<Window> {
    let wait_ms = crate::gucs::reencrypt_row_wait_ms();
    let claim_limit = limit.unwrap_or(i64::MAX);
    if wait_ms == 0 || limit.is_some() {
        return update_window(col, ranges, armed(), from, to_block, Some(claim_limit), 0);
    }
    let direct = crate::seal::isolated_except(
        || update_window(col, ranges, armed(), from, to_block, None, wait_ms),
        |sqlstate| sqlstate != LOCK_NOT_AVAILABLE,
    )?;
    match direct {
        Ok(w) => Ok(w),
        Err(_) => update_window(col, ranges, armed(), from, to_block, Some(claim_limit), 0),
    }
}

/// The statement of one window: direct (`limit` None: every row of the window on an old key) or
/// claiming (at most `limit` rows, locked `FOR UPDATE SKIP LOCKED` first). The direct statement
/// waits at most `wait_ms` for a row lock. Rows that do not decrypt are left as they are and
/// returned as failures.
fn update_window(
    col: &Column,
    ranges: &[Vec<u8>],
    armed: Armed,
    from: Tid,
    to_block: i64,
    limit: Option<i64>,
    wait_ms: i32,
) -> Result<Window> {
    if ranges.is_empty() {
        return Ok(Window {
            moved: 0,
            tried: 0,
            last: None,
            failures: Vec::new(),
            whole: true,
        });
    }
    let table = col.table()?;
    if let Some(ix) = &col.index {
        // (the column may have been renamed, dropped or registered since: never write it then)
        check_index_target(col.rel, &col.column, &ix.column, Some(ix.attnum))?;
    }
    let c = quote_identifier(&col.column);
    let ctx = context_item(&col.context_expr);
    // ($1 and $2 the window's TID range, $3 a claim's limit, then the statement's token, then the
    // old keys' ranges)
    let token_param = if limit.is_some() { 4 } else { 3 };
    let first = token_param + 1;
    let on_keys_t = on_keys_test(&format!("t.{c}"), first, ranges.len() / 2);
    let on_keys_s = on_keys_test(&format!("s.{c}"), first, ranges.len() / 2);
    // A column with a blind index: the index is recomputed under the target key beside the
    // envelope (from the plaintext `_reencrypt_try_indexed` holds anyway).
    let (set_index, try_fn) = match &col.index {
        None => (
            String::new(),
            format!("meshhook_keys._reencrypt_try(${token_param}, t.ctid, t.{c}, {ctx})"),
        ),
        Some(ix) => (
            format!(
                ", {} = meshhook_keys._reencrypt_index(${token_param}, t.ctid)",
                quote_identifier(&ix.column)
            ),
            format!(
                "meshhook_keys._reencrypt_try_indexed(${token_param}, t.ctid, t.{c}, {ctx}, {})",
                context_item(&ix.context_expr)
            ),
        ),
    };
    // `_reencrypt_try` is a filter evaluated after the TID and key-id conditions (it is declared
    // costly), and `_reencrypt_take` is evaluated for the same row right after it passes; take
    // checks the ctid. (`_reencrypt_try` would pass over a row on no old key by itself, but the
    // key-id test keeps the table owner's context expression, its argument, from running for rows
    // that stay as they are: NULLs, rows already moved.)
    let sql = match limit {
        None => format!(
            "UPDATE ONLY {table} AS t SET {c} = meshhook_keys._reencrypt_take(${token_param}, t.ctid){set_index}
              WHERE t.ctid OPERATOR(pg_catalog.>=) $1::text::tid AND t.ctid OPERATOR(pg_catalog.<) $2::text::tid
                AND {on_keys_t}
                AND {try_fn}"
        ),
        Some(_) => format!(
            "UPDATE ONLY {table} AS t SET {c} = meshhook_keys._reencrypt_take(${token_param}, t.ctid){set_index}
              WHERE t.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
                      SELECT s.ctid FROM ONLY {table} AS s
                       WHERE s.ctid OPERATOR(pg_catalog.>=) $1::text::tid AND s.ctid OPERATOR(pg_catalog.<) $2::text::tid
                         AND {on_keys_s}
                       ORDER BY s.ctid
                       LIMIT $3
                       FOR UPDATE OF s SKIP LOCKED))
                AND {try_fn}"
        ),
    };
    let lo = tid_text(from);
    let hi = tid_text((to_block, 0));
    let token = armed.token();
    let guard = arm(armed);
    let moved = as_role(col.owner, || {
        // (a generic plan, kept: a window's plan, a TID range scan, does not depend on its
        // parameters, but the plan cache would plan every window afresh, as a custom plan looks
        // cheaper: a third of a batch's fixed cost)
        let run = || {
            let mut args = vec![lo.into(), hi.into()];
            args.extend(limit.map(Into::into));
            args.push(token.as_slice().into());
            args.extend(ranges.iter().map(|r| r.as_slice().into()));
            Ok(plans::update_generic(&sql, &args)? as i64)
        };
        // No JIT: `_reencrypt_try` is declared costly (so that it runs after the cheap tests), which
        // makes the planner's estimate pass jit_above_cost, and compiling (and optimizing and
        // inlining) the expressions of every window's statement cost more than the window's work
        // (a server built with LLVM, PostgreSQL's default of jit = on: 0.40 of a plain UPDATE's
        // rate instead of 0.70). Inside the sealed call's own setting level, as the lock timeout.
        crate::context::with_setting(c"jit", c"off", || {
            if limit.is_some() {
                return run();
            }
            // The direct path's short lock timeout (a shorter one of the caller's is kept).
            // SAFETY: reading an integer setting.
            let callers = unsafe { pgrx::pg_sys::LockTimeout };
            if callers > 0 && callers <= wait_ms {
                return run();
            }
            let ms = std::ffi::CString::new(format!("{wait_ms}ms"))
                .map_err(|e| KeysError::Internal(e.to_string()))?;
            crate::context::with_setting(c"lock_timeout", &ms, run)
        })
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
        whole: limit.is_none(),
    })
}
