-- Sealed calls (issue 23): a table owner whose code tries to change the session it runs in.
-- Needs tests/hostile/deputy_fixture.sql first (dp_mallory, dp_ops, dp_alice).
--
-- dp_mallory's table dp_m.s (keyring dp:sealed) has a row trigger, a statement trigger, a generated
-- column, a CHECK constraint, an expression index and a context expression that each call
-- dp_m.pollute(), which does what dp.pollute says:
--   'settings' (the default): change a wide set of settings with set_config(…, false), SET and
--      SET LOCAL, among them a search_path that puts her schema first, where her operators for
--      = (text, bigint, integer, bytea, oid, tid, boolean, name) and + (bigint) wait to run as
--      whoever resolves them (each records the roles it ran as in dp_m.hijacked and, run as anyone
--      but her, tries to make her superuser); and try what a security-restricted operation
--      refuses (LISTEN, a temporary table, a holdable cursor, SET ROLE, DISCARD);
--   'lock', 'xact lock': take a session / transaction advisory lock and keep it;
--   'unlock all': release every session advisory lock of the session (the caller's);
--   'try', 'take': call the batch's own per-row function _reencrypt_try / _reencrypt_take herself;
--   'cursor': leave a cursor open;   'prepare': leave a prepared statement;
--   'lock then raise': take a session advisory lock and raise;
--   'raise': raise, with a forged log line and terminal escapes in the message.
-- The session-state helpers (public.snap(), public.state_changes()) capture and compare every
-- setting and what a call could leave behind, with operators qualified, since the session they look
-- at may be the polluted one.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SET dp.runner = 'setup';

SET ROLE dp_mallory;
CREATE TABLE dp_m.hijacked (n serial PRIMARY KEY, op text, current_role_name name, session_role_name name);
GRANT INSERT ON dp_m.hijacked TO PUBLIC;
GRANT USAGE ON SEQUENCE dp_m.hijacked_n_seq TO PUBLIC;
-- what the first of her calls in each sealed call sees of the session, before she changes it (a
-- marker setting she sets tells the later calls of the same sealed call apart: if the marker, or
-- anything she changed, outlived the call, the next one would see it)
CREATE TABLE dp_m.seen (n serial PRIMARY KEY, runner text, vector text, state text);
GRANT INSERT ON dp_m.seen TO PUBLIC;
GRANT USAGE ON SEQUENCE dp_m.seen_n_seq TO PUBLIC;
-- her operators: correct answers, and a record of whoever they ran as
CREATE FUNCTION dp_m.note(op text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dp_m.hijacked (op, current_role_name, session_role_name) VALUES (op, current_user, session_user);
    IF current_user OPERATOR(pg_catalog.<>) 'dp_mallory' THEN
        BEGIN
            EXECUTE 'ALTER ROLE dp_mallory SUPERUSER';
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END IF;
END $$;
CREATE FUNCTION dp_m.eq_text(a text, b text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(text)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_int8(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(bigint)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_int4(a integer, b integer) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(integer)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_bytea(a bytea, b bytea) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(bytea)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_oid(a oid, b oid) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(oid)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_tid(a tid, b tid) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(tid)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_bool(a boolean, b boolean) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(boolean)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.eq_name(a name, b name) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('=(name)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION dp_m.plus_int8(a bigint, b bigint) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.note('+(bigint)'); RETURN a OPERATOR(pg_catalog.+) b; END $$;
CREATE OPERATOR dp_m.= (LEFTARG = text, RIGHTARG = text, FUNCTION = dp_m.eq_text);
CREATE OPERATOR dp_m.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = dp_m.eq_int8);
CREATE OPERATOR dp_m.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = dp_m.eq_int4);
CREATE OPERATOR dp_m.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = dp_m.eq_bytea);
CREATE OPERATOR dp_m.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = dp_m.eq_oid);
CREATE OPERATOR dp_m.= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = dp_m.eq_tid);
CREATE OPERATOR dp_m.= (LEFTARG = boolean, RIGHTARG = boolean, FUNCTION = dp_m.eq_bool);
CREATE OPERATOR dp_m.= (LEFTARG = name, RIGHTARG = name, FUNCTION = dp_m.eq_name);
CREATE OPERATOR dp_m.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = dp_m.plus_int8);
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA dp_m TO PUBLIC;

