-- Section 1 data and the list of timed queries.
-- psql variables: rows, pgp_rows (subset for pgp_sym_encrypt with default options, which is slow),
-- pass (pgcrypto passphrase), key_hex (32-byte raw AES key, hex).

-- t: one 100-character random secret per row, encrypted four ways. OFFSET 0 keeps the subquery
-- from being flattened, so every column encrypts the same p.
CREATE TABLE t (
    id        int   NOT NULL,
    p         text  NOT NULL,   -- plaintext, 100 ASCII characters
    c         bytea NOT NULL,   -- meshhook_keys.secret_encrypt(p), context ''
    pgp_s2k1  bytea NOT NULL,   -- pgp_sym_encrypt(p, pass, 's2k-mode=1')
    iv        bytea NOT NULL,   -- random 16-byte IV for aes_cbc
    aes_cbc   bytea NOT NULL    -- encrypt_iv(p, key, iv, 'aes-cbc/pad:pkcs')
);
INSERT INTO t
SELECT id, p,
       meshhook_keys.secret_encrypt(p),
       pgp_sym_encrypt(p, :'pass', 's2k-mode=1'),
       iv,
       encrypt_iv(convert_to(p, 'UTF8'), decode(:'key_hex', 'hex'), iv, 'aes-cbc/pad:pkcs')
  FROM (SELECT i AS id, encode(gen_random_bytes(50), 'hex') AS p, gen_random_bytes(16) AS iv
          FROM generate_series(1, :rows) AS i OFFSET 0) AS s;

-- t_pgp: pgp_sym_encrypt with default options (iterated, salted S2K) on a subset of the same
-- secrets; it costs ~250 µs per row each way, too slow for every row.
CREATE TABLE t_pgp AS
SELECT id, p, pgp_sym_encrypt(p, :'pass') AS pgp_default FROM t WHERE id <= :pgp_rows;

VACUUM (ANALYZE) t;
VACUUM (ANALYZE) t_pgp;

-- Every ciphertext must decrypt to its plaintext (checked on a sample of rows).
SET bench.pass = :'pass';
SET bench.key_hex = :'key_hex';
DO $$
DECLARE
    pass text  := current_setting('bench.pass');
    key  bytea := decode(current_setting('bench.key_hex'), 'hex');
    bad  bigint;
BEGIN
    SELECT count(*) INTO bad FROM t
     WHERE id % 997 = 1
       AND (meshhook_keys.secret_decrypt(c) IS DISTINCT FROM p
            OR pgp_sym_decrypt(pgp_s2k1, pass) IS DISTINCT FROM p
            OR convert_from(decrypt_iv(aes_cbc, key, iv, 'aes-cbc/pad:pkcs'), 'UTF8') IS DISTINCT FROM p);
    IF bad > 0 THEN
        RAISE EXCEPTION 'bench: % sampled rows of t do not decrypt to their plaintext', bad;
    END IF;
    SELECT count(*) INTO bad FROM t_pgp
     WHERE id % 97 = 1 AND pgp_sym_decrypt(pgp_default, pass) IS DISTINCT FROM p;
    IF bad > 0 THEN
        RAISE EXCEPTION 'bench: % sampled rows of t_pgp do not decrypt to their plaintext', bad;
    END IF;
END $$;
RESET bench.pass;
RESET bench.key_hex;

-- The timed queries: SELECT sum(<expr>) FROM <tbl>, over every row of tbl.
-- floor_name: the floor measured on the same table, which the report subtracts and divides by.
CREATE TABLE bench_query (
    ord        int    PRIMARY KEY,
    name       text   NOT NULL UNIQUE CHECK (name NOT LIKE '%|%'),
    tbl        text   NOT NULL,
    expr       text   NOT NULL,
    floor_name text   NOT NULL,
    nrows      bigint
);
INSERT INTO bench_query (ord, name, tbl, expr, floor_name) VALUES
 (1, 'floor: sum(octet_length(c))',                        't',     'octet_length(c)', 'floor: sum(octet_length(c))'),
 (2, 'meshhook_keys.secret_decrypt',                 't',     'octet_length(meshhook_keys.secret_decrypt(c))', 'floor: sum(octet_length(c))'),
 (3, 'meshhook_keys.secret_encrypt',                 't',     'octet_length(meshhook_keys.secret_encrypt(p))', 'floor: sum(octet_length(c))'),
 (4, 'pgcrypto pgp_sym_decrypt, s2k-mode=1 data',    't',     format('octet_length(pgp_sym_decrypt(pgp_s2k1, %L))', :'pass'), 'floor: sum(octet_length(c))'),
 (5, 'pgcrypto decrypt_iv, raw AES-256-CBC',         't',     format('octet_length(decrypt_iv(aes_cbc, %L::bytea, iv, %L))', '\x' || :'key_hex', 'aes-cbc/pad:pkcs'), 'floor: sum(octet_length(c))'),
 (6, 'floor on the subset table',                    't_pgp', 'octet_length(pgp_default)', 'floor on the subset table'),
 (7, 'pgcrypto pgp_sym_decrypt, default options',    't_pgp', format('octet_length(pgp_sym_decrypt(pgp_default, %L))', :'pass'), 'floor on the subset table');
UPDATE bench_query SET nrows = CASE tbl WHEN 't' THEN (SELECT count(*) FROM t) ELSE (SELECT count(*) FROM t_pgp) END;

-- Flush the load's dirty pages now rather than during the timed runs.
CHECKPOINT;
