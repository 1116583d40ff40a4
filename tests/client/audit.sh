#!/usr/bin/env bash
# Nobody holds up another role's audited action, and no refusal is lost (issue 12, item 4).
#   - a plain user's transaction left open after keyring_create_user_held (or after the first use of
#     a keyring) does not block an admin's keys_rotate: with lock_timeout = 2s it succeeds (0.4.0:
#     55P03), also while it re-encrypts its keyring; the user's rows reach the chain when the user commits, and vanish when the user rolls
#     back (also a rolled-back savepoint); the chain verifies;
#   - audit rows record the request's JWT sub and role claims (also a refusal's, written by the
#     audit writer);
#   - a role with no meshhook_keys grant that holds every advisory lock it can name (the hashtext()
#     keys of 0.4.0, and both SQL forms of every advisory lock it sees in pg_locks while an admin's
#     transaction holds ours) delays nothing: keys_rotate, CALL reencrypt, tick() and the creation of
#     a user-held keyring each succeed with lock_timeout = 1s, and the worker keeps rotating;
#   - a flood of 10,000 refused calls from 4 sessions: exactly 10,000 refusal rows, never more audit
#     writers at once than refusing sessions, no "could not start the audit writer" line.
# Installs the extension if it is not installed yet.
source "$(dirname "$0")/../lib.sh"

suite_setup audit "${MESHHOOK_KEYS_AUDIT_PORT:-25349}" "meshhook_keys.database = 'audit'" \
    "meshhook_keys.worker_naptime = '200ms'"
at_exit 'exec 3>&- 2>/dev/null || true'

q() { psql_as "${2:-postgres}" audit "$1"; }   # q SQL [USER]

say "audit tests (cluster in $TMP, port $PORT)"
psql_as postgres postgres "CREATE DATABASE audit" >/dev/null
q "CREATE EXTENSION meshhook_keys;
   CREATE ROLE au_user LOGIN IN ROLE meshhook_keys_user;
   CREATE ROLE au_admin LOGIN IN ROLE meshhook_keys_admin;
   SELECT meshhook_keys.keyring_create('admin-ring');" >/dev/null

# hold NAME SQL: run SQL in a session of au_user that stays open (in its transaction) until release
hold() {
    rm -f "$TMP/hold.in"; mkfifo "$TMP/hold.in"; chmod 666 "$TMP/hold.in"
    as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U au_user -d audit < "$TMP/hold.in" > "$TMP/hold.out" 2>&1 &
    HOLD_PID=$!
    exec 3> "$TMP/hold.in"
    echo "$1" >&3
    wait_until 20 is_t q "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE usename = 'au_user' AND state = 'idle in transaction')"
}
release() { echo "$1" >&3; exec 3>&-; wait "$HOLD_PID" || true; }
rotate_as_admin() {
    q "SET lock_timeout = '2s'; SELECT version FROM meshhook_keys.keys_rotate('admin-ring', '$1')" au_admin 2>&1
}
rows() { q "SELECT count(*) FROM meshhook_keys.audit_log WHERE $1"; }

echo "# a plain user's open transaction does not hold up an admin"
before=$(q "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'admin-ring'")
if hold "BEGIN; SELECT keyring FROM meshhook_keys.keyring_create_user_held('user:au_user', 'held-secret-1');"; then
    ok "the user's transaction is open after keyring_create_user_held"; else fail "the user's transaction is open after keyring_create_user_held" "$(cat "$TMP/hold.out")"; fi
check "the admin's keys_rotate succeeds meanwhile (lock_timeout 2s)" "$((before + 1))" "$(rotate_as_admin 'while a user transaction is open')"
check "the user's row is not in the chain before the user commits" 0 "$(rows "keyring = 'user:au_user'")"
release "COMMIT;"
check "the user's row is in the chain after the commit" 1 "$(rows "keyring = 'user:au_user' AND action = 'keyring_create' AND role_name = 'au_user'")"

if hold "BEGIN; SELECT meshhook_keys.keyring_rotate_secret('user:au_user', 'held-secret-1', 'held-secret-2', reencrypt => true);"; then
    ok "the user's transaction is open after keyring_rotate_secret"; else fail "the user's transaction is open after keyring_rotate_secret" "$(cat "$TMP/hold.out")"; fi
check "the admin rotates again meanwhile" "$((before + 2))" "$(rotate_as_admin 'again')"
release "ROLLBACK;"
check "a rolled-back transaction leaves no row" 0 "$(rows "keyring = 'user:au_user' AND action = 'rotate_secret'")"

