//! The SQL surface of data keys for encryption outside the database: datakey_generate and
//! datakey_unwrap. The work is in crate::envelope.

use super::plain::ByteaCopy;
use crate::error::OrRaise;
use pgrx::prelude::*;

/// A new 256-bit data key and its envelope under the active key of `keyring`, bound to `context`
/// (with `with_plaintext` false, only the envelope: unwrap it later with datakey_unwrap). Store
/// the envelope; use the key, then forget it. Requires meshhook_keys_user; tenant-bound and
/// user-held keyrings as for secret_encrypt.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn datakey_generate(
    keyring: Option<&str>,
    context: default!(Option<&str>, "''"),
    with_plaintext: default!(Option<bool>, "true"),
) -> TableIterator<
    'static,
    (
        name!(data_key, Option<ByteaCopy>),
        name!(envelope, ByteaCopy),
    ),
> {
    let (key, envelope) = crate::envelope::generate_data_key(keyring, context).or_raise();
    let key = with_plaintext
        .unwrap_or(true)
        .then(|| ByteaCopy::of(key.as_ref()));
    TableIterator::once((key, ByteaCopy::of(&envelope)))
}

/// The data key in an envelope made by datakey_generate, given the same context; refused (22023)
/// when the envelope holds anything but a 256-bit key. Requires meshhook_keys_user; tenant-bound
/// and user-held keyrings as for secret_decrypt.
#[pg_extern(security_definer, stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn datakey_unwrap(envelope: Option<&[u8]>, context: default!(Option<&str>, "''")) -> ByteaCopy {
    let key = crate::envelope::unwrap_data_key(envelope, context).or_raise();
    ByteaCopy::of(&key)
}
