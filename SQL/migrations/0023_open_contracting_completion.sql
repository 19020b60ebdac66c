-- Open contracting, completed: KPI actuals per reporting period published as they are reported (where the
-- authority chooses to), the authority's mark that lets a contract's schools causing concern be published, and
-- a cheaper rate limit for the public feed.

-- Schools causing concern -------------------------------------------------------------------------------

-- Marking a contract publishable changes what the feed may say about it, not the contract: it must not move
-- updated_at, which dates the contract's end for the contract termination notice (procurement_notices).
DROP TRIGGER contract_updated_at ON contract;
CREATE TRIGGER contract_updated_at BEFORE UPDATE ON contract FOR EACH ROW
    WHEN (OLD.publish_concern_schools IS NOT DISTINCT FROM NEW.publish_concern_schools)
    EXECUTE FUNCTION set_updated_at();

-- An authority admin or the Head of School Improvement marks a contract so that its schools causing concern
-- may be published. Neither is a party to the contract (the LIMs' policy lets only them update it), so the
-- change runs here, as the owner, after checking the caller. One way only: what was published cannot be
-- withdrawn. The row lock serialises concurrent marks. Returns the previous mark; NULL when the caller's
-- authority has no such contract (or the caller may not see it).
CREATE FUNCTION contract_mark_concern_schools_publishable(p_contract uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_before boolean;
BEGIN
    IF app_authority_id() IS NULL OR app_supplier_id() IS NOT NULL
       OR NOT (app_has_role('authority_admin') OR app_has_role('hosi')) THEN
        RAISE EXCEPTION 'only the authority''s admins and Head of School Improvement mark contracts publishable'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.publish_concern_schools INTO v_before FROM contract c
    WHERE c.authority_id = app_authority_id() AND c.id = p_contract
    FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    IF NOT v_before THEN
        UPDATE contract SET publish_concern_schools = true WHERE authority_id = app_authority_id() AND id = p_contract;
    END IF;
    RETURN v_before;
END;
$$;
REVOKE ALL ON FUNCTION contract_mark_concern_schools_publishable(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION contract_mark_concern_schools_publishable(uuid) TO locality_app;

-- KPI actuals ---------------------------------------------------------------------------------------------

-- The rating of a reporting period as published: the Procurement Act 2023's levels (a second Red in a row is
-- Inadequate), and the RAG it comes from; the LIM's override when there is one.
CREATE FUNCTION ocds_period_rating(p_authority uuid, p_period uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
DECLARE
    v_rag text;
    v_previous text;
BEGIN
    SELECT coalesce(o.rating, ret.computed_rating) INTO v_rag
    FROM reporting_period rp
    JOIN LATERAL (SELECT * FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id
                  ORDER BY x.version DESC LIMIT 1) ret ON true
    LEFT JOIN rating_override o ON o.authority_id = rp.authority_id AND o.period_id = rp.id
    WHERE rp.authority_id = p_authority AND rp.id = p_period;
    IF v_rag IS NULL THEN RETURN NULL; END IF;
    -- The previous period of the same KPI that has a return.
    SELECT coalesce(o.rating, ret.computed_rating) INTO v_previous
    FROM reporting_period me
    JOIN reporting_period rp ON rp.authority_id = me.authority_id AND rp.kpi_id = me.kpi_id AND rp.starts < me.starts
    JOIN LATERAL (SELECT * FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id
                  ORDER BY x.version DESC LIMIT 1) ret ON true
    LEFT JOIN rating_override o ON o.authority_id = rp.authority_id AND o.period_id = rp.id
    WHERE me.authority_id = p_authority AND me.id = p_period
    ORDER BY rp.starts DESC LIMIT 1;
    RETURN jsonb_build_object('rag', v_rag, 'rating', CASE
        WHEN v_rag = 'red' AND v_previous = 'red' THEN 'Inadequate'
        WHEN v_rag = 'red' THEN 'Requires improvement'
        WHEN v_rag = 'amber' THEN 'Approaching target'
        WHEN v_rag IN ('green', 'blue') THEN 'Good'
        ELSE v_rag END);
END;
$$;

-- One reporting period's actual (its latest return) as a metric of the KPI with that one observation; the OCDS
-- merge gathers a KPI's periods by observation id in the compiled release. Never the narrative or evidence.
CREATE FUNCTION ocds_kpi_actual(p_authority uuid, p_period uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('id', k.id, 'title', d.definition->>'title',
        'observations', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'id', rp.id, 'period', jsonb_build_object('startDate', ocds_day(rp.starts), 'endDate', ocds_day(rp.ends)),
            'measure', coalesce(ret.actual, round(ret.numerator / ret.denominator * 100, 2)),
            'unit', jsonb_build_object('name', d.definition->>'unit'),
            'notes', CASE WHEN ret.no_activity THEN 'No activity in the period' END,
            'dimensions', ocds_period_rating(p_authority, rp.id)))))
    FROM reporting_period rp
    JOIN contract_kpi k ON k.authority_id = rp.authority_id AND k.id = rp.kpi_id
    JOIN LATERAL (SELECT * FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id
                  ORDER BY x.version DESC LIMIT 1) ret ON true
    CROSS JOIN LATERAL (SELECT definition FROM kpi_revision r WHERE r.authority_id = k.authority_id AND r.kpi_id = k.id
                        ORDER BY r.revision DESC LIMIT 1) d
    WHERE rp.authority_id = p_authority AND rp.id = p_period);
