-- find_unregistered (issue 28): forgetting a column must not silently destroy data. The bytea
-- columns nobody registered for a keyring that hold its envelopes are found (each read as its
-- table's owner, bounded), and keys_retire warns until it has run since the last registration.
BEGIN;
CREATE ROLE mk_fu_owner;
CREATE SCHEMA fu;
SELECT 1 FROM meshhook_keys.keys_rotate('fu-ring', 'version 1');
CREATE DOMAIN fu.sealed AS bytea;
CREATE TABLE fu.registered (id int PRIMARY KEY, c bytea);
CREATE TABLE fu.forgotten (id int PRIMARY KEY, c bytea, other bytea, d fu.sealed);
CREATE TABLE fu.guarded (id int PRIMARY KEY, c bytea);
CREATE TABLE fu.big (id int PRIMARY KEY, c bytea, pad text);
GRANT USAGE ON SCHEMA fu TO mk_fu_owner;
ALTER TABLE fu.forgotten OWNER TO mk_fu_owner;
ALTER TABLE fu.guarded OWNER TO mk_fu_owner;
INSERT INTO fu.registered SELECT i, meshhook_keys.secret_encrypt('r' || i, '', 'fu-ring') FROM generate_series(1, 5) i;
INSERT INTO fu.forgotten SELECT i, meshhook_keys.secret_encrypt('f' || i, '', 'fu-ring'),
                                   meshhook_keys.secret_encrypt('o' || i, '', 'default'),
                                   meshhook_keys.secret_encrypt('d' || i, '', 'fu-ring')::fu.sealed
  FROM generate_series(1, 7) i;
INSERT INTO fu.guarded SELECT i, meshhook_keys.secret_encrypt('g' || i, '', 'fu-ring') FROM generate_series(1, 3) i;
INSERT INTO fu.big SELECT i, CASE WHEN i > 900 THEN meshhook_keys.secret_encrypt('b' || i, '', 'fu-ring') END, repeat('x', 200)
  FROM generate_series(1, 1000) i;
-- a table whose policy applies to its owner: her read would miss rows, so it is refused (listed)
ALTER TABLE fu.guarded ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY none ON fu.guarded USING (false);
-- a temporary table is this session's own, and not looked at
CREATE TEMP TABLE fu_temp AS SELECT meshhook_keys.secret_encrypt('t', '', 'fu-ring') AS c;
SELECT meshhook_keys.register_column('fu.registered', 'c', NULL, 'fu-ring') > 0 AS registered;

-- before: retiring warns (find_unregistered has never run)
SELECT 1 FROM meshhook_keys.keys_rotate('fu-ring', 'version 2');
SAVEPOINT before_find;
SELECT meshhook_keys.keys_retire('fu-ring', 1, true) AS retired;
ROLLBACK TO SAVEPOINT before_find;

-- the report: every unregistered column with envelopes of the keyring (the domain's too), the
-- one whose read failed, and the one read only in part (max_blocks 2); not the registered column,
-- not the column of another keyring's envelopes, not the temporary table
SELECT table_name, column_name, rows, blocks_read < blocks AS partly, error
  FROM meshhook_keys.find_unregistered('fu-ring', 2) ORDER BY 1::text, 2;
-- read whole, the big table's 100 envelopes are found
SELECT rows FROM meshhook_keys.find_unregistered('fu-ring') WHERE table_name = 'fu.big'::regclass;
-- (each read ran as the table's owner: fu.guarded's policy applies to mk_fu_owner, so it is
-- refused rather than counted short)
SELECT action, keyring, detail->>'columns_with_envelopes' AS with_envelopes
  FROM meshhook_keys.audit_log WHERE action = 'find_unregistered' ORDER BY id DESC LIMIT 1;

-- after it ran: retiring does not warn; after another registration it warns again
SAVEPOINT after_find;
SELECT meshhook_keys.keys_retire('fu-ring', 1, true) AS retired;
ROLLBACK TO SAVEPOINT after_find;
SELECT meshhook_keys.register_column('fu.forgotten', 'c', NULL, 'fu-ring') > 0 AS registered_now;
SAVEPOINT after_registration;
SELECT meshhook_keys.keys_retire('fu-ring', 1, true) AS retired;
ROLLBACK TO SAVEPOINT after_registration;

-- bad input; an application role may not
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.find_unregistered('no-such-keyring')$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.find_unregistered('fu-ring', 0)$$);
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.find_unregistered('fu-ring', NULL)$$);
CREATE ROLE mk_fu_app IN ROLE meshhook_keys_user;
SET LOCAL ROLE mk_fu_app;
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.find_unregistered('fu-ring')$$);
RESET ROLE;
ROLLBACK;
