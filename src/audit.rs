//! Audit events and the administrative privilege check.
//!
//! Successful actions are written in the caller's transaction (they commit or roll back with the
//! action). A *refused* call raises an error, which would roll its own audit row back; so a refusal is
//! written by a short-lived dynamic background worker in a transaction of its own, and is also logged
//! at LOG level immediately.

use crate::error::{KeysError, Result};
use crate::store::{self, AuditEvent};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::ffi::CStr;

/// The role administrative functions require (meshhook_keys_admin is a member of it).
pub const OPERATOR_ROLE: &str = "meshhook_keys_operator";

/// The role a call is attributed to: the role whose code meshhook_keys is running (a table owner
/// inside a re-encryption batch), else the session's role (the session user or the role chosen
/// with SET ROLE, PostgREST's `SET LOCAL ROLE authenticated`) as it was before entering our
/// SECURITY DEFINER function. For *decisions* use [`crate::context::caller`], which also says when
/// the caller cannot be known.
pub fn caller_role_oid() -> pg_sys::Oid {
    // SAFETY: plain accessor of backend state.
    crate::context::caller()
        .role()
        .unwrap_or_else(|| unsafe { pg_sys::GetOuterUserId() })
}

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: noerr=true returns NULL for a dropped role instead of raising.
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("role {}", oid.to_u32())
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

pub fn caller_role_name() -> String {
    role_name(caller_role_oid())
}

/// Whether `role` may run administrative functions: a member of meshhook_keys_operator (which
/// meshhook_keys_admin is), or of meshhook_keys_admin on a schema from before 0.5.0.
fn is_admin(role: pg_sys::Oid) -> bool {
    // SAFETY: missing_ok = true; has_privs_of_role only reads the catalogs.
    unsafe {
        [c"meshhook_keys_operator", c"meshhook_keys_admin"]
            .iter()
            .map(|r| pg_sys::get_role_oid(r.as_ptr(), true))
            .any(|r| r != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, r))
    }
}

/// Refuse (and durably audit the refusal) unless the caller has the admin role's privileges.
/// Inside code meshhook_keys runs on a table owner's behalf the caller is that owner, whoever
/// started the batch; in a security-restricted operation someone else started, nobody is.
pub fn require_admin(function: &'static str, keyring: Option<&str>) -> Result<()> {
    let caller = crate::context::caller();
    if caller.role().is_some_and(is_admin) {
        return Ok(());
    }
    record_refusal(function, keyring, caller_role_oid());
    Err(match caller {
        crate::context::Caller::Unknown => KeysError::CallerUnknown(function),
        _ => KeysError::PermissionDenied {
            function,
            role: OPERATOR_ROLE,
        },
    })
}

thread_local! {
    /// Who audit rows name as the actor while set (the scheduler); the session user otherwise.
    static ACTOR: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with audit rows naming `actor` (e.g. "scheduler") instead of the session user.
pub fn as_actor<T>(actor: &'static str, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTOR.set(self.0);
        }
    }
    let _restore = Restore(ACTOR.replace(Some(actor)));
    f()
}

/// Record a failed scheduled action (outcome `failed`) in the current transaction.
pub fn record_failure(
    action: &str,
    keyring: Option<&str>,
    reason: Option<&str>,
    detail: serde_json::Value,
) -> Result<()> {
    insert(action, "failed", keyring, None, None, reason, detail)
}

/// Durably record a failed attempt (e.g. a wrong secret for a user-held keyring) that is about to
/// raise an error and roll back: written by the audit worker in a transaction of its own, with
/// outcome `failed`. Never carries the secret.
pub fn record_failed_attempt(action: &str, keyring: Option<&str>) {
    record_refusal(&format!("!{action}"), keyring, caller_role_oid());
}