q "BEGIN;
   SAVEPOINT s; SELECT meshhook_keys.keyring_rotate_secret('user:au_user', 'held-secret-1', 'held-secret-2'); ROLLBACK TO SAVEPOINT s;
   SAVEPOINT t; SELECT meshhook_keys.keyring_rotate_secret('user:au_user', 'held-secret-1', 'held-secret-3'); RELEASE SAVEPOINT t;
   COMMIT;" au_user >/dev/null
check "a rolled-back savepoint drops its row, a released one keeps it" 1 \
    "$(rows "keyring = 'user:au_user' AND action = 'rotate_secret'")"

# the first use of 'default' by a plain user creates it and its first key: audited the same way
if hold "BEGIN; SELECT length(meshhook_keys.secret_encrypt('x')) > 0;"; then
    ok "the user's transaction is open after a keyring's first use"; else fail "the user's transaction is open after a keyring's first use" "$(cat "$TMP/hold.out")"; fi
check "the admin rotates meanwhile" "$((before + 3))" "$(rotate_as_admin 'during a first use')"
release "COMMIT;"
check "the first use is in the chain" t "$(q "SELECT count(*) > 0 FROM meshhook_keys.audit_log WHERE keyring = 'default' AND role_name = 'au_user'")"
check "the chain verifies" t "$(q "SELECT ok FROM meshhook_keys.audit_verify()")"

echo "# a role with no grant cannot take, queue on or delay our locks"
q "CREATE ROLE au_nobody LOGIN;
   CREATE TABLE au_t (id int PRIMARY KEY, c bytea);
   INSERT INTO au_t SELECT i, meshhook_keys.secret_encrypt('v' || i, i::text, 'admin-ring') FROM generate_series(1, 20) i;
   SELECT meshhook_keys.register_column('au_t', 'c', 'id::text', 'admin-ring');
   SELECT meshhook_keys.keyring_create('sched-ring');
   SELECT meshhook_keys.keyring_set_policy('sched-ring', interval '1 second');" >/dev/null
# an admin's transaction holds our audit chain and keyring locks while au_nobody looks at pg_locks
# and takes both SQL forms of every advisory lock it sees, and the old hashtext() keys
rm -f "$TMP/adm.in"; mkfifo "$TMP/adm.in"; chmod 666 "$TMP/adm.in"
as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U au_admin -d audit < "$TMP/adm.in" > "$TMP/adm.out" 2>&1 &
ADM_PID=$!
exec 4> "$TMP/adm.in"
echo "BEGIN; SELECT version FROM meshhook_keys.keys_rotate('admin-ring', 'held open');" >&4
wait_until 20 is_t q "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE usename = 'au_admin' AND state = 'idle in transaction')" || true
rm -f "$TMP/nob.in"; mkfifo "$TMP/nob.in"; chmod 666 "$TMP/nob.in"
as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U au_nobody -d audit < "$TMP/nob.in" > "$TMP/nob.out" 2>&1 4>&- &
NOB_PID=$!
exec 5> "$TMP/nob.in"
echo "SELECT count(pg_advisory_lock(l.classid::int, l.objid::int)) + count(pg_advisory_lock((l.classid::bigint << 32) | l.objid::bigint))
        FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid();
      SELECT pg_advisory_lock(hashtext(k)) FROM unnest(ARRAY['meshhook_keys.audit_log', 'meshhook_keys.tick',
        'meshhook_keys.reencrypt:admin-ring', 'meshhook_keys.reencrypt:default', 'meshhook_keys.reencrypt:sched-ring']) k;
      SELECT 'held';" >&5
wait_until 20 grep -q held "$TMP/nob.out" || true
echo "COMMIT;" >&4; exec 4>&-; wait "$ADM_PID" || true
check "au_nobody saw our locks in pg_locks and holds what it could name" t \
    "$(q "SELECT count(*) >= 6 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE a.usename = 'au_nobody' AND l.locktype = 'advisory' AND l.granted")"
before=$(q "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'admin-ring'")
check "keys_rotate is not delayed (lock_timeout 1s)" "$((before + 1))" \
    "$(q "SET lock_timeout = '1s'; SELECT version FROM meshhook_keys.keys_rotate('admin-ring', 'while au_nobody holds locks')" au_admin 2>&1)"
