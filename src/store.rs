//! SQL statements on the extension's own tables (keyrings, data keys, the audit log, registrations) that
//! more than one module needs, parameterised. Statements only one module needs live next to the
//! code that needs them: re-encryption (with its kept plans), retire, verify, the scheduler, the
//! keyring policy, the Vault import and health's checks.

use crate::error::{KeysError, Result};
use pgrx::prelude::*;

/// One data key row as stored (wrapped material only).
pub struct KeyRow {
    pub table_oid: pg_sys::Oid,
    pub key_id: i64,
    pub keyring: String,
    pub version: i32,
    pub state: String,
    pub wrapped_key: Option<Vec<u8>>,
    pub root_fingerprint: Vec<u8>,
    /// The keyring's tenant (0.4.0), NULL for an untenanted keyring.
    pub tenant: Option<String>,
    /// Whether the keyring is user-held (0.4.0): its keys are wrapped by the user's secret.
    pub user_held: bool,
    /// Encryptions flushed to the table so far.
    pub encryptions: i64,
    /// The keyring's rotation limit (`None`: the server default).
    pub max_encryptions: Option<i64>,
}

impl KeyRow {
    /// What its wrapped key is bound to.
    pub fn binding(&self) -> crate::crypto::KeyBinding<'_> {
        crate::crypto::KeyBinding {
            key_id: self.key_id,
            keyring: &self.keyring,
            version: self.version,
            tenant: self.tenant.as_deref(),
        }
    }
}

/// Whether a wrapped key in the format before 0.5.0 (bound to its key id only) may still be
/// unwrapped: a user-held keyring's until its next unlock (which rewraps it: only the user's secret
/// can), a root-wrapped one only until ALTER EXTENSION ... UPDATE (whose script rewraps them all). A
/// root-wrapped key in the old format after that is a restored old row, never used.
pub fn legacy_wrap_allowed(row: &KeyRow) -> Result<bool> {
    Ok(row.user_held || !schema_is_current()?)
}

/// Whether the installed schema is this library's version (false between installing a new
/// library and ALTER EXTENSION ... UPDATE).
pub fn schema_is_current() -> Result<bool> {
    let version = read_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'meshhook_keys'",
        &[],
    )?;
    Ok(version.as_deref() == Some(env!("CARGO_PKG_VERSION")))
}

/// Wrap a new data key, version `version` of `keyring` (bound to the keyring's tenant).
pub fn wrap_new_key(
    kek: &crate::crypto::SecretKey,
    keyring: &str,
    version: i32,
    key_id: i64,
    dek: &crate::crypto::SecretKey,
) -> Result<Vec<u8>> {
    let tenant = keyring_destroyed_and_tenant(keyring)?.1;
    wrap_for_schema(
        kek,
        &crate::crypto::KeyBinding {
            key_id,
            keyring,
            version,
            tenant: tenant.as_deref(),
        },
        dek,
    )
}

/// Wrap a new or rewrapped data key for the row `binding` names: format 2, or format 1 on a
/// schema from before 0.5.0 (whose table accepts nothing else until the update rewraps it).
pub fn wrap_for_schema(
    kek: &crate::crypto::SecretKey,
    binding: &crate::crypto::KeyBinding<'_>,
    dek: &crate::crypto::SecretKey,
) -> Result<Vec<u8>> {
    Ok(if schema_is_current()? {
        crate::crypto::wrap_key(kek, binding, dek)
    } else {
        crate::crypto::wrap_key_v1(kek, binding.key_id, dek)
    })
}

/// A data key row, with its keyring's tenant, whether it is user-held and its rotation limit.
const KEY_COLUMNS: &str = "tableoid::oid, key_id, keyring, version, state, wrapped_key, root_fingerprint,
     (SELECT k.tenant FROM meshhook_keys.keyring k WHERE k.name OPERATOR(pg_catalog.=) data_key.keyring),
     coalesce((SELECT k.user_held FROM meshhook_keys.keyring k
                WHERE k.name OPERATOR(pg_catalog.=) data_key.keyring), false),
     encryptions,
     (SELECT k.max_encryptions FROM meshhook_keys.keyring k WHERE k.name OPERATOR(pg_catalog.=) data_key.keyring)";

