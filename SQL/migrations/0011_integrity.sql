-- Integrity under concurrency (issue 12): money follows a contract's value, KPIs change only while they are
-- negotiated, and the ledger can be verified.
--
-- Errors raised here for a user's mistake or a lost race carry a CONSTRAINT name (RAISE … USING CONSTRAINT),
-- so the service translates them like a constraint violation (ConstraintTranslation), never into a 500.

-- 1. Money follows the contract's value -------------------------------------------------------------------
--
-- The award commits the awarded price with reference 'contract:project:<project id>'; every later entry of a
-- contract (variation, completion, termination) uses 'contract:<contract id>'. A contract's entries are those
-- two references, in the envelope of its project (board × financial year × funding stream).
--
-- Invariant, per contract: commitments − spend − decommitments = the value still committed, which is
--   value_pence                while the contract is live (kpi_negotiation, active),
--   0                          once it has ended (completed, terminated);
-- and once ended, its spend = amount_paid_pence. Per envelope: each balance equals its ledger sums.

-- A supplier may accept the LIM's variation; the money then moves in the supplier's context, inside
-- accept_contract_variation (which runs as the owner). These policies let the owner write the ledger and its
-- balance there, and only for an authority the supplier holds a contract with.
CREATE POLICY budget_ledger_contract_party ON budget_ledger FOR INSERT
    WITH CHECK (current_user = 'locality_owner' AND app_supplier_id() IS NOT NULL
                AND kind IN ('commitment', 'decommitment') AND reference LIKE 'contract:%'
                AND actor = current_setting('app.actor', true)
                AND EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = budget_ledger.authority_id
                            AND c.supplier_id = app_supplier_id()));
CREATE POLICY budget_balance_contract_party ON budget_balance FOR ALL
    USING (current_user = 'locality_owner' AND app_supplier_id() IS NOT NULL
           AND EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = budget_balance.authority_id
                       AND c.supplier_id = app_supplier_id()))
    WITH CHECK (current_user = 'locality_owner' AND app_supplier_id() IS NOT NULL
           AND EXISTS (SELECT 1 FROM contract c WHERE c.authority_id = budget_balance.authority_id
                       AND c.supplier_id = app_supplier_id()));

-- Accepting a variation, now with its money. Lock order, as everywhere a contract's money moves: the
-- contract row, then the variation, then the budget envelope. State is checked only under those locks.
CREATE OR REPLACE FUNCTION accept_contract_variation(p_authority uuid, p_variation uuid) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v contract_variation;
    c contract;
    v_contract_id uuid;
    v_party text;
    v_actor text := nullif(current_setting('app.actor', true), '');
    v_kpi jsonb;
    v_kpi_id uuid;
    v_revision_id uuid;
    v_new_value bigint;
    v_delta bigint;
    v_board uuid;
    v_year text;
    v_stream uuid;
    v_available bigint;
BEGIN
    SELECT contract_id INTO v_contract_id FROM contract_variation WHERE authority_id = p_authority AND id = p_variation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'variation not found' USING ERRCODE = 'no_data_found';
    END IF;
    -- The contract's row lock serialises this with start, completion, termination and other variations.
    SELECT * INTO c FROM contract WHERE authority_id = p_authority AND id = v_contract_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contract not found' USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO v FROM contract_variation WHERE authority_id = p_authority AND id = p_variation FOR UPDATE;
    v_party := app_contract_party(v.authority_id, v.contract_id);
    IF v_party IS NULL OR v_party = v.proposed_by::text THEN
        RAISE EXCEPTION 'only the other party may accept a proposed variation' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v.status <> 'proposed' THEN
        RAISE EXCEPTION 'the variation is already %', v.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'contract_variation_decided';
    END IF;
    IF c.status <> 'active' THEN
        RAISE EXCEPTION 'the contract is %; variations apply to active contracts', c.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'contract_variation_contract_active';
    END IF;

    v_new_value := coalesce((v.changes->>'value_pence')::bigint, c.value_pence);
    v_delta := v_new_value - c.value_pence;
    IF v_delta <> 0 THEN
        SELECT p.board_id, p.financial_year, p.funding_stream_id INTO v_board, v_year, v_stream
        FROM project p WHERE p.authority_id = c.authority_id AND p.id = c.project_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the contract''s project is not visible' USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- The envelope's row lock: concurrent commitments on the board's budget apply one at a time.
        SELECT b.allocated_pence - b.earmarked_pence - b.committed_pence INTO v_available FROM budget_balance b
        WHERE b.authority_id = c.authority_id AND b.board_id = v_board AND b.financial_year = v_year
          AND b.funding_stream_id = v_stream
        FOR UPDATE;
        IF v_delta > 0 AND coalesce(v_available, 0) < v_delta THEN
            RAISE EXCEPTION 'the budget has % pence available; the variation needs % more', coalesce(v_available, 0), v_delta
                USING ERRCODE = 'check_violation', CONSTRAINT = 'budget_available_not_negative';
        END IF;
        INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason)
        VALUES (c.authority_id, v_board, v_year, v_stream,
                (CASE WHEN v_delta > 0 THEN 'commitment' ELSE 'decommitment' END)::ledger_entry_kind, abs(v_delta),
                'contract:' || c.id, v_actor,
                format('Contract variation: value %s → %s pence', c.value_pence, v_new_value));
    END IF;

    UPDATE contract SET value_pence = v_new_value, end_date = coalesce((v.changes->>'end_date')::date, end_date)
    WHERE authority_id = c.authority_id AND id = c.id;
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

