#!/usr/bin/env bash
# Logical replication of the key tables (issue 26): a publisher and a subscriber cluster (same root
# key), the publication carrying meshhook_keys.keyring and meshhook_keys.data_key with the
# application's table. The subscriber decrypts what the publisher writes, follows its rotations,
# and never makes a key of its own: its background workers skip the database (a rotation there
# would stop the apply) and keys_rotate there is refused (55000). A subscriber client decrypts
# without error while the publisher rotates, re-encrypts, retires and destroys, and a subscriber
# session that holds a key is refused it at its next statement once the retire or destroy is
# applied. Every wait polls a condition with a deadline.
source "$(dirname "$0")/../lib.sh"

suite_init logical "${MESHHOOK_KEYS_LOGICAL_PORT:-25352}" \
    "wal_level = logical" "meshhook_keys.database = 'pub'" "meshhook_keys.worker_naptime = '500ms'"
start_cluster "$TMP"
SUB=$TMP/sub
SPORT=$((PORT + 100))
init_cluster "$SUB" "$SPORT" "meshhook_keys.root_key_file = '$KEY'" \
    "meshhook_keys.database = 'sub'" "meshhook_keys.worker_naptime = '500ms'"
at_exit 'stop_cluster "$SUB" immediate'
start_cluster "$SUB"

