-- Policy helpers that work under any search path, and backups taken as the owner role.
--
-- 1. Every function a policy, trigger or the application calls names our objects schema-qualified
--    (public.x), so it works under an empty search path: pg_dump and pg_restore run with
--    search_path = '', and a dump with --enable-row-security evaluates every policy of every table.
--    Until now app_is_authenticating() called app_authority_id() unqualified and failed there.
--    Qualification rather than a SET search_path clause: a SET clause stops a SQL function being inlined
--    and costs a configuration save and restore on every call, and these run per row inside policies.
--    Signatures, languages and results are unchanged (PL/pgSQL where 0010 made them so). Functions that
--    reference nothing of ours (app_authority_id() and the other context accessors, set_updated_at(),
--    forbid_change(), project_deadline_not_earlier()) already work and are not redefined; SECURITY DEFINER
--    functions carry `SET search_path = public, pg_temp` (0015), which overrides the caller's path.

CREATE OR REPLACE FUNCTION app_sees_all_boards() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT public.app_has_role('authority_admin') OR public.app_has_role('hosi') OR public.app_has_role('auditor')
$$;

CREATE OR REPLACE FUNCTION app_is_authenticating() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT current_user = 'locality_owner' AND public.app_authority_id() IS NULL AND public.app_supplier_id() IS NULL
$$;

CREATE OR REPLACE FUNCTION project_accepting_bids(p_authority uuid, p_project uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT public.project_accepting_bids_at(p_authority, p_project, statement_timestamp()) $$;

CREATE OR REPLACE FUNCTION project_accepting_bids_at(p_authority uuid, p_project uuid, p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM public.project p WHERE p.authority_id = p_authority AND p.id = p_project
                       AND p.status = 'open' AND p.bid_deadline > p_at)
    );
END
$$;

CREATE OR REPLACE FUNCTION app_supplier_admitted(p_authority uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT public.app_supplier_id() IS NOT NULL AND EXISTS (
            SELECT 1 FROM public.supplier_admission a
            WHERE a.authority_id = p_authority AND a.supplier_id = public.app_supplier_id() AND a.status = 'approved')
    );
END
$$;

CREATE OR REPLACE FUNCTION app_supplier_admitted_to(p_authority uuid, p_supplier uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM public.supplier_admission a WHERE a.authority_id = p_authority AND a.supplier_id = p_supplier
                       AND a.status = 'approved')
    );
END
$$;

CREATE OR REPLACE FUNCTION app_may_evaluate(p_authority uuid, p_project uuid, p_supplier uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM public.conflict_declaration d
                       WHERE d.authority_id = p_authority AND d.project_id = p_project AND d.supplier_id = p_supplier
                         AND d.user_id = public.app_user_id() AND NOT d.conflicted)
    );
END
$$;

CREATE OR REPLACE FUNCTION app_submitted_scorecard(p_authority uuid, p_bid uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM public.scorecard c WHERE c.authority_id = p_authority AND c.bid_id = p_bid
                       AND c.user_id = public.app_user_id() AND c.submitted_at IS NOT NULL)
    );
END
$$;

CREATE OR REPLACE FUNCTION app_oversees_bid(p_authority uuid, p_bid uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT public.app_authority_id() = p_authority AND (public.app_has_role('auditor') OR (public.app_has_role('lim') AND EXISTS (
            SELECT 1 FROM public.bid b JOIN public.project p ON p.authority_id = b.authority_id AND p.id = b.project_id
            WHERE b.authority_id = p_authority AND b.id = p_bid AND p.board_id = ANY (public.app_board_ids()))))
    );
END
$$;

CREATE OR REPLACE FUNCTION app_contract_party(p_authority uuid, p_contract uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT CASE WHEN c.supplier_id = public.app_supplier_id() THEN 'supplier'
                    WHEN public.app_authority_id() = c.authority_id AND public.app_has_role('lim') THEN 'board' END
        FROM public.contract c WHERE c.authority_id = p_authority AND c.id = p_contract
    );
END
$$;

CREATE OR REPLACE FUNCTION app_sees_school(p_authority uuid, p_urn integer) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT p_authority = public.app_authority_id() AND (public.app_sees_all_boards() OR EXISTS (
            SELECT 1 FROM public.school s WHERE s.authority_id = p_authority AND s.urn = p_urn AND s.board_id = ANY (public.app_board_ids())))
    );
END
$$;

CREATE OR REPLACE FUNCTION board_members(p_board uuid) RETURNS TABLE (user_id uuid, display_name text)
LANGUAGE sql STABLE AS $$
    SELECT u.id, u.display_name FROM public.role_assignment r JOIN public.app_user u ON u.authority_id = r.authority_id AND u.id = r.user_id
    WHERE r.authority_id = public.app_authority_id() AND r.board_id = p_board AND r.role = 'board_member' AND u.disabled_at IS NULL
      AND (public.app_sees_all_boards() OR p_board = ANY (public.app_board_ids()))
    ORDER BY u.display_name, u.id
$$;

-- Two functions that are not SECURITY DEFINER but set a path: pg_temp last there too, like every other.
ALTER FUNCTION kpi_negotiation_open() SET search_path = public, pg_temp;
ALTER FUNCTION ledger_verify() SET search_path = public, pg_temp;

-- 2. Backups as the owner role. Tenant tables force row-level security on their owner (SECURITY DEFINER
--    code runs as the owner on the application role's behalf), so a plain pg_dump as the owner fails and
--    one with --enable-row-security sees only what the policies show. Each row-level-secured table gets a
--    read policy for a backup session: the owner logged in directly (session_user, which SET ROLE and
--    SECURITY DEFINER do not change, and only a superuser can) that asked for it with app.backup = on
--    (PGOPTIONS='-c app.backup=on', see deploy/README.md).
--    - Code running as the owner through a SECURITY DEFINER function for the application role has
--      session_user = locality_app, so it gains nothing, whatever app.* it sets.
--    - The opt-in keeps the operator's CLI (also the owner, logged in directly) scoped to the authority
--      it works on, as before: row-level security stays a second line of defence there.
--    - TO locality_owner: the application role's queries never even plan this policy.
--    A catalog test checks that every row-level-secured table has it, so a new table gets one too.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relrowsecurity
    LOOP
        EXECUTE format($f$CREATE POLICY owner_backup_read ON %s FOR SELECT TO locality_owner
                          USING (session_user = 'locality_owner' AND current_setting('app.backup', true) = 'on')$f$, t);
    END LOOP;
END
$$;
