#!/usr/bin/env bash
# The meshhook-keys CLI as a user runs it: a subprocess against a real server, checking its output
# and exit codes (0 ok, 1 refused or failed, 2 usage). Expects the extension installed and the CLI
# built (scripts/test.sh does both).
source "$(dirname "$0")/../../scripts/lib.sh"

PORT=${MESHHOOK_KEYS_CLI_PORT:-54338}
TMP=$(mktemp -d /tmp/mk_cli.XXXXXX)
chmod 755 "$TMP"
make_root_key "$TMP/keys/root.key"
init_cluster "$TMP" "$PORT" "meshhook_keys.root_key_file = '$TMP/keys/root.key'" \
    "log_min_error_statement = 'panic'"
trap 'stop_cluster "$TMP" immediate; [ "${KEEP:-0}" = 1 ] || rm -rf "$TMP"' EXIT
start_cluster "$TMP"
install -d -m 755 "$TMP/bin"
install -m 755 "${MESHHOOK_KEYS_CLI_BIN:-$REPO_ROOT/target/debug/meshhook-keys}" "$TMP/bin/meshhook-keys"

FAILS=0; PASSES=0
ok()   { PASSES=$((PASSES + 1)); printf '  ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf '  FAIL %s\n' "$1"; [ -n "${2:-}" ] && printf '       %s\n' "$2"; return 0; }
check() { if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected [$2], got [$3]"; fi; }
contains() { if printf '%s' "$3" | grep -Eq -- "$2"; then ok "$1"; else fail "$1" "expected /$2/ in [$3]"; fi; }
q() { as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U postgres -d cli -v ON_ERROR_STOP=1 -c "$1"; }
# jq-free JSON checks: let PostgreSQL parse the CLI's JSON
jsonq() { printf '%s\n' "SELECT $2;" | as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U postgres -d cli -v j="$1"; }
# cli USER ARGS...: run the CLI as a database user; sets OUT, ERR and RC
cli() {
    local user=$1; shift
    RC=0
    OUT=$(as_pg env PGHOST="$TMP" PGPORT="$PORT" PGDATABASE=cli PGUSER="$user" "$TMP/bin/meshhook-keys" "$@" 2>"$TMP/err") || RC=$?
    ERR=$(cat "$TMP/err")
}
wait_for() { local i; for i in $(seq 1 200); do [ "$(q "$1")" = t ] && return 0; sleep 0.1; done; return 1; }

say "CLI tests (cluster in $TMP, port $PORT)"
as_pg psql -X -q -h "$TMP" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE cli"
q "CREATE EXTENSION meshhook_keys;
   CREATE ROLE ops LOGIN IN ROLE meshhook_keys_admin;
   CREATE ROLE app LOGIN IN ROLE meshhook_keys_user;
   CREATE TABLE creds (id int PRIMARY KEY, c bytea NOT NULL);
   INSERT INTO creds SELECT i, meshhook_keys.secret_encrypt('CLI-SECRET-' || i, 'cred:' || i) FROM generate_series(1, 3000) i;
   SELECT meshhook_keys.register_column('creds', 'c', \$\$'cred:' || id\$\$);
   GRANT SELECT ON creds TO ops;" >/dev/null

echo "# usage"
cli ops --help;                       check "--help exits 0" 0 "$RC"
cli ops frobnicate;                   check "an unknown command exits 2" 2 "$RC"
cli ops retire --keyring default;     check "a missing required option exits 2" 2 "$RC"

echo "# rotate and status"
cli ops rotate --keyring default --reason "cli test"
check "ops rotates: exit 0" 0 "$RC"
contains "the new version is printed" 'default.*\b2\b' "$OUT"
cli app rotate --keyring default
check "a non-admin is refused: exit 1" 1 "$RC"
contains "with the database's own message and SQLSTATE" 'permission denied for keys_rotate.*SQLSTATE 42501' "$ERR"
if wait_for "SELECT EXISTS (SELECT 1 FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND role_name = 'app')"; then
    ok "the refusal is audited by the extension"; else fail "the refusal is audited by the extension"; fi
cli ops status
check "status: exit 0" 0 "$RC"
contains "status shows the keyring and its rows per version" 'default' "$OUT"
contains "status shows rows per version" 'creds' "$OUT"
cli ops --json status
check "status --json: exit 0" 0 "$RC"
check "status --json parses, active version 2" "2" "$(jsonq "$OUT" "(:'j'::jsonb -> 'keyrings' -> 0 ->> 'active_version')")"
check "status --json: 3000 rows still on version 1" "3000" \
    "$(jsonq "$OUT" "(SELECT sum((u ->> 'rows')::int) FROM jsonb_array_elements(:'j'::jsonb -> 'usage') u WHERE u ->> 'version' = '1')")"

echo "# reencrypt with progress, then retire and destroy"
cli ops reencrypt --keyring default --batch-size 500
check "reencrypt: exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$ERR"
contains "reports the rows moved" '^3000 rows moved in [0-9]+ batches' "$OUT"
check "no row left on version 1" "0" "$(q "SELECT count(*) FROM meshhook_keys.key_usage('default') WHERE version = 1")"
cli ops reencrypt --keyring default --wait
check "reencrypt --wait with the job finished returns at once: exit 0" 0 "$RC"
cli ops retire --keyring default --version 1
check "retire: exit 0" 0 "$RC"
cli ops destroy --keyring default --version 1
check "destroy: exit 0" 0 "$RC"
cli ops retire --keyring default --version 2
check "retiring the active version is refused: exit 1" 1 "$RC"
contains "with a clear message" 'active key' "$ERR"

echo "# audit, verify, health"
cli ops --json audit --keyring default
check "audit --json: exit 0" 0 "$RC"
check "audit lists rotate, retire and destroy" "t" \
    "$(jsonq "$OUT" "(SELECT bool_and(a IN (SELECT e ->> 'action' FROM jsonb_array_elements(:'j'::jsonb) e)) FROM unnest(ARRAY['rotate', 'retire', 'destroy']) a)")"
cli ops verify
check "verify: exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$OUT $ERR"
contains "verify reports the audit chain and the sample" 'creds' "$OUT"
q "UPDATE creds SET c = set_byte(c, 30, get_byte(c, 30) # 1)" >/dev/null
cli ops verify --sample 10
check "verify finds a tampered row: exit 1" 1 "$RC"
cli ops health
check "health: exit 0" 0 "$RC"
contains "health lists the logging checks" 'log_statement' "$OUT"

echo "# connection errors and secrets"
RC=0; OUT=$(as_pg env PGHOST="$TMP" PGPORT=1 PGDATABASE=cli PGUSER=ops "$TMP/bin/meshhook-keys" status 2>&1) || RC=$?
check "an unreachable server: exit 1" 1 "$RC"
all_out=$(for u in ops; do cli "$u" --json status; echo "$OUT"; cli "$u" --json audit; echo "$OUT"; cli "$u" --json verify; echo "$OUT"; done)
check "no plaintext in any output" "" "$(printf '%s' "$all_out" | grep -o 'CLI-SECRET-[0-9]*' | head -1 || true)"

echo
echo "CLI tests: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
