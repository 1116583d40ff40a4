//! meshhook_keys: envelope encryption for secrets stored in PostgreSQL, with versioned data keys
//! wrapped by a root key that never lives in the database, online key rotation and an append-only,
//! hash-chained audit log.

use pgrx::prelude::*;

mod activation;
mod api;
mod audit;
mod blindindex;
mod bundle;
mod context;
mod crypto;
mod datakey;
mod envelope;
mod error;
mod fresh;
mod gucs;
mod health;
mod keycache;
mod keyring;
mod latch;
mod lock_order;
mod locks;
mod logline;
mod mac;
mod pacing;
mod planner;
mod plans;
mod reencrypt;
mod resolver;
mod retire;
mod rootkey;
mod scheduler;
mod seal;
mod served;
mod session_keys;
mod signing;
mod store;
mod tenancy;
mod transfer;
mod usage;
mod userheld;
mod vault;
mod verify;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/reencrypt.sql",
    name = "reencrypt_schema",
    requires = ["bootstrap"]
);
extension_sql_file!(
    "../sql/secrets_store.sql",
    name = "secrets_store",
    requires = [
        "reencrypt_schema",
        "secret_functions",
        _store_decrypt,
        ciphertext_key_id
    ]
);
extension_sql_file!(
    "../sql/schedule.sql",
    name = "schedule",
    requires = ["reencrypt_schema", _encryptions_pending]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // No Rust backtrace in any client-visible error, whatever the server's environment says:
    // pgrx appends a captured backtrace to an error's DETAIL when RUST_BACKTRACE is set, and
    // RUST_LIB_BACKTRACE=0 (which takes precedence for captured backtraces) turns capture off. Set
    // before anything is captured in this process (backtrace settings are read once).
    // SAFETY: PostgreSQL processes are single-threaded.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    gucs::init();
    resolver::register_invalidation_callback();
    session_keys::init();
    planner::init();
    context::install_fmgr_hooks();
    // SAFETY: reading a postmaster global flag.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        rootkey::startup_check();
        usage::init();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`: settings for the throwaway test cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'meshhook_keys'",
            // A fixed test root key from the command provider (the file provider is exercised by the
            // pg_regress and client-level suites, which can create a 0600 file owned by postgres).
            "meshhook_keys.root_key_command = 'echo 6d657368686f6f6b5f6b6579735f746573745f726f6f745f6b65795f5f5f5f21'",
        ]
    }
}
