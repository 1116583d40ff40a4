-- The built-in secrets store: helpers, the security_invoker view, RLS, re-encryption.
BEGIN;
CREATE ROLE mk_store_app IN ROLE meshhook_keys_user;
CREATE ROLE mk_store_ops IN ROLE meshhook_keys_admin;
-- closed by default: without a policy the user role sees and writes nothing
SET LOCAL ROLE mk_store_app;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_create('stripe', 'x', 'no policy yet')$$);
RESET ROLE;
SELECT meshhook_keys.secret_create('backend', 'sk_BACKEND_PLAINTEXT', 'the superuser''s') IS NOT NULL AS created;
SET LOCAL ROLE mk_store_app;
SELECT count(*) AS visible_without_policy FROM meshhook_keys.decrypted_secrets;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_update('backend', 'attacker-value')$$);
RESET ROLE;
SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'backend';
DELETE FROM meshhook_keys.secrets WHERE name = 'backend';
-- an explicit policy grants this role the untenanted rows
CREATE POLICY mk_store_app_untenanted ON meshhook_keys.secrets TO mk_store_app
    USING (tenant = '') WITH CHECK (tenant = '');
SET LOCAL ROLE mk_store_app;
SELECT meshhook_keys.secret_create('stripe', 'sk_live_STORE_PLAINTEXT', 'Stripe key') IS NOT NULL AS created;
SELECT meshhook_keys.secret_create('github', 'ghp_other', 'GitHub token') IS NOT NULL AS created;
SELECT name, description, decrypted_secret FROM meshhook_keys.decrypted_secrets ORDER BY name;
-- the plaintext is nowhere in the stored row
SELECT bool_and(position(convert_to('STORE_PLAINTEXT', 'UTF8') IN ciphertext) = 0) AS not_stored
  FROM meshhook_keys.secrets;
SELECT meshhook_keys.secret_update('stripe', 'sk_live_ROTATED') IS NOT NULL AS updated;
SELECT name, decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'stripe';
SELECT sqlstate_of($$SELECT meshhook_keys.secret_update('nope', 'x')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.secret_create('stripe', 'dup')$$);
-- out of the box, the user role may not touch tenant rows: add policies for your tenancy model
SELECT sqlstate_of($$SELECT meshhook_keys.secret_create('slack', 'x', '', 'tenant-1')$$);
-- a ciphertext copied to another row does not decrypt there
SELECT sqlstate_of($$UPDATE meshhook_keys.secrets SET ciphertext = (SELECT ciphertext FROM meshhook_keys.secrets WHERE name = 'stripe') WHERE name = 'github'$$);
UPDATE meshhook_keys.secrets SET ciphertext = (SELECT ciphertext FROM meshhook_keys.secrets WHERE name = 'stripe') WHERE name = 'github';
SELECT sqlstate_of($$SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'github'$$);
RESET ROLE;
-- the store is registered for re-encryption and follows rotations
SET LOCAL ROLE mk_store_ops;
SELECT table_name, column_name, keyring FROM meshhook_keys.encrypted_columns WHERE table_name = 'meshhook_keys.secrets'::regclass;
SELECT version FROM meshhook_keys.keys_rotate('default', 'store test');
RESET ROLE;
UPDATE meshhook_keys.secrets SET ciphertext = meshhook_keys.secret_encrypt('ghp_other', id::text || '/' || tenant) WHERE name = 'github';
-- (the row above was just rewritten on the new key; make it old again to see it move)
SELECT version FROM meshhook_keys.keys_rotate('default', 'store test 2');
SELECT meshhook_keys.reencrypt_batch('default', 100) AS moved;
SELECT meshhook_keys.reencrypt_batch('default', 100) IS NULL AS done;
SELECT s.name, k.version, d.decrypted_secret
  FROM meshhook_keys.secrets s
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.ciphertext)
  JOIN meshhook_keys.decrypted_secrets d ON d.id = s.id
 ORDER BY s.name;
-- a row shows only an envelope of its own keyring (issue 24): a ciphertext made under another
-- keyring with the row's own context, or a row relabelled to another keyring, is refused (XX001)
-- (the view decrypts every row it reads, so each case is put back before the next)
SELECT version FROM meshhook_keys.keys_rotate('store-other');
UPDATE meshhook_keys.secrets SET keyring = 'store-other' WHERE name = 'stripe';
SELECT sqlstate_of($$SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'stripe'$$);
UPDATE meshhook_keys.secrets SET keyring = 'default' WHERE name = 'stripe';
SELECT name, decrypted_secret FROM meshhook_keys.decrypted_secrets ORDER BY name;
UPDATE meshhook_keys.secrets SET ciphertext = meshhook_keys.secret_encrypt('forged', id::text || '/' || tenant, 'store-other')
 WHERE name = 'github';
SELECT sqlstate_of($$SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'github'$$);
-- (secret_decrypt itself names no keyring, and still opens the envelope with the right context)
SELECT meshhook_keys.secret_decrypt(ciphertext, id::text || '/' || tenant) FROM meshhook_keys.secrets WHERE name = 'github';
ROLLBACK;
