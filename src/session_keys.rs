//! The unlocked keys of user-held keyrings in this backend: who may use them, and for how long.
//!
//! An unlock is bound to the identity that made it: the role (as [`crate::context::caller`] sees
//! it, so a table owner's trigger inside a batch is never the unlocking role), the session user,
//! and the JWT `sub` claim when `request.jwt.claims` is set (PostgREST, Supabase). Another role
//! (`SET ROLE`, `RESET ROLE`), another session user (`SET SESSION AUTHORIZATION`, which forgets
//! everything) or another `sub` (the next request on a pooled connection) finds the keyring locked.
//!
//! State follows the transaction: an unlock made by a transaction is *pending* until it commits
//! (discarded on ROLLBACK, on ROLLBACK TO SAVEPOINT of the subtransaction that made it, on a
//! cancel); a `scope => 'transaction'` unlock is zeroized at commit or abort. `DISCARD ALL` (and
//! `RESET ALL`) forget every unlocked key: a session-scoped unlock sets the hidden setting
//! `meshhook_keys.session_unlocked`, and resetting it forgets. When another backend changes a keyring's keys
//! (secret rotated, keyring destroyed), the invalidation that reaches this backend makes it re-check
//! each unlocked keyring against the stored wrapping fingerprints before the next use, and forget
//! the ones that no longer match.
//!
//! Dropping a key zeroizes it (aes-gcm's zeroize feature), so "forget" means "zeroize".

use crate::datakey::CachedKey;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// How long an unlock lasts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    /// Until keyring_lock, DISCARD ALL, a session-authorization change or the end of the session.
    Session,
    /// Until the end of the current transaction (commit or abort): the way to unlock behind a
    /// transaction-mode connection pooler.
    Transaction,
}

impl Scope {
    pub fn parse(s: Option<&str>) -> Option<Scope> {
        match s.unwrap_or("session") {
            "session" => Some(Scope::Session),
            "transaction" => Some(Scope::Transaction),
            _ => None,
        }
    }
}

/// Who made an unlock.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Binding {
    role: pg_sys::Oid,
    session_user: pg_sys::Oid,
    sub: Option<String>,
}

/// One unlocked keyring.
pub struct Unlocked {
    pub keys: HashMap<i64, Rc<CachedKey>>,
    pub active: Option<i64>,
    /// The fingerprint of the key-encryption key (derived from the secret) that wraps the versions;
    /// stored beside each wrapped key, so a changed secret is seen as a changed fingerprint.
    pub kek_fingerprint: Vec<u8>,
    binding: Binding,
    scope: Scope,
}

struct Pending {
    subxact: pg_sys::SubTransactionId,
    keyring: String,
    unlocked: Unlocked,
}

#[derive(Default)]
struct State {
    /// Session-scoped unlocks of committed transactions.
    committed: HashMap<String, Unlocked>,
    /// Unlocks made by the current transaction, newest last.
    pending: Vec<Pending>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    static HOOKS: Cell<bool> = const { Cell::new(false) };
    /// Set by the data_key invalidation: re-check every unlocked keyring before the next use.
    static RECHECK: Cell<bool> = const { Cell::new(false) };
    /// The last `request.jwt.claims` text seen and the `sub` parsed from it.
    static CLAIMS: RefCell<(String, Option<String>)> = const { RefCell::new((String::new(), None)) };
}

/// The JWT `sub` of the current request, if `request.jwt.claims` is set and has one.
pub fn jwt_sub() -> Option<String> {
    let raw = crate::context::jwt_claims()?;
    CLAIMS.with_borrow_mut(|(seen, sub)| {
        if *seen != raw {
            *sub = serde_json::from_str::<serde_json::Value>(&raw)
                .ok()
                .and_then(|v| match v.get("sub") {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                });
            *seen = raw;
        }
        sub.clone()
    })
}

/// The identity of the caller right now, or `None` when it cannot be known (then nothing is
/// usable, and nothing may be unlocked).
fn current_binding() -> Option<Binding> {
    let role = crate::context::caller().role()?;
    // Code another role wrote (its SECURITY DEFINER function, its table's trigger) never acts
    // with what this role unlocked, even when it runs as this role.
    if !crate::context::definers_allow(role) {
        return None;
    }
    // SAFETY: plain accessor of backend state.
    let session_user = unsafe { pg_sys::GetSessionUserId() };
    Some(Binding {
        role,
        session_user,
        sub: jwt_sub(),
    })
}

