-- A column's window that fails for a reason not its table's own backs off and is taken up again
-- (not failed); a column whose table's code refuses every update does not hold up the keyring's
-- other columns; a cancel reaches the caller (issue 27, hostile review of the direct path).
BEGIN;
CREATE ROLE mk_bo_owner;
SELECT 1 FROM meshhook_keys.keys_rotate('bo-ring', 'setup');
-- first registered: a table whose trigger refuses every update of its secret (returns NULL)
CREATE TABLE bo_refuser (id int PRIMARY KEY, c bytea);
CREATE TABLE bo_victim (id int PRIMARY KEY, c bytea);
-- a table whose trigger raises a deadlock error the first two times it runs (a sequence counts: it
-- is not rolled back with the failed window)
CREATE TABLE bo_flaky (id int PRIMARY KEY, c bytea);
CREATE SEQUENCE bo_flaky_runs;
ALTER TABLE bo_refuser OWNER TO mk_bo_owner;
ALTER TABLE bo_flaky OWNER TO mk_bo_owner;
ALTER SEQUENCE bo_flaky_runs OWNER TO mk_bo_owner;
INSERT INTO bo_refuser SELECT i, meshhook_keys.secret_encrypt('r' || i, '', 'bo-ring') FROM generate_series(1, 30) i;
INSERT INTO bo_victim SELECT i, meshhook_keys.secret_encrypt('v' || i, '', 'bo-ring') FROM generate_series(1, 30) i;
INSERT INTO bo_flaky SELECT i, meshhook_keys.secret_encrypt('f' || i, '', 'bo-ring') FROM generate_series(1, 30) i;
CREATE FUNCTION public.bo_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE FUNCTION public.bo_flaky_trig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.nextval('public.bo_flaky_runs') <= 2 THEN
        RAISE EXCEPTION 'simulated deadlock' USING ERRCODE = 'deadlock_detected';
    END IF;
    RETURN NEW;
END $$;
ALTER FUNCTION public.bo_refuse() OWNER TO mk_bo_owner;
ALTER FUNCTION public.bo_flaky_trig() OWNER TO mk_bo_owner;
CREATE TRIGGER refuse BEFORE UPDATE ON bo_refuser FOR EACH ROW EXECUTE FUNCTION public.bo_refuse();
CREATE TRIGGER flaky BEFORE UPDATE ON bo_flaky FOR EACH ROW EXECUTE FUNCTION public.bo_flaky_trig();
SELECT meshhook_keys.register_column('bo_refuser', 'c', NULL, 'bo-ring') > 0 AS registered;
SELECT meshhook_keys.register_column('bo_victim', 'c', NULL, 'bo-ring') > 0 AS registered;
SELECT meshhook_keys.register_column('bo_flaky', 'c', NULL, 'bo-ring') > 0 AS registered;
SELECT 1 FROM meshhook_keys.keys_rotate('bo-ring', 'rotate');

-- batches until nothing is left to do but wait for the refusing table (bounded)
DO $$
DECLARE k int := 0;
BEGIN
    LOOP
        PERFORM meshhook_keys.reencrypt_batch('bo-ring', 1000);
        k := k + 1;
        EXIT WHEN k >= 50
             OR (SELECT bool_and(state <> 'running' OR table_name = 'bo_refuser'::regclass)
                   FROM meshhook_keys.reencrypt_progress WHERE keyring = 'bo-ring' AND job_state = 'running');
        PERFORM pg_catalog.pg_sleep(0.06);
    END LOOP;
END $$;
-- the victim and the flaky table are done (the flaky one after backing off twice, not failed); the
-- refusing table is still running, backing off, its rows on the old key
SELECT table_name, state, rows_done, rows_failed, rows_remaining FROM meshhook_keys.reencrypt_progress
 WHERE keyring = 'bo-ring' AND job_state = 'running' ORDER BY table_name::text;
SELECT last_value >= 3 AS retried FROM bo_flaky_runs;
SELECT c.rel::regclass AS table_name, p.idle > 0 AS backing_off, p.retry_at IS NOT NULL AS retry_at_set
  FROM meshhook_keys.reencrypt_progress_column p JOIN meshhook_keys.encrypted_column c ON c.id = p.column_id
 WHERE c.keyring = 'bo-ring' AND p.state = 'running' ORDER BY 1::text;
