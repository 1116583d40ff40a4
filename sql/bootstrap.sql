-- meshhook_keys bootstrap: roles, tables, audit chain. Runs before the generated functions.

-- Roles are cluster-wide and survive DROP EXTENSION, so create them only if missing.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_user') THEN
        CREATE ROLE meshhook_keys_user NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_admin') THEN
        CREATE ROLE meshhook_keys_admin NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
    -- Members bypass the tenant check of tenant-bound keyrings, explicitly (0.4.0).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_service') THEN
        CREATE ROLE meshhook_keys_service NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
    -- Rotation, re-encryption, retirement, destruction, policies and the audit log, without the
    -- decrypt functions (0.5.0).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_operator') THEN
        CREATE ROLE meshhook_keys_operator NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
    -- Custody of the key material (0.5.0, issue 28): keyring_export and keyring_import, which hand
    -- out or take in every key of a keyring. Granted to nobody, not even meshhook_keys_admin.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_custodian') THEN
        CREATE ROLE meshhook_keys_custodian NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
END
$roles$;
-- An admin is the combined grant for small deployments: everything a user and an operator can do.
GRANT meshhook_keys_user TO meshhook_keys_admin;
GRANT meshhook_keys_operator TO meshhook_keys_admin;

-- Keyrings: a named sequence of key versions.
CREATE TABLE meshhook_keys.keyring (
    name        text        PRIMARY KEY
                CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rotated_at  timestamptz,
    -- rotation policy (0.3.0): by age of the active key and by encryptions under it
    rotation_interval interval CHECK (rotation_interval > interval '0'),
    max_encryptions   bigint   CHECK (max_encryptions BETWEEN 1 AND 4294967295),
    -- the scheduler's backoff after a failed scheduled action
    failed_attempts   integer  NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,
    last_error        text,
    -- the tenant this keyring belongs to (0.4.0): meshhook_keys.tenant_check decides who may use it
    tenant            text,
    -- set by keyring_destroy (0.4.0): every version destroyed, the keyring can never be used again
    destroyed_at      timestamptz,
    -- user-held (0.4.0): keys wrapped by a key derived from the user's secret with the Argon2id
    -- parameters in kdf (never the secret), not by the root key
    user_held         boolean  NOT NULL DEFAULT false,
    kdf               jsonb,
    -- reencrypt_pause (0.5.0): the scheduler skips this keyring's re-encryption until resumed
    reencrypt_paused  boolean  NOT NULL DEFAULT false,
    CHECK (user_held = (kdf IS NOT NULL))
);

-- Data keys, stored only wrapped by the root key. Never readable by client roles.
CREATE TABLE meshhook_keys.data_key (
    key_id            bigint      PRIMARY KEY CHECK (key_id > 0),
    keyring           text        NOT NULL REFERENCES meshhook_keys.keyring (name),
    version           integer     NOT NULL CHECK (version > 0),
    state             text        NOT NULL DEFAULT 'active'
                      CHECK (state IN ('pending', 'active', 'decrypt_only', 'retired', 'destroyed')),
    wrapped_key       bytea       CHECK (pg_catalog.length(wrapped_key) IN (60, 61)),  -- 61: format 2 (0.5.0), 60: a user-held key not unlocked since 0.4.0
    root_fingerprint  bytea       NOT NULL CHECK (pg_catalog.length(root_fingerprint) = 8),
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    activated_at      timestamptz,
    retired_at        timestamptz,
    destroyed_at      timestamptz,
    -- encryptions under this key flushed from shared memory by the scheduler (0.3.0)
    encryptions       bigint      NOT NULL DEFAULT 0,
    -- a pending version (0.5.0): the WAL position every standby must have replayed before it
    -- becomes active (meshhook_keys.activate_after), set by the first attempt to activate it
    wait_lsn          pg_lsn,
    -- a destruction scheduled by keys_destroy(..., after => ...) (0.5.0, issue 28): carried out by
    -- the scheduler once due, cancelled by keys_destroy_cancel or keys_unretire
    destroy_at        timestamptz,
    destroy_forced    boolean     NOT NULL DEFAULT false,
    UNIQUE (keyring, version),
    -- key material is present exactly until the version is destroyed
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
-- Exactly one active key per keyring, enforced by the schema.
CREATE UNIQUE INDEX data_key_one_active_per_keyring
    ON meshhook_keys.data_key (keyring) WHERE state = 'active';
-- At most one version per keyring waits for the standbys (0.5.0).
CREATE UNIQUE INDEX data_key_one_pending_per_keyring
    ON meshhook_keys.data_key (keyring) WHERE state = 'pending';

-- The audit log: append-only and hash-chained.
CREATE TABLE meshhook_keys.audit_log (
    id         bigint      PRIMARY KEY,   -- assigned by the chain trigger
    at         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor      text        NOT NULL DEFAULT session_user,
    role_name  text,
    action     text        NOT NULL,
    outcome    text        NOT NULL DEFAULT 'ok' CHECK (outcome IN ('ok', 'refused', 'failed')),
    keyring    text,
    version    integer,
    key_id     bigint,
    reason     text,
    detail     jsonb       NOT NULL DEFAULT '{}',
    prev_hash  bytea       NOT NULL,      -- hash of row id - 1 (empty for the first row)
    hash       bytea       NOT NULL       -- sha256(prev_hash || this row serialised)
);

-- Failed unlocks are counted per keyring over the last minute (meshhook_keys.max_failed_unlocks).
CREATE INDEX audit_log_failed_idx ON meshhook_keys.audit_log (keyring, at) WHERE outcome = 'failed';

-- Hash of one audit row chained to its predecessor. The row is serialised as a JSON array, with the
-- time in UTC, so the result does not depend on the session's TimeZone or DateStyle.
CREATE FUNCTION meshhook_keys._audit_row_hash(prev bytea, r meshhook_keys.audit_log)
RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.sha256(prev || pg_catalog.convert_to(pg_catalog.jsonb_build_array(
        r.id, r.at AT TIME ZONE 'UTC', r.actor, r.role_name, r.action, r.outcome,
        r.keyring, r.version, r.key_id, r.reason, r.detail)::text, 'UTF8'))
$$;

CREATE FUNCTION meshhook_keys._audit_chain() RETURNS trigger
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

CREATE TRIGGER audit_log_chain BEFORE INSERT ON meshhook_keys.audit_log
    FOR EACH ROW EXECUTE FUNCTION meshhook_keys._audit_chain();

CREATE FUNCTION meshhook_keys._audit_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'meshhook_keys.audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON meshhook_keys.audit_log
    FOR EACH ROW EXECUTE FUNCTION meshhook_keys._audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON meshhook_keys.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION meshhook_keys._audit_append_only();

-- Re-check the whole chain. Detects any altered, inserted or removed row before the last one.
CREATE FUNCTION meshhook_keys.audit_verify(
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

-- What admins may see of the keys: metadata only, never key material.
CREATE VIEW meshhook_keys.keys AS
    SELECT keyring, version, key_id, state, created_at, activated_at, retired_at, destroy_at
      FROM meshhook_keys.data_key;

-- pg_dump must carry the rows of these extension tables (they are the keys and the evidence).
SELECT pg_catalog.pg_extension_config_dump('meshhook_keys.keyring', '');
SELECT pg_catalog.pg_extension_config_dump('meshhook_keys.data_key', '');
SELECT pg_catalog.pg_extension_config_dump('meshhook_keys.audit_log', '');

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
