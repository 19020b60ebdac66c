-- Functions PostgreSQL cannot inline become PL/pgSQL, with unchanged signatures and results.
-- Why: a SQL function is inlined into the calling query only when it is a plain expression (no FROM, no
-- sub-select) and neither SECURITY DEFINER nor SET; otherwise its body is parsed and planned again in
-- every statement that calls it, prepared or not. find_api_token runs on every authenticated request
-- and the policy helpers below in most statements: as SQL, re-planning them took about 60% of
-- PostgreSQL's CPU (1,100 authenticated GETs/s on two cores). PL/pgSQL keeps each statement's plan for
-- the life of the session. (The plain-expression helpers, app_authority_id() and the like, stay SQL:
-- they are inlined.)

CREATE OR REPLACE FUNCTION find_api_token(p_prefix text)
RETURNS TABLE (token_id uuid, token_hash bytea, authority_id uuid, supplier_id uuid, user_id uuid,
               display_name text, email text, roles text[], board_ids uuid[], last_used_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT t.id, t.token_hash, t.authority_id, t.supplier_id, t.user_id, u.display_name, u.email,
           CASE WHEN t.supplier_id IS NOT NULL THEN ARRAY['supplier_user']
                ELSE coalesce(array_agg(DISTINCT r.role::text) FILTER (WHERE r.role IS NOT NULL), '{}') END,
           coalesce(array_agg(DISTINCT r.board_id) FILTER (WHERE r.board_id IS NOT NULL), '{}'),
           t.last_used_at
    FROM api_token t
    JOIN app_user u ON u.id = t.user_id
    LEFT JOIN role_assignment r ON r.authority_id = t.authority_id AND r.user_id = t.user_id
    WHERE t.prefix = p_prefix AND t.revoked_at IS NULL AND t.expires_at > now() AND u.disabled_at IS NULL
    GROUP BY t.id, u.id;
END
$$;

CREATE OR REPLACE FUNCTION touch_api_token(p_token_id uuid) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public AS $$
BEGIN
    UPDATE api_token SET last_used_at = now()
    WHERE id = p_token_id AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');
END
$$;

CREATE OR REPLACE FUNCTION project_bidders(p_project uuid) RETURNS TABLE (supplier_id uuid, supplier_name text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT b.supplier_id, s.name FROM bid b JOIN supplier s ON s.id = b.supplier_id
    JOIN project p ON p.authority_id = b.authority_id AND p.id = b.project_id
    WHERE b.project_id = p_project AND b.authority_id = app_authority_id()
      AND b.status NOT IN ('draft', 'withdrawn') AND p.bid_deadline <= statement_timestamp()
      AND (EXISTS (SELECT 1 FROM evaluation_panel_member m WHERE m.authority_id = p.authority_id AND m.project_id = p.id
                   AND m.user_id = app_user_id())
           OR (app_has_role('lim') AND p.board_id = ANY (app_board_ids())) OR app_has_role('auditor'))
    ORDER BY s.name;
END
$$;

-- Row-level security helpers with a sub-select (bodies unchanged).

CREATE OR REPLACE FUNCTION app_supplier_admitted(p_authority uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT app_supplier_id() IS NOT NULL AND EXISTS (
            SELECT 1 FROM supplier_admission a
            WHERE a.authority_id = p_authority AND a.supplier_id = app_supplier_id() AND a.status = 'approved')
    );
END
$$;

CREATE OR REPLACE FUNCTION app_supplier_admitted_to(p_authority uuid, p_supplier uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM supplier_admission a WHERE a.authority_id = p_authority AND a.supplier_id = p_supplier
                       AND a.status = 'approved')
    );
END
$$;

CREATE OR REPLACE FUNCTION app_may_evaluate(p_authority uuid, p_project uuid, p_supplier uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM conflict_declaration d
                       WHERE d.authority_id = p_authority AND d.project_id = p_project AND d.supplier_id = p_supplier
                         AND d.user_id = app_user_id() AND NOT d.conflicted)
    );
END
$$;

CREATE OR REPLACE FUNCTION app_submitted_scorecard(p_authority uuid, p_bid uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM scorecard c WHERE c.authority_id = p_authority AND c.bid_id = p_bid
                       AND c.user_id = app_user_id() AND c.submitted_at IS NOT NULL)
    );
END
$$;

CREATE OR REPLACE FUNCTION app_oversees_bid(p_authority uuid, p_bid uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT app_authority_id() = p_authority AND (app_has_role('auditor') OR (app_has_role('lim') AND EXISTS (
            SELECT 1 FROM bid b JOIN project p ON p.authority_id = b.authority_id AND p.id = b.project_id
            WHERE b.authority_id = p_authority AND b.id = p_bid AND p.board_id = ANY (app_board_ids()))))
    );
END
$$;

CREATE OR REPLACE FUNCTION app_contract_party(p_authority uuid, p_contract uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT CASE WHEN c.supplier_id = app_supplier_id() THEN 'supplier'
                    WHEN app_authority_id() = c.authority_id AND app_has_role('lim') THEN 'board' END
        FROM contract c WHERE c.authority_id = p_authority AND c.id = p_contract
    );
END
$$;

CREATE OR REPLACE FUNCTION app_sees_school(p_authority uuid, p_urn integer) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT p_authority = app_authority_id() AND (app_sees_all_boards() OR EXISTS (
            SELECT 1 FROM school s WHERE s.authority_id = p_authority AND s.urn = p_urn AND s.board_id = ANY (app_board_ids())))
    );
END
$$;

CREATE OR REPLACE FUNCTION project_accepting_bids_at(p_authority uuid, p_project uuid, p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT EXISTS (SELECT 1 FROM project p WHERE p.authority_id = p_authority AND p.id = p_project
                       AND p.status = 'open' AND p.bid_deadline > p_at)
    );
END
$$;
