-- rewrap (issue 28): an envelope moved to its keyring's active version without the plaintext
-- leaving the function, for ciphertext the column registry cannot see (here: inside jsonb).
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('rw', 'version 1');
CREATE TEMP TABLE events (id int PRIMARY KEY, payload jsonb);
INSERT INTO events
SELECT i, jsonb_build_object('hook', 'h' || i,
                             'secret', encode(meshhook_keys.secret_encrypt('whsec_' || i, 'event:' || i, 'rw'), 'base64'))
  FROM generate_series(1, 20) i;
SELECT 1 FROM meshhook_keys.keys_rotate('rw', 'version 2');
CREATE TEMP TABLE moved AS
SELECT id, decode(payload->>'secret', 'base64') AS before,
       meshhook_keys.rewrap(decode(payload->>'secret', 'base64'), 'event:' || id) AS after
  FROM events;
-- every envelope now names version 2, decrypts to the same secret with the same context, and is
-- new bytes (a fresh nonce under the new key)
SELECT count(*) AS rows,
       count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(after) =
                              (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'rw' AND version = 2)) AS on_version_2,
       count(*) FILTER (WHERE meshhook_keys.secret_decrypt(after, 'event:' || id) = 'whsec_' || id) AS decrypt,
       count(*) FILTER (WHERE after <> before) AS changed
  FROM moved;
-- one already on the active version comes back as it is (nothing sealed, nothing counted)
SELECT meshhook_keys.rewrap(after, 'event:' || id) = after AS unchanged FROM moved WHERE id = 1;
-- counted against the new key's encryption limit like any encryption: 20, not 21
SELECT encryptions AS counted FROM meshhook_keys.keyrings WHERE keyring = 'rw';

-- what decryption refuses, rewrap refuses, with the same SQLSTATE, and returns nothing
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(before, 'event:2') FROM moved WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(before) FROM moved WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(NULL, 'x')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(before, NULL) FROM moved WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(substr(before, 1, 20), 'event:1') FROM moved WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(overlay(before placing '\xff'::bytea from 30), 'event:1') FROM moved WHERE id = 1$$);
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap('\x01ffffffffffffffff00000000000000000000000000000000000000000000000000000000'::bytea)$$);
-- rotated again: an envelope of the version before moves on to the newest
SELECT 1 FROM meshhook_keys.keys_rotate('rw', 'version 3');
SELECT meshhook_keys.secret_decrypt(r, 'event:3') AS plaintext,
       meshhook_keys.ciphertext_key_id(r) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'rw' AND version = 3) AS on_version_3
  FROM (SELECT meshhook_keys.rewrap(after, 'event:3') AS r FROM moved WHERE id = 3) x;

-- a user-held keyring: locked, its envelopes neither open nor rewrap; unlocked, they do
SELECT version FROM meshhook_keys.keyring_create_user_held('user:rw', 'rewrap-passphrase-1');
CREATE TEMP TABLE held AS SELECT meshhook_keys.secret_encrypt('held secret', 'held', 'user:rw') AS c;
SELECT meshhook_keys.keyring_lock('user:rw') AS was_unlocked;
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(c, 'held') FROM held$$);
SELECT meshhook_keys.keyring_unlock('user:rw', 'rewrap-passphrase-1') AS versions_unlocked;
SELECT meshhook_keys.rewrap(c, 'held') = c AS already_on_the_active_version FROM held;
ROLLBACK;
