-- Section 2 data: the same :rows 100-byte secrets in three tables.
--   r      meshhook_keys envelopes (keyring 'reenc', context 'r:' || id), registered for re-encryption
--   r_floor a copy of r, for the physical floor of an in-database rewrite (UPDATE c = c || '')
--   r_pgc  raw AES-256-CBC (pgcrypto encrypt_iv), for the one-statement pgcrypto rewrap
-- psql variables: rows, k1, k2 (hex keys), iv (hex)
SELECT 1 FROM meshhook_keys.keys_rotate('reenc', 'bench: version 1') \g /dev/null
CREATE TABLE r (id int PRIMARY KEY, c bytea NOT NULL);
INSERT INTO r
SELECT i, meshhook_keys.secret_encrypt(encode(gen_random_bytes(50), 'hex'), 'r:' || i, 'reenc')
  FROM generate_series(1, :rows) i;
CREATE TABLE r_floor (id int PRIMARY KEY, c bytea NOT NULL);
INSERT INTO r_floor SELECT id, c FROM r;
CREATE TABLE r_pgc (id int PRIMARY KEY, c bytea NOT NULL);
INSERT INTO r_pgc
SELECT i, encrypt_iv(convert_to(encode(gen_random_bytes(50), 'hex'), 'UTF8'), decode(:'k1', 'hex'), decode(:'iv', 'hex'), 'aes-cbc/pad:pkcs')
  FROM generate_series(1, :rows) i;
SELECT 1 FROM meshhook_keys.register_column('r', 'c', $$'r:' || id$$, 'reenc') \g /dev/null
VACUUM (ANALYZE) r, r_floor, r_pgc;
CHECKPOINT;
