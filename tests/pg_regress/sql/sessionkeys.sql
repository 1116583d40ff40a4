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
           left(public.sqlstate_of($q$SELECT meshhook_keys.secret_encrypt('x', 'sk/1', 'user:sk_a')$q$), 5) $$;
-- the message a role gets (it names no secret)
CREATE FUNCTION public.sk_why() RETURNS text LANGUAGE sql AS $$
    SELECT public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM sk_t WHERE id = 1$q$) $$;

SET ROLE sk_a;
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:sk_a', 'secret-of-a-1');
INSERT INTO sk_t VALUES (1, meshhook_keys.secret_encrypt('plain-of-a', 'sk/1', 'user:sk_a'));
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
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
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
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
SELECT 'session authorization a' AS who, public.sk_try() AS decrypt_encrypt;
SET SESSION AUTHORIZATION sk_b;
SET SESSION AUTHORIZATION sk_a;
SELECT 'session authorization a, after b' AS who, public.sk_try() AS decrypt_encrypt;
RESET SESSION AUTHORIZATION;

-- the transaction decides: nothing an aborted (sub)transaction unlocked survives it
SET ROLE sk_a;
BEGIN;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
SELECT 'a, inside the unlocking transaction' AS who, public.sk_try() AS decrypt_encrypt;
ROLLBACK;
SELECT 'a, after ROLLBACK' AS who, public.sk_try() AS decrypt_encrypt;
BEGIN;
SAVEPOINT s1;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
ROLLBACK TO SAVEPOINT s1;
SELECT 'a, after ROLLBACK TO SAVEPOINT' AS who, public.sk_try() AS decrypt_encrypt;
SAVEPOINT s2;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
RELEASE SAVEPOINT s2;
COMMIT;
SELECT 'a, after RELEASE and COMMIT' AS who, public.sk_try() AS decrypt_encrypt;
SELECT meshhook_keys.keyring_lock('user:sk_a') AS was_unlocked;
-- a cancelled unlock (statement_timeout during the Argon2id derivation) unlocks nothing
SET statement_timeout = '5ms';
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
RESET statement_timeout;
SELECT 'a, after a cancelled unlock' AS who, public.sk_try() AS decrypt_encrypt;
-- scope => 'transaction': usable in the transaction, zeroized at its end
BEGIN;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1', scope => 'transaction') AS unlocked;
SELECT 'a, transaction-scoped, inside' AS who, public.sk_try() AS decrypt_encrypt;
COMMIT;
SELECT 'a, transaction-scoped, after COMMIT' AS who, public.sk_try() AS decrypt_encrypt;
SELECT public.sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1', scope => 'forever')$$);

-- a rolled-back keyring_create_user_held leaves no key the session could encrypt under
BEGIN;
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:sk_a:gone', 'secret-of-gone');
SELECT length(meshhook_keys.secret_encrypt('x', '', 'user:sk_a:gone')) > 0 AS encrypts_inside;
ROLLBACK;
SELECT public.sqlstate_of($$SELECT meshhook_keys.secret_encrypt('x', '', 'user:sk_a:gone')$$);
-- a rolled-back keyring_rotate_secret(reencrypt) leaves the committed key and secret in force
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
BEGIN;
SELECT versions_rewrapped, new_version FROM meshhook_keys.keyring_rotate_secret('user:sk_a', 'secret-of-a-1', 'secret-of-a-2', reencrypt => true);
SELECT length(meshhook_keys.secret_encrypt('x', '', 'user:sk_a')) > 0 AS encrypts_inside;
ROLLBACK;
SELECT public.sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-2')$$) AS new_secret;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS old_secret_unlocks;
SELECT 'a, after the rolled-back rotation' AS who, public.sk_try() AS decrypt_encrypt;
RESET ROLE;
SELECT version, state FROM meshhook_keys.keys WHERE keyring = 'user:sk_a' ORDER BY version;

