-- Section 5: one backend decrypts one ciphertext under each of :keyrings distinct data keys;
-- its memory is snapshotted into bench_memory along the way. psql variable: keyrings.

-- One keyring (so one data key) per ciphertext.
SELECT count(*) AS keyrings_created
  FROM (SELECT meshhook_keys.keys_rotate('k' || i, 'bench memory') FROM generate_series(1, :keyrings) AS i) AS s
\gset
CREATE TABLE m AS
SELECT i, meshhook_keys.secret_encrypt('x', '', 'k' || i) AS c FROM generate_series(1, :keyrings) AS i;
VACUUM (ANALYZE) m;

-- A fresh backend: its key cache is empty.
\connect
INSERT INTO bench_memory SELECT 0, 'fresh backend', 0, * FROM bench_memory_now;

SELECT sum(length(meshhook_keys.secret_decrypt(c))) AS n FROM m WHERE i <= 1 \gset
INSERT INTO bench_memory SELECT 1, 'after 1 decrypt', 1, * FROM bench_memory_now;

SELECT sum(length(meshhook_keys.secret_decrypt(c))) AS n FROM m WHERE i <= 1000 \gset
INSERT INTO bench_memory SELECT 2, 'after 1,000 distinct keys', 1000, * FROM bench_memory_now;

SELECT sum(length(meshhook_keys.secret_decrypt(c))) AS n FROM m \gset
INSERT INTO bench_memory SELECT 3, format('after %s distinct keys', to_char(:keyrings, 'FM999,999,999')), :keyrings, * FROM bench_memory_now;

SELECT sum(length(meshhook_keys.secret_decrypt(c))) AS n FROM m \gset
INSERT INTO bench_memory SELECT 4, format('after a second pass over the %s', to_char(:keyrings, 'FM999,999,999')), :keyrings, * FROM bench_memory_now;
