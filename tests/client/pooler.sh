#!/usr/bin/env bash
# Every feature behind a real connection pooler (issue 15, part 2; issue 11, finding 3): Debian's
# PgBouncer, started by this script on loopback, in front of a throwaway cluster, and the same
# checks over a direct connection. Each mode is one column of the README's table "Behind a
# connection pooler":
#   direct       psql straight to the server (a new backend per client);
#   session      PgBouncer pool_mode = session with server_reset_query = DISCARD ALL;
#   transaction  PgBouncer pool_mode = transaction (what Supabase's pooler and PostgREST-style
#                traffic use).
# The request pools have one server connection, so consecutive clients share one backend (checked
# by its pid): whatever a client leaves behind, the next one would find. The features:
#   encrypt/decrypt, the built-in store, tenant checks in PostgREST-style requests (SET LOCAL ROLE
#   + set_config('request.jwt.claims', ..., true)), user-held keyrings (transaction-scoped unlock,
#   session unlock bound to the JWT sub), and rotation, re-encryption and tick() run through the
#   pool while pooled clients read and write (no errors, every value exact, no client decrypts
#   another tenant's secret, every row on the new keys afterwards).
# Scenarios: ./tests/client/pooler.sh --list; ./tests/client/pooler.sh transaction runs one mode.
# Installs the extension if it is not installed yet.
source "$(dirname "$0")/../lib.sh"

scenario direct "" "every feature over direct connections"
scenario session "" "every feature behind PgBouncer in session mode (server_reset_query = DISCARD ALL)"
scenario transaction "" "every feature behind PgBouncer in transaction mode"
scenario_args "$@"

suite_setup pool "${MESHHOOK_KEYS_POOL_PORT:-25341}" "meshhook_keys.worker_enabled = off"
BPORT=$((PORT + 1))
stop_bouncer() { [ -f "$TMP/pgbouncer.pid" ] && kill "$(cat "$TMP/pgbouncer.pid")" 2>/dev/null; }
at_exit stop_bouncer
at_exit 'touch "$TMP/stop"; wait'

# The pools: PgBouncer database name -> server login role. `rest` is what PostgREST (or Supabase's
# API) connects as; `app` a backend service; `ops` an operator's tooling; `busy` the same login as
# `rest` with two server connections, for the clients that work while the operator rotates.
declare -A LOGIN=([app]=pool_app [rest]=authenticator [busy]=authenticator [ops]=pool_ops)
MODE=direct
# via POOL SQL: one client connection in the current MODE, sending SQL's statements one by one as
# an application does (after an error the rest still runs, so a request's COMMIT ends its failed
# transaction as PostgREST's ROLLBACK would); errors print as "ERROR:  <SQLSTATE>".
via() {
    local pool=$1 sql=$2 conn=(-h "$TMP" -p "$PORT" -d pooldb)
    [ "$MODE" = direct ] || conn=(-h 127.0.0.1 -p "$BPORT" -d "$pool")
    printf '%s\n' "$sql" \
        | as_pg psql -X -q -A -t "${conn[@]}" -U "${LOGIN[$pool]}" -v ON_ERROR_STOP=0 -v VERBOSITY=sqlstate -f - 2>&1 \
        | sed 's/^psql:<stdin>:[0-9]*: //'
}
direct() { psql_as "$1" pooldb "$2"; }   # direct USER SQL: set-up and final checks, straight to the server
pid_of() { via "$1" "SELECT pg_backend_pid()"; }
# same_backend POOL PID LABEL: in a pooled mode, the next client of POOL is served by backend PID.
same_backend() {
    if [ "$MODE" != direct ]; then check "[$MODE] $3: the next client is served by the same backend" "$2" "$(pid_of "$1")"; fi
}

