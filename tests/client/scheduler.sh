#!/usr/bin/env bash
# Client-level tests of the background scheduler: a real server with the library preloaded, its
# launcher and scheduler workers, SIGHUP / SIGTERM / crash, DROP and CREATE EXTENSION, a database
# that does not exist yet, a failing tick, usage-based rotation, and a streaming standby (started by
# this script with pg_basebackup) that decrypts everything and takes over after promotion.
# Every wait polls a condition with a deadline. Installs the extension if it is not installed yet.
source "$(dirname "$0")/../lib.sh"

suite_init sched "${MESHHOOK_KEYS_SCHED_PORT:-25335}" \
    "meshhook_keys.database = 'sched'" "meshhook_keys.worker_naptime = '500ms'" \
    "wal_level = replica" "max_wal_senders = 4" "hot_standby = on" "log_min_messages = 'log'"
echo "local replication postgres trust" >> "$TMP/data/pg_hba.conf"
SPORT=$((PORT + 1))
SDIR=$TMP/standby
stop_standby() { [ -d "$SDIR/data" ] && stop_cluster "$SDIR" immediate; }
at_exit stop_standby
start_cluster "$TMP"

# q [-s] DB SQL [psql args]: one client call to the primary (or, with -s, the standby), tuples only
q() { local at=(); if [ "$1" = -s ]; then at=(-h "$SDIR" -p "$SPORT"); shift; fi; psql_as postgres "$1" "$2" "${at[@]}" "${@:3}"; }
# fresh [-s] DB EXPR: SELECT EXPR with a fresh statistics snapshot, errors hidden (for wait_until ... is_t)
fresh() { q "${@:1:$#-1}" "SELECT pg_stat_clear_snapshot(); SELECT ${!#}" 2>/dev/null; }
count_log() { grep -Ec -- "$1" "${2:-$TMP/server.log}" || true; }
sched_pid() { q "${1:-postgres}" "SELECT pid FROM pg_stat_activity WHERE backend_type = 'meshhook_keys scheduler'"; }

say "scheduler tests (cluster in $TMP, port $PORT)"

echo "# the database does not exist yet: the launcher waits and says so once, no crash loop"
if wait_until 20 grep -Eq -- 'database "sched" \(meshhook_keys.database\) does not exist yet' "$TMP/server.log"; then ok "launcher logs that the database is missing"; else fail "launcher logs that the database is missing"; fi
if wait_until 10 is_t fresh postgres "EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'meshhook_keys launcher')"; then
    ok "the launcher runs (backend_type 'meshhook_keys launcher')"; else fail "the launcher runs"; fi
launcher=$(q postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'meshhook_keys launcher'")
sleep_until=$(( $(date +%s) + 2 ))
while [ "$(date +%s)" -lt "$sleep_until" ]; do sleep 0.2; done   # let a few launcher checks pass
check "the missing database is logged once, not once per check" 1 "$(count_log 'does not exist yet')"
check "no FATAL from the workers meanwhile" 0 "$(count_log 'FATAL.*(meshhook_keys|database "sched")')"
check "the same launcher process keeps waiting" "$launcher" \
    "$(q postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'meshhook_keys launcher'")"

echo "# the database appears: the scheduler starts there and waits for the extension"
q postgres "CREATE DATABASE sched"
if wait_until 30 is_t fresh postgres "EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'meshhook_keys scheduler' AND datname = 'sched')"; then
    ok "scheduler started in database sched"; else fail "scheduler started in database sched"; fi
if wait_until 20 grep -Eq -- 'meshhook_keys is not installed in database "sched"' "$TMP/server.log"; then ok "logs that the extension is not installed"; else fail "logs that the extension is not installed"; fi

echo "# CREATE EXTENSION: scheduled rotation by age, audited with actor scheduler"
q sched "CREATE EXTENSION meshhook_keys"
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('age-ring', 'v1')" >/dev/null
q sched "SELECT meshhook_keys.keyring_set_policy('age-ring', interval '2 seconds')" >/dev/null
if wait_until 20 is_t fresh sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'age-ring') >= 2"; then
    ok "the worker rotated a keyring older than its interval"; else fail "the worker rotated a keyring older than its interval"; fi
check "the scheduled rotation is audited with actor scheduler" "scheduler|rotate|ok" \
    "$(q sched "SELECT actor, action, outcome FROM meshhook_keys.audit_log WHERE keyring = 'age-ring' AND version = 2 AND action = 'rotate'")"
q sched "SELECT meshhook_keys.keyring_set_policy('age-ring', NULL)" >/dev/null

echo "# exactly one rotation per due keyring while the worker and tick() race"
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('race-ring', 'v1')" >/dev/null
q sched "SELECT meshhook_keys.keyring_set_policy('race-ring', interval '1 hour');
         UPDATE meshhook_keys.data_key SET activated_at = activated_at - interval '2 hours' WHERE keyring = 'race-ring'" >/dev/null
for i in 1 2 3 4; do q sched "SELECT count(*) FROM meshhook_keys.tick()" >/dev/null & done; wait
wait_until 10 is_t fresh sched "(SELECT count(*) FROM meshhook_keys.keys WHERE keyring = 'race-ring') >= 2" || true
# give the worker a few more ticks to (wrongly) rotate again
sleep_until=$(( $(date +%s) + 2 )); while [ "$(date +%s)" -lt "$sleep_until" ]; do sleep 0.2; done
check "four concurrent tick() calls and the worker rotated once" 2 \
    "$(q sched "SELECT count(*) FROM meshhook_keys.keys WHERE keyring = 'race-ring'")"

echo "# the worker drives re-encryption in bounded batches"
q sched "CREATE TABLE creds (id int PRIMARY KEY, c bytea NOT NULL);
         SELECT 1 FROM meshhook_keys.keys_rotate('re-ring', 'v1');
         INSERT INTO creds SELECT i, meshhook_keys.secret_encrypt('S-' || i, 'c:' || i, 're-ring') FROM generate_series(1, 3000) i;
         SELECT meshhook_keys.register_column('creds', 'c', \$\$'c:' || id\$\$, 're-ring');
         SELECT 1 FROM meshhook_keys.keys_rotate('re-ring', 'v2');" >/dev/null
