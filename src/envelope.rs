//! The encrypt/decrypt core: an envelope is sealed under the keyring's active key (creating the
//! `default` keyring on first use) and opened with the key its header names, after the tenant
//! check. Layer 4: called by the SQL surface; calls the keyring module, the key cache and tenancy.

use crate::crypto;
use crate::error::{KeysError, Result};
use crate::keyring::{DEFAULT_KEYRING, ensure_default_keyring, validate_keyring_bytes};
use crate::resolver;

pub fn encrypt(
    plaintext: Option<&[u8]>,
    context: Option<&str>,
    keyring: Option<&str>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (context, keyring) = (context.map(str::as_bytes), keyring.map(str::as_bytes));
    encrypt_into(plaintext, context, keyring, |len| {
        out.resize(len, 0);
        &mut out
    })?;
    Ok(out)
}

/// [`encrypt`] into a buffer of the envelope's length that `alloc` hands out (the result datum's):
/// `alloc` is called only once the envelope will be made, and the envelope is sealed in place there.
/// The context is the bytes of the `text` argument, as they are bound into the envelope.
pub fn encrypt_into<'a>(
    plaintext: Option<&[u8]>,
    context: Option<&[u8]>,
    keyring: Option<&[u8]>,
    alloc: impl FnOnce(usize) -> &'a mut [u8],
) -> Result<()> {
    // (let-else, not ok_or: an error made and dropped on every call is not free)
    let Some(plaintext) = plaintext else {
        return Err(KeysError::NullArgument("plaintext"));
    };
    let Some(context) = context else {
        return Err(KeysError::NullArgument("context"));
    };
    let key = encrypting_key(validate_keyring_bytes(keyring)?)?;
    crate::usage::count(&key, 1)?;
    let out = alloc(crypto::MIN_ENVELOPE_LEN + plaintext.len());
    crypto::seal_into(&key.cipher, key.key_id, plaintext, context, out);
    Ok(())
}

/// The key `encrypt` would seal under for `keyring` now, or the error it would raise, without
/// making anything: None for the `default` keyring before its first use (`encrypt` would create it).
pub fn would_encrypt_with(
    keyring: &str,
) -> Result<Option<std::rc::Rc<crate::keycache::CachedKey>>> {
    if keyring == DEFAULT_KEYRING && resolver::active_key(keyring)?.is_none() {
        return Ok(None);
    }
    encrypting_key(keyring).map(Some)
}

/// The key `encrypt` seals under for `keyring` (its active key, after the tenant check), or the
/// error `encrypt` would raise; creates the `default` keyring on first use.
pub fn encrypting_key(keyring: &str) -> Result<std::rc::Rc<crate::keycache::CachedKey>> {
    active_key_for(keyring, "encryption")
}

/// [`encrypting_key`] for another use of the active key (`op` names it in a tenant refusal).
pub fn active_key_for(
    keyring: &str,
    op: &'static str,
) -> Result<std::rc::Rc<crate::keycache::CachedKey>> {
    let key = match resolver::active_key(keyring)? {
        Some(k) => k,
        None if keyring == DEFAULT_KEYRING => crate::store::with_fixed_search_path(|| {
            ensure_default_keyring()?;
            resolver::active_key(keyring)?.ok_or_else(|| KeysError::NoActiveKey(keyring.into()))
        })?,
        None => {
            let (destroyed, tenant) = crate::store::with_fixed_search_path(|| {
                crate::store::keyring_destroyed_and_tenant(keyring)
            })?;
            // (whether another tenant's keyring was destroyed is theirs to know)
            crate::tenancy::check_keyring(keyring, tenant.as_deref(), op)?;
            if destroyed.is_some() {
                return Err(KeysError::KeyringDestroyed(keyring.into()));
            }
            // (its first version may still wait for the standbys to replay it)
            return Err(crate::store::with_fixed_search_path(|| {
                crate::activation::pending_error(keyring)
            })?);
        }
    };
    crate::tenancy::check(&key, op)?;
    Ok(key)
}

/// What opening an envelope starts with: both arguments present, and the key the envelope names,
/// for a caller the tenant check lets use it.
fn opening_key<'a>(
    ciphertext: Option<&'a [u8]>,
    context: Option<&'a [u8]>,
) -> Result<(&'a [u8], &'a [u8], std::rc::Rc<crate::keycache::CachedKey>)> {
    let Some(ciphertext) = ciphertext else {
        return Err(KeysError::NullArgument("ciphertext"));
    };
    let Some(context) = context else {
        return Err(KeysError::NullArgument("context"));
    };
    let key = resolver::key_for_decrypt(crypto::parse_key_id(ciphertext)?)?;
    crate::tenancy::check(&key, "decryption")?;
    Ok((ciphertext, context, key))
}

