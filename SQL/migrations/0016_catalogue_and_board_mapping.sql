-- Authority admins manage their social-value measures and their school-to-board mapping through the API
-- (issue 12, newcomer papercuts). Until now only the operator (owner role) wrote these, at set-up.

-- Measures: admins edit name, unit, proxy value and retirement. The code stays as created: bids name measures
-- by code, so a changed code would silently re-point them (retire and add a new one instead).
CREATE POLICY social_value_measure_admin_update ON social_value_measure FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
GRANT UPDATE (name, unit, proxy_value_pence, retired_at) ON social_value_measure TO locality_app;

-- Rules and overrides are replaced whole (delete, then insert); the policies of 0005 already confine every
-- command to the authority's admins.
GRANT INSERT, DELETE ON school_board_rule, school_board_override TO locality_app;
-- Re-mapping the register after a change writes only the board (and when it changed); everything else of a
-- school comes from the GIAS import, which the operator runs.
GRANT UPDATE (board_id, updated_at) ON school TO locality_app;
