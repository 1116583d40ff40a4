//! Key activation waits for the standbys, so that a failover never loses a key that sealed a
//! ciphertext (issue 26).
//!
//! A key version committed on the primary exists on a standby only once the standby has received
//! its WAL. If it encrypted the moment it committed, an application could hold a ciphertext sealed
//! under it while a failover promotes a standby that never got it: that ciphertext would never
//! decrypt again (and the new primary would later make a different key with the same version
//! number). So with standbys a new version starts `pending`: it decrypts, the previous version
//! keeps encrypting, and it becomes the active one only once every standby it must wait for
//! (`meshhook_keys.activate_after`) has replayed it, checked in `pg_stat_replication`. Nothing is
//! waited for inside the rotating transaction (it cannot see its own commit replayed, and a
//! cancelled synchronous-commit wait would commit it locally anyway): the scheduler activates it
//! on a later tick, in every database, about once a second while one waits.
//!
//! The position waited for is fixed by the first attempt after the rotation committed: the end of
//! WAL then, which is past that commit. A standby counts when it streams from this server (its
//! replay position, or its flush position for a client that does not replay, such as
//! pg_receivewal) or holds a physical replication slot here (its restart position while it is
//! disconnected), so a standby that is restarting holds rotations back rather than missing them.
//! Logical walsenders and base backups do not count. A walsender whose columns the extension's
//! owner may not read (an owner without pg_read_all_stats) counts as not replayed: rotations then
//! wait, visibly in health(), rather than activate unchecked.
//!
//! Layer 3, beside `keyring`: called by `keyring`, the scheduler, `health()` and the encrypt
//! path; calls the store, the audit log and the lock order.

use crate::audit;
use crate::error::{KeysError, Result};
use crate::gucs::{self, ActivateAfter};
use crate::lock_order::{self, Row};
use crate::store;
use pgrx::spi::Spi;

/// The standbys a version must wait for now that have not replayed `target` (every one of them
/// when `target` is None), named for messages: `standby "app" (slot "s")`, `slot "s"`.
fn behind(target: Option<&str>) -> Result<Vec<String>> {
    let mode = gucs::activate_after();
    if mode == ActivateAfter::Commit {
        return Ok(Vec::new());
    }
    let sync_only = mode == ActivateAfter::SynchronousStandbys;
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "WITH s AS (
                 SELECT r.application_name AS app, l.slot_name,
                        coalesce(r.replay_lsn, r.flush_lsn, l.restart_lsn) AS at,
                        coalesce(r.sync_state, 'async') AS sync_state
                   FROM (SELECT * FROM pg_catalog.pg_stat_replication
                          WHERE coalesce(state, '') OPERATOR(pg_catalog.<>) 'backup'
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots g
                                             WHERE g.active_pid OPERATOR(pg_catalog.=) pid
                                               AND g.slot_type OPERATOR(pg_catalog.=) 'logical')) r
                   FULL JOIN (SELECT * FROM pg_catalog.pg_replication_slots
                               WHERE slot_type OPERATOR(pg_catalog.=) 'physical') l
                     ON l.active_pid OPERATOR(pg_catalog.=) r.pid)
             SELECT CASE WHEN s.slot_name IS NULL THEN pg_catalog.format('standby \"%s\"', s.app)
                         WHEN s.app IS NULL THEN pg_catalog.format('slot \"%s\"', s.slot_name)
                         ELSE pg_catalog.format('standby \"%s\" (slot \"%s\")', s.app, s.slot_name) END
               FROM s
              WHERE (NOT $2 OR s.sync_state IN ('sync', 'quorum'))
                AND ($1::pg_lsn IS NULL OR s.at IS NULL OR s.at OPERATOR(pg_catalog.<) $1::pg_lsn)
             UNION ALL
             SELECT 'the synchronous standby (none is connected)'
              WHERE $2 AND pg_catalog.current_setting('synchronous_standby_names') OPERATOR(pg_catalog.<>) ''
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_replication
                                 WHERE sync_state IN ('sync', 'quorum'))
             ORDER BY 1",
            None,
            &[target.into(), sync_only.into()],
        )? {
            out.extend(r.get::<String>(1)?);
        }
        Ok(out)
    })
}