END;
$$;

-- Every reporting period's actual of a contract (the end-of-contract release), as above.
CREATE OR REPLACE FUNCTION ocds_kpi_actuals(p_authority uuid, p_contract uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object('id', m.kpi, 'title', m.title, 'observations', m.observations)
                                      ORDER BY m.kpi::text), '[]')
    FROM (SELECT rp.kpi_id AS kpi, max(a->>'title') AS title,
                 jsonb_agg(a->'observations'->0 ORDER BY rp.starts) AS observations
          FROM reporting_period rp
          CROSS JOIN LATERAL ocds_kpi_actual(p_authority, rp.id) a
          WHERE rp.authority_id = p_authority AND rp.contract_id = p_contract AND a IS NOT NULL
          GROUP BY rp.kpi_id) m);
END;
$$;

-- Releases ------------------------------------------------------------------------------------------------

-- Writes the release for one lifecycle event of a project, in the caller's transaction; returns its id, or
-- NULL when the authority has no OCID prefix yet (then nothing is published for it: the feed says so).
--   kinds: tender, tenderAmendment (p_ref: the amendment), tenderCancellation, award, contract (created),
--          contractStarted, contractAmendment (p_ref: the variation), contractEnded (completed or terminated),
--          kpiReturn (p_ref: the return) and ratingOverride (p_ref: the period) — only where the authority
--          publishes KPI actuals, else nothing is written — and concernSchools (the contract was marked so that
--          its schools causing concern may be published; nothing is written when it names none)
-- The caller must see the project (staff of its board, or the contract's supplier); the state must match the
-- kind. The release is then built from the authority's auditor's view: what the database shows an auditor
-- (bids only after their deadline), and of that only public facts.
CREATE OR REPLACE FUNCTION ocds_publish(p_project uuid, p_kind text, p_ref uuid DEFAULT NULL) RETURNS text
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
    v_actual jsonb;
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
    IF a.ocid_prefix IS NULL
       -- KPI actuals per period only where the authority chooses to publish them: decided here, not by callers.
       OR (p_kind IN ('kpiReturn', 'ratingOverride') AND NOT a.publish_kpi_actuals)
       OR (p_kind = 'concernSchools' AND NOT coalesce(c.publish_concern_schools, false)) THEN
        v_release := NULL;
    ELSE
        IF p.status = 'draft'
           OR (p_kind IN ('award', 'contract', 'contractStarted', 'contractAmendment', 'contractEnded', 'kpiReturn', 'ratingOverride',
                          'concernSchools') AND c.id IS NULL)
           OR (p_kind IN ('kpiReturn', 'ratingOverride') AND c.started_at IS NULL)
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
        ELSIF p_kind IN ('kpiReturn', 'ratingOverride') THEN
            -- One period's actual and rating, dated when it was reported (or re-rated).
            IF p_kind = 'kpiReturn' THEN
                SELECT ocds_kpi_actual(v_authority, x.period_id), x.submitted_at, v_ocid || '-return-' || x.id
                INTO v_actual, v_date, v_id
                FROM kpi_return x JOIN reporting_period rp ON rp.authority_id = x.authority_id AND rp.id = x.period_id
                WHERE x.authority_id = v_authority AND x.id = p_ref AND rp.contract_id = c.id;
            ELSE
                SELECT ocds_kpi_actual(v_authority, o.period_id), o.recorded_at,
                       v_ocid || '-rating-' || o.period_id || '-' || to_char(o.recorded_at AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISSUS')
                INTO v_actual, v_date, v_id
                FROM rating_override o JOIN reporting_period rp ON rp.authority_id = o.authority_id AND rp.id = o.period_id
                WHERE o.authority_id = v_authority AND o.period_id = p_ref AND rp.contract_id = c.id;
            END IF;
            IF v_actual IS NULL AND p_kind = 'kpiReturn' THEN
                RAISE EXCEPTION 'no such return of this contract' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            -- A period re-rated before any return has no actual to publish.
            IF v_actual IS NULL THEN v_id := NULL; END IF;
            v_tags := ARRAY['implementation'];
            v_notice := NULL;
            v_tender := NULL;
        ELSIF p_kind = 'concernSchools' THEN
            -- The tender's items again, now with the schools causing concern (the OCDS merge adds them by URN);
            -- nothing when the procurement names none.
            v_tags := ARRAY['tenderUpdate'];
            v_id := CASE WHEN EXISTS (SELECT 1 FROM school_concern sc WHERE sc.authority_id = v_authority AND sc.cleared_on IS NULL
                                      AND sc.urn::text = ANY (p.school_urns))
                         THEN v_ocid || '-concern-schools' END;
            v_notice := NULL;
        ELSE
            RAISE EXCEPTION 'unknown release kind %', p_kind USING ERRCODE = 'invalid_parameter_value';
        END IF;

        IF c.id IS NOT NULL AND p_kind NOT IN ('tender', 'tenderAmendment', 'tenderCancellation', 'concernSchools') THEN
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
            ELSIF p_kind IN ('kpiReturn', 'ratingOverride') THEN
                v_contract := v_contract || jsonb_build_object('implementation', jsonb_build_object('metrics', jsonb_build_array(v_actual)));
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
        IF v_id IS NOT NULL THEN
            INSERT INTO ocds_release (id, ocid, authority_id, project_id, tags, notice_type, date, release)
            VALUES (v_id, v_ocid, v_authority, p.id, v_tags, v_notice, v_date, v_release)
            ON CONFLICT (authority_id, id) DO NOTHING;
        END IF;
    END IF;

    PERFORM set_config('app.authority_id', coalesce(v_saved[1], ''), true);
    PERFORM set_config('app.supplier_id', coalesce(v_saved[2], ''), true);
    PERFORM set_config('app.roles', coalesce(v_saved[3], ''), true);
    PERFORM set_config('app.board_ids', coalesce(v_saved[4], ''), true);
    RETURN v_id;
END;
$$;

-- The public feed's rate limit, leased -------------------------------------------------------------------

-- take_registration_slot() writes a row per request: fine for registrations, too dear for a public read feed.
-- Here an instance takes up to p_want of a client's hourly allowance at once and spends it from memory
-- (PublicFeedMiddleware), coming back only when it has spent them: the limit is still one for every instance
-- (what an instance took and did not spend is lost for the hour, so a client may be stopped a little early,
-- never late), at one write per p_want requests. Returns how many it got (0 when the hour's allowance is
-- gone: refused) and the seconds until the window ends, when the instance must forget what it holds.
CREATE FUNCTION take_feed_slots(p_client text, p_per_hour integer, p_want integer)
RETURNS TABLE (granted integer, window_seconds integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_window timestamptz := date_trunc('hour', now());
    v_attempts integer;
BEGIN
    IF p_want < 1 OR p_per_hour < 1 THEN
        RAISE EXCEPTION 'p_want and p_per_hour must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO registration_attempt AS r (client, window_start, attempts) VALUES (p_client, v_window, p_want)
    ON CONFLICT (client, window_start) DO UPDATE SET attempts = least(r.attempts + p_want, p_per_hour + p_want)
    RETURNING attempts INTO v_attempts;
    DELETE FROM registration_attempt
    WHERE ctid IN (SELECT ctid FROM registration_attempt WHERE window_start < v_window LIMIT 50);
    -- Before this lease the client had used (v_attempts - p_want), capped so that refused leases do not grow it.
    RETURN QUERY SELECT greatest(0, least(p_want, p_per_hour - (v_attempts - p_want))),
                        greatest(1, ceil(extract(epoch FROM (v_window + interval '1 hour' - now())))::integer);
END
$$;
REVOKE ALL ON FUNCTION take_feed_slots(text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION take_feed_slots(text, integer, integer) TO locality_app;
