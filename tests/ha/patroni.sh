#!/usr/bin/env bash
# High availability with real etcd and two Patroni nodes: no key version that sealed a ciphertext
# is lost by a failover.
#
# An application (a psql loop with a multi-host, read-write connection string, as an application
# would connect to a Patroni cluster) encrypts a secret every 50 ms and keeps every ciphertext it
# got back, client-side. Replication to the standby is frozen (the leader's walsender for it is
# SIGSTOPped: pg_stat_replication still lists the standby, with a stale replay_lsn), a key
# rotation is made on the leader, the application keeps encrypting, and the leader is killed
# (Patroni and PostgreSQL, kill -9). Patroni promotes the standby, and every kept ciphertext must
# decrypt there: a ciphertext sealed under a version that only the dead leader had is lost (42704,
# unknown key id).
#
# The defence (meshhook_keys.activate_after = 'standbys', the default): a new version stays
# 'pending' (keys_rotate returns activated_at NULL) until every connected standby has replayed it,
# so nothing is sealed under it while only the leader has it. With
# MESHHOOK_KEYS_HA_ACTIVATE_AFTER=commit (the old behaviour: active at commit) the same run must
# show the loss: that proves the test fails when the defence is removed. (With
# synchronous_standbys the asynchronous scenario, having no synchronous standby, expects the loss
# too, the synchronous one none.)
#
# Scenarios (each on a fresh Patroni cluster, one etcd for all; --list lists them):
#   async-rotation   asynchronous replication, a rotation made while replication is frozen
#   sync-cancel      Patroni synchronous_mode: the rotation waits for the synchronous standby, is
#                    cancelled (committed locally, with a WARNING), the application goes on
# Each also checks that the audit log's ids are not reused after the failover for other events
# than the ones the client saw on the old leader.
#
# Needs the Debian packages patroni and etcd-server (scripts/setup.sh). Every wait polls a
# condition with a deadline; everything (etcd, Patroni, PostgreSQL) is killed at exit.
#   tests/ha/patroni.sh [--list | SCENARIO...]
#   MESHHOOK_KEYS_HA_ACTIVATE_AFTER=commit tests/ha/patroni.sh    expects the loss
# Ports: PostgreSQL MESHHOOK_KEYS_HA_PORT (25471) and +1, Patroni REST MESHHOOK_KEYS_HA_REST_PORT
# (25811) and +1, etcd client MESHHOOK_KEYS_HA_ETCD_PORT (23791) and peer +10. KEEP=1 keeps the
# directory (Patroni, etcd and server logs).
source "$(dirname "$0")/../lib.sh"

ACTIVATE_AFTER=${MESHHOOK_KEYS_HA_ACTIVATE_AFTER:-}      # empty: the extension's default
PG_PORT=${MESHHOOK_KEYS_HA_PORT:-25471}
REST_PORT=${MESHHOOK_KEYS_HA_REST_PORT:-25811}
ETCD_PORT=${MESHHOOK_KEYS_HA_ETCD_PORT:-23791}
ETCD_PEER_PORT=$((ETCD_PORT + 10))
case $ACTIVATE_AFTER in
    ''|standbys|synchronous_standbys|commit) ;;
    *) echo "$0: MESHHOOK_KEYS_HA_ACTIVATE_AFTER must be standbys, synchronous_standbys or commit" >&2; exit 2 ;;
esac
# expect_loss_with SYNC: EXPECT_LOSS=1 when the setting does not wait for the standby that takes
# over: commit never waits, synchronous_standbys waits for none without synchronous replication
expect_loss_with() {
    case $ACTIVATE_AFTER:$1 in
        commit:*|synchronous_standbys:false) EXPECT_LOSS=1 ;;
        *) EXPECT_LOSS=0 ;;
    esac
}
for tool in patroni etcd curl; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (scripts/setup.sh installs it)" >&2; exit 2; }
done

scenario async-rotation "" "async replication: a rotation while replication is frozen, then a failover"
scenario sync-cancel "" "Patroni synchronous_mode: a rotation's cancelled sync wait, then a failover"
scenario_args "$@"

