//! Shared memory: encryptions counted per data key, and the scheduler's status.
//!
//! AES-GCM with random 96-bit nonces must not exceed 2^32 encryptions under one key (NIST SP
//! 800-38D), so every encryption is counted, in every database, and a key refuses to encrypt at a
//! hard ceiling (`meshhook_keys.max_encryptions_ceiling`) whatever happened to rotation. Counting
//! must be cheap: one open-addressed table of slots in shared memory, one per (database, key),
//! holding the key's *total* encryptions; an encryption is one atomic add and a comparison, and no
//! row is written per encryption.
//!
//! A slot is seeded with `data_key.encryptions` when a backend loads the key (so the total survives
//! restarts up to the last flush). Flushing writes `greatest(encryptions, total)`, which is
//! idempotent: a failed or repeated flush loses and doubles nothing, and nothing is ever subtracted.
//! The slot's watermark (`flushed`) records the total a committed flush wrote, so `total - flushed`
//! is what the table does not have yet. Flushes happen in the database that owns the key: the
//! scheduler flushes its own database on every tick, and the launcher starts a short-lived worker
//! for every other database that has encryptions to flush (or a key past its rotation limit). On a
//! standby nothing can be written: its counts stay pending in its shared memory (and count against
//! the ceiling there) until it is promoted. A server crash loses the counts since the last flush (at
//! most one naptime of encryptions, below the margin between the default rotation limit, 2^30, the
//! default ceiling, 2^31 - 1, and 2^32).
//!
//! Slots of keys that can no longer encrypt (decrypt-only, retired, destroyed, deleted) are freed by
//! the flush that finds them so; a freed slot is a tombstone that the next claim reuses. Claims and
//! frees are serialized by a spin lock in the header; lookups and counts take no lock.
//!
//! Without `shared_preload_libraries` there is no segment: nothing is counted and no ceiling is
//! enforced; `health()` and the `keyrings` view (NULL encryptions) say so.

use crate::datakey::CachedKey;
use crate::error::KeysError;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

const FREE: u32 = 0;
const LIVE: u32 = 1;
const GONE: u32 = 2;

#[repr(C)]
struct Slot {
    /// FREE (never used: ends a probe), LIVE, or GONE (freed: a probe goes on past it).
    state: AtomicU32,
    /// The database the key belongs to (key ids are random per database, not per cluster).
    db: AtomicU32,
    key_id: AtomicI64,
    /// Encryptions under this key in total.
    total: AtomicU64,
    /// The total the last committed flush wrote to `data_key.encryptions`.
    flushed: AtomicU64,
    /// Whether the scheduler was woken because the key passed its rotation limit.
    nudged: AtomicBool,
}

#[repr(C)]
struct Header {
    nslots: u64,
    /// Set once a key could not be given a slot because every slot was taken.
    full: AtomicBool,
    /// Serializes claims and frees of slots.
    claim_lock: AtomicBool,
    scheduler_pid: AtomicI32,
    launcher_pid: AtomicI32,
    naptime_ms: AtomicI64,
    ticks: AtomicU64,
    /// TimestampTz of the end of the last tick (0: none yet).
    last_tick_at: AtomicI64,
    /// What the scheduler is doing (see [`SchedulerState`]).
    state: AtomicI32,
}

static mut SEGMENT: *mut Header = std::ptr::null_mut();
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn size(nslots: usize) -> usize {
    std::mem::size_of::<Header>() + nslots * std::mem::size_of::<Slot>()
}

/// Install the shared memory hooks. Called from `_PG_init` while preloading only.
pub fn init() {
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster; we chain the previous hooks.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    // SAFETY: called by the postmaster at shared memory sizing time.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(
            size(crate::gucs::max_tracked_keys()) + crate::served::size(),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    // SAFETY: the standard ShmemInitStruct protocol under AddinShmemInitLock.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let nslots = crate::gucs::max_tracked_keys();
        let bytes = size(nslots);
        let mut found = false;
        pg_sys::LWLockAcquire(
            &raw mut (*pg_sys::MainLWLockArray.add(21)).lock,
            pg_sys::LWLockMode::LW_EXCLUSIVE,
        );
        let p = pg_sys::ShmemInitStruct(c"meshhook_keys usage".as_ptr(), bytes, &mut found);
        if !found {
            std::ptr::write_bytes(p as *mut u8, 0, bytes);
            (*(p as *mut Header)).nslots = nslots as u64;
        }
        crate::served::attach();
        pg_sys::LWLockRelease(&raw mut (*pg_sys::MainLWLockArray.add(21)).lock);
        SEGMENT = p as *mut Header;
    }
}

