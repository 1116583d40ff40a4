//! health(): is this server set up so that secrets stay secret? The checks are in crate::health.

use crate::audit;
use crate::error::OrRaise;
use pgrx::prelude::*;

/// Whether this server is set up to keep secrets secret: root key, scheduler, tenant check, and
/// every logging setting that would write secret-bearing statements to the server log. Requires
/// meshhook_keys_operator.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn health() -> TableIterator<
    'static,
    (
        name!(item, String),
        name!(status, String),
        name!(detail, String),
    ),
> {
    audit::require_admin("health", None).or_raise();
    TableIterator::new(crate::health::checks())
}
