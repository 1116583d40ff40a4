//! The per-row functions of a batch: `_reencrypt_try` decrypts one claimed value with its old key
//! and seals it under the target key, `_reencrypt_take` hands that envelope to the `UPDATE` that
//! writes it back. They work on what the batch armed them with for the length of one statement.
//!
//! Invariants: the functions run no SQL (the keys were loaded before the statement, as the
//! extension owner, while the statement itself runs as the table's owner). Outside an armed
//! statement they raise; the armed state is cleared when the statement ends, also when it raises.
//! `_reencrypt_take` gives only the envelope made for the same ctid by the `_reencrypt_try` just
//! before it. A column with a blind index (crate::blindindex) is tried by `_reencrypt_try_indexed`,
//! which also computes the value's index under the target key from the plaintext it holds anyway,
//! for `_reencrypt_index` to write beside the envelope. A row that does not decrypt is kept as a failure (its ctid, SQLSTATE and message,
//! never its value) and left as it is.

use crate::crypto;
use crate::error::{KeysError, Result};
use crate::keycache::CachedKey;
use crate::resolver;
use pgrx::prelude::*;
use std::rc::Rc;
use zeroize::{Zeroize, Zeroizing};

/// A heap tuple id as (block, offset).
pub(super) type Tid = (i64, i32);

fn tid_of(t: &pg_sys::ItemPointerData) -> Tid {
    let block = ((t.ip_blkid.bi_hi as u32) << 16) | t.ip_blkid.bi_lo as u32;
    (block as i64, t.ip_posid as i32)
}

pub(super) fn tid_text((b, o): Tid) -> String {
    format!("({b},{o})")
}

/// A row that did not re-encrypt: where it is and why (never its value).
pub(super) struct Failure {
    pub(super) tid: Tid,
    pub(super) sqlstate: String,
    pub(super) message: String,
}

/// The old versions of a keyring, by key id: the key, or why it cannot decrypt (SQLSTATE, message).
/// A few versions at most: searched in order (no hashing per row), newest first.
pub(super) type OldKeys = Vec<(i64, std::result::Result<Rc<CachedKey>, (String, String)>)>;

/// The length of a statement's token.
const TOKEN_LEN: usize = 16;

/// What one backend's batch has armed `_reencrypt_try` / `_reencrypt_take` with, for the length of
/// one statement. Keys are loaded before the statement (as the extension owner), so the functions
/// run no SQL of their own while the statement runs as the table's owner.
pub(super) struct Armed {
    /// The old versions of the keyring, by key id: the key, or why it cannot decrypt.
    old: OldKeys,
    pub(super) target: Rc<CachedKey>,
    /// The row `_reencrypt_try` last accepted, whose new envelope is in `envelope` until
    /// `_reencrypt_take` writes it.
    stash: Option<Tid>,
    /// The last new envelope (reused from row to row: no allocation per row).
    envelope: Vec<u8>,
    /// The blind index of the row `_reencrypt_try_indexed` last accepted, until
    /// `_reencrypt_index` writes it.
    index: Option<(Tid, [u8; crate::mac::BLIND_INDEX_LEN])>,
    /// Where a row's plaintext is between its opening and its sealing (reused, wiped after each
    /// row).
    plain: Zeroizing<Vec<u8>>,
    /// Random, per statement: passed by the batch's own `UPDATE` as a parameter, which the table
    /// owner's code running inside it (a trigger, a check) cannot read, so that only that
    /// statement's calls are taken.
    token: [u8; TOKEN_LEN],
    pub(super) failures: Vec<Failure>,
    pub(super) tried: i64,
    pub(super) last: Option<Tid>,
}

impl Armed {
    /// The token the statement passes to both functions.
    pub(super) fn token(&self) -> Vec<u8> {
        self.token.to_vec()
    }

    /// Whether `token` is this statement's (compared in constant time).
    fn is_called_with(&self, token: Option<&[u8]>) -> bool {
        token.is_some_and(|t| {
            t.len() == TOKEN_LEN
                && t.iter().zip(&self.token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
        })
    }

    /// Armed with the old keys and the target key, nothing tried yet.
    pub(super) fn new(old: OldKeys, target: Rc<CachedKey>) -> Self {
        Armed {
            old,
            target,
            stash: None,
            envelope: Vec::new(),
            index: None,
            plain: Zeroizing::new(Vec::new()),
            token: {
                let mut t = [0u8; TOKEN_LEN];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut t);
                t
            },
            failures: Vec::new(),
            tried: 0,
            last: None,
        }
    }
}

thread_local! {
    static ARMED: std::cell::RefCell<Option<Armed>> = const { std::cell::RefCell::new(None) };
}

/// Disarms on drop, including when the statement raises (pgrx unwinds through us).
pub(super) struct ArmGuard;

impl ArmGuard {
    /// Disarm after the statement, returning what it tried and what failed.
    pub(super) fn disarm(self) -> Option<Armed> {
        ARMED.with_borrow_mut(|a| a.take())
    }
}

impl Drop for ArmGuard {
    fn drop(&mut self) {
        ARMED.with_borrow_mut(|a| *a = None);
    }
}

pub(super) fn arm(armed: Armed) -> ArmGuard {
    ARMED.with_borrow_mut(|a| *a = Some(armed));
    ArmGuard
}

/// `_reencrypt_try(token, ctid, ciphertext, context)`: decrypt one claimed row with its old key and
/// seal it under the target key, keeping the result for `_reencrypt_take`. False (and recorded) when
/// the row does not decrypt; false (not recorded) when it is not on an old version of the armed
/// keyring. Refused (nothing recorded, nothing counted) unless called with the statement's token.
pub fn try_row(
    token: Option<&[u8]>,
    tid: &pg_sys::ItemPointerData,
    ciphertext: Option<&[u8]>,
    context: Option<&[u8]>,
) -> Result<bool> {
    try_row_indexed(token, tid, ciphertext, context, None)
}

