-- A hostile table owner (dp_mallory, only meshhook_keys_user) whose code runs inside our batches,
-- in every place PostgreSQL runs a table owner's code during an UPDATE or a scan: a row trigger, a
-- statement trigger, a stored generated column (the "default expression" of an UPDATE), a CHECK
-- constraint (where a domain's check would run, were the column allowed to be a domain), the
-- context expression (a volatile function, and an IMMUTABLE one that the planner folds at plan
-- time), and a row-level security policy. Each place calls dp_m.payload(vector), which tries every
-- privileged thing she must never get and records what happened in dp_m.attempts (runner, vector,
-- action, SQLSTATE or 'ok'). The runner is read from the custom setting dp.runner ('scheduler'
-- when unset, as in the background worker).
--
-- Run as a superuser in a fresh database with meshhook_keys installed; shared by
-- tests/pg_regress/sql/deputy.sql and tests/client/scheduler.sh.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SET dp.runner = 'setup';
CREATE ROLE dp_mallory IN ROLE meshhook_keys_user;
CREATE ROLE dp_ops IN ROLE meshhook_keys_admin;
CREATE ROLE dp_alice IN ROLE meshhook_keys_user;
CREATE ROLE dp_victims;

-- The platform: a tenant check (members of dp_victims use tenant 'victim'), keyrings, and the
-- ciphertexts mallory managed to steal (readable by her, useless without the keys).
CREATE SCHEMA dp_app;
GRANT USAGE ON SCHEMA dp_app TO PUBLIC;
CREATE FUNCTION dp_app.tenant_ok(tenant text) RETURNS boolean LANGUAGE sql STABLE
    AS $$ SELECT tenant OPERATOR(pg_catalog.=) 'victim' AND pg_catalog.pg_has_role(current_user, 'dp_victims', 'MEMBER') $$;
GRANT EXECUTE ON FUNCTION dp_app.tenant_ok(text) TO PUBLIC;
SELECT pg_catalog.set_config('meshhook_keys.tenant_check', 'dp_app.tenant_ok', false);
SELECT 1 FROM meshhook_keys.keyring_create('dp:victim', 'victim');
SELECT 1 FROM meshhook_keys.keyring_create('dp:target');
SELECT 1 FROM meshhook_keys.keyring_create('dp:other');
CREATE TABLE dp_app.loot (what text PRIMARY KEY, ct bytea);
INSERT INTO dp_app.loot VALUES ('victim', meshhook_keys.secret_encrypt('victim-plaintext', 'victim/1', 'dp:victim'));
GRANT SELECT ON dp_app.loot TO dp_mallory;
GRANT INSERT ON dp_app.loot TO dp_alice;

-- Mallory's schema, table and code.
CREATE SCHEMA dp_m AUTHORIZATION dp_mallory;
SET ROLE dp_mallory;
CREATE TABLE dp_m.attempts (n serial PRIMARY KEY, runner text, vector text, action text, outcome text);
-- (whoever her code runs as records what it got: her generated column runs as the inserting role)
GRANT USAGE ON SCHEMA dp_m TO PUBLIC;
GRANT INSERT ON dp_m.attempts TO PUBLIC;
GRANT USAGE ON SEQUENCE dp_m.attempts_n_seq TO PUBLIC;
CREATE FUNCTION dp_m.try(runner text, vector text, action text, q text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE outcome text;
BEGIN
    BEGIN
        EXECUTE q;
        outcome := 'ok';
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    INSERT INTO dp_m.attempts (runner, vector, action, outcome) VALUES (runner, vector, action, outcome);
END $$;
CREATE FUNCTION dp_m.payload(vector text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE r text := coalesce(nullif(pg_catalog.current_setting('dp.runner', true), ''), 'scheduler');
BEGIN
    -- (not while the fixture inserts rows: PostgreSQL itself runs a generated column as whoever
    -- inserts, which is not ours to defend)
    IF r = 'setup' THEN RETURN ''; END IF;
    PERFORM dp_m.try(r, vector, 'keyring_destroy another keyring',
        $q$SELECT meshhook_keys.keyring_destroy('dp:other', 'mallory')$q$);
    PERFORM dp_m.try(r, vector, 'keys_rotate another keyring',
        $q$SELECT meshhook_keys.keys_rotate('dp:other', 'mallory')$q$);
    PERFORM dp_m.try(r, vector, 'decrypt another tenant''s secret',
        $q$SELECT meshhook_keys.secret_decrypt(ct, 'victim/1') FROM dp_app.loot WHERE what = 'victim'$q$);
    PERFORM dp_m.try(r, vector, 'decrypt alice''s vault',
        $q$SELECT meshhook_keys.secret_decrypt(ct, 'vault/1') FROM dp_app.loot WHERE what = 'vault'$q$);
    PERFORM dp_m.try(r, vector, 'encrypt into alice''s vault',
        $q$SELECT meshhook_keys.secret_encrypt('planted', 'vault/1', 'user:dp_alice:vault')$q$);
    PERFORM dp_m.try(r, vector, 're-register the built-in store',
        $q$SELECT meshhook_keys.register_column('meshhook_keys.secrets', 'ciphertext', 'dp_m.evil()', 'default')$q$);
    PERFORM dp_m.try(r, vector, 'start a nested batch',
        $q$SELECT meshhook_keys.reencrypt_batch('dp:other')$q$);
    PERFORM dp_m.try(r, vector, 'become superuser',
        $q$ALTER ROLE dp_mallory SUPERUSER$q$);
    RETURN '';
END $$;
-- the places her code sits
CREATE FUNCTION dp_m.ctx(id int) RETURNS text LANGUAGE plpgsql STABLE
    AS $$ BEGIN PERFORM dp_m.payload('context expression'); RETURN id::text; END $$;
CREATE FUNCTION dp_m.fold(k text) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM dp_m.payload('context expression folded at plan time'); RETURN ''; END $$;
CREATE FUNCTION dp_m.gen(b bytea) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM dp_m.payload('generated column'); RETURN 'g'; END $$;
CREATE FUNCTION dp_m.chk(id int) RETURNS boolean LANGUAGE plpgsql VOLATILE
    AS $$ BEGIN PERFORM dp_m.payload('check constraint'); RETURN true; END $$;
CREATE FUNCTION dp_m.pol(id int) RETURNS boolean LANGUAGE plpgsql VOLATILE
    AS $$ BEGIN PERFORM dp_m.payload('policy'); RETURN true; END $$;
CREATE FUNCTION dp_m.row_trg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.payload('row trigger'); RETURN NEW; END $$;
CREATE FUNCTION dp_m.stmt_trg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.payload('statement trigger'); RETURN NULL; END $$;
CREATE FUNCTION dp_m.evil() RETURNS text LANGUAGE sql AS $$ SELECT '' $$;
CREATE TABLE dp_m.t (
    id  int PRIMARY KEY,
    tok bytea,
    gen text GENERATED ALWAYS AS (dp_m.gen(tok)) STORED,
    CHECK (dp_m.chk(id))
);
CREATE TRIGGER row_trg BEFORE UPDATE ON dp_m.t FOR EACH ROW EXECUTE FUNCTION dp_m.row_trg();
CREATE TRIGGER stmt_trg AFTER UPDATE ON dp_m.t FOR EACH STATEMENT EXECUTE FUNCTION dp_m.stmt_trg();
ALTER TABLE dp_m.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON dp_m.t USING (dp_m.pol(id));
GRANT SELECT, INSERT ON dp_m.t TO dp_alice;
CREATE POLICY alice ON dp_m.t TO dp_alice USING (true);
RESET ROLE;

-- Alice keeps a user-held vault, with one row in mallory's table.
SET ROLE dp_alice;
SELECT 1 FROM meshhook_keys.keyring_create_user_held('user:dp_alice:vault', 'alice-secret-1');
INSERT INTO dp_m.t (id, tok) VALUES (2, meshhook_keys.secret_encrypt('vault-plaintext', '2', 'user:dp_alice:vault'));
INSERT INTO dp_app.loot VALUES ('vault', meshhook_keys.secret_encrypt('vault-secret', 'vault/1', 'user:dp_alice:vault'));
RESET ROLE;
SET ROLE dp_mallory;
INSERT INTO dp_m.t (id, tok) VALUES (1, meshhook_keys.secret_encrypt('target-plaintext', '1', 'dp:target'));
RESET ROLE;
-- Registered by a superuser (who has the owner's privileges), for both keyrings: validation plans
-- the expression as the owner (the IMMUTABLE part is folded, so it runs).
SET dp.runner = 'register_column (superuser)';
SELECT meshhook_keys.register_column('dp_m.t', 'tok', $$dp_m.fold('k') || dp_m.ctx(id)$$, 'dp:target') > 0 AS registered;
SELECT meshhook_keys.register_column('dp_m.t', 'tok', $$dp_m.fold('k') || dp_m.ctx(id)$$, 'user:dp_alice:vault') > 0 AS registered;
DELETE FROM dp_m.attempts WHERE runner = 'setup';
RESET dp.runner;
RESET client_min_messages;
