-- Open contracting: OCDS 1.1.5 releases written by the lifecycle, and the notices the Procurement Act 2023
-- requires of each procurement.
--
-- A release is built here, from the tables, by ocds_publish() in the same transaction as the event it
-- records, and kept in ocds_release, append-only: a correction is a new release, never an edit. Releases
-- hold only public facts (the builder reads as the authority's auditor would, so sealed bids before their
-- deadline cannot even be seen; it never reads bids' content, scores, people, children or SPIPs), which
-- is why anyone may read the table.
--
-- Extension used (by its official name): Metrics (ocds_metrics_extension) — `metrics[]` with
-- `observations` on contracts (agreed KPI targets) and on contracts' implementation (KPI actuals).
-- Local fields: `noticeType` on each release (the Procurement Act 2023 notice it corresponds to, or absent).

-- Authority settings ----------------------------------------------------------------------------------

ALTER TABLE authority
    -- The prefix registered with the Open Contracting Partnership; until it is set nothing is published.
    ADD COLUMN ocid_prefix text CHECK (ocid_prefix ~ '^ocds-[a-z0-9]{6}$'),
    -- Central government authorities have lower thresholds.
    ADD COLUMN central_government boolean NOT NULL DEFAULT false,
    -- "As soon as reasonably practicable" for the contract details notice, as a number of days.
    ADD COLUMN contract_details_notice_days integer NOT NULL DEFAULT 30 CHECK (contract_details_notice_days BETWEEN 1 AND 365),
    -- Whether KPI actuals and ratings per reporting period are published (implementation releases).
    ADD COLUMN publish_kpi_actuals boolean NOT NULL DEFAULT false;

-- Project and contract fields the notices need ----------------------------------------------------------

ALTER TABLE project
    ADD COLUMN value_includes_vat boolean NOT NULL DEFAULT true,
    -- open: advertised on the marketplace to every admitted supplier; direct: a direct award.
    ADD COLUMN procurement_method text NOT NULL DEFAULT 'open' CHECK (procurement_method IN ('open', 'direct'));

-- Schools causing concern are withheld from every release unless the authority marks the contract publishable.
ALTER TABLE contract ADD COLUMN publish_concern_schools boolean NOT NULL DEFAULT false;

-- Thresholds ---------------------------------------------------------------------------------------------

-- Values including VAT, in pence, from their effective date. When thresholds change, operators ADD rows
-- with the new effective date (never edit old ones: past procurements were judged by them).
--   below_threshold: the value from which a below-threshold contract needs notices
--   regulated:       the threshold from which the full regime applies (services, light-touch excluded)
CREATE TABLE notice_threshold (
    kind                text NOT NULL CHECK (kind IN ('below_threshold', 'regulated')),
    central_government  boolean NOT NULL,
    effective_from      date NOT NULL,
    amount_pence        bigint NOT NULL CHECK (amount_pence > 0),
    PRIMARY KEY (kind, central_government, effective_from)
);
COMMENT ON TABLE notice_threshold IS 'Procurement Act 2023 thresholds incl. VAT; add a row when they change.';
INSERT INTO notice_threshold (kind, central_government, effective_from, amount_pence) VALUES
    ('below_threshold', false, '2024-01-01', 3000000),
    ('below_threshold', true,  '2024-01-01', 1200000),
    ('regulated',       false, '2024-01-01', 21490400),
    ('regulated',       true,  '2024-01-01', 13968800);

-- The threshold of a kind for an authority type on a date (the latest row in effect).
-- (PL/pgSQL here and below: PostgreSQL cannot inline a SQL function with a FROM, and would re-plan it per call.)
CREATE FUNCTION notice_threshold_on(p_kind text, p_central boolean, p_on date) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (SELECT t.amount_pence FROM notice_threshold t
            WHERE t.kind = p_kind AND t.central_government = p_central AND t.effective_from <= p_on
            ORDER BY t.effective_from DESC LIMIT 1);
END;
$$;

-- Releases -----------------------------------------------------------------------------------------------

CREATE TABLE ocds_release (
    seq           bigint GENERATED ALWAYS AS IDENTITY,   -- tie-break for the feed's order
    id            text NOT NULL,
    ocid          text NOT NULL,
    authority_id  uuid NOT NULL REFERENCES authority (id),
    project_id    uuid NOT NULL,
    tags          text[] NOT NULL,
    notice_type   text,
    date          timestamptz NOT NULL,
    release       jsonb NOT NULL,
    -- Keyed by authority like every tenant table (deploy/SCALING.md); ids embed the OCID, so they are unique anyway.
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id)
);
CREATE INDEX ocds_release_id ON ocds_release (id);
CREATE INDEX ocds_release_feed ON ocds_release (date, seq);
CREATE INDEX ocds_release_authority ON ocds_release (authority_id, date, seq);
CREATE INDEX ocds_release_ocid ON ocds_release (ocid, date, seq);
CREATE TRIGGER ocds_release_append_only BEFORE UPDATE OR DELETE ON ocds_release FOR EACH ROW EXECUTE FUNCTION forbid_change();
ALTER TABLE ocds_release ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- Public data: anyone reads it (the public endpoints run without a tenant context).
CREATE POLICY ocds_release_public_read ON ocds_release FOR SELECT USING (true);
-- Written only by ocds_publish(), as the owner, for the authority whose context it set.
CREATE POLICY ocds_release_publish ON ocds_release FOR INSERT
    WITH CHECK (current_user = 'locality_owner' AND authority_id = app_authority_id());