-- The ledger invariant, for the operator: one row per broken envelope or contract, none when the books are
-- right. Runs under the caller's row-level security, so the operator runs it per authority with that
-- authority's operator context (admin and auditor roles see all of its boards); `locality-admin ledger
-- verify` does that for every authority.
CREATE FUNCTION ledger_verify()
RETURNS TABLE (subject text, subject_id text, problem text)
LANGUAGE plpgsql STABLE SET search_path = public AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH sums AS (
        SELECT l.authority_id, l.board_id, l.financial_year, l.funding_stream_id,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'allocation'), 0) AS allocated,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'earmark'), 0)
                 - coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'release'), 0) AS earmarked,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'commitment'), 0)
                 - coalesce(sum(l.amount_pence) FILTER (WHERE l.kind::text = 'decommitment'), 0) AS committed,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'spend'), 0) AS spent
        FROM budget_ledger l GROUP BY 1, 2, 3, 4
    )
    SELECT 'envelope',
           concat_ws('/', coalesce(b.board_id, s.board_id), coalesce(b.financial_year, s.financial_year),
                     coalesce(b.funding_stream_id, s.funding_stream_id)),
           format('balances (allocated %s, earmarked %s, committed %s, spent %s) differ from the ledger (%s, %s, %s, %s)',
                  b.allocated_pence, b.earmarked_pence, b.committed_pence, b.spent_pence,
                  s.allocated, s.earmarked, s.committed, s.spent)
    FROM budget_balance b
    FULL JOIN sums s ON s.authority_id = b.authority_id AND s.board_id = b.board_id
                    AND s.financial_year = b.financial_year AND s.funding_stream_id = b.funding_stream_id
    WHERE (coalesce(b.allocated_pence, 0), coalesce(b.earmarked_pence, 0), coalesce(b.committed_pence, 0), coalesce(b.spent_pence, 0))
          IS DISTINCT FROM (coalesce(s.allocated, 0), coalesce(s.earmarked, 0), coalesce(s.committed, 0), coalesce(s.spent, 0))
       OR b.allocated_pence - b.earmarked_pence - b.committed_pence < 0
    ORDER BY 2;

    RETURN QUERY
    WITH per_reference AS (
        SELECT l.authority_id, l.reference,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'commitment'), 0) AS committed,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind = 'spend'), 0) AS spent,
               coalesce(sum(l.amount_pence) FILTER (WHERE l.kind::text = 'decommitment'), 0) AS decommitted
        FROM budget_ledger l WHERE l.reference LIKE 'contract:%' AND l.kind::text IN ('commitment', 'spend', 'decommitment')
        GROUP BY 1, 2
    ), per_contract AS (
        SELECT c.id, c.status, c.value_pence, c.amount_paid_pence,
               coalesce(sum(r.committed), 0) AS committed, coalesce(sum(r.spent), 0) AS spent,
               coalesce(sum(r.decommitted), 0) AS decommitted
        FROM contract c
        LEFT JOIN per_reference r ON r.authority_id = c.authority_id
                                 AND r.reference IN ('contract:project:' || c.project_id, 'contract:' || c.id)
        GROUP BY c.id, c.status, c.value_pence, c.amount_paid_pence
    )
    SELECT 'contract', pc.id::text,
           format('committed %s − spent %s − decommitted %s = %s, but a %s contract of value %s should hold %s%s',
                  pc.committed, pc.spent, pc.decommitted, pc.committed - pc.spent - pc.decommitted, pc.status, pc.value_pence,
                  CASE WHEN pc.status IN ('kpi_negotiation', 'active') THEN pc.value_pence ELSE 0 END,
                  CASE WHEN pc.status IN ('completed', 'terminated') THEN format(' (and spent %s = paid %s)', pc.spent, pc.amount_paid_pence) ELSE '' END)
    FROM per_contract pc
    WHERE pc.committed - pc.spent - pc.decommitted
              <> CASE WHEN pc.status IN ('kpi_negotiation', 'active') THEN pc.value_pence ELSE 0 END
       OR (pc.status IN ('completed', 'terminated') AND pc.spent IS DISTINCT FROM pc.amount_paid_pence)
       OR (pc.status IN ('kpi_negotiation', 'active') AND pc.spent <> 0)
    ORDER BY 2;
END
$$;
REVOKE ALL ON FUNCTION ledger_verify() FROM PUBLIC;

-- 2. KPIs change only while they are negotiated ------------------------------------------------------------
--
-- The contract row lock is the negotiation's lock: every KPI move and the start take it before looking at
-- the contract's state. The supplier may not UPDATE contracts, so it cannot take that lock with SELECT … FOR
-- UPDATE itself: this function takes it for either party and returns the status it holds under the lock
-- (NULL when the caller is not a party of a contract it can see).
CREATE FUNCTION lock_contract_for_party(p_authority uuid, p_contract uuid) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v_status text;
BEGIN
    IF app_contract_party(p_authority, p_contract) IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT status::text INTO v_status FROM contract WHERE authority_id = p_authority AND id = p_contract FOR UPDATE;
    RETURN v_status;
END
$$;
REVOKE ALL ON FUNCTION lock_contract_for_party(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lock_contract_for_party(uuid, uuid) TO locality_app;

-- The database's own rule, whatever the service does: a KPI revision or acceptance outside a variation is
-- written only while the contract is in kpi_negotiation; one that is part of a variation only while it is
-- active. The contract is read FOR SHARE, so a start (which updates the row) waits for a negotiating
-- transaction to finish and then sees its revision, or the revision waits for the start and is refused:
-- never an active contract with a KPI revision nobody agreed.
--
-- The share lock is taken as the owner (the supplier has no UPDATE policy on contracts, which FOR SHARE
-- needs), under the caller's context. A session with no context (a superuser's, say) gets NULL there and
-- the trigger then reads the status with its own rights.
CREATE FUNCTION kpi_contract_status_for_share(p_authority uuid, p_kpi uuid) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v_status text;
BEGIN
    SELECT c.status::text INTO v_status FROM contract c
    JOIN contract_kpi k ON k.authority_id = c.authority_id AND k.contract_id = c.id
    WHERE k.authority_id = p_authority AND k.id = p_kpi
    FOR SHARE OF c;
    RETURN v_status;
END
$$;
REVOKE ALL ON FUNCTION kpi_contract_status_for_share(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kpi_contract_status_for_share(uuid, uuid) TO locality_app;

CREATE FUNCTION kpi_negotiation_open() RETURNS trigger
LANGUAGE plpgsql SET search_path = public AS $$
DECLARE
    v_kpi uuid;
    v_variation uuid;
    v_status text;
BEGIN
    IF TG_TABLE_NAME = 'kpi_revision' THEN
        v_kpi := NEW.kpi_id;
        v_variation := NEW.variation_id;
    ELSE
        SELECT r.kpi_id, r.variation_id INTO v_kpi, v_variation FROM kpi_revision r
        WHERE r.authority_id = NEW.authority_id AND r.id = NEW.revision_id;
    END IF;
    v_status := kpi_contract_status_for_share(NEW.authority_id, v_kpi);
    IF v_status IS NULL THEN
        SELECT c.status::text INTO v_status FROM contract c
        JOIN contract_kpi k ON k.authority_id = c.authority_id AND k.contract_id = c.id
        WHERE k.authority_id = NEW.authority_id AND k.id = v_kpi;
    END IF;
    IF v_status IS NULL THEN
        -- Not visible to this caller (or no such KPI): row-level security and the foreign keys refuse it.
        RETURN NEW;
    END IF;
    IF (v_variation IS NULL AND v_status <> 'kpi_negotiation') OR (v_variation IS NOT NULL AND v_status <> 'active') THEN
        RAISE EXCEPTION 'the contract is %: its KPIs are not under negotiation', v_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'kpi_negotiation_closed';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER kpi_revision_negotiation_open BEFORE INSERT ON kpi_revision
    FOR EACH ROW EXECUTE FUNCTION kpi_negotiation_open();
CREATE TRIGGER kpi_acceptance_negotiation_open BEFORE INSERT ON kpi_acceptance
    FOR EACH ROW EXECUTE FUNCTION kpi_negotiation_open();

-- 4. Row-level security matches the service for published clarifications --------------------------------
--
-- The service shows published questions and answers (anonymised) to every member of staff who can see the
-- project — board members and other board staff included — but until now only the board's LIMs, the
-- auditor and suppliers had a policy. (The subquery runs under the caller's own project policies.)
CREATE POLICY clarification_staff_published ON clarification FOR SELECT
    USING (authority_id = app_authority_id() AND published_at IS NOT NULL
           AND EXISTS (SELECT 1 FROM project p WHERE p.authority_id = clarification.authority_id
                       AND p.id = clarification.project_id));

-- 5. A published project's deadline only moves later -----------------------------------------------------
--
-- The LIM's row policy lets it update its projects; only the service stopped it moving a published
-- project's bid deadline earlier, which would close the project at once and unseal its bids. The database
-- now refuses it for every role but a superuser (who could disable the trigger anyway; tests use that to
-- age fixtures).
CREATE FUNCTION project_deadline_not_earlier() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT current_setting('is_superuser')::boolean THEN
        RAISE EXCEPTION 'a published project''s bid deadline may only move later (from % to %)', OLD.bid_deadline, NEW.bid_deadline
            USING ERRCODE = 'check_violation', CONSTRAINT = 'project_deadline_not_earlier';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER project_deadline_not_earlier BEFORE UPDATE OF bid_deadline ON project
    FOR EACH ROW WHEN (OLD.status <> 'draft' AND NEW.bid_deadline < OLD.bid_deadline)
    EXECUTE FUNCTION project_deadline_not_earlier();
