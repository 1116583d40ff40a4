-- meshhook_keys 0.2.0 -> 0.3.0: scheduled rotation (policies, usage counting, background worker).
\echo Use "ALTER EXTENSION meshhook_keys UPDATE TO '0.3.0'" to load this file. \quit

-- Rotation policy per keyring, and the scheduler's backoff after a failed scheduled action.
ALTER TABLE meshhook_keys.keyring
    ADD COLUMN rotation_interval interval CHECK (rotation_interval > interval '0'),
    ADD COLUMN max_encryptions   bigint   CHECK (max_encryptions BETWEEN 1 AND 4294967296),
    ADD COLUMN failed_attempts   integer  NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at   timestamptz,
    ADD COLUMN last_error        text;
-- Existing keyrings get the default policy new keyrings get (meshhook_keys.default_rotation_interval,
-- 90 days unless set). Make one manual-only with keyring_set_policy(name, NULL).
UPDATE meshhook_keys.keyring
   SET rotation_interval = nullif(
           coalesce(pg_catalog.current_setting('meshhook_keys.default_rotation_interval', true), '90 days'),
           '')::interval;

-- Encryptions under each key, flushed from shared memory by the scheduler.
ALTER TABLE meshhook_keys.data_key ADD COLUMN encryptions bigint NOT NULL DEFAULT 0;
-- ... which must not flush every backend's key cache on each tick: only key changes do.
DROP TRIGGER data_key_invalidate_cache ON meshhook_keys.data_key;
CREATE TRIGGER data_key_invalidate_cache
    AFTER INSERT OR UPDATE OF key_id, keyring, version, state, wrapped_key, root_fingerprint
       OR DELETE OR TRUNCATE ON meshhook_keys.data_key
    FOR EACH STATEMENT EXECUTE FUNCTION meshhook_keys._key_cache_invalidate();

CREATE FUNCTION meshhook_keys."_encryptions_pending"(
	"key_id" bigint /* Option < i64 > */
) RETURNS bigint /* Option < i64 > */
VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_encryptions_pending_wrapper';

CREATE FUNCTION meshhook_keys."keyring_set_policy"(
	"keyring" TEXT, /* Option < & str > */
	"rotation_interval" interval, /* Option < Interval > */
	"max_encryptions" bigint DEFAULT NULL /* Option < i64 > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keyring_set_policy_wrapper';

CREATE FUNCTION meshhook_keys."tick"() RETURNS TABLE (
	"keyring" TEXT,  /* Option < String > */
	"action" TEXT,  /* String */
	"outcome" TEXT,  /* String */
	"detail" TEXT  /* String */
)
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tick_wrapper';

CREATE FUNCTION meshhook_keys."scheduler_status"() RETURNS TABLE (
	"pid" INT,  /* Option < i32 > */
	"database" TEXT,  /* String */
	"state" TEXT,  /* String */
	"naptime_ms" bigint,  /* Option < i64 > */
	"ticks" bigint,  /* Option < i64 > */
	"last_tick_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"counting_encryptions" bool,  /* bool */
	"usage_table_full" bool  /* bool */
)
STRICT VOLATILE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'scheduler_status_wrapper';

CREATE VIEW meshhook_keys.keyrings AS
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
       k.last_error
  FROM meshhook_keys.keyring k
  LEFT JOIN meshhook_keys.data_key a ON a.keyring = k.name AND a.state = 'active';

REVOKE ALL ON FUNCTION meshhook_keys._encryptions_pending(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.keyring_set_policy(text, interval, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.tick() FROM PUBLIC;
REVOKE ALL ON FUNCTION meshhook_keys.scheduler_status() FROM PUBLIC;
REVOKE ALL ON meshhook_keys.keyrings FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_set_policy(text, interval, bigint) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.tick() TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.scheduler_status() TO meshhook_keys_user;
GRANT SELECT ON meshhook_keys.keyrings TO meshhook_keys_admin;
-- (a function in a view runs with the reader's privileges: the view's usage column calls this)
GRANT EXECUTE ON FUNCTION meshhook_keys._encryptions_pending(bigint) TO meshhook_keys_admin;

COMMENT ON VIEW meshhook_keys.keyrings IS
    'Each keyring with its active version, that key''s age and encryptions (NULL when the library is not preloaded), its rotation policy, when it is due, and the scheduler''s backoff after a failure.';
COMMENT ON FUNCTION meshhook_keys.keyring_set_policy(text, interval, bigint) IS
    'Set a keyring''s rotation policy: rotate when the active key is older than rotation_interval (NULL: manual only) or has encrypted max_encryptions times (NULL: meshhook_keys.default_max_encryptions; at most 2^32). Admin only; audited.';
COMMENT ON FUNCTION meshhook_keys.tick() IS
    'Run one scheduler tick now in the caller''s transaction: rotate due keyrings, then advance pending re-encryption a bounded number of batches. For pg_cron where the background worker cannot run. Admin only; actions audited with actor scheduler.';
COMMENT ON FUNCTION meshhook_keys.scheduler_status() IS
    'The background scheduler of this server: pid, database, state, naptime, ticks, last tick, whether encryptions are counted. Admin only.';
