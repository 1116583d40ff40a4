//! Sealed calls: how meshhook_keys runs code it does not own (a table owner's triggers, defaults,
//! generated columns, checks, policies and context expressions; a deployer's tenant check; the
//! views behind Supabase Vault), the way PostgreSQL runs a table owner's code in
//! `SwitchToUntrustedUser` / `RestoreUserContext` (usercontext.c) and `ExecRefreshMatView`.
//!
//! Inside a sealed call the code runs as its owner, in a security-restricted operation (no SET
//! ROLE, no temporary objects, no LISTEN, no holdable cursor), with `search_path` =
//! `pg_catalog, pg_temp`, in a subtransaction of its own, and with every identity check of
//! meshhook_keys seeing that owner ([`crate::context::caller`]). When it returns, or raises:
//! * every setting it changed is put back (a GUC nest level rolled back, as `AtEOXact_GUC(false)`
//!   does for `RestoreUserContext`), whether it used `SET`, `SET LOCAL` or `set_config(…, false)`;
//! * an advisory lock it took and still holds (session or transaction level) is released, a cursor
//!   it left open is closed, a prepared statement it made is deallocated; and a call that left any
//!   of these behind fails with 42501 (its subtransaction rolled back), so nothing it did
//!   survives in the runner's backend: not in the session of an operator's `CALL reencrypt`, nor in
//!   the background worker, nor in a pooled connection's next client.
//!
//! In a parallel operation (a tenant check in a parallel worker or its leader) PostgreSQL itself
//! refuses settings changes, advisory locks and PREPARE, and no subtransaction can start: the call
//! is sealed by the user switch and the rolled-back nest level alone.

use crate::context;
use crate::error::{Failure, KeysError, Result};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;

/// A subtransaction begun with [`SubXact::begin`]: ended by `commit` or `rollback`, each
/// restoring the caller's memory context and resource owner (the protocol PL/pgSQL uses for an
/// EXCEPTION block).
pub struct SubXact {
    cx: pg_sys::MemoryContext,
    owner: pg_sys::ResourceOwner,
}

impl SubXact {
    pub fn begin() -> Self {
        // SAFETY: BeginInternalSubTransaction inside a transaction; the caller's memory context
        // is switched back to at once, as PL/pgSQL does.
        unsafe {
            let cx = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(cx);
            SubXact { cx, owner }
        }
    }

    pub fn commit(self) {
        // SAFETY: ends the subtransaction begun in `begin`.
        unsafe {
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(self.cx);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }

    pub fn rollback(self) {
        // SAFETY: ends the subtransaction begun in `begin` (also after an error was caught in it).
        unsafe {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(self.cx);
            pg_sys::CurrentResourceOwner = self.owner;
        }
    }
}

/// Run `f` in a subtransaction of its own: committed if it returns Ok, rolled back if it returns
/// Err or raises, whose error is returned (its SQLSTATE and message), never re-raised.
pub fn isolated<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, Failure> {
    let sub = SubXact::begin();
    let r = Failure::caught(f);
    if r.is_ok() {
        sub.commit();
    } else {
        sub.rollback();
    }
    r
}

/// Run `f` in a subtransaction of its own, committed if it returns Ok. If it returns an error or
/// raises one, the subtransaction is rolled back, `report` is called with the SQLSTATE, and the
/// error is returned or raised again unchanged: for an action that must leave a durable record of
/// its failure (whose own rows roll back with it) before the error reaches the caller.
pub fn reported<T>(f: impl FnOnce() -> Result<T>, report: impl FnOnce(&str)) -> Result<T> {
    let sub = SubXact::begin();
    match caught(f) {
        Ok(v) => {
            sub.commit();
            Ok(v)
        }
        Err(e) => {
            sub.rollback();
            report(&e.sqlstate());
            e.resume()
        }
    }
}

/// SQLSTATEs that are not a call's own failure but the session's or the server's: a cancel or
/// timeout (class 57), a deadlock or serialization failure (40), a lock timeout, running out of
/// resources (53, 58), an internal error. A caller that catches a call's failure lets these through.
pub fn not_the_calls_own(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("57" | "40" | "53" | "58"))
        || sqlstate == "55P03"
        || sqlstate == "XX000"
}

