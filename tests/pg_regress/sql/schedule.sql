-- Rotation policies, tick() as a SQL call, usage counting, failures and backoff.
BEGIN;
CREATE ROLE mk_sched_app IN ROLE meshhook_keys_user;
CREATE ROLE mk_sched_ops IN ROLE meshhook_keys_admin;

-- a new keyring gets meshhook_keys.default_rotation_interval (90 days) as its policy
SELECT version FROM meshhook_keys.keys_rotate('sched-a');
SELECT keyring, active_version, rotation_interval, max_encryptions, max_encryptions_set,
       next_rotation_at = activated_at + interval '90 days' AS next_in_90_days, failed_attempts
  FROM meshhook_keys.keyrings WHERE keyring = 'sched-a';

-- policies are validated, admin only, audited
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('sched-a', interval '-1 day')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('sched-a', interval '0')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('sched-a', NULL, 0)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('sched-a', NULL, 4294967296)$$);
-- (the table refuses it too, whoever writes it)
SELECT sqlstate_of($$UPDATE meshhook_keys.keyring SET max_encryptions = 4294967296 WHERE name = 'sched-a'$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy(NULL, NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('bad name', NULL)$$);
SET LOCAL ROLE mk_sched_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('sched-a', NULL)$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.tick()$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyrings$$);
RESET ROLE;
SET LOCAL ROLE mk_sched_ops;
SELECT meshhook_keys.keyring_set_policy('sched-a', interval '1 hour', 4294967295);
SELECT keyring, rotation_interval, max_encryptions, max_encryptions_set FROM meshhook_keys.keyrings WHERE keyring = 'sched-a';
SELECT meshhook_keys.keyring_set_policy('sched-a', NULL);
SELECT keyring, rotation_interval, next_rotation_at, max_encryptions_set FROM meshhook_keys.keyrings WHERE keyring = 'sched-a';
RESET ROLE;
SELECT action, outcome, keyring, detail FROM meshhook_keys.audit_log WHERE action = 'set_policy' ORDER BY id;

-- nothing is due: a tick does nothing
SELECT * FROM meshhook_keys.tick();

-- by age: an active key older than the interval is rotated by the next tick, and only once
SELECT version FROM meshhook_keys.keys_rotate('sched-age');
SELECT meshhook_keys.keyring_set_policy('sched-age', interval '1 day');
UPDATE meshhook_keys.data_key SET activated_at = activated_at - interval '2 days' WHERE keyring = 'sched-age';
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick();
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick();
SELECT keyring, active_version, next_rotation_at = activated_at + interval '1 day' AS next_in_1_day FROM meshhook_keys.keyrings WHERE keyring = 'sched-age';
SELECT actor, action, outcome, keyring, version, reason FROM meshhook_keys.audit_log
 WHERE keyring = 'sched-age' AND action = 'rotate' ORDER BY id;

-- by usage: encryptions are counted (in shared memory) and the tick rotates at max_encryptions
SELECT version FROM meshhook_keys.keys_rotate('sched-use');
SELECT meshhook_keys.keyring_set_policy('sched-use', NULL, 5);
SELECT count(meshhook_keys.secret_encrypt('u' || i, '', 'sched-use')) FROM generate_series(1, 4) i;
SELECT keyring, encryptions FROM meshhook_keys.keyrings WHERE keyring = 'sched-use';
SELECT keyring, action, outcome FROM meshhook_keys.tick();
SELECT count(meshhook_keys.secret_encrypt('u', '', 'sched-use'));
SELECT keyring, encryptions FROM meshhook_keys.keyrings WHERE keyring = 'sched-use';
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick();
SELECT keyring, active_version, encryptions FROM meshhook_keys.keyrings WHERE keyring = 'sched-use';

-- the hard ceiling (issue 24): whatever the policy and whether or not rotation happened, a key
-- refuses to encrypt past meshhook_keys.max_encryptions_ceiling (54000, with what to do); the
-- refused encryption is not counted, decryption goes on, and a new version starts from 0
SELECT version FROM meshhook_keys.keys_rotate('sched-ceil');
SET meshhook_keys.max_encryptions_ceiling = 3;
CREATE TABLE sched_ceil AS SELECT meshhook_keys.secret_encrypt('c' || i, '', 'sched-ceil') AS c FROM generate_series(1, 3) i;
SAVEPOINT ceiling;
SELECT meshhook_keys.secret_encrypt('one too many', '', 'sched-ceil');
ROLLBACK TO SAVEPOINT ceiling;
SELECT keyring, active_version, encryptions FROM meshhook_keys.keyrings WHERE keyring = 'sched-ceil';
SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, '') LIKE 'c%') AS decrypted FROM sched_ceil;
SELECT version FROM meshhook_keys.keys_rotate('sched-ceil');
SELECT length(meshhook_keys.secret_encrypt('fresh key', '', 'sched-ceil')) AS sealed;
-- re-encryption under a key at the ceiling is refused too: the column is marked failed, no row moves
SELECT meshhook_keys.register_column('sched_ceil', 'c', $$''$$, 'sched-ceil') > 0 AS registered;
SET meshhook_keys.max_encryptions_ceiling = 2;
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'sched-ceil';
SELECT state, sqlstate FROM meshhook_keys.reencrypt_progress WHERE keyring = 'sched-ceil';
SELECT k.version, count(*) FROM sched_ceil s JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.c) GROUP BY 1;
-- a user-held keyring obeys the same ceiling, with its own way out
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held('user:sched-ceil', 'user-held-secret-1');
SET meshhook_keys.max_encryptions_ceiling = 1;
SELECT length(meshhook_keys.secret_encrypt('u', '', 'user:sched-ceil')) AS sealed;
SAVEPOINT ceiling;
SELECT meshhook_keys.secret_encrypt('u', '', 'user:sched-ceil');
ROLLBACK TO SAVEPOINT ceiling;
RESET meshhook_keys.max_encryptions_ceiling;
-- only a superuser sets it
SET LOCAL ROLE mk_sched_ops;
SELECT sqlstate_of($$SET meshhook_keys.max_encryptions_ceiling = 2000000000$$);
RESET ROLE;

