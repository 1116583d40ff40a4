//! The SQL surface of blind indexes: blind_index, blind_index_candidates and
//! _register_blind_index (behind the regclass-typed register_blind_index). The work is in
//! crate::blindindex and crate::reencrypt.

use crate::audit;
use crate::blindindex;
use crate::error::{KeysError, OrRaise};
use crate::keyring::validate_keyring;
use crate::reencrypt;
use pgrx::prelude::*;

/// The blind index of `value` under the active version of `keyring` for `context`: 16 bytes,
/// equal for equal values, to store beside the ciphertext and search with
/// blind_index_candidates. Requires meshhook_keys_user; tenant-bound and user-held keyrings as
/// for secret_encrypt.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn blind_index(
    value: Option<&str>,
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
) -> Vec<u8> {
    blindindex::blind_index(value, keyring, context).or_raise()
}

/// The blind index of `value` under every version of `keyring` that still decrypts, newest
/// first: `WHERE idx = ANY (blind_index_candidates(...))` finds the value's rows across a
/// rotation. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for
/// secret_decrypt.
#[pg_extern(security_definer, stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn blind_index_candidates(
    value: Option<&str>,
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
) -> Vec<Vec<u8>> {
    blindindex::candidates(value, keyring, context).or_raise()
}

/// Name the blind index column of a registered column, with the expression of its context (or
/// forget it: `index_col` NULL). Called by the `register_blind_index(regclass, …)` wrapper.
/// Requires meshhook_keys_operator; also requires the privileges of the table's owner.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _register_blind_index(
    tbl: Option<pg_sys::Oid>,
    col: Option<&str>,
    index_col: Option<&str>,
    index_context: Option<&str>,
    keyring: Option<&str>,
) -> bool {
    (|| {
        audit::require_admin("register_blind_index", keyring)?;
        let rel = tbl.ok_or(KeysError::NullArgument("tbl"))?;
        let col = col.ok_or(KeysError::NullArgument("col"))?;
        let keyring = validate_keyring(keyring)?;
        reencrypt::register_index(rel, col, keyring, index_col, index_context)?;
        Ok(index_col.is_some())
    })()
    .or_raise()
}