if wait_until 30 is_t fresh sched "NOT EXISTS (SELECT 1 FROM meshhook_keys.key_usage('re-ring') WHERE version = 1)"; then
    ok "every row moved to version 2 by the worker"; else fail "every row moved to version 2 by the worker"; fi
check "and still decrypts" 3000 "$(q sched "SELECT count(*) FROM creds WHERE meshhook_keys.secret_decrypt(c, 'c:' || id) = 'S-' || id")"
check "re-encryption audited with actor scheduler" "scheduler" \
    "$(q sched "SELECT string_agg(DISTINCT actor, ',') FROM meshhook_keys.audit_log WHERE keyring = 're-ring' AND action LIKE 'reencrypt%'")"

echo "# a hostile table owner's code inside the scheduler's batch has her authority only (issue 11)"
# tests/hostile/deputy_fixture.sql: dp_mallory's row and statement triggers, generated column and
# context expression each try to destroy a keyring, decrypt another tenant's and another user's
# secrets, re-register the built-in store, start a nested batch and become superuser.
as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d sched -v ON_ERROR_STOP=1 \
    -f "$REPO_ROOT/tests/hostile/deputy_fixture.sql" >/dev/null
q sched "ALTER DATABASE sched SET meshhook_keys.tenant_check = 'dp_app.tenant_ok'" >/dev/null
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('dp:target', 'scheduler deputy test')" >/dev/null
if wait_until 30 is_t fresh sched "(SELECT k.version FROM dp_m.t t JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(t.tok) WHERE t.id = 1) = 2"; then
    ok "the worker re-encrypted the hostile owner's table"; else fail "the worker re-encrypted the hostile owner's table"; fi
check "her code ran inside the worker's batch" t \
    "$(q sched "SELECT count(*) > 0 FROM dp_m.attempts WHERE runner = 'scheduler'")"
check "and every privileged attempt was refused" "0|42501,55000" \
    "$(q sched "SELECT count(*) FILTER (WHERE outcome = 'ok'), string_agg(DISTINCT outcome, ',' ORDER BY outcome) FROM dp_m.attempts WHERE runner = 'scheduler'")"
check "she did not become superuser; the other keyring was not destroyed" "f|f" \
    "$(q sched "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = 'dp_mallory'), (SELECT destroyed_at IS NOT NULL FROM meshhook_keys.keyrings WHERE keyring = 'dp:other')")"
check "the row still decrypts" target-plaintext "$(q sched "SELECT meshhook_keys.secret_decrypt(tok, '1') FROM dp_m.t WHERE id = 1")"

echo "# the hostile owner's code runs sealed in the worker: nothing it changes outlives the call (issue 23)"
# tests/hostile/sealed_fixture.sql: her table's triggers, generated column and context expression
# set search_path (with her own = and + operators first on it), lock_timeout, request.jwt.claims
# and more with set_config(..., false), and record what the first of them sees in each sealed call.
as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d sched -v ON_ERROR_STOP=1 \
    -f "$REPO_ROOT/tests/hostile/sealed_fixture.sql" >/dev/null
for run in 1 2; do
    v=$(q sched "SELECT version FROM meshhook_keys.keys_rotate('dp:sealed', 'scheduler sealed run $run')")
    if wait_until 30 is_t fresh sched "(SELECT bool_and(k.version = $v) FROM dp_m.s s JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.tok))"; then
        ok "run $run: the worker re-encrypted her table to version $v"; else fail "run $run: the worker re-encrypted her table to version $v"; fi
done
check "her code ran in the worker in more than one sealed call" t \
    "$(q sched "SELECT count(*) >= 2 FROM dp_m.seen WHERE runner = 'scheduler'")"
# (lock_timeout: 0, or the 10ms of meshhook_keys.reencrypt_row_wait that a batch's direct UPDATE
# sets for itself; hers is 1ms)
check "each of them saw a clean session: pinned search_path, nothing of hers" "1|t" \
    "$(q sched "SELECT count(DISTINCT state), bool_and(state ~ '^pg_catalog, pg_temp \\| (0|10ms) \\| 0 \\| off \\| hex \\| ' AND state NOT LIKE '%mallory%')
                FROM dp_m.seen WHERE runner = 'scheduler'")"
check "her operators never ran as anyone but her" 0 \
    "$(q sched "SELECT count(*) FROM dp_m.hijacked WHERE current_role_name <> 'dp_mallory'")"
check "the worker holds no lock of hers" 0 \
    "$(q sched "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE a.backend_type = 'meshhook_keys scheduler' AND l.locktype = 'advisory' AND l.objsubid <> 19787")"
check "she is not superuser" f "$(q sched "SELECT rolsuper FROM pg_roles WHERE rolname = 'dp_mallory'")"
q sched "ALTER DATABASE sched RESET meshhook_keys.tenant_check" >/dev/null

echo "# usage-based rotation: encryptions are counted and flushed, the worker rotates at max_encryptions"
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('use-ring', 'v1');
         SELECT meshhook_keys.keyring_set_policy('use-ring', NULL, 10)" >/dev/null
for i in $(seq 1 10); do q sched "SELECT meshhook_keys.secret_encrypt('x', '', 'use-ring')" >/dev/null; done
if wait_until 20 is_t fresh sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'use-ring') = 2"; then
    ok "rotated after 10 encryptions"; else fail "rotated after 10 encryptions"; fi
if wait_until 10 is_t fresh sched "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'use-ring' AND version = 1) = 10"; then
    ok "the 10 encryptions were flushed to data_key.encryptions"; else fail "the 10 encryptions were flushed to data_key.encryptions"; fi
check "reason names the count" "t" \
    "$(q sched "SELECT reason LIKE '%10 encryptions%' FROM meshhook_keys.audit_log WHERE keyring = 'use-ring' AND version = 2")"

