-- From Supabase Vault: import_supabase_vault, and Vault's own API (create_secret, update_secret,
-- decrypted_secrets.decrypted_secret) over the built-in store. A stand-in vault schema with
-- Vault's exact table, view and function signatures; its view returns plaintext (no pgsodium).
BEGIN;
CREATE ROLE mk_vault_app IN ROLE meshhook_keys_user;
CREATE ROLE mk_vault_ops IN ROLE meshhook_keys_operator;
-- no Vault in this database: a clear error
SET LOCAL ROLE mk_vault_ops;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault()$$);
RESET ROLE;

CREATE SCHEMA vault;
CREATE TABLE vault.secrets (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text,
    description text        NOT NULL DEFAULT '',
    secret      text        NOT NULL,
    key_id      uuid,
    nonce       bytea       DEFAULT '\x00'::bytea,
    created_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX secrets_name_idx ON vault.secrets (name) WHERE name IS NOT NULL;
-- As in real Vault, the view decrypts only when decrypted_secret is asked for, and a secret it
-- cannot decrypt RAISES (pgsodium: 'invalid ciphertext'); here a secret under the key 'dead...'
-- stands for one, and one under '0000...' for an older Vault that gave NULL instead
CREATE FUNCTION vault._decrypt(s vault.secrets) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF s.key_id = 'deadbeef-0000-0000-0000-000000000000' THEN
        RAISE EXCEPTION 'pgsodium_crypto_aead_det_decrypt_by_id: invalid ciphertext' USING ERRCODE = '22000';
    END IF;
    RETURN CASE WHEN s.key_id = '00000000-0000-0000-0000-000000000000' THEN NULL ELSE s.secret END;
END $$;
CREATE VIEW vault.decrypted_secrets AS
    SELECT s.id, s.name, s.description, s.secret, vault._decrypt(s) AS decrypted_secret,
           s.key_id, s.nonce, s.created_at, s.updated_at
      FROM vault.secrets s;
CREATE FUNCTION vault.create_secret(new_secret text, new_name text DEFAULT NULL,
                                    new_description text DEFAULT '', new_key_id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO vault.secrets (secret, name, description, key_id)
    VALUES (new_secret, new_name, new_description, new_key_id) RETURNING id $$;
CREATE FUNCTION vault.update_secret(secret_id uuid, new_secret text DEFAULT NULL, new_name text DEFAULT NULL,
                                    new_description text DEFAULT NULL, new_key_id uuid DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    UPDATE vault.secrets SET secret = coalesce(new_secret, secret), name = coalesce(new_name, name),
           description = coalesce(new_description, description), key_id = coalesce(new_key_id, key_id),
           updated_at = now() WHERE id = secret_id $$;
SELECT vault.create_secret('sk_live_VAULT_PLAINTEXT_1', 'stripe', 'Stripe live key') IS NOT NULL AS created;
SELECT vault.create_secret('ghp_VAULT_PLAINTEXT_2', 'github') IS NOT NULL AS created;
SELECT vault.create_secret('VAULT_PLAINTEXT_3_no_name') IS NOT NULL AS created;
SELECT vault.create_secret('VAULT_PLAINTEXT_4_lost', 'lost', '', 'deadbeef-0000-0000-0000-000000000000') IS NOT NULL AS created;
SELECT vault.create_secret('VAULT_PLAINTEXT_5_dup', 'taken', 'Vault''s copy') IS NOT NULL AS created;
SELECT vault.create_secret('VAULT_PLAINTEXT_6_null', 'gave-null', '', '00000000-0000-0000-0000-000000000000') IS NOT NULL AS created;
SELECT vault.create_secret('VAULT_PLAINTEXT_7_empty_name', '') IS NOT NULL AS created;
SELECT vault.create_secret('VAULT_PLAINTEXT_8', 'last') IS NOT NULL AS created;
-- (reading the whole view raises, as real Vault's does with such a row)
SELECT sqlstate_of('SELECT count(decrypted_secret) FROM vault.decrypted_secrets');
UPDATE vault.secrets SET
    created_at = '2025-01-01 10:00:00+00'::timestamptz + substring(secret from 'PLAINTEXT_(\d)')::int * interval '1 day',
    updated_at = '2025-06-01 12:00:00+00'::timestamptz + substring(secret from 'PLAINTEXT_(\d)')::int * interval '1 day';
-- the store already has a secret named 'taken': Vault's is not written over it
SELECT meshhook_keys.secret_create('taken', 'STORE_OWN_VALUE', 'the store''s own') IS NOT NULL AS created;
CREATE TEMP TABLE vault_before AS SELECT md5(string_agg(s::text, ',' ORDER BY id)) AS h FROM vault.secrets s;

-- only operators may import (the refusal is audited like every other: privileges.sql)
SET LOCAL ROLE mk_vault_app;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault()$$);
RESET ROLE;
-- Vault is read with the caller's privileges, never the extension's: an operator that may not
-- read vault.decrypted_secrets imports nothing
GRANT USAGE ON SCHEMA vault TO mk_vault_ops;
SET LOCAL ROLE mk_vault_ops;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault()$$);
RESET ROLE;
GRANT SELECT ON vault.decrypted_secrets TO mk_vault_ops;
-- this view decrypts every row it lists (its decrypt function is volatile) and one row raises:
-- the import lists vault.secrets instead, which this role may not read yet
SET LOCAL ROLE mk_vault_ops;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault()$$);
RESET ROLE;
GRANT SELECT ON vault.secrets TO mk_vault_ops;

-- a dry run (the default) classifies and writes nothing; each skipped secret is named by id
CREATE TEMP TABLE vault_ids AS SELECT id, name FROM vault.secrets;
GRANT SELECT ON vault_ids TO PUBLIC;
SET LOCAL ROLE mk_vault_ops;
CREATE TEMP TABLE dry AS SELECT * FROM meshhook_keys.import_supabase_vault();
RESET ROLE;
SELECT vault_secrets, imported, already_imported, name_conflicts, invalid_names, unreadable, dry_run FROM dry;
SELECT v.name, e ->> 'reason' AS reason, e ->> 'sqlstate' AS sqlstate
  FROM dry, jsonb_array_elements(dry.skipped) e JOIN vault_ids v ON v.id = (e ->> 'id')::uuid ORDER BY 1;
SELECT count(*) AS store_rows_after_dry_run FROM meshhook_keys.secrets;
-- the import: new secrets only, encrypted before they are written, Vault's ids, names,
-- descriptions and timestamps kept; the bad rows skipped, the others imported
SET LOCAL ROLE mk_vault_ops;
CREATE TEMP TABLE real AS SELECT * FROM meshhook_keys.import_supabase_vault(dry_run => false);
RESET ROLE;
SELECT vault_secrets, imported, already_imported, name_conflicts, invalid_names, unreadable, dry_run FROM real;
-- the dry run said exactly what the real run then did
SELECT (d.vault_secrets, d.imported, d.already_imported, d.name_conflicts, d.invalid_names, d.unreadable, d.skipped)
     = (r.vault_secrets, r.imported, r.already_imported, r.name_conflicts, r.invalid_names, r.unreadable, r.skipped)
       AS dry_run_was_exact
  FROM dry d, real r;
SELECT v.name, s.description, s.tenant, s.keyring, s.created_at = v.created_at AS created_kept,
       s.updated_at = v.updated_at AS updated_kept, d.decrypted_secret = v.secret AS same_value
  FROM vault.secrets v
  JOIN meshhook_keys.secrets s ON s.id = v.id
  JOIN meshhook_keys.decrypted_secrets d ON d.id = v.id
 ORDER BY v.created_at;
-- the view has Vault's columns and meanings: secret is the ciphertext (base64), decrypted_secret
-- the plaintext, key_id the data key, nonce the envelope's nonce; a Vault query runs unchanged
SELECT decode(d.secret, 'base64') = s.ciphertext AS secret_is_ciphertext,
       d.key_id = meshhook_keys.ciphertext_key_id(s.ciphertext) AS key_id_is_the_data_key,
       d.nonce = substr(s.ciphertext, 10, 12) AND length(d.nonce) = 12 AS nonce_is_the_nonce,
       d.decrypted_secret
  FROM meshhook_keys.decrypted_secrets d JOIN meshhook_keys.secrets s USING (id) WHERE d.name = 'github';
SELECT attname FROM pg_attribute WHERE attrelid = 'vault.decrypted_secrets'::regclass AND attnum > 0
EXCEPT SELECT attname FROM pg_attribute WHERE attrelid = 'meshhook_keys.decrypted_secrets'::regclass AND attnum > 0;
SELECT name, decrypted_secret FROM (SELECT id, name, description, secret, decrypted_secret, key_id, nonce, created_at, updated_at
  FROM meshhook_keys.decrypted_secrets) v WHERE name = 'stripe';
SELECT bool_and(position(convert_to('VAULT_PLAINTEXT', 'UTF8') IN ciphertext) = 0) AS plaintext_not_stored
  FROM meshhook_keys.secrets;
SELECT decrypted_secret AS not_overwritten FROM meshhook_keys.decrypted_secrets WHERE name = 'taken';
SELECT count(*) AS skipped_not_imported FROM meshhook_keys.secrets WHERE name IN ('lost', 'gave-null', '');
-- a second run imports nothing twice; Vault is untouched
SET LOCAL ROLE mk_vault_ops;
SELECT vault_secrets, imported, already_imported, name_conflicts, invalid_names, unreadable, dry_run,
       jsonb_array_length(skipped) AS skipped
  FROM meshhook_keys.import_supabase_vault(dry_run => false);
RESET ROLE;
SELECT h = (SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM vault.secrets s) AS vault_untouched FROM vault_before;
-- audited with counts only, never a value
-- (the failed imports above are audited too, by another process that waits for this transaction:
-- see the end of this file)
SELECT action, outcome, keyring, detail - 'jwt' AS detail FROM meshhook_keys.audit_log
 WHERE action = 'import_vault' AND outcome = 'ok' ORDER BY id;
SELECT count(*) AS audit_rows_with_values FROM meshhook_keys.audit_log WHERE detail::text LIKE '%PLAINTEXT%';
-- a dry run into a keyring that cannot encrypt fails as the real run does (and writes nothing)
SELECT vault.create_secret('VAULT_PLAINTEXT_9', 'ninth') IS NOT NULL AS created;
SET LOCAL ROLE mk_vault_ops;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault('no-such-keyring')$$) AS dry,
       sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault('no-such-keyring', false)$$) AS real;
