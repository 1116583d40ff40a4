-- The meshhook_keys demo, run by scripts/demo.sh against a fresh database.
\pset footer off
\set VERBOSITY default
\set ON_ERROR_STOP 0

\echo '\n## 1. Install the extension (roles meshhook_keys_user / _operator / _admin are created if missing)'
CREATE EXTENSION meshhook_keys;
\dx meshhook_keys

\echo '\n## 2. An app role (encrypts and decrypts) and an ops role (rotates, never decrypts)'
CREATE ROLE demo_app LOGIN IN ROLE meshhook_keys_user;
CREATE ROLE demo_ops LOGIN IN ROLE meshhook_keys_operator;

\echo '\n## 3. Two tenants store third-party credentials; the context binds each ciphertext to its row'
CREATE TABLE tenant_secret (
    tenant  text  NOT NULL,
    name    text  NOT NULL,
    secret  bytea NOT NULL,
    PRIMARY KEY (tenant, name)
);
GRANT SELECT, INSERT ON tenant_secret TO demo_app;
GRANT SELECT ON tenant_secret TO demo_ops;

SET ROLE demo_app;
INSERT INTO tenant_secret (tenant, name, secret) VALUES
    ('acme',   'stripe_api_key', meshhook_keys.secret_encrypt('sk_live_acme_0001',   'acme/stripe_api_key')),
    ('acme',   'github_webhook', meshhook_keys.secret_encrypt('whsec_acme_0002',     'acme/github_webhook')),
    ('globex', 'slack_token',    meshhook_keys.secret_encrypt('xoxb-globex-0003',    'globex/slack_token'));
RESET ROLE;
\echo 'What is stored (first bytes of each envelope: format 01, then the 8-byte key id):'
SELECT tenant, name, length(secret) AS bytes,
       encode(substring(secret from 1 for 9), 'hex') AS header,
       meshhook_keys.ciphertext_key_id(secret) AS key_id
  FROM tenant_secret ORDER BY tenant, name;

\echo '\n## 4. Ops rotates the default keyring (O(1): no user row is touched)'
SET ROLE demo_ops;
SELECT keyring, version, key_id FROM meshhook_keys.keys_rotate('default', 'demo: quarterly rotation');
\echo 'Rotating is not decrypting: ops can read the envelopes but not open them (the ERROR below is expected)'
SELECT meshhook_keys.secret_decrypt(secret, tenant || '/' || name) FROM tenant_secret LIMIT 1;
RESET ROLE;

\echo '\n## 5. New writes use version 2 at once; rows written before stay on version 1'
SET ROLE demo_app;
INSERT INTO tenant_secret (tenant, name, secret) VALUES
    ('globex', 'openai_key', meshhook_keys.secret_encrypt('sk-globex-0004', 'globex/openai_key'));
RESET ROLE;
-- each row with the key version that encrypted it, decrypted with its context
CREATE VIEW demo_status AS
SELECT t.tenant, t.name, k.version AS key_version,
       meshhook_keys.secret_decrypt(t.secret, t.tenant || '/' || t.name) AS decrypted
  FROM tenant_secret t
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(t.secret);
SELECT * FROM demo_status ORDER BY tenant, name;

\echo '\n## 6. A ciphertext copied into another tenant''s row does not decrypt there (the ERROR below is expected)'
SELECT meshhook_keys.secret_decrypt(secret, 'globex/stripe_api_key')
  FROM tenant_secret WHERE tenant = 'acme' AND name = 'stripe_api_key';

\echo '\n## 7. The app role cannot rotate: refused with 42501 (the ERROR below is expected) and audited'
SET ROLE demo_app;
SELECT meshhook_keys.keys_rotate('default', 'not allowed');
RESET ROLE;
-- the refusal is written by a short-lived background worker in its own transaction
SELECT pg_sleep(0.2) FROM generate_series(1, 25)
 WHERE NOT EXISTS (SELECT 1 FROM meshhook_keys.audit_log WHERE outcome = 'refused') LIMIT 1 \g /dev/null