fn key_row(t: &crate::fresh::Row) -> Result<KeyRow> {
    let missing = |c: &str| KeysError::Internal(format!("data_key.{c} is NULL"));
    Ok(KeyRow {
        table_oid: t
            .get::<pg_sys::Oid>(1)?
            .ok_or_else(|| missing("tableoid"))?,
        key_id: t.get::<i64>(2)?.ok_or_else(|| missing("key_id"))?,
        keyring: t.get::<String>(3)?.ok_or_else(|| missing("keyring"))?,
        version: t.get::<i32>(4)?.ok_or_else(|| missing("version"))?,
        state: t.get::<String>(5)?.ok_or_else(|| missing("state"))?,
        wrapped_key: t.get::<Vec<u8>>(6)?,
        root_fingerprint: t
            .get::<Vec<u8>>(7)?
            .ok_or_else(|| missing("root_fingerprint"))?,
        tenant: t.get::<String>(8)?,
        user_held: t.get::<bool>(9)?.unwrap_or(false),
        encryptions: t.get::<i64>(10)?.unwrap_or(0),
        max_encryptions: t.get::<i64>(11)?,
    })
}

/// The first key row `sql` selects, as committed now (see [`crate::fresh`]): key rows feed the
/// key cache and the session's unlocked keys, which outlive the caller's snapshot.
fn first_key_row(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<Option<KeyRow>> {
    Ok(crate::fresh::select(sql, args, key_row)?.into_iter().next())
}

/// The key a ciphertext names, whatever its state, as committed now.
pub fn key_by_id(key_id: i64) -> Result<Option<KeyRow>> {
    first_key_row(
        &format!(
            "SELECT {KEY_COLUMNS} FROM meshhook_keys.data_key WHERE key_id OPERATOR(pg_catalog.=) $1"
        ),
        &[key_id.into()],
    )
}

/// The full rows of the keys whose ids `ids_sql` selects (one bigint column), in its order; run as
/// an updating statement so that it may lock them (FOR UPDATE).
fn key_rows(ids_sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<Vec<KeyRow>> {
    let ids: Vec<i64> = Spi::connect_mut(|c| {
        let mut ids = Vec::new();
        for row in c.update(ids_sql, None, args)? {
            ids.extend(row.get::<i64>(1)?);
        }
        Ok::<_, KeysError>(ids)
    })?;
    ids.into_iter()
        .map(|id| key_by_id(id)?.ok_or(KeysError::UnknownKeyId(id)))
        .collect()
}

/// Every key wrapped by the root key that still has key material, locked (root key rewrap).
pub fn wrapped_keys_for_update() -> Result<Vec<KeyRow>> {
    key_rows(
        "SELECT d.key_id FROM meshhook_keys.data_key d
          WHERE d.wrapped_key IS NOT NULL
            AND NOT coalesce((SELECT k.user_held FROM meshhook_keys.keyring k
                               WHERE k.name OPERATOR(pg_catalog.=) d.keyring), false)
          ORDER BY d.key_id FOR UPDATE OF d",
        &[],
    )
}

pub fn set_wrapped_key(key_id: i64, wrapped: &[u8], fingerprint: &[u8]) -> Result<()> {
    Spi::run_with_args(
        "UPDATE meshhook_keys.data_key SET wrapped_key = $2, root_fingerprint = $3 WHERE key_id OPERATOR(pg_catalog.=) $1",
        &[key_id.into(), wrapped.into(), fingerprint.into()],
    )?;
    Ok(())
}

/// The active key of a keyring, if it has one, as committed now.
pub fn active_key(keyring: &str) -> Result<Option<KeyRow>> {
    first_key_row(
        &format!(
            "SELECT {KEY_COLUMNS} FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'active'"
        ),
        &[keyring.into()],
    )
}

/// Create the keyring if needed and lock its row until the transaction ends, so that rotations of
/// one keyring serialize. The UPDATE (not just FOR UPDATE) makes a concurrent REPEATABLE READ
/// rotation fail with a serialization error instead of computing a stale version number.
pub fn lock_keyring(keyring: &str) -> Result<()> {
    Spi::connect_mut(|c| {
        // A new keyring gets meshhook_keys.default_rotation_interval as its rotation policy.
        c.update(
            "INSERT INTO meshhook_keys.keyring (name, rotation_interval)
             VALUES ($1, nullif($2, '')::interval) ON CONFLICT (name) DO NOTHING",
            None,
            &[
                keyring.into(),
                crate::gucs::default_rotation_interval()
                    .unwrap_or_default()
                    .into(),
            ],
        )?;
        c.update(
            "UPDATE meshhook_keys.keyring SET rotated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
            None,
            &[keyring.into()],
        )?;
        Ok(())
    })
}

/// Move the active key (if any) to `decrypt_only`; returns its version.
pub fn demote_active(keyring: &str) -> Result<Option<i32>> {
    Spi::connect_mut(|c| {
        let t = c.update(
            "UPDATE meshhook_keys.data_key SET state = 'decrypt_only'
              WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'active' RETURNING version",
            None,
            &[keyring.into()],
        )?;
        if t.is_empty() {
            Ok(None)
        } else {
            Ok(t.first().get::<i32>(1)?)
        }
    })
}

pub fn next_version(keyring: &str) -> Result<i32> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT coalesce(pg_catalog.max(version), 0) OPERATOR(pg_catalog.+) 1
               FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1",
            None,
            &[keyring.into()],
        )?;
        t.first()
            .get::<i32>(1)?
            .ok_or_else(|| KeysError::Internal("next version is NULL".into()))
    })
}

