//! The schedule: rotate the keyrings that are due, then advance their re-encryption, a bounded
//! number of batches per keyring. Shared by the background worker (every step in a transaction of
//! its own) and `meshhook_keys.tick()` (every step in a subtransaction of the caller's), so that one
//! failing keyring never stops the others, and every failure is audited (actor `scheduler`) and
//! retried with exponential backoff on later ticks.
//!
//! User-held keyrings are never touched: their keys need the user's secret.
//!
//! Exactly once: a tick first takes the tick lock (crate::locks, which no other role can take)
//! without waiting (a session lock in the worker, a transaction lock in `tick()`; they conflict),
//! and skips if another tick holds it. Independently, a rotation re-checks that the keyring is still due after
//! taking the keyring's row lock, so it never races a manual `keys_rotate` either.

use crate::audit;
use crate::error::{KeysError, Result};
use crate::keyring;
use crate::locks::{self, Lock, Until};
use crate::{activation, gucs, pacing, reencrypt, rootkey, served, store, usage};
use pgrx::prelude::*;

pub const ACTOR: &str = "scheduler";

/// How a step is isolated from the others.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The background worker: each step is a transaction of its own.
    OwnTransactions,
    /// `tick()`: each step is a subtransaction of the caller's transaction.
    Subtransactions,
}

pub use crate::error::Failure;

/// Run `f` isolated as `mode` says: committed if it returns Ok, rolled back if it returns Err or
/// raises.
pub fn isolated<T>(mode: Mode, f: impl FnOnce() -> Result<T>) -> std::result::Result<T, Failure> {
    match mode {
        // SAFETY: the transaction protocol of a background worker (as BackgroundWorker::transaction,
        // plus an abort when the body fails).
        Mode::OwnTransactions => unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            // The worker's search_path comes from the database's and role's settings, which a
            // database owner can set: every statement of a step runs with a fixed one instead.
            let r = store::with_fixed_search_path(|| Failure::caught(f));
            match r {
                Ok(v) => {
                    pg_sys::PopActiveSnapshot();
                    pg_sys::CommitTransactionCommand();
                    Ok(v)
                }
                Err(e) => {
                    pg_sys::AbortCurrentTransaction();
                    Err(e)
                }
            }
        },
        Mode::Subtransactions => crate::seal::isolated(f),
    }
}

/// One line of a tick's report.
pub struct Action {
    pub keyring: Option<String>,
    pub action: &'static str,
    pub outcome: &'static str,
    pub detail: String,
}

impl Action {
    fn new(
        keyring: Option<&str>,
        action: &'static str,
        outcome: &'static str,
        detail: String,
    ) -> Self {
        Action {
            keyring: keyring.map(str::to_string),
            action,
            outcome,
            detail,
        }
    }

    /// A step that failed, with the failure as its detail.
    fn failed(keyring: Option<&str>, action: &'static str, f: &Failure) -> Self {
        Action::new(keyring, action, "failed", f.to_string())
    }
}

/// Try to become the only tick running. The worker holds the lock for the whole tick (session
/// level, released by [`release_tick_lock`]); `tick()` until its transaction ends.
fn try_tick_lock(mode: Mode) -> Result<bool> {
    let until = match mode {
        Mode::OwnTransactions => Until::Released,
        Mode::Subtransactions => Until::Commit,
    };
    Ok(locks::try_take(Lock::Tick, until))
}

/// Take the tick lock, or say in `out` why not (another tick runs, or taking it failed).
fn take_tick_lock(mode: Mode, out: &mut Vec<Action>) -> bool {
    match isolated(mode, || try_tick_lock(mode)) {
        Ok(true) => true,
        Ok(false) => {
            out.push(Action::new(
                None,
                "tick",
                "skipped",
                "another tick is running".into(),
            ));
            false
        }
        Err(f) => {
            out.push(Action::failed(None, "tick", &f));
            false
        }
    }
}

pub fn release_tick_lock() -> Result<()> {
    locks::release(Lock::Tick);
    Ok(())
}

/// A keyring whose active key is due for rotation, and why.
struct Due {
    keyring: String,
    reason: String,
}