-- Notices filed on the Central Digital Platform ---------------------------------------------------------

CREATE TABLE notice_filing (
    authority_id        uuid NOT NULL,
    project_id          uuid NOT NULL,
    notice_key          text NOT NULL CHECK (notice_key ~ '^[a-z0-9_]{2,60}(:[0-9a-f-]{36})?$'),   -- type[:event id]
    notice_type         text NOT NULL,
    platform_notice_id  text NOT NULL CHECK (length(platform_notice_id) BETWEEN 1 AND 100),
    filed_at            timestamptz NOT NULL DEFAULT now(),
    filed_by            text NOT NULL,
    PRIMARY KEY (authority_id, project_id, notice_key),
    FOREIGN KEY (authority_id, project_id) REFERENCES project (authority_id, id)
);
CREATE TRIGGER notice_filing_append_only BEFORE UPDATE OR DELETE ON notice_filing FOR EACH ROW EXECUTE FUNCTION forbid_change();
ALTER TABLE notice_filing ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY notice_filing_read ON notice_filing FOR SELECT
    USING (authority_id = app_authority_id()
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = notice_filing.authority_id AND p.id = notice_filing.project_id));
CREATE POLICY notice_filing_record ON notice_filing FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND filed_by = current_setting('app.actor', true)
                AND (app_has_role('authority_admin') OR app_has_role('lim'))
                AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = notice_filing.authority_id AND p.id = notice_filing.project_id
                            AND (app_has_role('authority_admin') OR p.board_id = ANY (app_board_ids()))));

-- What the Act requires ----------------------------------------------------------------------------------

