//! From Supabase Vault to the built-in store: `import_supabase_vault(keyring, dry_run)`.
//!
//! Vault keeps `vault.secrets` and shows plaintext through the view `vault.decrypted_secrets`. The
//! import copies only what its caller may read (it needs `SELECT` on that view, checked first), and
//! Vault's code runs as **its owner**, sealed, the way PostgreSQL runs a materialized view's query
//! as the view's owner: the view and the functions it calls are whoever owns the `vault` schema's,
//! and must never run with the importer's authority (an operator's, or a superuser's). Whatever
//! that code writes is rolled back once the secrets are read: the read is a question. The
//! extension's SECURITY DEFINER authority is never used to read Vault. Each secret is sealed here,
//! in memory, under the keyring's active key with the store's context (`id || '/' || tenant`,
//! tenant `''`), and only the envelope is written to `meshhook_keys.secrets`, keeping Vault's id,
//! name, description and timestamps.
//!
//! One bad row never stops the others. Each Vault secret is read on its own, in a subtransaction:
//! real Vault *raises* for a secret it cannot decrypt (a pgsodium key that is gone, a damaged
//! row), and that row is skipped as `unreadable` with its SQLSTATE (only the SQLSTATE: Vault's
//! message could quote a secret). A cancel, a timeout, a deadlock or running out of resources is
//! not a bad row: it stops the import, as it stops any statement. Every Vault secret ends in
//! exactly one class, decided in this order:
//! 1. `already_imported`: the store has a secret with its id (a second run imports nothing twice);
//! 2. `invalid_names`: its name is `''`, which Vault accepts and the store does not;
//! 3. `name_conflicts`: another secret of the store (tenant `''`) has its name; never overwritten;
//! 4. `unreadable`: reading its `decrypted_secret` raised or gave NULL (or it has no id);
//! 5. `imported`.
//!
//! Skipped secrets (2 to 4) are named by id, with the reason, in the result's `skipped` column.
//! A dry run classifies exactly as the real run does (what the run has imported so far counts for
//! both) and checks that the keyring can encrypt that many secrets now, so it fails where the real
//! run would; it writes nothing. Imports are serialized by a lock of their own (the second waits
//! for the first to end) and classify against the store as committed now, so two concurrent
//! imports never collide, at any isolation level; a secret another session writes at the same
//! moment under the same id or name is classified when its insert meets it (never an error). Every
//! import leaves an audit row with its counts: in the caller's transaction when it succeeds, and
//! written durably (by the audit worker) with the SQLSTATE when it fails.
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
    pub id: Option<pgrx::Uuid>,
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
                        "id": s.id.map(|id| id.to_string()),
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

    fn skip(&mut self, id: Option<pgrx::Uuid>, reason: Reason, sqlstate: Option<String>) {
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
/// read raised (None: it was NULL, or gone).
struct VaultSecret {
    id: Option<pgrx::Uuid>,
    name: Option<String>,
    description: Option<String>,
    secret: std::result::Result<Zeroizing<String>, Option<String>>,
    created_at: Option<TimestampWithTimeZone>,
    updated_at: Option<TimestampWithTimeZone>,
}

const VIEW: &str = "vault.decrypted_secrets";
const TABLE: &str = "vault.secrets";

/// Whether `role` may read `relation` (USAGE on its schema and SELECT on it).
fn may_read(role: pg_sys::Oid, relation: &str) -> Result<bool> {
    Ok(store::read_one::<bool>(
        "SELECT pg_catalog.has_schema_privilege($1, 'vault', 'USAGE')
            AND pg_catalog.has_table_privilege($1, $2::pg_catalog.regclass, 'SELECT')",
        &[role.into(), relation.into()],
    )? == Some(true))
}

/// The owner of `relation`, whose code it is.
fn owner_of(relation: &str) -> Result<pg_sys::Oid> {
    store::read_one::<pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
        &[relation.into()],
    )?
    .ok_or(KeysError::VaultMissing)
}

