-- Evaluation, award and the contract with its negotiated KPIs.
--
-- Evaluation runs after a project's deadline. The LIM names a panel of the board's members; each member
-- first declares, per bidding supplier, whether they have a conflict of interest, and only then sees (and
-- scores) the bids of the suppliers they declared no conflict with. Members see each other's scores for a
-- bid only after submitting their own. The LIM records the moderated score per criterion and awards.

ALTER TABLE authority ADD COLUMN standstill_working_days integer NOT NULL DEFAULT 8
    CHECK (standstill_working_days BETWEEN 0 AND 30);

-- The panel ----------------------------------------------------------------------------------------------

CREATE TABLE evaluation_panel_member (
    authority_id  uuid NOT NULL,
    project_id    uuid NOT NULL,
    user_id       uuid NOT NULL,
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, project_id, user_id),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id),
    FOREIGN KEY (authority_id, user_id) REFERENCES app_user (authority_id, id)
);
ALTER TABLE evaluation_panel_member ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- Whoever sees the project sees its panel; the board's LIMs name it.
CREATE POLICY evaluation_panel_member_read ON evaluation_panel_member FOR SELECT
    USING (authority_id = app_authority_id()
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = evaluation_panel_member.authority_id
                       AND p.id = evaluation_panel_member.project_id));
CREATE POLICY evaluation_panel_member_lim ON evaluation_panel_member FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = evaluation_panel_member.authority_id
                       AND p.id = evaluation_panel_member.project_id AND p.board_id = ANY (app_board_ids())))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = evaluation_panel_member.authority_id
                       AND p.id = evaluation_panel_member.project_id AND p.board_id = ANY (app_board_ids())));

-- Conflict-of-interest declarations: one per panel member per bidding supplier, before seeing any bid.
CREATE TABLE conflict_declaration (
    authority_id  uuid NOT NULL,
    project_id    uuid NOT NULL,
    user_id       uuid NOT NULL,
    supplier_id   uuid NOT NULL REFERENCES supplier (id),
    conflicted    boolean NOT NULL,
    note          text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    declared_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, project_id, user_id, supplier_id),
    FOREIGN KEY (authority_id, project_id, user_id) REFERENCES evaluation_panel_member (authority_id, project_id, user_id),
    CONSTRAINT conflict_declaration_note CHECK (NOT conflicted OR length(note) > 0)
);
ALTER TABLE conflict_declaration ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY conflict_declaration_own ON conflict_declaration FOR SELECT
    USING (authority_id = app_authority_id() AND user_id = app_user_id());
CREATE POLICY conflict_declaration_declare ON conflict_declaration FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND user_id = app_user_id()
                AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = conflict_declaration.authority_id
                            AND p.id = conflict_declaration.project_id AND p.bid_deadline <= statement_timestamp()));
CREATE POLICY conflict_declaration_oversight ON conflict_declaration FOR SELECT
    USING (authority_id = app_authority_id() AND (app_has_role('auditor') OR (app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = conflict_declaration.authority_id
                       AND p.id = conflict_declaration.project_id AND p.board_id = ANY (app_board_ids())))));

-- True when the acting user sits on the project's panel and declared no conflict with the supplier.
CREATE FUNCTION app_may_evaluate(p_authority uuid, p_project uuid, p_supplier uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM conflict_declaration d
                   WHERE d.authority_id = p_authority AND d.project_id = p_project AND d.supplier_id = p_supplier
                     AND d.user_id = app_user_id() AND NOT d.conflicted)
$$;

-- Panel members see the submitted bids they may evaluate, once the deadline has passed.
CREATE POLICY bid_panel_after_deadline ON bid FOR SELECT USING (
    authority_id = app_authority_id() AND status NOT IN ('draft', 'withdrawn')
    AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = bid.authority_id AND p.id = bid.project_id
                AND p.bid_deadline <= statement_timestamp())
    AND app_may_evaluate(authority_id, project_id, supplier_id));

-- Who sits on a board is known to the board's own staff (the LIM names panels from them).
CREATE POLICY role_assignment_board_colleagues ON role_assignment FOR SELECT
    USING (authority_id = app_authority_id() AND role = 'board_member'
           AND (app_sees_all_boards() OR board_id = ANY (app_board_ids())));
