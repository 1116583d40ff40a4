//! User-held keyrings: data keys wrapped by a key derived from the user's secret (Argon2id), not
//! by the root key. The server stores the Argon2id parameters and salt, and the wrapped keys; never
//! the secret, nor anything that checks a guess faster than a full Argon2id derivation plus an
//! AES-GCM unwrap.
//!
//! `keyring_unlock` holds the unwrapped keys in this backend's memory, bound to the identity that
//! unlocked them and following the transaction (see [`crate::session_keys`]); they are never
//! written anywhere. Encrypting or decrypting with a locked user-held keyring (or one unlocked by
//! someone else) is a clear error (55000). The scheduler never touches user-held keyrings.

use crate::audit;
use crate::crypto::{self, KdfParams, SecretKey};
use crate::error::{KeysError, Result};
use crate::keycache::{self, CachedKey};
use crate::lock_order::{self, Row};
use crate::session_keys::{self, Scope};
use crate::store::{self, KeyRow};
use pgrx::pg_sys;
use std::collections::HashMap;
use std::rc::Rc;
use zeroize::Zeroizing;

/// User-held keyrings live under this prefix, and only they may: a user can never take a name an
/// administrator will need (`default`, a tenant's `project:p3`), nor an administrator a user's.
pub const USER_HELD_PREFIX: &str = "user:";

/// Refuse a name for a keyring of the wrong kind: `user:` names are user-held, all others not.
pub fn check_namespace(keyring: &str, user_held: bool) -> Result<()> {
    match (keyring.starts_with(USER_HELD_PREFIX), user_held) {
        (true, false) => Err(KeysError::InvalidKeyringName(format!(
            "keyring names beginning with \"{USER_HELD_PREFIX}\" are reserved for user-held keyrings"
        ))),
        (false, true) => Err(KeysError::InvalidKeyringName(format!(
            "user-held keyring names must begin with \"{USER_HELD_PREFIX}\" (so that they never collide with administrators' keyrings)"
        ))),
        _ => Ok(()),
    }
}

/// A user-held keyring is its creator's: its name is `user:<principal>` or begins with
/// `user:<principal>:`, where the principal is the request's JWT `sub` (PostgREST, Supabase), or
/// the creator's role name without one. So nobody can take a name meant for someone else. Returns
/// the principal (to count its keyrings), or `None` for a superuser, who may create any name.
fn check_owner(keyring: &str) -> Result<Option<String>> {
    let role = crate::context::caller()
        .role()
        .ok_or(KeysError::CallerUnknown("keyring_create_user_held"))?;
    // SAFETY: catalog lookups of the role.
    if unsafe { pg_sys::superuser_arg(role) } {
        return Ok(None);
    }
    let (principal, source_) = match session_keys::jwt_sub() {
        Some(sub) => (sub, "your JWT sub"),
        None => (crate::context::role_name(role), "your role name"),
    };
    let rest = &keyring[USER_HELD_PREFIX.len()..];
    let first = rest.split(':').next().unwrap_or_default();
    if first != principal {
        return Err(KeysError::NotYourKeyringName {
            keyring: keyring.into(),
            principal,
            source_,
        });
    }
    Ok(Some(principal))
}

/// Shortest secret accepted (bytes). Argon2id slows guessing; it cannot make "1234" strong.
const MIN_SECRET_LEN: usize = 8;

fn kdf_json(p: &KdfParams) -> String {
    serde_json::json!({
        "alg": "argon2id", "version": 19,
        "m_cost": p.m_cost, "t_cost": p.t_cost, "p_cost": p.p_cost,
        "salt": hex::encode(p.salt),
    })
    .to_string()
}

fn kdf_parse(keyring: &str, json: Option<&str>) -> Result<KdfParams> {
    let bad = || {
        KeysError::Internal(format!(
            "keyring \"{keyring}\" has invalid Argon2id parameters"
        ))
    };
    let v: serde_json::Value = serde_json::from_str(json.ok_or_else(bad)?).map_err(|_| bad())?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_u64())
            .and_then(|x| u32::try_from(x).ok())
    };
    let mut salt = [0u8; 16];
    hex::decode_to_slice(
        v.get("salt").and_then(|s| s.as_str()).ok_or_else(bad)?,
        &mut salt,
    )
    .map_err(|_| bad())?;
    Ok(KdfParams {
        m_cost: num("m_cost").ok_or_else(bad)?,
        t_cost: num("t_cost").ok_or_else(bad)?,
        p_cost: num("p_cost").ok_or_else(bad)?,
        salt,
    })
}

