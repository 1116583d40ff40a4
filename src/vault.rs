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
//! One bad row never stops the others. Each Vault secret is read on its own, in a subtransaction:
//! real Vault *raises* for a secret it cannot decrypt (a pgsodium key that is gone, a damaged
//! row), and that row is skipped as `unreadable` with its SQLSTATE. Every Vault secret ends in
//! exactly one class, decided in this order:
//! 1. `already_imported`: the store has a secret with its id (a second run imports nothing twice);
//! 2. `invalid_names`: its name is `''`, which Vault accepts and the store does not;
//! 3. `name_conflicts`: another secret of the store (tenant `''`) has its name; never overwritten;
//! 4. `unreadable`: reading its `decrypted_secret` raised or gave NULL;
//! 5. `imported`.
//!
//! Skipped secrets (2 to 4) are named by id, with the reason, in the result's `skipped` column.
//! A dry run classifies exactly as the real run does and also checks that the keyring can encrypt
//! now, so it fails where the real run would; it writes no secret. Imports are serialized by a
//! lock of their own (the second waits for the first to end) and classify against the store as
//! committed now, so two concurrent imports never collide, at any isolation level. Every import
//! leaves an audit row with its counts: in the caller's transaction when it succeeds, and written
//! durably (by the audit worker) with the SQLSTATE when it fails.
//!
//! Invariants: no plaintext is written to any table, log line, error or audit row, and each
//! plaintext is zeroized once sealed (or skipped). Vault is only read. A failed import imports
//! nothing (its subtransaction is rolled back before its error is raised again).

use crate::audit;
use crate::context;
use crate::envelope;
use crate::error::{KeysError, Result};
use crate::keyring::validate_keyring;
use crate::seal;
use crate::store;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use zeroize::Zeroizing;

/// The function name used in refusals and errors.
const FUNCTION: &str = "import_supabase_vault";

/// Why a Vault secret was not imported (other than being imported already).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidName,
    NameConflict,
    Unreadable,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidName => "invalid_name",
            Reason::NameConflict => "name_conflict",
            Reason::Unreadable => "unreadable",
        }
    }
}

/// One skipped Vault secret: its id, why, and for an unreadable one the SQLSTATE its read raised
/// (None when `decrypted_secret` was NULL).
pub struct Skipped {
    pub id: pgrx::Uuid,
    pub reason: Reason,
    pub sqlstate: Option<String>,
}

/// What an import found and did (with `dry_run`, what it would do).
#[derive(Default)]
pub struct Imported {
    pub vault_secrets: i64,
    pub imported: i64,
    pub already_imported: i64,
    pub name_conflicts: i64,
    pub invalid_names: i64,
    pub unreadable: i64,
    pub skipped: Vec<Skipped>,
}

impl Imported {
    /// The skipped secrets as a JSON array of {id, reason[, sqlstate]}, in Vault's order.
    pub fn skipped_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.skipped
                .iter()
                .map(|s| {
                    let mut o = serde_json::json!({
                        "id": s.id.to_string(),
                        "reason": s.reason.as_str(),
                    });
                    if let (Some(code), Some(map)) = (&s.sqlstate, o.as_object_mut()) {
                        map.insert("sqlstate".into(), serde_json::Value::String(code.clone()));
                    }
                    o
                })
                .collect(),
        )
    }

    fn skip(&mut self, id: pgrx::Uuid, reason: Reason, sqlstate: Option<String>) {
        match reason {
            Reason::InvalidName => self.invalid_names += 1,
            Reason::NameConflict => self.name_conflicts += 1,
            Reason::Unreadable => self.unreadable += 1,
        }
        self.skipped.push(Skipped {
            id,
            reason,
            sqlstate,
        });
    }
}

/// One row of `vault.decrypted_secrets`: its plaintext (zeroized on drop), or the SQLSTATE its
/// read raised (None: it was NULL).
struct VaultSecret {
    id: pgrx::Uuid,
    name: Option<String>,
    description: Option<String>,
    secret: std::result::Result<Zeroizing<String>, Option<String>>,
    created_at: Option<TimestampWithTimeZone>,
    updated_at: Option<TimestampWithTimeZone>,
}

/// Every secret of `vault.decrypted_secrets`, read with the caller's privileges: first the rows
/// without their values, then each value on its own, in a subtransaction, so that a row whose
/// decryption raises is only that row's failure. The rows are listed from the view when that does
/// not decrypt them all (PostgreSQL evaluates a view column it is not asked for when the column
/// calls a volatile function, and then one bad row would fail the list), else from `vault.secrets`.
fn read_vault(caller: pg_sys::Oid) -> Result<Vec<VaultSecret>> {
    seal::run(caller, false, || {
        let mut out = match seal::isolated(|| list("vault.decrypted_secrets")) {
            Ok(rows) => rows,
            // (refused the view: that error, as it comes)
            Err(f) if f.sqlstate == "42501" => list("vault.decrypted_secrets")?,
            Err(f) => match seal::isolated(|| list("vault.secrets")) {
                Ok(rows) => rows,
                Err(_) => {
                    return Err(KeysError::VaultUnlistable(
                        f.sqlstate,
                        context::role_name(caller),
                    ));
                }
            },
        };
        for s in &mut out {
            let id = s.id;
            s.secret = match seal::isolated(|| {
                Ok(store::read_one::<String>(
                    "SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id OPERATOR(pg_catalog.=) $1",
                    &[id.into()],
                )?
                .map(Zeroizing::new))
            }) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(None),
                Err(f) => Err(Some(f.sqlstate)),
            };
        }
        Ok(out)
    })
}

