-- Mutation fuzzing of every decrypt entry point (issue 12, item 9): a few thousand deterministic
-- mutations of real envelopes (bit flips at every position, random multi-byte flips, truncations
-- at every length, appended and spliced bytes, swapped headers, unknown key ids, wrong contexts,
-- empty and huge inputs) go through secret_decrypt, secret_decrypt_bytea, ciphertext_key_id, the
-- secrets store's decrypted_secrets view, re-encryption and verify(). None decrypts, none is an
-- internal error (XX000) or crashes the backend, and no message carries a plaintext. Only counts
-- and SQLSTATEs are printed: nothing here depends on keys, nonces or key ids.
-- (In a database of its own: the rolled-back rows leave dead space in the secrets store's table,
-- which later files' batch counts would see.)
CREATE DATABASE mk_fuzz;
\c mk_fuzz
SET client_min_messages = warning;
CREATE EXTENSION meshhook_keys;
\i tests/pg_regress/helpers.sql
BEGIN;
SELECT pg_backend_pid() AS fuzz_pid \gset
SELECT setseed(0.42);
SELECT keyring, version FROM meshhook_keys.keyring_create('fuzz_a');
SELECT keyring, version FROM meshhook_keys.keyring_create('fuzz_b');
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:fuzz', 'fuzz-user-secret-1');

-- random bytes from random(), so the mutations are the same on every run
CREATE FUNCTION pg_temp.rand_int(lo int, hi int) RETURNS int LANGUAGE sql VOLATILE AS
    $$ SELECT lo + floor(random() * (hi - lo + 1))::int $$;
CREATE FUNCTION pg_temp.rand_bytes(n int) RETURNS bytea LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(decode(string_agg(lpad(to_hex(floor(random() * 256)::int), 2, '0'), '' ORDER BY i), 'hex'), '')
      FROM generate_series(1, n) i $$;
-- n bytes of deterministic filler (SHA-256 blocks), for the huge inputs
CREATE FUNCTION pg_temp.filler(n int) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT substring(string_agg(sha256(int4send(i)), ''::bytea ORDER BY i) FROM 1 FOR n)
      FROM generate_series(0, n / 32) i $$;
CREATE FUNCTION pg_temp.header(key_id bigint) RETURNS bytea LANGUAGE sql IMMUTABLE AS
    $$ SELECT '\x01'::bytea || int8send(key_id) $$;

-- the envelopes under attack: text and bytea, with and without context, an empty plaintext, three
-- keyrings with the root key and a user-held one, and a row of the built-in secrets store
CREATE TEMP TABLE fuzz_env (name text PRIMARY KEY, keyring text, ctx text, is_text bool, plain bytea,
                            c bytea, store_id uuid, key_id bigint);
INSERT INTO fuzz_env (name, keyring, ctx, is_text, plain) VALUES
    ('a_text_ctx',    'fuzz_a',    'tenant-1/row-1', true,  convert_to('FUZZ-MARKER text with a context', 'UTF8')),
    ('a_text_noctx',  'fuzz_a',    '',               true,  convert_to('FUZZ-MARKER text, no context: été ✓', 'UTF8')),
    ('a_bytea_ctx',   'fuzz_a',    'bytes/ctx',      false, '\x00ff'::bytea || convert_to('FUZZ-MARKER', 'UTF8') || '\x0001fe'::bytea),
    ('a_bytea_noctx', 'fuzz_a',    '',               false, convert_to('FUZZ-MARKER', 'UTF8') || '\xdeadbeef'::bytea),
    ('a_empty',       'fuzz_a',    'empty',          true,  ''::bytea),
    ('b_text_ctx',    'fuzz_b',    'tenant-1/row-1', true,  convert_to('FUZZ-MARKER under keyring b', 'UTF8')),
    ('d_text',        'default',   'd',              true,  convert_to('FUZZ-MARKER under the default keyring', 'UTF8')),
    ('u_text',        'user:fuzz', 'u',              true,  convert_to('FUZZ-MARKER user-held', 'UTF8'));
UPDATE fuzz_env SET c = CASE WHEN is_text THEN meshhook_keys.secret_encrypt(convert_from(plain, 'UTF8'), ctx, keyring)
                             ELSE meshhook_keys.secret_encrypt_bytea(plain, ctx, keyring) END;
-- the store row: its context is its id and tenant, bound by secret_create
INSERT INTO fuzz_env (name, keyring, ctx, is_text, plain, store_id)
SELECT 's_store', 'fuzz_a', '', true, convert_to('FUZZ-MARKER in the store', 'UTF8'),
       meshhook_keys.secret_create('fuzz-store', 'FUZZ-MARKER in the store', '', '', 'fuzz_a');
UPDATE fuzz_env e SET c = s.ciphertext, ctx = s.id::text || '/' || s.tenant FROM meshhook_keys.secrets s WHERE s.id = e.store_id;
SELECT meshhook_keys.secret_create('fuzz-store-2', 'FUZZ-MARKER second row', '', '', 'fuzz_a') IS NOT NULL AS created;
UPDATE fuzz_env e SET key_id = k.key_id FROM meshhook_keys.keys k WHERE k.keyring = e.keyring AND k.state = 'active';
SELECT name, length(c) AS bytes, get_byte(c, 0) AS format, meshhook_keys.ciphertext_key_id(c) = key_id AS names_active_key
  FROM fuzz_env e ORDER BY name;
-- a second version of fuzz_a: its key id in the headers of version 1's envelopes
SELECT version FROM meshhook_keys.keys_rotate('fuzz_a', 'fuzz');

-- the mutations; ctx is the context they are decrypted with (the right one, but for wrong_context)
CREATE TEMP TABLE fuzz_mut (id serial PRIMARY KEY, family text NOT NULL, src text NOT NULL, c bytea NOT NULL,
                            ctx text NOT NULL);
DO $$
DECLARE
    e record;
    o record;
    m bytea;
    n int;
    i int;
    k int;
    p int;
    cuts int[];
    ids bigint[];
    hdr_a bytea := (SELECT substring(c FROM 1 FOR 9) FROM fuzz_env WHERE name = 'a_text_ctx');
    hdr_b bytea := (SELECT substring(c FROM 1 FOR 9) FROM fuzz_env WHERE name = 'b_text_ctx');
    hdr_u bytea := (SELECT substring(c FROM 1 FOR 9) FROM fuzz_env WHERE name = 'u_text');
    hdr_a2 bytea := pg_temp.header((SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'fuzz_a' AND version = 2));
BEGIN
    FOR e IN SELECT * FROM fuzz_env ORDER BY name LOOP
        n := length(e.c);
        -- every single-bit flip
        FOR i IN 0 .. n - 1 LOOP
            FOR k IN 0 .. 7 LOOP
                INSERT INTO fuzz_mut (family, src, c, ctx)
                VALUES ('bit_flip', e.name, set_byte(e.c, i, get_byte(e.c, i) # (1 << k)), e.ctx);
            END LOOP;
        END LOOP;
        -- random flips of 2 to 8 bytes
        FOR i IN 1 .. 60 LOOP
            m := e.c;
            FOR k IN 1 .. pg_temp.rand_int(2, 8) LOOP
                p := pg_temp.rand_int(0, n - 1);
                m := set_byte(m, p, get_byte(m, p) # pg_temp.rand_int(1, 255));
            END LOOP;
            IF m <> e.c THEN
                INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('multi_byte_flip', e.name, m, e.ctx);
            END IF;
        END LOOP;
        -- every truncation
        FOR i IN 0 .. n - 1 LOOP
            INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('truncate', e.name, substring(e.c FROM 1 FOR i), e.ctx);
        END LOOP;
        -- appended bytes: one zero byte, 1 to 64 random bytes, a second tag, a whole other envelope
        INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('append', e.name, e.c || '\x00'::bytea, e.ctx);
        INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('append', e.name, e.c || substring(e.c FROM n - 15), e.ctx);
        INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('append', e.name, e.c || e.c, e.ctx);
        FOR i IN 1 .. 20 LOOP
            INSERT INTO fuzz_mut (family, src, c, ctx)
            VALUES ('append', e.name, e.c || pg_temp.rand_bytes(pg_temp.rand_int(1, 64)), e.ctx);
        END LOOP;
        -- random bytes spliced in: inserted, or replacing a random run (the first one differs from
        -- the byte it displaces, so that whether the header survives does not depend on the key id)
        FOR i IN 1 .. 40 LOOP
            p := pg_temp.rand_int(0, n);
            k := pg_temp.rand_int(0, 16);
            m := pg_temp.rand_bytes(pg_temp.rand_int(1, 16));
            IF p < n THEN
                m := set_byte(m, 0, get_byte(e.c, p) # pg_temp.rand_int(1, 255));
            END IF;
            m := substring(e.c FROM 1 FOR p) || m || substring(e.c FROM p + k + 1);
            IF m <> e.c THEN
                INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('splice_random', e.name, m, e.ctx);
            END IF;
        END LOOP;
        -- a prefix of this envelope and the suffix of another: inside the key id, after the header,
        -- after the nonce, at a random point after the header, and only the other's tag
        FOR o IN SELECT * FROM fuzz_env WHERE name <> e.name ORDER BY name LOOP
            cuts := ARRAY[5, 9, 21, pg_temp.rand_int(9, least(n, length(o.c)) - 1), least(n, length(o.c)) - 16];
            FOREACH k IN ARRAY cuts LOOP
                m := substring(e.c FROM 1 FOR k) || substring(o.c FROM k + 1);
                -- A cut inside the header of the same key gives back the other envelope (that one is
                -- a moved_envelope below), and a cut near the end can give back this one (when the
                -- last bytes of the two random tags agree): then flip the last byte, so that the set
                -- of mutations does not depend on the random bytes of this run.
                IF m IN (e.c, o.c) THEN
                    m := set_byte(m, length(m) - 1, get_byte(m, length(m) - 1) # 1);
                END IF;
                INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('splice_envelopes', e.name, m, e.ctx);
            END LOOP;
            -- the other envelope as is, with this one's context (a ciphertext moved to another row)
            IF o.ctx <> e.ctx THEN
                INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('moved_envelope', e.name, o.c, e.ctx);
            END IF;
        END LOOP;
        -- another key's id in the header: fuzz_a v1, fuzz_a v2, fuzz_b, the user-held keyring
        FOREACH m IN ARRAY ARRAY[hdr_a, hdr_a2, hdr_b, hdr_u] LOOP
            IF m <> substring(e.c FROM 1 FOR 9) THEN
                INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('header_swap', e.name, overlay(e.c PLACING m FROM 1), e.ctx);
            END IF;
        END LOOP;
        -- key ids that do not exist
        ids := ARRAY[0, 1, -1, 9223372036854775807, -9223372036854775808];
        FOR i IN 1 .. 10 LOOP
            ids := ids || (floor((random() - 0.5) * 1.8e19::float8))::bigint;
        END LOOP;
        FOR i IN 1 .. array_length(ids, 1) LOOP
            INSERT INTO fuzz_mut (family, src, c, ctx)
            VALUES ('unknown_key_id', e.name, overlay(e.c PLACING pg_temp.header(ids[i]) FROM 1), e.ctx);
        END LOOP;
        -- wrong contexts
        INSERT INTO fuzz_mut (family, src, c, ctx)
        SELECT DISTINCT 'wrong_context', e.name, e.c, w
          FROM unnest(ARRAY['', e.ctx || ' ', ' ' || e.ctx, e.ctx || e.ctx, upper(e.ctx) || 'X', lower(e.ctx) || 'é',
                            substring(e.ctx FROM 2), substring(e.ctx FROM 1 FOR greatest(length(e.ctx) - 1, 0)), 'tenant-2/row-1',
                            repeat('x', 100000), e.name]) w
         WHERE w <> e.ctx;
    END LOOP;
    -- the store's other row's ciphertext copied into this one
    INSERT INTO fuzz_mut (family, src, c, ctx)
    SELECT 'moved_envelope', f.name, s.ciphertext, f.ctx
      FROM fuzz_env f, meshhook_keys.secrets s WHERE f.name = 's_store' AND s.name = 'fuzz-store-2';
    -- every format byte but 1
    SELECT * INTO e FROM fuzz_env WHERE name = 'a_text_ctx';
    FOR i IN 0 .. 255 LOOP
        IF i <> 1 THEN
            INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('format_byte', e.name, set_byte(e.c, 0, i), e.ctx);
        END IF;
    END LOOP;
    -- not envelopes at all: empty, every single byte, all zeros, zero key id, a real header over
    -- zeros, random bytes with and without a real header
    INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('raw', '-', ''::bytea, '');
    FOR i IN 0 .. 255 LOOP
        INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('raw', '-', set_byte('\x00'::bytea, 0, i), '');
    END LOOP;
    INSERT INTO fuzz_mut (family, src, c, ctx) VALUES
        ('raw', '-', decode(repeat('00', 36), 'hex'), ''),
        ('raw', '-', decode(repeat('00', 37), 'hex'), ''),
        ('raw', '-', '\x01'::bytea || decode(repeat('00', 36), 'hex'), ''),
        ('raw', '-', hdr_a || decode(repeat('00', 27), 'hex'), ''),
        ('raw', '-', hdr_a || decode(repeat('00', 28), 'hex'), ''),
        ('raw', '-', hdr_a || decode(repeat('ff', 100), 'hex'), '');
    FOR i IN 1 .. 100 LOOP
        INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('raw', '-', pg_temp.rand_bytes(pg_temp.rand_int(0, 200)), '');
        INSERT INTO fuzz_mut (family, src, c, ctx) VALUES ('raw', '-', hdr_a || pg_temp.rand_bytes(pg_temp.rand_int(0, 200)), '');
    END LOOP;
    -- huge inputs (1 MiB): filler, a real header over filler, an envelope with 1 MiB appended
    SELECT * INTO e FROM fuzz_env WHERE name = 'a_text_ctx';
    INSERT INTO fuzz_mut (family, src, c, ctx) VALUES
        ('huge', '-', pg_temp.filler(1048576), ''),
        ('huge', '-', hdr_a || pg_temp.filler(1048576), ''),
        ('huge', e.name, hdr_a || pg_temp.filler(1048576), e.ctx),
        ('huge', e.name, e.c || pg_temp.filler(1048576), e.ctx),
        ('huge', e.name, e.c, repeat('c', 1048576));
    -- (no de-duplication: whether two mutations coincide depends on the run's random nonces and
    -- tags, and then the counts below would too; a mutation tried twice is harmless)
END $$;
SELECT family, count(*) AS mutations FROM fuzz_mut GROUP BY ROLLUP (family) ORDER BY family NULLS LAST;
-- none of them is an envelope under attack with its own context
SELECT count(*) AS unmutated FROM fuzz_mut m JOIN fuzz_env e ON e.c = m.c AND e.ctx = m.ctx;

-- one call of an entry point: 'ok' or the SQLSTATE, and the error's text (message, detail, hint,
-- context) for the plaintext check
CREATE FUNCTION pg_temp.fuzz_call(fn text, c bytea, ctx text, store_id uuid, OUT outcome text, OUT errtext text)
LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    det text;
    hnt text;
    cx text;
    r_text text;
    r_bytea bytea;
    r_id bigint;
BEGIN
    CASE fn
    WHEN 'secret_decrypt' THEN r_text := meshhook_keys.secret_decrypt(c, ctx);
    WHEN 'secret_decrypt_bytea' THEN r_bytea := meshhook_keys.secret_decrypt_bytea(c, ctx);
    WHEN 'ciphertext_key_id' THEN r_id := meshhook_keys.ciphertext_key_id(c);
    WHEN 'decrypted_secrets' THEN
        UPDATE meshhook_keys.secrets SET ciphertext = c WHERE id = store_id;
        SELECT d.decrypted_secret INTO STRICT r_text FROM meshhook_keys.decrypted_secrets d WHERE d.id = store_id;
    END CASE;
    outcome := 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                            hnt = PG_EXCEPTION_HINT, cx = PG_EXCEPTION_CONTEXT;
    outcome := st;
    errtext := concat_ws(E'\n', msg, det, hnt, cx);
END $$;

CREATE TEMP TABLE fuzz_result (mut_id int, family text, fn text, outcome text, leaked bool);
CREATE FUNCTION pg_temp.fuzz_run(fams text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m record;
    f text;
    r record;
BEGIN
    -- (the store's view computes the context itself: it only sees mutations of the ciphertext)
    FOR m IN SELECT x.*, CASE WHEN x.c <> e.c THEN e.store_id END AS store_id
               FROM fuzz_mut x LEFT JOIN fuzz_env e ON e.name = x.src
              WHERE x.family = ANY (fams) ORDER BY x.id LOOP
        FOREACH f IN ARRAY ARRAY['secret_decrypt', 'secret_decrypt_bytea', 'ciphertext_key_id', 'decrypted_secrets'] LOOP
            CONTINUE WHEN f = 'decrypted_secrets' AND m.store_id IS NULL;
            r := pg_temp.fuzz_call(f, m.c, m.ctx, m.store_id);
            INSERT INTO fuzz_result VALUES (m.id, m.family, f, r.outcome, coalesce(r.errtext LIKE '%FUZZ-MARKER%', false));
        END LOOP;
    END LOOP;
END $$;
SELECT pg_temp.fuzz_run(array_agg(DISTINCT family)) FROM fuzz_mut;

-- SQLSTATE -> count for each entry point (ciphertext_key_id only reads the header: it may succeed
-- on a mutation that keeps the header intact)
SELECT fn, outcome, count(*) FROM fuzz_result GROUP BY 1, 2 ORDER BY 1, 2;
-- and by kind of mutation
SELECT family, fn, string_agg(outcome || ' ' || n, ', ' ORDER BY outcome) AS outcomes
  FROM (SELECT family, fn, outcome, count(*) AS n FROM fuzz_result GROUP BY 1, 2, 3) s
 GROUP BY 1, 2 ORDER BY 1, 2;
-- the verdict: no mutation decrypted, no internal error, no plaintext in any message
SELECT count(*) FILTER (WHERE outcome = 'ok' AND fn <> 'ciphertext_key_id') AS mutations_decrypted,
       count(*) FILTER (WHERE outcome = 'XX000') AS internal_errors,
       count(*) FILTER (WHERE leaked) AS messages_with_plaintext,
       count(*) FILTER (WHERE outcome = 'ok' AND fn = 'ciphertext_key_id') AS headers_read,
       count(*) AS calls
  FROM fuzz_result;
-- every mutation was tried on every entry point
SELECT count(*) AS mutations_not_tried
  FROM fuzz_mut m LEFT JOIN fuzz_env e ON e.name = m.src
  LEFT JOIN (SELECT mut_id, count(*) AS calls FROM fuzz_result GROUP BY 1) r ON r.mut_id = m.id
 WHERE coalesce(r.calls, 0) <> CASE WHEN e.store_id IS NOT NULL AND m.c <> e.c THEN 4 ELSE 3 END;

-- a locked user-held keyring: its envelopes and their mutations are refused, not decrypted
SELECT meshhook_keys.keyring_lock('user:fuzz') AS was_unlocked;
TRUNCATE fuzz_result;
INSERT INTO fuzz_mut (family, src, c, ctx) SELECT 'locked_user_held', 'u_text', c, ctx FROM fuzz_env WHERE name = 'u_text';
INSERT INTO fuzz_mut (family, src, c, ctx)
SELECT 'locked_user_held', 'u_text', c, ctx FROM fuzz_mut WHERE src = 'u_text' AND family IN ('bit_flip', 'truncate', 'wrong_context');
SELECT pg_temp.fuzz_run(ARRAY['locked_user_held']);
SELECT fn, outcome, count(*) FROM fuzz_result GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) FILTER (WHERE outcome = 'ok' AND fn <> 'ciphertext_key_id') AS decrypted_while_locked,
       count(*) FILTER (WHERE outcome = 'XX000') AS internal_errors,
       count(*) FILTER (WHERE leaked) AS messages_with_plaintext
  FROM fuzz_result;
SELECT meshhook_keys.keyring_unlock('user:fuzz', 'fuzz-user-secret-1') AS versions_unlocked;

-- re-encryption and verify() read every registered column: a table of every mutation of a fuzz_a
-- envelope next to the originals, decrypted with each row's context expression
CREATE TABLE fuzz_reg (id int PRIMARY KEY, src text, c bytea, ctx text);
INSERT INTO fuzz_reg SELECT m.id, m.src, m.c, m.ctx FROM fuzz_mut m JOIN fuzz_env e ON e.name = m.src
 WHERE e.keyring = 'fuzz_a' AND m.family <> 'locked_user_held' AND length(m.c) < 100000;
INSERT INTO fuzz_reg SELECT -row_number() OVER (ORDER BY name), name, c, ctx FROM fuzz_env WHERE keyring = 'fuzz_a';
SELECT meshhook_keys.register_column('fuzz_reg', 'c', 'ctx', 'fuzz_a') > 0 AS registered;
SELECT count(*) AS rows, count(*) FILTER (WHERE id < 0) AS originals FROM fuzz_reg;
SELECT sampled, decrypted, failed, locked, ok, error
  FROM meshhook_keys.verify(1000000) WHERE table_name = 'fuzz_reg'::regclass;
SELECT version FROM meshhook_keys.keys_rotate('fuzz_a', 'fuzz re-encryption');
SELECT meshhook_keys.reencrypt_batch('fuzz_a', 100000) AS moved;
SELECT meshhook_keys.reencrypt_batch('fuzz_a', 100000) IS NULL AS done;
CREATE TEMP VIEW fuzz_failure AS SELECT f.* FROM meshhook_keys.reencrypt_failure f
  JOIN meshhook_keys.encrypted_columns c ON c.id = f.column_id WHERE c.table_name = 'fuzz_reg'::regclass;
SELECT sqlstate, count(*) FROM fuzz_failure GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE error LIKE '%FUZZ-MARKER%') AS failures_with_plaintext,
       count(*) FILTER (WHERE sqlstate = 'XX000') AS internal_errors
  FROM fuzz_failure;
-- the originals moved to version 3 and still decrypt; every mutation stayed where it was
SELECT k.version, count(*) FILTER (WHERE r.id < 0) AS originals, count(*) FILTER (WHERE r.id > 0) AS mutations
  FROM fuzz_reg r LEFT JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(r.c)
 WHERE get_byte(r.c, 0) = 1 AND length(r.c) >= 37
 GROUP BY 1 ORDER BY 1 NULLS LAST;
SELECT count(*) AS originals_decrypt FROM fuzz_reg r JOIN fuzz_env e ON e.name = r.src
 WHERE r.id < 0 AND meshhook_keys.secret_decrypt_bytea(r.c, r.ctx) = e.plain;
SELECT count(*) AS unchanged_mutations FROM fuzz_reg r JOIN fuzz_mut m ON m.id = r.id WHERE r.c = m.c;

-- the session survived and the unmutated envelopes still decrypt to the right values
SELECT pg_backend_pid() = :fuzz_pid AS same_backend;
UPDATE meshhook_keys.secrets s SET ciphertext = e.c FROM fuzz_env e WHERE e.store_id = s.id;
SELECT name,
       meshhook_keys.secret_decrypt_bytea(c, ctx) = plain AS bytea_ok,
       CASE WHEN is_text THEN meshhook_keys.secret_decrypt(c, ctx) = convert_from(plain, 'UTF8') END AS text_ok,
       meshhook_keys.ciphertext_key_id(c) = key_id AS key_id_ok,
       CASE WHEN store_id IS NOT NULL
            THEN (SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets d WHERE d.id = e.store_id) = convert_from(plain, 'UTF8') END AS store_ok
  FROM fuzz_env e ORDER BY name;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, ctx) FROM fuzz_env WHERE name = 'a_bytea_ctx'$$);
ROLLBACK;

\c contrib_regression
DROP DATABASE mk_fuzz;
