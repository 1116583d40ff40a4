#!/usr/bin/env bash
# Benchmark meshhook_keys against a floor and pgcrypto on a throwaway cluster; see bench/README.md.
#
#   ./bench/run.sh            1,000,000 rows, 5 runs of each measurement
#   ./bench/run.sh --quick    100,000 rows, 3 runs
#   ./bench/run.sh --rows N --runs K [--pgp-rows M]
#   (M: rows for pgp_sym_encrypt with default options, which is slow; default min(N, 100000))
#
# Prints one markdown document on stdout (progress goes to stderr) and writes it to
# bench/results/latest.md and bench/results/<UTC timestamp>.md.
# Environment: MESHHOOK_KEYS_BENCH_SKIP_INSTALL=1 skips setup.sh and the build/install;
# MESHHOOK_KEYS_BENCH_PORT (default 25340); MESHHOOK_KEYS_BENCH_KEEP=1 keeps the work directory.
source "$(dirname "$0")/../scripts/lib.sh"

BENCH_DIR=$REPO_ROOT/bench
PORT=${MESHHOOK_KEYS_BENCH_PORT:-25340}
KEYRINGS=10000   # section 5: distinct data keys decrypted in one backend

log() { say "$@" >&2; }
die() { printf 'bench/run.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

rows=1000000 runs=5 quick=0 rows_set=0 runs_set=0 pgp_rows=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --rows) [ $# -ge 2 ] || die "--rows needs a number"; rows=$2; rows_set=1; shift ;;
        --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; runs_set=1; shift ;;
        --pgp-rows) [ $# -ge 2 ] || die "--pgp-rows needs a number"; pgp_rows=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    [ "$rows_set" = 1 ] || rows=100000
    [ "$runs_set" = 1 ] || runs=3
fi
[[ $rows =~ ^[0-9]+$ ]] && [ "$rows" -ge 1000 ] || die "--rows must be an integer >= 1000 (got '$rows')"
[[ $runs =~ ^[0-9]+$ ]] && [ "$runs" -ge 1 ] || die "--runs must be an integer >= 1 (got '$runs')"
# pgp_sym_encrypt with default options costs ~100 µs per row each way: at most 100,000 rows.
[ -n "$pgp_rows" ] || pgp_rows=$(( rows < 100000 ? rows : 100000 ))
[[ $pgp_rows =~ ^[0-9]+$ ]] && [ "$pgp_rows" -ge 100 ] && [ "$pgp_rows" -le "$rows" ] ||
    die "--pgp-rows must be an integer between 100 and --rows (got '$pgp_rows')"
[ "$(id -u)" = 0 ] || die "run as root (the cluster runs as the postgres OS user)"

if [ "${MESHHOOK_KEYS_BENCH_SKIP_INSTALL:-0}" != 1 ]; then
    "$REPO_ROOT/scripts/setup.sh" >&2
    install_extension >&2
fi
sharedir=$("$PG_CONFIG" --sharedir)
[ -f "$sharedir/extension/$EXT.control" ] ||
    die "$EXT is not installed in $sharedir (run without MESHHOOK_KEYS_BENCH_SKIP_INSTALL=1)"
[ -f "$sharedir/extension/pgcrypto.control" ] || die "pgcrypto is not installed (Debian package postgresql-15)"

started=$(date +%s)

# --- the throwaway cluster ---------------------------------------------------------------------
WORK=$(mktemp -d /tmp/meshhook_keys_bench.XXXXXX)
chmod 755 "$WORK"
PGDIR=$WORK/pg
cleanup() {
    local rc=$?
    if [ -d "$PGDIR/data" ]; then stop_cluster "$PGDIR" fast; fi
    if [ "$rc" != 0 ]; then
        echo "bench/run.sh: failed (exit $rc)" >&2
        if [ -f "$PGDIR/server.log" ]; then
            echo "--- last lines of the server log ($PGDIR/server.log) ---" >&2
            tail -n 20 "$PGDIR/server.log" >&2
        fi
    fi
    if [ "${MESHHOOK_KEYS_BENCH_KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "starting a throwaway cluster in $PGDIR (port $PORT) with a fresh root key"
make_root_key "$WORK/keys/root.key"
init_cluster "$PGDIR" "$PORT" \
    "meshhook_keys.root_key_file = '$WORK/keys/root.key'" \
    "shared_buffers = '512MB'" \
    "max_wal_size = '4GB'" \
    "meshhook_keys.worker_enabled = off" "meshhook_keys.database = 'bench'" \
    "meshhook_keys.max_tracked_keys = $((KEYRINGS + 4096))" \
    "log_lock_waits = on" "deadlock_timeout = '100ms'"
start_cluster "$PGDIR" || die "the cluster did not start"

psql_pg() { as_pg psql -X -q -h "$PGDIR" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_bench() { psql_pg -d bench "$@"; }
psql_pg -d postgres -c "CREATE DATABASE bench"
psql_bench < "$BENCH_DIR/setup.sql"

# Run a psql script (stdin) in one session and store its \timing results in bench_timing, one row
# per "Time:" line. Each timed statement prints one row whose first column is its name
# (SELECT 'floor', sum(...)). RUN is a run number, or "seq" to number a name's statements 1, 2, ...
TIMINGS=$WORK/timings.tsv
timed_session() {
    local section=$1 run=$2
    psql_bench -At | awk -F'|' -v s="$section" -v r="$run" '
        /^Time: / { split($0, w, " "); print s "\t" name "\t" (r == "seq" ? ++n[name] : r) "\t" w[2]; next }
        { name = $1 }' > "$TIMINGS"
    [ -s "$TIMINGS" ] || die "no timings captured for $section run $run"
    psql_bench -c "COPY bench_timing FROM STDIN" < "$TIMINGS"
}

# Section 4: a checkpoint, one warm-up rotation of `default`, then ROT_RUNS timed ones, each its own
# transaction. A rotation takes under a millisecond, mostly the commit's fsync, so a handful of
# samples is too noisy: take at least 25 (cheap), or --runs if that is more.
ROT_RUNS=$(( runs > 25 ? runs : 25 ))
time_rotations() {
    local label=$1 i
    psql_bench -c "CHECKPOINT"
    {
        echo "SELECT 'warm-up', version FROM meshhook_keys.keys_rotate('default', 'bench warm-up');"
        echo '\timing on'
        for i in $(seq "$ROT_RUNS"); do
            echo "SELECT '$label', version FROM meshhook_keys.keys_rotate('default', 'bench');"
        done
    } | timed_session rotate seq
}

thousands() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }

log "section 4: rotating with 1,000 stored secrets"
time_rotations "1,000"

# --- section 1 ---------------------------------------------------------------------------------
log "section 1: loading $rows rows (pgp default options on $pgp_rows of them)"
pass=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
key_hex=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
psql_bench -v rows="$rows" -v pgp_rows="$pgp_rows" -v pass="$pass" -v key_hex="$key_hex" < "$BENCH_DIR/load.sql"

# One script per run: warm every query up on 1,000 rows, then time each over the whole table.
RUN_SQL=$WORK/percall.sql
{
    echo "SET jit = off;"
    echo "SET max_parallel_workers_per_gather = 0;"
    psql_bench -At -c "SELECT format('SELECT %L, sum(%s) FROM (SELECT * FROM %I LIMIT 1000) AS warm_up;', name, expr, tbl) FROM bench_query ORDER BY ord"
    echo '\timing on'
    psql_bench -At -c "SELECT format('SELECT %L, sum(%s) FROM %I;', name, expr, tbl) FROM bench_query ORDER BY ord"
} > "$RUN_SQL"

log "section 1: pre-warm pass (run 0, not counted)"
timed_session percall 0 < "$RUN_SQL"
for run in $(seq "$runs"); do
    log "section 1: run $run of $runs"
    timed_session percall "$run" < "$RUN_SQL"
done

# --- section 1b --------------------------------------------------------------------------------
# The same decrypt scan on one core and with 2 parallel workers (plus the leader), floor alike; the
# cost model is told to use them (setup and tuple costs 0), each run in a session of its own.
PAR_SQL=$WORK/parallel.sql
{
    echo "SET jit = off;"
    echo "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;"
    echo "ALTER TABLE t SET (parallel_workers = 2);"
    echo "SET max_parallel_workers_per_gather = 2;"
    echo "SELECT 'warm-up', sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM (SELECT c FROM t LIMIT 1000) AS w;"
    echo "SET max_parallel_workers_per_gather = 0;"
    echo '\timing on'
    echo "SELECT 'floor, 1 core', sum(octet_length(c)) FROM t;"
    echo "SELECT 'secret_decrypt, 1 core', sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM t;"
    echo '\timing off'
    echo "SET max_parallel_workers_per_gather = 2;"
    echo '\timing on'
    echo "SELECT 'floor, 2 workers', sum(octet_length(c)) FROM t;"
    echo "SELECT 'secret_decrypt, 2 workers', sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM t;"
} > "$PAR_SQL"
for run in $(seq "$runs"); do
    log "section 1b: parallel decryption, run $run of $runs"
    timed_session parallel "$run" < "$PAR_SQL"
done

# --- section 2 ---------------------------------------------------------------------------------
log "section 2: loading $rows rows for re-encryption"
k1=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n'); k2=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
iv=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
psql_bench -v rows="$rows" -v k1="$k1" -v k2="$k2" -v iv="$iv" < "$BENCH_DIR/reencrypt_load.sql"
# One timed rewrite: vacuum and checkpoint first (so every method starts from the same state), time
# the statement alone, record the WAL it wrote.
rewrite_step() {  # NAME RUN SETUP_SQL STATEMENT
    printf '%s\n' '\timing off' "$3" 'VACUUM r; VACUUM r_floor; VACUUM r_pgc;' 'CHECKPOINT;' \
        'SELECT pg_current_wal_insert_lsn() AS lsn \gset' "SELECT '$1';" '\timing on' "$4" '\timing off' \
        "INSERT INTO bench_wal VALUES ('$1', $2, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'lsn'));"
}
rotate="SELECT 1 FROM meshhook_keys.keys_rotate('reenc', 'bench run') \g /dev/null"
for run in $(seq "$runs"); do
    log "section 2: run $run of $runs"
    if [ $((run % 2)) = 1 ]; then from=$k1 to=$k2; else from=$k2 to=$k1; fi
    {
        rewrite_step "floor: plain UPDATE rewriting every row" "$run" "" "UPDATE r_floor SET c = c || ''::bytea;"
        rewrite_step "meshhook_keys CALL reencrypt, batch 1000 (default)" "$run" "$rotate" "CALL meshhook_keys.reencrypt('reenc', 1000);"
        rewrite_step "meshhook_keys CALL reencrypt, batch 10000" "$run" "$rotate" "CALL meshhook_keys.reencrypt('reenc', 10000);"
        rewrite_step "pgcrypto one-statement rewrap (raw AES)" "$run" "" \
            "UPDATE r_pgc SET c = encrypt_iv(decrypt_iv(c, decode('$from', 'hex'), decode('$iv', 'hex'), 'aes-cbc/pad:pkcs'), decode('$to', 'hex'), decode('$iv', 'hex'), 'aes-cbc/pad:pkcs');"
    } | timed_session reencrypt "$run"
done
check=$(psql_bench -At -c "SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) IS NOT NULL) = $rows AND (SELECT count(*) FROM meshhook_keys.key_usage('reenc')) = 1 FROM r")
[ "$check" = t ] || die "section 2: after re-encryption not every row decrypts on the newest key"

# Section 2b: one batch costs the same at the start and at the end of a large table, and in a small
# table: batches read a window of blocks behind a cursor, they never rescan the table.
log "section 2b: cost of one re-encryption batch vs table size and position"
psql_bench -q <<'SQL'
SELECT 1 FROM meshhook_keys.keys_rotate('small', 'bench') \g /dev/null
CREATE TABLE r_small (id int PRIMARY KEY, c bytea NOT NULL);
INSERT INTO r_small SELECT i, meshhook_keys.secret_encrypt(encode(gen_random_bytes(50), 'hex'), 'r:' || i, 'small')
  FROM generate_series(1, 10000) i;
SELECT 1 FROM meshhook_keys.register_column('r_small', 'c', $$'r:' || id$$, 'small') \g /dev/null
SELECT 1 FROM meshhook_keys.keys_rotate('small', 'bench') \g /dev/null
SELECT 1 FROM meshhook_keys.keys_rotate('reenc', 'bench 2b') \g /dev/null
VACUUM (ANALYZE) r, r_small;
CHECKPOINT;
SQL
batches=$(( rows / 1000 ))
{
    echo "SELECT 'warm-up', meshhook_keys.reencrypt_batch('small', 1000);"
    echo '\timing on'
    for i in $(seq 8); do echo "SELECT 'small table (10,000 rows)', meshhook_keys.reencrypt_batch('small', 1000);"; done
    for i in $(seq 8); do echo "SELECT 'large table, first batches', meshhook_keys.reencrypt_batch('reenc', 1000);"; done
    echo '\timing off'
    # skip to the last part of the large table
    echo "SELECT 'skip', count(meshhook_keys.reencrypt_batch('reenc', 1000)) FROM generate_series(1, $(( batches - 30 )));"
    echo '\timing on'
    for i in $(seq 8); do echo "SELECT 'large table, last batches', meshhook_keys.reencrypt_batch('reenc', 1000);"; done
} | timed_session batchcost seq

# --- section 3 ---------------------------------------------------------------------------------
# The application (bench/app.pgbench: read + decrypt one random secret, encrypt + update another) at
# 4 clients, alone, then while re-encryption runs in the background, then while a one-statement
# pgcrypto rewrap runs. Per run and scenario: TPS, latency percentiles from pgbench's per-transaction
# log, and the lock waits longer than deadlock_timeout (100 ms) that the server logged meanwhile.
APP_SECS=${MESHHOOK_KEYS_BENCH_APP_SECONDS:-$([ "$quick" = 1 ] && echo 6 || echo 20)}
APP_RUNS=$(( runs < 3 ? runs : 3 ))
[ "$quick" = 1 ] && APP_RUNS=$(( APP_RUNS < 2 ? APP_RUNS : 2 ))
log "section 3: loading $(thousands "$rows") application secrets"
psql_bench -v rows="$rows" -v k1="$k1" -v iv="$iv" < "$BENCH_DIR/app_load.sql"
BG_REENCRYPT="DO \$\$ BEGIN LOOP
    IF meshhook_keys.reencrypt_batch('app', 1000) IS NULL THEN
        PERFORM meshhook_keys.keys_rotate('app', 'bench: keep re-encrypting');
    END IF;
    COMMIT;
    PERFORM pg_sleep(0.01);
END LOOP; END \$\$;"
# The scheduler's actual defaults: a tick of at most 100 batches of 1000 rows, 10 ms apart, every
# minute (meshhook_keys.worker_naptime = 1min, reencrypt_batches_per_tick = 100).
BG_SCHEDULER="DO \$\$ DECLARE t0 timestamptz; BEGIN LOOP
    t0 := clock_timestamp();
    FOR i IN 1..100 LOOP
        IF meshhook_keys.reencrypt_batch('app', 1000) IS NULL THEN
            PERFORM meshhook_keys.keys_rotate('app', 'bench: keep re-encrypting');
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.01);
    END LOOP;
    PERFORM pg_sleep(greatest(0, 60 - extract(epoch FROM clock_timestamp() - t0)));
END LOOP; END \$\$;"
BG_PGCRYPTO="DO \$\$ BEGIN LOOP
    UPDATE a SET p = encrypt_iv(decrypt_iv(p, decode(CASE pk WHEN 1 THEN '$k1' ELSE '$k2' END, 'hex'), decode('$iv', 'hex'), 'aes-cbc/pad:pkcs'),
                                decode(CASE pk WHEN 1 THEN '$k2' ELSE '$k1' END, 'hex'), decode('$iv', 'hex'), 'aes-cbc/pad:pkcs'),
                 pk = 3 - pk;
    COMMIT;
END LOOP; END \$\$;"
# The real scheduler re-encrypting the whole time, paced (meshhook_keys.reencrypt_busy_share): a
# tick every second, and a rotation whenever the keyring's job is done.
scheduler_set() {  # on|off
    psql_pg -d postgres -c "ALTER SYSTEM SET meshhook_keys.worker_enabled = $1" \
        -c "ALTER SYSTEM SET meshhook_keys.worker_naptime = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
}
# The rotations come from one psql session fed a statement at a time while FLAG exists (idle in
# between: a session sleeping in pg_sleep would count as a running statement and pace the scheduler
# by itself), not from a new connection each time: on a 2-core machine, connecting twice a second
# alone raised the application's p99 1.5x (bench/README.md).
feed() {  # FLAG SECONDS SQL: SQL every SECONDS while FLAG exists
    while [ -f "$1" ]; do echo "$3"; sleep "$2"; done
}
scheduler_rotator() {  # FLAG
    feed "$1" 0.5 "SELECT 1 FROM meshhook_keys.keys_rotate('app', 'bench: keep re-encrypting')
                    WHERE NOT EXISTS (SELECT 1 FROM meshhook_keys.reencrypt_progress
                                       WHERE keyring = 'app' AND job_state = 'running');" |
        psql_bench -v ON_ERROR_STOP=0 -At >/dev/null 2>&1 || true
}
# Section 3c: a rotation every second, whether or not the job is done ('ok' per rotation in FILE,
# the errors of failed ones in FILE.err).
rotate_every_second() {  # FLAG FILE
    feed "$1" 1 "SELECT 'ok' FROM meshhook_keys.keys_rotate('app', 'bench: a rotation every second');" |
        psql_bench -v ON_ERROR_STOP=0 -At > "$2" 2> "$2.err" || true
}
BG_REENCRYPT_ONLY="DO \$\$ BEGIN LOOP
    PERFORM meshhook_keys.reencrypt_batch('app', 1000);
    COMMIT;
    PERFORM pg_sleep(0.01);
END LOOP; END \$\$;"
start_background() {  # SQL: a session running SQL until stop_background
    PGAPPNAME=bench_background psql_bench -c "$1" >/dev/null 2>&1 &
    bgpid=$!
}
stop_background() {  # SCENARIO RUN
    # the background job must still be running: one that failed early would make the scenario quiet
    [ "$(psql_pg -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bench_background'")" = 1 ] ||
        die "section 3: the background job of '$1' was not running at the end of run $2"
    psql_pg -d postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_background'" >/dev/null
    wait "$bgpid" 2>/dev/null || true
}
stop_scheduler() {  # SCENARIO RUN
    scheduler_set off
    # the scheduler must have been re-encrypting (and paced) during the run
    [ "$(psql_bench -At -c "SELECT count(*) > 0 FROM meshhook_keys.reencrypt_progress WHERE keyring = 'app' AND rows_done > 0")" = t ] ||
        die "section 3: the scheduler did not re-encrypt during '$1', run $2"
    # the scheduler finishes its tick (at most 100 batches, paced: on a slow machine a pause
    # between two of them can outlast any quiet window): wait until it is no longer ticking, then
    # until no row moves for 2 s
    local last= now i
    for i in $(seq 300); do
        [ "$(psql_bench -At -c "SELECT count(*) FROM meshhook_keys.scheduler_status() WHERE state = 'ticking'")" = 0 ] && break
        sleep 1
    done
    for i in $(seq 30); do
        now=$(rows_reencrypted)
        [ "$now" = "$last" ] && [ "$i" -gt 2 ] && break
        last=$now
        sleep 1
    done
}
rows_reencrypted() { psql_bench -At -c "SELECT coalesce(sum(rows_done), 0) FROM meshhook_keys.reencrypt_progress WHERE keyring = 'app'"; }
logged() { grep -c "$1" "$PGDIR/server.log" || true; }
# One scenario: the application at CLIENTS clients (default 4) for APP_SECS seconds, with in the
# background: nothing; SQL run in a session of its own; "scheduler" (the paced scheduler, rotating
# whenever the job is done); "rotating" (a rotation every second and BG_REENCRYPT_ONLY); or
# "rotating-scheduler" (a rotation every second and the paced scheduler). Errors: the ERRORs the
# server logged meanwhile, pgbench's failed transactions and aborted clients, and failed rotations.
app_run() {  # SCENARIO RUN [BACKGROUND_SQL | scheduler | rotating | rotating-scheduler]
    local scenario=$1 run=$2 bg=${3:-} clients=${CLIENTS:-4} dir bgpid= rotpid= rc=0
    local waits0 errors0 dl0 moved0 tps lat failed aborted rotations=0 rot_failed=0
    dir=$WORK/app.$clients.$run.$(echo "$scenario" | tr -c 'a-z0-9' '_')
    psql_bench -c "VACUUM a" -c "CHECKPOINT" >/dev/null
    install -d -o postgres -g postgres "$dir"
    waits0=$(logged 'still waiting for') errors0=$(logged 'ERROR:') dl0=$(logged 'deadlock detected')
    moved0=$(rows_reencrypted)
    case $bg in
        '') ;;
        scheduler) scheduler_set on; touch "$dir/rotating"; scheduler_rotator "$dir/rotating" & rotpid=$! ;;
        rotating) start_background "$BG_REENCRYPT_ONLY"; touch "$dir/rotating"
            rotate_every_second "$dir/rotating" "$dir/rotations" & rotpid=$! ;;
        rotating-scheduler) scheduler_set on; touch "$dir/rotating"
            rotate_every_second "$dir/rotating" "$dir/rotations" & rotpid=$! ;;
        *) start_background "$bg" ;;
    esac
    # let the background job get going (the scheduler: its first tick, naptime 1 s) before measuring
    case $bg in '') ;; *scheduler) sleep 2 ;; *) sleep 1 ;; esac
    (cd "$dir" && as_pg pgbench -h "$PGDIR" -p "$PORT" -U postgres -n -c "$clients" -j 2 -T "$APP_SECS" -M prepared \
        -D rows="$rows" -f "$BENCH_DIR/app.pgbench" --log --log-prefix="$dir/tx" bench > "$dir/out.txt" 2>&1) || rc=$?
    if [ -n "$rotpid" ]; then
        rm -f "$dir/rotating"   # the feed stops within a second; its psql session ends
        wait "$rotpid" 2>/dev/null || true
    fi
    case $bg in
        '') ;;
        *scheduler) stop_scheduler "$scenario" "$run" ;;
        *) stop_background "$scenario" "$run" ;;
    esac
    if [ -f "$dir/rotations" ]; then
        rotations=$(grep -c '^ok' "$dir/rotations" || true)
        rot_failed=$(grep -c 'ERROR:' "$dir/rotations.err" || true)
        [ "$rotations" -gt 0 ] || die "section 3: no rotation succeeded during '$scenario', run $run"
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$dir/out.txt" | head -n 1)
    [ -n "$tps" ] || { cat "$dir/out.txt" >&2; die "section 3: no TPS in pgbench output ($scenario, run $run, exit $rc)"; }
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$dir/out.txt" | head -n 1)
    aborted=$(grep -c 'aborted' "$dir/out.txt" || true)
    # per-transaction latency in µs is the third field of pgbench's log
    lat=$(cat "$dir"/tx* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 } END {
        p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
        printf "%.3f,%.3f,%.3f", p50 / 1000, p99 / 1000, v[NR] / 1000 }')
    psql_bench -c "INSERT INTO bench_app VALUES ('$scenario', $run, $tps, $lat, $(( $(logged 'still waiting for') - waits0 )), NULL,
                   $clients, $(( $(logged 'ERROR:') - errors0 + ${failed:-0} + aborted + rot_failed )),
                   $(( $(logged 'deadlock detected') - dl0 )), $rotations, $(( $(rows_reencrypted) - moved0 )))"
}
for run in $(seq "$APP_RUNS"); do
    log "section 3: run $run of $APP_RUNS (${APP_SECS} s per scenario)"
    app_run "quiet" "$run"
    app_run "during re-encryption, scheduler defaults" "$run" "$BG_SCHEDULER"
    app_run "during continuous re-encryption" "$run" "$BG_REENCRYPT"
    app_run "during one-statement pgcrypto rewrap" "$run" "$BG_PGCRYPTO"
    app_run "during continuous re-encryption by the scheduler (paced)" "$run" scheduler
