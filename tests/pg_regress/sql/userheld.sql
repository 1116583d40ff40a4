-- User-held keyrings: keys wrapped by the user's secret (Argon2id), unlocked per session.
BEGIN;
CREATE ROLE mk_uh_app IN ROLE meshhook_keys_user;
CREATE ROLE mk_uh_nobody;
GRANT USAGE ON SCHEMA meshhook_keys TO mk_uh_nobody;
SET LOCAL ROLE mk_uh_app;
SELECT keyring, version FROM meshhook_keys.keyring_create_user_held(keyring => 'user:mk_uh_app:vault', secret => 'alice-passphrase-1');
CREATE TEMP TABLE v (id int PRIMARY KEY, c bytea);
INSERT INTO v SELECT i, meshhook_keys.secret_encrypt('alice-' || i, 'v:' || i, 'user:mk_uh_app:vault') FROM generate_series(1, 5) i;
SELECT count(*) AS decrypts FROM v WHERE meshhook_keys.secret_decrypt(c, 'v:' || id) = 'alice-' || id;
RESET ROLE;
SELECT keyring, active_version, user_held, rotation_interval, tenant FROM meshhook_keys.keyrings WHERE keyring = 'user:mk_uh_app:vault';
-- what is stored: the Argon2id parameters and a random salt, never the secret
SELECT kdf ->> 'alg' AS alg, (kdf ->> 'm_cost')::int AS m_cost_kib, (kdf ->> 't_cost')::int AS t_cost,
       length(kdf ->> 'salt') AS salt_hex_chars, kdf::text LIKE '%alice-passphrase%' AS secret_stored
  FROM meshhook_keys.keyring WHERE name = 'user:mk_uh_app:vault';

-- locked: a clear error, for encryption and decryption alike
SET LOCAL ROLE mk_uh_app;
SELECT meshhook_keys.keyring_lock(keyring => 'user:mk_uh_app:vault') AS was_unlocked, meshhook_keys.keyring_lock('user:mk_uh_app:vault') AS again;
RESET ROLE;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'v:' || id) FROM v$$);
SELECT sqlstate_of($$SELECT meshhook_keys.secret_encrypt('x', '', 'user:mk_uh_app:vault')$$);
-- a wrong secret is refused after the full Argon2id cost (28P01); NULL and unknown keyrings too
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', 'not-the-passphrase')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:vault:nobody', 'whatever-secret')$$);
SELECT version FROM meshhook_keys.keys_rotate('plain-ring');
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('plain-ring', 'whatever-secret')$$);
SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', 'alice-passphrase-1') AS versions_unlocked;
SELECT count(*) AS decrypts FROM v WHERE meshhook_keys.secret_decrypt(c, 'v:' || id) = 'alice-' || id;

-- neither the admin nor the scheduler can rotate it: its keys change only with its secret
SELECT sqlstate_of($$SELECT meshhook_keys.keys_rotate('user:mk_uh_app:vault')$$);
SELECT meshhook_keys.keyring_set_policy('user:mk_uh_app:vault', interval '1 day');
UPDATE meshhook_keys.data_key SET activated_at = activated_at - interval '2 days' WHERE keyring = 'user:mk_uh_app:vault';
SELECT count(*) AS actions_on_vault FROM meshhook_keys.tick() WHERE keyring = 'user:mk_uh_app:vault';
SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'user:mk_uh_app:vault';

-- changing the secret: the old one is verified, the new one must differ, O(1) rewrap
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_rotate_secret('user:mk_uh_app:vault', 'alice-passphrase-1', 'alice-passphrase-1')$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_rotate_secret('user:mk_uh_app:vault', 'wrong-passphrase', 'alice-passphrase-2')$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_rotate_secret('user:mk_uh_app:vault', 'alice-passphrase-1', 'short')$$);
SELECT * FROM meshhook_keys.keyring_rotate_secret('user:mk_uh_app:vault', 'alice-passphrase-1', 'alice-passphrase-2');
SELECT meshhook_keys.keyring_lock('user:mk_uh_app:vault');
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', 'alice-passphrase-1')$$);
SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', 'alice-passphrase-2') AS versions_unlocked;
SELECT count(*) AS decrypts_after_rewrap FROM v WHERE meshhook_keys.secret_decrypt(c, 'v:' || id) = 'alice-' || id;

-- with reencrypt => true: a new data key, and every registered row re-encrypted in the same
-- transaction; identifiers do not change, so a parent/child pair stays linked
CREATE TABLE uh_parent (id int PRIMARY KEY, secret bytea NOT NULL);
CREATE TABLE uh_child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES uh_parent, secret bytea NOT NULL);
INSERT INTO uh_parent SELECT i, meshhook_keys.secret_encrypt('parent-' || i, 'p:' || i, 'user:mk_uh_app:vault') FROM generate_series(1, 20) i;
INSERT INTO uh_child SELECT i, 1 + i % 20, meshhook_keys.secret_encrypt('child-' || i, 'c:' || i, 'user:mk_uh_app:vault') FROM generate_series(1, 60) i;
SELECT meshhook_keys.register_column('uh_parent', 'secret', $$'p:' || id$$, 'user:mk_uh_app:vault') > 0 AS parent_registered,
       meshhook_keys.register_column('uh_child', 'secret', $$'c:' || id$$, 'user:mk_uh_app:vault') > 0 AS child_registered;
