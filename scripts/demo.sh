#!/usr/bin/env bash
# The main job: set up this machine, build and install meshhook_keys, start a throwaway local
# PostgreSQL 15 cluster with the extension preloaded and a freshly generated root key, and run a
# short demo (encrypt for two tenants -> rotate -> both versions decrypt -> re-encrypt -> the
# background worker rotates and re-encrypts on a schedule -> keys and audit log).
# The cluster is left running; the script prints how to connect and how to stop it.
source "$(dirname "$0")/lib.sh"

DEMO_DIR=${MESHHOOK_KEYS_DEMO_DIR:-/tmp/meshhook_keys_demo}
DEMO_PORT=${MESHHOOK_KEYS_DEMO_PORT:-54329}
DB=meshhook_demo

"$REPO_ROOT/scripts/setup.sh"
install_extension

if [ -d "$DEMO_DIR/data" ]; then
    say "removing the previous demo cluster in $DEMO_DIR"
    stop_cluster "$DEMO_DIR" immediate
    rm -rf "$DEMO_DIR"
fi
say "creating a throwaway cluster in $DEMO_DIR (port $DEMO_PORT) with a new root key"
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
    connect:  psql -h $DEMO_DIR -p $DEMO_PORT -U postgres $DB
    log:      $DEMO_DIR/server.log
    stop it:  runuser -u postgres -- $PGBIN/pg_ctl -D $DEMO_DIR/data stop
    remove:   rm -rf $DEMO_DIR   (after stopping; this destroys the root key and so every secret)
MSG
