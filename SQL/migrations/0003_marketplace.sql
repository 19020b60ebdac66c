-- Marketplace: supplier registration and admission to an authority's framework, themes, social-value
-- measures, projects (opportunities) with their lifecycle, clarification questions, and sealed bids.
--
-- Sealing is enforced here as well as in the service: before a project's bid deadline (by the database
-- clock) no staff role can see any row of its bids, so neither content, price nor count can leak through any
-- query. Bid changes are audited in the supplier's own chain, not the authority's, for the same reason.

-- Supplier organisations: registration details ---------------------------------------------------------

ALTER TABLE supplier
    ADD COLUMN companies_house_number text CHECK (companies_house_number ~ '^([0-9]{8}|[A-Z]{2}[0-9]{6})$'),
    ADD COLUMN charity_number text CHECK (charity_number ~ '^[0-9]{6,8}(-[0-9]{1,2})?$'),
    ADD COLUMN address text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
    ADD COLUMN contact_name text NOT NULL DEFAULT '' CHECK (length(contact_name) <= 200),
    ADD COLUMN contact_email text NOT NULL DEFAULT '' CHECK (length(contact_email) <= 254),
    ADD COLUMN contact_phone text NOT NULL DEFAULT '' CHECK (length(contact_phone) <= 40);
CREATE UNIQUE INDEX supplier_companies_house_unique ON supplier (companies_house_number) WHERE companies_house_number IS NOT NULL;
CREATE UNIQUE INDEX supplier_charity_unique ON supplier (charity_number) WHERE charity_number IS NOT NULL;
-- Self-registration runs in the new supplier's own context.
CREATE POLICY supplier_register ON supplier FOR INSERT WITH CHECK (id = app_supplier_id());
CREATE POLICY supplier_update_own ON supplier FOR UPDATE USING (id = app_supplier_id()) WITH CHECK (id = app_supplier_id());
CREATE POLICY app_user_supplier_insert ON app_user FOR INSERT WITH CHECK (supplier_id = app_supplier_id());
CREATE POLICY api_token_supplier_own ON api_token FOR ALL
    USING (supplier_id = app_supplier_id()) WITH CHECK (supplier_id = app_supplier_id());
-- Authorities' names are public: suppliers need them to seek admission.
CREATE POLICY authority_directory ON authority FOR SELECT USING (app_supplier_id() IS NOT NULL);

-- How long before the bid deadline clarification questions close, per authority.
ALTER TABLE authority ADD COLUMN clarification_cutoff interval NOT NULL DEFAULT '2 days'
    CHECK (clarification_cutoff >= interval '0' AND clarification_cutoff <= interval '30 days');

-- Admission to an authority's framework -------------------------------------------------------------------

CREATE TYPE admission_status AS ENUM ('pending', 'approved', 'rejected', 'suspended');

CREATE TABLE supplier_admission (
    authority_id          uuid NOT NULL REFERENCES authority (id),
    supplier_id           uuid NOT NULL REFERENCES supplier (id),
    status                admission_status NOT NULL DEFAULT 'pending',
    declarations          jsonb NOT NULL,      -- safeguarding, insurance, DBS, continuity, data protection, environment
    insurance_expires_on  date NOT NULL,
    decision_reason       text CHECK (length(decision_reason) <= 1000),
    decided_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, supplier_id)
);
CREATE INDEX supplier_admission_supplier ON supplier_admission (supplier_id);
CREATE TRIGGER supplier_admission_updated_at BEFORE UPDATE ON supplier_admission FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE supplier_admission ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY supplier_admission_supplier_read ON supplier_admission FOR SELECT USING (supplier_id = app_supplier_id());
CREATE POLICY supplier_admission_supplier_apply ON supplier_admission FOR INSERT
    WITH CHECK (supplier_id = app_supplier_id() AND status = 'pending');
CREATE POLICY supplier_admission_supplier_reapply ON supplier_admission FOR UPDATE
    USING (supplier_id = app_supplier_id() AND status IN ('pending', 'rejected'))
    WITH CHECK (supplier_id = app_supplier_id() AND status = 'pending');
CREATE POLICY supplier_admission_staff_read ON supplier_admission FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY supplier_admission_admin_decide ON supplier_admission FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
CREATE POLICY supplier_admission_operator ON supplier_admission FOR ALL
    USING (current_user = 'locality_owner' AND authority_id = app_authority_id())
    WITH CHECK (current_user = 'locality_owner' AND authority_id = app_authority_id());