pub fn decrypt(
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let (ciphertext, context, key) = opening_key(ciphertext, context.map(str::as_bytes))?;
    Ok(crypto::open(&key.cipher, ciphertext, context)?)
}

/// As [`decrypt`], with the plaintext written straight into the buffer `out(length)` returns (the
/// result datum): no other copy of it is made, and a failed check leaves the buffer wiped. The
/// context is the bytes of the `text` argument.
pub fn decrypt_into(
    ciphertext: Option<&[u8]>,
    context: Option<&[u8]>,
    out: impl FnOnce(usize) -> &'static mut [u8],
) -> Result<()> {
    let (ciphertext, context, key) = opening_key(ciphertext, context)?;
    let buf = out(crypto::plaintext_len(ciphertext));
    Ok(crypto::open_into(&key.cipher, ciphertext, context, buf)?)
}

/// Move an envelope to its keyring's active version without the plaintext leaving (Vault Transit's
/// `rewrap`): opened with the key it names (the tenant check as for decryption, so a wrong context
/// or a tampered envelope fails as it would there), then sealed under that keyring's active key
/// with the same context (the tenant check as for encryption, counted against the key's limit).
/// An envelope already on the active key is returned as it is, once it has opened: nothing new is
/// sealed or counted. The plaintext lives only in a buffer wiped when it drops.
pub fn rewrap(ciphertext: Option<&[u8]>, context: Option<&str>) -> Result<Vec<u8>> {
    let (ciphertext, context, old) = opening_key(ciphertext, context.map(str::as_bytes))?;
    let plaintext = crypto::open(&old.cipher, ciphertext, context)?;
    let active = encrypting_key(&old.keyring)?;
    if active.key_id == old.key_id {
        return Ok(ciphertext.to_vec());
    }
    crate::usage::count(&active, 1)?;
    Ok(crypto::seal(
        &active.cipher,
        active.key_id,
        &plaintext,
        context,
    ))
}

/// Decrypt an envelope that a row says belongs to `keyring` (the built-in store's view): as
/// [`decrypt`], and refused (XX001) when the envelope's key belongs to another keyring, so that a
/// ciphertext moved into a row of another keyring is never shown as that keyring's secret.
pub fn decrypt_in(
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
    keyring: Option<&str>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let keyring = keyring.ok_or(KeysError::NullArgument("keyring"))?;
    let ciphertext = ciphertext.ok_or(KeysError::NullArgument("ciphertext"))?;
    let key = resolver::key_for_decrypt(crypto::parse_key_id(ciphertext)?)?;
    crate::tenancy::check(&key, "decryption")?;
    if key.keyring != keyring {
        return Err(KeysError::EnvelopeOfAnotherKeyring {
            row: keyring.into(),
            envelope: key.keyring.clone(),
        });
    }
    decrypt(Some(ciphertext), context)
}

/// A new 256-bit data key for encryption outside the database (Vault Transit's `datakey`, KMS's
/// `GenerateDataKey`), and its envelope: sealed under the keyring's active key bound to
/// `context` like any encryption (counted, tenant check, user-held unlock), so rotation,
/// re-encryption and `rewrap` move it like any other envelope. The key is in a buffer wiped when
/// it drops.
pub fn generate_data_key(
    keyring: Option<&str>,
    context: Option<&str>,
) -> Result<(zeroize::Zeroizing<[u8; crypto::KEY_LEN]>, Vec<u8>)> {
    let mut key = zeroize::Zeroizing::new([0u8; crypto::KEY_LEN]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut());
    let envelope = encrypt(Some(key.as_ref()), context, keyring)?;
    Ok((key, envelope))
}

/// The data key in an envelope made by [`generate_data_key`]: opened as [`decrypt`] opens it, and
/// refused (22023) when what it holds is not a 256-bit key (the length is not a secret: it is the
/// envelope's, less its fixed overhead).
pub fn unwrap_data_key(
    envelope: Option<&[u8]>,
    context: Option<&str>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let key = decrypt(envelope, context)?;
    if key.len() != crypto::KEY_LEN {
        return Err(KeysError::InvalidArgument(format!(
            "the envelope holds {} bytes, not a 256-bit data key (made by datakey_generate)",
            key.len()
        )));
    }
    Ok(key)
}
