BEGIN;
-- text and bytea, empty values, multibyte text, contexts
SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('sk_live_123'));
SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt(''));
SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('mot de passe: été ✓', 'tenant:1'), 'tenant:1');
SELECT meshhook_keys.secret_decrypt_bytea(meshhook_keys.secret_encrypt_bytea('\x000102fffe'::bytea, 'b'), 'b');
-- text encrypted, read back as bytes
SELECT meshhook_keys.secret_decrypt_bytea(meshhook_keys.secret_encrypt('abc'));
-- named arguments
SELECT meshhook_keys.secret_decrypt(
         meshhook_keys.secret_encrypt(plaintext => 'named', context => 'c', keyring => 'default'),
         context => 'c');

-- envelope layout: 1 + 8 + 12 + len + 16 bytes, format byte 1, key id of the active key
CREATE TEMP TABLE env AS SELECT meshhook_keys.secret_encrypt('12345', 'x') AS c;
SELECT length(c) AS bytes, get_byte(c, 0) AS format,
       meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'default' AND state = 'active') AS names_active_key
  FROM env;
-- the same plaintext never encrypts to the same bytes (random nonce)
SELECT count(DISTINCT meshhook_keys.secret_encrypt('same')) AS distinct_ciphertexts FROM generate_series(1, 100);

-- a table of secrets, decrypted with a context derived from the row
CREATE TEMP TABLE creds (id int PRIMARY KEY, tenant text, token bytea);
INSERT INTO creds
SELECT i, 't' || (i % 3), meshhook_keys.secret_encrypt('token-' || i, 't' || (i % 3) || '/' || i)
  FROM generate_series(1, 300) i;
SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(token, tenant || '/' || id) = 'token-' || id) AS ok,
       count(*) AS total
  FROM creds;
-- ciphertext_key_id is IMMUTABLE: an expression index finds rows by key version
CREATE INDEX ON creds (meshhook_keys.ciphertext_key_id(token));
SELECT count(*) FROM creds
 WHERE meshhook_keys.ciphertext_key_id(token) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'default' AND version = 1);
SELECT meshhook_keys.ciphertext_key_id(NULL) IS NULL AS strict_on_null;

-- the four functions read their arguments in place: plaintexts and contexts stored compressed,
-- and envelopes stored out of line (uncompressed, in the TOAST table) are read whole (a function
-- reading the stored bytes as they are would seal or open garbage)
CREATE TEMP TABLE stored (id int, p text, pb bytea, ctx text, c bytea, cb bytea);
ALTER TABLE stored ALTER p SET STORAGE MAIN, ALTER pb SET STORAGE MAIN, ALTER ctx SET STORAGE MAIN,
                   ALTER c SET STORAGE EXTERNAL, ALTER cb SET STORAGE EXTERNAL;
INSERT INTO stored (id, p, pb, ctx)
SELECT i, repeat('secret ' || i || ' ', 3000), convert_to(repeat('bytes ' || i, 3000), 'UTF8'),
       repeat('context ' || i || ' ', 500)
  FROM generate_series(1, 3) i;
UPDATE stored SET c = meshhook_keys.secret_encrypt(p, ctx), cb = meshhook_keys.secret_encrypt_bytea(pb, ctx, 'default');
SELECT count(*) FILTER (WHERE pg_column_compression(p) IS NOT NULL AND pg_column_compression(pb) IS NOT NULL
                          AND pg_column_compression(ctx) IS NOT NULL) AS stored_compressed,
       pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE relname = 'stored')) > 0 AS envelopes_out_of_line
  FROM stored;
SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, ctx) = p) AS text_round_trips,
       count(*) FILTER (WHERE meshhook_keys.secret_decrypt_bytea(cb, ctx) = pb) AS bytea_round_trips,
       count(*) FILTER (WHERE meshhook_keys.secret_decrypt_bytea(c, ctx) = convert_to(p, 'UTF8')) AS text_as_bytes
  FROM stored;
ROLLBACK;