/// Keyrings (all, or only `only`) whose active key is due: older than the rotation interval, or
/// used for at least max_encryptions encryptions; not while backing off after a failure.
fn due_keyrings(only: Option<&str>) -> Result<Vec<Due>> {
    let rows: Vec<(String, i64, bool, String, i64, Option<i64>)> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT k.name, d.key_id,
                    k.rotation_interval IS NOT NULL AND d.activated_at OPERATOR(pg_catalog.+) k.rotation_interval OPERATOR(pg_catalog.<=) pg_catalog.now(),
                    coalesce(k.rotation_interval::text, ''),
                    d.encryptions, k.max_encryptions
               FROM meshhook_keys.keyring k
               JOIN meshhook_keys.data_key d ON d.keyring OPERATOR(pg_catalog.=) k.name AND d.state OPERATOR(pg_catalog.=) 'active'
              WHERE (k.next_attempt_at IS NULL OR k.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())
                AND NOT k.user_held
                AND NOT EXISTS (SELECT 1 FROM meshhook_keys.data_key p
                                 WHERE p.keyring OPERATOR(pg_catalog.=) k.name AND p.state OPERATOR(pg_catalog.=) 'pending')
                AND ($1::text IS NULL OR k.name OPERATOR(pg_catalog.=) $1)
              ORDER BY k.name",
            None,
            &[only.into()],
        )? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<bool>(3)?.unwrap_or(false),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<i64>(5)?.unwrap_or(0),
                r.get::<i64>(6)?,
            ));
        }
        Ok::<_, KeysError>(out)
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(keyring, key_id, age_due, interval, flushed, max)| {
            let used = flushed.saturating_add(usage::pending(key_id).unwrap_or(0) as i64);
            let max = max.unwrap_or_else(gucs::default_max_encryptions);
            if age_due {
                Some(Due {
                    keyring,
                    reason: format!("scheduled: the active key is older than the rotation interval ({interval})"),
                })
            } else if used >= max {
                Some(Due {
                    keyring,
                    reason: format!(
                        "scheduled: {used} encryptions under the active key reached max_encryptions ({max})"
                    ),
                })
            } else {
                None
            }
        })
        .collect())
}

/// Rotate `keyring` if it is still due once its row is locked. Returns the new version.
fn rotate_if_due(keyring: &str) -> Result<Option<i32>> {
    rootkey::current()?;
    crate::lock_order::keyring(keyring, crate::lock_order::Row::CreateIfMissing)?;
    // A fresh statement after the lock: a rotation committed meanwhile makes the keyring not due.
    let Some(due) = due_keyrings(Some(keyring))?.pop() else {
        return Ok(None);
    };
    let new = audit::as_actor(ACTOR, || {
        keyring::create_version(keyring, Some(&due.reason), "rotate")
    })?;
    clear_failures(keyring, "rotate")?;
    Ok(Some(new.version))
}

/// End the backoff of `keyring` if it was started by a failure of `action` (a re-encryption batch
/// with nothing to do says nothing about whether rotation works again).
fn clear_failures(keyring: &str, action: &str) -> Result<()> {
    Spi::run_with_args(
        "UPDATE meshhook_keys.keyring SET failed_attempts = 0, next_attempt_at = NULL, last_error = NULL
          WHERE name OPERATOR(pg_catalog.=) $1 AND failed_attempts OPERATOR(pg_catalog.>) 0 AND pg_catalog.starts_with(last_error, $2 OPERATOR(pg_catalog.||) ': ')",
        &[keyring.into(), action.into()],
    )?;
    Ok(())
}