check "CALL reencrypt is not delayed (lock_timeout 1s)" "" \
    "$(psql_as au_admin audit "CALL meshhook_keys.reencrypt('admin-ring', 5)" -c "SET lock_timeout = '1s'" 2>&1 | grep ERROR)"
check "every row moved" 0 \
    "$(q "SELECT count(*) FROM au_t WHERE meshhook_keys.ciphertext_key_id(c) <> (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'admin-ring' AND state = 'active')")"
# the worker ticks sched-ring every second, and a tick meeting it is skipped ("another tick is
# running"): ours must get through within the deadline, which it never would if au_nobody held the lock
tick_runs() { [ -z "$(q "SET lock_timeout = '1s'; SELECT action FROM meshhook_keys.tick() WHERE action = 'tick' AND outcome IN ('skipped', 'failed')" 2>&1)" ]; }
if wait_until 10 tick_runs; then ok "tick() is not skipped"; else fail "tick() is not skipped" "skipped or failed for 10 s"; fi
check "a user creates a user-held keyring (lock_timeout 1s)" "user:au_user:nobody-test" \
    "$(q "SET lock_timeout = '1s'; SELECT keyring FROM meshhook_keys.keyring_create_user_held('user:au_user:nobody-test', 'a-secret-of-12')" au_user 2>&1)"
v0=$(q "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'sched-ring'")
if wait_until 30 is_t q "SELECT active_version >= $v0 + 2 FROM meshhook_keys.keyrings WHERE keyring = 'sched-ring'"; then
    ok "the worker keeps rotating on schedule"; else fail "the worker keeps rotating on schedule" "$(tail -5 "$TMP/server.log")"; fi
echo "SELECT pg_advisory_unlock_all();" >&5; exec 5>&-; wait "$NOB_PID" || true
q "SELECT meshhook_keys.keyring_set_policy('sched-ring', NULL)" >/dev/null

echo "# 10,000 refused calls from 4 sessions"
q "CREATE TABLE writers (at timestamptz DEFAULT clock_timestamp(), n int)" >/dev/null
refused_before=$(rows "outcome = 'refused'")
( while [ ! -e "$TMP/flood.done" ]; do
      q "INSERT INTO writers (n) SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'meshhook_keys audit writer'" >/dev/null 2>&1 || true
      sleep 0.05
  done ) &
SAMPLER=$!
start=$(date +%s)
for s in 1 2 3 4; do
    q "DO \$\$ BEGIN FOR i IN 1..2500 LOOP
         BEGIN PERFORM meshhook_keys.keys_rotate('admin-ring', 'flood'); EXCEPTION WHEN insufficient_privilege THEN NULL; END;
       END LOOP; END \$\$" au_user > "$TMP/flood.$s" 2>&1 &
done
wait $(jobs -p | grep -v "^$SAMPLER\$") 2>/dev/null || true
touch "$TMP/flood.done"; wait "$SAMPLER" || true
echo "  (the flood took $(( $(date +%s) - start )) s)"
if wait_until 60 is_t q "SELECT (SELECT count(*) FROM meshhook_keys.audit_log WHERE outcome = 'refused') - $refused_before >= 10000"; then
    ok "the refusals reached the log"; else fail "the refusals reached the log"; fi
check "exactly 10,000 refusal rows" 10000 "$(( $(rows "outcome = 'refused'") - refused_before ))"
check "each names the refused role and function" 10000 \
    "$(rows "outcome = 'refused' AND role_name = 'au_user' AND detail ->> 'function' = 'keys_rotate'")"
check "a refusal records the request's JWT sub and role" '{"sub": "mallory-7", "role": "app"}' \
    "$(q "SET request.jwt.claims = '{\"sub\": \"mallory-7\", \"role\": \"app\"}';
          DO \$\$ BEGIN PERFORM meshhook_keys.keys_rotate('admin-ring', 'with claims'); EXCEPTION WHEN insufficient_privilege THEN NULL; END \$\$" au_user >/dev/null;
       q "SELECT detail -> 'jwt' FROM meshhook_keys.audit_log WHERE outcome = 'refused' ORDER BY id DESC LIMIT 1")"
check "never more audit writers at once than refusing sessions" t "$(q "SELECT max(n) <= 4 AND count(*) > 10 FROM writers")"
check "no refusal was only logged" 0 "$(grep -c 'could not start the audit writer' "$TMP/server.log" || true)"
check "the chain verifies after the flood" t "$(q "SELECT ok FROM meshhook_keys.audit_verify()")"

suite_summary "audit"