# ---- set-up: a directory owned by postgres, a root key, the EXIT trap -----------------------------
ensure_extension
for p in "$PG_PORT" $((PG_PORT + 1)) "$REST_PORT" $((REST_PORT + 1)) "$ETCD_PORT" "$ETCD_PEER_PORT"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then echo "$0: port $p is in use" >&2; exit 2; fi
done
TMP=$(mktemp -d /tmp/mk_ha.XXXXXX)
chown postgres:postgres "$TMP"
chmod 755 "$TMP"
KEY=$TMP/keys/root.key
make_root_key "$KEY"
PORT=$PG_PORT           # (tests/lib.sh's suite_cleanup stops a cluster in $TMP/data: there is none)
trap suite_cleanup EXIT
SCOPE=                  # the Patroni cluster of the current scenario (its directory is $TMP/$SCOPE)
declare -A SUMMARY=()

# ---- processes: each started with a pid file, killed by that pid ---------------------------------
# spawn PIDFILE LOG COMMAND...: start COMMAND as postgres in the background; PIDFILE gets its pid
# (the shell that writes it execs COMMAND)
spawn() {
    local pidfile=$1 log=$2; shift 2
    as_pg bash -c 'echo $$ > "$1"; shift; exec "$@"' spawn "$pidfile" "$@" >"$log" 2>&1 &
    wait_until 10 test -s "$pidfile"
}
pid_of() { [ -s "$1" ] && head -1 "$1"; }
# kill_postmaster DATADIR: stop the postmaster (so it forks no more), then kill -9 it and its children
kill_postmaster() {
    local pm
    pm=$(pid_of "$1/postmaster.pid" 2>/dev/null) || return 0
    kill -0 "$pm" 2>/dev/null || return 0
    kill -STOP "$pm" 2>/dev/null || true
    # shellcheck disable=SC2046
    kill -9 "$pm" $(ps -o pid= --ppid "$pm") 2>/dev/null || true
}
# kill_node N: kill -9 node N's Patroni (first, so that it cannot restart PostgreSQL), then its
# PostgreSQL, postmaster and children
kill_node() {
    local dir=$TMP/$SCOPE/node$1 pid
    pid=$(pid_of "$dir/patroni.pid") && kill -9 "$pid" 2>/dev/null || true
    kill_postmaster "$dir/data"
}
kill_all() {
    [ -n "${APP_PID:-}" ] && kill "$APP_PID" 2>/dev/null || true
    [ -n "$SCOPE" ] && { kill_node 1; kill_node 2; }
    local pid
    pid=$(pid_of "$TMP/etcd.pid") && kill -9 "$pid" 2>/dev/null || true
}
at_exit kill_all

# ---- clients --------------------------------------------------------------------------------------
pg_port() { echo $((PG_PORT + $1 - 1)); }
rest_port() { echo $((REST_PORT + $1 - 1)); }
# q N DB SQL [psql args]: one client call to node N (TCP), tuples only; stops at the first error
q() { as_pg psql -X -q -A -t -h 127.0.0.1 -p "$(pg_port "$1")" -U postgres -d "$2" -v ON_ERROR_STOP=1 "${@:4}" -c "$3"; }
# rest N PATH: the HTTP status of node N's Patroni REST API
rest() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$(rest_port "$1")$2" || true; }
is_leader() { [ "$(rest "$1" /leader)" = 200 ]; }
is_sync_member() { [ "$(rest "$1" /sync)" = 200 ]; }
other() { echo $((3 - $1)); }
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- etcd and Patroni -----------------------------------------------------------------------------
start_etcd() {
    install -d -o postgres -g postgres -m 700 "$TMP/etcd"
    spawn "$TMP/etcd.pid" "$TMP/etcd.log" etcd --name mk --data-dir "$TMP/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "mk=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new
    wait_until 20 curl -sf -m 2 "http://127.0.0.1:$ETCD_PORT/health" || { cat "$TMP/etcd.log" >&2; return 1; }
}