/// Every secret of `vault.decrypted_secrets`, read for `caller` (who must be allowed to read it)
/// as the view's owner, sealed, and then undone: first the rows without their values, then each
/// value on its own, in a subtransaction, so that a row whose decryption raises is only that
/// row's failure. The rows are listed from the view when that does not decrypt them all
/// (PostgreSQL evaluates a view column it is not asked for when the column calls a volatile
/// function, and then one bad row would fail the list), else from `vault.secrets` (which the
/// caller must then be allowed to read too, and which is read as its owner).
fn read_vault(caller: pg_sys::Oid) -> Result<Vec<VaultSecret>> {
    if !may_read(caller, VIEW)? {
        return Err(KeysError::VaultNotReadable(context::role_name(caller)));
    }
    let view_owner = owner_of(VIEW)?;
    seal::undone(|| {
        // (a bad row is skipped and reported; an error not a row's own, a cancel say, stops the
        // import)
        let listed = seal::run(view_owner, false, || {
            seal::isolated_except(|| list(VIEW), seal::not_the_calls_own)
        })?;
        let mut out = match listed {
            Ok(rows) => rows,
            Err(view_failure) => {
                if !may_read(caller, TABLE)? {
                    return Err(KeysError::VaultUnlistable(
                        view_failure.sqlstate,
                        context::role_name(caller),
                    ));
                }
                let table_owner = owner_of(TABLE)?;
                match seal::run(table_owner, false, || {
                    seal::isolated_except(|| list(TABLE), seal::not_the_calls_own)
                })? {
                    Ok(rows) => rows,
                    Err(f) => return Err(KeysError::VaultRaised(f.sqlstate)),
                }
            }
        };
        seal::run(view_owner, false, || {
            for s in out.iter_mut() {
                let Some(id) = s.id else { continue };
                s.secret = match seal::isolated_except(|| read_value(id), seal::not_the_calls_own)?
                {
                    Ok(Some(v)) => Ok(v),
                    Ok(None) => Err(None),
                    Err(f) => Err(Some(f.sqlstate)),
                };
            }
            Ok(())
        })?;
        Ok(out)
    })
}

/// The value of one Vault secret (None: NULL, or no such row any more).
fn read_value(id: pgrx::Uuid) -> Result<Option<Zeroizing<String>>> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id OPERATOR(pg_catalog.=) $1 LIMIT 1",
            None,
            &[id.into()],
        )?;
        match rows.into_iter().next() {
            Some(row) => Ok(row.get::<String>(1)?.map(Zeroizing::new)),
            None => Ok(None),
        }
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
                id: row.get::<pgrx::Uuid>(1)?,
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

