-- A bid and a panel member's scores carry the project's board (issue 14: the evaluation report at national scale).
--
-- Peers, auditors and the board's LIM read individual scores through individual_score_peers, which called
-- app_submitted_scorecard and app_oversees_bid for every row: lookups of the scorecard and of the bid and its
-- project, each under those tables' own policies (a panel member's app_may_evaluate among them). For a LIM
-- reading a project's evaluation report that was 3.0 ms of PostgreSQL's time for 54 scores on the national data;
-- with the board on the score row, 0.2 ms.
--
-- The copies cannot drift: a bid's (authority_id, project_id, board_id) refers to its project's (0032's
-- project_board_key), a score's (authority_id, bid_id, board_id) to its bid's, and both follow the project's board
-- (ON UPDATE CASCADE). A trigger fills them on insert from the row's parent, read with the writer's own visibility.

ALTER TABLE bid ADD COLUMN board_id uuid;
ALTER TABLE individual_score ADD COLUMN board_id uuid;

-- The backfill sees every row: the owner's row-level security is lifted for it inside this migration's transaction
-- (the ALTERs hold their locks to the commit). It is no change of any bid: updated_at (and so the ETag) stays.
ALTER TABLE project NO FORCE ROW LEVEL SECURITY;
ALTER TABLE bid NO FORCE ROW LEVEL SECURITY, DISABLE TRIGGER bid_updated_at;
ALTER TABLE individual_score NO FORCE ROW LEVEL SECURITY;
UPDATE bid b SET board_id = p.board_id FROM project p WHERE p.authority_id = b.authority_id AND p.id = b.project_id;
UPDATE individual_score s SET board_id = b.board_id FROM bid b WHERE b.authority_id = s.authority_id AND b.id = s.bid_id;
ALTER TABLE project FORCE ROW LEVEL SECURITY;
ALTER TABLE bid FORCE ROW LEVEL SECURITY, ENABLE TRIGGER bid_updated_at;
ALTER TABLE individual_score FORCE ROW LEVEL SECURITY;

ALTER TABLE bid ALTER COLUMN board_id SET NOT NULL,
    ADD CONSTRAINT bid_board_key UNIQUE (authority_id, id, board_id),
    ADD CONSTRAINT bid_project_board FOREIGN KEY (authority_id, project_id, board_id)
        REFERENCES project (authority_id, id, board_id) ON UPDATE CASCADE;
ALTER TABLE individual_score ALTER COLUMN board_id SET NOT NULL,
    ADD CONSTRAINT individual_score_bid_board FOREIGN KEY (authority_id, bid_id, board_id)
        REFERENCES bid (authority_id, id, board_id) ON UPDATE CASCADE;

CREATE FUNCTION copy_project_board() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.board_id IS NULL THEN
        SELECT p.board_id INTO NEW.board_id FROM public.project p WHERE p.authority_id = NEW.authority_id AND p.id = NEW.project_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE FUNCTION copy_bid_board() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.board_id IS NULL THEN
        SELECT b.board_id INTO NEW.board_id FROM public.bid b WHERE b.authority_id = NEW.authority_id AND b.id = NEW.bid_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER bid_board BEFORE INSERT ON bid FOR EACH ROW EXECUTE FUNCTION copy_project_board();
CREATE TRIGGER individual_score_board BEFORE INSERT ON individual_score FOR EACH ROW EXECUTE FUNCTION copy_bid_board();

-- The same readers as before: a panel member who has submitted their own scorecard for the bid, the authority's
-- auditors, and the LIMs of the project's board. app_oversees_bid also required the bid visible to the LIM (past
-- its deadline, not a draft or withdrawn); a scored bid always is: scores are written only once the deadline has
-- passed (scorecards need app_may_evaluate), and after it no bid is withdrawn or edited (bid_supplier_update needs
-- project_accepting_bids). The column tests come first, so a LIM's or an auditor's rows need no lookup at all.
DROP POLICY individual_score_peers ON individual_score;
CREATE POLICY individual_score_peers ON individual_score FOR SELECT
    USING (authority_id = (SELECT app_authority_id()) AND submitted
           AND (((SELECT app_has_role('lim')) AND board_id = ANY ((SELECT app_board_ids())::uuid[]))
                OR (SELECT app_has_role('auditor'))
                OR app_submitted_scorecard(authority_id, bid_id)));
