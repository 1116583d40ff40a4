//! The checks behind health(): is this server set up so that secrets stay secret? The root key
//! (loaded, and the one that wraps this database's data keys), the scheduler, the tenant check,
//! and every logging setting that could write a secret-bearing statement to the server log,
//! including per-role and per-database overrides.
//!
//! Invariants: every check only reads (settings and catalogs), so health() changes nothing; a
//! check that cannot read what it needs reports what it saw rather than failing the whole report;
//! no detail ever carries key material (the root key appears as its fingerprint only).

use crate::{gucs, rootkey, store, usage};
use pgrx::prelude::*;

/// One check: its name, `ok` / `warning` / `error`, and a sentence saying what was found.
pub type Check = (String, String, String);

/// One text value read by `sql` for the setting `name` ($1); empty when there is none.
fn read_setting(sql: &str, name: &str) -> String {
    store::read_one::<String>(sql, &[name.into()])
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A setting as the session sees it; empty when the setting does not exist.
fn setting(name: &str) -> String {
    read_setting("SELECT pg_catalog.current_setting($1, true)", name)
}

/// A setting in its base unit (milliseconds for durations), as pg_settings shows it: `1s` is 1000,
/// never misread as -1. Empty when the setting does not exist (an extension not loaded).
fn setting_base(name: &str) -> String {
    read_setting(
        "SELECT (SELECT setting FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) $1)",
        name,
    )
}

/// A duration setting in milliseconds; -1 (off) when unset.
fn millis(name: &str) -> i64 {
    setting_base(name).parse().unwrap_or(-1)
}

/// The logging settings that can write a statement's text (and its literals) to the log.
const LOGGING_SETTINGS: &[&str] = &[
    "log_statement",
    "log_min_duration_statement",
    "log_min_duration_sample",
    "log_statement_sample_rate",
    "log_transaction_sample_rate",
    "log_parameter_max_length",
    "log_parameter_max_length_on_error",
    "log_min_error_statement",
    "auto_explain.log_min_duration",
    "session_preload_libraries",
];

/// A check that warns (with `warning`) when `bad`, and is ok (with `ok`) otherwise.
fn warn_if(check: &str, bad: bool, warning: String, ok: String) -> Check {
    if bad {
        row(check, "warning", warning)
    } else {
        row(check, "ok", ok)
    }
}

fn row(check: &str, status: &str, detail: String) -> Check {
    (check.to_string(), status.to_string(), detail)
}

/// The checks, in order; status is `ok`, `warning` or `error`.
pub fn checks() -> Vec<Check> {
    let mut out = Vec::new();
    match rootkey::current() {
        Ok(k) => {
            // Loaded is not enough: it must be the root key that wraps this database's data keys.
            let (matching, other) =
                store::root_wrapped_key_counts(&k.fingerprint).unwrap_or((0, 0));
            let fp = rootkey::fingerprint_hex(&k.fingerprint);
            // A root key rotation in progress: the previous root key still wraps some of them.
            let previous = match rootkey::previous_if_set() {
                Ok(Some(p)) if p.fingerprint != k.fingerprint => Some(Ok(p)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(previous) = previous {
                out.push(match previous {
                    Err(e) => row("root_key_previous", "error", format!(
                        "meshhook_keys.root_key_previous_* is set but cannot be loaded: {e}"
                    )),
                    Ok(p) => {
                        let pfp = rootkey::fingerprint_hex(&p.fingerprint);
                        let (by_previous, _) = store::root_wrapped_key_counts(&p.fingerprint).unwrap_or((0, 0));
                        if by_previous > 0 {
                            row("root_key_previous", "warning", format!(
                                "root key rotation in progress: the previous root key {pfp} still wraps {by_previous} data keys of this database (they decrypt with it meanwhile); the scheduler rewraps them at its next tick here (or run root_key_rewrap())"
                            ))
                        } else {
                            row("root_key_previous", "ok", format!(
                                "the previous root key {pfp} wraps no data key of this database any more: once every database with the extension says so, unset meshhook_keys.root_key_previous_* and destroy that key"
                            ))
                        }
                    }
                });
            }
            let other_by_previous = match rootkey::previous_if_set() {
                Ok(Some(p)) if p.fingerprint != k.fingerprint => {
                    store::root_wrapped_key_counts(&p.fingerprint).map_or(0, |c| c.0)
                }
                _ => 0,
            };
            out.push(match (matching, other.saturating_sub(other_by_previous)) {
                (0, 0) if other_by_previous == 0 => row("root_key", "ok", format!("loaded, fingerprint {fp} (no data keys yet)")),
                (_, 0) if other_by_previous > 0 => row("root_key", "ok", format!(
                    "loaded, fingerprint {fp}, wraps {matching} data keys; {other_by_previous} are still under the previous root key (see root_key_previous)"
                )),
                (_, 0) => row("root_key", "ok", format!("loaded, fingerprint {fp}, wraps all {matching} data keys")),
                (0, _) => row("root_key", "error", format!(
                    "loaded root key {fp} wraps none of the {other} data keys of this database: every decryption fails with 28000; start the server with the right root key (or rewrap with root_key_rewrap)"
                )),
                _ => row("root_key", "warning", format!(
                    "loaded root key {fp} wraps {matching} data keys, another root key wraps {other}: finish the rewrap with root_key_rewrap()"
                )),
            });
        }
        Err(e) => out.push(row("root_key", "error", e.to_string())),
    }
    match usage::status() {
        None => out.push(row(
            "preload",
            "warning",
            "meshhook_keys is not in shared_preload_libraries: no background scheduler; encryptions are NOT counted, so data_key.encryptions stays as it is, max_encryptions never triggers a rotation and meshhook_keys.max_encryptions_ceiling is not enforced (rotation by age still works: drive it with tick() from pg_cron)".into(),
        )),
        Some(_) => match crate::scheduler::here() {
            None => {}
            Some(h) => out.push(row(
                "scheduler",
                if h.healthy.is_ok() { "ok" } else { "warning" },
                match (&h.healthy, h.main) {
                    (Ok(()), true) => format!("state {} in database \"{}\"", h.state, h.database),
                    (Err(why), true) => format!("state {} in database \"{}\" ({why})", h.state, h.database),
                    (Ok(()), false) => format!(
                        "database \"{}\" is {} ({} ticks{}); the scheduler runs in \"{}\"",
                        h.database,
                        h.state,
                        h.ticks,
                        if h.last_tick_at.is_some() { ", the last one on time" } else { "" },
                        gucs::database()
                    ),
                    (Err(why), false) => format!(
                        "database \"{}\" is {}: {why}; the scheduler runs in \"{}\"",
                        h.database,
                        h.state,
                        gucs::database()
                    ),
                },
            )),
        },
    }
    if let Some((used, slots)) = usage::slots_used() {
        out.push(row(
            "usage_counting",
            if usage::overflowed() { "error" } else if used * 10 >= slots * 9 { "warning" } else { "ok" },
            format!(
                "encryptions counted in shared memory for {used} of {} keys (meshhook_keys.max_tracked_keys, all databases){}; every key refuses to encrypt at {} (meshhook_keys.max_encryptions_ceiling){}",
                slots,
                if usage::overflowed() { ": FULL, keys without a slot refuse to encrypt (54000 / 53400); raise the setting" } else { "" },
                gucs::max_encryptions_ceiling(),
                // SAFETY: reads shared recovery state.
                if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
                    "; this is a standby: its encryptions are counted here and reach data_key.encryptions only after promotion"
                } else {
                    ""
                }
            ),
        ));
    }
    match crate::activation::health() {
        Ok(Some((status, detail))) => out.push(row("key_activation", status, detail)),
        Ok(None) => {}
        Err(e) => out.push(row("key_activation", "error", e.to_string())),
    }
    let tenants = store::read_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM meshhook_keys.keyring k WHERE k.tenant IS NOT NULL)",
        &[],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if tenants {
        match gucs::tenant_check() {
            Some(f) => out.push(row("tenant_check", "ok", format!("tenant-bound keyrings are checked by {f}"))),
            None => out.push(row(
                "tenant_check",
                "warning",
                "tenant-bound keyrings exist but meshhook_keys.tenant_check is not set: they are refused to everyone but meshhook_keys_service".into(),
            )),
        }
    }

    // Logging: a statement that carries a secret as a literal (secret_encrypt('...'), keyring_unlock)
    // is logged whole by these settings; with bind parameters the text shows $1 and the values are
    // logged only per log_parameter_max_length(_on_error).
    let log_statement = setting("log_statement");
    out.push(warn_if(
        "log_statement",
        log_statement == "mod" || log_statement == "all",
        format!("log_statement = '{log_statement}' logs every statement's text, secret literals included: use 'ddl' or 'none', or pass secrets as bind parameters with log_parameter_max_length = 0"),
        format!("log_statement = '{log_statement}'"),
    ));
    let duration = millis("log_min_duration_statement");
    out.push(warn_if(
        "log_min_duration_statement",
        duration >= 0,
        format!("log_min_duration_statement = {duration} logs the text of statements slower than that, secret literals included; pass secrets as bind parameters and set log_parameter_max_length = 0"),
        "off (-1)".into(),
    ));
    // Sampling: whole transactions, or statements slower than log_min_duration_sample.
    let tx_rate: f64 = setting_base("log_transaction_sample_rate")
        .parse()
        .unwrap_or(0.0);
    out.push(warn_if(
        "log_transaction_sample_rate",
        tx_rate > 0.0,
        format!("log_transaction_sample_rate = {tx_rate}: every statement of a sampled transaction is logged with its text, secret literals included; set it to 0"),
        "0".into(),
    ));
    let sample = millis("log_min_duration_sample");
    let sample_rate: f64 = setting_base("log_statement_sample_rate")
        .parse()
        .unwrap_or(0.0);
    out.push(warn_if(
        "log_min_duration_sample",
        sample >= 0 && sample_rate > 0.0,
        format!("log_min_duration_sample = {sample} ms with log_statement_sample_rate = {sample_rate}: sampled statements slower than that are logged with their text; set log_min_duration_sample to -1"),
        format!("off ({sample}, rate {sample_rate})"),
    ));
    let param_len = setting("log_parameter_max_length");
    let logs_statements = duration >= 0
        || log_statement == "mod"
        || log_statement == "all"
        || tx_rate > 0.0
        || (sample >= 0 && sample_rate > 0.0);
    out.push(warn_if(
        "log_parameter_max_length",
        param_len != "0" && logs_statements,
        format!("log_parameter_max_length = {param_len}: the bind parameter values of logged statements (secrets among them) are written to the log; set it to 0"),
        format!("log_parameter_max_length = {param_len}"),
    ));
    let on_error = setting("log_parameter_max_length_on_error");
    out.push(warn_if(
        "log_parameter_max_length_on_error",
        on_error != "0",
        format!("log_parameter_max_length_on_error = {on_error}: bind parameter values of failing statements are logged; set it to 0"),
        "0".into(),
    ));
    let min_error = setting("log_min_error_statement");
    out.push(warn_if(
        "log_min_error_statement",
        min_error != "panic",
        format!("log_min_error_statement = {min_error}: the text of a failing statement is logged (a wrong secret passed as a literal would be); pass secrets as bind parameters, or set it to panic"),
        "panic".into(),
    ));
    let preload = format!(
        "{},{}",
        setting("shared_preload_libraries"),
        setting("session_preload_libraries")
    );
    if preload.contains("auto_explain") {
        let ae = millis("auto_explain.log_min_duration");
        out.push(warn_if(
            "auto_explain",
            ae >= 0,
            format!("auto_explain.log_min_duration = {ae} logs the text (and with log_parameter_max_length, the parameters) of slow statements"),
            "loaded, log_min_duration = -1".into(),
        ));
    }
    // pg_stat_statements keeps the text of utility statements (DO blocks, CREATE TABLE AS, EXPLAIN
    // ANALYZE) with their literals; ordinary statements are stored normalized.
    if preload.contains("pg_stat_statements") {
        let track_utility = setting("pg_stat_statements.track_utility");
        out.push(warn_if(
            "pg_stat_statements",
            track_utility != "off",
            "pg_stat_statements is loaded with track_utility on: the text of utility statements (DO blocks, CREATE TABLE AS, EXPLAIN ANALYZE) is kept with its literals, secrets included; set pg_stat_statements.track_utility = off".into(),
            "loaded, track_utility = off".into(),
        ));
    }
    // Per-role and per-database settings override the server's for the sessions they apply to.
    let overrides = Spi::connect(|c| {
        let mut v = Vec::new();
        for r in c.select(
            "SELECT coalesce(pg_catalog.quote_ident(r.rolname), 'every role') OPERATOR(pg_catalog.||) ' in ' OPERATOR(pg_catalog.||)
                    coalesce(pg_catalog.quote_ident(d.datname), 'every database') OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) cfg
               FROM pg_catalog.pg_db_role_setting s
               LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.setrole
               LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.setdatabase
              CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) cfg
              WHERE pg_catalog.split_part(cfg, '=', 1) OPERATOR(pg_catalog.=) ANY ($1)
              ORDER BY 1",
            None,
            &[LOGGING_SETTINGS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into()],
        )? {
            v.extend(r.get::<String>(1)?);
        }
        Ok::<_, crate::error::KeysError>(v)
    })
    .unwrap_or_default();
    out.push(warn_if(
        "role_and_database_settings",
        !overrides.is_empty(),
        format!("logging settings overridden per role or database (ALTER ROLE / ALTER DATABASE ... SET), which this report's other checks do not see: {}", overrides.join("; ")),
        "no logging setting is overridden per role or database".into(),
    ));
    out
}
