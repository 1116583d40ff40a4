-- Code the extension runs on someone's behalf never borrows their authority (issue 11, finding 1).
-- dp_mallory owns a registered table and plants code in every place PostgreSQL runs a table
-- owner's code during our batches (tests/hostile/deputy_fixture.sql). Each runner below drives a
-- batch, a count or a validation over her table; whatever runs it (an admin, a superuser), her code
-- has her authority only: every privileged attempt is refused. In its own database, since CALL
-- reencrypt commits.
CREATE DATABASE dp_deputy;
\c dp_deputy
SET client_min_messages = warning;
CREATE EXTENSION meshhook_keys;
\i tests/pg_regress/helpers.sql
\i tests/hostile/deputy_fixture.sql
\set ON_ERROR_STOP 0
SET client_min_messages = warning;

-- the built-in store's registration is the extension's own: not even a superuser changes it
SELECT public.sqlstate_of($$SELECT meshhook_keys.register_column('meshhook_keys.secrets', 'ciphertext', 'dp_m.evil()', 'dp:target')$$);
SELECT public.sqlstate_of($$SELECT meshhook_keys.unregister_column('meshhook_keys.secrets', 'ciphertext', 'dp:target')$$);
-- a table whose policies apply to its owner cannot be registered (they would hide rows)
ALTER TABLE dp_m.t FORCE ROW LEVEL SECURITY;
SELECT public.sqlstate_of($$SELECT meshhook_keys.register_column('dp_m.t', 'tok', NULL, 'dp:other')$$);
ALTER TABLE dp_m.t NO FORCE ROW LEVEL SECURITY;

-- runner: an admin's CALL reencrypt
SELECT 1 FROM meshhook_keys.keys_rotate('dp:target', 'deputy test');
SET dp.runner = 'admin CALL reencrypt';
SET ROLE dp_ops;
CALL meshhook_keys.reencrypt('dp:target');
RESET ROLE;

-- runner: a superuser's tick()
SELECT 1 FROM meshhook_keys.keys_rotate('dp:target', 'deputy test');
SET dp.runner = 'superuser tick()';
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'dp:target' ORDER BY action;

-- runner: alice rotating her vault's secret with re-encryption (her keys are unlocked in this
-- session while mallory's code runs inside the batch)
SET dp.runner = 'keyring_rotate_secret';
SET ROLE dp_alice;
SELECT versions_rewrapped, new_version, rows_reencrypted
  FROM meshhook_keys.keyring_rotate_secret('user:dp_alice:vault', 'alice-secret-1', 'alice-secret-2', reencrypt => true);
RESET ROLE;

-- runners: key_usage and keys_retire's count, as an admin
SET dp.runner = 'key_usage';
SET ROLE dp_ops;
SELECT column_name, version, state, rows FROM meshhook_keys.key_usage('dp:target') ORDER BY version;
SET dp.runner = 'keys_retire';
SELECT meshhook_keys.keys_retire('dp:target', 1);
-- runner: verify, as an admin (it samples each column as its owner; only counts come back)
SET dp.runner = 'verify';
SELECT table_name, column_name, keyring, sampled, decrypted, failed, locked, ok, error
  FROM meshhook_keys.verify() WHERE table_name = 'dp_m.t'::regclass ORDER BY keyring;
RESET ROLE;
-- a column its owner can no longer read is an error in its own row, not a failed verify
CREATE SCHEMA dp_priv;
GRANT USAGE, CREATE ON SCHEMA dp_priv TO dp_mallory;
SET ROLE dp_mallory;
CREATE TABLE dp_priv.t (id int PRIMARY KEY, tok bytea);
INSERT INTO dp_priv.t VALUES (1, meshhook_keys.secret_encrypt('p', '', 'dp:target'));
RESET ROLE;
SELECT meshhook_keys.register_column('dp_priv.t', 'tok', NULL, 'dp:target') > 0 AS registered;
REVOKE USAGE, CREATE ON SCHEMA dp_priv FROM dp_mallory;
SET ROLE dp_ops;
SELECT table_name, column_name, keyring, sampled, decrypted, failed, locked, ok, error
  FROM meshhook_keys.verify(10) WHERE keyring = 'dp:target' ORDER BY 1::text;
