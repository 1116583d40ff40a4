//! Signatures under a keyring's versions (issue 28): `hmac_sign` / `hmac_verify`, the webhook
//! header (`webhook_sign` / `webhook_verify`) and a webhook receiver's secret. The keys are the
//! versions' MAC keys (crate::mac), so a signing key is a data key's: created by `keys_rotate`,
//! rotated by the keyring's policy, used only by callers the tenant check lets use the keyring,
//! opened only while a user-held keyring is unlocked, and gone when the version is retired or
//! destroyed. Layer 4: called by the SQL surface; calls the envelope (for the active key), the
//! resolver and the store.
//!
//! Which versions do what:
//! - `hmac_sign` signs with the active version; `webhook_sign` with the active version and every
//!   decrypt-only one, newest first, so that a receiver that still holds the previous secret keeps
//!   verifying until that version is retired.
//! - Verification accepts every version that still decrypts (pending, active, decrypt-only): a
//!   retired or destroyed version's signatures no longer verify.
//! - Signatures are not counted against the keyring's encryption limit: HMAC uses no nonce.

use crate::datakey::{CachedKey, KeyState};
use crate::envelope::active_key_for;
use crate::error::{KeysError, Result};
use crate::keyring::validate_keyring;
use crate::mac;
use std::rc::Rc;

/// One version of a keyring as committed now.
struct Version {
    key_id: i64,
    version: i32,
    state: KeyState,
    has_material: bool,
}

/// Every version of `keyring`, newest first, after the tenant check; 42704 for a keyring that
/// does not exist, 55000 for a destroyed one.
fn versions(keyring: &str, op: &'static str) -> Result<Vec<Version>> {
    let rows = crate::store::with_fixed_search_path(|| {
        crate::fresh::select(
            "SELECT kr.tenant, kr.destroyed_at IS NOT NULL, d.key_id, d.version, d.state, d.wrapped_key IS NOT NULL
               FROM meshhook_keys.keyring kr
               LEFT JOIN meshhook_keys.data_key d ON d.keyring OPERATOR(pg_catalog.=) kr.name
              WHERE kr.name OPERATOR(pg_catalog.=) $1
              ORDER BY d.version DESC",
            &[keyring.into()],
            |r| {
                Ok((
                    r.get::<String>(1)?,
                    r.get::<bool>(2)?.unwrap_or(false),
                    r.get::<i64>(3)?,
                    r.get::<i32>(4)?,
                    r.get::<String>(5)?,
                    r.get::<bool>(6)?.unwrap_or(false),
                ))
            },
        )
    })?;
    let Some((tenant, destroyed, ..)) = rows.first() else {
        return Err(KeysError::UnknownKeyring(keyring.into()));
    };
    crate::tenancy::check_keyring(keyring, tenant.as_deref(), op)?;
    if *destroyed {
        return Err(KeysError::KeyringDestroyed(keyring.into()));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (_, _, key_id, version, state, has_material) in rows {
        if let (Some(key_id), Some(version), Some(state)) = (key_id, version, state) {
            out.push(Version {
                key_id,
                version,
                state: KeyState::parse(&state)?,
                has_material,
            });
        }
    }
    Ok(out)
}

fn still_verifies(v: &Version) -> bool {
    v.has_material
        && matches!(
            v.state,
            KeyState::Pending | KeyState::Active | KeyState::DecryptOnly
        )
}

/// The unwrapped key of a version (a user-held keyring's only while unlocked: 55000 otherwise).
fn key(v: &Version, op: &'static str) -> Result<Rc<CachedKey>> {
    let key = crate::resolver::key_for_decrypt(v.key_id)?;
    crate::tenancy::check(&key, op)?;
    Ok(key)
}

/// The versions whose signatures verify, newest first, unwrapped.
pub(crate) fn verifying_keys(keyring: &str, op: &'static str) -> Result<Vec<Rc<CachedKey>>> {
    versions(keyring, op)?
        .iter()
        .filter(|v| still_verifies(v))
        .map(|v| key(v, op))
        .collect()
}

fn args<'a>(
    payload: Option<&'a [u8]>,
    keyring: Option<&'a str>,
    context: Option<&'a str>,
) -> Result<(&'a [u8], &'a str, &'a [u8])> {
    let payload = payload.ok_or(KeysError::NullArgument("payload"))?;
    let keyring = validate_keyring(keyring)?;
    let context = context.ok_or(KeysError::NullArgument("context"))?;
    Ok((payload, keyring, context.as_bytes()))
}

/// `meshhook:v<version>:<hex>`: the MAC of `payload` under the active version of `keyring`
/// (created on first use for `default`, as by secret_encrypt), bound to `context`.
pub fn sign(
    payload: Option<&[u8]>,
    keyring: Option<&str>,
    context: Option<&str>,
) -> Result<String> {
    let (payload, keyring, context) = args(payload, keyring, context)?;
    let key = active_key_for(keyring, "signing")?;
    Ok(mac::format_signature(
        key.version,
        &key.mac.sign(context, payload),
    ))
}