-- Who may use unlocked keys (issue 23): only code of the unlocking role. Code another role wrote
-- never does, even when it runs as the unlocker: sk_b's SECURITY DEFINER function and the trigger
-- of sk_b's table (fired by sk_a's own INSERT) are refused (55000); sk_a's own are not.
CREATE FUNCTION public.sk_b_definer() RETURNS text LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT left(public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM public.sk_t WHERE id = 1$q$), 5) $$;
CREATE FUNCTION public.sk_a_definer() RETURNS text LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT left(public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM public.sk_t WHERE id = 1$q$), 5) $$;
ALTER FUNCTION public.sk_b_definer() OWNER TO sk_b;
ALTER FUNCTION public.sk_a_definer() OWNER TO sk_a;
CREATE FUNCTION public.sk_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.note := left(public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM public.sk_t WHERE id = 1$q$), 5);
    RETURN NEW;
END $$;
CREATE FUNCTION public.sk_note_a() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.note := left(public.sqlstate_of($q$SELECT meshhook_keys.secret_decrypt(c, 'sk/1') FROM public.sk_t WHERE id = 1$q$), 5);
    RETURN NEW;
END $$;
ALTER FUNCTION public.sk_note() OWNER TO sk_b;
ALTER FUNCTION public.sk_note_a() OWNER TO sk_a;
CREATE TABLE public.sk_b_table (n int, note text);
CREATE TABLE public.sk_a_table (n int, note text);
CREATE TRIGGER sk_note BEFORE INSERT ON public.sk_b_table FOR EACH ROW EXECUTE FUNCTION public.sk_note();
CREATE TRIGGER sk_note BEFORE INSERT ON public.sk_a_table FOR EACH ROW EXECUTE FUNCTION public.sk_note_a();
ALTER TABLE public.sk_b_table OWNER TO sk_b;
ALTER TABLE public.sk_a_table OWNER TO sk_a;
GRANT INSERT, SELECT ON public.sk_b_table TO sk_a;
SET ROLE sk_a;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
SELECT 'a, directly' AS who, public.sk_try() AS decrypt_encrypt;
SELECT 'sk_b''s SECURITY DEFINER function' AS code, public.sk_b_definer() AS decrypt
UNION ALL SELECT 'sk_a''s SECURITY DEFINER function', public.sk_a_definer();
INSERT INTO public.sk_b_table VALUES (1);
INSERT INTO public.sk_a_table VALUES (1);
SELECT 'trigger of sk_b''s table' AS code, note AS decrypt FROM public.sk_b_table
UNION ALL SELECT 'trigger of sk_a''s table', note FROM public.sk_a_table;
-- a holdable cursor's rows are computed at commit and outlive the transaction: a
-- transaction-scoped unlock does not serve them (the commit fails, nothing is left to fetch);
-- a session-scoped one does
SELECT meshhook_keys.keyring_lock('user:sk_a');
BEGIN;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1', scope => 'transaction') AS unlocked;
SELECT meshhook_keys.secret_decrypt(c, 'sk/1') AS inside_the_transaction FROM sk_t WHERE id = 1;
DECLARE sk_hold CURSOR WITH HOLD FOR SELECT meshhook_keys.secret_decrypt(c, 'sk/1') AS plain FROM sk_t WHERE id = 1;
COMMIT;
SELECT count(*) AS open_cursors FROM pg_cursors;
SELECT meshhook_keys.keyring_unlock('user:sk_a', 'secret-of-a-1') AS unlocked;
BEGIN;
DECLARE sk_hold CURSOR WITH HOLD FOR SELECT meshhook_keys.secret_decrypt(c, 'sk/1') AS plain FROM sk_t WHERE id = 1;
COMMIT;
FETCH ALL FROM sk_hold;
CLOSE sk_hold;
RESET ROLE;

\c contrib_regression
DROP DATABASE sk_db;
DROP ROLE sk_a, sk_b;
