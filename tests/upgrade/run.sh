#!/usr/bin/env bash
# Upgrade test: every version a user may have installed (sql/archive), installed as it shipped, then
# updated with ALTER EXTENSION, must give exactly the objects (functions with their argument names,
# defaults and results), privileges and comments of a fresh install, and keep every secret written
# before the upgrade decryptable. Run by scripts/installcheck.sh with PGHOST/PGPORT pointing at its
# cluster.
source "$(dirname "$0")/../../scripts/lib.sh"
SHAREDIR=$("$PG_CONFIG" --sharedir)/extension
for f in "$REPO_ROOT"/sql/archive/meshhook_keys--*.sql; do install -m 644 "$f" "$SHAREDIR/"; done

q() { as_pg psql -X -q -A -t -v ON_ERROR_STOP=1 -U postgres "$@"; }
inventory() {
    q -d "$1" <<'SQL'
SELECT 'object: ' || pg_describe_object(classid, objid, objsubid) FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'meshhook_keys') ORDER BY 1;
SELECT 'function: ' || p.oid::regprocedure || ' args=(' || pg_get_function_arguments(p.oid) || ') returns='
       || coalesce(pg_get_function_result(p.oid), '-') || ' definer=' || p.prosecdef || ' vol=' || p.provolatile::text || ' par=' || p.proparallel::text
       || ' config=' || coalesce(array_to_string(p.proconfig, ','), '') || ' acl=' || coalesce(p.proacl::text, 'default')
       || ' comment=' || coalesce(md5(obj_description(p.oid, 'pg_proc')), '-')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'meshhook_keys' ORDER BY 1;
SELECT 'relation: ' || c.relname || ' acl=' || coalesce(c.relacl::text, 'default')
       || ' comment=' || coalesce(md5(obj_description(c.oid, 'pg_class')), '-')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'meshhook_keys' ORDER BY 1;
SELECT 'column: ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'meshhook_keys' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1;
SELECT 'trigger: ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'meshhook_keys' AND NOT t.tgisinternal ORDER BY 1;
SELECT 'view: ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'meshhook_keys' AND c.relkind = 'v' ORDER BY 1;
SELECT 'schema: ' || n.nspname || ' acl=' || coalesce(n.nspacl::text, 'default') FROM pg_namespace n
 WHERE n.nspname = 'meshhook_keys';
SELECT 'config: ' || c.relname FROM pg_extension e, unnest(e.extconfig) t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'meshhook_keys' ORDER BY 1;
SQL
}

status=0
current=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")
q -d postgres -c "CREATE DATABASE upgrade_fresh" -c "CREATE DATABASE upgrade_old"
q -d upgrade_fresh -c "CREATE EXTENSION meshhook_keys"
for archived in "$REPO_ROOT"/sql/archive/meshhook_keys--*.sql; do
    from=$(basename "$archived" .sql | sed 's/^meshhook_keys--//')
    say "upgrade test: $from -> $current"
    q -d postgres -c "DROP DATABASE IF EXISTS upgrade_old" -c "CREATE DATABASE upgrade_old"
    q -d upgrade_old -c "CREATE EXTENSION meshhook_keys VERSION '$from'" \
        -c "CREATE TABLE s AS SELECT i, meshhook_keys.secret_encrypt('before-upgrade-' || i, 'row' || i) AS c FROM generate_series(1, 100) i" \
        -c "SELECT 1 FROM meshhook_keys.keys_rotate('default', 'before upgrade')" \
        -c "SELECT 1 FROM meshhook_keys.keyring_create_user_held('user:upgrade', 'upgrade-secret-1')" \
        -c "CREATE TABLE u AS SELECT meshhook_keys.secret_encrypt('user-held-before', '', 'user:upgrade') AS c" >/dev/null
    q -d upgrade_old -c "ALTER EXTENSION meshhook_keys UPDATE"
    inventory upgrade_fresh > "/tmp/mk_inv_fresh.$$" && inventory upgrade_old > "/tmp/mk_inv_old.$$" || status=1
    if [ -s "/tmp/mk_inv_fresh.$$" ] && diff -u "/tmp/mk_inv_fresh.$$" "/tmp/mk_inv_old.$$"; then
        echo "  ok   objects, privileges and comments equal a fresh install"
    else
        echo "  FAIL the upgraded extension differs from a fresh install (diff above)"; status=1
    fi
    got=$(q -d upgrade_old -c "SELECT count(*) FROM s WHERE meshhook_keys.secret_decrypt(c, 'row' || i) = 'before-upgrade-' || i")
    if [ "$got" = 100 ]; then echo "  ok   secrets written before the upgrade decrypt"; else echo "  FAIL decrypt after upgrade: $got/100"; status=1; fi
    # issue 24: every root-wrapped key is rewrapped bound to its keyring, version and tenant (61
    # bytes); a user-held one stays as it was until its next unlock, which rewraps it
    got=$(q -d upgrade_old -c "SELECT string_agg(k.user_held::text || ':' || length(d.wrapped_key), ',' ORDER BY k.user_held, d.version)
                                 FROM meshhook_keys.data_key d JOIN meshhook_keys.keyring k ON k.name = d.keyring WHERE d.wrapped_key IS NOT NULL")
    if [ "$got" = "false:61,false:61,true:60" ]; then echo "  ok   root-wrapped keys rewrapped bound (61 bytes), the user-held one waits for its unlock"; else echo "  FAIL wrapped key lengths after upgrade: $got"; status=1; fi
    got=$(q -d upgrade_old -c "SELECT meshhook_keys.keyring_unlock('user:upgrade', 'upgrade-secret-1')" \
            -c "SELECT meshhook_keys.secret_decrypt(c, '') FROM u" \
            -c "SELECT length(wrapped_key) FROM meshhook_keys.data_key WHERE keyring = 'user:upgrade'" | tr '\n' ' ')
    if [ "$got" = "1 user-held-before 61 " ]; then echo "  ok   the user-held keyring unlocks, decrypts, and is rewrapped bound"; else echo "  FAIL user-held after upgrade: $got"; status=1; fi
    got=$(q -d upgrade_old -c "SELECT ok FROM meshhook_keys.audit_verify()")
    if [ "$got" = t ]; then echo "  ok   audit chain verifies after the upgrade"; else echo "  FAIL audit chain after upgrade"; status=1; fi
done
exit $status
