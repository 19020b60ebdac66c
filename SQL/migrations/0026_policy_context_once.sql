-- Row-level policies that cost little per row (issue 14).
--
-- Until now a policy such as `authority_id = app_authority_id() AND app_has_role('lim')` was inlined into
-- `authority_id = nullif(current_setting('app.authority_id', true), '')::uuid AND coalesce('lim' = ANY
-- (string_to_array(current_setting('app.roles', true), ',')), false)` and evaluated for every row the scan
-- looked at, and a table read through several policies (api_token, app_user, role_assignment in the token
-- lookup) evaluated a dozen such terms per row. The context does not change within a statement, so each
-- accessor is now wrapped in a scalar sub-select, `(SELECT public.app_authority_id())`: PostgreSQL runs it
-- once per statement as an InitPlan and the per-row predicate compares a column with a parameter (and an
-- index can use it). The same for app_has_role(…), app_board_ids(), app_sees_all_boards(),
-- app_is_authenticating(), app_supplier_id(), app_user_id(), app_idempotency_caller() and the
-- `current_setting('app.actor', true)` the ledger and notice policies compare with.
--
-- Meaning is unchanged: each wrapped call has no argument that depends on the row, so it has one value per
-- statement either way (STABLE). Row-dependent helpers change as follows, each equivalent as a filter
-- (true exactly where the old predicate was true; none of them is under a NOT):
--   app_supplier_admitted(authority_id)   → authority_id = ANY ((SELECT app_admitted_authority_ids())):
--       the supplier's approved authorities, read once per statement, instead of a PL/pgSQL call with a
--       lookup per row (the projects, boards, themes, measures and funding streams a supplier lists);
--   app_sees_school(authority_id, urn)    → the authority and "sees every board" tested first, per statement;
--       the PL/pgSQL lookup runs only for a board-scoped user's rows of their own authority;
--   app_oversees_bid(authority_id, bid_id) → likewise the authority and the auditor / LIM roles first.
-- The other row-dependent lookups (app_contract_party, app_may_evaluate, app_submitted_scorecard,
-- app_supplier_admitted_to, project_accepting_bids) stay: they guard writes of one row or a contract's few
-- rows. A catalog test (PolicyCostTests) fails on a policy that evaluates anything else per row.
--
-- The owner's backup policy (0018, `session_user = 'locality_owner' AND current_setting('app.backup', true)
-- = 'on'`) is left as it is: its first term is false for every session but the owner's own, so the
-- setting is never read per row, and a catalog test pins its text.
--
-- One policy is restated by hand: app_user_board_colleagues (0004) tested each user row with an EXISTS over
-- role_assignment, which carries row-level security of its own, so every read of app_user (the token lookup
-- included) planned and started role_assignment's policies inside it. It now compares the user's id with the
-- board colleagues the caller may see, read once per statement (app_board_colleague_ids(), below): the same
-- rows, since role_assignment_board_colleagues shows exactly the board_member rows that EXISTS asked for.
--
-- Written as a loop over the catalog so that every policy is covered, including those of migrations that
-- land after this one was written but sort before it; policies are stored as expression trees, so the text
-- pg_get_expr gives back is re-parsed here with the default search path.

-- PL/pgSQL, not SQL: a SQL function that is not inlined is planned again in every statement that calls it,
-- a PL/pgSQL one keeps its plan for the session. Staff (no supplier context) read nothing.
CREATE FUNCTION public.app_admitted_authority_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF public.app_supplier_id() IS NULL THEN
        RETURN '{}';
    END IF;
    RETURN (SELECT coalesce(array_agg(a.authority_id), '{}') FROM public.supplier_admission a
            WHERE a.supplier_id = public.app_supplier_id() AND a.status = 'approved');
END
$$;
COMMENT ON FUNCTION public.app_admitted_authority_ids() IS
    'The authorities that admitted the current supplier (approved); for policies, once per statement.';

-- The user ids of board members on the boards the caller sees (every board for authority admins, HoSIs and
-- auditors), within the caller's authority; runs as the caller, so role_assignment's policies apply too.
CREATE FUNCTION public.app_board_colleague_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF public.app_authority_id() IS NULL THEN
        RETURN '{}';
    END IF;
    RETURN (SELECT coalesce(array_agg(r.user_id), '{}') FROM public.role_assignment r
            WHERE r.authority_id = public.app_authority_id() AND r.role = 'board_member'
              AND (public.app_sees_all_boards() OR r.board_id = ANY (public.app_board_ids())));
END
$$;

DO $$
DECLARE
    p record;
    v_exprs text[];
    v text;
    i int;
BEGIN
    FOR p IN
        SELECT pol.polname, pol.polrelid::regclass AS relation,
               pg_get_expr(pol.polqual, pol.polrelid) AS using_expr,
               pg_get_expr(pol.polwithcheck, pol.polrelid) AS check_expr
        FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
        WHERE c.relnamespace = 'public'::regnamespace AND pol.polname <> 'owner_backup_read'
        ORDER BY 2, 1
    LOOP
        v_exprs := ARRAY[p.using_expr, p.check_expr];
        FOR i IN 1..2 LOOP
            v := v_exprs[i];
            CONTINUE WHEN v IS NULL;
            -- Row-dependent helpers first: their replacements call the helpers schema-qualified (public.),
            -- which the accessor rewrite below leaves alone.
            v := regexp_replace(v, '(?<![.\w"])app_supplier_admitted\((\w+)\)',
                                '(\1 = ANY ((SELECT public.app_admitted_authority_ids())::uuid[]))', 'g');
            v := regexp_replace(v, '(?<![.\w"])app_sees_school\((\w+), (\w+)\)',
                                '((\1 = app_authority_id()) AND (app_sees_all_boards() OR public.app_sees_school(\1, \2)))', 'g');
            v := regexp_replace(v, '(?<![.\w"])app_oversees_bid\((\w+), (\w+)\)',
                                '((\1 = app_authority_id()) AND (app_has_role(''auditor''::text) OR '
                                || '(app_has_role(''lim''::text) AND public.app_oversees_bid(\1, \2))))', 'g');
            -- The context accessors: once per statement.
            -- (The board ids with a cast: `= ANY ((SELECT …))` would parse as ANY over the sub-select's rows.)
            v := regexp_replace(v, '(?<![.\w"])app_board_ids\(\)', '((SELECT public.app_board_ids())::uuid[])', 'g');
            v := regexp_replace(v, '(?<![.\w"])(app_authority_id|app_supplier_id|app_user_id|app_sees_all_boards'
                                || '|app_is_authenticating|app_idempotency_caller)\(\)', '(SELECT public.\1())', 'g');
            v := regexp_replace(v, '(?<![.\w"])app_has_role\((''[a-z_]+''::text)\)', '(SELECT public.app_has_role(\1))', 'g');
            v := regexp_replace(v, '(?<![.\w"])current_setting\((''app\.actor''::text), true\)',
                                '(SELECT current_setting(\1, true))', 'g');
            v_exprs[i] := v;
        END LOOP;
        IF v_exprs[1] IS DISTINCT FROM p.using_expr OR v_exprs[2] IS DISTINCT FROM p.check_expr THEN
            EXECUTE format('ALTER POLICY %I ON %s', p.polname, p.relation)
                || CASE WHEN v_exprs[1] IS NOT NULL THEN ' USING (' || v_exprs[1] || ')' ELSE '' END
                || CASE WHEN v_exprs[2] IS NOT NULL THEN ' WITH CHECK (' || v_exprs[2] || ')' ELSE '' END;
        END IF;
    END LOOP;
END
$$;

ALTER POLICY app_user_board_colleagues ON app_user
    USING ((authority_id = (SELECT public.app_authority_id()))
           AND (id = ANY ((SELECT public.app_board_colleague_ids())::uuid[])));