CREATE POLICY app_user_board_colleagues ON app_user FOR SELECT
    USING (authority_id = app_authority_id() AND EXISTS (
        SELECT 1 FROM role_assignment r WHERE r.authority_id = app_user.authority_id AND r.user_id = app_user.id
        AND r.role = 'board_member' AND (app_sees_all_boards() OR r.board_id = ANY (app_board_ids()))));

CREATE FUNCTION board_members(p_board uuid) RETURNS TABLE (user_id uuid, display_name text)
LANGUAGE sql STABLE AS $$
    SELECT u.id, u.display_name FROM role_assignment r JOIN app_user u ON u.authority_id = r.authority_id AND u.id = r.user_id
    WHERE r.authority_id = app_authority_id() AND r.board_id = p_board AND r.role = 'board_member' AND u.disabled_at IS NULL
      AND (app_sees_all_boards() OR p_board = ANY (app_board_ids()))
    ORDER BY u.display_name, u.id
$$;

-- Who bid, without what: panel members need the bidders' names to declare conflicts before seeing bids.
-- The function runs as the owner, which row-level security still filters (FORCE): this policy lets it
-- see a project's submitted bids once the deadline has passed, never before.
CREATE POLICY bid_owner_after_deadline ON bid FOR SELECT USING (
    current_user = 'locality_owner' AND authority_id = app_authority_id() AND status NOT IN ('draft', 'withdrawn')
    AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = bid.authority_id AND p.id = bid.project_id
                AND p.bid_deadline <= statement_timestamp()));
CREATE FUNCTION project_bidders(p_project uuid) RETURNS TABLE (supplier_id uuid, supplier_name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT b.supplier_id, s.name FROM bid b JOIN supplier s ON s.id = b.supplier_id
    JOIN project p ON p.authority_id = b.authority_id AND p.id = b.project_id
    WHERE b.project_id = p_project AND b.authority_id = app_authority_id()
      AND b.status NOT IN ('draft', 'withdrawn') AND p.bid_deadline <= statement_timestamp()
      AND (EXISTS (SELECT 1 FROM evaluation_panel_member m WHERE m.authority_id = p.authority_id AND m.project_id = p.id
                   AND m.user_id = app_user_id())
           OR (app_has_role('lim') AND p.board_id = ANY (app_board_ids())) OR app_has_role('auditor'))
    ORDER BY s.name
$$;

-- Compliance and award decisions on bids, by the board's LIMs after the deadline.
ALTER TABLE bid
    ADD COLUMN compliant boolean NOT NULL DEFAULT true,
    ADD COLUMN non_compliance_reason text CHECK (length(non_compliance_reason) <= 2000),
    ADD COLUMN outcome_note text CHECK (length(outcome_note) <= 4000);
CREATE POLICY bid_lim_decide ON bid FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('lim') AND status NOT IN ('draft', 'withdrawn')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = bid.authority_id AND p.id = bid.project_id
                       AND p.bid_deadline <= statement_timestamp() AND p.board_id = ANY (app_board_ids())))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim'));

-- Scores ---------------------------------------------------------------------------------------------------

CREATE TYPE criterion_kind AS ENUM ('quality', 'social_value');

-- A member's scorecard for one bid; once submitted it is final and the member may see the others'.
CREATE TABLE scorecard (
    authority_id  uuid NOT NULL,
    bid_id        uuid NOT NULL,
    user_id       uuid NOT NULL,
    submitted_at  timestamptz,
    PRIMARY KEY (authority_id, bid_id, user_id),
    FOREIGN KEY (authority_id, bid_id) REFERENCES bid (authority_id, id),
    FOREIGN KEY (authority_id, user_id) REFERENCES app_user (authority_id, id)
);
CREATE TABLE individual_score (
    authority_id    uuid NOT NULL,
    bid_id          uuid NOT NULL,
    user_id         uuid NOT NULL,
    criterion_kind  criterion_kind NOT NULL,
    criterion       text NOT NULL,
    score           integer NOT NULL CHECK (score BETWEEN 0 AND 5),
    comment         text NOT NULL CHECK (length(comment) BETWEEN 1 AND 4000),
    -- Copied from the scorecard when it is submitted, so peers' policies need not read others' scorecards.
    submitted       boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, bid_id, user_id, criterion_kind, criterion),
    FOREIGN KEY (authority_id, bid_id, user_id) REFERENCES scorecard (authority_id, bid_id, user_id)
);