echo "# every database counts (issue 24): another database's encryptions reach its own data_key, its"
echo "# keyrings rotate at max_encryptions there, and the scheduler's database keeps its own counts"
q postgres "CREATE DATABASE other"
q other "CREATE EXTENSION meshhook_keys"
q other "SELECT 1 FROM meshhook_keys.keys_rotate('other-ring', 'v1');
         SELECT meshhook_keys.keyring_set_policy('other-ring', NULL, 25)" >/dev/null
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('here-ring', 'v1')" >/dev/null
q other "SELECT count(meshhook_keys.secret_encrypt('o', '', 'other-ring')) FROM generate_series(1, 20)" >/dev/null
q sched "SELECT count(meshhook_keys.secret_encrypt('h', '', 'here-ring')) FROM generate_series(1, 7)" >/dev/null
if wait_until 20 is_t fresh other "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'other-ring' AND version = 1) = 20"; then
    ok "a database worker wrote the other database's 20 encryptions to its data_key"; else fail "the other database's 20 encryptions reached its data_key"; fi
if wait_until 20 is_t fresh sched "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'here-ring' AND version = 1) = 7"; then
    ok "the scheduler's database kept its own 7"; else fail "the scheduler's database kept its own 7"; fi
check "the keyrings view of the other database shows 20" 20 \
    "$(q other "SELECT encryptions FROM meshhook_keys.keyrings WHERE keyring = 'other-ring'")"
q other "SELECT count(meshhook_keys.secret_encrypt('o', '', 'other-ring')) FROM generate_series(1, 5)" >/dev/null
if wait_until 20 is_t fresh other "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'other-ring') = 2"; then
    ok "the other database's keyring rotated at max_encryptions (25)"; else fail "the other database's keyring rotated at max_encryptions"; fi
check "audited there with actor scheduler and the count" "scheduler|t" \
    "$(q other "SELECT actor, reason LIKE '%25 encryptions%' FROM meshhook_keys.audit_log WHERE keyring = 'other-ring' AND version = 2 AND action = 'rotate'")"
if wait_until 20 is_t fresh other "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'other-ring' AND version = 1) = 25"; then
    ok "all 25 flushed"; else fail "all 25 flushed"; fi
# more flushes (by the next encryptions' workers) neither double nor lose a count
q other "SELECT count(meshhook_keys.secret_encrypt('o', '', 'other-ring')) FROM generate_series(1, 3)" >/dev/null
if wait_until 20 is_t fresh other "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'other-ring' AND version = 2) = 3"; then
    ok "the new version's 3 flushed"; else fail "the new version's 3 flushed"; fi
check "version 1 still 25 after later flushes" 25 \
    "$(q other "SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'other-ring' AND version = 1")"
check "the scheduler's database still 7" 7 \
    "$(q sched "SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'here-ring' AND version = 1")"
slots_used() { q "$1" "SELECT substring(detail FROM 'for ([0-9]+) of') FROM meshhook_keys.health() WHERE item = 'usage_counting'"; }
slots_at_most() { [ "$(slots_used "$1")" -le "$2" ]; }
before=$(slots_used other)
q other "SELECT meshhook_keys.keyring_destroy('other-ring', 'free its slots')" >/dev/null
q other "SELECT 1 FROM meshhook_keys.keys_rotate('other-ring2', 'v1');
         SELECT count(meshhook_keys.secret_encrypt('o', '', 'other-ring2')) FROM generate_series(1, 2)" >/dev/null
if wait_until 20 is_t fresh other "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'other-ring2') = 2"; then
    ok "other-ring2 flushed"; else fail "other-ring2 flushed"; fi
if wait_until 20 slots_at_most other "$before"; then
    ok "the destroyed keyring's slots were freed (slots in use: $before before, $(slots_used other) after, one key added)"; else fail "the destroyed keyring's slots were freed ($before -> $(slots_used other))"; fi
check "no database worker failed" 0 "$(count_log 'meshhook_keys database worker: failed')"

echo "# every database with the extension is served (issue 26): rotation by age in the other database"
echo "# and in a third one created while the server runs; scheduler_status() and health() there say so"
q other "SELECT 1 FROM meshhook_keys.keys_rotate('other-aged', 'v1');
         SELECT meshhook_keys.keyring_set_policy('other-aged', '1 second', NULL)" >/dev/null
if wait_until 20 is_t fresh other "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'other-aged') >= 2"; then
    ok "the other database's keyring rotated by age (a database worker's tick)"; else fail "the other database's keyring rotated by age"; fi
q postgres "CREATE DATABASE third"
q third "CREATE EXTENSION meshhook_keys"
q third "SELECT 1 FROM meshhook_keys.keys_rotate('third-ring', 'v1');
         SELECT meshhook_keys.keyring_set_policy('third-ring', '1 second', NULL)" >/dev/null
if wait_until 30 is_t fresh third "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'third-ring') >= 2"; then
    ok "a database created while the server runs: its keyring rotated by age"; else fail "the third database's keyring rotated by age"; fi
check "audited there with actor scheduler" "scheduler" \
    "$(q third "SELECT actor FROM meshhook_keys.audit_log WHERE keyring = 'third-ring' AND version = 2 AND action = 'rotate'")"
check "scheduler_status() there names that database and its ticks" "third|t|t" \
    "$(q third "SELECT database, state LIKE 'served by database workers: %', ticks > 0 FROM meshhook_keys.scheduler_status()")"
check "health() there says it is served" "ok|t" \
    "$(q third "SELECT status, detail LIKE '%database \"third\" is served by database workers%' FROM meshhook_keys.health() WHERE item = 'scheduler'")"
check "the scheduler's database still reports its scheduler" "sched|t" \
    "$(q sched "SELECT database, pid IS NOT NULL FROM meshhook_keys.scheduler_status()")"
check "health() in the other database is ok too" ok \
    "$(q other "SELECT status FROM meshhook_keys.health() WHERE item = 'scheduler'")"