/// Audit a failed scheduled action and back the keyring off: the next attempt waits
/// naptime × 2^failures, at most one hour.
fn record_failure(keyring: &str, action: &str, f: &Failure) -> Result<()> {
    let naptime_ms = gucs::worker_naptime().as_millis() as i64;
    let (attempts, next) = Spi::get_two_with_args::<i32, String>(
        "UPDATE meshhook_keys.keyring
            SET failed_attempts = failed_attempts OPERATOR(pg_catalog.+) 1,
                next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+) least(
                    pg_catalog.make_interval(secs => $2::float8 OPERATOR(pg_catalog./) 1000 OPERATOR(pg_catalog.*) pg_catalog.power(2, least(failed_attempts, 20))),
                    interval '1 hour'),
                last_error = $3
          WHERE name OPERATOR(pg_catalog.=) $1
      RETURNING failed_attempts, next_attempt_at::text",
        &[
            keyring.into(),
            naptime_ms.into(),
            format!("{action}: {f}").into(),
        ],
    )?;
    audit::as_actor(ACTOR, || {
        audit::record_failure(
            action,
            Some(keyring),
            None,
            serde_json::json!({
                "sqlstate": f.sqlstate,
                "error_class": f.sqlstate.get(..2).unwrap_or(""),
                "error": f.message,
                "attempt": attempts,
                "next_attempt_at": next,
            }),
        )
    })
}

/// Keyrings with registered columns and an old version that still decrypts, not paused
/// (reencrypt_pause): re-encryption may have work to do (a batch finds out cheaply when it has
/// none).
///
/// Run as a read-write statement, so that it takes a new snapshot: in `tick()` it runs in a fresh
/// subtransaction without a transaction id, where pgrx would run a SELECT read-only against the
/// snapshot of the calling statement, which cannot see the rotation this same tick just made.
fn reencrypt_candidates() -> Result<Vec<String>> {
    Spi::connect_mut(|c| {
        let mut out = Vec::new();
        for r in c.update(
            "SELECT k.name FROM meshhook_keys.keyring k
              WHERE (k.next_attempt_at IS NULL OR k.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())
                AND NOT k.user_held
                AND NOT k.reencrypt_paused
                AND EXISTS (SELECT 1 FROM meshhook_keys.data_key d WHERE d.keyring OPERATOR(pg_catalog.=) k.name AND d.state OPERATOR(pg_catalog.=) 'active')
                AND EXISTS (SELECT 1 FROM meshhook_keys.data_key d WHERE d.keyring OPERATOR(pg_catalog.=) k.name AND d.state OPERATOR(pg_catalog.=) 'decrypt_only')
                AND EXISTS (SELECT 1 FROM meshhook_keys.encrypted_column c WHERE c.keyring OPERATOR(pg_catalog.=) k.name)
              ORDER BY k.name",
            None,
            &[],
        )? {
            out.extend(r.get::<String>(1)?);
        }
        Ok(out)
    })
}

/// Write this database's encryption counts into `data_key.encryptions` (worker only, in a
/// transaction of its own): each key's total, never less than what the table has, so a failed or
/// repeated flush loses and doubles nothing. Once that committed, the watermarks of the slots it
/// wrote advance and the slots of keys that can no longer encrypt are freed (a key deleted with its
/// keyring by keyring_reclaim keeps its slot until the server restarts). Returns how many keys were
/// written.
pub fn flush_usage() -> std::result::Result<usize, Failure> {
    let slots = usage::slots_of_database();
    if slots.is_empty() {
        return Ok(0);
    }
    let written: Vec<(i64, u64)> = slots
        .iter()
        .filter(|s| s.2)
        .map(|&(k, t, _)| (k, t))
        .collect();
    let (ids, totals): (Vec<i64>, Vec<i64>) = written.iter().map(|&(k, t)| (k, t as i64)).unzip();
    let all: Vec<i64> = slots.iter().map(|s| s.0).collect();
    let (updated, dead): (Vec<i64>, Vec<i64>) = isolated(Mode::OwnTransactions, || {
        // Not waiting for a synchronous standby: the commit would hold the active keys' rows
        // meanwhile, and a keys_rotate would then wait for this flush instead of for the standby
        // (found by tests/ha/patroni.sh with the standby stalled). A flush a failover loses is no
        // worse than the counts in shared memory it loses anyway, and the next flush is a maximum.
        Spi::run("SET LOCAL synchronous_commit = local")?;
        let mut updated = Vec::new();
        if !ids.is_empty() {
            Spi::connect_mut(|c| {
                for r in c.update(
                    "UPDATE meshhook_keys.data_key d SET encryptions = GREATEST(d.encryptions, u.n)
                       FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::bigint[])) AS u(key_id, n)
                      WHERE d.key_id OPERATOR(pg_catalog.=) u.key_id
                  RETURNING d.key_id",
                    None,
                    &[ids.clone().into(), totals.clone().into()],
                )? {
                    updated.extend(r.get::<i64>(1)?);
                }
                Ok::<_, KeysError>(())
            })?;
        }
        // keys that can no longer encrypt: decrypt-only, retired, destroyed (a key not visible
        // yet, made by a transaction still open, keeps its counter)
        let dead = Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(
                "SELECT d.key_id FROM meshhook_keys.data_key d
                  WHERE d.key_id OPERATOR(pg_catalog.=) ANY ($1::bigint[])
                    AND d.state OPERATOR(pg_catalog.<>) 'active'",
                None,
                &[all.clone().into()],
            )? {
                out.extend(r.get::<i64>(1)?);
            }
            Ok::<_, KeysError>(out)
        })?;
        Ok((updated, dead))
    })?;
    // (only what the table now has advances a watermark)
    let written: Vec<(i64, u64)> = written
        .into_iter()
        .filter(|(k, _)| updated.contains(k))
        .collect();
    usage::flushed(&written, &dead);
    Ok(written.len())
}