/// Whether a version made now must wait (`Some(the standbys it waits for)`) or may encrypt at
/// once (`None`: no standby to wait for, or `activate_after = commit`).
pub fn must_wait() -> Result<Option<Vec<String>>> {
    if !store::supports_pending()? {
        return Ok(None);
    }
    let all = behind(None)?;
    Ok(if all.is_empty() { None } else { Some(all) })
}

/// What an attempt to activate a keyring's pending version did.
pub enum Outcome {
    /// The keyring has no pending version.
    NoPending,
    /// The pending version is the active one now.
    Activated { version: i32 },
    /// It still waits for these standbys.
    Waiting { version: i32, behind: Vec<String> },
}

/// Activate `keyring`'s pending version if every standby it waits for has replayed it: the
/// previous active version becomes decrypt-only, audited (`activate`) and notified. Takes the
/// keyring's locks (the one lock order); the first attempt fixes the WAL position waited for.
pub fn try_activate(keyring: &str) -> Result<Outcome> {
    lock_order::keyring(keyring, Row::Existing)?;
    let Some(pending) = store::pending_key(keyring)? else {
        return Ok(Outcome::NoPending);
    };
    let (key_id, version) = (pending.key_id, pending.version);
    if pending.made_here {
        // Made by this very transaction (a rotation and tick() in one transaction): its commit
        // record is not written yet, so no WAL position stands for it. A later transaction fixes
        // one.
        return Ok(Outcome::Waiting {
            version,
            behind: behind(None)?,
        });
    }
    let target = match pending.wait_lsn {
        Some(l) => l,
        None => store::set_wait_lsn(key_id)?,
    };
    let behind = behind(Some(&target))?;
    if !behind.is_empty() {
        return Ok(Outcome::Waiting { version, behind });
    }
    let previous = store::demote_active(keyring)?;
    store::activate_pending(key_id)?;
    audit::record(
        "activate",
        Some(keyring),
        Some(version),
        Some(key_id),
        None,
        serde_json::json!({
            "previous_version": previous,
            "replayed_to": target,
            "activate_after": activate_after_name(),
        }),
    )?;
    store::notify("activate", keyring, Some(version))?;
    Ok(Outcome::Activated { version })
}

/// The error for a keyring whose newest version still waits for the standbys.
pub fn pending_error(keyring: &str) -> Result<KeysError> {
    let Some(store::PendingKey {
        version, wait_lsn, ..
    }) = store::pending_key(keyring)?
    else {
        return Ok(KeysError::NoActiveKey(keyring.into()));
    };
    // SAFETY: reads shared recovery state.
    let behind = if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        "the primary's standbys (this server is one; the primary activates it, then this server replays that)".into()
    } else {
        describe(&behind(wait_lsn.as_deref())?)
    };
    Ok(KeysError::ActivationPending {
        keyring: keyring.into(),
        version,
        behind,
    })
}

/// "standby \"a\" and slot \"s\"" (at most three named).
pub fn describe(behind: &[String]) -> String {
    match behind.len() {
        0 => "no standby any more (the scheduler activates it on its next tick)".into(),
        1 => behind[0].clone(),
        n if n <= 3 => format!("{} and {}", behind[..n - 1].join(", "), behind[n - 1]),
        n => format!("{} and {} more", behind[..3].join(", "), n - 3),
    }
}

fn activate_after_name() -> &'static str {
    match gucs::activate_after() {
        ActivateAfter::Standbys => "standbys",
        ActivateAfter::SynchronousStandbys => "synchronous_standbys",
        ActivateAfter::Commit => "commit",
    }
}

