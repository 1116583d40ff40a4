//! Waiting on this backend's latch: a pause that wakes early when the latch is set (a signal, a
//! worker starting or stopping) and ends the process if the postmaster dies; interrupts (a cancel,
//! SIGTERM) are serviced right after.
//!
//! Layer 0: pgrx only. Called by the scheduler between batches, by a batch that finds every
//! column backing off, and by the audit log while it waits for its refusal worker.

use pgrx::pg_sys;
use std::time::Duration;

/// Wait up to `d` (nothing for zero), then check for interrupts.
pub fn wait(d: Duration) {
    if d.is_zero() {
        return;
    }
    // SAFETY: WaitLatch on our own latch, as any backend may; the latch is reset after.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}
