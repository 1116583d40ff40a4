-- Runs first; the other files each run in a transaction that they roll back.
CREATE EXTENSION meshhook_keys;
-- Helpers for the other files (sqlstate_of).
\i tests/pg_regress/helpers.sql
SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'meshhook_keys';
SELECT rolname, rolcanlogin, rolinherit FROM pg_roles WHERE rolname LIKE 'meshhook_keys_%' ORDER BY 1;
