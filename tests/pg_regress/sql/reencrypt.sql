-- Registration, re-encryption, usage, failures, retire and destroy, at the SQL level.
BEGIN;
CREATE ROLE mk_owner;
CREATE ROLE mk_ops2 IN ROLE meshhook_keys_admin;
CREATE TABLE creds (id int PRIMARY KEY, tenant text NOT NULL, token bytea, note text);
ALTER TABLE creds OWNER TO mk_owner;
CREATE VIEW creds_v AS SELECT * FROM creds;
INSERT INTO creds SELECT i, 't' || (i % 3), meshhook_keys.secret_encrypt('tok-' || i, 't' || (i % 3) || '/' || i), NULL
  FROM generate_series(1, 500) i;

-- registration is validated
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'note', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'nope', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds_v', 'token', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', 'no_such_column')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', 'tenant || ''/'' ||')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', '1; DROP TABLE creds')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', 'tenant) FROM pg_authid --')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', 'tenant', 'bad keyring')$$);
-- an admin who does not own the table may not register its columns
SET LOCAL ROLE mk_ops2;
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', 'tenant')$$);
RESET ROLE;
-- the expression runs as the table owner: it cannot read what the owner cannot
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('creds', 'token', '(SELECT rolpassword FROM pg_authid LIMIT 1)')$$);
SELECT meshhook_keys.register_column('creds', 'token', $$tenant || '/' || id$$) > 0 AS registered;
SELECT table_name, column_name, context_expr, keyring, table_exists FROM meshhook_keys.encrypted_columns;

-- nothing to do while every row is on the active key
SELECT meshhook_keys.reencrypt_batch() IS NULL AS nothing_to_do;
SELECT version FROM meshhook_keys.keys_rotate('default', 'reencrypt test');
-- one row that cannot be decrypted (tampered)
UPDATE creds SET token = set_byte(token, 30, get_byte(token, 30) # 1) WHERE id = 7;
SELECT table_name, column_name, version, state, rows FROM meshhook_keys.key_usage() ORDER BY version;

-- batches of 100 until done
CREATE TEMP TABLE batches AS SELECT 0 AS n, 0::bigint AS moved WITH NO DATA;
DO $$
DECLARE m bigint; k int := 0;
BEGIN
  LOOP
    m := meshhook_keys.reencrypt_batch('default', 100);
    EXIT WHEN m IS NULL;
    k := k + 1;
    INSERT INTO batches VALUES (k, m);
    IF k > 100 THEN RAISE EXCEPTION 'no progress'; END IF;
  END LOOP;
END $$;
SELECT max(moved) <= 100 AS bounded_batches, sum(moved) AS moved FROM batches;
SELECT state, pass, rows_total, rows_done, rows_failed, rows_remaining, job_state FROM meshhook_keys.reencrypt_progress;
SELECT row_ref, sqlstate, error FROM meshhook_keys.reencrypt_failure ORDER BY row_ref;
SELECT table_name, column_name, version, state, rows FROM meshhook_keys.key_usage() ORDER BY version;
SELECT count(*) AS decrypt_ok FROM creds
 WHERE id <> 7 AND meshhook_keys.secret_decrypt(token, tenant || '/' || id) = 'tok-' || id;
-- the other rows did not move, their bytes were not touched
SELECT meshhook_keys.ciphertext_key_id(token) = (SELECT key_id FROM meshhook_keys.keys WHERE version = 1) AS still_old
  FROM creds WHERE id = 7;

-- retire and destroy are gated on the rows that still reference the version
SELECT sqlstate_of($$SELECT meshhook_keys.keys_retire('default', 2)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_retire('default', 1)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy('default', 1)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_retire('default', 9)$$);
SELECT meshhook_keys.keys_retire('default', 1, force => true);
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(token, tenant || '/' || id) FROM creds WHERE id = 7$$);
SELECT meshhook_keys.keys_destroy('default', 1, force => true);
SELECT version, state, retired_at IS NOT NULL AS retired FROM meshhook_keys.keys ORDER BY version;
SELECT wrapped_key IS NULL AS wiped FROM meshhook_keys.data_key WHERE version = 1;
SELECT action, outcome, version, detail->>'forced' AS forced, detail->>'rows_referencing' AS rows
  FROM meshhook_keys.audit_log WHERE action IN ('retire', 'destroy') ORDER BY id;