fn derive(secret: &str, p: &KdfParams) -> Result<SecretKey> {
    crypto::derive_kek(secret.as_bytes(), p)
        .map_err(|_| KeysError::Internal("Argon2id key derivation failed".into()))
}

fn validate_secret<'a>(what: &'static str, secret: Option<&'a str>) -> Result<&'a str> {
    let s = secret.ok_or(KeysError::NullArgument(what))?;
    if s.len() < MIN_SECRET_LEN {
        return Err(KeysError::InvalidArgument(format!(
            "{what} must be at least {MIN_SECRET_LEN} bytes"
        )));
    }
    Ok(s)
}

/// The keyring must exist and be user-held; returns its Argon2id parameters.
fn user_held_params(keyring: &str) -> Result<KdfParams> {
    match store::user_held_kdf(keyring)? {
        None => Err(KeysError::UnknownKeyring(keyring.into())),
        Some((false, _)) => Err(KeysError::WrongKeyringKind(format!(
            "keyring \"{keyring}\" is not user-held: its keys are wrapped by the root key"
        ))),
        Some((true, kdf)) => kdf_parse(keyring, kdf.as_deref()),
    }
}

/// Unwrap every version with `kek`; a wrong secret fails on the first one. Returns the unlocked
/// set and the unwrapped data keys (for rewrapping), which zeroize on drop.
type Opened = (HashMap<i64, Rc<CachedKey>>, Option<i64>);

fn open_all(keyring: &str, rows: &[KeyRow], kek: &SecretKey) -> Result<(Opened, Vec<SecretKey>)> {
    let mut keys = HashMap::new();
    let mut deks = Vec::new();
    let mut active = None;
    for row in rows {
        let Some(wrapped) = row.wrapped_key.as_deref() else {
            continue;
        };
        // (a wrap in the format before 0.5.0 is accepted here: only the user's secret can rewrap
        // it, which the next unlock does)
        let dek = crypto::unwrap_key(kek, &row.binding(), wrapped, true)
            .map_err(|_| KeysError::WrongSecret(keyring.into()))?;
        keys.insert(row.key_id, Rc::new(keycache::from_unwrapped(row, &dek)?));
        if row.state == "active" {
            active = Some(row.key_id);
        }
        deks.push(dek);
    }
    Ok(((keys, active), deks))
}

/// A wrong secret: audited durably (the error rolls this transaction back), then raised.
fn wrong_secret(action: &str, keyring: &str) -> KeysError {
    audit::record_failed_attempt(action, Some(keyring));
    KeysError::WrongSecret(keyring.into())
}

/// Insert a new active version wrapped under `kek`; returns (version, key id, the key).
fn new_version(keyring: &str, kek: &SecretKey) -> Result<(i32, i64, Rc<CachedKey>)> {
    store::demote_active(keyring)?;
    let version = store::next_version(keyring)?;
    let key_id = crypto::random_key_id();
    let dek = SecretKey::generate();
    let wrapped = store::wrap_new_key(kek, keyring, version, key_id, &dek)?;
    // (active at once: only the user's secret can activate a user-held version, so a failover
    // can lose the newest one; see docs/src/high-availability.md)
    store::insert_key(keyring, version, key_id, &wrapped, &kek.fingerprint(), true)?;
    let row = store::key_by_id(key_id)?.ok_or(KeysError::UnknownKeyId(key_id))?;
    Ok((
        version,
        key_id,
        Rc::new(keycache::from_unwrapped(&row, &dek)?),
    ))
}