RESET ROLE;
SELECT count(*) AS no_such_keyring_made FROM meshhook_keys.keyring WHERE name = 'no-such-keyring';
DELETE FROM vault.secrets WHERE name = 'ninth';
-- after the switch from Vault, a role that read vault.decrypted_secrets (Supabase's service_role,
-- which bypasses RLS) reads the store after one grant, and Vault's API works for it
CREATE ROLE mk_service_role BYPASSRLS;
GRANT USAGE ON SCHEMA vault TO mk_service_role;
SET LOCAL ROLE mk_service_role;
SELECT sqlstate_of('SELECT count(decrypted_secret) FROM meshhook_keys.decrypted_secrets') AS before_grant;
RESET ROLE;
GRANT meshhook_keys_user TO mk_service_role;
SET LOCAL ROLE mk_service_role;
SELECT count(*) AS rows_seen, count(*) FILTER (WHERE decrypted_secret LIKE '%VAULT_PLAINTEXT%') AS imported_values_read
  FROM meshhook_keys.decrypted_secrets;
SELECT meshhook_keys.create_secret('svc_SECRET', 'service-made') IS NOT NULL AS created;
SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'service-made';
RESET ROLE;
-- into another keyring; rolled back with its transaction
SELECT 1 FROM meshhook_keys.keyring_create('vault-import');
SAVEPOINT s;
SELECT vault.create_secret('VAULT_PLAINTEXT_6', 'later') IS NOT NULL AS created;
SET LOCAL ROLE mk_vault_ops;
SELECT imported FROM meshhook_keys.import_supabase_vault('vault-import', false);
RESET ROLE;
SELECT k.keyring AS imported_into FROM meshhook_keys.secrets s
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.ciphertext) WHERE s.name = 'later';
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS after_rollback FROM meshhook_keys.secrets WHERE name = 'later';