SELECT action, detail->>'rows_done' AS done, detail->>'rows_failed' AS failed, detail->>'state' AS state
  FROM meshhook_keys.audit_log WHERE action LIKE 'reencrypt%' ORDER BY id;
ROLLBACK;

BEGIN;
-- a rotation during a job supersedes it; rows of another keyring in the same column stay put
CREATE TABLE mixed (id int PRIMARY KEY, c bytea);
SELECT version FROM meshhook_keys.keys_rotate('ring-a');
SELECT version FROM meshhook_keys.keys_rotate('ring-b');
INSERT INTO mixed SELECT i, meshhook_keys.secret_encrypt('v' || i, '', CASE WHEN i % 2 = 0 THEN 'ring-a' ELSE 'ring-b' END)
  FROM generate_series(1, 200) i;
SELECT meshhook_keys.register_column('mixed', 'c', NULL, 'ring-a') > 0 AS registered;
CREATE TABLE later (id int PRIMARY KEY, c bytea);
INSERT INTO later SELECT i, meshhook_keys.secret_encrypt('x', '', 'ring-a') FROM generate_series(1, 5) i;
SELECT version FROM meshhook_keys.keys_rotate('ring-a');
SELECT meshhook_keys.reencrypt_batch('ring-a', 10);
SELECT version FROM meshhook_keys.keys_rotate('ring-a');
SELECT meshhook_keys.reencrypt_batch('ring-a', 1000) AS moved;
SELECT meshhook_keys.reencrypt_batch('ring-a', 1000) IS NULL AS done;
SELECT keyring, target_version, state FROM meshhook_keys.reencrypt_job ORDER BY id;
SELECT k.keyring, k.version, count(*) FROM mixed m JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(m.c)
 GROUP BY 1, 2 ORDER BY 1, 2;
-- a column registered after the job finished reopens it
SELECT meshhook_keys.register_column('later', 'c', NULL, 'ring-a') > 0 AS registered;
SELECT meshhook_keys.reencrypt_batch('ring-a', 1000) AS moved;
SELECT meshhook_keys.reencrypt_batch('ring-a', 1000) IS NULL AS done;
SELECT keyring, target_version, state FROM meshhook_keys.reencrypt_job ORDER BY id;
SELECT meshhook_keys.unregister_column('later', 'c'), meshhook_keys.unregister_column('later', 'c') AS again;
ROLLBACK;

BEGIN;
-- the batch's UPDATE runs as the table owner: the owner's triggers never run as the superuser
CREATE ROLE mk_trig_owner;
CREATE TABLE trig_log (who text, sess_is_super boolean);
GRANT INSERT ON trig_log TO mk_trig_owner;
CREATE FUNCTION trig_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trig_log VALUES (current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user));
    RETURN NEW;
END $$;
CREATE TABLE trig_t (id int PRIMARY KEY, c bytea);
CREATE TRIGGER trig_t_note BEFORE UPDATE ON trig_t FOR EACH ROW EXECUTE FUNCTION trig_note();
ALTER TABLE trig_t OWNER TO mk_trig_owner;
SELECT version FROM meshhook_keys.keys_rotate('trig-ring');
INSERT INTO trig_t SELECT i, meshhook_keys.secret_encrypt('s' || i, 'trig:' || i, 'trig-ring') FROM generate_series(1, 20) i;
SELECT meshhook_keys.register_column('trig_t', 'c', $$'trig:' || id$$, 'trig-ring') > 0 AS registered;
SELECT version FROM meshhook_keys.keys_rotate('trig-ring');
SELECT meshhook_keys.reencrypt_batch('trig-ring', 100) AS moved;
SELECT who, sess_is_super, count(*) FROM trig_log GROUP BY 1, 2;
SELECT count(*) AS decrypt_ok FROM trig_t WHERE meshhook_keys.secret_decrypt(c, 'trig:' || id) = 's' || id;

