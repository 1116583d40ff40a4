#!/usr/bin/env bash
# The admin API of meshhook-keys serve, as a client uses it: every documented route answers, each
# endpoint does what the CLI does (as the token's role, refused for a user token), errors carry
# the SQLSTATE, re-encryption progress streams as Server-Sent Events. Installs the extension and
# builds the CLI if either is missing.
source "$(dirname "$0")/../lib.sh"

ensure_cli
suite_setup api "${MESHHOOK_KEYS_API_PORT:-25337}" "log_min_error_statement = 'panic'" "meshhook_keys.worker_enabled = off"
install -d -m 755 "$TMP/bin"
install -m 755 "$CLI_BIN" "$TMP/bin/meshhook-keys"
q() { psql_as postgres api "$1"; }

say "admin API tests (cluster in $TMP, port $PORT)"
psql_as postgres postgres "CREATE DATABASE api"
serve_roles api
serve_creds api API 5000
serve_start api --jwt-header X-Forwarded-Access-Token
ADMIN=$(serve_token ops api-ops); USER=$(serve_token app api-app)
# http METHOD PATH [TOKEN] [BODY]: sets CODE and BODY_OUT
http() {
    local args=(-s -o "$TMP/http.out" -w '%{http_code}' -m 20 -X "$1" "http://127.0.0.1:$HPORT$2")
    [ -n "${3:-}" ] && args+=(-H "Authorization: Bearer $3")
    [ -n "${4:-}" ] && args+=(-H 'Content-Type: application/json' --data "$4")
    CODE=$(curl "${args[@]}"); BODY_OUT=$(cat "$TMP/http.out")
}
j() { jsonq "$BODY_OUT" "$1"; }

echo "# the OpenAPI description: every documented route answers"
http GET /api/openapi.json
check "GET /api/openapi.json without a token: 200" 200 "$CODE"
cp "$TMP/http.out" "$TMP/openapi.json"
check "OpenAPI 3.1" 3.1.0 "$(j "(:'j'::jsonb ->> 'openapi')")"
check "a bearer security scheme" http "$(j "(:'j'::jsonb #>> '{components,securitySchemes,bearer,type}')")"
routes=$(python3 - "$TMP/openapi.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for path, methods in sorted(d["paths"].items()):
    for m, op in methods.items():
        open_ = op.get("security") == [{}]
        print(m.upper(), path.replace("{keyring}", "default").replace("{version}", "1"), "open" if open_ else "token")
PY
)
n=0; bad=""
while read -r method path kind; do
    n=$((n + 1))
    http "$method" "$path"
    if [ "$kind" = open ]; then
        [ "$CODE" = 200 ] || [ "$CODE" = 204 ] || bad="$bad $method $path:$CODE"
    else
        # (a route that needs a token refuses without one: 401, before anything else)
        [ "$CODE" = 401 ] || bad="$bad $method $path:$CODE"
    fi
done <<<"$routes"
lt "at least 20 documented routes" 19 "$n"
check "each answers: 401 without a token, 200 (204) where none is needed" "" "$bad"
bad=""
for probe in "GET /api/keyrings/default/nothing" "DELETE /api/keyrings" "POST /api/audit" "GET /api/keyring" "PATCH /api/keyrings/default/policy"; do
    http ${probe% *} "${probe#* }" "$ADMIN"
    [ "$CODE" = 404 ] || bad="$bad $probe:$CODE"
done
check "routes and methods not documented: 404" "" "$bad"

echo "# who the token is"
http GET /api/whoami "$USER"
check "GET /api/whoami with a user token: 200, app, not an operator, its sub" "200 app false api-app" \
    "$CODE $(j "concat_ws(' ', :'j'::jsonb ->> 'role', :'j'::jsonb ->> 'operator', :'j'::jsonb ->> 'sub')")"
http GET /api/whoami "$ADMIN"
check "  with an admin token: ops, operator and admin" "ops true true" \
    "$(j "concat_ws(' ', :'j'::jsonb ->> 'role', :'j'::jsonb ->> 'operator', :'j'::jsonb ->> 'admin')")"
check "every response says nosniff and DENY" "nosniff DENY" \
    "$(curl -s -D - -o /dev/null "http://127.0.0.1:$HPORT/api/openapi.json" | tr -d '\r' | sed -n 's/^x-content-type-options: //Ip; s/^x-frame-options: //Ip' | tr '\n' ' ' | sed 's/ $//')"

check "the token in the --jwt-header header, as a proxy sends it: 200 ops" "200 ops" \
    "$(curl -s -o "$TMP/h.out" -w '%{http_code}' -H "X-Forwarded-Access-Token: $ADMIN" "http://127.0.0.1:$HPORT/api/whoami") $(jsonq "$(cat "$TMP/h.out")" "(:'j'::jsonb ->> 'role')")"
check "  also as Bearer <token>" 200 "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Forwarded-Access-Token: Bearer $ADMIN" "http://127.0.0.1:$HPORT/api/whoami")"
check "  verified all the same (a forged one: 401)" 401 \
    "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Forwarded-Access-Token: ${ADMIN%?}$([ "${ADMIN: -1}" = x ] && echo y || echo x)" "http://127.0.0.1:$HPORT/api/whoami")"