-- True once the acting user has submitted their own scorecard for the bid.
CREATE FUNCTION app_submitted_scorecard(p_authority uuid, p_bid uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM scorecard c WHERE c.authority_id = p_authority AND c.bid_id = p_bid
                   AND c.user_id = app_user_id() AND c.submitted_at IS NOT NULL)
$$;

-- The board's LIM (or the auditor) oversees every score of a bid they can see.
CREATE FUNCTION app_oversees_bid(p_authority uuid, p_bid uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT app_authority_id() = p_authority AND (app_has_role('auditor') OR (app_has_role('lim') AND EXISTS (
        SELECT 1 FROM bid b JOIN project p ON p.authority_id = b.authority_id AND p.id = b.project_id
        WHERE b.authority_id = p_authority AND b.id = p_bid AND p.board_id = ANY (app_board_ids()))))
$$;

ALTER TABLE scorecard ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY scorecard_own ON scorecard FOR ALL
    USING (authority_id = app_authority_id() AND user_id = app_user_id())
    WITH CHECK (authority_id = app_authority_id() AND user_id = app_user_id()
                AND EXISTS (SELECT 1 FROM bid b WHERE b.authority_id = scorecard.authority_id AND b.id = scorecard.bid_id
                            AND app_may_evaluate(b.authority_id, b.project_id, b.supplier_id)));
-- (Policies on scorecard must not call app_submitted_scorecard, which reads scorecard: that would recurse.)
CREATE POLICY scorecard_oversight ON scorecard FOR SELECT USING (app_oversees_bid(authority_id, bid_id));

ALTER TABLE individual_score ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY individual_score_own ON individual_score FOR ALL
    USING (authority_id = app_authority_id() AND user_id = app_user_id())
    WITH CHECK (authority_id = app_authority_id() AND user_id = app_user_id()
                AND EXISTS (SELECT 1 FROM scorecard c WHERE c.authority_id = individual_score.authority_id
                            AND c.bid_id = individual_score.bid_id AND c.user_id = app_user_id() AND c.submitted_at IS NULL));
-- Blind scoring: a member sees other members' scores for a bid only after submitting their own.
CREATE POLICY individual_score_peers ON individual_score FOR SELECT
    USING (authority_id = app_authority_id() AND submitted
           AND (app_submitted_scorecard(authority_id, bid_id) OR app_oversees_bid(authority_id, bid_id)));

-- The LIM's moderated (consensus) score per bid per criterion, with the rationale.
CREATE TABLE moderated_score (
    authority_id    uuid NOT NULL,
    bid_id          uuid NOT NULL,
    criterion_kind  criterion_kind NOT NULL,
    criterion       text NOT NULL,
    score           integer NOT NULL CHECK (score BETWEEN 0 AND 5),
    rationale       text NOT NULL CHECK (length(rationale) BETWEEN 1 AND 4000),
    recorded_by     text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, bid_id, criterion_kind, criterion),
    FOREIGN KEY (authority_id, bid_id) REFERENCES bid (authority_id, id)
);
ALTER TABLE moderated_score ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- Readable by whoever may see the bid (the subquery runs under the caller's bid policies).
CREATE POLICY moderated_score_read ON moderated_score FOR SELECT
    USING (authority_id = app_authority_id()
           AND EXISTS (SELECT 1 FROM bid b WHERE b.authority_id = moderated_score.authority_id AND b.id = moderated_score.bid_id));
CREATE POLICY moderated_score_lim ON moderated_score FOR ALL
    USING (app_oversees_bid(authority_id, bid_id) AND app_has_role('lim'))
    WITH CHECK (app_oversees_bid(authority_id, bid_id) AND app_has_role('lim'));

-- Award and the contract ---------------------------------------------------------------------------------

ALTER TABLE project ADD COLUMN awarded_bid_id uuid, ADD COLUMN award_reason text CHECK (length(award_reason) <= 4000);

CREATE TYPE contract_status AS ENUM ('kpi_negotiation', 'active', 'completed', 'terminated');

CREATE TABLE contract (
    authority_id         uuid NOT NULL,
    id                   uuid NOT NULL DEFAULT gen_random_uuid(),
    project_id           uuid NOT NULL,
    bid_id               uuid NOT NULL,
    supplier_id          uuid NOT NULL REFERENCES supplier (id),
    value_pence          bigint NOT NULL CHECK (value_pence > 0),
    start_date           date NOT NULL,
    end_date             date NOT NULL CHECK (end_date >= start_date),
    contract_manager     text NOT NULL,
    standstill_ends_on   date NOT NULL,
    status               contract_status NOT NULL DEFAULT 'kpi_negotiation',
    social_value         jsonb NOT NULL DEFAULT '[]',   -- the bid's commitments, to report on
    termination_reason   text,
    amount_paid_pence    bigint CHECK (amount_paid_pence >= 0),
    started_at           timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT contract_id_unique UNIQUE (id),
    -- At most one award per project, whatever the concurrency.
    CONSTRAINT contract_one_per_project UNIQUE (authority_id, project_id),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id),
    FOREIGN KEY (authority_id, bid_id) REFERENCES bid (authority_id, id),
    CONSTRAINT contract_starts_after_standstill CHECK (start_date >= standstill_ends_on)
);
CREATE TRIGGER contract_updated_at BEFORE UPDATE ON contract FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE contract ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY contract_staff_read ON contract FOR SELECT
    USING (authority_id = app_authority_id()
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = contract.authority_id AND p.id = contract.project_id));
CREATE POLICY contract_lim_write ON contract FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = contract.authority_id AND p.id = contract.project_id
                       AND p.board_id = ANY (app_board_ids())))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = contract.authority_id AND p.id = contract.project_id
                       AND p.board_id = ANY (app_board_ids())));
