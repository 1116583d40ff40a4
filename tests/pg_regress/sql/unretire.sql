-- Retirement is reversible until destruction (issue 28): keys_unretire makes a retired version
-- decrypt again; a destroyed one is gone for good.
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('ur-ring', 'version 1');
CREATE TEMP TABLE forgotten AS SELECT meshhook_keys.secret_encrypt('in a column nobody registered', 'ctx', 'ur-ring') AS c;
SELECT 1 FROM meshhook_keys.keys_rotate('ur-ring', 'version 2');
SELECT meshhook_keys.keys_retire('ur-ring', 1) AS retired;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'ctx') FROM forgotten$$);
-- the mistake is found: take the retirement back, in this session (whose cache had refused it)
SELECT meshhook_keys.keys_unretire('ur-ring', 1, 'a column was not registered') AS unretired;
SELECT version, state, retired_at IS NULL AS not_retired FROM meshhook_keys.keys WHERE keyring = 'ur-ring' ORDER BY 1;
SELECT meshhook_keys.secret_decrypt(c, 'ctx') AS plaintext FROM forgotten;
-- only a retired version: not the active one, not a decrypt-only one, not twice
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('ur-ring', 1)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('ur-ring', 2)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('ur-ring', 9)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('no-such-keyring', 1)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('ur-ring', NULL)$$);
-- destroyed is for good
SELECT meshhook_keys.keys_retire('ur-ring', 1, true) AS retired;
SELECT meshhook_keys.keys_destroy('ur-ring', 1, true) AS destroyed;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('ur-ring', 1)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'ctx') FROM forgotten$$);
-- an application role may not (42501, audited)
CREATE ROLE mk_ur_app IN ROLE meshhook_keys_user;
SET LOCAL ROLE mk_ur_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_unretire('ur-ring', 1)$$);
RESET ROLE;
-- audited, with the reason
SELECT action, version, reason FROM meshhook_keys.audit_log
 WHERE keyring = 'ur-ring' AND action IN ('retire', 'unretire', 'destroy') ORDER BY id;
ROLLBACK;
