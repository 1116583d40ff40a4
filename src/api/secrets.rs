//! The SQL surface of encryption: secret_encrypt, secret_decrypt (text and bytea), rewrap and
//! ciphertext_key_id. The work is in crate::envelope.

use super::plain::{DecryptedBytes, DecryptedText, PlainText, Sealed};
use super::rowcall;
use crate::crypto;
use crate::error::{KeysError, OrRaise};
use pgrx::prelude::*;

// secret_encrypt, secret_encrypt_bytea, secret_decrypt and secret_decrypt_bytea run once per row of
// the application's queries, so they are plain V1 functions reading their arguments in place (see
// `crate::api::rowcall`), not `#[pg_extern]` wrappers, whose argument conversion and guards cost
// about a fifth of a decryption (bench/profile.sh). Their SQL declarations are below, as pgrx wrote
// them before (same C symbols: an upgraded database calls the same code).
//
// They are SECURITY DEFINER without a SET search_path clause (which would cost ~0.9 µs per call,
// more than everything else they do): the only SQL they ever run, on a key cache miss or when the
// `default` keyring is created, runs under store::with_fixed_search_path.
extension_sql!(
    r#"
CREATE FUNCTION "secret_encrypt"(
	"plaintext" TEXT,
	"context" TEXT DEFAULT '',
	"keyring" TEXT DEFAULT 'default'
) RETURNS bytea
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'secret_encrypt_wrapper';

CREATE FUNCTION "secret_encrypt_bytea"(
	"plaintext" bytea,
	"context" TEXT DEFAULT '',
	"keyring" TEXT DEFAULT 'default'
) RETURNS bytea
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'secret_encrypt_bytea_wrapper';

CREATE FUNCTION "secret_decrypt"(
	"ciphertext" bytea,
	"context" TEXT DEFAULT ''
) RETURNS TEXT
STABLE SECURITY DEFINER PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'secret_decrypt_wrapper';

CREATE FUNCTION "secret_decrypt_bytea"(
	"ciphertext" bytea,
	"context" TEXT DEFAULT ''
) RETURNS bytea
STABLE SECURITY DEFINER PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'secret_decrypt_bytea_wrapper';
"#,
    name = "secret_functions",
    requires = ["bootstrap"]
);

/// Encrypt text under the active key of `keyring`, bound to `context`. Requires
/// meshhook_keys_user; a tenant-bound keyring also needs the approval of
/// meshhook_keys.tenant_check, a user-held one an unlock.
/// SQL: `secret_encrypt(plaintext text, context text DEFAULT '', keyring text DEFAULT 'default')
/// RETURNS bytea`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn secret_encrypt_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the function manager's call of a function declared with three text/bytea arguments.
    unsafe { encrypt_call(fcinfo) }
}

/// Encrypt bytes under the active key of `keyring`, bound to `context`. Requires
/// meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.
/// SQL: `secret_encrypt_bytea(plaintext bytea, context text DEFAULT '', keyring text DEFAULT
/// 'default') RETURNS bytea`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn secret_encrypt_bytea_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the function manager's call of a function declared with three text/bytea arguments.
    unsafe { encrypt_call(fcinfo) }
}

rowcall::v1_finfo!(
    pg_finfo_secret_encrypt_wrapper,
    pg_finfo_secret_encrypt_bytea_wrapper,
    pg_finfo_secret_decrypt_wrapper,
    pg_finfo_secret_decrypt_bytea_wrapper,
);

/// Both encryptions: a `text` and a `bytea` plaintext are sealed alike, as their bytes.
///
/// # Safety
/// `fcinfo` is the current call's, with three varlena arguments.
unsafe fn encrypt_call(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the caller's promise.
    let (plaintext, context, keyring) = unsafe {
        (
            rowcall::bytes(fcinfo, 0),
            rowcall::bytes(fcinfo, 1),
            rowcall::bytes(fcinfo, 2),
        )
    };
    Sealed::new(plaintext, context, keyring)
        .or_raise()
        .into_datum()
}

/// Decrypt an envelope made by secret_encrypt, with the same context. Requires
/// meshhook_keys_user; a tenant-bound keyring also needs the approval of
/// meshhook_keys.tenant_check, a user-held one an unlock.
/// SQL: `secret_decrypt(ciphertext bytea, context text DEFAULT '') RETURNS text`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn secret_decrypt_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the function manager with the function's two varlena arguments.
    let (ciphertext, context) = unsafe { (rowcall::bytes(fcinfo, 0), rowcall::bytes(fcinfo, 1)) };
    DecryptedText::new(ciphertext, context)
        .or_raise()
        .into_datum()
}

/// Decrypt an envelope made by secret_encrypt_bytea (or secret_encrypt), with the same context.
/// Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.
/// SQL: `secret_decrypt_bytea(ciphertext bytea, context text DEFAULT '') RETURNS bytea`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn secret_decrypt_bytea_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the function manager with the function's two varlena arguments.
    let (ciphertext, context) = unsafe { (rowcall::bytes(fcinfo, 0), rowcall::bytes(fcinfo, 1)) };
    DecryptedBytes::new(ciphertext, context)
        .or_raise()
        .into_datum()
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
