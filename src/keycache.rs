//! Per-backend cache of unwrapped data keys.
//!
//! A warm decrypt or encrypt does no SPI and no unwrap: it looks the key id (or the keyring's active
//! key id) up in a hash map. Any change to `meshhook_keys.data_key` (a statement trigger calls
//! `CacheInvalidateRelcacheByRelid`) reaches every backend as a relcache invalidation and empties the
//! cache; each call first accepts pending invalidations (in the resolver), so a rotation committed by
//! another session is seen by this session's very next call, even inside a long transaction, and a
//! key is reloaded as committed now (`crate::fresh`), never through the caller's older snapshot. Evicted and flushed keys are
//! zeroized (the AES key schedule is wiped on drop by the `zeroize` feature of `aes`).

use crate::crypto::{self, SecretKey};
use crate::error::{KeysError, Result};
use crate::gucs;
use crate::rootkey;
use crate::store::{self, KeyRow};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub use crate::datakey::{CachedKey, KeyState};

#[derive(Default)]
struct Cache {
    by_id: crate::datakey::KeyIdMap<Rc<CachedKey>>,
    active: HashMap<String, i64>,
    /// The active key last looked up by keyring name: a run of encryptions under one keyring
    /// compares the name instead of hashing it. Cleared whenever `active` or `by_id` lose a key.
    last_active: Option<Rc<CachedKey>>,
    clock: u64,
    hits: u64,
    misses: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// OID of meshhook_keys.data_key, learnt from the rows we load; 0 until then.
    static DATA_KEY_RELID: Cell<u32> = const { Cell::new(0) };
}

/// Whether `relid` is `meshhook_keys.data_key` (known once a key row was loaded). For the
/// invalidation callback: reads a backend-local value only, never the catalogs.
pub fn is_data_key_relation(relid: pg_sys::Oid) -> bool {
    let ours = DATA_KEY_RELID.get();
    ours != 0 && relid.to_u32() == ours
}

/// Drop every cached key (each is zeroized as it is dropped).
pub fn flush() {
    CACHE.with_borrow_mut(|c| {
        c.by_id.clear();
        c.active.clear();
        c.last_active = None;
    });
}

/// (keys cached, lookups served from the cache, lookups that loaded and unwrapped a key) in this
/// backend since it started.
pub fn stats() -> (usize, u64, u64) {
    CACHE.with_borrow(|c| (c.by_id.len(), c.hits, c.misses))
}

impl Cache {
    /// Count a lookup as served from the cache or not.
    fn count(&mut self, hit: bool) {
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
    }
}

/// A key unwrapped by someone else (a user-held keyring's secret), in the shape the cache uses.
pub fn from_unwrapped(row: &KeyRow, dek: &crate::crypto::SecretKey) -> Result<CachedKey> {
    // (so that a change to data_key by another backend reaches the session's keys too)
    DATA_KEY_RELID.set(row.table_oid.to_u32());
    seed_usage(row);
    Ok(CachedKey {
        key_id: row.key_id,
        keyring: row.keyring.clone(),
        version: row.version,
        tenant: row.tenant.clone(),
        state: KeyState::parse(&row.state)?,
        cipher: dek.cipher(),
        mac: dek.mac_key(),
        encryptions: row.encryptions,
        max_encryptions: row.max_encryptions,
        user_held: row.user_held,
        loaded_at: 0,
    })
}

/// An active key's usage counter starts from what the table has (after a restart, or on a standby
/// whose primary flushed more since).
fn seed_usage(row: &KeyRow) {
    if row.state == "active" {
        crate::usage::seed(row.key_id, row.encryptions);
    }
}