check "  Authorization wins when both are sent" "app" \
    "$(curl -s -H "Authorization: Bearer $USER" -H "X-Forwarded-Access-Token: $ADMIN" "http://127.0.0.1:$HPORT/api/whoami" | python3 -c 'import json,sys; print(json.load(sys.stdin)["role"])')"

echo "# keyrings"
http GET /api/keyrings "$ADMIN"
check "GET /api/keyrings: 200" 200 "$CODE"
check "  lists default with its active version" "1" "$(j "(SELECT k ->> 'active_version' FROM jsonb_array_elements(:'j'::jsonb) k WHERE k ->> 'keyring' = 'default')")"
check "  with the policy and encryptions against the limit" "t" "$(j "(SELECT (k ? 'rotation_interval') AND (k ->> 'encryptions')::bigint >= 5000 AND (k ->> 'max_encryptions')::bigint > 0 FROM jsonb_array_elements(:'j'::jsonb) k WHERE k ->> 'keyring' = 'default')")"
http GET /api/keyrings "$USER"
check "a user token: 403" 403 "$CODE"
check "  with the database's SQLSTATE" 42501 "$(j "(:'j'::jsonb ->> 'sqlstate')")"
http GET /api/keyrings/default "$ADMIN"
check "GET /api/keyrings/default: 200, with its versions" "200 1" "$CODE $(j "(jsonb_array_length(:'j'::jsonb -> 'versions'))")"
http GET /api/keyrings/nothing "$ADMIN"
check "an unknown keyring: 404" 404 "$CODE"

echo "# policy"
http PUT /api/keyrings/default/policy "$ADMIN" '{"rotation_interval": "90 days", "max_encryptions": 1000000}'
check "PUT policy: 200" 200 "$CODE"
check "  the keyrings view has it" "90 days|1000000" "$(q "SELECT rotation_interval || '|' || max_encryptions FROM meshhook_keys.keyrings WHERE keyring = 'default'")"
check "  and the reply too" "90 days" "$(j "(:'j'::jsonb ->> 'rotation_interval')")"
check "  audited" 1 "$(q "SELECT count(*) FROM meshhook_keys.audit_log WHERE keyring = 'default' AND action LIKE '%policy%' AND role_name = 'ops'")"
http PUT /api/keyrings/default/policy "$ADMIN" '{"max_encryptions": 5}'
check "without rotation_interval: 400" 400 "$CODE"
http PUT /api/keyrings/default/policy "$ADMIN" '{"rotation_interval": "soon"}'
check "an invalid interval: 400 with the SQLSTATE" "400 22007" "$CODE $(j "(:'j'::jsonb ->> 'sqlstate')")"
http PUT /api/keyrings/default/policy "$ADMIN" '{"rotation_interval": "90 days", "extra": 1}'
check "an unknown member: 400" 400 "$CODE"
http PUT /api/keyrings/default/policy "$USER" '{"rotation_interval": null}'
check "a user token: 403" 403 "$CODE"
check "  the policy is unchanged" "90 days" "$(q "SELECT rotation_interval FROM meshhook_keys.keyrings WHERE keyring = 'default'")"

echo "# rotate, re-encrypt with progress as Server-Sent Events, retire, destroy"
http POST /api/keyrings/default/rotate "$ADMIN" '{"reason": "api test"}'
check "POST rotate: 200, version 2" "200 2" "$CODE $(j "(:'j'::jsonb ->> 'version')")"
http POST /api/keyrings/default/rotate "$ADMIN"
check "  an empty body is {}: version 3" "200 3" "$CODE $(j "(:'j'::jsonb ->> 'version')")"
http POST /api/keyrings/default/rotate "$ADMIN" '{"reason": null}'
check "  a null reason: 400" 400 "$CODE"
http POST /api/keyrings/default/rotate "$USER" '{}'
check "  a user token: 403" 403 "$CODE"
curl -s -N -m 60 -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HPORT/api/keyrings/default/reencrypt/events" > "$TMP/events.out" &
EVENTS=$!
http POST /api/keyrings/default/reencrypt "$ADMIN" '{"batch_size": 500}'
check "POST reencrypt (one batch): 200, 1 to 500 rows moved" "200 t" "$CODE $(j "((:'j'::jsonb ->> 'rows_moved')::int BETWEEN 1 AND 500)")"
for _ in $(seq 1 40); do
    http POST /api/keyrings/default/reencrypt "$ADMIN" '{"batch_size": 500}'
    [ "$(j "(:'j'::jsonb ->> 'rows_moved')")" = "" ] && break
    sleep 0.1
