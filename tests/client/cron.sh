#!/usr/bin/env bash
# The non-preloaded mode, driven by real pg_cron (issue 12, items 5 and 6): a cluster whose
# shared_preload_libraries holds pg_cron only, as on platforms that do not let you preload
# meshhook_keys.
#   - CREATE EXTENSION and LOAD work (before 0.5.0 both ended the backend with FATAL: cannot create
#     PGC_POSTMASTER variables after startup), and so does every later backend that loads the library;
#   - encrypt, decrypt, rotate, CALL reencrypt(), retire, destroy, all without preloading;
#   - a pg_cron job running tick() every minute rotates a due keyring *and* re-encrypts its rows in
#     the same run (item 6), audited with actor "scheduler";
#   - a pg_cron job running CALL meshhook_keys.reencrypt() on its own;
#   - scheduler_status() and health() say that the library is not preloaded.
# pg_cron 1.4 (Debian 12) schedules by the minute: the two scheduled checks wait up to ~2 minutes.
# Installs the extension if it is not installed yet.
source "$(dirname "$0")/../lib.sh"

suite_setup cron "${MESHHOOK_KEYS_CRON_PORT:-25347}" \
    "shared_preload_libraries = 'pg_cron'" \
    "cron.database_name = 'crondb'" \
    "cron.use_background_workers = on" \
    "max_worker_processes = 20"

q() { psql_as "${2:-postgres}" crondb "$1"; }   # q SQL [USER]

say "cron tests (cluster in $TMP, port $PORT, shared_preload_libraries = 'pg_cron' only)"
psql_as postgres postgres "CREATE DATABASE crondb" >/dev/null
# (restarted so that pg_cron's launcher finds its database from the start)
stop_cluster "$TMP"; start_cluster "$TMP"
LOG_FROM=$(( $(wc -l < "$TMP/server.log") + 1 ))
fatal_lines() { tail -n +"$LOG_FROM" "$TMP/server.log" | grep -E 'FATAL|terminated by signal|PANIC' || true; }

echo "# loading without preloading"
check "meshhook_keys is not preloaded" "pg_cron" "$(q "SHOW shared_preload_libraries")"
check "CREATE EXTENSION meshhook_keys works" "" "$(q "CREATE EXTENSION meshhook_keys" 2>&1)"
check "LOAD in a fresh backend works" "1" "$(q "LOAD 'meshhook_keys'; SELECT 1" 2>&1)"
check "a fresh backend's first call loads the library" "t" \
    "$(q "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('x')) = 'x'" 2>&1)"
check "no backend ended with FATAL" "" "$(fatal_lines)"
check "scheduler_status() says it is not preloaded" "not preloaded|false" \
    "$(q "SELECT state || '|' || counting_encryptions FROM meshhook_keys.scheduler_status()" 2>&1)"
check "health() warns that the worker does not run" "t" \
    "$(q "SELECT count(*) > 0 FROM meshhook_keys.health() WHERE item = 'preload' AND status = 'warning'" 2>&1)"

echo "# encrypt, decrypt, rotate, re-encrypt, retire, destroy"
q "CREATE ROLE cron_app LOGIN IN ROLE meshhook_keys_user;
   CREATE TABLE creds (id int PRIMARY KEY, c bytea);
   ALTER TABLE creds OWNER TO cron_app;
   SELECT meshhook_keys.keyring_create('manual');
   SELECT meshhook_keys.register_column('creds', 'c', \$\$'creds:' || id\$\$, 'manual');" >/dev/null
q "INSERT INTO creds SELECT g, meshhook_keys.secret_encrypt('secret ' || g, 'creds:' || g, 'manual')
   FROM generate_series(1, 500) g" cron_app >/dev/null
check "the table owner decrypts" 500 \
    "$(q "SELECT count(*) FROM creds WHERE meshhook_keys.secret_decrypt(c, 'creds:' || id) = 'secret ' || id" cron_app)"
check "keys_rotate makes version 2 active" 2 "$(q "SELECT version FROM meshhook_keys.keys_rotate('manual', 'cron test')")"
q "CALL meshhook_keys.reencrypt('manual')" >/dev/null
check "CALL reencrypt() moved every row to version 2" "500|500" \
    "$(q "SELECT count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.data_key WHERE keyring = 'manual' AND version = 2)) || '|' ||
             count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'creds:' || id) = 'secret ' || id) FROM creds")"
q "SELECT meshhook_keys.keys_retire('manual', 1)" >/dev/null
check "version 1 is retired" "retired" "$(q "SELECT state FROM meshhook_keys.data_key WHERE keyring = 'manual' AND version = 1")"
q "SELECT meshhook_keys.keys_destroy('manual', 1)" >/dev/null
check "version 1 is destroyed" "destroyed" "$(q "SELECT state FROM meshhook_keys.data_key WHERE keyring = 'manual' AND version = 1")"
check "rows still decrypt after the old version is gone" 500 \
    "$(q "SELECT count(*) FROM creds WHERE meshhook_keys.secret_decrypt(c, 'creds:' || id) = 'secret ' || id" cron_app)"
