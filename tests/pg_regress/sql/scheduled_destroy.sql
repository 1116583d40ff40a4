-- Destroying safely (issue 28): keys_destroy(..., after => interval) schedules the crypto-erasure
-- with a grace period that can be cancelled; the scheduler (tick()) carries it out once due,
-- checking again, audited with actor scheduler. (The passage of time is simulated by moving
-- destroy_at into the past: no sleep.)
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('sd-ring', 'version 1');
CREATE TEMP TABLE kept AS SELECT meshhook_keys.secret_encrypt('kept', '', 'sd-ring') AS c;
SELECT 1 FROM meshhook_keys.keys_rotate('sd-ring', 'version 2');
SELECT meshhook_keys.keys_retire('sd-ring', 1, true) AS retired;
SELECT meshhook_keys.keys_destroy('sd-ring', 1, force => true, after => interval '7 days') AS scheduled;
SELECT version, state, destroy_at BETWEEN now() + interval '7 days' - interval '1 minute' AND now() + interval '7 days' AS in_7_days
  FROM meshhook_keys.keys WHERE keyring = 'sd-ring' ORDER BY 1;
-- not yet due: tick() leaves it, and it can still be taken back
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'sd-ring' AND action = 'destroy';
SELECT meshhook_keys.keys_destroy_cancel('sd-ring', 1) AS cancelled;
SELECT destroy_at IS NULL AS no_schedule FROM meshhook_keys.keys WHERE keyring = 'sd-ring' AND version = 1;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy_cancel('sd-ring', 1)$$);
-- unretire cancels a schedule too (the version is needed after all)
SELECT meshhook_keys.keys_destroy('sd-ring', 1, force => true, after => interval '1 day') AS scheduled;
SELECT meshhook_keys.keys_unretire('sd-ring', 1, 'needed after all') AS unretired;
SELECT state, destroy_at IS NULL AS no_schedule FROM meshhook_keys.keys WHERE keyring = 'sd-ring' AND version = 1;
SELECT meshhook_keys.secret_decrypt(c, '') AS still_decrypts FROM kept;
-- scheduled again, and due: the scheduler destroys it
SELECT meshhook_keys.keys_retire('sd-ring', 1, true) AS retired;
SELECT meshhook_keys.keys_destroy('sd-ring', 1, force => true, after => interval '1 hour') AS scheduled;
UPDATE meshhook_keys.data_key SET destroy_at = now() - interval '1 second' WHERE keyring = 'sd-ring' AND version = 1;
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE keyring = 'sd-ring' AND action = 'destroy';
SELECT version, state, destroy_at IS NULL AS no_schedule FROM meshhook_keys.keys WHERE keyring = 'sd-ring' ORDER BY 1;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, '') FROM kept$$);
-- a schedule that no longer passes its checks when due (rows registered since reference the
-- version, and it was not forced) is not carried out: dropped, and audited as a failure
CREATE TABLE sd_rows (id int PRIMARY KEY, c bytea);
INSERT INTO sd_rows SELECT 1, meshhook_keys.secret_encrypt('on version 2', '', 'sd-ring');
SELECT 1 FROM meshhook_keys.keys_rotate('sd-ring', 'version 3');
SELECT meshhook_keys.keys_retire('sd-ring', 2, true) AS retired;
SELECT meshhook_keys.keys_destroy('sd-ring', 2, after => interval '1 hour') AS scheduled_unforced;
SELECT meshhook_keys.register_column('sd_rows', 'c', NULL, 'sd-ring') > 0 AS registered_since;
UPDATE meshhook_keys.data_key SET destroy_at = now() - interval '1 second' WHERE keyring = 'sd-ring' AND version = 2;
SELECT keyring, action, outcome FROM meshhook_keys.tick() WHERE keyring = 'sd-ring' AND action = 'destroy';
SELECT version, state, destroy_at IS NULL AS no_schedule FROM meshhook_keys.keys WHERE keyring = 'sd-ring' AND version = 2;
-- bad input, and the same gate as a destroy now (the active version, a positive interval)
-- its key material is still there: unretired, the row decrypts
SELECT meshhook_keys.keys_unretire('sd-ring', 2) AS unretired;
SELECT meshhook_keys.secret_decrypt(c, '') AS its_row_decrypts FROM sd_rows;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy('sd-ring', 3, after => interval '1 day')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy('sd-ring', 2, force => true, after => interval '-1 day')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy_cancel('sd-ring', NULL)$$);
-- an application role may not
CREATE ROLE mk_sd_app IN ROLE meshhook_keys_user;
SET LOCAL ROLE mk_sd_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy('sd-ring', 3, after => interval '1 day')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_destroy_cancel('sd-ring', 3)$$);
RESET ROLE;
-- the audit trail: scheduled, cancelled, scheduled, unretired, scheduled, destroyed by the
-- scheduler, scheduled, failed when due, unretired
SELECT actor, action, outcome, version FROM meshhook_keys.audit_log
 WHERE keyring = 'sd-ring' AND action IN ('destroy_scheduled', 'destroy_cancelled', 'destroy', 'unretire') ORDER BY id;
ROLLBACK;