-- 'none', 'below_threshold' or 'regulated', from the estimated value including VAT (the project's maximum),
-- the authority's type and the thresholds in effect when it was published (today for a draft).
CREATE FUNCTION procurement_regime(p_authority uuid, p_project uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (SELECT CASE
        WHEN v.value >= notice_threshold_on('regulated', a.central_government, v.on_date) THEN 'regulated'
        WHEN v.value >= notice_threshold_on('below_threshold', a.central_government, v.on_date) THEN 'below_threshold'
        ELSE 'none' END
    FROM project p
    JOIN authority a ON a.id = p.authority_id
    CROSS JOIN LATERAL (SELECT CASE WHEN p.value_includes_vat THEN coalesce(p.max_value_pence, 0)
                                    ELSE round(coalesce(p.max_value_pence, 0) * 1.2)::bigint END AS value,
                               coalesce(p.published_at, now())::date AS on_date) v
    WHERE p.authority_id = p_authority AND p.id = p_project);
END;
$$;

-- Every notice a procurement needs, given its regime, whether it was advertised and how far it has got.
-- event_on is the date of the event that makes it due (NULL: not happened yet); due_on follows from it.
CREATE FUNCTION procurement_notices(p_authority uuid, p_project uuid)
RETURNS TABLE (notice_key text, notice_type text, event_on date, due_on date)
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    v_regime text := procurement_regime(p_authority, p_project);
    p project;
    c contract;
    v_days integer;
    v_variation record;
BEGIN
    SELECT * INTO p FROM project WHERE authority_id = p_authority AND id = p_project;
    IF NOT FOUND OR v_regime = 'none' THEN RETURN; END IF;
    SELECT * INTO c FROM contract WHERE authority_id = p_authority AND project_id = p_project;
    SELECT contract_details_notice_days INTO v_days FROM authority WHERE id = p_authority;
    IF v_regime = 'below_threshold' THEN
        -- An advertised below-threshold contract: its tender notice first, when it is advertised.
        IF p.procurement_method = 'open' THEN
            RETURN QUERY SELECT 'below_threshold_tender', 'below_threshold_tender', p.published_at::date, p.published_at::date;
        END IF;
        IF p.status NOT IN ('cancelled', 'unsuccessful') THEN
            RETURN QUERY SELECT 'uk7_contract_details', 'uk7_contract_details', c.started_at::date, (c.started_at::date + v_days);
        END IF;
        RETURN;
    END IF;
    -- Regulated: the full set.
    IF p.procurement_method = 'open' THEN
        RETURN QUERY SELECT 'uk4_tender', 'uk4_tender', p.published_at::date, p.published_at::date;
    ELSE
        -- A direct award above the threshold is preceded by a transparency notice.
        RETURN QUERY SELECT 'uk5_transparency', 'uk5_transparency', c.created_at::date, c.created_at::date;
    END IF;
    IF p.status IN ('cancelled', 'unsuccessful') THEN
        RETURN QUERY SELECT 'uk12_procurement_termination', 'uk12_procurement_termination', p.updated_at::date,
                            (p.updated_at::date + v_days);
        RETURN;
    END IF;
    RETURN QUERY SELECT 'uk6_contract_award', 'uk6_contract_award', c.created_at::date, c.created_at::date;
    RETURN QUERY SELECT 'uk7_contract_details', 'uk7_contract_details', c.started_at::date, (c.started_at::date + 30);
    -- Contract performance notices for contracts over £5m (incl. VAT), at least once a year while it runs.
    IF coalesce(c.value_pence, p.max_value_pence) * (CASE WHEN p.value_includes_vat THEN 1 ELSE 1.2 END) > 500000000 THEN
        RETURN QUERY SELECT 'uk9_contract_performance', 'uk9_contract_performance', c.started_at::date,
                            (c.started_at + interval '1 year')::date;
    END IF;
    FOR v_variation IN SELECT id, decided_at FROM contract_variation
                       WHERE authority_id = p_authority AND contract_id = c.id AND status = 'accepted' ORDER BY decided_at
    LOOP
        RETURN QUERY SELECT 'uk10_contract_change:' || v_variation.id, 'uk10_contract_change', v_variation.decided_at::date,
                            v_variation.decided_at::date;
    END LOOP;
    RETURN QUERY SELECT 'uk11_contract_termination', 'uk11_contract_termination',
                        CASE WHEN c.status IN ('completed', 'terminated') THEN c.updated_at::date END,
                        CASE WHEN c.status IN ('completed', 'terminated') THEN c.updated_at::date + 30 END;
END;
$$;

-- Release building ---------------------------------------------------------------------------------------

CREATE FUNCTION ocds_time(p timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT to_char(p AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') $$;

CREATE FUNCTION ocds_day(p date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT to_char(p, 'YYYY-MM-DD') || 'T00:00:00Z' $$;

CREATE FUNCTION ocds_gbp(p_pence bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$ SELECT jsonb_build_object('amount', round(p_pence / 100.0, 2), 'currency', 'GBP') $$;

-- An organisation by its registered number where it has one; names only, never contacts.
CREATE FUNCTION ocds_supplier_party(s supplier) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'id', coalesce('GB-COH-' || s.companies_house_number, 'GB-CHC-' || s.charity_number, 'supplier-' || s.id),
        'name', s.name,
        'identifier', CASE
            WHEN s.companies_house_number IS NOT NULL THEN jsonb_build_object('scheme', 'GB-COH', 'id', s.companies_house_number, 'legalName', s.name)
            WHEN s.charity_number IS NOT NULL THEN jsonb_build_object('scheme', 'GB-CHC', 'id', s.charity_number, 'legalName', s.name) END))
$$;

-- A project's agreed KPIs as metrics (targets and baselines), from the latest agreed revision of each.
CREATE FUNCTION ocds_kpi_targets(p_authority uuid, p_contract uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
        'id', k.id, 'title', r.definition->>'title', 'description', r.definition->>'measure',
        'observations', jsonb_build_array(
            jsonb_build_object('id', 'baseline', 'measure', (r.definition->>'baseline')::numeric,
                               'unit', jsonb_build_object('name', r.definition->>'unit'), 'notes', 'Baseline'),
            jsonb_build_object('id', 'target', 'measure', (r.definition->>'target')::numeric,
                               'unit', jsonb_build_object('name', r.definition->>'unit'),
                               'period', jsonb_build_object('endDate', ocds_day((r.definition->>'target_date')::date)),
                               'notes', 'Target (' || (r.definition->>'frequency') || ' reporting)')))
        ORDER BY k.created_at, k.id), '[]')
    FROM contract_kpi k
    CROSS JOIN LATERAL (SELECT * FROM kpi_revision r WHERE r.authority_id = k.authority_id AND r.kpi_id = k.id
                        AND (SELECT count(DISTINCT party) FROM kpi_acceptance a
                             WHERE a.authority_id = r.authority_id AND a.revision_id = r.id) = 2
                        ORDER BY r.revision DESC LIMIT 1) r
    WHERE k.authority_id = p_authority AND k.contract_id = p_contract AND NOT r.removal);
END;
$$;

-- KPI actuals per reporting period (the latest return of each, with its rating), for implementation.
CREATE FUNCTION ocds_kpi_actuals(p_authority uuid, p_contract uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(m ORDER BY m->>'id'), '[]') FROM (
        SELECT jsonb_build_object('id', k.id, 'title', max(d.definition->>'title'),
            'observations', jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                'id', rp.id, 'period', jsonb_build_object('startDate', ocds_day(rp.starts), 'endDate', ocds_day(rp.ends)),
                'measure', coalesce(ret.actual, round(ret.numerator / ret.denominator * 100, 2)),
                'notes', CASE WHEN ret.no_activity THEN 'No activity in the period' END,
                'dimensions', jsonb_build_object('rating', CASE coalesce(o.rating, ret.computed_rating)
                    WHEN 'green' THEN 'Good' WHEN 'amber' THEN 'Approaching target'
                    WHEN 'red' THEN 'Requires improvement' ELSE coalesce(o.rating, ret.computed_rating) END)))
                ORDER BY rp.starts)) AS m
        FROM contract_kpi k
        JOIN reporting_period rp ON rp.authority_id = k.authority_id AND rp.kpi_id = k.id
        JOIN LATERAL (SELECT * FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id
                      ORDER BY x.version DESC LIMIT 1) ret ON true
        LEFT JOIN rating_override o ON o.authority_id = rp.authority_id AND o.period_id = rp.id
        CROSS JOIN LATERAL (SELECT definition FROM kpi_revision r WHERE r.authority_id = k.authority_id AND r.kpi_id = k.id
                            ORDER BY r.revision DESC LIMIT 1) d
        WHERE k.authority_id = p_authority AND k.contract_id = p_contract
        GROUP BY k.id) x);
