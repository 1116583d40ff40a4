BEGIN;
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'first');
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'second');
SELECT * FROM meshhook_keys.audit_verify();
-- append-only, for everyone including the owner
SELECT sqlstate_of('UPDATE meshhook_keys.audit_log SET reason = ''rewritten''');
SELECT sqlstate_of('DELETE FROM meshhook_keys.audit_log');
SELECT sqlstate_of('TRUNCATE meshhook_keys.audit_log');
-- rows chain: each prev_hash is the previous row's hash, ids have no gaps
SELECT bool_and(a.prev_hash = b.hash) AS chained, bool_and(a.id = b.id + 1) AS contiguous
  FROM meshhook_keys.audit_log a JOIN meshhook_keys.audit_log b ON b.id = a.id - 1;
-- a row inserted with a hash that does not match is refused (only consistent restores pass)
SELECT sqlstate_of($$INSERT INTO meshhook_keys.audit_log (id, action, prev_hash, hash) VALUES (999, 'forged', '\x00', '\x00')$$);
-- tampering with the triggers disabled (what only a superuser can do) is detected
ALTER TABLE meshhook_keys.audit_log DISABLE TRIGGER audit_log_no_update_delete;
UPDATE meshhook_keys.audit_log SET reason = 'rewritten' WHERE reason = 'first';
SELECT ok, first_bad_id = (SELECT id FROM meshhook_keys.audit_log WHERE reason = 'rewritten') AS points_at_edit
  FROM meshhook_keys.audit_verify();
ROLLBACK;
BEGIN;
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'x');
ALTER TABLE meshhook_keys.audit_log DISABLE TRIGGER audit_log_no_update_delete;
-- deleting a row in the middle is detected
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'y');
DELETE FROM meshhook_keys.audit_log WHERE reason = 'x';
SELECT ok FROM meshhook_keys.audit_verify();
ROLLBACK;
-- the result does not depend on the session's time zone or date style
BEGIN;
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'tz');
SET LOCAL TimeZone = 'Asia/Kolkata';
SET LOCAL DateStyle = 'German';
SELECT ok FROM meshhook_keys.audit_verify();
ROLLBACK;
-- through PostgREST or meshhook-keys serve every session is the same login role: the row also
-- records who the request's JWT says it is (sub and role claims), and nothing else of the claims
BEGIN;
SELECT set_config('request.jwt.claims', '{"sub": "7f0c-alice", "role": "ops", "email": "a@example.com", "secret": "x"}', true) IS NOT NULL AS claims;
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'with claims');
SELECT actor = session_user AS actor_is_login, detail -> 'jwt' AS jwt
  FROM meshhook_keys.audit_log WHERE reason = 'with claims';
SELECT set_config('request.jwt.claims', '', true) IS NOT NULL AS claims_cleared;
SELECT version FROM meshhook_keys.keys_rotate('audit-ring', 'without claims');
SELECT detail ? 'jwt' AS has_jwt FROM meshhook_keys.audit_log WHERE reason = 'without claims';
ROLLBACK;
