#!/usr/bin/env bash
# What pacing costs and buys (issue 27): the application of section 3 (bench/app.pgbench, 4 clients)
# alone, and while the real scheduler re-encrypts the whole time at several busy shares
# (meshhook_keys.reencrypt_busy_share), interleaved in each run so that every ratio is against the
# application alone measured minutes before. Uses the extension already installed for PG_MAJOR
# (scripts/lib.sh; `./bench/run.sh` or `cargo pgrx install --release` first).
#
#   ./bench/pacing.sh [--rows N] [--seconds S] [--runs K] [--shares "0.1 0.05 0.02"]
#
# Prints a markdown document and writes it to bench/results/pacing.md.
# Environment: MESHHOOK_KEYS_PACING_PORT (default 25342).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
BENCH_DIR=$REPO_ROOT/bench
PORT=${MESHHOOK_KEYS_PACING_PORT:-25342}
rows=300000 secs=20 runs=3 shares="0.1 0.05 0.02"
die() { printf 'bench/pacing.sh: error: %s\n' "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
        --rows) rows=$2; shift ;;
        --seconds) secs=$2; shift ;;
        --runs) runs=$2; shift ;;
        --shares) shares=$2; shift ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[[ $rows =~ ^[0-9]+$ && $secs =~ ^[0-9]+$ && $runs =~ ^[0-9]+$ ]] || die "--rows, --seconds and --runs take integers"