/// Like [`isolated`], except for an error whose SQLSTATE `passes` says is not the call's own (a
/// cancel, a timeout, a deadlock, running out of resources): that one is raised (or returned) again
/// after the rollback, as PL/pgSQL's `WHEN OTHERS` lets a cancel through. Ok(Err(failure)) is a
/// caught failure of the call.
pub fn isolated_except<T>(
    f: impl FnOnce() -> Result<T>,
    passes: impl Fn(&str) -> bool,
) -> Result<std::result::Result<T, Failure>> {
    let sub = SubXact::begin();
    match caught(f) {
        Ok(v) => {
            sub.commit();
            Ok(Ok(v))
        }
        Err(e) => {
            sub.rollback();
            if passes(&e.sqlstate()) {
                return e.resume();
            }
            Ok(Err(match e {
                Failed::Returned(e) => Failure::from(e),
                Failed::Raised(e) => Failure::from_caught(*e),
            }))
        }
    }
}

/// Run `f` in a subtransaction that is always rolled back: whatever it wrote is undone (and, by the
/// invalidations that rollback processes, whatever the key cache loaded from it); its result is
/// returned, its error returned or raised again.
pub fn undone<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let sub = SubXact::begin();
    let r = caught(f);
    sub.rollback();
    r.or_else(Failed::resume)
}

/// An advisory lock this backend holds: its tag and the modes held.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    tag: [u32; 4],
    modes: u32,
}

impl Held {
    fn locktag(&self) -> pg_sys::LOCKTAG {
        pg_sys::LOCKTAG {
            locktag_field1: self.tag[0],
            locktag_field2: self.tag[1],
            locktag_field3: self.tag[2],
            locktag_field4: self.tag[3] as u16,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }
}

/// What a call could leave in this backend: the advisory locks it holds, its open cursors and its
/// prepared statements.
#[derive(Default)]
struct Session {
    locks: Vec<Held>,
    cursors: Vec<String>,
    prepared: Vec<String>,
}

impl Session {
    fn now() -> Result<Self> {
        // (read-only, so that it takes no transaction id: sealed calls also run on a standby)
        // (a kept plan: this runs twice for every window of a re-encryption batch)
        let (cursors, prepared) = crate::plans::read(
            "SELECT ARRAY(SELECT name FROM pg_catalog.pg_cursors ORDER BY 1),
                    ARRAY(SELECT name FROM pg_catalog.pg_prepared_statements ORDER BY 1)",
            &[],
            |t| {
                let row = t.first();
                Ok((row.get::<Vec<String>>(1)?, row.get::<Vec<String>>(2)?))
            },
        )?;
        Ok(Session {
            locks: advisory_locks(),
            cursors: cursors.unwrap_or_default(),
            prepared: prepared.unwrap_or_default(),
        })
    }

    /// What is in `self` (after a call) but not in `before`.
    fn left_since(&self, before: &Session) -> Vec<&'static str> {
        let mut left = Vec::new();
        if self
            .locks
            .iter()
            .any(|h| h.modes & !before.modes_on(h) != 0)
        {
            left.push("an advisory lock");
        }
        if before
            .locks
            .iter()
            .any(|b| self.modes_on(b) & b.modes != b.modes)
        {
            left.push("the release of an advisory lock it did not take");
        }
        if self.cursors.iter().any(|n| !before.cursors.contains(n)) {
            left.push("an open cursor");
        }
        if self.prepared.iter().any(|n| !before.prepared.contains(n)) {
            left.push("a prepared statement");
        }
        left
    }

    fn modes_on(&self, h: &Held) -> u32 {
        self.locks
            .iter()
            .find(|b| b.tag == h.tag)
            .map_or(0, |b| b.modes)
    }

