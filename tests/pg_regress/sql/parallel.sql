-- Decryption under parallel query (issue 12, item 3). PostgreSQL picks parallel plans by itself on
-- large tables; here the costs are zeroed so that it does so on small ones.
--   - a tenant-bound keyring decrypts in parallel workers (its check ran into XX000 "cannot assign
--     XIDs during a parallel operation" in 0.4.0), and refuses another tenant there too;
--   - a user-held keyring unlocked in this session decrypts (55000 in the workers in 0.4.0): while
--     the session holds unlocked keys it plans without workers, and a prepared statement planned
--     in parallel before the unlock is planned again;
--   - root-wrapped and tenant-bound keyrings keep their parallel plans.
CREATE DATABASE mk_parallel;
\c mk_parallel
SET client_min_messages = warning;
CREATE EXTENSION meshhook_keys;
\i tests/pg_regress/helpers.sql
CREATE SCHEMA app;
CREATE FUNCTION app.may(tenant text) RETURNS boolean LANGUAGE sql STABLE
AS $$ SELECT tenant = current_setting('request.jwt.claims', true)::json ->> 'tenant' $$;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE ROLE mk_par_app IN ROLE meshhook_keys_user;
GRANT CREATE ON SCHEMA public TO mk_par_app;
SELECT keyring FROM meshhook_keys.keyring_create('project:t1', 't1');
SELECT keyring FROM meshhook_keys.keyring_create('plain');
SET meshhook_keys.tenant_check = 'app.may';
SELECT set_config('request.jwt.claims', '{"tenant": "t1"}', false) IS NOT NULL AS claims_set;
SET ROLE mk_par_app;
CREATE TABLE tenant_rows AS
SELECT g AS id, meshhook_keys.secret_encrypt('t1-' || g, 'r:' || g, 'project:t1') AS c,
       meshhook_keys.secret_encrypt('plain-' || g, 'r:' || g, 'plain') AS p
  FROM generate_series(1, 3000) g;
ANALYZE tenant_rows;
SELECT keyring FROM meshhook_keys.keyring_create_user_held('user:mk_par_app', 'par-passphrase');
CREATE TABLE held_rows AS
SELECT g AS id, meshhook_keys.secret_encrypt('held-' || g, 'h:' || g, 'user:mk_par_app') AS c
  FROM generate_series(1, 3000) g;
ANALYZE held_rows;
SELECT meshhook_keys.keyring_lock('user:mk_par_app') AS locked;

SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
-- (counts over a plan's text: the worker count would depend on the machine)
CREATE FUNCTION pg_temp.parallel_plan(q text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE line text; par boolean := false;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
        par := par OR line LIKE '%Gather%';
    END LOOP;
    RETURN par;
END $$;

-- tenant-bound: parallel, right, and still refused to another tenant
SELECT pg_temp.parallel_plan($$SELECT count(*) FROM tenant_rows WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) = 't1-' || id$$) AS tenant_parallel_plan;
SELECT count(*) AS tenant_decrypted FROM tenant_rows WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) = 't1-' || id;
SELECT count(*) AS plain_decrypted FROM tenant_rows WHERE meshhook_keys.secret_decrypt(p, 'r:' || id) = 'plain-' || id;
SELECT set_config('request.jwt.claims', '{"tenant": "t2"}', false) IS NOT NULL AS claims_set;
SELECT sqlstate_of($$SELECT count(*) FROM tenant_rows WHERE meshhook_keys.secret_decrypt(c, 'r:' || id) <> ''$$);
SELECT count(*) AS plain_decrypted_other_tenant FROM tenant_rows WHERE meshhook_keys.secret_decrypt(p, 'r:' || id) = 'plain-' || id;
SELECT set_config('request.jwt.claims', '{"tenant": "t1"}', false) IS NOT NULL AS claims_set;

-- user-held: a statement prepared (and planned in parallel) while locked ...
PREPARE held AS SELECT count(*) FROM held_rows WHERE meshhook_keys.secret_decrypt(c, 'h:' || id) = 'held-' || id;
SELECT pg_temp.parallel_plan('EXECUTE held') AS held_parallel_while_locked;
SELECT sqlstate_of('EXECUTE held');
-- ... is planned again without workers once the session holds unlocked keys, and decrypts
SELECT meshhook_keys.keyring_unlock('user:mk_par_app', 'par-passphrase') AS unlocked;
SELECT pg_temp.parallel_plan('EXECUTE held') AS held_parallel_while_unlocked;
EXECUTE held;
SELECT count(*) AS held_decrypted FROM held_rows WHERE meshhook_keys.secret_decrypt(c, 'h:' || id) = 'held-' || id;
-- every plan of the session is serial meanwhile (a worker could not see the keys) ...
SELECT pg_temp.parallel_plan($$SELECT count(*) FROM tenant_rows WHERE meshhook_keys.secret_decrypt(p, 'r:' || id) <> ''$$) AS plain_parallel_while_unlocked;
-- ... also inside a transaction whose unlock is not committed yet
SELECT meshhook_keys.keyring_lock('user:mk_par_app') AS locked;
BEGIN;
SELECT meshhook_keys.keyring_unlock('user:mk_par_app', 'par-passphrase', 'transaction') AS unlocked;
SELECT pg_temp.parallel_plan('EXECUTE held') AS held_parallel_in_unlocking_transaction;
EXECUTE held;
COMMIT;
-- ... and parallel again once nothing is unlocked
SELECT pg_temp.parallel_plan($$SELECT count(*) FROM tenant_rows WHERE meshhook_keys.secret_decrypt(p, 'r:' || id) <> ''$$) AS plain_parallel_after_lock;
SELECT sqlstate_of('EXECUTE held');
RESET ROLE;

\c contrib_regression
DROP DATABASE mk_parallel;
DROP ROLE mk_par_app;
