-- What tests/docs/reference.py compares docs/src/reference.md with: every function, procedure, view
-- and table of the extension's schema, as one JSON array (run in a database with a fresh install).
-- usable_by: which of the extension's roles may execute (or select from) it, membership included.
WITH roles(r) AS (VALUES ('meshhook_keys_user'), ('meshhook_keys_operator'), ('meshhook_keys_admin'),
                         ('meshhook_keys_service'), ('meshhook_keys_custodian'))
SELECT json_agg(o ORDER BY o.name, o.args)
  FROM (
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind,
           p.proname::text AS name,
           pg_get_function_arguments(p.oid) AS args,
           pg_get_function_identity_arguments(p.oid) AS identity_args,
           CASE WHEN p.prokind = 'p' THEN NULL ELSE pg_get_function_result(p.oid) END AS result,
           obj_description(p.oid, 'pg_proc') AS comment,
           (SELECT coalesce(json_agg(r), '[]') FROM roles WHERE has_function_privilege(r, p.oid, 'EXECUTE')) AS usable_by
      FROM pg_proc p
     WHERE p.pronamespace = 'meshhook_keys'::regnamespace
    UNION ALL
    SELECT CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END,
           c.relname::text,
           (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
              FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
           '', NULL,
           obj_description(c.oid, 'pg_class'),
           (SELECT coalesce(json_agg(r), '[]') FROM roles WHERE has_table_privilege(r, c.oid, 'SELECT'))
      FROM pg_class c
     WHERE c.relnamespace = 'meshhook_keys'::regnamespace AND c.relkind IN ('r', 'v', 'p')
  ) o;
