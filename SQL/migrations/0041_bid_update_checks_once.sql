-- A bid update tests its project's deadline once, and the supplier's admitted authorities without a PL/pgSQL call
-- (issue 14, bid submission).
--
-- `track_functions = 'all'` over a submission run (3,000 submissions, 64 suppliers) counted, per submission, six
-- calls of app_admitted_authority_ids() (24 µs each, five of them answered from the transaction's setting, 0039)
-- and three of project_accepting_bids_at (86 µs each in itself, 257 µs with what they call): the locking read's
-- `FOR UPDATE` (the update policy's USING), the update's USING, and its WITH CHECK.
--
-- 1. app_admitted_authority_ids() in SQL, inlined where it is used. When the transaction's setting already holds
--    the current supplier's list (0039's format, `<supplier>:<uuid[]>`), the answer is that setting, an expression
--    the planner inlines into the policies' once-per-statement sub-selects: no PL/pgSQL call. Otherwise (the first
--    call of the transaction, or the supplier changed, or no supplier) it calls the PL/pgSQL reader, 0039's body
--    unchanged under a new name, which reads supplier_admission and keeps the list. Same answers as 0039.
--
-- 2. The supplier's update policy no longer tests the deadline in its WITH CHECK. The USING clause tests it on the
--    row being updated, at the statement's time; the WITH CHECK tested it again on the new version of the row, at
--    the same time, for the same project — unless the update moved the bid to another project or authority. The
--    application role now may not change a bid's keys at all (UPDATE on the other columns only: the column
--    privileges below, as 0016 did for social_value_measure and school), so the second test could never differ
--    from the first. The WITH CHECK keeps what USING does not test: the row stays the caller's, and the supplier
--    is still admitted by the bid's authority. A column added to bid later that the application writes needs its
--    own `GRANT UPDATE (…)`; PolicyCostTests.aBidsKeysCannotBeChangedSoItsDeadlineIsTestedOnce pins the keys.
--
-- Written to work under an empty search_path (names of ours schema-qualified), like 0018.

CREATE FUNCTION public.app_admitted_authority_ids_read() RETURNS uuid[]
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
COMMENT ON FUNCTION public.app_admitted_authority_ids_read() IS
    'The authorities that admitted the current supplier (approved), read from supplier_admission and kept in the '
    'transaction''s setting app.admitted_authority_ids; app_admitted_authority_ids() calls it when that setting '
    'does not hold the current supplier''s list.';

-- Replaced in place (a new language, the same signature): the policies that name it, by its oid, now get this.
CREATE OR REPLACE FUNCTION public.app_admitted_authority_ids() RETURNS uuid[]
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN pg_catalog.starts_with(pg_catalog.current_setting('app.admitted_authority_ids', true),
                                    public.app_supplier_id()::text || ':')
        THEN pg_catalog.substr(pg_catalog.current_setting('app.admitted_authority_ids', true),
                               pg_catalog.length(public.app_supplier_id()::text) + 2)::uuid[]
        ELSE public.app_admitted_authority_ids_read()
    END
$$;
COMMENT ON FUNCTION public.app_admitted_authority_ids() IS
    'The authorities that admitted the current supplier (approved); for policies: read once per transaction, '
    'then an expression inlined where it is used (no function call).';

ALTER POLICY bid_supplier_update ON public.bid
    WITH CHECK (supplier_id = (SELECT public.app_supplier_id())
                AND authority_id = ANY ((SELECT public.app_admitted_authority_ids())::uuid[]));

REVOKE UPDATE ON public.bid FROM locality_app;
GRANT UPDATE (status, price_pence, approach, outputs, kpis, social_value, declarations, submitted_at, receipt_sha256,
              version, updated_at, compliant, non_compliance_reason, outcome_note)
    ON public.bid TO locality_app;