# patroni_config N SYNC: node N's Patroni configuration (SYNC: synchronous_mode true|false). The dcs
# part only matters for the node that bootstraps the cluster.
patroni_config() {
    local n=$1 sync=$2 dir=$TMP/$SCOPE/node$1
    cat <<YAML
scope: $SCOPE
namespace: /meshhook_keys_ha/
name: node$n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$(rest_port "$n")
  connect_address: 127.0.0.1:$(rest_port "$n")
etcd3:
  hosts: 127.0.0.1:$ETCD_PORT
watchdog:
  mode: off
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 67108864
    synchronous_mode: $sync
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        max_worker_processes: 16
        wal_sender_timeout: 0
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - no-locale
  pg_hba:
  - local all all trust
  - local replication all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$(pg_port "$n")
  connect_address: 127.0.0.1:$(pg_port "$n")
  data_dir: $dir/data
  bin_dir: $PGBIN
  pgpass: $dir/pgpass
  basebackup:                 # not a spread checkpoint: it takes minutes after CREATE DATABASE
  - checkpoint: fast
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    unix_socket_directories: '$dir'
    shared_preload_libraries: meshhook_keys
    meshhook_keys.root_key_file: '$KEY'
    meshhook_keys.database: app
    meshhook_keys.worker_naptime: 500ms
$( [ -n "$ACTIVATE_AFTER" ] && echo "    meshhook_keys.activate_after: $ACTIVATE_AFTER" )
    logging_collector: 'on'
    log_directory: $dir
    log_filename: postgresql.log
YAML
}

# start_node N SYNC: node N's Patroni (as postgres), in $TMP/$SCOPE/nodeN
start_node() {
    local dir=$TMP/$SCOPE/node$1
    install -d -o postgres -g postgres -m 700 "$dir"
    patroni_config "$1" "$2" > "$dir/patroni.yml"
    chown postgres:postgres "$dir/patroni.yml"
    spawn "$dir/patroni.pid" "$dir/patroni.log" patroni "$dir/patroni.yml"
}

# stream_state N: "state sync_state" of node N's replication as the leader (the other node) sees it
stream_state() { q "$(other "$1")" postgres "SELECT state || ' ' || sync_state FROM pg_stat_replication WHERE application_name = 'node$1'" 2>/dev/null; }
is_streaming() { [ "$(stream_state "$1" | cut -d' ' -f1)" = streaming ]; }
is_sync() { [ "$(stream_state "$1")" = "streaming sync" ]; }

# new_cluster SCOPE SYNC: a fresh Patroni cluster: node1 bootstraps it and leads, the database app
# gets the extension and the keyring app, node2 streams from it and has the keyring.
new_cluster() {
    SCOPE=$1
    install -d -o postgres -g postgres -m 755 "$TMP/$SCOPE"
    local t0; t0=$(now)
    start_node 1 "$2"
    if ! wait_until 60 is_leader 1 || ! wait_until 30 q 1 postgres "SELECT 1"; then
        fail "[$SCOPE] node1 bootstraps and leads"; tail -30 "$TMP/$SCOPE/node1/patroni.log" >&2; return 1
    fi
    q 1 postgres "CREATE DATABASE app"
    q 1 app "CREATE EXTENSION meshhook_keys; SELECT 1 FROM meshhook_keys.keyring_create('app')" >/dev/null
    start_node 2 "$2"
    if ! wait_until 90 is_streaming 2 \
        || ! wait_until 30 is_t q 2 app "SELECT EXISTS (SELECT 1 FROM meshhook_keys.keys WHERE keyring = 'app')"; then
        fail "[$SCOPE] node2 streams from node1 and has the keyring"; tail -30 "$TMP/$SCOPE/node2/patroni.log" >&2; return 1
    fi
    ok "[$SCOPE] node1 leads, node2 streams and has the keyring ($(secs_since "$t0") s)"
    if [ -n "$ACTIVATE_AFTER" ]; then
        check "[$SCOPE] meshhook_keys.activate_after is '$ACTIVATE_AFTER' on the leader" "$ACTIVATE_AFTER" \
            "$(q 1 app "SELECT current_setting('meshhook_keys.activate_after', true)")"
    fi
}

