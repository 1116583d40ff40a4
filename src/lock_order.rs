//! The one order in which meshhook_keys takes its locks, so that two of its transactions never
//! deadlock on each other: the Vault import lock (taken before anything else by an import), then
//! the audit chain lock (for callers whose audit rows are written at
//! once), then the keyring's lock (its row in meshhook_keys.keyring, or its re-encryption lock).
//! Every change to a keyring takes its locks here, and only here.

use crate::audit;
use crate::error::{KeysError, Result as KResult};
use crate::locks::{self, Lock, Until};
use crate::store;

/// What taking a keyring's locks does about its row.
pub enum Row<'a> {
    /// Create it if it does not exist (with the default rotation policy).
    CreateIfMissing,
    /// Refuse (42704) a keyring that does not exist.
    Existing,
    /// Create it with this insert, which says whether it did; refuse (42710) if it exists.
    New(&'a dyn Fn() -> KResult<bool>),
}

/// The locks of every change to a keyring, in the one order all of them keep so that two never
/// deadlock: the audit chain lock (for callers whose audit rows are written at once; see
/// audit::lock_chain), then the keyring's row lock, held until the transaction ends. Both are locks
/// only meshhook_keys can take (a row of its own table; crate::locks).
pub fn keyring(keyring: &str, row: Row) -> KResult<()> {
    audit::lock_chain()?;
    match row {
        Row::CreateIfMissing => {}
        Row::Existing => {
            if !store::keyring_exists(keyring)? {
                return Err(KeysError::UnknownKeyring(keyring.into()));
            }
        }
        Row::New(insert) => {
            if !insert()? {
                return Err(KeysError::KeyringExists(keyring.into()));
            }
        }
    }
    store::lock_keyring(keyring)
}

/// The locks of a re-encryption batch, in the same order: the audit chain lock (as in [`keyring`]),
/// then the keyring's re-encryption lock (one batch per keyring at a time), until the transaction
/// ends.
pub fn reencryption(keyring: &str) -> KResult<()> {
    audit::lock_chain()?;
    locks::take(Lock::Reencrypt(keyring), Until::Commit);
    Ok(())
}

/// The lock of an import from Supabase Vault, before any other lock of the import (the audit chain
/// and keyring locks its encryptions and audit row take): two imports run one after the other, the
/// second seeing what the first committed.
pub fn vault_import() {
    locks::take(Lock::VaultImport, Until::Commit);
}
