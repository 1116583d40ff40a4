//! Connecting like psql: a URL or key=value string, and the PG* variables for whatever it leaves
//! out, with libpq's TLS modes.
//!
//! The key=value form is read as libpq reads it (`key = value`, values in single quotes with `\'` and
//! `\\`, backslash escapes in unquoted values too); a URL is parsed by tokio-postgres. Only `sslmode`
//! and `sslrootcert`, which the driver does not know, are taken out first; every other option goes to
//! `tokio_postgres::Config`. Options the connection string does not set come, as in libpq, from
//! the connection service (`service=` or `PGSERVICE`, `pgfiles::service`), then from `PGHOST`,
//! `PGHOSTADDR`, `PGPORT`, `PGUSER` (else `USER`), `PGDATABASE`, `PGPASSWORD`, `PGAPPNAME`,
//! `PGOPTIONS`, `PGCONNECT_TIMEOUT`, `PGTARGETSESSIONATTRS`, `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGPASSFILE` and `PGGSSENCMODE`, each applied as one value (never re-parsed as a connection
//! string); a password still missing comes from the password file (`pgfiles::password`). No error
//! message repeats a password. `gssencmode` is accepted as libpq built without GSSAPI accepts it:
//! `disable` and `prefer` connect without GSSAPI encryption, `require` is refused.
//!
//! `sslmode` (or `PGSSLMODE`): `disable`; `allow`/`prefer` (the default: TLS if the server offers
//! it); `require` (TLS, the certificate verified only if a root certificate is given, as libpq
//! does); `verify-ca` (TLS, certificate chain verified); `verify-full` (chain and host name
//! verified). `sslrootcert` (or `PGSSLROOTCERT`) names the PEM root certificate to trust in
//! addition to the system's.

use crate::pgfiles::env;
use postgres::{Client, NoTls};
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::config::SslMode;

/// The options tokio-postgres understands in a key=value string, and ours.
const KNOWN: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "service",
    "passfile",
    "gssencmode",
];

/// libpq options the driver does not know, taken out of the connection string first.
#[derive(Default, Debug)]
struct Libpq {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    service: Option<String>,
    passfile: Option<String>,
    gssencmode: Option<String>,
}

impl Libpq {
    /// The slot of a libpq-only option, or None for an option the driver reads.
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "sslmode" => Some(&mut self.sslmode),
            "sslrootcert" => Some(&mut self.sslrootcert),
            "service" => Some(&mut self.service),
            "passfile" => Some(&mut self.passfile),
            "gssencmode" => Some(&mut self.gssencmode),
            _ => None,
        }
    }
}

/// A key=value connection string as libpq's conninfo_parse reads it.
fn parse_kv(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut it = conninfo.chars().peekable();
    let after = |out: &Vec<(String, String)>| match out.last() {
        Some((k, _)) => format!(" after the value of `{k}`"),
        None => String::new(),
    };
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            // (the word may be part of a mistyped password: not repeated)
            return Err(format!(
                "invalid connection string: a word without \"=\"{}",
                after(&out)
            ));
        }
        if !KNOWN.contains(&key.as_str()) {
            return Err(if out.last().is_some_and(|(k, _)| k == "password") {
                format!("invalid connection string: unknown option{}", after(&out))
            } else {
                format!("invalid connection string: unknown option `{key}`")
            });
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => {
                        return Err(format!(
                            "invalid connection string: unterminated quoted value of `{key}`"
                        ));
                    }
                    Some('\'') => break,
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(format!(
                                "invalid connection string: unterminated quoted value of `{key}`"
                            ));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The driver's configuration and the libpq-only options, from a connection string.
fn parse(conninfo: &str) -> Result<(tokio_postgres::Config, Libpq), String> {
    let mut libpq = Libpq::default();
    let config = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let (base, query) = conninfo.split_once('?').unwrap_or((conninfo, ""));
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some((k, v)) if libpq.slot(k).is_some() => {
                    *libpq.slot(k).expect("a slot") = Some(percent_decode(v));
                }
                _ => kept.push(kv),
            }
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        url.parse::<tokio_postgres::Config>()
            .map_err(|e| format!("invalid connection URL: {e}"))?
    } else {
        let mut kept = Vec::new();
        for (k, v) in parse_kv(conninfo)? {
            match libpq.slot(&k) {
                Some(slot) => *slot = Some(v),
                None => kept.push(format!(
                    "{k}='{}'",
                    v.replace('\\', "\\\\").replace('\'', "\\'")
                )),
            }
        }
        kept.join(" ")
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("invalid connection string: {e}"))?
    };
    Ok((config, libpq))
}