# a template database is never connected to (a connection to template1 makes CREATE DATABASE
# fail), even with the extension and a keyring due every second: while the third database's
# keyring rotates three more times, template1's stays at version 1
q template1 "CREATE EXTENSION meshhook_keys" >/dev/null
q template1 "SELECT 1 FROM meshhook_keys.keys_rotate('tmpl-ring', 'v1');
             SELECT meshhook_keys.keyring_set_policy('tmpl-ring', '1 second', NULL)" >/dev/null
v=$(q third "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'third-ring'")
if wait_until 30 is_t fresh third "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'third-ring') >= $v + 3"; then
    ok "the third database's keyring rotated three more times meanwhile"; else fail "the third database's keyring kept rotating"; fi
check "template1's keyring was never rotated" 1 \
    "$(q template1 "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'tmpl-ring'")"
q template1 "DROP EXTENSION meshhook_keys"
q third "DROP EXTENSION meshhook_keys"
q postgres "DROP DATABASE third WITH (FORCE)"
check "no database worker failed" 0 "$(count_log 'meshhook_keys database worker: failed')"

echo "# SIGHUP: a new naptime is picked up after pg_reload_conf()"
q postgres "ALTER SYSTEM SET meshhook_keys.worker_naptime = '700ms'" && q postgres "SELECT pg_reload_conf()" >/dev/null
if wait_until 10 is_t fresh sched "(SELECT naptime_ms FROM meshhook_keys.scheduler_status()) = 700"; then
    ok "naptime 500 ms -> 700 ms without a restart"; else fail "naptime 500 ms -> 700 ms without a restart"; fi
q postgres "ALTER SYSTEM SET meshhook_keys.worker_enabled = off" && q postgres "SELECT pg_reload_conf()" >/dev/null
if wait_until 10 is_t fresh sched "(SELECT state FROM meshhook_keys.scheduler_status()) = 'disabled'"; then
    ok "worker_enabled = off pauses it"; else fail "worker_enabled = off pauses it"; fi
q postgres "ALTER SYSTEM RESET meshhook_keys.worker_enabled" && q postgres "SELECT pg_reload_conf()" >/dev/null
if wait_until 10 is_t fresh sched "(SELECT state FROM meshhook_keys.scheduler_status()) IN ('idle', 'ticking')"; then
    ok "and on resumes it"; else fail "and on resumes it"; fi

echo "# SIGTERM stops it promptly; the launcher starts a new one"
pid=$(sched_pid)
q postgres "SELECT pg_terminate_backend($pid)" >/dev/null
if wait_until 5 is_t fresh postgres "NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $pid)"; then
    ok "scheduler $pid stopped within 5 s of SIGTERM"; else fail "scheduler stopped within 5 s of SIGTERM"; fi
if wait_until 20 is_t fresh postgres "EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'meshhook_keys scheduler' AND pid <> $pid)"; then
    ok "a new scheduler was started"; else fail "a new scheduler was started"; fi

echo "# a crash (SIGKILL): the postmaster restarts, and so does the scheduler"
pid=$(sched_pid)
kill -9 "$pid"
if wait_until 10 grep -Eq -- 'terminated by signal 9' "$TMP/server.log"; then ok "the postmaster saw the crash"; else fail "the postmaster saw the crash"; fi
if wait_until 40 is_t fresh postgres "EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'meshhook_keys scheduler' AND pid <> $pid)"; then
    ok "a scheduler runs again after crash recovery"; else fail "a scheduler runs again after crash recovery"; fi
q sched "SELECT meshhook_keys.keyring_set_policy('age-ring', interval '1 second')" >/dev/null
if wait_until 20 is_t fresh sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'age-ring') >= 3"; then
    ok "and it rotates again"; else fail "and it rotates again"; fi
q sched "SELECT meshhook_keys.keyring_set_policy('age-ring', NULL)" >/dev/null

echo "# a failing tick is rolled back, audited with its error class, retried with backoff, then works"
q postgres "ALTER SYSTEM SET meshhook_keys.root_key_file = '$TMP/keys/missing.key'" && q postgres "SELECT pg_reload_conf()" >/dev/null
q sched "SELECT meshhook_keys.keyring_set_policy('age-ring', interval '1 second')" >/dev/null
if wait_until 20 is_t fresh sched "EXISTS (SELECT 1 FROM meshhook_keys.audit_log WHERE keyring = 'age-ring' AND action = 'rotate'
                            AND outcome = 'failed' AND actor = 'scheduler' AND detail->>'error_class' = 'F0')"; then
    ok "failed rotation audited (actor scheduler, error class F0)"; else fail "failed rotation audited (actor scheduler, error class F0)"; fi
v_before=$(q sched "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'age-ring'")
check "backing off: failures counted, a next attempt set, the error kept" "t" \
    "$(q sched "SELECT failed_attempts >= 1 AND next_attempt_at IS NOT NULL AND last_error LIKE '%: F0000: root key unavailable%'
                  FROM meshhook_keys.keyrings WHERE keyring = 'age-ring'")"
q postgres "ALTER SYSTEM RESET meshhook_keys.root_key_file" && q postgres "SELECT pg_reload_conf()" >/dev/null
if wait_until 30 is_t fresh sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'age-ring') > $v_before
                   AND (SELECT failed_attempts FROM meshhook_keys.keyrings WHERE keyring = 'age-ring') = 0"; then
    ok "after the fix a later tick rotates and clears the failure"; else fail "after the fix a later tick rotates and clears the failure"; fi
attempts=$(q sched "SELECT count(*) FROM meshhook_keys.audit_log WHERE keyring = 'age-ring' AND outcome = 'failed'")
if [ "$attempts" -le 6 ]; then ok "retried with backoff, not in a hot loop ($attempts failed attempts)"; else fail "retried with backoff" "$attempts failed attempts"; fi
q sched "SELECT meshhook_keys.keyring_set_policy('age-ring', NULL)" >/dev/null

echo "# DROP EXTENSION / CREATE EXTENSION while the scheduler runs"
pid=$(sched_pid)
q sched "DROP TABLE creds; DROP EXTENSION meshhook_keys"
if wait_until 5 grep -Eq -- 'meshhook_keys is not installed in database "sched"' "$TMP/server.log"; then :; fi
q sched "CREATE EXTENSION meshhook_keys;
         SELECT 1 FROM meshhook_keys.keys_rotate('again-ring', 'v1');
         SELECT meshhook_keys.keyring_set_policy('again-ring', interval '1 second')" >/dev/null
