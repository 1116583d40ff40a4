#!/usr/bin/env bash
# pg_regress and pg_isolation_regress suites against a throwaway cluster, runnable as root
# (cargo pgrx regress cannot: it runs initdb as the caller). Expects the extension installed.
#
#   scripts/installcheck.sh                    # everything: every pg_regress file (twice, the
#                                              # second time with parallel query forced), every
#                                              # isolation spec, the upgrade test
#   scripts/installcheck.sh vault privileges   # setup, vault and privileges (both passes) only
#   scripts/installcheck.sh stale_snapshot     # that isolation spec only
#   scripts/installcheck.sh upgrade            # the upgrade test only
#
# Each NAME is a pg_regress file (tests/pg_regress/sql/NAME.sql; setup always runs first), an
# isolation spec (tests/isolation/specs/NAME.spec) or `upgrade`; a path or a .sql/.spec/.out
# suffix is accepted. Suites with no NAME of theirs are skipped. An unknown NAME fails before any
# cluster is made. MESHHOOK_KEYS_SPECS (specs to run when no NAME is given) and
# MESHHOOK_KEYS_ACCEPT=1 (copy the results into expected/; review git diff) work as before.
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,/^source/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# Sort the NAMEs into the suites, or refuse them all before anything starts.
RUN_ALL=1
RUN_REGRESS=0
TESTS=
SPECS=
RUN_UPGRADE=0
unknown=()
for arg in "$@"; do
    case $arg in -h | --help) usage; exit 0 ;; esac
    RUN_ALL=0
    name=$(basename "$arg")
    name=${name%.sql}; name=${name%.spec}; name=${name%.out}
    known=0
    if [ "$name" = upgrade ]; then RUN_UPGRADE=1; known=1; fi
    if [ -f "$REPO_ROOT/tests/pg_regress/sql/$name.sql" ]; then
        [ "$name" = setup ] || TESTS="$TESTS $name"
        RUN_REGRESS=1; known=1
    fi
    if [ -f "$REPO_ROOT/tests/isolation/specs/$name.spec" ]; then SPECS="$SPECS $name"; known=1; fi
    [ "$known" = 1 ] || unknown+=("$arg")
done
if [ "${#unknown[@]}" -gt 0 ]; then
    echo "installcheck.sh: unknown test name(s): ${unknown[*]}" >&2
    echo "  a NAME is a pg_regress file (tests/pg_regress/sql/NAME.sql), an isolation spec" >&2
    echo "  (tests/isolation/specs/NAME.spec) or 'upgrade'; ./scripts/installcheck.sh --help" >&2
    exit 2
fi
if [ "$RUN_ALL" = 1 ]; then
    TESTS=$(ls "$REPO_ROOT/tests/pg_regress/sql" | sed 's/\.sql$//' | grep -vx setup | sort)
    SPECS=${MESHHOOK_KEYS_SPECS:-$(ls "$REPO_ROOT/tests/isolation/specs" | sed "s/\.spec$//" | sort)}
    RUN_REGRESS=1; RUN_UPGRADE=1
fi

PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")/..
REGRESS=$PGXS_DIR/test/regress/pg_regress
ISOLATION=$PGXS_DIR/test/isolation/pg_isolation_regress
PORT=${MESHHOOK_KEYS_TEST_PORT:-25331}

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
if [ "$RUN_REGRESS" = 1 ]; then
    say "pg_regress: setup" $TESTS
    as_pg "$REGRESS" --bindir="$PGBIN" --host="$TMP" --port="$PORT" --user=postgres \
        --inputdir=tests/pg_regress --outputdir="$TMP/out" --dbname=contrib_regression \
        setup $TESTS || { cat "$TMP/out/regression.diffs"; status=1; }

    # The same suites again with every parallel-safe query forced into a parallel worker (PostgreSQL
    # 16 renamed the setting debug_parallel_query): decryption must give the same results there.
    install -d -o postgres -g postgres "$TMP/out_parallel"
    PARALLEL_GUC=force_parallel_mode; [ "$PG_MAJOR" -ge 16 ] && PARALLEL_GUC=debug_parallel_query
    say "pg_regress with $PARALLEL_GUC = regress"
    as_pg env PGOPTIONS="-c $PARALLEL_GUC=regress" "$REGRESS" --bindir="$PGBIN" --host="$TMP" --port="$PORT" --user=postgres \
        --inputdir=tests/pg_regress --outputdir="$TMP/out_parallel" --dbname=contrib_regression \
        setup $TESTS || { cat "$TMP/out_parallel/regression.diffs"; status=1; }
fi

if [ -n "$SPECS" ]; then
    say "pg_isolation_regress:" $SPECS
    as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE isolation_regression" \
        -c "ALTER DATABASE isolation_regression SET client_min_messages = warning"
    as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d isolation_regression -c "CREATE EXTENSION meshhook_keys"
    as_pg "$ISOLATION" --bindir="$PGBIN" --host="$TMP" --port="$PORT" --user=postgres --use-existing \
        --inputdir=tests/isolation --outputdir="$TMP/iso" --dbname=isolation_regression \
        $SPECS || { cat "$TMP/iso/regression.diffs"; status=1; }
fi

if [ "$RUN_UPGRADE" = 1 ]; then
    say "upgrade test"
    PGHOST="$TMP" PGPORT="$PORT" "$REPO_ROOT/tests/upgrade/run.sh" || status=1
fi

if [ "${MESHHOOK_KEYS_ACCEPT:-0}" = 1 ]; then
    cp "$TMP"/out/results/*.out tests/pg_regress/expected/ 2>/dev/null || true
    cp "$TMP"/iso/results/*.out tests/isolation/expected/ 2>/dev/null || true
    say "copied results into expected/ (review the diff with git diff)"
fi
exit $status
