#!/usr/bin/env bash
# Every test suite, from a fresh Debian 12 machine (run as root). .ci/run calls exactly this.
#   1. cargo fmt --check, the SQL qualification lint and cargo clippy -D warnings; the manual
#      (docs/) built with mdBook and its links checked (scripts/docs.sh)
# Steps 2 to 12 run on PostgreSQL 15 (Debian's) and 17 (from PyPI, scripts/fetch-pg.sh); steps 2
# and 3 also on 16 and 18. MESHHOOK_KEYS_TEST_MAJORS="15" (say) runs fewer.
#   2. cargo pgrx test: plain #[test]s (crypto, envelope) and #[pg_test]s (library preloaded)
#   3. pg_regress + pg_isolation_regress suites and the upgrade test on a throwaway cluster
#      (scripts/installcheck.sh)
#   4. client-level tests through psql: restarts, wrong root keys, dump/restore (tests/client/run.sh)
#   5. the background scheduler: signals, crash, standby, DROP/CREATE EXTENSION (tests/client/scheduler.sh),
#      and a logical replica of the key tables (tests/client/logical.sh)
#   6. every feature behind a real PgBouncer, transaction and session modes (tests/client/pooler.sh)
#   7. no secret in the server log, no Rust backtrace in errors (tests/client/logs.sh)
#   8. the non-preloaded mode driven by real pg_cron (tests/client/cron.sh; 15 only, the one
#      version Debian packages pg_cron for), and failovers under real etcd and Patroni: no key
#      that sealed a ciphertext is lost (tests/ha/patroni.sh; 15 only)
#   9. audit completeness: no idle transaction holds up an admin, a refusal flood loses nothing
#      (tests/client/audit.sh)
#  10. the meshhook-keys CLI run as a subprocess: output and exit codes (tests/cli/run.sh)
#  11. the admin API of meshhook-keys serve, route by route against its OpenAPI description
#      (tests/cli/api.sh)
#  12. hostile network clients of meshhook-keys serve (tests/cli/hostile.sh), and the web console
#      in headless chromium, with screenshots in target/console-screenshots (tests/browser/console.sh;
#      17 only)
#  13. every SQL block of the manual, page by page, as written, and the reference page checked
#      against the catalog (tests/docs/run.sh; 15 and 17)
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
start=$(date +%s)

"$REPO_ROOT/scripts/setup.sh" --ha

say "cargo fmt --check"
cargo fmt --all --check
say "every operator and function in the SQL we run is schema-qualified (tests/lint/qualified_sql.py)"
python3 tests/lint/qualified_sql.py src
say "the manual: mdBook build and link check (scripts/docs.sh)"
"$REPO_ROOT/scripts/docs.sh"
say "every SQL-callable function's doc comment says who may call it, as its COMMENT does (tests/lint/access_sentences.py)"
python3 tests/lint/access_sentences.py "$REPO_ROOT"
say "cargo clippy -D warnings"
cargo clippy --all-targets --features pg15 -- -D warnings
# the code that differs by version (#[cfg(feature = "pg17")] and later) is linted too
cargo clippy --all-targets --no-default-features --features pg17 -- -D warnings
cargo clippy -p meshhook-keys --all-targets -- -D warnings

# Each version's suites run in a shell of their own with PG_MAJOR set, so every script below picks
# that version's pg_config (scripts/lib.sh).
PGRX_DATA_ROOT=$(mktemp -d /tmp/mk_pgrx.XXXXXX)
trap 'rm -rf "$PGRX_DATA_ROOT"' EXIT
chmod 755 "$PGRX_DATA_ROOT"
declare -A SECONDS_FOR=()

