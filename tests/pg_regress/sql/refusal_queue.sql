-- Refusals made while the transaction holds the audit chain lock (an operator's transaction, or a
-- re-encryption batch inside which a table owner's code calls privileged functions row after
-- row): their audit writers are queued and started when the transaction ends, not at once,
-- where each would wait for the lock holding a background worker slot (hostile review of issue
-- 28: 5 writers waiting, parallel queries launching no workers, 32,099 refusals only logged).
-- At most 8 get a row each; one more row counts the rest.
CREATE ROLE mk_rq_app IN ROLE meshhook_keys_user;
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('rq-ring', 'takes the audit chain lock');
SET LOCAL ROLE mk_rq_app;
DO $$ BEGIN
    FOR i IN 1..20 LOOP
        BEGIN
            PERFORM meshhook_keys.keys_rotate('rq-ring', 'refused ' || i);
        EXCEPTION WHEN insufficient_privilege THEN NULL;
        END;
    END LOOP;
END $$;
RESET ROLE;
-- no writer was started while the lock is held
SELECT count(*) AS writers_now FROM pg_stat_activity WHERE backend_type = 'meshhook_keys audit writer';
-- (rolled back, as a failed batch would be, and as keeps this database's keyrings to the other
-- tests: the refusals are recorded all the same)
ROLLBACK;
-- after it: 8 rows of their own and one that counts the other 12 (wait for the writers)
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM meshhook_keys.audit_log WHERE role_name = 'mk_rq_app' OR detail ? 'refusals_only_logged') < 9
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT action, outcome, detail->>'function' AS function, count(*)
  FROM meshhook_keys.audit_log WHERE role_name = 'mk_rq_app' GROUP BY 1, 2, 3;
SELECT detail->>'refusals_only_logged' AS only_logged FROM meshhook_keys.audit_log WHERE detail ? 'refusals_only_logged';
-- and one more transaction, with one refusal: a row of its own
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('rq-ring', 'takes the audit chain lock again');
SET LOCAL ROLE mk_rq_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_rotate('rq-ring', 'refused in a rolled back transaction')$$);
RESET ROLE;
ROLLBACK;
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM meshhook_keys.audit_log WHERE role_name = 'mk_rq_app') < 9
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT count(*) AS refusals_recorded FROM meshhook_keys.audit_log WHERE role_name = 'mk_rq_app';
SELECT count(*) AS rq_keyrings FROM meshhook_keys.keyrings WHERE keyring = 'rq-ring';
SELECT ok FROM meshhook_keys.audit_verify();
DROP ROLE mk_rq_app;
