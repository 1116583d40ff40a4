-- meshhook_keys 0.2.0: the built-in secrets store.

-- A ready-made vault for users who do not want their own table. Each ciphertext is bound to its
-- row id and tenant (context = id || '/' || tenant): copied to another row or tenant, it does not
-- decrypt. Every keyring's first version registers this column for re-encryption automatically.
CREATE TABLE meshhook_keys.secrets (
    id           uuid        PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    tenant       text        NOT NULL DEFAULT '',
    name         text        NOT NULL CHECK (name <> ''),
    description  text        NOT NULL DEFAULT '',
    keyring      text        NOT NULL DEFAULT 'default'
                 CHECK (keyring ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
    ciphertext   bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (tenant, name)
);

-- Readers decrypt through this view with their own privileges and row-level security policies.
CREATE VIEW meshhook_keys.decrypted_secrets WITH (security_invoker = true) AS
    SELECT s.id, s.tenant, s.name, s.description, s.keyring,
           meshhook_keys.secret_decrypt(s.ciphertext, s.id::text || '/' || s.tenant) AS secret,
           s.created_at, s.updated_at
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

SELECT pg_catalog.pg_extension_config_dump('meshhook_keys.secrets', '');

-- Tenancy is enforced with row-level security, closed by default (0.5.0): no policy, so a
-- meshhook_keys_user sees and changes nothing until a policy grants it exactly what it may (see the
-- README). Roles with BYPASSRLS (Supabase's service_role) and the owner are not subject to it.
ALTER TABLE meshhook_keys.secrets ENABLE ROW LEVEL SECURITY;
