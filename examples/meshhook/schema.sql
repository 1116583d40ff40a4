-- A MeshHook-shaped multi-tenant schema on meshhook_keys, with the PostgREST / Supabase conventions:
-- roles anon, authenticated and service_role; each request is a transaction that does
--     SET LOCAL ROLE authenticated;
--     SELECT set_config('request.jwt.claims', '{"sub": "<user>", "role": "authenticated"}', true);
-- Tenants are projects. Each project has its own keyring 'project:<id>', bound to tenant '<id>', and
-- meshhook_keys.tenant_check = 'app.may_use_project_keyring' lets only members use it.
--
-- Run as a superuser in a database where CREATE EXTENSION meshhook_keys was done. Then, once:
--     ALTER DATABASE <db> SET meshhook_keys.tenant_check = 'app.may_use_project_keyring';
-- (tests/pg_regress/sql/tenancy.sql runs this file and proves what the README claims about it.)

-- The PostgREST roles (Supabase creates them; created here if missing).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN BYPASSRLS; END IF;
END $$;
-- Signed-in users encrypt and decrypt (subject to the tenant check); the backend's service role
-- also bypasses the tenant check, explicitly.
GRANT meshhook_keys_user TO authenticated;
GRANT meshhook_keys_user, meshhook_keys_service TO service_role;

CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO anon, authenticated, service_role;

-- Who is asking: the JWT subject, as Supabase's auth.uid() reads it.
CREATE FUNCTION app.uid() RETURNS text LANGUAGE sql STABLE
AS $$ SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub' $$;

CREATE TABLE app.projects (
    id   text PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE app.project_members (
    project_id text NOT NULL REFERENCES app.projects,
    user_id    text NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE TABLE app.secrets (
    project_id      text  NOT NULL REFERENCES app.projects,
    key             text  NOT NULL,
    value_encrypted bytea NOT NULL,
    PRIMARY KEY (project_id, key)
);

-- Membership, for RLS and for the tenant check. SECURITY DEFINER so that it can read the membership
-- table whatever the caller may see of it; it only answers for the caller's own JWT subject.
CREATE FUNCTION app.is_member(project text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT 1 FROM app.project_members m WHERE m.project_id = project AND m.user_id = app.uid()) $$;

-- meshhook_keys.tenant_check: keyring 'project:<id>' has tenant '<id>'. Called with the caller's
-- privileges; must be executable by every role that may decrypt.
CREATE FUNCTION app.may_use_project_keyring(tenant text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT app.is_member(tenant) $$;
GRANT EXECUTE ON FUNCTION app.uid(), app.is_member(text), app.may_use_project_keyring(text)
    TO anon, authenticated, service_role;

ALTER TABLE app.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.project_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_projects ON app.projects FOR SELECT TO authenticated USING (app.is_member(id));
CREATE POLICY own_memberships ON app.project_members FOR SELECT TO authenticated USING (user_id = app.uid());
CREATE POLICY member_read ON app.secrets FOR SELECT TO authenticated USING (app.is_member(project_id));
CREATE POLICY member_insert ON app.secrets FOR INSERT TO authenticated WITH CHECK (app.is_member(project_id));
CREATE POLICY member_update ON app.secrets FOR UPDATE TO authenticated
    USING (app.is_member(project_id)) WITH CHECK (app.is_member(project_id));
GRANT SELECT ON app.projects, app.project_members, app.secrets TO anon, authenticated;
GRANT INSERT, UPDATE ON app.secrets TO authenticated;
GRANT ALL ON app.projects, app.project_members, app.secrets TO service_role;

-- Reading: decrypted through a security_invoker view, so the caller's RLS decides which rows exist
-- and secret_decrypt's tenant check decides whether a row's keyring may be used at all. The context
-- binds each ciphertext to its project and key: a ciphertext copied to another row does not decrypt.
CREATE VIEW app.decrypted_secrets WITH (security_invoker = true) AS
SELECT project_id, key,
       meshhook_keys.secret_decrypt(value_encrypted, project_id || '/' || key) AS value
  FROM app.secrets;
GRANT SELECT ON app.decrypted_secrets TO anon, authenticated, service_role;

-- Writing: the plaintext is encrypted before the row exists (never stored), with the project's keyring.
CREATE FUNCTION app.put_secret(project text, secret_key text, value text) RETURNS void
LANGUAGE sql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO app.secrets (project_id, key, value_encrypted)
    VALUES (project, secret_key,
            meshhook_keys.secret_encrypt(value, project || '/' || secret_key, 'project:' || project))
    ON CONFLICT (project_id, key) DO UPDATE SET value_encrypted = EXCLUDED.value_encrypted
$$;
GRANT EXECUTE ON FUNCTION app.put_secret(text, text, text) TO authenticated, service_role;

-- A new project (run by the platform as an admin): its keyring, bound to the project, and the
-- secrets column registered for that keyring so rotation and re-encryption cover its rows.
CREATE FUNCTION app.create_project(project text, project_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO app.projects (id, name) VALUES (project, project_name);
    PERFORM meshhook_keys.keyring_create('project:' || project, project, 'new project');
    PERFORM meshhook_keys.register_column('app.secrets', 'value_encrypted',
                                          $ctx$project_id || '/' || key$ctx$, 'project:' || project);
END
$$;
REVOKE ALL ON FUNCTION app.create_project(text, text) FROM PUBLIC;
