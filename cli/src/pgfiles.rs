//! libpq's two connection files, read as libpq reads them: the connection service file
//! (`service=` / `PGSERVICE`) and the password file (`~/.pgpass`, `passfile=` / `PGPASSFILE`).
//!
//! Service file: `PGSERVICEFILE` (else `~/.pg_service.conf`) is searched first, then
//! `PGSYSCONFDIR/pg_service.conf` (else the system's, `/etc/postgresql-common/pg_service.conf` on
//! Debian); the first file that defines the service gives its `key=value` lines; a service that no
//! file defines is an error, as in libpq.
//!
//! Password file: lines `hostname:port:database:username:password`, `*` matching anything, `\:`
//! and `\\` escaped, `#` comments; the first matching line wins. Ignored, with a warning, when
//! group or others may read it (as libpq does). A Unix-socket host matches `localhost` when it is
//! the default socket directory, else its path.

use std::path::{Path, PathBuf};

/// The socket directory libpq's "localhost" stands for in the password file (Debian's).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Where the system's service file is when PGSYSCONFDIR is not set (Debian's libpq).
const SYSCONFDIR: &str = "/etc/postgresql-common";

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A variable of the environment, unset when empty (as libpq reads them).
pub fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// The `key=value` lines of `service` in `text`: `None` when the file does not define it.
fn service_in(
    text: &str,
    service: &str,
    file: &Path,
) -> Result<Option<Vec<(String, String)>>, String> {
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            if found.is_some() {
                break; // (the service's section ended)
            }
            let name = name.strip_suffix(']').ok_or_else(|| {
                format!(
                    "syntax error in service file \"{}\", line {}",
                    file.display(),
                    n + 1
                )
            })?;
            if name == service {
                found = Some(Vec::new());
            }
            continue;
        }
        if let Some(pairs) = found.as_mut() {
            let (k, v) = line.split_once('=').ok_or_else(|| {
                format!(
                    "syntax error in service file \"{}\", line {}",
                    file.display(),
                    n + 1
                )
            })?;
            if k == "service" {
                return Err(format!(
                    "nested service specifications not supported in service file \"{}\", line {}",
                    file.display(),
                    n + 1
                ));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    Ok(found)
}

/// The options of connection service `service`, from the first service file that defines it.
pub fn service(service: &str) -> Result<Vec<(String, String)>, String> {
    let user = env("PGSERVICEFILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".pg_service.conf")));
    let system = PathBuf::from(env("PGSYSCONFDIR").unwrap_or_else(|| SYSCONFDIR.into()))
        .join("pg_service.conf");
    for file in user.into_iter().chain([system]) {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("service file \"{}\": {e}", file.display())),
        };
        if let Some(pairs) = service_in(&text, service, &file)? {
            return Ok(pairs);
        }
    }
    Err(format!("definition of service \"{service}\" not found"))
}

/// The fields of one password file line (`\` escapes the next character).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("a field").push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().expect("a field").push(c),
        }
    }
    out
}

/// The password for (`host`, `port`, `dbname`, `user`) in the password file's text.
fn password_in(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    let host = if host.is_empty() || host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(fields)
        .filter(|f| f.len() == 5)
        .find(|f| {
            [host, port, dbname, user]
                .iter()
                .zip(f.iter())
                .all(|(want, have)| have == "*" || have == want)
        })
        .map(|f| f[4].clone())
}

/// The password file's password for this connection, if the file exists, is private and has a
/// matching line. `passfile`: the `passfile` option or `PGPASSFILE`, else `~/.pgpass`.
pub fn password(
    passfile: Option<&str>,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let file = passfile
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".pgpass")))?;
    let meta = std::fs::metadata(&file).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "WARNING: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                file.display()
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(&file).ok()?;
    password_in(&text, host, port, dbname, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines_match_as_in_libpq() {
        let text = "# comment\n\
                    db1.example.com:5432:app:ops:one\n\
                    *:*:app:ops:two\\:with\\\\escapes\n\
                    localhost:5433:*:*:three\n\
                    /tmp/sock:5432:*:*:four\n";
        let p = |h, port, db, u| password_in(text, h, port, db, u);
        assert_eq!(
            p("db1.example.com", "5432", "app", "ops").as_deref(),
            Some("one")
        );
        assert_eq!(
            p("other", "5432", "app", "ops").as_deref(),
            Some("two:with\\escapes")
        );
        assert_eq!(
            p(DEFAULT_SOCKET_DIR, "5433", "x", "y").as_deref(),
            Some("three")
        );
        assert_eq!(p("", "5433", "x", "y").as_deref(), Some("three"));
        assert_eq!(p("/tmp/sock", "5432", "x", "y").as_deref(), Some("four"));
        assert_eq!(p("/tmp/sock", "5433", "x", "y"), None);
        assert_eq!(p("other", "5432", "app", "nobody"), None);
    }

    #[test]
    fn services_are_sections_of_key_value_lines() {
        let text = "# c\n[a]\nhost=h1\nport=1\n\n[b]\nhost=h2\ndbname=d b\n[c]\nservice=a\n";
        let f = Path::new("f");
        assert_eq!(
            service_in(text, "b", f).unwrap().unwrap(),
            vec![
                ("host".into(), "h2".into()),
                ("dbname".into(), "d b".into())
            ]
        );
        assert_eq!(service_in(text, "z", f).unwrap(), None);
        assert!(service_in(text, "c", f).unwrap_err().contains("nested"));
        assert!(
            service_in("[a]\nnoequals\n", "a", f)
                .unwrap_err()
                .contains("line 2")
        );
    }
}