fn header() -> Option<&'static Header> {
    // SAFETY: SEGMENT is set once at shared memory startup (inherited by every child) and points
    // at a zero-initialised, properly aligned Header followed by nslots Slots.
    unsafe {
        let p = SEGMENT;
        if p.is_null() { None } else { Some(&*p) }
    }
}

fn slots(h: &'static Header) -> &'static [Slot] {
    // SAFETY: see header(); the slots follow the header.
    unsafe {
        let first = (h as *const Header).add(1) as *const Slot;
        std::slice::from_raw_parts(first, h.nslots as usize)
    }
}

fn my_database() -> u32 {
    // SAFETY: plain read of backend state.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

fn start(db: u32, key_id: i64, n: usize) -> usize {
    let h = (key_id as u64) ^ ((db as u64) << 32 | db as u64);
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % n
}

fn is(slot: &Slot, db: u32, key_id: i64) -> bool {
    slot.state.load(Ordering::Acquire) == LIVE
        && slot.db.load(Ordering::Relaxed) == db
        && slot.key_id.load(Ordering::Relaxed) == key_id
}

/// The slot of (db, key_id), if it has one. Lock-free.
fn find(h: &'static Header, db: u32, key_id: i64) -> Option<&'static Slot> {
    let s = slots(h);
    let n = s.len();
    let first = start(db, key_id, n);
    for i in 0..n {
        let slot = &s[(first + i) % n];
        if slot.state.load(Ordering::Acquire) == FREE {
            return None;
        }
        if is(slot, db, key_id) {
            return Some(slot);
        }
    }
    None
}

/// Hold the claim lock while `f` runs (claims and frees are rare: once per key and server start).
fn claiming<T>(h: &'static Header, f: impl FnOnce() -> T) -> T {
    while h
        .claim_lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    let r = f();
    h.claim_lock.store(false, Ordering::Release);
    r
}

/// The slot of (db, key_id), claimed (with `base` encryptions, already in the table) if it has
/// none; `None` when every slot is taken (logged once).
fn find_or_claim(h: &'static Header, db: u32, key_id: i64, base: u64) -> Option<&'static Slot> {
    if let Some(slot) = find(h, db, key_id) {
        return Some(slot);
    }
    let claimed = claiming(h, || {
        let s = slots(h);
        let n = s.len();
        let first = start(db, key_id, n);
        let mut reuse: Option<&'static Slot> = None;
        for i in 0..n {
            let slot = &s[(first + i) % n];
            match slot.state.load(Ordering::Acquire) {
                FREE => {
                    reuse = reuse.or(Some(slot));
                    break;
                }
                GONE => reuse = reuse.or(Some(slot)),
                _ if is(slot, db, key_id) => return Some(slot),
                _ => {}
            }
        }
        let slot = reuse?;
        slot.db.store(db, Ordering::Relaxed);
        slot.key_id.store(key_id, Ordering::Relaxed);
        slot.total.store(base, Ordering::Relaxed);
        slot.flushed.store(base, Ordering::Relaxed);
        slot.nudged.store(false, Ordering::Relaxed);
        slot.state.store(LIVE, Ordering::Release);
        Some(slot)
    });
    if claimed.is_none() && !h.full.swap(true, Ordering::AcqRel) {
        crate::logline::log(&format!(
            "meshhook_keys: every one of the {} usage slots is taken (meshhook_keys.max_tracked_keys): keys without one refuse to encrypt until slots are freed by the scheduler or the server restarts with a larger setting",
            h.nslots
        ));
    }
    claimed
}

/// A key was loaded with `encryptions` already in the table: make sure its slot's total is at
/// least that (a slot lost in a restart, or a standby's slot behind the primary's flushes).
pub fn seed(key_id: i64, encryptions: i64) {
    let Some(h) = header() else { return };
    if let Some(slot) = find_or_claim(h, my_database(), key_id, encryptions.max(0) as u64) {
        slot.total
            .fetch_max(encryptions.max(0) as u64, Ordering::Relaxed);
    }
}

/// Count `n` encryptions under `key`, refused (nothing counted) if that would take it past the
/// hard ceiling. Passing the key's rotation limit wakes the scheduler and the launcher once, so
/// that the key is rotated now rather than at the next naptime. Without shared memory nothing is
/// counted.
pub fn count(key: &CachedKey, n: u64) -> Result<(), KeysError> {
    let Some(h) = header() else { return Ok(()) };
    if n == 0 {
        return Ok(());
    }
    let db = my_database();
    let ceiling = crate::gucs::max_encryptions_ceiling() as u64;
    // (a slot is found without a lock: if it was freed and given to another key between the find
    // and the add, the count is taken back and made again; the key stopped being active for that
    // to happen, so a second try finds its own slot)
    for attempt in 0..4 {
        let Some(slot) = find_or_claim(h, db, key.key_id, key.encryptions.max(0) as u64) else {
            return Err(KeysError::UsageUntracked {
                keyring: key.keyring.clone(),
                version: key.version,
                slots: h.nslots,
            });
        };
        let before = slot.total.fetch_add(n, Ordering::Relaxed);
        if !is(slot, db, key.key_id) && attempt < 3 {
            undo(slot, n);
            continue;
        }
        if before.saturating_add(n) > ceiling {
            undo(slot, n);
            return Err(KeysError::KeyExhausted {
                keyring: key.keyring.clone(),
                version: key.version,
                encryptions: before,
                ceiling,
                user_held: key.user_held,
            });
        }
        let limit = key
            .max_encryptions
            .unwrap_or_else(crate::gucs::default_max_encryptions)
            .max(1) as u64;
        if before.saturating_add(n) >= limit
            && !key.user_held
            && !slot.nudged.swap(true, Ordering::Relaxed)
        {
            wake(h);
        }
        break;
    }
    Ok(())
}

/// Take back `n` counted encryptions, never below zero (a slot reused meanwhile starts lower).
fn undo(slot: &Slot, n: u64) {
    let _ = slot
        .total
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some(t.saturating_sub(n))
        });
}

/// Set the latches of the scheduler and the launcher (if they run).
fn wake(h: &'static Header) {
    for pid in [
        h.scheduler_pid.load(Ordering::Relaxed),
        h.launcher_pid.load(Ordering::Relaxed),
    ] {
        if pid == 0 {
            continue;
        }
        // SAFETY: BackendPidGetProc takes ProcArrayLock and returns a live PGPROC or NULL;
        // SetLatch on a proc's latch is safe from any backend.
        unsafe {
            let proc_ = pg_sys::BackendPidGetProc(pid);
            if !proc_.is_null() {
                pg_sys::SetLatch(&raw mut (*proc_).procLatch);
            }
        }
    }
}

/// Whether `n` more encryptions under `key` would pass `meshhook_keys.max_encryptions_ceiling`: the
/// error [`count`] would then return (54000), counting nothing. For a dry run that must fail where
/// the real run would.
pub fn check(key: &CachedKey, n: u64) -> Result<(), KeysError> {
    let Some(h) = header() else { return Ok(()) };
    let ceiling = crate::gucs::max_encryptions_ceiling() as u64;
    let total = find(h, my_database(), key.key_id).map_or(key.encryptions.max(0) as u64, |s| {
        s.total.load(Ordering::Relaxed)
    });
    if total.saturating_add(n) > ceiling {
        // (the real run fails at the first encryption past the ceiling, having made the others:
        // its count is then the ceiling, or what it was if already past)
        return Err(KeysError::KeyExhausted {
            keyring: key.keyring.clone(),
            version: key.version,
            encryptions: total.max(ceiling),
            ceiling,
            user_held: key.user_held,
        });
    }
    Ok(())
}

/// Encryptions under `key_id` (of this database) not yet in the table; `None` without shared
/// memory.
pub fn pending(key_id: i64) -> Option<u64> {
    let h = header()?;
    Some(find(h, my_database(), key_id).map_or(0, |s| {
        s.total
            .load(Ordering::Relaxed)
            .saturating_sub(s.flushed.load(Ordering::Relaxed))
    }))
}

/// Every key of this database that has a slot: (key id, total, whether the table lacks some of
/// its encryptions).
pub fn slots_of_database() -> Vec<(i64, u64, bool)> {
    let Some(h) = header() else {
        return Vec::new();
    };
    let db = my_database();
    slots(h)
        .iter()
        .filter(|s| s.state.load(Ordering::Acquire) == LIVE && s.db.load(Ordering::Relaxed) == db)
        .map(|s| {
            let t = s.total.load(Ordering::Relaxed);
            (
                s.key_id.load(Ordering::Relaxed),
                t,
                t > s.flushed.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// Databases other than `except` with encryptions to flush, each with whether one of its keys
/// passed its rotation limit (then it should not wait for the next naptime): where the launcher
/// sends a worker.
pub fn databases_to_flush(except: u32) -> Vec<(u32, bool)> {
    let Some(h) = header() else {
        return Vec::new();
    };
    let mut dbs: Vec<(u32, bool)> = Vec::new();
    for s in slots(h) {
        if s.state.load(Ordering::Acquire) != LIVE {
            continue;
        }
        let db = s.db.load(Ordering::Relaxed);
        if db == except || db == 0 {
            continue;
        }
        let total = s.total.load(Ordering::Relaxed);
        if total <= s.flushed.load(Ordering::Relaxed) {
            continue;
        }
        let urgent = s.nudged.load(Ordering::Relaxed);
        match dbs.iter_mut().find(|(d, _)| *d == db) {
            Some(e) => e.1 |= urgent,
            None => dbs.push((db, urgent)),
        }
    }
    dbs
}

/// Free every slot of a database that no longer exists (DROP DATABASE).
pub fn forget_database(db: u32) {
    let Some(h) = header() else { return };
    claiming(h, || {
        for s in slots(h) {
            if s.state.load(Ordering::Acquire) == LIVE && s.db.load(Ordering::Relaxed) == db {
                s.state.store(GONE, Ordering::Release);
            }
        }
    });
    h.full.store(false, Ordering::Relaxed);
}

/// After the flush that wrote these totals committed: advance the watermarks, and free the slots
/// of keys (of this database) that can no longer encrypt.
pub fn flushed(written: &[(i64, u64)], dead: &[i64]) {
    let Some(h) = header() else { return };
    let db = my_database();
    for &(key_id, total) in written {
        if let Some(slot) = find(h, db, key_id) {
            slot.flushed.fetch_max(total, Ordering::Relaxed);
        }
    }
    if dead.is_empty() {
        return;
    }
    claiming(h, || {
        for &key_id in dead {
            if let Some(slot) = find(h, db, key_id) {
                slot.state.store(GONE, Ordering::Release);
            }
        }
    });
    h.full.store(false, Ordering::Relaxed);
}

/// Whether some key could not be given a slot because every slot was taken (since the last free).
pub fn overflowed() -> bool {
    header().is_some_and(|h| h.full.load(Ordering::Relaxed))
}

/// Slots in use (live keys tracked), for health().
pub fn slots_used() -> Option<(usize, usize)> {
    let h = header()?;
    let s = slots(h);
    Some((
        s.iter()
            .filter(|s| s.state.load(Ordering::Acquire) == LIVE)
            .count(),
        s.len(),
    ))
}

/// Record the launcher's pid (so that an encryption past its key's limit can wake it).
pub fn set_launcher(pid: i32) {
    if let Some(h) = header() {
        h.launcher_pid.store(pid, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
pub enum SchedulerState {
    Stopped = 0,
    Idle = 1,
    Ticking = 2,
    Disabled = 3,
    Standby = 4,
    NoExtension = 5,
    WaitingForDatabase = 6,
}

impl SchedulerState {
    pub fn name(self) -> &'static str {
        match self {
            SchedulerState::Stopped => "stopped",
            SchedulerState::Idle => "idle",
            SchedulerState::Ticking => "ticking",
            SchedulerState::Disabled => "disabled",
            SchedulerState::Standby => "standby",
            SchedulerState::NoExtension => "extension not installed",
            SchedulerState::WaitingForDatabase => "waiting for database",
        }
    }

    fn from_i32(v: i32) -> Self {
        match v {
            1 => SchedulerState::Idle,
            2 => SchedulerState::Ticking,
            3 => SchedulerState::Disabled,
            4 => SchedulerState::Standby,
            5 => SchedulerState::NoExtension,
            6 => SchedulerState::WaitingForDatabase,
            _ => SchedulerState::Stopped,
        }
    }
}

pub fn set_scheduler(pid: i32, naptime_ms: i64, state: SchedulerState) {
    if let Some(h) = header() {
        h.scheduler_pid.store(pid, Ordering::Relaxed);
        h.naptime_ms.store(naptime_ms, Ordering::Relaxed);
        h.state.store(state as i32, Ordering::Relaxed);
    }
}

pub fn set_state(state: SchedulerState) {
    if let Some(h) = header() {
        h.state.store(state as i32, Ordering::Relaxed);
    }
}

pub fn tick_done(at: pg_sys::TimestampTz) {
    if let Some(h) = header() {
        h.ticks.fetch_add(1, Ordering::Relaxed);
        h.last_tick_at.store(at, Ordering::Relaxed);
    }
}

pub struct Status {
    pub pid: i32,
    pub naptime_ms: i64,
    pub ticks: u64,
    pub last_tick_at: Option<pg_sys::TimestampTz>,
    pub state: SchedulerState,
}

pub fn status() -> Option<Status> {
    let h = header()?;
    let last = h.last_tick_at.load(Ordering::Relaxed);
    Some(Status {
        pid: h.scheduler_pid.load(Ordering::Relaxed),
        naptime_ms: h.naptime_ms.load(Ordering::Relaxed),
        ticks: h.ticks.load(Ordering::Relaxed),
        last_tick_at: (last != 0).then_some(last),
        state: SchedulerState::from_i32(h.state.load(Ordering::Relaxed)),
    })
}
