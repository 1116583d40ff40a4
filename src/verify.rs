//! `verify(sample)`: can the stored ciphertexts still be decrypted? A sample of each registered
//! column is read *as the table's owner, restricted* (the context expression is the owner's code,
//! exactly as in re-encryption: it never runs with the caller's authority), and decrypted here;
//! only counts come back, never a value. Each column is checked in a subtransaction of its own, so
//! one column the owner cannot read (a revoked schema, a dropped function) is a per-column error,
//! not a failed call.

use crate::crypto;
use crate::error::{KeysError, Result};
use crate::reencrypt::{self, Column};
use crate::resolver;
use crate::scheduler::{self, Mode};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// One registered column's result.
pub struct Checked {
    pub rel: pg_sys::Oid,
    pub column: String,
    pub keyring: String,
    pub sampled: i64,
    pub decrypted: i64,
    pub failed: i64,
    /// Rows of a user-held keyring the caller has not unlocked: not checkable by this caller.
    pub locked: i64,
    pub error: Option<String>,
}

/// Every registered (keyring, column) of existing tables, in a stable order.
fn registrations() -> Result<Vec<(String, Column)>> {
    let keyrings: Vec<String> = Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "SELECT DISTINCT keyring FROM meshhook_keys.encrypted_column ORDER BY 1",
            None,
            &[],
        )? {
            out.extend(row.get::<String>(1)?);
        }
        Ok::<_, KeysError>(out)
    })?;
    let mut out = Vec::new();
    for k in keyrings {
        for col in reencrypt::columns_of_keyring(&k)? {
            if col.exists() {
                out.push((k.clone(), col));
            }
        }
    }
    Ok(out)
}

/// Key ids of every version of `keyring`, whatever their state.
fn keyring_key_ids(keyring: &str) -> Result<Vec<i64>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(
            "SELECT key_id FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1 ORDER BY version",
            None,
            &[keyring.into()],
        )? {
            out.extend(row.get::<i64>(1)?);
        }
        Ok(out)
    })
}

/// Up to `sample` (ciphertext, context) pairs of the keyring's rows in `col`, read as the owner.
fn sample_rows(col: &Column, keyring: &str, sample: i64) -> Result<Vec<(Vec<u8>, Option<String>)>> {
    let keys = keyring_key_ids(keyring)?;
    let table = col.table.as_deref().unwrap_or_default();
    let c = quote_identifier(&col.column);
    let sql = format!(
        "SELECT t.{c}, {ctx} FROM ONLY {table} AS t WHERE {on_keys} LIMIT $1",
        ctx = reencrypt::context_item(&col.context_expr),
        on_keys = reencrypt::on_keys_test(&format!("t.{c}"), 2, keys.len()),
    );
    let ranges = reencrypt::key_ranges(&keys);
    reencrypt::as_role(col.owner, || {
        Spi::connect(|cl| {
            let mut args = vec![sample.into()];
            args.extend(ranges.iter().map(|r| r.as_slice().into()));
            let mut out = Vec::new();
            for row in cl.select(sql.as_str(), None, &args)? {
                if let Some(ct) = row.get::<Vec<u8>>(1)? {
                    out.push((ct, row.get::<String>(2)?));
                }
            }
            Ok(out)
        })
    })
}

fn check(col: &Column, keyring: &str, sample: i64) -> Result<(i64, i64, i64, i64)> {
    let rows = sample_rows(col, keyring, sample)?;
    let (mut decrypted, mut failed, mut locked) = (0, 0, 0);
    for (ct, ctx) in &rows {
        let key = crypto::parse_key_id(ct)
            .map_err(KeysError::from)
            .and_then(resolver::key_for_decrypt);
        match (key, ctx) {
            (Err(KeysError::KeyringLocked(_)), _) => locked += 1,
            (Ok(key), Some(ctx)) if crypto::open(&key.cipher, ct, ctx.as_bytes()).is_ok() => {
                decrypted += 1
            }
            _ => failed += 1,
        }
    }
    Ok((rows.len() as i64, decrypted, failed, locked))
}

/// Check every registered column of existing tables.
pub fn verify(sample: i64) -> Result<Vec<Checked>> {
    let mut out = Vec::new();
    for (keyring, col) in registrations()? {
        let r = scheduler::isolated(Mode::Subtransactions, || check(&col, &keyring, sample));
        let (sampled, decrypted, failed, locked, error) = match r {
            Ok((s, d, f, l)) => (s, d, f, l, None),
            Err(e) => (0, 0, 0, 0, Some(e.to_string())),
        };
        out.push(Checked {
            rel: col.rel,
            column: col.column.clone(),
            keyring,
            sampled,
            decrypted,
            failed,
            locked,
            error,
        });
    }
    Ok(out)
}
