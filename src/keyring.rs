//! Keyrings: names, creation, versions and rotation, the rotation policy, destruction
//! (crypto-shredding) and reclaiming a destroyed name, rewrapping every data key under a new root
//! key, and the `default` keyring's first use. Layer 3: called by the SQL surface (`api`), the
//! scheduler and the encrypt path; calls the store, the root key and the audit log, never the SQL
//! surface. Every change takes the audit chain lock before the keyring's row lock (the one lock
//! order) and is audited in the same transaction.

use crate::audit;
use crate::crypto::{self, SecretKey};
use crate::error::{KeysError, Result as KResult};
use crate::lock_order::{self, Row};
use crate::rootkey;
use crate::store;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::spi::Spi;

pub const DEFAULT_KEYRING: &str = "default";

/// Keyring names: 1–63 characters from `A-Z a-z 0-9 _ . : -`, starting with a letter or digit.
pub fn validate_keyring(name: Option<&str>) -> KResult<&str> {
    validate_keyring_bytes(name.map(str::as_bytes))
}

/// [`validate_keyring`] for the bytes of a `text` argument read in place (any byte that is not
/// one of the name's ASCII characters is refused the same way). Once per encryption: one pass.
pub fn validate_keyring_bytes(name: Option<&[u8]>) -> KResult<&str> {
    let Some(name) = name else {
        return Err(KeysError::NullArgument("keyring"));
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
    let ok = matches!(name.first(), Some(b) if b.is_ascii_alphanumeric())
        && name.len() <= 63
        && name.iter().fold(true, |ok, &b| ok & allowed(b));
    if !ok {
        return Err(KeysError::InvalidKeyringName(
            "use 1 to 63 characters from A-Z, a-z, 0-9, '_', '.', ':' and '-', starting with a letter or digit".into(),
        ));
    }
    // SAFETY: every byte was checked to be ASCII above, so the bytes are valid UTF-8.
    Ok(unsafe { std::str::from_utf8_unchecked(name) })
}

pub struct NewKey {
    pub keyring: String,
    pub version: i32,
    pub key_id: i64,
    /// None: pending until the standbys have replayed it (crate::activation).
    pub activated_at: Option<TimestampWithTimeZone>,
}

/// The root key new keys are wrapped under: the loaded one, refused (28000) when it wraps none of
/// the database's other keys. One database, one root key (unless they are all under the previous
/// root key: a root key rotation in progress).
pub(crate) fn root_for_new_keys() -> KResult<std::rc::Rc<rootkey::RootKey>> {
    let root = rootkey::current()?;
    if let Err(keys) = store::root_key_wraps_database(&root.fingerprint)? {
        let rotating = match rootkey::previous_if_set()? {
            Some(prev) => store::root_key_wraps_database(&prev.fingerprint)?.is_ok(),
            None => false,
        };
        if !rotating {
            return Err(KeysError::RootKeyForeign {
                loaded: rootkey::fingerprint_hex(&root.fingerprint),
                keys,
            });
        }
    }
    Ok(root)
}

/// Generate a data key, wrap it under the root key, make it the keyring's active version (the
/// previous one becomes `decrypt_only`) and audit it. O(1): touches no user data. With standbys
/// to wait for (`meshhook_keys.activate_after`) the version is pending instead, and the previous
/// one keeps encrypting until the scheduler activates it (crate::activation).
/// The caller must hold the audit chain lock and then the keyring lock, in that order, and have
/// checked that the keyring has no pending version.
pub(crate) fn create_version(keyring: &str, reason: Option<&str>, action: &str) -> KResult<NewKey> {
    if let Some(sub) = store::key_tables_subscription()? {
        return Err(KeysError::LogicalReplica(sub));
    }
    let root = root_for_new_keys()?;
    let waits_for = crate::activation::must_wait()?;
    if waits_for.is_some() {
        // (the workers come back to this database about once a second to activate it)
        crate::served::set_activation_waiting(crate::served::this_database(), true);
    }
    let previous = match waits_for {
        None => store::demote_active(keyring)?,
        Some(_) => store::active_key(keyring)?.map(|k| k.version),
    };
    let version = store::next_version(keyring)?;
    let key_id = crypto::random_key_id();
    let dek = SecretKey::generate();
    let wrapped = store::wrap_new_key(&root.key, keyring, version, key_id, &dek)?;
    drop(dek);
    let activated_at = store::insert_key(
        keyring,
        version,
        key_id,
        &wrapped,
        &root.fingerprint,
        waits_for.is_none(),
    )?;
    if version == 1 {
        // Every keyring can be used in the built-in secrets store: cover it for re-encryption.
        store::register_secrets_store(keyring)?;
    }
    audit::record(
        action,
        Some(keyring),
        Some(version),
        Some(key_id),
        reason,
        serde_json::json!({
            "previous_version": previous,
            "root_key_fingerprint": rootkey::fingerprint_hex(&root.fingerprint),
            "pending_until_replayed_by": waits_for,
        }),
    )?;
    store::notify(action, keyring, Some(version))?;
    Ok(NewKey {
        keyring: keyring.to_string(),
        version,
        key_id,
        activated_at,
    })
}

pub fn rotate(keyring: &str, reason: Option<&str>) -> KResult<NewKey> {
    // Load the root key before taking any lock: a misconfigured server changes nothing.
    rootkey::current()?;
    // (a user-held keyring that exists gets its own, clearer refusal below)
    if store::user_held_kdf(keyring)?.is_none() {
        crate::userheld::check_namespace(keyring, false)?;
    }
    lock_order::keyring(keyring, Row::CreateIfMissing)?;
    refuse_destroyed(keyring)?;
    if let Some((true, _)) = store::user_held_kdf(keyring)? {
        return Err(KeysError::WrongKeyringKind(format!(
            "keyring \"{keyring}\" is user-held: its keys change only with its secret, through keyring_rotate_secret(keyring, old_secret, new_secret, reencrypt => true)"
        )));
    }
    settle_pending(keyring)?;
    create_version(keyring, reason, "rotate")
}

/// Before a new version: activate the keyring's pending one if the standbys have replayed it by
/// now, and refuse (55000) while it still waits (one pending version per keyring).
fn settle_pending(keyring: &str) -> KResult<()> {
    match crate::activation::try_activate(keyring)? {
        crate::activation::Outcome::Waiting { version, behind } => {
            Err(KeysError::ActivationPending {
                keyring: keyring.into(),
                version,
                behind: crate::activation::describe(&behind),
            })
        }
        _ => Ok(()),
    }
}

/// A destroyed keyring stays destroyed: no new version can make its name usable again.
fn refuse_destroyed(keyring: &str) -> KResult<()> {
    if store::keyring_destroyed_at(keyring)?.is_some() {
        return Err(KeysError::KeyringDestroyed(keyring.into()));
    }
    Ok(())
}

/// First use of the `default` keyring: create version 1 unless a concurrent session just did.
pub fn ensure_default_keyring() -> KResult<()> {
    rootkey::current()?;
    lock_order::keyring(DEFAULT_KEYRING, Row::CreateIfMissing)?;
    if store::active_key(DEFAULT_KEYRING)?.is_some() {
        return Ok(());
    }
    if store::pending_key(DEFAULT_KEYRING)?.is_some() {
        // (its first version waits for the standbys: activate it if they have replayed it)
        return settle_pending(DEFAULT_KEYRING);
    }
    refuse_destroyed(DEFAULT_KEYRING)?;
    if let Some(sub) = store::key_tables_subscription()? {
        return Err(KeysError::LogicalReplica(sub));
    }
    if let Some(behind) = crate::activation::must_wait()? {
        // A first version made here would wait for the standbys, and this call's error would roll
        // it back with everything else: the workers make it, in a transaction of their own, and a
        // retry finds it active once the standbys have replayed it.
        let asked = crate::served::ask_for_default_keyring(crate::served::this_database());
        return Err(KeysError::ActivationPending {
            keyring: DEFAULT_KEYRING.into(),
            version: 1,
            behind: if asked {
                format!(
                    "the scheduler to make it (within a second or two), then for {}",
                    crate::activation::describe(&behind)
                )
            } else {
                format!(
                    "{}, and nothing makes it on first use without shared_preload_libraries: an operator runs SELECT meshhook_keys.keyring_create('default')",
                    crate::activation::describe(&behind)
                )
            },
        });
    }
    create_version(
        DEFAULT_KEYRING,
        Some("created on first use by secret_encrypt"),
        "create",
    )?;
    Ok(())
}

/// The `default` keyring's first version, made by the scheduler because secret_encrypt asked for
/// it while standbys must replay it (see [`ensure_default_keyring`]). Nothing if it has one.
pub fn make_default_keyring_for_first_use() -> KResult<bool> {
    rootkey::current()?;
    lock_order::keyring(DEFAULT_KEYRING, Row::CreateIfMissing)?;
    if store::active_key(DEFAULT_KEYRING)?.is_some()
        || store::pending_key(DEFAULT_KEYRING)?.is_some()
        || store::keyring_destroyed_at(DEFAULT_KEYRING)?.is_some()
    {
        return Ok(false);
    }
    create_version(
        DEFAULT_KEYRING,
        Some("created on first use by secret_encrypt (by the scheduler: standbys replay it first)"),
        "create",
    )?;
    Ok(true)
}

/// The most encryptions a policy may allow under one key: AES-GCM with random 96-bit nonces must
/// stay below 2^32 invocations (NIST SP 800-38D). (Whatever the policy, a key refuses to encrypt at
/// meshhook_keys.max_encryptions_ceiling.)
const MAX_ENCRYPTIONS_LIMIT: i64 = (1 << 32) - 1;

/// Set a keyring's rotation policy: rotate when its active key is older than `rotation_interval`
/// (`None`: never by age) or has encrypted `max_encryptions` times (`None`: the server default).
/// Clears the scheduler's backoff and last error. Refused (22023) for a limit outside 1..2^32 - 1 or
/// an interval outside 1 second..100 years, and (42704) for a keyring that does not exist: a
/// policy never creates one. Audited.
pub fn set_policy(
    keyring: &str,
    rotation_interval: Option<Interval>,
    max_encryptions: Option<i64>,
) -> KResult<()> {
    if let Some(m) = max_encryptions
        && !(1..=MAX_ENCRYPTIONS_LIMIT).contains(&m)
    {
        return Err(KeysError::InvalidArgument(format!(
            "max_encryptions must be between 1 and 2^32 - 1 ({MAX_ENCRYPTIONS_LIMIT}), got {m}"
        )));
    }
    // Between one second and 100 years: a shorter one rotates in a hot loop, a longer one
    // overflows timestamp arithmetic when the next rotation is computed (22008, for every
    // keyring's scheduled rotation and for the keyrings view).
    let sane = match rotation_interval {
        None => true,
        Some(i) => Spi::get_one_with_args::<bool>(
            "SELECT $1 OPERATOR(pg_catalog.>=) interval '1 second' AND $1 OPERATOR(pg_catalog.<=) interval '100 years'",
            &[i.into()],
        )?
        .unwrap_or(false),
    };
    if !sane {
        return Err(KeysError::InvalidArgument(
            "rotation_interval must be between 1 second and 100 years (or NULL for manual rotation only)".into(),
        ));
    }
    // A policy is set on a keyring that exists; it never creates one.
    lock_order::keyring(keyring, Row::Existing)?;
    let shown = Spi::get_one_with_args::<String>(
        "UPDATE meshhook_keys.keyring
            SET rotation_interval = $2, max_encryptions = $3,
                failed_attempts = 0, next_attempt_at = NULL, last_error = NULL
          WHERE name OPERATOR(pg_catalog.=) $1
      RETURNING coalesce(rotation_interval::text, 'manual')",
        &[
            keyring.into(),
            rotation_interval.into(),
            max_encryptions.into(),
        ],
    )?;
    audit::record(
        "set_policy",
        Some(keyring),
        None,
        None,
        None,
        serde_json::json!({
            "rotation_interval": shown,
            "max_encryptions": max_encryptions,
        }),
    )
}

/// Create a keyring, optionally bound to a tenant (1 to 200 characters), with its version 1.
/// Refused for a name in the user-held namespace, a keyring that exists (42710), and when no root
/// key is loaded. Audited.
pub fn create(keyring: &str, tenant: Option<&str>, reason: Option<&str>) -> KResult<NewKey> {
    crate::userheld::check_namespace(keyring, false)?;
    if tenant.is_some_and(|t| t.is_empty() || t.len() > 200) {
        return Err(KeysError::InvalidArgument(
            "tenant must be 1 to 200 characters (or NULL for no tenant)".into(),
        ));
    }
    rootkey::current()?;
    lock_order::keyring(
        keyring,
        Row::New(&|| store::create_keyring(keyring, tenant)),
    )?;
    create_version(keyring, reason, "keyring_create")
}

/// Crypto-shred a keyring: destroy every version's key material so that nothing it ever encrypted
/// can be decrypted again, and refuse any further use of the name. Audited; returns the versions
/// destroyed.
pub fn destroy(keyring: &str, reason: Option<&str>) -> KResult<i32> {
    lock_order::keyring(keyring, Row::Existing)?;
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
}

/// Free the name of a destroyed keyring: delete its tombstone rows, registrations and
/// re-encryption history. Refused for a keyring that was not destroyed. Audited; returns the
/// versions deleted.
pub fn reclaim(keyring: &str, reason: Option<&str>) -> KResult<i32> {
    lock_order::keyring(keyring, Row::Existing)?;
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
}

/// Rewrap every data key wrapped by the previous root key under the current one, in the caller's
/// transaction, touching no user rows. Keys already under the current root key are counted and
/// left alone; a key under neither aborts the whole rewrap (28000). Each unwrapped key is zeroized
/// as soon as it is rewrapped. Audited (fingerprints only). Returns (rewrapped, already current).
pub fn rewrap_root() -> KResult<(i64, i64)> {
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
        let legacy_ok = crypto::is_legacy_wrap(wrapped) && store::legacy_wrap_allowed(&row)?;
        let dek =
            crypto::unwrap_key(&prev.key, &row.binding(), wrapped, legacy_ok).map_err(|_| {
                KeysError::WrappedKeyCorrupted {
                    keyring: row.keyring.clone(),
                    version: row.version,
                }
            })?;
        let rewrapped = store::wrap_for_schema(&cur.key, &row.binding(), &dek)?;
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
}

/// Rewrap every root-wrapped data key still in the format before 0.5.0 (bound to its key id only)
/// in the format that binds it to its keyring, version and tenant. Run once by the 0.4.0 -> 0.5.0
/// upgrade script, in its transaction; needs the root key only when there is something to rewrap.
/// Each unwrapped key is zeroized as soon as it is rewrapped. Returns how many were rewrapped.
pub fn bind_legacy_wraps() -> KResult<i64> {
    let rows: Vec<store::KeyRow> = store::wrapped_keys_for_update()?
        .into_iter()
        .filter(|r| r.wrapped_key.as_deref().is_some_and(crypto::is_legacy_wrap))
        .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let root = rootkey::current()?;
    let mut done = 0i64;
    for row in rows {
        let Some(wrapped) = row.wrapped_key.as_deref() else {
            continue;
        };
        rootkey::check_wraps(&root, &row)?;
        let dek = crypto::unwrap_key(&root.key, &row.binding(), wrapped, true).map_err(|_| {
            KeysError::WrappedKeyCorrupted {
                keyring: row.keyring.clone(),
                version: row.version,
            }
        })?;
        let rewrapped = crypto::wrap_key(&root.key, &row.binding(), &dek);
        drop(dek);
        store::set_wrapped_key(row.key_id, &rewrapped, &root.fingerprint)?;
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod unit {
    use super::{validate_keyring, validate_keyring_bytes};
    use crate::error::KeysError;

    #[test]
    fn keyring_names_from_bytes_as_from_str() {
        let long = "k".repeat(63);
        for ok in ["default", "a", "0.b:c-d_E", long.as_str()] {
            assert_eq!(validate_keyring_bytes(Some(ok.as_bytes())).ok(), Some(ok));
            assert_eq!(validate_keyring(Some(ok)).ok(), Some(ok));
        }
        let too_long = "k".repeat(64);
        for bad in [
            &b""[..],
            too_long.as_bytes(),
            b"_x",
            b"-x",
            b"a b",
            b"a/b",
            "k\u{e9}".as_bytes(),
            b"a\xff",
            b"a\0",
        ] {
            assert!(matches!(
                validate_keyring_bytes(Some(bad)),
                Err(KeysError::InvalidKeyringName(_))
            ));
        }
        assert!(matches!(
            validate_keyring_bytes(None),
            Err(KeysError::NullArgument("keyring"))
        ));
    }
}