/// Whether `signature` is `hmac_sign`'s for `payload` and `context` under a version of `keyring`
/// that still verifies. A malformed signature, one of another keyring's version, or of a retired
/// or destroyed version is false; the keyring itself must exist and be the caller's to use.
pub fn verify(
    payload: Option<&[u8]>,
    signature: Option<&str>,
    keyring: Option<&str>,
    context: Option<&str>,
) -> Result<bool> {
    let (payload, keyring, context) = args(payload, keyring, context)?;
    let signature = signature.ok_or(KeysError::NullArgument("signature"))?;
    let candidates = versions(keyring, "verification")?;
    let Some((version, given)) = mac::parse_signature(signature) else {
        return Ok(false);
    };
    let Some(v) = candidates
        .iter()
        .find(|v| v.version == version && still_verifies(v))
    else {
        return Ok(false);
    };
    let key = key(v, "verification")?;
    Ok(mac::mac_eq(&key.mac.sign(context, payload), &given))
}

/// Unix seconds of a `timestamptz` value (microseconds since 2000-01-01); 22008 for infinity.
pub fn unix_seconds(micros_since_2000: i64) -> Result<i64> {
    if micros_since_2000 == i64::MAX || micros_since_2000 == i64::MIN {
        return Err(KeysError::InvalidArgument(
            "a webhook timestamp must be finite".into(),
        ));
    }
    Ok(micros_since_2000.div_euclid(1_000_000) + 946_684_800)
}

/// The webhook header `t=<unix>,v1=<hex>...` for `payload` sent at `at` (unix seconds): one `v1`
/// per version that signs (the active one, then the decrypt-only ones, newest first), at most
/// [`mac::MAX_HEADER_SIGNATURES`] (about 2 KiB).
pub fn webhook_sign(
    payload: Option<&[u8]>,
    keyring: Option<&str>,
    context: Option<&str>,
    at: i64,
) -> Result<String> {
    let (payload, keyring, context) = args(payload, keyring, context)?;
    if at < 0 {
        return Err(KeysError::InvalidArgument(
            "a webhook timestamp must not be before 1970".into(),
        ));
    }
    let active = active_key_for(keyring, "signing")?;
    let mut macs = vec![active.mac.webhook_signature(context, at, payload)];
    // (newest first, and no more than a receiver reads: webhook_verify refuses a header with more)
    for v in versions(keyring, "signing")? {
        if macs.len() == mac::MAX_HEADER_SIGNATURES {
            break;
        }
        if v.state == KeyState::DecryptOnly && v.has_material {
            let key = key(&v, "signing")?;
            macs.push(key.mac.webhook_signature(context, at, payload));
        }
    }
    Ok(mac::format_header(at, &macs))
}

/// Whether `header` carries a `v1` signature of `payload` under a version of `keyring` that still
/// verifies, with a timestamp within `tolerance_secs` of `now` (either side). A malformed header
/// is false.
pub fn webhook_verify(
    payload: Option<&[u8]>,
    header: Option<&str>,
    keyring: Option<&str>,
    context: Option<&str>,
    tolerance_secs: i64,
    now: i64,
) -> Result<bool> {
    let (payload, keyring, context) = args(payload, keyring, context)?;
    let header = header.ok_or(KeysError::NullArgument("header"))?;
    if tolerance_secs < 0 {
        return Err(KeysError::InvalidArgument(
            "tolerance must not be negative".into(),
        ));
    }
    let keys = verifying_keys(keyring, "verification")?;
    let Some((t, given)) = mac::parse_header(header) else {
        return Ok(false);
    };
    if (i128::from(now) - i128::from(t)).abs() > i128::from(tolerance_secs) {
        return Ok(false);
    }
    let mut ok = false;
    for key in &keys {
        let expected = key.mac.webhook_signature(context, t, payload);
        // (every pair is compared: the time taken does not say which one matched)
        for g in &given {
            ok |= mac::mac_eq(&expected, g);
        }
    }
    Ok(ok)
}

/// The secret a webhook receiver of `context` holds for `version` of `keyring` (the active one by
/// default), for an administrator to hand over; audited. The version must still sign: active or
/// decrypt-only.
pub fn webhook_secret(
    keyring: Option<&str>,
    context: Option<&str>,
    version: Option<i32>,
) -> Result<zeroize::Zeroizing<String>> {
    let keyring = validate_keyring(keyring)?;
    let context = context.ok_or(KeysError::NullArgument("context"))?;
    crate::audit::require_admin("webhook_secret", Some(keyring))?;
    let all = versions(keyring, "signing")?;
    let v = match version {
        None => all
            .iter()
            .find(|v| v.state == KeyState::Active)
            .ok_or_else(|| KeysError::NoActiveKey(keyring.into()))?,
        Some(n) => {
            all.iter()
                .find(|v| v.version == n)
                .ok_or_else(|| KeysError::UnknownKeyVersion {
                    keyring: keyring.into(),
                    version: n,
                })?
        }
    };
    if !(v.has_material && matches!(v.state, KeyState::Active | KeyState::DecryptOnly)) {
        return Err(KeysError::KeyNotUsable {
            keyring: keyring.into(),
            version: v.version,
            state: v.state.name().into(),
            op: "sign",
        });
    }
    let key = key(v, "signing")?;
    // (durably, in a transaction of its own: rolling the caller's back keeps the secret it got)
    crate::audit::record_disclosure("webhook_secret", keyring, v.version, context);
    Ok(key.mac.webhook_secret(context.as_bytes()))
}
