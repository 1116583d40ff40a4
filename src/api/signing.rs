//! The SQL surface of signatures: hmac_sign, hmac_verify, webhook_sign, webhook_verify and
//! webhook_secret. The work is in crate::signing.

use super::plain::PlainText;
use crate::error::{KeysError, OrRaise, Result as KResult};
use crate::signing;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

/// Sign `payload` under the active version of `keyring`, bound to `context`: `meshhook:v<n>:<hex>`
/// (HMAC-SHA256). Requires meshhook_keys_user; tenant-bound and user-held keyrings as for
/// secret_encrypt.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn hmac_sign(
    payload: Option<&[u8]>,
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
) -> String {
    signing::sign(payload, keyring, context).or_raise()
}

/// Whether `signature` (from hmac_sign) signs `payload` with `context` under a version of
/// `keyring` that is not retired or destroyed. Requires meshhook_keys_user; tenant-bound and
/// user-held keyrings as for secret_decrypt.
#[pg_extern(security_definer, stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn hmac_verify(
    payload: Option<&[u8]>,
    signature: Option<&str>,
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
) -> bool {
    signing::verify(payload, signature, keyring, context).or_raise()
}

fn unix(at: Option<TimestampWithTimeZone>) -> KResult<i64> {
    let at = at.ok_or(KeysError::NullArgument("at"))?;
    signing::unix_seconds(at.into_inner())
}

/// The webhook signature header `t=<unix>,v1=<hex>[,v1=<hex>...]` for `payload` sent at `at`:
/// HMAC-SHA256 over `<unix>.<payload>` keyed by each signing version's receiver secret for
/// `context` (the active version, then every decrypt-only one). Requires meshhook_keys_user;
/// tenant-bound and user-held keyrings as for secret_encrypt.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn webhook_sign(
    payload: Option<&[u8]>,
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> String {
    (|| signing::webhook_sign(payload, keyring, context, unix(at)?))().or_raise()
}

/// Whether the webhook header carries a valid `v1` signature of `payload` under a version of
/// `keyring` that is not retired or destroyed, with a timestamp within `tolerance` of `at`.
/// Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.
#[pg_extern(security_definer, stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn webhook_verify(
    payload: Option<&[u8]>,
    header: Option<&str>,
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
    tolerance: default!(Option<Interval>, "'5 minutes'"),
    at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> bool {
    (|| {
        let tolerance = tolerance.ok_or(KeysError::NullArgument("tolerance"))?;
        let secs = i64::try_from(tolerance.as_micros().div_euclid(1_000_000))
            .map_err(|_| KeysError::InvalidArgument("tolerance is too large".into()))?;
        signing::webhook_verify(payload, header, keyring, context, secs, unix(at)?)
    })()
    .or_raise()
}

/// The secret (`whsec_...`) a webhook receiver of `context` verifies with, for `version` (the
/// active one by default) of `keyring`. Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn webhook_secret(
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
    version: default!(Option<i32>, "NULL"),
) -> PlainText {
    let mut s = signing::webhook_secret(keyring, context, version).or_raise();
    PlainText(zeroize::Zeroizing::new(
        std::mem::take(&mut *s).into_bytes(),
    ))
}