qp() { psql_as postgres "$@"; }                                   # qp DB SQL: the publisher
qs() { as_pg psql -X -q -A -t -h "$SUB" -p "$SPORT" -U postgres -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
qse() { { as_pg psql -X -q -A -t -h "$SUB" -p "$SPORT" -U postgres -v VERBOSITY=verbose -d "$1" -c "$2" 2>&1 || true; } \
    | sed -n 's/^ERROR: *\([0-9A-Z]\{5\}\): \(.*\)$/\1: \2/p' | head -1; }
say "logical replication tests (publisher port $PORT, subscriber port $SPORT)"

qp postgres "CREATE DATABASE pub"
qs postgres "CREATE DATABASE sub"
qp pub "CREATE EXTENSION meshhook_keys;
        SELECT 1 FROM meshhook_keys.keyring_create('app');
        CREATE TABLE integration (id int PRIMARY KEY, token bytea NOT NULL);
        INSERT INTO integration SELECT i, meshhook_keys.secret_encrypt('TOKEN-' || i, i::text, 'app') FROM generate_series(1, 200) i;
        SELECT meshhook_keys.register_column('integration', 'token', 'id::text', 'app');
        CREATE PUBLICATION keys FOR TABLE meshhook_keys.keyring, meshhook_keys.data_key, integration" >/dev/null
qs sub "CREATE EXTENSION meshhook_keys;
        CREATE TABLE integration (id int PRIMARY KEY, token bytea NOT NULL)"
qs sub "CREATE SUBSCRIPTION keys CONNECTION 'host=$TMP port=$PORT user=postgres dbname=pub' PUBLICATION keys" >/dev/null 2>&1
decrypted_on_sub() { qs sub "SELECT count(*) FROM integration WHERE meshhook_keys.secret_decrypt(token, id::text) = 'TOKEN-' || id"; }
# The initial copy syncs each table on its own: a row can arrive before its key. Wait, as the docs
# tell users to, until every table of the subscription is ready.
if wait_until 30 is_t qs sub "SELECT (SELECT count(*) FROM integration) = 200
        AND NOT EXISTS (SELECT FROM pg_subscription_rel WHERE srsubstate <> 'r')"; then
    ok "the subscriber received the application's rows and every table is synchronized"
else fail "the subscriber received the rows and synchronized every table"; fi
check "and decrypts all of them with the replicated keys" 200 "$(decrypted_on_sub)"

echo "# the subscriber never makes a key: a rotation there is refused, its workers skip it"
check_match "keys_rotate on the subscriber is refused (55000)" \
    '^55000: this database receives meshhook_keys.* keys by logical replication \(subscription "keys"\)' \
    "$(qse sub "SELECT * FROM meshhook_keys.keys_rotate('app', 'on the subscriber')")"
check_match "so is the first use of a keyring that does not exist there" '^55000: ' \
    "$(qse sub "SELECT meshhook_keys.secret_encrypt('x', '', 'default')")"
check_match "tick() there says why it does nothing" 'skipped.*keys come from the publisher' \
    "$(qs sub "SELECT action || ' ' || outcome || ' ' || detail FROM meshhook_keys.tick()")"

echo "# the publisher rotates on its schedule: the subscriber follows, decrypts old and new, and its"
echo "# own scheduler (whose database it is) never rotates the replicated keyring"
qp pub "SELECT meshhook_keys.keyring_set_policy('app', '1 second', NULL)" >/dev/null
if wait_until 30 is_t qp pub "SELECT active_version >= 3 FROM meshhook_keys.keyrings WHERE keyring = 'app'"; then
    ok "the publisher's scheduler rotated twice"; else fail "the publisher's scheduler rotated"; fi
qp pub "INSERT INTO integration SELECT i, meshhook_keys.secret_encrypt('TOKEN-' || i, i::text, 'app') FROM generate_series(201, 300) i" >/dev/null
pub_versions=$(qp pub "SELECT string_agg(version::text, ',' ORDER BY version) FROM meshhook_keys.data_key WHERE keyring = 'app'")
if wait_until 30 is_t qs sub "SELECT count(*) = 300 FROM integration"; then ok "new rows arrived"; else fail "new rows arrived"; fi
wait_until 30 is_t qs sub "SELECT string_agg(version::text, ',' ORDER BY version) = '$pub_versions' FROM meshhook_keys.data_key WHERE keyring = 'app'" || true
check "the subscriber decrypts rows sealed under every version" 300 "$(decrypted_on_sub)"
check "its key versions are exactly the publisher's (none of its own)" "$pub_versions" \
    "$(qs sub "SELECT string_agg(version::text, ',' ORDER BY version) FROM meshhook_keys.data_key WHERE keyring = 'app'")"
check "the apply never stopped (no worker error in the subscriber's log)" 0 \
    "$(grep -Ec 'logical replication (apply worker|worker).*(ERROR|exited)|duplicate key value' "$SUB/server.log" || true)"

qp pub "ALTER SYSTEM SET meshhook_keys.worker_enabled = off" >/dev/null
qp pub "SELECT pg_reload_conf()" >/dev/null

echo "# the subscriber decrypts continuously while the publisher rotates, re-encrypts, retires and"
echo "# destroys: no error, and what was retired or destroyed there is refused after replay"
old_ct=$(qs sub "SELECT encode(token, 'base64') FROM integration WHERE id = 1")
old_versions=$(qp pub "SELECT string_agg(version::text, ',') FROM meshhook_keys.data_key WHERE keyring = 'app'")
stop_loop=$TMP/stop-sub-client
(
    rounds=0; errors=0
    while [ ! -e "$stop_loop" ]; do
        got=$(qs sub "SELECT count(*) FROM integration WHERE meshhook_keys.secret_decrypt(token, id::text) = 'TOKEN-' || id" 2>/dev/null || echo error)
        if [ "$got" = 300 ]; then rounds=$((rounds + 1)); else errors=$((errors + 1)); fi
    done
    echo "$rounds $errors" > "$TMP/sub-client.count"
) &
sub_client=$!
qp pub "SELECT 1 FROM meshhook_keys.keys_rotate('app', 'before the retire')" >/dev/null
qp pub "CALL meshhook_keys.reencrypt('app', 50)" -c "SET client_min_messages = warning" >/dev/null
for v in ${old_versions//,/ }; do
    qp pub "SELECT meshhook_keys.keys_retire('app', $v)" >/dev/null
    qp pub "SELECT meshhook_keys.keys_destroy('app', $v)" >/dev/null
done
pub_states=$(qp pub "SELECT string_agg(version || ':' || state, ',' ORDER BY version) FROM meshhook_keys.data_key WHERE keyring = 'app'")
if wait_until 30 is_t qs sub "SELECT string_agg(version || ':' || state, ',' ORDER BY version) = '$pub_states' FROM meshhook_keys.data_key WHERE keyring = 'app'"; then
    ok "the subscriber applied the rotation, the re-encryption and every retire and destroy ($pub_states)"; else fail "the subscriber applied the publisher's changes"; fi
touch "$stop_loop"; wait "$sub_client" || true
read -r rounds errors < "$TMP/sub-client.count"
check "a subscriber client decrypting all 300 rows in a loop saw no error ($rounds full rounds)" 0 "$errors"
[ "$rounds" -gt 0 ] && ok "and decrypted all along" || fail "the subscriber client decrypted all along"
check_match "a ciphertext kept from before, under a destroyed version, is refused on the subscriber" \
    '^55000: key version [0-9]+ of keyring "app" is destroyed' \
    "$(qse sub "SELECT meshhook_keys.secret_decrypt(decode('$old_ct', 'base64'), '1')")"

echo "# a retire or a destroy on the publisher reaches a subscriber session that already holds the key,"
echo "# at its next statement once applied (the apply fires data_key's row trigger enabled for"
echo "# replicas, which makes every session there drop its cached keys: issue 26)"
qp pub "SELECT 1 FROM meshhook_keys.keyring_create('shred');
        SELECT 1 FROM meshhook_keys.keyring_create('retiring');
        CREATE TABLE held (name text PRIMARY KEY, c bytea NOT NULL);
        INSERT INTO held VALUES ('shred', meshhook_keys.secret_encrypt('shred me', '', 'shred')),
                                ('retiring', meshhook_keys.secret_encrypt('retire me', '', 'retiring'));
        SELECT 1 FROM meshhook_keys.keys_rotate('retiring');
        ALTER PUBLICATION keys ADD TABLE held" >/dev/null
qs sub "CREATE TABLE held (name text PRIMARY KEY, c bytea NOT NULL)"
qs sub "ALTER SUBSCRIPTION keys REFRESH PUBLICATION"
if wait_until 30 is_t qs sub "SELECT count(*) = 2 FROM held"; then ok "the subscriber has the rows of both keyrings"; else fail "the subscriber has the rows"; fi
# held_session ACTION KEYRING STATE: one subscriber session decrypts the keyring's row, the publisher
# runs ACTION, the session waits (inside itself) until the subscriber applied STATE, then decrypts again
held_session() {
    as_pg psql -X -q -A -t -h "$SUB" -p "$SPORT" -U postgres -d sub -v VERBOSITY=verbose <<SQL 2>&1
SELECT meshhook_keys.secret_decrypt(c, '') FROM held WHERE name = '$2';
\! psql -X -q -h $TMP -p $PORT -U postgres -d pub -c "$1" >/dev/null 2>&1
\! for i in \$(seq 1 300); do [ "\$(psql -X -A -t -h $SUB -p $SPORT -U postgres -d sub -c "SELECT state FROM meshhook_keys.data_key WHERE keyring = '$2' AND version = 1")" = $3 ] && break; sleep 0.1; done
SELECT meshhook_keys.secret_decrypt(c, '') FROM held WHERE name = '$2';
SQL
}
out=$(held_session "SELECT meshhook_keys.keys_retire('retiring', 1, force => true)" retiring retired)
check "a subscriber session decrypts the row sealed under version 1" "retire me" "$(echo "$out" | sed -n 1p)"
check_match "after the publisher retires version 1, the same session is refused it (55000)" \
    '^ERROR: +55000: key version 1 of keyring "retiring" is retired' "$(echo "$out" | sed -n 2p)"
out=$(held_session "SELECT meshhook_keys.keyring_destroy('shred', 'crypto-shred on the publisher')" shred destroyed)
check "a subscriber session decrypts the shredded keyring's row before" "shred me" "$(echo "$out" | sed -n 1p)"
check_match "after the publisher destroys the keyring, the same session is refused it" \
    '^ERROR: +[0-9A-Z]{5}: .*(destroyed)' "$(echo "$out" | sed -n 2p)"
suite_summary "logical replication tests"
