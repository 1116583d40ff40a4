-- Who may call each function, procedure and view of the extension: the last sentence of its
-- COMMENT (the grammar is at the top of the Documentation section of sql/finalize.sql), checked
-- against the catalog and against behaviour. Every object of the extension is covered: a new one
-- fails here until its comment says who may call it (and, if an argument's type is not in
-- wmc_value, until wmc_args gives it arguments).
BEGIN;
CREATE ROLE mk_wmc_user IN ROLE meshhook_keys_user;          -- meshhook_keys_user and nothing else
CREATE ROLE mk_wmc_operator IN ROLE meshhook_keys_operator;  -- meshhook_keys_operator and nothing else
CREATE ROLE mk_wmc_custodian IN ROLE meshhook_keys_custodian; -- meshhook_keys_custodian and nothing else

-- Every function, procedure and view of the extension, its comment and the sentence's form.
CREATE TEMP TABLE wmc AS
SELECT o.kind, o.oid, o.name, o.comment, o.acl, o.owner,
       CASE WHEN o.comment ~ '(^|\. )Requires meshhook_keys_(user|operator|custodian)( or meshhook_keys_(user|operator|custodian))?(; [^;]*)?\.$'
                 AND array_length(string_to_array(o.comment, 'Requires '), 1) = 2 THEN 'requires'
            WHEN o.comment ~ '^Internal.*\. Executable by PUBLIC; [^;]*\.$' AND o.kind <> 'view'
                 AND o.comment NOT LIKE '%Requires %' THEN 'public'
            WHEN o.comment ~ '(^|\. )Executable only by the extension''s owner\.$' AND o.kind <> 'view'
                 AND o.comment NOT LIKE '%Requires %' THEN 'owner'
       END AS form,
       string_to_array(substring(o.comment from 'Requires (meshhook_keys_\w+(?: or meshhook_keys_\w+)?)'), ' or ') AS roles
  FROM (SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind, p.oid,
               p.oid::regprocedure::text AS name, obj_description(p.oid, 'pg_proc') AS comment,
               coalesce(p.proacl, acldefault('f', p.proowner)) AS acl, p.proowner AS owner
          FROM pg_depend d JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'meshhook_keys')
        UNION ALL
        SELECT 'view', c.oid, c.oid::regclass::text, obj_description(c.oid, 'pg_class'),
               coalesce(c.relacl, acldefault('r', c.relowner)), c.relowner
          FROM pg_depend d JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND c.relkind = 'v'
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'meshhook_keys')) o;
SELECT count(*) > 40 AS found_the_extension_objects FROM wmc;

-- (a) Every comment ends with exactly one of the three forms.
SELECT kind, name AS without_a_who_may_call_sentence FROM wmc WHERE form IS NULL ORDER BY name;

-- (b) The catalog agrees. A role named has the privilege (EXECUTE, SELECT for a view); no role
-- that is not named has any, except meshhook_keys_user on a function naming only
-- meshhook_keys_operator (it refuses that role itself: checked in (c)); PUBLIC has one only on an
-- internal helper that says so; one executable only by its owner is granted to nobody.
WITH grants AS (
    SELECT w.*, g.grantee, g.privilege_type
      FROM wmc w, aclexplode(w.acl) g
     WHERE g.grantee <> w.owner
)
SELECT name, problem FROM (
    SELECT w.name, r || ' is named but may not call it' AS problem
      FROM wmc w, unnest(w.roles) r
     WHERE w.form = 'requires'
       AND NOT CASE w.kind WHEN 'view' THEN has_table_privilege(r, w.oid, 'SELECT')
                           ELSE has_function_privilege(r, w.oid, 'EXECUTE') END
    UNION ALL
    SELECT g.name, 'granted ' || g.privilege_type || ' to PUBLIC'
      FROM grants g WHERE g.grantee = 0 AND g.form IS DISTINCT FROM 'public'
    UNION ALL
    SELECT g.name, 'granted ' || g.privilege_type || ' to ' || g.grantee::regrole || ', which its comment does not name'
      FROM grants g
     WHERE g.grantee <> 0
       AND NOT (g.form = 'requires' AND g.grantee::regrole::text = ANY (g.roles))
       AND NOT (g.form = 'requires' AND g.kind <> 'view' AND g.roles = '{meshhook_keys_operator}'
                AND g.grantee = 'meshhook_keys_user'::regrole)
    UNION ALL
    SELECT w.name, 'says PUBLIC may call it, but PUBLIC may not'
      FROM wmc w WHERE w.form = 'public' AND NOT EXISTS (SELECT 1 FROM aclexplode(w.acl) g WHERE g.grantee = 0)
) p ORDER BY 1, 2;