if wait_until 20 is_t fresh sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'again-ring') >= 2"; then
    ok "the same scheduler works in the re-created extension"; else fail "the same scheduler works in the re-created extension"; fi
check "without restarting" "$pid" "$(sched_pid)"
q sched "SELECT meshhook_keys.keyring_set_policy('again-ring', NULL)" >/dev/null

echo "# a streaming standby: decrypts everything, the worker idles there, and takes over when promoted"
q sched "CREATE TABLE replicated (id int PRIMARY KEY, c bytea NOT NULL);
         INSERT INTO replicated SELECT i, meshhook_keys.secret_encrypt('R-' || i, 'r:' || i) FROM generate_series(1, 200) i;
         SELECT 1 FROM meshhook_keys.keys_rotate('default', 'before the standby');
         INSERT INTO replicated SELECT i, meshhook_keys.secret_encrypt('R-' || i, 'r:' || i) FROM generate_series(201, 300) i;" >/dev/null
install -d -o postgres -g postgres -m 755 "$SDIR"
install -d -o postgres -g postgres -m 700 "$SDIR/data"
as_pg "$PGBIN/pg_basebackup" -h "$TMP" -p "$PORT" -U postgres -D "$SDIR/data" -R -X stream >/dev/null
{ echo "port = $SPORT"; echo "unix_socket_directories = '$SDIR'"; } >> "$SDIR/data/postgresql.auto.conf"
as_pg "$PGBIN/pg_ctl" -D "$SDIR/data" -l "$SDIR/server.log" -w -t 60 start >/dev/null
q sched "INSERT INTO replicated SELECT i, meshhook_keys.secret_encrypt('R-' || i, 'r:' || i) FROM generate_series(301, 400) i" >/dev/null
if wait_until 30 is_t fresh -s sched "(SELECT count(*) FROM replicated) = 400"; then ok "standby caught up"; else fail "standby caught up"; fi
check "the standby decrypts every secret the primary wrote" 400 \
    "$(q -s sched "SELECT count(*) FROM replicated WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) = 'R-' || id")"
check "the standby is in recovery" t "$(q -s sched "SELECT pg_is_in_recovery()")"
# the read-only checks work on a standby (issue 26: they took a transaction id, which a standby
# cannot assign): health(), verify() (as each table's owner, sealed) and key_usage()
q sched "SELECT meshhook_keys.register_column('replicated', 'c', \$\$'r:' || id\$\$)" >/dev/null
wait_until 30 is_t fresh -s sched "EXISTS (SELECT 1 FROM meshhook_keys.encrypted_columns WHERE table_name = 'replicated'::regclass)" || true
check "health() on the standby: no error row" "0|t" \
    "$(q -s sched "SELECT count(*) FILTER (WHERE status = 'error'), bool_or(item = 'scheduler' AND detail LIKE '%standby%') FROM meshhook_keys.health()")"
check "verify() on the standby decrypts its sample" "t|5|5" \
    "$(q -s sched "SELECT ok, sampled, decrypted FROM meshhook_keys.verify(5) WHERE table_name = 'replicated'::regclass")"
check "key_usage() on the standby counts the rows per version" 400 \
    "$(q -s sched "SELECT sum(rows) FROM meshhook_keys.key_usage('default') WHERE table_name = 'replicated'::regclass")"
# encryptions on the standby are counted there, and reach data_key once it is promoted (issue 24)
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('stby-ring', 'v1')" >/dev/null
# (with a standby, a new version is pending until the standby replayed it, then the scheduler
# activates it: issue 26)
wait_until 30 is_t fresh -s sched "EXISTS (SELECT 1 FROM meshhook_keys.keys WHERE keyring = 'stby-ring' AND state = 'active')" || true
q -s sched "SELECT count(meshhook_keys.secret_encrypt('s', '', 'stby-ring')) FROM generate_series(1, 6)" >/dev/null
check "the standby counts its own encryptions (keyrings view)" 6 \
    "$(q -s sched "SELECT encryptions FROM meshhook_keys.keyrings WHERE keyring = 'stby-ring'")"
