//! Every setting of the extension: private statics, one accessor each, one `init()`.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

static ROOT_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ROOT_KEY_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ROOT_KEY_PREVIOUS_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static ROOT_KEY_PREVIOUS_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static KEY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);
static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
static WORKER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static WORKER_NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static REENCRYPT_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);
static REENCRYPT_BATCH_DELAY: GucSetting<i32> = GucSetting::<i32>::new(10);
static REENCRYPT_ROW_WAIT: GucSetting<i32> = GucSetting::<i32>::new(10);
static REENCRYPT_BUSY_SHARE: GucSetting<f64> = GucSetting::<f64>::new(0.02);
static REENCRYPT_BATCHES_PER_TICK: GucSetting<i32> = GucSetting::<i32>::new(100);
static DEFAULT_ROTATION_INTERVAL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"90 days"));
static DEFAULT_MAX_ENCRYPTIONS: GucSetting<i32> = GucSetting::<i32>::new(1 << 30);
static MAX_TRACKED_KEYS: GucSetting<i32> = GucSetting::<i32>::new(4096);
static MAX_FAILED_UNLOCKS: GucSetting<i32> = GucSetting::<i32>::new(5);
static USER_HELD_KDF: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"m=65536,t=3,p=4"));
static ROOT_KEY_COMMAND_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30_000);
static MAX_ENCRYPTIONS_CEILING: GucSetting<i32> = GucSetting::<i32>::new(i32::MAX);
static TENANT_CHECK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static MAX_USER_HELD_KEYRINGS: GucSetting<i32> = GucSetting::<i32>::new(10);
static MAX_DATABASE_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
static ACTIVATE_AFTER: GucSetting<ActivateAfter> =
    GucSetting::<ActivateAfter>::new(ActivateAfter::Standbys);

/// When a new key version becomes the one that encrypts (`meshhook_keys.activate_after`).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ActivateAfter {
    /// Once every physical standby (connected, or holding a replication slot) has replayed it.
    #[name = c"standbys"]
    Standbys,
    /// Once the synchronous standbys (synchronous_standby_names) have replayed it.
    #[name = c"synchronous_standbys"]
    SynchronousStandbys,
    /// At once, when its transaction commits (a failover to a standby that had not received it
    /// loses every ciphertext sealed under it).
    #[name = c"commit"]
    Commit,
}

