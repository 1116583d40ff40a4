-- Every object the extension owns. A change here is a change to the SQL surface:
-- it needs an upgrade script and a CHANGELOG entry.
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'meshhook_keys')
   AND deptype = 'e'
   -- (PostgreSQL 17 also records the row types of the extension's tables and views, and their
   -- array types, as members; they come with the relations listed here on every version)
   AND NOT (classid = 'pg_type'::regclass
            AND (SELECT t.typrelid <> 0 OR t.typelem <> 0 FROM pg_type t WHERE t.oid = objid))
 ORDER BY 1;
-- Extension tables whose rows pg_dump carries.
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'meshhook_keys' ORDER BY 1;
-- SECURITY DEFINER functions and their pinned settings; volatility of every function.
SELECT p.proname, p.prosecdef AS definer, p.provolatile AS vol, p.proconfig
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'meshhook_keys'
 ORDER BY 1;
-- Every public function and table carries a comment.
SELECT p.proname AS undocumented_function FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'meshhook_keys' AND p.proname NOT LIKE '\_%' AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT c.relname AS undocumented_relation FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'meshhook_keys' AND c.relkind IN ('r', 'v') AND obj_description(c.oid, 'pg_class') IS NULL;
-- One name for the keyring argument: every function that takes a keyring calls it keyring (and
-- so may be called with keyring => ...). A secret's own name (secret_create, secret_update) is not
-- a keyring.
SELECT p.proname AS keyring_argument_not_named_keyring, p.proargnames
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'meshhook_keys' AND p.proargnames IS NOT NULL
   AND p.proname NOT IN ('secret_create', 'secret_update')
   AND ('name' = ANY (p.proargnames) OR 'keyring_name' = ANY (p.proargnames) OR 'ring' = ANY (p.proargnames));
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS keyring_arguments
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'meshhook_keys' AND 'keyring' = ANY (p.proargnames[1:p.pronargs])
 ORDER BY 1;
