#!/usr/bin/env bash
# Every ```sql block of the manual (docs/src), run as written: page by page in the order of
# docs/src/SUMMARY.md, each page as one psql script (tests/docs/extract.py) with ON_ERROR_STOP, in a
# fresh database named appdb, as the superuser postgres, on a throwaway cluster with the library
# preloaded, a fresh root key, meshhook_keys.database = 'appdb' and the background worker paused
# (the scheduling page turns it on, visibly). Blocks marked ```sql,error=SQLSTATE must fail with
# exactly that SQLSTATE. After each page its database is dropped, the roles it created are dropped
# and ALTER SYSTEM settings are reset, so every page starts from the same cluster.
# Then the reference check (tests/docs/reference.py): every function, procedure, view and table of
# the extension's schema is in docs/src/reference.md with its signature, and the role the reference
# names for it is the one its COMMENT names. MESHHOOK_KEYS_DOCS_ROLE_CHECK=warn reports role
# mismatches without failing (signatures and missing entries still fail). And the settings table of
# docs/src/configuration.md against pg_settings (tests/docs/settings.py).
#
#   tests/docs/run.sh                      # every page, then README.md's SQL
#   tests/docs/run.sh getting-started.md   # some pages (paths relative to docs/src; the reference
#                                          # and configuration checks still run)
#   KEEP=1 tests/docs/run.sh               # keep the cluster directory (server log, page logs)
#
# Runs as root after scripts/setup.sh (it installs the extension if PostgreSQL lacks it); PG_MAJOR
# or PG_CONFIG picks the PostgreSQL, MESHHOOK_KEYS_DOCS_PORT the port (default 25353).
source "$(dirname "$0")/../lib.sh"
cd "$REPO_ROOT"
DOCS=$REPO_ROOT/docs/src
t0=$(date +%s)

pages=("$@")
if [ "${#pages[@]}" = 0 ]; then
    mapfile -t pages < <(python3 tests/docs/extract.py --pages "$DOCS/SUMMARY.md")
    pages+=(../../README.md)   # its taste of SQL runs too
fi

# a page's file name under $TMP/pages: ../../README.md -> README.md, a/b.md -> a_b.md
slug() { local p=${1//..\//}; echo "${p//\//_}"; }

# Extract every page first: a page the extractor refuses fails before any cluster starts.
suite_init docs "${MESHHOOK_KEYS_DOCS_PORT:-25353}" \
    "meshhook_keys.database = 'appdb'" "meshhook_keys.worker_enabled = off"
install -d -o postgres -g postgres "$TMP/pages"
for page in "${pages[@]}"; do
    [ -f "$DOCS/$page" ] || { echo "tests/docs/run.sh: no page docs/src/$page" >&2; exit 2; }
    out=$TMP/pages/$(slug "$page").sql
    python3 tests/docs/extract.py "$DOCS/$page" "$page" > "$out" || { fail "$page: extract"; suite_summary "docs"; exit 1; }
done
chmod -R a+r "$TMP/pages"
start_cluster "$TMP"

q() { psql_as postgres postgres "$@"; }
# Roles that exist before the pages run: the bootstrap superuser and meshhook_keys' own (made by a
# first CREATE EXTENSION, as on any server where the extension was installed once).
q "CREATE DATABASE docs_bootstrap" >/dev/null
psql_as postgres docs_bootstrap "CREATE EXTENSION meshhook_keys" >/dev/null
q "DROP DATABASE docs_bootstrap" >/dev/null
base_roles=$(q "SELECT string_agg(quote_literal(rolname), ',') FROM pg_roles")

for page in "${pages[@]}"; do
    script=$TMP/pages/$(slug "$page").sql
    log=$TMP/pages/$(slug "$page").log
    if ! grep -q '^\\echo .>>> .*blocks run' "$script" || [ "$(grep -c '^\\echo .>>> [^ ]*:[0-9]*.$' "$script")" = 0 ]; then
        echo "  --   $page (no SQL)"
        continue
    fi
    q "CREATE DATABASE appdb" >/dev/null
    p0=$(date +%s.%N)
    if as_pg psql -X -h "$TMP" -p "$PORT" -U postgres -d appdb -v ON_ERROR_STOP=1 -f "$script" >"$log" 2>&1; then
        ok "$page ($(tail -1 "$log" | sed 's/^>>> [^:]*: //'), $(awk -v a="$p0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'))"
    else
        fail "$page" "see below (page log: $log)"
        grep -n 'DOCS FAILURE\|^psql:.*ERROR\|^>>> ' "$log" | tail -15 | sed 's/^/       /'
    fi
    # back to the cluster the next page expects
    q "DROP DATABASE appdb WITH (FORCE)" >/dev/null
    for role in $(q "SELECT quote_ident(rolname) FROM pg_roles WHERE rolname NOT IN ($base_roles)"); do
        q "DROP ROLE $role" >/dev/null || fail "$page: drop role $role"
    done
    q "ALTER SYSTEM RESET ALL" >/dev/null
    q "SELECT pg_reload_conf()" >/dev/null
done

# The reference page against the catalog of a fresh install.
q "CREATE DATABASE docs_reference" >/dev/null
psql_as postgres docs_reference "CREATE EXTENSION meshhook_keys" >/dev/null
catalog=$(psql_as postgres docs_reference "$(cat tests/docs/catalog.sql)")
if python3 tests/docs/reference.py "$DOCS/reference.md" <<<"$catalog"; then
    ok "reference.md matches the catalog (functions, procedures, views, tables; signatures; roles)"
else
    fail "reference.md matches the catalog (see above)"
fi
q "DROP DATABASE docs_reference" >/dev/null
# The configuration page's table against the server's settings.
if q "SELECT name, context FROM pg_settings WHERE name LIKE 'meshhook_keys.%'" -F '|' \
    | python3 tests/docs/settings.py "$DOCS/configuration.md"; then
    ok "configuration.md lists every setting with its context"
else
    fail "configuration.md lists every setting with its context (see above)"
fi

echo "docs suite: $(( $(date +%s) - t0 )) s"
suite_summary "docs"
