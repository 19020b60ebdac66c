-- Whether a project accepts bids, read through the project's key (issue 14, bid submission).
--
-- project_accepting_bids_at asked for the project by its key and for an open status and a deadline ahead in one
-- WHERE clause. PostgreSQL could answer that from project_open (bid_deadline, partial on open projects): walk
-- every open project whose deadline is still ahead, in deadline order, until the one asked about turns up. Its
-- estimates made the two plans look alike, and it chose project_open: with a few thousand open projects (the
-- benchmark's draft bids, or a national deployment: the index spans every authority) each check read thousands of
-- rows, and a bid submission runs the check four times (its locking read's policy and select list, the update's
-- USING and WITH CHECK). Now the project is found by its key and its status and deadline are tested on that row:
-- one index probe, whatever the number of open projects. Same answer: false for a project the caller cannot see
-- (row-level security still applies inside), one that does not exist, is not open, or whose deadline has passed.
--
-- Written to work under an empty search_path (names of ours schema-qualified), like 0018.

CREATE OR REPLACE FUNCTION public.project_accepting_bids_at(p_authority uuid, p_project uuid, p_at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((
        SELECT p.status = 'open' AND p.bid_deadline > p_at
        FROM public.project p
        WHERE p.authority_id = p_authority AND p.id = p_project), false);
END
$$;