start_bouncer() {   # MODE
    [ -f "$TMP/pgbouncer.pid" ] && { kill "$(cat "$TMP/pgbouncer.pid")"; wait_until 5 test ! -f "$TMP/pgbouncer.pid" || true; }
    cat > "$TMP/pgbouncer.ini" <<INI
[databases]
app = host=$TMP port=$PORT dbname=pooldb user=pool_app pool_size=1
rest = host=$TMP port=$PORT dbname=pooldb user=authenticator pool_size=1
busy = host=$TMP port=$PORT dbname=pooldb user=authenticator pool_size=2
ops = host=$TMP port=$PORT dbname=pooldb user=pool_ops pool_size=1
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = any
pool_mode = $1
max_client_conn = 50
server_reset_query = DISCARD ALL
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
INI
    chown postgres "$TMP/pgbouncer.ini"
    as_pg pgbouncer -d "$TMP/pgbouncer.ini"
    MODE=$1
    wait_until 10 is_t via app "SELECT true" && return 0
    echo "pgbouncer did not start"; cat "$TMP/pgbouncer.log"; exit 1
}

say "pooler tests (cluster in $TMP, PgBouncer on 127.0.0.1:$BPORT)"
psql_as postgres postgres "CREATE DATABASE pooldb"
direct postgres "CREATE EXTENSION meshhook_keys" >/dev/null
as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d pooldb -v ON_ERROR_STOP=1 -f "$REPO_ROOT/examples/meshhook/schema.sql" >/dev/null
direct postgres "ALTER DATABASE pooldb SET meshhook_keys.tenant_check = 'app.may_use_project_keyring';
                 CREATE ROLE pool_app LOGIN IN ROLE meshhook_keys_user;
                 CREATE ROLE authenticator LOGIN NOINHERIT;
                 GRANT anon, authenticated, service_role TO authenticator;
                 CREATE ROLE pool_ops LOGIN IN ROLE meshhook_keys_operator;
                 CREATE TABLE pool_t (id int PRIMARY KEY, c bytea);
                 GRANT SELECT, INSERT ON pool_t TO pool_app;
                 SELECT app.create_project('p1', 'Acme'), app.create_project('p2', 'Globex');
                 INSERT INTO app.project_members VALUES ('p1', 'alice'), ('p2', 'bob');
                 SELECT count(*) FROM meshhook_keys.keys_rotate('default')" >/dev/null
