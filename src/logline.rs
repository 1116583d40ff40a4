//! The lines meshhook_keys writes to the server log.
//!
//! PostgreSQL attaches the client's statement to any message logged at LOG level or above while a
//! statement runs (`log_min_error_statement`; LOG counts as above ERROR for the server log), and its
//! context lines too. A statement may hold a literal secret (`secret_encrypt('sk_live_…')`,
//! `keyring_unlock('user:x', 'passphrase')`), so every line is emitted with the statement and the
//! context hidden (`errhidestmt`, `errhidecontext`), never with RAISE or pgrx's `log!`. Control
//! characters in the text (a keyring name with ESC or CR, say) are escaped as `\xNN`, so a line
//! can neither forge another line nor drive a terminal.

use pgrx::prelude::*;
use std::ffi::{CString, c_char, c_int};

// Not in pgrx's bindings (it keeps them private); the backend exports them.
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// `s` with every control character written as `\xNN`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if ch.is_control() {
            out.push_str(&format!("\\x{:02x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// Write `msg` to the server log at LOG level, without the statement or the context.
pub fn log(msg: &str) {
    let Ok(text) = CString::new(escape(msg)) else {
        return;
    };
    // SAFETY: the elog protocol (errstart, the message and flags, errfinish) for a LOG message,
    // which returns normally; the message is copied by errmsg_internal.
    unsafe {
        if errstart(pg_sys::LOG as c_int, std::ptr::null()) {
            pg_sys::errmsg_internal(c"%s".as_ptr(), text.as_ptr());
            pg_sys::errhidestmt(true);
            pg_sys::errhidecontext(true);
            errfinish(c"meshhook_keys".as_ptr(), 0, c"meshhook_keys".as_ptr());
        }
    }
}

/// `_log_line(text)`: the audit chain trigger's mirror of each audit row (see sql/bootstrap.sql).
/// Executable only by the extension's owner.
#[pg_extern(volatile, parallel_safe, strict)]
#[search_path(pg_catalog, pg_temp)]
fn _log_line(line: &str) {
    log(line);
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::escape("a\x1b[2Jb\r\nc\td"),
            "a\\x1b[2Jb\\x0d\\x0ac\\x09d"
        );
        assert_eq!(
            super::escape("plain: keyring \"x\""),
            "plain: keyring \"x\""
        );
    }
}
