#!/usr/bin/env bash
# The meshhook-keys CLI as a user runs it: a subprocess against a real server, checking its output
# and exit codes (0 ok, 1 refused or failed, 2 usage). Installs the extension and builds the CLI
# if either is missing.
source "$(dirname "$0")/../lib.sh"

ensure_cli
suite_init cli "${MESHHOOK_KEYS_CLI_PORT:-25338}" "log_min_error_statement = 'panic'" "listen_addresses = '127.0.0.1'"
# TLS on TCP (a self-signed certificate for localhost), and only TLS: plain TCP connections are
# rejected, so a CLI that connects over TCP proves it used TLS.
install -d -o postgres -g postgres -m 700 "$TMP/ssl"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/ssl/server.key" -out "$TMP/ssl/server.crt" >/dev/null 2>&1
chown postgres:postgres "$TMP/ssl/server.key" "$TMP/ssl/server.crt"; chmod 600 "$TMP/ssl/server.key"
cp "$TMP/ssl/server.crt" "$TMP/root.crt"; chmod 644 "$TMP/root.crt"
{ echo "ssl = on"; echo "ssl_cert_file = '$TMP/ssl/server.crt'"; echo "ssl_key_file = '$TMP/ssl/server.key'"; } >> "$TMP/data/postgresql.conf"
{ echo "hostssl all pwuser 127.0.0.1/32 scram-sha-256"; echo "hostssl all all 127.0.0.1/32 trust"; echo "hostnossl all all 127.0.0.1/32 reject"; } > "$TMP/hba.tmp"
grep -v '^host' "$TMP/data/pg_hba.conf" >> "$TMP/hba.tmp"; cp "$TMP/hba.tmp" "$TMP/data/pg_hba.conf"
chown postgres:postgres "$TMP/data/pg_hba.conf"
start_cluster "$TMP"
install -d -m 755 "$TMP/bin"
install -m 755 "$CLI_BIN" "$TMP/bin/meshhook-keys"

q() { psql_as postgres cli "$1"; }
# cli USER ARGS...: run the CLI as a database user; sets OUT, ERR and RC
cli() {
    local user=$1; shift
    RC=0
    OUT=$(as_pg env PGHOST="$TMP" PGPORT="$PORT" PGDATABASE=cli PGUSER="$user" "$TMP/bin/meshhook-keys" "$@" 2>"$TMP/err") || RC=$?
    ERR=$(cat "$TMP/err")
}

say "CLI tests (cluster in $TMP, port $PORT)"
psql_as postgres postgres "CREATE DATABASE cli"
q "CREATE EXTENSION meshhook_keys;
   CREATE ROLE ops LOGIN IN ROLE meshhook_keys_admin;
   CREATE ROLE app LOGIN IN ROLE meshhook_keys_user;
   CREATE TABLE creds (id int PRIMARY KEY, c bytea NOT NULL);
   INSERT INTO creds SELECT i, meshhook_keys.secret_encrypt('CLI-SECRET-' || i, 'cred:' || i) FROM generate_series(1, 3000) i;
   SELECT meshhook_keys.register_column('creds', 'c', \$\$'cred:' || id\$\$);
   GRANT SELECT ON creds TO ops;" >/dev/null
# a password as hostile to a whitespace-splitting parser as can be (finding 7)
PW="two  spaces sslrootcert=/PWPART sslmode=disable 'q' \\b"
q "CREATE ROLE pwuser LOGIN IN ROLE meshhook_keys_admin PASSWORD '$(printf '%s' "$PW" | sed "s/'/''/g")'" >/dev/null

echo "# usage"
cli ops --help;                       check "--help exits 0" 0 "$RC"
cli ops frobnicate;                   check "an unknown command exits 2" 2 "$RC"
cli ops retire --keyring default;     check "a missing required option exits 2" 2 "$RC"

echo "# rotate and status"
cli ops rotate --keyring default --reason "cli test"
check "ops rotates: exit 0" 0 "$RC"
check_match "the new version is printed" 'default.*\b2\b' "$OUT"
cli app rotate --keyring default
check "a non-admin is refused: exit 1" 1 "$RC"
check_match "with the database's own message and SQLSTATE" 'permission denied for keys_rotate.*SQLSTATE 42501' "$ERR"
if wait_until 20 is_t q "SELECT EXISTS (SELECT 1 FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND role_name = 'app')"; then
    ok "the refusal is audited by the extension"; else fail "the refusal is audited by the extension"; fi
