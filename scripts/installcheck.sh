#!/usr/bin/env bash
# pg_regress and pg_isolation_regress suites against a throwaway cluster, runnable as root
# (cargo pgrx regress cannot: it runs initdb as the caller). Expects the extension installed.
source "$(dirname "$0")/lib.sh"

PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")/..
REGRESS=$PGXS_DIR/test/regress/pg_regress
ISOLATION=$PGXS_DIR/test/isolation/pg_isolation_regress
PORT=${MESHHOOK_KEYS_TEST_PORT:-54331}

TMP=$(mktemp -d /tmp/mk_regress.XXXXXX)
chmod 755 "$TMP"
make_root_key "$TMP/keys/root.key"
# (the background workers stay paused: the suites drive rotation with tick(), and a usage worker
# flushing and rotating contrib_regression at its own pace would race them)
init_cluster "$TMP" "$PORT" "meshhook_keys.root_key_file = '$TMP/keys/root.key'" "meshhook_keys.worker_enabled = off"
trap 'stop_cluster "$TMP" immediate; rm -rf "$TMP"' EXIT
start_cluster "$TMP"
install -d -o postgres -g postgres "$TMP/out" "$TMP/iso"

cd "$REPO_ROOT"
status=0
TESTS=$(ls tests/pg_regress/sql | sed 's/\.sql$//' | grep -vx setup | sort)
say "pg_regress: setup $TESTS"
as_pg "$REGRESS" --bindir="$PGBIN" --host="$TMP" --port="$PORT" --user=postgres \
    --inputdir=tests/pg_regress --outputdir="$TMP/out" --dbname=contrib_regression \
    setup $TESTS || { cat "$TMP/out/regression.diffs"; status=1; }

# The same suites again with every parallel-safe query forced into a parallel worker (PostgreSQL 16
# renamed the setting debug_parallel_query): decryption must give the same results there.
install -d -o postgres -g postgres "$TMP/out_parallel"
PARALLEL_GUC=force_parallel_mode; [ "$PG_MAJOR" -ge 16 ] && PARALLEL_GUC=debug_parallel_query
say "pg_regress with $PARALLEL_GUC = regress"
as_pg env PGOPTIONS="-c $PARALLEL_GUC=regress" "$REGRESS" --bindir="$PGBIN" --host="$TMP" --port="$PORT" --user=postgres \
    --inputdir=tests/pg_regress --outputdir="$TMP/out_parallel" --dbname=contrib_regression \
    setup $TESTS || { cat "$TMP/out_parallel/regression.diffs"; status=1; }

SPECS=${MESHHOOK_KEYS_SPECS:-$(ls tests/isolation/specs | sed "s/\.spec$//" | sort)}
say "pg_isolation_regress: $SPECS"
as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE isolation_regression" \
    -c "ALTER DATABASE isolation_regression SET client_min_messages = warning"
as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d isolation_regression -c "CREATE EXTENSION meshhook_keys"
as_pg "$ISOLATION" --bindir="$PGBIN" --host="$TMP" --port="$PORT" --user=postgres --use-existing \
    --inputdir=tests/isolation --outputdir="$TMP/iso" --dbname=isolation_regression \
    $SPECS || { cat "$TMP/iso/regression.diffs"; status=1; }

say "upgrade test"
PGHOST="$TMP" PGPORT="$PORT" "$REPO_ROOT/tests/upgrade/run.sh" || status=1

if [ "${MESHHOOK_KEYS_ACCEPT:-0}" = 1 ]; then
    cp "$TMP"/out/results/*.out tests/pg_regress/expected/ 2>/dev/null || true
    cp "$TMP"/iso/results/*.out tests/isolation/expected/ 2>/dev/null || true
    say "copied results into expected/ (review the diff with git diff)"
fi
exit $status
