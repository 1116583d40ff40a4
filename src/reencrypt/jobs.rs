//! Job bookkeeping of re-encryption: the `reencrypt_job` row of a keyring (started, superseded,
//! reopened, finished, each audited), one `reencrypt_progress_column` row per registered column
//! (its cursor, pass, counters and state), and the rows that failed (`reencrypt_failure`).
//!
//! Invariants: a keyring has at most one running job, and it targets the active key; a rotation
//! while it runs supersedes it. A finished job is reopened only when a column was registered since.
//! A column is done when nothing of it is left on an old key, done with errors when only rows that
//! failed are left, and otherwise starts another pass from block 0. Every write here happens in the
//! caller's transaction, together with the rows the batch moved, so the cursor never runs ahead of
//! them.

use crate::audit;
use crate::error::{KeysError, Result};
use crate::plans;
use crate::reencrypt::registry::{
    Column, columns_of_keyring, count_on_keys, count_unrecorded_on_keys,
};
use pgrx::prelude::*;

struct Job {
    id: i64,
    target_key_id: i64,
}

fn running_job(keyring: &str) -> Result<Option<Job>> {
    plans::run(
        "SELECT id, target_key_id FROM meshhook_keys.reencrypt_job WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'running'",
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
        "SELECT (SELECT id FROM meshhook_keys.reencrypt_job WHERE keyring OPERATOR(pg_catalog.=) $1 AND target_key_id OPERATOR(pg_catalog.=) $2
                  ORDER BY id DESC LIMIT 1)",
        &[keyring.into(), target.into()],
    )?)
}

/// Run a statement through its kept plan (see the plans module), ignoring its result.
fn run(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<()> {
    plans::run(sql, args, |_| Ok(()))
}

/// Make sure a running job exists for the keyring's active key, covering every registered column.
/// Returns `None` when there is nothing (left) to do for the active key.
pub(super) fn ensure_job(
    keyring: &str,
    target: i64,
    target_version: i32,
    old: &[i64],
) -> Result<Option<i64>> {
    if let Some(job) = running_job(keyring)? {
        if job.target_key_id == target {
            add_missing_columns(job.id, keyring, old)?;
            return Ok(Some(job.id));
        }
        // The keyring was rotated again while the job ran: its rows now go to the newer key.
        run(
            "UPDATE meshhook_keys.reencrypt_job SET state = 'superseded', finished_at = pg_catalog.now(),
                    updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
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
                        updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
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
           FROM meshhook_keys.reencrypt_progress_column WHERE job_id OPERATOR(pg_catalog.=) $1",
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
              WHERE c.keyring OPERATOR(pg_catalog.=) $2
                AND NOT EXISTS (SELECT 1 FROM meshhook_keys.reencrypt_progress_column p
                                 WHERE p.job_id OPERATOR(pg_catalog.=) $1 AND p.column_id OPERATOR(pg_catalog.=) c.id)",
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
            "INSERT INTO meshhook_keys.reencrypt_progress_column (job_id, column_id, rows_total, end_block)
                  VALUES ($1, $2, $3, pg_catalog.pg_relation_size($4) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::bigint)",
            &[job_id.into(), col.id.into(), total.into(), col.rel.into()],
        )?;
        added += 1;
    }
    Ok(added)
}

pub(super) struct Progress {
    pub(super) column_id: i32,
    pub(super) next_block: i64,
    pub(super) next_offset: i32,
    /// Where the pass ends: the table's size in blocks when it began, or now if it shrank since
    /// (0 if it is gone).
    pub(super) blocks: i64,
    /// Estimated rows per block of the table: the planner's estimate, or the rows on old keys per
    /// block when the job began if that is more (a table never analyzed has no estimate).
    pub(super) per_block: f64,
    /// Backing off until `retry_at` (and every other running column of the job is too: those
    /// not waiting come first).
    pub(super) waiting: bool,
}

/// The job's next column still running, with the shape of its table.
pub(super) fn next_running_column(job_id: i64) -> Result<Option<Progress>> {
    plans::run(
        "SELECT p.column_id, p.next_block, p.next_offset,
                    CASE WHEN r.oid IS NULL THEN 0
                         ELSE LEAST(p.end_block, pg_catalog.pg_relation_size(r.oid) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::bigint) END,
                    COALESCE(GREATEST(
                        CASE WHEN r.relpages OPERATOR(pg_catalog.>) 0 AND r.reltuples OPERATOR(pg_catalog.>) 0 THEN r.reltuples::float8 OPERATOR(pg_catalog./) r.relpages END,
                        CASE WHEN p.end_block OPERATOR(pg_catalog.>) 0 THEN p.rows_total::float8 OPERATOR(pg_catalog./) p.end_block END), 50)
                    , COALESCE(p.retry_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp(), false) AS waiting
               FROM meshhook_keys.reencrypt_progress_column p
               JOIN meshhook_keys.encrypted_column e ON e.id OPERATOR(pg_catalog.=) p.column_id
               LEFT JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) e.rel
              WHERE p.job_id OPERATOR(pg_catalog.=) $1 AND p.state OPERATOR(pg_catalog.=) 'running'
              ORDER BY waiting, p.idle, p.column_id LIMIT 1",
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
            waiting: t.get::<bool>(6)?.unwrap_or(false),
        }))
    })
}