cli ops status
check "status: exit 0" 0 "$RC"
check_match "status shows the keyring and its rows per version" 'default' "$OUT"
check_match "status shows rows per version" 'creds' "$OUT"
cli ops --json status
check "status --json: exit 0" 0 "$RC"
check "status --json parses, active version 2" "2" "$(jsonq "$OUT" "(:'j'::jsonb -> 'keyrings' -> 0 ->> 'active_version')")"
check "status --json: 3000 rows still on version 1" "3000" \
    "$(jsonq "$OUT" "(SELECT sum((u ->> 'rows')::int) FROM jsonb_array_elements(:'j'::jsonb -> 'usage') u WHERE u ->> 'version' = '1')")"

echo "# reencrypt with progress, then retire and destroy"
cli ops reencrypt --keyring default --batch-size 500
check "reencrypt: exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$ERR"
check_match "reports the rows moved" '^3000 rows moved in [0-9]+ batches' "$OUT"
check "no row left on version 1" "0" "$(q "SELECT count(*) FROM meshhook_keys.key_usage('default') WHERE version = 1")"
cli ops reencrypt --keyring default --wait
check "reencrypt --wait with the job finished returns at once: exit 0" 0 "$RC"
cli ops retire --keyring default --version 1
check "retire: exit 0" 0 "$RC"
cli ops destroy --keyring default --version 1
check "destroy: exit 0" 0 "$RC"
cli ops retire --keyring default --version 2
check "retiring the active version is refused: exit 1" 1 "$RC"
check_match "with a clear message" 'active key' "$ERR"

echo "# audit, verify, health"
cli ops --json audit --keyring default
check "audit --json: exit 0" 0 "$RC"
check "audit lists rotate, retire and destroy" "t" \
    "$(jsonq "$OUT" "(SELECT bool_and(a IN (SELECT e ->> 'action' FROM jsonb_array_elements(:'j'::jsonb) e)) FROM unnest(ARRAY['rotate', 'retire', 'destroy']) a)")"
cli ops verify
check "verify: exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$OUT $ERR"
check_match "verify reports the audit chain and the sample" 'creds' "$OUT"
q "UPDATE creds SET c = set_byte(c, 30, get_byte(c, 30) # 1)" >/dev/null
cli ops verify --sample 10
check "verify finds a tampered row: exit 1" 1 "$RC"
cli ops health
check "health: exit 0" 0 "$RC"
check_match "health lists the logging checks" 'log_statement' "$OUT"

echo "# connection errors and secrets"
RC=0; OUT=$(as_pg env PGHOST="$TMP" PGPORT=1 PGDATABASE=cli PGUSER=ops "$TMP/bin/meshhook-keys" status 2>&1) || RC=$?
check "an unreachable server: exit 1" 1 "$RC"
all_out=$(for u in ops; do cli "$u" --json status; echo "$OUT"; cli "$u" --json audit; echo "$OUT"; cli "$u" --json verify; echo "$OUT"; done)
check "no plaintext in any output" "" "$(printf '%s' "$all_out" | grep -o 'CLI-SECRET-[0-9]*' | head -1 || true)"

echo "# TLS, as libpq's sslmode and sslrootcert say (the server rejects plain TCP)"
tcp() { RC=0; OUT=$(as_pg env -u PGHOST "$TMP/bin/meshhook-keys" -d "$1" --json status --no-usage 2>"$TMP/err") || RC=$?; ERR=$(cat "$TMP/err"); }
tcp "host=localhost port=$PORT dbname=cli user=ops sslmode=require"
check "sslmode=require connects over TLS: exit 0" 0 "$RC"
tcp "postgresql://ops@localhost:$PORT/cli?sslmode=require"
check "the same as a URL: exit 0" 0 "$RC"
tcp "host=localhost port=$PORT dbname=cli user=ops sslmode=verify-full sslrootcert=$TMP/root.crt"
check "sslmode=verify-full with the server's CA: exit 0" 0 "$RC"
tcp "host=localhost port=$PORT dbname=cli user=ops sslmode=verify-full"
check "sslmode=verify-full without trusting the CA: exit 1" 1 "$RC"
tcp "host=127.0.0.1 port=$PORT dbname=cli user=ops sslmode=disable"
check "sslmode=disable is rejected by this server: exit 1" 1 "$RC"
check_match "with the server's reason" 'pg_hba.conf rejects|no encryption' "$ERR"
cli ops -d "host=$TMP port=$PORT dbname=cli user=ops sslmode=verify-full" status --no-usage
check "on a Unix-domain socket sslmode is ignored, as libpq ignores it: exit 0" 0 "$RC"