fn standing(id: pgrx::Uuid, name: &Option<String>) -> Result<Standing> {
    let rows = crate::fresh::select(
        "SELECT EXISTS (SELECT 1 FROM meshhook_keys.secrets WHERE id OPERATOR(pg_catalog.=) $1),
                EXISTS (SELECT 1 FROM meshhook_keys.secrets
                         WHERE tenant OPERATOR(pg_catalog.=) '' AND name OPERATOR(pg_catalog.=) $2 AND id OPERATOR(pg_catalog.<>) $1)",
        &[id.into(), name.clone().into()],
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
    seal::reported(
        || import_in(validate_keyring(keyring)?, dry_run),
        |sqlstate| {
            audit::record_failed_action(
                "import_vault",
                keyring,
                sqlstate,
                &[("dry_run", dry_run.to_string())],
            )
        },
    )
}

fn import_in(keyring: &str, dry_run: bool) -> Result<Imported> {
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
    let mut n = Imported {
        vault_secrets: secrets.len() as i64,
        ..Imported::default()
    };
    // What this run has imported (or, dry, would have): the real run's later rows see them in the
    // store; the dry run's must see them too.
    let mut ids_done: std::collections::HashSet<[u8; 16]> = Default::default();
    let mut names_done: std::collections::HashSet<String> = Default::default();
    let mut to_import: u64 = 0;
    for s in &secrets {
        let Some(id) = s.id else {
            n.skip(None, Reason::Unreadable, None);
            continue;
        };
        let standing = if ids_done.contains(id.as_bytes()) {
            Standing::AlreadyImported
        } else if s.name.as_deref() == Some("") {
            // (an empty name conflicts with nothing in the store: only the id is asked)
            match standing(id, &None)? {
                Standing::AlreadyImported => Standing::AlreadyImported,
                _ => {
                    n.skip(Some(id), Reason::InvalidName, None);
                    continue;
                }
            }
        } else if s
            .name
            .as_ref()
            .is_some_and(|name| names_done.contains(name))
        {
            Standing::NameTaken
        } else {
            standing(id, &s.name)?
        };
        match standing {
            Standing::AlreadyImported => n.already_imported += 1,
            Standing::NameTaken => n.skip(Some(id), Reason::NameConflict, None),
            Standing::New => match &s.secret {
                Err(sqlstate) => n.skip(Some(id), Reason::Unreadable, sqlstate.clone()),
                Ok(plaintext) => {
                    if !dry_run {
                        match insert(id, s, plaintext, keyring)? {
                            Inserted::Yes => {}
                            // (another session wrote this id or name while we were here)
                            Inserted::No(Standing::AlreadyImported) => {
                                n.already_imported += 1;
                                continue;
                            }
                            Inserted::No(_) => {
                                n.skip(Some(id), Reason::NameConflict, None);
                                continue;
                            }
                        }
                    }
                    to_import += 1;
                    n.imported += 1;
                    ids_done.insert(*id.as_bytes());
                    if let Some(name) = &s.name {
                        names_done.insert(name.clone());
                    }
                }
            },
        }
    }
    if dry_run && to_import > 0 {
        would_encrypt(keyring, to_import)?;
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

/// Whether the real run could seal `n` secrets under `keyring` now: the error its encryptions
/// would raise, if any (no active key, a locked or destroyed keyring, the tenant check, the
/// encryption ceiling). Nothing is made, counted or kept: whatever finding the key touched is
/// rolled back.
fn would_encrypt(keyring: &str, n: u64) -> Result<()> {
    seal::undone(|| match envelope::would_encrypt_with(keyring)? {
        Some(key) => crate::usage::check(&key, n),
        None => Ok(()),
    })
}

/// What an insert did: wrote the secret, or met a row another session wrote meanwhile.
enum Inserted {
    Yes,
    No(Standing),
}

fn insert(
    id: pgrx::Uuid,
    s: &VaultSecret,
    plaintext: &Zeroizing<String>,
    keyring: &str,
) -> Result<Inserted> {
    let context = format!("{id}/");
    let ciphertext = envelope::encrypt(Some(plaintext.as_bytes()), Some(&context), Some(keyring))?;
    let written = Spi::connect_mut(|c| {
        let rows = c.update(
            "INSERT INTO meshhook_keys.secrets
                    (id, tenant, name, description, keyring, ciphertext, created_at, updated_at)
             VALUES ($1, '', $2, coalesce($3, ''), $4, $5,
                     coalesce($6, pg_catalog.now()), coalesce($7, $6, pg_catalog.now()))
             ON CONFLICT DO NOTHING
             RETURNING id",
            None,
            &[
                id.into(),
                s.name.clone().into(),
                s.description.clone().into(),
                keyring.into(),
                ciphertext.into(),
                s.created_at.into(),
                s.updated_at.into(),
            ],
        )?;
        Ok::<_, KeysError>(!rows.is_empty())
    })?;
    if written {
        Ok(Inserted::Yes)
    } else {
        Ok(Inserted::No(standing(id, &s.name)?))
    }
}
