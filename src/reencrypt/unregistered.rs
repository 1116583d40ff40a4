//! find_unregistered (issue 28): the bytea columns of the database that hold envelopes of a
//! keyring but are not registered for it. Re-encryption never moves them, and retiring or
//! destroying a version they use makes them undecryptable: forgetting a column must not silently
//! destroy data.
//!
//! Invariants: each column is read as its table's owner, sealed like every other read of a
//! user's table ([`super::as_role`]), so her code cannot borrow the caller's authority and a
//! policy that would hide rows from her raises instead. Each read is bounded: at most
//! `max_blocks` blocks of the table (a TID range scan from its start) and `lock_timeout` for its
//! lock; a column whose read fails (a lock not granted, a policy, her code raising) is reported
//! with its SQLSTATE, never skipped. Only the envelope header is compared (the byte range test
//! re-encryption uses), nothing is decrypted.

use super::registry::{as_role, key_ranges, on_keys_test};
use crate::error::{KeysError, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// One column of the report.
pub struct Finding {
    pub table: pg_sys::Oid,
    pub column: String,
    /// Rows holding an envelope of the keyring, in the blocks read (None: the read failed).
    pub rows: Option<i64>,
    pub blocks_read: i64,
    pub blocks: i64,
    /// `SQLSTATE: message` of a read that failed.
    pub error: Option<String>,
}

struct Candidate {
    rel: pg_sys::Oid,
    table: String,
    column: String,
    owner: pg_sys::Oid,
    blocks: i64,
}

/// Every bytea column (or column of a domain over bytea) of an ordinary table or materialized
/// view outside the system schemas, the extension's and temporary ones, that is not registered for
/// `keyring`.
fn candidates(keyring: &str) -> Result<Vec<Candidate>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), a.attname::pg_catalog.text, c.relowner,
                    pg_catalog.pg_relation_size(c.oid) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::bigint
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
               JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
               JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
              WHERE c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r', 'm']::\"char\"[])
                AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
                AND n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema', 'meshhook_keys'])
                AND n.nspname NOT LIKE 'pg\\_toast%'
                AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
                AND (a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.bytea'::pg_catalog.regtype
                     OR (t.typtype OPERATOR(pg_catalog.=) 'd' AND t.typbasetype OPERATOR(pg_catalog.=) 'pg_catalog.bytea'::pg_catalog.regtype))
                AND NOT EXISTS (SELECT FROM meshhook_keys.encrypted_column e
                                 WHERE e.rel OPERATOR(pg_catalog.=) c.oid::pg_catalog.regclass
                                   AND e.column_name OPERATOR(pg_catalog.=) a.attname
                                   AND e.keyring OPERATOR(pg_catalog.=) $1)
              ORDER BY 2, a.attnum",
            None,
            &[keyring.into()],
        )? {
            out.push(Candidate {
                rel: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                table: r.get::<String>(2)?.unwrap_or_default(),
                column: r.get::<String>(3)?.unwrap_or_default(),
                owner: r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                blocks: r.get::<i64>(5)?.unwrap_or(0),
            });
        }
        Ok::<_, KeysError>(out)
    })
}

/// Rows of `c` holding an envelope of one of `keys`, in its first `max_blocks` blocks, read as
/// its owner.
fn count(c: &Candidate, ranges: &[Vec<u8>], max_blocks: i64) -> Result<i64> {
    let col = format!("t.{}", quote_identifier(&c.column));
    let test = on_keys_test(&format!("{col}::pg_catalog.bytea"), 2, ranges.len() / 2);
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM ONLY {} AS t
          WHERE t.ctid OPERATOR(pg_catalog.<) $1::pg_catalog.text::pg_catalog.tid AND {test}",
        c.table
    );
    let upper = format!("({max_blocks},0)");
    as_role(c.owner, || {
        crate::context::with_setting(c"lock_timeout", c"1s", || {
            let mut args: Vec<pgrx::datum::DatumWithOid> = vec![upper.as_str().into()];
            args.extend(ranges.iter().map(|r| r.as_slice().into()));
            Ok(Spi::get_one_with_args::<i64>(&sql, &args)?.unwrap_or(0))
        })
    })
}

/// The report for `keyring`: the unregistered columns that hold its envelopes, and every column
/// whose read failed or stopped at `max_blocks`. Audited (its time is what keys_retire compares
/// with the last registration).
pub fn find(keyring: &str, max_blocks: i64) -> Result<Vec<Finding>> {
    if max_blocks < 1 {
        return Err(KeysError::InvalidArgument(
            "max_blocks must be at least 1".into(),
        ));
    }
    let keys: Vec<i64> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT key_id FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 ORDER BY version",
            None,
            &[keyring.into()],
        )? {
            out.extend(r.get::<i64>(1)?);
        }
        Ok::<_, KeysError>(out)
    })?;
    if keys.is_empty() {
        return Err(KeysError::UnknownKeyring(keyring.into()));
    }
    let ranges = key_ranges(&keys);
    let mut out = Vec::new();
    let mut scanned = 0i64;
    for c in candidates(keyring)? {
        let read = crate::seal::isolated_except(
            || count(&c, &ranges, max_blocks),
            // (a cancel and the like reach the caller; a lock not granted is this column's)
            |sqlstate| sqlstate != "55P03" && crate::seal::not_the_calls_own(sqlstate),
        )?;
        scanned += 1;
        let blocks_read = c.blocks.min(max_blocks);
        let (rows, error) = match read {
            Ok(n) => (Some(n), None),
            Err(f) => (None, Some(format!("{}: {}", f.sqlstate, f.message))),
        };
        if rows != Some(0) || blocks_read < c.blocks {
            out.push(Finding {
                table: c.rel,
                column: c.column,
                rows,
                blocks_read,
                blocks: c.blocks,
                error,
            });
        }
    }
    crate::audit::lock_chain()?;
    crate::audit::record(
        "find_unregistered",
        Some(keyring),
        None,
        None,
        None,
        serde_json::json!({
            "columns_read": scanned,
            "columns_with_envelopes": out.iter().filter(|f| f.rows.unwrap_or(0) > 0).count(),
            "columns_not_read_whole": out.iter().filter(|f| f.rows.is_none() || f.blocks_read < f.blocks).count(),
        }),
    )?;
    Ok(out)
}

/// Whether find_unregistered has run for `keyring` since the last column registration (of any
/// keyring): compared by audit id, which follows commit order (and the order within one
/// transaction).
pub fn run_since_last_registration(keyring: &str) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT coalesce((SELECT pg_catalog.max(a.id) FROM meshhook_keys.audit_log a
                           WHERE a.action OPERATOR(pg_catalog.=) 'find_unregistered' AND a.keyring OPERATOR(pg_catalog.=) $1)
                         OPERATOR(pg_catalog.>)
                         coalesce((SELECT pg_catalog.max(r.id) FROM meshhook_keys.audit_log r
                                    WHERE r.action OPERATOR(pg_catalog.=) ANY (ARRAY['register_column', 'register_blind_index'])
                                      AND r.outcome OPERATOR(pg_catalog.=) 'ok'), 0), false)",
        &[keyring.into()],
    )?
    .unwrap_or(false))
}