done
# --- section 3c --------------------------------------------------------------------------------
# Eight application clients while the key is rotated every second (a shell loop, one keys_rotate a
# second, each its own session and transaction, superseding the running job), and rows are
# re-encrypted the whole time: by a loop of batches of 1000, 10 ms apart, or by the paced scheduler;
# against the same eight clients alone, in the same run.
for run in $(seq "$APP_RUNS"); do
    log "section 3c: run $run of $APP_RUNS (${APP_SECS} s per scenario, 8 clients)"
    CLIENTS=8 app_run "8 clients alone" "$run"
    CLIENTS=8 app_run "8 clients, a rotation every second + continuous re-encryption" "$run" rotating
    CLIENTS=8 app_run "8 clients, a rotation every second + the scheduler re-encrypting (paced)" "$run" rotating-scheduler
done
check=$(psql_bench -At -c "SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'a:' || id) IS NOT NULL) = $rows FROM a")
[ "$check" = t ] || die "section 3: not every application secret decrypts afterwards"

large=$(( rows + 1000 ))
large_label=$(thousands "$large")
log "section 4: rotating with $large_label stored secrets"
time_rotations "$large_label"

# --- section 5 ---------------------------------------------------------------------------------
log "section 5: $KEYRINGS keyrings, one backend decrypting under each"
psql_bench -v keyrings="$KEYRINGS" < "$BENCH_DIR/memory.sql"

