//! The background workers (with `shared_preload_libraries = 'meshhook_keys'`).
//!
//! * `meshhook_keys launcher` (static, connected to no database) waits until
//!   `meshhook_keys.database` exists, then starts the scheduler there and restarts it if it stops.
//!   It never crash-loops on a missing database: it logs once and keeps checking.
//! * `meshhook_keys scheduler` (dynamic, in that database) ticks every `worker_naptime`: nothing on
//!   a standby (logged once; resumes after promotion), nothing while `worker_enabled = off` or
//!   while the extension is not installed (logged once; resumes after CREATE EXTENSION); otherwise
//!   [`crate::scheduler::tick`]. SIGHUP reloads the settings, SIGTERM stops it after the current
//!   batch.
//! * `meshhook_keys database` (dynamic, short-lived) serves every other database: the launcher
//!   starts one in each database that has the extension once per `worker_naptime` (at once when
//!   one of its keys passed its rotation limit), at most `meshhook_keys.max_database_workers` at a
//!   time; it runs one whole tick there and exits. Databases not known to have the extension are
//!   looked at every ten naptimes (1 to 30 s); template databases never (a connection to one would
//!   make CREATE DATABASE fail). What each did is in shared memory ([`crate::served`]).

use crate::gucs;
use crate::scheduler::{self, Mode};
use crate::served;
use crate::usage::{self, SchedulerState};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

const LIBRARY: &str = "meshhook_keys";

