-- Section 3 data: :rows secrets the application reads and updates (keyring 'app', context 'a:' || id),
-- registered for re-encryption, plus the same secrets as raw AES (pgcrypto) in column p, rewritten
-- by the one-statement pgcrypto rewrap scenario. psql variables: rows, k1 (hex key), iv (hex).
SELECT 1 FROM meshhook_keys.keys_rotate('app', 'bench: version 1') \g /dev/null
-- pk says which of the two raw AES keys encrypts p (1: k1, 2: k2), so that a rewrap interrupted at
-- any point can be restarted.
CREATE TABLE a (id int PRIMARY KEY, c bytea NOT NULL, p bytea NOT NULL, pk smallint NOT NULL DEFAULT 1);
INSERT INTO a (id, c, p)
SELECT i, meshhook_keys.secret_encrypt(s, 'a:' || i, 'app'),
       encrypt_iv(convert_to(s, 'UTF8'), decode(:'k1', 'hex'), decode(:'iv', 'hex'), 'aes-cbc/pad:pkcs')
  FROM (SELECT i, encode(gen_random_bytes(50), 'hex') AS s FROM generate_series(1, :rows) i) g;
SELECT 1 FROM meshhook_keys.register_column('a', 'c', $$'a:' || id$$, 'app') \g /dev/null
CREATE TABLE bench_app (
    scenario   text   NOT NULL,
    run        int    NOT NULL,
    tps        float8 NOT NULL,
    p50_ms     float8 NOT NULL,
    p99_ms     float8 NOT NULL,
    max_ms     float8 NOT NULL,
    lock_waits int    NOT NULL,   -- lock waits longer than deadlock_timeout (100 ms), from the server log
    background text,             -- what the background job did meanwhile
    clients    int    NOT NULL,
    errors     int    NOT NULL,   -- server ERRORs + pgbench failures and aborts + failed rotations
    deadlocks  int    NOT NULL,   -- "deadlock detected" in the server log
    rotations  int    NOT NULL,   -- section 3c: rotations made during the run
    rows_reencrypted bigint NOT NULL
);
VACUUM (ANALYZE) a;
CHECKPOINT;