END;
$$;

-- Writes the release for one lifecycle event of a project, in the caller's transaction; returns its id, or
-- NULL when the authority has no OCID prefix yet (then nothing is published for it: the feed says so).
--   kinds: tender, tenderAmendment (p_ref: the amendment), tenderCancellation, award, contract (created),
--          contractStarted, contractAmendment (p_ref: the variation), contractEnded (completed or terminated)
-- The caller must see the project (staff of its board, or the contract's supplier); the state must match the
-- kind. The release is then built from the authority's auditor's view: what the database shows an auditor
-- (bids only after their deadline), and of that only public facts.
CREATE FUNCTION ocds_publish(p_project uuid, p_kind text, p_ref uuid DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_saved text[] := ARRAY[current_setting('app.authority_id', true), current_setting('app.supplier_id', true),
                            current_setting('app.roles', true), current_setting('app.board_ids', true)];
    v_caller_supplier uuid := CASE WHEN app_authority_id() IS NULL THEN app_supplier_id() END;
    v_authority uuid;
    p project;
    a authority;
    c contract;
    v_ocid text;
    v_id text;
    v_tags text[];
    v_notice text;
    v_regime text;
    v_date timestamptz := now();
    v_buyer jsonb;
    v_parties jsonb;
    v_tender jsonb;
    v_release jsonb;
    v_schools jsonb;
    v_contract jsonb;
    v_award jsonb;
    v_amendment jsonb;
BEGIN
    -- Under the caller's own policies: may it see this project (and, for a supplier, is it the contract's)?
    IF v_caller_supplier IS NULL THEN
        SELECT authority_id INTO v_authority FROM project WHERE id = p_project;
    ELSE
        SELECT authority_id INTO v_authority FROM contract WHERE project_id = p_project AND supplier_id = v_caller_supplier;
    END IF;
    IF v_authority IS NULL THEN
        RAISE EXCEPTION 'not a party to this procurement' USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('app.authority_id', v_authority::text, true);
    PERFORM set_config('app.supplier_id', '', true);
    PERFORM set_config('app.roles', 'auditor', true);
    PERFORM set_config('app.board_ids', '', true);

    SELECT * INTO a FROM authority WHERE id = v_authority;
    SELECT * INTO p FROM project WHERE authority_id = v_authority AND id = p_project;
    SELECT * INTO c FROM contract WHERE authority_id = v_authority AND project_id = p_project;
    IF a.ocid_prefix IS NULL THEN
        v_release := NULL;
    ELSE
        IF p.status = 'draft'
           OR (p_kind IN ('award', 'contract', 'contractStarted', 'contractAmendment', 'contractEnded') AND c.id IS NULL)
           OR (p_kind = 'tenderCancellation' AND p.status NOT IN ('cancelled', 'unsuccessful'))
           OR (p_kind = 'contractStarted' AND c.started_at IS NULL)
           OR (p_kind = 'contractEnded' AND c.status NOT IN ('completed', 'terminated')) THEN
            RAISE EXCEPTION 'the procurement is not in a state to publish %', p_kind USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_ocid := a.ocid_prefix || '-' || p.id;
        v_regime := procurement_regime(v_authority, p_project);
        v_buyer := jsonb_build_object('id', 'authority-' || a.slug, 'name', a.name);
        v_parties := jsonb_build_array(v_buyer || jsonb_build_object(
            'roles', jsonb_build_array('buyer', 'procuringEntity', 'payer'),
            -- The locality board is the buyer's unit that runs the procurement (a body, not a person).
            'contactPoint', jsonb_build_object('name', (SELECT b.name FROM board b WHERE b.authority_id = v_authority AND b.id = p.board_id))));
        -- Schools by URN, except those causing concern (open concern) unless the contract is marked publishable.
        SELECT coalesce(jsonb_agg(jsonb_build_object('scheme', 'GB-URN', 'id', s.urn::text, 'description', s.name) ORDER BY s.urn), '[]')
        INTO v_schools
        FROM school s
        WHERE s.authority_id = v_authority AND s.urn::text = ANY (p.school_urns)
          AND (coalesce(c.publish_concern_schools, false) OR NOT EXISTS (
                SELECT 1 FROM school_concern sc WHERE sc.authority_id = s.authority_id AND sc.urn = s.urn AND sc.cleared_on IS NULL));
        v_tender := jsonb_strip_nulls(jsonb_build_object(
            'id', p.id, 'title', p.title, 'description', p.description,
            'status', CASE p.status WHEN 'open' THEN 'active' WHEN 'awarded' THEN 'complete' ELSE p.status::text END,
            'procuringEntity', v_buyer,
            'items', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
                'id', '1', 'description', nullif(p.outcomes_sought, ''),
                'classification', (SELECT jsonb_build_object('scheme', 'x-locality-theme', 'id', t.id, 'description', t.name)
                                   FROM theme t WHERE t.authority_id = v_authority AND t.id = p.theme_id),
                'additionalClassifications', nullif(v_schools, '[]'::jsonb)))),
            'value', ocds_gbp(p.max_value_pence),
            'procurementMethod', p.procurement_method,
            'procurementMethodDetails', CASE p.procurement_method WHEN 'open' THEN 'Advertised to every admitted supplier of the authority''s framework'
                                        ELSE 'Direct award' END,
            'mainProcurementCategory', 'services',
            'awardCriteria', 'ratedCriteria',
            'awardCriteriaDetails', 'Price ' || (p.evaluation->>'price_weight') || '%; quality ' || (p.evaluation->>'quality_weight') || '%'
                || coalesce(' (' || (SELECT string_agg((q->>'name') || ' ' || (q->>'weight') || '%', ', ')
                                     FROM jsonb_array_elements(p.evaluation->'quality_criteria') q) || ')', '')
                || '; social value ' || (p.evaluation->>'social_value_weight') || '%'
                || coalesce(' (' || (SELECT string_agg((q->>'name') || ' ' || (q->>'weight') || '%', ', ')
                                     FROM jsonb_array_elements(p.evaluation->'social_value_criteria') q) || ')', ''),
            'submissionMethod', jsonb_build_array('electronicSubmission'),
            'tenderPeriod', jsonb_build_object('startDate', ocds_time(p.published_at), 'endDate', ocds_time(p.bid_deadline)),
            'enquiryPeriod', CASE WHEN p.questions_close_at IS NOT NULL
                                  THEN jsonb_build_object('startDate', ocds_time(p.published_at), 'endDate', ocds_time(p.questions_close_at)) END,
            'contractPeriod', jsonb_build_object('startDate', ocds_day(p.planned_start), 'endDate', ocds_day(p.planned_end))));

        IF p_kind = 'tender' THEN
            v_tags := ARRAY['tender'];
            v_id := v_ocid || '-tender';
            v_date := p.published_at;
            v_notice := CASE v_regime WHEN 'regulated' THEN CASE p.procurement_method WHEN 'open' THEN 'uk4_tender' END
                                      WHEN 'below_threshold' THEN CASE p.procurement_method WHEN 'open' THEN 'below_threshold_tender' END END;
        ELSIF p_kind = 'tenderAmendment' THEN
            SELECT jsonb_build_object('id', m.id, 'date', ocds_time(m.created_at), 'rationale', m.note,
                                      'description', 'Bid deadline ' || ocds_time(m.old_deadline) || ' → ' || ocds_time(m.new_deadline)),
                   m.created_at
            INTO v_amendment, v_date
            FROM project_amendment m WHERE m.authority_id = v_authority AND m.project_id = p.id AND m.id = p_ref;
            IF v_amendment IS NULL THEN RAISE EXCEPTION 'no such amendment' USING ERRCODE = 'invalid_parameter_value'; END IF;
            v_tags := ARRAY['tenderAmendment'];
            v_id := v_ocid || '-amendment-' || p_ref;
            v_tender := v_tender || jsonb_build_object('amendments', jsonb_build_array(v_amendment));
            v_notice := CASE WHEN v_regime = 'regulated' AND p.procurement_method = 'open' THEN 'uk4_tender' END;
        ELSIF p_kind = 'tenderCancellation' THEN
            v_tags := ARRAY['tenderCancellation'];
            v_id := v_ocid || '-' || p.status::text;
            v_tender := v_tender || jsonb_build_object('amendments', jsonb_build_array(jsonb_build_object(
                'id', p.status::text, 'date', ocds_time(v_date), 'rationale', p.status_reason,
                'description', CASE p.status WHEN 'cancelled' THEN 'Procurement cancelled' ELSE 'No suitable bid: procurement unsuccessful' END)));
            v_notice := CASE v_regime WHEN 'regulated' THEN 'uk12_procurement_termination' END;
        ELSIF p_kind = 'award' THEN
            v_tags := ARRAY['award'];
            v_id := v_ocid || '-award';
            v_date := c.created_at;
            v_notice := CASE v_regime WHEN 'regulated' THEN 'uk6_contract_award' END;
            -- Only after the deadline, and only the number: nothing of any bid but the winner's awarded value.
            v_tender := jsonb_build_object('id', p.id, 'status', 'complete', 'numberOfTenderers',
                (SELECT count(*) FROM bid b WHERE b.authority_id = v_authority AND b.project_id = p.id
                 AND b.status NOT IN ('draft', 'withdrawn') AND p.bid_deadline <= now()));
        ELSIF p_kind IN ('contract', 'contractStarted') THEN
            v_tags := ARRAY['contract'];
            v_id := v_ocid || CASE p_kind WHEN 'contract' THEN '-contract' ELSE '-contract-started' END;
            v_date := CASE p_kind WHEN 'contract' THEN c.created_at ELSE c.started_at END;
            v_notice := CASE WHEN p_kind = 'contractStarted' AND v_regime <> 'none' THEN 'uk7_contract_details' END;
            v_tender := NULL;
        ELSIF p_kind = 'contractAmendment' THEN
            SELECT jsonb_build_object('id', v.id, 'date', ocds_time(v.decided_at), 'rationale', v.reason,
                                      'description', concat_ws('; ',
                                          'value ' || round((v.changes->>'value_pence')::bigint / 100.0, 2) || ' GBP',
                                          'end date ' || (v.changes->>'end_date'),
                                          CASE WHEN jsonb_array_length(coalesce(v.changes->'kpis', '[]')) > 0
                                               THEN jsonb_array_length(v.changes->'kpis') || ' KPI change(s)' END)),
                   v.decided_at
            INTO v_amendment, v_date
            FROM contract_variation v WHERE v.authority_id = v_authority AND v.contract_id = c.id AND v.id = p_ref AND v.status = 'accepted';
            IF v_amendment IS NULL THEN RAISE EXCEPTION 'no such accepted variation' USING ERRCODE = 'invalid_parameter_value'; END IF;
            v_tags := ARRAY['contractAmendment'];
            v_id := v_ocid || '-variation-' || p_ref;
            v_notice := CASE v_regime WHEN 'regulated' THEN 'uk10_contract_change' END;
            v_tender := NULL;
        ELSIF p_kind = 'contractEnded' THEN
            v_tags := ARRAY['implementation', 'contractTermination'];
            v_id := v_ocid || '-contract-' || c.status::text;
            v_notice := CASE v_regime WHEN 'regulated' THEN 'uk11_contract_termination' END;
            v_tender := NULL;
        ELSE
            RAISE EXCEPTION 'unknown release kind %', p_kind USING ERRCODE = 'invalid_parameter_value';
        END IF;

        IF c.id IS NOT NULL AND p_kind NOT IN ('tender', 'tenderAmendment', 'tenderCancellation') THEN
            v_parties := v_parties || jsonb_build_array((SELECT ocds_supplier_party(s) || jsonb_build_object('roles', jsonb_build_array('supplier', 'payee'))
                                                         FROM supplier s WHERE s.id = c.supplier_id));
            -- The award as made: the winner's price at award is the contract's value when it was created.
            v_award := jsonb_build_object('id', p.id || '-award', 'status', 'active', 'date', ocds_time(c.created_at),
                'value', ocds_gbp((SELECT b.price_pence FROM bid b WHERE b.authority_id = v_authority AND b.id = c.bid_id)),
                'suppliers', jsonb_build_array((SELECT jsonb_build_object('id', s.id_, 'name', s.name_) FROM (
                    SELECT ocds_supplier_party(s)->>'id' AS id_, s.name AS name_ FROM supplier s WHERE s.id = c.supplier_id) s)),
                'contractPeriod', jsonb_build_object('startDate', ocds_day(c.start_date), 'endDate', ocds_day(c.end_date)));
            v_contract := jsonb_strip_nulls(jsonb_build_object(
                'id', c.id, 'awardID', p.id || '-award', 'title', p.title,
                'status', CASE c.status WHEN 'kpi_negotiation' THEN 'pending' WHEN 'active' THEN 'active' ELSE 'terminated' END,
                'period', jsonb_build_object('startDate', ocds_day(c.start_date), 'endDate', ocds_day(c.end_date)),
                'value', ocds_gbp(c.value_pence),
                'dateSigned', ocds_time(c.started_at),
                'metrics', nullif(ocds_kpi_targets(v_authority, c.id), '[]'::jsonb)));
            IF p_kind = 'contractAmendment' THEN
                v_contract := v_contract || jsonb_build_object('amendments', jsonb_build_array(v_amendment));
            ELSIF p_kind = 'contractEnded' THEN
                v_contract := v_contract || jsonb_strip_nulls(jsonb_build_object(
                    'implementation', jsonb_strip_nulls(jsonb_build_object(
                        'transactions', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'id', l.id, 'date', ocds_time(l.created_at), 'value', ocds_gbp(l.amount_pence),
                                'payer', v_buyer, 'payee', (SELECT jsonb_build_object('id', ocds_supplier_party(s)->>'id', 'name', s.name)
                                                            FROM supplier s WHERE s.id = c.supplier_id))
                                ORDER BY l.seq), '[]')
                            FROM budget_ledger l WHERE l.authority_id = v_authority AND l.kind = 'spend'
                              AND l.reference = 'contract:' || c.id),
                        'metrics', CASE WHEN a.publish_kpi_actuals THEN nullif(ocds_kpi_actuals(v_authority, c.id), '[]'::jsonb) END)),
                    'amendments', CASE WHEN c.status = 'terminated' THEN jsonb_build_array(jsonb_build_object(
                        'id', 'termination', 'date', ocds_time(v_date), 'rationale', c.termination_reason,
                        'description', 'Contract terminated')) END));
            END IF;
        END IF;

        v_release := jsonb_strip_nulls(jsonb_build_object(
            'ocid', v_ocid, 'id', v_id, 'date', ocds_time(v_date), 'tag', to_jsonb(v_tags),
            'initiationType', 'tender', 'language', 'en',
            'parties', v_parties, 'buyer', v_buyer,
            'tender', v_tender,
            'awards', CASE WHEN p_kind = 'award' THEN jsonb_build_array(v_award) END,
            'contracts', CASE WHEN v_contract IS NOT NULL THEN jsonb_build_array(v_contract) END,
            'noticeType', v_notice));
        INSERT INTO ocds_release (id, ocid, authority_id, project_id, tags, notice_type, date, release)
        VALUES (v_id, v_ocid, v_authority, p.id, v_tags, v_notice, v_date, v_release)
        ON CONFLICT (authority_id, id) DO NOTHING;
    END IF;

    PERFORM set_config('app.authority_id', coalesce(v_saved[1], ''), true);
    PERFORM set_config('app.supplier_id', coalesce(v_saved[2], ''), true);
    PERFORM set_config('app.roles', coalesce(v_saved[3], ''), true);
    PERFORM set_config('app.board_ids', coalesce(v_saved[4], ''), true);
    RETURN v_id;
