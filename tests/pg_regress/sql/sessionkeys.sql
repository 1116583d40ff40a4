-- Unlocked user-held keys are bound to who unlocked them and follow the transaction (issue 11,
-- findings 3 and 4): another role, RESET ROLE, another JWT sub, DISCARD ALL, a session
-- authorization change, ROLLBACK, ROLLBACK TO SAVEPOINT, a cancelled call and the end of a
-- transaction-scoped unlock all leave the keyring locked. In its own database: it commits.
CREATE DATABASE sk_db;
\c sk_db
SET client_min_messages = warning;
CREATE EXTENSION meshhook_keys;
\i tests/pg_regress/helpers.sql
CREATE ROLE sk_a IN ROLE meshhook_keys_user;
CREATE ROLE sk_b IN ROLE meshhook_keys_user;
CREATE TABLE sk_t (id int PRIMARY KEY, c bytea);
GRANT SELECT, INSERT, UPDATE ON sk_t TO sk_a, sk_b;
-- what a role gets when it decrypts row 1 / encrypts into the vault
CREATE FUNCTION public.sk_try() RETURNS text LANGUAGE sql AS $$
    SELECT left(public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM sk_t WHERE id = 1$q$), 5)
           || ' / ' ||
           left(public.sqlstate_of($q$SELECT meshhook_keys.secret_encrypt('x', 'sk/1', 'user:sk:a')$q$), 5) $$;
-- the message a role gets (it names no secret)
CREATE FUNCTION public.sk_why() RETURNS text LANGUAGE sql AS $$
    SELECT public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM sk_t WHERE id = 1$q$) $$;

SET ROLE sk_a;
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:sk:a', 'secret-of-a-1');
INSERT INTO sk_t VALUES (1, meshhook_keys.secret_encrypt('plain-of-a', 'sk/1', 'user:sk:a'));
SELECT 'a, unlocked' AS who, public.sk_try() AS decrypt_encrypt;
-- another role in the same backend
SET ROLE sk_b;
SELECT 'b, same backend' AS who, public.sk_try() AS decrypt_encrypt, public.sk_why() AS message;
RESET ROLE;
SELECT 'superuser after RESET ROLE' AS who, public.sk_try() AS decrypt_encrypt;
-- another JWT sub (the next request of a pooled PostgREST connection): the unlock made without
-- claims is not theirs; one made with sub u1 is usable by u1 only
SET ROLE sk_a;
SELECT set_config('request.jwt.claims', '{"sub":"u1","role":"sk_a"}', false) IS NOT NULL AS claims_set;
SELECT 'a, sub u1, unlock made without claims' AS who, public.sk_try() AS decrypt_encrypt;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
SELECT 'a, sub u1' AS who, public.sk_try() AS decrypt_encrypt;
SELECT set_config('request.jwt.claims', '{"sub":"u2","role":"sk_a"}', false) IS NOT NULL AS claims_set;
SELECT 'a, sub u2' AS who, public.sk_try() AS decrypt_encrypt;
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS claims_cleared;
SELECT 'a, no claims again' AS who, public.sk_try() AS decrypt_encrypt;
-- DISCARD ALL (a pooler's server_reset_query) forgets everything
DISCARD ALL;
SET ROLE sk_a;
SELECT 'a, after DISCARD ALL' AS who, public.sk_try() AS decrypt_encrypt;
-- a session authorization change forgets what the previous session user unlocked
SET SESSION AUTHORIZATION sk_a;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
SELECT 'session authorization a' AS who, public.sk_try() AS decrypt_encrypt;
SET SESSION AUTHORIZATION sk_b;
SET SESSION AUTHORIZATION sk_a;
SELECT 'session authorization a, after b' AS who, public.sk_try() AS decrypt_encrypt;
RESET SESSION AUTHORIZATION;

-- the transaction decides: nothing an aborted (sub)transaction unlocked survives it
SET ROLE sk_a;
BEGIN;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
SELECT 'a, inside the unlocking transaction' AS who, public.sk_try() AS decrypt_encrypt;
ROLLBACK;
SELECT 'a, after ROLLBACK' AS who, public.sk_try() AS decrypt_encrypt;
BEGIN;
SAVEPOINT s1;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
ROLLBACK TO SAVEPOINT s1;
SELECT 'a, after ROLLBACK TO SAVEPOINT' AS who, public.sk_try() AS decrypt_encrypt;
SAVEPOINT s2;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
RELEASE SAVEPOINT s2;
COMMIT;
SELECT 'a, after RELEASE and COMMIT' AS who, public.sk_try() AS decrypt_encrypt;
SELECT meshhook_keys.keyring_lock('user:sk:a') AS was_unlocked;
-- a cancelled unlock (statement_timeout during the Argon2id derivation) unlocks nothing
SET statement_timeout = '5ms';
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
RESET statement_timeout;
SELECT 'a, after a cancelled unlock' AS who, public.sk_try() AS decrypt_encrypt;
-- scope => 'transaction': usable in the transaction, zeroized at its end
BEGIN;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1', scope => 'transaction') AS unlocked;
SELECT 'a, transaction-scoped, inside' AS who, public.sk_try() AS decrypt_encrypt;
COMMIT;
SELECT 'a, transaction-scoped, after COMMIT' AS who, public.sk_try() AS decrypt_encrypt;
SELECT public.sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1', scope => 'forever')$$);

-- a rolled-back keyring_create_user_held leaves no key the session could encrypt under
BEGIN;
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:sk:gone', 'secret-of-gone');
SELECT length(meshhook_keys.secret_encrypt('x', '', 'user:sk:gone')) > 0 AS encrypts_inside;
ROLLBACK;
SELECT public.sqlstate_of($$SELECT meshhook_keys.secret_encrypt('x', '', 'user:sk:gone')$$);
-- a rolled-back keyring_rotate_secret(reencrypt) leaves the committed key and secret in force
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS unlocked;
BEGIN;
SELECT versions_rewrapped, new_version FROM meshhook_keys.keyring_rotate_secret('user:sk:a', 'secret-of-a-1', 'secret-of-a-2', reencrypt => true);
SELECT length(meshhook_keys.secret_encrypt('x', '', 'user:sk:a')) > 0 AS encrypts_inside;
ROLLBACK;
SELECT public.sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-2')$$) AS new_secret;
SELECT meshhook_keys.keyring_unlock('user:sk:a', 'secret-of-a-1') AS old_secret_unlocks;
SELECT 'a, after the rolled-back rotation' AS who, public.sk_try() AS decrypt_encrypt;
RESET ROLE;
SELECT version, state FROM meshhook_keys.keys WHERE keyring = 'user:sk:a' ORDER BY version;

\c contrib_regression
DROP DATABASE sk_db;
DROP ROLE sk_a, sk_b;
