#!/usr/bin/env bash
# Nothing secret reaches the server log (issue 12, items 1 and 9), on a real server started with
# PostgreSQL's default logging settings and with RUST_BACKTRACE=1 in its environment.
#   - every entry point that writes a log line, called with literal markers in the statement, at the
#     default log_min_error_statement (= error, under which LOG lines carry their statement) and at
#     debug5: no marker in the log, while the lines themselves are there;
#   - control characters in a keyring name are escaped in our lines;
#   - no Rust backtrace in a client-visible error.
# Installs the extension if it is not installed yet.
source "$(dirname "$0")/../lib.sh"

suite_init logs "${MESHHOOK_KEYS_LOGS_PORT:-25345}"
# (not start_cluster: this server gets RUST_BACKTRACE=1 on purpose)
as_pg env RUST_BACKTRACE=1 "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -w -t 60 start >/dev/null

say "log tests (cluster in $TMP, port $PORT, default logging settings, RUST_BACKTRACE=1)"

# round NAME: every logging entry point with literal markers MARK_<NAME>_*, in a fresh database
round() {
    local db=logs_${1,,} m=MARK_$1
    psql_as postgres postgres "CREATE DATABASE $db" >/dev/null
    psql_as postgres "$db" "CREATE EXTENSION meshhook_keys" >/dev/null
    psql_as postgres "$db" "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'log_app') THEN
                       CREATE ROLE log_app LOGIN IN ROLE meshhook_keys_user; END IF; END \$\$" >/dev/null
    # first use of 'default' creates it: an audit row, mirrored to the log
    psql_as log_app "$db" "SELECT length(meshhook_keys.secret_encrypt('${m}_ENCRYPT')) > 0" >/dev/null
    psql_as log_app "$db" "SELECT keyring FROM meshhook_keys.keyring_create_user_held('user:log_app', '${m}_PASSPHRASE_1')" >/dev/null
    psql_as log_app "$db" "SELECT versions_rewrapped FROM meshhook_keys.keyring_rotate_secret('user:log_app', '${m}_PASSPHRASE_1', '${m}_PASSPHRASE_2', reencrypt => true)" >/dev/null
    # a wrong secret and a refused call, each caught inside the statement: the statement succeeds
    psql_as log_app "$db" "DO \$\$ BEGIN PERFORM meshhook_keys.keyring_unlock('user:log_app', '${m}_WRONG_SECRET');
                      EXCEPTION WHEN OTHERS THEN NULL; END \$\$" >/dev/null
    psql_as log_app "$db" "DO \$\$ BEGIN PERFORM meshhook_keys.keys_rotate('default', '${m}_REFUSED');
                      EXCEPTION WHEN OTHERS THEN NULL; END \$\$" >/dev/null
    psql_as postgres "$db" "SELECT meshhook_keys.secret_create('n', '${m}_STORE') IS NOT NULL" >/dev/null
    # the two failures are written by the audit worker: wait for both rows
    if wait_until 30 is_t psql_as postgres "$db" "SELECT (SELECT count(*) FROM meshhook_keys.audit_log WHERE outcome IN ('refused', 'failed')) >= 2"; then
        ok "round $1: the refusal and the wrong secret were audited"; else fail "round $1: the refusal and the wrong secret were audited"; fi
}

echo "# default settings (log_min_error_statement = error)"
round A
check "our audit lines are in the log" t "$([ "$(grep -c 'meshhook_keys audit: id=' "$TMP/server.log")" -ge 4 ] && echo t)"
check "the refusal line is in the log" t "$(grep -q 'meshhook_keys audit: refused keys_rotate for role log_app' "$TMP/server.log" && echo t)"
check "no marker of round A in the log" "" "$(grep -o 'MARK_A_[A-Z_0-9]*' "$TMP/server.log" | sort -u | tr '\n' ' ')"

echo "# log_min_error_statement = debug5"
psql_as postgres postgres "ALTER SYSTEM SET log_min_error_statement = 'debug5'" >/dev/null
psql_as postgres postgres "SELECT pg_reload_conf()" >/dev/null
if wait_until 30 is_t psql_as postgres postgres "SELECT current_setting('log_min_error_statement') = 'debug5'"; then ok "reloaded"; else fail "reloaded"; fi
round B
check "no marker of round B in the log" "" "$(grep -o 'MARK_B_[A-Z_0-9]*' "$TMP/server.log" | sort -u | tr '\n' ' ')"

echo "# control characters in a keyring name are escaped in our log lines"
psql_as log_app logs_a "DO \$\$ BEGIN PERFORM meshhook_keys.keys_rotate(E'ring\\x1b[2J\\rFAKE LOG LINE');
                   EXCEPTION WHEN OTHERS THEN NULL; END \$\$" >/dev/null
if wait_until 30 is_t psql_as postgres logs_a "SELECT EXISTS (SELECT 1 FROM meshhook_keys.audit_log WHERE keyring LIKE 'ring%FAKE%')"; then
    ok "the refusal was audited"; else fail "the refusal was audited"; fi
check "no raw ESC or CR byte in the log" 0 "$(grep -c $'\x1b\|\r' "$TMP/server.log" || true)"
check "the name is there, escaped" t "$(grep -qF 'ring\x1b[2J\x0dFAKE LOG LINE' "$TMP/server.log" && echo t)"

echo "# no Rust backtrace in client-visible errors, although the server has RUST_BACKTRACE=1"
out=$(as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d logs_a -v VERBOSITY=verbose \
        -c "SELECT meshhook_keys.secret_decrypt('\\x0001'::bytea)" 2>&1 || true)
check "an error of ours: the message, no backtrace" "22P03|0" \
    "$(printf '%s' "$out" | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' | head -1)|$(printf '%s' "$out" | grep -c 'pgrx\|panic\|backtrace\|std::')"
out=$(as_pg psql -X -q -h "$TMP" -p "$PORT" -U log_app -d logs_a -v VERBOSITY=verbose \
        -c "SET statement_timeout = '5ms'" -c "SELECT meshhook_keys.keyring_unlock('user:log_app', 'MARK_C_CANCELLED_SECRET')" 2>&1 || true)
check "a PostgreSQL error raised through our code: the message, no backtrace" "57014|0" \
    "$(printf '%s' "$out" | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\):.*/\1/p' | head -1)|$(printf '%s' "$out" | grep -c 'pgrx\|panic\|backtrace\|std::')"

suite_summary "log tests"
