-- Keyring export and import (issue 28), within one database: what is refused, tampering, and a
-- round trip through destroy + reclaim (the two-cluster round trip with different root keys is
-- tests/client/transfer.sh).
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('moving', 'version 1');
CREATE TABLE moving_secret (id int PRIMARY KEY, c bytea NOT NULL);
INSERT INTO moving_secret SELECT i, meshhook_keys.secret_encrypt('secret ' || i, 'row:' || i, 'moving') FROM generate_series(1, 10) i;
SELECT 1 FROM meshhook_keys.keys_rotate('moving', 'version 2');
INSERT INTO moving_secret SELECT i, meshhook_keys.secret_encrypt('secret ' || i, 'row:' || i, 'moving') FROM generate_series(11, 20) i;
SELECT 1 FROM meshhook_keys.keys_rotate('moving', 'version 3');
SELECT meshhook_keys.keys_retire('moving', 1, true) AS retired;
SELECT meshhook_keys.keyring_set_policy('moving', interval '45 days', 1000000) IS NOT NULL AS policy_set;
-- (key ids are random: shown as N)
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE sql AS $$ SELECT regexp_replace(sqlstate_of(q), '[0-9]{6,}', 'N', 'g') $$;
CREATE TEMP TABLE wk AS SELECT decode(repeat('5a', 32), 'hex') AS k, decode(repeat('a5', 32), 'hex') AS other;
CREATE TEMP TABLE exported AS SELECT meshhook_keys.keyring_export('moving', k) AS b FROM wk;
-- the header is readable (magic, length, JSON) and lists every version, with no key material
SELECT substr(b, 1, 8) = 'MHKEXP01'::bytea AS magic,
       (convert_from(substr(b, 13, get_byte(b, 11) + 256 * get_byte(b, 10)), 'UTF8')::jsonb) #> '{versions}' @> '[{"version": 1, "state": "retired"}, {"version": 3, "state": "active"}]' AS lists_versions,
       (convert_from(substr(b, 13, get_byte(b, 11) + 256 * get_byte(b, 10)), 'UTF8')::jsonb) ->> 'rotation_interval' AS rotation_interval
  FROM exported;
-- the export is audited (with how many keys it handed out), durably: checked after the rollback

-- tampering, another wrapping key, garbage: refused (XX001), nothing imported
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_import(overlay(b placing '\x00'::bytea from length(b) - 3), (SELECT k FROM wk), 'copy') FROM exported$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_import(overlay(b placing '\x21'::bytea from 20), (SELECT k FROM wk), 'copy') FROM exported$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_import(b, (SELECT other FROM wk), 'copy') FROM exported$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_import('\x0102'::bytea, (SELECT k FROM wk))$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_import(substr(b, 1, 40), (SELECT k FROM wk)) FROM exported$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('moving', '\x00'::bytea)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('moving', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('no-such-keyring', (SELECT k FROM wk))$$);
-- into the database it came from: its name and its key ids are taken (42710)
SELECT pg_temp.err($$SELECT meshhook_keys.keyring_import(b, (SELECT k FROM wk)) FROM exported$$);
SELECT pg_temp.err($$SELECT meshhook_keys.keyring_import(b, (SELECT k FROM wk), 'copy') FROM exported$$);
SELECT count(*) AS nothing_imported FROM meshhook_keys.keyrings WHERE keyring = 'copy';

-- round trip: the keyring is destroyed and its name reclaimed (its rows gone), then imported from
-- the bundle: every ciphertext decrypts again, the retired version stays refused, versions,
-- states, policy and usage counts are the source's
CREATE TEMP TABLE before AS SELECT version, key_id, state, encryptions FROM meshhook_keys.data_key WHERE keyring = 'moving';
SELECT meshhook_keys.keyring_destroy('moving', 'moving away') AS destroyed;
SELECT meshhook_keys.keyring_reclaim('moving', 'moving away') AS reclaimed;
SELECT * FROM meshhook_keys.keyring_import((SELECT b FROM exported), (SELECT k FROM wk));
SELECT k.version, k.state, k.key_id = b.key_id AS same_key_id, k.encryptions = b.encryptions AS same_count
  FROM meshhook_keys.data_key k JOIN before b USING (version) WHERE k.keyring = 'moving' ORDER BY 1;