/// Keep a row that did not re-encrypt, named by `row_ref` (its primary key or ctid); a row that
/// fails again only has its time updated.
pub(super) fn record_failed_row(
    job_id: i64,
    column_id: i32,
    row_ref: &str,
    sqlstate: &str,
    message: &str,
) -> Result<()> {
    run(
        "INSERT INTO meshhook_keys.reencrypt_failure (job_id, column_id, row_ref, sqlstate, error)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (job_id, column_id, row_ref) DO UPDATE SET at = pg_catalog.now()",
        &[
            job_id.into(),
            column_id.into(),
            row_ref.into(),
            sqlstate.into(),
            message.into(),
        ],
    )
}

/// Move a column's cursor to (`next_block`, `next_offset`) and count the rows `moved`; with
/// `failures`, recount its failed rows. Touches the job's `updated_at` in the same statement.
pub(super) fn advance_cursor(
    job_id: i64,
    column_id: i32,
    (next_block, next_offset): (i64, i32),
    moved: i64,
    failures: bool,
) -> Result<()> {
    run(
        "WITH job AS (UPDATE meshhook_keys.reencrypt_job SET updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1)
             UPDATE meshhook_keys.reencrypt_progress_column
                SET next_block = $3, next_offset = $4, rows_done = rows_done OPERATOR(pg_catalog.+) $5,
                    rows_failed = CASE WHEN $6 THEN (SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_failure f
                                                      WHERE f.job_id OPERATOR(pg_catalog.=) $1 AND f.column_id OPERATOR(pg_catalog.=) $2)
                                       ELSE rows_failed END,
                    updated_at = pg_catalog.clock_timestamp()
              WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2",
        &[
            job_id.into(),
            column_id.into(),
            next_block.into(),
            next_offset.into(),
            moved.into(),
            failures.into(),
        ],
    )
}

/// A batch over the column raised: mark it failed with the SQLSTATE and message (control
/// characters escaped, clipped: the message may be the table owner's text), so that the job goes on
/// with the keyring's other columns; audited with the SQLSTATE only.
pub(super) fn fail_column(
    job_id: i64,
    keyring: &str,
    col: &Column,
    sqlstate: &str,
    message: &str,
) -> Result<()> {
    run(
        "UPDATE meshhook_keys.reencrypt_progress_column
            SET state = 'failed', sqlstate = $3, error = $4, updated_at = pg_catalog.clock_timestamp()
          WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2",
        &[
            job_id.into(),
            col.id.into(),
            sqlstate.into(),
            crate::logline::escape(message).into(),
        ],
    )?;
    audit::record_failure(
        "reencrypt_column",
        Some(keyring),
        None,
        serde_json::json!({ "job_id": job_id, "table_oid": col.rel.to_u32(), "column": col.column,
                            "sqlstate": sqlstate }),
    )
}

pub(super) fn set_column_state(job_id: i64, column_id: i32, state: &str) -> Result<()> {
    run(
        "UPDATE meshhook_keys.reencrypt_progress_column SET state = $3, updated_at = pg_catalog.clock_timestamp()
          WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2",
        &[job_id.into(), column_id.into(), state.into()],
    )
}

/// The cursor reached the end of the table: count what is still on old keys. Nothing left: done.
/// Only rows that failed left: done with errors. Otherwise (rows skipped because they were locked,
/// or moved behind the cursor by an update) start another pass, and return true.
pub(super) fn end_of_pass(job_id: i64, col: &Column, old: &[i64]) -> Result<bool> {
    let remaining = count_on_keys(col, old)?;
    let failed = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_failure WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2",
        &[job_id.into(), col.id.into()],
    )?
    .unwrap_or(0);
    // (only rows the recorded failures name count as failed: a recorded row may have been fixed
    // since, while another row was skipped and never moved)
    let all_recorded = || -> Result<bool> {
        let refs = Spi::connect(|c| {
            let mut out = Vec::new();
            for row in c.select(
                "SELECT row_ref FROM meshhook_keys.reencrypt_failure WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2",
                None,
                &[job_id.into(), col.id.into()],
            )? {
                if let Some(r) = row.get::<String>(1)? {
                    out.push(r);
                }
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })?;
        Ok(count_unrecorded_on_keys(col, old, &refs)? == 0)
    };
    if remaining == 0 {
        set_column_state(job_id, col.id, "done").map(|()| false)
    } else if remaining <= failed && all_recorded()? {
        set_column_state(job_id, col.id, "done_with_errors").map(|()| false)
    } else {
        // (a pass that made no progress makes the column back off before the next one: it moved
        // nothing, or no fewer rows are left on old keys than after the pass before, whatever it
        // counted as moved: the table's code put the old value back)
        const NO_PROGRESS: &str = "(rows_done OPERATOR(pg_catalog.=) pass_done OR $4 OPERATOR(pg_catalog.>=) pass_remaining)";
        run(
            &format!(
                "UPDATE meshhook_keys.reencrypt_progress_column
                    SET pass = pass OPERATOR(pg_catalog.+) 1, next_block = 0, next_offset = 0, updated_at = pg_catalog.clock_timestamp(),
                        end_block = pg_catalog.pg_relation_size($3) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::bigint,
                        idle = CASE WHEN {NO_PROGRESS} THEN idle OPERATOR(pg_catalog.+) 1 ELSE 0 END,
                        retry_at = CASE WHEN {NO_PROGRESS} THEN {BACKOFF} END,
                        pass_done = rows_done, pass_remaining = $4
                  WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2"
            ),
            &[job_id.into(), col.id.into(), col.rel.into(), remaining.into()],
        )
        .map(|()| true)
    }
}