-- (c) Behaviour: every function and view is called (read) as a role that is only
-- meshhook_keys_user, as one that is only meshhook_keys_operator and as one that is only
-- meshhook_keys_custodian. A role the sentence does not
-- name is refused with 42501; one it names is not refused with 42501 (other errors are fine: the
-- arguments are plausible, not meaningful). Arguments: every argument without a default gets the
-- value of its type from wmc_value, unless wmc_args gives the whole argument list.
CREATE TABLE public.wmc_probe (id int, c bytea);
ALTER TABLE public.wmc_probe OWNER TO mk_wmc_operator;   -- register_column needs the table's owner
CREATE POLICY wmc_probe ON meshhook_keys.secrets TO mk_wmc_user USING (true) WITH CHECK (true);
CREATE TEMP TABLE wmc_value (type regtype PRIMARY KEY, value text NOT NULL);
INSERT INTO wmc_value VALUES
    ('text', 'who-may-call'), ('integer', '1'), ('bigint', '1'), ('boolean', 'false'),
    ('interval', '30 days'), ('uuid', '00000000-0000-0000-0000-000000000000'), ('tid', '(0,1)'),
    ('regclass', 'public.wmc_probe'), ('name', 'c'), ('oid', 'public.wmc_probe'::regclass::oid::text),
    ('bytea', meshhook_keys.secret_encrypt('who-may-call')::text);  -- an envelope that decrypts
CREATE TEMP TABLE wmc_args (fn regprocedure PRIMARY KEY, args text NOT NULL);
INSERT INTO wmc_args VALUES
    ('meshhook_keys._audit_row_hash(bytea, meshhook_keys.audit_log)', 'NULL::bytea, NULL::meshhook_keys.audit_log'),
    ('meshhook_keys._register_column(oid, text, text, text)', format('%s, ''c'', NULL, ''default''', 'public.wmc_probe'::regclass::oid)),
    ('meshhook_keys._unregister_column(oid, text, text)', format('%s, ''c'', NULL', 'public.wmc_probe'::regclass::oid)),
    ('meshhook_keys._store_decrypt(bytea, text, text)', format('%L, '''', ''default''', (SELECT value FROM wmc_value WHERE type = 'bytea'::regtype)));
CREATE TEMP TABLE wmc_call AS
SELECT w.name, w.form, w.roles,
       CASE WHEN w.kind = 'view' THEN format('SELECT * FROM %s', w.name)
            WHEN a.args IS NOT NULL OR g.complete
            THEN format('%s %s.%I(%s)', CASE w.kind WHEN 'procedure' THEN 'CALL' ELSE 'SELECT' END,
                        p.pronamespace::regnamespace, p.proname, coalesce(a.args, g.args))
       END AS call
  FROM wmc w
  LEFT JOIN pg_proc p ON p.oid = w.oid AND w.kind <> 'view'
  LEFT JOIN wmc_args a ON a.fn = w.oid
  LEFT JOIN LATERAL (
        SELECT coalesce(string_agg(format('%L::%s', v.value, format_type(p.proargtypes[i], NULL)), ', ' ORDER BY i), '') AS args,
               bool_and(v.value IS NOT NULL) IS NOT FALSE AS complete
          FROM generate_series(0, p.pronargs - p.pronargdefaults - 1) i
          LEFT JOIN wmc_value v ON v.type = p.proargtypes[i]) g ON w.kind <> 'view'
 WHERE w.form IS DISTINCT FROM 'public';   -- (they refuse outside a batch; privileges.sql calls them)
SELECT name AS no_arguments_known_add_it_to_wmc_args FROM wmc_call WHERE call IS NULL ORDER BY 1;

CREATE TEMP TABLE wmc_result (name text, probe text, role text, sqlstate text);
GRANT ALL ON wmc_result TO PUBLIC;
DO $$
DECLARE
    c record;
    probe text;
BEGIN
    FOR c IN SELECT * FROM wmc_call WHERE call IS NOT NULL ORDER BY name LOOP
        FOREACH probe IN ARRAY ARRAY['mk_wmc_user', 'mk_wmc_operator', 'mk_wmc_custodian'] LOOP
            EXECUTE format('SET LOCAL ROLE %I', probe);
            INSERT INTO wmc_result
            VALUES (c.name, probe, 'meshhook_keys_' || substr(probe, 8),
                    left(public.sqlstate_of(c.call), 5));
            RESET ROLE;
        END LOOP;
    END LOOP;
END
$$;

-- What each role may do, by behaviour (the roles the comment names, and whether each probe role
-- was refused with 42501).
SELECT c.name, array_to_string(coalesce(c.roles, ARRAY[c.form]), ' or ') AS comment_names,
       bool_or(r.sqlstate = '42501') FILTER (WHERE r.probe = 'mk_wmc_user') AS user_refused,
       bool_or(r.sqlstate = '42501') FILTER (WHERE r.probe = 'mk_wmc_operator') AS operator_refused,
       bool_or(r.sqlstate = '42501') FILTER (WHERE r.probe = 'mk_wmc_custodian') AS custodian_refused
  FROM wmc_call c JOIN wmc_result r USING (name)
 GROUP BY c.name, c.roles, c.form ORDER BY 1;
-- ... and where that contradicts the comment.
SELECT r.name, r.role,
       CASE WHEN r.sqlstate = '42501' THEN 'refused, but the comment names it'
            ELSE 'not refused (' || r.sqlstate || '), but the comment does not name it' END AS contradiction
  FROM wmc_call c JOIN wmc_result r USING (name)
 WHERE (r.role = ANY (coalesce(c.roles, '{}'))) = (r.sqlstate = '42501')
 ORDER BY 1, 2;
ROLLBACK;