RESET ROLE;
RESET dp.runner;

-- What her code tried, where and under whom: nothing succeeded. Per runner and place, how many
-- attempts and which outcomes; then per attempted action, every outcome it ever got.
SELECT runner, vector, count(*) AS attempts, count(*) FILTER (WHERE outcome = 'ok') AS succeeded,
       string_agg(DISTINCT outcome, ',' ORDER BY outcome) AS outcomes
  FROM dp_m.attempts GROUP BY 1, 2 ORDER BY 1, 2;
SELECT action, string_agg(DISTINCT outcome, ',' ORDER BY outcome) AS outcomes
  FROM dp_m.attempts GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE outcome = 'ok') AS succeeded, count(*) > 0 AS tried FROM dp_m.attempts;
-- every runner ran her code somewhere (or ran none of it: the counts run no owner code at all)
SELECT r.runner, count(a.n) > 0 AS her_code_ran
  FROM (VALUES ('register_column (superuser)'), ('admin CALL reencrypt'), ('superuser tick()'),
               ('keyring_rotate_secret'), ('key_usage'), ('keys_retire'), ('verify')) r(runner)
  LEFT JOIN dp_m.attempts a ON a.runner = r.runner GROUP BY 1 ORDER BY 1;
-- the refusals are audited as hers, not as whoever ran the batch (written by the audit worker:
-- wait for them, with a deadline)
DO $$
DECLARE deadline timestamptz := pg_catalog.clock_timestamp() + interval '60 seconds';
BEGIN
    LOOP
        EXIT WHEN (SELECT count(*) FROM meshhook_keys.audit_log
                    WHERE outcome = 'refused' AND detail ->> 'function' = 'keyring_destroy') > 0
               OR pg_catalog.clock_timestamp() > deadline;
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
END $$;
SELECT role_name, count(*) > 0 AS refusals_audited FROM meshhook_keys.audit_log
 WHERE outcome = 'refused' AND detail ->> 'function' IN ('keyring_destroy', 'keys_rotate', 'register_column', 'reencrypt_batch')
 GROUP BY 1 ORDER BY 1;
-- the policy never ran: batches scan as the owner with row_security = off
SELECT count(*) AS policy_calls FROM dp_m.attempts WHERE vector = 'policy';
-- the state she wanted to change is intact
SELECT rolsuper FROM pg_roles WHERE rolname = 'dp_mallory';
SELECT keyring, active_version, destroyed_at IS NOT NULL AS destroyed FROM meshhook_keys.keyrings
 WHERE keyring IN ('dp:other', 'dp:target', 'dp:victim', 'user:dp_alice:vault') ORDER BY 1;
SELECT table_name, column_name, context_expr, keyring FROM meshhook_keys.encrypted_columns
 WHERE table_name = 'meshhook_keys.secrets'::regclass ORDER BY keyring;
-- and the batches did their job: every row is on its keyring's newest key and decrypts
SELECT t.id, k.keyring, k.version, k.state FROM dp_m.t t
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(t.tok) ORDER BY 1;
SELECT meshhook_keys.secret_decrypt(tok, '1') FROM dp_m.t WHERE id = 1;
SET ROLE dp_alice;
SELECT meshhook_keys.secret_decrypt(tok, '2') FROM dp_m.t WHERE id = 2;
RESET ROLE;

