//! Connecting like psql: a URL or key=value string, or the PG* variables, with libpq's TLS modes.
//!
//! `sslmode` (or `PGSSLMODE`): `disable`; `allow`/`prefer` (the default: TLS if the server offers
//! it); `require` (TLS, the certificate verified only if a root certificate is given, as libpq
//! does); `verify-ca` (TLS, certificate chain verified); `verify-full` (chain and host name
//! verified). `sslrootcert` (or `PGSSLROOTCERT`) names the PEM root certificate to trust in
//! addition to the system's.

use postgres::{Client, NoTls};
use postgres_native_tls::MakeTlsConnector;

/// Remove `key` from a connection string (key=value words, or a URL's query) and return its value.
fn take(conninfo: &str, key: &str) -> (Option<String>, String) {
    let prefix = format!("{key}=");
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let Some((base, query)) = conninfo.split_once('?') else {
            return (None, conninfo.to_string());
        };
        let mut value = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| match kv.strip_prefix(&prefix) {
                Some(v) => {
                    value = Some(v.to_string());
                    false
                }
                None => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (value, rest);
    }
    let mut value = None;
    let kept: Vec<&str> = conninfo
        .split_whitespace()
        .filter(|w| match w.strip_prefix(&prefix) {
            Some(v) => {
                value = Some(v.trim_matches('\'').to_string());
                false
            }
            None => true,
        })
        .collect();
    (value, kept.join(" "))
}

fn with(conninfo: &str, key: &str, value: &str) -> String {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let sep = if conninfo.contains('?') { '&' } else { '?' };
        format!("{conninfo}{sep}{key}={value}")
    } else {
        format!("{conninfo} {key}={value}")
    }
}

/// A connection string with `sslmode` rewritten for the driver (which knows only disable, prefer and
/// require) and the TLS connector that implements libpq's mode; for the blocking and the async
/// clients alike (postgres-native-tls's connector serves both).
pub struct Prepared {
    pub conninfo: String,
    pub tls: Option<MakeTlsConnector>,
}

pub fn prepare(conninfo: &str) -> Result<Prepared, String> {
    let (mode, rest) = take(conninfo, "sslmode");
    let (root, rest) = take(&rest, "sslrootcert");
    let mode = mode
        .or_else(|| std::env::var("PGSSLMODE").ok())
        .unwrap_or_else(|| "prefer".into());
    let root = root
        .or_else(|| std::env::var("PGSSLROOTCERT").ok())
        .filter(|r| !r.is_empty());
    if mode == "disable" {
        return Ok(Prepared {
            conninfo: with(&rest, "sslmode", "disable"),
            tls: None,
        });
    }
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = &root {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
        let cert = native_tls::Certificate::from_pem(&pem)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        builder.add_root_certificate(cert);
    }
    let pg_mode = match mode.as_str() {
        "allow" | "prefer" => {
            builder.danger_accept_invalid_certs(root.is_none());
            "prefer"
        }
        "require" => {
            builder.danger_accept_invalid_certs(root.is_none());
            "require"
        }
        "verify-ca" => {
            builder.danger_accept_invalid_hostnames(true);
            "require"
        }
        "verify-full" => "require",
        other => {
            return Err(format!(
                "invalid sslmode \"{other}\" (disable, allow, prefer, require, verify-ca, verify-full)"
            ));
        }
    };
    let tls = builder.build().map_err(|e| format!("TLS setup: {e}"))?;
    Ok(Prepared {
        conninfo: with(&rest, "sslmode", pg_mode),
        tls: Some(MakeTlsConnector::new(tls)),
    })
}

pub fn connect(conninfo: &str) -> Result<Client, String> {
    let db = |e: postgres::Error| match e.as_db_error() {
        Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
        None => e.to_string(),
    };
    let p = prepare(conninfo)?;
    match p.tls {
        None => Client::connect(&p.conninfo, NoTls),
        Some(tls) => Client::connect(&p.conninfo, tls),
    }
    .map_err(db)
}
