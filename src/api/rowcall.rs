//! Arguments of the per-row functions read in place from the call's `FunctionCallInfo`: the few
//! functions that run once per row (of a batch: `_reencrypt_try`, `_reencrypt_take`; of the
//! application's queries: `secret_encrypt`, `secret_decrypt` and their bytea twins) are plain V1
//! functions, without the per-argument conversion of a `#[pg_extern]` wrapper.
//!
//! Invariants: a value is read from the argument's own varlena (no copy) unless it is compressed
//! or stored out of line, which is detoasted into the call's memory context; the slices live as
//! long as the call.

use pgrx::pg_sys;

/// The V1 calling convention's info record, returned by each function's `pg_finfo_` symbol.
pub const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

/// The `pg_finfo_<symbol>` functions that declare each named C symbol a V1 function (what
/// `PG_FUNCTION_INFO_V1` writes in C).
macro_rules! v1_finfo {
    ($($finfo:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            &$crate::api::rowcall::V1
        }
    )*};
}
pub(crate) use v1_finfo;

/// Argument `n`, or `None` when it is NULL.
///
/// # Safety
/// `fcinfo` is the current call's, with more than `n` arguments.
unsafe fn arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<pg_sys::Datum> {
    // SAFETY: the caller's promise: the call has more than n arguments.
    let a = unsafe { *(*fcinfo).args.as_ptr().add(n) };
    (!a.isnull).then_some(a.value)
}

/// A `bytea` or `text` argument's bytes, or `None` when it is NULL.
///
/// # Safety
/// As [`arg`], and argument `n` is a varlena type.
pub unsafe fn bytes<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<&'a [u8]> {
    // SAFETY: a varlena datum of the current call; an extended one (compressed, or out of line)
    // is detoasted first, as PG_GETARG_BYTEA_PP does, others are read where they are.
    unsafe {
        let mut v = arg(fcinfo, n)?.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varatt_is_4b_c(v) || pgrx::varatt_is_1b_e(v) {
            v = pg_sys::pg_detoast_datum_packed(v);
        }
        Some(std::slice::from_raw_parts(
            pgrx::vardata_any(v) as *const u8,
            pgrx::varsize_any_exhdr(v),
        ))
    }
}

/// A `tid` argument, or `None` when it is NULL.
///
/// # Safety
/// As [`arg`], and argument `n` is `tid` (passed by reference).
pub unsafe fn tid<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    n: usize,
) -> Option<&'a pg_sys::ItemPointerData> {
    // SAFETY: a tid datum points at an ItemPointerData for the length of the call.
    unsafe { arg(fcinfo, n).map(|d| &*d.cast_mut_ptr::<pg_sys::ItemPointerData>()) }
}
