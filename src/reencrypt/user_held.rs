//! keyring_rotate_secret as a whole: the user-held keyring's rewrap (and, with `reencrypt`, its new
//! data key) in the keys layer, then every registered row of the keyring moved to the new key, in
//! the caller's transaction, then one `rotate_secret` audit row with the counts.
//!
//! Invariants: `userheld::rewrap` leaves the keyring row-locked and the audit chain locked, so no
//! other session rotates or rewraps it while its rows move; rows keep their identifiers (only the
//! ciphertext column changes), so rows that reference each other stay linked. Nothing commits in
//! between: an error anywhere rolls the new secret, the new key and every moved row back together.

use super::batch::batch;
use crate::audit;
use crate::error::Result;
use crate::userheld;

/// Rows moved per batch while re-encrypting a user-held keyring in one transaction.
const BATCH_ROWS: i32 = 10_000;

pub struct Rotated {
    pub rewrapped: i32,
    pub new_version: Option<i32>,
    pub rows_reencrypted: i64,
}

/// Change a user-held keyring's secret; with `reencrypt`, also a new data key and every
/// registered row re-encrypted with it.
pub fn rotate_secret(
    keyring: &str,
    old: Option<&str>,
    new: Option<&str>,
    reencrypt: bool,
) -> Result<Rotated> {
    let r = userheld::rewrap(keyring, old, new, reencrypt)?;
    let mut moved = 0i64;
    if reencrypt {
        while let Some(n) = batch(keyring, BATCH_ROWS)? {
            moved += n;
        }
    }
    audit::record(
        "rotate_secret",
        Some(keyring),
        r.new_version,
        None,
        None,
        serde_json::json!({ "versions_rewrapped": r.rewrapped, "reencrypt": reencrypt,
                            "rows_reencrypted": moved }),
    )?;
    Ok(Rotated {
        rewrapped: r.rewrapped,
        new_version: r.new_version,
        rows_reencrypted: moved,
    })
}