/// Insert a new key, active (returns its activation time) or, when `active` is false, pending
/// until the standbys have replayed it (returns None; see the activation module).
pub fn insert_key(
    keyring: &str,
    version: i32,
    key_id: i64,
    wrapped: &[u8],
    fingerprint: &[u8],
    active: bool,
) -> Result<Option<pgrx::datum::TimestampWithTimeZone>> {
    Spi::connect_mut(|c| {
        let t = c.update(
            "INSERT INTO meshhook_keys.data_key
                    (key_id, keyring, version, state, wrapped_key, root_fingerprint, activated_at)
             VALUES ($1, $2, $3, CASE WHEN $6 THEN 'active' ELSE 'pending' END, $4, $5,
                     CASE WHEN $6 THEN pg_catalog.now() END)
             RETURNING activated_at",
            None,
            &[
                key_id.into(),
                keyring.into(),
                version.into(),
                wrapped.into(),
                fingerprint.into(),
                active.into(),
            ],
        )?;
        Ok(t.first().get::<pgrx::datum::TimestampWithTimeZone>(1)?)
    })
}

/// A keyring's pending version, as committed now (or made by this transaction).
pub struct PendingKey {
    pub key_id: i64,
    pub version: i32,
    /// The WAL position the standbys must have replayed, once set.
    pub wait_lsn: Option<String>,
    /// Made by this transaction (or one of its subtransactions): not committed yet.
    pub made_here: bool,
}