# a destroy on the primary binds the standby at once after replay, also for a session whose
# REPEATABLE READ snapshot on the standby predates it (issue 24)
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('stby-shred', 'v1')" >/dev/null
wait_until 30 is_t fresh sched "EXISTS (SELECT 1 FROM meshhook_keys.keys WHERE keyring = 'stby-shred' AND state = 'active')" || true
q sched "CREATE TABLE stby_shred AS SELECT meshhook_keys.secret_encrypt('shred me', '', 'stby-shred') AS c" >/dev/null
wait_until 30 is_t fresh -s sched "EXISTS (SELECT 1 FROM pg_class WHERE relname = 'stby_shred')" || true
out=$(as_pg psql -X -q -A -t -h "$SDIR" -p "$SPORT" -U postgres -d sched <<SQL 2>&1
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT meshhook_keys.secret_decrypt(c) FROM stby_shred;
\! psql -X -q -h $TMP -p $PORT -U postgres -d sched -c "SELECT meshhook_keys.keyring_destroy('stby-shred', 'standby test')" >/dev/null
\! for i in \$(seq 1 100); do [ "\$(psql -X -A -t -h $TMP -p $PORT -U postgres -d postgres -c 'SELECT pg_current_wal_lsn() <= replay_lsn FROM pg_stat_replication')" = t ] && break; sleep 0.1; done
SELECT meshhook_keys.secret_decrypt(c) FROM stby_shred;
ROLLBACK;
SELECT meshhook_keys.secret_decrypt(c) FROM stby_shred;
SQL
)
check "the standby decrypted before the destroy" "shred me" "$(echo "$out" | sed -n 1p)"
check_match "after replay, inside the old REPEATABLE READ transaction: refused" 'ERROR: +key version 1 of keyring "stby-shred" is destroyed' "$(echo "$out" | sed -n 2p)"
check_match "and in the next transaction" 'ERROR: +key version 1 of keyring "stby-shred" is destroyed' "$(echo "$out" | sed -n 3p)"
echo "# a new version encrypts only once the standby has replayed it (issue 26): a failover can never"
echo "# lose a key that sealed a ciphertext. The walsender is stopped (SIGSTOP) to hold the standby back."
# sqlstate DB SQL: the SQLSTATE the statement fails with on the primary
sqlstate() { psql_error postgres "$1" "$2" | cut -d: -f1; }
# set_conf NAME VALUE|default: ALTER SYSTEM on the primary, reloaded, and seen by a new session
set_conf() {
    if [ "$2" = default ]; then q postgres "ALTER SYSTEM RESET $1"; else q postgres "ALTER SYSTEM SET $1 = '$2'"; fi
    q postgres "SELECT pg_reload_conf()" >/dev/null
    wait_until 10 is_t fresh postgres "current_setting('$1') = $( [ "$2" = default ] && echo "(SELECT boot_val FROM pg_settings WHERE name = '$1')" || echo "'$2'")" || true
}
active_is() { is_t fresh sched "(SELECT version FROM meshhook_keys.keys WHERE keyring = '$1' AND state = 'active') = $2"; }
sched_ticks() { q sched "SELECT ticks FROM meshhook_keys.scheduler_status()"; }
is_first() { [ "$("$@")" = first ]; }
q sched "SELECT 1 FROM meshhook_keys.keyring_create('ha-ring')" >/dev/null
q other "SELECT 1 FROM meshhook_keys.keyring_create('other-ha')" >/dev/null
if wait_until 30 active_is ha-ring 1; then ok "version 1 becomes active once the standby replayed it"; else fail "version 1 becomes active"; fi
wait_until 30 is_t fresh other "EXISTS (SELECT 1 FROM meshhook_keys.keys WHERE keyring = 'other-ha' AND state = 'active')" || true
check "the activation is audited (actor scheduler, the position replayed)" "scheduler|t" \
    "$(q sched "SELECT actor, detail ? 'replayed_to' FROM meshhook_keys.audit_log WHERE keyring = 'ha-ring' AND action = 'activate'")"
wal_sender=$(q postgres "SELECT pid FROM pg_stat_replication LIMIT 1")
kill -STOP "$wal_sender"
at_exit "kill -CONT $wal_sender 2>/dev/null || true"
check "keys_rotate while the standby is held back: version 2, pending (activated_at NULL)" "2|t" \
    "$(q sched "SELECT version, activated_at IS NULL FROM meshhook_keys.keys_rotate('ha-ring', 'standby held back')")"
check "so in another database (served by database workers)" "2|t" \
    "$(q other "SELECT version, activated_at IS NULL FROM meshhook_keys.keys_rotate('other-ha', 'standby held back')")"
v1=$(q sched "SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'ha-ring' AND version = 1")
t0=$(sched_ticks)
wait_until 30 is_t fresh sched "(SELECT ticks FROM meshhook_keys.scheduler_status()) >= $t0 + 3" || true
check "three scheduler ticks later it is still pending" pending \
    "$(q sched "SELECT state FROM meshhook_keys.keys WHERE keyring = 'ha-ring' AND version = 2")"
check "and version 1 still encrypts" "$v1" \
    "$(q sched "SELECT meshhook_keys.ciphertext_key_id(meshhook_keys.secret_encrypt('held back', '', 'ha-ring'))")"
check "a second rotation is refused while one waits (55000)" 55000 \
    "$(sqlstate sched "SELECT meshhook_keys.keys_rotate('ha-ring')")"
check "the pending version cannot be retired (55000)" 55000 \
    "$(sqlstate sched "SELECT meshhook_keys.keys_retire('ha-ring', 2)")"
check "health() names the keyring, the version and the standby it waits for" t \
    "$(q sched "SELECT detail LIKE '%keyring \"ha-ring\" version 2 has waited%standby \"%' FROM meshhook_keys.health() WHERE item = 'key_activation'")"
check "metrics() has meshhook_keys_key_pending_seconds for it" t \
    "$(q sched "SELECT value >= 0 FROM meshhook_keys.metrics() WHERE metric = 'meshhook_keys_key_pending_seconds' AND keyring = 'ha-ring'")"
kill -CONT "$wal_sender"
if wait_until 30 active_is ha-ring 2; then ok "released, the standby replays it and the scheduler activates version 2"; else fail "version 2 activated after the standby replayed it"; fi
if wait_until 30 is_t fresh other "(SELECT version FROM meshhook_keys.keys WHERE keyring = 'other-ha' AND state = 'active') = 2"; then
    ok "and a database worker activates the other database's"; else fail "the other database's version 2 activated"; fi
v2=$(q sched "SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'ha-ring' AND version = 2")
check "version 2 encrypts now" "$v2" \
    "$(q sched "SELECT meshhook_keys.ciphertext_key_id(meshhook_keys.secret_encrypt('released', '', 'ha-ring'))")"
check "and the standby has it" "$v2" \
    "$(q -s sched "SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'ha-ring' AND version = 2")"

echo "# activate_after = commit (the 0.4.0 behaviour): active at once, and health() warns"
set_conf meshhook_keys.activate_after commit
wal_sender=$(q postgres "SELECT pid FROM pg_stat_replication LIMIT 1")
kill -STOP "$wal_sender"
at_exit "kill -CONT $wal_sender 2>/dev/null || true"
check "keys_rotate is active at once, replayed or not" "3|f" \
    "$(q sched "SELECT version, activated_at IS NULL FROM meshhook_keys.keys_rotate('ha-ring', 'commit mode')")"
check "health() warns that a failover can lose it" warning \
    "$(q sched "SELECT status FROM meshhook_keys.health() WHERE item = 'key_activation'")"
kill -CONT "$wal_sender"