\echo '\n## 8. Re-encrypt the stored rows to version 2, online, then retire version 1'
-- register where ciphertext lives and how each row's context is rebuilt (the table owner does this)
SELECT meshhook_keys.register_column('tenant_secret', 'secret', $$tenant || '/' || name$$) > 0 AS registered;
CALL meshhook_keys.reencrypt('default');
SET ROLE demo_ops;
SELECT table_name, column_name, state, rows_total, rows_done, rows_failed
  FROM meshhook_keys.reencrypt_progress WHERE table_name = 'tenant_secret'::regclass;
SELECT table_name, column_name, version, state, rows FROM meshhook_keys.key_usage('default')
 WHERE table_name = 'tenant_secret'::regclass;
SELECT meshhook_keys.keys_retire('default', 1) AS version_1_retired;
RESET ROLE;
SELECT * FROM demo_status ORDER BY tenant, name;

\echo '\n## 9. Scheduled rotation: a keyring that rotates every 5 seconds, driven by the background worker'
CREATE TABLE webhook_secret (id int PRIMARY KEY, secret bytea NOT NULL);
SELECT version FROM meshhook_keys.keys_rotate('webhooks', 'demo: first key');
INSERT INTO webhook_secret SELECT i, meshhook_keys.secret_encrypt('whsec_' || i, 'webhook/' || i, 'webhooks')
  FROM generate_series(1, 2000) i;
SELECT meshhook_keys.register_column('webhook_secret', 'secret', $$'webhook/' || id$$, 'webhooks') > 0 AS registered;
SELECT meshhook_keys.keyring_set_policy('webhooks', interval '5 seconds');
-- the worker was paused for the steps above (meshhook_keys.worker_enabled = off in postgresql.conf)
ALTER SYSTEM SET meshhook_keys.worker_enabled = on;
SELECT pg_reload_conf();
\echo 'Waiting (at most 60 s) until the worker has rotated "webhooks" and moved every row to the new version...'
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '60 seconds';
BEGIN
    LOOP
        EXIT WHEN (SELECT active_version FROM meshhook_keys.keyrings WHERE keyring = 'webhooks') >= 2
              AND NOT EXISTS (SELECT 1 FROM webhook_secret
                               WHERE meshhook_keys.ciphertext_key_id(secret) <>
                                     (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'webhooks' AND state = 'active'));
        IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'the scheduler did not rotate and re-encrypt within 60 s'; END IF;
        PERFORM pg_sleep(0.2);
    END LOOP;
END $$;
-- back to a calm policy, so the demo cluster does not keep rotating every 5 seconds
SELECT meshhook_keys.keyring_set_policy('webhooks', interval '30 days');
SELECT keyring, active_version, rotation_interval, next_rotation_at IS NOT NULL AS scheduled, encryptions, max_encryptions
  FROM meshhook_keys.keyrings WHERE keyring = 'webhooks';
SELECT count(*) AS webhook_secrets_decrypting FROM webhook_secret
 WHERE meshhook_keys.secret_decrypt(secret, 'webhook/' || id) = 'whsec_' || id;
SELECT state, pid IS NOT NULL AS running, ticks > 0 AS has_ticked FROM meshhook_keys.scheduler_status();

\echo '\n## 10. Key versions (metadata only: key material never leaves the extension)'

SELECT keyring, version, state, activated_at IS NOT NULL AS activated FROM meshhook_keys.keys ORDER BY keyring, version;

\echo '\n## 11. The audit log (append-only, hash-chained, also written to the server log)'
SELECT id, actor, role_name, action, outcome, keyring, version, coalesce(reason, detail::text) AS reason_or_detail
  FROM meshhook_keys.audit_log ORDER BY id;
SELECT * FROM meshhook_keys.audit_verify();
\echo 'Trying to rewrite history (the ERROR below is expected):'
DELETE FROM meshhook_keys.audit_log;