/// Record a successful administrative action in the caller's transaction.
pub fn record(
    action: &str,
    keyring: Option<&str>,
    version: Option<i32>,
    key_id: Option<i64>,
    reason: Option<&str>,
    detail: serde_json::Value,
) -> Result<()> {
    insert(action, "ok", keyring, version, key_id, reason, detail)
}

/// One audit row in the current transaction, as the caller's role (and the actor set by as_actor).
fn insert(
    action: &str,
    outcome: &str,
    keyring: Option<&str>,
    version: Option<i32>,
    key_id: Option<i64>,
    reason: Option<&str>,
    detail: serde_json::Value,
) -> Result<()> {
    let role = caller_role_name();
    store::insert_audit(&AuditEvent {
        actor: ACTOR.get(),
        role_name: &role,
        action,
        outcome,
        keyring,
        version,
        key_id,
        reason,
        detail,
    })
}

/// Keep at most `max` bytes of `s`, cut on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn record_refusal(function: &str, keyring: Option<&str>, role: pg_sys::Oid) {
    // SAFETY: plain accessors of backend state.
    let (session, db) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::MyDatabaseId) };
    let keyring = keyring.map(|k| clip(k, 63).replace(['\t', '\n'], " "));
    let what = match function.strip_prefix('!') {
        Some(action) => format!("failed {action} (wrong secret)"),
        None => format!("refused {function}"),
    };
    crate::logline::log(&format!(
        "meshhook_keys audit: {what} for role {} (session user {}){}",
        role_name(role),
        role_name(session),
        keyring
            .as_deref()
            .map(|k| format!(" on keyring \"{k}\""))
            .unwrap_or_default()
    ));
    // bgw_extra holds 128 bytes: "<session oid>\t<role oid>\t<function>\t<keyring>".
    let extra = format!(
        "{}\t{}\t{}\t{}",
        session.to_u32(),
        role.to_u32(),
        function,
        keyring.as_deref().unwrap_or("")
    );
    let started = BackgroundWorkerBuilder::new("meshhook_keys audit writer")
        .set_type("meshhook_keys audit writer")
        .set_library("meshhook_keys")
        .set_function("meshhook_keys_audit_refusal_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32() as usize)))
        .set_extra(clip(&extra, 127))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic();
    if started.is_err() {
        crate::logline::log(
            "meshhook_keys audit: could not start the audit writer for a refused call (max_worker_processes reached?); the refusal is only in this log",
        );
    }
}

/// Entry point of the dynamic worker that writes one refusal row in its own transaction.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn meshhook_keys_audit_refusal_main(arg: pg_sys::Datum) {
    let db = pg_sys::Oid::from(arg.value() as u32);
    // Unblock signals first (a dynamic worker starts with them blocked): a worker still connecting
    // while DROP DATABASE runs must absorb its barrier, or both wait for each other forever.
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra.splitn(4, '\t');
    let session = parts
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let role = parts
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let function = parts.next().unwrap_or("").to_string();
    let keyring = parts.next().filter(|k| !k.is_empty()).map(str::to_string);
    BackgroundWorker::transaction(|| {
        let session = role_name(pg_sys::Oid::from(session));
        let role = role_name(pg_sys::Oid::from(role));
        // "!action": a failed attempt (wrong secret); otherwise a refused privileged call.
        let (action, outcome, detail) = match function.strip_prefix('!') {
            Some(action) => (
                action.to_string(),
                "failed",
                serde_json::json!({ "error": "wrong secret" }),
            ),
            None => (
                "refused".to_string(),
                "refused",
                serde_json::json!({ "function": function, "required_role": OPERATOR_ROLE }),
            ),
        };
        let res = store::insert_audit(&AuditEvent {
            actor: Some(&session),
            role_name: &role,
            action: &action,
            outcome,
            keyring: keyring.as_deref(),
            version: None,
            key_id: None,
            reason: None,
            detail,
        });
        if let Err(e) = res {
            crate::logline::log(&format!(
                "meshhook_keys audit writer: could not record a refused call: {e}"
            ));
        }
    });
}