echo "# finding 7: connection strings as libpq reads them, PG* defaults, --expires-in, --json errors"
# pwcli ENV... -- ARGS...: the CLI with only the given environment (TCP, TLS); sets RC, OUT, ERR
pwcli() {
    local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
    RC=0; OUT=$(as_pg env -i PATH="$PATH" "${envs[@]}" "$TMP/bin/meshhook-keys" "$@" 2>"$TMP/err") || RC=$?; ERR=$(cat "$TMP/err")
}
qpw=$(printf '%s' "$PW" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")
pwcli -- -d "host=localhost port=$PORT dbname=cli user=pwuser sslmode=require password='$qpw'" --json status --no-usage
check "a quoted password with two spaces, quotes, backslashes and conninfo words: exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$ERR"
pwcli PGPASSWORD="$PW" -- -d "host=localhost port=$PORT dbname=cli user=pwuser sslmode=require" --json status --no-usage
check "-d without a password uses PGPASSWORD: exit 0" 0 "$RC"
pwcli PGHOST=localhost PGPORT="$PORT" PGDATABASE=cli PGUSER=pwuser PGSSLMODE=require PGPASSWORD="$PW" -- --json status --no-usage
check "the same password from PG* variables only: exit 0" 0 "$RC"
pwcli PGPASSWORD="wrong sslrootcert=/PWPART x" -- -d "host=localhost port=$PORT dbname=cli user=pwuser sslmode=require" status
check "a wrong password: exit 1" 1 "$RC"
check_match "  with the server's reason" 'password authentication failed' "$ERR"
pwcli -- -d "host=localhost port=$PORT dbname=cli user=pwuser sslmode=require password='wrong sslrootcert=/PWPART x'" status
check "a wrong quoted password: exit 1" 1 "$RC"
check "  and no part of either password in the errors" "" "$(grep -o 'PWPART' "$TMP/err" | head -1 || true)"
pwcli -- -d "host=localhost port=$PORT dbname=cli user=pwuser password=two  spaces=PWPART" status
check "an unquoted password with spaces is an error" 1 "$RC"
check "  that does not repeat the password" "" "$(grep -o 'spaces\|PWPART' "$TMP/err" | head -1 || true)"
pwcli PGHOST=localhost PGPORT="$PORT" PGDATABASE=cli PGUSER=ops PGSSLMODE=verify-full PGAPPNAME="a sslmode=disable b" -- status --no-usage
check "PGSSLMODE=verify-full with PGAPPNAME='a sslmode=disable b' and no trusted CA: exit 1" 1 "$RC"
check_match "  refused for the certificate, not for plain TCP" 'certificate|TLS|tls|ssl' "$ERR"
pwcli PGHOST=localhost PGPORT="$PORT" PGDATABASE=cli PGUSER=ops PGSSLMODE=verify-full PGSSLROOTCERT="$TMP/root.crt" PGAPPNAME="a sslmode=disable b" -- --json health
check "  with PGSSLROOTCERT: connects over verified TLS, exit 0" 0 "$RC"
pwcli MESHHOOK_KEYS_JWT_SECRET="$(printf 'k%.0s' $(seq 1 40))" -- token --role ops --expires-in=9223372036854775807
check "token --expires-in=9223372036854775807: exit 2, no panic" 2 "$RC"
check "  (no panic message)" "" "$(grep -o 'panicked' "$TMP/err" || true)"
pwcli MESHHOOK_KEYS_JWT_SECRET="$(printf 'k%.0s' $(seq 1 40))" -- --json token --role ops --sub me --expires-in 60
check "--json token: exit 0" 0 "$RC"
check "  prints JSON with the token, role and sub" "ops|me|t" "$(jsonq "$OUT" "concat_ws('|', :'j'::jsonb ->> 'role', :'j'::jsonb ->> 'sub', (:'j'::jsonb ->> 'token') LIKE 'eyJ%')")"
cli app --json rotate --keyring default
check "--json with a refusal: exit 1" 1 "$RC"
check "  the error on stderr is a JSON object with the SQLSTATE" "t|1" \
    "$(jsonq "$ERR" "concat_ws('|', (:'j'::jsonb ->> 'error') LIKE '%42501%', :'j'::jsonb ->> 'exit_code')")"
cli ops --json frobnicate
check "--json with a usage error: exit 2" 2 "$RC"
check "  as a JSON object too" "2" "$(jsonq "$ERR" "(:'j'::jsonb ->> 'exit_code')")"
pwcli -- --json -d "host=localhost port=1 dbname=cli user=ops sslmode=disable" status
check "--json with an unreachable server: a JSON error" "1" "$(jsonq "$ERR" "(:'j'::jsonb ->> 'exit_code')")"

echo "# the password file, the service file and gssencmode, as libpq reads them (issue 29)"
install -d -o postgres -m 700 "$TMP/home"
# pgpass FILE MODE LINE...: a password file owned by postgres
pgpass() { local f=$1 m=$2; shift 2; printf '%s\n' "$@" > "$f"; chown postgres "$f"; chmod "$m" "$f"; }
PWESC=$(printf '%s' "$PW" | sed -e 's/\\/\\\\/g' -e 's/:/\\:/g')
PWDSN="host=localhost port=$PORT dbname=cli user=pwuser sslmode=require"
pgpass "$TMP/home/.pgpass" 600 "# a comment" "otherhost:$PORT:cli:pwuser:wrong" "localhost:$PORT:cli:pwuser:$PWESC"
pwcli HOME="$TMP/home" -- -d "$PWDSN" status --no-usage
check "~/.pgpass gives the password: exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$ERR"
pwcli HOME=/nonexistent -- -d "$PWDSN" status --no-usage
check "  without it the password is missing: exit 1" 1 "$RC"
pgpass "$TMP/pgpass2" 600 "*:*:*:pwuser:$PWESC"
pwcli HOME=/nonexistent PGPASSFILE="$TMP/pgpass2" -- -d "$PWDSN" status --no-usage
check "PGPASSFILE (a wildcard line): exit 0" 0 "$RC"
pwcli HOME=/nonexistent -- -d "$PWDSN passfile=$TMP/pgpass2" status --no-usage
check "passfile= in the connection string: exit 0" 0 "$RC"
pgpass "$TMP/pgpass3" 644 "*:*:*:pwuser:$PWESC"
pwcli HOME=/nonexistent PGPASSFILE="$TMP/pgpass3" -- -d "$PWDSN" status --no-usage
check "a password file others may read is ignored: exit 1" 1 "$RC"
check_match "  with libpq's warning" 'WARNING: password file .* has group or world access' "$ERR"
{ echo "# services"; echo "[other]"; echo "port=1"; echo "[cliservice]"; echo "host=localhost"; echo "port=$PORT"
  echo "dbname=cli"; echo "user=pwuser"; echo "sslmode=require"; } > "$TMP/services"; chmod 644 "$TMP/services"
pwcli HOME=/nonexistent PGSERVICEFILE="$TMP/services" PGSERVICE=cliservice PGPASSFILE="$TMP/pgpass2" -- --json status --no-usage
check "PGSERVICE with PGSERVICEFILE (and the password file): exit 0" 0 "$RC"
[ "$RC" = 0 ] || echo "$ERR"
pwcli HOME=/nonexistent PGSERVICEFILE="$TMP/services" PGPASSFILE="$TMP/pgpass2" PGPORT=1 PGDATABASE=nope -- -d "service=cliservice" status --no-usage
check "service= in the connection string; the service wins over PGPORT and PGDATABASE: exit 0" 0 "$RC"
pwcli HOME=/nonexistent PGSERVICEFILE="$TMP/services" PGPASSFILE="$TMP/pgpass2" -- -d "service=cliservice port=1" status --no-usage
check "  and the connection string over the service: exit 1 (port 1)" 1 "$RC"
pwcli HOME=/nonexistent PGSERVICEFILE="$TMP/services" -- -d "service=nope" status
check "an unknown service: exit 1" 1 "$RC"
check_match "  as libpq says it" 'definition of service "nope" not found' "$ERR"
for m in disable prefer; do
    pwcli HOME=/nonexistent PGPASSFILE="$TMP/pgpass2" -- -d "$PWDSN gssencmode=$m" status --no-usage
    check "gssencmode=$m: exit 0" 0 "$RC"
done
pwcli HOME=/nonexistent PGPASSFILE="$TMP/pgpass2" PGGSSENCMODE=require -- -d "$PWDSN" status --no-usage
check "PGGSSENCMODE=require: exit 1" 1 "$RC"
check_match "  saying why" 'gssencmode=require: this client has no GSSAPI encryption' "$ERR"
check "no message repeats the password" "" "$(grep -F -- "PWPART" "$TMP/err" || true)"

echo "# text from the database is shown, not obeyed, by the terminal (issue 29)"
ESC=$(printf '\033')
q "SELECT meshhook_keys.keys_rotate('default', E'clear\\x1b[2J\\x1b]0;owned\\x07 \\u009b5n \\r over \\u202e')" >/dev/null
cli ops audit --keyring default --limit 3
check "audit: exit 0" 0 "$RC"
check "no ESC, BEL, CR or C1 byte reaches the terminal" 0 "$(printf '%s' "$OUT" | LC_ALL=C grep -c $'[\x1b\x07\r]\|\xc2\x9b' || true)"
check "no bidi override either" 0 "$(printf '%s' "$OUT" | grep -c $'\u202e' || true)"
check_match "  they are shown as escapes" 'clear\\u\{1b\}\[2J\\u\{1b\}\]0;owned\\u\{7\} \\u\{9b\}5n \\u\{d\} over \\u\{202e\}' "$OUT"
cli ops --json audit --keyring default --limit 3
check "--json keeps the value exact (JSON escapes it)" t "$(jsonq "$OUT" "(SELECT bool_or(e ->> 'reason' = E'clear\\x1b[2J\\x1b]0;owned\\x07 \\u009b5n \\r over \\u202e') FROM jsonb_array_elements(:'j'::jsonb) e)")"
LONG=$(printf 'k%.0s' $(seq 1 9000))
cli ops audit --since "$ESC[2J$LONG"
check "an error message that repeats 9 KB of hostile input: exit 1" 1 "$RC"
check "the error has no raw ESC" 0 "$(printf '%s' "$ERR" | grep -c "$ESC" || true)"
lt "and is cut at 4 KiB (bytes)" "$(printf '%s' "$ERR" | wc -c)" 4300
check_match "  saying how much was cut" 'more bytes not shown\)$' "$ERR"

echo "# the HTTP API (meshhook-keys serve), driven by curl on loopback"
SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
q "CREATE ROLE authenticator LOGIN NOINHERIT; GRANT ops, app TO authenticator;" >/dev/null
# (run directly, not through runuser, so that killing $! stops it; the socket's trust auth applies)
env PGHOST="$TMP" PGPORT="$PORT" PGDATABASE=cli PGUSER=authenticator MESHHOOK_KEYS_JWT_SECRET="$SECRET" \
    "$TMP/bin/meshhook-keys" serve --listen "127.0.0.1:0" >"$TMP/serve.out" 2>"$TMP/serve.log" &
SERVER=$!
stop_server() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
at_exit stop_server
HPORT=$(served_port "$TMP/serve.log") || HPORT=0
up=0; wait_until 10 curl -fs "http://127.0.0.1:$HPORT/healthz" && up=1
[ "$up" = 1 ] || { echo "the server's log:"; cat "$TMP/serve.log"; }
check "GET /healthz answers 200" 1 "$up"
token() { as_pg env MESHHOOK_KEYS_JWT_SECRET="${2:-$SECRET}" "$TMP/bin/meshhook-keys" token --role "$1" --expires-in "${3:-600}" --sub tester; }
# http METHOD PATH [TOKEN] [BODY]: sets CODE and BODY_OUT
http() {
    local args=(-s -o "$TMP/http.out" -w '%{http_code}' -X "$1" "http://127.0.0.1:$HPORT$2")
    [ -n "${3:-}" ] && args+=(-H "Authorization: Bearer $3")
    [ -n "${4:-}" ] && args+=(-H 'Content-Type: application/json' --data "$4")
    CODE=$(curl "${args[@]}"); BODY_OUT=$(cat "$TMP/http.out")
}
ADMIN=$(token ops); USER=$(token app); EXPIRED=$(token ops "$SECRET" -3600); FORGED=$(token ops "not-the-secret-but-32-bytes-long-or-more")
before=$(q "SELECT max(version) FROM meshhook_keys.keys WHERE keyring = 'default'")
http POST /api/keys/rotate "$ADMIN" '{"keyring": "default", "reason": "over HTTP"}'
check "POST /api/keys/rotate with an admin token: 200" 200 "$CODE"
check "and returns the new version" "$((before + 1))" "$(jsonq "$BODY_OUT" "(:'j'::jsonb ->> 'version')")"
cli ops --json status --no-usage
check "the HTTP rotation is visible in the CLI's status" "$((before + 1))" "$(jsonq "$OUT" "(:'j'::jsonb -> 'keyrings' -> 0 ->> 'active_version')")"
check "and in the audit log, as the token's role" "rotate|ok|ops|over HTTP" \
    "$(q "SELECT action, outcome, role_name, reason FROM meshhook_keys.audit_log WHERE keyring = 'default' AND version = $((before + 1)) AND action = 'rotate'")"
http POST /api/keys/rotate "$USER" '{"keyring": "default"}'
check "a user token: 403" 403 "$CODE"
check_match "with the database's refusal" '"sqlstate":"42501"' "$BODY_OUT"
if wait_until 20 is_t q "SELECT EXISTS (SELECT 1 FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND role_name = 'app' AND actor = 'authenticator')"; then
    ok "the HTTP refusal is audited by the extension"; else fail "the HTTP refusal is audited by the extension"; fi
http POST /api/keys/rotate "$EXPIRED" '{"keyring": "default"}'
check "an expired token: 401" 401 "$CODE"
http POST /api/keys/rotate "$FORGED" '{"keyring": "default"}'
check "a token with a bad signature: 401" 401 "$CODE"
http POST /api/keys/rotate "" '{"keyring": "default"}'
check "no token: 401" 401 "$CODE"
http POST /api/keys/rotate "$ADMIN" '{"keyring": '
check "malformed JSON: 400" 400 "$CODE"
http POST /api/keys/rotate "$ADMIN" '{"keyring": "bad name!"}'
check "an invalid keyring name: 400" 400 "$CODE"
check_match "with the database's message" 'invalid keyring name' "$BODY_OUT"
http GET /api/keys "$ADMIN"
check "GET /api/keys: 200" 200 "$CODE"
check "lists the keyrings" "t" "$(jsonq "$BODY_OUT" "(SELECT bool_or(k ->> 'keyring' = 'default') FROM jsonb_array_elements(:'j'::jsonb) k)")"
http GET /api/keys "$USER"
check "GET /api/keys with a user token: 403" 403 "$CODE"
http GET /api/keys/progress "$ADMIN"
check "GET /api/keys/progress: 200" 200 "$CODE"
http GET "/api/keys/audit?keyring=default&limit=5" "$ADMIN"
check "GET /api/keys/audit: 200, at most 5 rows" "t" "$(jsonq "$BODY_OUT" "(jsonb_array_length(:'j'::jsonb) BETWEEN 1 AND 5)")"
http GET /api/nothing "$ADMIN"
check "an unknown endpoint: 404" 404 "$CODE"
check "the server logged no secret" "" "$(grep -o "$SECRET" "$TMP/serve.log" | head -1 || true)"
cli ops --json audit --keyring default
check "audit --json: the HTTP rotation carries the token's sub and role" "tester|ops|tester" \
    "$(jsonq "$OUT" "(SELECT concat_ws('|', e ->> 'sub', e -> 'detail' -> 'jwt' ->> 'role', e -> 'detail' -> 'jwt' ->> 'sub') FROM jsonb_array_elements(:'j'::jsonb) e WHERE e ->> 'reason' = 'over HTTP')")"
check "  a CLI rotation has no sub" "t" \
    "$(jsonq "$OUT" "(SELECT bool_and(e -> 'sub' = 'null'::jsonb) FROM jsonb_array_elements(:'j'::jsonb) e WHERE e ->> 'reason' = 'cli test')")"
cli ops audit --keyring default
check_match "audit (table): a sub column" 'actor +┆ sub +┆' "$OUT"
check_match "  showing the token's subject" 'tester' "$OUT"

echo "# GET /metrics (Prometheus text format, operators only)"
q "SELECT meshhook_keys.keys_rotate('second', 'metrics test'), meshhook_keys.reencrypt_batch('default', 100)" >/dev/null
CTYPE=$(curl -s -o "$TMP/metrics.out" -w '%{content_type}' -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HPORT/metrics")
METRICS=$(cat "$TMP/metrics.out")
check_match "GET /metrics: text/plain; version=0.0.4" '^text/plain; version=0\.0\.4' "$CTYPE"
check_match "with # HELP and # TYPE gauge lines" '# TYPE meshhook_keys_key_active_version gauge' "$METRICS"
check_match "and a counter for _total" '# TYPE meshhook_keys_scheduler_ticks_total counter' "$METRICS"
check "the active version of every keyring matches the keyrings view" \
    "$(q "SELECT string_agg(format('meshhook_keys_key_active_version{keyring=\"%s\"} %s', keyring, active_version), ' ' ORDER BY keyring) FROM meshhook_keys.keyrings")" \
    "$(grep '^meshhook_keys_key_active_version{' <<<"$METRICS" | sort | tr '\n' ' ' | sed 's/ $//')"
remaining=$(q "SELECT sum(rows_remaining) FROM meshhook_keys.reencrypt_progress WHERE keyring = 'default' AND job_state = 'running'")
check "rows remaining of the running job match reencrypt_progress" "meshhook_keys_reencrypt_rows_remaining{keyring=\"default\"} ${remaining:-none}" \
    "$(grep '^meshhook_keys_reencrypt_rows_remaining{keyring="default"}' <<<"$METRICS")"
check "and a job is running (rows remaining > 0)" t "$(q "SELECT coalesce($remaining, 0) > 0")"
http GET /metrics "$USER"
check "GET /metrics with a user token: 403" 403 "$CODE"
http GET /metrics ""
check "GET /metrics without a token: 401" 401 "$CODE"
check "HEAD /metrics: 200" 200 "$(curl -s -o /dev/null -w '%{http_code}' -I -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HPORT/metrics")"

echo "# a server that accepts the connection and then says nothing (issue 29): connect_timeout bounds"
echo "# the whole set-up, as libpq's does (psql gives up after it; before, the CLI waited forever)"
SILENT_PORT=$((PORT + 60))
python3 - "$SILENT_PORT" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); s.settimeout(1)
held, deadline = [], time.time() + 60
while time.time() < deadline:
    try:
        held.append(s.accept()[0])   # accepted, never answered
    except socket.timeout:
        pass