-- Staff see the organisations that applied to their authority.
CREATE POLICY supplier_staff_read ON supplier FOR SELECT USING (
    app_authority_id() IS NOT NULL
    AND EXISTS (SELECT 1 FROM supplier_admission a WHERE a.supplier_id = supplier.id AND a.authority_id = app_authority_id()));

-- True when the acting supplier is admitted (approved) to the authority.
CREATE FUNCTION app_supplier_admitted(p_authority uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT app_supplier_id() IS NOT NULL AND EXISTS (
        SELECT 1 FROM supplier_admission a
        WHERE a.authority_id = p_authority AND a.supplier_id = app_supplier_id() AND a.status = 'approved')
$$;

-- Admitted suppliers see the authority's boards and funding streams by name (projects refer to them).
CREATE POLICY board_supplier_read ON board FOR SELECT USING (app_supplier_admitted(authority_id));
CREATE POLICY funding_stream_supplier_read ON funding_stream FOR SELECT USING (app_supplier_admitted(authority_id));

-- Themes and social-value measures -----------------------------------------------------------------------

CREATE TYPE theme_category AS ENUM ('send', 'school_improvement');

CREATE TABLE theme (
    authority_id      uuid NOT NULL REFERENCES authority (id),
    id                uuid NOT NULL DEFAULT gen_random_uuid(),
    category          theme_category NOT NULL,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description       text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    example_outcomes  text NOT NULL DEFAULT '' CHECK (length(example_outcomes) <= 4000),
    retired_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT theme_name_unique UNIQUE (authority_id, name)
);
ALTER TABLE theme ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY theme_staff_read ON theme FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY theme_supplier_read ON theme FOR SELECT USING (app_supplier_admitted(authority_id));
CREATE POLICY theme_admin_write ON theme FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
CREATE POLICY theme_admin_update ON theme FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));

-- TOMs-style measures: a unit and a proxy value in pence per unit.
CREATE TABLE social_value_measure (
    authority_id       uuid NOT NULL REFERENCES authority (id),
    id                 uuid NOT NULL DEFAULT gen_random_uuid(),
    code               text NOT NULL CHECK (code ~ '^[A-Za-z0-9._-]{1,20}$'),
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 300),
    unit               text NOT NULL CHECK (length(unit) BETWEEN 1 AND 100),
    proxy_value_pence  bigint NOT NULL CHECK (proxy_value_pence >= 0),
    retired_at         timestamptz,
    PRIMARY KEY (authority_id, id),
    CONSTRAINT social_value_measure_code_unique UNIQUE (authority_id, code)
);
ALTER TABLE social_value_measure ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY social_value_measure_staff_read ON social_value_measure FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY social_value_measure_supplier_read ON social_value_measure FOR SELECT USING (app_supplier_admitted(authority_id));
CREATE POLICY social_value_measure_admin_write ON social_value_measure FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));

-- Projects ------------------------------------------------------------------------------------------------

-- 'closed' is not stored: an open project whose deadline has passed (database clock) is closed.
CREATE TYPE project_status AS ENUM ('draft', 'open', 'awarded', 'cancelled', 'unsuccessful');