/// The physical standbys streaming from this server (all, or only those without a replication
/// slot), named as [`behind`] names them.
fn physical_walsenders(slotless_only: bool) -> Result<Vec<String>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT pg_catalog.format('standby \"%s\"', r.application_name)
               FROM pg_catalog.pg_stat_replication r
              WHERE coalesce(r.state, '') OPERATOR(pg_catalog.<>) 'backup'
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots g
                                 WHERE g.active_pid OPERATOR(pg_catalog.=) r.pid
                                   AND (g.slot_type OPERATOR(pg_catalog.=) 'logical' OR $1))
              ORDER BY 1",
            None,
            &[slotless_only.into()],
        )? {
            out.extend(r.get::<String>(1)?);
        }
        Ok(out)
    })
}

/// The `key_activation` row of health(): versions waiting for the standbys (a warning once one
/// has waited a minute, naming what it waits for), or whether new versions wait at all. None on a
/// standby (the primary activates).
pub fn health() -> Result<Option<(&'static str, String)>> {
    // SAFETY: reads shared recovery state.
    if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        // (the primary activates; it cannot see the standbys that stream from this one)
        let cascading = physical_walsenders(false)?;
        return Ok((!cascading.is_empty()).then(|| {
            (
                "warning",
                format!(
                    "this standby feeds {}: the primary does not see them, so a new version does not wait for them, and a failover to one of them can lose the newest key; stream them from the primary (with a slot there), or never promote them",
                    describe(&cascading)
                ),
            )
        }));
    }
    let waiting: Vec<(String, i32, Option<String>, f64)> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT keyring, version, pg_catalog.to_jsonb(d) OPERATOR(pg_catalog.->>) 'wait_lsn',
                    pg_catalog.date_part('epoch', pg_catalog.now() OPERATOR(pg_catalog.-) created_at)::float8
               FROM meshhook_keys.data_key d WHERE state OPERATOR(pg_catalog.=) 'pending' ORDER BY keyring",
            None,
            &[],
        )? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i32>(2)?.unwrap_or(0),
                r.get::<String>(3)?,
                r.get::<f64>(4)?.unwrap_or(0.0),
            ));
        }
        Ok::<_, KeysError>(out)
    })?;
    let mode = activate_after_name();
    if waiting.is_empty() {
        if gucs::activate_after() == ActivateAfter::Commit {
            let standbys = physical_walsenders(false)?.len();
            if standbys > 0 {
                return Ok(Some((
                    "warning",
                    format!(
                        "activate_after = commit with {standbys} standbys: a new version encrypts at once, and a failover to a standby that had not received it loses every secret sealed under it; set meshhook_keys.activate_after = standbys (or synchronous_standbys)"
                    ),
                )));
            }
        }
        if gucs::activate_after() == ActivateAfter::Standbys {
            let slotless = physical_walsenders(true)?;
            if !slotless.is_empty() {
                return Ok(Some((
                    "warning",
                    format!(
                        "{} without a replication slot here: while disconnected it is not waited for, and a failover to it can lose a version made meanwhile; give every standby that may be promoted a physical slot (Patroni: use_slots)",
                        describe(&slotless)
                    ),
                )));
            }
        }
        return Ok(Some((
            "ok",
            format!("no key version waits for the standbys (activate_after = {mode})"),
        )));
    }
    let mut worst = "ok";
    let mut parts = Vec::new();
    for (keyring, version, lsn, age) in &waiting {
        if *age >= 60.0 {
            worst = "warning";
        }
        let behind = behind(lsn.as_deref())?;
        parts.push(format!(
            "keyring \"{keyring}\" version {version} has waited {age:.0} s for {}",
            describe(&behind)
        ));
    }
    Ok(Some((
        worst,
        format!(
            "{} (activate_after = {mode}; the previous versions encrypt meanwhile; a standby that stays behind holds rotations back: bring it back or drop its replication slot)",
            parts.join("; ")
        ),
    )))
}
