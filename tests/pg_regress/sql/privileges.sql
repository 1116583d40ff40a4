BEGIN;
CREATE ROLE mk_nobody;
CREATE ROLE mk_app IN ROLE meshhook_keys_user;
CREATE ROLE mk_ops IN ROLE meshhook_keys_admin;
CREATE ROLE mk_oper IN ROLE meshhook_keys_operator;

-- The role x function matrix (EXECUTE privilege).
SELECT p.proname,
       has_function_privilege('mk_nobody', p.oid, 'EXECUTE') AS nobody,
       has_function_privilege('mk_app', p.oid, 'EXECUTE')    AS app,
       has_function_privilege('mk_ops', p.oid, 'EXECUTE')    AS ops,
       has_function_privilege('mk_oper', p.oid, 'EXECUTE')   AS oper
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'meshhook_keys'
 ORDER BY p.proname, p.oid::regprocedure::text;

-- The role x relation matrix (SELECT / INSERT privilege).
SELECT c.relname,
       has_table_privilege('mk_nobody', c.oid, 'SELECT') AS nobody_sel,
       has_table_privilege('mk_app', c.oid, 'SELECT')    AS app_sel,
       has_table_privilege('mk_ops', c.oid, 'SELECT')    AS ops_sel,
       has_table_privilege('mk_ops', c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE') AS ops_write,
       has_table_privilege('mk_oper', c.oid, 'SELECT')   AS oper_sel
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'meshhook_keys' AND c.relkind IN ('r', 'v')
 ORDER BY 1;
SELECT has_schema_privilege('mk_nobody', 'meshhook_keys', 'USAGE') AS nobody_usage,
       has_schema_privilege('mk_app', 'meshhook_keys', 'CREATE') AS app_create;

-- A role with neither grant is refused by PostgreSQL for every function and table.
SET LOCAL ROLE mk_nobody;
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(''x'')');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(''\x00''::bytea)');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate()');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.keys');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.data_key');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.audit_log');
SELECT sqlstate_of('SELECT meshhook_keys.audit_verify()');
RESET ROLE;
-- Even with USAGE on the schema, the function and table ACLs refuse it.
GRANT USAGE ON SCHEMA meshhook_keys TO mk_nobody;
SET LOCAL ROLE mk_nobody;
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(''x'')');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(''\x00''::bytea)');
SELECT sqlstate_of('SELECT meshhook_keys.rewrap(''\x00''::bytea)');
SELECT sqlstate_of('SELECT meshhook_keys.hmac_sign(''x'', ''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.hmac_verify(''x'', ''meshhook:v1:00'', ''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.webhook_sign(''x'', ''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.webhook_verify(''x'', ''t=1'', ''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.webhook_secret(''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.blind_index(''x'', ''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.blind_index_candidates(''x'', ''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.register_blind_index(''pg_class'', ''relname'', ''relname'')');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.datakey_generate(''default'')');
SELECT sqlstate_of('SELECT meshhook_keys.datakey_unwrap(''\x00''::bytea)');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate()');
SELECT sqlstate_of('SELECT meshhook_keys.ciphertext_key_id(''\x00''::bytea)');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.data_key');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.keys');
-- The two functions a re-encryption batch's UPDATE calls are executable by PUBLIC (the UPDATE runs
-- as the table's owner, any role) but refuse outside a batch.
SELECT sqlstate_of('SELECT meshhook_keys._reencrypt_try(''\x00''::bytea, ''(0,1)'', ''\x01''::bytea, '''')');
SELECT sqlstate_of('SELECT meshhook_keys._reencrypt_take(''\x00''::bytea, ''(0,1)'')');
RESET ROLE;

-- A user-role member encrypts and decrypts, but cannot rotate, read keys or the audit log.
SET LOCAL ROLE mk_app;
SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('app secret', 'ctx'), 'ctx');
SELECT sqlstate_of('SELECT meshhook_keys.keys_rotate(''default'')');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.keys');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.data_key');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.audit_log');
SELECT sqlstate_of('SELECT meshhook_keys.audit_verify()');
SELECT sqlstate_of('SELECT meshhook_keys._key_cache_stats()');
RESET ROLE;

-- An admin-role member rotates and reads metadata and the audit log, but never data_key.
SET LOCAL ROLE mk_ops;
SELECT keyring, version FROM meshhook_keys.keys_rotate('ops-ring', 'privileges test');
SELECT keyring, version, state FROM meshhook_keys.keys WHERE keyring = 'ops-ring';
SELECT action, keyring, version, role_name FROM meshhook_keys.audit_log WHERE keyring = 'ops-ring';
SELECT sqlstate_of('SELECT wrapped_key FROM meshhook_keys.data_key');
SELECT sqlstate_of('INSERT INTO meshhook_keys.audit_log (action) VALUES (''forged'')');
RESET ROLE;

-- The hot functions (secret_encrypt/_decrypt and their bytea forms) carry no SET search_path clause
-- (it costs about 0.9 µs per call); the SQL they run on a key cache miss pins search_path itself, so
-- a caller's search_path cannot hijack it: an operator that would shadow bigint = bigint is never used.
CREATE SCHEMA evil;
CREATE FUNCTION evil.int8eq_hijack(bigint, bigint) RETURNS boolean LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8eq_hijack);
CREATE TEMP TABLE hj AS SELECT meshhook_keys.secret_encrypt('not hijacked', 'ctx') AS c;
SELECT version > 0 AS rotated FROM meshhook_keys.keys_rotate('hijack-ring');
SELECT version > 0 AS rotated FROM meshhook_keys.keys_rotate('default', 'flush every key cache');
SELECT misses AS misses_before FROM meshhook_keys._key_cache_stats() \gset
SET LOCAL search_path = evil, pg_catalog, public;
SELECT sqlstate_of('SELECT 1::bigint = 1::bigint') AS evil_operator_is_live_here;
SELECT meshhook_keys.secret_decrypt(c, 'ctx') FROM hj;
SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('new key, new miss', 'ctx', 'hijack-ring'), 'ctx');
RESET search_path;
SELECT misses > :misses_before AS went_through_the_cache_miss_path FROM meshhook_keys._key_cache_stats();
SELECT p.proname, p.prosecdef AS definer, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'meshhook_keys' AND p.proname LIKE 'secret\_%crypt%' ORDER BY 1;
-- Rotate is not decrypt (issue 11, finding 9): an operator rotates, re-encrypts, retires, reads the
-- audit log and key metadata, but cannot call the encrypt or decrypt functions nor read the store.
CREATE TEMP TABLE oper_t AS SELECT meshhook_keys.secret_encrypt('oper-secret', 'o', 'oper-ring') AS c
  FROM (SELECT meshhook_keys.keys_rotate('oper-ring')) r;
GRANT SELECT ON oper_t TO mk_oper;
SET LOCAL ROLE mk_oper;
SELECT version FROM meshhook_keys.keys_rotate('oper-ring', 'operator rotates');
SELECT meshhook_keys.keyring_set_policy('oper-ring', interval '30 days') AS policy_set;
SELECT keyring, version, state FROM meshhook_keys.keys WHERE keyring = 'oper-ring' ORDER BY version;
SELECT action, outcome, role_name FROM meshhook_keys.audit_log WHERE keyring = 'oper-ring' AND action = 'rotate' ORDER BY id DESC LIMIT 1;
SELECT ok FROM meshhook_keys.audit_verify();
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt(c, ''o'') FROM oper_t');
SELECT sqlstate_of('SELECT meshhook_keys.secret_decrypt_bytea(c, ''o'') FROM oper_t');
SELECT sqlstate_of('SELECT meshhook_keys.secret_encrypt(''x'', '''', ''oper-ring'')');
SELECT sqlstate_of('SELECT * FROM meshhook_keys.decrypted_secrets');
SELECT sqlstate_of('SELECT meshhook_keys.keyring_unlock(''v'', ''whatever-secret'')');
RESET ROLE;
ROLLBACK;
