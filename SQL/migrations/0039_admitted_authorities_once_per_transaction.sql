-- The supplier's admitted authorities, read once per transaction (issue 14, bid submission).
--
-- app_admitted_authority_ids() (0026) gives the policies the authorities that approved the current supplier; a
-- policy reads it once per statement (an InitPlan), but every statement, and every call of a function whose own
-- statements carry project's policies, reads supplier_admission again. A bid submission did that six times
-- (`pg_stat_user_tables`: 23,780 index scans of supplier_admission for 3,800 submissions): its locking read's
-- policy (project_accepting_bids, whose project read carries project's policy) and its project read, the update's
-- USING and WITH CHECK (two deadline checks and the admission test itself).
--
-- Now the first call of a transaction reads the list and keeps it in a transaction-local setting with the supplier
-- it belongs to (`set_config(…, true)`: gone at COMMIT or ROLLBACK, and at the rollback of a savepoint set before
-- it); later calls for the same supplier use it. The context setting stays the source of truth: a transaction whose
-- supplier changes reads the list afresh. What changes is when an admission decided by another transaction is
-- seen: from the supplier's next transaction, where a statement of the same transaction saw it before. The writes
-- that depend on admission test it at the time of the write as before (app_supplier_admitted_to, the bid's insert
-- policy), and approval or suspension by an authority is a transaction of its own.
--
-- STABLE as before (one value per statement); not PARALLEL SAFE (set_config may not run in a parallel worker),
-- as before by default. Written to work under an empty search_path (names of ours schema-qualified), like 0018.

CREATE OR REPLACE FUNCTION public.app_admitted_authority_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_supplier uuid := public.app_supplier_id();
    v_key text;
    v_kept text;
    v_ids uuid[];
BEGIN
    IF v_supplier IS NULL THEN
        RETURN '{}';
    END IF;
    v_key := v_supplier::text || ':';
    v_kept := pg_catalog.current_setting('app.admitted_authority_ids', true);
    IF v_kept IS NOT NULL AND pg_catalog.starts_with(v_kept, v_key) THEN
        RETURN pg_catalog.substr(v_kept, pg_catalog.length(v_key) + 1)::uuid[];
    END IF;
    v_ids := (SELECT coalesce(pg_catalog.array_agg(a.authority_id), '{}') FROM public.supplier_admission a
              WHERE a.supplier_id = v_supplier AND a.status = 'approved');
    PERFORM pg_catalog.set_config('app.admitted_authority_ids', v_key || v_ids::text, true);
    RETURN v_ids;
END
$$;
COMMENT ON FUNCTION public.app_admitted_authority_ids() IS
    'The authorities that admitted the current supplier (approved); for policies, read once per transaction.';
