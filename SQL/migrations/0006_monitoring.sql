-- Delivery monitoring: each started contract's reporting calendar, the supplier's returns per KPI per
-- period (corrections are new versions), rating overrides, and corrective action plans.

CREATE TABLE reporting_period (
    authority_id  uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id   uuid NOT NULL,
    kpi_id        uuid NOT NULL,
    label         text NOT NULL,
    starts        date NOT NULL,
    ends          date NOT NULL CHECK (ends >= starts),
    due           date NOT NULL CHECK (due >= ends),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT reporting_period_unique UNIQUE (authority_id, kpi_id, starts),
    FOREIGN KEY (authority_id, contract_id) REFERENCES contract (authority_id, id),
    FOREIGN KEY (authority_id, kpi_id) REFERENCES contract_kpi (authority_id, id)
);
CREATE INDEX reporting_period_contract ON reporting_period (authority_id, contract_id, due);

-- One row per submitted version; the latest version counts. Aggregate figures only.
CREATE TABLE kpi_return (
    authority_id        uuid NOT NULL,
    id                  uuid NOT NULL DEFAULT gen_random_uuid(),
    period_id           uuid NOT NULL,
    version             integer NOT NULL CHECK (version >= 1),
    actual              numeric,
    numerator           numeric CHECK (numerator >= 0),
    denominator         numeric CHECK (denominator > 0),
    no_activity         boolean NOT NULL DEFAULT false,
    no_activity_reason  text,
    narrative           text NOT NULL DEFAULT '' CHECK (length(narrative) <= 10000),
    evidence            text NOT NULL DEFAULT '' CHECK (length(evidence) <= 4000),
    computed_rating     text,
    submitted_by        text NOT NULL,
    submitted_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT kpi_return_version_unique UNIQUE (authority_id, period_id, version),
    FOREIGN KEY (authority_id, period_id) REFERENCES reporting_period (authority_id, id),
    CONSTRAINT kpi_return_figure CHECK (
        (no_activity AND length(no_activity_reason) > 0 AND actual IS NULL AND numerator IS NULL)
        OR (NOT no_activity AND ((actual IS NOT NULL) <> (numerator IS NOT NULL AND denominator IS NOT NULL))))
);
CREATE TRIGGER kpi_return_append_only BEFORE UPDATE OR DELETE ON kpi_return FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- The contract manager's override, kept beside the computed rating.
CREATE TABLE rating_override (
    authority_id  uuid NOT NULL,
    period_id     uuid NOT NULL,
    rating        text NOT NULL CHECK (rating IN ('green', 'amber', 'red', 'blue', 'white')),
    reason        text NOT NULL CHECK (length(reason) BETWEEN 1 AND 4000),
    recorded_by   text NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, period_id),
    FOREIGN KEY (authority_id, period_id) REFERENCES reporting_period (authority_id, id)
);

CREATE TABLE corrective_action_plan (
    authority_id  uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id   uuid NOT NULL,
    kpi_id        uuid NOT NULL,
    trigger       text NOT NULL,              -- red, two_ambers, overdue
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'proposed', 'agreed', 'closed')),
    root_cause    text NOT NULL DEFAULT '',
    actions       jsonb NOT NULL DEFAULT '[]',
    outcome       text CHECK (outcome IN ('resolved', 'partly_resolved', 'not_resolved')),
    opened_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES contract (authority_id, id),
    FOREIGN KEY (authority_id, kpi_id) REFERENCES contract_kpi (authority_id, id)
);
-- One plan in progress per KPI.
CREATE UNIQUE INDEX corrective_action_plan_live ON corrective_action_plan (authority_id, kpi_id) WHERE status <> 'closed';

-- Both parties of a contract read its monitoring; the supplier writes returns, the board's LIMs override.
ALTER TABLE reporting_period ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY reporting_period_read ON reporting_period FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = reporting_period.authority_id AND c.id = reporting_period.contract_id));
CREATE POLICY reporting_period_board ON reporting_period FOR INSERT
    WITH CHECK (app_contract_party(authority_id, contract_id) = 'board');
