# shellcheck shell=bash
# Shared helpers for the shell test suites (tests/client/*.sh, tests/cli/*.sh). Source it; do not
# run it. It sources scripts/lib.sh for the build and cluster basics (as_pg, make_root_key,
# init_cluster, start_cluster, stop_cluster, install_extension, say).
#
# A suite:
#   source "$(dirname "$0")/../lib.sh"
#   suite_setup NAME PORT [postgresql.conf lines...]   # (or suite_init, edit files, start_cluster "$TMP")
#   q() { psql_as postgres mydb "$@"; }                # at most a one-line adapter for its defaults
#   check "name" expected "$(q "SELECT ...")"
#   suite_summary "my tests"                           # the last line: prints the counts, sets the exit code
# KEEP=1 keeps the suite's directory (cluster data, server log) after the run.

# shellcheck source=../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

# ---- checks ---------------------------------------------------------------------------------------
FAILS=0; PASSES=0
ok()   { PASSES=$((PASSES + 1)); printf '  ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf '  FAIL %s\n' "$1"; [ -n "${2:-}" ] && printf '       %s\n' "$2"; return 0; }
# check NAME EXPECTED ACTUAL: exact equality
check() { if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected [$2], got [$3]"; fi; }
# check_match NAME REGEX ACTUAL: ACTUAL has a line matching the extended regex
check_match() { if grep -Eq -- "$2" <<<"$3"; then ok "$1"; else fail "$1" "expected /$2/, got [$3]"; fi; }
# lt NAME VALUE LIMIT: VALUE (a number) below LIMIT
lt() { if awk -v a="$2" -v b="$3" 'BEGIN { exit !(a != "" && a + 0 < b + 0) }'; then ok "$1 ($2 < $3)"; else fail "$1" "expected [$2] < $3"; fi; }
# suite_summary LABEL: the summary line; its status is the suite's exit code (0 only without a FAIL)
suite_summary() { echo; echo "$1: $PASSES passed, $FAILS failed"; [ "$FAILS" = 0 ]; }

# ---- clients of the suite's cluster (socket directory $TMP, port $PORT) ---------------------------
# psql_as USER DB SQL [psql args...]: tuples only, unaligned; stops at the first error (exit status
# non-zero). Later arguments win, so extra args may override the user (-U), host (-h) or port (-p).
psql_as() {
    local user=$1 db=$2 sql=$3; shift 3
    as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U "$user" -d "$db" -v ON_ERROR_STOP=1 "$@" -c "$sql"
}
# psql_error USER DB SQL [psql args...]: prints "SQLSTATE: message" of the statement's first error,
# nothing if it succeeds.
psql_error() {
    local user=$1 db=$2 sql=$3; shift 3
    { as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U "$user" -d "$db" -v VERBOSITY=verbose "$@" -c "$sql" 2>&1 || true; } \
        | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\): \(.*\)$/\1: \2/p' | head -1
}
# jsonq JSON EXPR: evaluate the SQL expression EXPR with the psql variable j set to JSON (refer to
# it as :'j'::jsonb), so that PostgreSQL parses the JSON (no jq needed).
jsonq() { printf '%s\n' "SELECT $2;" | as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U postgres -d postgres -v j="$1"; }

# ---- waiting --------------------------------------------------------------------------------------
# wait_until SECONDS COMMAND [ARGS...]: run COMMAND (its stdout discarded) until it succeeds, 10 times
# a second (every 0.1 s), 10 x SECONDS times at most: fails after at least SECONDS without success.
# The suites' one polling loop: no fixed sleep stands in for a condition.
wait_until() {
    local secs=$1 i; shift
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null && return 0
        sleep 0.1
    done
    return 1
}
# served_port LOG: the port that `meshhook-keys serve --listen 127.0.0.1:0` printed in LOG (it picks
# a free one, so no fixed port can collide with a client's ephemeral port); waits up to 10 s
served_port() {
    local i p
    for ((i = 0; i < 100; i++)); do
        p=$(sed -n 's|^meshhook-keys: serving on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$1" 2>/dev/null | head -1)
        [ -n "$p" ] && { echo "$p"; return 0; }
        sleep 0.1
    done
    echo "the server did not start; its log:" >&2; cat "$1" >&2 || true
    return 1
}
# is_t COMMAND [ARGS...]: COMMAND's last line of output is t (a psql boolean), e.g.
#   wait_until 20 is_t q app "SELECT EXISTS (...)"
is_t() { [ "$("$@" | tail -1)" = t ]; }

# ---- set-up ---------------------------------------------------------------------------------------
# ensure_extension: build and install the extension if PostgreSQL does not have it yet (or always,
# with MESHHOOK_KEYS_INSTALL=1), so that a suite runs on its own after scripts/setup.sh.
ensure_extension() {
    if [ "${MESHHOOK_KEYS_INSTALL:-0}" = 1 ] || [ ! -f "$("$PG_CONFIG" --sharedir)/extension/$EXT.control" ] \
        || [ ! -f "$("$PG_CONFIG" --pkglibdir)/$EXT.so" ]; then
        install_extension
    fi
}
# ensure_cli: the meshhook-keys binary (MESHHOOK_KEYS_CLI_BIN, by default target/debug/meshhook-keys),
# built if missing (or always, with MESHHOOK_KEYS_INSTALL=1). Sets CLI_BIN.
ensure_cli() {
    CLI_BIN=${MESHHOOK_KEYS_CLI_BIN:-$REPO_ROOT/target/debug/meshhook-keys}
    if [ -z "${MESHHOOK_KEYS_CLI_BIN:-}" ] && { [ "${MESHHOOK_KEYS_INSTALL:-0}" = 1 ] || [ ! -x "$CLI_BIN" ]; }; then
        say "building the meshhook-keys CLI"
        (cd "$REPO_ROOT" && cargo build -q -p meshhook-keys)
    fi
}

# at_exit 'COMMAND': run (eval) when the suite exits, before its cluster is stopped (last registered
# first). For servers, poolers and stopped processes that the suite started.
SUITE_AT_EXIT=()
at_exit() { SUITE_AT_EXIT=("$1" "${SUITE_AT_EXIT[@]}"); }
suite_cleanup() {
    local code
    for code in "${SUITE_AT_EXIT[@]}"; do eval "$code" || true; done
    stop_cluster "$TMP" immediate
    if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
# suite_init NAME PORT [postgresql.conf lines...]: installs the extension if needed, then TMP (a new
# /tmp/mk_NAME.XXXXXX), a root key in KEY ($TMP/keys/root.key), a cluster in $TMP/data with
# root_key_file = KEY and the given lines, and the EXIT trap (at_exit codes, stop the cluster,
# remove TMP unless KEEP=1). Does not start the cluster.
suite_init() {
    local name=$1; PORT=$2; shift 2
    ensure_extension
    TMP=$(mktemp -d "/tmp/mk_$name.XXXXXX")
    chmod 755 "$TMP"
    KEY=$TMP/keys/root.key
    make_root_key "$KEY"
    init_cluster "$TMP" "$PORT" "meshhook_keys.root_key_file = '$KEY'" "$@"
    trap suite_cleanup EXIT
}
# suite_setup NAME PORT [postgresql.conf lines...]: suite_init, then start the cluster.
suite_setup() { suite_init "$@"; start_cluster "$TMP"; }

# ---- meshhook-keys serve --------------------------------------------------------------------------
# serve_roles DB: the extension in DB and the HTTP API's roles: ops (admin), app (user), and
# authenticator, which may switch to both (as PostgREST's).
serve_roles() {
    psql_as postgres "$1" "CREATE EXTENSION meshhook_keys;
        CREATE ROLE ops LOGIN IN ROLE meshhook_keys_admin;
        CREATE ROLE app LOGIN IN ROLE meshhook_keys_user;
        CREATE ROLE authenticator LOGIN NOINHERIT; GRANT ops, app TO authenticator;" >/dev/null
}
# serve_creds DB PREFIX N: table creds of N secrets 'PREFIX-SECRET-<id>' (context 'cred:<id>'),
# registered for re-encryption, readable by ops.
serve_creds() {
    psql_as postgres "$1" "CREATE TABLE creds (id int PRIMARY KEY, c bytea NOT NULL);
        INSERT INTO creds SELECT i, meshhook_keys.secret_encrypt('$2-SECRET-' || i, 'cred:' || i) FROM generate_series(1, $3) i;
        SELECT meshhook_keys.register_column('creds', 'c', \$\$'cred:' || id\$\$);
        GRANT SELECT ON creds TO ops;" >/dev/null
}
# serve_start DB [SERVE ARGS...]: $TMP/bin/meshhook-keys serve as authenticator on DB, on a free
# loopback port, with a new JWT secret; sets SECRET, SERVER, HPORT, checks it is up (its log in
# $TMP/serve.log); stopped at exit.
serve_start() {
    local db=$1; shift
    SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    # (run directly, not through runuser, so that killing $SERVER stops it; the socket's trust
    # authentication applies)
    env PGHOST="$TMP" PGPORT="$PORT" PGDATABASE="$db" PGUSER=authenticator MESHHOOK_KEYS_JWT_SECRET="$SECRET" \
        "$TMP/bin/meshhook-keys" serve --listen "127.0.0.1:0" "$@" >"$TMP/serve.out" 2>"$TMP/serve.log" &
    SERVER=$!
    at_exit 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi'
    HPORT=$(served_port "$TMP/serve.log") || HPORT=0
    local up=0
    wait_until 10 curl -fs "http://127.0.0.1:$HPORT/healthz" && up=1
    [ "$up" = 1 ] || { echo "the server's log:"; cat "$TMP/serve.log"; }
    check "the server is up: GET /healthz 200" 1 "$up"
}
# serve_token ROLE SUB [SECONDS]: a token for ROLE with subject SUB, signed with SECRET.
serve_token() {
    as_pg env MESHHOOK_KEYS_JWT_SECRET="$SECRET" "$TMP/bin/meshhook-keys" token --role "$1" --sub "$2" --expires-in "${3:-900}"
}

# ---- named scenarios ------------------------------------------------------------------------------
# A suite with scenarios defines each as a function scenario_NAME (dashes in NAME become underscores)
# and declares it, in the order a full run takes them, with
#   scenario NAME "DEPENDENCIES" "description"
# then calls scenario_args "$@" before its set-up (handles --list and checks the names) and
# run_scenarios after it. Without names every scenario runs; with names, those and (first) the
# scenarios they depend on, transitively, each once, in declaration order.
SCENARIOS=(); declare -A SCENARIO_DEPS=() SCENARIO_DESC=() SCENARIO_WANTED=()
scenario() { SCENARIOS+=("$1"); SCENARIO_DEPS[$1]=$2; SCENARIO_DESC[$1]=$3; }
scenario_want() {
    local dep
    [ -n "${SCENARIO_WANTED[$1]:-}" ] && return 0
    SCENARIO_WANTED[$1]=1
    for dep in ${SCENARIO_DEPS[$1]}; do scenario_want "$dep"; done
}
scenario_args() {
    local name s
    if [ "${1:-}" = --list ]; then
        for s in "${SCENARIOS[@]}"; do
            printf '%-22s %s%s\n' "$s" "${SCENARIO_DESC[$s]}" "${SCENARIO_DEPS[$s]:+ (needs: ${SCENARIO_DEPS[$s]})}"
        done
        exit 0
    fi
    if [ "$#" = 0 ]; then set -- "${SCENARIOS[@]}"; fi
    for name in "$@"; do
        if [ -z "${SCENARIO_DESC[$name]+x}" ]; then
            echo "$0: no scenario '$name' (--list lists them)" >&2
            exit 2
        fi
        scenario_want "$name"
    done
}
run_scenarios() {
    local s
    for s in "${SCENARIOS[@]}"; do
        if [ -n "${SCENARIO_WANTED[$s]:-}" ]; then "scenario_${s//-/_}"; fi
    done
}
