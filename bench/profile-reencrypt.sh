#!/usr/bin/env bash
# Instructions per row that online re-encryption (`CALL meshhook_keys.reencrypt`) spends, against
# the physical floor of rewriting the same rows (`UPDATE … SET c = c || ''`), counted by callgrind
# in a single-user backend: repeatable where wall-clock ratios are not (issue 27). Uses the
# extension already installed for PG_MAJOR (scripts/lib.sh; `cargo pgrx install --release` first).
#   bench/profile-reencrypt.sh [ROWS] [BATCH]
#   bench/profile-reencrypt.sh 20000 1000
#   MESHHOOK_KEYS_PROFILE_SETUP=$'SET work_mem = 64MB\n' bench/profile-reencrypt.sh   (a line run first)
# Table r holds ROWS envelopes of 100-byte secrets (context 'r:' || id, keyring 'reenc', registered)
# and r_floor a copy. The keyring is rotated with the cluster up; then one single-user backend
# rewrites r_floor and another re-encrypts r. The ratio floor / re-encryption is the throughput
# ratio the full benchmark measures in wall-clock time, without the I/O. The callgrind files stay
# in the printed directory (callgrind_annotate --inclusive=yes FILE shows where).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
ROWS=${1:-20000}; BATCH=${2:-1000}
source "$(dirname "$0")/profile-lib.sh"
PORT=${MESHHOOK_KEYS_PROFILE_PORT:-25391}
profile_cluster "$PORT"
as_pg psql -X -q -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION meshhook_keys" \
    -c "SELECT 1 FROM meshhook_keys.keys_rotate('reenc', 'version 1')" \
    -c "CREATE TABLE r (id int PRIMARY KEY, c bytea NOT NULL)" \
    -c "INSERT INTO r SELECT i, meshhook_keys.secret_encrypt(substr(repeat(md5(i::text), 4), 1, 100), 'r:' || i, 'reenc') FROM generate_series(1, $ROWS) i" \
    -c "CREATE TABLE r_floor (id int PRIMARY KEY, c bytea NOT NULL)" \
    -c "INSERT INTO r_floor SELECT id, c FROM r" \
    -c "SELECT 1 FROM meshhook_keys.register_column('r', 'c', \$\$'r:' || id\$\$, 'reenc')" \
    -c "VACUUM ANALYZE r, r_floor" \
    -c "SELECT 1 FROM meshhook_keys.keys_rotate('reenc', 'version 2')" -c "CHECKPOINT" >/dev/null
stop_cluster "$DIR"
# (both sessions pay the same start-up; the floor's statement is its whole work)
idle=$(count idle "SELECT 1")
floor=$(count floor "UPDATE r_floor SET c = c || ''::bytea")
reenc=$(count reencrypt "${MESHHOOK_KEYS_PROFILE_SETUP:-}CALL meshhook_keys.reencrypt('reenc', $BATCH)")
left=$(echo "SELECT count(*) FROM r WHERE substr(c, 1, 9) IN (SELECT substr(c, 1, 9) FROM r_floor LIMIT 1)" |
    as_pg "$PGBIN/postgres" --single -D "$DIR/data" postgres 2>/dev/null | sed -n 's/.*count = "\([0-9]*\)".*/\1/p')
echo "re-encryption, batch $BATCH: $(( (reenc - idle) / ROWS )) instructions per row; floor UPDATE $(( (floor - idle) / ROWS )); floor/re-encryption = $(awk -v f=$((floor - idle)) -v r=$((reenc - idle)) 'BEGIN { printf "%.3f", f / r }'); rows still on version 1: ${left:-?} ($ROWS rows; files in $DIR)"
