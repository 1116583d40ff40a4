-- Runs first; the other files each run in a transaction that they roll back.
CREATE EXTENSION meshhook_keys;
-- A helper for the other files: run a statement, return its SQLSTATE and message (or 'ok').
CREATE FUNCTION public.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION public.sqlstate_of(text) TO PUBLIC;
SELECT extname, extversion, extrelocatable FROM pg_extension WHERE extname = 'meshhook_keys';
SELECT rolname, rolcanlogin, rolinherit FROM pg_roles WHERE rolname LIKE 'meshhook_keys_%' ORDER BY 1;
