-- A contract's KPIs, reporting periods and returns carry the contract's board and supplier (issue 14: dashboards,
-- monitoring reports and return listings at national scale).
--
-- Their read policies asked "is the contract visible?" (a KPI, a period) or "is the period visible?" (a return, which
-- asked the contract in turn): an index lookup per row, two for a return, each evaluating the contract's own
-- policy. The authority dashboard's KPI ratings of 107 running contracts made about 1,000 of those lookups per
-- request (7.3 ms of execution and 5.9 ms of planning on the national data; 2.7 and 1.2 with the columns). With the
-- board and the supplier on the row, each policy compares columns with the once-per-statement context, and means
-- what the contract's policies mean: staff of the contract's authority who see every board or this one (0032's
-- contract_staff_read), or the contract's supplier (contract_supplier_read).
--
-- The copies cannot drift: foreign keys tie (authority_id, contract_id, board_id, supplier_id) to the contract's
-- (and a return's to its period's), moving with the contract's board (ON UPDATE CASCADE, as 0032's contract moves
-- with its project's). A trigger fills them from the parent row on insert, so no writer has to name them; the
-- parent is read with the writer's own visibility, and a writer who cannot see it fails the write policies first,
-- as before. Writes keep their policies (app_contract_party per row: a contract's few rows, one at a time).
--
-- Rating overrides are not changed: they are rare rows, read by a join that finds none for almost every period.

-- The key the copies refer to (the supplier before the id: with it the key is also the index of a supplier's
-- contracts in an authority, which the supplier's policy branch uses).
ALTER TABLE contract ADD CONSTRAINT contract_scope_key UNIQUE (authority_id, supplier_id, id, board_id);
-- With a board in that key, a board's dashboard could find its running contracts by reading all of the authority's
-- keys and testing the board in the index; the running contracts' own index (0029) now has the board too, so that
-- a board's dashboard reads exactly its running contracts, and the authority's reads all of them as before.
DROP INDEX contract_running;
CREATE INDEX contract_running ON contract (authority_id, board_id, created_at) WHERE status IN ('kpi_negotiation', 'active');

ALTER TABLE contract_kpi ADD COLUMN board_id uuid, ADD COLUMN supplier_id uuid;
ALTER TABLE reporting_period ADD COLUMN board_id uuid, ADD COLUMN supplier_id uuid;
ALTER TABLE kpi_return ADD COLUMN board_id uuid, ADD COLUMN supplier_id uuid;

-- The backfill sees every row: the owner's row-level security is lifted for it inside this migration's transaction
-- (the ALTERs hold their locks to the commit, so no other session sees it lifted), and a return's append-only
-- trigger is set aside for it. No KPI, period or return changes meaning: only the copies are written.
ALTER TABLE contract NO FORCE ROW LEVEL SECURITY;
ALTER TABLE contract_kpi NO FORCE ROW LEVEL SECURITY;
ALTER TABLE reporting_period NO FORCE ROW LEVEL SECURITY;
ALTER TABLE kpi_return NO FORCE ROW LEVEL SECURITY, DISABLE TRIGGER kpi_return_append_only;
UPDATE contract_kpi k SET board_id = c.board_id, supplier_id = c.supplier_id
FROM contract c WHERE c.authority_id = k.authority_id AND c.id = k.contract_id;
UPDATE reporting_period p SET board_id = c.board_id, supplier_id = c.supplier_id
FROM contract c WHERE c.authority_id = p.authority_id AND c.id = p.contract_id;
UPDATE kpi_return r SET board_id = p.board_id, supplier_id = p.supplier_id
FROM reporting_period p WHERE p.authority_id = r.authority_id AND p.id = r.period_id;
ALTER TABLE contract FORCE ROW LEVEL SECURITY;
ALTER TABLE contract_kpi FORCE ROW LEVEL SECURITY;
ALTER TABLE reporting_period FORCE ROW LEVEL SECURITY;
ALTER TABLE kpi_return FORCE ROW LEVEL SECURITY, ENABLE TRIGGER kpi_return_append_only;

ALTER TABLE contract_kpi ALTER COLUMN board_id SET NOT NULL, ALTER COLUMN supplier_id SET NOT NULL,
    ADD CONSTRAINT contract_kpi_contract_scope FOREIGN KEY (authority_id, contract_id, board_id, supplier_id)
        REFERENCES contract (authority_id, id, board_id, supplier_id) ON UPDATE CASCADE;
ALTER TABLE reporting_period ALTER COLUMN board_id SET NOT NULL, ALTER COLUMN supplier_id SET NOT NULL,
    ADD CONSTRAINT reporting_period_scope_key UNIQUE (authority_id, supplier_id, id, board_id),
    ADD CONSTRAINT reporting_period_contract_scope FOREIGN KEY (authority_id, contract_id, board_id, supplier_id)
        REFERENCES contract (authority_id, id, board_id, supplier_id) ON UPDATE CASCADE;
ALTER TABLE kpi_return ALTER COLUMN board_id SET NOT NULL, ALTER COLUMN supplier_id SET NOT NULL,
    ADD CONSTRAINT kpi_return_period_scope FOREIGN KEY (authority_id, period_id, board_id, supplier_id)
        REFERENCES reporting_period (authority_id, id, board_id, supplier_id) ON UPDATE CASCADE;

-- Filled on insert from the parent the row already names.
CREATE FUNCTION copy_contract_scope() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.board_id IS NULL OR NEW.supplier_id IS NULL THEN
        SELECT c.board_id, c.supplier_id INTO NEW.board_id, NEW.supplier_id
        FROM public.contract c WHERE c.authority_id = NEW.authority_id AND c.id = NEW.contract_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE FUNCTION copy_period_scope() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.board_id IS NULL OR NEW.supplier_id IS NULL THEN
        SELECT p.board_id, p.supplier_id INTO NEW.board_id, NEW.supplier_id
        FROM public.reporting_period p WHERE p.authority_id = NEW.authority_id AND p.id = NEW.period_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER contract_kpi_scope BEFORE INSERT ON contract_kpi FOR EACH ROW EXECUTE FUNCTION copy_contract_scope();
CREATE TRIGGER reporting_period_scope BEFORE INSERT ON reporting_period FOR EACH ROW EXECUTE FUNCTION copy_contract_scope();
CREATE TRIGGER kpi_return_scope BEFORE INSERT ON kpi_return FOR EACH ROW EXECUTE FUNCTION copy_period_scope();

-- A return stays append-only, except that its copy of the board follows its contract's (the cascade above).
CREATE FUNCTION forbid_change_but_board() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'board_id' = to_jsonb(OLD) - 'board_id' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER kpi_return_append_only ON kpi_return;
CREATE TRIGGER kpi_return_append_only BEFORE UPDATE OR DELETE ON kpi_return FOR EACH ROW EXECUTE FUNCTION forbid_change_but_board();

-- The same meaning as before: the contract visible to the session (its staff policy or its supplier policy).
DROP POLICY contract_kpi_read ON contract_kpi;
CREATE POLICY contract_kpi_read ON contract_kpi FOR SELECT
    USING ((authority_id = (SELECT app_authority_id())
            AND ((SELECT app_sees_all_boards()) OR board_id = ANY ((SELECT app_board_ids())::uuid[])
                 OR authority_id = ANY ((SELECT app_admitted_authority_ids())::uuid[])))
           OR supplier_id = (SELECT app_supplier_id()));
DROP POLICY reporting_period_read ON reporting_period;
CREATE POLICY reporting_period_read ON reporting_period FOR SELECT
    USING ((authority_id = (SELECT app_authority_id())
            AND ((SELECT app_sees_all_boards()) OR board_id = ANY ((SELECT app_board_ids())::uuid[])
                 OR authority_id = ANY ((SELECT app_admitted_authority_ids())::uuid[])))
           OR supplier_id = (SELECT app_supplier_id()));
DROP POLICY kpi_return_read ON kpi_return;
CREATE POLICY kpi_return_read ON kpi_return FOR SELECT
    USING ((authority_id = (SELECT app_authority_id())
            AND ((SELECT app_sees_all_boards()) OR board_id = ANY ((SELECT app_board_ids())::uuid[])
                 OR authority_id = ANY ((SELECT app_admitted_authority_ids())::uuid[])))
           OR supplier_id = (SELECT app_supplier_id()));
