-- The markdown body of the report (run.sh prints the header). Run with psql -X -q -At.
-- psql variables: runs, rot_runs, pgp_label, keyrings_label, large_label, rows, app_secs, app_runs.

\echo '## 1. Per-call cost'
\echo
\echo 'Full scans, `SELECT sum(<expression>) FROM <table>`, one psql session per run, each query warmed up'
\echo 'in that session first; `jit = off`, `max_parallel_workers_per_gather = 0` (every function runs on'
\echo 'one core, so µs/row is the per-call cost). Median over' :runs 'runs, min – max in the same unit.'
\echo 'Floor: the same scan summing the stored ciphertext length, no crypto. "Added" = median − floor'
\echo 'median; "× floor" = median (min, max) / floor median.'
\echo
\echo '| Query | Rows | Median µs/row | Min – max µs/row | Added over floor, µs/row | × floor, median (min – max) |'
\echo '|---|---:|---:|---:|---:|---:|'
WITH per_run AS (
    SELECT q.ord, q.name, q.nrows, q.floor_name, t.ms * 1000.0 / q.nrows AS us
      FROM bench_timing t JOIN bench_query q ON q.name = t.name
     WHERE t.section = 'percall' AND t.run > 0
), stats AS (
    SELECT ord, name, nrows, floor_name,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY us) AS med, min(us) AS lo, max(us) AS hi
      FROM per_run GROUP BY ord, name, nrows, floor_name
)
SELECT format('| %s | %s | %s | %s – %s | %s | %s× (%s – %s) |',
              s.name, to_char(s.nrows, 'FM999,999,999'), fmt(s.med), fmt(s.lo), fmt(s.hi),
              fmt(s.med - f.med), fmt(s.med / f.med), fmt(s.lo / f.med), fmt(s.hi / f.med))
  FROM stats s JOIN stats f ON f.name = s.floor_name
 ORDER BY s.ord;
\echo
\echo 'Notes: every row of `t` holds the same 100-character random secret encrypted four ways, so all'
\echo 'scans of `t` read the same heap. `pgp_sym_encrypt` with default options (iterated and salted S2K'
\echo 'with a random count per message: slow to encrypt and to decrypt) is measured on a subset table'
\echo '`t_pgp` holding the first' :pgp_label 'secrets of `t`, against the floor of that table.'
\echo '`meshhook_keys.secret_encrypt` writes nothing: the scan only computes the envelopes (random'
\echo 'nonce, AES-256-GCM under the cached data key).'
\echo

\echo '### 1b. Parallel decryption'
\echo
\echo 'The decrypt scan of section 1 (`secret_decrypt` is `PARALLEL SAFE`) on one core and with 2 parallel'
\echo 'workers plus the leader (`max_parallel_workers_per_gather = 2`, setup and tuple costs 0), each'
\echo 'with its floor, in one session per run; median over' :runs 'runs. The machine has' :cores 'cores: the'
\echo 'speed-up is bounded by them and by what else runs.'
\echo
\echo '| Query | Median ms | Min – max ms | × 1 core |'
\echo '|---|---:|---:|---:|'
WITH stats AS (
    SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS med, min(ms) AS lo, max(ms) AS hi
      FROM bench_timing WHERE section = 'parallel' AND run > 0 AND name <> 'warm-up' GROUP BY name
)
SELECT format('| %s | %s | %s – %s | %s× |', s.name, fmt(s.med), fmt(s.lo), fmt(s.hi),
              fmt(o.med / s.med))
  FROM stats s JOIN stats o ON o.name = split_part(s.name, ',', 1) || ', 1 core'
 ORDER BY s.name LIKE 'floor%' DESC, s.name LIKE '%1 core' DESC;
\echo

