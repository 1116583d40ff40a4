//! Reading key rows as they are committed now, whatever snapshot the caller holds.
//!
//! The key cache and a session's unlocked keys outlive the transaction that loaded them, so they
//! must never be filled from an old snapshot. A session in REPEATABLE READ or SERIALIZABLE (or in
//! one long statement, or a parallel worker sharing its leader's snapshot) that accepted the
//! invalidation of another session's `keyring_destroy`, `keys_retire` or `keys_rotate` would
//! otherwise reload the key row as its snapshot shows it, and keep the destroyed key decrypting,
//! the retired version decrypting or the old version encrypting for the rest of the session: no
//! further invalidation would ever come to remove it.
//!
//! PostgreSQL's own caches have the same problem and solve it the same way: accept pending
//! invalidations first, then read with a fresh catalog-style snapshot. Whatever commits after that
//! snapshot is taken sends its invalidation after it is visible (the commit's invalidations are
//! sent after it leaves the proc array, on a standby after replay marks it committed), so the next
//! call flushes what this one loads. The statements run read-only, through plans kept for the
//! backend, with a snapshot taken for them alone; only cache misses pay for it, the warm path is
//! unchanged.

use crate::error::{KeysError, Result};
use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::pg_sys;
use pgrx::spi::Spi;
use std::cell::RefCell;
use std::collections::HashMap;

/// One result row of [`select`].
pub struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    /// Column `n` (from 1), `None` for NULL.
    pub fn get<T: FromDatum + IntoDatum>(&self, n: usize) -> Result<Option<T>> {
        let mut null = false;
        // SAFETY: tuple and descriptor come from SPI_tuptable of the statement that just ran and
        // stay valid until the SPI connection ends; n is checked by SPI_getbinval (SPI_result).
        unsafe {
            let natts = (*self.desc).natts as usize;
            if n == 0 || n > natts {
                return Err(KeysError::Internal(format!(
                    "column {n} of a {natts}-column row"
                )));
            }
            let datum = pg_sys::SPI_getbinval(self.tuple, self.desc, n as i32, &mut null);
            let typoid = pg_sys::SPI_gettypeid(self.desc, n as i32);
            T::try_from_datum(datum, null, typoid)
                .map_err(|e| KeysError::Internal(format!("column {n}: {e}")))
        }
    }
}

thread_local! {
    static PLANS: RefCell<HashMap<String, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// The plan of `sql`, prepared and kept on first use (the plan cache revalidates it after DDL).
fn plan(sql: &str, args: &[DatumWithOid<'_>]) -> Result<pg_sys::SPIPlanPtr> {
    if let Some(p) = PLANS.with_borrow(|m| m.get(sql).copied()) {
        return Ok(p);
    }
    let text = std::ffi::CString::new(sql)
        .map_err(|_| KeysError::Internal("statement text contains NUL".into()))?;
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    // SAFETY: called inside an SPI connection; a NULL plan is reported through SPI_result.
    let p = unsafe {
        let p = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_mut_ptr());
        if p.is_null() || pg_sys::SPI_keepplan(p) != 0 {
            let code = std::ptr::read(&raw const pg_sys::SPI_result);
            return Err(KeysError::Internal(format!(
                "could not prepare a key statement (SPI result {code})"
            )));
        }
        p
    };
    PLANS.with_borrow_mut(|m| m.insert(sql.to_string(), p));
    Ok(p)
}

/// Run the read-only statement `sql` with a snapshot taken now and map each row with `f`.
/// Changes made earlier by the caller's own transaction are seen (its command counter is
/// advanced first, as any read-write statement would, except in a parallel worker, which
/// cannot have made any).
pub fn select<T>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    mut f: impl FnMut(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    Spi::connect(|_| {
        let plan = plan(sql, args)?;
        let mut values: Vec<pg_sys::Datum> = args
            .iter()
            .map(|a| {
                a.datum()
                    .map_or(pg_sys::Datum::from(0usize), |d| d.sans_lifetime())
            })
            .collect();
        let nulls: Vec<std::ffi::c_char> = args
            .iter()
            .map(|a| if a.datum().is_some() { b' ' } else { b'n' } as std::ffi::c_char)
            .collect();
        // SAFETY: inside an SPI connection; the plan is kept; the snapshot is the backend's catalog
        // snapshot, which SPI copies onto the active stack for this statement only.
        unsafe {
            if !pg_sys::IsInParallelMode() {
                pg_sys::CommandCounterIncrement();
            }
            pg_sys::InvalidateCatalogSnapshot();
            let snapshot = pg_sys::GetCatalogSnapshot(pg_sys::InvalidOid);
            let rc = pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                true,
                false,
                0,
            );
            pg_sys::InvalidateCatalogSnapshot();
            if rc != pg_sys::SPI_OK_SELECT as i32 {
                return Err(KeysError::Internal(format!(
                    "a key statement returned SPI result {rc}"
                )));
            }
            let table = pg_sys::SPI_tuptable;
            let n = pg_sys::SPI_processed as usize;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(f(&Row {
                    tuple: *(*table).vals.add(i),
                    desc: (*table).tupdesc,
                })?);
            }
            Ok(out)
        }
    })
}