direct postgres "SET ROLE service_role;
                 SELECT app.put_secret('p1', 'stripe', 'sk_p1_stripe'), app.put_secret('p1', 'github', 'gh_p1'),
                        app.put_secret('p2', 'slack', 'xoxb_p2');
                 RESET ROLE;
                 -- ciphertexts that got out of their rows (and out of RLS's reach)
                 CREATE TABLE stolen AS SELECT project_id, key, value_encrypted AS c FROM app.secrets;
                 GRANT SELECT ON stolen TO authenticated" >/dev/null
direct pool_app "SELECT 1 FROM meshhook_keys.keyring_create_user_held('user:pool_app:vault', 'pool-secret-1');
                 INSERT INTO pool_t VALUES (1, meshhook_keys.secret_encrypt('pooled-plaintext', 'p/1', 'user:pool_app:vault'))" >/dev/null
DECRYPT="SELECT meshhook_keys.secret_decrypt(c, 'p/1') FROM pool_t WHERE id = 1"

# request SUB ROLE SQL: a PostgREST request: one transaction that sets the JWT claims and the role
# for itself only (SUB empty: no claims at all), then runs SQL.
# (the claims are set in a DO block only so that psql prints nothing for them)
request() {
    local claims=
    [ -n "$1" ] && claims="DO \$r\$ BEGIN PERFORM set_config('request.jwt.claims', '{\"sub\":\"$1\",\"role\":\"$2\"}', true); END \$r\$;"
    via "${4:-rest}" "BEGIN; $claims SET LOCAL ROLE $2; $3; COMMIT;"
}
SHOW="SELECT project_id || '|' || key || '|' || value FROM app.decrypted_secrets
       WHERE key IN ('github', 'stripe', 'slack') ORDER BY 1"
STOLEN="SELECT meshhook_keys.secret_decrypt(c, project_id || '/' || key) FROM stolen"
P1="p1|github|gh_p1
p1|stripe|sk_p1_stripe"
P2="p2|slack|xoxb_p2"

# ---- the features, in the current MODE -----------------------------------------------------------
features() {
    local m=$MODE pid out
    echo "# [$m] encrypt / decrypt"
    out=$(via app "SELECT meshhook_keys.secret_encrypt('pooled-$m', 'ctx/$m')")
    check "[$m] a client's ciphertext decrypts for the next client" "pooled-$m" \
        "$(via app "SELECT meshhook_keys.secret_decrypt('$out'::bytea, 'ctx/$m')")"
    check "[$m] under the wrong context it is refused" "ERROR:  XX001" \
        "$(via app "SELECT meshhook_keys.secret_decrypt('$out'::bytea, 'ctx/other')")"

    echo "# [$m] built-in store"
    check "[$m] the service role stores a secret" "t" \
        "$(request "" service_role "SELECT meshhook_keys.secret_create('store-$m', 'stored-$m') IS NOT NULL")"
    check "[$m] and reads it back in the next request" "stored-$m" \
        "$(request "" service_role "SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'store-$m'")"
    check "[$m] a signed-in user does not see it" "0" \
        "$(request alice authenticated "SELECT count(*) FROM meshhook_keys.decrypted_secrets")"

    echo "# [$m] tenant checks in PostgREST-style requests"
    pid=$(pid_of rest)
    check "[$m] alice (p1) decrypts p1's secrets, and only those" "$P1" "$(request alice authenticated "$SHOW")"
    same_backend rest "$pid" "tenants"
    check "[$m] bob (p2) next, on that backend: p2's only" "$P2" "$(request bob authenticated "$SHOW")"
    check "[$m] alice decrypts p1's ciphertexts that left their rows" "gh_p1
sk_p1_stripe" "$(request alice authenticated "$STOLEN WHERE project_id = 'p1' ORDER BY key")"
    check "[$m] but not p2's (tenant check)" "ERROR:  42501" \
        "$(request alice authenticated "$STOLEN WHERE project_id = 'p2'")"
    check "[$m] a request without claims after hers sees no rows" "0" \
        "$(request "" authenticated "SELECT count(*) FROM app.decrypted_secrets")"
    check "[$m] and cannot decrypt p1's ciphertexts" "ERROR:  42501" \
        "$(request "" authenticated "$STOLEN WHERE project_id = 'p1'")"
    check "[$m] nor can the pool's login role itself (NOINHERIT: no tenant, no user grant)" "ERROR:  42501" \
        "$(via rest "$STOLEN WHERE project_id = 'p1'")"
    same_backend rest "$pid" "tenants, after the refusals"
    check "[$m] alice writes a secret for p1 in a request" "" \
        "$(request alice authenticated "SELECT app.put_secret('p1', 'from-$m', 'alice-$m')")"
    check "[$m] bob cannot write into p1's keyring" "ERROR:  42501" \
        "$(request bob authenticated "SELECT app.put_secret('p1', 'bob-$m', 'x')")"
    check "[$m] her write decrypts in her next request" "alice-$m" \
        "$(request alice authenticated "SELECT value FROM app.decrypted_secrets WHERE key = 'from-$m'")"

    echo "# [$m] user-held keyrings"
    pid=$(pid_of app)
    check "[$m] a transaction-scoped unlock decrypts inside its transaction" "t
pooled-plaintext" "$(via app "BEGIN; SELECT meshhook_keys.keyring_unlock('user:pool_app:vault', 'pool-secret-1', scope => 'transaction') > 0; $DECRYPT; COMMIT;")"
    same_backend app "$pid" "user-held"
    check "[$m] the next client cannot decrypt: the keys were zeroized at commit" "ERROR:  55000" "$(via app "$DECRYPT")"
    check "[$m] nor encrypt into the vault" "ERROR:  55000" "$(via app "SELECT meshhook_keys.secret_encrypt('x', '', 'user:pool_app:vault')")"
    check "[$m] a session unlock decrypts in its own session" "1
pooled-plaintext" "$(via app "SELECT meshhook_keys.keyring_unlock('user:pool_app:vault', 'pool-secret-1'); $DECRYPT")"
    same_backend app "$pid" "user-held, session unlock"
    case $m in
        transaction)
            # In transaction mode a session unlock outlives its client on the backend; it is bound
            # to the JWT sub it was made under, so only that sub can use it.
            CLAIMS_U1="SELECT set_config('request.jwt.claims', '{\"sub\":\"u1\"}', true) IS NULL"
            CLAIMS_U2="SELECT set_config('request.jwt.claims', '{\"sub\":\"u2\"}', true) IS NULL"
            # Made without claims, it is bound to the login role and no sub: the next client of
            # the same login without claims is, to PostgreSQL, the same caller. Hence the README:
            # behind a transaction pooler, unlock with scope => 'transaction'.
            check "[$m] the next client of the same login without claims still has it" "pooled-plaintext" "$(via app "$DECRYPT")"
            via app "SELECT meshhook_keys.keyring_lock('user:pool_app:vault')" >/dev/null
            check "[$m] until it is locked" "ERROR:  55000" "$(via app "$DECRYPT")"
            check "[$m] u1 unlocks for the session (PostgREST-style claims)" "f
t" "$(via app "BEGIN; $CLAIMS_U1; SELECT meshhook_keys.keyring_unlock('user:pool_app:vault', 'pool-secret-1') > 0; COMMIT;")"
            check "[$m] a client without claims on that backend is refused" "ERROR:  55000" "$(via app "$DECRYPT")"
            same_backend app "$pid" "user-held, after u1's unlock"
            check "[$m] u1's own next request on it decrypts" "f
pooled-plaintext" "$(via app "BEGIN; $CLAIMS_U1; $DECRYPT; COMMIT;")"
            check "[$m] another user's request (sub u2) on that backend is refused" "f
$pid
ERROR:  55000" "$(via app "BEGIN; $CLAIMS_U2; SELECT pg_backend_pid(); $DECRYPT; COMMIT;")"
            same_backend app "$pid" "user-held, after u2's refusal"
            check "[$m] u1 locks it again" "f
t" "$(via app "BEGIN; $CLAIMS_U1; SELECT meshhook_keys.keyring_lock('user:pool_app:vault'); COMMIT;")"
            check "[$m] and then u1 cannot decrypt either" "ERROR:  55000" "$(via app "BEGIN; $CLAIMS_U1; $DECRYPT; COMMIT;" | tail -1)" ;;
        *)
            check "[$m] the next client inherits nothing (${m/session/DISCARD ALL}${m/direct/a new backend})" \
                "ERROR:  55000" "$(via app "$DECRYPT")" ;;
    esac

    under_load
}

