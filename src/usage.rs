//! Shared memory: encryptions counted per data key, and the scheduler's status.
//!
//! AES-GCM with random 96-bit nonces must not exceed 2^32 encryptions under one key (NIST SP
//! 800-38D), so every encryption is counted. Counting must be cheap: one open-addressed table of
//! (key id, count) slots in shared memory, updated with one atomic add per encryption; no row is
//! written per encryption. The scheduler moves the counts into `data_key.encryptions` on every tick
//! (subtracting only after its transaction committed, so a failed flush loses nothing; a crash
//! between commit and subtract counts twice, which errs on the safe side). A server crash loses the
//! counts since the last flush: at most one naptime of encryptions, far below the margin between the
//! default limit (2^30) and 2^32.
//!
//! Without `shared_preload_libraries` there is no segment: nothing is counted, and the `keyrings`
//! view shows NULL encryptions for that reason.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};

#[repr(C)]
struct Slot {
    key_id: AtomicI64,
    /// Encryptions not yet flushed to `data_key.encryptions`.
    count: AtomicU64,
}

#[repr(C)]
struct Header {
    nslots: u64,
    /// Set once an encryption could not be counted because every slot was taken.
    full: AtomicBool,
    scheduler_pid: AtomicI32,
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
        pg_sys::RequestAddinShmemSpace(size(crate::gucs::max_tracked_keys()));
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

fn start(key_id: i64, n: usize) -> usize {
    ((key_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % n
}

/// The slot of `key_id`, claiming a free one if `claim`.
fn find(key_id: i64, claim: bool) -> Option<&'static Slot> {
    let h = header()?;
    let s = slots(h);
    let n = s.len();
    let first = start(key_id, n);
    for i in 0..n {
        let slot = &s[(first + i) % n];
        match slot.key_id.load(Ordering::Acquire) {
            k if k == key_id => return Some(slot),
            0 if claim => {
                match slot
                    .key_id
                    .compare_exchange(0, key_id, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(slot),
                    Err(k) if k == key_id => return Some(slot),
                    Err(_) => continue,
                }
            }
            0 => return None,
            _ => continue,
        }
    }
    if claim && !h.full.swap(true, Ordering::AcqRel) {
        crate::logline::log(&format!(
            "meshhook_keys: every one of the {n} usage slots is taken (meshhook_keys.max_tracked_keys): encryptions under new keys are not counted until a restart with a larger setting"
        ));
    }
    None
}

/// Count `n` encryptions under `key_id`.
pub fn count(key_id: i64, n: u64) {
    if n == 0 {
        return;
    }
    if let Some(slot) = find(key_id, true) {
        slot.count.fetch_add(n, Ordering::Relaxed);
    }
}

/// Encryptions under `key_id` not yet flushed to the table; `None` without shared memory.
pub fn pending(key_id: i64) -> Option<u64> {
    header()?;
    Some(find(key_id, false).map_or(0, |s| s.count.load(Ordering::Relaxed)))
}

/// Every (key id, pending count) with a non-zero count.
pub fn snapshot() -> Vec<(i64, u64)> {
    let Some(h) = header() else {
        return Vec::new();
    };
    slots(h)
        .iter()
        .filter_map(|s| {
            let k = s.key_id.load(Ordering::Acquire);
            let c = s.count.load(Ordering::Relaxed);
            (k != 0 && c > 0).then_some((k, c))
        })
        .collect()
}

/// Subtract counts that were flushed (after the flushing transaction committed).
pub fn subtract(flushed: &[(i64, u64)]) {
    for &(k, c) in flushed {
        if let Some(slot) = find(k, false) {
            slot.count.fetch_sub(c, Ordering::Relaxed);
        }
    }
}

/// Whether some encryption could not be counted because the table was full.
pub fn overflowed() -> bool {
    header().is_some_and(|h| h.full.load(Ordering::Relaxed))
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