# --- section 4b --------------------------------------------------------------------------------
# root_key_rewrap once the 10,000 keyrings of section 5 exist: twice, each time to a new root key.
nkeys=$(psql_bench -At -c "SELECT count(*) FROM meshhook_keys.data_key WHERE wrapped_key IS NOT NULL")
log "section 4b: root_key_rewrap of $(thousands "$nkeys") data keys"
current=$WORK/keys/root.key
for i in 1 2; do
    make_root_key "$WORK/keys/root$i.key"
    psql_pg -d postgres -c "ALTER SYSTEM SET meshhook_keys.root_key_previous_file = '$current'" >/dev/null
    psql_pg -d postgres -c "ALTER SYSTEM SET meshhook_keys.root_key_file = '$WORK/keys/root$i.key'" >/dev/null
    psql_pg -d postgres -c "SELECT pg_reload_conf()" >/dev/null
    printf '%s\n' '\timing on' "SELECT 'root_key_rewrap', rewrapped FROM meshhook_keys.root_key_rewrap();" |
        timed_session rewrap seq
    current=$WORK/keys/root$i.key
done
[ "$(psql_bench -At -c "SELECT count(*) FROM meshhook_keys.audit_log WHERE action = 'root_rewrap' AND (detail->>'rewrapped')::int = $nkeys")" = 2 ] ||
    die "section 4b: root_key_rewrap did not rewrap every data key twice"

