-- How data keys are wrapped (issue 24): bound to their keyring, version and tenant; user-held
-- secrets derived with today's Argon2id costs, raised at unlock; failed unlocks throttled.
-- Not one transaction: the failed-unlock audit rows are written by another process and must be
-- committed to be counted.

-- a wrapped key is 61 bytes: format 2, bound to key id, keyring, version and tenant
SELECT version FROM meshhook_keys.keys_rotate('wrap-a');
SELECT keyring, version FROM meshhook_keys.keyring_create('wrap-t', tenant => 'tenant-1');
SELECT keyring, length(wrapped_key), get_byte(wrapped_key, 0) AS format
  FROM meshhook_keys.data_key WHERE keyring IN ('wrap-a', 'wrap-t') ORDER BY 1;
CREATE TABLE wrap_ct AS
    SELECT 'a' AS k, meshhook_keys.secret_encrypt('in a', '', 'wrap-a') AS c
    UNION ALL SELECT 't', meshhook_keys.secret_encrypt('in t', '', 'wrap-t');

-- a tampered row (a restored backup, an edit by the table owner) no longer unwraps: moved to
-- another version, to another keyring, to another tenant. Each edit reaches the key cache.
UPDATE meshhook_keys.data_key SET version = 7 WHERE keyring = 'wrap-a';
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 'a'$$);
UPDATE meshhook_keys.data_key SET version = 1 WHERE keyring = 'wrap-a';
SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 'a';
SELECT version FROM meshhook_keys.keys_rotate('wrap-b');
UPDATE meshhook_keys.data_key SET keyring = 'wrap-b', version = 2, state = 'decrypt_only' WHERE keyring = 'wrap-a';
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 'a'$$);
UPDATE meshhook_keys.data_key SET keyring = 'wrap-a', version = 1, state = 'active' WHERE keyring = 'wrap-b' AND version = 2;
SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 'a';
UPDATE meshhook_keys.keyring SET tenant = 'tenant-2' WHERE name = 'wrap-t';
UPDATE meshhook_keys.data_key SET encryptions = encryptions WHERE keyring = 'wrap-t';
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 't'$$);
UPDATE meshhook_keys.keyring SET tenant = 'tenant-1' WHERE name = 'wrap-t';
UPDATE meshhook_keys.data_key SET encryptions = encryptions WHERE keyring = 'wrap-t';
SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 't';

-- a user-held keyring: Argon2id costs from meshhook_keys.user_held_kdf (default RFC 9106's second
-- recommended option, 64 MiB, 3 passes, 4 lanes), stored with the keyring
SHOW meshhook_keys.user_held_kdf;
SET meshhook_keys.user_held_kdf = 'm=64,t=1,p=1';
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:wrap', 'right-secret-1');
SELECT kdf - 'salt' AS kdf FROM meshhook_keys.keyring WHERE name = 'user:wrap';
INSERT INTO wrap_ct SELECT 'u', meshhook_keys.secret_encrypt('in user:wrap', '', 'user:wrap');
-- raised costs: the next unlock (with the right secret) rewraps every version with them
SET meshhook_keys.user_held_kdf = 'm=128,t=2,p=1';
SELECT wrapped_key AS before FROM meshhook_keys.data_key WHERE keyring = 'user:wrap' \gset
SELECT meshhook_keys.keyring_lock('user:wrap');
SELECT meshhook_keys.keyring_unlock('user:wrap', 'right-secret-1') AS unlocked;
SELECT kdf - 'salt' AS kdf FROM meshhook_keys.keyring WHERE name = 'user:wrap';
SELECT wrapped_key <> :'before' AS rewrapped, length(wrapped_key) FROM meshhook_keys.data_key WHERE keyring = 'user:wrap';
SELECT action, reason, detail - 'jwt' AS detail FROM meshhook_keys.audit_log WHERE keyring = 'user:wrap' AND action = 'rewrap_user_held';
SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ct WHERE k = 'u';
-- nothing to raise: an unlock writes nothing
SELECT meshhook_keys.keyring_unlock('user:wrap', 'right-secret-1') AS unlocked;
SELECT count(*) AS rewraps FROM meshhook_keys.audit_log WHERE keyring = 'user:wrap' AND action = 'rewrap_user_held';
-- unparsable costs fall back to the default; only a superuser sets them
SET meshhook_keys.user_held_kdf = 'm=lots';
CREATE ROLE mk_wrap_user IN ROLE meshhook_keys_user;
SET ROLE mk_wrap_user;
SELECT sqlstate_of($$SET meshhook_keys.user_held_kdf = 'm=8,t=1,p=1'$$);
SELECT sqlstate_of($$SET meshhook_keys.max_failed_unlocks = 1000$$);
RESET ROLE;
RESET meshhook_keys.user_held_kdf;

