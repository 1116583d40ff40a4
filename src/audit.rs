//! Audit events and the administrative privilege check.
//!
//! Successful actions are written in the caller's transaction (they commit or roll back with the
//! action). The chain (ids and hashes follow commit order) has one lock, held until commit. An
//! operator's action takes it at its start, as before. Anybody else's action (a user-held keyring's
//! owner, the first use of a keyring) must not be able to hold up an operator by leaving a
//! transaction open: its rows are kept in this backend and written just before its transaction
//! commits (the pre-commit callback), so it holds the lock only while committing; a rolled-back
//! transaction or savepoint drops them.
//!
//! A *refused* call raises an error, which would roll its own audit row back; so a refusal is
//! written by a short-lived dynamic background worker in a transaction of its own, and is also logged
//! at LOG level immediately. The refused backend waits for its writer (bounded): so one session
//! never has more than one writer running, and a flood of refusals queues behind its own writers
//! instead of exhausting max_worker_processes. A *disclosure* (a webhook receiver's secret handed
//! out) is written the same way, with outcome `ok`: what was handed out stays handed out when the
//! caller's transaction rolls back.

use crate::context::role_name;
use crate::error::{KeysError, Result};
use crate::locks::{self, Lock, Until};
use crate::store::{self, AuditEvent};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

/// The role administrative functions require (meshhook_keys_admin is a member of it).
pub const OPERATOR_ROLE: &str = "meshhook_keys_operator";
/// The role keyring_export and keyring_import require (besides superusers): custody of the key
/// material itself, which no other role has (not even meshhook_keys_admin).
pub const CUSTODIAN_ROLE: &str = "meshhook_keys_custodian";
/// The functions that require [`CUSTODIAN_ROLE`].
const CUSTODIAN_FUNCTIONS: [&str; 2] = ["keyring_export", "keyring_import"];

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

pub fn caller_role_name() -> String {
    crate::context::role_name(caller_role_oid())
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
    require(function, keyring, is_admin, OPERATOR_ROLE)
}

/// Refuse (and durably audit the refusal) unless the caller is a superuser or has the
/// privileges of meshhook_keys_custodian; the caller as for [`require_admin`].
pub fn require_custodian(function: &'static str, keyring: Option<&str>) -> Result<()> {
    debug_assert!(CUSTODIAN_FUNCTIONS.contains(&function));
    // SAFETY: missing_ok = true; catalog lookups of role attributes and membership.
    let is_custodian = |role: pg_sys::Oid| unsafe {
        let custodian = pg_sys::get_role_oid(c"meshhook_keys_custodian".as_ptr(), true);
        pg_sys::superuser_arg(role)
            || (custodian != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, custodian))
    };
    require(function, keyring, is_custodian, CUSTODIAN_ROLE)
}