/// keyring_create_user_held: a new keyring whose version 1 is wrapped under the user's secret;
/// left unlocked in this session.
pub fn create(keyring: &str, secret: Option<&str>) -> Result<(i32, i64)> {
    check_namespace(keyring, true)?;
    let principal = check_owner(keyring)?;
    let secret = Zeroizing::new(validate_secret("secret", secret)?.to_string());
    let params = KdfParams::new_random(crate::gucs::user_held_kdf());
    let kek = derive(&secret, &params)?;
    let kdf = kdf_json(&params);
    lock_order::keyring(
        keyring,
        Row::New(&|| store::create_user_held_keyring(keyring, &kdf)),
    )?;
    if let Some(principal) = principal {
        // (counted under the keyring lock of the new row; two concurrent creations by one user
        // can both pass, which bounds the excess by the user's connections)
        let count = store::read_one::<i64>(
            "SELECT pg_catalog.count(*) FROM meshhook_keys.keyring
              WHERE user_held AND destroyed_at IS NULL
                AND (name OPERATOR(pg_catalog.=) $1
                     OR pg_catalog.starts_with(name, $1 OPERATOR(pg_catalog.||) ':'))",
            &[format!("{USER_HELD_PREFIX}{principal}").into()],
        )?
        .unwrap_or(0);
        if count > crate::gucs::max_user_held_keyrings() {
            return Err(KeysError::TooManyKeyrings {
                principal,
                count: count - 1,
            });
        }
    }
    let (version, key_id, key) = new_version(keyring, &kek)?;
    store::register_secrets_store(keyring)?;
    audit::record(
        "keyring_create",
        Some(keyring),
        Some(version),
        Some(key_id),
        None,
        serde_json::json!({ "user_held": true, "kdf": "argon2id",
                            "m_cost": params.m_cost, "t_cost": params.t_cost, "p_cost": params.p_cost }),
    )?;
    store::notify("keyring_create", keyring, Some(version))?;
    hold(
        keyring,
        HashMap::from([(key_id, key)]),
        Some(key_id),
        kek.fingerprint().to_vec(),
        Scope::Session,
    )?;
    Ok((version, key_id))
}

/// Hold unlocked keys for the caller (see crate::session_keys); refused when the caller cannot be
/// known (a security-restricted operation meshhook_keys did not start).
fn hold(
    keyring: &str,
    keys: HashMap<i64, Rc<CachedKey>>,
    active: Option<i64>,
    kek_fingerprint: Vec<u8>,
    scope: Scope,
) -> Result<()> {
    let u = session_keys::new_unlocked(keys, active, kek_fingerprint, scope)
        .ok_or(KeysError::CallerUnknown("keyring_unlock"))?;
    session_keys::install(keyring, u);
    Ok(())
}

/// Refuse (before any key derivation) an attempt on a keyring that had too many failed attempts
/// in the last minute, counted from the audit log (so across sessions, databases' backends and
/// restarts). The refusal is audited too.
fn throttle(action: &str, keyring: &str) -> Result<()> {
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        // (a standby cannot record a failed attempt, so it could not count them either)
        return Err(KeysError::InvalidArgument(format!(
            "keyring \"{keyring}\" is user-held: it cannot be unlocked on a standby, where failed attempts could not be recorded and limited; unlock it on the primary"
        )));
    }
    let cap = crate::gucs::max_failed_unlocks();
    // (counted as committed now: the audit writer commits each failure in its own transaction,
    // which a REPEATABLE READ caller's snapshot would never show)
    let failures = crate::fresh::select(
        "SELECT pg_catalog.count(*) FROM meshhook_keys.audit_log
          WHERE keyring OPERATOR(pg_catalog.=) $1 AND outcome OPERATOR(pg_catalog.=) 'failed'
            AND action OPERATOR(pg_catalog.=) ANY (ARRAY['unlock', 'rotate_secret', 'keyring_export'])
            AND (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) interval '1 minute') OPERATOR(pg_catalog.<) at",
        &[keyring.into()],
        |r| Ok(r.get::<i64>(1)?.unwrap_or(0)),
    )?
    .into_iter()
    .next()
    .unwrap_or(0);
    if failures >= cap {
        audit::record_throttled_attempt(action, Some(keyring));
        return Err(KeysError::UnlockThrottled {
            keyring: keyring.into(),
            failures,
            cap,
        });
    }
    Ok(())
}

/// Whether this transaction may write (not a standby, not READ ONLY).
fn can_write() -> bool {
    // SAFETY: reads of backend and shared state.
    unsafe { !pg_sys::RecoveryInProgress() && !pg_sys::XactReadOnly }
}

