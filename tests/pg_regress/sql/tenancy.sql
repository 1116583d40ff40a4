-- Tenant-bound keyrings end to end: the MeshHook-shaped example (examples/meshhook/schema.sql) with
-- PostgREST-style requests, the tenant check, crypto-shredding, and re-encryption under RLS.
BEGIN;
\i examples/meshhook/schema.sql
SET LOCAL meshhook_keys.tenant_check = 'app.may_use_project_keyring';
SELECT app.create_project('p1', 'Acme'), app.create_project('p2', 'Globex');
INSERT INTO app.project_members VALUES ('p1', 'alice'), ('p2', 'bob');
SELECT keyring, tenant, active_version FROM meshhook_keys.keyrings WHERE tenant IS NOT NULL ORDER BY 1;

-- the backend (service_role, a member of meshhook_keys_service) writes secrets for both projects
SET LOCAL ROLE service_role;
SELECT app.put_secret('p1', 'stripe', 'sk_p1_stripe'), app.put_secret('p1', 'github', 'gh_p1'),
       app.put_secret('p2', 'slack', 'xoxb_p2');
-- ... and keeps one secret of its own in the built-in store
SELECT meshhook_keys.secret_create('backend-token', 'sk_backend_only') IS NOT NULL AS created;
RESET ROLE;
CREATE TEMP TABLE stolen AS SELECT value_encrypted AS c FROM app.secrets WHERE project_id = 'p2' AND key = 'slack';
GRANT SELECT ON stolen TO authenticated, service_role;

-- a request: PostgREST switches role and sets the JWT claims for the transaction
CREATE FUNCTION pg_temp.request(sub text, role text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('request.jwt.claims', json_build_object('sub', sub, 'role', role)::text, true);
    EXECUTE format('SET LOCAL ROLE %I', role);
END $$;

-- alice (member of p1) reads and decrypts her project's secrets, and only those
SELECT pg_temp.request('alice', 'authenticated');
SELECT project_id, key, value FROM app.decrypted_secrets ORDER BY 1, 2;
-- the built-in store is closed by default: she neither sees nor replaces the backend's own secret
SELECT count(*) AS backend_rows_alice_sees FROM meshhook_keys.decrypted_secrets;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_update('backend-token', 'alice-was-here')$$);
-- she cannot decrypt another project's ciphertext she got hold of: not directly (keyring check) ...
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'p2/slack') FROM stolen$$);
-- ... nor have it rewrapped (rewrap opens it first, under the same tenant check) ...
SELECT sqlstate_of($$SELECT meshhook_keys.rewrap(c, 'p2/slack') FROM stolen$$);
-- ... nor sign, verify or make webhook headers with project p2's keys (issue 28), while her own
-- project's keyring signs for her; a receiver's secret is for operators only
SELECT meshhook_keys.hmac_verify('x', meshhook_keys.hmac_sign('x', 'project:p1'), 'project:p1') AS signs_with_her_own;
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_sign('x', 'project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.hmac_verify('x', 'meshhook:v1:' || repeat('0', 64), 'project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_sign('x', 'project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_verify('x', 't=1,v1=' || repeat('0', 64), 'project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.webhook_secret('project:p1')$$);
-- ... nor compute blind indexes under project p2's keys (which would let her test guesses of its
-- values against its index column), while her own project's work
SELECT length(meshhook_keys.blind_index('x', 'project:p1')) AS her_own_index;
SELECT sqlstate_of($$SELECT meshhook_keys.blind_index('x', 'project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.blind_index_candidates('x', 'project:p2')$$);
-- ... nor have data keys made or unwrapped under project p2's keys
SELECT length(data_key) AS her_own_data_key FROM meshhook_keys.datakey_generate('project:p1', 'file');
SELECT sqlstate_of($$SELECT * FROM meshhook_keys.datakey_generate('project:p2', 'file')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.datakey_unwrap(c, 'p2/slack') FROM stolen$$);
-- ... and not by copying it into her own project's row (keyring check, and the context binds it)
INSERT INTO app.secrets (project_id, key, value_encrypted) SELECT 'p1', 'copied', c FROM stolen;
SELECT sqlstate_of($$SELECT value FROM app.decrypted_secrets WHERE key = 'copied'$$);
-- writing to a project she is not a member of: refused by the keyring's tenant check
SELECT sqlstate_of($$SELECT app.put_secret('p2', 'evil', 'x')$$);
RESET ROLE;
-- even the service role, which passes every tenant check, cannot open the copy: the context binds
-- the ciphertext to project p2's row
SET LOCAL ROLE service_role;
SELECT sqlstate_of($$SELECT value FROM app.decrypted_secrets WHERE key = 'copied'$$);
RESET ROLE;
DELETE FROM app.secrets WHERE key = 'copied';

-- bob sees only p2
SELECT pg_temp.request('bob', 'authenticated');
SELECT project_id, key, value FROM app.decrypted_secrets ORDER BY 1, 2;
RESET ROLE;
-- carol, signed in but a member of nothing, sees no rows
SELECT pg_temp.request('carol', 'authenticated');
SELECT count(*) AS carol_rows FROM app.decrypted_secrets;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'p2/slack') FROM stolen$$);
RESET ROLE;
-- anon gets nothing: no rows, and no decryption at all
SELECT pg_temp.request(NULL, 'anon');
SELECT count(*) AS anon_rows FROM app.decrypted_secrets;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt('\x00'::bytea, '')$$);
RESET ROLE;