echo "# synchronous replication, the cancel path: a cancelled wait commits locally, and the version"
echo "# stays pending until the synchronous standby replays it"
set_conf meshhook_keys.activate_after synchronous_standbys
set_conf synchronous_standby_names '*'
if wait_until 30 is_t fresh postgres "EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync')"; then
    ok "the standby is synchronous"; else fail "the standby is synchronous"; fi
wal_sender=$(q postgres "SELECT pid FROM pg_stat_replication LIMIT 1")
kill -STOP "$wal_sender"
at_exit "kill -CONT $wal_sender 2>/dev/null || true"
q sched "SELECT version, activated_at IS NULL FROM meshhook_keys.keys_rotate('ha-ring', 'sync, cancelled')" \
    > "$TMP/sync-rotate.out" 2>&1 &
rotating=$!
if wait_until 30 is_t fresh postgres "EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query LIKE '%sync, cancelled%')"; then
    ok "keys_rotate waits for the synchronous standby"; else fail "keys_rotate waits for the synchronous standby"; fi
q postgres "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query LIKE '%sync, cancelled%'" >/dev/null
wait "$rotating" || true
check_match "the cancelled wait committed locally (PostgreSQL's warning), version 4 pending" \
    "canceling wait for synchronous replication.*|4\|t" "$(tr '\n' ' ' < "$TMP/sync-rotate.out")"
check "version 4 is pending, version 3 still encrypts" "pending|3" \
    "$(q sched "SELECT (SELECT state FROM meshhook_keys.keys WHERE keyring = 'ha-ring' AND version = 4),
                       (SELECT version FROM meshhook_keys.keys WHERE keyring = 'ha-ring'
                         AND key_id = meshhook_keys.ciphertext_key_id(meshhook_keys.secret_encrypt('sync', '', 'ha-ring')))" \
        -c "SET synchronous_commit = local")"
kill -CONT "$wal_sender"
if wait_until 30 active_is ha-ring 4; then ok "once the synchronous standby replayed it, version 4 is active"; else fail "version 4 activated"; fi
set_conf synchronous_standby_names default
set_conf meshhook_keys.activate_after default

echo "# a rotation and tick() in one transaction: nothing stands for its commit yet, so tick() there"
echo "# does not fix the position to wait for (it would be before the commit record)"
set_conf meshhook_keys.worker_enabled off
wal_sender=$(q postgres "SELECT pid FROM pg_stat_replication LIMIT 1")
at_exit "kill -CONT $wal_sender 2>/dev/null || true"
out=$(as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U postgres -d sched -v ON_ERROR_STOP=1 <<SQL 2>&1
BEGIN;
SELECT version FROM meshhook_keys.keys_rotate('ha-ring', 'rotate and tick in one transaction');
SELECT outcome FROM meshhook_keys.tick() WHERE action = 'activate' AND keyring = 'ha-ring';
-- the standby replays everything up to here (another session's commits flush the WAL), all but
-- this transaction's commit record: the walsender is stopped before it
SELECT pg_current_wal_insert_lsn() AS here \gset
\setenv HERE :here
\! for i in \$(seq 1 100); do psql -X -q -h $TMP -p $PORT -U postgres -d postgres -c 'SELECT txid_current()' >/dev/null; [ "\$(psql -X -A -t -h $TMP -p $PORT -U postgres -d postgres -c "SELECT replay_lsn >= '\$HERE' FROM pg_stat_replication")" = t ] && break; sleep 0.1; done
\! kill -STOP $wal_sender
COMMIT;
SQL
)
check "tick() in the rotating transaction leaves version 5 pending" "5 skipped" "$(echo $out)"
set_conf meshhook_keys.worker_enabled on
t0=$(sched_ticks)
wait_until 30 is_t fresh sched "(SELECT ticks FROM meshhook_keys.scheduler_status()) >= $t0 + 3" || true
check "three scheduler ticks after its commit, with the standby held back, it is still pending" pending \
    "$(q sched "SELECT state FROM meshhook_keys.keys WHERE keyring = 'ha-ring' AND version = 5")"
kill -CONT "$wal_sender"
if wait_until 30 active_is ha-ring 5; then ok "released, version 5 is activated"; else fail "version 5 activated"; fi

echo "# the default keyring's first use with a standby: secret_encrypt cannot make a version that must"
echo "# wait (its error would roll it back): the workers make it, and a retry succeeds once replayed"
q postgres "CREATE DATABASE dflt"
q dflt "CREATE EXTENSION meshhook_keys"
check_match "the first secret_encrypt says the scheduler makes the key and what it waits for (55000)" \
    '^55000: version 1 of keyring "default" is pending: it waits for the scheduler to make it.*standby "' \
    "$(psql_error postgres dflt "SELECT meshhook_keys.secret_encrypt('first', 'c')")"
encrypts() { q dflt "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('first', 'c'), 'c')" 2>/dev/null; }
if wait_until 30 is_first encrypts; then ok "a retry encrypts under the default keyring's version 1"; else fail "a retry encrypts"; fi
# (activated by the scheduler, or by the retry itself if the standby had replayed it by then)
check "made by the scheduler, then activated" "create|scheduler,activate" \
    "$(q dflt "SELECT string_agg(action || CASE WHEN action = 'create' THEN '|' || actor ELSE '' END, ',' ORDER BY id) FROM meshhook_keys.audit_log WHERE keyring = 'default'")"
check_match "health() warns that the standby streams without a replication slot" \
    '^warning\|standby ".*" without a replication slot' \
    "$(q sched "SELECT status || '|' || detail FROM meshhook_keys.health() WHERE item = 'key_activation'")"

echo "# root key rotation with a standby (issue 26): the new and the previous key configured on the"
echo "# standby first, then on the primary; the scheduler rewraps there; a client of the standby"
echo "# decrypts all along and sees no error"
NEWKEY=$TMP/keys/root-2.key
make_root_key "$NEWKEY"
{ echo "meshhook_keys.root_key_file = '$NEWKEY'"; echo "meshhook_keys.root_key_previous_file = '$KEY'"; } >> "$SDIR/data/postgresql.auto.conf"
q -s sched "SELECT pg_reload_conf()" >/dev/null
stop_client=$TMP/stop-standby-client
rm -f "$stop_client"
(
    okn=0 errn=0
    while [ ! -e "$stop_client" ]; do
        if [ "$(q -s sched "SELECT count(*) FROM replicated WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) = 'R-' || id" 2>/dev/null)" = 400 ]; then
            okn=$((okn + 1)); else errn=$((errn + 1)); fi
    done
    echo "$okn $errn" > "$TMP/standby-client.count"
) &
standby_client=$!
rewraps_before=$(q sched "SELECT count(*) FROM meshhook_keys.audit_log WHERE action = 'root_rewrap' AND actor = 'scheduler'")
q postgres "ALTER SYSTEM SET meshhook_keys.root_key_file = '$NEWKEY'"
q postgres "ALTER SYSTEM SET meshhook_keys.root_key_previous_file = '$KEY'"
q postgres "SELECT pg_reload_conf()" >/dev/null
if wait_until 30 is_t q sched "SELECT count(*) > $rewraps_before FROM meshhook_keys.audit_log WHERE action = 'root_rewrap' AND actor = 'scheduler'"; then
    ok "the primary's scheduler rewrapped the data keys"; else fail "the primary's scheduler rewrapped the data keys"; fi