CREATE FUNCTION dp_m.pollute(vector text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    mode text := coalesce(nullif(pg_catalog.current_setting('dp.pollute', true), ''), 'settings');
    r text := coalesce(nullif(pg_catalog.current_setting('dp.runner', true), ''), 'scheduler');
    c refcursor := 'dp_cursor';
BEGIN
    IF r OPERATOR(pg_catalog.=) 'setup' THEN RETURN ''; END IF;
    IF coalesce(pg_catalog.current_setting('dp.marker', true), '') OPERATOR(pg_catalog.=) '' THEN
        INSERT INTO dp_m.seen (runner, vector, state) VALUES (r, vector, pg_catalog.concat_ws(' | ',
            pg_catalog.current_setting('search_path'), pg_catalog.current_setting('lock_timeout'),
            pg_catalog.current_setting('statement_timeout'), pg_catalog.current_setting('transform_null_equals'),
            pg_catalog.current_setting('bytea_output'), pg_catalog.current_setting('DateStyle'),
            pg_catalog.current_setting('work_mem'), pg_catalog.current_setting('default_transaction_read_only'),
            pg_catalog.current_setting('extra_float_digits'),
            coalesce(pg_catalog.current_setting('request.jwt.claims', true), ''),
            coalesce(pg_catalog.current_query(), '')));
        PERFORM pg_catalog.set_config('dp.marker', 'set', false);
    END IF;
    IF mode OPERATOR(pg_catalog.=) 'settings' THEN
        PERFORM pg_catalog.set_config('search_path', 'dp_m, pg_catalog', false);
        PERFORM pg_catalog.set_config('transform_null_equals', 'on', false);
        PERFORM pg_catalog.set_config('bytea_output', 'escape', false);
        PERFORM pg_catalog.set_config('lock_timeout', '1ms', false);
        PERFORM pg_catalog.set_config('statement_timeout', '2s', false);
        PERFORM pg_catalog.set_config('DateStyle', 'SQL, DMY', false);
        PERFORM pg_catalog.set_config('request.jwt.claims', '{"sub":"mallory","role":"authenticated"}', false);
        PERFORM pg_catalog.set_config('request.jwt.claim.sub', 'mallory', false);
        PERFORM pg_catalog.set_config('application_name', 'mallory was here', false);
        PERFORM pg_catalog.set_config('work_mem', '64kB', false);
        PERFORM pg_catalog.set_config('dp.runner', 'mallory', false);
        PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);
        EXECUTE 'SET extra_float_digits = -15';
        EXECUTE 'SET LOCAL IntervalStyle = sql_standard';
        PERFORM dp_m.try(r, vector, 'LISTEN', 'LISTEN dp_channel');
        PERFORM dp_m.try(r, vector, 'create a temporary table', 'CREATE TEMP TABLE dp_tmp (x int)');
        PERFORM dp_m.try(r, vector, 'declare a holdable cursor', 'DECLARE dp_hold CURSOR WITH HOLD FOR SELECT 1');
        PERFORM dp_m.try(r, vector, 'SET ROLE', 'SET ROLE dp_ops');
        PERFORM dp_m.try(r, vector, 'DISCARD ALL', 'DISCARD ALL');
    ELSIF mode OPERATOR(pg_catalog.=) 'lock' THEN
        PERFORM pg_catalog.pg_advisory_lock(4242);
    ELSIF mode OPERATOR(pg_catalog.=) 'xact lock' THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(4243);
    ELSIF mode OPERATOR(pg_catalog.=) 'unlock all' THEN
        PERFORM pg_catalog.pg_advisory_unlock_all();
    ELSIF mode OPERATOR(pg_catalog.=) 'try' THEN
        -- the batch's per-row functions, armed for the UPDATE she runs inside, called without its
        -- token: a guess of a row's context, a ciphertext of someone else's to re-seal
        PERFORM meshhook_keys._reencrypt_try('\x00112233445566778899aabbccddeeff'::bytea, '(0,1)', '\x01'::bytea, 'guess');
    ELSIF mode OPERATOR(pg_catalog.=) 'take' THEN
        PERFORM meshhook_keys._reencrypt_take('\x00112233445566778899aabbccddeeff'::bytea, '(0,1)');
    ELSIF mode OPERATOR(pg_catalog.=) 'cursor' THEN
        BEGIN
            OPEN c FOR SELECT g FROM pg_catalog.generate_series(1, 3) g;
        EXCEPTION WHEN duplicate_cursor THEN NULL;
        END;
    ELSIF mode OPERATOR(pg_catalog.=) 'prepare' THEN
        BEGIN
            EXECUTE 'PREPARE dp_stmt AS SELECT 1';
        EXCEPTION WHEN duplicate_prepared_statement THEN NULL;
        END;
    ELSIF mode OPERATOR(pg_catalog.=) 'raise' THEN
        RAISE EXCEPTION 'mallory%', E'\n2026-12-06 00:00:00 UTC LOG:  a forged log line\x1b[2J';
    ELSIF mode OPERATOR(pg_catalog.=) 'lock then raise' THEN
        PERFORM pg_catalog.pg_advisory_lock(4244);
        RAISE EXCEPTION 'mallory raises after taking a lock';
    END IF;
    RETURN '';
END $$;
CREATE FUNCTION dp_m.s_ctx(id int) RETURNS text LANGUAGE plpgsql STABLE
    AS $$ BEGIN PERFORM dp_m.pollute('context expression'); RETURN id::text; END $$;