/// A keyring's pending version, if it has one.
pub fn pending_key(keyring: &str) -> Result<Option<PendingKey>> {
    let rows = crate::fresh::select(
        // (wait_lsn through to_jsonb: a 0.4.0 schema, until ALTER EXTENSION UPDATE, has none)
        "SELECT key_id, version, pg_catalog.to_jsonb(d) OPERATOR(pg_catalog.->>) 'wait_lsn',
                d.xmin::text::bigint
           FROM meshhook_keys.data_key d
          WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'pending'",
        &[keyring.into()],
        |r| {
            Ok((
                r.get::<i64>(1)?,
                r.get::<i32>(2)?,
                r.get::<String>(3)?,
                r.get::<i64>(4)?,
            ))
        },
    )?;
    Ok(rows.into_iter().next().and_then(|(k, v, l, x)| {
        // SAFETY: a lookup in this backend's own transaction state.
        let made_here = unsafe {
            pgrx::pg_sys::TransactionIdIsCurrentTransactionId(pgrx::pg_sys::TransactionId::from(
                x? as u32,
            ))
        };
        Some(PendingKey {
            key_id: k?,
            version: v?,
            wait_lsn: l,
            made_here,
        })
    }))
}

/// Whether the schema has pending versions (0.5.0; a 0.4.0 schema, until ALTER EXTENSION
/// UPDATE, activates every version at once).
pub fn supports_pending() -> Result<bool> {
    Ok(read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                         WHERE attrelid OPERATOR(pg_catalog.=) 'meshhook_keys.data_key'::pg_catalog.regclass
                           AND attname OPERATOR(pg_catalog.=) 'wait_lsn' AND NOT attisdropped)",
        &[],
    )?
    .unwrap_or(false))
}

/// Fix the WAL position a pending key waits for: the end of WAL now, which is past the commit
/// that made the key (it is visible). Returns it.
pub fn set_wait_lsn(key_id: i64) -> Result<String> {
    Spi::get_one_with_args::<String>(
        "UPDATE meshhook_keys.data_key SET wait_lsn = pg_catalog.pg_current_wal_insert_lsn()
          WHERE key_id OPERATOR(pg_catalog.=) $1 RETURNING wait_lsn::text",
        &[key_id.into()],
    )?
    .ok_or_else(|| KeysError::Internal("wait_lsn is NULL".into()))
}

/// Make a pending key the active one (the caller demoted the previous active key).
pub fn activate_pending(key_id: i64) -> Result<()> {
    Spi::run_with_args(
        "UPDATE meshhook_keys.data_key SET state = 'active', activated_at = pg_catalog.now()
          WHERE key_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'pending'",
        &[key_id.into()],
    )?;
    Ok(())
}

/// Keyrings with a pending version, as committed now.
pub fn pending_keyrings() -> Result<Vec<String>> {
    let rows = crate::fresh::select(
        "SELECT keyring FROM meshhook_keys.data_key WHERE state OPERATOR(pg_catalog.=) 'pending' ORDER BY keyring",
        &[],
        |r| r.get::<String>(1),
    )?;
    Ok(rows.into_iter().flatten().collect())
}

/// Register the built-in store's ciphertext column for `keyring` (idempotent).
pub fn register_secrets_store(keyring: &str) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO meshhook_keys.encrypted_column (rel, column_name, context_expr, keyring, registered_by)
         VALUES ('meshhook_keys.secrets'::regclass, 'ciphertext', $$id::text || '/' || tenant$$, $1, 'meshhook_keys')
         ON CONFLICT (rel, column_name, keyring) DO NOTHING",
        &[keyring.into()],
    )?;
    Ok(())
}

/// One audit row. The chain hash, id and timestamp are filled in by the table's trigger, which
/// also mirrors the row to the server log. `actor` defaults to session_user.
pub struct AuditEvent<'a> {
    pub actor: Option<&'a str>,
    pub role_name: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub keyring: Option<&'a str>,
    pub version: Option<i32>,
    pub key_id: Option<i64>,
    pub reason: Option<&'a str>,
    pub detail: serde_json::Value,
}

