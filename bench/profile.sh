#!/usr/bin/env bash
# Instructions per row that an expression adds to a scan, counted by callgrind in a single-user
# backend: repeatable on noisy machines, where wall-clock ratios are not (issue 27). Uses the
# extension already installed for PG_MAJOR (scripts/lib.sh; `cargo pgrx install --release` first).
#   bench/profile.sh [ROWS] [EXPR over the bytea column c] [LABEL]
#   bench/profile.sh 20000 "meshhook_keys.secret_decrypt(c)" decrypt
#   bench/profile.sh 20000 "meshhook_keys.secret_encrypt(repeat('x', 100))" encrypt
# Table t holds ROWS envelopes of 100-byte ASCII secrets (context ''). The floor is the same scan
# summing octet_length(c); each query runs twice in one session and both are counted, so the
# one-time costs of loading and binding the library are spread over 2 x ROWS calls. The callgrind
# files stay in the printed directory (callgrind_annotate --inclusive=yes FILE shows where).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${1:-20000}; EXPR=${2:-"meshhook_keys.secret_decrypt(c)"}; LABEL=${3:-query}
command -v valgrind >/dev/null || { echo "$0: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/mk_profile.XXXXXX)
chown postgres:postgres "$DIR"
KEY=$DIR/root.key
make_root_key "$KEY"
PORT=${MESHHOOK_KEYS_PROFILE_PORT:-54390}
as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust >/dev/null
cat >> "$DIR/data/postgresql.conf" <<CONF
shared_preload_libraries = 'meshhook_keys'
meshhook_keys.root_key_file = '$KEY'
meshhook_keys.worker_enabled = off
port = $PORT
unix_socket_directories = '$DIR'
jit = off
max_parallel_workers_per_gather = 0
CONF
start_cluster "$DIR"
as_pg psql -X -q -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION meshhook_keys" \
    -c "CREATE TABLE t AS SELECT meshhook_keys.secret_encrypt(substr(repeat(md5(i::text), 4), 1, 100)) AS c FROM generate_series(1, $ROWS) i" \
    -c "VACUUM ANALYZE t" -c "CHECKPOINT"
stop_cluster "$DIR"
# count LABEL SQL: the instructions a single-user backend runs for SQL
count() {
    echo "$2" | as_pg valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.$1" \
        "$PGBIN/postgres" --single -D "$DIR/data" postgres >/dev/null 2>"$DIR/valgrind.$1.log"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$DIR/valgrind.$1.log"
}
floor=$(count floor "SELECT sum(octet_length(c)) FROM t; SELECT sum(octet_length(c)) FROM t;")
query=$(count "$LABEL" "SELECT sum(octet_length($EXPR)) FROM t; SELECT sum(octet_length($EXPR)) FROM t;")
echo "$LABEL: $(( (query - floor) / (2 * ROWS) )) instructions per row over the floor ($ROWS rows; floor $floor, query $query; files in $DIR)"