/// Set option `key` to `value` unless the connection string (or an earlier source) set it;
/// `source` names where the value came from, for errors.
fn set_unset(
    pg: &mut tokio_postgres::Config,
    libpq: &mut Libpq,
    key: &str,
    value: &str,
    source: &str,
) -> Result<(), String> {
    let invalid = || format!("invalid {key} in {source}");
    match key {
        "host" if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() => {
            for h in value.split(',') {
                pg.host(h.trim());
            }
        }
        "hostaddr" if pg.get_hostaddrs().is_empty() => {
            for a in value.split(',') {
                pg.hostaddr(a.trim().parse().map_err(|_| invalid())?);
            }
        }
        "port" if pg.get_ports().is_empty() => {
            for p in value.split(',') {
                pg.port(p.trim().parse().map_err(|_| invalid())?);
            }
        }
        "user" if pg.get_user().is_none() => {
            pg.user(value);
        }
        "dbname" if pg.get_dbname().is_none() => {
            pg.dbname(value);
        }
        "password" if pg.get_password().is_none() => {
            pg.password(value);
        }
        "application_name" if pg.get_application_name().is_none() => {
            pg.application_name(value);
        }
        "options" if pg.get_options().is_none() => {
            pg.options(value);
        }
        "connect_timeout" if pg.get_connect_timeout().is_none() => {
            let secs: u64 = value.trim().parse().map_err(|_| invalid())?;
            if secs > 0 {
                pg.connect_timeout(std::time::Duration::from_secs(secs.max(2)));
            }
        }
        "target_session_attrs" => {
            // (the connection string's value was set by the driver; only a default is applied)
            if pg.get_target_session_attrs() == tokio_postgres::config::TargetSessionAttrs::Any {
                pg.target_session_attrs(match value {
                    "any" => tokio_postgres::config::TargetSessionAttrs::Any,
                    "read-write" => tokio_postgres::config::TargetSessionAttrs::ReadWrite,
                    "read-only" => tokio_postgres::config::TargetSessionAttrs::ReadOnly,
                    _ => return Err(invalid()),
                });
            }
        }
        "host" | "hostaddr" | "port" | "user" | "dbname" | "password" | "application_name"
        | "options" | "connect_timeout" => {} // (already set)
        k => match libpq.slot(k) {
            Some(slot) => {
                if slot.is_none() {
                    *slot = Some(value.to_string());
                }
            }
            None => return Err(format!("option `{k}` in {source} is not supported")),
        },
    }
    Ok(())
}

/// The driver's configuration (with the PG* defaults applied and `sslmode` mapped to the three the
/// driver knows) and the TLS connector that implements libpq's mode; for the blocking and the async
/// clients alike (postgres-native-tls's connector serves both).
pub struct Prepared {
    pub config: tokio_postgres::Config,
    pub tls: Option<MakeTlsConnector>,
}

/// libpq's sslmode values.
const MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The PG* variables and the options they stand for, in libpq's order.
const ENV: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGSERVICE", "service"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGGSSENCMODE", "gssencmode"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
];

