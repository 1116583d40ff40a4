-- Signatures (issue 28): hmac_sign / hmac_verify, and webhook signing with rotation
-- (webhook_sign / webhook_verify / webhook_secret), checked against a receiver written here in SQL
-- from sha256() alone: HMAC-SHA256 keyed by the receiver's secret over '<unix>.<payload>'.
BEGIN;
CREATE FUNCTION pg_temp.receiver_hmac(key bytea, msg bytea) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    k bytea := CASE WHEN length(key) > 64 THEN sha256(key) ELSE key END;
    ipad bytea; opad bytea;
BEGIN
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    ipad := k; opad := k;
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(k, i) # 54);
        opad := set_byte(opad, i, get_byte(k, i) # 92);
    END LOOP;
    RETURN encode(sha256(opad || sha256(ipad || msg)), 'hex');
END $$;
-- what a receiver does with the header and its secret (Stripe's scheme): any v1 that matches
CREATE FUNCTION pg_temp.receiver_accepts(secret text, header text, payload bytea) RETURNS boolean
LANGUAGE sql AS $$
    SELECT pg_temp.receiver_hmac(convert_to(secret, 'UTF8'),
                                 convert_to(substring(header FROM '^t=([0-9]+)') || '.', 'UTF8') || payload)
           = ANY (SELECT (regexp_matches(header, 'v1=([0-9a-f]{64})', 'g'))[1])
$$;

SELECT 1 FROM meshhook_keys.keys_rotate('hooks', 'version 1');

-- hmac_sign names its version; hmac_verify accepts the payload and context it signed, nothing else
CREATE TEMP TABLE sig AS SELECT meshhook_keys.hmac_sign('{"id": 1}', 'hooks', 'endpoint:1') AS s;
SELECT s ~ '^meshhook:v1:[0-9a-f]{64}$' AS names_version_1 FROM sig;
SELECT meshhook_keys.hmac_verify('{"id": 1}', s, 'hooks', 'endpoint:1') AS same,
       meshhook_keys.hmac_verify('{"id": 2}', s, 'hooks', 'endpoint:1') AS other_payload,
       meshhook_keys.hmac_verify('{"id": 1}', s, 'hooks', 'endpoint:2') AS other_context,
       meshhook_keys.hmac_verify('{"id": 1}', s, 'hooks') AS no_context,
       meshhook_keys.hmac_verify('{"id": 1}', overlay(s placing (CASE WHEN substr(s, 20, 1) = '0' THEN '1' ELSE '0' END) from 20), 'hooks', 'endpoint:1') AS one_digit_changed,
       meshhook_keys.hmac_verify('{"id": 1}', replace(s, ':v1:', ':v2:'), 'hooks', 'endpoint:1') AS unknown_version
  FROM sig;
-- the same signature under another keyring of the caller's does not verify
SELECT 1 FROM meshhook_keys.keys_rotate('hooks-other', 'version 1');
SELECT meshhook_keys.hmac_verify('{"id": 1}', s, 'hooks-other', 'endpoint:1') AS other_keyring FROM sig;
-- deterministic for one version: the same input signs the same
SELECT meshhook_keys.hmac_sign('{"id": 1}', 'hooks', 'endpoint:1') = s AS deterministic FROM sig;
-- garbage is false, never an error; missing arguments and unknown keyrings are errors
SELECT meshhook_keys.hmac_verify('x', g, 'hooks') AS garbage
  FROM unnest(ARRAY['', 'meshhook:v1:', 'meshhook:v1:zz', 'meshhook:v-1:00', 'vault:v1:abc',
                    'meshhook:v99999999999:' || repeat('0', 64), repeat('x', 100000)]) g;
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign(NULL, 'hooks')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign('x', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign('x', 'hooks', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_verify('x', NULL, 'hooks')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_verify('x', 'meshhook:v1:00', 'no-such-keyring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign('x', 'Bad Name!')$$);
-- not counted against the encryption limit (HMAC has no nonce)
SELECT encryptions AS counted FROM meshhook_keys.keyrings WHERE keyring = 'hooks';

-- rotation: the old signature keeps verifying while its version decrypts; new ones name version 2;
-- once version 1 is retired its signatures are refused
SELECT 1 FROM meshhook_keys.keys_rotate('hooks', 'version 2');
SELECT meshhook_keys.hmac_verify('{"id": 1}', s, 'hooks', 'endpoint:1') AS v1_after_rotation,
       meshhook_keys.hmac_sign('{"id": 1}', 'hooks', 'endpoint:1') ~ '^meshhook:v2:' AS signs_with_v2,
       meshhook_keys.hmac_sign('{"id": 1}', 'hooks', 'endpoint:1') <> s AS new_key
  FROM sig;

-- webhooks: version 1 of the keyring 'wh' signs; its receiver's secret verifies the header
SELECT 1 FROM meshhook_keys.keys_rotate('wh', 'version 1');
CREATE TEMP TABLE secrets AS
SELECT 1 AS version, meshhook_keys.webhook_secret('wh', 'endpoint:1') AS secret;
SELECT secret ~ '^whsec_[0-9a-f]{64}$' AS looks_like_a_secret,
       secret <> meshhook_keys.webhook_secret('wh', 'endpoint:2') AS per_endpoint
  FROM secrets;
-- (each disclosure is audited in a transaction of its own: checked after this one rolls back)
CREATE TEMP TABLE hooks1 AS
SELECT meshhook_keys.webhook_sign('{"event": "paid"}', 'wh', 'endpoint:1', '2026-12-07 10:00:00+00') AS h;
SELECT h ~ '^t=1796637600,v1=[0-9a-f]{64}$' AS one_signature FROM hooks1;
SELECT pg_temp.receiver_accepts(s.secret, h, '{"event": "paid"}') AS receiver_v1,
       pg_temp.receiver_accepts(s.secret, h, '{"event": "void"}') AS receiver_other_payload,
       meshhook_keys.webhook_verify('{"event": "paid"}', h, 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:04:59+00') AS within_tolerance,
       meshhook_keys.webhook_verify('{"event": "paid"}', h, 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:05:01+00') AS too_late,
       meshhook_keys.webhook_verify('{"event": "paid"}', h, 'wh', 'endpoint:1', '5 minutes', '2026-12-07 09:54:59+00') AS from_the_future,
       meshhook_keys.webhook_verify('{"event": "paid"}', h, 'wh', 'endpoint:2', '5 minutes', '2026-12-07 10:00:00+00') AS other_endpoint,
       meshhook_keys.webhook_verify('{"event": "paid"}', replace(h, 't=1796637600', 't=1796637601'), 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS replayed_with_another_time
  FROM hooks1, secrets s;
-- with the default tolerance and time (now()), a header signed now verifies
SELECT meshhook_keys.webhook_verify('p', meshhook_keys.webhook_sign('p', 'wh', 'endpoint:1'), 'wh', 'endpoint:1') AS now_verifies;
-- malformed headers are false; bad arguments are errors
SELECT meshhook_keys.webhook_verify('p', g, 'wh', 'endpoint:1') AS garbage
  FROM unnest(ARRAY['', 't=1', 'v1=' || repeat('0', 64), 't=x,v1=' || repeat('0', 64),
                    't=1,t=2,v1=' || repeat('0', 64), 't=1,v1=00', repeat('t=1,', 3000)]) g;
-- one header, one spelling: a leading zero in t, an upper-case signature or a non-ASCII space
-- around an item is refused (a receiver that remembers the headers it saw cannot be replayed the
-- same one written differently); ASCII spaces after the commas are fine
SELECT meshhook_keys.webhook_verify('{"event": "paid"}', replace(h, 't=', 't=0'), 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS leading_zero,
       meshhook_keys.webhook_verify('{"event": "paid"}', 't=1796637600,v1=' || upper(substr(h, 17)), 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS upper_case,
       meshhook_keys.webhook_verify('{"event": "paid"}', replace(h, ',', ',' || chr(160)), 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS nbsp,
       meshhook_keys.webhook_verify('{"event": "paid"}', replace(h, ',', ', '), 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS ascii_space
  FROM hooks1;
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_verify('p', 't=1,v1=00', 'wh', '', '-1 second')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_verify('p', 't=1,v1=00', 'wh', '', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_sign('p', 'wh', '', 'infinity')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_sign('p', 'wh', '', '1969-12-31 23:59:59+00')$$);

-- rotation: the sender signs with both versions, newest first; the receiver that still holds the
-- version 1 secret accepts, and so does the one given the version 2 secret
SELECT 1 FROM meshhook_keys.keys_rotate('wh', 'version 2');
INSERT INTO secrets SELECT 2, meshhook_keys.webhook_secret('wh', 'endpoint:1');
CREATE TEMP TABLE hooks2 AS
SELECT meshhook_keys.webhook_sign('{"event": "refund"}', 'wh', 'endpoint:1', '2026-12-07 11:00:00+00') AS h;
SELECT h ~ '^t=1796641200,v1=[0-9a-f]{64},v1=[0-9a-f]{64}$' AS two_signatures,
       pg_temp.receiver_accepts((SELECT secret FROM secrets WHERE version = 1), h, '{"event": "refund"}') AS old_receiver,
       pg_temp.receiver_accepts((SELECT secret FROM secrets WHERE version = 2), h, '{"event": "refund"}') AS new_receiver,
       split_part(h, ',', 2) = 'v1=' || pg_temp.receiver_hmac(convert_to((SELECT secret FROM secrets WHERE version = 2), 'UTF8'),
                                                              convert_to('1796641200.{"event": "refund"}', 'UTF8')) AS newest_first
  FROM hooks2;
-- the secret of a version can be asked for by number while it signs
SELECT meshhook_keys.webhook_secret('wh', 'endpoint:1', 1) = secret AS version_1_secret FROM secrets WHERE version = 1;
-- a header signed before the rotation (version 1 only) still verifies
SELECT meshhook_keys.webhook_verify('{"event": "paid"}', h, 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS v1_header_verifies
  FROM hooks1;

-- retiring version 1 ends the overlap: the sender stops signing with it, its headers and
-- signatures no longer verify, and its secret is no longer handed out
SELECT meshhook_keys.keys_retire('wh', 1, true) AS retired;
SELECT meshhook_keys.keys_retire('hooks', 1, true) AS retired;
CREATE TEMP TABLE hooks3 AS
SELECT meshhook_keys.webhook_sign('{"event": "closed"}', 'wh', 'endpoint:1', '2026-12-07 12:00:00+00') AS h;
SELECT h ~ '^t=1796644800,v1=[0-9a-f]{64}$' AS one_signature_again,
       pg_temp.receiver_accepts((SELECT secret FROM secrets WHERE version = 1), h, '{"event": "closed"}') AS old_receiver,
       pg_temp.receiver_accepts((SELECT secret FROM secrets WHERE version = 2), h, '{"event": "closed"}') AS new_receiver
  FROM hooks3;
SELECT meshhook_keys.webhook_verify('{"event": "paid"}', h, 'wh', 'endpoint:1', '5 minutes', '2026-12-07 10:00:00+00') AS v1_header_after_retire
  FROM hooks1;
SELECT meshhook_keys.hmac_verify('{"id": 1}', s, 'hooks', 'endpoint:1') AS v1_signature_after_retire FROM sig;
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_secret('wh', 'endpoint:1', 1)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_secret('wh', 'endpoint:1', 7)$$);

-- however many versions still sign, the header carries at most 32 signatures (the active version
-- and the newest decrypt-only ones), which webhook_verify reads
DO $$ BEGIN FOR i IN 1..40 LOOP PERFORM meshhook_keys.keys_rotate('wh-many', 'version ' || i); END LOOP; END $$;
SELECT array_length(string_to_array(h, ','), 1) - 1 AS signatures, length(h) < 2300 AS bytes_bounded,
       meshhook_keys.webhook_verify('p', h, 'wh-many', 'c') AS verifies
  FROM (SELECT meshhook_keys.webhook_sign('p', 'wh-many', 'c') AS h) x;

-- a user-held keyring signs only while unlocked
SELECT version FROM meshhook_keys.keyring_create_user_held('user:hooks', 'signing-passphrase-1');
CREATE TEMP TABLE held AS SELECT meshhook_keys.hmac_sign('p', 'user:hooks') AS s;
SELECT meshhook_keys.keyring_lock('user:hooks') AS was_unlocked;
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign('p', 'user:hooks')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_verify('p', s, 'user:hooks') FROM held$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_sign('p', 'user:hooks')$$);
SELECT meshhook_keys.keyring_unlock('user:hooks', 'signing-passphrase-1') AS versions_unlocked;
SELECT meshhook_keys.hmac_verify('p', s, 'user:hooks') AS verifies_unlocked FROM held;

-- a destroyed keyring neither signs nor verifies
SELECT 1 FROM meshhook_keys.keyring_destroy('hooks-other', 'done with it');
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign('p', 'hooks-other')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_verify('p', 'meshhook:v1:' || repeat('0', 64), 'hooks-other')$$);
ROLLBACK;

-- every disclosure of a receiver's secret was audited in a transaction of its own: the rows are
-- there although the transaction that got the secrets rolled back (wait for the audit writers,
-- which waited for this transaction to release the audit chain), and none holds a secret
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE (SELECT count(*) FROM meshhook_keys.audit_log WHERE action = 'webhook_secret') < 4
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT action, outcome, keyring, version, detail->>'context' AS context
  FROM meshhook_keys.audit_log WHERE action = 'webhook_secret' ORDER BY version, detail->>'context', id;
SELECT count(*) AS rows_holding_a_secret FROM meshhook_keys.audit_log
 WHERE detail::text ~ '[0-9a-f]{64}' OR detail::text LIKE '%whsec%';
-- a rolled-back savepoint does not take the row back either; and a context too long for the
-- audit writer is recorded by its digest, never cut
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('wh-savepoint', 'version 1');
DO $$ BEGIN
    BEGIN
        PERFORM meshhook_keys.webhook_secret('wh-savepoint', 'endpoint:stealth');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END $$;
SELECT length(meshhook_keys.webhook_secret('wh-savepoint', repeat('x', 200))) AS secret_length;
ROLLBACK;
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE NOT EXISTS (SELECT FROM meshhook_keys.audit_log WHERE action = 'webhook_secret' AND keyring = 'wh-savepoint' AND detail ? 'context')
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT keyring, version, detail->>'context' AS context FROM meshhook_keys.audit_log
 WHERE action = 'webhook_secret' AND keyring = 'wh-savepoint' AND detail ? 'context';
DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    WHILE NOT EXISTS (SELECT FROM meshhook_keys.audit_log WHERE action = 'webhook_secret' AND detail ? 'context_sha256')
          AND clock_timestamp() < deadline LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT detail->>'context_sha256' = substr(encode(sha256(convert_to(repeat('x', 200), 'UTF8')), 'hex'), 1, 16) AS digest_of_the_context,
       detail ? 'context' AS has_context
  FROM meshhook_keys.audit_log WHERE action = 'webhook_secret' AND detail ? 'context_sha256';

