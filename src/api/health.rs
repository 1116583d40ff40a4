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

fn row(check: &str, status: &str, detail: String) -> Row {
    (check.to_string(), status.to_string(), detail)
}

/// The checks, in order; status is `ok`, `warning` or `error`.
fn checks() -> Vec<Row> {
    let mut out = Vec::new();
    match rootkey::current() {
        Ok(k) => out.push(row(
            "root_key",
            "ok",
            format!(
                "loaded, fingerprint {}",
                rootkey::fingerprint_hex(&k.fingerprint)
            ),
        )),
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
    let duration: i64 = setting("log_min_duration_statement")
        .trim_end_matches("ms")
        .parse()
        .unwrap_or(-1);
    if duration >= 0 {
        out.push(row(
            "log_min_duration_statement",
            "warning",
            format!("log_min_duration_statement = {duration} logs the text of statements slower than that, secret literals included; pass secrets as bind parameters and set log_parameter_max_length = 0"),
        ));
    } else {
        out.push(row("log_min_duration_statement", "ok", "off (-1)".into()));
    }
    let param_len = setting("log_parameter_max_length");
    let logs_statements = duration >= 0 || log_statement == "mod" || log_statement == "all";
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
        let ae: i64 = setting("auto_explain.log_min_duration")
            .trim_end_matches("ms")
            .parse()
            .unwrap_or(-1);
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