-- Sealed calls (issue 23): whatever her code changes in the session it runs in is undone when it
-- returns, in the runner's session, whoever the runner is (tests/hostile/sealed_fixture.sql). Each
-- runner: a snapshot of the session, the call, then everything that differs (nothing may).
\i tests/hostile/sealed_fixture.sql
\set ON_ERROR_STOP 0
SET client_min_messages = warning;
SET dp.runner = 'sealed: superuser reencrypt_batch';
SELECT 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'sealed test');
SELECT public.snap();
SELECT meshhook_keys.reencrypt_batch('dp:sealed') AS moved;
SELECT * FROM public.state_changes();
SHOW search_path;
SET dp.runner = 'sealed: admin CALL reencrypt';
SELECT 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'sealed test');
SET ROLE dp_ops;
SELECT public.snap();
CALL meshhook_keys.reencrypt('dp:sealed');
SELECT * FROM public.state_changes();
RESET ROLE;
SET dp.runner = 'sealed: superuser tick()';
SELECT 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'sealed test');
SELECT public.snap();
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'dp:sealed';
SELECT * FROM public.state_changes();
SET ROLE dp_ops;
SET dp.runner = 'sealed: verify';
SELECT public.snap();
SELECT table_name, sampled, decrypted, ok FROM meshhook_keys.verify() WHERE keyring = 'dp:sealed' ORDER BY 1::text;
SELECT * FROM public.state_changes();
SET dp.runner = 'sealed: key_usage';
SELECT public.snap();
SELECT version, rows FROM meshhook_keys.key_usage('dp:sealed') ORDER BY version;
SELECT * FROM public.state_changes();
SET dp.runner = 'sealed: keys_retire';
SELECT public.snap();
SELECT meshhook_keys.keys_retire('dp:sealed', 1) IS NOT NULL AS retired;
SELECT * FROM public.state_changes();
RESET ROLE;
SET dp.runner = 'sealed: register_column (superuser)';
SELECT public.snap();
SELECT meshhook_keys.register_column('dp_m.s', 'tok', 'dp_m.s_ctx(id)', 'dp:sealed') > 0 AS registered;
SELECT * FROM public.state_changes();
-- alice's secret rotation with re-encryption runs mallory's code over alice's row in her table
SET dp.runner = 'setup';
GRANT INSERT ON dp_m.s TO dp_alice;
SET ROLE dp_alice;
SELECT meshhook_keys.keyring_unlock('user:dp_alice:vault', 'alice-secret-2') > 0 AS unlocked;
INSERT INTO dp_m.s (id, tok) VALUES (10, meshhook_keys.secret_encrypt('alice-row', '10', 'user:dp_alice:vault'));
SELECT meshhook_keys.keyring_lock('user:dp_alice:vault');
RESET ROLE;
SELECT meshhook_keys.register_column('dp_m.s', 'tok', 'dp_m.s_ctx(id)', 'user:dp_alice:vault') > 0 AS registered;
SET dp.runner = 'sealed: keyring_rotate_secret';
SET ROLE dp_alice;
SELECT public.snap();
SELECT rows_reencrypted > 0 AS moved
  FROM meshhook_keys.keyring_rotate_secret('user:dp_alice:vault', 'alice-secret-2', 'alice-secret-3', reencrypt => true);
SELECT * FROM public.state_changes();
RESET ROLE;
-- the deployer's tenant check runs sealed too
CREATE FUNCTION dp_app.tenant_pollute(tenant text) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM dp_m.pollute('tenant check');
    RETURN tenant OPERATOR(pg_catalog.=) 'victim';
END $$;
GRANT EXECUTE ON FUNCTION dp_app.tenant_pollute(text) TO PUBLIC;
CREATE ROLE dp_victim IN ROLE meshhook_keys_user;
GRANT SELECT ON dp_app.loot TO dp_victim;
SET meshhook_keys.tenant_check = 'dp_app.tenant_pollute';
SET dp.runner = 'sealed: tenant check';
SET ROLE dp_victim;
SELECT public.snap();
SELECT meshhook_keys.secret_decrypt(ct, 'victim/1') FROM dp_app.loot WHERE what = 'victim';
SELECT * FROM public.state_changes();
RESET ROLE;
SET meshhook_keys.tenant_check = 'dp_app.tenant_ok';
-- What a security-restricted operation refuses her code, it refused everywhere.
SELECT action, string_agg(DISTINCT outcome, ',' ORDER BY outcome) AS outcomes, count(DISTINCT runner) AS runners
  FROM dp_m.attempts WHERE runner LIKE 'sealed:%' GROUP BY 1 ORDER BY 1;
