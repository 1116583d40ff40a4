#!/usr/bin/env bash
# Every test suite, from a fresh Debian 12 machine (run as root). .ci/run calls exactly this.
#   1. cargo fmt --check and cargo clippy -D warnings
#   2. cargo pgrx test: plain #[test]s (crypto, envelope) and #[pg_test]s (library preloaded)
#   3. pg_regress + pg_isolation_regress suites on a throwaway cluster (scripts/installcheck.sh)
#   4. client-level tests through psql: restarts, wrong root keys, dump/restore (tests/client/run.sh)
#   5. the background scheduler: signals, crash, standby, DROP/CREATE EXTENSION (tests/client/scheduler.sh)
#   6. user-held keys behind a real PgBouncer, transaction and session modes (tests/client/pooler.sh)
#   7. no secret in the server log, no Rust backtrace in errors (tests/client/logs.sh)
#   8. the non-preloaded mode driven by real pg_cron (tests/client/cron.sh)
#   9. audit completeness: no idle transaction holds up an admin, a refusal flood loses nothing
#      (tests/client/audit.sh)
#  10. the meshhook-keys CLI run as a subprocess: output and exit codes (tests/cli/run.sh)
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
start=$(date +%s)

"$REPO_ROOT/scripts/setup.sh"

say "cargo fmt --check"
cargo fmt --all --check
say "cargo clippy -D warnings"
cargo clippy --all-targets --features pg15 -- -D warnings
cargo clippy -p meshhook-keys --all-targets -- -D warnings

say "cargo pgrx test (unit tests and in-process pg_tests)"
PGRX_DATA=$(mktemp -d /tmp/mk_pgrx.XXXXXX)
chown postgres:postgres "$PGRX_DATA"
trap 'rm -rf "$PGRX_DATA"' EXIT
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_DATA"

install_extension
say "SQL suites (pg_regress, isolation)"
"$REPO_ROOT/scripts/installcheck.sh"
say "client-level suite"
"$REPO_ROOT/tests/client/run.sh"
say "scheduler suite (background worker, standby)"
"$REPO_ROOT/tests/client/scheduler.sh"
say "pooler suite (user-held keys behind a real PgBouncer)"
"$REPO_ROOT/tests/client/pooler.sh"
say "log suite (no secret in the server log at default settings, no backtrace in errors)"
"$REPO_ROOT/tests/client/logs.sh"
say "cron suite (not preloaded, driven by pg_cron)"
"$REPO_ROOT/tests/client/cron.sh"
say "audit suite (open transactions, refusal flood)"
"$REPO_ROOT/tests/client/audit.sh"
say "CLI suite (meshhook-keys as a subprocess)"
cargo build -p meshhook-keys
"$REPO_ROOT/tests/cli/run.sh"
say "hostile-client suite (meshhook-keys serve)"
"$REPO_ROOT/tests/cli/hostile.sh"

say "all test suites passed in $(( $(date +%s) - start )) s"
