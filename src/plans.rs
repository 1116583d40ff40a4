//! Statements prepared once per backend and kept, for the hot path of re-encryption.
//!
//! A batch runs the same handful of statements every time; parsing and planning them afresh was a
//! tenth of a batch's time. Plans are kept with `SPI_keepplan`, so PostgreSQL's plan cache
//! revalidates them after any DDL on what they reference. They are keyed by their exact text: a
//! renamed table or a changed context expression is a different statement.
//!
//! They run with their generic plan: they are meshhook_keys' own statements, on its own tables
//! and the catalogs, by key, where no parameter value makes another plan better, and the plan
//! cache would otherwise keep planning a statement afresh on every execution whenever a custom
//! plan is estimated a little cheaper (one whose parameter decides a `CASE`, say): five plans per
//! re-encryption batch. A window's statement, which runs a table owner's code (its triggers) and
//! must not change the settings that code sees, is prepared generic instead ([`update_generic`]).

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::Result;

/// More distinct statements than this (tables renamed many times over) start the cache afresh.
const MAX_PLANS: usize = 256;

thread_local! {
    static PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan for `sql`, prepared on first use with the argument types of `args`: a read-only
/// one for [`select`], a mutating one for [`run`] (kept apart).
fn plan(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
    mutating: bool,
) -> Result<Rc<OwnedPreparedStatement>> {
    let key = if mutating {
        format!("w:{sql}")
    } else {
        format!("r:{sql}")
    };
    kept(&PLANS, &key, || {
        let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
        Ok(if mutating {
            client.prepare_mut(sql, &types)?.keep()
        } else {
            client.prepare(sql, &types)?.keep()
        })
    })
}

/// The plan kept in `cache` under `key`, or the one `prepare` makes, kept there (a cache that
/// reaches [`MAX_PLANS`] starts afresh).
fn kept<P>(
    cache: &'static std::thread::LocalKey<RefCell<HashMap<String, Rc<P>>>>,
    key: &str,
    prepare: impl FnOnce() -> Result<P>,
) -> Result<Rc<P>> {
    if let Some(p) = cache.with_borrow(|m| m.get(key).cloned()) {
        return Ok(p);
    }
    let p = Rc::new(prepare()?);
    cache.with_borrow_mut(|m| {
        if m.len() >= MAX_PLANS {
            m.clear();
        }
        m.insert(key.to_string(), p.clone());
    });
    Ok(p)
}

/// Run `f` (the execution of a kept plan of ours) with its generic plan (see the module docs).
fn generic<T>(f: impl FnOnce() -> T) -> T {
    crate::context::with_setting(c"plan_cache_mode", c"force_generic_plan", f)
}

/// Run `sql`, which writes, through its kept plan and hand the result to `f`.
pub fn run<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    f: impl FnOnce(SpiTupleTable<'_>) -> Result<T>,
) -> Result<T> {
    pgrx::spi::Spi::connect_mut(|cl| {
        let p = plan(cl, sql, args, true)?;
        let table = generic(|| cl.update(&*p, None, args))?;
        f(table)
    })
}

/// Run `sql`, which only reads, through its kept plan and hand the result to `f`, seeing what
/// this transaction wrote before (as [`run`] does). On a standby, where nothing can have been
/// written and no transaction id can be assigned (pgrx's mutating path assigns one), read-only.
pub fn select<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    f: impl FnOnce(SpiTupleTable<'_>) -> Result<T>,
) -> Result<T> {
    // SAFETY: reads shared recovery state.
    if !unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        return run(sql, args, f);
    }
    read(sql, args, f)
}

/// Run `sql`, which only reads, through its kept plan in read-only mode (no transaction id, no
/// new command: it sees what the current snapshot sees), on a primary as on a standby.
pub fn read<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    f: impl FnOnce(SpiTupleTable<'_>) -> Result<T>,
) -> Result<T> {
    pgrx::spi::Spi::connect(|cl| {
        let p = plan(cl, sql, args, false)?;
        let table = generic(|| cl.select(&*p, None, args))?;
        f(table)
    })
}

/// A statement prepared with a generic plan only (`CURSOR_OPT_GENERIC_PLAN`), kept for the
/// backend's life.
struct GenericPlan(std::ptr::NonNull<pgrx::pg_sys::_SPI_plan>);

impl Drop for GenericPlan {
    fn drop(&mut self) {
        // SAFETY: a plan kept with SPI_keepplan, freed once.
        unsafe { pgrx::pg_sys::SPI_freeplan(self.0.as_ptr()) };
    }
}

thread_local! {
    static GENERIC: RefCell<HashMap<String, Rc<GenericPlan>>> = RefCell::new(HashMap::new());
}

/// Run `sql`, which writes and returns no rows, through a kept plan that is always its generic
/// plan, and return the rows it processed. For a statement whose best plan does not depend on its
/// parameters (a TID range scan): PostgreSQL's plan cache would otherwise keep planning it afresh
/// for every execution when a custom plan is estimated cheaper.
pub fn update_generic(sql: &str, args: &[DatumWithOid<'_>]) -> Result<u64> {
    use pgrx::pg_sys;
    pgrx::spi::Spi::connect_mut(|_cl| {
        let plan = kept(&GENERIC, sql, || {
            let text = std::ffi::CString::new(sql)
                .map_err(|e| crate::error::KeysError::Internal(e.to_string()))?;
            let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
            // SAFETY: a prepare in the SPI connection opened above; a NULL plan is an error.
            let p = unsafe {
                pg_sys::SPI_prepare_cursor(
                    text.as_ptr(),
                    types.len() as i32,
                    types.as_mut_ptr(),
                    pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
                )
            };
            let Some(p) = std::ptr::NonNull::new(p) else {
                // SAFETY: set by the failed SPI_prepare_cursor.
                pgrx::spi::Spi::check_status(unsafe { pg_sys::SPI_result })?;
                return Err(crate::error::KeysError::Internal(
                    "SPI_prepare_cursor returned no plan".into(),
                ));
            };
            // SAFETY: moves the new plan out of the SPI procedure context.
            unsafe { pg_sys::SPI_keepplan(p.as_ptr()) };
            Ok(GenericPlan(p))
        })?;
        let (mut values, nulls): (Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) = args
            .iter()
            .map(|a| match a.datum() {
                Some(d) => (d.sans_lifetime(), b' ' as std::ffi::c_char),
                None => (pg_sys::Datum::from(0usize), b'n' as std::ffi::c_char),
            })
            .unzip();
        // SAFETY: the kept plan with as many arguments, of the types it was prepared with.
        let rc = unsafe {
            pg_sys::SPI_execute_plan(
                plan.0.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                false,
                0,
            )
        };
        pgrx::spi::Spi::check_status(rc)?;
        // SAFETY: set by the SPI_execute_plan above.
        Ok(unsafe { pg_sys::SPI_processed })
    })
}
