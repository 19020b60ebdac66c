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
