//! An unwrapped data key and its state: what the key cache, the session's unlocked user-held keys
//! and the tenant check share.

use crate::crypto::Cipher;
use crate::error::{KeysError, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyState {
    /// Made, waiting for the standbys to replay it: decrypts, does not encrypt yet.
    Pending,
    Active,
    DecryptOnly,
    Retired,
    Destroyed,
}

impl KeyState {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => KeyState::Pending,
            "active" => KeyState::Active,
            "decrypt_only" => KeyState::DecryptOnly,
            "retired" => KeyState::Retired,
            "destroyed" => KeyState::Destroyed,
            other => return Err(KeysError::Internal(format!("unknown key state {other}"))),
        })
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt_only",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// An unwrapped data key, ready to use.
pub struct CachedKey {
    pub key_id: i64,
    pub keyring: String,
    pub version: i32,
    /// The keyring's tenant: using the key requires passing meshhook_keys.tenant_check.
    pub tenant: Option<String>,
    pub state: KeyState,
    pub cipher: Cipher,
    /// The version's MAC key (signatures, webhook secrets).
    pub mac: crate::mac::MacKey,
    /// `data_key.encryptions` when the key was loaded (the usage counter's floor).
    pub encryptions: i64,
    /// The keyring's rotation limit (`None`: meshhook_keys.default_max_encryptions).
    pub max_encryptions: Option<i64>,
    /// Whether the keyring is user-held (never rotated by the scheduler).
    pub user_held: bool,
    /// The cache clock when this key was loaded (least recently loaded keys are evicted first).
    pub(crate) loaded_at: u64,
}

/// Maps keyed by data key id. Key ids are random 63-bit numbers and only real keys are ever
/// inserted (an unknown id in a ciphertext misses and is refused), so the id is its own hash: no
/// SipHash on every decryption's lookup.
pub type KeyIdMap<V> =
    std::collections::HashMap<i64, V, std::hash::BuildHasherDefault<KeyIdHasher>>;

#[derive(Default)]
pub struct KeyIdHasher(u64);

impl std::hash::Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // (only i64 keys are hashed; any other input still hashes deterministically)
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_i64(&mut self, id: i64) {
        self.0 = id as u64;
    }
}
