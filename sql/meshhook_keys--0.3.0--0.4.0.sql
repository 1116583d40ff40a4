-- meshhook_keys 0.3.0 -> 0.4.0: tenant-bound keyrings, crypto-shredding, key events, user-held keyrings, health().
\echo Use "ALTER EXTENSION meshhook_keys UPDATE TO '0.4.0'" to load this file. \quit

-- Members bypass the tenant check of tenant-bound keyrings, explicitly.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'meshhook_keys_service') THEN
        CREATE ROLE meshhook_keys_service NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION;
    END IF;
END
$roles$;

ALTER TABLE meshhook_keys.keyring
    ADD COLUMN tenant       text,
    ADD COLUMN destroyed_at timestamptz,
    ADD COLUMN user_held    boolean NOT NULL DEFAULT false,
    ADD COLUMN kdf          jsonb,
    ADD CHECK (user_held = (kdf IS NOT NULL));

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
       k.user_held
  FROM meshhook_keys.keyring k
  LEFT JOIN meshhook_keys.data_key a ON a.keyring = k.name AND a.state = 'active';

CREATE FUNCTION meshhook_keys."keyring_create"(
	"name" TEXT, /* Option < & str > */
	"tenant" TEXT DEFAULT NULL, /* Option < & str > */
	"reason" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"keyring" TEXT,  /* String */
	"version" INT,  /* i32 */
	"key_id" bigint,  /* i64 */
	"activated_at" timestamp with time zone  /* TimestampWithTimeZone */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_create_wrapper';

CREATE FUNCTION meshhook_keys."keyring_destroy"(
	"keyring" TEXT, /* Option < & str > */
	"reason" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS INT /* i32 */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_destroy_wrapper';

CREATE FUNCTION meshhook_keys."keyring_create_user_held"(
	"name" TEXT, /* Option < & str > */
	"secret" TEXT /* Option < & str > */
) RETURNS TABLE (
	"keyring" TEXT,  /* String */
	"version" INT,  /* i32 */
	"key_id" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_create_user_held_wrapper';

CREATE FUNCTION meshhook_keys."keyring_unlock"(
	"name" TEXT, /* Option < & str > */
	"secret" TEXT /* Option < & str > */
) RETURNS INT /* i32 */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_unlock_wrapper';

CREATE FUNCTION meshhook_keys."keyring_lock"(
	"name" TEXT /* Option < & str > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_lock_wrapper';

CREATE FUNCTION meshhook_keys."keyring_rotate_secret"(
	"name" TEXT, /* Option < & str > */
	"old_secret" TEXT, /* Option < & str > */
	"new_secret" TEXT, /* Option < & str > */
	"reencrypt" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"versions_rewrapped" INT,  /* i32 */
	"new_version" INT,  /* Option < i32 > */
	"rows_reencrypted" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_rotate_secret_wrapper';

CREATE FUNCTION meshhook_keys."health"() RETURNS TABLE (
	"item" TEXT,  /* String */
	"status" TEXT,  /* String */
	"detail" TEXT  /* String */
)
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'health_wrapper';

-- The hot functions lose their SET search_path clause (about 0.9 µs per call): the SQL they run on
-- a key cache miss pins search_path itself.
ALTER FUNCTION meshhook_keys.secret_encrypt(text, text, text) RESET search_path;
ALTER FUNCTION meshhook_keys.secret_encrypt_bytea(bytea, text, text) RESET search_path;
ALTER FUNCTION meshhook_keys.secret_decrypt(bytea, text) RESET search_path;
ALTER FUNCTION meshhook_keys.secret_decrypt_bytea(bytea, text) RESET search_path;

REVOKE ALL ON FUNCTION meshhook_keys.keyring_create(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.health() FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_unlock(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_lock(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_destroy(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_destroy(text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.health() TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_unlock(text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_lock(text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) TO meshhook_keys_user;

COMMENT ON VIEW meshhook_keys.keyrings IS
    'Each keyring with its active version, that key''s age and encryptions (NULL when the library is not preloaded), its rotation policy, when it is due, the scheduler''s backoff after a failure, its tenant, whether it was destroyed and whether it is user-held.';
COMMENT ON FUNCTION meshhook_keys.keyring_create(text, text, text) IS
    'Create a keyring and its version 1, optionally bound to a tenant: then only sessions that meshhook_keys.tenant_check approves (or members of meshhook_keys_service) may encrypt or decrypt with it. Admin only; audited; NOTIFY meshhook_keys_events.';
COMMENT ON FUNCTION meshhook_keys.keyring_destroy(text, text) IS
    'Crypto-shred a keyring: wipe the key material of every version, so nothing it encrypted can ever be decrypted again, and refuse any further use of the name. Returns the versions destroyed. Admin only; audited; NOTIFY meshhook_keys_events.';
COMMENT ON FUNCTION meshhook_keys.health() IS
    'Whether this server keeps secrets secret: root key, scheduler, tenant check, and every logging setting (log_statement, log_min_duration_statement, log_parameter_max_length(_on_error), log_min_error_statement, auto_explain) that would write secret-bearing statements to the log. Admin only.';
COMMENT ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) IS
    'Create a user-held keyring: its data keys are wrapped by a key derived from the secret with Argon2id (parameters and salt stored, never the secret), not by the root key. Left unlocked in this session. Pass the secret as a bind parameter.';
COMMENT ON FUNCTION meshhook_keys.keyring_unlock(text, text) IS
    'Unlock a user-held keyring for this session (keys held in backend memory until keyring_lock or session end). A wrong secret costs a full Argon2id derivation, is refused with 28P01 and audited.';
COMMENT ON FUNCTION meshhook_keys.keyring_lock(text) IS
    'Forget and zeroize a user-held keyring''s keys in this session. True if it was unlocked.';
COMMENT ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) IS
    'Change a user-held keyring''s secret: verify the old one, rewrap every version under the new one (O(1), atomic, audited without secrets). With reencrypt => true, also a new data key and every registered row re-encrypted in the same transaction.';