    /// Undo what is in `self` but not in `before`: release session-level advisory locks (after the
    /// call's subtransaction was rolled back, which released its transaction-level ones), take back
    /// the caller's advisory locks the call released, close cursors, deallocate prepared
    /// statements. Returns what could not be undone.
    fn undo_since(&self, before: &Session) -> Vec<&'static str> {
        let mut not_undone = Vec::new();
        for h in &self.locks {
            let new = h.modes & !before.modes_on(h);
            if new != 0 {
                release_session_lock(h, new);
            }
        }
        // (only a session-level hold can be released by a call, pg_advisory_unlock and
        // pg_advisory_unlock_all release no other: it is taken back at session level, once per
        // mode, without waiting; if another session took the lock meanwhile it stays lost)
        for b in &before.locks {
            let gone = b.modes & !self.modes_on(b);
            if gone != 0 && !take_session_lock(b, gone) {
                not_undone.push(
                    "an advisory lock of the caller's it released, which another session holds now",
                );
            }
        }
        for name in self.cursors.iter().filter(|n| !before.cursors.contains(n)) {
            if let Ok(c) = CString::new(name.as_str()) {
                // SAFETY: looks the portal up by name and drops it (it is not running: the call
                // that opened it has returned).
                unsafe {
                    let portal = pg_sys::SPI_cursor_find(c.as_ptr());
                    if !portal.is_null() {
                        pg_sys::SPI_cursor_close(portal);
                    }
                }
            }
        }
        for name in self
            .prepared
            .iter()
            .filter(|n| !before.prepared.contains(n))
        {
            if let Ok(c) = CString::new(name.as_str()) {
                // SAFETY: deallocates a prepared statement by name; missing is not an error.
                unsafe { pg_sys::DropPreparedStatement(c.as_ptr(), false) };
            }
        }
        not_undone
    }
}

/// The advisory locks this backend holds (granted), from the lock manager; not meshhook_keys' own
/// (crate::locks), which only its own functions take, until their transaction ends.
///
/// Read from this backend's own entries in the shared lock table (`MyProc->myProcLocks`, one list
/// per lock partition, each read under its partition lock in shared mode, as lock.c reads them),
/// not from `GetLockStatusData`, which copies the whole lock table with every partition lock and
/// every backend's fast-path lock taken: that ran twice per re-encryption window, and stalled
/// every other backend's lock manager for its length. Advisory locks never take the fast path, so
/// every one this backend holds is in its lists.
fn advisory_locks() -> Vec<Held> {
    let mut out: Vec<Held> = Vec::new();
    // SAFETY: MyProc is this backend's PGPROC; its lock lists are read under their partition's
    // lock in shared mode (modifications take it exclusively), and nothing in the loop can raise.
    unsafe {
        let me = pg_sys::MyProc;
        if me.is_null() || pg_sys::MainLWLockArray.is_null() {
            return out;
        }
        for part in 0..pg_sys::NUM_LOCK_PARTITIONS as usize {
            let lw = &raw mut (*pg_sys::MainLWLockArray
                .add(pg_sys::LOCK_MANAGER_LWLOCK_OFFSET as usize + part))
            .lock;
            pg_sys::LWLockAcquire(lw, pg_sys::LWLockMode::LW_SHARED);
            for_each_proclock(list_end(me, part), |pl| {
                let l = &(*(*pl).tag.myLock).tag;
                if l.locktag_type != pg_sys::LockTagType::LOCKTAG_ADVISORY as u8
                    || l.locktag_field4 == crate::locks::OUR_FIELD4
                    || (*pl).holdMask == 0
                {
                    return;
                }
                let tag = [
                    l.locktag_field1,
                    l.locktag_field2,
                    l.locktag_field3,
                    l.locktag_field4 as u32,
                ];
                match out.iter_mut().find(|h| h.tag == tag) {
                    Some(h) => h.modes |= (*pl).holdMask as u32,
                    None => out.push(Held {
                        tag,
                        modes: (*pl).holdMask as u32,
                    }),
                }
            });
            pg_sys::LWLockRelease(lw);
        }
    }
    out.sort_by_key(|h| h.tag);
    out
}

/// A link of a backend's per-partition lock lists: a `SHM_QUEUE` up to PostgreSQL 15, a `dlist`
/// node since 16. Both lists are circular through their head; a never-used `dlist` is empty with
/// null links.
#[cfg(feature = "pg15")]
type ProcLockLink = pg_sys::SHM_QUEUE;
#[cfg(not(feature = "pg15"))]
type ProcLockLink = pg_sys::dlist_node;

/// The head link of `proc`'s lock list for partition `part`, where a walk over it starts and ends.
///
/// # Safety
/// `proc` is a live PGPROC.
unsafe fn list_end(proc: *mut pg_sys::PGPROC, part: usize) -> *mut ProcLockLink {
    // SAFETY: per the caller's contract.
    unsafe {
        #[cfg(feature = "pg15")]
        let end = &raw mut (*proc).myProcLocks[part];
        #[cfg(not(feature = "pg15"))]
        let end = &raw mut (*proc).myProcLocks[part].head;
        end
    }
}