# ---- the harness ----------------------------------------------------------------------------------
# freeze_replication LEADER: SIGSTOP the leader's walsender for the standby: no more WAL leaves the
# leader, and pg_stat_replication still lists the standby (with a stale replay_lsn). Not the
# standby's walreceiver: its socket would still deliver the WAL after SIGCONT.
freeze_replication() {
    local pid
    pid=$(q "$1" postgres "SELECT pid FROM pg_stat_replication WHERE application_name = 'node$(other "$1")'")
    [ -n "$pid" ] || { fail "[$SCOPE] the leader has a walsender for node$(other "$1")"; return 1; }
    kill -STOP "$pid"
    echo "# replication frozen (walsender $pid stopped)"
}

# kill_leader N: kill -9 node N's Patroni and PostgreSQL, then wait until the other node leads and
# accepts writes. FAILOVER_SECS: from the kill to the first write accepted on the new primary.
kill_leader() {
    local new; new=$(other "$1")
    local t0; t0=$(now)
    kill_node "$1"
    echo "# node$1 killed (Patroni and PostgreSQL, kill -9); waiting for node$new to take over"
    if wait_until 60 is_t q "$new" postgres "SELECT NOT pg_is_in_recovery()" 2>/dev/null; then
        FAILOVER_SECS=$(secs_since "$t0")
        ok "[$SCOPE] node$new took over and accepts writes after $FAILOVER_SECS s"
    else
        FAILOVER_SECS=timeout
        fail "[$SCOPE] node$new took over within 60 s"; tail -20 "$TMP/$SCOPE/node$new/patroni.log" >&2
        return 1
    fi
    wait_until 20 is_leader "$new" || fail "[$SCOPE] node$new's Patroni holds the leader key"
}

