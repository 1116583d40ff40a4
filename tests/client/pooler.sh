#!/usr/bin/env bash
# User-held keys behind a real connection pooler (issue 11, finding 3): Debian's PgBouncer, started
# by this script on loopback, in front of a throwaway cluster, with one server connection per pool
# so that consecutive clients share the same backend (checked by its pid).
#   - transaction mode: a transaction-scoped unlock is gone for the next client on the backend; a
#     session-scoped unlock made under one JWT sub is unusable under another sub or none;
#   - session mode with server_reset_query = DISCARD ALL: the next client inherits nothing.
# Installs the extension if it is not installed yet.
source "$(dirname "$0")/../lib.sh"

suite_setup pool "${MESHHOOK_KEYS_POOL_PORT:-54341}"
BPORT=$((PORT + 1))
stop_bouncer() { [ -f "$TMP/pgbouncer.pid" ] && kill "$(cat "$TMP/pgbouncer.pid")" 2>/dev/null; }
at_exit stop_bouncer

direct() { psql_as "$1" pooldb "$2"; }   # direct USER SQL: straight to the server
# pooled SQL: one client connection through PgBouncer; errors print as "ERROR: <SQLSTATE>"
pooled() { psql_as pool_app pooldb "$1" -h 127.0.0.1 -p "$BPORT" -v ON_ERROR_STOP=0 -v VERBOSITY=sqlstate 2>&1; }

start_bouncer() {   # MODE
    [ -f "$TMP/pgbouncer.pid" ] && { kill "$(cat "$TMP/pgbouncer.pid")"; wait_until 5 test ! -f "$TMP/pgbouncer.pid" || true; }
    cat > "$TMP/pgbouncer.ini" <<INI
[databases]
pooldb = host=$TMP port=$PORT dbname=pooldb user=pool_app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = any
pool_mode = $1
default_pool_size = 1
max_client_conn = 20
server_reset_query = DISCARD ALL
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
INI
    chown postgres "$TMP/pgbouncer.ini"
    as_pg pgbouncer -d "$TMP/pgbouncer.ini"
    wait_until 10 pooled "SELECT 1" && return 0
    echo "pgbouncer did not start"; cat "$TMP/pgbouncer.log"; exit 1
}

say "pooler tests (cluster in $TMP, PgBouncer on 127.0.0.1:$BPORT)"
psql_as postgres postgres "CREATE DATABASE pooldb"
direct postgres "CREATE EXTENSION meshhook_keys;
                 CREATE ROLE pool_app LOGIN IN ROLE meshhook_keys_user;
                 CREATE TABLE pool_t (id int PRIMARY KEY, c bytea);
                 GRANT SELECT, INSERT ON pool_t TO pool_app"
direct pool_app "SELECT 1 FROM meshhook_keys.keyring_create_user_held('user:pool:vault', 'pool-secret-1');
                 INSERT INTO pool_t VALUES (1, meshhook_keys.secret_encrypt('pooled-plaintext', 'p/1', 'user:pool:vault'))" >/dev/null
DECRYPT="SELECT meshhook_keys.secret_decrypt(c, 'p/1') FROM pool_t WHERE id = 1"

echo "# transaction mode: the next client on the same backend gets nothing"
start_bouncer transaction
pid1=$(pooled "SELECT pg_backend_pid()")
got=$(pooled "BEGIN; SELECT meshhook_keys.keyring_unlock('user:pool:vault', 'pool-secret-1', scope => 'transaction') > 0; $DECRYPT; COMMIT;")
check "a transaction-scoped unlock decrypts inside its transaction" "t
pooled-plaintext" "$got"
check "the next client is served by the same backend" "$pid1" "$(pooled "SELECT pg_backend_pid()")"
check "and cannot decrypt: the keys were zeroized at commit" "ERROR:  55000" "$(pooled "$DECRYPT")"
check "nor encrypt into the vault" "ERROR:  55000" "$(pooled "SELECT meshhook_keys.secret_encrypt('x', '', 'user:pool:vault')")"
CLAIMS_U1="SELECT set_config('request.jwt.claims', '{\"sub\":\"u1\"}', true) IS NULL"
CLAIMS_U2="SELECT set_config('request.jwt.claims', '{\"sub\":\"u2\"}', true) IS NULL"
got=$(pooled "BEGIN; $CLAIMS_U1; SELECT meshhook_keys.keyring_unlock('user:pool:vault', 'pool-secret-1') > 0; COMMIT;")
check "user u1 unlocks for the session (PostgREST-style claims)" "f
t" "$got"
check "a client without claims on that backend is refused" "ERROR:  55000" "$(pooled "$DECRYPT")"
check "still the same backend" "$pid1" "$(pooled "SELECT pg_backend_pid()")"
check "u1's own next request on it decrypts" "f
pooled-plaintext" "$(pooled "BEGIN; $CLAIMS_U1; $DECRYPT; COMMIT;")"
# (last: a request that fails inside its transaction makes PgBouncer close that server connection)
check "another user's request (sub u2) on that backend is refused" "f
$pid1
ERROR:  55000" "$(pooled "BEGIN; $CLAIMS_U2; SELECT pg_backend_pid(); $DECRYPT; COMMIT;")"

echo "# session mode with server_reset_query = DISCARD ALL: the next client inherits nothing"
start_bouncer session
pid2=$(pooled "SELECT pg_backend_pid()")
check "a session-scoped unlock decrypts in its session" "1
pooled-plaintext" "$(pooled "SELECT meshhook_keys.keyring_unlock('user:pool:vault', 'pool-secret-1'); $DECRYPT")"
check "the next client is served by the same backend" "$pid2" "$(pooled "SELECT pg_backend_pid()")"
check "and cannot decrypt: DISCARD ALL forgot the keys" "ERROR:  55000" "$(pooled "$DECRYPT")"

echo "# nothing secret in the server or pooler logs (the set-up's literal secrets included)"
if cat "$TMP/server.log" "$TMP/pgbouncer.log" | grep -q "pool-secret-1\|pooled-plaintext"; then
    fail "a secret reached a log"; else ok "no secret in the server or PgBouncer log"; fi

suite_summary "pooler tests"