PY
SILENT_PID=$!
at_exit "kill $SILENT_PID 2>/dev/null || true"
wait_until 10 python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $SILENT_PORT), 1).close()" \
    || fail "the silent server did not start"
silent() {   # silent ENV...: the CLI against the silent server; RC, its output, and the seconds it took
    local t0; t0=$(date +%s.%N)
    RC=0; OUT=$(as_pg env -i PATH="$PATH" "$@" timeout 20 "$TMP/bin/meshhook-keys" status 2>&1) || RC=$?
    SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}
silent MESHHOOK_KEYS_URL="host=127.0.0.1 port=$SILENT_PORT user=ops dbname=cli connect_timeout=3 sslmode=disable"
check "connect_timeout=3 in the connection string: exit 1" 1 "$RC"
lt "within connect_timeout + 1 s" "$SECS" 4
check_match "saying why" 'timeout expired' "$OUT"
silent PGHOST=127.0.0.1 PGPORT="$SILENT_PORT" PGUSER=ops PGDATABASE=cli PGCONNECT_TIMEOUT=3
check "PGCONNECT_TIMEOUT=3 (sslmode prefer): exit 1" 1 "$RC"
lt "within PGCONNECT_TIMEOUT + 1 s" "$SECS" 4

suite_summary "CLI tests"