-- the code behind vault.decrypted_secrets runs sealed, as its owner (issue 23): a setting it
-- changes is gone after the import; an advisory lock it keeps fails the import (42501) and is
-- released
SAVEPOINT sealed;
CREATE FUNCTION vault.pollute(keep_lock boolean) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'vault, pg_catalog', false);
    PERFORM pg_catalog.set_config('lock_timeout', '1ms', false);
    IF keep_lock THEN PERFORM pg_catalog.pg_advisory_lock(77); END IF;
    RETURN true;
END $$;
CREATE OR REPLACE VIEW vault.decrypted_secrets AS
    SELECT s.id, s.name, s.description, s.secret,
           vault._decrypt(s) AS decrypted_secret, s.key_id, s.nonce, s.created_at, s.updated_at
      FROM vault.secrets s WHERE vault.pollute(coalesce(current_setting('mk.keep_lock', true), '') = 'on');
SET LOCAL ROLE mk_vault_ops;
SELECT vault_secrets, already_imported FROM meshhook_keys.import_supabase_vault();
SELECT current_setting('search_path') AS search_path, current_setting('lock_timeout') AS lock_timeout;
SET LOCAL mk.keep_lock = 'on';
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault()$$);
SELECT count(*) AS locks_left FROM pg_locks
 WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND objsubid <> 19787;