fn unwrap_row(row: &KeyRow) -> Result<CachedKey> {
    DATA_KEY_RELID.set(row.table_oid.to_u32());
    if row.user_held {
        // Never wrapped by the root key: only keyring_unlock (with the user's secret) opens it, in
        // the session that called it. (A parallel worker never has it, and a session that holds
        // unlocked keys plans without workers.)
        return Err(KeysError::KeyringLocked(row.keyring.clone()));
    }
    let state = KeyState::parse(&row.state)?;
    seed_usage(row);
    let Some(wrapped) = row.wrapped_key.as_deref() else {
        return Err(KeysError::KeyNotUsable {
            keyring: row.keyring.clone(),
            version: row.version,
            state: state.name().into(),
            op: "decrypt (its key material was destroyed)",
        });
    };
    let root = rootkey::wrapping(row)?;
    let legacy_ok = crypto::is_legacy_wrap(wrapped) && store::legacy_wrap_allowed(row)?;
    let dek: SecretKey = crypto::unwrap_key(&root.key, &row.binding(), wrapped, legacy_ok)
        .map_err(|_| KeysError::WrappedKeyCorrupted {
            keyring: row.keyring.clone(),
            version: row.version,
        })?;
    Ok(CachedKey {
        key_id: row.key_id,
        keyring: row.keyring.clone(),
        version: row.version,
        tenant: row.tenant.clone(),
        state,
        cipher: dek.cipher(),
        mac: dek.mac_key(),
        encryptions: row.encryptions,
        max_encryptions: row.max_encryptions,
        user_held: row.user_held,
        loaded_at: 0,
    })
}

fn insert(mut key: CachedKey) -> Rc<CachedKey> {
    CACHE.with_borrow_mut(|c| {
        let cap = gucs::key_cache_size();
        while c.by_id.len() >= cap {
            let oldest = c
                .by_id
                .values()
                .min_by_key(|k| k.loaded_at)
                .map(|k| k.key_id);
            match oldest {
                Some(id) => {
                    c.by_id.remove(&id);
                    c.active.retain(|_, v| *v != id);
                    c.last_active = None;
                }
                None => break,
            }
        }
        c.clock += 1;
        key.loaded_at = c.clock;
        let key = Rc::new(key);
        if key.state == KeyState::Active {
            c.active.insert(key.keyring.clone(), key.key_id);
            c.last_active = None;
        }
        c.by_id.insert(key.key_id, key.clone());
        key
    })
}

/// A root-wrapped key by id, for decryption. Retired and destroyed keys are refused.
/// (Callers go through the resolver, which accepts pending invalidations first and asks this
/// session's user-held keys before this cache.)
pub fn by_id(key_id: i64) -> Result<Rc<CachedKey>> {
    let cached = CACHE.with_borrow_mut(|c| {
        let k = c.by_id.get(&key_id).cloned();
        c.count(k.is_some());
        k
    });
    let key = match cached {
        Some(k) => k,
        None => store::with_fixed_search_path(|| {
            let row = store::key_by_id(key_id)?.ok_or(KeysError::UnknownKeyId(key_id))?;
            let state = KeyState::parse(&row.state)?;
            if matches!(state, KeyState::Retired | KeyState::Destroyed) {
                // (whether another tenant's key is retired or destroyed is theirs to know)
                crate::tenancy::check_keyring(&row.keyring, row.tenant.as_deref(), "decryption")?;
                return Err(not_usable(&row.keyring, row.version, state, "decrypt"));
            }
            Ok(insert(unwrap_row(&row)?))
        })?,
    };
    Ok(key)
}

fn not_usable(keyring: &str, version: i32, state: KeyState, op: &'static str) -> KeysError {
    KeysError::KeyNotUsable {
        keyring: keyring.into(),
        version,
        state: state.name().into(),
        op,
    }
}

/// A root-wrapped keyring's active key, for encryption. `None` when the keyring has no active key.
/// (Callers go through the resolver, which accepts pending invalidations first.)
pub fn active(keyring: &str) -> Result<Option<Rc<CachedKey>>> {
    let hit = CACHE.with_borrow_mut(|c| {
        let hit = match &c.last_active {
            Some(k) if k.keyring == keyring => Some(k.clone()),
            _ => {
                let k = c
                    .active
                    .get(keyring)
                    .and_then(|id| c.by_id.get(id))
                    .cloned();
                c.last_active.clone_from(&k);
                k
            }
        };
        c.count(hit.is_some());
        hit
    });
    if let Some(k) = hit {
        return Ok(Some(k));
    }
    store::with_fixed_search_path(|| match store::active_key(keyring)? {
        None => Ok(None),
        Some(row) => Ok(Some(insert(unwrap_row(&row)?))),
    })
}