/// `conninfo`: --url / MESHHOOK_KEYS_URL, if given.
pub fn prepare(conninfo: Option<&str>) -> Result<Prepared, String> {
    let (mut pg, mut libpq) = match conninfo {
        Some(c) => parse(c)?,
        None => (tokio_postgres::Config::new(), Libpq::default()),
    };
    // the service's options come before the environment's (libpq: a service file setting
    // overrides the corresponding environment variable)
    if let Some(name) = libpq.service.clone().or_else(|| env("PGSERVICE")) {
        for (k, v) in crate::pgfiles::service(&name)? {
            set_unset(&mut pg, &mut libpq, &k, &v, &format!("service \"{name}\""))?;
        }
    }
    for (var, key) in ENV {
        // (an empty PGPASSWORD is a password; other empty variables are unset)
        let value = if *key == "password" {
            std::env::var(var).ok()
        } else {
            env(var)
        };
        if let Some(v) = value
            && *key != "service"
        {
            set_unset(&mut pg, &mut libpq, key, &v, var)?;
        }
    }
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        pg.host(crate::pgfiles::DEFAULT_SOCKET_DIR);
    }
    if pg.get_user().is_none()
        && let Some(u) = env("USER")
    {
        pg.user(&u);
    }
    if pg.get_password().is_none() {
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => pg
                .get_hostaddrs()
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
        let user = pg.get_user().unwrap_or_default().to_string();
        let dbname = pg.get_dbname().unwrap_or(&user).to_string();
        if let Some(p) =
            crate::pgfiles::password(libpq.passfile.as_deref(), &host, &port, &dbname, &user)
        {
            pg.password(p);
        }
    }
    match libpq.gssencmode.as_deref() {
        None | Some("disable" | "prefer") => {}
        Some("require") => {
            return Err(
                "gssencmode=require: this client has no GSSAPI encryption (use sslmode)".into(),
            );
        }
        Some(_) => return Err("invalid gssencmode (disable, prefer, require)".into()),
    }
    let mode = libpq.sslmode.unwrap_or_else(|| "prefer".into());
    let root = libpq.sslrootcert.filter(|r| !r.is_empty());
    if !MODES.contains(&mode.as_str()) {
        return Err(
            "invalid sslmode (disable, allow, prefer, require, verify-ca, verify-full)".into(),
        );
    }
    // libpq never uses TLS on a Unix-domain socket, whatever sslmode says; nor do we (and so do
    // not pay for loading the system's certificates, most of a CLI call's time)
    #[cfg(unix)]
    let unix_only = pg.get_hostaddrs().is_empty()
        && pg
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    #[cfg(not(unix))]
    let unix_only = false;
    if mode == "disable" || unix_only {
        pg.ssl_mode(SslMode::Disable);
        return Ok(Prepared {
            config: pg,
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
            SslMode::Prefer
        }
        "require" => {
            builder.danger_accept_invalid_certs(root.is_none());
            SslMode::Require
        }
        "verify-ca" => {
            builder.danger_accept_invalid_hostnames(true);
            SslMode::Require
        }
        "verify-full" => SslMode::Require,
        _ => {
            return Err(
                "invalid sslmode (disable, allow, prefer, require, verify-ca, verify-full)".into(),
            );
        }
    };
    pg.ssl_mode(pg_mode);
    let tls = builder.build().map_err(|e| format!("TLS setup: {e}"))?;
    Ok(Prepared {
        config: pg,
        tls: Some(MakeTlsConnector::new(tls)),
    })
}

pub fn connect(conninfo: Option<&str>) -> Result<Client, String> {
    let db = |e: postgres::Error| match e.as_db_error() {
        Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
        None => e.to_string(),
    };
    let p = prepare(conninfo)?;
    // connect_timeout bounds the whole connection set-up, as libpq's does: the client library
    // applies it to the TCP connect only, so a server that accepts and then says nothing would
    // hold the CLI forever. The attempt runs in a thread of its own, abandoned (with the process)
    // when the time is up.
    let limit = p.config.get_connect_timeout().copied();
    let config = postgres::Config::from(p.config);
    let attempt = move || {
        match p.tls {
            None => config.connect(NoTls),
            Some(tls) => config.connect(tls),
        }
        .map_err(db)
    };
    let Some(limit) = limit else {
        return attempt();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(attempt());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Err(format!(
            "timeout expired: no connection within connect_timeout ({} s)",
            limit.as_secs()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_strings_are_read_as_libpq_reads_them() {
        let kv = parse_kv(
            r"host=h  password = 'two  spaces sslrootcert=X \' \\' port=5 application_name=a\ b",
        )
        .unwrap();
        assert_eq!(
            kv,
            vec![
                ("host".into(), "h".into()),
                ("password".into(), r"two  spaces sslrootcert=X ' \".into()),
                ("port".into(), "5".into()),
                ("application_name".into(), "a b".into()),
            ]
        );
        let (c, l) = parse("password='a  b sslmode=disable' sslmode=verify-full dbname=x").unwrap();
        assert_eq!(c.get_password(), Some(&b"a  b sslmode=disable"[..]));
        assert_eq!(
            (l.sslmode.as_deref(), l.sslrootcert),
            (Some("verify-full"), None)
        );
        let e = parse("password=two  spaces").unwrap_err();
        assert!(!e.contains("spaces"), "{e}");
        let e = parse("password=two spaces=x").unwrap_err();
        assert!(!e.contains("spaces"), "{e}");
        let (c, l) =
            parse("postgresql://u:p%20w@localhost:5/db?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fr.crt&application_name=x&service=s%20x&gssencmode=prefer").unwrap();
        assert_eq!(c.get_password(), Some(&b"p w"[..]));
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(
            (l.sslmode.as_deref(), l.sslrootcert.as_deref()),
            (Some("verify-ca"), Some("/tmp/r.crt"))
        );
        assert_eq!(
            (l.service.as_deref(), l.gssencmode.as_deref()),
            (Some("s x"), Some("prefer"))
        );
        let (_, l) = parse("service=prod passfile=/p/f gssencmode=disable").unwrap();
        assert_eq!(
            (
                l.service.as_deref(),
                l.passfile.as_deref(),
                l.gssencmode.as_deref()
            ),
            (Some("prod"), Some("/p/f"), Some("disable"))
        );
    }
}