# in_process MAJOR: cargo pgrx test (plain #[test]s and in-process #[pg_test]s, library preloaded).
in_process() {
    say "PostgreSQL $1: cargo pgrx test (unit tests and in-process pg_tests)"
    install -d -o postgres -g postgres "$PGRX_DATA_ROOT/$1"
    cargo pgrx test "pg$1" --runas postgres --pgdata "$PGRX_DATA_ROOT/$1"
}
# sql_suites MAJOR: install the extension (release), then pg_regress, isolation and upgrade tests.
sql_suites() {
    (
        export PG_MAJOR=$1; unset PG_CONFIG
        source "$REPO_ROOT/scripts/lib.sh"
        install_extension
        say "PostgreSQL $1: SQL suites (pg_regress, isolation, upgrade)"
        "$REPO_ROOT/scripts/installcheck.sh"
    )
}
# client_suites MAJOR: the shell suites that start their own clusters, poolers and clients.
client_suites() {
    (
        export PG_MAJOR=$1; unset PG_CONFIG
        say "PostgreSQL $1: client-level suite"
        "$REPO_ROOT/tests/client/run.sh"
        say "PostgreSQL $1: scheduler suite (background worker, standby)"
        "$REPO_ROOT/tests/client/scheduler.sh"
        say "PostgreSQL $1: logical replication suite (a subscriber of the key tables)"
        "$REPO_ROOT/tests/client/logical.sh"
        if [ "$1" -ge 16 ]; then
            # (psql's \bind, which it needs to pass the wrapping key as a parameter, is 16's)
            say "PostgreSQL $1: keyring transfer suite (two clusters, different root keys)"
            "$REPO_ROOT/tests/client/transfer.sh"
        fi
        say "PostgreSQL $1: pooler suite (every feature behind a real PgBouncer)"
        "$REPO_ROOT/tests/client/pooler.sh"
        say "PostgreSQL $1: log suite (no secret in the server log at default settings, no backtrace in errors)"
        "$REPO_ROOT/tests/client/logs.sh"
        if [ "$1" = 15 ]; then
            # Debian 12 packages pg_cron for its own PostgreSQL 15 only.
            say "PostgreSQL $1: cron suite (not preloaded, driven by pg_cron)"
            "$REPO_ROOT/tests/client/cron.sh"
            # one major is enough for the failover scenarios (about a minute), Debian's
            say "PostgreSQL $1: high-availability suite (etcd and two Patroni nodes, failovers)"
            "$REPO_ROOT/tests/ha/patroni.sh"
        fi
        say "PostgreSQL $1: audit suite (open transactions, refusal flood)"
        "$REPO_ROOT/tests/client/audit.sh"
        say "PostgreSQL $1: CLI suite (meshhook-keys as a subprocess)"
        "$REPO_ROOT/tests/cli/run.sh"
        say "PostgreSQL $1: admin API suite (meshhook-keys serve, OpenAPI)"
        "$REPO_ROOT/tests/cli/api.sh"
        say "PostgreSQL $1: hostile-client suite (meshhook-keys serve)"
        "$REPO_ROOT/tests/cli/hostile.sh"
        if [ "$1" = 17 ]; then
            # one major is enough for the page itself (the API under it runs on every major)
            say "PostgreSQL $1: web console in a real browser (chromium, playwright-core)"
            "$REPO_ROOT/tests/browser/console.sh"
        fi
        docs_suite "$1"
    )
}
# docs_suite MAJOR: every SQL block of the manual, run as written, and the reference page against
# the catalog.
docs_suite() {
    say "PostgreSQL $1: the manual's SQL blocks and reference (tests/docs/run.sh)"
    "$REPO_ROOT/tests/docs/run.sh"
}

cargo build -p meshhook-keys
# Full suites on 15 (Debian's) and 17 (what new Supabase projects run); in-process, pg_regress,
# isolation and upgrade suites on 16 and 18.
for major in ${MESHHOOK_KEYS_TEST_MAJORS:-15 17 16 18}; do
    t0=$(date +%s)
    in_process "$major"
    sql_suites "$major"
    case $major in 15 | 17) client_suites "$major" ;; esac
    SECONDS_FOR[$major]=$(( $(date +%s) - t0 ))
done
for major in "${!SECONDS_FOR[@]}"; do echo "PostgreSQL $major: ${SECONDS_FOR[$major]} s"; done | sort

say "all test suites passed in $(( $(date +%s) - start )) s"
