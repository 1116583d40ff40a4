//! The SQL surface of key management: keyring_create, keys_rotate, keyring_destroy and
//! keyring_reclaim, root_key_rewrap, and the key cache's internal functions. The work is in
//! crate::keyring.

use crate::audit;
use crate::error::{OrRaise, Result as KResult};
use crate::keyring::{self, validate_keyring};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// Create a keyring, optionally bound to a tenant, with its version 1 (pending, activated_at
/// NULL, while standbys replay it: see keys_rotate). Audited. Requires meshhook_keys_operator.
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
        name!(activated_at, Option<TimestampWithTimeZone>),
    ),
> {
    let r = (|| {
        audit::require_admin("keyring_create", keyring)?;
        let keyring = validate_keyring(keyring)?;
        keyring::create(keyring, tenant, reason)
    })()
    .or_raise();
    TableIterator::once((r.keyring, r.version, r.key_id, r.activated_at))
}

/// Crypto-shred a keyring: destroy every version's key material so that nothing it ever encrypted
/// can be decrypted again, and refuse any further use of the name. Audited. Requires
/// meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_destroy(keyring: Option<&str>, reason: default!(Option<&str>, "NULL")) -> i32 {
    (|| {
        audit::require_admin("keyring_destroy", keyring)?;
        keyring::destroy(validate_keyring(keyring)?, reason)
    })()
    .or_raise()
}

/// Free the name of a destroyed keyring (e.g. one a user squatted before 0.5.0's namespaces):
/// its tombstone rows, registrations and re-encryption history are deleted, so the name can be
/// created again. Its ciphertexts were undecryptable already; they now report an unknown key id.
/// Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_reclaim(keyring: Option<&str>, reason: default!(Option<&str>, "NULL")) -> i32 {
    (|| {
        audit::require_admin("keyring_reclaim", keyring)?;
        keyring::reclaim(validate_keyring(keyring)?, reason)
    })()
    .or_raise()
}

/// Make a new key version the active one for `keyring` (creating the keyring and its version 1 if it
/// has no key yet). Older versions stay usable for decryption. With standbys the new version is
/// pending (activated_at NULL) until they have replayed it (`meshhook_keys.activate_after`), and
/// the scheduler then activates it; refused (55000) while the keyring still has a pending version.
/// Audited. Requires meshhook_keys_operator.
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
        name!(activated_at, Option<TimestampWithTimeZone>),
    ),
> {
    let r = (|| {
        audit::require_admin("keys_rotate", keyring)?;
        let keyring = validate_keyring(keyring)?;
        keyring::rotate(keyring, reason)
    })()
    .or_raise();
    TableIterator::once((r.keyring, r.version, r.key_id, r.activated_at))
}

/// Statement trigger on meshhook_keys.data_key: tell every backend to drop its cached keys.
/// Executable only by the extension's owner.
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

/// `_audit_chain_head()`: take the audit chain lock, until commit, and return the chain's last id
/// and hash as committed now, for the chain trigger (see sql/bootstrap.sql, crate::locks and
/// audit::chain_head). No row: an empty log. Internal. Executable only by the extension's owner.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _audit_chain_head() -> TableIterator<'static, (name!(id, i64), name!(hash, Vec<u8>))> {
    TableIterator::new(audit::chain_head().or_raise())
}

/// This backend's key cache counters; internal, for tests and troubleshooting (no key material).
/// Executable only by the extension's owner.
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
/// under neither aborts the whole rewrap. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn root_key_rewrap() -> TableIterator<'static, (name!(rewrapped, i64), name!(already_current, i64))>
{
    let (done, already) = (|| -> KResult<(i64, i64)> {
        audit::require_admin("root_key_rewrap", None)?;
        keyring::rewrap_root()
    })()
    .or_raise();
    TableIterator::once((done, already))
}

/// Rewrap the root-wrapped data keys still in the format before 0.5.0 so that each is bound to its
/// keyring, version and tenant. Not part of the extension's SQL: the 0.4.0 -> 0.5.0 upgrade script
/// creates it, calls it once (needing the root key only if there is something to rewrap) and drops
/// it.
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn _bind_wrapped_keys() -> i64 {
    crate::store::with_fixed_search_path(crate::keyring::bind_legacy_wraps).or_raise()
}
