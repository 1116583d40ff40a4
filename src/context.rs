//! Who is calling ([`caller`], and the roles whose code meshhook_keys runs right now), and running
//! our own code with a temporarily changed setting or user, restored afterwards (or by the
//! (sub)transaction abort if the code raises), as fmgr_security_definer does for a SECURITY DEFINER
//! function with SET clauses (the hot encrypt/decrypt functions' fixed search_path, the audit rows
//! written at commit). Code we do not own runs through the seal module instead.

use pgrx::pg_guard;
use pgrx::pg_sys;
use std::ffi::CStr;

/// Set `name` = `value` at the current GUC nest level (GUC_ACTION_SAVE, as a function's SET
/// clause does).
///
/// # Safety
/// Must be called after NewGUCNestLevel, whose AtEOXact_GUC undoes it.
pub unsafe fn save_setting(name: &CStr, value: &CStr) {
    // SAFETY: as the caller promises.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// Run `f` with the setting `name` = `value` for its duration.
pub fn with_setting<T>(name: &CStr, value: &CStr, f: impl FnOnce() -> T) -> T {
    // SAFETY: the GUC nest-level protocol fmgr_security_definer uses for a SET clause.
    let nest = unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        save_setting(name, value);
        nest
    };
    let out = f();
    // SAFETY: pops exactly the nest level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    out
}