CREATE FUNCTION dp_m.s_gen(b bytea) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM dp_m.pollute('generated column'); RETURN 'g'; END $$;
CREATE FUNCTION dp_m.s_row_trg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.pollute('row trigger'); RETURN NEW; END $$;
CREATE FUNCTION dp_m.s_stmt_trg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM dp_m.pollute('statement trigger'); RETURN NULL; END $$;
CREATE FUNCTION dp_m.s_chk(id int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM dp_m.pollute('check constraint'); RETURN true; END $$;
CREATE FUNCTION dp_m.s_idx(b bytea) RETURNS int LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM dp_m.pollute('index expression'); RETURN pg_catalog.length(b); END $$;
CREATE TABLE dp_m.s (id int PRIMARY KEY, tok bytea, gen text GENERATED ALWAYS AS (dp_m.s_gen(tok)) STORED,
                     CHECK (dp_m.s_chk(id)));
CREATE INDEX s_idx ON dp_m.s (dp_m.s_idx(tok));
CREATE TRIGGER s_row_trg BEFORE UPDATE ON dp_m.s FOR EACH ROW EXECUTE FUNCTION dp_m.s_row_trg();
CREATE TRIGGER s_stmt_trg AFTER UPDATE ON dp_m.s FOR EACH STATEMENT EXECUTE FUNCTION dp_m.s_stmt_trg();
RESET ROLE;

SELECT 1 FROM meshhook_keys.keyring_create('dp:sealed');
SET ROLE dp_mallory;
INSERT INTO dp_m.s (id, tok)
     SELECT i, meshhook_keys.secret_encrypt('sealed-' || i, i::text, 'dp:sealed') FROM pg_catalog.generate_series(1, 5) i;
RESET ROLE;
SELECT meshhook_keys.register_column('dp_m.s', 'tok', 'dp_m.s_ctx(id)', 'dp:sealed') > 0 AS registered;

-- The session as a runner sees it: every setting, and what a call could leave behind.
CREATE TABLE public.sealed_snap (name text, setting text);
GRANT ALL ON public.sealed_snap TO PUBLIC;
-- (pg_settings leaves out custom settings such as PostgREST's: those are read by name. One that did
-- not exist before a call exists after it with an empty value, as after a rolled-back transaction:
-- PostgreSQL never removes a custom setting, so missing and empty read the same here.)
CREATE FUNCTION public.session_settings() RETURNS TABLE (name text, setting text) LANGUAGE sql AS $$
    SELECT s.name, s.setting FROM pg_catalog.pg_settings s
    UNION ALL
    SELECT n, coalesce(pg_catalog.current_setting(n, true), '')
      FROM pg_catalog.unnest(ARRAY['request.jwt.claims', 'request.jwt.claim.sub', 'dp.runner']) n;
$$;
CREATE FUNCTION public.snap() RETURNS void LANGUAGE sql AS $$
    DELETE FROM public.sealed_snap;
    INSERT INTO public.sealed_snap SELECT * FROM public.session_settings();
$$;
CREATE FUNCTION public.state_changes() RETURNS SETOF text LANGUAGE sql AS $$
    SELECT 'setting ' OPERATOR(pg_catalog.||) coalesce(a.name, b.name)
      FROM public.session_settings() a FULL JOIN public.sealed_snap b ON a.name OPERATOR(pg_catalog.=) b.name
     WHERE a.name IS NULL OR b.name IS NULL
        OR NOT coalesce(a.setting OPERATOR(pg_catalog.=) b.setting, a.setting IS NULL AND b.setting IS NULL)
    UNION ALL
    SELECT 'advisory lock ' OPERATOR(pg_catalog.||) l.objid::text FROM pg_catalog.pg_locks l
     WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND l.locktype OPERATOR(pg_catalog.=) 'advisory'
       AND l.objsubid OPERATOR(pg_catalog.<>) 19787
    UNION ALL
    SELECT 'cursor ' OPERATOR(pg_catalog.||) c.name FROM pg_catalog.pg_cursors c
    UNION ALL
    SELECT 'prepared statement ' OPERATOR(pg_catalog.||) p.name FROM pg_catalog.pg_prepared_statements p
    UNION ALL
    SELECT 'listening on ' OPERATOR(pg_catalog.||) ch FROM pg_catalog.pg_listening_channels() ch
    UNION ALL
    SELECT 'temporary table ' OPERATOR(pg_catalog.||) c.relname FROM pg_catalog.pg_class c
     WHERE c.relpersistence OPERATOR(pg_catalog.=) 't'
       AND c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
    ORDER BY 1;
$$;
GRANT EXECUTE ON FUNCTION public.session_settings(), public.snap(), public.state_changes() TO PUBLIC;
DELETE FROM dp_m.attempts WHERE runner = 'setup';
RESET dp.runner;
RESET client_min_messages;