CREATE TABLE project (
    authority_id        uuid NOT NULL,
    id                  uuid NOT NULL DEFAULT gen_random_uuid(),
    board_id            uuid NOT NULL,
    theme_id            uuid,
    funding_stream_id   uuid NOT NULL,
    financial_year      text NOT NULL CHECK (financial_year ~ '^[0-9]{4}-[0-9]{2}$'),
    title               text NOT NULL CHECK (length(title) <= 200),
    description         text NOT NULL DEFAULT '' CHECK (length(description) <= 20000),
    outcomes_sought     text NOT NULL DEFAULT '' CHECK (length(outcomes_sought) <= 10000),
    school_urns         text[] NOT NULL DEFAULT '{}',
    max_value_pence     bigint CHECK (max_value_pence > 0),
    bid_deadline        timestamptz,
    questions_close_at  timestamptz,
    planned_start       date,
    planned_end         date CHECK (planned_end >= planned_start),
    contract_manager    text NOT NULL DEFAULT '' CHECK (length(contract_manager) <= 200),
    evaluation          jsonb,
    status              project_status NOT NULL DEFAULT 'draft',
    status_reason       text CHECK (length(status_reason) <= 2000),
    version             integer NOT NULL DEFAULT 1,
    published_at        timestamptz,
    created_by          uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    search              tsvector GENERATED ALWAYS AS (
                            setweight(to_tsvector('english', coalesce(title, '')), 'A')
                            || setweight(to_tsvector('english', coalesce(description, '')), 'B')) STORED,
    PRIMARY KEY (authority_id, id),
    CONSTRAINT project_id_unique UNIQUE (id),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id),
    FOREIGN KEY (authority_id, theme_id) REFERENCES theme (authority_id, id),
    FOREIGN KEY (authority_id, funding_stream_id) REFERENCES funding_stream (authority_id, id),
    -- Everything a supplier needs is fixed before a project leaves draft.
    CONSTRAINT project_complete_when_published CHECK (status = 'draft' OR (
        theme_id IS NOT NULL AND max_value_pence IS NOT NULL AND bid_deadline IS NOT NULL
        AND planned_start IS NOT NULL AND planned_end IS NOT NULL AND evaluation IS NOT NULL
        AND published_at IS NOT NULL AND length(title) > 0))
);
CREATE INDEX project_board ON project (authority_id, board_id, created_at);
CREATE INDEX project_open ON project (bid_deadline) WHERE status = 'open';
CREATE INDEX project_search ON project USING gin (search);
CREATE TRIGGER project_updated_at BEFORE UPDATE ON project FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE project ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY project_staff_read ON project FOR SELECT
    USING (authority_id = app_authority_id() AND (app_sees_all_boards() OR board_id = ANY (app_board_ids())));
CREATE POLICY project_lim_insert ON project FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim') AND board_id = ANY (app_board_ids()));
CREATE POLICY project_lim_update ON project FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('lim') AND board_id = ANY (app_board_ids()))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim') AND board_id = ANY (app_board_ids()));
CREATE POLICY project_lim_delete_draft ON project FOR DELETE
    USING (authority_id = app_authority_id() AND app_has_role('lim') AND board_id = ANY (app_board_ids()) AND status = 'draft');
CREATE POLICY project_supplier_read ON project FOR SELECT USING (status <> 'draft' AND app_supplier_admitted(authority_id));

-- Accepting bids: open and before the deadline by the database clock (the statement's time).
CREATE FUNCTION project_accepting_bids_at(p_authority uuid, p_project uuid, p_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM project p WHERE p.authority_id = p_authority AND p.id = p_project
                   AND p.status = 'open' AND p.bid_deadline > p_at)
$$;
CREATE FUNCTION project_accepting_bids(p_authority uuid, p_project uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT project_accepting_bids_at(p_authority, p_project, statement_timestamp()) $$;

CREATE TABLE project_amendment (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    project_id     uuid NOT NULL,
    note           text NOT NULL CHECK (length(note) BETWEEN 1 AND 5000),
    old_deadline   timestamptz NOT NULL,
    new_deadline   timestamptz NOT NULL,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id) ON DELETE CASCADE,
    CONSTRAINT project_amendment_extends CHECK (new_deadline >= old_deadline)
);
ALTER TABLE project_amendment ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- Visible to whoever sees the project (the subquery runs under the caller's own policies).
CREATE POLICY project_amendment_read ON project_amendment FOR SELECT
    USING (EXISTS (SELECT 1 FROM project p WHERE p.authority_id = project_amendment.authority_id AND p.id = project_amendment.project_id));
CREATE POLICY project_amendment_lim_insert ON project_amendment FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim')
                AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = project_amendment.authority_id
                            AND p.id = project_amendment.project_id AND p.board_id = ANY (app_board_ids())));

-- Clarification questions -----------------------------------------------------------------------------------

CREATE TABLE clarification (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    project_id     uuid NOT NULL,
    supplier_id    uuid NOT NULL REFERENCES supplier (id),
    question       text NOT NULL CHECK (length(question) BETWEEN 1 AND 5000),
    answer         text CHECK (length(answer) <= 10000),
    asked_at       timestamptz NOT NULL DEFAULT now(),
    answered_at    timestamptz,
    published_at   timestamptz,
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id) ON DELETE CASCADE,
    CONSTRAINT clarification_published_answered CHECK (published_at IS NULL OR answer IS NOT NULL)
);
ALTER TABLE clarification ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- The asker sees its own; every admitted supplier sees published ones (the service hides who asked).
CREATE POLICY clarification_supplier_read ON clarification FOR SELECT
    USING (supplier_id = app_supplier_id() OR (published_at IS NOT NULL AND app_supplier_admitted(authority_id)));
