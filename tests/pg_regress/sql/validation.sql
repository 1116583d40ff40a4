-- Nonsense is refused with a specific SQLSTATE, never accepted and never XX000 (issue 12, item 8).
BEGIN;
SELECT 1 FROM meshhook_keys.keyring_create('val-ring');
-- rotation policies: between 1 second and 100 years, on a keyring that exists
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('val-ring', interval '300000 years')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('val-ring', interval '1 microsecond')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('val-ring', interval '-1 day')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_set_policy('val-missing', interval '1 day')$$);
SELECT count(*) AS created_by_a_policy FROM meshhook_keys.keyring WHERE name = 'val-missing';
SELECT meshhook_keys.keyring_set_policy('val-ring', interval '100 years') AS longest_accepted;
SELECT keyring, rotation_interval, next_rotation_at IS NOT NULL AS scheduled FROM meshhook_keys.keyrings WHERE keyring = 'val-ring';
SELECT count(*) >= 0 AS tick_still_works FROM meshhook_keys.tick();

-- context expressions: one expression, not volatile, never a second statement
CREATE TABLE val_t (id int PRIMARY KEY, c bytea);
CREATE TABLE val_injected (x int);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', '1); INSERT INTO public.val_injected VALUES (1); SELECT (1', 'val-ring')$$);
SELECT count(*) AS injected_rows FROM val_injected;
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', 'random()', 'val-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', 'pg_sleep(1)::text || id', 'val-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', 'id::text || (SELECT random())', 'val-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', 'id), (id', 'val-ring')$$);
-- a list is not one expression (it would be read as one row value): 22023, nothing registered
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', 'id::text, id::text', 'val-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('val_t', 'c', $q$'a', 'b', id::text$q$, 'val-ring')$$);
-- catalogs and the extension's own tables hold no envelopes of yours
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('pg_largeobject', 'data', NULL, 'val-ring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('meshhook_keys.data_key', 'wrapped_key', NULL, 'val-ring')$$);
SELECT count(*) AS registered FROM meshhook_keys.encrypted_column WHERE keyring = 'val-ring';
-- and a good one still registers
SELECT meshhook_keys.register_column('val_t', 'c', $$'val/' || id$$, 'val-ring') > 0 AS registered;

-- a row that fails re-encryption and is deleted by its table's own trigger before it is recorded:
-- recorded by ctid, no XX000
CREATE TABLE val_gone (id int PRIMARY KEY, c bytea);
INSERT INTO val_gone SELECT i, meshhook_keys.secret_encrypt('g' || i, i::text, 'val-ring') FROM generate_series(1, 3) i;
UPDATE val_gone SET c = set_byte(c, 30, get_byte(c, 30) # 1) WHERE id = 2;
CREATE FUNCTION val_gone_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN DELETE FROM public.val_gone WHERE id = 2; RETURN NULL; END $$;
CREATE TRIGGER val_gone_delete AFTER UPDATE ON val_gone FOR EACH STATEMENT EXECUTE FUNCTION val_gone_delete();
SELECT meshhook_keys.register_column('val_gone', 'c', 'id::text', 'val-ring') > 0 AS registered;
SELECT version FROM meshhook_keys.keys_rotate('val-ring', 'validation');
SELECT meshhook_keys.reencrypt_batch('val-ring', 100) AS moved;
SELECT f.row_ref LIKE 'ctid (%' AS recorded_by_ctid, f.sqlstate FROM meshhook_keys.reencrypt_failure f
  JOIN meshhook_keys.encrypted_column c ON c.id = f.column_id WHERE c.rel = 'val_gone'::regclass;
ROLLBACK;
