//! Blind indexes (issue 28): equality search over encrypted values without decrypting them. A
//! blind index is a MAC of the value, truncated to 128 bits, under a key derived from a keyring
//! version's data key for the index's context (crate::mac), so it rotates with the keyring: a
//! value written before a rotation has its index under the old version, one written after under
//! the new one. `blind_index_candidates` gives one index per version that still decrypts, so
//! `WHERE idx = ANY (candidates)` finds the rows of every version; re-encryption recomputes the
//! index column a registration names (crate::reencrypt), so once it has run and the old versions
//! are retired one candidate is left. Layer 4: called by the SQL surface.

use crate::envelope::active_key_for;
use crate::error::{KeysError, Result};
use crate::keyring::validate_keyring;

fn args<'a>(
    value: Option<&'a str>,
    keyring: Option<&'a str>,
    context: Option<&'a str>,
) -> Result<(&'a str, &'a str, &'a str)> {
    let value = value.ok_or(KeysError::NullArgument("value"))?;
    let keyring = validate_keyring(keyring)?;
    let context = context.ok_or(KeysError::NullArgument("context"))?;
    Ok((value, keyring, context))
}

/// The blind index of `value` under the active version of `keyring` for `context` (what a row
/// written now stores).
pub fn blind_index(
    value: Option<&str>,
    keyring: Option<&str>,
    context: Option<&str>,
) -> Result<Vec<u8>> {
    let (value, keyring, context) = args(value, keyring, context)?;
    let key = active_key_for(keyring, "indexing")?;
    Ok(key
        .mac
        .blind_index(context.as_bytes(), value.as_bytes())
        .to_vec())
}

/// The blind index of `value` under every version of `keyring` that still decrypts (pending,
/// active, decrypt-only), newest first: what a search compares the index column with.
pub fn candidates(
    value: Option<&str>,
    keyring: Option<&str>,
    context: Option<&str>,
) -> Result<Vec<Vec<u8>>> {
    let (value, keyring, context) = args(value, keyring, context)?;
    Ok(crate::signing::verifying_keys(keyring, "indexing")?
        .iter()
        .map(|k| {
            k.mac
                .blind_index(context.as_bytes(), value.as_bytes())
                .to_vec()
        })
        .collect())
}