ALTER TABLE kpi_return ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY kpi_return_read ON kpi_return FOR SELECT
    USING (EXISTS (SELECT 1 FROM reporting_period p WHERE p.authority_id = kpi_return.authority_id AND p.id = kpi_return.period_id));
CREATE POLICY kpi_return_supplier ON kpi_return FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM reporting_period p WHERE p.authority_id = kpi_return.authority_id AND p.id = kpi_return.period_id
                        AND app_contract_party(p.authority_id, p.contract_id) = 'supplier'));
ALTER TABLE rating_override ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY rating_override_read ON rating_override FOR SELECT
    USING (EXISTS (SELECT 1 FROM reporting_period p WHERE p.authority_id = rating_override.authority_id AND p.id = rating_override.period_id));
CREATE POLICY rating_override_board ON rating_override FOR ALL
    USING (EXISTS (SELECT 1 FROM reporting_period p WHERE p.authority_id = rating_override.authority_id AND p.id = rating_override.period_id
                   AND app_contract_party(p.authority_id, p.contract_id) = 'board'))
    WITH CHECK (EXISTS (SELECT 1 FROM reporting_period p WHERE p.authority_id = rating_override.authority_id AND p.id = rating_override.period_id
                   AND app_contract_party(p.authority_id, p.contract_id) = 'board'));
ALTER TABLE corrective_action_plan ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY corrective_action_plan_read ON corrective_action_plan FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = corrective_action_plan.authority_id AND c.id = corrective_action_plan.contract_id));
CREATE POLICY corrective_action_plan_parties ON corrective_action_plan FOR ALL
    USING (app_contract_party(authority_id, contract_id) IS NOT NULL)
    WITH CHECK (app_contract_party(authority_id, contract_id) IS NOT NULL);

GRANT SELECT, INSERT ON reporting_period, kpi_return TO locality_app;
GRANT SELECT, INSERT, UPDATE ON rating_override, corrective_action_plan TO locality_app;

-- Monitoring visits and the complaints log, kept by the board's LIMs; both parties read them.
CREATE TABLE monitoring_visit (
    authority_id  uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id   uuid NOT NULL,
    visit_date    date NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('planned', 'unannounced')),
    attendees     text NOT NULL CHECK (length(attendees) BETWEEN 1 AND 2000),
    findings      text NOT NULL DEFAULT '' CHECK (length(findings) <= 10000),
    follow_ups    text NOT NULL DEFAULT '' CHECK (length(follow_ups) <= 10000),
    recorded_by   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES contract (authority_id, id)
);
CREATE TABLE complaint (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    contract_id    uuid NOT NULL,
    received_on    date NOT NULL,
    nature         text NOT NULL CHECK (length(nature) BETWEEN 1 AND 4000),
    action_taken   text NOT NULL DEFAULT '' CHECK (length(action_taken) <= 4000),
    resolution     text CHECK (length(resolution) <= 4000),
    resolved_on    date CHECK (resolved_on >= received_on),
    recorded_by    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, contract_id) REFERENCES contract (authority_id, id),
    CONSTRAINT complaint_resolved CHECK ((resolution IS NULL) = (resolved_on IS NULL))
);
ALTER TABLE monitoring_visit ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY monitoring_visit_read ON monitoring_visit FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = monitoring_visit.authority_id AND c.id = monitoring_visit.contract_id));
CREATE POLICY monitoring_visit_board ON monitoring_visit FOR INSERT
    WITH CHECK (app_contract_party(authority_id, contract_id) = 'board');
ALTER TABLE complaint ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY complaint_read ON complaint FOR SELECT
    USING (EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = complaint.authority_id AND c.id = complaint.contract_id));
CREATE POLICY complaint_board ON complaint FOR ALL
    USING (app_contract_party(authority_id, contract_id) = 'board')
    WITH CHECK (app_contract_party(authority_id, contract_id) = 'board');
GRANT SELECT, INSERT ON monitoring_visit TO locality_app;
GRANT SELECT, INSERT, UPDATE ON complaint TO locality_app;
