//! Running code with a temporarily changed setting or user, restored afterwards (or by the
//! (sub)transaction abort if the code raises), as fmgr_security_definer does for a SECURITY DEFINER
//! function with SET clauses. Used by re-encryption (as the table owner), by the tenant check (as
//! the caller) and by the hot encrypt/decrypt functions (a fixed search_path around their SQL).

use pgrx::pg_sys;
use std::ffi::CStr;

/// Run `f` with the setting `name` = `value` for its duration.
pub fn with_setting<T>(name: &CStr, value: &CStr, f: impl FnOnce() -> T) -> T {
    // SAFETY: the GUC nest-level protocol fmgr_security_definer uses for a SET clause.
    let nest = unsafe {
        let nest = pg_sys::NewGUCNestLevel();
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
        nest
    };
    let out = f();
    // SAFETY: pops exactly the nest level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    out
}

/// Run `f` as `role` inside a security-restricted operation (no SET ROLE, no temporary objects
/// that outlive it), then switch back.
pub fn as_user_restricted<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx: i32 = 0;
    // SAFETY: plain save/switch of the backend's current user, as fmgr_security_definer does.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_ctx
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let out = f();
    // SAFETY: restores exactly what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    out
}