/// keyring_unlock: returns how many versions were unlocked. When the keyring's wrapping is older
/// or weaker than today's (a wrap in the format before 0.5.0, or Argon2id costs below
/// meshhook_keys.user_held_kdf) and the transaction can write, the same secret rewraps every
/// version with today's parameters first (a new salt, so a new key-encryption key).
pub fn unlock(keyring: &str, secret: Option<&str>, scope: Scope) -> Result<i32> {
    let secret = Zeroizing::new(secret.ok_or(KeysError::NullArgument("secret"))?.to_string());
    let params = user_held_params(keyring)?;
    throttle("unlock", keyring)?;
    let kek = derive(&secret, &params)?;
    let rows = store::keyring_keys(keyring, false)?;
    let ((keys, active), deks) = match open_all(keyring, &rows, &kek) {
        Ok(x) => x,
        Err(KeysError::WrongSecret(_)) => return Err(wrong_secret("unlock", keyring)),
        Err(e) => return Err(e),
    };
    if outdated(&params, &rows)? && can_write() {
        drop((keys, deks, kek));
        return upgrade_and_unlock(keyring, &secret, scope);
    }
    let n = keys.len() as i32;
    hold(keyring, keys, active, kek.fingerprint().to_vec(), scope)?;
    Ok(n)
}

/// Whether a keyring's wrapping is older or weaker than today's: Argon2id costs below
/// meshhook_keys.user_held_kdf, or a version wrapped in the format before 0.5.0 on a schema that
/// takes the new one (before ALTER EXTENSION ... UPDATE a rewrap could only write the old one).
fn outdated(params: &KdfParams, rows: &[KeyRow]) -> Result<bool> {
    if params.weaker_than(crate::gucs::user_held_kdf()) {
        return Ok(true);
    }
    let legacy = rows
        .iter()
        .any(|r| r.wrapped_key.as_deref().is_some_and(crypto::is_legacy_wrap));
    Ok(legacy && store::schema_is_current()?)
}

/// Rewrap every version of `keyring` under a key derived from `secret` with today's parameters
/// (under the keyring's lock, the rows re-read and locked), audit it, and unlock.
fn upgrade_and_unlock(keyring: &str, secret: &str, scope: Scope) -> Result<i32> {
    lock_order::keyring(keyring, Row::Existing)?;
    // (another unlock may have rewrapped it while this one waited for the lock: start again from
    // what is stored now, and rewrap only if it is still outdated)
    let params_now = user_held_params(keyring)?;
    let rows = store::keyring_keys(keyring, true)?;
    let kek_old = derive(secret, &params_now)?;
    let ((keys, active), deks) = match open_all(keyring, &rows, &kek_old) {
        Ok(x) => x,
        Err(KeysError::WrongSecret(_)) => return Err(wrong_secret("unlock", keyring)),
        Err(e) => return Err(e),
    };
    if !outdated(&params_now, &rows)? {
        let n = keys.len() as i32;
        hold(keyring, keys, active, kek_old.fingerprint().to_vec(), scope)?;
        return Ok(n);
    }
    drop(kek_old);
    let params = &params_now;
    let new_params = KdfParams::new_random(crate::gucs::user_held_kdf());
    let kek_new = derive(secret, &new_params)?;
    let fingerprint = rewrap_all(keyring, &rows, &deks, &kek_new, &new_params)?;
    drop(deks);
    audit::record(
        "rewrap_user_held",
        Some(keyring),
        None,
        None,
        Some("unlock: wrapping upgraded"),
        serde_json::json!({ "versions": rows.iter().filter(|r| r.wrapped_key.is_some()).count(),
                            "kdf": "argon2id", "m_cost": new_params.m_cost,
                            "t_cost": new_params.t_cost, "p_cost": new_params.p_cost,
                            "from": { "m_cost": params.m_cost, "t_cost": params.t_cost, "p_cost": params.p_cost } }),
    )?;
    let n = keys.len() as i32;
    hold(keyring, keys, active, fingerprint.to_vec(), scope)?;
    Ok(n)
}

/// Write every version with key material wrapped under `kek` (bound, format 2), and the
/// parameters it was derived with; returns its fingerprint.
fn rewrap_all(
    keyring: &str,
    rows: &[KeyRow],
    deks: &[SecretKey],
    kek: &SecretKey,
    params: &KdfParams,
) -> Result<[u8; 8]> {
    let fingerprint = kek.fingerprint();
    let with_material: Vec<&KeyRow> = rows.iter().filter(|r| r.wrapped_key.is_some()).collect();
    for (row, dek) in with_material.iter().zip(deks.iter()) {
        store::set_wrapped_key(
            row.key_id,
            &store::wrap_for_schema(kek, &row.binding(), dek)?,
            &fingerprint,
        )?;
    }
    store::set_kdf(keyring, &kdf_json(params))?;
    Ok(fingerprint)
}