END;
$$;

-- The OCDS merge for a compiled release: objects merge key by key, arrays of objects that all carry an id
-- merge by id (in order of first appearance), anything else is replaced by the newer value; null removes.
CREATE FUNCTION ocds_merge(p_old jsonb, p_new jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = public, pg_temp AS $$
DECLARE
    v_key text;
    v_value jsonb;
    v_result jsonb;
    v_item jsonb;
    v_index integer;
    v_found boolean;
BEGIN
    IF p_old IS NULL OR jsonb_typeof(p_old) <> jsonb_typeof(p_new) THEN RETURN p_new; END IF;
    IF jsonb_typeof(p_new) = 'object' THEN
        v_result := p_old;
        FOR v_key, v_value IN SELECT * FROM jsonb_each(p_new) LOOP
            IF jsonb_typeof(v_value) = 'null' THEN
                v_result := v_result - v_key;
            ELSE
                v_result := jsonb_set(v_result, ARRAY[v_key], ocds_merge(v_result->v_key, v_value));
            END IF;
        END LOOP;
        RETURN v_result;
    END IF;
    IF jsonb_typeof(p_new) = 'array'
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_new) e WHERE jsonb_typeof(e) <> 'object' OR NOT e ? 'id')
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_old) e WHERE jsonb_typeof(e) <> 'object' OR NOT e ? 'id')
       AND jsonb_array_length(p_new) > 0 THEN
        v_result := p_old;
        FOR v_item IN SELECT * FROM jsonb_array_elements(p_new) LOOP
            v_found := false;
            FOR v_index IN 0 .. jsonb_array_length(v_result) - 1 LOOP
                IF v_result->v_index->'id' = v_item->'id' THEN
                    v_result := jsonb_set(v_result, ARRAY[v_index::text], ocds_merge(v_result->v_index, v_item));
                    v_found := true;
                    EXIT;
                END IF;
            END LOOP;
            IF NOT v_found THEN v_result := v_result || jsonb_build_array(v_item); END IF;
        END LOOP;
        RETURN v_result;
    END IF;
    RETURN p_new;
