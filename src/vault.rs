//! From Supabase Vault to the built-in store: `import_supabase_vault(keyring, dry_run)`.
//!
//! Vault keeps `vault.secrets` and shows plaintext through the view `vault.decrypted_secrets`. The
//! import reads that view **as the caller** (in a security-restricted operation, as any code of
//! someone else's is run here), so it can copy only what the caller could read anyway; the
//! extension's SECURITY DEFINER authority is never used to read Vault. Each secret is sealed here,
//! in memory, under the keyring's active key with the store's context (`id || '/' || tenant`,
//! tenant `''`), and only the envelope is written to `meshhook_keys.secrets`, keeping Vault's id,
//! name, description and timestamps.
//!
//! Invariants: no plaintext is written to any table, log line, error or audit row (the audit row
//! has counts only), and each plaintext is zeroized once sealed. Vault is only read. A secret whose
//! id is already in the store is never written again (so a second run imports nothing twice), and
//! one whose name another secret of the store already has is skipped and counted, never overwritten.
//! A secret Vault cannot decrypt (`decrypted_secret` NULL) is counted and skipped. Everything
//! happens in the caller's transaction: an error imports nothing.

use crate::audit;
use crate::context;
use crate::envelope;
use crate::error::{KeysError, Result};
use crate::store;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use zeroize::Zeroizing;

/// The function name used in refusals and errors.
const FUNCTION: &str = "import_supabase_vault";

/// What an import found and did (with `dry_run`, what it would do).
#[derive(Default)]
pub struct Imported {
    pub vault_secrets: i64,
    pub imported: i64,
    pub already_imported: i64,
    pub name_conflicts: i64,
    pub unreadable: i64,
}

/// One row of `vault.decrypted_secrets`, its plaintext zeroized on drop.
struct VaultSecret {
    id: pgrx::Uuid,
    name: Option<String>,
    description: Option<String>,
    secret: Option<Zeroizing<String>>,
    created_at: Option<TimestampWithTimeZone>,
    updated_at: Option<TimestampWithTimeZone>,
}

/// Every secret of `vault.decrypted_secrets`, read with the caller's privileges.
fn read_vault(caller: pg_sys::Oid) -> Result<Vec<VaultSecret>> {
    crate::seal::run(caller, false, || {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT id, name, description, decrypted_secret, created_at, updated_at
                   FROM vault.decrypted_secrets ORDER BY created_at, id",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for row in rows {
                out.push(VaultSecret {
                    id: row
                        .get::<pgrx::Uuid>(1)?
                        .ok_or_else(|| KeysError::Internal("a Vault secret has no id".into()))?,
                    name: row.get::<String>(2)?,
                    description: row.get::<String>(3)?,
                    secret: row.get::<String>(4)?.map(Zeroizing::new),
                    created_at: row.get::<TimestampWithTimeZone>(5)?,
                    updated_at: row.get::<TimestampWithTimeZone>(6)?,
                });
            }
            Ok::<_, KeysError>(out)
        })
    })
}

/// Where a Vault secret stands against the store: already imported (same id), blocked by another
/// secret with its name, or new.
enum Standing {
    AlreadyImported,
    NameTaken,
    New,
}

fn standing(s: &VaultSecret) -> Result<Standing> {
    let (by_id, by_name) = store::read_two::<bool, bool>(
        "SELECT EXISTS (SELECT 1 FROM meshhook_keys.secrets WHERE id OPERATOR(pg_catalog.=) $1),
                EXISTS (SELECT 1 FROM meshhook_keys.secrets
                         WHERE tenant OPERATOR(pg_catalog.=) '' AND name OPERATOR(pg_catalog.=) $2 AND id OPERATOR(pg_catalog.<>) $1)",
        &[s.id.into(), s.name.clone().into()],
    )?;
    Ok(match (by_id, by_name) {
        (Some(true), _) => Standing::AlreadyImported,
        (_, Some(true)) => Standing::NameTaken,
        _ => Standing::New,
    })
}

/// Copy every secret of Supabase Vault into the built-in store under `keyring` (with `dry_run`,
/// only count what would be copied). The caller's privilege was checked by the SQL surface.
pub fn import(keyring: &str, dry_run: bool) -> Result<Imported> {
    let present = store::read_one::<bool>(
        "SELECT pg_catalog.to_regclass('vault.decrypted_secrets') IS NOT NULL",
        &[],
    )?;
    if present != Some(true) {
        return Err(KeysError::VaultMissing);
    }
    let caller = context::caller()
        .role()
        .ok_or(KeysError::CallerUnknown(FUNCTION))?;
    let secrets = read_vault(caller)?;
    let mut n = Imported {
        vault_secrets: secrets.len() as i64,
        ..Imported::default()
    };
    for s in &secrets {
        match standing(s)? {
            Standing::AlreadyImported => n.already_imported += 1,
            Standing::NameTaken => n.name_conflicts += 1,
            Standing::New => match &s.secret {
                None => n.unreadable += 1,
                Some(_) if dry_run => n.imported += 1,
                Some(plaintext) => {
                    let context = format!("{}/", s.id);
                    let ciphertext = envelope::encrypt(
                        Some(plaintext.as_bytes()),
                        Some(&context),
                        Some(keyring),
                    )?;
                    Spi::run_with_args(
                        "INSERT INTO meshhook_keys.secrets
                                (id, tenant, name, description, keyring, ciphertext, created_at, updated_at)
                         VALUES ($1, '', $2, coalesce($3, ''), $4, $5,
                                 coalesce($6, pg_catalog.now()), coalesce($7, $6, pg_catalog.now()))",
                        &[
                            s.id.into(),
                            s.name.clone().into(),
                            s.description.clone().into(),
                            keyring.into(),
                            ciphertext.into(),
                            s.created_at.into(),
                            s.updated_at.into(),
                        ],
                    )?;
                    n.imported += 1;
                }
            },
        }
    }
    drop(secrets);
    audit::record(
        "import_vault",
        Some(keyring),
        None,
        None,
        None,
        serde_json::json!({
            "dry_run": dry_run,
            "vault_secrets": n.vault_secrets,
            "imported": n.imported,
            "already_imported": n.already_imported,
            "name_conflicts": n.name_conflicts,
            "unreadable": n.unreadable,
        }),
    )?;
    Ok(n)
}