# The application: every 50 ms, secret_encrypt('secret-<n>', 'ctx', 'app') on the current primary
# (libpq picks the read-write one of both nodes), one connection per call. Each ciphertext it gets
# back is kept in $APP_DIR/kept as "n port key_id hex"; a failed call (no primary, the kill) is
# counted in $APP_DIR/failed. secret_encrypt writes no WAL: with the synchronous standby frozen it
# does not wait (no synchronous_commit = local needed).
app_start() {
    APP_DIR=$TMP/$SCOPE/app
    install -d -o postgres -g postgres -m 755 "$APP_DIR"
    : > "$APP_DIR/kept"; : > "$APP_DIR/failed"; rm -f "$APP_DIR/stop"
    local conn="host=127.0.0.1,127.0.0.1 port=$(pg_port 1),$(pg_port 2) dbname=app user=postgres target_session_attrs=read-write connect_timeout=2"
    (
        n=0
        while [ ! -e "$APP_DIR/stop" ]; do
            n=$((n + 1))
            if out=$(as_pg psql -X -q -A -t -F ' ' -d "$conn" -v ON_ERROR_STOP=1 -c \
                "SELECT $n, inet_server_port(), meshhook_keys.ciphertext_key_id(c), encode(c, 'hex')
                   FROM (SELECT meshhook_keys.secret_encrypt('secret-$n', 'ctx', 'app') AS c) s" 2>/dev/null) && [ -n "$out" ]; then
                echo "$out" >> "$APP_DIR/kept"
            else
                echo "$n" >> "$APP_DIR/failed"
            fi
            sleep 0.05
        done
    ) &
    APP_PID=$!
}
app_stop() { touch "$APP_DIR/stop"; wait "$APP_PID" 2>/dev/null || true; }
kept() { wc -l < "$APP_DIR/kept"; }
# kept_on PORT: ciphertexts the application got from the server on PORT
kept_on() { awk -v p="$1" '$2 == p' "$APP_DIR/kept" | wc -l; }
# kept_under KEY_ID: ciphertexts sealed under that key id
kept_under() { awk -v k="$1" '$3 == k' "$APP_DIR/kept" | wc -l; }
# app_waits_for COUNT: the application has kept COUNT ciphertexts more than it had when called
app_waits_for() { local target=$(( $(kept) + $1 )); wait_until 30 app_has "$target"; }
app_has() { [ "$(kept)" -ge "$1" ]; }

# decrypt_kept N: decrypt every kept ciphertext on node N, each in its own subtransaction; prints
# "decrypted errors sqlstates" (sqlstates: each error code with its count)
decrypt_kept() {
    {
        echo "CREATE TEMP TABLE kept (n int, port int, key_id bigint, c text);"
        echo "COPY kept FROM STDIN WITH (DELIMITER ' ');"
        cat "$APP_DIR/kept"
        echo '\.'
        cat <<'SQL'
CREATE FUNCTION pg_temp.try_decrypt(c bytea) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN meshhook_keys.secret_decrypt(c, 'ctx');
EXCEPTION WHEN OTHERS THEN
    RETURN 'ERROR ' || SQLSTATE;
END $$;
WITH r AS (SELECT n, pg_temp.try_decrypt(decode(c, 'hex')) AS p FROM kept),
     e AS (SELECT p, count(*) AS k FROM r WHERE p LIKE 'ERROR %' GROUP BY p)
SELECT (SELECT count(*) FROM r WHERE p = 'secret-' || n),
       (SELECT count(*) FROM r WHERE p IS DISTINCT FROM 'secret-' || n),
       coalesce((SELECT string_agg(substr(p, 7) || 'x' || k, ',' ORDER BY p) FROM e), '-');
SQL
    } | as_pg psql -X -q -A -t -F ' ' -h 127.0.0.1 -p "$(pg_port "$1")" -U postgres -d app -v ON_ERROR_STOP=1
}

# audit_ids N: the audit log of node N as "id action epoch" lines
audit_ids() { q "$1" app "SELECT id || ' ' || action || ' ' || extract(epoch FROM at) FROM meshhook_keys.audit_log ORDER BY id"; }
# check_audit_ids SEEN AFTER: no id of AFTER (the new primary's log) names another event than the
# same id in SEEN (what the client saw on the old leader)
check_audit_ids() {
    local reused lost
    reused=$(awk 'NR == FNR { seen[$1] = $0; next } ($1 in seen) && seen[$1] != $0 { printf "%s%s (was: %s)", sep, $0, seen[$1]; sep = "; " }' "$1" "$2")
    lost=$(awk 'NR == FNR { have[$1] = 1; next } !($1 in have) { printf "%s%s %s", sep, $1, $2; sep = ", " }' "$2" "$1")
    [ -n "$lost" ] && echo "# audit rows the client saw on the old leader, missing on the new primary: $lost"
    if [ -z "$reused" ]; then ok "[$SCOPE] no audit id of the old leader names another event on the new primary"
    else fail "[$SCOPE] an audit id the client saw on the old leader names another event on the new primary" "$reused"; fi
}

# after_failover NEW ROTATED_KEY_ID SEEN: the checks on the new primary, and the scenario's summary
after_failover() {
    local new=$1 key_id=$2 seen=$3 res decrypted errors codes total
    app_waits_for 5 || fail "[$SCOPE] the application encrypts on the new primary"
    app_stop
    total=$(kept)
    echo "# the application kept $total ciphertexts ($(kept_on "$(pg_port "$(other "$new")")") from the old leader, $(kept_on "$(pg_port "$new")") from the new primary; $(kept_under "$key_id") under the rotated version; $(wc -l < "$APP_DIR/failed") calls failed during the failover)"
    res=$(decrypt_kept "$new")
    read -r decrypted errors codes <<<"$res"
    if [ "$EXPECT_LOSS" = 1 ]; then
        if [ "${errors:-0}" -gt 0 ]; then ok "[$SCOPE] activate_after = $ACTIVATE_AFTER: the failover lost ciphertexts ($errors of $total: $codes), as expected"
        else fail "[$SCOPE] activate_after = $ACTIVATE_AFTER: the failover should lose the ciphertexts sealed under the rotated version" "all $decrypted decrypted"; fi
    else
        check "[$SCOPE] every kept ciphertext decrypts on the new primary (errors: $codes)" "$total 0" "$decrypted $errors"
    fi
    q "$new" app "SELECT 1 FROM meshhook_keys.keys_rotate('app', 'after failover')" >/dev/null
    audit_ids "$new" > "$TMP/$SCOPE/audit-after"
    check_audit_ids "$seen" "$TMP/$SCOPE/audit-after"
    SUMMARY[$SCOPE]=$(printf '%-16s failover %5s s, kept %4s, decrypted %4s, errors %3s (%s)' \
        "$SCOPE" "$FAILOVER_SECS" "$total" "$decrypted" "$errors" "$codes")
}

# rotation_state LEADER KEY_ID: the state of that version on the leader
rotation_state() { q "$1" app "SELECT state FROM meshhook_keys.keys WHERE key_id = $2"; }
# check_rotation_inactive LEADER VERSION KEY_ID ACTIVATED_AT: the rotation made while replication
# was frozen is not active, or (EXPECT_LOSS) active at once
check_rotation_inactive() {
    local state; state=$(rotation_state "$1" "$3")
    if [ "$EXPECT_LOSS" = 1 ]; then
        check "[$SCOPE] activate_after = $ACTIVATE_AFTER: version $2 is active at once" "active" "$state"
    else
        check "[$SCOPE] version $2 made while replication is frozen is not active: keys_rotate returned activated_at NULL, state pending" \
            "|pending" "$4|$state"
        check "[$SCOPE] the application sealed nothing under it" 0 "$(kept_under "$3")"
    fi
}

teardown_cluster() { app_stop 2>/dev/null || true; kill_node 1; kill_node 2; }

# fail_over_after_rotation VERSION KEY_ID ACTIVATED_AT: the rotation made on node1 (the leader)
# while replication is frozen is checked, the audit ids the client sees are kept, node1 is killed,
# and node2 is checked; then the cluster goes
fail_over_after_rotation() {
    check_rotation_inactive 1 "$1" "$2" "$3"
    echo "# versions on the leader: $(q 1 app "SELECT string_agg(version || ':' || state, ' ' ORDER BY version) FROM meshhook_keys.keys WHERE keyring = 'app'")"
    audit_ids 1 > "$TMP/$SCOPE/audit-seen"
    kill_leader 1 || { teardown_cluster; return 0; }
    after_failover 2 "$2" "$TMP/$SCOPE/audit-seen"
    teardown_cluster
}

# ---- scenarios ------------------------------------------------------------------------------------
scenario_async_rotation() {
    echo "# async: a rotation while replication is frozen, the application encrypts on, the leader dies"
    expect_loss_with false
    new_cluster mk-async false || return 0
    app_start
    app_waits_for 10
    freeze_replication 1 || return 0
    local row version key_id activated_at
    row=$(q 1 app "SELECT version, key_id, coalesce(activated_at::text, '') FROM meshhook_keys.keys_rotate('app', 'lost')" -F ' ')
    read -r version key_id activated_at <<<"$row"
    echo "# keys_rotate on the leader: version $version, key_id $key_id, activated_at ${activated_at:-NULL}"
    app_waits_for 20
    check "[$SCOPE] the standby never received version $version (replication is frozen)" 0 \
        "$(q 2 app "SELECT count(*) FROM meshhook_keys.keys WHERE keyring = 'app' AND version = $version")"
    fail_over_after_rotation "$version" "$key_id" "$activated_at"
}

scenario_sync_cancel() {
    echo "# sync: Patroni synchronous_mode, the rotation's sync wait is cancelled, the leader dies"
    expect_loss_with true
    new_cluster mk-sync true || return 0
    if wait_until 30 is_sync 2; then ok "[$SCOPE] node2 is the synchronous standby"; else fail "[$SCOPE] node2 is the synchronous standby" "$(stream_state 2)"; fi
    if wait_until 20 is_sync_member 2; then ok "[$SCOPE] Patroni lists node2 as the synchronous standby"
    else fail "[$SCOPE] Patroni lists node2 as the synchronous standby"; fi
    app_start
    app_waits_for 10
    # (The scheduler flushes the application's encryption counts into data_key every naptime,
    # without waiting for the synchronous standby: otherwise that commit would hold the active
    # key's row while the standby is frozen, and keys_rotate would wait for it, not for the standby.)
    freeze_replication 1 || return 0
    local ticks; ticks=$(q 1 app "SELECT ticks FROM meshhook_keys.scheduler_status()")
    if wait_until 20 is_t q 1 app "SELECT ticks >= $ticks + 2 FROM meshhook_keys.scheduler_status()"; then
        ok "[$SCOPE] the scheduler keeps ticking (and flushing the counts) while the synchronous standby is frozen"
    else fail "[$SCOPE] the scheduler keeps ticking while the synchronous standby is frozen"; fi
    # keys_rotate in the background: its commit waits for the synchronous standby, which gets nothing
    local dir=$TMP/$SCOPE rot_pid pid
    as_pg env PGAPPNAME=mk_rotate psql -X -q -A -t -F ' ' -h 127.0.0.1 -p "$(pg_port 1)" -U postgres -d app -c \
        "SELECT version, key_id, coalesce(activated_at::text, '') FROM meshhook_keys.keys_rotate('app', 'lost in sync')" \
        >"$dir/rotate.out" 2>"$dir/rotate.err" &
    rot_pid=$!
    if wait_until 20 is_t q 1 postgres "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'mk_rotate' AND wait_event = 'SyncRep')"; then
        ok "[$SCOPE] keys_rotate waits for the synchronous standby"
    else
        fail "[$SCOPE] keys_rotate waits for the synchronous standby" \
            "$(q 1 postgres "SELECT a.wait_event_type || ':' || a.wait_event || ', blocked by: ' || coalesce(string_agg(b.backend_type || ' (' || b.wait_event_type || ':' || b.wait_event || ') ' || left(regexp_replace(b.query, '\s+', ' ', 'g'), 200), '; '), 'nothing')
                                FROM pg_stat_activity a LEFT JOIN pg_stat_activity b ON b.pid = ANY (pg_blocking_pids(a.pid))
                               WHERE a.application_name = 'mk_rotate' GROUP BY a.wait_event_type, a.wait_event")"
    fi
    pid=$(q 1 postgres "SELECT pid FROM pg_stat_activity WHERE application_name = 'mk_rotate'")
    [ -n "$pid" ] && q 1 postgres "SELECT pg_cancel_backend($pid)" >/dev/null
    wait_until 20 bash -c "! kill -0 $rot_pid 2>/dev/null" || true
    wait "$rot_pid" 2>/dev/null || true
    check_match "[$SCOPE] the cancelled wait: committed locally, with a WARNING" \
        'canceling wait for synchronous replication|committed locally' "$(cat "$dir/rotate.err")"
    local version key_id activated_at
    read -r version key_id activated_at < "$dir/rotate.out" || true
    echo "# keys_rotate on the leader: version ${version:-?}, key_id ${key_id:-?}, activated_at ${activated_at:-NULL}"
    if [ -z "$key_id" ]; then fail "[$SCOPE] keys_rotate returned its row" "$(cat "$dir/rotate.err")"; key_id=0; version=0; fi
    app_waits_for 20 || fail "[$SCOPE] the application encrypts while the synchronous standby is frozen"
    fail_over_after_rotation "$version" "$key_id" "$activated_at"
}

T0=$(now)
say "HA tests with etcd and Patroni (PostgreSQL $PG_MAJOR, activate_after ${ACTIVATE_AFTER:-default}, in $TMP)"
start_etcd
run_scenarios
echo
for s in mk-async mk-sync; do [ -n "${SUMMARY[$s]:-}" ] && echo "summary: ${SUMMARY[$s]}"; done
echo "wall time: $(secs_since "$T0") s"
suite_summary "HA (Patroni) tests${ACTIVATE_AFTER:+, activate_after = $ACTIVATE_AFTER}"
