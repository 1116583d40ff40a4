-- Every bad input gets a specific SQLSTATE and a message without plaintext or key bytes.
BEGIN;
CREATE TEMP TABLE c AS SELECT meshhook_keys.secret_encrypt('PLAINTEXT-MARKER', 'tenant-a') AS c;
-- NULLs
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(NULL::text)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt_bytea(NULL::bytea)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(''x'', NULL)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(''x'', '''', NULL)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(NULL)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt_bytea(NULL)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(c, NULL) FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate(NULL)');
-- wrong context
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(c, ''tenant-b'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(c) FROM c');
-- tampered: flip one bit in the nonce, the body and the tag
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(set_byte(c, 10, get_byte(c, 10) # 1), ''tenant-a'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(set_byte(c, 22, get_byte(c, 22) # 1), ''tenant-a'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(set_byte(c, length(c) - 1, get_byte(c, length(c) - 1) # 1), ''tenant-a'') FROM c');
-- truncated: empty, inside the header, one byte short of the minimum, tag cut
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(''\x''::bytea)');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(substring(c from 1 for 5), ''tenant-a'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(substring(c from 1 for 36), ''tenant-a'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(substring(c from 1 for length(c) - 1), ''tenant-a'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.ciphertext_key_id(''\x01''::bytea)');
-- unknown format byte, unknown key id
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(set_byte(c, 0, 2), ''tenant-a'') FROM c');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(overlay(c placing ''\x7fffffffffffffff''::bytea from 2), ''tenant-a'') FROM c');
-- keyring without a key, bad keyring names
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(''x'', '''', ''payments'')');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate('''')');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate(''has space'')');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate(repeat(''k'', 64))');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate(''x''''; DROP TABLE c; --'')');
-- binary plaintext asked for as text
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt_bytea(''\x00ff''::bytea))');
-- none of these messages contains the plaintext
SELECT count(*) AS messages_with_plaintext FROM (VALUES
    (sqlstate_of('SELECT meshhook_keys.secret_decrypt(c, ''tenant-b'') FROM c')),
    (sqlstate_of('SELECT meshhook_keys.secret_decrypt(set_byte(c, 22, 0), ''tenant-a'') FROM c'))) m(msg)
 WHERE msg LIKE '%PLAINTEXT-MARKER%';
ROLLBACK;