/// Each PROCLOCK of the lock list that ends at `end` (from [`list_end`]).
///
/// # Safety
/// The caller holds the list's partition lock.
unsafe fn for_each_proclock(end: *mut ProcLockLink, mut f: impl FnMut(*const pg_sys::PROCLOCK)) {
    let offset = std::mem::offset_of!(pg_sys::PROCLOCK, procLink);
    // SAFETY: per the caller's contract.
    unsafe {
        let mut link = (*end).next;
        while !link.is_null() && link != end {
            f(link.cast::<u8>().sub(offset).cast());
            link = (*link).next;
        }
    }
}

/// The lock modes whose bits are set in `modes` (a hold mask).
fn lock_modes(modes: u32) -> impl Iterator<Item = i32> {
    (1..=pg_sys::MaxLockMode as i32).filter(move |mode| modes & (1 << mode) != 0)
}

/// Release every session-level hold of `modes` on `h`. Called after the call's subtransaction was
/// rolled back, which released its transaction-level locks: what is still held is session level.
fn release_session_lock(h: &Held, modes: u32) {
    let tag = h.locktag();
    for mode in lock_modes(modes) {
        // Bounded: each release drops one hold; a lock is held at most once per acquisition.
        for _ in 0..1_000_000 {
            // SAFETY: a release from this backend's own lock table, of a hold it has.
            if !crate::locks::held_by_me(&tag, mode)
                || !unsafe { pg_sys::LockRelease(&tag, mode, true) }
            {
                break;
            }
        }
    }
}

/// Take one session-level hold of each of `modes` on `h`, without waiting; false if one is held
/// elsewhere in a conflicting mode.
fn take_session_lock(h: &Held, modes: u32) -> bool {
    let tag = h.locktag();
    // (every mode is tried, also after one that could not be taken)
    lock_modes(modes).fold(true, |all, mode| {
        // SAFETY: a lock of this backend's user lock method, taken at session level.
        let got = unsafe { pg_sys::LockAcquire(&tag, mode, true, true) };
        all & (got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL)
    })
}

/// Run `f`, code that belongs to `role`, sealed (see the module docs). With `row_security_off`,
/// `row_security` is off inside, so that a policy that would apply to the owner raises instead of
/// hiding rows.
pub fn run<T>(
    role: pg_sys::Oid,
    row_security_off: bool,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    // SAFETY: reading backend state.
    if unsafe { pg_sys::IsInParallelMode() } {
        return switched(role, row_security_off, f);
    }
    let before = Session::now()?;
    let sub = SubXact::begin();
    let r = attempt(role, row_security_off, f);
    match r {
        Ok(v) => {
            let left = match Session::now() {
                Ok(now) => now.left_since(&before),
                Err(e) => {
                    sub.rollback();
                    return Err(e);
                }
            };
            if left.is_empty() {
                sub.commit();
                return Ok(v);
            }
            sub.rollback();
            let mut left = left;
            left.extend(Session::now()?.undo_since(&before));
            Err(KeysError::LeftBehind {
                role: context::role_name(role),
                what: left.join(", "),
            })
        }
        Err(e) => {
            sub.rollback();
            let _ = Session::now()?.undo_since(&before);
            e.resume()
        }
    }
}

/// Run `f`, code of `role` that only answers a question (the tenant check), sealed and then undone
/// entirely: its subtransaction is always rolled back once its answer is in hand, which also drops
/// every transaction-level lock and cursor it made (and PostgreSQL refuses PREPARE inside), so only
/// session-level advisory locks are looked for; one it keeps is released and refused (42501). The
/// cheap form of [`run`] for a call made once per transaction on the hot path: it runs no SQL of its
/// own. Whatever `f` wrote is rolled back with it.
pub fn ask<T>(role: pg_sys::Oid, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // SAFETY: reading backend state.
    if unsafe { pg_sys::IsInParallelMode() } {
        return switched(role, false, f);
    }
    let before = Session {
        locks: advisory_locks(),
        ..Session::default()
    };
    let sub = SubXact::begin();
    let r = attempt(role, false, f);
    sub.rollback();
    let after = Session {
        locks: advisory_locks(),
        ..Session::default()
    };
    let mut left = after.left_since(&before);
    left.extend(after.undo_since(&before));
    match r {
        Err(e) => e.resume(),
        Ok(_) if !left.is_empty() => Err(KeysError::LeftBehind {
            role: context::role_name(role),
            what: left.join(", "),
        }),
        Ok(v) => Ok(v),
    }
}

