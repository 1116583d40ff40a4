-- metrics(): what GET /metrics renders. Its values are the keyrings view's and the re-encryption
-- progress's, for operators only.
BEGIN;
CREATE ROLE mk_met_ops IN ROLE meshhook_keys_operator;
CREATE ROLE mk_met_app IN ROLE meshhook_keys_user;
SELECT keyring FROM meshhook_keys.keyring_create('met-a');
SELECT keyring FROM meshhook_keys.keyring_create('met-b');
SELECT meshhook_keys.keyring_set_policy('met-a', interval '7 days', 5000) AS policy_set;
SELECT meshhook_keys.keyring_set_policy('met-b', NULL) AS policy_set;
CREATE TABLE met_rows (id int PRIMARY KEY, c bytea);
INSERT INTO met_rows SELECT g, meshhook_keys.secret_encrypt('v' || g, '', 'met-a') FROM generate_series(1, 50) g;
SELECT meshhook_keys.register_column('met_rows', 'c', NULL, 'met-a') > 0 AS registered;
SELECT version FROM meshhook_keys.keys_rotate('met-a', 'metrics test');
SELECT meshhook_keys.reencrypt_batch('met-a', 20) AS moved;
SET LOCAL ROLE mk_met_ops;
CREATE TEMP TABLE m AS SELECT * FROM meshhook_keys.metrics();
-- per keyring, the same numbers as the keyrings view
SELECT m.metric, m.keyring, m.value FROM m
 WHERE m.keyring IN ('met-a', 'met-b') AND m.metric NOT IN ('meshhook_keys_key_age_seconds', 'meshhook_keys_rotation_due_in_seconds',
                                                          'meshhook_keys_reencrypt_rows_per_second', 'meshhook_keys_reencrypt_seconds_since_progress')
 ORDER BY m.keyring, m.metric;
SELECT abs(m.value - EXTRACT(epoch FROM k.active_age)) < 1 AS age_matches_view
  FROM m JOIN meshhook_keys.keyrings k USING (keyring) WHERE m.metric = 'meshhook_keys_key_age_seconds' AND m.keyring = 'met-a';
SELECT m.value BETWEEN 7 * 86400 - 60 AND 7 * 86400 AS due_in_about_a_week
  FROM m WHERE m.metric = 'meshhook_keys_rotation_due_in_seconds' AND m.keyring = 'met-a';
SELECT count(*) AS no_due_without_policy FROM m WHERE m.metric = 'meshhook_keys_rotation_due_in_seconds' AND m.keyring = 'met-b';
SELECT m.value = (SELECT sum(rows_remaining) FROM meshhook_keys.reencrypt_progress WHERE keyring = 'met-a' AND job_state = 'running') AS remaining_matches_progress
  FROM m WHERE m.metric = 'meshhook_keys_reencrypt_rows_remaining' AND m.keyring = 'met-a';
SELECT count(*) AS server_metrics FROM m WHERE m.keyring IS NULL AND m.metric IN ('meshhook_keys_scheduler_up', 'meshhook_keys_encryptions_counted');
RESET ROLE;
-- an application role may not read them
SET LOCAL ROLE mk_met_app;
SELECT sqlstate_of('SELECT * FROM meshhook_keys.metrics()');
RESET ROLE;
ROLLBACK;
