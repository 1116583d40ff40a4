//! User-held keyrings: keys wrapped by the user's secret (Argon2id), unlocked per session.
//! Secrets are arguments: pass them as bind parameters (see the README, "Avoiding secret logging").

use crate::error::{KeysError, OrRaise};
use crate::keyring::validate_keyring;
use crate::session_keys::Scope;
use crate::userheld;
use pgrx::prelude::*;

/// Create a user-held keyring: its data keys are wrapped by a key derived from `secret` with
/// Argon2id, never by the root key. The keyring is left unlocked in this session. Requires
/// meshhook_keys_user.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_create_user_held(
    keyring: Option<&str>,
    secret: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(keyring, String),
        name!(version, i32),
        name!(key_id, i64),
    ),
> {
    let (keyring, version, key_id) = (|| {
        let keyring = validate_keyring(keyring)?;
        let (v, k) = userheld::create(keyring, secret)?;
        Ok::<_, KeysError>((keyring.to_string(), v, k))
    })()
    .or_raise();
    TableIterator::once((keyring, version, key_id))
}

/// Unlock a user-held keyring with its secret, for the caller's role (and JWT `sub`) only: for the
/// session (`scope => 'session'`, from when this transaction commits) or for the current
/// transaction only (`scope => 'transaction'`, the way behind a connection pooler). Returns the
/// versions unlocked. A wrong secret costs the full Argon2id derivation, is refused (28P01) and
/// audited. Requires meshhook_keys_user; also requires the keyring's secret.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_unlock(
    keyring: Option<&str>,
    secret: Option<&str>,
    scope: default!(Option<&str>, "'session'"),
) -> i32 {
    (|| {
        let scope = Scope::parse(scope).ok_or_else(|| {
            KeysError::InvalidArgument("scope must be 'session' or 'transaction'".into())
        })?;
        userheld::unlock(validate_keyring(keyring)?, secret, scope)
    })()
    .or_raise()
}

/// Forget (and zeroize) a user-held keyring's keys in this session. True if it was unlocked.
/// Requires meshhook_keys_user.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_lock(keyring: Option<&str>) -> bool {
    (|| Ok::<_, KeysError>(crate::session_keys::lock(validate_keyring(keyring)?)))().or_raise()
}

/// Change a user-held keyring's secret: every version is rewrapped under the new secret (O(1),
/// atomic). With `reencrypt => true` a new data key is also created and every registered row of the
/// keyring re-encrypted with it, in the same transaction. Requires meshhook_keys_user; also
/// requires the keyring's current secret.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_rotate_secret(
    keyring: Option<&str>,
    old_secret: Option<&str>,
    new_secret: Option<&str>,
    reencrypt: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (
        name!(versions_rewrapped, i32),
        name!(new_version, Option<i32>),
        name!(rows_reencrypted, i64),
    ),
> {
    let r = (|| {
        crate::reencrypt::rotate_user_held_secret(
            validate_keyring(keyring)?,
            old_secret,
            new_secret,
            reencrypt.unwrap_or(false),
        )
    })()
    .or_raise();
    TableIterator::once((r.rewrapped, r.new_version, r.rows_reencrypted))
}
