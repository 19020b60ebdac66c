-- What a bid statement and an audited write cost PostgreSQL to start (issue 14, bid submission).
--
-- 1. Every statement on bid carries every role's policies. Four of them (a LIM deciding, staff, the panel and the
--    owner reading after the deadline) tested the bid's project with an inline EXISTS over project, which has
--    row-level security of its own: the planner put project's policies inside each of those sub-plans, so a
--    supplier's `UPDATE bid … WHERE id = $1` planned and started about a hundred plan nodes (sub-plans and the
--    InitPlans of project's policies), none of which can apply to a supplier, at every execution. Starting them
--    was the largest single part of a submission's database time. The same tests now sit in PL/pgSQL helpers,
--    called only when the terms before them (the caller's authority, the bid's status, the roles: all read once
--    per statement) let a row through — as app_oversees_bid and app_sees_school already did (0026). Meaning is
--    unchanged: each helper runs the same EXISTS with the caller's rights, so project's row-level security
--    still applies inside it, and statement_timestamp() is the calling statement's (it is the time the client's
--    statement arrived, the same in every function it calls).
--
-- 2. audit_canonical was declared IMMUTABLE, but its body calls stable functions (jsonb_build_object, to_char),
--    so PostgreSQL would not inline it and instead parsed and planned the SQL body again in every statement (and
--    every transaction's sealer) that called it. It is STABLE now, which lets the planner inline it; its result
--    does not depend on any setting (the time is rendered in UTC with an explicit format), so the canonical text,
--    and every hash in every chain, is exactly what it was.
--
-- Written to work under an empty search_path (names of ours schema-qualified), like 0019.

ALTER FUNCTION public.audit_canonical(public.audit_event) STABLE;

-- The bid's project has passed its bid deadline.
CREATE FUNCTION public.app_bid_project_closed(p_authority uuid, p_project uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM public.project p
        WHERE p.authority_id = p_authority AND p.id = p_project AND p.bid_deadline <= statement_timestamp());
END
$$;

-- …and is on one of the caller's boards.
CREATE FUNCTION public.app_bid_project_closed_on_own_board(p_authority uuid, p_project uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM public.project p
        WHERE p.authority_id = p_authority AND p.id = p_project AND p.bid_deadline <= statement_timestamp()
          AND p.board_id = ANY (public.app_board_ids()));
END
$$;

-- …and the caller oversees it: a LIM of its board, or an auditor.
CREATE FUNCTION public.app_bid_project_closed_for_staff(p_authority uuid, p_project uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM public.project p
        WHERE p.authority_id = p_authority AND p.id = p_project AND p.bid_deadline <= statement_timestamp()
          AND ((public.app_has_role('lim') AND p.board_id = ANY (public.app_board_ids())) OR public.app_has_role('auditor')));
END
$$;

ALTER POLICY bid_lim_decide ON public.bid
    USING (authority_id = (SELECT public.app_authority_id()) AND (SELECT public.app_has_role('lim'))
           AND status <> ALL (ARRAY['draft', 'withdrawn']::public.bid_status[])
           AND public.app_bid_project_closed_on_own_board(authority_id, project_id))
    WITH CHECK (authority_id = (SELECT public.app_authority_id()) AND (SELECT public.app_has_role('lim')));

ALTER POLICY bid_owner_after_deadline ON public.bid
    USING (CURRENT_USER = 'locality_owner' AND authority_id = (SELECT public.app_authority_id())
           AND status <> ALL (ARRAY['draft', 'withdrawn']::public.bid_status[])
           AND public.app_bid_project_closed(authority_id, project_id));

ALTER POLICY bid_panel_after_deadline ON public.bid
    USING (authority_id = (SELECT public.app_authority_id())
           AND status <> ALL (ARRAY['draft', 'withdrawn']::public.bid_status[])
           AND public.app_bid_project_closed(authority_id, project_id)
           AND public.app_may_evaluate(authority_id, project_id, supplier_id));

ALTER POLICY bid_staff_after_deadline ON public.bid
    USING (authority_id = (SELECT public.app_authority_id())
           AND status <> ALL (ARRAY['draft', 'withdrawn']::public.bid_status[])
           AND public.app_bid_project_closed_for_staff(authority_id, project_id));