/// How a sealed call failed: an error of ours it returned, or one it raised, caught so that its
/// subtransaction can be rolled back (and what it left undone) before it is raised again.
enum Failed {
    Returned(KeysError),
    Raised(Box<pgrx::pg_sys::panic::CaughtError>),
}

impl Failed {
    fn sqlstate(&self) -> String {
        match self {
            Failed::Returned(e) => e.sqlstate_code(),
            Failed::Raised(e) => crate::error::caught_sqlstate(e),
        }
    }

    /// The failure as it came: an error of ours returned, a raised one raised again.
    fn resume<T>(self) -> Result<T> {
        match self {
            Failed::Returned(e) => Err(e),
            Failed::Raised(e) => e.rethrow(),
        }
    }
}

/// `f`, with what it returns as an error or raises caught (for the caller to end its subtransaction
/// before resuming it).
fn caught<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, Failed> {
    PgTryBuilder::new(AssertUnwindSafe(|| f().map_err(Failed::Returned)))
        .catch_others(|e| Err(Failed::Raised(Box::new(e))))
        .execute()
}

/// `f` run by [`switched`], with what it raises caught.
fn attempt<T>(
    role: pg_sys::Oid,
    row_security_off: bool,
    f: impl FnOnce() -> Result<T>,
) -> std::result::Result<T, Failed> {
    caught(|| switched(role, row_security_off, f))
}

/// What current_query() returns inside code run on someone's behalf.
const HIDDEN_STATEMENT: &std::ffi::CStr =
    c"/* meshhook_keys: code run on its owner's behalf; the statement that started it is not shown */";

/// The backend's statement text (`debug_query_string`, what current_query() returns) replaced
/// while alive, the caller's put back when dropped (also while unwinding from an error).
struct HiddenStatement(*const std::ffi::c_char);

impl HiddenStatement {
    fn hide() -> Self {
        // SAFETY: a backend global read and set from this backend's only thread; the placeholder
        // is a static string, and the saved pointer stays valid (the caller's statement outlives
        // the calls it makes).
        unsafe {
            let saved = pg_sys::debug_query_string;
            pg_sys::debug_query_string = HIDDEN_STATEMENT.as_ptr();
            HiddenStatement(saved)
        }
    }
}

impl Drop for HiddenStatement {
    fn drop(&mut self) {
        // SAFETY: as in hide().
        unsafe { pg_sys::debug_query_string = self.0 };
    }
}

/// `f` as `role` in a security-restricted operation with its own GUC nest level (search_path
/// pinned, optionally row_security off), rolled back afterwards; the user is switched back. If
/// `f` raises, the (sub)transaction abort restores both.
fn switched<T>(
    role: pg_sys::Oid,
    row_security_off: bool,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_ctx: i32 = 0;
    // SAFETY: the steps of ExecRefreshMatView / SwitchToUntrustedUser: save and switch the user
    // with SECURITY_RESTRICTED_OPERATION, then a new GUC nest level with a fixed search_path.
    let nest = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_ctx
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest = pg_sys::NewGUCNestLevel();
        context::save_setting(c"search_path", c"pg_catalog, pg_temp");
        if row_security_off {
            context::save_setting(c"row_security", c"off");
        }
        nest
    };
    // The caller's statement text is not the owner's to read: current_query() inside her code
    // would hand her the statement that started the batch, with whatever it carries (a user-held
    // keyring's secrets passed as literals to keyring_rotate_secret). Restored when `f` returns or
    // raises.
    let _hidden = HiddenStatement::hide();
    let out = context::on_behalf_of(role, f);
    // SAFETY: rolls back every setting changed since the nest level above (SET, SET LOCAL and
    // set_config alike), then restores the user saved above.
    unsafe {
        pg_sys::AtEOXact_GUC(false, nest);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
    }
    out
}