SELECT * FROM meshhook_keys.keyring_rotate_secret('user:mk_uh_app:vault', 'alice-passphrase-2', 'alice-passphrase-3', reencrypt => true);
SELECT k.version, count(*) FROM (SELECT secret FROM uh_parent UNION ALL SELECT secret FROM uh_child) r
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(r.secret) GROUP BY 1;
SELECT count(*) AS linked_and_decrypting FROM uh_child c JOIN uh_parent p ON p.id = c.parent_id
 WHERE meshhook_keys.secret_decrypt(c.secret, 'c:' || c.id) = 'child-' || c.id
   AND meshhook_keys.secret_decrypt(p.secret, 'p:' || p.id) = 'parent-' || p.id;
-- the unregistered temp table still decrypts with version 1 (kept, rewrapped under the new secret)
SELECT count(*) AS old_rows_decrypt FROM v WHERE meshhook_keys.secret_decrypt(c, 'v:' || id) = 'alice-' || id;
SELECT meshhook_keys.keyring_lock('user:mk_uh_app:vault');
SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', 'alice-passphrase-3') AS versions_unlocked;

-- audited, never with a secret
-- (the keyring_create row of mk_uh_app, a plain role, is written when this transaction commits, so
-- that an open transaction of a plain role never holds the audit chain lock: not visible here)
SELECT action, outcome, version, detail->>'user_held' AS user_held, detail->>'versions_rewrapped' AS rewrapped,
       detail->>'reencrypt' AS reencrypt, detail->>'rows_reencrypted' AS rows
  FROM meshhook_keys.audit_log WHERE keyring = 'user:mk_uh_app:vault' AND action IN ('keyring_create', 'rotate', 'rotate_secret') ORDER BY id;
SELECT count(*) AS audit_rows_with_a_secret FROM meshhook_keys.audit_log
 WHERE coalesce(reason, '') || detail::text LIKE '%passphrase%';

-- names cannot be squatted (issue 11, finding 5): user-held keyrings live under 'user:', and only
-- they do, so a user can take neither 'default' before its first use nor a tenant's future keyring
SET LOCAL ROLE mk_uh_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('default', 'squatter-secret')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('project:p3', 'squatter-secret')$$);
RESET ROLE;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create('user:ops-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_rotate('user:ops-ring')$$);
SELECT count(*) AS squatted FROM meshhook_keys.keyring WHERE name IN ('default', 'project:p3', 'user:ops-ring');
-- inside 'user:' a name is its creator's (issue 23): user:<role> or user:<role>:<anything>, or
-- user:<sub> with a JWT sub; nobody takes another user's name (42501), and one user holds at most
-- meshhook_keys.max_user_held_keyrings of them (53400)
SET LOCAL ROLE mk_uh_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('user:bob', 'squatter-secret')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('user:mk_uh_appx', 'squatter-secret')$$);
SET LOCAL request.jwt.claims = '{"sub": "bob", "role": "authenticated"}';
SELECT keyring FROM meshhook_keys.keyring_create_user_held('user:bob', 'bobs-own-secret');
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('user:mk_uh_app:second', 'squatter-secret')$$);
RESET request.jwt.claims;
RESET ROLE;
SET LOCAL meshhook_keys.max_user_held_keyrings = 2;
SET LOCAL ROLE mk_uh_app;
SELECT keyring FROM meshhook_keys.keyring_create_user_held('user:mk_uh_app:second', 'second-secret');
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('user:mk_uh_app:third', 'third-secret')$$);
RESET ROLE;
RESET meshhook_keys.max_user_held_keyrings;
-- an administrator shreds a keyring and reclaims its name
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_reclaim('user:bob')$$);
SELECT meshhook_keys.keyring_destroy('user:bob', 'test') AS destroyed;
SELECT meshhook_keys.keyring_reclaim('user:bob', 'give the name back') AS versions_deleted;
SELECT count(*) AS left_of_it FROM meshhook_keys.keyring WHERE name = 'user:bob';
SELECT action, reason FROM meshhook_keys.audit_log WHERE keyring = 'user:bob' ORDER BY id;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_reclaim('no-such-ring')$$);

-- only roles with meshhook_keys_user may use these functions
SET LOCAL ROLE mk_uh_nobody;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:mk_uh_app:vault', 'alice-passphrase-3')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create_user_held('user:vault:eve', 'eve-passphrase')$$);
RESET ROLE;
-- health() reports what would leak secrets into the log
SELECT item, status FROM meshhook_keys.health() WHERE item LIKE 'log%' ORDER BY 1;
SET LOCAL log_parameter_max_length_on_error = -1;
SET LOCAL log_statement = 'all';
SET LOCAL log_min_duration_statement = 0;
SELECT item, status, detail FROM meshhook_keys.health() WHERE item LIKE 'log%' AND status <> 'ok' ORDER BY 1;
-- ... with units read right, sampling, and per-role settings (issue 12, item 2)
RESET log_parameter_max_length_on_error;
RESET log_statement;
SET LOCAL log_min_duration_statement = '1s';
SET LOCAL log_transaction_sample_rate = 0.01;
SET LOCAL log_min_duration_sample = '250ms';
SET LOCAL log_statement_sample_rate = 0.5;
CREATE ROLE mk_uh_logged;
ALTER ROLE mk_uh_logged SET log_statement = 'all';
SELECT item, status, detail FROM meshhook_keys.health()
 WHERE item IN ('log_min_duration_statement', 'log_transaction_sample_rate', 'log_min_duration_sample', 'role_and_database_settings')
 ORDER BY 1;
SELECT item, status, detail LIKE 'loaded, fingerprint %, wraps all % data keys' AS matches_every_data_key
  FROM meshhook_keys.health() WHERE item = 'root_key';
ROLLBACK;