pub fn insert_audit(e: &AuditEvent<'_>) -> Result<()> {
    Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO meshhook_keys.audit_log
                    (actor, role_name, action, outcome, keyring, version, key_id, reason, detail)
             VALUES (coalesce($1, session_user::text), $2, $3, $4, $5, $6, $7, $8, $9)",
            None,
            &[
                e.actor.into(),
                e.role_name.into(),
                e.action.into(),
                e.outcome.into(),
                e.keyring.into(),
                e.version.into(),
                e.key_id.into(),
                e.reason.into(),
                pgrx::JsonB(e.detail.clone()).into(),
            ],
        )?;
        Ok(())
    })
}

/// Publish a key event on the channel events_channel() names (delivered at commit). The payload
/// is metadata only: `{"event", "keyring", "version"}`.
pub fn notify(event: &str, keyring: &str, version: Option<i32>) -> Result<()> {
    let payload = serde_json::json!({ "event": event, "keyring": keyring, "version": version });
    // (a schema from before 0.5.0, until ALTER EXTENSION ... UPDATE, has the fixed channel only)
    let has_channel = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regclass('meshhook_keys.event_channel') IS NOT NULL",
    )?;
    Spi::run_with_args(
        if has_channel == Some(true) {
            "SELECT pg_catalog.pg_notify((SELECT channel FROM meshhook_keys.event_channel), $1)"
        } else {
            "SELECT pg_catalog.pg_notify('meshhook_keys_events', $1)"
        },
        &[payload.to_string().into()],
    )?;
    Ok(())
}

/// The subscription through which this database receives meshhook_keys' key rows by logical
/// replication (None: it does not): then keys are made, rotated, retired and destroyed on the
/// publisher only, and a key made here would stop the apply (its key id or version taken twice).
pub fn key_tables_subscription() -> Result<Option<String>> {
    read_one::<String>(
        "SELECT (SELECT s.subname::text FROM pg_catalog.pg_subscription_rel r
                   JOIN pg_catalog.pg_subscription s ON s.oid OPERATOR(pg_catalog.=) r.srsubid
                  WHERE r.srrelid OPERATOR(pg_catalog.=) 'meshhook_keys.data_key'::pg_catalog.regclass
                  LIMIT 1)",
        &[],
    )
}

/// The first row of a read-only query (None for no row or NULL). Not pgrx's `Spi::get_one*`, which
/// open a read-write connection and so assign a transaction id: an XX000 error ("cannot assign
/// XIDs during a parallel operation") in a parallel worker, and a WAL-writing commit for a read.
pub fn read_one<A: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<Option<A>> {
    Ok(Spi::connect(|c| {
        c.select(sql, Some(1), args)?.first().get_one()
    })?)
}

/// Like [`read_one`], for two columns.
pub fn read_two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<(Option<A>, Option<B>)> {
    Ok(Spi::connect(|c| {
        c.select(sql, Some(1), args)?.first().get_two()
    })?)
}

/// When the keyring was destroyed by keyring_destroy (None: not destroyed, or no such keyring).
pub fn keyring_destroyed_at(keyring: &str) -> Result<Option<String>> {
    Ok(keyring_destroyed_and_tenant(keyring)?.0)
}

/// When the keyring was destroyed (if it was) and its tenant (if it has one), as committed now
/// (so that a session whose snapshot predates the destroy is told what happened).
pub fn keyring_destroyed_and_tenant(keyring: &str) -> Result<(Option<String>, Option<String>)> {
    let rows = crate::fresh::select(
        "SELECT k.destroyed_at::pg_catalog.text, k.tenant FROM meshhook_keys.keyring k WHERE k.name OPERATOR(pg_catalog.=) $1",
        &[keyring.into()],
        |r| Ok((r.get::<String>(1)?, r.get::<String>(2)?)),
    )?;
    Ok(rows.into_iter().next().unwrap_or((None, None)))
}

