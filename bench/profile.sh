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
source "$(dirname "$0")/profile-lib.sh"
PORT=${MESHHOOK_KEYS_PROFILE_PORT:-25390}
profile_cluster "$PORT" "max_parallel_workers_per_gather = 0"
as_pg psql -X -q -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION meshhook_keys" \
    -c "CREATE TABLE t AS SELECT meshhook_keys.secret_encrypt(substr(repeat(md5(i::text), 4), 1, 100)) AS c FROM generate_series(1, $ROWS) i" \
    -c "VACUUM ANALYZE t" -c "CHECKPOINT"
stop_cluster "$DIR"
floor=$(count floor "SELECT sum(octet_length(c)) FROM t; SELECT sum(octet_length(c)) FROM t;")
query=$(count "$LABEL" "SELECT sum(octet_length($EXPR)) FROM t; SELECT sum(octet_length($EXPR)) FROM t;")
echo "$LABEL: $(( (query - floor) / (2 * ROWS) )) instructions per row over the floor ($ROWS rows; floor $floor, query $query; files in $DIR)"