pub fn init() {
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_file",
        c"Path of the file holding the 256-bit root key as 64 hex characters.",
        c"Owned by the server's OS user with mode 0600 or stricter; looser modes are refused. Set in postgresql.conf only.",
        &ROOT_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_command",
        c"Shell command that prints the 256-bit root key as 64 hex characters.",
        c"Lets a KMS or vault CLI supply the root key. Run by the server's OS user. Set in postgresql.conf only.",
        &ROOT_KEY_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_previous_file",
        c"Root key file of the previous root key, during a root key rotation: data keys it still wraps unwrap with it until they are rewrapped.",
        c"Same format and permission rules as meshhook_keys.root_key_file. Unset it once the rewrap is done.",
        &ROOT_KEY_PREVIOUS_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_previous_command",
        c"Command printing the previous root key, during a root key rotation (as root_key_previous_file).",
        c"Same rules as meshhook_keys.root_key_command. Unset it once the rewrap is done.",
        &ROOT_KEY_PREVIOUS_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.key_cache_size",
        c"Maximum number of unwrapped data keys each backend keeps in memory.",
        c"Each entry holds one AES-256-GCM key (its key schedule and GHASH table) and its metadata: about 860 bytes of the backend's memory (10,000 keys: 8.2 MiB). On overflow the least recently loaded key is evicted and zeroized.",
        &KEY_CACHE_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"meshhook_keys.worker_enabled",
        c"Whether the meshhook_keys background worker does anything on its ticks.",
        c"Set to off to pause scheduled rotation and re-encryption; meshhook_keys.tick() still works.",
        &WORKER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.worker_naptime",
        c"Time between two ticks of the meshhook_keys background worker.",
        c"Each tick rotates the keyrings that are due, then advances pending re-encryption.",
        &WORKER_NAPTIME,
        100,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.reencrypt_batch_size",
        c"Rows per re-encryption batch run by the scheduler (worker or tick()).",
        c"Each batch is one short transaction: application rows are locked at most that long.",
        &REENCRYPT_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.reencrypt_row_wait",
        c"How long a re-encryption batch waits for a row an application transaction holds.",
        c"A batch rewrites a window of rows with one UPDATE; if a row stays locked longer than this, the window is redone claiming its rows FOR UPDATE SKIP LOCKED, and held rows are left for a later pass. 0: claim every window that way.",
        &REENCRYPT_ROW_WAIT,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_float_guc(
        c"meshhook_keys.reencrypt_busy_share",
        c"Share of the scheduler's time its re-encryption batches may take while other sessions of the database run statements.",
        c"After each batch the scheduler looks whether another client session of the database is running a statement; if so it pauses long enough that its batches take this share of its time (1: no pacing). Alone, batches follow each other reencrypt_batch_delay apart.",
        &REENCRYPT_BUSY_SHARE,
        0.01,
        1.0,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.reencrypt_batch_delay",
        c"Pause between two re-encryption batches run by the scheduler.",
        c"Leaves room for application transactions between batches.",
        &REENCRYPT_BATCH_DELAY,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.reencrypt_batches_per_tick",
        c"Most re-encryption batches the scheduler runs per keyring in one tick.",
        c"Bounds the work of one tick; the rest is done by later ticks.",
        &REENCRYPT_BATCHES_PER_TICK,
        0,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.max_user_held_keyrings",
        c"Most user-held keyrings one user may hold (per JWT sub, or per role without one).",
        c"Destroyed keyrings do not count. Superusers are not limited.",
        &MAX_USER_HELD_KEYRINGS,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.default_rotation_interval",
        c"Rotation interval given to new keyrings (an interval; empty means manual rotation only).",
        c"Change a keyring's policy with meshhook_keys.keyring_set_policy().",
        &DEFAULT_ROTATION_INTERVAL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.default_max_encryptions",
        c"Encryptions under one key after which the scheduler rotates, for keyrings without their own limit.",
        c"AES-GCM with random 96-bit nonces must stay well below 2^32 encryptions per key (NIST SP 800-38D).",
        &DEFAULT_MAX_ENCRYPTIONS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.max_failed_unlocks",
        c"Failed unlocks of one user-held keyring per minute after which further attempts are refused (53400) without deriving a key.",
        c"Counted from the audit log, so the limit holds across sessions and restarts.",
        &MAX_FAILED_UNLOCKS,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.user_held_kdf",
        c"Argon2id parameters for new user-held keyring secrets: m=<KiB>,t=<passes>,p=<lanes>.",
        c"Default m=65536,t=3,p=4 (RFC 9106, second recommended option). Stored per keyring; an unlock upgrades a keyring whose parameters are weaker.",
        &USER_HELD_KDF,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.root_key_command_timeout",
        c"How long meshhook_keys.root_key_command may run before it is killed.",
        c"A command that hangs (an unreachable KMS) neither blocks server start nor a backend past this.",
        &ROOT_KEY_COMMAND_TIMEOUT,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.max_encryptions_ceiling",
        c"Encryptions under one key after which it refuses to encrypt (54000), whatever happened to rotation.",
        c"A hard limit below AES-GCM's 2^32 (NIST SP 800-38D); rotation policies (max_encryptions) should rotate long before. Counted with shared_preload_libraries only.",
        &MAX_ENCRYPTIONS_CEILING,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.tenant_check",
        c"Function deciding whether the current session may use a tenant-bound keyring.",
        c"A function name (schema-qualified), called as name(tenant text) RETURNS boolean with the caller's privileges. Unset: tenant-bound keyrings are refused to everyone but members of meshhook_keys_service.",
        &TENANT_CHECK,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"meshhook_keys.activate_after",
        c"When a new key version starts encrypting: once the standbys have replayed it (standbys, synchronous_standbys) or at commit.",
        c"Until then it is pending: it decrypts, the previous version keeps encrypting, and the scheduler activates it. standbys waits for every physical standby that is connected or holds a replication slot; synchronous_standbys for the current synchronous (or quorum) standbys; commit waits for none (a failover may then lose a key that sealed ciphertexts).",
        &ACTIVATE_AFTER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // Settings read at server start only exist when the library is preloaded: PostgreSQL cannot
    // define a postmaster-level setting later (it is a FATAL error, which ended every backend that
    // ran CREATE EXTENSION or LOAD without preloading before 0.5.0). Without preloading there is no
    // worker and no shared memory for them to configure.
    // SAFETY: reading a postmaster global flag.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"meshhook_keys.database",
            c"Database in which the meshhook_keys background worker rotates keys and drives re-encryption.",
            c"Requires shared_preload_libraries = 'meshhook_keys'. If the database does not exist yet, the worker waits for it.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::SUPERUSER_ONLY,
        );
        GucRegistry::define_int_guc(
            c"meshhook_keys.max_tracked_keys",
            c"Data keys whose encryptions are counted in shared memory.",
            c"40 bytes of shared memory each. Requires shared_preload_libraries.",
            &MAX_TRACKED_KEYS,
            64,
            1 << 24,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"meshhook_keys.max_database_workers",
            c"Short-lived workers at once that serve the databases other than meshhook_keys.database.",
            c"Each runs one tick (usage counts, rotation, re-encryption) in one database that has the extension, once per worker_naptime. Requires shared_preload_libraries; each uses a max_worker_processes slot while it runs.",
            &MAX_DATABASE_WORKERS,
            1,
            64,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"meshhook_keys".as_ptr()) };
}