SELECT 'bo_victim' AS t, count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'bo-ring' AND state = 'active')) AS on_active FROM bo_victim
UNION ALL
SELECT 'bo_flaky', count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'bo-ring' AND state = 'active')) FROM bo_flaky
UNION ALL
SELECT 'bo_refuser', count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'bo-ring' AND state = 'active')) FROM bo_refuser;
-- while a column waits, a batch that finds nothing else to do moves nothing (and does not spin
-- through passes): 0, and the refusing column's pass count does not change
SELECT pass AS pass_before FROM meshhook_keys.reencrypt_progress WHERE table_name = 'bo_refuser'::regclass AND job_state = 'running' \gset
UPDATE meshhook_keys.reencrypt_progress_column SET retry_at = clock_timestamp() + interval '1 hour'
 WHERE column_id = (SELECT id FROM meshhook_keys.encrypted_column WHERE rel = 'bo_refuser'::regclass);
SELECT meshhook_keys.reencrypt_batch('bo-ring', 1000) AS moved;
SELECT pass = :pass_before AS same_pass FROM meshhook_keys.reencrypt_progress WHERE table_name = 'bo_refuser'::regclass AND job_state = 'running';
-- a cancel (here a statement timeout) reaches the caller: an error, not a column marked failed
-- and a batch that returns as if nothing happened
DROP TRIGGER refuse ON bo_refuser;
CREATE FUNCTION public.bo_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.pg_sleep(0.2); RETURN NEW; END $$;
ALTER FUNCTION public.bo_slow() OWNER TO mk_bo_owner;
CREATE TRIGGER slow BEFORE UPDATE ON bo_refuser FOR EACH ROW EXECUTE FUNCTION public.bo_slow();
UPDATE meshhook_keys.reencrypt_progress_column SET retry_at = NULL
 WHERE column_id = (SELECT id FROM meshhook_keys.encrypted_column WHERE rel = 'bo_refuser'::regclass);
SAVEPOINT s;
SET LOCAL statement_timeout = '100ms';
SELECT sqlstate_of($$SELECT meshhook_keys.reencrypt_batch('bo-ring', 1000)$$);
ROLLBACK TO SAVEPOINT s;
SELECT state FROM meshhook_keys.reencrypt_progress WHERE table_name = 'bo_refuser'::regclass AND job_state = 'running';

-- a table whose code puts the old value back (BEFORE UPDATE: NEW.c := OLD.c): its rows count as
-- updated but stay on the old key. A pass after which no fewer rows are left made no progress, so
-- the column backs off like one whose rows are held, instead of starting a new pass at every batch
-- forever (hostile review of issue 28: CALL reencrypt ran 3,856 passes in ten minutes)
SELECT 1 FROM meshhook_keys.keys_rotate('bo-revert', 'setup');
CREATE TABLE bo_reverter (id int PRIMARY KEY, c bytea);
ALTER TABLE bo_reverter OWNER TO mk_bo_owner;
INSERT INTO bo_reverter SELECT i, meshhook_keys.secret_encrypt('x' || i, '', 'bo-revert') FROM generate_series(1, 30) i;
CREATE FUNCTION public.bo_revert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.c := OLD.c; RETURN NEW; END $$;
ALTER FUNCTION public.bo_revert() OWNER TO mk_bo_owner;
CREATE TRIGGER revert BEFORE UPDATE ON bo_reverter FOR EACH ROW EXECUTE FUNCTION public.bo_revert();
SELECT meshhook_keys.register_column('bo_reverter', 'c', NULL, 'bo-revert') > 0 AS registered;
SELECT 1 FROM meshhook_keys.keys_rotate('bo-revert', 'rotate');
DO $$ BEGIN
    FOR k IN 1..40 LOOP
        PERFORM meshhook_keys.reencrypt_batch('bo-revert', 1000);
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
END $$;
SELECT p.pass < 12 AS few_passes, p.idle > 0 AS backing_off, p.retry_at IS NOT NULL AS retry_at_set,
       p.pass_remaining AS rows_left
  FROM meshhook_keys.reencrypt_progress_column p JOIN meshhook_keys.encrypted_column c ON c.id = p.column_id
 WHERE c.keyring = 'bo-revert' AND c.rel = 'bo_reverter'::regclass;
-- its rows are all still on version 1, which cannot be retired
SELECT sqlstate_of($$SELECT meshhook_keys.keys_retire('bo-revert', 1)$$) LIKE '55000%' AS retire_refused;
ROLLBACK;
