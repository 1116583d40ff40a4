//! health(): is this server set up so that secrets stay secret? Checks the root key, the worker,
//! the tenant check, and every logging setting that could write a secret-bearing statement to the
//! server log.

use crate::audit;
use crate::error::OrRaise;
use crate::{rootkey, usage};
use pgrx::prelude::*;

type Row = (String, String, String);

fn setting(name: &str) -> String {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.current_setting($1, true)",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// A setting in its base unit (milliseconds for durations), as pg_settings shows it: `1s` is 1000,
/// never misread as -1. Empty when the setting does not exist (an extension not loaded).
fn setting_base(name: &str) -> String {
    Spi::get_one_with_args::<String>(
        "SELECT (SELECT setting FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) $1)",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default()
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

fn row(check: &str, status: &str, detail: String) -> Row {
    (check.to_string(), status.to_string(), detail)
}

/// The checks, in order; status is `ok`, `warning` or `error`.
fn checks() -> Vec<Row> {
    let mut out = Vec::new();
    match rootkey::current() {
        Ok(k) => {
            // Loaded is not enough: it must be the root key that wraps this database's data keys.
            let (matching, other) =
                crate::store::root_wrapped_key_counts(&k.fingerprint).unwrap_or((0, 0));
            let fp = rootkey::fingerprint_hex(&k.fingerprint);
            out.push(match (matching, other) {
                (0, 0) => row("root_key", "ok", format!("loaded, fingerprint {fp} (no data keys yet)")),
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
            "meshhook_keys is not in shared_preload_libraries: no background scheduler, encryptions are not counted (usage-based rotation off); drive rotation with tick() from pg_cron".into(),
        )),
        Some(s) => out.push(row(
            "scheduler",
            if s.pid != 0 { "ok" } else { "warning" },
            format!(
                "state {} in database \"{}\"{}",
                s.state.name(),
                crate::gucs::database(),
                if s.pid != 0 { String::new() } else { " (no scheduler process)".into() }
            ),
        )),
    }
    let tenants = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM meshhook_keys.keyring k WHERE (pg_catalog.to_jsonb(k) ->> 'tenant') IS NOT NULL)",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if tenants {
        match crate::gucs::tenant_check() {
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
    if log_statement == "mod" || log_statement == "all" {
        out.push(row(
            "log_statement",
            "warning",
            format!("log_statement = '{log_statement}' logs every statement's text, secret literals included: use 'ddl' or 'none', or pass secrets as bind parameters with log_parameter_max_length = 0"),
        ));
    } else {
        out.push(row(
            "log_statement",
            "ok",
            format!("log_statement = '{log_statement}'"),
        ));
    }
    let duration = millis("log_min_duration_statement");
    if duration >= 0 {
        out.push(row(
            "log_min_duration_statement",
            "warning",
            format!("log_min_duration_statement = {duration} logs the text of statements slower than that, secret literals included; pass secrets as bind parameters and set log_parameter_max_length = 0"),
        ));
    } else {
        out.push(row("log_min_duration_statement", "ok", "off (-1)".into()));
    }
    // Sampling: whole transactions, or statements slower than log_min_duration_sample.
    let tx_rate: f64 = setting_base("log_transaction_sample_rate")
        .parse()
        .unwrap_or(0.0);
    if tx_rate > 0.0 {
        out.push(row(
            "log_transaction_sample_rate",
            "warning",
            format!("log_transaction_sample_rate = {tx_rate}: every statement of a sampled transaction is logged with its text, secret literals included; set it to 0"),
        ));
    } else {
        out.push(row("log_transaction_sample_rate", "ok", "0".into()));
    }
    let sample = millis("log_min_duration_sample");
    let sample_rate: f64 = setting_base("log_statement_sample_rate")
        .parse()
        .unwrap_or(0.0);
    if sample >= 0 && sample_rate > 0.0 {
        out.push(row(
            "log_min_duration_sample",
            "warning",
            format!("log_min_duration_sample = {sample} ms with log_statement_sample_rate = {sample_rate}: sampled statements slower than that are logged with their text; set log_min_duration_sample to -1"),
        ));
    } else {
        out.push(row(
            "log_min_duration_sample",
            "ok",
            format!("off ({sample}, rate {sample_rate})"),
        ));
    }
    let param_len = setting("log_parameter_max_length");
    let logs_statements = duration >= 0
        || log_statement == "mod"
        || log_statement == "all"
        || tx_rate > 0.0
        || (sample >= 0 && sample_rate > 0.0);
    if param_len != "0" && logs_statements {
        out.push(row(
            "log_parameter_max_length",
            "warning",
            format!("log_parameter_max_length = {param_len}: the bind parameter values of logged statements (secrets among them) are written to the log; set it to 0"),
        ));
    } else {
        out.push(row(
            "log_parameter_max_length",
            "ok",
            format!("log_parameter_max_length = {param_len}"),
        ));
    }
    let on_error = setting("log_parameter_max_length_on_error");
    if on_error != "0" {
        out.push(row(
            "log_parameter_max_length_on_error",
            "warning",
            format!("log_parameter_max_length_on_error = {on_error}: bind parameter values of failing statements are logged; set it to 0"),
        ));
    } else {
        out.push(row("log_parameter_max_length_on_error", "ok", "0".into()));
    }
    let min_error = setting("log_min_error_statement");
    if min_error != "panic" {
        out.push(row(
            "log_min_error_statement",
            "warning",
            format!("log_min_error_statement = {min_error}: the text of a failing statement is logged (a wrong secret passed as a literal would be); pass secrets as bind parameters, or set it to panic"),
        ));
    } else {
        out.push(row("log_min_error_statement", "ok", "panic".into()));
    }
    let preload = format!(
        "{},{}",
        setting("shared_preload_libraries"),
        setting("session_preload_libraries")
    );
    if preload.contains("auto_explain") {
        let ae = millis("auto_explain.log_min_duration");
        if ae >= 0 {
            out.push(row(
                "auto_explain",
                "warning",
                format!("auto_explain.log_min_duration = {ae} logs the text (and with log_parameter_max_length, the parameters) of slow statements"),
            ));
        } else {
            out.push(row(
                "auto_explain",
                "ok",
                "loaded, log_min_duration = -1".into(),
            ));
        }
    }
    // pg_stat_statements keeps the text of utility statements (DO blocks, CREATE TABLE AS, EXPLAIN
    // ANALYZE) with their literals; ordinary statements are stored normalized.
    if preload.contains("pg_stat_statements") {
        let track_utility = setting("pg_stat_statements.track_utility");
        if track_utility == "off" {
            out.push(row(
                "pg_stat_statements",
                "ok",
                "loaded, track_utility = off".into(),
            ));
        } else {
            out.push(row(
                "pg_stat_statements",
                "warning",
                "pg_stat_statements is loaded with track_utility on: the text of utility statements (DO blocks, CREATE TABLE AS, EXPLAIN ANALYZE) is kept with its literals, secrets included; set pg_stat_statements.track_utility = off".into(),
            ));
        }
    }
    // Per-role and per-database settings override the server's for the sessions they apply to.
    let overrides = Spi::connect(|c| {
        let mut v = Vec::new();
        for r in c.select(
            "SELECT coalesce(pg_catalog.quote_ident(r.rolname), 'every role') || ' in ' ||
                    coalesce(pg_catalog.quote_ident(d.datname), 'every database') || ': ' || cfg
               FROM pg_catalog.pg_db_role_setting s
               LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
               LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
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
    if overrides.is_empty() {
        out.push(row(
            "role_and_database_settings",
            "ok",
            "no logging setting is overridden per role or database".into(),
        ));
    } else {
        out.push(row(
            "role_and_database_settings",
            "warning",
            format!("logging settings overridden per role or database (ALTER ROLE / ALTER DATABASE ... SET), which this report's other checks do not see: {}", overrides.join("; ")),
        ));
    }
    out
}

/// Whether this server is set up to keep secrets secret: root key, scheduler, tenant check, and
/// every logging setting that would write secret-bearing statements to the server log. Admin only.
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
    TableIterator::new(checks())
}
