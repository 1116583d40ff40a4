//! Scheduled rotation: per-keyring policy, one tick as a SQL call, the scheduler's status.

use crate::audit;
use crate::error::{KeysError, OrRaise};
use crate::keyring::{self, validate_keyring};
use crate::scheduler::{self, Mode};
use crate::{gucs, usage};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

/// Set a keyring's rotation policy: rotate when its active key is older than `rotation_interval`
/// (NULL: never by age) or has encrypted `max_encryptions` times (NULL: the server default).
/// Audited. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn keyring_set_policy(
    keyring: Option<&str>,
    rotation_interval: Option<Interval>,
    max_encryptions: default!(Option<i64>, "NULL"),
) -> bool {
    (|| {
        audit::require_admin("keyring_set_policy", keyring)?;
        let keyring = validate_keyring(keyring)?;
        keyring::set_policy(keyring, rotation_interval, max_encryptions)
    })()
    .or_raise();
    true
}

/// Run one scheduler tick now, in the caller's transaction: rotate every keyring that is due, then
/// advance pending re-encryption (`meshhook_keys.reencrypt_batches_per_tick` batches of
/// `meshhook_keys.reencrypt_batch_size` rows per keyring). For platforms that cannot preload the
/// library: schedule it with pg_cron. Requires meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tick() -> TableIterator<
    'static,
    (
        name!(keyring, Option<String>),
        name!(action, String),
        name!(outcome, String),
        name!(detail, String),
    ),
> {
    audit::require_admin("tick", None).or_raise();
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        KeysError::InvalidArgument("the server is a standby: tick() runs on the primary".into())
            .raise();
    }
    let rows: Vec<_> = scheduler::tick(Mode::Subtransactions, false)
        .into_iter()
        .map(|a| {
            (
                a.keyring,
                a.action.to_string(),
                a.outcome.to_string(),
                a.detail,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Encryptions under a key counted in shared memory and not yet flushed to the table; NULL when
/// the library is not preloaded (nothing is counted). For the view keyrings. Requires
/// meshhook_keys_operator.
#[pg_extern(volatile, parallel_safe)]
fn _encryptions_pending(key_id: Option<i64>) -> Option<i64> {
    usage::pending(key_id?).map(|n| n as i64)
}

/// How this database is served by the background workers (the scheduler in
/// meshhook_keys.database, a short-lived database worker per tick in any other), as the shared
/// memory of this server sees it. Requires meshhook_keys_operator.
#[allow(clippy::type_complexity)]
#[pg_extern(security_definer, volatile, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn scheduler_status() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(database, String),
        name!(state, String),
        name!(naptime_ms, Option<i64>),
        name!(ticks, Option<i64>),
        name!(last_tick_at, Option<TimestampWithTimeZone>),
        name!(counting_encryptions, bool),
        name!(usage_table_full, bool),
    ),
> {
    audit::require_admin("scheduler_status", None).or_raise();
    let row = match crate::scheduler::here() {
        None => (
            None,
            gucs::database(),
            "not preloaded".to_string(),
            None,
            None,
            None,
            false,
            false,
        ),
        Some(h) => (
            (h.pid != 0).then_some(h.pid),
            h.database,
            h.state,
            Some(h.naptime_ms),
            Some(h.ticks as i64),
            h.last_tick_at
                .and_then(|t| TimestampWithTimeZone::try_from(t).ok()),
            true,
            usage::overflowed(),
        ),
    };
    TableIterator::once(row)
}