/// A new unlock for the current caller; `None` if the caller cannot be known.
pub fn new_unlocked(
    keys: HashMap<i64, Rc<CachedKey>>,
    active: Option<i64>,
    kek_fingerprint: Vec<u8>,
    scope: Scope,
) -> Option<Unlocked> {
    Some(Unlocked {
        keys,
        active,
        kek_fingerprint,
        binding: current_binding()?,
        scope,
    })
}

/// Whether this backend holds any unlocked keys (committed or pending): then it plans without
/// parallel workers, which could not see them (the planner hook asks).
pub fn holds_any() -> bool {
    STATE.with_borrow(|s| !s.committed.is_empty() || !s.pending.is_empty())
}

/// Hold `u` for `keyring`: pending until the current transaction commits.
pub fn install(keyring: &str, u: Unlocked) {
    register_hooks();
    // Cached plans may use parallel workers, which cannot see these keys: plan them again.
    // SAFETY: marks this backend's cached plans invalid; they are rebuilt on next use.
    unsafe { pg_sys::ResetPlanCache() };
    if u.scope == Scope::Session {
        mark_session_unlocked();
    }
    // SAFETY: plain accessor of transaction state.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    STATE.with_borrow_mut(|s| {
        s.pending.push(Pending {
            subxact,
            keyring: keyring.to_string(),
            unlocked: u,
        })
    });
}

/// Forget a keyring's unlocked keys (committed and pending); true if any were held by the caller.
pub fn lock(keyring: &str) -> bool {
    let me = current_binding();
    STATE.with_borrow_mut(|s| {
        let mine = |u: &Unlocked| me.as_ref() == Some(&u.binding);
        let mut was = s.committed.get(keyring).is_some_and(mine);
        s.committed.remove(keyring);
        s.pending.retain(|p| {
            if p.keyring == keyring {
                was |= mine(&p.unlocked);
                false
            } else {
                true
            }
        });
        was
    })
}

/// Forget everything (DISCARD ALL, session authorization change, backend exit).
pub fn forget_all() {
    STATE.with_borrow_mut(|s| {
        s.committed.clear();
        s.pending.clear();
    });
}

/// Find an unlocked keyring usable by the caller and apply `f` to it.
fn with_usable<T>(pick: impl Fn(&str, &Unlocked) -> Option<T>) -> Option<T> {
    let empty = STATE.with_borrow(|s| s.committed.is_empty() && s.pending.is_empty());
    if empty {
        return None;
    }
    if RECHECK.replace(false) {
        recheck();
    }
    let me = current_binding()?;
    // A holdable cursor's rows outlive the transaction (they are computed at its commit and
    // fetched later, possibly by the next client of a pooled connection): a transaction-scoped
    // unlock does not serve them.
    let holdable = in_holdable_cursor();
    // SAFETY: plain accessor of backend state.
    let session_user = unsafe { pg_sys::GetSessionUserId() };
    STATE.with_borrow_mut(|s| {
        // SET SESSION AUTHORIZATION: everything unlocked under another session user is forgotten.
        s.committed
            .retain(|_, u| u.binding.session_user == session_user);
        s.pending
            .retain(|p| p.unlocked.binding.session_user == session_user);
        let found = s
            .pending
            .iter()
            .rev()
            .filter(|p| p.unlocked.binding == me)
            .filter(|p| !(holdable && p.unlocked.scope == Scope::Transaction))
            .find_map(|p| pick(&p.keyring, &p.unlocked));
        found.or_else(|| {
            s.committed
                .iter()
                .filter(|(_, u)| u.binding == me)
                .find_map(|(k, u)| pick(k, u))
        })
    })
}

/// Whether the statement running now is a cursor declared WITH HOLD (fetched, or persisted at
/// commit).
fn in_holdable_cursor() -> bool {
    // SAFETY: reads the backend's active portal, if any.
    unsafe {
        let p = pg_sys::ActivePortal;
        !p.is_null() && ((*p).cursorOptions & pg_sys::CURSOR_OPT_HOLD as i32) != 0
    }
}

/// An unlocked key usable by the caller, by key id.
pub fn key(key_id: i64) -> Option<Rc<CachedKey>> {
    with_usable(|_, u| u.keys.get(&key_id).cloned())
}

/// The active key of a user-held keyring unlocked by the caller.
pub fn active(keyring: &str) -> Option<Rc<CachedKey>> {
    with_usable(|k, u| {
        if k == keyring {
            u.keys.get(&u.active?).cloned()
        } else {
            None
        }
    })
}

/// The data keys changed somewhere (relcache invalidation of data_key): re-check before next use.
pub fn invalidate() {
    RECHECK.set(true);
}