\echo '## 2. Re-encryption throughput'
\echo
\echo 'Rewriting all' :rows 'stored secrets of 100 bytes, each method timed alone after `VACUUM` and'
\echo '`CHECKPOINT`, median over' :runs 'runs (min – max). Floor: `UPDATE t SET c = c || ''''::bytea`, the physical'
\echo 'cost of rewriting every row in the database. meshhook_keys: `keys_rotate`, then `CALL reencrypt`'
\echo '(one transaction per batch, each a plain `UPDATE` of a window of blocks whose row lock and recheck are the compare-and-set, claiming `FOR UPDATE SKIP LOCKED` only for a held row; batches commit with `synchronous_commit = off` and the final commit waits for all of them).'
\echo 'pgcrypto: a single `UPDATE` decrypting and re-encrypting every row, locking all rows until it commits.'
\echo
\echo '| Method | Median rows/s | Min – max rows/s | × floor rows/s | WAL MiB (median) | × floor WAL |'
\echo '|---|---:|---:|---:|---:|---:|'
WITH r AS (
    SELECT t.name, :rows / (t.ms / 1000.0) AS rps
      FROM bench_timing t WHERE t.section = 'reencrypt' AND t.run > 0
), s AS (
    SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY rps) AS med, min(rps) AS lo, max(rps) AS hi
      FROM r GROUP BY name
), w AS (
    SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY bytes) AS wal FROM bench_wal GROUP BY name
), f AS (
    SELECT s.med, w.wal FROM s JOIN w USING (name) WHERE name LIKE 'floor%'
)
SELECT format('| %s | %s | %s – %s | %s× | %s | %s× |', s.name, fmt(s.med), fmt(s.lo), fmt(s.hi),
              fmt(s.med / f.med), fmt((w.wal / 1048576.0)::float8), fmt((w.wal / f.wal)::float8))
  FROM s JOIN w USING (name), f
 ORDER BY CASE WHEN s.name LIKE 'floor%' THEN 0 ELSE 1 END, s.name;
\echo

\echo '### 2b. One batch does not rescan the table'
\echo
\echo '`reencrypt_batch(keyring, 1000)` timed 8 times each (one transaction each): in a 10,000-row table,'
\echo 'at the start of the large table (' :rows 'rows), and near its end. If batches rescanned the table the last'
\echo 'ones would be the slowest; they read a window of blocks behind a persistent cursor instead.'
\echo
\echo '| Where | Median ms per batch | Min – max ms | × the small table |'
\echo '|---|---:|---:|---:|'
WITH s AS (
    SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS med, min(ms) AS lo, max(ms) AS hi
      FROM bench_timing WHERE section = 'batchcost' AND name NOT IN ('warm-up', 'skip') GROUP BY name
)
SELECT format('| %s | %s | %s – %s | %s× |', s.name, fmt(s.med), fmt(s.lo), fmt(s.hi), fmt(s.med / b.med))
  FROM s, s b WHERE b.name LIKE 'small%'
 ORDER BY CASE WHEN s.name LIKE 'small%' THEN 0 WHEN s.name LIKE '%first%' THEN 1 ELSE 2 END;
\echo

\echo '## 3. Application impact'
\echo
\echo 'pgbench, 4 clients, 2 threads, prepared statements, ' :app_secs 's per scenario,' :app_runs 'runs (median, min – max).'
\echo 'Each transaction of `bench/app.pgbench` reads and decrypts one random secret, then encrypts and'
\echo 'updates another (each statement its own transaction), on the same' :rows 'rows. Scenarios: alone'
\echo '("quiet"); while re-encryption runs in the background as the scheduler runs it by default (a tick'
\echo 'of at most 100 batches of 1000 rows, 10 ms apart, every minute: the window starts with a tick);'
\echo 'while re-encryption runs continuously (the same batches 10 ms apart with no pause between ticks,'
\echo 'rotating again whenever every row is on the active key: the worst case); while a'
\echo 'one-statement pgcrypto rewrap runs the whole time (`UPDATE a SET p = encrypt_iv(decrypt_iv(p, …))`'
\echo 'of every row, back to back, each holding every row lock until it commits); and while the real'
\echo 'scheduler re-encrypts continuously (a tick every second, a rotation whenever the job is done), pacing'
\echo 'itself while the application runs (`meshhook_keys.reencrypt_busy_share` at its default, 0.02). Latencies from'
\echo 'pgbench''s per-transaction log; lock waits are the waits longer than `deadlock_timeout` (100 ms)'
\echo 'that the server logged (`log_lock_waits`).'
\echo
\echo '| Scenario | TPS median (min – max) | × quiet TPS | p50 ms | p99 ms | × quiet p99 | max ms | lock waits > 100 ms |'
\echo '|---|---:|---:|---:|---:|---:|---:|---:|'
CREATE TEMP VIEW app_summary AS
    SELECT scenario, min(clients) AS clients,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY tps) AS tps, min(tps) AS tps_lo, max(tps) AS tps_hi,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY p50_ms) AS p50,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY p99_ms) AS p99,
           max(max_ms) AS mx, sum(lock_waits) AS waits, sum(errors) AS errors, sum(deadlocks) AS deadlocks,
           sum(rotations) AS rotations, sum(rows_reencrypted) AS moved
      FROM bench_app GROUP BY scenario;
SELECT format('| %s | %s (%s – %s) | %s× | %s | %s | %s× | %s | %s |', s.scenario, fmt(s.tps), fmt(s.tps_lo), fmt(s.tps_hi),
              fmt(s.tps / q.tps), fmt(s.p50), fmt(s.p99), fmt(s.p99 / q.p99), fmt(s.mx), s.waits)
  FROM app_summary s, app_summary q WHERE q.scenario = 'quiet' AND s.clients = 4
 ORDER BY CASE s.scenario WHEN 'quiet' THEN 0 WHEN 'during re-encryption, scheduler defaults' THEN 1
                         WHEN 'during continuous re-encryption' THEN 2
                         WHEN 'during continuous re-encryption by the scheduler (paced)' THEN 3 ELSE 4 END;
\echo

\echo '### 3c. Eight clients while a key is rotated every second'
\echo
\echo 'The same application at 8 clients (2 threads),' :app_secs 's per scenario,' :app_runs 'runs: alone, and while'
\echo '`keys_rotate(''app'', …)` runs once a second (its own session and transaction each time) and'
\echo 're-encryption runs the whole time, each rotation superseding the running job: a loop of'
\echo '`reencrypt_batch(''app'', 1000)` 10 ms apart, or the scheduler (a tick every second, paced). Errors: every `ERROR` the server logged meanwhile (the application''s,'
\echo 'the rotations'', the batches''), pgbench''s failed transactions and aborted clients, and failed'
\echo 'rotations; deadlocks: the server''s `deadlock detected`. Target: at least 0.8× the TPS of the same'
\echo 'clients alone, 0 errors, 0 deadlocks.'
\echo
\echo '| Scenario | TPS median (min – max) | × alone TPS | p50 ms | p99 ms | × alone p99 | errors | deadlocks | rotations | rows re-encrypted |'
\echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
SELECT format('| %s | %s (%s – %s) | %s× | %s | %s | %s× | %s | %s | %s | %s |', s.scenario, fmt(s.tps), fmt(s.tps_lo),
              fmt(s.tps_hi), fmt(s.tps / q.tps), fmt(s.p50), fmt(s.p99), fmt(s.p99 / q.p99), s.errors, s.deadlocks,
              s.rotations, s.moved)
  FROM app_summary s, app_summary q WHERE q.scenario = '8 clients alone' AND s.clients = 8
 ORDER BY s.scenario <> q.scenario, s.scenario;
\echo

\echo '## 4. Rotation cost does not grow with data'
\echo
\echo '`SELECT meshhook_keys.keys_rotate(''default'', ...)`, each in its own transaction (autocommit,'
\echo 'durable commit included): after a `CHECKPOINT`, one warm-up rotation then' :rot_runs 'timed ones in one'
\echo 'session (at least 25 whatever `--runs` is: each takes about a millisecond, so a few samples are'
\echo 'all noise). Measured first when 1,000 secrets are stored, then again after section 1 loaded'
\echo :large_label 'secrets.'
\echo
\echo '| Stored secrets | Median ms | Min – max ms | × the 1,000-secret median |'
\echo '|---:|---:|---:|---:|'
WITH stats AS (
    SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS med, min(ms) AS lo, max(ms) AS hi
      FROM bench_timing WHERE section = 'rotate' AND run > 0 GROUP BY name
)
SELECT format('| %s | %s | %s – %s | %s× |', s.name, fmt(s.med), fmt(s.lo), fmt(s.hi), fmt(s.med / small.med))
  FROM stats s, stats small
 WHERE small.name = '1,000'
 ORDER BY s.name = '1,000' DESC;
\echo
\echo 'A rotation inserts one wrapped data key and one audit row; it reads no user rows, so the ratio'
\echo 'should be 1× within noise (commit fsync dominates the absolute number).'
\echo

\echo '### 4b. Root key rotation with' :nkeys 'data keys'
\echo
\echo '`root_key_rewrap()` after section 5 created its 10,000 keyrings: every data key unwrapped with the'
\echo 'previous root key and wrapped with the new one, in one transaction, twice (to a new root key each'
\echo 'time). It touches no user row.'
\echo
\echo '| Data keys | Median ms | Min – max ms | µs per key |'
\echo '|---:|---:|---:|---:|'
SELECT format('| %s | %s | %s – %s | %s |', to_char(:nkeys, 'FM999,999,999'),
              fmt(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)), fmt(min(ms)), fmt(max(ms)),
              fmt(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) * 1000.0 / :nkeys))
  FROM bench_timing WHERE section = 'rewrap';
\echo

\echo '## 5. Memory'
\echo
SELECT current_setting('meshhook_keys.key_cache_size') AS cache_size \gset
\echo 'One fresh backend decrypts one ciphertext under each of' :keyrings_label 'distinct data keys (one'
\echo 'keyring each), with `meshhook_keys.key_cache_size` =' :cache_size '(the default is 1000). Snapshots'
\echo 'of that backend: VmRSS, its peak VmHWM and VmRSS''s anonymous (RssAnon) and shared-memory (RssShmem)'
\echo 'parts from `/proc/<pid>/status`, and `sum(total_bytes)` of `pg_backend_memory_contexts`. The key'
\echo 'cache is Rust heap (malloc), outside the memory contexts: only RssAnon sees it. RssShmem grows as'
\echo 'the backend touches shared buffers, which is not memory of its own.'
\echo
\echo '| Step | Keys in cache | Cache misses | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssShmem MiB | Memory contexts MiB |'
\echo '|---|---:|---:|---:|---:|---:|---:|---:|'
SELECT format('| %s | %s | %s | %s | %s | %s | %s | %s |', label, to_char(cached_keys, 'FM999,999,999'), to_char(misses, 'FM999,999,999'),
              fmt(vmrss_kb / 1024.0), fmt(vmhwm_kb / 1024.0), fmt(rssanon_kb / 1024.0),
              fmt(rssshmem_kb / 1024.0), fmt(context_bytes / 1048576.0))
  FROM bench_memory ORDER BY step;
\echo
SELECT format('RssAnon growth: %s MiB from the fresh backend to %s distinct keys; %s MiB from 1,000 to %s keys'
              '; %s MiB during the second pass. VmRSS: %s MiB before, %s MiB after.',
              fmt((a.rssanon_kb - f.rssanon_kb) / 1024.0), :'keyrings_label',
              fmt((a.rssanon_kb - k.rssanon_kb) / 1024.0), :'keyrings_label',
              fmt((b.rssanon_kb - a.rssanon_kb) / 1024.0),
              fmt(f.vmrss_kb / 1024.0), fmt(b.vmrss_kb / 1024.0))
  FROM bench_memory f, bench_memory k, bench_memory a, bench_memory b
 WHERE f.step = 0 AND k.step = 2 AND a.step = 3 AND b.step = 4;