/// During a root key rotation (`meshhook_keys.root_key_previous_*` set to the old root key), rewrap
/// this database's data keys still wrapped by the previous root key under the current one
/// (`keyring::rewrap_root`: one transaction, no user row, audited with actor scheduler), so that
/// every database stops needing the previous key without an operator visiting each one;
/// `health()` says when it is no longer needed. Until then the key cache unwraps with whichever
/// of the two wraps a key ([`rootkey::wrapping`]).
fn root_rewrap_step(mode: Mode, out: &mut Vec<Action>) {
    let pending = isolated(mode, || {
        let Some(prev) = rootkey::previous_if_set()? else {
            return Ok(false);
        };
        if prev.fingerprint == rootkey::current()?.fingerprint {
            return Ok(false);
        }
        Ok(store::root_wrapped_key_counts(&prev.fingerprint)?.0 > 0)
    });
    match pending {
        Ok(false) => {}
        Ok(true) => match isolated(mode, || audit::as_actor(ACTOR, keyring::rewrap_root)) {
            Ok((n, _)) => out.push(Action::new(
                None,
                "root_rewrap",
                "ok",
                format!("{n} data keys rewrapped under the current root key"),
            )),
            Err(f) => out.push(Action::failed(None, "root_rewrap", &f)),
        },
        Err(f) => out.push(Action::failed(None, "root_rewrap", &f)),
    }
}

/// Make the `default` keyring's first version if secret_encrypt asked for it (with standbys, it
/// cannot make it itself: see keyring::ensure_default_keyring).
fn default_keyring_step(mode: Mode, out: &mut Vec<Action>) {
    let db = served::this_database();
    if !served::take_default_keyring_request(db) {
        return;
    }
    match isolated(mode, || {
        audit::as_actor(ACTOR, keyring::make_default_keyring_for_first_use)
    }) {
        Ok(true) => out.push(Action::new(
            Some(keyring::DEFAULT_KEYRING),
            "create",
            "ok",
            "version 1, asked for by secret_encrypt: pending until the standbys replay it".into(),
        )),
        Ok(false) => {}
        Err(f) => {
            // (asked again by the next secret_encrypt)
            out.push(Action::failed(Some(keyring::DEFAULT_KEYRING), "create", &f));
        }
    }
}