/// Live data keys wrapped by the root key (user-held keyrings aside): how many carry `fingerprint`,
/// and how many carry another one.
pub fn root_wrapped_key_counts(fingerprint: &[u8]) -> Result<(i64, i64)> {
    let (m, o) = read_two::<i64, i64>(
        "SELECT pg_catalog.count(*) FILTER (WHERE d.root_fingerprint OPERATOR(pg_catalog.=) $1),
                pg_catalog.count(*) FILTER (WHERE d.root_fingerprint OPERATOR(pg_catalog.<>) $1)
           FROM meshhook_keys.data_key d JOIN meshhook_keys.keyring k ON k.name OPERATOR(pg_catalog.=) d.keyring
          WHERE d.wrapped_key IS NOT NULL AND NOT k.user_held",
        &[fingerprint.into()],
    )?;
    Ok((m.unwrap_or(0), o.unwrap_or(0)))
}

/// Whether a new data key may be wrapped by the root key with `fingerprint`: yes unless live
/// root-wrapped keys exist and none of them carries it. Cheap in the normal case: the first live
/// key found carries the loaded fingerprint, and the scan stops there.
pub fn root_key_wraps_database(fingerprint: &[u8]) -> Result<std::result::Result<(), i64>> {
    const LIVE: &str = "FROM meshhook_keys.data_key d JOIN meshhook_keys.keyring k ON k.name OPERATOR(pg_catalog.=) d.keyring
          WHERE d.wrapped_key IS NOT NULL AND NOT k.user_held";
    let matching = read_one::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 {LIVE} AND d.root_fingerprint OPERATOR(pg_catalog.=) $1)"
        ),
        &[fingerprint.into()],
    )?;
    if matching == Some(true) {
        return Ok(Ok(()));
    }
    let (_, other) = root_wrapped_key_counts(fingerprint)?;
    Ok(if other > 0 { Err(other) } else { Ok(()) })
}

/// Delete a (destroyed) keyring entirely: re-encryption history, registrations, key tombstones
/// and the keyring row. Returns the key versions deleted.
pub fn delete_keyring(keyring: &str) -> Result<i32> {
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.reencrypt_failure f USING meshhook_keys.reencrypt_job j
          WHERE f.job_id OPERATOR(pg_catalog.=) j.id AND j.keyring OPERATOR(pg_catalog.=) $1",
        &[keyring.into()],
    )?;
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.reencrypt_progress_column p USING meshhook_keys.reencrypt_job j
          WHERE p.job_id OPERATOR(pg_catalog.=) j.id AND j.keyring OPERATOR(pg_catalog.=) $1",
        &[keyring.into()],
    )?;
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.reencrypt_job WHERE keyring OPERATOR(pg_catalog.=) $1",
        &[keyring.into()],
    )?;
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.encrypted_column WHERE keyring OPERATOR(pg_catalog.=) $1",
        &[keyring.into()],
    )?;
    let n = Spi::get_one_with_args::<i64>(
        "WITH d AS (DELETE FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 RETURNING 1)
         SELECT pg_catalog.count(*) FROM d",
        &[keyring.into()],
    )?
    .unwrap_or(0);
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.keyring WHERE name OPERATOR(pg_catalog.=) $1",
        &[keyring.into()],
    )?;
    Ok(n as i32)
}

/// Insert a new keyring row with its tenant and the default rotation policy; false if it exists.
pub fn create_keyring(keyring: &str, tenant: Option<&str>) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "WITH ins AS (
             INSERT INTO meshhook_keys.keyring (name, tenant, rotation_interval)
             VALUES ($1, $2, nullif($3, '')::interval)
             ON CONFLICT (name) DO NOTHING RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM ins)",
        &[
            keyring.into(),
            tenant.into(),
            crate::gucs::default_rotation_interval()
                .unwrap_or_default()
                .into(),
        ],
    )?
    .unwrap_or(false))
}

