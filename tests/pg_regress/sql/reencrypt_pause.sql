-- Pausing re-encryption (issue 29): reencrypt_pause makes the scheduler skip a keyring's
-- re-encryption, keeping its job and cursor; reencrypt_resume takes it up where it stopped; an
-- operator's own batch still runs while it is paused. Both audited, operators only.
BEGIN;
CREATE ROLE mk_rp_user IN ROLE meshhook_keys_user;
SELECT 1 FROM meshhook_keys.keys_rotate('rp-ring', 'version 1');
CREATE TABLE rp_t (id int PRIMARY KEY, c bytea NOT NULL);
INSERT INTO rp_t SELECT i, meshhook_keys.secret_encrypt('rp' || i, '', 'rp-ring') FROM generate_series(1, 50) i;
SELECT meshhook_keys.register_column('rp_t', 'c', NULL, 'rp-ring') > 0 AS registered;
SELECT 1 FROM meshhook_keys.keys_rotate('rp-ring', 'version 2');
SELECT meshhook_keys.reencrypt_pause('rp-ring', 'maintenance window') AS paused;
SELECT meshhook_keys.reencrypt_pause('rp-ring') AS paused_again;
SELECT reencrypt_paused FROM meshhook_keys.keyrings WHERE keyring = 'rp-ring';
-- the scheduler skips it: no re-encryption action, every row still on version 1
SELECT count(*) AS reencrypt_actions FROM meshhook_keys.tick() WHERE keyring = 'rp-ring' AND action = 'reencrypt';
SELECT version, rows FROM meshhook_keys.key_usage('rp-ring') WHERE rows > 0 ORDER BY 1;
-- an operator's own batch still runs
SELECT meshhook_keys.reencrypt_batch('rp-ring', 20) AS moved;
SELECT version, rows FROM meshhook_keys.key_usage('rp-ring') WHERE rows > 0 ORDER BY 1;
SELECT count(*) AS reencrypt_actions FROM meshhook_keys.tick() WHERE keyring = 'rp-ring' AND action = 'reencrypt';
-- resumed: the scheduler takes it up from where it stopped
SELECT meshhook_keys.reencrypt_resume('rp-ring', 'window over') AS resumed;
SELECT meshhook_keys.reencrypt_resume('rp-ring') AS resumed_again;
SELECT count(*) > 0 AS reencrypt_actions FROM meshhook_keys.tick() WHERE keyring = 'rp-ring' AND action = 'reencrypt';
SELECT version, rows FROM meshhook_keys.key_usage('rp-ring') WHERE rows > 0 ORDER BY 1;
SELECT reencrypt_paused FROM meshhook_keys.keyrings WHERE keyring = 'rp-ring';
-- audited, with whether it changed anything
SELECT action, outcome, reason, detail ->> 'changed' AS changed FROM meshhook_keys.audit_log
 WHERE keyring = 'rp-ring' AND action LIKE 'reencrypt_p%' OR keyring = 'rp-ring' AND action LIKE 'reencrypt_r%' ORDER BY id;
-- refused: an unknown keyring, NULL, and a role that is not an operator (audited)
SELECT sqlstate_of($$SELECT meshhook_keys.reencrypt_pause('no-such-keyring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.reencrypt_pause(NULL)$$);
SET LOCAL ROLE mk_rp_user;
SELECT sqlstate_of($$SELECT meshhook_keys.reencrypt_pause('rp-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.reencrypt_resume('rp-ring')$$);
RESET ROLE;
SELECT reencrypt_paused FROM meshhook_keys.keyrings WHERE keyring = 'rp-ring';
ROLLBACK;