-- failed unlocks are throttled per keyring: after max_failed_unlocks wrong secrets in a minute,
-- the next attempt is refused (53400) before any key derivation, even with the right secret
SET meshhook_keys.max_failed_unlocks = 3;
SELECT meshhook_keys.keyring_lock('user:wrap');
SELECT sqlstate_of(format($$SELECT meshhook_keys.keyring_unlock('user:wrap', %L)$$, 'wrong-secret-' || i)) FROM generate_series(1, 3) i;
-- (the failed attempts are audited by another process: wait for the three rows, 10 s at most)
CREATE FUNCTION pg_temp.wait_audit(want_outcome text, n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '10 seconds'; got bigint;
BEGIN
    LOOP
        SELECT count(*) INTO got FROM meshhook_keys.audit_log WHERE keyring = 'user:wrap' AND outcome = want_outcome;
        EXIT WHEN got >= n OR clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN got;
END $$;
SELECT pg_temp.wait_audit('failed', 3) AS failed_attempts;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:wrap', 'right-secret-1')$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_rotate_secret('user:wrap', 'right-secret-1', 'new-secret-22')$$);
-- the refusals are audited too (outcome refused)
SELECT pg_temp.wait_audit('refused', 2) AS refused_attempts;
SELECT action, outcome, detail ->> 'error' AS error, count(*)
  FROM meshhook_keys.audit_log WHERE keyring = 'user:wrap' AND outcome <> 'ok' GROUP BY 1, 2, 3 ORDER BY 1, 2;
-- a higher limit lets the right secret in
SET meshhook_keys.max_failed_unlocks = 10;
SELECT meshhook_keys.keyring_unlock('user:wrap', 'right-secret-1') AS unlocked;
RESET meshhook_keys.max_failed_unlocks;

-- the limit holds inside one REPEATABLE READ transaction too: the failures are counted as
-- committed now, not as the transaction's snapshot saw them
SET meshhook_keys.user_held_kdf = 'm=64,t=1,p=1';
SET meshhook_keys.max_failed_unlocks = 2;
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:wrap-rr', 'rr-secret-1');
SELECT meshhook_keys.keyring_lock('user:wrap-rr');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) >= 0 AS snapshot_taken FROM meshhook_keys.audit_log;
SELECT sqlstate_of(format($$SELECT meshhook_keys.keyring_unlock('user:wrap-rr', %L)$$, 'wrong-secret-' || i)) FROM generate_series(1, 3) i;
COMMIT;
RESET meshhook_keys.max_failed_unlocks;

-- a retired version of a user-held keyring stops decrypting in the session that holds it unlocked
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:wrap-ret', 'ret-secret-1');
CREATE TABLE wrap_ret AS SELECT meshhook_keys.secret_encrypt('v1 secret', '', 'user:wrap-ret') AS c;
SELECT new_version FROM meshhook_keys.keyring_rotate_secret('user:wrap-ret', 'ret-secret-1', 'ret-secret-2', reencrypt => true);
SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ret;
SELECT meshhook_keys.keys_retire('user:wrap-ret', 1, force => true);
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ret$$);
-- and after a new unlock, which holds it as retired
SELECT meshhook_keys.keyring_unlock('user:wrap-ret', 'ret-secret-2') AS unlocked;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, '') FROM wrap_ret$$);
DROP TABLE wrap_ret;
RESET meshhook_keys.user_held_kdf;

-- clean up
SELECT meshhook_keys.keyring_lock('user:wrap');
DROP TABLE wrap_ct;
DROP ROLE mk_wrap_user;
SELECT meshhook_keys.keyring_destroy(k) > 0 AS destroyed FROM unnest(ARRAY['wrap-a', 'wrap-b', 'wrap-t', 'user:wrap', 'user:wrap-rr', 'user:wrap-ret']) k;
SELECT meshhook_keys.keyring_reclaim(k) > 0 AS reclaimed FROM unnest(ARRAY['wrap-a', 'wrap-b', 'wrap-t', 'user:wrap', 'user:wrap-rr', 'user:wrap-ret']) k;
