//! One error type for the whole extension, each variant with its own SQLSTATE.
//!
//! Messages name keyrings, versions, key ids, file paths and lengths — never plaintext,
//! ciphertext bytes, key bytes or a root key command's output.

use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeysError {
    /// A required argument was NULL.
    #[error("{0} must not be NULL")]
    NullArgument(&'static str),

    /// The ciphertext is shorter than the smallest possible envelope.
    #[error("ciphertext is truncated: {len} bytes, a meshhook_keys envelope has at least {min}")]
    Truncated { len: usize, min: usize },

    /// The first byte is not a format version this build understands.
    #[error("ciphertext has unknown envelope format version {0}")]
    UnknownFormat(u8),

    /// No data key with that id exists in this database.
    #[error("no data key with key id {0} exists in this database")]
    UnknownKeyId(i64),

    /// AES-GCM authentication failed: the context differs from the one used to encrypt, or a
    /// byte of the envelope was altered. Cryptographically the two cannot be told apart.
    #[error(
        "ciphertext authentication failed: the context does not match the one used at encryption, or the ciphertext was altered"
    )]
    AuthenticationFailed,

    /// The key exists but its state no longer allows this use.
    #[error("key version {version} of keyring \"{keyring}\" is {state} and can no longer {op}")]
    KeyNotUsable {
        keyring: String,
        version: i32,
        state: String,
        op: &'static str,
    },

    /// A keyring other than `default` has no active key yet.
    #[error("keyring \"{0}\" has no active key")]
    NoActiveKey(String),

    /// The keyring's newest version still waits for the standbys to replay it
    /// (`meshhook_keys.activate_after`): no first key to encrypt with yet, or no second rotation.
    #[error(
        "version {version} of keyring \"{keyring}\" is pending: it waits for {behind} to replay it"
    )]
    ActivationPending {
        keyring: String,
        version: i32,
        behind: String,
    },

    /// A keyring name that does not follow the naming rule.
    #[error("invalid keyring name: {0}")]
    InvalidKeyringName(String),

    /// The root key provider is not configured, or is misconfigured.
    #[error("root key unavailable: {0}")]
    RootKeyUnavailable(String),

    /// A data key was wrapped by a different root key than the one loaded.
    #[error(
        "root key does not match: key version {version} of keyring \"{keyring}\" was wrapped by root key {stored}, the loaded root key is {loaded}"
    )]
    RootKeyMismatch {
        keyring: String,
        version: i32,
        stored: String,
        loaded: String,
    },

    /// A wrapped data key failed to unwrap although the fingerprint matched: the row was altered.
    #[error("wrapped data key of key version {version} of keyring \"{keyring}\" is corrupted")]
    WrappedKeyCorrupted { keyring: String, version: i32 },

    /// The caller lacks the role an administrative function requires.
    #[error("permission denied for {function}: requires membership in role {role}")]
    PermissionDenied {
        function: &'static str,
        role: &'static str,
    },

    /// No key with that version in the keyring.
    #[error("keyring \"{keyring}\" has no key version {version}")]
    UnknownKeyVersion { keyring: String, version: i32 },

    /// Retire/destroy refused.
    #[error("key version {version} of keyring \"{keyring}\" cannot be changed: {why}")]
    KeyInUse {
        keyring: String,
        version: i32,
        why: String,
    },

    #[error("relation with OID {0} does not exist")]
    UndefinedTable(u32),

    #[error("column \"{0}\" does not exist")]
    UndefinedColumn(String),

    #[error("{0}")]
    DatatypeMismatch(String),

    #[error("{0}")]
    WrongObjectType(String),

    /// An identity-dependent call inside a security-restricted operation meshhook_keys did not
    /// start: whose code is running there cannot be known, so nobody's authority is lent to it.
    #[error(
        "permission denied for {0}: called inside a security-restricted operation (an index expression, REFRESH MATERIALIZED VIEW, maintenance) whose code's owner meshhook_keys cannot know"
    )]
    CallerUnknown(&'static str),

    /// A batch (re-encryption, tick, secret rotation with re-encryption) started from code that a
    /// batch runs on a table owner's behalf.
    #[error(
        "{0} cannot be called from code meshhook_keys runs on a table owner's behalf (a trigger, context expression, default or policy)"
    )]
    NestedBatch(&'static str),

    /// Code meshhook_keys ran sealed (a table owner's trigger, context expression, default or
    /// policy; a tenant check; a view it read) left something in the session: undone, and refused.
    #[error(
        "code run as role \"{role}\" left {what} in the session: meshhook_keys undid it and refused the call (code it runs on someone's behalf must leave nothing behind)"
    )]
    LeftBehind { role: String, what: String },

    /// The extension's own tables are registered by the extension; nobody may change that.
    #[error(
        "{0} belongs to meshhook_keys, which registers it itself; its registration cannot be changed"
    )]
    ExtensionTable(String),

    /// A new data key would be wrapped by a root key that wraps none of the database's others.
    #[error(
        "the loaded root key {loaded} wraps none of the {keys} data keys of this database: a new key would put the database under two root keys"
    )]
    RootKeyForeign { loaded: String, keys: i64 },

    /// keyring_reclaim on a keyring that still has key material.
    #[error(
        "keyring \"{0}\" is not destroyed: only a destroyed keyring's name can be reclaimed (crypto-shred it first with keyring_destroy)"
    )]
    NotDestroyed(String),

    #[error("must have the privileges of the table's owner to register its columns")]
    NotTableOwner,

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{0}")]
    SyntaxError(String),

    /// secret_decrypt was asked for text but the plaintext is not valid UTF-8 text.
    #[error("decrypted value is not valid text (it is not UTF-8 or contains a NUL byte)")]
    NotText,

    /// A tenant-bound keyring's check refused the caller.
    #[error(
        "the tenant check refused access to keyring \"{keyring}\" (tenant \"{tenant}\") for {op}"
    )]
    TenantDenied {
        keyring: String,
        tenant: String,
        op: &'static str,
    },

    /// A tenant-bound keyring is used but no tenant check is configured: refused, never allowed.
    #[error("keyring \"{0}\" belongs to a tenant and meshhook_keys.tenant_check is not set")]
    TenantCheckMissing(String),

    /// keyring_destroy destroyed it: it can never encrypt again.
    #[error("keyring \"{0}\" was destroyed (crypto-shredded) and can no longer be used")]
    KeyringDestroyed(String),

    /// A user-held keyring whose keys are not unlocked in this session.
    #[error("keyring \"{0}\" is user-held and locked in this session")]
    KeyringLocked(String),

    /// The secret given for a user-held keyring does not unwrap its keys.
    #[error("wrong secret for user-held keyring \"{0}\"")]
    WrongSecret(String),

    /// A user-held keyring name that is not the creator's own.
    #[error(
        "user-held keyring \"{keyring}\" is not yours: its name must be user:{principal} or begin with user:{principal}: ({source_})"
    )]
    NotYourKeyringName {
        keyring: String,
        principal: String,
        source_: &'static str,
    },

    /// A user already holds the most user-held keyrings allowed.
    #[error(
        "{principal} already holds {count} user-held keyrings, the most meshhook_keys.max_user_held_keyrings allows"
    )]
    TooManyKeyrings { principal: String, count: i64 },

    /// The key has sealed as many envelopes as the hard ceiling allows (AES-GCM, NIST SP 800-38D).
    #[error(
        "key version {version} of keyring \"{keyring}\" has reached the encryption ceiling: {encryptions} encryptions, meshhook_keys.max_encryptions_ceiling is {ceiling}"
    )]
    KeyExhausted {
        keyring: String,
        version: i32,
        encryptions: u64,
        ceiling: u64,
        user_held: bool,
    },

    /// A row names one keyring but its envelope was made under another's key.
    #[error(
        "the envelope was made under a key of keyring \"{envelope}\", not of the row's keyring \"{row}\""
    )]
    EnvelopeOfAnotherKeyring { row: String, envelope: String },

    /// Too many failed unlocks of a user-held keyring in the last minute.
    #[error(
        "too many failed attempts to unlock keyring \"{keyring}\": {failures} in the last minute (meshhook_keys.max_failed_unlocks is {cap})"
    )]
    UnlockThrottled {
        keyring: String,
        failures: i64,
        cap: i64,
    },

    /// Every usage slot in shared memory is taken: an encryption that cannot be counted is refused.
    #[error(
        "encryptions under key version {version} of keyring \"{keyring}\" cannot be counted: all {slots} usage slots are taken"
    )]
    UsageUntracked {
        keyring: String,
        version: i32,
        slots: u64,
    },

    /// An operation that needs the root key's keyrings got a user-held one, or the reverse.
    #[error("{0}")]
    WrongKeyringKind(String),

    /// No keyring of that name.
    #[error("keyring \"{0}\" does not exist")]
    UnknownKeyring(String),
    /// A keyring bundle holds a key id this database already has.
    #[error(
        "key id {0} of the bundle already exists in this database: the keyring was imported here before, or comes from here"
    )]
    DuplicateKeyId(i64),

    /// A keyring export bundle that does not open.
    #[error("invalid keyring bundle: {0}")]
    BadBundle(String),

    /// A column that register_blind_index names is not registered for the keyring.
    #[error(
        "column \"{column}\" is not registered for keyring \"{keyring}\": call register_column first"
    )]
    NotRegistered { column: String, keyring: String },

    /// keyring_create of a name that exists.
    #[error("keyring \"{0}\" already exists")]
    KeyringExists(String),

    /// An internal re-encryption function was called outside a batch run by meshhook_keys.
    #[error(
        "{0} is internal to re-encryption: only the statement of a batch run by meshhook_keys in this session may call it"
    )]
    NotInBatch(&'static str),

    /// import_supabase_vault in a database without Supabase Vault.
    #[error(
        "relation \"vault.decrypted_secrets\" does not exist: Supabase Vault is not installed in this database"
    )]
    VaultMissing,

    /// A key would be made in a database that receives its key rows by logical replication.
    #[error(
        "this database receives meshhook_keys' keys by logical replication (subscription \"{0}\"): keys are created, rotated, retired and destroyed on the publisher"
    )]
    LogicalReplica(String),

    /// import_supabase_vault's caller may not read Vault's view.
    #[error("permission denied: role \"{0}\" may not read vault.decrypted_secrets")]
    VaultNotReadable(String),

    /// Supabase Vault's code raised while the import listed its secrets: only its SQLSTATE is
    /// shown, since its message could quote a secret.
    #[error(
        "Supabase Vault raised SQLSTATE {0} while its secrets were listed (its message is not shown: it could quote a secret)"
    )]
    VaultRaised(String),

    /// import_supabase_vault cannot list Vault's secrets: listing the view decrypted every row
    /// and one raised, and the caller may not read vault.secrets.
    #[error(
        "cannot list the secrets of Supabase Vault: listing vault.decrypted_secrets decrypts every secret and one raised SQLSTATE {0}, and role \"{1}\" may not read vault.secrets"
    )]
    VaultUnlistable(String, String),

    /// An SPI query failed in a way that is not one of the above.
    #[error("internal error in meshhook_keys: {0}")]
    Internal(String),
}

