//! secret_encrypt / secret_decrypt and the header parser.

use crate::api::keys::{DEFAULT_KEYRING, ensure_default_keyring, validate_keyring};
use crate::crypto;
use crate::error::{KeysError, OrRaise, Result, crypto_error};
use crate::keycache;
use pgrx::prelude::*;

pub fn encrypt(
    plaintext: Option<&[u8]>,
    context: Option<&str>,
    keyring: Option<&str>,
) -> Result<Vec<u8>> {
    let plaintext = plaintext.ok_or(KeysError::NullArgument("plaintext"))?;
    let context = context.ok_or(KeysError::NullArgument("context"))?;
    let keyring = validate_keyring(keyring)?;
    let key = match keycache::active_key(keyring)? {
        Some(k) => k,
        None if keyring == DEFAULT_KEYRING => crate::store::with_fixed_search_path(|| {
            ensure_default_keyring()?;
            keycache::active_key(keyring)?.ok_or_else(|| KeysError::NoActiveKey(keyring.into()))
        })?,
        None => {
            let (destroyed, tenant) = crate::store::with_fixed_search_path(|| {
                crate::store::keyring_destroyed_and_tenant(keyring)
            })?;
            // (whether another tenant's keyring was destroyed is theirs to know)
            crate::tenancy::check_keyring(keyring, tenant.as_deref(), "encryption")?;
            if destroyed.is_some() {
                return Err(KeysError::KeyringDestroyed(keyring.into()));
            }
            return Err(KeysError::NoActiveKey(keyring.into()));
        }
    };
    crate::tenancy::check(&key, "encryption")?;
    crate::usage::count(key.key_id, 1);
    Ok(crypto::seal(
        &key.cipher,
        key.key_id,
        plaintext,
        context.as_bytes(),
    ))
}

pub fn decrypt(
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let ciphertext = ciphertext.ok_or(KeysError::NullArgument("ciphertext"))?;
    let context = context.ok_or(KeysError::NullArgument("context"))?;
    let key_id = crypto::parse_key_id(ciphertext).map_err(crypto_error)?;
    let key = keycache::key_for_decrypt(key_id)?;
    crate::tenancy::check(&key, "decryption")?;
    crypto::open(&key.cipher, ciphertext, context.as_bytes()).map_err(crypto_error)
}

// The four functions below are SECURITY DEFINER without a SET search_path clause (which would cost
// ~0.9 µs per call, more than everything else they do): the only SQL they ever run, on a key cache
// miss or when the `default` keyring is created, runs under store::with_fixed_search_path.

/// Encrypt text under the active key of `keyring`, bound to `context`.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
fn secret_encrypt(
    plaintext: Option<&str>,
    context: default!(Option<&str>, "''"),
    keyring: default!(Option<&str>, "'default'"),
) -> Vec<u8> {
    encrypt(plaintext.map(str::as_bytes), context, keyring).or_raise()
}

/// Encrypt bytes under the active key of `keyring`, bound to `context`.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
fn secret_encrypt_bytea(
    plaintext: Option<&[u8]>,
    context: default!(Option<&str>, "''"),
    keyring: default!(Option<&str>, "'default'"),
) -> Vec<u8> {
    encrypt(plaintext, context, keyring).or_raise()
}

/// Decrypt an envelope made by secret_encrypt, with the same context.
#[pg_extern(security_definer, stable, parallel_safe)]
fn secret_decrypt(ciphertext: Option<&[u8]>, context: default!(Option<&str>, "''")) -> String {
    let plain = decrypt(ciphertext, context).or_raise();
    match std::str::from_utf8(&plain) {
        Ok(s) if !s.contains('\0') => s.to_string(),
        _ => KeysError::NotText.raise(),
    }
}

/// Decrypt an envelope made by secret_encrypt_bytea (or secret_encrypt), with the same context.
#[pg_extern(security_definer, stable, parallel_safe)]
fn secret_decrypt_bytea(
    ciphertext: Option<&[u8]>,
    context: default!(Option<&str>, "''"),
) -> Vec<u8> {
    decrypt(ciphertext, context).or_raise().to_vec()
}

/// The key id in an envelope's header, without decrypting. IMMUTABLE so it can back an index.
#[pg_extern(immutable, strict, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn ciphertext_key_id(ciphertext: &[u8]) -> i64 {
    crypto::parse_key_id(ciphertext)
        .map_err(crypto_error)
        .or_raise()
}
