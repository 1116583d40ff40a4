-- Helpers for the pg_regress files: included with \i by setup.sql, and by the files that run in a
-- database of their own (deputy, sessionkeys).
-- Run a statement, return its SQLSTATE and message (or 'ok').
CREATE FUNCTION public.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION public.sqlstate_of(text) TO PUBLIC;