-- rows hidden from the owner by FORCE ROW LEVEL SECURITY are never mistaken for done: registering
-- such a table is refused, and forcing it later makes the batch fail instead of skipping rows
CREATE TABLE forced (id int PRIMARY KEY, c bytea);
ALTER TABLE forced OWNER TO mk_trig_owner;
INSERT INTO forced SELECT i, meshhook_keys.secret_encrypt('f' || i, '', 'trig-ring') FROM generate_series(1, 10) i;
ALTER TABLE forced ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_even ON forced USING (id % 2 = 0);
SELECT meshhook_keys.register_column('forced', 'c', NULL, 'trig-ring') > 0 AS registered;
ALTER TABLE forced FORCE ROW LEVEL SECURITY;
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('forced', 'c', 'id::text', 'trig-ring')$$);
SELECT version FROM meshhook_keys.keys_rotate('trig-ring');
SELECT sqlstate_of($$SELECT meshhook_keys.reencrypt_batch('trig-ring', 100)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_retire('trig-ring', 1)$$);
ALTER TABLE forced NO FORCE ROW LEVEL SECURITY;
SELECT meshhook_keys.reencrypt_batch('trig-ring', 100) AS moved;

-- envelopes stored out of line and contexts stored compressed are re-encrypted like any other
CREATE TABLE big (id int PRIMARY KEY, ctx text, p text, c bytea);
ALTER TABLE big ALTER c SET STORAGE EXTERNAL, ALTER p SET STORAGE MAIN;
SELECT version FROM meshhook_keys.keys_rotate('big-ring');
INSERT INTO big (id, ctx, p)
  SELECT i, repeat('context-' || i, 2000), (SELECT string_agg(md5(random()::text || j), '') FROM generate_series(1, 200) j)
    FROM generate_series(1, 3) i;
UPDATE big SET c = meshhook_keys.secret_encrypt(p, ctx, 'big-ring');
SELECT meshhook_keys.register_column('big', 'c', 'ctx', 'big-ring') > 0 AS registered;
SELECT count(*) FILTER (WHERE pg_column_compression(ctx) IS NOT NULL) AS contexts_compressed,
       pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE relname = 'big')) > 0 AS envelopes_out_of_line
  FROM big;
SELECT version FROM meshhook_keys.keys_rotate('big-ring');
SELECT meshhook_keys.reencrypt_batch('big-ring', 10) AS moved;
SELECT meshhook_keys.reencrypt_batch('big-ring', 10) IS NULL AS done;
SELECT count(*) AS moved_and_decrypted FROM big
 WHERE meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'big-ring' AND state = 'active')
   AND meshhook_keys.secret_decrypt(c, ctx) = p;

-- the functions the batch's UPDATE calls refuse outside a batch, for everyone
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_try(NULL, '(0,1)', meshhook_keys.secret_encrypt('x'), '')$$);
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_take('\x00'::bytea, '(0,1)')$$);
-- (they read their arguments in place: NULLs, a token of the right length, and arguments stored
-- compressed, which they detoast, are refused the same way)
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_try(NULL, NULL, NULL, NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_try('\x00112233445566778899aabbccddeeff'::bytea, NULL, NULL, NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_try('\x00112233445566778899aabbccddeeff'::bytea, '(0,1)', '\x01'::bytea, 'guess')$$);
SELECT meshhook_keys._reencrypt_take(NULL, '(0,1)') IS NULL AS take_is_strict;
CREATE TEMP TABLE squeezed (b bytea, t text);
INSERT INTO squeezed SELECT convert_to(repeat('meshhook', 4000), 'UTF8'), repeat('context', 4000);
SELECT pg_column_compression(b) IS NOT NULL AS b_compressed, pg_column_compression(t) IS NOT NULL AS t_compressed FROM squeezed;
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_try(b, '(0,1)', b, t) FROM squeezed$$);
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_take(b, '(0,1)') FROM squeezed$$);
ROLLBACK;