/// What `rewrap` did: the versions rewrapped, and the new version when one was made.
pub struct Rewrapped {
    pub rewrapped: i32,
    pub new_version: Option<i32>,
}

/// The first half of keyring_rotate_secret: rewrap every version under a key derived from the new
/// secret (O(1) in the data), and with `new_key` also make a new data key, active at once; the
/// keys are left unlocked in this session. The keyring stays locked (row lock, audit chain) until
/// the transaction ends, so the caller can re-encrypt its rows (layer 4, which also writes the
/// `rotate_secret` audit row) before anyone else changes it.
pub fn rewrap(
    keyring: &str,
    old: Option<&str>,
    new: Option<&str>,
    new_key: bool,
) -> Result<Rewrapped> {
    let old = Zeroizing::new(
        old.ok_or(KeysError::NullArgument("old_secret"))?
            .to_string(),
    );
    let new = Zeroizing::new(validate_secret("new_secret", new)?.to_string());
    if old.as_bytes() == new.as_bytes() {
        return Err(KeysError::InvalidArgument(
            "new_secret must differ from old_secret".into(),
        ));
    }
    let params = user_held_params(keyring)?;
    throttle("rotate_secret", keyring)?;
    lock_order::keyring(keyring, Row::CreateIfMissing)?;
    let rows = store::keyring_keys(keyring, true)?;
    let kek_old = derive(&old, &params)?;
    let ((mut keys, mut active), deks) = match open_all(keyring, &rows, &kek_old) {
        Ok(x) => x,
        Err(KeysError::WrongSecret(_)) => return Err(wrong_secret("rotate_secret", keyring)),
        Err(e) => return Err(e),
    };
    drop(kek_old);
    let new_params = KdfParams::new_random(crate::gucs::user_held_kdf());
    let kek_new = derive(&new, &new_params)?;
    let fingerprint = rewrap_all(keyring, &rows, &deks, &kek_new, &new_params)?;
    let rewrapped = deks.len() as i32;
    drop(deks);

    let mut new_version_no = None;
    if new_key {
        let (version, key_id, key) = new_version(keyring, &kek_new)?;
        keys.insert(key_id, key);
        active = Some(key_id);
        new_version_no = Some(version);
        audit::record(
            "rotate",
            Some(keyring),
            Some(version),
            Some(key_id),
            Some("keyring_rotate_secret with reencrypt"),
            serde_json::json!({ "user_held": true }),
        )?;
        store::notify("rotate", keyring, Some(version))?;
    }
    hold(keyring, keys, active, fingerprint.to_vec(), Scope::Session)?;
    Ok(Rewrapped {
        rewrapped,
        new_version: new_version_no,
    })
}

/// keyring_export of a user-held keyring: every version with key material, unwrapped with the
/// user's secret (throttled and audited like an unlock: a wrong secret is a failed attempt).
pub fn keys_for_export(keyring: &str, secret: Option<&str>) -> Result<Vec<(KeyRow, SecretKey)>> {
    let params = user_held_params(keyring)?;
    let secret = Zeroizing::new(
        secret
            .ok_or_else(|| {
                KeysError::WrongKeyringKind(format!(
                    "keyring \"{keyring}\" is user-held: its keys are exported only with its secret (keyring_export(..., secret => ...))"
                ))
            })?
            .to_string(),
    );
    throttle("keyring_export", keyring)?;
    let kek = derive(&secret, &params)?;
    let rows = store::keyring_keys(keyring, true)?;
    let (_, deks) = match open_all(keyring, &rows, &kek) {
        Ok(opened) => opened,
        Err(KeysError::WrongSecret(_)) => return Err(wrong_secret("keyring_export", keyring)),
        Err(e) => return Err(e),
    };
    Ok(rows.into_iter().zip(deks).collect())
}

/// keyring_import of a user-held keyring: a key-encryption key derived from `secret` with new
/// Argon2id parameters (returned as the keyring's `kdf`), after the checks keyring_create_user_held
/// makes of the name and the secret.
pub fn kek_for_import(keyring: &str, secret: Option<&str>) -> Result<(SecretKey, String)> {
    check_namespace(keyring, true)?;
    check_owner(keyring)?;
    let secret = Zeroizing::new(validate_secret("secret", secret)?.to_string());
    let params = KdfParams::new_random(crate::gucs::user_held_kdf());
    Ok((derive(&secret, &params)?, kdf_json(&params)))
}
