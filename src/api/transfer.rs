//! The SQL surface of moving keyrings between databases: keyring_export and keyring_import. The
//! work is in crate::transfer.

use crate::error::OrRaise;
use crate::transfer;
use pgrx::prelude::*;

/// Every version of a keyring (metadata, and each data key not destroyed) sealed under a
/// caller-supplied 256-bit wrapping key (AES-256-GCM, the metadata authenticated): a bundle for
/// keyring_import in another database. A user-held keyring needs its secret. Audited, also when
/// the caller rolls back. Requires meshhook_keys_custodian.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_export(
    keyring: Option<&str>,
    wrapping_key: Option<&[u8]>,
    secret: default!(Option<&str>, "NULL"),
) -> Vec<u8> {
    transfer::export(keyring, wrapping_key, secret).or_raise()
}

/// Import a keyring from a bundle made by keyring_export, under its name or another: its keys
/// wrapped under this database's root key (a user-held keyring's under its new secret), its key
/// ids, versions, states and usage counts kept. Refused for a name or key id this database has
/// (42710) and for an altered bundle or another wrapping key (XX001). Audited. Requires
/// meshhook_keys_custodian.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_import(
    bundle: Option<&[u8]>,
    wrapping_key: Option<&[u8]>,
    keyring: default!(Option<&str>, "NULL"),
    secret: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(keyring, String),
        name!(versions, i32),
        name!(active_version, Option<i32>),
    ),
> {
    let r = transfer::import(bundle, wrapping_key, keyring, secret).or_raise();
    TableIterator::once((r.keyring, r.versions, r.active_version))
}