/// Activate the pending versions the standbys have replayed (crate::activation), each keyring
/// isolated from the others. While one still waits, the workers come back to this database about
/// once a second instead of once per naptime ([`served::set_activation_waiting`]).
/// Carry out the destructions scheduled by keys_destroy(..., after => ...) that are due, each in
/// its own step, audited with actor scheduler. One that no longer passes the checks (rows
/// registered since reference the version) is not destroyed: its schedule is dropped and the
/// refusal audited as a failure, so that the scheduler does not try again at every tick.
fn destruction_step(mode: Mode, out: &mut Vec<Action>) {
    let due = match isolated(mode, crate::retire::due_destructions) {
        Ok(d) => d,
        Err(f) => {
            out.push(Action::failed(None, "destroy", &f));
            return;
        }
    };
    for (keyring, version, forced) in due {
        let kr = Some(keyring.as_str());
        match isolated(mode, || {
            audit::as_actor(ACTOR, || {
                crate::retire::destroy_due(&keyring, version, forced)
            })
        }) {
            Ok(()) => out.push(Action::new(
                kr,
                "destroy",
                "ok",
                format!("version {version}: its scheduled destruction was due"),
            )),
            Err(f) => {
                let _ = isolated(mode, || {
                    audit::as_actor(ACTOR, || {
                        crate::retire::drop_schedule(&keyring, version)?;
                        audit::record_failure(
                            "destroy",
                            Some(&keyring),
                            Some(
                                "the scheduled destruction no longer passes its checks; schedule it again",
                            ),
                            serde_json::json!({ "version": version, "error": f.sqlstate }),
                        )
                    })
                });
                out.push(Action::failed(kr, "destroy", &f));
            }
        }
    }
}

fn activation_step(mode: Mode, out: &mut Vec<Action>) {
    let keyrings = match isolated(mode, store::pending_keyrings) {
        Ok(k) => k,
        Err(f) => {
            out.push(Action::failed(None, "activate", &f));
            return;
        }
    };
    let mut waiting = false;
    for k in keyrings {
        let kr = Some(k.as_str());
        match isolated(mode, || {
            audit::as_actor(ACTOR, || activation::try_activate(&k))
        }) {
            Ok(activation::Outcome::Activated { version }) => out.push(Action::new(
                kr,
                "activate",
                "ok",
                format!("version {version}: replayed by the standbys"),
            )),
            Ok(activation::Outcome::Waiting { version, behind }) => {
                waiting = true;
                out.push(Action::new(
                    kr,
                    "activate",
                    "skipped",
                    format!(
                        "version {version} waits for {} to replay it",
                        activation::describe(&behind)
                    ),
                ));
            }
            Ok(activation::Outcome::NoPending) => {}
            Err(f) => {
                waiting = true;
                out.push(Action::failed(kr, "activate", &f));
            }
        }
    }
    served::set_activation_waiting(served::this_database(), waiting);
}

