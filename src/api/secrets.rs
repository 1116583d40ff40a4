//! The SQL surface of encryption: secret_encrypt, secret_decrypt (text and bytea), rewrap and
//! ciphertext_key_id. The work is in crate::envelope.

use super::plain::{DecryptedBytes, DecryptedText, PlainText, Sealed};
use crate::crypto;
use crate::error::{KeysError, OrRaise};
use pgrx::prelude::*;

// The four functions below are SECURITY DEFINER without a SET search_path clause (which would cost
// ~0.9 µs per call, more than everything else they do): the only SQL they ever run, on a key cache
// miss or when the `default` keyring is created, runs under store::with_fixed_search_path.

/// Encrypt text under the active key of `keyring`, bound to `context`. Requires
/// meshhook_keys_user; a tenant-bound keyring also needs the approval of
/// meshhook_keys.tenant_check, a user-held one an unlock.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
fn secret_encrypt(
    plaintext: Option<&str>,
    context: default!(Option<&str>, "''"),
    keyring: default!(Option<&str>, "'default'"),
) -> Sealed {
    Sealed::new(plaintext.map(str::as_bytes), context, keyring).or_raise()
}

/// Encrypt bytes under the active key of `keyring`, bound to `context`. Requires
/// meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
fn secret_encrypt_bytea(
    plaintext: Option<&[u8]>,
    context: default!(Option<&str>, "''"),
    keyring: default!(Option<&str>, "'default'"),
) -> Sealed {
    Sealed::new(plaintext, context, keyring).or_raise()
}

/// Decrypt an envelope made by secret_encrypt, with the same context. Requires
/// meshhook_keys_user; a tenant-bound keyring also needs the approval of
/// meshhook_keys.tenant_check, a user-held one an unlock.
#[pg_extern(security_definer, stable, parallel_safe)]
fn secret_decrypt(
    ciphertext: Option<&[u8]>,
    context: default!(Option<&str>, "''"),
) -> DecryptedText {
    DecryptedText::new(ciphertext, context).or_raise()
}

/// The built-in store's decryption, behind the view decrypted_secrets: secret_decrypt, refused
/// (XX001) when the envelope's key is not of the row's keyring. Requires meshhook_keys_user;
/// tenant-bound and user-held keyrings as for secret_decrypt.
#[pg_extern(security_definer, stable, parallel_safe)]
fn _store_decrypt(
    ciphertext: Option<&[u8]>,
    context: Option<&str>,
    keyring: Option<&str>,
) -> PlainText {
    as_text(crate::envelope::decrypt_in(ciphertext, context, keyring).or_raise())
}

/// A plaintext returned as `text`: valid UTF-8 without NUL, or 22021.
fn as_text(plain: zeroize::Zeroizing<Vec<u8>>) -> PlainText {
    match std::str::from_utf8(&plain) {
        Ok(s) if !s.contains('\0') => PlainText(plain),
        _ => KeysError::NotText.raise(),
    }
}

/// Decrypt an envelope made by secret_encrypt_bytea (or secret_encrypt), with the same context.
/// Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.
#[pg_extern(security_definer, stable, parallel_safe)]
fn secret_decrypt_bytea(
    ciphertext: Option<&[u8]>,
    context: default!(Option<&str>, "''"),
) -> DecryptedBytes {
    DecryptedBytes::new(ciphertext, context).or_raise()
}

/// Move an envelope to the active version of its keyring without returning the plaintext (Vault
/// Transit's rewrap), for ciphertext the column registry cannot see (inside jsonb, in caches, in
/// other systems); one already on the active version is returned as it is. Requires
/// meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt and
/// secret_encrypt.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rewrap(ciphertext: Option<&[u8]>, context: default!(Option<&str>, "''")) -> Vec<u8> {
    crate::envelope::rewrap(ciphertext, context).or_raise()
}

/// The key id in an envelope's header, without decrypting. IMMUTABLE so it can back an index.
/// Requires meshhook_keys_user or meshhook_keys_operator.
#[pg_extern(immutable, strict, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn ciphertext_key_id(ciphertext: &[u8]) -> i64 {
    crypto::parse_key_id(ciphertext)
        .map_err(KeysError::from)
        .or_raise()
}
