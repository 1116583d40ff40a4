//! The one answer to "which key?": the key a ciphertext names (for decryption) and a keyring's
//! active key (for encryption), from either source of keys.
//!
//! A keyring's keys come from exactly one of two places. User-held keys are in `session_keys`, for
//! the role (and JWT `sub`) that unlocked them, and only there. Root-wrapped keys are unwrapped on
//! demand and kept in `keycache`. Every caller that needs a key (the envelope, re-encryption,
//! `verify`) asks here, never either source directly, so the precedence (this session's unlocked
//! keys first) and the invalidation (a change to `data_key` by any backend reaches both) are
//! decided once.
//!
//! Invariants: a key id belongs to one keyring, and a keyring is user-held or not for its whole
//! life, so the two sources never hold the same key id and the order of lookup changes no answer,
//! only the cost (the session's map is a few entries; the cache may hold thousands).

use crate::error::{KeysError, Result};
use crate::keycache::{self, CachedKey, KeyState};
use crate::session_keys;
use pgrx::prelude::*;
use std::rc::Rc;

/// Take in the changes other backends committed (a rotation, a retirement, a destroy): the
/// invalidation callback below then resets both key sources before they answer. Cheap when nothing
/// is pending.
fn accept_invalidations() {
    // SAFETY: called inside a transaction from SQL-callable code.
    unsafe { pg_sys::AcceptInvalidationMessages() };
}

/// The key a ciphertext names, for decryption. Retired and destroyed keys are refused, from either
/// source; a locked user-held keyring is 55000 (see `keycache::by_id`).
pub fn key_for_decrypt(key_id: i64) -> Result<Rc<CachedKey>> {
    accept_invalidations();
    match session_keys::key(key_id) {
        Some(k) if matches!(k.state, KeyState::Retired | KeyState::Destroyed) => {
            crate::tenancy::check(&k, "decryption")?;
            Err(KeysError::KeyNotUsable {
                keyring: k.keyring.clone(),
                version: k.version,
                state: k.state.name().into(),
                op: "decrypt",
            })
        }
        Some(k) => Ok(k),
        None => keycache::by_id(key_id),
    }
}

/// The active key of a keyring, for encryption. `None` when the keyring has no active key.
pub fn active_key(keyring: &str) -> Result<Option<Rc<CachedKey>>> {
    accept_invalidations();
    match session_keys::active(keyring) {
        Some(k) => Ok(Some(k)),
        None => keycache::active(keyring),
    }
}

/// Relcache invalidation callback, registered in `_PG_init`: a change to `meshhook_keys.data_key`
/// (or a full reset) empties the cache and makes the session's unlocked keys be checked again.
/// Must not touch the catalogs.
#[pg_guard]
extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || keycache::is_data_key_relation(relid) {
        keycache::flush();
        session_keys::invalidate();
    }
}

pub fn register_invalidation_callback() {
    // SAFETY: called once per backend from _PG_init; the callback is a plain function.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0usize))
    };
}
