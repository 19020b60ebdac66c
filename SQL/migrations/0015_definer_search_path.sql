-- SECURITY DEFINER functions run with the owner's rights; their `SET search_path = public` still let a
-- caller's temporary schema be searched first for tables and views (pg_temp is implicitly first unless
-- named), so a session as the application role could create a temp table named like one of ours and have
-- owner-privileged code read or write it (fork the audit chain, say). Naming pg_temp last closes that.
-- Written as a loop over the catalog so that every such function is covered, including those created by
-- earlier migrations of this release; a catalog test keeps later ones honest.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.prosecdef
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = public, pg_temp', f);
    END LOOP;
END
$$;

-- Nothing of ours needs temporary tables at run time: take the privilege from PUBLIC (so from the
-- application role), as the database's owner. Where the owner role does not own the database this is a
-- no-op with a warning; deploy/README.md says how to do it by hand.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