-- Code that leaves something behind is refused, and what it left is gone: the column's batch
-- fails with 42501 (its rows roll back) while the keyring's other columns go on; then a tenant
-- check, which fails the call. For each thing her code can leave, a fresh job (a rotation).
CREATE FUNCTION public.sealed_batch(mode text) RETURNS TABLE (moved bigint, column_state text, sqlstate text, error text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'sealed test: ' || mode);
    PERFORM pg_catalog.set_config('dp.pollute', mode, false);
    PERFORM public.snap();
    moved := meshhook_keys.reencrypt_batch('dp:sealed');
    PERFORM pg_catalog.set_config('dp.pollute', '', false);
    SELECT p.state, p.sqlstate, p.error INTO column_state, sqlstate, error FROM meshhook_keys.reencrypt_progress p
     WHERE p.keyring = 'dp:sealed' AND p.table_name = 'dp_m.s'::regclass ORDER BY p.job_id DESC LIMIT 1;
    RETURN NEXT;
END $$;
SET dp.runner = 'sealed: leftovers';
SELECT * FROM public.sealed_batch('lock');
SELECT * FROM public.state_changes();
SELECT * FROM public.sealed_batch('xact lock');
SELECT * FROM public.state_changes();
SELECT * FROM public.sealed_batch('cursor');
SELECT * FROM public.state_changes();
SELECT * FROM public.sealed_batch('prepare');
SELECT * FROM public.state_changes();
SELECT * FROM public.sealed_batch('lock then raise');
SELECT * FROM public.state_changes();
-- her code releases the advisory locks the caller holds: refused (42501), and the caller holds
-- them again afterwards, in the same modes
SELECT pg_catalog.pg_advisory_lock(4245), pg_catalog.pg_advisory_lock_shared(4246);
SELECT * FROM public.sealed_batch('unlock all');
SELECT l.objid, l.mode FROM pg_catalog.pg_locks l
 WHERE l.locktype = 'advisory' AND l.pid = pg_catalog.pg_backend_pid() AND l.granted ORDER BY 1;
SELECT pg_catalog.pg_advisory_unlock(4245), pg_catalog.pg_advisory_unlock_shared(4246);
SELECT * FROM public.state_changes();
-- her code calls the batch's per-row functions, armed for the statement she runs inside, without
-- its token: refused (42501), the window rolled back
SELECT * FROM public.sealed_batch('try');
SELECT * FROM public.state_changes();
SELECT * FROM public.sealed_batch('take');
SELECT * FROM public.state_changes();
SET meshhook_keys.tenant_check = 'dp_app.tenant_pollute';
SET ROLE dp_victim;
SET dp.pollute = 'lock';
SELECT public.snap();
SELECT public.sqlstate_of($$SELECT meshhook_keys.secret_decrypt(ct, 'victim/1') FROM dp_app.loot WHERE what = 'victim'$$);
SELECT * FROM public.state_changes();
SET dp.pollute = 'prepare';
SELECT public.sqlstate_of($$SELECT meshhook_keys.secret_decrypt(ct, 'victim/1') FROM dp_app.loot WHERE what = 'victim'$$);
SELECT * FROM public.state_changes();
RESET ROLE;
SET meshhook_keys.tenant_check = 'dp_app.tenant_ok';
RESET dp.pollute;
-- One table never wedges a shared keyring: her table raises (a message with a forged log line and
-- terminal escapes); an honest table on the same keyring moves anyway, hers is marked failed with
-- the SQLSTATE and the escaped message, the audit row carries the SQLSTATE only, and keys_retire
-- names her column as what still needs the old key.
CREATE TABLE dp_app.honest (id int PRIMARY KEY, tok bytea);
INSERT INTO dp_app.honest
     SELECT i, meshhook_keys.secret_encrypt('h' || i, i::text, 'dp:sealed') FROM generate_series(1, 7) i;
