//! Serial plans while this session holds unlocked user-held keys.
//!
//! A user-held keyring's unlocked keys exist only in the memory of the backend that unlocked it
//! (see [`crate::session_keys`]): a parallel worker, a separate process, cannot see them. So while
//! the session holds any (committed or pending), the planner hook plans every statement without
//! parallel workers, and [`crate::session_keys::install`] resets the plan cache so that a plan made
//! before the unlock is made again. Sessions without unlocked keys plan as usual: tenant-bound and
//! root-wrapped keyrings decrypt in parallel workers.

use pgrx::pg_sys;

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

/// Install the planner hook (from `_PG_init`, once per process), chaining any previous one.
pub fn init() {
    // SAFETY: _PG_init runs once per process, single-threaded; the previous hook is chained.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    let options = if crate::session_keys::holds_any() {
        cursor_options & !(pg_sys::CURSOR_OPT_PARALLEL_OK as std::ffi::c_int)
    } else {
        cursor_options
    };
    // SAFETY: the arguments are passed on unchanged but for the parallel flag.
    unsafe {
        match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, options, bound_params),
            None => pg_sys::standard_planner(parse, query_string, options, bound_params),
        }
    }
}
