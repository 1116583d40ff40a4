//! Pacing of the scheduler's re-encryption (issue 27): while other sessions of the database are
//! running statements, its batches take at most `meshhook_keys.reencrypt_busy_share` of its time,
//! so that the application keeps the CPU, the WAL and its latency; with nobody else running, the
//! batches follow each other `meshhook_keys.reencrypt_batch_delay` apart as before.
//!
//! Invariants: one sample per batch, read in the batch's own transaction (a fresh view of
//! `pg_stat_activity`); a sample that cannot be read counts as "nobody else" (pacing never fails a
//! batch); the pause after a batch is never shorter than `reencrypt_batch_delay`.

use crate::error::Result;
use crate::gucs;
use std::time::Duration;

/// Whether another client session of this database is running a statement now.
pub fn others_active() -> Result<bool> {
    crate::plans::read(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity
                         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
                           AND backend_type OPERATOR(pg_catalog.=) 'client backend'
                           AND state OPERATOR(pg_catalog.=) 'active'
                           AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid())",
        &[],
        |t| Ok(t.first().get::<bool>(1)?.unwrap_or(false)),
    )
}

/// The pause after a batch that took `took`: `base` when nobody else is running, else long enough
/// that batches take `share` of the time (a batch of 4 ms at a share of 0.1 is followed by 36 ms).
pub fn pause_after(took: Duration, base: Duration, share: f64, others_active: bool) -> Duration {
    if !others_active || share >= 1.0 {
        return base;
    }
    let share = share.max(0.01);
    base.max(took.mul_f64(1.0 / share - 1.0))
}

/// [`pause_after`] with the current settings.
pub fn pause(took: Duration, others_active: bool) -> Duration {
    pause_after(
        took,
        gucs::reencrypt_batch_delay(),
        gucs::reencrypt_busy_share(),
        others_active,
    )
}

#[cfg(test)]
mod unit {
    use super::pause_after;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const ZERO: Duration = Duration::ZERO;

    #[test]
    fn alone_the_base_delay() {
        assert_eq!(pause_after(4 * MS, 10 * MS, 0.1, false), 10 * MS);
        assert_eq!(pause_after(400 * MS, ZERO, 0.1, false), ZERO);
    }

    #[test]
    fn busy_batches_take_their_share() {
        // 4 ms of work in every 40 ms
        assert_eq!(pause_after(4 * MS, 10 * MS, 0.1, true), 36 * MS);
        // 4 ms in every 16 ms
        assert_eq!(pause_after(4 * MS, ZERO, 0.25, true), 12 * MS);
        // never shorter than the base delay, and no pause at all at a share of 1
        assert_eq!(pause_after(MS, 10 * MS, 0.5, true), 10 * MS);
        assert_eq!(pause_after(4 * MS, 10 * MS, 1.0, true), 10 * MS);
        // a share below 1% is 1%
        assert_eq!(pause_after(MS, ZERO, 0.0, true), 99 * MS);
    }
}