CREATE POLICY contract_supplier_read ON contract FOR SELECT USING (supplier_id = app_supplier_id());

CREATE FUNCTION app_contract_party(p_authority uuid, p_contract uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN c.supplier_id = app_supplier_id() THEN 'supplier'
                WHEN app_authority_id() = c.authority_id AND app_has_role('lim') THEN 'board' END
    FROM contract c WHERE c.authority_id = p_authority AND c.id = p_contract
$$;

-- KPIs: each proposal is a new revision; a KPI is agreed when both parties accept its latest revision.
CREATE TYPE contract_party AS ENUM ('board', 'supplier');

CREATE TABLE contract_kpi (
    authority_id  uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id   uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES contract (authority_id, id)
);
CREATE TABLE kpi_revision (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    kpi_id         uuid NOT NULL,
    revision       integer NOT NULL CHECK (revision >= 1),
    proposed_by    contract_party NOT NULL,
    actor          text NOT NULL,
    removal        boolean NOT NULL DEFAULT false,   -- a proposal to remove the KPI
    definition     jsonb NOT NULL,                   -- title, measure, unit, baseline, target, target date, frequency, RAG thresholds
    reason         text NOT NULL DEFAULT '',
    variation_id   uuid,                             -- set when part of a variation of an active contract
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT kpi_revision_unique UNIQUE (authority_id, kpi_id, revision),
    FOREIGN KEY (authority_id, kpi_id) REFERENCES contract_kpi (authority_id, id)
);
CREATE TABLE kpi_acceptance (
    authority_id   uuid NOT NULL,
    revision_id    uuid NOT NULL,
    party          contract_party NOT NULL,
    actor          text NOT NULL,
    accepted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, revision_id, party),
    FOREIGN KEY (authority_id, revision_id) REFERENCES kpi_revision (authority_id, id)
);
CREATE TRIGGER kpi_revision_append_only BEFORE UPDATE OR DELETE ON kpi_revision FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER kpi_acceptance_append_only BEFORE UPDATE OR DELETE ON kpi_acceptance FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Variations of an active contract: proposed by one party, accepted by the other.
CREATE TYPE variation_status AS ENUM ('proposed', 'accepted', 'rejected');
CREATE TABLE contract_variation (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id    uuid NOT NULL,
    proposed_by    contract_party NOT NULL,
    proposer       text NOT NULL,
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 4000),
    changes        jsonb NOT NULL,      -- value_pence, start_date, end_date, kpis: [{kpi_id?, definition, removal}]
    status         variation_status NOT NULL DEFAULT 'proposed',
    decided_by     text,
    decided_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES contract (authority_id, id)
);

