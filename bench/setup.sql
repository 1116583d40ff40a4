-- Benchmark database objects, and the 1,000 secrets that section 4 rotates against first.
-- Runs once, in the throwaway database `bench`, as the superuser.

CREATE EXTENSION meshhook_keys;
CREATE EXTENSION pgcrypto;

-- Every timed statement: run 0 is the pre-warm pass and is not counted.
CREATE TABLE bench_timing (
    section text   NOT NULL,   -- 'percall' | 'rotate'
    name    text   NOT NULL,   -- bench_query.name, or the rotation label
    run     int    NOT NULL,
    ms      float8 NOT NULL    -- psql \timing: client-observed wall time of the statement
);

-- Section 5: one row per memory snapshot of the measuring backend.
CREATE TABLE bench_memory (
    step           int PRIMARY KEY,
    label          text   NOT NULL,
    distinct_keys  int    NOT NULL,   -- distinct data keys decrypted with so far in this backend
    cached_keys    bigint,
    misses         bigint,
    vmrss_kb       bigint,
    vmhwm_kb       bigint,
    rssanon_kb     bigint,
    rssshmem_kb    bigint,
    context_bytes  bigint
);

-- The current backend's memory, as seen by the kernel and by PostgreSQL's memory contexts.
-- pg_read_file on /proc needs a superuser, which the harness is.
CREATE VIEW bench_memory_now AS
SELECT (SELECT cached_keys FROM meshhook_keys._key_cache_stats())                AS cached_keys,
       (SELECT misses FROM meshhook_keys._key_cache_stats())                     AS misses,
       substring(s FROM 'VmRSS:\s+(\d+) kB')::bigint                             AS vmrss_kb,
       substring(s FROM 'VmHWM:\s+(\d+) kB')::bigint                             AS vmhwm_kb,
       substring(s FROM 'RssAnon:\s+(\d+) kB')::bigint                           AS rssanon_kb,
       substring(s FROM 'RssShmem:\s+(\d+) kB')::bigint                          AS rssshmem_kb,
       (SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts)         AS context_bytes
  FROM pg_read_file('/proc/' || pg_backend_pid() || '/status') AS s;

-- Number formatting for the report: about three significant digits.
CREATE FUNCTION fmt(x float8) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN x IS NULL THEN 'n/a'
                WHEN abs(x) < 10 THEN to_char(x, 'FM9990.000')
                WHEN abs(x) < 100 THEN to_char(x, 'FM9990.00')
                WHEN abs(x) < 1000 THEN to_char(x, 'FM9990.0')
                ELSE to_char(x, 'FM999,999,999,990') END
$$;

-- Section 4, first measurement: only these 1,000 secrets exist (this also creates the `default`
-- keyring on first use).
CREATE TABLE secrets_1k AS
SELECT i AS id, meshhook_keys.secret_encrypt(encode(gen_random_bytes(50), 'hex')) AS c
  FROM generate_series(1, 1000) AS i;

-- Section 2: WAL written by each timed rewrite.
CREATE TABLE bench_wal (
    name   text    NOT NULL,
    run    int     NOT NULL,
    bytes  numeric NOT NULL
);
