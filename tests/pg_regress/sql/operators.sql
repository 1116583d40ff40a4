-- No statement the extension runs resolves an operator through the caller's search path (issue 11,
-- finding 7). Operators =, +, ||, <, - for int, bigint, numeric, text and bytea are shadowed in
-- public (and in pg_temp) by functions that raise 'hijacked'; with search_path = public,
-- pg_catalog (and pg_temp, public, pg_catalog), every entry point is called in a fresh backend (key
-- caches empty, so every cache-miss path runs) and none may reach a shadow. In its own database:
-- the shadows must not leak into other tests.
CREATE DATABASE op_db;
\c op_db
SET client_min_messages = warning;
CREATE EXTENSION meshhook_keys;
-- the helper itself qualifies its one operator
CREATE FUNCTION public.outcome(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) SQLERRM;
END $$;
CREATE TABLE public.op_t (id int PRIMARY KEY, c bytea);
CREATE TABLE public.results (n serial PRIMARY KEY, path text, entry text, outcome text);
SELECT 1 FROM meshhook_keys.keyring_create('op:ring');
SELECT 1 FROM meshhook_keys.keyring_create('op:doomed');
INSERT INTO op_t SELECT i, meshhook_keys.secret_encrypt('v' || i, i::text, 'op:ring') FROM generate_series(1, 20) i;
SELECT meshhook_keys.register_column('op_t', 'c', 'id::text', 'op:ring') > 0 AS registered;
SELECT 1 FROM meshhook_keys.secret_create('op-secret', 'value', 'desc', '', 'op:ring');
-- the shadows, in public and in pg_temp
DO $$
DECLARE t text; o text; ret text; s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['public', 'pg_temp'] LOOP
        FOREACH t IN ARRAY ARRAY['integer', 'bigint', 'numeric', 'text', 'bytea'] LOOP
            FOREACH o IN ARRAY ARRAY['=', '+', '||', '<', '-'] LOOP
                ret := CASE WHEN o IN ('=', '<') THEN 'boolean' ELSE t END;
                EXECUTE format('CREATE FUNCTION %s.hijack_%s_%s(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
                               s, replace(t, ' ', '_'), md5(o), t, t, ret,
                               format('BEGIN RAISE EXCEPTION %L; END', 'hijacked ' || s || '.' || o || ' for ' || t));
                EXECUTE format('CREATE OPERATOR %s.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s.hijack_%s_%s)',
                               s, o, t, t, s, replace(t, ' ', '_'), md5(o));
            END LOOP;
        END LOOP;
    END LOOP;
END $$;
SELECT count(*) AS shadows_in_public FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
 WHERE n.nspname = 'public';

\c op_db
SET client_min_messages = warning;
SET search_path = public, pg_catalog;
-- (the shadow works: a plain statement reaches it)
SELECT public.outcome($$SELECT 1 = 1$$) AS plain_statement;
\i tests/hostile/operators_calls.sql
CALL meshhook_keys.reencrypt('op:ring');

\c op_db
SET client_min_messages = warning;
SET search_path = pg_temp, public, pg_catalog;
\i tests/hostile/operators_calls.sql
CALL meshhook_keys.reencrypt('op:ring');

\c op_db
SELECT path, entry, outcome FROM public.results ORDER BY n;
SELECT count(*) AS hijacked FROM public.results WHERE strpos(outcome, 'hijacked') OPERATOR(pg_catalog.>) 0;
-- and the data survived it all
SELECT count(*) AS decrypt_ok FROM op_t
 WHERE meshhook_keys.secret_decrypt(c, id::text) OPERATOR(pg_catalog.=) ('v' OPERATOR(pg_catalog.||) id::text);

\c contrib_regression
DROP DATABASE op_db;