-- re-encryption is advanced by the tick, a bounded number of batches
CREATE TABLE sched_t (id int PRIMARY KEY, c bytea);
INSERT INTO sched_t SELECT i, meshhook_keys.secret_encrypt('s' || i, 'st:' || i, 'sched-a') FROM generate_series(1, 50) i;
SELECT meshhook_keys.register_column('sched_t', 'c', $$'st:' || id$$, 'sched-a') > 0 AS registered;
SELECT version FROM meshhook_keys.keys_rotate('sched-a');
SET LOCAL meshhook_keys.reencrypt_batch_size = 10;
SET LOCAL meshhook_keys.reencrypt_batches_per_tick = 2;
SET LOCAL meshhook_keys.reencrypt_batch_delay = 0;
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE action = 'reencrypt';
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE action = 'reencrypt';
SET LOCAL meshhook_keys.reencrypt_batches_per_tick = 100;
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE action = 'reencrypt';
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE action = 'reencrypt';
SELECT count(*) AS on_v2 FROM sched_t WHERE meshhook_keys.ciphertext_key_id(c) =
       (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'sched-a' AND version = 2);
SELECT DISTINCT actor FROM meshhook_keys.audit_log WHERE action LIKE 'reencrypt%' AND keyring = 'sched-a';

-- a failing step is audited with its error class, the others still run, and the keyring backs off
CREATE ROLE mk_sched_owner;
CREATE TABLE sched_forced (id int PRIMARY KEY, c bytea);
ALTER TABLE sched_forced OWNER TO mk_sched_owner;
INSERT INTO sched_forced SELECT i, meshhook_keys.secret_encrypt('f', '', 'sched-age') FROM generate_series(1, 5) i;
SELECT meshhook_keys.register_column('sched_forced', 'c', NULL, 'sched-age') > 0 AS registered;
ALTER TABLE sched_forced ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY none_visible ON sched_forced USING (false);
UPDATE meshhook_keys.data_key SET activated_at = activated_at - interval '2 days' WHERE keyring = 'sched-use' AND state = 'active';
SELECT meshhook_keys.keyring_set_policy('sched-use', interval '1 day', 5);
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() ORDER BY keyring, action;
SELECT keyring, failed_attempts, next_attempt_at > now() AS backing_off, last_error FROM meshhook_keys.keyrings
 WHERE keyring IN ('sched-age', 'sched-use') ORDER BY 1;
SELECT actor, action, outcome, keyring, detail->>'sqlstate' AS sqlstate, detail->>'error_class' AS class, detail->>'attempt' AS attempt
  FROM meshhook_keys.audit_log WHERE outcome = 'failed' ORDER BY id;
-- while backing off the keyring is left alone
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'sched-age';
-- fixed, and the backoff over: the next tick succeeds and clears the failure
ALTER TABLE sched_forced NO FORCE ROW LEVEL SECURITY;
UPDATE meshhook_keys.keyring SET next_attempt_at = now() - interval '1 second' WHERE name = 'sched-age';
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE keyring = 'sched-age';
SELECT keyring, failed_attempts, next_attempt_at, last_error FROM meshhook_keys.keyrings WHERE keyring = 'sched-age';

-- the tick that rotates a keyring also re-encrypts its rows (issue 12, item 6: they used to move only
-- one tick later, because the candidates were read with the snapshot of the tick() statement)
SELECT 1 FROM meshhook_keys.keyring_create('sched-same');
CREATE TABLE sched_same (id int PRIMARY KEY, c bytea);
INSERT INTO sched_same SELECT i, meshhook_keys.secret_encrypt('s' || i, i::text, 'sched-same') FROM generate_series(1, 30) i;
SELECT meshhook_keys.register_column('sched_same', 'c', 'id::text', 'sched-same') > 0 AS registered;
SELECT meshhook_keys.keyring_set_policy('sched-same', interval '1 hour');
UPDATE meshhook_keys.data_key SET activated_at = activated_at - interval '2 hours' WHERE keyring = 'sched-same';
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE keyring = 'sched-same' ORDER BY action DESC;
SELECT k.version, count(*) FROM sched_same s
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.c) GROUP BY 1;

-- how this database is served: the scheduler of this cluster runs in database postgres, and the
-- workers are paused here (worker_enabled = off), so no database worker has looked at it yet
SELECT counting_encryptions, usage_table_full, database, state FROM meshhook_keys.scheduler_status();
SET LOCAL ROLE mk_sched_app;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.scheduler_status()$$);
RESET ROLE;
ROLLBACK;