impl From<pgrx::spi::SpiError> for KeysError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        KeysError::Internal(format!("SPI: {e}"))
    }
}

impl KeysError {
    /// The five-character SQLSTATE, e.g. "XX001".
    pub fn sqlstate_code(&self) -> String {
        // SAFETY: unpack_sql_state returns a pointer to a static buffer holding 5 chars + NUL.
        unsafe { std::ffi::CStr::from_ptr(pgrx::pg_sys::unpack_sql_state(self.sqlstate() as i32)) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            KeysError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED, // 22004
            KeysError::Truncated { .. } => ERRCODE_INVALID_BINARY_REPRESENTATION, // 22P03
            KeysError::UnknownFormat(_) => ERRCODE_INVALID_BINARY_REPRESENTATION, // 22P03
            KeysError::UnknownKeyId(_) => ERRCODE_UNDEFINED_OBJECT,       // 42704
            KeysError::AuthenticationFailed => ERRCODE_DATA_CORRUPTED,    // XX001
            KeysError::KeyNotUsable { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::NoActiveKey(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::ActivationPending { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::InvalidKeyringName(_) => ERRCODE_INVALID_NAME, // 42602
            KeysError::RootKeyUnavailable(_) => ERRCODE_CONFIG_FILE_ERROR, // F0000
            KeysError::RootKeyMismatch { .. } => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, // 28000
            KeysError::WrappedKeyCorrupted { .. } => ERRCODE_DATA_CORRUPTED, // XX001
            KeysError::EnvelopeOfAnotherKeyring { .. } => ERRCODE_DATA_CORRUPTED, // XX001
            KeysError::PermissionDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::NotText => ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,       // 22021
            KeysError::UnknownKeyVersion { .. } => ERRCODE_UNDEFINED_OBJECT, // 42704
            KeysError::KeyInUse { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::UndefinedTable(_) => ERRCODE_UNDEFINED_TABLE,         // 42P01
            KeysError::UndefinedColumn(_) => ERRCODE_UNDEFINED_COLUMN,       // 42703
            KeysError::DatatypeMismatch(_) => ERRCODE_DATATYPE_MISMATCH,     // 42804
            KeysError::WrongObjectType(_) => ERRCODE_WRONG_OBJECT_TYPE,      // 42809
            KeysError::NotTableOwner => ERRCODE_INSUFFICIENT_PRIVILEGE,      // 42501
            KeysError::CallerUnknown(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,   // 42501
            KeysError::NotDestroyed(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::RootKeyForeign { .. } => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, // 28000
            KeysError::NestedBatch(_) => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::ExtensionTable(_) => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::LeftBehind { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::InvalidArgument(_) => ERRCODE_INVALID_PARAMETER_VALUE, // 22023
            KeysError::SyntaxError(_) => ERRCODE_SYNTAX_ERROR,           // 42601
            KeysError::NotInBatch(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,  // 42501
            KeysError::TenantDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::TenantCheckMissing(_) => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::KeyringDestroyed(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::KeyringExists(_) => ERRCODE_DUPLICATE_OBJECT,     // 42710
            KeysError::UnknownKeyring(_) => ERRCODE_UNDEFINED_OBJECT,    // 42704
            KeysError::NotRegistered { .. } => ERRCODE_UNDEFINED_OBJECT, // 42704
            KeysError::DuplicateKeyId(_) => ERRCODE_DUPLICATE_OBJECT,    // 42710
            KeysError::BadBundle(_) => ERRCODE_DATA_CORRUPTED,           // XX001
            KeysError::KeyringLocked(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::WrongSecret(_) => ERRCODE_INVALID_PASSWORD,       // 28P01
            KeysError::WrongKeyringKind(_) => ERRCODE_WRONG_OBJECT_TYPE, // 42809
            KeysError::NotYourKeyringName { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::TooManyKeyrings { .. } => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, // 53400
            KeysError::KeyExhausted { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED, // 54000
            KeysError::UsageUntracked { .. } => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, // 53400
            KeysError::UnlockThrottled { .. } => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, // 53400
            KeysError::VaultMissing => ERRCODE_UNDEFINED_TABLE,          // 42P01
            KeysError::VaultUnlistable(..) => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::VaultNotReadable(..) => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
            KeysError::LogicalReplica(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
            KeysError::VaultRaised(..) => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, // 38000
            KeysError::Internal(_) => ERRCODE_INTERNAL_ERROR,            // XX000
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            KeysError::NullArgument("context") => {
                Some("Pass '' for no context.".into())
            }
            KeysError::NoActiveKey(k) => Some(format!(
                "An administrator creates the first key with SELECT meshhook_keys.keys_rotate('{k}');"
            )),
            KeysError::ActivationPending { .. } => Some(
                "A new version becomes active once the standbys meshhook_keys.activate_after names have replayed it; the scheduler activates it (or SELECT meshhook_keys.tick()). Retry then; meshhook_keys.health() shows what it waits for."
                    .into(),
            ),
            KeysError::RootKeyUnavailable(_) => Some(
                "Set meshhook_keys.root_key_file or meshhook_keys.root_key_command in postgresql.conf (see the README, \"Root key\")."
                    .into(),
            ),
            KeysError::RootKeyMismatch { .. } => Some(
                "The server was started with a different root key than the one that wrapped this data key. Restore the original root key, or rewrap the data keys under the new one."
                    .into(),
            ),
            KeysError::RootKeyForeign { .. } => Some(
                "Start the server with the root key that wraps the existing data keys, or rewrap them under the loaded one first with SELECT * FROM meshhook_keys.root_key_rewrap();".into(),
            ),
            KeysError::AuthenticationFailed => Some(
                "Decrypt with exactly the context string that was passed to secret_encrypt.".into(),
            ),
            KeysError::NotText => Some("Use secret_decrypt_bytea for binary secrets.".into()),
            KeysError::KeyringLocked(k) => Some(format!(
                "Unlock it for this session with SELECT meshhook_keys.keyring_unlock('{k}', <secret>); pass the secret as a bind parameter."
            )),
            KeysError::TenantCheckMissing(_) => Some(
                "A superuser sets meshhook_keys.tenant_check to a function (tenant text) RETURNS boolean; members of meshhook_keys_service bypass it.".into(),
            ),
            KeysError::TooManyKeyrings { .. } => Some(
                "Destroy one you no longer need (keyring_destroy by an administrator), or ask for a higher meshhook_keys.max_user_held_keyrings.".into(),
            ),
            KeysError::KeyExhausted { keyring, user_held: false, .. } => Some(format!(
                "Rotate the keyring (SELECT meshhook_keys.keys_rotate('{keyring}');) and encrypt again: the new version starts at 0. The scheduler rotates keys at max_encryptions; check meshhook_keys.scheduler_status() and health() for why it did not."
            )),
            KeysError::KeyExhausted { keyring, user_held: true, .. } => Some(format!(
                "Give the keyring a new data key: SELECT meshhook_keys.keyring_rotate_secret('{keyring}', <secret>, <secret>, reencrypt => true); (user-held keyrings are never rotated by the scheduler)."
            )),
            KeysError::UnlockThrottled { .. } => Some(
                "Wait a minute and try again with the right secret; every failed and refused attempt is in the audit log.".into(),
            ),
            KeysError::UsageUntracked { .. } => Some(
                "Raise meshhook_keys.max_tracked_keys (restart required); the scheduler frees the slots of keys that can no longer encrypt on every tick.".into(),
            ),
            KeysError::VaultNotReadable(role) => Some(format!(
                "The import reads Vault only as far as its caller may: GRANT USAGE ON SCHEMA vault and SELECT ON vault.decrypted_secrets TO \"{role}\"."
            )),
            KeysError::VaultUnlistable(_, role) => Some(format!(
                "GRANT SELECT ON vault.secrets TO \"{role}\": the import then lists the secrets there and reads each one from the view on its own, skipping those that raise."
            )),
            KeysError::VaultMissing => Some(
                "Run the import in the database whose vault.secrets holds the secrets (CREATE EXTENSION supabase_vault provides them).".into(),
            ),
            _ => None,
        }
    }

    /// Raise this error as a Postgres ERROR with its SQLSTATE. Never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "meshhook_keys");
        if let Some(h) = self.hint() {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

pub type Result<T> = std::result::Result<T, KeysError>;

/// Why a step failed: its SQLSTATE and message (our messages never carry secrets).
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

impl From<KeysError> for Failure {
    fn from(e: KeysError) -> Self {
        Failure {
            sqlstate: e.sqlstate_code(),
            message: e.to_string(),
        }
    }
}

/// How every failure a tick reports is written: in its detail, its log line, and the keyring's
/// `last_error`.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.sqlstate, self.message)
    }
}

impl Failure {
    /// Run `f`, turning what it returns as an error, or raises, into a Failure. The caller ends the
    /// (sub)transaction that was current, since an error may have left it half done.
    pub fn caught<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, Failure> {
        PgTryBuilder::new(std::panic::AssertUnwindSafe(|| f().map_err(Failure::from)))
            .catch_others(|e| Err(Failure::from_caught(e)))
            .execute()
    }

    /// A PostgreSQL error (or a panic) caught with PgTryBuilder: its SQLSTATE and message,
    /// clipped to 300 bytes.
    pub fn from_caught(e: CaughtError) -> Self {
        let sqlstate = caught_sqlstate(&e);
        match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => Failure {
                sqlstate,
                message: clip(r.message(), 300),
            },
            CaughtError::RustPanic { .. } => Failure {
                sqlstate,
                message: "internal error (panic) in meshhook_keys".into(),
            },
        }
    }
}

/// The SQLSTATE of an error caught with PgTryBuilder (XX000 for a panic).
pub fn caught_sqlstate(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
            let code = r.sql_error_code() as i32;
            // SAFETY: unpack_sql_state returns a pointer to a static 6-byte buffer.
            unsafe { std::ffi::CStr::from_ptr(pg_sys::unpack_sql_state(code)) }
                .to_string_lossy()
                .into_owned()
        }
        CaughtError::RustPanic { .. } => "XX000".into(),
    }
}

fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A failure of the envelope format or of authentication, with its SQLSTATE.
impl From<crate::crypto::CryptoError> for KeysError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        match e {
            crate::crypto::CryptoError::Truncated { len } => KeysError::Truncated {
                len,
                min: crate::crypto::MIN_ENVELOPE_LEN,
            },
            crate::crypto::CryptoError::UnknownFormat(v) => KeysError::UnknownFormat(v),
            crate::crypto::CryptoError::AuthenticationFailed => KeysError::AuthenticationFailed,
            crate::crypto::CryptoError::BadKeyEncoding(why) => KeysError::Internal(why.into()),
        }
    }
}

/// Unwrap a result inside a `#[pg_extern]`, raising the error with its SQLSTATE.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| e.raise())
    }
}
