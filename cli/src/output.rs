//! What the CLI prints, and the one conversion of query rows to JSON that the CLI and the HTTP API
//! (`serve`) share.
//!
//! Rows become JSON in the database: `json_rows_sql` wraps a query in `row_to_json`, so every
//! value keeps the JSON type PostgreSQL gives it (numbers, booleans, nested jsonb, timestamps as
//! strings) whichever client asked, and `json_rows` reads them back as objects, columns in query
//! order. On the command line rows are printed as a table (`print`, `print_sections`) or, with
//! --json, as pretty-printed JSON; a failure is reported on stderr as one line of text or a JSON
//! object (`report`), with its exit code.
//!
//! Text that came from the database or a server (cell values, titles, error messages) is never
//! written to the terminal raw: `printable` shows control characters (ESC, CR, BEL, C1, DEL) and
//! bidirectional overrides as `\u{..}` escapes, so a value or a message cannot move the cursor,
//! rewrite what is on the screen, set the window title or reorder what is shown; an error
//! message is cut at `MAX_ERROR_BYTES`. JSON output needs neither: serde_json escapes control
//! characters itself.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;
use std::process::ExitCode;

/// A failure to report: the database's error (message, hint, SQLSTATE) or a failed check, and the
/// exit code.
pub struct Failure(String, u8);

/// A failure: exit code 1.
pub fn fail(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 1)
}

/// A usage or configuration error: exit code 2.
pub fn usage(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 2)
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(h) = db.hint() {
                    s.push_str(&format!("\nhint: {h}"));
                }
                fail(s)
            }
            None => fail(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// The longest error message printed (the rest is counted, not shown).
const MAX_ERROR_BYTES: usize = 4096;

/// `c` would change the terminal rather than show: C0 controls but newline and tab, DEL, C1
/// controls, and the bidirectional embeddings, overrides and isolates.
fn hostile_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` safe to write to a terminal: each hostile character as a visible `\u{..}` escape.
pub fn printable(s: &str) -> String {
    if !s.chars().any(hostile_char) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if hostile_char(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An error message as printed: at most `MAX_ERROR_BYTES` of it, then printable.
fn error_text(msg: &str) -> String {
    if msg.len() <= MAX_ERROR_BYTES {
        return printable(msg);
    }
    let mut end = MAX_ERROR_BYTES;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} more bytes not shown)",
        printable(&msg[..end]),
        msg.len() - end
    )
}

/// `sql` as a query whose rows are one JSON object (as text) each, converted by PostgreSQL.
pub fn json_rows_sql(sql: &str) -> String {
    format!("SELECT row_to_json(q)::text FROM ({sql}) AS q")
}

/// The rows of a `json_rows_sql` query as JSON objects, columns in query order (for the blocking
/// and the async client alike: `postgres::Row` is tokio-postgres's).
pub fn json_rows(rows: &[tokio_postgres::Row]) -> std::result::Result<Vec<Value>, String> {
    rows.iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| e.to_string()))
        .collect()
}

/// A value as a table cell: NULL empty, strings without quotes (printable), anything else as JSON
/// (which escapes control characters itself).
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => printable(s),
        other => other.to_string(),
    }
}

/// Print rows as a table under `title` (or JSON, without the title).
pub fn print(json: bool, title: Option<&str>, data: &[Value]) {
    if json {
        println!("{}", serde_json::to_string_pretty(data).unwrap_or_default());
        return;
    }
    if let Some(t) = title {
        println!("{t}");
    }
    let Some(Value::Object(first)) = data.first() else {
        println!("(no rows)");
        return;
    };
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(first.keys().map(|k| printable(k)).collect::<Vec<_>>());
    for row in data {
        if let Value::Object(m) = row {
            table.add_row(m.values().map(cell).collect::<Vec<_>>());
        }
    }
    println!("{table}");
}

/// Row sets that one command prints, each as (JSON member, table title, rows): with --json one
/// object with a member per set, in this order; else a table per set under its title, and a set
/// without a title only in the JSON.
pub fn print_sections(json: bool, sections: &[(&str, Option<&str>, &[Value])]) {
    if json {
        let object: serde_json::Map<String, Value> = sections
            .iter()
            .map(|(key, _, rows)| (key.to_string(), Value::Array(rows.to_vec())))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(object)).unwrap_or_default()
        );
        return;
    }
    for (_, title, rows) in sections {
        if let Some(title) = title {
            print(false, Some(title), rows);
        }
    }
}

/// A failure on stderr: a line of text, or with --json a JSON object
/// `{"error": message, "exit_code": code}`; returns its exit code.
pub fn report(json: bool, failure: &Failure) -> ExitCode {
    let Failure(msg, code) = failure;
    if json {
        let msg = if msg.len() > MAX_ERROR_BYTES {
            error_text(msg)
        } else {
            msg.clone()
        };
        eprintln!("{}", serde_json::json!({ "error": msg, "exit_code": code }));
    } else {
        eprintln!("meshhook-keys: error: {}", error_text(msg));
    }
    ExitCode::from(*code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(printable("plain\ttext\nnext"), "plain\ttext\nnext");
        assert_eq!(
            printable("a\u{1b}]0;owned\u{7}b\rc\u{9b}2J\u{7f}"),
            "a\\u{1b}]0;owned\\u{7}b\\u{d}c\\u{9b}2J\\u{7f}"
        );
        assert_eq!(printable("x\u{202E}y\u{2066}"), "x\\u{202e}y\\u{2066}");
        let long = "é".repeat(3000); // 6000 bytes
        let t = error_text(&long);
        assert!(
            t.starts_with(&"é".repeat(2048)) && t.ends_with("(1904 more bytes not shown)"),
            "{t}"
        );
        assert_eq!(error_text("\u{1b}[2J"), "\\u{1b}[2J");
    }
}
