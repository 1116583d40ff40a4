//! The SQL surface of key management: keyring_create, keys_rotate, keyring_destroy and
//! keyring_reclaim, root_key_rewrap, and the key cache's internal functions. The work is in
//! crate::keyring.

use crate::audit;
use crate::crypto;
use crate::error::{KeysError, OrRaise, Result as KResult};
use crate::keyring::{create_version, refuse_destroyed, rotate, validate_keyring};
use crate::rootkey;
use crate::store;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// Create a keyring, optionally bound to a tenant, with its version 1. Requires meshhook_keys_admin.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_create(
    keyring: Option<&str>,
    tenant: default!(Option<&str>, "NULL"),
    reason: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(keyring, String),
        name!(version, i32),
        name!(key_id, i64),
        name!(activated_at, TimestampWithTimeZone),
    ),
> {
    let r = (|| {
        audit::require_admin("keyring_create", keyring)?;
        let keyring = validate_keyring(keyring)?;
        crate::userheld::check_namespace(keyring, false)?;
        if tenant.is_some_and(|t| t.is_empty() || t.len() > 200) {
            return Err(KeysError::InvalidArgument(
                "tenant must be 1 to 200 characters (or NULL for no tenant)".into(),
            ));
        }
        rootkey::current()?;
        audit::lock_chain()?;
        if !store::create_keyring(keyring, tenant)? {
            return Err(KeysError::KeyringExists(keyring.into()));
        }
        store::lock_keyring(keyring)?;
        create_version(keyring, reason, "keyring_create")
    })()
    .or_raise();
    TableIterator::once((r.keyring, r.version, r.key_id, r.activated_at))
}

/// The checks and locks of an administrative action on an existing keyring: the caller's
/// privilege (refusal audited), the name, the audit chain lock, then the keyring's row lock.
fn lock_existing_keyring<'a>(function: &'static str, keyring: Option<&'a str>) -> KResult<&'a str> {
    audit::require_admin(function, keyring)?;
    let keyring = validate_keyring(keyring)?;
    audit::lock_chain()?;
    if !store::keyring_exists(keyring)? {
        return Err(KeysError::UnknownKeyring(keyring.into()));
    }
    store::lock_keyring(keyring)?;
    Ok(keyring)
}

/// Crypto-shred a keyring: destroy every version's key material so that nothing it ever encrypted
/// can be decrypted again, and refuse any further use of the name. Requires meshhook_keys_admin.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_destroy(keyring: Option<&str>, reason: default!(Option<&str>, "NULL")) -> i32 {
    (|| {
        let keyring = lock_existing_keyring("keyring_destroy", keyring)?;
        refuse_destroyed(keyring)?;
        let versions = store::destroy_keyring(keyring)?;
        audit::record(
            "keyring_destroy",
            Some(keyring),
            None,
            None,
            reason,
            serde_json::json!({ "versions_destroyed": versions }),
        )?;
        store::notify("keyring_destroy", keyring, None)?;
        Ok(versions)
    })()
    .or_raise()
}

/// Free the name of a destroyed keyring (e.g. one a user squatted before 0.5.0's namespaces):
/// its tombstone rows, registrations and re-encryption history are deleted, so the name can be
/// created again. Its ciphertexts were undecryptable already; they now report an unknown key id.
/// Requires meshhook_keys_operator; audited.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_reclaim(keyring: Option<&str>, reason: default!(Option<&str>, "NULL")) -> i32 {
    (|| {
        let keyring = lock_existing_keyring("keyring_reclaim", keyring)?;
        if store::keyring_destroyed_at(keyring)?.is_none() {
            return Err(KeysError::NotDestroyed(keyring.into()));
        }
        let versions = store::delete_keyring(keyring)?;
        audit::record(
            "keyring_reclaim",
            Some(keyring),
            None,
            None,
            reason,
            serde_json::json!({ "versions_deleted": versions }),
        )?;
        Ok(versions)
    })()
    .or_raise()
}