/// When a column backing off for the `idle + 1`-th time in a row may be taken up again: 50 ms,
/// doubling, at most 10 s later (SQL over the row's `idle`, before it is incremented).
const BACKOFF: &str = "pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => LEAST(10.0, 0.05 OPERATOR(pg_catalog.*) pg_catalog.power(2.0, LEAST(idle, 20))))";

/// A window of the column failed for a reason that is not its table's (a deadlock, a lock
/// timeout, a serialization failure, running out of resources): the column backs off and the
/// keyring's other columns go first; it is taken up again later, not failed.
pub(super) fn back_off(job_id: i64, column_id: i32) -> Result<()> {
    run(
        &format!(
            "UPDATE meshhook_keys.reencrypt_progress_column
                SET retry_at = {BACKOFF}, idle = idle OPERATOR(pg_catalog.+) 1, updated_at = pg_catalog.clock_timestamp()
              WHERE job_id OPERATOR(pg_catalog.=) $1 AND column_id OPERATOR(pg_catalog.=) $2"
        ),
        &[job_id.into(), column_id.into()],
    )
}

pub(super) fn finish_job(job_id: i64, keyring: &str, target_version: i32) -> Result<()> {
    let (done, failed) = Spi::get_two_with_args::<i64, i64>(
        "SELECT coalesce(pg_catalog.sum(rows_done), 0)::bigint, coalesce(pg_catalog.sum(rows_failed), 0)::bigint
           FROM meshhook_keys.reencrypt_progress_column WHERE job_id OPERATOR(pg_catalog.=) $1",
        &[job_id.into()],
    )?;
    let failed = failed.unwrap_or(0);
    let failed_columns = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM meshhook_keys.reencrypt_progress_column WHERE job_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'failed'",
        &[job_id.into()],
    )?
    .unwrap_or(0);
    let state = if failed > 0 || failed_columns > 0 {
        "finished_with_errors"
    } else {
        "finished"
    };
    let seconds = Spi::get_one_with_args::<f64>(
        "UPDATE meshhook_keys.reencrypt_job SET state = $2, finished_at = pg_catalog.now(), updated_at = pg_catalog.now()
          WHERE id OPERATOR(pg_catalog.=) $1 RETURNING EXTRACT(epoch FROM finished_at OPERATOR(pg_catalog.-) started_at)::float8",
        &[job_id.into(), state.into()],
    )?;
    audit::record(
        "reencrypt_finish",
        Some(keyring),
        Some(target_version),
        None,
        None,
        serde_json::json!({ "job_id": job_id, "rows_done": done, "rows_failed": failed,
                            "columns_failed": failed_columns, "state": state, "seconds": seconds }),
    )
}

/// Pause (`paused` true) or resume the scheduler's re-encryption of `keyring`; whether that changed
/// anything. A paused keyring keeps its job and cursor: the scheduler skips it until it is resumed,
/// while an operator's own `reencrypt_batch` or `CALL reencrypt` still runs. Audited
/// (`reencrypt_pause` / `reencrypt_resume`, with `detail.changed`), unknown keyring 42704.
pub fn set_paused(keyring: &str, paused: bool, reason: Option<&str>) -> Result<bool> {
    crate::lock_order::keyring(keyring, crate::lock_order::Row::Existing)?;
    let changed = Spi::get_one_with_args::<bool>(
        "WITH c AS (UPDATE meshhook_keys.keyring SET reencrypt_paused = $2
                     WHERE name OPERATOR(pg_catalog.=) $1 AND reencrypt_paused OPERATOR(pg_catalog.<>) $2
                 RETURNING 1)
         SELECT EXISTS (SELECT FROM c)",
        &[keyring.into(), paused.into()],
    )?
    .unwrap_or(false);
    audit::record(
        if paused {
            "reencrypt_pause"
        } else {
            "reencrypt_resume"
        },
        Some(keyring),
        None,
        None,
        reason,
        serde_json::json!({ "changed": changed }),
    )?;
    Ok(changed)
}
