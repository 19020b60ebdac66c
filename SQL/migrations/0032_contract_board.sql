-- A contract carries its project's board (issue 14: national-scale reads).
--
-- Every row-level policy below a contract (its KPIs, revisions, acceptances, reporting periods, returns,
-- overrides, plans, visits, variations) asks "is this contract visible?", and the contract's policy asked in
-- turn "is its project visible?" — a lookup of the project per row, at every level of a dashboard's or a
-- listing's joins. The project's visibility for staff is its board (and the authority, which the contract has):
-- with the board on the contract row, the contract's policy compares columns with the once-per-statement
-- context, and every policy that reaches a contract is one lookup shorter.
--
-- The copy cannot drift: a foreign key ties (authority_id, project_id, board_id) to the project's, and moves with
-- the project's board (ON UPDATE CASCADE).

ALTER TABLE project ADD CONSTRAINT project_board_key UNIQUE (authority_id, id, board_id);

ALTER TABLE contract ADD COLUMN board_id uuid;
-- The backfill sees every row: the owner's row-level security is lifted for it, inside this migration's transaction
-- (the ALTERs hold their locks to the commit, so no other session ever sees it lifted). It is not a change of any
-- contract: updated_at (and so the ETag) stays.
ALTER TABLE contract NO FORCE ROW LEVEL SECURITY, DISABLE TRIGGER contract_updated_at;
ALTER TABLE project NO FORCE ROW LEVEL SECURITY;
UPDATE contract c SET board_id = p.board_id FROM project p WHERE p.authority_id = c.authority_id AND p.id = c.project_id;
ALTER TABLE contract FORCE ROW LEVEL SECURITY, ENABLE TRIGGER contract_updated_at;
ALTER TABLE project FORCE ROW LEVEL SECURITY;
ALTER TABLE contract ALTER COLUMN board_id SET NOT NULL;
ALTER TABLE contract ADD CONSTRAINT contract_project_board FOREIGN KEY (authority_id, project_id, board_id)
    REFERENCES project (authority_id, id, board_id) ON UPDATE CASCADE;

-- The same meaning as before. Staff: the contract's authority, and its project visible to them — which for staff is
-- "sees every board, or this board is theirs" (project_staff_read); a supplier's session sees a project through
-- project_supplier_read (not a draft, an authority that admitted it), and a contract's project is never a draft.
DROP POLICY contract_staff_read ON contract;
CREATE POLICY contract_staff_read ON contract FOR SELECT
    USING (authority_id = (SELECT app_authority_id())
           AND ((SELECT app_sees_all_boards()) OR board_id = ANY ((SELECT app_board_ids())::uuid[])
                OR authority_id = ANY ((SELECT app_admitted_authority_ids())::uuid[])));

-- A LIM writes contracts of the boards they work for (the project of such a board is visible to them).
DROP POLICY contract_lim_write ON contract;
CREATE POLICY contract_lim_write ON contract FOR ALL
    USING (authority_id = (SELECT app_authority_id()) AND (SELECT app_has_role('lim'))
           AND board_id = ANY ((SELECT app_board_ids())::uuid[]))
    WITH CHECK (authority_id = (SELECT app_authority_id()) AND (SELECT app_has_role('lim'))
           AND board_id = ANY ((SELECT app_board_ids())::uuid[]));