-- Both parties of a contract read and write its negotiation; nobody else writes.
ALTER TABLE contract_kpi ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY contract_kpi_read ON contract_kpi FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = contract_kpi.authority_id AND c.id = contract_kpi.contract_id));
CREATE POLICY contract_kpi_party ON contract_kpi FOR INSERT
    WITH CHECK (app_contract_party(authority_id, contract_id) IS NOT NULL);
ALTER TABLE kpi_revision ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY kpi_revision_read ON kpi_revision FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract_kpi k WHERE k.authority_id = kpi_revision.authority_id AND k.id = kpi_revision.kpi_id));
CREATE POLICY kpi_revision_party ON kpi_revision FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM contract_kpi k WHERE k.authority_id = kpi_revision.authority_id AND k.id = kpi_revision.kpi_id
                        AND app_contract_party(k.authority_id, k.contract_id) = kpi_revision.proposed_by::text));
ALTER TABLE kpi_acceptance ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY kpi_acceptance_read ON kpi_acceptance FOR SELECT
    USING (EXISTS (SELECT 1 FROM kpi_revision r WHERE r.authority_id = kpi_acceptance.authority_id AND r.id = kpi_acceptance.revision_id));
CREATE POLICY kpi_acceptance_party ON kpi_acceptance FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id
                        WHERE r.authority_id = kpi_acceptance.authority_id AND r.id = kpi_acceptance.revision_id
                          AND app_contract_party(k.authority_id, k.contract_id) = kpi_acceptance.party::text));
ALTER TABLE contract_variation ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY contract_variation_read ON contract_variation FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = contract_variation.authority_id AND c.id = contract_variation.contract_id));
CREATE POLICY contract_variation_party ON contract_variation FOR ALL
    USING (app_contract_party(authority_id, contract_id) IS NOT NULL)
    WITH CHECK (app_contract_party(authority_id, contract_id) IS NOT NULL);
-- Accepting a variation changes the contract whichever party accepts; the supplier cannot update contracts
-- itself, so the change runs in this function, which checks that the caller is the other party.
CREATE POLICY contract_owner_maintain ON contract FOR UPDATE
    USING (current_user = 'locality_owner' AND (authority_id = app_authority_id() OR supplier_id = app_supplier_id()))
    WITH CHECK (current_user = 'locality_owner');
-- At award the board records the bid's KPIs as the supplier's revision 1; both parties then accept them.
CREATE POLICY kpi_revision_initial ON kpi_revision FOR INSERT
    WITH CHECK (revision = 1 AND variation_id IS NULL AND proposed_by = 'supplier'
                AND EXISTS (SELECT 1 FROM contract_kpi k WHERE k.authority_id = kpi_revision.authority_id AND k.id = kpi_revision.kpi_id
                            AND app_contract_party(k.authority_id, k.contract_id) = 'board'));
CREATE POLICY kpi_revision_owner ON kpi_revision FOR INSERT WITH CHECK (current_user = 'locality_owner');
CREATE POLICY kpi_acceptance_owner ON kpi_acceptance FOR INSERT WITH CHECK (current_user = 'locality_owner');

CREATE FUNCTION accept_contract_variation(p_authority uuid, p_variation uuid) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v contract_variation;
    v_party text;
    v_actor text := nullif(current_setting('app.actor', true), '');
    v_kpi jsonb;
    v_kpi_id uuid;
    v_revision_id uuid;
