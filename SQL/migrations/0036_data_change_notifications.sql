-- The service answers some authenticated reads from memory (ResponseCache, issue 14) and must hear of every
-- change to what those answers were read from. Channel `locality_data` carries the news: the payload is the
-- authority whose data changed, or '' when anything may have changed.
--
-- Who announces what:
--   * the services' writes (ScopedDatabase, whose transactions always set `app.actor`) announce themselves
--     after their commit, in a transaction of their own with the authority they wrote for;
--   * every other write to tenant data — an operator's SQL, a migration, a bulk load, a maintenance job —
--     sets no `app.actor`, and the statement triggers below announce it ('' at its commit).
-- Not in the services' own write transactions: a transaction that has notified holds a database-wide lock
-- from its commit to its end, WAL flush included, so notifying in every write would queue all writers behind
-- each other's flush. The announcement after the commit is sent with synchronous_commit off: it holds that
-- lock for microseconds.
--
-- Tables left without the trigger (ResponseCacheTests names them too; a new table gets the trigger or a reason):
--   api_token           tokens are the authentication cache's (locality_auth); touched once a minute
--   idempotency_key     request bookkeeping, read by no cached answer
--   registration_attempt  a rate limit's counter, read by no cached answer
--   audit_event, audit_chain_head  sealed outside any tenant context; read by no cached answer
--
-- Written to work under an empty search_path: every name outside pg_catalog is schema-qualified.

CREATE FUNCTION public.announce_data_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(pg_catalog.current_setting('app.actor', true), '') = '' THEN
        PERFORM pg_catalog.pg_notify('locality_data', '');
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    v_table regclass;
BEGIN
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname NOT IN ('api_token', 'idempotency_key', 'registration_attempt', 'audit_event', 'audit_chain_head')
        ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER announce_data_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION public.announce_data_change()', v_table);
    END LOOP;
END
$$;
