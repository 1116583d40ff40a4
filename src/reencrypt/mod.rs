//! Online re-encryption: move every registered ciphertext of a keyring to its active key.
//!
//! One call of [`batch`] is a bounded piece of work inside the caller's transaction:
//! * rows are found by a TID range over a window of heap blocks (`ctid >= (b,o) AND ctid < (b+k,0)`),
//!   so each batch reads only its window and a pass reads the table once, whatever its size;
//! * only rows whose header names an old version of the keyring are claimed, with
//!   `FOR UPDATE SKIP LOCKED`, so a row an application is updating is skipped (and retried on a later
//!   pass) instead of waited for;
//! * each row is written back with a compare-and-set (`WHERE ctid = $1 AND col = $old`), so a newer
//!   application value is never overwritten;
//! * the cursor and counters move forward in the same transaction as the rows, so a crash at any point
//!   loses at most the batch in flight, which is redone.
//!
//! The user's context expression is evaluated as the table's owner in a security-restricted
//! operation (as PostgreSQL does for index expressions during maintenance), never as the extension
//! owner, so registering an expression cannot escalate privileges.
//!
//! The parts, each depending only on those listed before it:
//! * `registry`: registering and unregistering a column, the registered columns of a keyring and
//!   what is asked of them (counts, checks of a context expression), run as the table's owner;
//! * `rows`: the per-row functions `_reencrypt_try` / `_reencrypt_take` and the state a batch arms
//!   them with for one statement;
//! * `jobs`: the job, progress and failure rows;
//! * `batch`: one batch, which drives the others;
//! * `user_held`: keyring_rotate_secret with `reencrypt => true`, the user-held keyring's rewrap
//!   followed by all of its batches in one transaction.
//!
//! Callers use the names re-exported here, never the parts.

mod batch;
mod jobs;
mod registry;
mod rows;
mod unregistered;
mod user_held;

pub use batch::batch;
pub use jobs::set_paused;
pub use registry::{
    Column, as_role, columns_of_keyring, key_usage, register, register_index, rows_on_key,
    unregister,
};
pub(crate) use registry::{context_item, key_ranges, on_keys_test};
pub use rows::{take_index, take_row, try_row, try_row_indexed};
pub use unregistered::{find as find_unregistered, run_since_last_registration};
pub use user_held::rotate_secret as rotate_user_held_secret;