/// Forget every unlocked keyring whose stored versions are no longer exactly the ones unlocked,
/// wrapped by the same key (secret changed, version added or destroyed, keyring destroyed).
fn recheck() {
    let names: Vec<String> = STATE.with_borrow(|s| {
        let mut n: Vec<String> = s.committed.keys().cloned().collect();
        n.extend(s.pending.iter().map(|p| p.keyring.clone()));
        n.sort();
        n.dedup();
        n
    });
    for name in names {
        let stored =
            crate::store::with_fixed_search_path(|| crate::store::keyring_keys(&name, false));
        let stored: Option<Vec<(i64, Vec<u8>, String)>> = stored.ok().map(|rows| {
            rows.into_iter()
                .map(|r| (r.key_id, r.root_fingerprint, r.state))
                .collect()
        });
        // (the same versions, wrapped by the same key, none retired since it was unlocked: a
        // version retired since is forgotten with the rest, and the next unlock holds it as
        // retired. A demotion to decrypt_only, by this session's own rotation, changes nothing.)
        let still = |u: &Unlocked| match &stored {
            Some(rows) => {
                rows.len() == u.keys.len()
                    && rows.iter().all(|(id, fp, state)| {
                        *fp == u.kek_fingerprint
                            && u.keys.get(id).is_some_and(|k| {
                                k.state.name() == state
                                    || !matches!(state.as_str(), "retired" | "destroyed")
                            })
                    })
            }
            None => false,
        };
        STATE.with_borrow_mut(|s| {
            if s.committed.get(&name).is_some_and(|u| !still(u)) {
                s.committed.remove(&name);
            }
            s.pending
                .retain(|p| p.keyring != name || still(&p.unlocked));
        });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            // SAFETY: plain accessor of backend state.
            let session_user = unsafe { pg_sys::GetSessionUserId() };
            STATE.with_borrow_mut(|s| {
                for p in std::mem::take(&mut s.pending) {
                    if p.unlocked.scope == Scope::Session {
                        s.committed.insert(p.keyring, p.unlocked);
                    }
                }
                // SET SESSION AUTHORIZATION (its own statement): forget what another session
                // user unlocked.
                s.committed
                    .retain(|_, u| u.binding.session_user == session_user);
            });
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            STATE.with_borrow_mut(|s| s.pending.clear());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            STATE.with_borrow_mut(|s| s.pending.retain(|p| p.subxact < my_subid));
        }
        SUBXACT_EVENT_COMMIT_SUB => STATE.with_borrow_mut(|s| {
            for p in s.pending.iter_mut().filter(|p| p.subxact >= my_subid) {
                p.subxact = parent_subid;
            }
        }),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_at_exit(_code: i32, _arg: pg_sys::Datum) {
    forget_all();
}

/// Assign hook of `meshhook_keys.session_unlocked` (see [`init`]): set on by a session-scoped
/// unlock, and reset to off by `DISCARD ALL` and `RESET ALL` (which reset every setting a session
/// changed), or by `RESET` of the setting itself: then every unlocked key is forgotten.
#[pg_guard]
pub unsafe extern "C-unwind" fn session_unlocked_assign(
    newval: bool,
    _extra: *mut std::ffi::c_void,
) {
    if !newval {
        forget_all();
    }
}

/// Mark the session as holding session-scoped unlocks, so that a reset of all settings forgets them.
fn mark_session_unlocked() {
    // SAFETY: a plain SET of a user-settable setting, as SET would do it.
    unsafe {
        pg_sys::set_config_option(
            c"meshhook_keys.session_unlocked".as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            0,
            false,
        );
    }
}

static SESSION_UNLOCKED: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Define the internal setting `meshhook_keys.session_unlocked` (from `_PG_init`). It is no user
/// setting (not in crate::gucs): it exists so that DISCARD ALL and RESET ALL reach us.
pub fn init() {
    // SAFETY: the assign hook is #[pg_guard] and only forgets this backend's unlocked keys.
    unsafe {
        GucRegistry::define_bool_guc_with_hooks(
            c"meshhook_keys.session_unlocked",
            c"Whether this session holds session-scoped unlocks of user-held keyrings (internal).",
            c"Set by keyring_unlock. DISCARD ALL, RESET ALL or RESET of this setting forgets every unlocked key.",
            &SESSION_UNLOCKED,
            GucContext::Userset,
            GucFlags::NO_SHOW_ALL | GucFlags::DISALLOW_IN_FILE,
            None,
            Some(session_unlocked_assign),
            None,
        );
    }
}

/// The transaction callbacks and the exit callback, registered once per backend on first unlock.
fn register_hooks() {
    if HOOKS.replace(true) {
        return;
    }
    // SAFETY: registers plain callbacks once per backend.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        pg_sys::on_proc_exit(Some(forget_at_exit), pg_sys::Datum::from(0usize));
    }
}