check "encryptions are not counted without preloading" "" \
    "$(q "SELECT encryptions FROM meshhook_keys.keyrings WHERE keyring = 'manual'")"

echo "# tick() every minute from pg_cron: rotation and re-encryption in the same run"
q "CREATE EXTENSION pg_cron" >/dev/null
q "CREATE ROLE cron_admin LOGIN IN ROLE meshhook_keys_admin;
   GRANT USAGE ON SCHEMA cron TO cron_admin;
   CREATE TABLE tokens (id int PRIMARY KEY, c bytea);
   ALTER TABLE tokens OWNER TO cron_app;
   SELECT meshhook_keys.keyring_create('aging');
   SELECT meshhook_keys.register_column('tokens', 'c', \$\$'tokens:' || id\$\$, 'aging');" >/dev/null
q "INSERT INTO tokens SELECT g, meshhook_keys.secret_encrypt('token ' || g, 'tokens:' || g, 'aging')
   FROM generate_series(1, 300) g" cron_app >/dev/null
# (due for certain when pg_cron's first run comes: the next minute boundary may be less than the
# interval after the keyring was created, which made this check fail about once in 60 runs)
q "SELECT meshhook_keys.keyring_set_policy('aging', interval '1 second');
   UPDATE meshhook_keys.data_key SET activated_at = activated_at - interval '1 minute' WHERE keyring = 'aging'" >/dev/null
check "the job is scheduled as an admin role" "t" \
    "$(q "SELECT cron.schedule('meshhook-keys-tick', '* * * * *', \$\$SELECT count(*) FROM meshhook_keys.tick()\$\$) > 0" cron_admin)"
if wait_until 150 is_t q "SELECT EXISTS (SELECT FROM cron.job_run_details d JOIN cron.job j USING (jobid)
                     WHERE j.jobname = 'meshhook-keys-tick' AND d.status IN ('succeeded', 'failed'))"; then
    ok "pg_cron ran the tick job"; else fail "pg_cron ran the tick job" "$(q "SELECT * FROM cron.job_run_details")"; fi
check "the run succeeded" "succeeded" \
    "$(q "SELECT string_agg(d.status || coalesce(' ' || d.return_message, ''), ', ') FROM cron.job_run_details d JOIN cron.job j USING (jobid)
          WHERE j.jobname = 'meshhook-keys-tick' AND d.status <> 'succeeded'" | sed 's/^$/succeeded/')"
q "SELECT cron.unschedule('meshhook-keys-tick')" cron_admin >/dev/null
check "the first run rotated the due keyring" "t" \
    "$(q "SELECT active_version >= 2 FROM meshhook_keys.keyrings WHERE keyring = 'aging'")"
check "... and re-encrypted every row in the same run" "300|300" \
    "$(q "SELECT count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.data_key WHERE keyring = 'aging' AND state = 'active')) || '|' ||
             count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'tokens:' || id) = 'token ' || id) FROM tokens")"
check "the rotation is audited with actor scheduler" "t" \
    "$(q "SELECT count(*) > 0 FROM meshhook_keys.audit_log WHERE action = 'rotate' AND keyring = 'aging' AND actor = 'scheduler'")"

echo "# CALL reencrypt() as its own pg_cron job"
q "SELECT meshhook_keys.keyring_set_policy('aging', NULL)" >/dev/null
q "SELECT meshhook_keys.keys_rotate('aging', 'manual rotation, re-encrypted by cron')" >/dev/null
check "the re-encryption job is scheduled" "t" \
    "$(q "SELECT cron.schedule('meshhook-keys-reencrypt', '* * * * *', \$\$CALL meshhook_keys.reencrypt('aging')\$\$) > 0" cron_admin)"
if wait_until 150 is_t q "SELECT EXISTS (SELECT FROM cron.job_run_details d JOIN cron.job j USING (jobid)
                     WHERE j.jobname = 'meshhook-keys-reencrypt' AND d.status IN ('succeeded', 'failed'))"; then
    ok "pg_cron ran the re-encryption job"; else fail "pg_cron ran the re-encryption job" "$(q "SELECT * FROM cron.job_run_details")"; fi
check "the run succeeded" "succeeded" \
    "$(q "SELECT string_agg(DISTINCT d.status, ', ') FROM cron.job_run_details d JOIN cron.job j USING (jobid)
          WHERE j.jobname = 'meshhook-keys-reencrypt'")"
q "SELECT cron.unschedule('meshhook-keys-reencrypt')" cron_admin >/dev/null
check "the job re-encrypted every row" "300|300" \
    "$(q "SELECT count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.data_key WHERE keyring = 'aging' AND state = 'active')) || '|' ||
             count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'tokens:' || id) = 'token ' || id) FROM tokens")"
check "no backend ended with FATAL or crashed" "" "$(fatal_lines)"

suite_summary "cron"
