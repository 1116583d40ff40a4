#!/usr/bin/env bash
# The web console of meshhook-keys serve in a real browser: Debian's chromium, headless, driven by
# playwright-core (tests/browser/console.mjs): sign in, change a policy, rotate, watch the
# scheduler re-encrypt 100,000 rows to 100%, retire and destroy, read the audit rows it made; a
# user-role token sees no write control. Screenshots of each page go to target/console-screenshots/
# (CI artifacts). Needs chromium and `npm ci` in tests/browser (scripts/test.sh does both).
source "$(dirname "$0")/../lib.sh"

ensure_cli
SHOTS="$REPO_ROOT/target/console-screenshots"
rm -rf "$SHOTS"; mkdir -p "$SHOTS"
[ -d "$REPO_ROOT/tests/browser/node_modules/playwright-core" ] \
    || (cd "$REPO_ROOT/tests/browser" && npm ci --no-audit --no-fund >/dev/null)
suite_setup console "${MESHHOOK_KEYS_CONSOLE_PORT:-25339}" "log_min_error_statement = 'panic'" \
    "meshhook_keys.database = 'console'" "meshhook_keys.worker_naptime = '200ms'" \
    "meshhook_keys.reencrypt_batch_size = 2000" "meshhook_keys.reencrypt_batches_per_tick = 2" \
    "meshhook_keys.reencrypt_busy_share = 1" "meshhook_keys.reencrypt_batch_delay = 0"
install -d -m 755 "$TMP/bin"
install -m 755 "$CLI_BIN" "$TMP/bin/meshhook-keys"
q() { psql_as postgres console "$1"; }

say "console tests in chromium (cluster in $TMP, port $PORT)"
psql_as postgres postgres "CREATE DATABASE console"
serve_roles console
serve_creds console CONSOLE 100000
q "SELECT meshhook_keys.keys_rotate('busy'), meshhook_keys.keys_rotate('zeta');
   SELECT meshhook_keys.keyring_set_policy('busy', '90 days', 10);
   SELECT count(meshhook_keys.secret_encrypt('x', '', 'busy')) FROM generate_series(1, 9);" >/dev/null
serve_start console --jwt-header X-Forwarded-Access-Token
ADMIN=$(serve_token ops console-admin); USER=$(serve_token app console-user)

RC=0
node "$REPO_ROOT/tests/browser/console.mjs" "http://127.0.0.1:$HPORT" "$ADMIN" "$USER" "$SHOTS" | tee "$TMP/browser.out" || RC=$?
PASSES=$((PASSES + $(grep -c '^  ok ' "$TMP/browser.out" || true)))
FAILS=$((FAILS + $(grep -c '^  FAIL ' "$TMP/browser.out" || true)))
[ "$RC" = 0 ] || [ "$(grep -c '^  FAIL ' "$TMP/browser.out" || true)" != 0 ] || fail "the browser test ended with status $RC"

echo "# what the browser did, seen from the database"
check "the policy it saved" "30 days|500000" "$(q "SELECT rotation_interval || '|' || max_encryptions FROM meshhook_keys.keyrings WHERE keyring = 'default'")"
check "the rotation it made is active" 2 "$(q "SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'default'")"
check "every row was re-encrypted to it" "2 100000" "$(q "SELECT string_agg(version || ' ' || rows, ',') FROM meshhook_keys.key_usage('default') WHERE rows > 0")"
check "version 1 is destroyed" destroyed "$(q "SELECT state FROM meshhook_keys.keys WHERE keyring = 'default' AND version = 1")"
check "every secret still decrypts" 100000 "$(q "SELECT count(*) FROM creds WHERE meshhook_keys.secret_decrypt(c, 'cred:' || id) = 'CONSOLE-SECRET-' || id")"
check "the audit rows carry the operator's token subject" 6 \
    "$(q "SELECT count(DISTINCT action) FROM meshhook_keys.audit_log WHERE detail -> 'jwt' ->> 'sub' = 'console-admin' AND outcome = 'ok'")"
check "the user's attempts were refused, none succeeded" "0" \
    "$(q "SELECT count(*) FROM meshhook_keys.audit_log WHERE detail -> 'jwt' ->> 'sub' = 'console-user' AND outcome = 'ok'")"
n=$(ls "$SHOTS"/*.png 2>/dev/null | wc -l)
lt "screenshots of every page in target/console-screenshots (at least 9)" 8 "$n"
check "the server logged no secret" "" "$(grep -o "$SECRET" "$TMP/serve.log" | head -1 || true)"

suite_summary "console tests"