# --- report ------------------------------------------------------------------------------------
log "writing the report"
pg_version=$(psql_bench -At -c "SHOW server_version")
ext_version=$(psql_bench -At -c "SELECT extversion FROM pg_extension WHERE extname = '$EXT'")
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
elapsed=$(( $(date +%s) - started ))
mkdir -p "$BENCH_DIR/results"
REPORT=$WORK/report.md
{
    echo "# meshhook_keys benchmark"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| Date | $(date -u '+%Y-%m-%d %H:%M:%S UTC') |"
    echo "| Machine | $(uname -m), ${cpu:-unknown CPU}, $(nproc) cores |"
    echo "| PostgreSQL | $pg_version, meshhook_keys $ext_version |"
    echo "| Rows | $(thousands "$rows") (pgp default options: $(thousands "$pgp_rows")) |"
    echo "| Runs | $runs per section 1 query, $ROT_RUNS rotations per section 4 line (median, min – max) |"
    echo "| Cluster | fresh, durable defaults (fsync and synchronous_commit on), shared_buffers 512MB, max_wal_size 4GB |"
    echo "| Benchmark time | $((elapsed / 60)) min $((elapsed % 60)) s (cluster start to report, build excluded) |"
    echo
    echo "Ratios against the floor measured in the same run are the numbers to compare; absolute"
    echo "times depend on this machine and are noisy (see bench/README.md)."
    echo
    psql_bench -At -v runs="$runs" -v rot_runs="$ROT_RUNS" -v pgp_label="$(thousands "$pgp_rows")" \
        -v keyrings_label="$(thousands "$KEYRINGS")" \
        -v large_label="$large_label" -v rows="$rows" -v app_secs="$APP_SECS" -v app_runs="$APP_RUNS" \
        -v nkeys="$nkeys" -v cores="$(nproc)" \
        < "$BENCH_DIR/report.sql"
} > "$REPORT"
cp "$REPORT" "$BENCH_DIR/results/$stamp.md"
cp "$REPORT" "$BENCH_DIR/results/latest.md"
cat "$REPORT"
log "done in $((elapsed / 60)) min $((elapsed % 60)) s; written to bench/results/latest.md and bench/results/$stamp.md"