-- no check configured: a tenant-bound keyring is refused, never open by accident
SET LOCAL meshhook_keys.tenant_check = '';
SELECT pg_temp.request('alice', 'authenticated');
SELECT sqlstate_of($$SELECT count(value) FROM app.decrypted_secrets$$);
RESET ROLE;
-- nor by a check that is not a function (tenant text) RETURNS boolean
SET LOCAL meshhook_keys.tenant_check = 'app.no_such_function';
SELECT pg_temp.request('alice', 'authenticated');
SELECT sqlstate_of($$SELECT count(value) FROM app.decrypted_secrets$$);
RESET ROLE;
SET LOCAL meshhook_keys.tenant_check = 'app.may_use_project_keyring';
-- and a tenant cannot switch it off
SELECT pg_temp.request('alice', 'authenticated');
SELECT sqlstate_of($$SET meshhook_keys.tenant_check = ''$$);
RESET ROLE;

-- re-encryption by the scheduler covers every project's rows while RLS is on
SELECT count(*) FROM (SELECT meshhook_keys.keys_rotate('project:' || id, 'quarterly') FROM app.projects) r;
SELECT keyring, action, outcome, detail FROM meshhook_keys.tick() WHERE action = 'reencrypt' ORDER BY 1;
SELECT k.keyring, k.version, count(*) FROM app.secrets s
  JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(s.value_encrypted)
 GROUP BY 1, 2 ORDER BY 1, 2;
SELECT pg_temp.request('alice', 'authenticated');
SELECT project_id, key, value FROM app.decrypted_secrets ORDER BY 1, 2;
RESET ROLE;

-- crypto-shredding a tenant: every version destroyed, its ciphertexts permanently undecryptable
SELECT meshhook_keys.keyring_destroy('project:p2', 'customer deleted their project') AS versions_destroyed;
SELECT keyring, active_version, destroyed_at IS NOT NULL AS destroyed FROM meshhook_keys.keyrings WHERE keyring = 'project:p2';
SELECT version, state, wrapped_key IS NULL AS wiped FROM meshhook_keys.data_key WHERE keyring = 'project:p2' ORDER BY 1;
SELECT pg_temp.request('bob', 'authenticated');
SELECT sqlstate_of($$SELECT value FROM app.decrypted_secrets$$);
RESET ROLE;
-- alice, who is no member of p2, is told she may not use it, not what became of its keys
SELECT pg_temp.request('alice', 'authenticated');
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'p2/slack') FROM stolen$$);
SELECT sqlstate_of($$SELECT meshhook_keys.secret_encrypt('x', 'p2/x', 'project:p2')$$);
RESET ROLE;
SET LOCAL ROLE service_role;
SELECT sqlstate_of($$SELECT meshhook_keys.secret_decrypt(c, 'p2/slack') FROM stolen$$);
SELECT sqlstate_of($$SELECT app.put_secret('p2', 'again', 'x')$$);
RESET ROLE;
SELECT sqlstate_of($$SELECT meshhook_keys.keys_rotate('project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_destroy('project:p2')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create('project:p2', 'p2')$$);
-- p1 is untouched
SELECT pg_temp.request('alice', 'authenticated');
SELECT count(*) AS p1_still_decrypts FROM app.decrypted_secrets WHERE value LIKE '%p1%';
RESET ROLE;
SELECT action, outcome, keyring, version, reason, detail->'versions_destroyed' AS versions_destroyed
  FROM meshhook_keys.audit_log WHERE action IN ('keyring_create', 'keyring_destroy') ORDER BY id;

-- keyring_create / keyring_destroy are admin only, and validated
CREATE ROLE mk_ten_app IN ROLE meshhook_keys_user;
SET LOCAL ROLE mk_ten_app;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create('x', 't')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_destroy('project:p1')$$);
RESET ROLE;
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create('project:p1', 'p1')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_create('t-empty', '')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.keyring_destroy('no-such-ring')$$);
-- the backend still reads the value it stored
RESET ROLE;
SET LOCAL ROLE service_role;
SELECT decrypted_secret FROM meshhook_keys.decrypted_secrets WHERE name = 'backend-token';
RESET ROLE;
ROLLBACK;