done
check "batches until nothing is left (rows_moved null)" "" "$(j "(:'j'::jsonb ->> 'rows_moved')")"
http GET /api/keyrings/default/reencrypt "$ADMIN"
check "GET reencrypt: the job moved all 5000 rows" "200 5000 5000 0" \
    "$CODE $(j "concat_ws(' ', :'j'::jsonb ->> 'rows_total', :'j'::jsonb ->> 'rows_done', :'j'::jsonb ->> 'rows_failed')")"
ended=0; wait_until 15 bash -c "! kill -0 $EVENTS 2>/dev/null" && ended=1
check "the event stream ended once the job finished" 1 "$ended"
n_events=$(grep -c '^event: progress' "$TMP/events.out" || true)
lt "  after more than one progress event" 1 "$n_events"
last=$(grep '^data: ' "$TMP/events.out" | tail -1 | sed 's/^data: //')
check "  the last says finished, 5000 of 5000" "finished 5000 5000" \
    "$(jsonq "$last" "concat_ws(' ', :'j'::jsonb ->> 'state', :'j'::jsonb ->> 'rows_done', :'j'::jsonb ->> 'rows_total')")"
check "  every event has rate and eta_seconds" "" \
    "$(grep '^data: ' "$TMP/events.out" | sed 's/^data: //' | python3 -c "import json,sys; print(''.join('x' for l in sys.stdin if not {'rate','eta_seconds'} <= json.loads(l).keys()))")"
http POST /api/keyrings/default/versions/1/retire "$ADMIN"
check "retire version 1: 200" "200 true" "$CODE $(j "(:'j'::jsonb ->> 'retired')")"
http POST /api/keyrings/default/versions/2/destroy "$ADMIN" '{"confirm": "default"}'
check "destroying a version that is not retired: 409 with 55000" "409 55000" "$CODE $(j "(:'j'::jsonb ->> 'sqlstate')")"
http POST /api/keyrings/default/versions/1/destroy "$ADMIN" '{}'
check "destroy without the confirmation: 400" 400 "$CODE"
http POST /api/keyrings/default/versions/1/destroy "$ADMIN" '{"confirm": "defaul"}'
check "destroy with the wrong name: 400" 400 "$CODE"
check_match "  saying why" 'must be the keyring' "$BODY_OUT"
check "  version 1 is still there (retired)" retired "$(q "SELECT state FROM meshhook_keys.keys WHERE keyring = 'default' AND version = 1")"
http POST /api/keyrings/default/versions/1/destroy "$USER" '{"confirm": "default"}'
check "destroy with a user token: 403" 403 "$CODE"
http POST /api/keyrings/default/versions/1/destroy "$ADMIN" '{"confirm": "default"}'
check "destroy with the name: 200" "200 true" "$CODE $(j "(:'j'::jsonb ->> 'destroyed')")"
check "  version 1 is destroyed" destroyed "$(q "SELECT state FROM meshhook_keys.keys WHERE keyring = 'default' AND version = 1")"
http GET /api/keyrings/default/versions "$ADMIN"
check "GET versions: 3 versions, by version" "1,2,3" "$(j "(SELECT string_agg(v ->> 'version', ',') FROM jsonb_array_elements(:'j'::jsonb) v)")"
http GET /api/keyrings/default/usage "$ADMIN"
check "GET usage: every row on version 3" "creds 3 5000" "$(j "(SELECT string_agg(concat_ws(' ', u ->> 'table_name', u ->> 'version', u ->> 'rows'), ',') FROM jsonb_array_elements(:'j'::jsonb) u WHERE (u ->> 'rows')::int > 0)")"
check "every secret still decrypts" 5000 "$(q "SELECT count(*) FROM creds WHERE meshhook_keys.secret_decrypt(c, 'cred:' || id) = 'API-SECRET-' || id")"