RESET ROLE;
ROLLBACK TO SAVEPOINT sealed;

-- A hostile owner of Vault's objects: her view's code runs as HER, sealed, never with the
-- importer's authority (an operator's, a superuser's), and whatever it writes is rolled back;
-- a cancel or timeout inside it stops the import; an error it raises while listing shows only its
-- SQLSTATE, never its message
SAVEPOINT hostile;
DROP SCHEMA vault CASCADE;
CREATE ROLE mk_mallory;
CREATE SCHEMA vault AUTHORIZATION mk_mallory;
SELECT 1 FROM meshhook_keys.keyring_create('victim');
SET LOCAL ROLE mk_mallory;
CREATE TABLE vault.secrets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text, description text NOT NULL DEFAULT '',
    secret text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE vault.loot (who text, what text);
CREATE FUNCTION vault._decrypt(s vault.secrets) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    BEGIN INSERT INTO vault.loot SELECT current_user, string_agg(decrypted_secret, ',') FROM meshhook_keys.decrypted_secrets;
    EXCEPTION WHEN OTHERS THEN INSERT INTO vault.loot VALUES (current_user, 'store: ' || SQLSTATE); END;
    BEGIN PERFORM meshhook_keys.keyring_destroy('victim');
    EXCEPTION WHEN OTHERS THEN INSERT INTO vault.loot VALUES (current_user, 'keyring_destroy: ' || SQLSTATE); END;
    BEGIN EXECUTE 'ALTER ROLE mk_mallory SUPERUSER';
    EXCEPTION WHEN OTHERS THEN INSERT INTO vault.loot VALUES (current_user, 'superuser: ' || SQLSTATE); END;
    IF current_setting('mk.sleep', true) = 'on' THEN PERFORM pg_sleep(0.3); END IF;
    RETURN s.secret || ' read as ' || current_user;
END $$;
CREATE VIEW vault.decrypted_secrets AS
    SELECT s.id, s.name, s.description, s.secret, vault._decrypt(s) AS decrypted_secret, s.created_at, s.updated_at
      FROM vault.secrets s;
