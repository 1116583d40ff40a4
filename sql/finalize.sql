-- meshhook_keys finalize: runs after the generated functions. Triggers on Rust functions,
-- privileges, comments.

-- Any change to the data keys makes every backend drop its cached (unwrapped) keys. Not the
-- usage counters the scheduler flushes into `encryptions` on every tick: they change no key.
CREATE TRIGGER data_key_invalidate_cache
    AFTER INSERT OR UPDATE OF key_id, keyring, version, state, wrapped_key, root_fingerprint
       OR DELETE OR TRUNCATE ON meshhook_keys.data_key
    FOR EACH STATEMENT EXECUTE FUNCTION meshhook_keys._key_cache_invalidate();

-- A logical replica of the key tables (issue 26): the apply worker fires no statement trigger, and
-- row triggers only when enabled for replicas, so this one makes its backends drop their cached
-- keys too when the publisher's retire, destroy or rotation is applied (each at its next
-- transaction). It fires only in sessions with session_replication_role = replica.
CREATE TRIGGER data_key_invalidate_cache_on_apply
    AFTER INSERT OR UPDATE OF key_id, keyring, version, state, wrapped_key, root_fingerprint
       OR DELETE ON meshhook_keys.data_key
    FOR EACH ROW EXECUTE FUNCTION meshhook_keys._key_cache_invalidate();
ALTER TABLE meshhook_keys.data_key ENABLE REPLICA TRIGGER data_key_invalidate_cache_on_apply;

-- regclass-typed entry points over the Rust functions (which take an oid).
CREATE FUNCTION meshhook_keys.register_column(
    tbl regclass, col name, context text DEFAULT NULL, keyring text DEFAULT 'default')
RETURNS integer LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT meshhook_keys._register_column(tbl::oid, col::text, context, keyring) $$;

CREATE FUNCTION meshhook_keys.register_blind_index(
    tbl regclass, col name, index_col name, index_context text DEFAULT NULL, keyring text DEFAULT 'default')
RETURNS boolean LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT meshhook_keys._register_blind_index(tbl::oid, col::text, index_col::text, index_context, keyring) $$;