echo "# pausing the scheduler's re-encryption"
http POST /api/keyrings/default/reencrypt/pause "$ADMIN" '{"reason": "window"}'
check "POST reencrypt/pause: 200, changed" "200 true" "$CODE $(j "(:'j'::jsonb ->> 'changed')")"
check "  the keyrings view says so" t "$(q "SELECT reencrypt_paused FROM meshhook_keys.keyrings WHERE keyring = 'default'")"
http POST /api/keyrings/default/reencrypt/pause "$ADMIN"
check "  again: 200, unchanged" "200 false" "$CODE $(j "(:'j'::jsonb ->> 'changed')")"
http POST /api/keyrings/default/reencrypt/resume "$USER"
check "  a user token cannot resume it: 403" 403 "$CODE"
http POST /api/keyrings/nothing/reencrypt/pause "$ADMIN"
check "  an unknown keyring: 404 with 42704" "404 42704" "$CODE $(j "(:'j'::jsonb ->> 'sqlstate')")"
http POST /api/keyrings/default/reencrypt/resume "$ADMIN" '{"reason": "window over"}'
check "POST reencrypt/resume: 200, changed" "200 true" "$CODE $(j "(:'j'::jsonb ->> 'changed')")"
check "  audited with the reasons" "reencrypt_pause window|reencrypt_pause |reencrypt_resume window over" \
    "$(q "SELECT string_agg(action || ' ' || coalesce(reason, ''), '|' ORDER BY id) FROM meshhook_keys.audit_log WHERE keyring = 'default' AND action IN ('reencrypt_pause', 'reencrypt_resume') AND outcome = 'ok'")"

echo "# the audit log: filters and cursor pagination"
http GET "/api/audit?keyring=default&limit=3" "$ADMIN"
check "GET /api/audit: 200, 3 rows, newest first" "200 3 t" \
    "$CODE $(j "concat_ws(' ', jsonb_array_length(:'j'::jsonb -> 'rows'), (:'j'::jsonb #>> '{rows,0,id}')::bigint > (:'j'::jsonb #>> '{rows,2,id}')::bigint)")"
total=$(q "SELECT count(*) FROM meshhook_keys.audit_log WHERE keyring = 'default'")
seen=""; before=""; pages=0
while :; do
    http GET "/api/audit?keyring=default&limit=4${before:+&before=$before}" "$ADMIN"
    seen="$seen $(j "(SELECT string_agg(r ->> 'id', ' ') FROM jsonb_array_elements(:'j'::jsonb -> 'rows') r)")"
    before=$(j "(:'j'::jsonb ->> 'next_before')"); pages=$((pages + 1))
    [ -z "$before" ] || [ "$pages" -gt 100 ] && break
done
check "paging through (4 a page) gives every row of the keyring once" "$total $total" \
    "$(echo $seen | wc -w) $(echo $seen | tr ' ' '\n' | sort -u | wc -l)"
http GET "/api/audit?outcome=refused&keyring=default" "$ADMIN"
check "filtered by outcome: only refusals, the user's among them" "t t" "$(j "concat_ws(' ', (SELECT bool_and(r ->> 'outcome' = 'refused') FROM jsonb_array_elements(:'j'::jsonb -> 'rows') r), (SELECT bool_or(r ->> 'role_name' = 'app') FROM jsonb_array_elements(:'j'::jsonb -> 'rows') r))")"
http GET "/api/audit?action=destroy" "$ADMIN"
check "filtered by action: the destruction" "destroy 1" "$(j "(SELECT string_agg(concat_ws(' ', r ->> 'action', r ->> 'version'), ',') FROM jsonb_array_elements(:'j'::jsonb -> 'rows') r)")"
http GET "/api/audit?since=tomorrow" "$ADMIN"
check "since tomorrow: no rows, no cursor" "200 0 " "$CODE $(j "jsonb_array_length(:'j'::jsonb -> 'rows')") $(j "(:'j'::jsonb ->> 'next_before')")"
http GET "/api/audit?limit=0" "$ADMIN"
check "limit 0: 400" 400 "$CODE"
http GET "/api/audit?before=x" "$ADMIN"
check "a cursor that is not a number: 400" 400 "$CODE"

echo "# verify and health"
http GET "/api/verify?sample=50" "$ADMIN"
check "GET /api/verify: 200, the chain verifies, the column's sample decrypts" "200 true 50 50" \
    "$CODE $(j "concat_ws(' ', :'j'::jsonb #>> '{audit,ok}', (SELECT concat_ws(' ', c ->> 'sampled', c ->> 'decrypted') FROM jsonb_array_elements(:'j'::jsonb -> 'columns') c WHERE c ->> 'table_name' = 'creds'))")"
http GET /api/health "$ADMIN"
check "GET /api/health: 200, with a root_key finding" "200 t" "$CODE $(j "(SELECT bool_or(h ->> 'item' LIKE 'root%') FROM jsonb_array_elements(:'j'::jsonb) h)")"
http GET /api/health "$USER"
check "  a user token: 403" 403 "$CODE"
check "the server logged no secret" "" "$(grep -o "$SECRET" "$TMP/serve.log" | head -1 || true)"
check "nor any plaintext" "" "$(grep -o 'API-SECRET' "$TMP/serve.log" "$TMP/server.log" | head -1 || true)"

suite_summary "admin API tests"
