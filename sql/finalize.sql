-- meshhook_keys finalize: runs after the generated functions. Triggers on Rust functions,
-- privileges, comments.

-- Any change to the data keys makes every backend drop its cached (unwrapped) keys.
CREATE TRIGGER data_key_invalidate_cache
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON meshhook_keys.data_key
    FOR EACH STATEMENT EXECUTE FUNCTION meshhook_keys._key_cache_invalidate();

------------------------------------------------------------------------------------------------
-- Privileges: start from nothing, then grant one thing at a time, each with its reason.
------------------------------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA meshhook_keys FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA meshhook_keys FROM PUBLIC;
REVOKE ALL ON SCHEMA meshhook_keys FROM PUBLIC;

-- Both roles need to resolve names in the schema.
GRANT USAGE ON SCHEMA meshhook_keys TO meshhook_keys_user, meshhook_keys_admin;

-- Applications encrypt and decrypt.
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_encrypt(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_encrypt_bytea(bytea, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_decrypt(bytea, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_decrypt_bytea(bytea, text) TO meshhook_keys_user;
-- Reading a header touches no key; applications use it to find rows still on an old version.
GRANT EXECUTE ON FUNCTION meshhook_keys.ciphertext_key_id(bytea) TO meshhook_keys_user;

-- keys_rotate is executable by the user role on purpose: the function itself refuses anyone who
-- lacks meshhook_keys_admin, and records the refusal in the audit log. A role with neither grant is
-- refused by PostgreSQL before the function runs.
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_rotate(text, text) TO meshhook_keys_user;

-- Admins inspect key metadata and the audit trail, and verify the chain.
GRANT SELECT ON meshhook_keys.keys TO meshhook_keys_admin;
GRANT SELECT ON meshhook_keys.audit_log TO meshhook_keys_admin;
GRANT EXECUTE ON FUNCTION meshhook_keys.audit_verify() TO meshhook_keys_admin;

-- Nobody but the owner may read data_key or keyring, write the audit log, or call the
-- internal (_-prefixed) functions: no grants.

------------------------------------------------------------------------------------------------
-- Documentation (\dt+, \df+ and \dv+ show these).
------------------------------------------------------------------------------------------------
COMMENT ON SCHEMA meshhook_keys IS
    'meshhook_keys: envelope encryption for secrets with versioned data keys, online rotation and an audit log.';
COMMENT ON TABLE meshhook_keys.keyring IS
    'Named sequences of key versions. One row per keyring.';
COMMENT ON TABLE meshhook_keys.data_key IS
    'Data keys (AES-256-GCM), one row per keyring version, stored only wrapped by the root key together with the root key fingerprint. The root key and unwrapped keys are never stored. Not readable by client roles.';
COMMENT ON TABLE meshhook_keys.audit_log IS
    'Append-only, hash-chained log of key actions and refused calls: who, what, which keyring/version, when. Never contains plaintext or key material. Verify with meshhook_keys.audit_verify().';
COMMENT ON VIEW meshhook_keys.keys IS
    'Key versions per keyring with their state and timestamps. Metadata only, never key material.';
COMMENT ON FUNCTION meshhook_keys.secret_encrypt(text, text, text) IS
    'Encrypt text under the active key of a keyring (default ''default'', created on first use), bound to a context string (e.g. tenant and row id) that must be given again to decrypt. Returns a self-describing envelope: format byte, key id, nonce, AES-256-GCM ciphertext and tag.';
COMMENT ON FUNCTION meshhook_keys.secret_encrypt_bytea(bytea, text, text) IS
    'Like secret_encrypt, for binary plaintext.';
COMMENT ON FUNCTION meshhook_keys.secret_decrypt(bytea, text) IS
    'Decrypt an envelope with the key version named in its header, given the same context used at encryption. Returns text.';
COMMENT ON FUNCTION meshhook_keys.secret_decrypt_bytea(bytea, text) IS
    'Like secret_decrypt, returning bytea.';
COMMENT ON FUNCTION meshhook_keys.ciphertext_key_id(bytea) IS
    'The key id in an envelope header, without decrypting. IMMUTABLE: index it to find rows still encrypted under an old key version.';
COMMENT ON FUNCTION meshhook_keys.keys_rotate(text, text) IS
    'Make a new key version active for a keyring (creating the keyring if needed); earlier versions keep decrypting. O(1), touches no user data, audited. Requires meshhook_keys_admin.';
COMMENT ON FUNCTION meshhook_keys.audit_verify() IS
    'Recompute the audit log hash chain. ok is false, with the first bad id, if any row was altered, inserted or removed before the newest one.';
