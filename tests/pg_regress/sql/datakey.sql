-- Data keys for encryption outside the database (issue 28): datakey_generate returns a fresh
-- 256-bit key and its envelope; datakey_unwrap opens the envelope later; rotation and
-- re-encryption of a registered column move the envelopes like any other, and the key inside
-- stays the same.
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('files', 'version 1');
CREATE TABLE stored_file (id int PRIMARY KEY, path text NOT NULL, dek bytea NOT NULL);
CREATE TEMP TABLE issued (id int PRIMARY KEY, data_key bytea NOT NULL);
-- the application asks for a key per file, encrypts the file with it elsewhere, and keeps the
-- envelope beside the file's row (bound to the file's id)
WITH made AS (
    SELECT i, k.data_key, k.envelope
      FROM generate_series(1, 50) i,
           LATERAL meshhook_keys.datakey_generate('files', 'file:' || i) k
), ins AS (
    INSERT INTO stored_file SELECT i, 'bucket/' || i, envelope FROM made
)
INSERT INTO issued SELECT i, data_key FROM made;
-- 32 random bytes each, all different; the envelope is an ordinary one of 32 + 37 bytes
SELECT count(*) AS keys, count(DISTINCT data_key) AS distinct_keys,
       min(length(data_key)) AS min_len, max(length(data_key)) AS max_len
  FROM issued;
SELECT min(length(dek)) AS envelope_len, max(length(dek)) AS envelope_len_max FROM stored_file;
-- unwrapped later, with the same context: the same key
SELECT count(*) FILTER (WHERE meshhook_keys.datakey_unwrap(f.dek, 'file:' || f.id) = i.data_key) AS unwrap_to_the_key
  FROM stored_file f JOIN issued i USING (id);
-- counted against the key's encryption limit like any encryption
SELECT encryptions AS counted FROM meshhook_keys.keyrings WHERE keyring = 'files';
-- without the plaintext: only the envelope (pre-provisioning), which unwraps to a 32-byte key
SELECT data_key IS NULL AS no_plaintext, length(meshhook_keys.datakey_unwrap(envelope, 'later')) AS unwrapped_len
  FROM meshhook_keys.datakey_generate('files', 'later', with_plaintext => false);

-- rotation and re-encryption of the registered column move every envelope to the new version;
-- the key inside is the same, so files encrypted with it stay readable
SELECT meshhook_keys.register_column('stored_file', 'dek', $$'file:' || id$$, 'files') > 0 AS registered;
SELECT 1 FROM meshhook_keys.keys_rotate('files', 'version 2');
DO $$ BEGIN WHILE meshhook_keys.reencrypt_batch('files', 20) IS NOT NULL LOOP END LOOP; END $$;
SELECT count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(f.dek) =
                              (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'files' AND version = 2)) AS on_version_2,
       count(*) FILTER (WHERE meshhook_keys.datakey_unwrap(f.dek, 'file:' || f.id) = i.data_key) AS same_key
  FROM stored_file f JOIN issued i USING (id);
SELECT meshhook_keys.keys_retire('files', 1) AS retired;
-- an envelope kept elsewhere (not registered) moves with rewrap
SELECT 1 FROM meshhook_keys.keys_rotate('files', 'version 3');
SELECT meshhook_keys.datakey_unwrap(meshhook_keys.rewrap(dek, 'file:1'), 'file:1') = (SELECT data_key FROM issued WHERE id = 1) AS rewrapped_same_key
  FROM stored_file WHERE id = 1;

-- what decryption refuses, datakey_unwrap refuses; and an envelope of anything but a key
SELECT sqlstate_of($$SELECT meshhook_keys.datakey_unwrap(dek, 'file:2') FROM stored_file WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.datakey_unwrap(substr(dek, 1, 30), 'file:1') FROM stored_file WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.datakey_unwrap(NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.datakey_unwrap(meshhook_keys.secret_encrypt('not a key', '', 'files'))$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.datakey_generate(NULL)$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.datakey_generate('files', NULL)$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.datakey_generate('no such keyring!')$$);
-- a destroyed keyring's envelopes never unwrap again: the keys are crypto-shredded with it
SELECT 1 FROM meshhook_keys.keyring_destroy('files', 'files deleted');
SELECT sqlstate_of($$SELECT meshhook_keys.datakey_unwrap(dek, 'file:1') FROM stored_file WHERE id = 1$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.datakey_generate('files')$$);
ROLLBACK;