pub fn keyring_exists(keyring: &str) -> Result<bool> {
    Ok(read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM meshhook_keys.keyring WHERE name OPERATOR(pg_catalog.=) $1)",
        &[keyring.into()],
    )?
    .unwrap_or(false))
}

/// Destroy every version of a keyring (key material wiped) and mark it destroyed; returns how many
/// versions still had key material.
pub fn destroy_keyring(keyring: &str) -> Result<i32> {
    let n = Spi::get_one_with_args::<i64>(
        "WITH d AS (
             UPDATE meshhook_keys.data_key
                SET state = 'destroyed', wrapped_key = NULL,
                    retired_at = coalesce(retired_at, pg_catalog.now()), destroyed_at = pg_catalog.now()
              WHERE keyring OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.<>) 'destroyed' RETURNING 1),
         k AS (
             UPDATE meshhook_keys.keyring SET destroyed_at = pg_catalog.now(), rotation_interval = NULL
              WHERE name OPERATOR(pg_catalog.=) $1 RETURNING 1)
         SELECT (SELECT pg_catalog.count(*) FROM d) OPERATOR(pg_catalog.+) (0 OPERATOR(pg_catalog.*) (SELECT pg_catalog.count(*) FROM k))",
        &[keyring.into()],
    )?
    .unwrap_or(0);
    Ok(n as i32)
}

/// Whether the keyring is user-held, and its Argon2id parameters (JSON); None if no such keyring.
pub fn user_held_kdf(keyring: &str) -> Result<Option<(bool, Option<String>)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT k.user_held, k.kdf::pg_catalog.text FROM meshhook_keys.keyring k WHERE k.name OPERATOR(pg_catalog.=) $1",
            None,
            &[keyring.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let t = t.first();
        Ok(Some((
            t.get::<bool>(1)?.unwrap_or(false),
            t.get::<String>(2)?,
        )))
    })
}

/// Insert a user-held keyring (no rotation policy: the scheduler never touches it); false if the
/// name exists.
pub fn create_user_held_keyring(keyring: &str, kdf: &str) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "WITH ins AS (
             INSERT INTO meshhook_keys.keyring (name, user_held, kdf) VALUES ($1, true, $2::jsonb)
             ON CONFLICT (name) DO NOTHING RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM ins)",
        &[keyring.into(), kdf.into()],
    )?
    .unwrap_or(false))
}

pub fn set_kdf(keyring: &str, kdf: &str) -> Result<()> {
    Spi::run_with_args(
        "UPDATE meshhook_keys.keyring SET kdf = $2::jsonb WHERE name OPERATOR(pg_catalog.=) $1",
        &[keyring.into(), kdf.into()],
    )?;
    Ok(())
}

/// The versions of a keyring that still have key material, oldest first: locked if `for_update`,
/// else as committed now (to unlock them, or to check what a session holds unlocked).
pub fn keyring_keys(keyring: &str, for_update: bool) -> Result<Vec<KeyRow>> {
    if for_update {
        return key_rows(
            "SELECT key_id FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 AND wrapped_key IS NOT NULL
              ORDER BY version FOR UPDATE",
            &[keyring.into()],
        );
    }
    crate::fresh::select(
        &format!(
            "SELECT {KEY_COLUMNS} FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 AND wrapped_key IS NOT NULL
              ORDER BY version"
        ),
        &[keyring.into()],
        key_row,
    )
}

/// Run `f` with `search_path = pg_catalog, pg_temp` (restored afterwards, or by the abort if `f`
/// raises). The hot encrypt/decrypt functions are SECURITY DEFINER without a `SET search_path`
/// clause, which costs about 0.9 µs per call; instead every SQL statement they can run (on a key
/// cache miss, or when the `default` keyring is created) runs inside this.
pub fn with_fixed_search_path<T>(f: impl FnOnce() -> T) -> T {
    crate::context::with_setting(c"search_path", c"pg_catalog, pg_temp", f)
}