/// The Vault secrets of `relation` (Vault's view or its table), in Vault's order, values not read.
fn list(relation: &str) -> Result<Vec<VaultSecret>> {
    Spi::connect(|c| {
        let rows = c.select(
            &format!(
                "SELECT id, name, description, created_at, updated_at FROM {relation} ORDER BY created_at, id"
            ),
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
                secret: Err(None),
                created_at: row.get::<TimestampWithTimeZone>(4)?,
                updated_at: row.get::<TimestampWithTimeZone>(5)?,
            });
        }
        Ok::<_, KeysError>(out)
    })
}

/// Where a Vault secret stands against the store as committed now (whatever the caller's
/// snapshot): already imported (same id), blocked by another secret with its name, or new.
enum Standing {
    AlreadyImported,
    NameTaken,
    New,
}

fn standing(s: &VaultSecret) -> Result<Standing> {
    let rows = crate::fresh::select(
        "SELECT EXISTS (SELECT 1 FROM meshhook_keys.secrets WHERE id OPERATOR(pg_catalog.=) $1),
                EXISTS (SELECT 1 FROM meshhook_keys.secrets
                         WHERE tenant OPERATOR(pg_catalog.=) '' AND name OPERATOR(pg_catalog.=) $2 AND id OPERATOR(pg_catalog.<>) $1)",
        &[s.id.into(), s.name.clone().into()],
        |r| Ok((r.get::<bool>(1)?, r.get::<bool>(2)?)),
    )?;
    Ok(match rows.first() {
        Some((Some(true), _)) => Standing::AlreadyImported,
        Some((_, Some(true))) => Standing::NameTaken,
        _ => Standing::New,
    })
}

/// Copy every secret of Supabase Vault into the built-in store under `keyring` (with `dry_run`,
/// only classify them). The caller's privilege was checked by the SQL surface. A failure is
/// audited durably, with the SQLSTATE, before it is raised.
pub fn import(keyring: Option<&str>, dry_run: bool) -> Result<Imported> {
    let seen = std::cell::Cell::new(0i64);
    seal::reported(
        || import_in(validate_keyring(keyring)?, dry_run, &seen),
        |sqlstate| {
            audit::record_failed_action(
                "import_vault",
                keyring,
                sqlstate,
                &[
                    ("dry_run", dry_run.to_string()),
                    ("vault_secrets", seen.get().to_string()),
                ],
            )
        },
    )
}

fn import_in(keyring: &str, dry_run: bool, seen: &std::cell::Cell<i64>) -> Result<Imported> {
    crate::lock_order::vault_import();
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
    seen.set(secrets.len() as i64);
    let mut n = Imported {
        vault_secrets: secrets.len() as i64,
        ..Imported::default()
    };
    let mut checked_key = false;
    for s in &secrets {
        if s.name.as_deref() == Some("") {
            // (before the store is asked: an empty name conflicts with nothing there)
            if let Standing::AlreadyImported = standing(s)? {
                n.already_imported += 1;
            } else {
                n.skip(s.id, Reason::InvalidName, None);
            }
            continue;
        }
        match standing(s)? {
            Standing::AlreadyImported => n.already_imported += 1,
            Standing::NameTaken => n.skip(s.id, Reason::NameConflict, None),
            Standing::New => match &s.secret {
                Err(sqlstate) => n.skip(s.id, Reason::Unreadable, sqlstate.clone()),
                Ok(_) if dry_run => {
                    if !checked_key {
                        would_encrypt(keyring)?;
                        checked_key = true;
                    }
                    n.imported += 1;
                }
                Ok(plaintext) => {
                    insert(s, plaintext, keyring)?;
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
            "invalid_names": n.invalid_names,
            "unreadable": n.unreadable,
        }),
    )?;
    Ok(n)
}

/// Whether the real run could seal under `keyring` now: the error its first encryption would
/// raise, if any. Whatever finding the key changes (the `default` keyring made on first use) is
/// rolled back, and with it every key the cache loaded from those changes: a dry run writes nothing.
fn would_encrypt(keyring: &str) -> Result<()> {
    seal::undone(|| envelope::encrypting_key(keyring).map(|_| ()))
}

fn insert(s: &VaultSecret, plaintext: &Zeroizing<String>, keyring: &str) -> Result<()> {
    let context = format!("{}/", s.id);
    let ciphertext = envelope::encrypt(Some(plaintext.as_bytes()), Some(&context), Some(keyring))?;
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
    Ok(())
}
