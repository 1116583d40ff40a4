//! Tenant-bound keyrings: who may encrypt or decrypt with them.
//!
//! A keyring created with a tenant (`keyring_create(name, tenant)`) can be used only by a session
//! that `meshhook_keys.tenant_check` approves: a function `(tenant text) RETURNS boolean`, called with
//! the caller's privileges (never the extension owner's) inside a security-restricted operation, so it
//! can read `request.jwt.claims` and membership tables the way Supabase's `auth.uid()` does. Members
//! of `meshhook_keys_service` bypass it explicitly (superusers, like everywhere in PostgreSQL, too).
//! No check configured means refused: a tenant-bound keyring is never open by accident.
//!
//! Decisions are cached for the current transaction (a PostgREST request), keyed by role, tenant,
//! `request.jwt.claims` and the check's name, so a scan decrypting many rows asks once.

use crate::datakey::CachedKey;
use crate::error::{KeysError, Result};
use crate::gucs;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default)]
struct TxCache {
    lxid: u32,
    /// check name -> function oid
    functions: HashMap<String, pg_sys::Oid>,
    /// (role, tenant, claims, check name) -> allowed
    decisions: HashMap<(u32, String, String, String), bool>,
}

thread_local! {
    static CACHE: RefCell<TxCache> = RefCell::new(TxCache::default());
}

fn claims() -> String {
    crate::context::jwt_claims().unwrap_or_default()
}

fn is_service(role: pg_sys::Oid) -> bool {
    // SAFETY: missing_ok lookup; has_privs_of_role only reads the catalogs.
    unsafe {
        let service = pg_sys::get_role_oid(c"meshhook_keys_service".as_ptr(), true);
        service != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, service)
    }
}

/// The oid of `name(text) RETURNS boolean`, or a clear error.
fn resolve(name: &str) -> Result<pg_sys::Oid> {
    let oid = crate::store::read_one::<pg_sys::Oid>(
        "SELECT p.oid FROM pg_catalog.pg_proc p
          WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure($1 OPERATOR(pg_catalog.||) '(text)') AND p.prorettype OPERATOR(pg_catalog.=) 'pg_catalog.bool'::pg_catalog.regtype",
        &[name.into()],
    )
    .ok()
    .flatten();
    oid.ok_or_else(|| {
        KeysError::InvalidArgument(format!(
            "meshhook_keys.tenant_check names \"{name}\", which is not a function (tenant text) RETURNS boolean (give its schema)"
        ))
    })
}

/// Call the check as the caller, in a security-restricted operation.
fn call(func: pg_sys::Oid, role: pg_sys::Oid, tenant: &str) -> Result<bool> {
    let arg = tenant.into_datum().expect("a text datum is never NULL");
    // The caller's identity, sealed and undone (crate::seal::ask): a question, not an action. A
    // NULL result raises in fmgr.
    let r = crate::seal::ask(role, || {
        // SAFETY: calls a function by oid with one non-NULL text argument.
        Ok(unsafe { pg_sys::OidFunctionCall1Coll(func, pg_sys::DEFAULT_COLLATION_OID, arg) })
    })?;
    Ok(r.value() != 0)
}

/// Refuse unless the caller may use `key` (encrypt or decrypt) under its keyring's tenant.
pub fn check(key: &CachedKey, op: &'static str) -> Result<()> {
    check_keyring(&key.keyring, key.tenant.as_deref(), op)
}

/// Refuse unless the caller may use keys of `keyring`, bound to `tenant` (if any). Also called
/// before a key's state is reported, so that an unauthorized caller never learns whether another
/// tenant's key is retired or destroyed.
pub fn check_keyring(keyring: &str, tenant: Option<&str>, op: &'static str) -> Result<()> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    // Inside code meshhook_keys runs on a table owner's behalf, the owner; in a security-restricted
    // operation someone else started, nobody (refused).
    let Some(role) = crate::context::caller().role() else {
        return Err(KeysError::TenantDenied {
            keyring: keyring.to_string(),
            tenant: tenant.to_string(),
            op,
        });
    };
    if is_service(role) {
        return Ok(());
    }
    let Some(check_name) = gucs::tenant_check() else {
        return Err(KeysError::TenantCheckMissing(keyring.to_string()));
    };
    let lxid = crate::context::current_lxid();
    let cache_key = (
        role.to_u32(),
        tenant.to_string(),
        claims(),
        check_name.clone(),
    );
    let cached = CACHE.with_borrow_mut(|c| {
        if c.lxid != lxid {
            *c = TxCache {
                lxid,
                ..TxCache::default()
            };
        }
        c.decisions.get(&cache_key).copied()
    });
    let allowed = match cached {
        Some(a) => a,
        None => {
            let func = match CACHE.with_borrow(|c| c.functions.get(&check_name).copied()) {
                Some(f) => f,
                None => {
                    let f = crate::store::with_fixed_search_path(|| resolve(&check_name))?;
                    CACHE.with_borrow_mut(|c| c.functions.insert(check_name.clone(), f));
                    f
                }
            };
            let a = call(func, role, tenant)?;
            CACHE.with_borrow_mut(|c| c.decisions.insert(cache_key, a));
            a
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(KeysError::TenantDenied {
            keyring: keyring.to_string(),
            tenant: tenant.to_string(),
            op,
        })
    }
}