/// A role's name, or `role <oid>` for one dropped meanwhile.
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: noerr=true returns NULL for a dropped role instead of raising; copied at once.
    unsafe {
        let p = pg_sys::GetUserNameFromId(role, true);
        if p.is_null() {
            format!("role {}", role.to_u32())
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// This backend's local transaction id (0 outside a backend that runs SQL): what per-transaction
/// caches and flags compare to know that a new transaction began.
pub fn current_lxid() -> u32 {
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its local transaction id.
    unsafe {
        if pg_sys::MyProc.is_null() {
            0
        } else {
            // (PostgreSQL 17 moved it into the virtual transaction id)
            #[cfg(any(feature = "pg15", feature = "pg16"))]
            let lxid = (*pg_sys::MyProc).lxid;
            #[cfg(not(any(feature = "pg15", feature = "pg16")))]
            let lxid = (*pg_sys::MyProc).vxid.lxid;
            lxid
        }
    }
}

/// The text of `request.jwt.claims` (PostgREST, Supabase, `meshhook-keys serve`), if set and
/// not empty.
pub fn jwt_claims() -> Option<String> {
    // SAFETY: missing_ok = true returns NULL for an unknown setting; the string is copied at once.
    let raw = unsafe {
        let p = pg_sys::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false);
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    (!raw.is_empty()).then_some(raw)
}

thread_local! {
    /// The roles whose code meshhook_keys is running right now, innermost last: a table owner
    /// during re-encryption, verify and key counts; the caller during a tenant check.
    static ON_BEHALF_OF: std::cell::RefCell<Vec<pg_sys::Oid>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whose authority a call into meshhook_keys carries (see [`caller`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The session's role (the session user, or the role chosen with SET ROLE).
    Session(pg_sys::Oid),
    /// Code meshhook_keys runs on this role's behalf (its trigger, context expression, default,
    /// policy or tenant check): it has this role's authority and no more, whoever started the batch.
    OnBehalfOf(pg_sys::Oid),
    /// A security-restricted operation meshhook_keys did not start (an index expression during
    /// ANALYZE or REINDEX, REFRESH MATERIALIZED VIEW, another extension's maintenance): PostgreSQL
    /// runs some object owner's code there, and that owner cannot be known from inside a SECURITY
    /// DEFINER function; decisions that depend on the caller are refused.
    Unknown,
}

impl Caller {
    /// The role to check, or `None` when it cannot be known.
    pub fn role(self) -> Option<pg_sys::Oid> {
        match self {
            Caller::Session(r) | Caller::OnBehalfOf(r) => Some(r),
            Caller::Unknown => None,
        }
    }
}

/// Who is calling: the role whose code meshhook_keys is running (innermost) if any; otherwise the
/// session's role, unless this is a security-restricted operation started by someone else.
pub fn caller() -> Caller {
    if let Some(r) = ON_BEHALF_OF.with_borrow(|s| s.last().copied()) {
        return Caller::OnBehalfOf(r);
    }
    // SAFETY: plain accessors of backend state.
    unsafe {
        if pg_sys::InSecurityRestrictedOperation() {
            Caller::Unknown
        } else {
            Caller::Session(pg_sys::GetOuterUserId())
        }
    }
}

/// True while meshhook_keys runs someone's code (a batch, a count, a verify, a tenant check).
pub fn running_foreign_code() -> bool {
    ON_BEHALF_OF.with_borrow(|s| !s.is_empty())
}

/// Pops the role pushed by [`on_behalf_of`], including when its code raises (pgrx unwinds
/// through us).
struct OnBehalfGuard;

impl Drop for OnBehalfGuard {
    fn drop(&mut self) {
        ON_BEHALF_OF.with_borrow_mut(|s| {
            s.pop();
        });
    }
}

/// Run `f` with `role` as the caller every identity check meshhook_keys makes sees (admin
/// membership, tenant check, service bypass, user-held key binding). Only the seal module calls
/// it, after switching to `role` in a security-restricted operation.
pub fn on_behalf_of<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    ON_BEHALF_OF.with_borrow_mut(|s| s.push(role));
    let _guard = OnBehalfGuard;
    f()
}

/// Run `f` as `role` (the extension's owner), for the extension's own writes outside any of its
/// SECURITY DEFINER functions (the audit rows written at commit). Not code of anybody else: the
/// on-behalf-of stack is left alone.
pub fn with_owner<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores exactly what was saved below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx: i32 = 0;
    // SAFETY: plain save/switch of the backend's current user, as fmgr_security_definer does.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let _restore = Restore(saved_user, saved_ctx);
    f()
}

thread_local! {
    /// For each function call that went through the fmgr hook (SECURITY DEFINER functions, and
    /// trigger functions), innermost last: the owner of the function if it is code of somebody's
    /// that is not meshhook_keys' own, else `None`.
    static DEFINERS: std::cell::RefCell<Vec<Option<pg_sys::Oid>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per function: its owner if its calls are tracked (see [`DEFINERS`]), `None` if not.
    static CLASSIFIED: std::cell::RefCell<std::collections::HashMap<pg_sys::Oid, Option<pg_sys::Oid>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

static mut PREV_NEEDS_FMGR_HOOK: pg_sys::needs_fmgr_hook_type = None;
static mut PREV_FMGR_HOOK: pg_sys::fmgr_hook_type = None;

/// The owner of `fn_oid` if its calls run code of somebody's own: a SECURITY DEFINER function or a
/// trigger function outside meshhook_keys' schema.
fn classify(fn_oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    if let Some(c) = CLASSIFIED.with_borrow(|m| m.get(&fn_oid).copied()) {
        return c;
    }
    // SAFETY: a syscache lookup of pg_proc, released at once; fmgr_info made the same lookup.
    let c = unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as _,
            pg_sys::Datum::from(fn_oid),
        );
        if tup.is_null() {
            return None;
        }
        let p = pg_sys::GETSTRUCT(tup).cast::<pg_sys::FormData_pg_proc>();
        let ours = pg_sys::get_namespace_oid(c"meshhook_keys".as_ptr(), true);
        let tracked =
            (*p).pronamespace != ours && ((*p).prosecdef || (*p).prorettype == pg_sys::TRIGGEROID);
        let owner = (*p).proowner;
        pg_sys::ReleaseSysCache(tup);
        tracked.then_some(owner)
    };
    CLASSIFIED.with_borrow_mut(|m| m.insert(fn_oid, c));
    c
}

#[pg_guard]
unsafe extern "C-unwind" fn needs_fmgr_hook(fn_oid: pg_sys::Oid) -> bool {
    // SAFETY: the previous hook, if any, is a valid function pointer.
    if let Some(prev) = unsafe { PREV_NEEDS_FMGR_HOOK }
        && unsafe { prev(fn_oid) }
    {
        return true;
    }
    // (SECURITY DEFINER functions go through the hook anyway; trigger functions are asked for)
    classify(fn_oid).is_some()
}

/// The hook fmgr_security_definer calls at the start and end of every SECURITY DEFINER call. Its
/// hot path (no other hook, a call site already known not to be tracked: meshhook_keys' own
/// functions, once per row of a query) is two reads and returns without the guard; everything
/// else, which may allocate, look up the catalogs or call another hook, goes through
/// [`fmgr_hook_guarded`].
unsafe extern "C-unwind" fn fmgr_hook(
    event: pg_sys::FmgrHookEventType::Type,
    flinfo: *mut pg_sys::FmgrInfo,
    arg: *mut pg_sys::Datum,
) {
    // SAFETY: a copy of the hook pointer installed at load; `arg` points to the call site's Datum
    // (see fmgr_hook_guarded), valid for the call. Nothing here can panic or raise an error.
    let (prev, slot) = unsafe { (PREV_FMGR_HOOK, (*arg).value()) };
    let untracked = prev.is_none() && slot == 1;
    if !untracked {
        // SAFETY: the arguments fmgr_security_definer passed, handed on unchanged.
        unsafe { fmgr_hook_guarded(event, flinfo, arg) }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn fmgr_hook_guarded(
    event: pg_sys::FmgrHookEventType::Type,
    flinfo: *mut pg_sys::FmgrInfo,
    arg: *mut pg_sys::Datum,
) {
    // SAFETY: the previous hook, if any, is a valid function pointer, called with our arguments.
    let prev = unsafe { PREV_FMGR_HOOK };
    let chained = prev.is_some();
    if let Some(prev) = prev {
        unsafe { prev(event, flinfo, arg) };
    }
    // SAFETY: `arg` points to the Datum fmgr_security_definer keeps for this call site (zeroed when
    // it was made); `flinfo` is the function being called.
    let (tracked, owner) = unsafe {
        if chained {
            // Another hook owns the `arg` slot: the per-backend map answers, and every call is
            // pushed and popped, tracked or not, so that START and END always pair.
            (true, classify((*flinfo).fn_oid))
        } else {
            // The call site's classification in its `arg` slot (0: not yet known, 1: not tracked,
            // otherwise the owner << 2 | 2), so that the hot path (our own SECURITY DEFINER
            // functions, per row) costs one read; only tracked calls are pushed, and the same slot
            // answers the same at END or ABORT.
            let slot = (*arg).value() as u64;
            let owner = if slot == 0 {
                let c = classify((*flinfo).fn_oid);
                *arg = pg_sys::Datum::from(c.map_or(1u64, |o| ((o.to_u32() as u64) << 2) | 2));
                c
            } else if slot == 1 {
                None
            } else {
                Some(pg_sys::Oid::from((slot >> 2) as u32))
            };
            (owner.is_some(), owner)
        }
    };
    if !tracked {
        return;
    }
    match event {
        pg_sys::FmgrHookEventType::FHET_START => DEFINERS.with_borrow_mut(|s| s.push(owner)),
        pg_sys::FmgrHookEventType::FHET_END | pg_sys::FmgrHookEventType::FHET_ABORT => {
            DEFINERS.with_borrow_mut(|s| {
                s.pop();
            });
        }
        _ => {}
    }
}

/// A change to pg_proc (a function's owner, or a function dropped): classify again.
#[pg_guard]
unsafe extern "C-unwind" fn proc_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    CLASSIFIED.with_borrow_mut(|m| m.clear());
}

/// Track, in this backend, the owners of SECURITY DEFINER and trigger functions that are running
/// (see [`definers_allow`]). Called once from `_PG_init`.
pub fn install_fmgr_hooks() {
    // SAFETY: hooks are installed once per process, chaining any earlier ones, as sepgsql does.
    unsafe {
        PREV_NEEDS_FMGR_HOOK = pg_sys::needs_fmgr_hook;
        pg_sys::needs_fmgr_hook = Some(needs_fmgr_hook);
        PREV_FMGR_HOOK = pg_sys::fmgr_hook;
        pg_sys::fmgr_hook = Some(fmgr_hook);
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as _,
            Some(proc_changed),
            pg_sys::Datum::from(0usize),
        );
    }
}

/// Whether every SECURITY DEFINER function and trigger function running now (outside
/// meshhook_keys) is owned by a role whose privileges `role` has: code written by another role,
/// even when it runs as `role` (a trigger of another owner's table) or as its owner (a SECURITY
/// DEFINER function), does not act for `role` with what `role` unlocked.
pub fn definers_allow(role: pg_sys::Oid) -> bool {
    DEFINERS.with_borrow(|s| {
        s.iter().flatten().all(|&owner| {
            // SAFETY: a catalog check of role membership (cached by PostgreSQL).
            owner == role || unsafe { pg_sys::has_privs_of_role(role, owner) }
        })
    })
}
