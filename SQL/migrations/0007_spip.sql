-- School improvement plans (SPIPs) of schools causing concern, and the Head of School Improvement's
-- contracts for them: direct awards to admitted suppliers, committed from the school's board's
-- school-improvement budget, with the supplier's outputs and the HoSI's assessments of progress.
-- Visible to authority-wide roles and the school's own board (read-only); other boards see none of it.

CREATE TABLE spip_priority (
    authority_id  uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    urn           integer NOT NULL,
    priority      text NOT NULL CHECK (length(priority) BETWEEN 1 AND 2000),
    actions       jsonb NOT NULL DEFAULT '[]',
    recorded_by   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, urn) REFERENCES school (authority_id, urn)
);

CREATE TABLE school_contract (
    authority_id    uuid NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    urn             integer NOT NULL,
    board_id        uuid NOT NULL,
    supplier_id     uuid NOT NULL REFERENCES supplier (id),
    service         text NOT NULL CHECK (service IN ('interim_headteacher', 'governance_audit', 'curriculum_review',
                                                     'safeguarding_review', 'peer_review', 'other')),
    description     text NOT NULL CHECK (length(description) BETWEEN 1 AND 4000),
    value_pence     bigint NOT NULL CHECK (value_pence > 0),
    financial_year  text NOT NULL,
    start_date      date NOT NULL,
    end_date        date NOT NULL CHECK (end_date >= start_date),
    recorded_by     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT school_contract_id_unique UNIQUE (id),
    FOREIGN KEY (authority_id, urn) REFERENCES school (authority_id, urn),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id)
);

CREATE TABLE school_contract_output (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id    uuid NOT NULL,
    title          text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    summary        text NOT NULL DEFAULT '' CHECK (length(summary) <= 10000),
    submitted_by   text NOT NULL,
    submitted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES school_contract (authority_id, id)
);

CREATE TABLE school_contract_assessment (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id    uuid NOT NULL,
    assessed_on    date NOT NULL,
    progress       text NOT NULL CHECK (progress IN ('strong', 'expected', 'limited', 'none')),
    note           text NOT NULL CHECK (length(note) BETWEEN 1 AND 4000),
    recorded_by    text NOT NULL,
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES school_contract (authority_id, id)
);

-- Whether a supplier is admitted to an authority, for staff (app_supplier_admitted is for suppliers).
CREATE FUNCTION app_supplier_admitted_to(p_authority uuid, p_supplier uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM supplier_admission a WHERE a.authority_id = p_authority AND a.supplier_id = p_supplier
                   AND a.status = 'approved')
$$;

ALTER TABLE spip_priority ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY spip_priority_read ON spip_priority FOR SELECT USING (app_sees_school(authority_id, urn));
CREATE POLICY spip_priority_hosi ON spip_priority FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('hosi'));

ALTER TABLE school_contract ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY school_contract_read ON school_contract FOR SELECT USING (app_sees_school(authority_id, urn));
CREATE POLICY school_contract_supplier ON school_contract FOR SELECT USING (supplier_id = app_supplier_id());
CREATE POLICY school_contract_hosi ON school_contract FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('hosi') AND app_supplier_admitted_to(authority_id, supplier_id));

ALTER TABLE school_contract_output ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY school_contract_output_read ON school_contract_output FOR SELECT
    USING (EXISTS (SELECT 1 FROM school_contract c WHERE c.authority_id = school_contract_output.authority_id
                   AND c.id = school_contract_output.contract_id));
CREATE POLICY school_contract_output_write ON school_contract_output FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM school_contract c WHERE c.authority_id = school_contract_output.authority_id
                        AND c.id = school_contract_output.contract_id
                        AND (c.supplier_id = app_supplier_id() OR (c.authority_id = app_authority_id() AND app_has_role('hosi')))));

ALTER TABLE school_contract_assessment ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY school_contract_assessment_read ON school_contract_assessment FOR SELECT
    USING (EXISTS (SELECT 1 FROM school_contract c WHERE c.authority_id = school_contract_assessment.authority_id
                   AND c.id = school_contract_assessment.contract_id));
CREATE POLICY school_contract_assessment_hosi ON school_contract_assessment FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('hosi'));

-- The HoSI commits school-improvement money for these contracts.
CREATE POLICY budget_ledger_hosi_commit ON budget_ledger FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('hosi') AND kind = 'commitment'
                AND actor = current_setting('app.actor', true));

GRANT SELECT, INSERT ON spip_priority, school_contract, school_contract_output, school_contract_assessment TO locality_app;
