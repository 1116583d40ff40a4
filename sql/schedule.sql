-- meshhook_keys 0.3.0: scheduled rotation. Each keyring's policy, its active key's age and usage,
-- and when the scheduler will rotate it.
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
       k.last_error,
       k.tenant,
       k.destroyed_at,
       k.user_held,
       k.reencrypt_paused
  FROM meshhook_keys.keyring k
  LEFT JOIN meshhook_keys.data_key a ON a.keyring = k.name AND a.state = 'active';
