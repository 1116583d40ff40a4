//! Shared memory: the databases the background workers serve besides the scheduler's own, and how
//! each one's last tick went.
//!
//! The scheduler runs in `meshhook_keys.database`. Every other database that has the extension is
//! served by a short-lived worker the launcher starts there once per `worker_naptime` (at once
//! when one of its keys passed its rotation limit): it runs a whole tick (usage counts, rotation by
//! age and by encryptions, re-encryption) and exits. A database whose extension is not installed
//! is asked again every [`probe_interval`]. This table is what the launcher schedules from, and what
//! `scheduler_status()` and `health()` report in each database.
//!
//! Entries are claimed under a spin lock (once per database), read and updated without one.
//! Without `shared_preload_libraries` there is no table (and no worker).

use pgrx::pg_sys;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// How many databases besides the scheduler's are tracked (more are not served: logged once).
pub const ENTRIES: usize = 256;

/// How often a database without the extension (or not yet looked at) is looked at again: ten
/// naptimes, between 1 and 30 seconds.
pub fn probe_interval() -> std::time::Duration {
    (crate::gucs::worker_naptime() * 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    )
}

/// Where a database stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
pub enum DbState {
    /// Not looked at yet.
    Unknown = 0,
    /// The extension is not installed there (or at another version, until ALTER EXTENSION UPDATE).
    NoExtension = 1,
    /// Its last tick ended.
    Idle = 2,
    /// A worker is ticking there now.
    Ticking = 3,
    /// Its last tick could not run at all (see the server log).
    Failed = 4,
}

impl DbState {
    pub fn name(self) -> &'static str {
        match self {
            DbState::Unknown => "not looked at yet",
            DbState::NoExtension => "extension not installed",
            DbState::Idle => "idle",
            DbState::Ticking => "ticking",
            DbState::Failed => "failed",
        }
    }

    fn from_i32(v: i32) -> Self {
        match v {
            1 => DbState::NoExtension,
            2 => DbState::Idle,
            3 => DbState::Ticking,
            4 => DbState::Failed,
            _ => DbState::Unknown,
        }
    }
}

#[repr(C)]
struct Entry {
    /// The database (0: free).
    db: AtomicU32,
    state: AtomicI32,
    /// The worker ticking there now (0: none).
    pid: AtomicI32,
    ticks: AtomicU64,
    /// TimestampTz of the end of its last tick (0: none yet).
    last_tick_at: AtomicI64,
    /// A key version there waits for the standbys to replay it: serve it about
    /// once a second until it is active.
    activation_waiting: AtomicBool,
    /// secret_encrypt found no `default` keyring while standbys must replay its first version: the
    /// next tick there makes it, in a transaction of its own (see keyring::ensure_default_keyring).
    default_keyring_asked: AtomicBool,
}

#[repr(C)]
struct Table {
    claim_lock: AtomicBool,
    full: AtomicBool,
    entries: [Entry; ENTRIES],
}

static mut TABLE: *mut Table = std::ptr::null_mut();

/// The bytes the table needs (requested with the usage segment's).
pub fn size() -> usize {
    std::mem::size_of::<Table>()
}

/// Attach the table at shared memory startup (called by the usage segment's startup hook, under
/// AddinShmemInitLock).
///
/// # Safety
/// In the shared memory startup hook only, holding AddinShmemInitLock.
pub unsafe fn attach() {
    // SAFETY: the standard ShmemInitStruct protocol; the caller holds AddinShmemInitLock.
    unsafe {
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(c"meshhook_keys databases".as_ptr(), size(), &mut found);
        if !found {
            std::ptr::write_bytes(p as *mut u8, 0, size());
        }
        TABLE = p as *mut Table;
    }
}

fn table() -> Option<&'static Table> {
    // SAFETY: TABLE is set once at shared memory startup (inherited by every child) and points at
    // a zero-initialised Table.
    unsafe {
        let p = TABLE;
        if p.is_null() { None } else { Some(&*p) }
    }
}

fn find(t: &'static Table, db: u32) -> Option<&'static Entry> {
    t.entries
        .iter()
        .find(|e| e.db.load(Ordering::Acquire) == db)
}

/// The entry of `db`, claimed if it has none; None when the table is full (logged once).
fn entry(db: u32) -> Option<&'static Entry> {
    let t = table()?;
    if db == 0 {
        return None;
    }
    if let Some(e) = find(t, db) {
        return Some(e);
    }
    while t
        .claim_lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    let claimed = find(t, db).or_else(|| {
        let e = t
            .entries
            .iter()
            .find(|e| e.db.load(Ordering::Acquire) == 0)?;
        e.state.store(DbState::Unknown as i32, Ordering::Relaxed);
        e.pid.store(0, Ordering::Relaxed);
        e.ticks.store(0, Ordering::Relaxed);
        e.last_tick_at.store(0, Ordering::Relaxed);
        e.activation_waiting.store(false, Ordering::Relaxed);
        e.default_keyring_asked.store(false, Ordering::Relaxed);
        e.db.store(db, Ordering::Release);
        Some(e)
    });
    t.claim_lock.store(false, Ordering::Release);
    if claimed.is_none() && !t.full.swap(true, Ordering::AcqRel) {
        crate::logline::log(&format!(
            "meshhook_keys launcher: more than {ENTRIES} databases besides meshhook_keys.database; the others are not served by a background worker (drive them with tick() from pg_cron)"
        ));
    }
    claimed
}