if wait_until 30 is_t fresh -s sched "(SELECT status FROM meshhook_keys.health() WHERE item = 'root_key_previous') = 'ok'"; then
    ok "the standby replayed the rewrap: its previous key is no longer needed"; else fail "the standby replayed the rewrap"; fi
q postgres "ALTER SYSTEM RESET meshhook_keys.root_key_previous_file" && q postgres "SELECT pg_reload_conf()" >/dev/null
sed -i '/root_key_previous_file/d' "$SDIR/data/postgresql.auto.conf"
q -s sched "SELECT pg_reload_conf()" >/dev/null
sleep_until=$(( $(date +%s) + 2 ))
while [ "$(date +%s)" -lt "$sleep_until" ]; do sleep 0.2; done   # the client goes on after the unset
touch "$stop_client"; wait "$standby_client" || true
read -r sok serr < "$TMP/standby-client.count"
check "the standby's client saw no error across the rotation ($sok full decryptions of 400 rows)" 0 "$serr"
[ "$sok" -gt 0 ] && ok "the standby's client decrypted all along" || fail "the standby's client decrypted"
check "with only the new root key, the standby decrypts every secret" 400 \
    "$(q -s sched "SELECT count(*) FROM replicated WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) = 'R-' || id")"
check "health() on the standby says its counts wait for promotion" t \
    "$(q -s sched "SELECT detail LIKE '%standby%after promotion%' FROM meshhook_keys.health() WHERE item = 'usage_counting'")"
if wait_until 20 grep -Eq -- 'server is a standby \(in recovery\); no rotation' "$SDIR/server.log"; then
    ok "the standby's scheduler says once why it does nothing"; else fail "the standby's scheduler says why it does nothing"; fi
check "tick() refuses on the standby" "t" \
    "$({ as_pg psql -X -q -A -t -h "$SDIR" -p "$SPORT" -U postgres -d sched -c "SELECT meshhook_keys.tick()" 2>&1 || true; } | grep -q 'standby' && echo t)"
q sched "SELECT 1 FROM meshhook_keys.keys_rotate('after-ring', 'v1');
         SELECT meshhook_keys.keyring_set_policy('after-ring', interval '1 second')" >/dev/null
wait_until 30 is_t fresh sched "EXISTS (SELECT 1 FROM meshhook_keys.keys WHERE keyring = 'after-ring' AND state = 'active')" || true
q postgres "ALTER SYSTEM SET meshhook_keys.worker_enabled = off" && q postgres "SELECT pg_reload_conf()" >/dev/null
wait_until 10 is_t fresh sched "(SELECT state FROM meshhook_keys.scheduler_status()) = 'disabled'" || true
versions_on_primary=$(q sched "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'after-ring'")
wait_until 20 is_t fresh -s sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'after-ring') = $versions_on_primary" || true
stop_cluster "$TMP" fast
as_pg "$PGBIN/pg_ctl" -D "$SDIR/data" -w promote >/dev/null
if wait_until 30 grep -Eq -- 'server was promoted; resuming' "$SDIR/server.log"; then ok "after promotion the scheduler resumes"; else fail "after promotion the scheduler resumes"; fi
if wait_until 30 is_t fresh -s sched "(SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'after-ring') > $versions_on_primary"; then
    ok "and rotates on the promoted server"; else fail "and rotates on the promoted server"; fi
# audit ids are never reused after a failover (issue 26): the promoted server is on timeline 2, and
# its rows are numbered from 2^40 + 1, past anything the old primary could have written after the
# fork; audit_verify() accepts that one jump and the hashes still chain
check "the promoted server numbers its audit rows from timeline 2's floor, and the chain verifies" "t|t" \
    "$(q -s sched "SELECT min(id) FILTER (WHERE id > 1099511627776) = 1099511627777, (meshhook_keys.audit_verify()).ok
                     FROM meshhook_keys.audit_log")"
if wait_until 30 is_t fresh -s sched "(SELECT encryptions FROM meshhook_keys.data_key WHERE keyring = 'stby-ring') = 6"; then
    ok "the 6 encryptions made on the standby reached data_key after promotion"; else fail "the standby's encryptions reached data_key after promotion"; fi
check "the standby's log said 'standby' once" 1 "$(count_log 'server is a standby' "$SDIR/server.log")" ||
    true
[ "$(count_log 'server is a standby' "$SDIR/server.log")" = 1 ] || grep -E 'standby|scheduler' "$SDIR/server.log" | head -20

echo "# no secrets in the logs"
check "no plaintext in the server logs" 0 "$(cat "$TMP/server.log" "$SDIR/server.log" | grep -Ec 'S-[0-9]+|R-[0-9]+' || true)"
check "no root key bytes in the server logs" 0 "$(cat "$TMP/server.log" "$SDIR/server.log" | grep -Fc "$(cat "$KEY")" || true)"

suite_summary "scheduler tests"