BEGIN
    SELECT * INTO v FROM contract_variation WHERE authority_id = p_authority AND id = p_variation FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'variation not found' USING ERRCODE = 'no_data_found';
    END IF;
    v_party := app_contract_party(v.authority_id, v.contract_id);
    IF v_party IS NULL OR v_party = v.proposed_by::text OR v.status <> 'proposed' THEN
        RAISE EXCEPTION 'only the other party may accept a proposed variation' USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE contract SET value_pence = coalesce((v.changes->>'value_pence')::bigint, value_pence),
                        end_date = coalesce((v.changes->>'end_date')::date, end_date)
    WHERE authority_id = v.authority_id AND id = v.contract_id;
    FOR v_kpi IN SELECT * FROM jsonb_array_elements(coalesce(v.changes->'kpis', '[]'))
    LOOP
        v_kpi_id := nullif(v_kpi->>'kpi_id', '')::uuid;
        IF v_kpi_id IS NULL THEN
            INSERT INTO contract_kpi (authority_id, contract_id) VALUES (v.authority_id, v.contract_id) RETURNING id INTO v_kpi_id;
        END IF;
        INSERT INTO kpi_revision (authority_id, kpi_id, revision, proposed_by, actor, removal, definition, reason, variation_id)
        SELECT v.authority_id, v_kpi_id, coalesce(max(r.revision), 0) + 1, v.proposed_by, v.proposer,
               coalesce((v_kpi->>'removal')::boolean, false), coalesce(v_kpi->'definition', '{}'), v.reason, v.id
        FROM kpi_revision r WHERE r.authority_id = v.authority_id AND r.kpi_id = v_kpi_id
        RETURNING id INTO v_revision_id;
        INSERT INTO kpi_acceptance (authority_id, revision_id, party, actor) VALUES
            (v.authority_id, v_revision_id, v.proposed_by, v.proposer),
            (v.authority_id, v_revision_id, v_party::contract_party, v_actor);
    END LOOP;
    UPDATE contract_variation SET status = 'accepted', decided_by = v_actor, decided_at = now()
    WHERE authority_id = v.authority_id AND id = v.id;
END;
$$;

-- Grants -----------------------------------------------------------------------------------------------------

GRANT SELECT, INSERT, DELETE ON evaluation_panel_member TO locality_app;
GRANT SELECT, INSERT ON conflict_declaration TO locality_app;
GRANT SELECT, INSERT, UPDATE ON scorecard, individual_score, moderated_score TO locality_app;
GRANT SELECT, INSERT, UPDATE ON contract, contract_variation TO locality_app;
GRANT SELECT, INSERT ON contract_kpi, kpi_revision, kpi_acceptance TO locality_app;
REVOKE ALL ON FUNCTION project_bidders(uuid), board_members(uuid), accept_contract_variation(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION project_bidders(uuid), board_members(uuid), accept_contract_variation(uuid, uuid) TO locality_app;

-- Ending a contract: what was paid is spent; the rest of the commitment returns to the budget.
ALTER TYPE ledger_entry_kind ADD VALUE 'decommitment';

CREATE OR REPLACE FUNCTION apply_ledger_entry() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO budget_balance (authority_id, board_id, financial_year, funding_stream_id)
    VALUES (NEW.authority_id, NEW.board_id, NEW.financial_year, NEW.funding_stream_id)
    ON CONFLICT (authority_id, board_id, financial_year, funding_stream_id) DO NOTHING;
    UPDATE budget_balance SET
        allocated_pence = allocated_pence + CASE WHEN NEW.kind = 'allocation' THEN NEW.amount_pence ELSE 0 END,
        earmarked_pence = earmarked_pence
            + CASE NEW.kind WHEN 'earmark' THEN NEW.amount_pence WHEN 'release' THEN -NEW.amount_pence ELSE 0 END,
        committed_pence = committed_pence
            + CASE NEW.kind::text WHEN 'commitment' THEN NEW.amount_pence WHEN 'decommitment' THEN -NEW.amount_pence ELSE 0 END,
        spent_pence     = spent_pence + CASE WHEN NEW.kind = 'spend' THEN NEW.amount_pence ELSE 0 END
    WHERE authority_id = NEW.authority_id AND board_id = NEW.board_id AND financial_year = NEW.financial_year
      AND funding_stream_id = NEW.funding_stream_id;
    RETURN NEW;
END;
$$;
ALTER TABLE budget_balance ADD CONSTRAINT budget_committed_not_negative CHECK (committed_pence >= 0);