/// How `_reencrypt_try_indexed` is told the row's blind index context: `Some(None)` when the
/// index context expression returned NULL for the row.
pub type IndexContext<'a> = Option<Option<&'a str>>;

/// `_reencrypt_try` that also computes the row's blind index under the target key for
/// `index_context` (`None`: no index), from the plaintext it holds between opening and sealing.
pub fn try_row_indexed(
    token: Option<&[u8]>,
    tid: &pg_sys::ItemPointerData,
    ciphertext: Option<&[u8]>,
    context: Option<&[u8]>,
    index_context: IndexContext<'_>,
) -> Result<bool> {
    ARMED.with_borrow_mut(|armed| {
        let Some(armed) = armed.as_mut().filter(|a| a.is_called_with(token)) else {
            return Err(KeysError::NotInBatch(if index_context.is_some() {
                "meshhook_keys._reencrypt_try_indexed"
            } else {
                "meshhook_keys._reencrypt_try"
            }));
        };
        let tid = tid_of(tid);
        armed.stash = None;
        armed.index = None;
        let Some(old) = ciphertext else {
            return Ok(false);
        };
        // A row whose header does not name an old version of the armed keyring (the direct path
        // looks at every row of its window) is not tried. One that names one but is not a whole
        // envelope (truncated) is tried, and fails: it counts as on that version.
        let Some(key) = crypto::header_key_id(old).and_then(|key_id| {
            armed
                .old
                .iter()
                .find(|(k, _)| *k == key_id)
                .map(|(_, key)| key)
        }) else {
            return Ok(false);
        };
        armed.tried += 1;
        armed.last = Some(armed.last.map_or(tid, |l| l.max(tid)));
        let key = match crypto::parse_key_id(old) {
            Ok(_) => key.as_ref().map_err(Clone::clone),
            Err(e) => {
                let e = KeysError::from(e);
                Err((e.sqlstate_code(), e.to_string()))
            }
        };
        let result = match (key, context) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err((
                KeysError::Internal(String::new()).sqlstate_code(),
                "the context expression returned NULL for this row".to_string(),
            )),
            (Ok(_), Some(_)) if index_context == Some(None) => Err((
                KeysError::Internal(String::new()).sqlstate_code(),
                "the blind index context expression returned NULL for this row".to_string(),
            )),
            (Ok(key), Some(ctx)) => {
                // (opened into the reused plaintext buffer, sealed from it into the reused envelope
                // buffer, and the plaintext wiped at once, whether it opened or not)
                let len = crypto::plaintext_len(old);
                armed.plain.resize(len, 0);
                let opened = crypto::open_into(&key.cipher, old, ctx, &mut armed.plain);
                if opened.is_ok() {
                    if let Some(Some(ictx)) = index_context {
                        let ix = armed.target.mac.blind_index(ictx.as_bytes(), &armed.plain);
                        armed.index = Some((tid, ix));
                    }
                    armed.envelope.resize(crypto::MIN_ENVELOPE_LEN + len, 0);
                    crypto::seal_into(
                        &armed.target.cipher,
                        armed.target.key_id,
                        &armed.plain,
                        ctx,
                        &mut armed.envelope,
                    );
                }
                armed.plain.zeroize();
                opened.map_err(|e| {
                    let e = KeysError::from(e);
                    (e.sqlstate_code(), e.to_string())
                })
            }
        };
        match result {
            Ok(()) => {
                armed.stash = Some(tid);
                Ok(true)
            }
            Err((sqlstate, message)) => {
                armed.failures.push(Failure {
                    tid,
                    sqlstate,
                    message,
                });
                Ok(false)
            }
        }
    })
}

/// `_reencrypt_take(token, ctid)`: the envelope `_reencrypt_try` just made for this same row, as
/// `made` copies it into the result; refused unless called with the statement's token.
pub fn take_row<T>(
    token: &[u8],
    tid: &pg_sys::ItemPointerData,
    made: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    ARMED.with_borrow_mut(|armed| {
        let Some(armed) = armed.as_mut().filter(|a| a.is_called_with(Some(token))) else {
            return Err(KeysError::NotInBatch("meshhook_keys._reencrypt_take"));
        };
        match armed.stash.take() {
            Some(t) if t == tid_of(tid) => Ok(made(&armed.envelope)),
            _ => Err(KeysError::Internal(
                "re-encryption row order broken: no envelope prepared for this row".into(),
            )),
        }
    })
}

/// `_reencrypt_index(token, ctid)`: the blind index `_reencrypt_try_indexed` computed for this
/// same row; refused unless called with the statement's token.
pub fn take_index(
    token: &[u8],
    tid: &pg_sys::ItemPointerData,
) -> Result<[u8; crate::mac::BLIND_INDEX_LEN]> {
    ARMED.with_borrow_mut(|armed| {
        let Some(armed) = armed.as_mut().filter(|a| a.is_called_with(Some(token))) else {
            return Err(KeysError::NotInBatch("meshhook_keys._reencrypt_index"));
        };
        match armed.index.take() {
            Some((t, ix)) if t == tid_of(tid) => Ok(ix),
            _ => Err(KeysError::Internal(
                "re-encryption row order broken: no blind index prepared for this row".into(),
            )),
        }
    })
}

/// Load the old versions of the keyring for decryption, as the extension owner.
pub(super) fn load_old_keys(old: &[i64]) -> OldKeys {
    old.iter()
        .map(|&k| {
            (
                k,
                resolver::key_for_decrypt(k).map_err(|e| (e.sqlstate_code(), e.to_string())),
            )
        })
        .collect()
}