/// What is known of `db` (Unknown if nothing).
pub fn state(db: u32) -> DbState {
    table()
        .and_then(|t| find(t, db))
        .map_or(DbState::Unknown, |e| {
            DbState::from_i32(e.state.load(Ordering::Relaxed))
        })
}

/// A worker (`pid`) starts ticking in `db`, or finds the extension missing there.
pub fn set(db: u32, state: DbState, pid: i32) {
    if let Some(e) = entry(db) {
        e.pid.store(pid, Ordering::Relaxed);
        e.state.store(state as i32, Ordering::Relaxed);
    }
}

/// A tick in `db` ended at `at`.
pub fn tick_done(db: u32, at: pg_sys::TimestampTz) {
    if let Some(e) = entry(db) {
        e.ticks.fetch_add(1, Ordering::Relaxed);
        e.last_tick_at.store(at, Ordering::Relaxed);
        e.pid.store(0, Ordering::Relaxed);
        e.state.store(DbState::Idle as i32, Ordering::Relaxed);
    }
}

/// Whether a key version in `db` waits for the standbys (set by the rotation that made it, and by
/// every tick there until none does). Any database, the scheduler's included.
pub fn set_activation_waiting(db: u32, waiting: bool) {
    let e = if waiting {
        entry(db)
    } else {
        table().and_then(|t| find(t, db))
    };
    if let Some(e) = e {
        e.activation_waiting.store(waiting, Ordering::Relaxed);
    }
}

/// Whether a key version in `db` waits for the standbys.
pub fn activation_waiting(db: u32) -> bool {
    table()
        .and_then(|t| find(t, db))
        .is_some_and(|e| e.activation_waiting.load(Ordering::Relaxed))
}

/// Whether a key version in any database waits for the standbys.
pub fn any_activation_waiting() -> bool {
    table().is_some_and(|t| {
        t.entries.iter().any(|e| {
            e.db.load(Ordering::Acquire) != 0 && e.activation_waiting.load(Ordering::Relaxed)
        })
    })
}

/// Ask the workers to make the `default` keyring's first version in `db` (and to come back about
/// once a second until it is active). False without shared memory (no workers to ask).
pub fn ask_for_default_keyring(db: u32) -> bool {
    match entry(db) {
        Some(e) => {
            e.default_keyring_asked.store(true, Ordering::Relaxed);
            e.activation_waiting.store(true, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Whether the `default` keyring was asked for in `db`; clears the request.
pub fn take_default_keyring_request(db: u32) -> bool {
    table()
        .and_then(|t| find(t, db))
        .is_some_and(|e| e.default_keyring_asked.swap(false, Ordering::Relaxed))
}

/// The current database.
pub fn this_database() -> u32 {
    // SAFETY: a plain read of a backend global.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

/// A dropped database's entry is freed.
pub fn forget(db: u32) {
    if let Some(e) = table().and_then(|t| find(t, db)) {
        e.db.store(0, Ordering::Release);
    }
}

/// Every tracked database.
pub fn tracked() -> Vec<u32> {
    table().map_or_else(Vec::new, |t| {
        t.entries
            .iter()
            .map(|e| e.db.load(Ordering::Acquire))
            .filter(|&d| d != 0)
            .collect()
    })
}

/// How one database is served, for scheduler_status() and health().
pub struct Status {
    pub state: DbState,
    pub pid: i32,
    pub ticks: u64,
    pub last_tick_at: Option<pg_sys::TimestampTz>,
}

pub fn status(db: u32) -> Option<Status> {
    let t = table()?;
    Some(match find(t, db) {
        None => Status {
            state: DbState::Unknown,
            pid: 0,
            ticks: 0,
            last_tick_at: None,
        },
        Some(e) => {
            let last = e.last_tick_at.load(Ordering::Relaxed);
            Status {
                state: DbState::from_i32(e.state.load(Ordering::Relaxed)),
                pid: e.pid.load(Ordering::Relaxed),
                ticks: e.ticks.load(Ordering::Relaxed),
                last_tick_at: (last != 0).then_some(last),
            }
        }
    })
}