/// Whether the worker was asked to stop (SIGTERM); never true in a client backend.
pub fn shutdown_requested() -> bool {
    // SAFETY: reading a sig_atomic_t flag set by the SIGTERM handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// The rotation step of a tick: rotate each keyring that is due, each isolated from the others.
fn rotation_step(mode: Mode, worker: bool, out: &mut Vec<Action>) {
    let due = match isolated(mode, || due_keyrings(None)) {
        Ok(due) => due,
        Err(f) => {
            out.push(Action::failed(None, "rotate", &f));
            return;
        }
    };
    for d in due {
        if worker && shutdown_requested() {
            break;
        }
        out.push(rotate_one(mode, &d));
    }
}

/// Rotate one due keyring; a failure is recorded (audit and backoff) and, in the worker, logged.
fn rotate_one(mode: Mode, d: &Due) -> Action {
    let keyring = Some(d.keyring.as_str());
    match isolated(mode, || rotate_if_due(&d.keyring)) {
        Ok(Some(v)) => Action::new(
            keyring,
            "rotate",
            "ok",
            format!("version {v}: {}", d.reason),
        ),
        Ok(None) => Action::new(keyring, "rotate", "skipped", "no longer due".into()),
        Err(f) => {
            let logged = isolated(mode, || record_failure(&d.keyring, "rotate", &f));
            if mode == Mode::OwnTransactions {
                crate::logline::log(&format!(
                    "meshhook_keys scheduler: rotating keyring \"{}\" failed: {f}",
                    d.keyring
                ));
            }
            let extra = logged
                .err()
                .map(|e| format!(" (and recording it failed: {})", e.message))
                .unwrap_or_default();
            Action::new(keyring, "rotate", "failed", format!("{f}{extra}"))
        }
    }
}

/// The re-encryption step of a tick: up to `reencrypt_batches_per_tick` batches for each keyring
/// that may have rows on an old key, each batch isolated from the others.
fn reencryption_step(mode: Mode, worker: bool, out: &mut Vec<Action>) {
    let per_tick = gucs::reencrypt_batches_per_tick();
    if per_tick <= 0 {
        return;
    }
    let keyrings = match isolated(mode, reencrypt_candidates) {
        Ok(keyrings) => keyrings,
        Err(f) => {
            out.push(Action::failed(None, "reencrypt", &f));
            return;
        }
    };
    for k in keyrings {
        out.extend(reencrypt_one(mode, worker, per_tick, &k));
    }
}

/// Run up to `per_tick` batches for `keyring`. A success ends the backoff a failed attempt
/// started; a failure is recorded (audit and backoff) and, in the worker, logged. Reports nothing
/// when the first batch found nothing to do.
fn reencrypt_one(mode: Mode, worker: bool, per_tick: i32, keyring: &str) -> Option<Action> {
    let (mut moved, mut batches, mut finished) = (0i64, 0, false);
    let (mut paced, mut paused) = (0, std::time::Duration::ZERO);
    let mut failed = None;
    while batches < per_tick && !(worker && shutdown_requested()) {
        let started = std::time::Instant::now();
        match isolated(mode, || {
            // A batch of the worker commits without waiting for its WAL to reach disk, as CALL
            // reencrypt's do, so that the application's commits do not queue behind its flushes:
            // a crash can only undo the last batches, whose rows are then still on their old key
            // (which still decrypts), and any later durable commit (a retire, say) flushes them.
            if mode == Mode::OwnTransactions {
                Spi::run("SET LOCAL synchronous_commit = off")?;
            }
            let n = audit::as_actor(ACTOR, || {
                reencrypt::batch(keyring, gucs::reencrypt_batch_size())
            })?;
            // (in the batch's own transaction: a fresh sample; one that fails paces nothing)
            Ok((n, n.is_some() && pacing::others_active().unwrap_or(false)))
        }) {
            Ok((Some(n), busy)) => {
                moved += n;
                batches += 1;
                let wait = pacing::pause(started.elapsed(), busy);
                if busy {
                    paced += 1;
                    paused += wait;
                }
                crate::latch::wait(wait);
            }
            Ok((None, _)) => {
                finished = true;
                break;
            }
            Err(f) => {
                failed = Some(f);
                break;
            }
        }
    }
    if failed.is_none() {
        // A success ends any backoff a failed attempt started.
        if let Err(f) = isolated(mode, || clear_failures(keyring, "reencrypt")) {
            failed = Some(f);
        }
    }
    let k = Some(keyring);
    match failed {
        Some(f) => {
            let _ = isolated(mode, || record_failure(keyring, "reencrypt", &f));
            if mode == Mode::OwnTransactions {
                crate::logline::log(&format!(
                    "meshhook_keys scheduler: re-encrypting keyring \"{keyring}\" failed: {f}"
                ));
            }
            Some(Action::new(
                k,
                "reencrypt",
                "failed",
                format!("{f} (after {moved} rows)"),
            ))
        }
        None if moved > 0 || !finished => Some(Action::new(
            k,
            "reencrypt",
            "ok",
            format!(
                "{moved} rows moved in {batches} batches{}{}",
                if paced > 0 {
                    format!(
                        " (paced after {paced}: other sessions were running, {} ms of pauses)",
                        paused.as_millis()
                    )
                } else {
                    String::new()
                },
                if finished { ", done" } else { "" }
            ),
        )),
        None => None,
    }
}

/// One tick: take the tick lock, then the rotation step, then the re-encryption step. `worker` adds
/// what only the worker does (flushing usage counters first, stopping early on SIGTERM).
pub fn tick(mode: Mode, worker: bool) -> Vec<Action> {
    let mut out = Vec::new();
    // A logical replica of the key tables: its keys change on the publisher only (a rotation made
    // here would stop the apply), and its usage counts are not written (the rows are the
    // publisher's).
    match isolated(mode, store::key_tables_subscription) {
        Ok(Some(sub)) => {
            out.push(Action::new(
                None,
                "tick",
                "skipped",
                format!("keys come from the publisher (subscription \"{sub}\")"),
            ));
            return out;
        }
        Ok(None) => {}
        Err(f) => {
            out.push(Action::failed(None, "tick", &f));
            return out;
        }
    }
    if !take_tick_lock(mode, &mut out) {
        return out;
    }
    if worker && let Err(f) = flush_usage() {
        out.push(Action::failed(None, "flush_usage", &f));
    }
    root_rewrap_step(mode, &mut out);
    default_keyring_step(mode, &mut out);
    activation_step(mode, &mut out);
    destruction_step(mode, &mut out);
    rotation_step(mode, worker, &mut out);
    reencryption_step(mode, worker, &mut out);
    if mode == Mode::OwnTransactions {
        let _ = isolated(mode, release_tick_lock);
    }
    out
}

/// How the current database is served, as `scheduler_status()` and `health()` report it.
pub struct Here {
    /// The database's name.
    pub database: String,
    /// Whether it is `meshhook_keys.database` (served by the long-lived scheduler).
    pub main: bool,
    /// A worker serving it now (0: none).
    pub pid: i32,
    pub state: String,
    pub naptime_ms: i64,
    pub ticks: u64,
    pub last_tick_at: Option<pg_sys::TimestampTz>,
    /// Whether it is served as it should be, and if not why.
    pub healthy: std::result::Result<(), String>,
}

/// How the current database is served; None without `shared_preload_libraries`.
pub fn here() -> Option<Here> {
    let main_status = crate::usage::status()?;
    // SAFETY: plain reads of backend state; get_database_name returns a palloc'd copy or NULL.
    let (db, name) = unsafe {
        let db = pg_sys::MyDatabaseId;
        let p = pg_sys::get_database_name(db);
        let name = if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        (db.to_u32(), name)
    };
    let naptime_ms = crate::gucs::worker_naptime().as_millis() as i64;
    // SAFETY: reads shared recovery state.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    if name == crate::gucs::database() {
        let s = main_status;
        return Some(Here {
            database: name,
            main: true,
            pid: s.pid,
            state: s.state.name().to_string(),
            naptime_ms: s.naptime_ms,
            ticks: s.ticks,
            last_tick_at: s.last_tick_at,
            healthy: if s.pid != 0 {
                Ok(())
            } else {
                Err("no scheduler process".into())
            },
        });
    }
    let s = served::status(db)?;
    // SAFETY: reading a backend clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    // (a tick is due every naptime; a late one is one that has not come in three naptimes and a
    // probe interval, the longest a first tick may take to come after CREATE EXTENSION)
    let late_after_us = 3 * naptime_ms * 1000 + served::probe_interval().as_micros() as i64;
    let healthy = if standby {
        Ok(())
    } else if !crate::gucs::worker_enabled() {
        Err("paused (meshhook_keys.worker_enabled = off)".into())
    } else {
        match (s.state, s.last_tick_at) {
            (served::DbState::Failed, _) => {
                Err("the last database worker here failed (see the server log)".into())
            }
            (_, Some(at)) if now - at <= late_after_us => Ok(()),
            (_, Some(_)) => Err(format!(
                "the last tick here is more than {} s old: are max_worker_processes or meshhook_keys.max_database_workers too low for the number of databases?",
                late_after_us / 1_000_000
            )),
            (_, None) => Err(format!(
                "not served yet: the launcher starts a database worker here within {} s of CREATE EXTENSION",
                served::probe_interval()
                    .max(crate::gucs::worker_naptime())
                    .as_secs()
            )),
        }
    };
    Some(Here {
        database: name,
        main: false,
        pid: s.pid,
        state: if standby {
            "standby".into()
        } else {
            format!("served by database workers: {}", s.state.name())
        },
        naptime_ms,
        ticks: s.ticks,
        last_tick_at: s.last_tick_at,
        healthy,
    })
}