for s in $shares; do [[ $s =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "a share is a number in (0, 1], not '$s'"; done
[ "$(id -u)" = 0 ] || die "run as root (the cluster runs as the postgres OS user)"

WORK=$(mktemp -d /tmp/meshhook_keys_pacing.XXXXXX)
chmod 755 "$WORK"
PGDIR=$WORK/pg
trap 'stop_cluster "$PGDIR"; rm -rf "$WORK"' EXIT
make_root_key "$WORK/keys/root.key"
init_cluster "$PGDIR" "$PORT" "meshhook_keys.root_key_file = '$WORK/keys/root.key'" \
    "shared_buffers = '512MB'" "max_wal_size = '4GB'" "meshhook_keys.worker_enabled = off" \
    "meshhook_keys.database = 'bench'" "meshhook_keys.worker_naptime = '1s'"
start_cluster "$PGDIR" || die "the cluster did not start"
psql_pg() { as_pg psql -X -q -h "$PGDIR" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_pg -d postgres -c "CREATE DATABASE bench"
psql_pg -d bench -c "CREATE EXTENSION meshhook_keys" -c "CREATE EXTENSION pgcrypto"
psql_pg -d bench -v rows="$rows" -v k1="$(openssl rand -hex 32)" -v iv="$(openssl rand -hex 16)" < "$BENCH_DIR/app_load.sql"
psql_pg -d bench -c "CREATE TABLE pacing (share float8, run int, tps float8, p99_ms float8, moved bigint)"

settings() {  # SQL...: ALTER SYSTEM statements, then a reload
    local a=()
    for s in "$@"; do a+=(-c "$s"); done
    psql_pg -d postgres "${a[@]}" -c "SELECT pg_reload_conf()" >/dev/null
}
moved() { psql_pg -d bench -At -c "SELECT coalesce(sum(rows_done), 0) FROM meshhook_keys.reencrypt_progress WHERE keyring = 'app'"; }
# A rotation whenever the job is done, from one session fed a statement at a time (see run.sh).
rotator() {  # FLAG
    while [ -f "$1" ]; do
        echo "SELECT 1 FROM meshhook_keys.keys_rotate('app', 'bench: keep re-encrypting')
               WHERE NOT EXISTS (SELECT 1 FROM meshhook_keys.reencrypt_progress
                                  WHERE keyring = 'app' AND job_state = 'running');"
        sleep 0.5
    done | psql_pg -d bench -v ON_ERROR_STOP=0 -At >/dev/null 2>&1 || true
}
app() {  # SHARE RUN (SHARE 0: alone)
    local d=$WORK/app.$1.$2 tps p99 m0 m1
    install -d -o postgres -g postgres "$d"
    psql_pg -d bench -c "VACUUM a" -c "CHECKPOINT" >/dev/null
    m0=$(moved)
    (cd "$d" && as_pg pgbench -h "$PGDIR" -p "$PORT" -U postgres -n -c 4 -j 2 -T "$secs" -M prepared \
        -D rows="$rows" -f "$BENCH_DIR/app.pgbench" --log --log-prefix="$d/tx" bench > "$d/out.txt" 2>&1) ||
        { cat "$d/out.txt" >&2; die "pgbench failed"; }
    m1=$(moved)
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$d/out.txt" | head -n 1)
    p99=$(cat "$d"/tx* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", v[i] / 1000 }')
    psql_pg -d bench -c "INSERT INTO pacing VALUES ($1, $2, $tps, $p99, $(( m1 - m0 )))"
}
for run in $(seq "$runs"); do
    echo "bench/pacing.sh: run $run of $runs" >&2
    app 0 "$run"
    for share in $shares; do
        settings "ALTER SYSTEM SET meshhook_keys.reencrypt_busy_share = $share" \
                 "ALTER SYSTEM SET meshhook_keys.worker_enabled = on"
        touch "$WORK/rotating"; rotator "$WORK/rotating" & rot=$!
        sleep 2   # the first tick
        app "$share" "$run"
        rm -f "$WORK/rotating"; wait "$rot" || true
        settings "ALTER SYSTEM SET meshhook_keys.worker_enabled = off"
        # the scheduler's tick ends (its paced pauses included) before the next measurement
        for _ in $(seq 120); do
            [ "$(psql_pg -d bench -At -c "SELECT count(*) FROM meshhook_keys.scheduler_status() WHERE state = 'ticking'")" = 0 ] && break
            sleep 1
        done
        [ "$(psql_pg -d bench -At -c "SELECT moved > 0 FROM pacing WHERE share = $share AND run = $run")" = t ] ||
            die "the scheduler re-encrypted nothing at share $share, run $run"
    done
done
[ "$(psql_pg -d bench -At -c "SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'a:' || id) IS NOT NULL) = $rows FROM a")" = t ] ||
    die "not every secret decrypts afterwards"

out=$BENCH_DIR/results/pacing.md
{
    echo "# meshhook_keys pacing: the application while the scheduler re-encrypts"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M') UTC; $(uname -m), $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | cut -c1-40), $(nproc) cores;"
    echo "PostgreSQL $("$PG_CONFIG" --version | cut -d' ' -f2); $rows rows; 4 clients (bench/app.pgbench), $secs s per measurement, $runs runs."
    echo "Each run measures the application alone, then with the scheduler re-encrypting continuously"
    echo "(a tick every second, a rotation whenever the job is done) at each busy share; ratios are"
    echo "against the same run's application alone, median over the runs (min – max)."
    echo
    psql_pg -d bench -At -F ' | ' -c "
        WITH r AS (
            SELECT p.share, p.run, p.tps / q.tps AS tps_x, p.p99_ms / q.p99_ms AS p99_x, p.moved / $secs.0 AS rows_s
              FROM pacing p JOIN pacing q ON q.run = p.run AND q.share = 0 WHERE p.share > 0)
        SELECT '| ' || share,
               to_char(percentile_cont(0.5) WITHIN GROUP (ORDER BY tps_x), 'FM0.000') || '× (' ||
                 to_char(min(tps_x), 'FM0.000') || ' – ' || to_char(max(tps_x), 'FM0.000') || ')',
               to_char(percentile_cont(0.5) WITHIN GROUP (ORDER BY p99_x), 'FM0.00') || '× (' ||
                 to_char(min(p99_x), 'FM0.00') || ' – ' || to_char(max(p99_x), 'FM0.00') || ')',
               to_char(percentile_cont(0.5) WITHIN GROUP (ORDER BY rows_s), 'FM999,999') || ' |'
          FROM r GROUP BY share ORDER BY share DESC" |
        { echo "| Busy share | × alone TPS | × alone p99 | Rows re-encrypted per second |"
          echo "|---:|---:|---:|---:|"; cat; }
    echo
    echo "The application alone, per run: $(psql_pg -d bench -At -c "SELECT string_agg(to_char(tps, 'FM999,999') || ' TPS, p99 ' || to_char(p99_ms, 'FM0.000') || ' ms', '; ' ORDER BY run) FROM pacing WHERE share = 0")."
} > "$out"
cat "$out"