CREATE POLICY clarification_supplier_ask ON clarification FOR INSERT
    WITH CHECK (supplier_id = app_supplier_id() AND app_supplier_admitted(authority_id) AND answer IS NULL
                AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = clarification.authority_id
                            AND p.id = clarification.project_id AND p.status = 'open'
                            AND p.questions_close_at > statement_timestamp()));
-- The board's LIMs see questions with the asker, and answer them; the auditor reads.
CREATE POLICY clarification_lim ON clarification FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = clarification.authority_id
                       AND p.id = clarification.project_id AND p.board_id = ANY (app_board_ids())))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('lim')
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = clarification.authority_id
                       AND p.id = clarification.project_id AND p.board_id = ANY (app_board_ids())));
CREATE POLICY clarification_auditor_read ON clarification FOR SELECT
    USING (authority_id = app_authority_id() AND app_has_role('auditor'));

-- Bids ------------------------------------------------------------------------------------------------------

CREATE TYPE bid_status AS ENUM ('draft', 'submitted', 'withdrawn', 'shortlisted', 'unsuccessful', 'awarded');

-- One bid row per supplier per project: its live version. A withdrawn bid can be revised and resubmitted.
CREATE TABLE bid (
    authority_id    uuid NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    project_id      uuid NOT NULL,
    supplier_id     uuid NOT NULL REFERENCES supplier (id),
    status          bid_status NOT NULL DEFAULT 'draft',
    price_pence     bigint CHECK (price_pence > 0),
    approach        text NOT NULL DEFAULT '' CHECK (length(approach) <= 50000),
    outputs         text NOT NULL DEFAULT '' CHECK (length(outputs) <= 20000),
    kpis            jsonb NOT NULL DEFAULT '[]',
    social_value    jsonb NOT NULL DEFAULT '[]',
    declarations    jsonb NOT NULL DEFAULT '{}',
    submitted_at    timestamptz,
    receipt_sha256  bytea CHECK (length(receipt_sha256) = 32),
    version         integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT bid_id_unique UNIQUE (id),
    CONSTRAINT bid_one_per_supplier UNIQUE (authority_id, project_id, supplier_id),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id),
    CONSTRAINT bid_submitted_complete CHECK (status IN ('draft', 'withdrawn')
        OR (price_pence IS NOT NULL AND submitted_at IS NOT NULL AND receipt_sha256 IS NOT NULL))
);
CREATE TRIGGER bid_updated_at BEFORE UPDATE ON bid FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE bid ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- The bidder always sees its own bids; it may write them only while the project accepts bids.
CREATE POLICY bid_supplier_read ON bid FOR SELECT USING (supplier_id = app_supplier_id());
CREATE POLICY bid_supplier_insert ON bid FOR INSERT
    WITH CHECK (supplier_id = app_supplier_id() AND app_supplier_admitted(authority_id)
                AND project_accepting_bids(authority_id, project_id));
CREATE POLICY bid_supplier_update ON bid FOR UPDATE
    USING (supplier_id = app_supplier_id() AND project_accepting_bids(authority_id, project_id))
    WITH CHECK (supplier_id = app_supplier_id() AND app_supplier_admitted(authority_id)
                AND project_accepting_bids(authority_id, project_id));
-- Sealed: staff see nothing of a project's bids until its deadline has passed; then the board's LIMs and
-- the auditor see the submitted ones. (The evaluation panel arrives with evaluation.)
CREATE POLICY bid_staff_after_deadline ON bid FOR SELECT USING (
    authority_id = app_authority_id() AND status NOT IN ('draft', 'withdrawn')
    AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = bid.authority_id AND p.id = bid.project_id
                AND p.bid_deadline <= statement_timestamp()
                AND ((app_has_role('lim') AND p.board_id = ANY (app_board_ids())) OR app_has_role('auditor'))));

-- Grants ----------------------------------------------------------------------------------------------------

GRANT INSERT, UPDATE ON supplier TO locality_app;
GRANT INSERT ON app_user TO locality_app;
GRANT SELECT, INSERT, UPDATE ON supplier_admission, theme, project, bid, clarification TO locality_app;
GRANT DELETE ON project TO locality_app;
GRANT SELECT, INSERT ON social_value_measure, project_amendment TO locality_app;
