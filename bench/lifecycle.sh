#!/usr/bin/env bash
# What issue 24's key lifecycle work costs per call: this checkout's library against a baseline
# commit's (default 65958fa, the last commit before issue 24), on one preloaded cluster, A B A B ...
#
#   ./bench/lifecycle.sh [--base REV] [--rounds K] [--rows N] [--keys M]
#
# Measured in each round, server-side with psql's \timing, per library:
#   decrypt (warm)   SELECT sum(octet_length(secret_decrypt(c))) over N rows of one key: the
#                    per-call freshness cost (the issue's budget: at most +0.02 us/row)
#   encrypt          SELECT sum(octet_length(secret_encrypt(p))) over N rows: counting against the
#                    ceiling and a nonce from getrandom per call
#   decrypt (misses) M envelopes under M distinct keys with meshhook_keys.key_cache_size = M/10, so
#                    every call loads and unwraps its key: a key row read with a fresh snapshot
# Each library runs in a database of its own (a key made by one library is not the other's), with
# the same rows. Prints a markdown table of medians (us per row) and the ratio this / baseline,
# and writes it to bench/results/lifecycle.md. Restores this checkout's library at the end.
source "$(dirname "$0")/../scripts/lib.sh"

base=65958fa rounds=5 rows=200000 keys=2000
while [ $# -gt 0 ]; do
    case $1 in
        --base) base=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --rows) rows=$2; shift ;;
        --keys) keys=$2; shift ;;
        *) echo "usage: $0 [--base REV] [--rounds K] [--rows N] [--keys M]" >&2; exit 2 ;;
    esac
    shift
done
PORT=${MESHHOOK_KEYS_BENCH_PORT:-25346}
WORK=$(mktemp -d /tmp/mk_lifecycle.XXXXXX)
chmod 755 "$WORK"
LIBDIR=$("$PG_CONFIG" --pkglibdir)
say "building this checkout and $base (release, PostgreSQL $PG_MAJOR)" >&2
(cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" "${PG_FEATURES[@]}" >/dev/null)
cp "$LIBDIR/$EXT.so" "$WORK/new.so"
git -C "$REPO_ROOT" worktree add -f --detach "$WORK/base" "$base" >/dev/null 2>&1
(cd "$WORK/base" && CARGO_TARGET_DIR="$REPO_ROOT/target/bench-base" cargo build --release --lib "${PG_FEATURES[@]}" >/dev/null 2>&1)
cp "$REPO_ROOT/target/bench-base/release/lib$EXT.so" "$WORK/base.so"
git -C "$REPO_ROOT" worktree remove --force "$WORK/base"
cleanup() { stop_cluster "$WORK" immediate; cp "$WORK/new.so" "$LIBDIR/$EXT.so"; rm -rf "$WORK"; }
trap cleanup EXIT

make_root_key "$WORK/keys/root.key"
init_cluster "$WORK" "$PORT" "meshhook_keys.root_key_file = '$WORK/keys/root.key'" \
    "meshhook_keys.worker_enabled = off" "meshhook_keys.key_cache_size = $((keys / 10))" \
    "jit = off" "max_parallel_workers_per_gather = 0" "shared_buffers = 256MB"
psql_pg() { as_pg psql -X -q -h "$WORK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }

use() {   # use base|new: restart the cluster with that library
    stop_cluster "$WORK"
    cp "$WORK/$1.so" "$LIBDIR/$EXT.so"
    start_cluster "$WORK"
}
setup() {   # setup base|new: its database, made by its library
    psql_pg -d postgres -c "CREATE DATABASE db_$1"
    psql_pg -d "db_$1" <<SQL >/dev/null
CREATE EXTENSION meshhook_keys;
SELECT 1 FROM meshhook_keys.keys_rotate('default');
CREATE TABLE t AS SELECT i, md5(i::text) || md5((i + 1)::text) AS p FROM generate_series(1, $rows) i;
ALTER TABLE t ADD COLUMN c bytea;
UPDATE t SET c = meshhook_keys.secret_encrypt(p);
CREATE TABLE m (i int, c bytea);
DO \$\$ BEGIN
    FOR i IN 1..$keys LOOP
        PERFORM meshhook_keys.keys_rotate('k' || i);
        INSERT INTO m VALUES (i, meshhook_keys.secret_encrypt('x' || i, '', 'k' || i));
    END LOOP;
END \$\$;
VACUUM ANALYZE;
SQL
}
measure() {   # measure base|new: one session, each query once to warm up and once timed
    psql_pg -d "db_$1" -At <<'SQL' | awk '/^Time:/ { print $2 }' | sed -n '2p;4p;6p'
\timing on
SELECT sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM t;
SELECT sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM t;
SELECT sum(octet_length(meshhook_keys.secret_encrypt(p))) FROM t;
SELECT sum(octet_length(meshhook_keys.secret_encrypt(p))) FROM t;
SELECT sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM m;
SELECT sum(octet_length(meshhook_keys.secret_decrypt(c))) FROM m;
SQL
}

start_cluster "$WORK"
for side in base new; do use "$side"; say "setting up db_$side ($rows rows, $keys keys)" >&2; setup "$side"; done
: > "$WORK/times"
for r in $(seq 1 "$rounds"); do
    for side in base new; do
        use "$side"
        measure "$side" | paste -sd' ' | sed "s/^/$side /" >> "$WORK/times"
    done
    say "round $r: $(tail -2 "$WORK/times" | paste -sd' ')" >&2
done

report() {
    awk -v rows="$rows" -v keys="$keys" -v base="$base" -v rounds="$rounds" '
        function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                          return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        { n[$1]++; d[$1, n[$1]] = $2 * 1000 / rows; e[$1, n[$1]] = $3 * 1000 / rows; m[$1, n[$1]] = $4 * 1000 / keys }
        END {
            for (s in n) { for (i = 1; i <= n[s]; i++) { x[i] = d[s, i] } D[s] = median(x, n[s])
                           for (i = 1; i <= n[s]; i++) { x[i] = e[s, i] } E[s] = median(x, n[s])
                           for (i = 1; i <= n[s]; i++) { x[i] = m[s, i] } M[s] = median(x, n[s]) }
            printf "# Key lifecycle cost (issue 24)\n\nBaseline %s against this checkout, one preloaded PostgreSQL cluster, %d rounds (A B A B ...), medians in microseconds per call.\n\n", base, rounds
            printf "| query | baseline | this | difference | ratio |\n|---|---:|---:|---:|---:|\n"
            printf "| decrypt, warm key (%d rows) | %.3f | %.3f | %+.3f | %.2f |\n", rows, D["base"], D["new"], D["new"] - D["base"], D["new"] / D["base"]
            printf "| encrypt (%d rows) | %.3f | %.3f | %+.3f | %.2f |\n", rows, E["base"], E["new"], E["new"] - E["base"], E["new"] / E["base"]
            printf "| decrypt, every call a key cache miss (%d keys) | %.2f | %.2f | %+.2f | %.2f |\n", keys, M["base"], M["new"], M["new"] - M["base"], M["new"] / M["base"]
        }' "$WORK/times"
}
report | tee "$REPO_ROOT/bench/results/lifecycle.md"
