-- meshhook_keys 0.2.0: the built-in secrets store.

-- A ready-made vault for users who do not want their own table. Each ciphertext is bound to its
-- row id and tenant (context = id || '/' || tenant): copied to another row or tenant, it does not
-- decrypt. Every keyring's first version registers this column for re-encryption automatically.
CREATE TABLE meshhook_keys.secrets (
    id           uuid        PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant       text        NOT NULL DEFAULT '',
    name         text        CHECK (name <> ''),  -- NULL allowed, as in Supabase Vault
    description  text        NOT NULL DEFAULT '',
    keyring      text        NOT NULL DEFAULT 'default'
                 CHECK (keyring ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
    ciphertext   bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (tenant, name)
);

-- Readers decrypt through this view with their own privileges and row-level security policies.
-- Supabase Vault's decrypted_secrets, column for column (0.5.0), so that a query written for
-- vault.decrypted_secrets runs unchanged with the schema renamed: secret is the ciphertext in
-- base64 (as Vault's), decrypted_secret the plaintext, key_id the data key that sealed it, nonce
-- its nonce; tenant and keyring are ours. Before 0.5.0 secret held the plaintext. Only a query
-- that selects decrypted_secret decrypts. _store_decrypt is secret_decrypt that also refuses an
-- envelope made under another keyring's key than the row names (0.5.0).
CREATE VIEW meshhook_keys.decrypted_secrets WITH (security_invoker = true) AS
    SELECT s.id, s.tenant, s.name, s.description, s.keyring,
           pg_catalog.encode(s.ciphertext, 'base64') AS secret,
           s.created_at, s.updated_at,
           meshhook_keys._store_decrypt(s.ciphertext, s.id::text || '/' || s.tenant, s.keyring) AS decrypted_secret,
           meshhook_keys.ciphertext_key_id(s.ciphertext) AS key_id,
           pg_catalog.substr(s.ciphertext, 10, 12) AS nonce
      FROM meshhook_keys.secrets s;

-- Create a secret: the plaintext goes straight into the envelope; the row is written once, never
-- with the plaintext. SECURITY INVOKER: the caller's table privileges and RLS policies apply.
CREATE FUNCTION meshhook_keys.secret_create(
    name text, secret text, description text DEFAULT '', tenant text DEFAULT '', keyring text DEFAULT 'default')
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid := pg_catalog.gen_random_uuid();
BEGIN
    INSERT INTO meshhook_keys.secrets (id, tenant, name, description, keyring, ciphertext)
    VALUES (new_id, tenant, name, coalesce(description, ''), keyring,
            meshhook_keys.secret_encrypt(secret, new_id::text || '/' || tenant, keyring));
    RETURN new_id;
END
$$;

-- Replace a secret's value (and optionally its description), by tenant and name.
CREATE FUNCTION meshhook_keys.secret_update(
    name text, secret text, description text DEFAULT NULL, tenant text DEFAULT '')
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row_id uuid;
BEGIN
    UPDATE meshhook_keys.secrets s
       SET ciphertext = meshhook_keys.secret_encrypt(secret, s.id::text || '/' || s.tenant, s.keyring),
           description = coalesce(secret_update.description, s.description),
           updated_at = pg_catalog.now()
     WHERE s.tenant = secret_update.tenant AND s.name = secret_update.name
    RETURNING s.id INTO row_id;
    IF row_id IS NULL THEN
        RAISE EXCEPTION 'secret "%" does not exist for tenant "%"', name, tenant
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN row_id;
END
$$;

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

SELECT pg_catalog.pg_extension_config_dump('meshhook_keys.secrets', '');

-- Tenancy is enforced with row-level security, closed by default (0.5.0): no policy, so a
-- meshhook_keys_user sees and changes nothing until a policy grants it exactly what it may (see the
-- README). Roles with BYPASSRLS (Supabase's service_role) and the owner are not subject to it.
ALTER TABLE meshhook_keys.secrets ENABLE ROW LEVEL SECURITY;
