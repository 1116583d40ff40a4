-- meshhook_keys 0.3.0 -> 0.4.0: tenant-bound keyrings, crypto-shredding, key events.
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
    ADD COLUMN destroyed_at timestamptz;

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
       k.destroyed_at
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

REVOKE ALL ON FUNCTION meshhook_keys.keyring_create(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_destroy(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_destroy(text, text) TO meshhook_keys_user;

COMMENT ON VIEW meshhook_keys.keyrings IS
    'Each keyring with its active version, that key''s age and encryptions (NULL when the library is not preloaded), its rotation policy, when it is due, the scheduler''s backoff after a failure, its tenant and whether it was destroyed.';
COMMENT ON FUNCTION meshhook_keys.keyring_create(text, text, text) IS
    'Create a keyring and its version 1, optionally bound to a tenant: then only sessions that meshhook_keys.tenant_check approves (or members of meshhook_keys_service) may encrypt or decrypt with it. Admin only; audited; NOTIFY meshhook_keys_events.';
COMMENT ON FUNCTION meshhook_keys.keyring_destroy(text, text) IS
    'Crypto-shred a keyring: wipe the key material of every version, so nothing it encrypted can ever be decrypted again, and refuse any further use of the name. Returns the versions destroyed. Admin only; audited; NOTIFY meshhook_keys_events.';