fn non_empty(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c: CString| c.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty())
}

pub fn root_key_file() -> Option<String> {
    non_empty(&ROOT_KEY_FILE)
}

pub fn root_key_command() -> Option<String> {
    non_empty(&ROOT_KEY_COMMAND)
}

pub fn root_key_previous_file() -> Option<String> {
    non_empty(&ROOT_KEY_PREVIOUS_FILE)
}

pub fn root_key_previous_command() -> Option<String> {
    non_empty(&ROOT_KEY_PREVIOUS_COMMAND)
}

pub fn key_cache_size() -> usize {
    KEY_CACHE_SIZE.get().max(1) as usize
}

pub fn database() -> String {
    non_empty(&DATABASE).unwrap_or_else(|| "postgres".into())
}

pub fn worker_enabled() -> bool {
    WORKER_ENABLED.get()
}

pub fn activate_after() -> ActivateAfter {
    ACTIVATE_AFTER.get()
}

pub fn max_database_workers() -> usize {
    MAX_DATABASE_WORKERS.get().max(1) as usize
}

pub fn worker_naptime() -> std::time::Duration {
    std::time::Duration::from_millis(WORKER_NAPTIME.get().max(100) as u64)
}

pub fn reencrypt_batch_size() -> i32 {
    REENCRYPT_BATCH_SIZE.get().max(1)
}

/// How long a batch's direct `UPDATE` waits for a row lock, in milliseconds (0: never direct).
pub fn reencrypt_row_wait_ms() -> i32 {
    REENCRYPT_ROW_WAIT.get().max(0)
}

/// Share of its time the scheduler's re-encryption may take while the database is busy (0.01–1).
pub fn reencrypt_busy_share() -> f64 {
    REENCRYPT_BUSY_SHARE.get().clamp(0.01, 1.0)
}

pub fn reencrypt_batch_delay() -> std::time::Duration {
    std::time::Duration::from_millis(REENCRYPT_BATCH_DELAY.get().max(0) as u64)
}

pub fn reencrypt_batches_per_tick() -> i32 {
    REENCRYPT_BATCHES_PER_TICK.get().max(0)
}

/// The default rotation interval as text for an `::interval` cast; `None` for manual only.
pub fn default_rotation_interval() -> Option<String> {
    non_empty(&DEFAULT_ROTATION_INTERVAL)
}

pub fn default_max_encryptions() -> i64 {
    DEFAULT_MAX_ENCRYPTIONS.get().max(1) as i64
}

pub fn max_failed_unlocks() -> i64 {
    MAX_FAILED_UNLOCKS.get().max(1) as i64
}

/// The Argon2id parameters for new user-held secrets, (m KiB, t, p): the setting if it parses
/// (p 1 to 16, m at least 8 KiB per lane, t at least 1), else RFC 9106's second recommended option
/// (64 MiB, 3 passes, 4 lanes).
pub fn user_held_kdf() -> (u32, u32, u32) {
    const DEFAULT: (u32, u32, u32) = (65_536, 3, 4);
    let Some(text) = non_empty(&USER_HELD_KDF) else {
        return DEFAULT;
    };
    let (mut m, mut t, mut p) = (None, None, None);
    for part in text.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let v = v.trim().parse::<u32>().ok();
        match k.trim() {
            "m" => m = v,
            "t" => t = v,
            "p" => p = v,
            _ => return DEFAULT,
        }
    }
    match (m, t, p) {
        (Some(m), Some(t), Some(p)) if (1..=16).contains(&p) && m >= 8 * p && t >= 1 => (m, t, p),
        _ => DEFAULT,
    }
}

pub fn root_key_command_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(ROOT_KEY_COMMAND_TIMEOUT.get().max(100) as u64)
}

/// The hard ceiling of encryptions under one key (at most 2^31 - 1, half of AES-GCM's bound).
pub fn max_encryptions_ceiling() -> i64 {
    MAX_ENCRYPTIONS_CEILING.get().max(1) as i64
}

pub fn max_tracked_keys() -> usize {
    MAX_TRACKED_KEYS.get().max(64) as usize
}

/// How many user-held keyrings one user (JWT sub, or role) may hold.
pub fn max_user_held_keyrings() -> i64 {
    MAX_USER_HELD_KEYRINGS.get().max(1) as i64
}

/// The configured tenant check function name, if any.
pub fn tenant_check() -> Option<String> {
    non_empty(&TENANT_CHECK)
}
