BEGIN;
-- CREATE EXTENSION made no key: a restored dump brings its own
SELECT count(*) AS keys_after_create_extension FROM meshhook_keys.keys;
-- first rotation of a new keyring creates version 1
SELECT keyring, version FROM meshhook_keys.keys_rotate('tenant-42', 'onboarding');
CREATE TEMP TABLE s (n int, c bytea);
INSERT INTO s VALUES (1, meshhook_keys.secret_encrypt('v1 secret', 'n=1', 'tenant-42'));
SELECT keyring, version FROM meshhook_keys.keys_rotate('tenant-42', 'quarterly');
INSERT INTO s VALUES (2, meshhook_keys.secret_encrypt('v2 secret', 'n=2', 'tenant-42'));
SELECT keyring, version FROM meshhook_keys.keys_rotate('tenant-42');
INSERT INTO s VALUES (3, meshhook_keys.secret_encrypt('v3 secret', 'n=3', 'tenant-42'));
-- every version still decrypts; each row names the version that encrypted it
SELECT s.n, k.version, meshhook_keys.secret_decrypt(s.c, 'n=' || s.n)
  FROM s JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.c) ORDER BY s.n;
SELECT version, state, activated_at IS NOT NULL AS activated, retired_at IS NULL AS not_retired
  FROM meshhook_keys.keys WHERE keyring = 'tenant-42' ORDER BY version;
-- keyrings are independent
SELECT keyring, version FROM meshhook_keys.keys_rotate('tenant-43');
SELECT keyring, count(*), max(version) FROM meshhook_keys.keys GROUP BY keyring ORDER BY keyring;
-- rotation is audited with who, what, which version and why
SELECT action, outcome, keyring, version, reason, actor = session_user AS actor_is_session_user,
       detail ? 'previous_version' AS has_previous, detail->>'previous_version' AS previous
  FROM meshhook_keys.audit_log WHERE keyring LIKE 'tenant-4%' ORDER BY id;
-- rotation touches no user data: the stored ciphertexts are byte-for-byte unchanged
CREATE TEMP TABLE before AS SELECT n, c FROM s;
SELECT version FROM meshhook_keys.keys_rotate('tenant-42');
SELECT count(*) AS changed_rows FROM s JOIN before USING (n) WHERE s.c <> before.c;
-- wrapped keys are bound to their row: swapping two wrapped keys makes both unusable, not wrong
UPDATE meshhook_keys.data_key d SET wrapped_key = o.wrapped_key
  FROM meshhook_keys.data_key o
 WHERE d.keyring = 'tenant-42' AND d.version = 1 AND o.keyring = 'tenant-42' AND o.version = 2;
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(c, ''n=1'') FROM s WHERE n = 1');
ROLLBACK;
