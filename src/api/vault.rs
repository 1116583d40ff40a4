//! The SQL surface of the way in from Supabase Vault: import_supabase_vault. The work is in the
//! vault module; Vault's own function names (create_secret, update_secret) are SQL functions in
//! sql/secrets_store.sql.

use crate::audit;
use crate::error::OrRaise;
use pgrx::prelude::*;

/// Copy every secret of `vault.decrypted_secrets` (read with the caller's privileges) into the
/// built-in store under `keyring`, encrypted before any row is written, keeping ids, names,
/// descriptions and timestamps. One bad Vault row is skipped, counted and named in `skipped`; it
/// never stops the others. Idempotent; `dry_run` (the default) classifies exactly as the real run
/// would and writes no secret. Concurrent imports run one after the other. Audited with counts
/// only, also when it fails. Requires meshhook_keys_operator; Vault is read with the caller's
/// privileges.
#[allow(clippy::type_complexity)]
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn import_supabase_vault(
    keyring: default!(Option<&str>, "'default'"),
    dry_run: default!(Option<bool>, "true"),
) -> TableIterator<
    'static,
    (
        name!(vault_secrets, i64),
        name!(imported, i64),
        name!(already_imported, i64),
        name!(name_conflicts, i64),
        name!(invalid_names, i64),
        name!(unreadable, i64),
        name!(dry_run, bool),
        name!(skipped, pgrx::JsonB),
    ),
> {
    let dry_run = dry_run.unwrap_or(true);
    let n = (|| {
        audit::require_admin("import_supabase_vault", keyring)?;
        crate::vault::import(keyring, dry_run)
    })()
    .or_raise();
    let skipped = pgrx::JsonB(n.skipped_json());
    TableIterator::once((
        n.vault_secrets,
        n.imported,
        n.already_imported,
        n.name_conflicts,
        n.invalid_names,
        n.unreadable,
        dry_run,
        skipped,
    ))
}