END;
$$;

-- The compiled release of an OCID: its releases merged oldest first, with the compiled tag and the newest date.
CREATE FUNCTION ocds_compiled_release(p_ocid text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    v_release jsonb;
    v_result jsonb := NULL;
BEGIN
    FOR v_release IN SELECT release FROM ocds_release WHERE ocid = p_ocid ORDER BY date, seq LOOP
        -- Per-release fields do not merge into the compiled release.
        v_result := ocds_merge(v_result, v_release - 'id' - 'tag' - 'noticeType');
    END LOOP;
    IF v_result IS NULL THEN RETURN NULL; END IF;
    RETURN v_result || jsonb_build_object('id', p_ocid || '-compiled', 'tag', jsonb_build_array('compiled'));
END;
$$;

-- The public face of an authority for the feed: by slug or id, its name and OCID prefix (public facts).
-- (The owner reads every authority through authority_operator_read.)
CREATE FUNCTION ocds_publisher(p_authority text)
RETURNS TABLE (id uuid, slug text, name text, ocid_prefix text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT a.id, a.slug, a.name, a.ocid_prefix FROM authority a
                 WHERE a.slug = lower(p_authority) OR a.id::text = lower(p_authority);
END;
$$;

-- Grants -------------------------------------------------------------------------------------------------

GRANT SELECT ON ocds_release, notice_threshold TO locality_app;
GRANT SELECT, INSERT ON notice_filing TO locality_app;
REVOKE ALL ON FUNCTION ocds_publish(uuid, text, uuid), ocds_publisher(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ocds_publish(uuid, text, uuid), ocds_publisher(text) TO locality_app;

-- A backup taken as the owner reads these too (the policy of 0018, which predates the tables).
CREATE POLICY owner_backup_read ON ocds_release FOR SELECT TO locality_owner
    USING (session_user = 'locality_owner' AND current_setting('app.backup', true) = 'on');
CREATE POLICY owner_backup_read ON notice_filing FOR SELECT TO locality_owner
    USING (session_user = 'locality_owner' AND current_setting('app.backup', true) = 'on');
