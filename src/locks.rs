//! The extension's own locks, which only meshhook_keys can take.
//!
//! Each is a heavyweight lock in the advisory lock space of the current database, on a tag no SQL
//! function can name: `pg_advisory_lock` and its relatives always set the tag's fourth field to 1
//! (one bigint key) or 2 (two integer keys); ours is [`OUR_FIELD4`]. So a role with a login and
//! `pg_advisory_lock`, or one that reads our tag from `pg_locks`, can never hold, queue on or
//! delay them (before 0.5.0 they were `hashtext()` keys anyone could take). They show in
//! `pg_locks` as `locktype = 'advisory'` with `objsubid = 19787`.
//!
//! * [`Lock::AuditChain`]: one writer of the audit chain at a time, until commit.
//! * [`Lock::Tick`]: one scheduler tick at a time (the worker holds it at session level across
//!   the transactions of a tick, `tick()` until its transaction ends; they conflict).
//! * [`Lock::Reencrypt`]: one re-encryption batch per keyring at a time.
//! * [`Lock::VaultImport`]: one import from Supabase Vault at a time (dry or real), until commit.
//!
//! The order of the locks of a change to a keyring lives in one place:
//! the `lock_order` module, which uses these.

use pgrx::pg_sys;

/// The fourth field of our lock tags ('MK'): never 1 or 2, the values SQL's advisory lock functions use.
pub const OUR_FIELD4: u16 = 0x4D4B;

#[derive(Clone, Copy)]
pub enum Lock<'a> {
    AuditChain,
    Tick,
    Reencrypt(&'a str),
    VaultImport,
}

impl Lock<'_> {
    fn tag(self) -> pg_sys::LOCKTAG {
        let key = match self {
            Lock::AuditChain => fnv1a(b"meshhook_keys.audit_log"),
            Lock::Tick => fnv1a(b"meshhook_keys.tick"),
            Lock::VaultImport => fnv1a(b"meshhook_keys.import_supabase_vault"),
            Lock::Reencrypt(keyring) => {
                fnv1a(format!("meshhook_keys.reencrypt:{keyring}").as_bytes())
            }
        };
        pg_sys::LOCKTAG {
            // SAFETY: reading the backend's database id.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: (key >> 32) as u32,
            locktag_field3: key as u32,
            locktag_field4: OUR_FIELD4,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }
}

/// FNV-1a, 64 bits: a fixed hash of a lock's name (two keyrings whose names collide only share
/// a lock).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How long a lock is held.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The end of the transaction.
    Commit,
    /// [`release`] (the worker's tick lock, across the transactions of one tick).
    Released,
}

/// Take `lock` (exclusive), waiting unless `dont_wait`; false if `dont_wait` and it is held.
fn acquire(lock: Lock, until: Until, dont_wait: bool) -> bool {
    let tag = lock.tag();
    // SAFETY: LockAcquire on a tag of the user lock method, as pg_advisory_lock does.
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as i32,
            until == Until::Released,
            dont_wait,
        ) != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

/// Wait for `lock` (exclusive), honouring lock_timeout, statement_timeout and deadlock detection.
pub fn take(lock: Lock, until: Until) {
    acquire(lock, until, false);
}

/// Take `lock` if nobody holds it; false (and not taken) otherwise.
pub fn try_take(lock: Lock, until: Until) -> bool {
    acquire(lock, until, true)
}

/// Release a lock taken with [`Until::Released`]; false if this session did not hold it.
pub fn release(lock: Lock) -> bool {
    if !held(lock) {
        return false;
    }
    let tag = lock.tag();
    // SAFETY: releases a session-level hold of this backend's.
    unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true) }
}

/// Whether this backend holds `lock`.
pub fn held(lock: Lock) -> bool {
    held_by_me(&lock.tag(), pg_sys::ExclusiveLock as i32)
}

/// Whether this backend holds `tag` in exactly `mode` (at session or transaction level).
pub fn held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: a plain lookup in this backend's local lock table. (PostgreSQL 17 added
    // `orstronger`; false asks for exactly this mode, as 15 and 16 do.)
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        let held = pg_sys::LockHeldByMe(tag, mode);
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        let held = pg_sys::LockHeldByMe(tag, mode, false);
        held
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_hash_apart_and_stably() {
        assert_ne!(
            super::fnv1a(b"meshhook_keys.tick"),
            super::fnv1a(b"meshhook_keys.audit_log")
        );
        // FNV-1a's published test vector: the hash must never change between versions (two
        // backends of different builds must agree on a lock).
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