GRANT USAGE ON SCHEMA vault TO PUBLIC;
GRANT SELECT ON vault.secrets, vault.decrypted_secrets, vault.loot TO PUBLIC;
INSERT INTO vault.secrets (name, secret) VALUES ('m1', 'MALLORY_1'), ('m2', 'MALLORY_2'), ('m3', 'MALLORY_3'), ('m4', 'MALLORY_4');
RESET ROLE;
-- as the superuser and as an operator, dry and real: her code ran as her, achieved nothing, and
-- what it wrote is gone
SELECT vault_secrets, imported, unreadable FROM meshhook_keys.import_supabase_vault();
SET LOCAL ROLE mk_vault_ops;
SELECT vault_secrets, imported, unreadable FROM meshhook_keys.import_supabase_vault(dry_run => false);
RESET ROLE;
SELECT name, decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name LIKE 'm_' ORDER BY name;
SELECT count(*) AS loot_rows FROM vault.loot;
SELECT rolsuper AS mallory_is_superuser FROM pg_roles WHERE rolname = 'mk_mallory';
SELECT destroyed_at IS NULL AS victim_alive FROM meshhook_keys.keyrings WHERE keyring = 'victim';
-- (what she tried, seen from inside: each attempt refused, as her)
SET LOCAL ROLE mk_mallory;
SELECT vault._decrypt(s) IS NOT NULL AS tried FROM vault.secrets s WHERE name = 'm1';
RESET ROLE;
SELECT who, what FROM vault.loot ORDER BY what;
DELETE FROM vault.loot;
DELETE FROM meshhook_keys.secrets WHERE name LIKE 'm_';
-- a timeout while her view is read stops the import, as it stops any statement (a cancel is not
-- a bad row)
SET LOCAL mk.sleep = 'on';
SET LOCAL statement_timeout = '500ms';
DO $$
BEGIN
    PERFORM * FROM meshhook_keys.import_supabase_vault(dry_run => false);
    RAISE NOTICE 'the import ran past its timeout';
EXCEPTION WHEN query_canceled THEN
    RAISE NOTICE 'the import stopped: %', SQLSTATE;
END $$;
RESET statement_timeout;
RESET mk.sleep;
SELECT count(*) AS imported_before_the_timeout FROM meshhook_keys.secrets WHERE name LIKE 'm_';
-- listing raises with a secret in its message: only the SQLSTATE reaches the caller
SET LOCAL ROLE mk_mallory;
CREATE FUNCTION vault.boom(secret text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no access to %', secret USING ERRCODE = '42501'; END $$;
ALTER TABLE vault.secrets ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY boom ON vault.secrets USING (vault.boom(secret));
RESET ROLE;
SET LOCAL ROLE mk_vault_ops;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault()$$);
RESET ROLE;
-- a view that lists one id twice and two ids under one name: the dry run still says exactly what
-- the real run does
SET LOCAL ROLE mk_mallory;
DROP POLICY boom ON vault.secrets;
ALTER TABLE vault.secrets NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
CREATE OR REPLACE VIEW vault.decrypted_secrets AS
    SELECT s.id, CASE WHEN s.name = 'm2' THEN 'm1' ELSE s.name END AS name, s.description, s.secret,
           s.secret AS decrypted_secret, s.created_at, s.updated_at
      FROM vault.secrets s
    UNION ALL
    SELECT s.id, s.name, s.description, s.secret, s.secret, s.created_at, s.updated_at FROM vault.secrets s WHERE s.name = 'm3';
RESET ROLE;
CREATE TEMP TABLE dup_dry AS SELECT * FROM meshhook_keys.import_supabase_vault();
CREATE TEMP TABLE dup_real AS SELECT * FROM meshhook_keys.import_supabase_vault(dry_run => false);
SELECT vault_secrets, imported, already_imported, name_conflicts, invalid_names, unreadable FROM dup_real;
SELECT (d.imported, d.already_imported, d.name_conflicts, d.unreadable, d.skipped)
     = (r.imported, r.already_imported, r.name_conflicts, r.unreadable, r.skipped) AS dry_run_was_exact
  FROM dup_dry d, dup_real r;
-- the encryption ceiling: the dry run fails where the real run would (54000)
DELETE FROM meshhook_keys.secrets WHERE name LIKE 'm_';
SELECT 1 FROM meshhook_keys.keyring_create('vault-ceiling');
SET LOCAL meshhook_keys.max_encryptions_ceiling = 2;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault('vault-ceiling')$$) AS dry,
       sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault('vault-ceiling', false)$$) AS real;
RESET meshhook_keys.max_encryptions_ceiling;
ROLLBACK TO SAVEPOINT hostile;

