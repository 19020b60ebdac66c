-- A KPI's revisions and their acceptances carry the contract's board and supplier, as the KPI itself does since 0033
-- (issue 14: a page of contracts at national scale).
--
-- Their read policies asked "is the KPI visible?" (a revision) or "is the revision visible?" (an acceptance, which
-- asked the KPI in turn): an index lookup per row, two for an acceptance. A page of 50 contracts reads about 130
-- revisions and 230 acceptances, and those lookups were 2 of the page's 3.9 ms of execution on the national data.
-- With the copies each policy compares columns with the once-per-statement context, and means what contract_kpi_read
-- (0033) means: staff of the contract's authority who see every board or this one, or the contract's supplier.
--
-- The copies cannot drift: foreign keys tie them to the KPI's (a revision) and the revision's (an acceptance), and
-- move with the contract's board (ON UPDATE CASCADE down from contract, as 0033's copies do). A trigger fills them
-- from the parent on insert, so no writer names them. Both tables stay append-only except for that copy of the board
-- (0033's forbid_change_but_board). Write policies are unchanged.

-- The key the revisions' copies refer to (supplier before id, as 0033's contract_scope_key).
ALTER TABLE contract_kpi ADD CONSTRAINT contract_kpi_scope_key UNIQUE (authority_id, supplier_id, id, board_id);

ALTER TABLE kpi_revision ADD COLUMN board_id uuid, ADD COLUMN supplier_id uuid;
ALTER TABLE kpi_acceptance ADD COLUMN board_id uuid, ADD COLUMN supplier_id uuid;

-- The backfill sees every row: the owner's row-level security is lifted for it inside this migration's transaction
-- (the ALTERs hold their locks to the commit), and the append-only triggers are set aside for it. Only the copies
-- are written.
ALTER TABLE contract_kpi NO FORCE ROW LEVEL SECURITY;
ALTER TABLE kpi_revision NO FORCE ROW LEVEL SECURITY, DISABLE TRIGGER kpi_revision_append_only;
ALTER TABLE kpi_acceptance NO FORCE ROW LEVEL SECURITY, DISABLE TRIGGER kpi_acceptance_append_only;
UPDATE kpi_revision r SET board_id = k.board_id, supplier_id = k.supplier_id
FROM contract_kpi k WHERE k.authority_id = r.authority_id AND k.id = r.kpi_id;
UPDATE kpi_acceptance a SET board_id = r.board_id, supplier_id = r.supplier_id
FROM kpi_revision r WHERE r.authority_id = a.authority_id AND r.id = a.revision_id;
ALTER TABLE contract_kpi FORCE ROW LEVEL SECURITY;
ALTER TABLE kpi_revision FORCE ROW LEVEL SECURITY, ENABLE TRIGGER kpi_revision_append_only;
ALTER TABLE kpi_acceptance FORCE ROW LEVEL SECURITY, ENABLE TRIGGER kpi_acceptance_append_only;

ALTER TABLE kpi_revision ALTER COLUMN board_id SET NOT NULL, ALTER COLUMN supplier_id SET NOT NULL,
    ADD CONSTRAINT kpi_revision_scope_key UNIQUE (authority_id, supplier_id, id, board_id),
    ADD CONSTRAINT kpi_revision_kpi_scope FOREIGN KEY (authority_id, kpi_id, board_id, supplier_id)
        REFERENCES contract_kpi (authority_id, id, board_id, supplier_id) ON UPDATE CASCADE;
ALTER TABLE kpi_acceptance ALTER COLUMN board_id SET NOT NULL, ALTER COLUMN supplier_id SET NOT NULL,
    ADD CONSTRAINT kpi_acceptance_revision_scope FOREIGN KEY (authority_id, revision_id, board_id, supplier_id)
        REFERENCES kpi_revision (authority_id, id, board_id, supplier_id) ON UPDATE CASCADE;

-- Filled on insert from the parent the row already names.
CREATE FUNCTION copy_kpi_scope() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.board_id IS NULL OR NEW.supplier_id IS NULL THEN
        SELECT k.board_id, k.supplier_id INTO NEW.board_id, NEW.supplier_id
        FROM public.contract_kpi k WHERE k.authority_id = NEW.authority_id AND k.id = NEW.kpi_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE FUNCTION copy_revision_scope() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.board_id IS NULL OR NEW.supplier_id IS NULL THEN
        SELECT r.board_id, r.supplier_id INTO NEW.board_id, NEW.supplier_id
        FROM public.kpi_revision r WHERE r.authority_id = NEW.authority_id AND r.id = NEW.revision_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER kpi_revision_scope BEFORE INSERT ON kpi_revision FOR EACH ROW EXECUTE FUNCTION copy_kpi_scope();
CREATE TRIGGER kpi_acceptance_scope BEFORE INSERT ON kpi_acceptance FOR EACH ROW EXECUTE FUNCTION copy_revision_scope();

-- Append-only, except that the copy of the board follows the contract's (the cascades above).
DROP TRIGGER kpi_revision_append_only ON kpi_revision;
CREATE TRIGGER kpi_revision_append_only BEFORE UPDATE OR DELETE ON kpi_revision FOR EACH ROW EXECUTE FUNCTION forbid_change_but_board();
DROP TRIGGER kpi_acceptance_append_only ON kpi_acceptance;
CREATE TRIGGER kpi_acceptance_append_only BEFORE UPDATE OR DELETE ON kpi_acceptance FOR EACH ROW EXECUTE FUNCTION forbid_change_but_board();

-- The same meaning as before: the KPI visible to the session (contract_kpi_read, on the same copies).
DROP POLICY kpi_revision_read ON kpi_revision;
CREATE POLICY kpi_revision_read ON kpi_revision FOR SELECT
    USING ((authority_id = (SELECT app_authority_id())
            AND ((SELECT app_sees_all_boards()) OR board_id = ANY ((SELECT app_board_ids())::uuid[])
                 OR authority_id = ANY ((SELECT app_admitted_authority_ids())::uuid[])))
           OR supplier_id = (SELECT app_supplier_id()));
DROP POLICY kpi_acceptance_read ON kpi_acceptance;
CREATE POLICY kpi_acceptance_read ON kpi_acceptance FOR SELECT
    USING ((authority_id = (SELECT app_authority_id())
            AND ((SELECT app_sees_all_boards()) OR board_id = ANY ((SELECT app_board_ids())::uuid[])
                 OR authority_id = ANY ((SELECT app_admitted_authority_ids())::uuid[])))
           OR supplier_id = (SELECT app_supplier_id()));
