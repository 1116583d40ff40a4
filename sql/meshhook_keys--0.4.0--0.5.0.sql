-- meshhook_keys 0.4.0 -> 0.5.0: privilege boundaries (code run on someone's behalf, user-held keys
-- bound to their role and transaction, operators pinned).
\echo Use "ALTER EXTENSION meshhook_keys UPDATE TO '0.5.0'" to load this file. \quit

-- keyring_unlock gains scope => 'session' | 'transaction'.
DROP FUNCTION meshhook_keys.keyring_unlock(text, text);
CREATE FUNCTION meshhook_keys."keyring_unlock"(
	"keyring" TEXT, /* Option < & str > */
	"secret" TEXT, /* Option < & str > */
	"scope" TEXT DEFAULT 'session' /* Option < & str > */
) RETURNS INT /* i32 */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_unlock_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_unlock(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_unlock(text, text, text) TO meshhook_keys_user;

-- One name for the keyring argument everywhere: keyring (five functions called it name). A
-- parameter cannot be renamed in place, so each is dropped and created again with its grants (and
-- its comment, at the end of this file); calls that pass the keyring by position are unaffected.
DROP FUNCTION meshhook_keys.keyring_create(text, text, text);
CREATE FUNCTION meshhook_keys."keyring_create"(
	"keyring" TEXT, /* Option < & str > */
	"tenant" TEXT DEFAULT NULL, /* Option < & str > */
	"reason" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"keyring" TEXT,  /* alloc::string::String */
	"version" INT,  /* i32 */
	"key_id" bigint,  /* i64 */
	"activated_at" timestamp with time zone  /* pgrx::datum::time_stamp_with_timezone::TimestampWithTimeZone */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_create_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_create(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create(text, text, text) TO meshhook_keys_user, meshhook_keys_operator;

DROP FUNCTION meshhook_keys.keyring_create_user_held(text, text);
CREATE FUNCTION meshhook_keys."keyring_create_user_held"(
	"keyring" TEXT, /* Option < & str > */
	"secret" TEXT /* Option < & str > */
) RETURNS TABLE (
	"keyring" TEXT,  /* alloc::string::String */
	"version" INT,  /* i32 */
	"key_id" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_create_user_held_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) TO meshhook_keys_user;

DROP FUNCTION meshhook_keys.keyring_lock(text);
CREATE FUNCTION meshhook_keys."keyring_lock"(
	"keyring" TEXT /* Option < & str > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_lock_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_lock(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_lock(text) TO meshhook_keys_user;

DROP FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean);
CREATE FUNCTION meshhook_keys."keyring_rotate_secret"(
	"keyring" TEXT, /* Option < & str > */
	"old_secret" TEXT, /* Option < & str > */
	"new_secret" TEXT, /* Option < & str > */
	"reencrypt" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"versions_rewrapped" INT,  /* i32 */
	"new_version" INT,  /* core::option::Option<i32> */
	"rows_reencrypted" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_rotate_secret_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) TO meshhook_keys_user;

-- CALL reencrypt: its one operator qualified (the procedure cannot pin search_path), and its last
-- commit made durable.
CREATE OR REPLACE PROCEDURE meshhook_keys.reencrypt(keyring text DEFAULT 'default', batch_size integer DEFAULT 1000)
LANGUAGE plpgsql
AS $$
DECLARE
    moved bigint;
    total bigint := 0;
BEGIN
    LOOP
        -- A batch commits without waiting for its WAL to reach disk: a crash can only undo the
        -- last few batches, whose rows are then still on their old key (which still decrypts
        -- until it is retired) and are moved again by the next call.
        PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
        moved := meshhook_keys.reencrypt_batch(keyring, batch_size);
        COMMIT;
        EXIT WHEN moved IS NULL;
        -- (operators qualified: a procedure that COMMITs cannot pin search_path with SET, so the
        -- caller's path is in effect here)
        total := total OPERATOR(pg_catalog.+) moved;
    END LOOP;
    -- This last transaction writes a WAL record of its own, so its commit is flushed under the
    -- session's own synchronous_commit, and with it the WAL of every batch before it. (A transaction
    -- that only has a transaction id writes no WAL before its commit record, and PostgreSQL commits
    -- such a transaction asynchronously, whatever synchronous_commit says.)
    PERFORM pg_catalog.pg_logical_emit_message(true, 'meshhook_keys', 'reencrypt complete');
    COMMIT;
    RAISE NOTICE 'meshhook_keys: re-encryption of keyring "%" complete: % rows moved', keyring, total;
END
$$;

-- verify(sample): the CLI's sampling moved into the extension, run as each table's owner.
CREATE FUNCTION meshhook_keys."_verify"(
	"sample" INT /* Option < i32 > */
) RETURNS TABLE (
	"table_oid" oid,  /* pg_sys :: Oid */
	"column_name" TEXT,  /* String */
	"keyring" TEXT,  /* String */
	"sampled" bigint,  /* i64 */
	"decrypted" bigint,  /* i64 */
	"failed" bigint,  /* i64 */
	"locked" bigint,  /* i64 */
	"ok" bool,  /* bool */
	"error" TEXT  /* Option < String > */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_verify_wrapper';
CREATE FUNCTION meshhook_keys.verify(sample integer DEFAULT 100)
RETURNS TABLE (table_name regclass, column_name name, keyring text, sampled bigint, decrypted bigint,
               failed bigint, locked bigint, ok boolean, error text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT v.table_oid::regclass, v.column_name::name, v.keyring, v.sampled, v.decrypted, v.failed,
             v.locked, v.ok, v.error
        FROM meshhook_keys._verify(sample) v $$;
REVOKE ALL ON FUNCTION meshhook_keys._verify(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.verify(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.verify(integer) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys._verify(integer) TO meshhook_keys_user;

-- The built-in store is closed by default: the 0.2.0 policy let every meshhook_keys_user read and
-- replace the untenanted (tenant = '') secrets. Grant what each role needs with a policy of your own.
DROP POLICY IF EXISTS untenanted_secrets ON meshhook_keys.secrets;

-- meshhook_keys_operator: rotation, re-encryption, retirement, destruction, policies and the audit
-- log without the decrypt functions; meshhook_keys_admin becomes the combined grant (user + operator).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_operator') THEN
        CREATE ROLE meshhook_keys_operator NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
END
$roles$;
GRANT meshhook_keys_operator TO meshhook_keys_admin;
-- (PUBLIC's USAGE re-granted after, so that the schema ACL reads as on a fresh install)
REVOKE USAGE ON SCHEMA meshhook_keys FROM PUBLIC;
GRANT USAGE ON SCHEMA meshhook_keys TO meshhook_keys_operator;
GRANT USAGE ON SCHEMA meshhook_keys TO PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_rotate(text, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.register_column(regclass, name, text, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._register_column(oid, text, text, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.unregister_column(regclass, name, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._unregister_column(oid, text, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.reencrypt_batch(text, integer) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.key_usage(text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._key_usage(text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.verify(integer) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._verify(integer) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_retire(text, integer, boolean) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.root_key_rewrap() TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_set_policy(text, interval, bigint) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create(text, text, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_destroy(text, text) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.health() TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.tick() TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.scheduler_status() TO meshhook_keys_operator;
GRANT EXECUTE ON PROCEDURE meshhook_keys.reencrypt(text, integer) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.ciphertext_key_id(bytea) TO meshhook_keys_operator;
REVOKE SELECT ON meshhook_keys.encrypted_columns FROM meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.encrypted_columns TO meshhook_keys_operator;
REVOKE SELECT ON meshhook_keys.reencrypt_progress FROM meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.reencrypt_progress TO meshhook_keys_operator;
REVOKE SELECT ON meshhook_keys.reencrypt_failure FROM meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.reencrypt_failure TO meshhook_keys_operator;
REVOKE SELECT ON meshhook_keys.keyrings FROM meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.keyrings TO meshhook_keys_operator;
REVOKE EXECUTE ON FUNCTION meshhook_keys._encryptions_pending(bigint) FROM meshhook_keys_admin;
GRANT EXECUTE ON FUNCTION meshhook_keys._encryptions_pending(bigint) TO meshhook_keys_operator;
REVOKE SELECT ON meshhook_keys.keys FROM meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.keys TO meshhook_keys_operator;
REVOKE SELECT ON meshhook_keys.audit_log FROM meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.audit_log TO meshhook_keys_operator;
REVOKE EXECUTE ON FUNCTION meshhook_keys.audit_verify() FROM meshhook_keys_admin;
GRANT EXECUTE ON FUNCTION meshhook_keys.audit_verify() TO meshhook_keys_operator;

-- keyring_reclaim: free the name of a destroyed keyring. User-held keyrings now live under user:.
CREATE FUNCTION meshhook_keys."keyring_reclaim"(
	"keyring" TEXT, /* Option < & str > */
	"reason" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS INT /* i32 */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_reclaim_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_reclaim(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_reclaim(text, text) TO meshhook_keys_user, meshhook_keys_operator;

-- Key events (0.5.0) go to a channel whose name is unguessable and readable only by operators:
-- PostgreSQL puts no privilege on LISTEN, so a fixed channel name would tell every role that can
-- connect when any tenant's keys change. events_channel() gives operators the name.
CREATE TABLE meshhook_keys.event_channel (
    channel  text PRIMARY KEY CHECK (channel ~ '^meshhook_keys_events_[a-z0-9_]{1,42}$'),
    singleton boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO meshhook_keys.event_channel (channel)
    VALUES ('meshhook_keys_events_' || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''));
CREATE FUNCTION meshhook_keys.events_channel() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT channel FROM meshhook_keys.event_channel $$;
REVOKE ALL ON TABLE meshhook_keys.event_channel FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.events_channel() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.events_channel() TO meshhook_keys_operator;
COMMENT ON TABLE meshhook_keys.event_channel IS
    'The name of the channel key events are published on with NOTIFY: random per database, readable only through events_channel() (operators), since LISTEN itself needs no privilege.';

-- The audit mirror line is written by _log_line, without the client's statement: RAISE LOG made
-- PostgreSQL append the statement (and with it any literal secret) to the line.
CREATE FUNCTION meshhook_keys."_log_line"(
	"line" TEXT /* &str */
) RETURNS void
VOLATILE PARALLEL SAFE STRICT
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_log_line_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._log_line(text) FROM PUBLIC;
-- The audit chain lock moved off a hashtext() advisory key that any role could take.
-- The chain's last row is read as committed now, not through a REPEATABLE READ snapshot.
CREATE FUNCTION meshhook_keys."_audit_chain_head"() RETURNS TABLE (
	"id" bigint,  /* i64 */
	"hash" bytea  /* alloc::vec::Vec<u8> */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_audit_chain_head_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._audit_chain_head() FROM PUBLIC;
CREATE OR REPLACE FUNCTION meshhook_keys._audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    last_id bigint;
    last_hash bytea;
BEGIN
    IF NEW.hash IS NOT NULL THEN
        -- A row that already carries its hash: pg_dump/restore copying the log back. Accept it only
        -- if it is consistent with its own predecessor hash; audit_verify() checks the whole chain.
        IF NEW.id IS NULL OR NEW.prev_hash IS NULL
           OR NEW.hash <> meshhook_keys._audit_row_hash(NEW.prev_hash, NEW) THEN
            RAISE EXCEPTION 'meshhook_keys.audit_log: row % does not match its hash', NEW.id
                USING ERRCODE = 'data_corrupted';
        END IF;
        RETURN NEW;
    END IF;
    -- One writer at a time until commit, so ids and the chain follow commit order (a lock only
    -- meshhook_keys can take: see src/locks.rs); the last row is read as committed now, whatever
    -- this transaction's snapshot (REPEATABLE READ would miss a row committed while it waited).
    SELECT h.id, h.hash INTO last_id, last_hash FROM meshhook_keys._audit_chain_head() h;
    NEW.id := coalesce(last_id, 0) + 1;
    NEW.at := pg_catalog.clock_timestamp();
    NEW.prev_hash := coalesce(last_hash, '\x'::bytea);
    NEW.hash := meshhook_keys._audit_row_hash(NEW.prev_hash, NEW);
    -- Mirror to the server log for log shipping. Only metadata; and written without the client's
    -- statement (which may hold a literal secret), never with RAISE LOG (0.5.0).
    PERFORM meshhook_keys._log_line(pg_catalog.format(
        'meshhook_keys audit: id=%s action=%s outcome=%s actor=%s role=%s keyring=%s version=%s key_id=%s reason=%s',
        NEW.id, NEW.action, NEW.outcome, NEW.actor, NEW.role_name, coalesce(NEW.keyring, '<NULL>'),
        coalesce(NEW.version::text, '<NULL>'), coalesce(NEW.key_id::text, '<NULL>'), coalesce(NEW.reason, '<NULL>')));
    RETURN NEW;
END
$$;

-- Functions that report this backend's own state are not run in parallel workers (their state is
-- the worker's, not the session's).
ALTER FUNCTION meshhook_keys._key_cache_stats() PARALLEL RESTRICTED;
ALTER FUNCTION meshhook_keys.scheduler_status() PARALLEL RESTRICTED;

-- 0.5.0: what a monitoring system scrapes (meshhook-keys serve's GET /metrics renders it in the
-- Prometheus text format). One row per metric and keyring (keyring NULL: the server as a whole);
-- a metric that does not apply (no rotation policy, encryptions not counted) has no row.
CREATE FUNCTION meshhook_keys.metrics()
RETURNS TABLE (metric text, keyring text, value double precision)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH k AS (
        SELECT * FROM meshhook_keys.keyrings WHERE destroyed_at IS NULL
    ), r AS (
        SELECT p.keyring,
               pg_catalog.count(DISTINCT p.job_id)::float8 AS jobs,
               pg_catalog.sum(p.rows_remaining)::float8 AS remaining,
               pg_catalog.sum(p.rows_failed)::float8 AS failed,
               pg_catalog.sum(p.rows_per_second)::float8 AS rate,
               EXTRACT(epoch FROM pg_catalog.now() - pg_catalog.max(p.updated_at))::float8 AS idle
          FROM meshhook_keys.reencrypt_progress p
         WHERE p.job_state = 'running'
         GROUP BY p.keyring
    ), s AS (
        SELECT * FROM meshhook_keys.scheduler_status()
    )
    SELECT m.metric, m.keyring, m.value FROM (
        SELECT 'meshhook_keys_key_active_version' AS metric, k.keyring, k.active_version::float8 AS value, 1 AS o FROM k
        UNION ALL SELECT 'meshhook_keys_key_age_seconds', k.keyring, EXTRACT(epoch FROM k.active_age)::float8, 2 FROM k
        UNION ALL SELECT 'meshhook_keys_rotation_interval_seconds', k.keyring, EXTRACT(epoch FROM k.rotation_interval)::float8, 3 FROM k
        UNION ALL SELECT 'meshhook_keys_rotation_due_in_seconds', k.keyring, EXTRACT(epoch FROM k.next_rotation_at - pg_catalog.now())::float8, 4 FROM k
        UNION ALL SELECT 'meshhook_keys_key_encryptions', k.keyring, k.encryptions::float8, 5 FROM k
        UNION ALL SELECT 'meshhook_keys_key_max_encryptions', k.keyring, k.max_encryptions::float8, 6 FROM k
        UNION ALL SELECT 'meshhook_keys_decrypt_only_versions', k.keyring, k.decrypt_only_versions::float8, 7 FROM k
        UNION ALL SELECT 'meshhook_keys_scheduler_failed_attempts', k.keyring, k.failed_attempts::float8, 8 FROM k
        UNION ALL SELECT 'meshhook_keys_scheduler_retry_in_seconds', k.keyring,
                         GREATEST(EXTRACT(epoch FROM k.next_attempt_at - pg_catalog.now()), 0)::float8, 9 FROM k
        UNION ALL SELECT 'meshhook_keys_reencrypt_jobs_running', k.keyring, coalesce(r.jobs, 0), 10 FROM k LEFT JOIN r USING (keyring)
        UNION ALL SELECT 'meshhook_keys_reencrypt_rows_remaining', k.keyring, coalesce(r.remaining, 0), 11 FROM k LEFT JOIN r USING (keyring)
        UNION ALL SELECT 'meshhook_keys_reencrypt_rows_failed', k.keyring, coalesce(r.failed, 0), 12 FROM k LEFT JOIN r USING (keyring)
        UNION ALL SELECT 'meshhook_keys_reencrypt_rows_per_second', k.keyring, r.rate, 13 FROM k JOIN r USING (keyring)
        UNION ALL SELECT 'meshhook_keys_reencrypt_seconds_since_progress', k.keyring, r.idle, 14 FROM k JOIN r USING (keyring)
        UNION ALL SELECT 'meshhook_keys_key_pending_seconds', k.keyring, EXTRACT(epoch FROM pg_catalog.now() - p.created_at)::float8, 15
                    FROM k JOIN meshhook_keys.keys p ON p.keyring = k.keyring AND p.state = 'pending'
        UNION ALL SELECT 'meshhook_keys_scheduler_up', NULL, (s.pid IS NOT NULL)::int::float8, 20 FROM s
        UNION ALL SELECT 'meshhook_keys_scheduler_ticks_total', NULL, s.ticks::float8, 21 FROM s
        UNION ALL SELECT 'meshhook_keys_scheduler_seconds_since_tick', NULL, EXTRACT(epoch FROM pg_catalog.now() - s.last_tick_at)::float8, 22 FROM s
        UNION ALL SELECT 'meshhook_keys_encryptions_counted', NULL, s.counting_encryptions::int::float8, 23 FROM s
    ) m
    WHERE m.value IS NOT NULL
    ORDER BY m.o, m.keyring
$$;
REVOKE EXECUTE ON FUNCTION meshhook_keys.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.metrics() TO meshhook_keys_operator;

-- From Supabase Vault: the store accepts Vault's NULL names, its view has Vault's column name,
-- Vault's create_secret / update_secret, and import_supabase_vault.
ALTER TABLE meshhook_keys.secrets ALTER COLUMN name DROP NOT NULL;
-- (decrypted_secrets takes Vault's columns below, once _store_decrypt exists)

-- Supabase Vault's API, with its names, argument names and defaults (0.5.0), so that code written
-- for vault.create_secret / vault.update_secret runs unchanged against this schema. Tenant ''
-- and keyring 'default', as import_supabase_vault stores Vault's secrets. SECURITY INVOKER, as
-- secret_create: the caller's privileges and RLS policies apply.
CREATE FUNCTION meshhook_keys.create_secret(
    new_secret text, new_name text DEFAULT NULL, new_description text DEFAULT '', new_key_id uuid DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid := pg_catalog.gen_random_uuid();
BEGIN
    IF new_key_id IS NOT NULL THEN
        RAISE EXCEPTION 'new_key_id is a pgsodium key id, which meshhook_keys does not use'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Pass NULL: secrets are encrypted under the active key of a keyring (see secret_create(..., keyring => ...)).';
    END IF;
    IF new_secret IS NULL THEN
        RAISE EXCEPTION 'new_secret must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    INSERT INTO meshhook_keys.secrets (id, tenant, name, description, keyring, ciphertext)
    VALUES (new_id, '', new_name, coalesce(new_description, ''), 'default',
            meshhook_keys.secret_encrypt(new_secret, new_id::text || '/', 'default'));
    RETURN new_id;
END
$$;

-- As Vault's: NULL arguments keep the current value; an id that does not exist (or that the
-- caller's RLS policies hide) changes nothing. The value is sealed again under the keyring's
-- active key, with the row's own context.
CREATE FUNCTION meshhook_keys.update_secret(
    secret_id uuid, new_secret text DEFAULT NULL, new_name text DEFAULT NULL,
    new_description text DEFAULT NULL, new_key_id uuid DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF new_key_id IS NOT NULL THEN
        RAISE EXCEPTION 'new_key_id is a pgsodium key id, which meshhook_keys does not use'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Pass NULL: the secret stays in its keyring and is sealed under its active key.';
    END IF;
    UPDATE meshhook_keys.secrets s
       SET ciphertext = CASE WHEN new_secret IS NULL THEN s.ciphertext
                             ELSE meshhook_keys.secret_encrypt(new_secret, s.id::text || '/' || s.tenant, s.keyring) END,
           name = coalesce(new_name, s.name),
           description = coalesce(new_description, s.description),
           updated_at = pg_catalog.now()
     WHERE s.id = secret_id;
END
$$;

CREATE FUNCTION meshhook_keys."import_supabase_vault"(
	"keyring" TEXT DEFAULT 'default', /* Option < & str > */
	"dry_run" bool DEFAULT true /* Option < bool > */
) RETURNS TABLE (
	"vault_secrets" bigint,  /* i64 */
	"imported" bigint,  /* i64 */
	"already_imported" bigint,  /* i64 */
	"name_conflicts" bigint,  /* i64 */
	"invalid_names" bigint,  /* i64 */
	"unreadable" bigint,  /* i64 */
	"dry_run" bool,  /* bool */
	"skipped" jsonb  /* pgrx::datum::json::JsonB */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_supabase_vault_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.create_secret(text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.update_secret(uuid, text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.import_supabase_vault(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.create_secret(text, text, text, uuid) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.update_secret(uuid, text, text, text, uuid) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.import_supabase_vault(text, boolean) TO meshhook_keys_user, meshhook_keys_operator;

-- A column whose batch raises no longer stops the others of its keyring (issue 23): it is marked
-- 'failed' with its SQLSTATE and (escaped) message, and the job goes on with the other columns.
ALTER TABLE meshhook_keys.reencrypt_progress_column
    DROP CONSTRAINT reencrypt_progress_column_state_check,
    ADD CONSTRAINT reencrypt_progress_column_state_check
        CHECK (state IN ('running', 'done', 'done_with_errors', 'failed')),
    ADD COLUMN sqlstate text,
    ADD COLUMN error text,
    -- where the current pass ends: the table's size when it began (issue 27); NULL (a job begun
    -- by 0.4.0) reads the table's size at each batch, as 0.4.0 did
    ADD COLUMN end_block bigint,
    -- a column backs off after passes that moved nothing or windows that failed for a reason not
    -- its table's own (issue 27)
    ADD COLUMN pass_done bigint NOT NULL DEFAULT 0,
    ADD COLUMN idle integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at timestamptz,
    -- rows still on old keys when the last pass ended (issue 28, hostile review): a pass after
    -- which no fewer are left made no progress
    ADD COLUMN pass_remaining bigint;
CREATE OR REPLACE VIEW meshhook_keys.reencrypt_progress AS
    SELECT j.id AS job_id, j.keyring, j.target_version,
           c.rel AS table_name, c.column_name,
           p.state, p.pass,
           p.rows_total, p.rows_done, p.rows_failed,
           GREATEST(p.rows_total - p.rows_done - p.rows_failed, 0) AS rows_remaining,
           CASE WHEN p.rows_done > 0 AND p.updated_at > p.started_at
                THEN round(p.rows_done / EXTRACT(epoch FROM p.updated_at - p.started_at), 1)
           END AS rows_per_second,
           CASE WHEN p.state <> 'running' THEN interval '0'
                WHEN p.rows_done > 0 AND p.updated_at > p.started_at
                THEN (p.updated_at - p.started_at)
                     * (GREATEST(p.rows_total - p.rows_done - p.rows_failed, 0)::float8 / p.rows_done)
           END AS eta,
           p.started_at, p.updated_at, j.state AS job_state, p.sqlstate, p.error
      FROM meshhook_keys.reencrypt_job j
      JOIN meshhook_keys.reencrypt_progress_column p ON p.job_id = j.id
      JOIN meshhook_keys.encrypted_column c ON c.id = p.column_id;

-- A rotation policy allows fewer than 2^32 encryptions under one key (issue 24): AES-GCM with random
-- 96-bit nonces must stay *below* 2^32 invocations (NIST SP 800-38D). A policy of exactly 2^32
-- becomes 2^32 - 1.
UPDATE meshhook_keys.keyring SET max_encryptions = 4294967295 WHERE max_encryptions > 4294967295;
ALTER TABLE meshhook_keys.keyring
    DROP CONSTRAINT keyring_max_encryptions_check,
    ADD CONSTRAINT keyring_max_encryptions_check CHECK (max_encryptions BETWEEN 1 AND 4294967295);

-- Wrapped data keys are bound to their keyring, version and tenant, not only their key id (issue
-- 24): a row moved to another keyring or tenant by a tampered backup no longer unwraps. Every
-- root-wrapped key is rewrapped here, in this transaction (the root key must be loaded if there
-- are any). A user-held keyring's keys are rewrapped by its next unlock: only its secret can.
ALTER TABLE meshhook_keys.data_key
    DROP CONSTRAINT data_key_wrapped_key_check,
    ADD CONSTRAINT data_key_wrapped_key_check CHECK (pg_catalog.length(wrapped_key) IN (60, 61));
-- A new version waits, as 'pending', until the standbys have replayed it (issue 26): a failover
-- can no longer lose a key that sealed a ciphertext (meshhook_keys.activate_after).
ALTER TABLE meshhook_keys.data_key
    DROP CONSTRAINT data_key_state_check,
    ADD CONSTRAINT data_key_state_check
        CHECK (state IN ('pending', 'active', 'decrypt_only', 'retired', 'destroyed')),
    ADD COLUMN wait_lsn pg_lsn;
CREATE UNIQUE INDEX data_key_one_pending_per_keyring
    ON meshhook_keys.data_key (keyring) WHERE state = 'pending';
-- A logical replica's backends drop their cached keys when the publisher's changes are applied.
CREATE TRIGGER data_key_invalidate_cache_on_apply
    AFTER INSERT OR UPDATE OF key_id, keyring, version, state, wrapped_key, root_fingerprint
       OR DELETE ON meshhook_keys.data_key
    FOR EACH ROW EXECUTE FUNCTION meshhook_keys._key_cache_invalidate();
ALTER TABLE meshhook_keys.data_key ENABLE REPLICA TRIGGER data_key_invalidate_cache_on_apply;
-- Audit ids jump to the next timeline's range after a failover or PITR (issue 26): never reused.
CREATE OR REPLACE FUNCTION meshhook_keys.audit_verify(
    OUT ok boolean, OUT rows_checked bigint, OUT first_bad_id bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r meshhook_keys.audit_log;
    prev bytea := '\x'::bytea;
    expected_id bigint := 1;
BEGIN
    ok := true; rows_checked := 0; first_bad_id := NULL;
    FOR r IN SELECT * FROM meshhook_keys.audit_log ORDER BY id LOOP
        -- (ids jump once to the next timeline's range after a failover or PITR: see
        -- _audit_chain_head; the hashes still chain every row to the one before)
        IF (r.id <> expected_id AND NOT (r.id > expected_id AND r.id % 1099511627776 = 1))
           OR r.prev_hash <> prev
           OR r.hash <> meshhook_keys._audit_row_hash(prev, r) THEN
            ok := false; first_bad_id := r.id;
            RETURN;
        END IF;
        prev := r.hash;
        expected_id := r.id + 1;
        rows_checked := rows_checked + 1;
    END LOOP;
END
$$;
CREATE FUNCTION meshhook_keys._bind_wrapped_keys() RETURNS bigint
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', '_bind_wrapped_keys_wrapper';
SELECT meshhook_keys._bind_wrapped_keys();
DROP FUNCTION meshhook_keys._bind_wrapped_keys();

-- Failed unlocks are counted per keyring over the last minute (meshhook_keys.max_failed_unlocks).
CREATE INDEX audit_log_failed_idx ON meshhook_keys.audit_log (keyring, at) WHERE outcome = 'failed';

-- The built-in store's view refuses an envelope made under another keyring's key than the row
-- names (issue 24): it decrypts through _store_decrypt.
CREATE FUNCTION meshhook_keys."_store_decrypt"(
	"ciphertext" bytea, /* Option < & [u8] > */
	"context" TEXT, /* Option < & str > */
	"keyring" TEXT /* Option < & str > */
) RETURNS TEXT /* PlainText */
STABLE SECURITY DEFINER PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_store_decrypt_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._store_decrypt(bytea, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys._store_decrypt(bytea, text, text) TO meshhook_keys_user;
-- Supabase Vault's decrypted_secrets, column for column (0.5.0), so that a query written for
-- vault.decrypted_secrets runs unchanged with the schema renamed: secret is the ciphertext in
-- base64 (as Vault's), decrypted_secret the plaintext, key_id the data key that sealed it, nonce
-- its nonce; tenant and keyring are ours. Before 0.5.0 secret held the plaintext. Only a query
-- that selects decrypted_secret decrypts. _store_decrypt is secret_decrypt that also refuses an
-- envelope made under another keyring's key than the row names (0.5.0).
CREATE OR REPLACE VIEW meshhook_keys.decrypted_secrets WITH (security_invoker = true) AS
    SELECT s.id, s.tenant, s.name, s.description, s.keyring,
           pg_catalog.encode(s.ciphertext, 'base64') AS secret,
           s.created_at, s.updated_at,
           meshhook_keys._store_decrypt(s.ciphertext, s.id::text || '/' || s.tenant, s.keyring) AS decrypted_secret,
           meshhook_keys.ciphertext_key_id(s.ciphertext) AS key_id,
           pg_catalog.substr(s.ciphertext, 10, 12) AS nonce
      FROM meshhook_keys.secrets s;

-- Every function, procedure and view says who may call it (issue 25): its comment ends with the
-- sentence described in sql/finalize.sql, which these comments repeat word for word.
COMMENT ON TABLE meshhook_keys.audit_log IS
    'Append-only, hash-chained log of key actions and refused calls: who, what, which keyring/version, when. Never contains plaintext or key material. Verify with meshhook_keys.audit_verify(). Requires meshhook_keys_operator.';
COMMENT ON TABLE meshhook_keys.reencrypt_failure IS
    'Rows that could not be re-encrypted, by primary key (or ctid) with the SQLSTATE and error; never values. Requires meshhook_keys_operator.';
COMMENT ON TABLE meshhook_keys.secrets IS
    'The built-in secrets store: one envelope per (tenant, name), bound to its row id and tenant; name may be NULL, as in Supabase Vault. Row-level security is enabled; add policies for your tenancy model. Registered for re-encryption in every keyring. Requires meshhook_keys_user; row-level security policies decide which rows.';
COMMENT ON VIEW meshhook_keys.keys IS
    'Key versions per keyring with their state and timestamps. Metadata only, never key material. Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.encrypted_columns IS
    'Registered ciphertext columns, whether their table still exists, and their blind index column and its context expression (register_blind_index). Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.reencrypt_progress IS
    'Re-encryption progress per job and column, in the spirit of pg_stat_progress_*: rows total/done/failed/remaining, rate, ETA; a column whose batch raised is failed, with its SQLSTATE and error. Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.keyrings IS
    'Each keyring with its active version, that key''s age and encryptions (NULL when the library is not preloaded), its rotation policy, when it is due, the scheduler''s backoff after a failure, its tenant, whether it was destroyed and whether it is user-held. Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.decrypted_secrets IS
    'The secrets store with values decrypted, with Supabase Vault''s columns and meanings: secret is the ciphertext (base64), decrypted_secret the plaintext, key_id the data key that sealed it, nonce its nonce; tenant and keyring are the store''s. security_invoker: the caller''s privileges and RLS policies apply. Requires meshhook_keys_user; row-level security policies on meshhook_keys.secrets decide which rows.';
COMMENT ON FUNCTION meshhook_keys.secret_encrypt(text, text, text) IS
    'Encrypt text under the active key of a keyring (default ''default'', created on first use), bound to a context string (e.g. tenant and row id) that must be given again to decrypt. Returns a self-describing envelope: format byte, key id, nonce, AES-256-GCM ciphertext and tag. Requires meshhook_keys_user; a tenant-bound keyring also needs the approval of meshhook_keys.tenant_check, a user-held one an unlock.';
COMMENT ON FUNCTION meshhook_keys.secret_encrypt_bytea(bytea, text, text) IS
    'Like secret_encrypt, for binary plaintext. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.';
COMMENT ON FUNCTION meshhook_keys.secret_decrypt(bytea, text) IS
    'Decrypt an envelope with the key version named in its header, given the same context used at encryption. Returns text. Requires meshhook_keys_user; a tenant-bound keyring also needs the approval of meshhook_keys.tenant_check, a user-held one an unlock.';
COMMENT ON FUNCTION meshhook_keys.secret_decrypt_bytea(bytea, text) IS
    'Like secret_decrypt, returning bytea. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';
COMMENT ON FUNCTION meshhook_keys._store_decrypt(bytea, text, text) IS
    'Internal (the view decrypted_secrets): secret_decrypt that also refuses (XX001) an envelope whose key is not of the row''s keyring. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';
COMMENT ON FUNCTION meshhook_keys.ciphertext_key_id(bytea) IS
    'The key id in an envelope header, without decrypting. IMMUTABLE: index it to find rows still encrypted under an old key version. Requires meshhook_keys_user or meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keys_rotate(text, text) IS
    'Make a new key version the active one for a keyring (creating the keyring if needed); earlier versions keep decrypting. With standbys it is pending (activated_at NULL) until they have replayed it, as meshhook_keys.activate_after says; the scheduler then activates it. O(1), touches no user data, audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.audit_verify() IS
    'Recompute the audit log hash chain. ok is false, with the first bad id, if any row was altered, inserted or removed before the newest one. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.register_column(regclass, name, text, text) IS
    'Register a bytea column holding envelopes of a keyring, with the SQL expression over the row that gives its encryption context (NULL means the empty context). Audited. Requires meshhook_keys_operator; also requires the privileges of the table''s owner.';
COMMENT ON FUNCTION meshhook_keys._register_column(oid, text, text, text) IS
    'Internal: register_column by table oid. Requires meshhook_keys_operator; also requires the privileges of the table''s owner.';
COMMENT ON FUNCTION meshhook_keys.unregister_column(regclass, name, text) IS
    'Forget a registered column for one keyring, or for all keyrings when keyring is NULL (its data is untouched). Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys._unregister_column(oid, text, text) IS
    'Internal: unregister_column by table oid. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.create_secret(text, text, text, uuid) IS
    'Supabase Vault''s create_secret over the built-in store (tenant '''', keyring default): encrypts new_secret before the row is written and returns its id. new_key_id must be NULL (there are no pgsodium keys). The caller''s privileges and RLS policies apply. Requires meshhook_keys_user; a row-level security policy on meshhook_keys.secrets must allow the row.';
COMMENT ON FUNCTION meshhook_keys.update_secret(uuid, text, text, text, uuid) IS
    'Supabase Vault''s update_secret over the built-in store: NULL arguments keep the current value; the new value is sealed under the keyring''s active key; an id that does not exist (or that RLS hides) changes nothing. new_key_id must be NULL. Requires meshhook_keys_user; row-level security policies on meshhook_keys.secrets decide which rows.';
COMMENT ON FUNCTION meshhook_keys.import_supabase_vault(text, boolean) IS
    'Copy every secret of Supabase Vault (vault.decrypted_secrets) into the built-in store under keyring, encrypted before any row is written, keeping ids, names, descriptions and timestamps; Vault is not changed. Idempotent: secrets already imported (same id) are skipped. A secret Vault cannot decrypt, with an empty name, or whose name the store already has is skipped, counted and named by id in skipped; it never stops the others. dry_run (the default) classifies exactly as the real run would and writes no secret. Concurrent imports run one after the other. Audited with counts only, also when it fails. Requires meshhook_keys_operator; Vault is read with the caller''s privileges.';
COMMENT ON FUNCTION meshhook_keys.secret_create(text, text, text, text, text) IS
    'Store a new secret in meshhook_keys.secrets; the plaintext is encrypted before the row is written. Returns its id. Requires meshhook_keys_user; a row-level security policy on meshhook_keys.secrets must allow the row.';
COMMENT ON FUNCTION meshhook_keys.secret_update(text, text, text, text) IS
    'Replace the value (and optionally the description) of a stored secret, by tenant and name. Returns its id. Requires meshhook_keys_user; row-level security policies on meshhook_keys.secrets decide which rows.';
COMMENT ON FUNCTION meshhook_keys.reencrypt_batch(text, integer) IS
    'Re-encrypt one bounded batch of a keyring''s registered rows to its active key inside the caller''s transaction; returns rows moved, or NULL when nothing is left. Requires meshhook_keys_operator.';
COMMENT ON PROCEDURE meshhook_keys.reencrypt(text, integer) IS
    'Re-encrypt every registered row of a keyring to its active key, committing after each batch (CALL it outside a transaction block). Resumable: call it again after any interruption. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.key_usage(text) IS
    'Rows per key version in each registered column of a keyring (full scan of each table). Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys._key_usage(text) IS
    'Internal: key_usage with table oids. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.verify(integer) IS
    'Whether stored ciphertexts still decrypt: for each registered column and keyring, up to sample rows on one of the keyring''s versions are read as the table owner (restricted; the context expression is the owner''s code) and decrypted; only counts are returned. locked counts rows of user-held keyrings the caller has not unlocked. A column that cannot be read gets its error in its own row. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys._verify(integer) IS
    'Internal: verify with table oids. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keys_retire(text, integer, boolean) IS
    'Retire a decrypt-only key version (decryption refused afterwards). Refused while registered rows reference it unless force => true. Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean) IS
    'Destroy a retired key version: wipe its wrapped key material (crypto-erasure). Refused while registered rows reference it unless force => true, as keys_retire. Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.root_key_rewrap() IS
    'Rewrap every data key wrapped by the previous root key (meshhook_keys.root_key_previous_file / _command) under the current root key, in one transaction, touching no user rows. Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keyring_set_policy(text, interval, bigint) IS
    'Set a keyring''s rotation policy: rotate when the active key is older than rotation_interval (NULL: manual only) or has encrypted max_encryptions times (NULL: meshhook_keys.default_max_encryptions; at most 2^32). Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keyring_create(text, text, text) IS
    'Create a keyring and its version 1, optionally bound to a tenant: then only sessions that meshhook_keys.tenant_check approves (or members of meshhook_keys_service) may encrypt or decrypt with it. Audited; key event on events_channel(). Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keyring_destroy(text, text) IS
    'Crypto-shred a keyring: wipe the key material of every version, so nothing it encrypted can ever be decrypted again, and refuse any further use of the name. Returns the versions destroyed. Audited; key event on events_channel(). Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keyring_reclaim(text, text) IS
    'Free the name of a destroyed keyring (for example one squatted before user-held keyrings had their own user: namespace): its key tombstones, registrations and re-encryption history are deleted so that the name can be created again. Its ciphertexts were undecryptable already and now report an unknown key id. Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) IS
    'Create a user-held keyring (its name must begin with user:, a namespace no other keyring may use): its data keys are wrapped by a key derived from the secret with Argon2id (parameters and salt stored, never the secret), not by the root key. Left unlocked in this session. Pass the secret as a bind parameter. Requires meshhook_keys_user.';
COMMENT ON FUNCTION meshhook_keys.keyring_unlock(text, text, text) IS
    'Unlock a user-held keyring for the calling role (and JWT sub, when request.jwt.claims is set) only: scope ''session'' (from commit until keyring_lock, DISCARD ALL, a session authorization change or the end of the session) or ''transaction'' (zeroized at commit or abort; use it behind connection poolers). Nothing is unlocked if the transaction rolls back. A wrong secret costs a full Argon2id derivation, is refused with 28P01 and audited. Requires meshhook_keys_user; also requires the keyring''s secret.';
COMMENT ON FUNCTION meshhook_keys.keyring_lock(text) IS
    'Forget and zeroize a user-held keyring''s keys in this session. True if it was unlocked. Requires meshhook_keys_user.';
COMMENT ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) IS
    'Change a user-held keyring''s secret: verify the old one, rewrap every version under the new one (O(1), atomic, audited without secrets). With reencrypt => true, also a new data key and every registered row re-encrypted in the same transaction. Requires meshhook_keys_user; also requires the keyring''s current secret.';
COMMENT ON FUNCTION meshhook_keys.health() IS
    'Whether this server keeps secrets secret: root key, scheduler, tenant check, and every logging setting (log_statement, log_min_duration_statement, log_parameter_max_length(_on_error), log_min_error_statement, auto_explain) that would write secret-bearing statements to the log. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.events_channel() IS
    'The channel to LISTEN on for key events (rotate, create, activate, retire, destroy, keyring_destroy; JSON metadata at commit). The name is random per database, so that roles that cannot call this function cannot listen. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.tick() IS
    'Run one scheduler tick now in the caller''s transaction: rotate due keyrings, then advance pending re-encryption a bounded number of batches. For pg_cron where the background worker cannot run. Actions audited with actor scheduler. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.scheduler_status() IS
    'How this database is served by the background workers (the scheduler in meshhook_keys.database, a short-lived database worker per tick in every other database with the extension): pid of the worker serving it now, database, state, naptime, ticks, last tick, whether encryptions are counted. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys._encryptions_pending(bigint) IS
    'Internal (the view keyrings): encryptions under a key counted in shared memory and not yet written to its row; NULL when the library is not preloaded. Requires meshhook_keys_operator.';
-- The two per-row functions take the statement's token first (0.5.0): the table owner's code that
-- runs inside a batch's UPDATE can no longer call them.
DROP FUNCTION meshhook_keys._reencrypt_try(tid, bytea, text);
DROP FUNCTION meshhook_keys._reencrypt_take(tid);
CREATE FUNCTION meshhook_keys."_reencrypt_try"(
	"token" bytea,
	"row" tid,
	"ciphertext" bytea,
	"context" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_reencrypt_try_wrapper';
CREATE FUNCTION meshhook_keys."_reencrypt_take"(
	"token" bytea,
	"row" tid
) RETURNS bytea
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_reencrypt_take_wrapper';
ALTER FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) COST 100000;
-- (revoked first, as the fresh install's finalize does for every function, so that the two ACLs read
-- the same)
REVOKE ALL ON FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys._reencrypt_take(bytea, tid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_take(bytea, tid) TO PUBLIC;
COMMENT ON FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) IS
    'Internal to re-encryption batches: decrypt one claimed row and seal it under the target key, for the statement that passes the batch''s random token. Executable by PUBLIC; a batch''s UPDATE calls it as the table''s owner, whoever that is, and it refuses (42501) any call but that statement''s.';
COMMENT ON FUNCTION meshhook_keys._reencrypt_take(bytea, tid) IS
    'Internal to re-encryption batches: the envelope _reencrypt_try prepared for the same row. Executable by PUBLIC; a batch''s UPDATE calls it as the table''s owner, whoever that is, and it refuses (42501) any call but that statement''s.';
COMMENT ON FUNCTION meshhook_keys._log_line(text) IS
    'Internal: write one line to the server log at LOG level without the client''s statement or context (which may hold a literal secret). Used by the audit chain trigger for the audit mirror. Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys._audit_chain_head() IS
    'Internal: take the audit chain lock until commit (a lock tag no SQL advisory-lock function can name, so no other role can take or delay it) and return the chain''s last id and hash as committed now; after a failover or PITR the id is the new timeline''s floor, so no id is ever reused. Used by the audit chain trigger. Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys._audit_row_hash(bytea, meshhook_keys.audit_log) IS
    'Internal: the hash of one audit row chained to its predecessor''s hash (the audit chain trigger and audit_verify). Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys._audit_chain() IS
    'Internal: the audit log''s insert trigger, which numbers each row, chains its hash and mirrors it to the server log. Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys._audit_append_only() IS
    'Internal: the audit log''s update, delete and truncate trigger, which refuses them. Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys._key_cache_invalidate() IS
    'Internal: the triggers on data_key that make every backend drop its cached keys (a statement trigger, and a row trigger for a logical replica''s apply). Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys._key_cache_stats() IS
    'Internal: this backend''s key cache counters (never key material), for tests and troubleshooting. Executable only by the extension''s owner.';
COMMENT ON FUNCTION meshhook_keys.metrics() IS
    'Monitoring metrics, one row per metric and keyring (keyring NULL for the server): active version, key age, rotation interval and seconds until the next scheduled rotation (negative: overdue), encryptions under the active key and their limit, decrypt-only versions, scheduler failures and retry delay, re-encryption jobs, rows remaining, failed, rate and seconds since the last progress, seconds a pending version has waited for the standbys, and the scheduler''s state. Destroyed keyrings are left out; a metric that does not apply has no row. Requires meshhook_keys_operator.';

-- rewrap (issue 28): one envelope moved to its keyring's active version, the plaintext never
-- leaving the function.
CREATE FUNCTION meshhook_keys."rewrap"(
	"ciphertext" bytea,
	"context" TEXT DEFAULT ''
) RETURNS bytea
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'rewrap_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.rewrap(bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.rewrap(bytea, text) TO meshhook_keys_user;
COMMENT ON FUNCTION meshhook_keys.rewrap(bytea, text) IS
    'Move an envelope to the active version of its keyring without returning the plaintext (Vault Transit''s rewrap), for ciphertext the column registry cannot see (inside jsonb, in caches, in other systems): opened with the key its header names and the given context, sealed again under the active key with the same context. An envelope already on the active version is returned as it is. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt and secret_encrypt.';

-- Signatures (issue 28): hmac_sign/hmac_verify and the webhook header, under keys derived from
-- each version's data key.
CREATE FUNCTION meshhook_keys."hmac_sign"(
	"payload" bytea,
	"keyring" TEXT,
	"context" TEXT DEFAULT ''
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'hmac_sign_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.hmac_sign(bytea, text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."hmac_verify"(
	"payload" bytea,
	"signature" TEXT,
	"keyring" TEXT,
	"context" TEXT DEFAULT ''
) RETURNS bool
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'hmac_verify_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.hmac_verify(bytea, text, text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."webhook_sign"(
	"payload" bytea,
	"keyring" TEXT,
	"context" TEXT DEFAULT '',
	"at" timestamp with time zone DEFAULT now()
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'webhook_sign_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.webhook_sign(bytea, text, text, timestamptz) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."webhook_verify"(
	"payload" bytea,
	"header" TEXT,
	"keyring" TEXT,
	"context" TEXT DEFAULT '',
	"tolerance" interval DEFAULT '5 minutes',
	"at" timestamp with time zone DEFAULT now()
) RETURNS bool
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'webhook_verify_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.webhook_verify(bytea, text, text, text, interval, timestamptz) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."webhook_secret"(
	"keyring" TEXT,
	"context" TEXT DEFAULT '',
	"version" INT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'webhook_secret_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.webhook_secret(text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.hmac_sign(bytea, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.hmac_verify(bytea, text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.webhook_sign(bytea, text, text, timestamptz) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.webhook_verify(bytea, text, text, text, interval, timestamptz) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.webhook_secret(text, text, integer) TO meshhook_keys_operator;
COMMENT ON FUNCTION meshhook_keys.hmac_sign(bytea, text, text) IS
    'Sign a payload under the active version of a keyring, bound to a context: returns meshhook:v<version>:<hex>, HMAC-SHA256 under a key derived from that version''s data key (so it rotates, retires and is destroyed with it). Not counted against the encryption limit. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.';
COMMENT ON FUNCTION meshhook_keys.hmac_verify(bytea, text, text, text) IS
    'Whether a signature made by hmac_sign signs the payload with the same context under a version of the keyring that is not retired or destroyed (pending, active or decrypt-only), compared in constant time. A malformed signature, or one of another keyring or of a retired version, is false. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';
COMMENT ON FUNCTION meshhook_keys.webhook_sign(bytea, text, text, timestamptz) IS
    'The webhook signature header t=<unix seconds>,v1=<hex>[,v1=<hex>...] for a payload sent at a time (default now()): HMAC-SHA256 over <unix seconds>.<payload> keyed by the receiver''s secret (webhook_secret) of each version that signs, the active one then every decrypt-only one, newest first, so that receivers holding the previous secret keep verifying until its version is retired. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.';
COMMENT ON FUNCTION meshhook_keys.webhook_verify(bytea, text, text, text, interval, timestamptz) IS
    'Whether a webhook header made by webhook_sign (or any sender of the same scheme) carries a v1 signature of the payload under a version of the keyring that is not retired or destroyed, with a timestamp within the tolerance (default 5 minutes, either side) of a time (default now()). A malformed header is false. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';
COMMENT ON FUNCTION meshhook_keys.webhook_secret(text, text, integer) IS
    'The secret (whsec_ and 64 hex digits) a webhook receiver of a context verifies with, for a version of the keyring that still signs (default: the active one). Derived from the version''s data key, it reveals nothing of it or of other contexts'' secrets. Audited. Requires meshhook_keys_operator.';

-- Blind indexes (issue 28): equality search over encrypted values; a registered column may name
-- its index column, which re-encryption recomputes.
ALTER TABLE meshhook_keys.encrypted_column
    ADD COLUMN blind_index_column name,
    ADD COLUMN blind_index_context text,
    ADD COLUMN blind_index_attnum smallint;
CREATE OR REPLACE VIEW meshhook_keys.encrypted_columns AS
    SELECT c.id, c.rel AS table_name, c.column_name, c.context_expr, c.keyring,
           c.registered_at, c.registered_by,
           pg_catalog.to_regclass(c.rel::text) IS NOT NULL AS table_exists,
           c.blind_index_column, c.blind_index_context
      FROM meshhook_keys.encrypted_column c;
CREATE FUNCTION meshhook_keys."blind_index"(
	"value" TEXT,
	"keyring" TEXT,
	"context" TEXT DEFAULT ''
) RETURNS bytea
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'blind_index_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.blind_index(text, text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."blind_index_candidates"(
	"value" TEXT,
	"keyring" TEXT,
	"context" TEXT DEFAULT ''
) RETURNS bytea[]
STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'blind_index_candidates_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.blind_index_candidates(text, text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."_register_blind_index"(
	"tbl" oid,
	"col" TEXT,
	"index_col" TEXT,
	"index_context" TEXT,
	"keyring" TEXT
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', '_register_blind_index_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._register_blind_index(oid, text, text, text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."_reencrypt_try_indexed"(
	"token" bytea,
	"row" tid,
	"ciphertext" bytea,
	"context" TEXT,
	"index_context" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_reencrypt_try_indexed_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._reencrypt_try_indexed(bytea, tid, bytea, text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."_reencrypt_index"(
	"token" bytea,
	"row" tid
) RETURNS bytea
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_reencrypt_index_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._reencrypt_index(bytea, tid) FROM PUBLIC;
CREATE FUNCTION meshhook_keys.register_blind_index(
    tbl regclass, col name, index_col name, index_context text DEFAULT NULL, keyring text DEFAULT 'default')
RETURNS boolean LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT meshhook_keys._register_blind_index(tbl::oid, col::text, index_col::text, index_context, keyring) $$;
REVOKE ALL ON FUNCTION meshhook_keys.register_blind_index(regclass, name, name, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.blind_index(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.blind_index_candidates(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.register_blind_index(regclass, name, name, text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._register_blind_index(oid, text, text, text, text) TO meshhook_keys_user, meshhook_keys_operator;
ALTER FUNCTION meshhook_keys._reencrypt_try_indexed(bytea, tid, bytea, text, text) COST 100000;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_try_indexed(bytea, tid, bytea, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_index(bytea, tid) TO PUBLIC;
COMMENT ON FUNCTION meshhook_keys.blind_index(text, text, text) IS
    'The blind index of a value under the active version of a keyring for a context: the first 16 bytes of HMAC-SHA256 under a key derived from that version''s data key. Equal values give equal indexes, and the index reveals nothing else (equality leaks: see the Blind indexes page). Store it beside the ciphertext and search with blind_index_candidates. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.';
COMMENT ON FUNCTION meshhook_keys.blind_index_candidates(text, text, text) IS
    'The blind index of a value under every version of a keyring that still decrypts (pending, active, decrypt-only), newest first: WHERE idx = ANY (blind_index_candidates(value, keyring, context)) finds the value''s rows before, during and after a rotation. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';
COMMENT ON FUNCTION meshhook_keys.register_blind_index(regclass, name, name, text, text) IS
    'Name the bytea column holding the blind index of a registered ciphertext column, with the SQL expression over the row that gives the index''s context (NULL means the empty context); re-encryption then recomputes the index under the new version with every row it moves. index_col NULL forgets it. Returns whether an index column is now set. Audited. Requires meshhook_keys_operator; also requires the privileges of the table''s owner.';
COMMENT ON FUNCTION meshhook_keys._register_blind_index(oid, text, text, text, text) IS
    'Internal: register_blind_index by table oid. Requires meshhook_keys_operator; also requires the privileges of the table''s owner.';
COMMENT ON FUNCTION meshhook_keys._reencrypt_try_indexed(bytea, tid, bytea, text, text) IS
    'Internal to re-encryption batches: _reencrypt_try for a column with a blind index, which also computes the row''s index under the target key. Executable by PUBLIC; a batch''s UPDATE calls it as the table''s owner, whoever that is, and it refuses (42501) any call but that statement''s.';
COMMENT ON FUNCTION meshhook_keys._reencrypt_index(bytea, tid) IS
    'Internal to re-encryption batches: the blind index _reencrypt_try_indexed computed for the same row. Executable by PUBLIC; a batch''s UPDATE calls it as the table''s owner, whoever that is, and it refuses (42501) any call but that statement''s.';

-- Data keys for encryption outside the database (issue 28).
CREATE FUNCTION meshhook_keys."datakey_generate"(
	"keyring" TEXT,
	"context" TEXT DEFAULT '',
	"with_plaintext" bool DEFAULT true
) RETURNS TABLE (
	"data_key" bytea,
	"envelope" bytea
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'datakey_generate_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.datakey_generate(text, text, boolean) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."datakey_unwrap"(
	"envelope" bytea,
	"context" TEXT DEFAULT ''
) RETURNS bytea
STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'datakey_unwrap_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.datakey_unwrap(bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.datakey_generate(text, text, boolean) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.datakey_unwrap(bytea, text) TO meshhook_keys_user;
COMMENT ON FUNCTION meshhook_keys.datakey_generate(text, text, boolean) IS
    'A new random 256-bit data key for encryption outside the database (Vault Transit''s datakey, AWS KMS''s GenerateDataKey) and its envelope under the active key of a keyring, bound to a context. Store the envelope, use the key and forget it; with with_plaintext => false only the envelope. The envelope is an ordinary one: counted against the encryption limit, moved by rotation, re-encryption of a registered column and rewrap. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.';
COMMENT ON FUNCTION meshhook_keys.datakey_unwrap(bytea, text) IS
    'The data key in an envelope made by datakey_generate, given the same context; refused (22023) when the envelope holds anything but a 256-bit key. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';

-- Keyring export and import (issue 28), and the role that may use them.
DO $roles$
BEGIN
    -- Custody of the key material (0.5.0, issue 28): keyring_export and keyring_import, which hand
    -- out or take in every key of a keyring. Granted to nobody, not even meshhook_keys_admin.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_custodian') THEN
        CREATE ROLE meshhook_keys_custodian NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
END
$roles$;
-- (PUBLIC's USAGE re-granted after, so that the schema ACL reads as on a fresh install)
REVOKE USAGE ON SCHEMA meshhook_keys FROM PUBLIC;
GRANT USAGE ON SCHEMA meshhook_keys TO meshhook_keys_custodian;
GRANT USAGE ON SCHEMA meshhook_keys TO PUBLIC;
CREATE FUNCTION meshhook_keys."keyring_export"(
	"keyring" TEXT,
	"wrapping_key" bytea,
	"secret" TEXT DEFAULT NULL
) RETURNS bytea
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'keyring_export_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_export(text, bytea, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."keyring_import"(
	"bundle" bytea,
	"wrapping_key" bytea,
	"keyring" TEXT DEFAULT NULL,
	"secret" TEXT DEFAULT NULL
) RETURNS TABLE (
	"keyring" TEXT,
	"versions" INT,
	"active_version" INT
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'keyring_import_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keyring_import(bytea, bytea, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_export(text, bytea, text) TO meshhook_keys_custodian;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_import(bytea, bytea, text, text) TO meshhook_keys_custodian;
COMMENT ON FUNCTION meshhook_keys.keyring_export(text, bytea, text) IS
    'Every version of a keyring (its metadata, and the data key of each version not destroyed) sealed under a caller-supplied 256-bit wrapping key (AES-256-GCM, the metadata readable and authenticated): a bundle for keyring_import in another database, for moving between clusters with different root keys or bringing your own key. A user-held keyring needs its secret. Audited, also when the caller rolls back. Requires meshhook_keys_custodian.';
COMMENT ON FUNCTION meshhook_keys.keyring_import(bytea, bytea, text, text) IS
    'Import a keyring from a bundle made by keyring_export, under its name or another: its keys wrapped under this database''s root key (a user-held keyring''s under a key derived from the secret given), its key ids, versions, states and usage counts kept, so every ciphertext of the keyring decrypts here. Refused for a name or key id this database has (42710), and for an altered bundle or another wrapping key (XX001). Audited. Requires meshhook_keys_custodian.';

-- Retirement is reversible until destruction (issue 28).
CREATE FUNCTION meshhook_keys."keys_unretire"(
	"keyring" TEXT,
	"version" INT,
	"reason" TEXT DEFAULT NULL
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'keys_unretire_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keys_unretire(text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_unretire(text, integer, text) TO meshhook_keys_user, meshhook_keys_operator;
COMMENT ON FUNCTION meshhook_keys.keys_unretire(text, integer, text) IS
    'Take back a retirement: a retired key version decrypts again (decrypt_only), for when retiring it was a mistake (a column that was not registered still holds its rows). Retirement is reversible until the version is destroyed; refused (55000) for a version that is not retired, or that is destroyed. Audited, with the reason given. Requires meshhook_keys_operator.';

-- find_unregistered (issue 28): forgetting a column must not silently destroy data.
CREATE FUNCTION meshhook_keys."_find_unregistered"(
	"keyring" TEXT,
	"max_blocks" INT
) RETURNS TABLE (
	"table_oid" oid,
	"column_name" TEXT,
	"rows" bigint,
	"blocks_read" bigint,
	"blocks" bigint,
	"error" TEXT
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', '_find_unregistered_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys._find_unregistered(text, integer) FROM PUBLIC;
CREATE FUNCTION meshhook_keys.find_unregistered(keyring text DEFAULT 'default', max_blocks integer DEFAULT 131072)
RETURNS TABLE (table_name regclass, column_name name, rows bigint, blocks_read bigint, blocks bigint, error text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT f.table_oid::regclass, f.column_name::name, f.rows, f.blocks_read, f.blocks, f.error
        FROM meshhook_keys._find_unregistered(keyring, max_blocks) f $$;
REVOKE ALL ON FUNCTION meshhook_keys.find_unregistered(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.find_unregistered(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._find_unregistered(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
COMMENT ON FUNCTION meshhook_keys.find_unregistered(text, integer) IS
    'The bytea columns of this database (ordinary tables and materialized views, outside the system and extension schemas) that are not registered for a keyring and hold its envelopes: re-encryption never moves them, and retiring or destroying a version they use makes them undecryptable. Each column is read as its table''s owner, sealed, at most max_blocks blocks, lock_timeout 1s; a column whose read failed (error) or stopped early (blocks_read < blocks) is listed too. Only envelope headers are compared, nothing is decrypted. Audited; keys_retire warns when it has not run since the last registration. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys._find_unregistered(text, integer) IS
    'Internal: find_unregistered with table oids. Requires meshhook_keys_operator.';

-- Destruction with a grace period (issue 28): keys_destroy(..., after => interval) schedules it,
-- the scheduler carries it out, keys_destroy_cancel (or keys_unretire) takes it back.
ALTER TABLE meshhook_keys.data_key
    ADD COLUMN destroy_at timestamptz,
    ADD COLUMN destroy_forced boolean NOT NULL DEFAULT false;
CREATE OR REPLACE VIEW meshhook_keys.keys AS
    SELECT keyring, version, key_id, state, created_at, activated_at, retired_at, destroy_at
      FROM meshhook_keys.data_key;
DROP FUNCTION meshhook_keys.keys_destroy(text, integer, boolean);
CREATE FUNCTION meshhook_keys."keys_destroy"(
	"keyring" TEXT,
	"version" INT,
	"force" bool DEFAULT false,
	"after" interval DEFAULT NULL
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'keys_destroy_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean, interval) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."keys_destroy_cancel"(
	"keyring" TEXT,
	"version" INT
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'keys_destroy_cancel_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.keys_destroy_cancel(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean, interval) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_destroy_cancel(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
COMMENT ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean, interval) IS
    'Destroy a retired key version: its wrapped key material is wiped (crypto-erasure), so nothing it encrypted can ever be decrypted again. Refused while registered rows reference it, unless forced (as keys_retire). With after => interval, scheduled instead (the same checks now): the scheduler destroys it once the interval has passed, checking again, and keys_destroy_cancel or keys_unretire take it back until then (keys.destroy_at shows when). Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keys_destroy_cancel(text, integer) IS
    'Cancel a destruction scheduled by keys_destroy(..., after => ...); refused (55000) when none is scheduled for the version. Audited. Requires meshhook_keys_operator.';

-- reencrypt_pause / reencrypt_resume (issue 29): a keyring whose re-encryption the scheduler skips
ALTER TABLE meshhook_keys.keyring ADD COLUMN reencrypt_paused boolean NOT NULL DEFAULT false;
CREATE OR REPLACE VIEW meshhook_keys.keyrings AS
SELECT k.name                                            AS keyring,
       a.version                                         AS active_version,
       a.activated_at,
       pg_catalog.now() - a.activated_at                 AS active_age,
       k.rotation_interval,
       a.activated_at + k.rotation_interval              AS next_rotation_at,
       coalesce(k.max_encryptions,
                pg_catalog.current_setting('meshhook_keys.default_max_encryptions', true)::bigint,
                1073741824)                              AS max_encryptions,
       k.max_encryptions IS NOT NULL                     AS max_encryptions_set,
       a.encryptions + meshhook_keys._encryptions_pending(a.key_id) AS encryptions,
       (SELECT pg_catalog.count(*) FROM meshhook_keys.data_key d
         WHERE d.keyring = k.name AND d.state = 'decrypt_only') AS decrypt_only_versions,
       k.failed_attempts,
       k.next_attempt_at,
       k.last_error,
       k.tenant,
       k.destroyed_at,
       k.user_held,
       k.reencrypt_paused
  FROM meshhook_keys.keyring k
  LEFT JOIN meshhook_keys.data_key a ON a.keyring = k.name AND a.state = 'active';
COMMENT ON VIEW meshhook_keys.keyrings IS
    'Each keyring with its active version, that key''s age and encryptions (NULL when the library is not preloaded), its rotation policy, when it is due, the scheduler''s backoff after a failure, its tenant, whether it was destroyed, whether it is user-held and whether its re-encryption is paused (reencrypt_pause). Requires meshhook_keys_operator.';
CREATE FUNCTION meshhook_keys."reencrypt_pause"(
	"keyring" TEXT,
	"reason" TEXT DEFAULT NULL
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'reencrypt_pause_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.reencrypt_pause(text, text) FROM PUBLIC;
CREATE FUNCTION meshhook_keys."reencrypt_resume"(
	"keyring" TEXT,
	"reason" TEXT DEFAULT NULL
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'reencrypt_resume_wrapper';
REVOKE ALL ON FUNCTION meshhook_keys.reencrypt_resume(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.reencrypt_pause(text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.reencrypt_resume(text, text) TO meshhook_keys_user, meshhook_keys_operator;
COMMENT ON FUNCTION meshhook_keys.reencrypt_pause(text, text) IS
    'Pause the scheduler''s re-encryption of a keyring: its job and cursor are kept and the scheduler skips it until reencrypt_resume (an operator''s reencrypt_batch or CALL reencrypt still runs). Returns whether it was running before. Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.reencrypt_resume(text, text) IS
    'Resume the scheduler''s re-encryption of a keyring paused by reencrypt_pause, from where it stopped. Returns whether it was paused. Audited. Requires meshhook_keys_operator.';
