//! Keyrings: names, versions, rotation and the `default` keyring's first use. Layer 3: called by
//! the SQL surface (`api`), the scheduler and the encrypt path; calls the store, the root key and
//! the audit log, never the SQL surface.

use crate::audit;
use crate::crypto::{self, SecretKey};
use crate::error::{KeysError, Result as KResult};
use crate::rootkey;
use crate::store;
use pgrx::datum::TimestampWithTimeZone;

pub const DEFAULT_KEYRING: &str = "default";

/// Keyring names: 1–63 characters from `A-Z a-z 0-9 _ . : -`, starting with a letter or digit.
pub fn validate_keyring(name: Option<&str>) -> KResult<&str> {
    let name = name.ok_or(KeysError::NullArgument("keyring"))?;
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(name)
    } else {
        Err(KeysError::InvalidKeyringName(
            "use 1 to 63 characters from A-Z, a-z, 0-9, '_', '.', ':' and '-', starting with a letter or digit".into(),
        ))
    }
}

pub struct NewKey {
    pub keyring: String,
    pub version: i32,
    pub key_id: i64,
    pub activated_at: TimestampWithTimeZone,
}

/// Generate a data key, wrap it under the root key, make it the keyring's active version (the
/// previous one becomes `decrypt_only`) and audit it. O(1): touches no user data.
/// The caller must hold the audit chain lock and then the keyring lock, in that order.
pub(crate) fn create_version(keyring: &str, reason: Option<&str>, action: &str) -> KResult<NewKey> {
    let root = rootkey::current()?;
    // One database, one root key: never add a key under a root key that wraps none of the others.
    if let Err(keys) = store::root_key_wraps_database(&root.fingerprint)? {
        return Err(KeysError::RootKeyForeign {
            loaded: rootkey::fingerprint_hex(&root.fingerprint),
            keys,
        });
    }
    let previous = store::demote_active(keyring)?;
    let version = store::next_version(keyring)?;
    let key_id = crypto::random_key_id();
    let dek = SecretKey::generate();
    let wrapped = crypto::wrap_key(&root.key, key_id, &dek);
    drop(dek);
    let activated_at =
        store::insert_active_key(keyring, version, key_id, &wrapped, &root.fingerprint)?;
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
    audit::lock_chain()?;
    store::lock_keyring(keyring)?;
    refuse_destroyed(keyring)?;
    if let Some((true, _)) = store::user_held_kdf(keyring)? {
        return Err(KeysError::WrongKeyringKind(format!(
            "keyring \"{keyring}\" is user-held: its keys change only with its secret, through keyring_rotate_secret(keyring, old_secret, new_secret, reencrypt => true)"
        )));
    }
    create_version(keyring, reason, "rotate")
}

/// A destroyed keyring stays destroyed: no new version can make its name usable again.
pub fn refuse_destroyed(keyring: &str) -> KResult<()> {
    if store::keyring_destroyed_at(keyring)?.is_some() {
        return Err(KeysError::KeyringDestroyed(keyring.into()));
    }
    Ok(())
}

/// First use of the `default` keyring: create version 1 unless a concurrent session just did.
pub fn ensure_default_keyring() -> KResult<()> {
    rootkey::current()?;
    audit::lock_chain()?;
    store::lock_keyring(DEFAULT_KEYRING)?;
    if store::active_key(DEFAULT_KEYRING)?.is_none() {
        create_version(
            DEFAULT_KEYRING,
            Some("created on first use by secret_encrypt"),
            "create",
        )?;
    }
    Ok(())
}