SELECT meshhook_keys.register_column('dp_app.honest', 'tok', 'id::text', 'dp:sealed') > 0 AS registered;
SET dp.runner = 'sealed: wedge';
SELECT 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'wedge test');
SET dp.pollute = 'raise';
CALL meshhook_keys.reencrypt('dp:sealed');
SELECT p.table_name, p.state, p.sqlstate, p.error, p.job_state FROM meshhook_keys.reencrypt_progress p
 WHERE p.keyring = 'dp:sealed' AND p.job_id = (SELECT max(job_id) FROM meshhook_keys.reencrypt_progress WHERE keyring = 'dp:sealed')
 ORDER BY 1::text;
SELECT 'honest' AS t, count(*) FILTER (WHERE k.state = 'active') AS on_active, count(*) AS rows
  FROM dp_app.honest h JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(h.tok)
UNION ALL
SELECT 'hers', count(*) FILTER (WHERE k.state = 'active'), count(*)
  FROM dp_m.s s JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.tok) WHERE s.id < 10;
SELECT action, outcome, detail - 'job_id' - 'table_oid' AS detail FROM meshhook_keys.audit_log
 WHERE action = 'reencrypt_column' ORDER BY id DESC LIMIT 1;
SELECT public.sqlstate_of($$SELECT meshhook_keys.keys_retire('dp:sealed',
    (SELECT k.version FROM dp_m.s s JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.tok) WHERE s.id = 1))$$);
-- tick() is not wedged either
SELECT 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'wedge test');
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'dp:sealed';
SELECT count(*) FILTER (WHERE k.state = 'active') AS honest_on_active FROM dp_app.honest h
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(h.tok);
RESET dp.pollute;
-- and once her code leaves nothing, the batches finish the job (after a rotation: a failed column
-- waits for the next job)
SELECT 1 FROM meshhook_keys.keys_rotate('dp:sealed', 'sealed test');
SET dp.runner = 'sealed: superuser reencrypt_batch';
CALL meshhook_keys.reencrypt('dp:sealed');
SELECT k.version, count(*) FROM dp_m.s s JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.tok)
 WHERE k.keyring = 'dp:sealed' GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(tok, id::text) = 'sealed-' || id) AS decrypt
  FROM dp_m.s WHERE id < 10;
RESET dp.runner;
-- The first of her calls in each sealed call saw a clean session (the runner's own settings,
-- search_path pinned), never what an earlier call of hers set (her lock_timeout is 1ms). A batch's
-- direct UPDATE runs with lock_timeout = meshhook_keys.reencrypt_row_wait (10ms), its own. Nor the
-- runner's statement (current_query()): alice's keyring_rotate_secret carried both her secrets.
SELECT runner, count(*) > 0 AS sealed_calls, count(DISTINCT state) AS states,
       bool_and(state ~ '^pg_catalog, pg_temp \| (0|10ms) \| 0 \| off \| hex \| ' AND state NOT LIKE '%mallory%') AS clean,
       bool_and(state LIKE '%| /* meshhook_keys: code run on its owner''s behalf; the statement that started it is not shown */'
                AND state NOT LIKE '%alice-secret%') AS statement_hidden
  FROM dp_m.seen GROUP BY 1 ORDER BY 1;
-- Her operators never ran as anyone but her, and she is not superuser.
SELECT op, current_role_name, count(*) > 0 AS ran FROM dp_m.hijacked
 WHERE current_role_name <> 'dp_mallory' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT rolsuper FROM pg_roles WHERE rolname = 'dp_mallory';

\c contrib_regression
DROP DATABASE dp_deputy;
DROP ROLE dp_mallory, dp_ops, dp_alice, dp_victims, dp_victim;