/// The caller passes `allowed`, or the call is refused (audited durably) naming `role`.
fn require(
    function: &'static str,
    keyring: Option<&str>,
    allowed: impl Fn(pg_sys::Oid) -> bool,
    role: &'static str,
) -> Result<()> {
    let caller = crate::context::caller();
    if caller.role().is_some_and(allowed) {
        return Ok(());
    }
    record_refusal(function, keyring, caller_role_oid());
    Err(match caller {
        crate::context::Caller::Unknown => KeysError::CallerUnknown(function),
        _ => KeysError::PermissionDenied { function, role },
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

/// Whether the caller's audit rows wait for its commit (see the module docs): everyone but
/// operators (and superusers).
pub fn deferred_for_caller() -> bool {
    !crate::context::caller().role().is_some_and(is_admin)
}

thread_local! {
    /// The local transaction id in which this backend took the audit chain lock (0: none).
    static HOLDS_CHAIN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Audit rows waiting for this transaction's commit, with the subtransaction that made them and
    /// the role (the extension owner) that writes them.
    static DEFERRED: std::cell::RefCell<Vec<(pg_sys::SubTransactionId, pg_sys::Oid, OwnedEvent)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static CALLBACKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this transaction holds the audit chain lock: taken by lock_chain, or by the chain
/// trigger of any row inserted (also by SQL-level code). Asks the lock manager.
fn holds_chain_lock() -> bool {
    let lxid = crate::context::current_lxid();
    (lxid != 0 && HOLDS_CHAIN.get() == lxid) || locks::held(Lock::AuditChain)
}

/// Take the audit chain lock for an action about to write audit rows, before any keyring lock, if
/// the caller writes them at once (an operator); a no-op for callers whose rows wait for commit.
/// Callers that change a keyring take it through the lock_order module, which keeps the order.
pub fn lock_chain() -> Result<()> {
    if deferred_for_caller() {
        return Ok(());
    }
    lock_chain_for_trigger();
    Ok(())
}

/// The audit chain lock, whoever the caller: what the chain trigger takes for each row it writes.
pub fn lock_chain_for_trigger() {
    locks::take(Lock::AuditChain, Until::Commit);
    HOLDS_CHAIN.set(crate::context::current_lxid());
}

/// The chain trigger's start: take the chain lock, then read the chain's last row (id and hash) as
/// committed now. Not through the transaction's snapshot: in REPEATABLE READ or SERIALIZABLE, a
/// row another transaction committed after that snapshot was taken (while this one waited for the
/// lock) would be missed, and the new row would reuse its id (23505) or fork the chain.
pub fn chain_head() -> Result<Option<(i64, Vec<u8>)>> {
    lock_chain_for_trigger();
    let rows = crate::fresh::select(
        "SELECT id, hash FROM meshhook_keys.audit_log ORDER BY id DESC LIMIT 1",
        &[],
        |r| Ok((r.get::<i64>(1)?, r.get::<Vec<u8>>(2)?)),
    )?;
    let last = match rows.into_iter().next() {
        Some((Some(id), Some(hash))) => Some((id, hash)),
        _ => None,
    };
    // After a failover or a point-in-time recovery (a new timeline), rows the old timeline wrote
    // after the fork may exist elsewhere (a SIEM that shipped them, the old primary): ids continue
    // from the new timeline's floor, so none is ever given to two different events.
    let floor = timeline_floor();
    Ok(match last {
        Some((id, hash)) => Some((id.max(floor), hash)),
        None if floor > 0 => Some((floor, Vec::new())),
        None => None,
    })
}

/// The first audit id of timeline t is (t - 1) * 2^40 + 1 (or the next id, if the log is already
/// past it): 2^40 ids per timeline, and audit_verify() accepts exactly these jumps.
fn timeline_floor() -> i64 {
    // SAFETY: reads the shared WAL insertion timeline; only called on a primary (it writes).
    let tli = unsafe { pg_sys::GetWALInsertionTimeLine() } as i64;
    (tli - 1).max(0) << 40
}

struct OwnedEvent {
    actor: Option<String>,
    role_name: String,
    action: String,
    outcome: String,
    keyring: Option<String>,
    version: Option<i32>,
    key_id: Option<i64>,
    reason: Option<String>,
    detail: serde_json::Value,
}

fn ensure_callbacks() {
    if !CALLBACKS.replace(true) {
        // SAFETY: plain callbacks, registered once per backend.
        unsafe {
            pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        }
    }
}

fn defer(e: OwnedEvent) {
    ensure_callbacks();
    // SAFETY: plain accessors of transaction state; inside our SECURITY DEFINER function the
    // current user is the extension's owner, who may write the audit log.
    let (subxact, writer) = unsafe { (pg_sys::GetCurrentSubTransactionId(), pg_sys::GetUserId()) };
    DEFERRED.with_borrow_mut(|d| d.push((subxact, writer, e)));
}

/// Write the deferred rows (pre-commit): as the extension's owner, with a fixed search_path. An
/// error aborts the commit, so the action and its audit rows still commit or fail together.
fn write_deferred() {
    let rows = DEFERRED.take();
    if rows.is_empty() {
        return;
    }
    // (SPI needs an active snapshot, which a committing transaction no longer has)
    struct PopSnapshot;
    impl Drop for PopSnapshot {
        fn drop(&mut self) {
            // SAFETY: pops the snapshot pushed below.
            unsafe { pg_sys::PopActiveSnapshot() };
        }
    }
    // SAFETY: a fresh snapshot of this (still open) transaction, popped by the guard.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let _pop = PopSnapshot;
    for (_, writer, e) in rows {
        let res = crate::context::with_owner(writer, || {
            crate::store::with_fixed_search_path(|| {
                store::insert_audit(&AuditEvent {
                    actor: e.actor.as_deref(),
                    role_name: &e.role_name,
                    action: &e.action,
                    outcome: &e.outcome,
                    keyring: e.keyring.as_deref(),
                    version: e.version,
                    key_id: e.key_id,
                    reason: e.reason.as_deref(),
                    detail: e.detail,
                })
            })
        });
        if let Err(err) = res {
            pgrx::error!("meshhook_keys: could not write the audit log at commit: {err}");
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            write_deferred()
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            DEFERRED.take();
            start_queued_writers();
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            start_queued_writers();
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    DEFERRED.with_borrow_mut(|d| match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            for row in d.iter_mut().filter(|r| r.0 == my_subid) {
                row.0 = parent_subid;
            }
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => d.retain(|r| r.0 != my_subid),
        _ => {}
    });
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

/// Durably record an attempt refused because of too many failed ones (outcome `refused`).
pub fn record_throttled_attempt(action: &str, keyring: Option<&str>) {
    record_refusal(&format!("~{action}"), keyring, caller_role_oid());
}

/// Durably record an action that failed with `sqlstate` and is about to raise it (outcome
/// `failed`, `detail.error` the SQLSTATE, plus `detail`'s pairs: short keys, values that are
/// numbers, booleans or words). Written like a refusal, by the audit worker in a transaction of its
/// own; never carries a value or an error message (which could quote one).
pub fn record_failed_action(
    action: &str,
    keyring: Option<&str>,
    sqlstate: &str,
    detail: &[(&str, String)],
) {
    let pairs: Vec<String> = detail.iter().map(|(k, v)| format!("{k}={v}")).collect();
    record_refusal(
        &format!("?{action};{sqlstate};{}", pairs.join(",")),
        keyring,
        caller_role_oid(),
    );
}

/// Durably record a disclosure that succeeded (outcome `ok`), such as a webhook receiver's
/// secret handed to an operator: what was disclosed stays disclosed if the caller's transaction
/// rolls back, so its row is written like a refusal, by the audit worker in a transaction of its
/// own, with `version` and `context`. A context too long for the worker's 128 bytes is recorded
/// as `context_sha256` (the first 16 hex digits of its SHA-256) instead of being cut: a cut
/// context could be another one.
pub fn record_disclosure(action: &str, keyring: &str, version: i32, context: &str) {
    // (bgw_extra: two oids of at most 10 digits, this, the keyring and five tabs in 127 bytes)
    let mut function = format!(
        "+{action};version={version},context={}",
        encode_value(context)
    );
    if function.len() + keyring.len() + 25 > 127 {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(context.as_bytes());
        function = format!(
            "+{action};version={version},context_sha256={}",
            hex::encode(&digest[..8])
        );
    }
    record_refusal(&function, Some(keyring), caller_role_oid());
}

/// [`record_disclosure`] of a whole keyring (keyring_export): `versions` keys handed out.
pub fn record_keyring_disclosure(action: &str, keyring: &str, versions: usize) {
    record_refusal(
        &format!("+{action};versions={versions}"),
        Some(keyring),
        caller_role_oid(),
    );
}

/// A detail value made safe for the "k=v,k=v" form: `%`, `,`, `=`, `;`, tab and newline
/// percent-encoded (decoded by [`decode_value`]).
fn encode_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '%' | ',' | '=' | ';' | '\t' | '\n' | '\r' => {
                out.push_str(&format!("%{:02X}", c as u32))
            }
            _ => out.push(c),
        }
    }
    out
}

fn decode_value(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(x) => {
                out.push(x);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `detail` of a failed action from its "?action;sqlstate;k=v,k=v" form.
fn failed_action(encoded: &str) -> (String, serde_json::Value) {
    let mut parts = encoded.splitn(3, ';');
    let action = parts.next().unwrap_or("").to_string();
    let mut detail = serde_json::Map::new();
    detail.insert(
        "error".to_string(),
        serde_json::Value::String(parts.next().unwrap_or("").to_string()),
    );
    pairs_into(parts.next().unwrap_or(""), &mut detail);
    (action, serde_json::Value::Object(detail))
}

/// The action and `detail` of a disclosure from its "+action;k=v,k=v" form.
fn disclosure(encoded: &str) -> (String, serde_json::Value) {
    let (action, pairs) = encoded.split_once(';').unwrap_or((encoded, ""));
    let mut detail = serde_json::Map::new();
    pairs_into(pairs, &mut detail);
    (action.to_string(), serde_json::Value::Object(detail))
}

/// Add the pairs of "k=v,k=v" to `detail`: numbers, booleans, or (decoded) strings.
fn pairs_into(pairs: &str, detail: &mut serde_json::Map<String, serde_json::Value>) {
    for pair in pairs.split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            let v = decode_value(v);
            let v = v.as_str();
            let value = match v {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                _ => v
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::String(v.to_string())),
            };
            detail.insert(k.to_string(), value);
        }
    }
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

/// Who the request says it comes from, when `request.jwt.claims` is set (PostgREST, Supabase,
/// `meshhook-keys serve`): its `sub` and `role` claims, for the audit row's `detail.jwt`. Through
/// such a server every session is the same login role (`authenticator`), which names no one.
fn jwt_identity() -> Option<serde_json::Value> {
    let claims: serde_json::Value = serde_json::from_str(&crate::context::jwt_claims()?).ok()?;
    let pick = |k: &str| match claims.get(k) {
        Some(serde_json::Value::String(s)) => {
            Some(serde_json::Value::String(clip(s, 200).to_string()))
        }
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(serde_json::Value::String(
            clip(&other.to_string(), 200).to_string(),
        )),
    };
    let mut out = serde_json::Map::new();
    for k in ["sub", "role"] {
        if let Some(v) = pick(k) {
            out.insert(k.to_string(), v);
        }
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

/// `detail` with the request's JWT identity added as `detail.jwt` (if there is one).
fn with_jwt(mut detail: serde_json::Value) -> serde_json::Value {
    if let (Some(j), Some(map)) = (jwt_identity(), detail.as_object_mut()) {
        map.insert("jwt".to_string(), j);
    }
    detail
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
    let detail = with_jwt(detail);
    if deferred_for_caller() {
        defer(OwnedEvent {
            actor: ACTOR.get().map(str::to_string),
            role_name: role,
            action: action.to_string(),
            outcome: outcome.to_string(),
            keyring: keyring.map(str::to_string),
            version,
            key_id,
            reason: reason.map(str::to_string),
            detail,
        });
        return Ok(());
    }
    HOLDS_CHAIN.set(crate::context::current_lxid());
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
    let what = match (
        function.strip_prefix('!'),
        function.strip_prefix('~'),
        function.strip_prefix('?'),
    ) {
        _ if function.starts_with('+') => {
            let (action, detail) = disclosure(&function[1..]);
            format!("{action} ({detail})")
        }
        (Some(action), _, _) => format!("failed {action} (wrong secret)"),
        (_, Some(action), _) => format!("refused {action} (too many failed attempts)"),
        (_, _, Some(failed)) => {
            let (action, detail) = failed_action(failed);
            format!("failed {action} ({detail})")
        }
        _ => format!("refused {function}"),
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
    // bgw_extra holds 128 bytes:
    // "<session oid>\t<role oid>\t<function>\t<jwt sub>\t<jwt role>\t<keyring>". The keyring (at
    // most 63 bytes) is never clipped: a clipped name could be another keyring's. The JWT claims
    // get what is left, the role first (at most 20 bytes), then the subject (at most 40); the log
    // line above has them whole.
    let jwt = jwt_identity();
    let claim = |k: &str, max: usize| {
        jwt.as_ref()
            .and_then(|j| j.get(k))
            .and_then(serde_json::Value::as_str)
            .map(|v| clip(v, max).replace(['\t', '\n'], " "))
            .unwrap_or_default()
    };
    // (a claim is clipped to its cap as before, or left out when even that does not fit: a claim
    // cut shorter could name someone else)
    let fit = |k: &str, cap: usize, room: usize| {
        if cap <= room {
            claim(k, cap)
        } else {
            Some(claim(k, cap))
                .filter(|v| v.len() <= room)
                .unwrap_or_default()
        }
    };
    let keyring = keyring.unwrap_or_default();
    let fixed = format!("{}\t{}\t{}\t", session.to_u32(), role.to_u32(), function);
    let room = 127usize.saturating_sub(fixed.len() + keyring.len() + 2);
    let jwt_role = fit("role", 20, room);
    let jwt_sub = fit("sub", 40, room.saturating_sub(jwt_role.len()));
    let extra = format!("{fixed}{jwt_sub}\t{jwt_role}\t{keyring}");
    if holds_chain_lock() {
        // A writer started now would wait for this transaction's audit chain lock, holding a
        // background worker slot all that time: refusals inside a batch (a table owner's code
        // calling privileged functions, row after row) would take every slot of the cluster.
        // Queued, the writers start when this transaction ends (the rows are written whether it
        // commits or not), at most WRITERS_PER_TRANSACTION of them, then one that counts the rest.
        queue_writer(db, clip(&extra, 127).to_string());
        return;
    }
    start_writer(db, clip(&extra, 127));
}

/// At most this many refusals of one transaction that holds the audit chain lock get a row of
/// their own; the rest are counted in one more row (and each has its LOG line).
const WRITERS_PER_TRANSACTION: usize = 8;

thread_local! {
    /// Writers to start when the current transaction ends: their bgw_extra, the database, and how
    /// many refusals beyond WRITERS_PER_TRANSACTION were only logged.
    static QUEUED: std::cell::RefCell<(Vec<String>, u32, u64)> =
        const { std::cell::RefCell::new((Vec::new(), 0, 0)) };
}

fn queue_writer(db: pg_sys::Oid, extra: String) {
    ensure_callbacks();
    QUEUED.with_borrow_mut(|(q, d, more)| {
        *d = db.to_u32();
        if q.len() < WRITERS_PER_TRANSACTION {
            q.push(extra);
        } else {
            *more += 1;
        }
    });
}

/// Start the writers queued by this transaction (it has ended: committed, aborted or prepared),
/// without waiting for them.
fn start_queued_writers() {
    let (queued, db, more) = QUEUED.take();
    if queued.is_empty() {
        return;
    }
    let db = pg_sys::Oid::from(db);
    for extra in &queued {
        launch(db, extra);
    }
    if more > 0 {
        // SAFETY: plain accessors of backend state.
        let session = unsafe { pg_sys::GetSessionUserId() };
        launch(
            db,
            &format!("{}\t{}\t#{more}\t\t\t", session.to_u32(), session.to_u32()),
        );
    }
}

fn start_writer(db: pg_sys::Oid, extra: &str) {
    if let Some(worker) = launch(db, extra) {
        wait_for_writer(worker);
    }
}

/// Start one audit writer for `extra`; None (and a LOG line) when no slot is free.
fn launch(db: pg_sys::Oid, extra: &str) -> Option<pgrx::bgworkers::DynamicBackgroundWorker> {
    let started = BackgroundWorkerBuilder::new("meshhook_keys audit writer")
        .set_type("meshhook_keys audit writer")
        .set_library("meshhook_keys")
        .set_function("meshhook_keys_audit_refusal_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32() as usize)))
        .set_extra(extra)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic();
    match started {
        Ok(worker) => Some(worker),
        Err(_) => {
            crate::logline::log(
                "meshhook_keys audit: could not start the audit writer for a refused call (max_worker_processes reached?); the refusal is only in this log",
            );
            None
        }
    }
}

/// Wait (at most 10 s) until the writer has written the row and exited, so that one session never
/// has more than one writer running. Not while this transaction holds the audit chain lock: the
/// writer needs it, and gets it when this transaction ends.
fn wait_for_writer(worker: pgrx::bgworkers::DynamicBackgroundWorker) {
    if holds_chain_lock() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match worker.pid() {
            Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)
            | Err(pgrx::bgworkers::BackgroundWorkerStatus::PostmasterDied) => return,
            _ => {}
        }
        // (the postmaster sets our latch when the worker starts or stops: we are its notify pid)
        crate::latch::wait(std::time::Duration::from_millis(10));
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
    let mut parts = extra.splitn(6, '\t');
    let session = parts
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let role = parts
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let function = parts.next().unwrap_or("").to_string();
    let mut jwt = serde_json::Map::new();
    for k in ["sub", "role"] {
        if let Some(v) = parts.next().filter(|v| !v.is_empty()) {
            jwt.insert(k.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    let keyring = parts.next().filter(|k| !k.is_empty()).map(str::to_string);
    BackgroundWorker::transaction(|| {
        let session = role_name(pg_sys::Oid::from(session));
        let role = role_name(pg_sys::Oid::from(role));
        // "!action": a failed attempt (wrong secret); "~action": an attempt refused because of
        // too many failed ones; "?action;sqlstate;k=v,...": an action that failed; otherwise a
        // refused privileged call.
        let (action, outcome, detail) = match (
            function.strip_prefix('!'),
            function.strip_prefix('~'),
        ) {
            _ if function.starts_with('+') => {
                let (action, detail) = disclosure(&function[1..]);
                (action, "ok", detail)
            }
            _ if function.starts_with('#') => (
                "refused".to_string(),
                "refused",
                serde_json::json!({
                    "refusals_only_logged": function[1..].parse::<i64>().unwrap_or(0),
                    "why": "more refusals in one transaction holding the audit chain than get a row each: each is in the server log",
                }),
            ),
            _ if function.starts_with('?') => {
                let (action, detail) = failed_action(&function[1..]);
                (action, "failed", detail)
            }
            (Some(action), _) => (
                action.to_string(),
                "failed",
                serde_json::json!({ "error": "wrong secret" }),
            ),
            (_, Some(action)) => (
                action.to_string(),
                "refused",
                serde_json::json!({ "error": "too many failed attempts" }),
            ),
            _ => (
                "refused".to_string(),
                "refused",
                serde_json::json!({
                    "function": function,
                    "required_role": if CUSTODIAN_FUNCTIONS.contains(&function.as_str()) {
                        CUSTODIAN_ROLE
                    } else {
                        OPERATOR_ROLE
                    },
                }),
            ),
        };
        let mut detail = detail;
        if let (false, Some(map)) = (jwt.is_empty(), detail.as_object_mut()) {
            map.insert("jwt".to_string(), serde_json::Value::Object(jwt.clone()));
        }
        let version = detail
            .get("version")
            .and_then(serde_json::Value::as_i64)
            .and_then(|v| i32::try_from(v).ok());
        let res = store::insert_audit(&AuditEvent {
            actor: Some(&session),
            role_name: &role,
            action: &action,
            outcome,
            keyring: keyring.as_deref(),
            version,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disclosure_round_trips_through_the_worker_form() {
        let context = "endpoint:42,x=y;%\tz";
        let encoded = format!("webhook_secret;version=3,context={}", encode_value(context));
        assert!(!encoded["webhook_secret;".len()..].contains(['\t', ';']));
        let (action, detail) = disclosure(&encoded);
        assert_eq!(action, "webhook_secret");
        assert_eq!(detail["version"], 3);
        assert_eq!(detail["context"], context);
        // a stray % is kept as it is
        assert_eq!(decode_value("100%"), "100%");
        assert_eq!(decode_value("%zz%4"), "%zz%4");
    }
}