/// Make a new key version the active one for `keyring` (creating the keyring and its version 1 if it
/// has no key yet). Older versions stay usable for decryption. Requires meshhook_keys_admin.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keys_rotate(
    keyring: default!(Option<&str>, "'default'"),
    reason: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(keyring, String),
        name!(version, i32),
        name!(key_id, i64),
        name!(activated_at, TimestampWithTimeZone),
    ),
> {
    let r = (|| {
        audit::require_admin("keys_rotate", keyring)?;
        let keyring = validate_keyring(keyring)?;
        rotate(keyring, reason)
    })()
    .or_raise();
    TableIterator::once((r.keyring, r.version, r.key_id, r.activated_at))
}

/// Statement trigger on meshhook_keys.data_key: tell every backend to drop its cached keys.
#[pg_trigger]
fn _key_cache_invalidate<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> std::result::Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relid()?;
    // SAFETY: queues a relcache invalidation for the table; sent to all backends at commit and
    // applied locally at once (and again on abort).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}

/// This backend's key cache counters; internal, for tests and troubleshooting (no key material).
#[pg_extern(volatile, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn _key_cache_stats() -> TableIterator<
    'static,
    (
        name!(cached_keys, i64),
        name!(hits, i64),
        name!(misses, i64),
    ),
> {
    let (n, h, m) = crate::keycache::stats();
    TableIterator::once((n as i64, h as i64, m as i64))
}

/// Rewrap every data key wrapped by the previous root key under the current one, in one
/// transaction, touching no user rows. Keys already under the current root key are left alone; a key
/// under neither aborts the whole rewrap. Admin only; audited.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn root_key_rewrap() -> TableIterator<'static, (name!(rewrapped, i64), name!(already_current, i64))>
{
    let (done, already) = (|| -> KResult<(i64, i64)> {
        audit::require_admin("root_key_rewrap", None)?;
        let cur = rootkey::current()?;
        let prev = rootkey::previous()?;
        if prev.fingerprint == cur.fingerprint {
            return Err(KeysError::InvalidArgument(
                "the previous root key is the current root key: nothing to rewrap".into(),
            ));
        }
        audit::lock_chain()?;
        let rows = store::wrapped_keys_for_update()?;
        let (mut done, mut already) = (0i64, 0i64);
        for row in rows {
            let Some(wrapped) = row.wrapped_key.as_deref() else {
                continue;
            };
            if row.root_fingerprint.as_slice() == cur.fingerprint.as_slice() {
                already += 1;
                continue;
            }
            if row.root_fingerprint.as_slice() != prev.fingerprint.as_slice() {
                return Err(KeysError::RootKeyMismatch {
                    keyring: row.keyring.clone(),
                    version: row.version,
                    stored: rootkey::fingerprint_hex(&row.root_fingerprint),
                    loaded: format!(
                        "{} (current) / {} (previous)",
                        rootkey::fingerprint_hex(&cur.fingerprint),
                        rootkey::fingerprint_hex(&prev.fingerprint)
                    ),
                });
            }
            let dek = crypto::unwrap_key(&prev.key, row.key_id, wrapped).map_err(|_| {
                KeysError::WrappedKeyCorrupted {
                    keyring: row.keyring.clone(),
                    version: row.version,
                }
            })?;
            let rewrapped = crypto::wrap_key(&cur.key, row.key_id, &dek);
            drop(dek);
            store::set_wrapped_key(row.key_id, &rewrapped, &cur.fingerprint)?;
            done += 1;
        }
        audit::record(
            "root_rewrap",
            None,
            None,
            None,
            None,
            serde_json::json!({
                "rewrapped": done, "already_current": already,
                "from_fingerprint": rootkey::fingerprint_hex(&prev.fingerprint),
                "to_fingerprint": rootkey::fingerprint_hex(&cur.fingerprint),
            }),
        )?;
        Ok((done, already))
    })()
    .or_raise();
    TableIterator::once((done, already))
}