-- Vault's API after a schema switch: code written for vault.* runs against meshhook_keys.*
CREATE POLICY mk_vault_app_untenanted ON meshhook_keys.secrets TO mk_vault_app
    USING (tenant = '') WITH CHECK (tenant = '');
SET LOCAL ROLE mk_vault_app;
SELECT meshhook_keys.create_secret('whsec_APP_1', 'webhook', 'signing secret') AS id \gset
SELECT name, description, decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE id = :'id';
SELECT meshhook_keys.update_secret(:'id', 'whsec_APP_2');
SELECT name, description, decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE id = :'id';
SELECT meshhook_keys.update_secret(secret_id => :'id', new_name => 'webhook-v2', new_description => 'rotated');
SELECT name, description, decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE id = :'id';
SELECT meshhook_keys.create_secret(new_secret => 'unnamed_APP') IS NOT NULL AS unnamed_created;
-- an id that does not exist changes nothing, as in Vault
SELECT meshhook_keys.update_secret('00000000-0000-0000-0000-000000000001', 'x');
-- pgsodium key ids do not exist here; a NULL secret is refused
SELECT sqlstate_of($$SELECT meshhook_keys.create_secret('x', 'k', '', gen_random_uuid())$$);
SELECT sqlstate_of(format($$SELECT meshhook_keys.update_secret(%L, new_key_id => gen_random_uuid())$$, :'id'));
SELECT sqlstate_of($$SELECT meshhook_keys.create_secret(NULL)$$);
RESET ROLE;
-- the signatures are Vault's: argument names, types, defaults and result
SELECT p.proname, count(DISTINCT (pg_get_function_arguments(p.oid), pg_get_function_result(p.oid))) = 1 AS same_as_vault,
       count(*) AS functions
  FROM pg_proc p WHERE p.pronamespace IN ('vault'::regnamespace, 'meshhook_keys'::regnamespace)
   AND p.proname IN ('create_secret', 'update_secret') GROUP BY 1 ORDER BY 1;
ROLLBACK;

-- A failed import (dry or real) leaves an audit row too, with its SQLSTATE and what it saw, written
-- by another process because the import's own rows roll back with its error
CREATE SCHEMA vault;
CREATE TABLE vault.secrets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text, description text NOT NULL DEFAULT '',
                            secret text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE VIEW vault.decrypted_secrets AS SELECT id, name, description, secret, secret AS decrypted_secret, created_at, updated_at FROM vault.secrets;
INSERT INTO vault.secrets (name, secret) VALUES ('one', 'VAULT_PLAINTEXT_F1'), ('two', 'VAULT_PLAINTEXT_F2');
-- (with the longest JWT claims a request can bring: the keyring is recorded whole)
SELECT set_config('request.jwt.claims', '{"sub": "0b7e3c1a-58f4-4c2e-9d1b-6a0f3e2d1c01-extra", "role": "service_role_with_a_long_name"}', false) IS NOT NULL AS claims_set;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault('missing-keyring')$$) AS dry,
       sqlstate_of($$SELECT * FROM meshhook_keys.import_supabase_vault('missing-keyring', false)$$) AS real;
CREATE FUNCTION pg_temp.wait_failed_imports(n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE deadline timestamptz := clock_timestamp() + interval '10 seconds'; got bigint;
BEGIN
    LOOP
        SELECT count(*) INTO got FROM meshhook_keys.audit_log
         WHERE action = 'import_vault' AND outcome = 'failed' AND keyring = 'missing-keyring';
        EXIT WHEN got >= n OR clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN got;
END $$;
RESET request.jwt.claims;
SELECT pg_temp.wait_failed_imports(2) AS failed_imports_audited;
SELECT action, outcome, keyring, detail - 'jwt' AS detail FROM meshhook_keys.audit_log
 WHERE action = 'import_vault' AND keyring = 'missing-keyring' ORDER BY detail ->> 'dry_run' DESC;
SELECT count(*) AS store_rows FROM meshhook_keys.secrets WHERE name IN ('one', 'two');
DROP SCHEMA vault CASCADE;