SELECT rotation_interval, max_encryptions FROM meshhook_keys.keyrings WHERE keyring = 'moving';
SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(c, 'row:' || id) = 'secret ' || id) AS decrypt FROM moving_secret WHERE id > 10;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'row:1') FROM moving_secret WHERE id = 1$$);
-- and it goes on: encrypts under version 3, rotates to 4
SELECT meshhook_keys.ciphertext_key_id(meshhook_keys.secret_encrypt('new', '', 'moving')) = (SELECT key_id FROM before WHERE version = 3) AS encrypts_with_v3;
SELECT version FROM meshhook_keys.keys_rotate('moving', 'after the move');

-- a destroyed keyring cannot be exported; an operator (not a custodian) cannot export or import
SELECT 1 FROM meshhook_keys.keys_rotate('moving-dead', 'version 1');
SELECT meshhook_keys.keyring_destroy('moving-dead') AS destroyed;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('moving-dead', (SELECT k FROM wk))$$);
CREATE ROLE mk_transfer_operator IN ROLE meshhook_keys_operator, meshhook_keys_admin;
GRANT SELECT ON wk, exported TO mk_transfer_operator;
SET LOCAL ROLE mk_transfer_operator;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('moving', (SELECT k FROM wk))$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_import((SELECT b FROM exported), (SELECT k FROM wk), 'copy')$$);
RESET ROLE;
-- granted EXECUTE by mistake, the operator is still refused, by the function's own check (audited)
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_export(text, bytea, text) TO mk_transfer_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_import(bytea, bytea, text, text) TO mk_transfer_operator;
SET LOCAL ROLE mk_transfer_operator;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('moving', (SELECT k FROM wk))$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_import((SELECT b FROM exported), (SELECT k FROM wk), 'copy')$$);
RESET ROLE;
-- a custodian can, without being a superuser
CREATE ROLE mk_custodian IN ROLE meshhook_keys_custodian;
GRANT SELECT ON wk TO mk_custodian;
SET LOCAL ROLE mk_custodian;
SELECT length(meshhook_keys.keyring_export('moving', (SELECT k FROM wk))) > 100 AS custodian_exports;
RESET ROLE;

-- a user-held keyring is exported only with its secret, and imported only with one
SELECT version FROM meshhook_keys.keyring_create_user_held('user:moving', 'moving-passphrase-1');
CREATE TEMP TABLE held AS SELECT meshhook_keys.secret_encrypt('held secret', 'held', 'user:moving') AS c;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('user:moving', (SELECT k FROM wk))$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_export('user:moving', (SELECT k FROM wk), 'wrong-passphrase')$$);
CREATE TEMP TABLE held_export AS SELECT meshhook_keys.keyring_export('user:moving', k, 'moving-passphrase-1') AS b FROM wk;
-- (moved: the original destroyed and its name reclaimed, so that its key ids are free here)
SELECT meshhook_keys.keyring_destroy('user:moving') AS destroyed;
SELECT meshhook_keys.keyring_reclaim('user:moving') AS reclaimed;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.keyring_import((SELECT b FROM held_export), (SELECT k FROM wk))$$);
SELECT * FROM meshhook_keys.keyring_import((SELECT b FROM held_export), (SELECT k FROM wk), NULL, 'a-new-passphrase-2');
-- the imported keyring is user-held under the new secret: locked until unlocked with it
SELECT user_held FROM meshhook_keys.keyrings WHERE keyring = 'user:moving';
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'held') FROM held$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_unlock('user:moving', 'moving-passphrase-1')$$);
SELECT meshhook_keys.keyring_unlock('user:moving', 'a-new-passphrase-2') AS versions_unlocked;
SELECT meshhook_keys.secret_decrypt(c, 'held') AS plaintext FROM held;
ROLLBACK;

-- the exports were audited although their transaction rolled back (written by the audit writer,
-- which waited for it to release the audit chain); no row holds a key
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM meshhook_keys.audit_log WHERE action = 'keyring_export') < 4
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT action, outcome, keyring, detail->>'versions' AS keys_handed_out
  FROM meshhook_keys.audit_log WHERE action = 'keyring_export' ORDER BY keyring, outcome, detail->>'versions';
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND detail->>'function' IN ('keyring_export', 'keyring_import')) < 2
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT action, outcome, detail->>'function' AS function, detail->>'required_role' AS required_role
  FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND detail->>'function' IN ('keyring_export', 'keyring_import') ORDER BY detail->>'function';
