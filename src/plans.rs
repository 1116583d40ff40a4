//! Statements prepared once per backend and kept, for the hot path of re-encryption.
//!
//! A batch runs the same handful of statements every time; parsing and planning them afresh was a
//! tenth of a batch's time. Plans are kept with `SPI_keepplan`, so PostgreSQL's plan cache
//! revalidates them after any DDL on what they reference. They are keyed by their exact text: a
//! renamed table or a changed context expression is a different statement.

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
    if let Some(p) = PLANS.with_borrow(|m| m.get(&key).cloned()) {
        return Ok(p);
    }
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    let p = Rc::new(if mutating {
        client.prepare_mut(sql, &types)?.keep()
    } else {
        client.prepare(sql, &types)?.keep()
    });
    PLANS.with_borrow_mut(|m| {
        if m.len() >= MAX_PLANS {
            m.clear();
        }
        m.insert(key, p.clone());
    });
    Ok(p)
}

/// Run `sql`, which writes, through its kept plan and hand the result to `f`.
pub fn run<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    f: impl FnOnce(SpiTupleTable<'_>) -> Result<T>,
) -> Result<T> {
    pgrx::spi::Spi::connect_mut(|cl| {
        let p = plan(cl, sql, args, true)?;
        let table = cl.update(&*p, None, args)?;
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
        let table = cl.select(&*p, None, args)?;
        f(table)
    })
}