/// Register the launcher. Called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("meshhook_keys launcher")
        .set_type("meshhook_keys launcher")
        .set_library(LIBRARY)
        .set_function("meshhook_keys_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn reload_config_if_asked() {
    // SAFETY: the standard reload protocol; the flag is set by pgrx's SIGHUP handler.
    unsafe {
        if std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0 {
            std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// A database as the launcher sees it.
struct Database {
    oid: u32,
    name: String,
    /// Accepts connections and is not a template: a worker may connect to it.
    servable: bool,
}

/// Every database. Connected to no database, only shared catalogs can be read, and only by a heap
/// scan (as the autovacuum launcher lists databases).
fn databases() -> Vec<Database> {
    BackgroundWorker::transaction(|| {
        // SAFETY: a catalog heap scan of pg_database inside a transaction, as get_database_list()
        // does; each tuple's data is a FormData_pg_database.
        unsafe {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
            let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            let mut out = Vec::new();
            loop {
                let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tup.is_null() {
                    break;
                }
                let header = (*tup).t_data;
                let form = (header as *const u8).add((*header).t_hoff as usize)
                    as *const pg_sys::FormData_pg_database;
                let datname = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
                out.push(Database {
                    oid: (*form).oid.to_u32(),
                    name: datname.to_string_lossy().into_owned(),
                    servable: (*form).datallowconn && !(*form).datistemplate,
                });
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, lock);
            out
        }
    })
}

/// Start a dynamic worker of the launcher's (it is told when the worker stops), not restarted by
/// the postmaster; `arg` is its main function's argument.
fn start_child(
    name: &str,
    kind: &str,
    function: &str,
    arg: u32,
) -> Result<DynamicBackgroundWorker, pgrx::bgworkers::DynamicBackgroundWorkerLoadError> {
    // SAFETY: plain read of our own pid.
    let me = unsafe { pg_sys::MyProcPid };
    BackgroundWorkerBuilder::new(name)
        .set_type(kind)
        .set_library(LIBRARY)
        .set_function(function)
        .set_argument(Some(pg_sys::Datum::from(arg as usize)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(None)
        .set_notify_pid(me)
        .load_dynamic()
}

/// How often a database with a key version waiting for the standbys is served (see the activation module).
const ACTIVATION_POLL: Duration = Duration::from_secs(1);

/// The database workers the launcher started, by database, and when.
#[derive(Default)]
struct DatabaseWorkers {
    running: Vec<(u32, DynamicBackgroundWorker)>,
    last_start: std::collections::HashMap<u32, Instant>,
}

impl DatabaseWorkers {
    /// Start a database worker in every database other than the scheduler's that is due: one that
    /// has the extension once per naptime (at once, within a second, when one of its keys passed
    /// its rotation limit), any other every [`served::probe_interval`]; at most
    /// `max_database_workers` at once, the longest-waiting first. Entries of dropped databases are
    /// freed. Nothing on a standby (it cannot write; its counts wait for promotion), nothing while
    /// `worker_enabled = off`.
    fn start_due(&mut self, main_db: &str, all: &[Database]) {
        self.running
            .retain(|(_, w)| matches!(w.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)));
        for db in served::tracked() {
            if !all.iter().any(|d| d.oid == db) {
                served::forget(db);
                usage::forget_database(db);
                self.last_start.remove(&db);
            }
        }
        // SAFETY: reads shared recovery state.
        if unsafe { pg_sys::RecoveryInProgress() } || !gucs::worker_enabled() {
            return;
        }
        let main = all.iter().find(|d| d.name == main_db).map_or(0, |d| d.oid);
        let to_flush = usage::databases_to_flush(main);
        let naptime = gucs::worker_naptime();
        let mut due: Vec<(Duration, u32, &str)> = Vec::new();
        for d in all.iter().filter(|d| d.servable && d.oid != main) {
            let every = match to_flush.iter().find(|(db, _)| *db == d.oid) {
                _ if served::activation_waiting(d.oid) => ACTIVATION_POLL,
                Some((_, true)) => Duration::from_secs(1),
                Some((_, false)) => naptime,
                None => match served::state(d.oid) {
                    served::DbState::Idle | served::DbState::Ticking | served::DbState::Failed => {
                        naptime
                    }
                    served::DbState::Unknown | served::DbState::NoExtension => {
                        served::probe_interval().max(naptime)
                    }
                },
            };
            let waited = self
                .last_start
                .get(&d.oid)
                .map_or(Duration::MAX, |t| t.elapsed());
            if waited >= every && !self.running.iter().any(|(r, _)| *r == d.oid) {
                due.push((waited, d.oid, &d.name));
            }
        }
        // the longest-waiting first (never started: first of all)
        due.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (_, db, name) in due {
            if self.running.len() >= gucs::max_database_workers() {
                break;
            }
            match start_child(
                &format!("meshhook_keys database {name}"),
                "meshhook_keys database",
                "meshhook_keys_database_main",
                db,
            ) {
                Ok(w) => {
                    self.running.push((db, w));
                    self.last_start.insert(db, Instant::now());
                }
                Err(_) => break,
            }
        }
    }
}

/// A short-lived worker in a database other than the scheduler's: if the extension is installed
/// there (at this library's version), one whole tick (usage counts, rotation by age and by
/// encryptions, re-encryption), as the scheduler does in its own database; then it exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn meshhook_keys_database_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let db = db.to_u32();
    // SAFETY: plain read of our own pid.
    let me = unsafe { pg_sys::MyProcPid };
    match extension_ready() {
        Ok(true) => {}
        Ok(false) => {
            // (dropped, or at another version: its counters would never be written; give them back)
            served::set(db, served::DbState::NoExtension, 0);
            usage::forget_database(db);
            return;
        }
        Err(f) => {
            served::set(db, served::DbState::Failed, 0);
            crate::logline::log(&format!(
                "meshhook_keys database worker: could not check the extension: {f}"
            ));
            return;
        }
    }
    served::set(db, served::DbState::Ticking, me);
    for a in scheduler::tick(Mode::OwnTransactions, true) {
        if a.outcome == "failed"
            || (a.outcome == "ok" && matches!(a.action, "rotate" | "root_rewrap"))
        {
            crate::logline::log(&format!(
                "meshhook_keys database worker: {} {} {}: {}",
                a.outcome,
                a.action,
                a.keyring.as_deref().unwrap_or(""),
                a.detail
            ));
        }
    }
    // SAFETY: reading a backend clock.
    served::tick_done(db, unsafe { pg_sys::GetCurrentTimestamp() });
}

/// Whether this database has the extension at this library's version: `Some(version)` when it is
/// installed at another one.
fn installed_version() -> std::result::Result<Option<String>, scheduler::Failure> {
    scheduler::isolated(Mode::OwnTransactions, || {
        Ok(Spi::get_one::<String>(
            "SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'meshhook_keys')",
        )?)
    })
}

fn extension_ready() -> std::result::Result<bool, scheduler::Failure> {
    Ok(installed_version()?.as_deref() == Some(env!("CARGO_PKG_VERSION")))
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn meshhook_keys_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: plain read of our own pid.
    usage::set_launcher(unsafe { pg_sys::MyProcPid });
    let db = gucs::database();
    let mut child: Option<DynamicBackgroundWorker> = None;
    let mut database_workers = DatabaseWorkers::default();
    let mut said_missing = false;
    let mut last_start: Option<Instant> = None;
    loop {
        reload_config_if_asked();
        // Registered but not started yet counts as running: starting another one then would give
        // two schedulers (seen on a busy standby, where start-up can take longer than a naptime).
        let running = child
            .as_ref()
            .is_some_and(|c| matches!(c.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)));
        let all = databases();
        database_workers.start_due(&db, &all);
        if !running {
            child = None;
            let naptime = gucs::worker_naptime();
            let may_start =
                last_start.is_none_or(|t| t.elapsed() >= naptime.min(Duration::from_secs(10)));
            if !all.iter().any(|d| d.name == db) {
                if !said_missing {
                    crate::logline::log(&format!(
                        "meshhook_keys launcher: database \"{db}\" (meshhook_keys.database) does not exist yet; checking again every {} ms",
                        naptime.as_millis()
                    ));
                    said_missing = true;
                }
                usage::set_scheduler(
                    0,
                    naptime.as_millis() as i64,
                    SchedulerState::WaitingForDatabase,
                );
            } else if may_start {
                said_missing = false;
                match start_child(
                    "meshhook_keys scheduler",
                    "meshhook_keys scheduler",
                    "meshhook_keys_scheduler_main",
                    0,
                ) {
                    Ok(w) => {
                        child = Some(w);
                        last_start = Some(Instant::now());
                    }
                    Err(_) => crate::logline::log(
                        "meshhook_keys launcher: could not start the scheduler (max_worker_processes reached?); retrying",
                    ),
                }
            }
        }
        // Woken early by the postmaster when the scheduler starts or stops (notify pid); every
        // second while a key version waits for the standbys somewhere.
        let mut wait = gucs::worker_naptime().min(Duration::from_secs(10));
        if served::any_activation_waiting() {
            wait = wait.min(ACTIVATION_POLL);
        }
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
    if let Some(c) = child {
        let _ = c.terminate();
    }
    usage::set_launcher(0);
}

#[derive(Default)]
struct Said {
    standby: bool,
    disabled: bool,
    missing: bool,
    version: bool,
    check_failed: bool,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn meshhook_keys_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // SAFETY: plain read of our own pid.
    let me = unsafe { pg_sys::MyProcPid };
    crate::logline::log(&format!(
        "meshhook_keys scheduler started in database \"{db}\""
    ));
    let mut said = Said::default();
    loop {
        reload_config_if_asked();
        let naptime = gucs::worker_naptime();
        usage::set_scheduler(me, naptime.as_millis() as i64, SchedulerState::Idle);
        tick_once(&db, &mut said);
        // SAFETY: reading a backend clock.
        usage::tick_done(unsafe { pg_sys::GetCurrentTimestamp() });
        let mut wait = gucs::worker_naptime();
        if served::activation_waiting(served::this_database()) {
            wait = wait.min(ACTIVATION_POLL);
        }
        if scheduler::shutdown_requested() || !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
    usage::set_scheduler(
        0,
        gucs::worker_naptime().as_millis() as i64,
        SchedulerState::Stopped,
    );
    crate::logline::log("meshhook_keys scheduler stopping");
}

fn tick_once(db: &str, said: &mut Said) {
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        usage::set_state(SchedulerState::Standby);
        if !said.standby {
            crate::logline::log(
                "meshhook_keys scheduler: the server is a standby (in recovery); no rotation or re-encryption until it is promoted",
            );
            said.standby = true;
        }
        return;
    }
    if said.standby {
        crate::logline::log("meshhook_keys scheduler: the server was promoted; resuming");
        said.standby = false;
    }
    if !gucs::worker_enabled() {
        usage::set_state(SchedulerState::Disabled);
        if !said.disabled {
            crate::logline::log(
                "meshhook_keys scheduler: paused (meshhook_keys.worker_enabled = off)",
            );
            said.disabled = true;
        }
        return;
    }
    if said.disabled {
        crate::logline::log("meshhook_keys scheduler: resumed (meshhook_keys.worker_enabled = on)");
        said.disabled = false;
    }
    match installed_version() {
        Ok(None) => {
            usage::set_state(SchedulerState::NoExtension);
            if !said.missing {
                crate::logline::log(&format!(
                    "meshhook_keys scheduler: extension meshhook_keys is not installed in database \"{db}\"; waiting for CREATE EXTENSION"
                ));
                said.missing = true;
            }
            return;
        }
        Ok(Some(v)) if v != env!("CARGO_PKG_VERSION") => {
            usage::set_state(SchedulerState::NoExtension);
            if !said.version {
                crate::logline::log(&format!(
                    "meshhook_keys scheduler: the extension in database \"{db}\" is version {v}, the library is {}; waiting for ALTER EXTENSION meshhook_keys UPDATE",
                    env!("CARGO_PKG_VERSION")
                ));
                said.version = true;
            }
            return;
        }
        Ok(Some(_)) => {
            said.check_failed = false;
            if said.missing || said.version {
                crate::logline::log(&format!(
                    "meshhook_keys scheduler: extension found in database \"{db}\"; resuming"
                ));
            }
            said.missing = false;
            said.version = false;
        }
        Err(f) => {
            crate::logline::log(&format!(
                "meshhook_keys scheduler: could not check the extension: {f}"
            ));
            return;
        }
    }
    usage::set_state(SchedulerState::Ticking);
    for a in scheduler::tick(Mode::OwnTransactions, true) {
        if a.outcome == "failed" && a.action == "flush_usage" {
            crate::logline::log(&format!(
                "meshhook_keys scheduler: writing encryption counts failed (they stay counted and are retried next tick): {}",
                a.detail
            ));
        }
        if a.outcome == "ok" && a.action == "rotate" {
            crate::logline::log(&format!(
                "meshhook_keys scheduler: rotated keyring \"{}\": {}",
                a.keyring.as_deref().unwrap_or(""),
                a.detail
            ));
        }
        if a.action == "root_rewrap" {
            crate::logline::log(&format!(
                "meshhook_keys scheduler: root key rotation: {} {}",
                a.outcome, a.detail
            ));
        }
    }
    usage::set_state(SchedulerState::Idle);
}
