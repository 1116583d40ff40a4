#!/usr/bin/env bash
# Keyring export and import between two clusters with different root keys (issue 28): the source
# exports a keyring (three versions: retired, decrypt-only, active) under a wrapping key passed as a
# bind parameter; the target imports it, and decrypts every ciphertext copied over with pg_dump's
# data, keeps refusing the retired version, encrypts with the active one and rotates on. A bundle
# with any byte changed, or opened with another wrapping key, is refused and imports nothing; the
# wrapping key never reaches either server's log. Needs psql 16 or later (\bind).
source "$(dirname "$0")/../lib.sh"

suite_setup transfer "${MESHHOOK_KEYS_TRANSFER_PORT:-25356}"
DST=$TMP/dst
DPORT=$((PORT + 100))
DKEY=$TMP/keys/dst_root.key
make_root_key "$DKEY"
init_cluster "$DST" "$DPORT" "meshhook_keys.root_key_file = '$DKEY'"
at_exit 'stop_cluster "$DST" immediate'
start_cluster "$DST"

qs() { psql_as postgres "$@"; }
qd() { as_pg psql -X -q -A -t -h "$DST" -p "$DPORT" -U postgres -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
qde() { { as_pg psql -X -q -A -t -h "$DST" -p "$DPORT" -U postgres -v VERBOSITY=verbose -d "$1" -c "$2" 2>&1 || true; } \
    | sed -n 's/^ERROR: *\([0-9A-Z]\{5\}\): \(.*\)$/\1: \2/p' | head -1; }
say "keyring transfer tests (source port $PORT, target port $DPORT, different root keys)"

check "the two clusters have different root keys" different "$(cmp -s "$KEY" "$DKEY" && echo same || echo different)"
qs postgres "CREATE DATABASE app" >/dev/null
qd postgres "CREATE DATABASE app" >/dev/null
qs app "CREATE EXTENSION meshhook_keys;
        SELECT 1 FROM meshhook_keys.keys_rotate('payments', 'v1');
        CREATE TABLE card (id int PRIMARY KEY, token bytea NOT NULL);
        INSERT INTO card SELECT i, meshhook_keys.secret_encrypt('tok_' || i, 'card:' || i, 'payments') FROM generate_series(1, 100) i;
        SELECT 1 FROM meshhook_keys.keys_rotate('payments', 'v2');
        INSERT INTO card SELECT i, meshhook_keys.secret_encrypt('tok_' || i, 'card:' || i, 'payments') FROM generate_series(101, 200) i;
        SELECT 1 FROM meshhook_keys.keys_rotate('payments', 'v3');
        INSERT INTO card SELECT i, meshhook_keys.secret_encrypt('tok_' || i, 'card:' || i, 'payments') FROM generate_series(201, 300) i;
        UPDATE card SET token = meshhook_keys.rewrap(token, 'card:' || id) WHERE id <= 100;
        SELECT meshhook_keys.keys_retire('payments', 1, true);" >/dev/null
qd app "CREATE EXTENSION meshhook_keys; CREATE TABLE card (id int PRIMARY KEY, token bytea NOT NULL)" >/dev/null

# the wrapping key: 32 random bytes, given to both sides as a bind parameter (psql \bind), never
# as a literal in the statement text
WK=$(openssl rand -hex 32)
bind_export() {
    printf '%s\n' "SELECT encode(meshhook_keys.keyring_export('payments', decode(\$1, 'hex')), 'base64') \\bind $WK \\g" \
        | as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U postgres -d app | tr -d '\n'
}
bind_import() {   # bind_import BUNDLE_BASE64 WRAPPING_KEY_HEX
    printf '%s\n' "SELECT * FROM meshhook_keys.keyring_import(decode(\$1, 'base64'), decode(\$2, 'hex')) \\bind $1 $2 \\g" \
        | as_pg psql -X -q -A -t -h "$DST" -p "$DPORT" -U postgres -v VERBOSITY=verbose -d app 2>&1
}
BUNDLE=$(bind_export)
check_match "the source exports the keyring (a bundle of some bytes)" '^TUhLRVhQMDE' "$BUNDLE"
# the rows travel with the data, not the keys (pg_dump --data-only of the application's table)
as_pg pg_dump -h "$TMP" -p "$PORT" -U postgres -d app --data-only -t card -f "$TMP/card.sql"
as_pg psql -X -q -h "$DST" -p "$DPORT" -U postgres -d app -v ON_ERROR_STOP=1 -f "$TMP/card.sql" >/dev/null
check_match "before the import the target decrypts nothing (42704)" '^42704: ' \
    "$(qde app "SELECT meshhook_keys.secret_decrypt(token, 'card:' || id) FROM card WHERE id = 150")"

echo "# tampering and another wrapping key: refused, nothing imported"
TAMPERED=$(python3 -c "import base64,sys; b=bytearray(base64.b64decode(sys.argv[1])); b[len(b)//2]^=1; print(base64.b64encode(bytes(b)).decode())" "$BUNDLE")
check_match "a bundle with one bit changed is refused (XX001)" 'ERROR:  XX001: invalid keyring bundle: authentication failed' "$(bind_import "$TAMPERED" "$WK")"
HEADER_TAMPERED=$(python3 -c "
import base64,sys
b=bytes(base64.b64decode(sys.argv[1]))
print(base64.b64encode(b.replace(b'\"state\":\"retired\"', b'\"state\":\"pending\"', 1)).decode())" "$BUNDLE")
check_match "a header edited to revive the retired version is refused (XX001)" 'ERROR:  XX001: invalid keyring bundle: authentication failed' "$(bind_import "$HEADER_TAMPERED" "$WK")"
check_match "another wrapping key is refused (XX001)" 'ERROR:  XX001: invalid keyring bundle: authentication failed' "$(bind_import "$BUNDLE" "$(openssl rand -hex 32)")"
check "nothing was imported" 0 "$(qd app "SELECT count(*) FROM meshhook_keys.keyrings WHERE keyring = 'payments'")"

echo "# the import: every ciphertext decrypts under the target's own root key"
check "the target imports 3 versions, version 3 active" "payments|3|3" "$(bind_import "$BUNDLE" "$WK")"
check "the versions and states are the source's" "1:retired,2:decrypt_only,3:active" \
    "$(qd app "SELECT string_agg(version || ':' || state, ',' ORDER BY version) FROM meshhook_keys.keys WHERE keyring = 'payments'")"
check "every copied row decrypts on the target" 300 \
    "$(qd app "SELECT count(*) FROM card WHERE meshhook_keys.secret_decrypt(token, 'card:' || id) = 'tok_' || id")"
check "the target encrypts with the active version" 3 \
    "$(qd app "SELECT k.version FROM meshhook_keys.keys k WHERE k.key_id = meshhook_keys.ciphertext_key_id(meshhook_keys.secret_encrypt('new', '', 'payments'))")"
check "and rotates on to version 4" 4 "$(qd app "SELECT version FROM meshhook_keys.keys_rotate('payments', 'after the move')")"
SRC_FP=$(qs app "SELECT encode(root_fingerprint, 'hex') FROM meshhook_keys.data_key WHERE keyring = 'payments' AND wrapped_key IS NOT NULL LIMIT 1")
check "every key is wrapped under the target's own root key (one fingerprint, not the source's)" "1|f" \
    "$(qd app "SELECT count(DISTINCT root_fingerprint), bool_or(root_fingerprint = decode('$SRC_FP', 'hex'))
                 FROM meshhook_keys.data_key WHERE keyring = 'payments' AND wrapped_key IS NOT NULL")"
check "importing the same bundle again is refused (42710)" 1 \
    "$(bind_import "$BUNDLE" "$WK" | grep -c 'ERROR:  42710: ')"
check "the import is audited on the target" "keyring_import|ok|3" \
    "$(qd app "SELECT action || '|' || outcome || '|' || (detail->>'versions') FROM meshhook_keys.audit_log WHERE action = 'keyring_import'")"

echo "# no secret in the logs (the failed imports' statements were logged, with \$1 and \$2 for the values)"
check_match "the target logged the failed imports' statement" 'STATEMENT:  SELECT \* FROM meshhook_keys.keyring_import\(decode\(\$1' "$(grep STATEMENT "$DST/server.log")"
if grep -qi "$WK" "$TMP/server.log" "$DST/server.log"; then fail "the wrapping key is in a server log"; else ok "the wrapping key is in neither server log"; fi
if grep -q "tok_1[0-9]" "$TMP/server.log" "$DST/server.log"; then fail "a plaintext is in a server log"; else ok "no plaintext in either server log"; fi

suite_summary "transfer tests"