CREATE FUNCTION meshhook_keys.unregister_column(tbl regclass, col name, keyring text DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT meshhook_keys._unregister_column(tbl::oid, col::text, keyring) $$;

CREATE FUNCTION meshhook_keys.key_usage(keyring text DEFAULT 'default')
RETURNS TABLE (table_name regclass, column_name name, version integer, state text, rows bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT u.table_oid::regclass, u.column_name::name, u.version, u.state, u.rows
        FROM meshhook_keys._key_usage(keyring) u $$;

CREATE FUNCTION meshhook_keys.find_unregistered(keyring text DEFAULT 'default', max_blocks integer DEFAULT 131072)
RETURNS TABLE (table_name regclass, column_name name, rows bigint, blocks_read bigint, blocks bigint, error text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT f.table_oid::regclass, f.column_name::name, f.rows, f.blocks_read, f.blocks, f.error
        FROM meshhook_keys._find_unregistered(keyring, max_blocks) f $$;

CREATE FUNCTION meshhook_keys.verify(sample integer DEFAULT 100)
RETURNS TABLE (table_name regclass, column_name name, keyring text, sampled bigint, decrypted bigint,
               failed bigint, locked bigint, ok boolean, error text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT v.table_oid::regclass, v.column_name::name, v.keyring, v.sampled, v.decrypted, v.failed,
             v.locked, v.ok, v.error
        FROM meshhook_keys._verify(sample) v $$;

------------------------------------------------------------------------------------------------
-- Privileges: start from nothing, then grant one thing at a time, each with its reason.
------------------------------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA meshhook_keys FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA meshhook_keys FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA meshhook_keys FROM PUBLIC;
REVOKE ALL ON SCHEMA meshhook_keys FROM PUBLIC;

-- The client roles need to resolve names in the schema.
GRANT USAGE ON SCHEMA meshhook_keys TO meshhook_keys_user, meshhook_keys_admin, meshhook_keys_operator, meshhook_keys_custodian;

-- Applications encrypt and decrypt.
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_encrypt(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_encrypt_bytea(bytea, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_decrypt(bytea, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_decrypt_bytea(bytea, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.rewrap(bytea, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.hmac_sign(bytea, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.hmac_verify(bytea, text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.webhook_sign(bytea, text, text, timestamptz) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.webhook_verify(bytea, text, text, text, interval, timestamptz) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.webhook_secret(text, text, integer) TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_export(text, bytea, text) TO meshhook_keys_custodian;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_import(bytea, bytea, text, text) TO meshhook_keys_custodian;
GRANT EXECUTE ON FUNCTION meshhook_keys.datakey_generate(text, text, boolean) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.datakey_unwrap(bytea, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.blind_index(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.blind_index_candidates(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.register_blind_index(regclass, name, name, text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._register_blind_index(oid, text, text, text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._store_decrypt(bytea, text, text) TO meshhook_keys_user;
-- Reading a header touches no key; applications use it to find rows still on an old version.
GRANT EXECUTE ON FUNCTION meshhook_keys.ciphertext_key_id(bytea) TO meshhook_keys_user, meshhook_keys_operator;

-- keys_rotate is executable by the user role on purpose: the function itself refuses anyone who
-- lacks meshhook_keys_operator, and records the refusal in the audit log. A role with neither grant is
-- refused by PostgreSQL before the function runs.
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_rotate(text, text) TO meshhook_keys_user, meshhook_keys_operator;

-- Administrative functions are executable by the user role on purpose, like keys_rotate: each
-- checks for meshhook_keys_operator itself (meshhook_keys_admin is a member) and audits the
-- refusal. The operator role gets them without the decrypt functions (rotate != decrypt).
GRANT EXECUTE ON FUNCTION meshhook_keys.register_column(regclass, name, text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._register_column(oid, text, text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.unregister_column(regclass, name, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._unregister_column(oid, text, text) TO meshhook_keys_user, meshhook_keys_operator;

-- The built-in store: applications read and write it with their own privileges, under RLS.
GRANT SELECT, INSERT, UPDATE, DELETE ON meshhook_keys.secrets TO meshhook_keys_user;
GRANT SELECT ON meshhook_keys.decrypted_secrets TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_create(text, text, text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.secret_update(text, text, text, text) TO meshhook_keys_user;
-- Supabase Vault's API over the same store (same privileges and RLS as secret_create).
GRANT EXECUTE ON FUNCTION meshhook_keys.create_secret(text, text, text, uuid) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.update_secret(uuid, text, text, text, uuid) TO meshhook_keys_user;
-- The import refuses non-operators itself (audited) and reads Vault with the caller's privileges.
GRANT EXECUTE ON FUNCTION meshhook_keys.import_supabase_vault(text, boolean) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.reencrypt_batch(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.reencrypt_pause(text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.reencrypt_resume(text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON PROCEDURE meshhook_keys.reencrypt(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.key_usage(text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._key_usage(text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.find_unregistered(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._find_unregistered(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.verify(integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys._verify(integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_retire(text, integer, boolean) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean, interval) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_destroy_cancel(text, integer) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keys_unretire(text, integer, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.root_key_rewrap() TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_set_policy(text, interval, bigint) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create(text, text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_destroy(text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_reclaim(text, text) TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.health() TO meshhook_keys_user, meshhook_keys_operator;
-- User-held keyrings are the users' own: any application role may create, unlock, lock and change
-- the secret of one; the secret is the authority (and a wrong one is refused and audited).
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_create_user_held(text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_unlock(text, text, text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_lock(text) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.keyring_rotate_secret(text, text, text, boolean) TO meshhook_keys_user;
GRANT EXECUTE ON FUNCTION meshhook_keys.tick() TO meshhook_keys_user, meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.scheduler_status() TO meshhook_keys_user, meshhook_keys_operator;

-- Operators (and so admins) see what is registered and how re-encryption progresses (row references, never values).
GRANT SELECT ON meshhook_keys.encrypted_columns TO meshhook_keys_operator;
GRANT SELECT ON meshhook_keys.reencrypt_progress TO meshhook_keys_operator;
GRANT SELECT ON meshhook_keys.reencrypt_failure TO meshhook_keys_operator;
-- ... and each keyring's rotation policy, active key age and usage.
GRANT SELECT ON meshhook_keys.keyrings TO meshhook_keys_operator;
-- (a function in a view runs with the reader's privileges: the view's usage column calls this)
GRANT EXECUTE ON FUNCTION meshhook_keys._encryptions_pending(bigint) TO meshhook_keys_operator;

-- Operators (and so admins) inspect key metadata and the audit trail, and verify the chain.
GRANT SELECT ON meshhook_keys.keys TO meshhook_keys_operator;
GRANT SELECT ON meshhook_keys.audit_log TO meshhook_keys_operator;
GRANT EXECUTE ON FUNCTION meshhook_keys.audit_verify() TO meshhook_keys_operator;
-- Operators learn the (unguessable) key events channel; nobody else does.
GRANT EXECUTE ON FUNCTION meshhook_keys.events_channel() TO meshhook_keys_operator;

-- A re-encryption batch writes each table as its owner (so that the owner's triggers and the
-- context expression never run with more rights than the owner's), and that UPDATE calls two
-- functions of ours: so any role needs USAGE on the schema and EXECUTE on those two. They refuse
-- (42501) unless a batch run by meshhook_keys in the same session has armed them for that one
-- statement and the call passes the statement's random token (which the table owner's code inside
-- it cannot read), and they only ever re-encrypt rows of that batch's keyring to its active key: no
-- plaintext or key leaves them. Every other object in the schema stays revoked from PUBLIC.
-- _reencrypt_try is declared expensive so that the planner checks the TID condition first.
GRANT USAGE ON SCHEMA meshhook_keys TO PUBLIC;
ALTER FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) COST 100000;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_take(bytea, tid) TO PUBLIC;
ALTER FUNCTION meshhook_keys._reencrypt_try_indexed(bytea, tid, bytea, text, text) COST 100000;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_try_indexed(bytea, tid, bytea, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION meshhook_keys._reencrypt_index(bytea, tid) TO PUBLIC;

-- Nobody but the owner may read data_key or keyring, write the audit log, or call the
-- other internal (_-prefixed) functions: no grants.

------------------------------------------------------------------------------------------------
-- Documentation (\dt+, \df+ and \dv+ show these).
--
-- Every COMMENT ON FUNCTION, PROCEDURE and VIEW ends with one sentence that says who may call the
-- function (read the view), in one of three forms:
--
--   Requires ROLE[ or ROLE][; CONDITION].
--       ROLE is meshhook_keys_user or meshhook_keys_operator (meshhook_keys_admin is a member of
--       both), or meshhook_keys_custodian (key custody: export and import; a member of nothing). Every ROLE named has EXECUTE (SELECT on a view) and no other role has, except that
--       a function naming only meshhook_keys_operator may also be granted to meshhook_keys_user:
--       it then refuses that role itself (42501, audited). CONDITION says what else the call needs
--       (a table's ownership, a keyring's secret, RLS policies); it has no semicolon.
--   Executable by PUBLIC; REASON.
--       Internal helpers only (their comment begins with "Internal"): why PUBLIC may call it.
--   Executable only by the extension's owner.
--       Internal helpers (and trigger functions) with no grant at all.
--
-- "Requires " appears once in a comment. tests/pg_regress/sql/who_may_call.sql checks every
-- comment against the grants, and calls every function as a role of each kind: a role the sentence
-- does not name is refused (42501), one it names is not. tests/lint/access_sentences.py checks that
-- the Rust doc comments end with the same sentences. Upgrade scripts repeat these comments word for
-- word (tests/upgrade/run.sh compares).
------------------------------------------------------------------------------------------------
COMMENT ON SCHEMA meshhook_keys IS
    'meshhook_keys: envelope encryption for secrets with versioned data keys, online rotation and an audit log.';
COMMENT ON TABLE meshhook_keys.keyring IS
    'Named sequences of key versions. One row per keyring.';
COMMENT ON TABLE meshhook_keys.data_key IS
    'Data keys (AES-256-GCM), one row per keyring version, stored only wrapped by the root key together with the root key fingerprint. The root key and unwrapped keys are never stored. Not readable by client roles.';
COMMENT ON TABLE meshhook_keys.audit_log IS
    'Append-only, hash-chained log of key actions and refused calls: who, what, which keyring/version, when. Never contains plaintext or key material. Verify with meshhook_keys.audit_verify(). Requires meshhook_keys_operator.';
COMMENT ON TABLE meshhook_keys.encrypted_column IS
    'Registered ciphertext columns: table, bytea column, context expression (SQL over the row, evaluated as the table owner) and keyring. Manage with register_column / unregister_column.';
COMMENT ON TABLE meshhook_keys.reencrypt_job IS
    'Re-encryption jobs, one per keyring and target key; a newer rotation supersedes a running job.';
COMMENT ON TABLE meshhook_keys.reencrypt_progress_column IS
    'Per-column progress and resumable cursor (next heap block) of each re-encryption job.';
COMMENT ON TABLE meshhook_keys.reencrypt_failure IS
    'Rows that could not be re-encrypted, by primary key (or ctid) with the SQLSTATE and error; never values. Requires meshhook_keys_operator.';
COMMENT ON TABLE meshhook_keys.secrets IS
    'The built-in secrets store: one envelope per (tenant, name), bound to its row id and tenant; name may be NULL, as in Supabase Vault. Row-level security is enabled; add policies for your tenancy model. Registered for re-encryption in every keyring. Requires meshhook_keys_user; row-level security policies decide which rows.';
COMMENT ON TABLE meshhook_keys.event_channel IS
    'The name of the channel key events are published on with NOTIFY: random per database, readable only through events_channel() (operators), since LISTEN itself needs no privilege.';

-- (the comments below are repeated word for word at the end of sql/meshhook_keys--0.4.0--0.5.0.sql)
COMMENT ON VIEW meshhook_keys.keys IS
    'Key versions per keyring with their state and timestamps. Metadata only, never key material. Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.encrypted_columns IS
    'Registered ciphertext columns, whether their table still exists, and their blind index column and its context expression (register_blind_index). Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.reencrypt_progress IS
    'Re-encryption progress per job and column, in the spirit of pg_stat_progress_*: rows total/done/failed/remaining, rate, ETA; a column whose batch raised is failed, with its SQLSTATE and error. Requires meshhook_keys_operator.';
COMMENT ON VIEW meshhook_keys.keyrings IS
    'Each keyring with its active version, that key''s age and encryptions (NULL when the library is not preloaded), its rotation policy, when it is due, the scheduler''s backoff after a failure, its tenant, whether it was destroyed, whether it is user-held and whether its re-encryption is paused (reencrypt_pause). Requires meshhook_keys_operator.';
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
COMMENT ON FUNCTION meshhook_keys.rewrap(bytea, text) IS
    'Move an envelope to the active version of its keyring without returning the plaintext (Vault Transit''s rewrap), for ciphertext the column registry cannot see (inside jsonb, in caches, in other systems): opened with the key its header names and the given context, sealed again under the active key with the same context. An envelope already on the active version is returned as it is. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt and secret_encrypt.';
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
COMMENT ON FUNCTION meshhook_keys.reencrypt_pause(text, text) IS
    'Pause the scheduler''s re-encryption of a keyring: its job and cursor are kept and the scheduler skips it until reencrypt_resume (an operator''s reencrypt_batch or CALL reencrypt still runs). Returns whether it was running before. Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.reencrypt_resume(text, text) IS
    'Resume the scheduler''s re-encryption of a keyring paused by reencrypt_pause, from where it stopped. Returns whether it was paused. Audited. Requires meshhook_keys_operator.';
COMMENT ON PROCEDURE meshhook_keys.reencrypt(text, integer) IS
    'Re-encrypt every registered row of a keyring to its active key, committing after each batch (CALL it outside a transaction block). Resumable: call it again after any interruption. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.find_unregistered(text, integer) IS
    'The bytea columns of this database (ordinary tables and materialized views, outside the system and extension schemas) that are not registered for a keyring and hold its envelopes: re-encryption never moves them, and retiring or destroying a version they use makes them undecryptable. Each column is read as its table''s owner, sealed, at most max_blocks blocks, lock_timeout 1s; a column whose read failed (error) or stopped early (blocks_read < blocks) is listed too. Only envelope headers are compared, nothing is decrypted. Audited; keys_retire warns when it has not run since the last registration. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys._find_unregistered(text, integer) IS
    'Internal: find_unregistered with table oids. Requires meshhook_keys_operator.';
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
COMMENT ON FUNCTION meshhook_keys.keys_unretire(text, integer, text) IS
    'Take back a retirement: a retired key version decrypts again (decrypt_only), for when retiring it was a mistake (a column that was not registered still holds its rows). Retirement is reversible until the version is destroyed; refused (55000) for a version that is not retired, or that is destroyed. Audited, with the reason given. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keys_destroy(text, integer, boolean, interval) IS
    'Destroy a retired key version: its wrapped key material is wiped (crypto-erasure), so nothing it encrypted can ever be decrypted again. Refused while registered rows reference it, unless forced (as keys_retire). With after => interval, scheduled instead (the same checks now): the scheduler destroys it once the interval has passed, checking again, and keys_destroy_cancel or keys_unretire take it back until then (keys.destroy_at shows when). Audited. Requires meshhook_keys_operator.';
COMMENT ON FUNCTION meshhook_keys.keys_destroy_cancel(text, integer) IS
    'Cancel a destruction scheduled by keys_destroy(..., after => ...); refused (55000) when none is scheduled for the version. Audited. Requires meshhook_keys_operator.';
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
COMMENT ON FUNCTION meshhook_keys._reencrypt_try(bytea, tid, bytea, text) IS
    'Internal to re-encryption batches: decrypt one claimed row and seal it under the target key, for the statement that passes the batch''s random token. Executable by PUBLIC; a batch''s UPDATE calls it as the table''s owner, whoever that is, and it refuses (42501) any call but that statement''s.';
COMMENT ON FUNCTION meshhook_keys._reencrypt_take(bytea, tid) IS
    'Internal to re-encryption batches: the envelope _reencrypt_try prepared for the same row. Executable by PUBLIC; a batch''s UPDATE calls it as the table''s owner, whoever that is, and it refuses (42501) any call but that statement''s.';
COMMENT ON FUNCTION meshhook_keys.keyring_export(text, bytea, text) IS
    'Every version of a keyring (its metadata, and the data key of each version not destroyed) sealed under a caller-supplied 256-bit wrapping key (AES-256-GCM, the metadata readable and authenticated): a bundle for keyring_import in another database, for moving between clusters with different root keys or bringing your own key. A user-held keyring needs its secret. Audited, also when the caller rolls back. Requires meshhook_keys_custodian.';
COMMENT ON FUNCTION meshhook_keys.keyring_import(bytea, bytea, text, text) IS
    'Import a keyring from a bundle made by keyring_export, under its name or another: its keys wrapped under this database''s root key (a user-held keyring''s under a key derived from the secret given), its key ids, versions, states and usage counts kept, so every ciphertext of the keyring decrypts here. Refused for a name or key id this database has (42710), and for an altered bundle or another wrapping key (XX001). Audited. Requires meshhook_keys_custodian.';
COMMENT ON FUNCTION meshhook_keys.datakey_generate(text, text, boolean) IS
    'A new random 256-bit data key for encryption outside the database (Vault Transit''s datakey, AWS KMS''s GenerateDataKey) and its envelope under the active key of a keyring, bound to a context. Store the envelope, use the key and forget it; with with_plaintext => false only the envelope. The envelope is an ordinary one: counted against the encryption limit, moved by rotation, re-encryption of a registered column and rewrap. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_encrypt.';
COMMENT ON FUNCTION meshhook_keys.datakey_unwrap(bytea, text) IS
    'The data key in an envelope made by datakey_generate, given the same context; refused (22023) when the envelope holds anything but a 256-bit key. Requires meshhook_keys_user; tenant-bound and user-held keyrings as for secret_decrypt.';
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
COMMENT ON FUNCTION meshhook_keys.metrics() IS
    'Monitoring metrics, one row per metric and keyring (keyring NULL for the server): active version, key age, rotation interval and seconds until the next scheduled rotation (negative: overdue), encryptions under the active key and their limit, decrypt-only versions, scheduler failures and retry delay, re-encryption jobs, rows remaining, failed, rate and seconds since the last progress, seconds a pending version has waited for the standbys, and the scheduler''s state. Destroyed keyrings are left out; a metric that does not apply has no row. Requires meshhook_keys_operator.';