# ---- rotation, re-encryption and tick() through the pool while pooled clients work ---------------
# worker NAME SQL EXPECTED: run SQL as a client again and again (at least 5 times, then until
# $TMP/stop exists, at most 400 times), appending "ok" or "BAD <output>" per run to $TMP/NAME.out.
worker() {
    local name=$1 sql=$2 want=$3 i=0 got want_i
    : > "$TMP/$name.out"
    while [ "$i" -lt 400 ] && { [ "$i" -lt 5 ] || [ ! -f "$TMP/stop" ]; }; do
        got=$(eval "$sql" 2>&1) || true
        want_i=${want//@I@/$i}
        if [ "$got" = "$want_i" ]; then echo ok; else echo "BAD $(tr '\n' ' ' <<<"$got")"; fi >> "$TMP/$name.out"
        i=$((i + 1))
    done
}
runs() { local n; n=$(grep -c . "$TMP/$1.out" 2>/dev/null) || true; echo "${n:-0}"; }
on_active_version() {   # KEYRING: every registered row of it is on its active version
    is_t direct postgres "SELECT coalesce(bool_and(u.version = k.active_version), true)
                            FROM meshhook_keys.key_usage('$1') u, meshhook_keys.keyrings k
                           WHERE k.keyring = '$1' AND u.version IS NOT NULL"
}
# mark NAME...: remember each worker's run count; ran_3_more NAME...: each has run 3 more times
# since its mark (0 before any mark).
declare -A MARK=()
mark() { local w; for w in "$@"; do MARK[$w]=$(runs "$w"); done; }
ran_3_more() { local w; for w in "$@"; do [ "$(runs "$w")" -ge $((${MARK[$w]:-0} + 3)) ] || return 1; done; }
# tick_done: one tick() through the ops pool (a reported failure is kept in TICK_ERR), then
# whether project:p2 is on its active version. Counts its calls in TICKS.
tick_done() {
    TICKS=$((TICKS + 1))
    local t
    t=$(via ops "SELECT coalesce(string_agg(action || ' ' || outcome || ': ' || detail, '; '), '')
                   FROM meshhook_keys.tick() WHERE outcome <> 'ok'")
    [ -z "$t" ] || TICK_ERR=$t
    on_active_version project:p2
}

under_load() {
    local m=$MODE w bad ops_out
    echo "# [$m] rotation, re-encryption and tick() run through the pool while clients work"
    rm -f "$TMP/stop"
    local VERSIONS="SELECT string_agg(keyring || '=' || active_version, ',' ORDER BY keyring) FROM meshhook_keys.keyrings
                     WHERE keyring IN ('project:p1', 'project:p2', 'default')"
    local expected
    expected=$(direct postgres "${VERSIONS/active_version/(active_version + 1)}")
    worker "alice_$m" "request alice authenticated \"\$SHOW\" busy" "$P1" &
    worker "bob_$m" "request bob authenticated \"\$SHOW\" busy" "$P2" &
    worker "writer_$m" "request alice authenticated \"SELECT app.put_secret('p1', 'w-$m-\$i', 'v\$i'); SELECT value FROM app.decrypted_secrets WHERE key = 'w-$m-\$i'\" busy" "
v@I@" &
    worker "app_$m" "via busy \"BEGIN; SET LOCAL ROLE service_role; SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('a\$i', 'c'), 'c'); COMMIT;\"" "a@I@" &
    local names=("alice_$m" "bob_$m" "writer_$m" "app_$m")
    MARK=()
    if ! wait_until 60 ran_3_more "${names[@]}"; then fail "[$m] the clients did not start"; fi
    # the operator's tooling, through the pool: rotate all three, re-encrypt one keyring with
    # CALL reencrypt (it commits per batch), and let tick() re-encrypt the others
    ops_out=$(via ops "SELECT count(*) FROM meshhook_keys.keys_rotate('project:p1');
                       SELECT count(*) FROM meshhook_keys.keys_rotate('project:p2');
                       SELECT count(*) FROM meshhook_keys.keys_rotate('default');")
    check "[$m] the operator rotates through the pool" "1
1
1" "$ops_out"
    ops_out=$(via ops "CALL meshhook_keys.reencrypt('project:p1', batch_size => 2)")
    check "[$m] CALL reencrypt runs through the pool (commits per batch)" "" "$(grep -v '^NOTICE' <<<"$ops_out")"
    # (the background scheduler is off in this cluster: what moves project:p2 is tick())
    TICKS=0 TICK_ERR=
    if wait_until 60 tick_done; then ok "[$m] tick() through the pool re-encrypts project:p2 ($TICKS ticks)"
    else fail "[$m] project:p2 not re-encrypted by tick() within 60 s"; fi
    check "[$m] no tick() reported a failure" "" "$TICK_ERR"
    # and the clients keep working for a few runs after the last rotation
    mark "${names[@]}"
    wait_until 60 ran_3_more "${names[@]}" || fail "[$m] the clients stopped working after the rotation"
    touch "$TMP/stop"
    wait
    for w in "${names[@]}"; do
        bad=$(grep -m1 '^BAD' "$TMP/$w.out" || true)
        check "[$w] $(runs "$w") requests while rotating, every one exact" "" "$bad"
    done
    check "[$m] every keyring rotated exactly once" "$expected" "$(direct postgres "$VERSIONS")"
    if on_active_version project:p1 && on_active_version project:p2; then ok "[$m] every registered row is on the new keys"
    else fail "[$m] rows left on old keys" "$(direct postgres "SELECT * FROM meshhook_keys.key_usage('project:p1') UNION ALL SELECT * FROM meshhook_keys.key_usage('project:p2')")"; fi
    check "[$m] every row the writer wrote decrypts to its value" "0" \
        "$(direct postgres "SET ROLE service_role; SELECT count(*) FROM app.decrypted_secrets WHERE key LIKE 'w-$m-%' AND value <> 'v' || split_part(key, '-', 3)")"
}

scenario_direct() { MODE=direct; features; }
scenario_session() { start_bouncer session; features; }
scenario_transaction() { start_bouncer transaction; features; }
run_scenarios

echo "# nothing secret in the server or pooler logs (the set-up's literal secrets included)"
if cat "$TMP/server.log" "$TMP/pgbouncer.log" 2>/dev/null | grep -q "pool-secret-1\|pooled-plaintext\|sk_p1_stripe\|xoxb_p2"; then
    fail "a secret reached a log"; else ok "no secret in the server or PgBouncer log"; fi

suite_summary "pooler tests"
